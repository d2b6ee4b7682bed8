package resolvercache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// TestCacheLookupRightAfterFill looks every name up twice in a row, without
// waiting for ristretto's asynchronous insert: the second lookup must be
// answered from memory (a kept fill, or ristretto once it shows the entry),
// never upstream again. Without kept fills, a lookup landing between the
// flight's end and ristretto applying its buffered Set went upstream a
// second time.
func TestCacheLookupRightAfterFill(t *testing.T) {
	f := newCacheFixture(t)
	const n = 2 * resolvercache.KeptFills
	for i := range n {
		f.srv.AddRR(dnstest.TXT(fmt.Sprintf("n%d.example.com", i), "v=spf1 -all", 300))
	}
	ctx := context.Background()
	for i := range n {
		name := fmt.Sprintf("n%d.example.com", i)
		a, err := f.cache.Lookup(ctx, name, dns.TypeTXT)
		if err != nil {
			t.Fatal(err)
		}
		b, err := f.cache.Lookup(ctx, name, dns.TypeTXT)
		if err != nil || b != a {
			t.Fatalf("%s: second lookup %v, %v; want the first's answer", name, b, err)
		}
	}
	if q := f.queries(); q != n {
		t.Errorf("%d upstream queries for %d names, want one each", q, n)
	}
	// The flights map keeps at most KeptFills of them.
	if k := f.cache.FlightsForTest(); k > resolvercache.KeptFills {
		t.Errorf("flights map holds %d entries, want at most %d", k, resolvercache.KeptFills)
	}
}

// TestCacheKeptFillExpires: a kept fill obeys its TTL on the cache's clock,
// as a ristretto hit does, and so does a cached error.
func TestCacheKeptFillExpires(t *testing.T) {
	f := newCacheFixture(t, resolvercache.WithErrorTTL(2*time.Second))
	f.srv.AddRR(dnstest.TXT("short.example.com", "x", 60))
	f.srv.SetRcode("fail.example.com", dns.TypeTXT, dns.RcodeServerFailure)
	ctx := context.Background()
	for _, name := range []string{"short.example.com", "fail.example.com"} {
		_, err1 := f.cache.Lookup(ctx, name, dns.TypeTXT)
		_, err2 := f.cache.Lookup(ctx, name, dns.TypeTXT)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("%s: %v then %v", name, err1, err2)
		}
	}
	if q := f.queries(); q != 2 {
		t.Fatalf("%d upstream queries, want 2", q)
	}
	f.clock.Advance(61 * time.Second)
	for _, name := range []string{"short.example.com", "fail.example.com"} {
		_, _ = f.cache.Lookup(ctx, name, dns.TypeTXT)
	}
	if q := f.queries(); q != 4 {
		t.Errorf("%d upstream queries after both expired, want 4", q)
	}
}
