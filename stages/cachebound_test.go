package stages

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"math/big"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/dmarc"
	"github.com/authpipe/authpipe/stages/internal/parsecache"
	"github.com/authpipe/authpipe/stages/spf"
)

// genResolver answers TXT questions with record(name), a new string each
// time, as a DNS cache that has since dropped the answer would: whatever
// the engine's caches keep of it is then theirs alone. Other types get
// empty answers. It is a test-only, in-process resolver: the test is about
// memory accounting, not DNS.
type genResolver struct{ record func(name string) string }

func (r genResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	a := &resolvercache.Answer{Name: resolvercache.CanonicalName(name), Type: qtype, TTL: 3600, Received: time.Now()}
	if qtype == 16 {
		if txt := r.record(a.Name); txt != "" {
			a.TXT = []string{strings.Clone(txt)}
		}
	}
	return a, nil
}

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// rsaKeyRecord is a DKIM key record with a random odd modulus of the given
// size: the fetcher only parses keys, so no primes are needed, and a few
// thousand distinct keys cost nothing to make.
func rsaKeyRecord(t testing.TB, bits int) string {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1)
	n.SetBit(n, 0, 1)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	return "v=DKIM1; k=rsa; h=sha256; t=s; p=" + base64.StdEncoding.EncodeToString(der)
}

// pad repeats unit after prefix up to n octets.
func pad(prefix, unit string, n int) string {
	return prefix + strings.Repeat(unit, (n-len(prefix))/len(unit))
}

// TestCacheBytesBound fills the caches of one Engine to their bounds,
// through the calls verification makes (KeyFetcher.Fetch, spf.Checker.Verify,
// dmarc.Evaluator.Evaluate), with the worst entries each case can make, and
// requires the live heap to grow by at most CacheBytes, and each cache by at
// most its share. Every cache gets a quarter or more distinct entries than
// it can hold, so it ends full and evicting.
//
//   - keys of 4096 bits under 240-octet names (given as substrings of a
//     4 KiB string, as d= and s= are of a DKIM-Signature field): the count
//     and the byte bound are reached together; SPF records of 2 KiB of ip4
//     terms; DMARC records with 2 KiB of rua URIs;
//   - keys of 8192 bits, the largest the verifier accepts; records that
//     parse into the most memory per octet of text ("v=spf1 a a a …",
//     DMARC records of empty tags);
//   - malformed records, whose error texts are what they hold (a key
//     error of 2.8 KiB, a DMARC record ignoring an fo= value of 2 KiB of
//     control characters, quoted in 8 KiB) and SPF records that fail to
//     parse.
//
// The per-entry figures logged (with -v) are the growth over the first 64
// entries, before any bound is reached.
func TestCacheBytesBound(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 64 MiB of caches three times")
	}
	const (
		keyN   = dkim.DefaultKeyCacheEntries * 5 / 4
		parseN = parsecache.DefaultEntries * 5 / 4
		probe  = 64
	)
	keys4096 := make([]string, 64)
	keys8192 := make([]string, 64)
	for i := range keys4096 {
		keys4096[i], keys8192[i] = rsaKeyRecord(t, 4096), rsaKeyRecord(t, 8192)
	}
	// 0x01 is quoted as \x01: 700 of them make an error text of 2.8 KiB.
	badTag := "v=DKIM1; p=; " + strings.Repeat("\x01", 700)
	label := strings.Repeat("a", 60)
	longDomain := strings.Join([]string{label, label, label, "example"}, ".") // 191 octets
	// The rest of a DKIM-Signature field, which d= and s= are substrings of.
	field := strings.Repeat("x", 4<<10)

	for _, c := range []struct {
		name  string
		keys  int                  // distinct keys fetched
		key   func(sel int) string // key record of selector sel
		spf   func(i int) string
		dmarc func(i int) string
	}{
		{
			name: "4096-bit keys, long records",
			keys: keyN,
			key:  func(sel int) string { return keys4096[sel%len(keys4096)] },
			spf: func(i int) string {
				return pad(fmt.Sprintf("v=spf1 ip4:10.%d.%d.0/24", i>>8, i&255), " ip4:192.0.2.1", parsecache.DefaultMaxText)
			},
			dmarc: func(i int) string {
				return pad(fmt.Sprintf("v=DMARC1; p=reject; rua=mailto:r%d@example.com", i), ",mailto:a@b.c", parsecache.DefaultMaxText)
			},
		},
		{
			name: "8192-bit keys, amplifying records",
			keys: dkim.KeyCacheBytes / 6000 * 5 / 4, // 6.4 KB charged a key: a third more than fit
			key:  func(sel int) string { return keys8192[sel%len(keys8192)] },
			spf: func(i int) string {
				return pad(fmt.Sprintf("v=spf1 ip4:10.%d.%d.0/24", i>>8, i&255), " a", parsecache.DefaultMaxText)
			},
			dmarc: func(i int) string {
				return pad(fmt.Sprintf("v=DMARC1; p=reject; rua=mailto:r%d@example.com;", i), ";", parsecache.DefaultMaxText)
			},
		},
		{
			name: "malformed records",
			keys: keyN,
			key:  func(sel int) string { return badTag },
			spf: func(i int) string {
				return pad(fmt.Sprintf("v=spf1 ip4:10.%d.%d.0/24 ", i>>8, i&255), "\x01", parsecache.DefaultMaxText)
			},
			dmarc: func(i int) string {
				return pad(fmt.Sprintf("v=DMARC1; p=reject; rua=mailto:r%d@example.com; fo=", i), "\x01", parsecache.DefaultMaxText)
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := genResolver{record: func(name string) string {
				switch {
				case strings.Contains(name, "._domainkey."):
					var sel int
					fmt.Sscanf(name, "s%d-", &sel)
					return c.key(sel)
				case strings.HasPrefix(name, "_dmarc.d"):
					var i int
					fmt.Sscanf(name, "_dmarc.d%d.", &i)
					return c.dmarc(i)
				case strings.HasPrefix(name, "d"):
					var i int
					fmt.Sscanf(name, "d%d.", &i)
					return c.spf(i)
				}
				return ""
			}}
			e := New(res)
			ctx := context.Background()
			ip := netip.MustParseAddr("192.0.2.1")
			fillKeys := func(from, to int) {
				for i := from; i < to; i++ {
					// d= and s= as substrings of one large string.
					s := fmt.Sprintf("s%07d-%s", i, strings.Repeat("x", 40)) + "." + longDomain + field
					sel, dom := s[:49], s[50:50+len(longDomain)]
					e.dkim.Keys.Fetch(ctx, dom, sel)
				}
			}
			fillSPF := func(from, to int) {
				for i := from; i < to; i++ {
					e.spf.Verify(ctx, spf.Request{IP: ip, HELO: "mx.example", MailFrom: fmt.Sprintf("a@d%d.example", i)})
				}
			}
			fillDMARC := func(from, to int) {
				for i := from; i < to; i++ {
					e.dmarc.Evaluate(ctx, dmarc.Input{FromDomains: []string{fmt.Sprintf("d%d.example", i)}, ClientIP: ip})
				}
			}
			type share struct {
				name  string
				fill  func(from, to int)
				n     int
				bound int64
			}
			var total int64
			base := liveHeap()
			for _, s := range []share{
				{"DKIM keys", fillKeys, c.keys, keyCacheBytes},
				{"SPF records", fillSPF, parseN, parseCacheBytes},
				{"DMARC records", fillDMARC, parseN, parseCacheBytes},
			} {
				before := liveHeap()
				s.fill(0, probe)
				per := float64(liveHeap()-before) / probe
				s.fill(probe, s.n)
				grown := liveHeap() - before
				total += grown
				t.Logf("%s: %.0f bytes an entry; full: %.1f MiB, bound %.1f MiB", s.name, per, mib(grown), mib(s.bound))
				if grown > s.bound {
					t.Errorf("%s: the heap grew by %d bytes, over the share %d", s.name, grown, s.bound)
				}
			}
			if k := e.dkim.Keys; k.Len() > dkim.DefaultKeyCacheEntries || k.Bytes() > dkim.KeyCacheBytes {
				t.Errorf("key cache over its bounds: %d entries, %d bytes", k.Len(), k.Bytes())
			}
			grown := liveHeap() - base
			t.Logf("all caches: %.1f MiB (%.1f MiB summed per cache), CacheBytes %.1f MiB", mib(grown), mib(total), mib(CacheBytes))
			if grown > CacheBytes {
				t.Errorf("the heap grew by %d bytes, over CacheBytes %d", grown, CacheBytes)
			}
			runtime.KeepAlive(e)
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// TestCacheBytesFor: the bound follows the key cache's size and equals
// CacheBytes at the default.
func TestCacheBytesFor(t *testing.T) {
	if got := CacheBytesFor(dkim.DefaultKeyCacheEntries); got != CacheBytes {
		t.Fatalf("CacheBytesFor(default) = %d, want CacheBytes %d", got, CacheBytes)
	}
	if got := New(nil).CacheBytes(); got != CacheBytes {
		t.Errorf("default engine: %d, want %d", got, CacheBytes)
	}
	e := New(nil, WithKeyCacheEntries(1000))
	if e.dkim.Keys.MaxEntries != 1000 || e.arc.Keys != e.dkim.Keys {
		t.Fatalf("key cache bound %d, shared with ARC %v; want 1000, true", e.dkim.Keys.MaxEntries, e.arc.Keys == e.dkim.Keys)
	}
	small, big := e.CacheBytes(), New(nil, WithKeyCacheEntries(100000)).CacheBytes()
	if small >= CacheBytes || big <= CacheBytes {
		t.Errorf("1,000 keys: %d, 100,000 keys: %d; want them either side of %d", small, big, CacheBytes)
	}
	if want := CacheBytes + int64(dkim.KeyCacheBytesFor(100000)-dkim.KeyCacheBytes)*5/4 + 90000*keySlotBytes; big != want {
		t.Errorf("100,000 keys: %d, want %d", big, want)
	}
}
