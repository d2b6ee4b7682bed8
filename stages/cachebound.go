package stages

import (
	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/internal/parsecache"
)

// CacheBytes is the most memory the caches of one Engine keep alive, for
// the memory bound of a process that verifies (pipeline.MemoryBound). The
// caches grow with the number of distinct sender domains, not with the
// traffic. Each is bounded by count and by bytes, charging an entry what it
// keeps alive besides its map slot, because what an entry holds is the
// publisher's choice: the verifier's key size limits apply after a key is
// cached, and a record of 2 KiB can parse into 100 KB.
//
//   - DKIM keys (one dkim.KeyFetcher, shared by DKIM and ARC): entries
//     charged dkim.KeyCacheBytes (32 MiB) in all, and
//     dkim.DefaultKeyCacheEntries (10000) map slots of keySlotBytes.
//     Measured per entry, map slot and record text included: RSA-2048
//     2.1 KB, RSA-4096 3.6 KB (the largest RFC 8301 3.2 requires verifiers
//     to accept; 4.0 KB under 240-octet names), RSA-8192 6.6 KB (the
//     largest dkim.DefaultMaxRSABits accepts), Ed25519 0.5 KB, a cached
//     "no key" 0.3 KB.
//   - Parsed SPF and DMARC records (parsecache, one cache each): entries
//     charged parsecache.DefaultMaxBytes (8 MiB) each, and
//     parsecache.DefaultEntries (4096) map slots of parseSlotBytes each.
//     Measured per entry, text included: SPF 0.5 KB for one include and
//     an ip4, 2.5 KB for 20 ip4 terms, 16.5 KB for 2 KiB
//     (parsecache.DefaultMaxText) of ip4 terms, 100 KB for 2 KiB of "a"
//     terms; DMARC 0.5 KB for p= and one rua URI, 15 KB for 2 KiB of rua
//     URIs, 75 KB for 2 KiB of empty tags.
//
// The charged bytes count ×5/4 for allocation rounding: an object just
// over 32 KiB takes a quarter more (whole 8 KiB pages), smaller ones at
// most an eighth (size classes; objects under 256 bytes are charged
// rounded up or within the fixed charges). TestCacheBytesBound fills every
// cache to its bounds with worst cases and checks the heap growth against
// this constant and its shares.
const CacheBytes = keyCacheBytes + 2*parseCacheBytes

// CacheBytesFor is CacheBytes for an Engine whose DKIM key cache holds at
// most keyEntries keys (WithKeyCacheEntries): the key share scaled as
// dkim.KeyCacheBytesFor scales the key cache's byte bound.
func CacheBytesFor(keyEntries int) int64 {
	return int64(dkim.KeyCacheBytesFor(keyEntries))*5/4 + int64(keyEntries)*keySlotBytes + 2*parseCacheBytes
}

// CacheBytes is the most memory e's caches keep alive: CacheBytesFor its
// key cache's bound.
func (e *Engine) CacheBytes() int64 {
	if e.keyEntries == 0 {
		return CacheBytes
	}
	return CacheBytesFor(e.keyEntries)
}

// The shares of CacheBytes: the charged bytes ×5/4 for allocation
// rounding, plus a map slot for every entry the count allows.
const (
	keyCacheBytes   = dkim.KeyCacheBytes*5/4 + dkim.DefaultKeyCacheEntries*keySlotBytes
	parseCacheBytes = parsecache.DefaultMaxBytes*5/4 + parsecache.DefaultEntries*parseSlotBytes
)

// What an entry holds that its cache does not charge: its map slot at the
// worst load a map reaches between compactions (measured: up to 2.5 slots
// an entry just after a table splits; 88 bytes a slot for a DKIM key, 48
// for a parsed record), and for a parsed record its error value and the
// rounding of a short text.
const (
	keySlotBytes   = 256
	parseSlotBytes = 192
)
