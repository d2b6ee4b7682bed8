// Package parsecache memoises the parse of DNS record text.
//
// The SPF and DMARC records a receiver sees are a few thousand distinct
// strings repeated across millions of messages, and the DNS cache already
// hands out the same text for each; parsing it again for every message was
// about a twentieth of the engine's CPU. A Cache maps the exact record text
// to its parse result (value or error), so a changed record is simply a new
// key and no expiry is needed: entries age out only by the size bound.
//
// Values are shared between goroutines and must be treated as read-only by
// every caller.
package parsecache

import "sync"

// Defaults bounding a Cache: at most DefaultEntries texts of at most
// DefaultMaxText octets each are kept (longer texts are parsed every time),
// so the keys hold at most 8 MiB.
const (
	DefaultEntries = 4096
	DefaultMaxText = 2048
)

// Cache is a bounded map from record text to its parse result, safe for
// concurrent use. The zero value is not usable; call New.
type Cache[V any] struct {
	mu      sync.RWMutex
	m       map[string]result[V]
	entries int
	maxText int
}

type result[V any] struct {
	v   V
	err error
}

// New returns a cache holding at most entries texts of at most maxText
// octets; zero or negative values take the defaults.
func New[V any](entries, maxText int) *Cache[V] {
	if entries <= 0 {
		entries = DefaultEntries
	}
	if maxText <= 0 {
		maxText = DefaultMaxText
	}
	return &Cache[V]{m: make(map[string]result[V]), entries: entries, maxText: maxText}
}

// Get returns parse(text), from the cache when text was seen before. parse
// must be a pure function of text. When the cache is full, an arbitrary
// entry makes room (Go's map iteration order is randomised), which keeps
// the frequent texts with high probability and costs nothing per hit.
func (c *Cache[V]) Get(text string, parse func(string) (V, error)) (V, error) {
	if len(text) > c.maxText {
		return parse(text)
	}
	c.mu.RLock()
	r, ok := c.m[text]
	c.mu.RUnlock()
	if ok {
		return r.v, r.err
	}
	v, err := parse(text)
	c.mu.Lock()
	if len(c.m) >= c.entries {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[text] = result[V]{v, err}
	c.mu.Unlock()
	return v, err
}

// Len returns the number of cached texts.
func (c *Cache[V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
