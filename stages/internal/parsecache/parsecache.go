// Package parsecache memoises the parse of DNS record text.
//
// The SPF and DMARC records a receiver sees are a few thousand distinct
// strings repeated across millions of messages, and the DNS cache already
// hands out the same text for each; parsing it again for every message was
// about a twentieth of the engine's CPU. A Cache maps the exact record text
// to its parse result (value or error), so a changed record is simply a new
// key and no expiry is needed: entries age out only by the size bounds.
//
// Values are shared between goroutines and must be treated as read-only by
// every caller.
package parsecache

import "sync"

// Defaults bounding a Cache: at most DefaultEntries texts of at most
// DefaultMaxText octets each are kept (longer texts are parsed every time),
// and at most DefaultMaxBytes in all, counting each entry's text, parse
// result (as the caller's size function measures it) and error text.
//
// The byte bound is needed besides the count because a parse result can be
// far larger than its text: "v=spf1 a a a …" of 2 KiB parses into about
// 1000 terms of 96 bytes, so 4096 such texts would hold about 400 MB.
// DefaultMaxBytes is what the texts alone were allowed before (4096 × 2 KiB):
// ample for real records (an SPF record of one include and an ip4 is
// charged 0.4 KB, one of 20 ip4 terms 2.4 KB, a DMARC record with p= and
// one rua URI 0.4 KB).
const (
	DefaultEntries  = 4096
	DefaultMaxText  = 2048
	DefaultMaxBytes = DefaultEntries * DefaultMaxText
)

// Cache is a bounded map from record text to its parse result, safe for
// concurrent use. The zero value is not usable; call New.
type Cache[V any] struct {
	mu       sync.RWMutex
	m        map[string]result[V]
	bytes    int // charged to the entries in m
	deleted  int // entries deleted from m since it was made
	entries  int
	maxText  int
	maxBytes int
	size     func(V) int
}

type result[V any] struct {
	v     V
	err   error
	bytes int
}

// New returns a cache holding at most entries texts of at most maxText
// octets, and at most entries × maxText bytes of texts, parse results and
// error texts; zero or negative values take the defaults. size returns the
// bytes a parse result keeps alive besides its text (substrings of the text
// are free); nil counts nothing.
func New[V any](entries, maxText int, size func(V) int) *Cache[V] {
	if entries <= 0 {
		entries = DefaultEntries
	}
	if maxText <= 0 {
		maxText = DefaultMaxText
	}
	return &Cache[V]{m: make(map[string]result[V]), entries: entries, maxText: maxText,
		maxBytes: entries * maxText, size: size}
}

// Get returns parse(text), from the cache when text was seen before. parse
// must be a pure function of text. When the cache is full, by count or by
// bytes, arbitrary entries make room (Go's map iteration order is
// randomised), which keeps the frequent texts with high probability and
// costs nothing per hit.
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
	r = result[V]{v: v, err: err, bytes: len(text)}
	if c.size != nil {
		r.bytes += c.size(v)
	}
	if err != nil {
		r.bytes += len(err.Error())
	}
	if r.bytes > c.maxBytes {
		return v, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[text]; ok { // parsed concurrently
		return old.v, old.err
	}
	for len(c.m) >= c.entries || c.bytes+r.bytes > c.maxBytes {
		for k, old := range c.m {
			delete(c.m, k)
			c.bytes -= old.bytes
			c.deleted++
			break
		}
	}
	if c.deleted >= c.entries {
		c.m, c.deleted = compact(c.m), 0
	}
	c.m[text] = r
	c.bytes += r.bytes
	return v, err
}

// compact returns a new map holding m's entries. A Go map does not give
// back the room of deleted entries, and under steady deletion and insertion
// at a constant size it goes on growing: the tombstones of deleted entries
// are pruned only in part, and a table that cannot prune enough doubles
// (golang/go#70886). Measured with Go 1.26.8, 10000 entries of 88 bytes
// replaced one at a time (delete the first in iteration order, insert a new
// key): 1.6 MB fresh, 7.9 MB after 2 million replacements, 19 MB after 18
// million, still growing. maps.Clone copies the tables as they are. A cache
// that copies its entries into a new map each time it has deleted as many
// as it holds stays at the fresh size, for constant work per entry.
func compact[K comparable, V any](m map[K]V) map[K]V {
	n := make(map[K]V, len(m))
	for k, v := range m {
		n[k] = v
	}
	return n
}

// Len returns the number of cached texts.
func (c *Cache[V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// Bytes returns the bytes charged to the cached entries (texts, parse
// results by size, error texts).
func (c *Cache[V]) Bytes() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bytes
}
