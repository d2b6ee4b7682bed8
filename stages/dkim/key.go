package dkim

import (
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/authpipe/authpipe/resolvercache"
)

// PublicKey is a parsed DKIM key record (RFC 6376 3.6.1, RFC 8463 4).
// Keys returned by a [KeyFetcher] are shared between callers and must not be
// modified.
type PublicKey struct {
	// Algorithm is the k= key type: "rsa" (the default) or "ed25519".
	Algorithm string
	// RSA is set for RSA keys.
	RSA *rsa.PublicKey
	// Ed25519 is set for Ed25519 keys.
	Ed25519 ed25519.PublicKey
	// Bits is the RSA modulus size, or 256 for Ed25519.
	Bits int
	// HashAlgs is the h= list of acceptable hash algorithms; nil means all.
	HashAlgs []string
	// ServiceTypes is the s= list; nil means "*" (all).
	ServiceTypes []string
	// Flags is the t= list ("y" testing, "s" strict identity); unknown
	// flags are kept and ignored.
	Flags []string
	// Revoked is true when p= is empty (RFC 6376 3.6.1: the key has been
	// revoked); the other key fields are then unset.
	Revoked bool
	// Expires is when the cached copy of this key stops being valid (the
	// DNS answer's remaining TTL at fetch time). Zero for keys not from a
	// fetcher.
	Expires time.Time

	rsaCtx *rsaCtx // precomputed verification constants, set by ParseKeyRecord
}

// HasFlag reports whether the key's t= tag lists flag.
func (k *PublicKey) HasFlag(flag string) bool {
	for _, f := range k.Flags {
		if f == flag {
			return true
		}
	}
	return false
}

// AllowsHash reports whether the key's h= tag admits the hash algorithm
// ("sha256", "sha1").
func (k *PublicKey) AllowsHash(alg string) bool {
	if k.HashAlgs == nil {
		return true
	}
	for _, h := range k.HashAlgs {
		if h == alg {
			return true
		}
	}
	return false
}

// AllowsEmail reports whether the key's s= tag admits e-mail ("email" or
// "*").
func (k *PublicKey) AllowsEmail() bool {
	if k.ServiceTypes == nil {
		return true
	}
	for _, s := range k.ServiceTypes {
		if s == "*" || s == "email" {
			return true
		}
	}
	return false
}

// KeyError is the error returned by [KeyFetcher.Fetch] and
// [ParseKeyRecord]. Temporary errors (DNS timeouts, SERVFAIL) make the
// signature TEMPFAIL; the others (no key, malformed key) PERMFAIL
// (RFC 6376 6.1.2).
type KeyError struct {
	Domain, Selector string
	// Temp is true for temporary failures.
	Temp bool
	// Reason is a short description such as "no key for signature" or
	// "key syntax error".
	Reason string
	Err    error
}

func (e *KeyError) Error() string {
	var b strings.Builder
	b.WriteString("dkim: key")
	if e.Selector != "" || e.Domain != "" {
		b.WriteString(" " + KeyName(e.Domain, e.Selector))
	}
	b.WriteString(": " + e.Reason)
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *KeyError) Unwrap() error { return e.Err }

// Temporary reports whether trying again later may succeed.
func (e *KeyError) Temporary() bool { return e.Temp }

// IsTemporary reports whether err is a temporary *KeyError.
func IsTemporary(err error) bool {
	var ke *KeyError
	return errors.As(err, &ke) && ke.Temp
}

// maxKeyRecord bounds the size of a key record accepted for parsing.
const maxKeyRecord = 16 << 10

// ParseKeyRecord parses a DKIM key record (RFC 6376 3.6.1): v= (must be
// "DKIM1" and first when present), k= ("rsa" or "ed25519", RFC 8463 4), h=,
// s=, t=, n= and p=. An RSA p= may be a SubjectPublicKeyInfo or a bare
// PKCS#1 RSAPublicKey (RFC 6376 erratum 3017); an Ed25519 p= is the raw
// 32-octet key. An empty p= yields a key with Revoked set and no error.
// Unknown tags are ignored. Errors are *[KeyError] with Temp false.
func ParseKeyRecord(rec string) (*PublicKey, error) {
	bad := func(reason string, err error) (*PublicKey, error) {
		return nil, &KeyError{Reason: reason, Err: err}
	}
	if len(rec) > maxKeyRecord {
		return bad("key syntax error", fmt.Errorf("record of %d octets", len(rec)))
	}
	var k, h, s, t, p string
	var hasP, hasH, hasS, hasT bool
	var seen [maxTags]string
	it := tagIter{s: rec}
	for n := 0; ; n++ {
		name, value, ok, err := it.next()
		if err != nil {
			return bad("key syntax error", err)
		}
		if !ok {
			break
		}
		if n >= maxTags {
			return bad("key syntax error", errors.New("too many tags"))
		}
		for _, prev := range seen[:n] {
			if prev == name {
				return bad("key syntax error", fmt.Errorf("duplicate tag %q", name))
			}
		}
		seen[n] = name
		switch name {
		case "v":
			if n != 0 {
				return bad("key syntax error", errors.New("v= is not the first tag"))
			}
			if value != "DKIM1" {
				return bad("incompatible key version", fmt.Errorf("v=%s", value))
			}
		case "k":
			k = value
		case "h":
			h, hasH = value, true
		case "s":
			s, hasS = value, true
		case "t":
			t, hasT = value, true
		case "p":
			p, hasP = value, true
		}
	}
	if !hasP {
		return bad("key syntax error", errors.New("no p= tag"))
	}
	key := &PublicKey{Algorithm: "rsa"}
	if k != "" {
		key.Algorithm = k
	}
	if hasH {
		key.HashAlgs = splitColonList(h)
	}
	if hasS {
		key.ServiceTypes = splitColonList(s)
	}
	if hasT {
		key.Flags = splitColonList(t)
	}
	if trimFWS(p) == "" {
		key.Revoked = true
		return key, nil
	}
	der, err := appendBase64(make([]byte, 0, len(p)*3/4), p)
	if err != nil {
		return bad("key syntax error", fmt.Errorf("p=: %w", err))
	}
	switch key.Algorithm {
	case "rsa":
		rk, err := parseRSAPublicKey(der)
		if err != nil {
			return bad("key syntax error", err)
		}
		key.RSA = rk
		key.Bits = rk.N.BitLen()
		if key.Bits <= 16384 {
			key.rsaCtx = newRSACtx(rk)
		}
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return bad("key syntax error", fmt.Errorf("ed25519 key of %d octets", len(der)))
		}
		key.Ed25519 = ed25519.PublicKey(der)
		key.Bits = 256
	default:
		return bad("unsupported key type", fmt.Errorf("k=%s", key.Algorithm))
	}
	return key, nil
}

// splitColonList splits a colon-separated tag value, trimming FWS around
// each element and dropping empty ones.
func splitColonList(v string) []string {
	out := make([]string, 0, strings.Count(v, ":")+1)
	for v != "" {
		el, rest, _ := strings.Cut(v, ":")
		if el = trimFWS(el); el != "" {
			out = append(out, el)
		}
		v = rest
	}
	return out
}

// Bounds of a KeyFetcher's cache: DefaultKeyCacheEntries entries by
// default (KeyFetcher.MaxEntries), and at most KeyCacheBytes by
// entryBytes' measure.
//
// The byte bound is needed besides the count because an entry's size is
// the publisher's choice: a key record may be 16 KiB (maxKeyRecord), the
// verifier's limits on RSA key size apply only after the key is cached,
// and an error text may quote the record. KeyCacheBytes is 10000 entries
// of 3.4 KB, what a 4096-bit RSA key is charged with its record and its
// verification constants (the largest size RFC 8301 3.2 requires
// verifiers to accept); a 2048-bit key is charged 2.0 KB, so a cache of
// common keys is bound by its count. See stages.CacheBytes for what the
// bounds come to.
const (
	DefaultKeyCacheEntries = 10000
	KeyCacheBytes          = 32 << 20
)

// KeyCacheBytesFor is the byte bound of a key cache of at most entries
// keys: KeyCacheBytes scaled to the count (3.4 KB a key), and at least
// 1 MiB so that the largest entry (a 16 KiB record) always fits an eighth
// of it. KeyCacheBytesFor(DefaultKeyCacheEntries) is KeyCacheBytes.
func KeyCacheBytesFor(entries int) int {
	return max(int(int64(KeyCacheBytes)*int64(entries)/DefaultKeyCacheEntries), 1<<20)
}

// keyEntryFixed is what one cached key or error holds besides the
// variable parts entryBytes adds: the keyEntry itself (64 bytes) and the
// PublicKey, rsa.PublicKey, rsaCtx and big.Int structures (about 370
// bytes), or the KeyError and its wrapped error, with allocation
// rounding. The map slot is not charged (a map keeps its slots when
// entries are deleted; see stages.CacheBytes).
const keyEntryFixed = 512

// typeTXT is the DNS TXT record type (RFC 1035 3.2.2).
const typeTXT uint16 = 16

// KeyFetcher looks up DKIM keys in DNS (RFC 6376 3.6.2: TXT at
// selector._domainkey.domain) and caches the parsed result by (selector,
// domain) for the remaining TTL of the DNS answer, so each key is parsed
// once per TTL, not once per message. Permanent failures (no key, bad
// record) are cached the same way; temporary ones are not. The cache holds
// at most MaxEntries keys (default 10000) and at most
// KeyCacheBytesFor(MaxEntries) bytes (KeyCacheBytes by default); when
// full, expired entries are dropped first, then the least recently used,
// until an eighth of the room is free.
//
// A KeyFetcher is safe for concurrent use. The zero value is not usable:
// Resolver must be set.
type KeyFetcher struct {
	Resolver resolvercache.Resolver
	// Now is the clock used for cache expiry (wall clock, not the
	// message's verification time). Default time.Now.
	Now func() time.Time
	// MaxEntries bounds the cache; 0 means DefaultKeyCacheEntries, negative
	// disables caching.
	MaxEntries int

	mu      sync.Mutex
	entries map[keyID]*keyEntry
	bytes   int // charged to the entries (entryBytes)
	deleted int // entries deleted since the map was made
	// stores counts the entries stored; an entry's used is its value
	// when the entry was last stored or found, which orders eviction.
	stores atomic.Int64
}

type keyID struct{ selector, domain string }

type keyEntry struct {
	key     *PublicKey
	err     error
	expires time.Time
	bytes   int
	used    atomic.Int64 // KeyFetcher.stores when last stored or found
}

// entryBytes is what a cache entry keeps alive besides its map slot, for
// the byte bound: keyEntryFixed, the names, the error text (of a KeyError,
// that of the error it wraps: its names are the entry's and its reason a
// constant), and for a key the record text it was parsed from (the h=, s=,
// t= and k= values are substrings of it), the list headers, and the key
// material: the Ed25519 key, or the RSA modulus with the constants
// newRSACtx derives from it (its words again and R² mod n, or Barrett's
// constant: about four times the modulus in all).
func entryBytes(id keyID, rec string, key *PublicKey, err error) int {
	n := keyEntryFixed + len(id.selector) + len(id.domain)
	if ke, ok := err.(*KeyError); ok {
		err = ke.Err
	}
	if err != nil {
		n += len(err.Error())
	}
	if key == nil {
		return n
	}
	n += len(rec) + cap(key.Ed25519) + int(unsafe.Sizeof(""))*(cap(key.HashAlgs)+cap(key.ServiceTypes)+cap(key.Flags))
	if key.RSA != nil {
		n += wordBytes(key.RSA.N)
	}
	if c := key.rsaCtx; c != nil {
		n += cap(c.nw)*bits.UintSize/8 + wordBytes(c.rr) + wordBytes(c.mu)
	}
	return n
}

// wordBytes is the size of x's backing array.
func wordBytes(x *big.Int) int {
	if x == nil {
		return 0
	}
	return cap(x.Bits()) * bits.UintSize / 8
}

// KeyName is the DNS name of the key record for selector and domain,
// selector._domainkey.domain (RFC 6376 3.6.2.1).
func KeyName(domain, selector string) string {
	return selector + "._domainkey." + domain
}

// clock is k.Now, or time.Now.
func (k *KeyFetcher) clock() func() time.Time {
	if k.Now != nil {
		return k.Now
	}
	return time.Now
}

// held returns the unexpired entry for id, or nil.
func (k *KeyFetcher) held(id keyID, now func() time.Time) *keyEntry {
	if k.MaxEntries < 0 {
		return nil
	}
	k.mu.Lock()
	e := k.entries[id]
	k.mu.Unlock()
	if e == nil || !now().Before(e.expires) {
		return nil
	}
	return e
}

// Cached reports whether Fetch would answer for selector and domain from
// the parsed keys it holds, without DNS.
func (k *KeyFetcher) Cached(domain, selector string) bool {
	return k.held(keyID{selector, domain}, k.clock()) != nil
}

// Fetch returns the key for selector and domain. Errors are *[KeyError];
// use its Temporary method (or [IsTemporary]) to tell DNS failures from
// missing or malformed keys. When several TXT records exist the first one
// that parses as a DKIM key is used (RFC 6376 3.6.2.2 leaves this
// undefined).
func (k *KeyFetcher) Fetch(ctx context.Context, domain, selector string) (*PublicKey, error) {
	return k.FetchOnMiss(ctx, domain, selector, nil)
}

// FetchOnMiss is Fetch, calling onMiss (when not nil) first if the key is
// not held and has to come from DNS. A verifier uses it to start the
// lookups of a message's other keys then (Verifier.Prefetch), at no cost
// when the key is held.
func (k *KeyFetcher) FetchOnMiss(ctx context.Context, domain, selector string, onMiss func()) (*PublicKey, error) {
	now := k.clock()
	id := keyID{selector, domain}
	if e := k.held(id, now); e != nil {
		// Written only when a store came since: a key found again and
		// again between stores costs no write.
		if t := k.stores.Load(); e.used.Load() != t {
			e.used.Store(t)
		}
		return e.key, e.err
	}
	if k.MaxEntries >= 0 {
		// The entry and a cached KeyError keep copies of the names, not
		// the strings passed (substrings of a whole DKIM-Signature field).
		id = keyID{strings.Clone(selector), strings.Clone(domain)}
		domain, selector = id.domain, id.selector
	}
	if onMiss != nil {
		onMiss()
	}
	key, rec, ttl, err := k.lookup(ctx, domain, selector, now)
	if ttl > 0 && k.MaxEntries >= 0 && (err == nil || !IsTemporary(err)) {
		exp := now().Add(ttl)
		if key != nil {
			key.Expires = exp
		}
		k.store(id, &keyEntry{key: key, err: err, expires: exp, bytes: entryBytes(id, rec, key, err)}, now())
	}
	return key, err
}

func (k *KeyFetcher) store(id keyID, e *keyEntry, now time.Time) {
	max := k.MaxEntries
	if max == 0 {
		max = DefaultKeyCacheEntries
	}
	maxBytes := KeyCacheBytesFor(max)
	if e.bytes > maxBytes/8 { // never with records of at most maxKeyRecord; keeps evict's target positive
		return
	}
	e.used.Store(k.stores.Add(1))
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.entries == nil {
		k.entries = make(map[keyID]*keyEntry)
	}
	if old, ok := k.entries[id]; ok {
		k.bytes -= old.bytes
	} else if len(k.entries) >= max || k.bytes+e.bytes > maxBytes {
		k.evict(max-1-max/8, maxBytes-maxBytes/8-e.bytes, now)
	}
	k.entries[id] = e
	k.bytes += e.bytes
}

// evict drops expired entries, then the least recently used ones (by
// used: the store count when an entry was last stored or found), until at
// most target remain holding at most targetBytes. Freeing an eighth of the
// bound at once makes a full cache cost one pass over the map (and a sort
// of what is left) per max/8 new keys; freeing one slot per key cost a
// pass per key (200 µs at 10000 entries, under the lock every verifier
// takes: BenchmarkKeyFetcherFull), half the CPU of a pipeline seeing 16000
// sender domains. Arbitrary entries (Go's randomised map order) went
// before session 7: under churn, keys in use were dropped with the rest
// and parsed again (4% of the CPU of the cold benchmark's warm pass,
// whose 8000 keys shared the 10000 slots with the 8000 of the pass
// before).
func (k *KeyFetcher) evict(target, targetBytes int, now time.Time) {
	n := len(k.entries)
	for kid, old := range k.entries {
		if !now.Before(old.expires) {
			delete(k.entries, kid)
			k.bytes -= old.bytes
		}
	}
	if len(k.entries) > target || k.bytes > targetBytes {
		// Sort the ages alone (sorting the entries made a new key into
		// a full cache cost 3.6 µs, against 2.2), then drop the entries
		// at or below a cut: those strictly older all, those at the cut
		// (entries found since the same store share it) only as many as
		// needed. If the bytes are still over, the cut moves on by an
		// eighth.
		ages := make([]int64, 0, len(k.entries))
		for _, e := range k.entries {
			ages = append(ages, e.used.Load())
		}
		slices.Sort(ages)
		for i := max(len(ages)-target, 1) - 1; i < len(ages) && (len(k.entries) > target || k.bytes > targetBytes); i += max(len(ages)/8, 1) {
			cut := ages[i]
			first, _ := slices.BinarySearch(ages, cut)
			ties := i + 1 - first // of those at the cut, to drop
			for kid, e := range k.entries {
				// used only grows (Fetch sets it without the lock): an
				// entry found since the ages were read is kept.
				if u := e.used.Load(); u < cut || u == cut && ties > 0 {
					if u == cut {
						ties--
					}
					delete(k.entries, kid)
					k.bytes -= e.bytes
				}
			}
		}
	}
	// A Go map keeps growing under steady deletion and insertion (see
	// parsecache's compact): copy the entries into a new map once as many
	// have been deleted as the cache holds.
	if k.deleted += n - len(k.entries); k.deleted >= n {
		fresh := make(map[keyID]*keyEntry, len(k.entries))
		for kid, e := range k.entries {
			fresh[kid] = e
		}
		k.entries, k.deleted = fresh, 0
	}
}

// Len returns the number of cached entries.
func (k *KeyFetcher) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.entries)
}

// Bytes returns the bytes charged to the cached entries (see
// KeyCacheBytesFor).
func (k *KeyFetcher) Bytes() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.bytes
}

// lookup fetches and parses the key; the string is the record text the key
// was parsed from.
func (k *KeyFetcher) lookup(ctx context.Context, domain, selector string, now func() time.Time) (*PublicKey, string, time.Duration, error) {
	fail := func(temp bool, reason string, err error) (*PublicKey, string, time.Duration, error) {
		return nil, "", 0, &KeyError{Domain: domain, Selector: selector, Temp: temp, Reason: reason, Err: err}
	}
	if k.Resolver == nil {
		return fail(true, "key unavailable", errors.New("no resolver configured"))
	}
	name := KeyName(domain, selector)
	if err := resolvercache.ValidateName(name); err != nil {
		return fail(false, "invalid key name", err)
	}
	ans, err := k.Resolver.Lookup(ctx, name, typeTXT)
	if err != nil {
		if resolvercache.IsTemporary(err) {
			return fail(true, "key unavailable", err)
		}
		return fail(false, "no key for signature", err)
	}
	ttl := ans.Remaining(now())
	if len(ans.TXT) == 0 {
		what := "no key for signature"
		if ans.NXDomain() {
			what = "no key for signature (NXDOMAIN)"
		}
		_, _, _, e := fail(false, what, nil)
		return nil, "", ttl, e
	}
	var firstErr error
	for _, txt := range ans.TXT {
		key, err := ParseKeyRecord(txt)
		if err == nil {
			return key, txt, ttl, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	ke := firstErr.(*KeyError)
	ke.Domain, ke.Selector = domain, selector
	return nil, "", ttl, ke
}
