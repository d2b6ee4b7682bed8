package resolvercache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// TestCachePrefetch: Prefetch sends the query and returns before the reply
// comes; the socket's reader caches the answer, and the lookup made later
// is a hit. A name cached or already asked is not asked again, and
// Prefetch says the answer is on its way for both.
func TestCachePrefetch(t *testing.T) {
	f := newLateFixture(t, 200*time.Millisecond)
	f.srv.AddRR(dnstest.TXT("p.example.com", "p", 300))
	if !f.cache.Prefetch("P.example.com.", dns.TypeTXT) {
		t.Fatal("Prefetch: not started")
	}
	if l := f.late(); l != 0 {
		t.Fatalf("%v prefetches settled before the server answered", l)
	}
	if !f.cache.Prefetch("p.example.com", dns.TypeTXT) {
		t.Error("Prefetch false while the query is on the wire")
	}
	f.waitLate(t, 1)
	if !f.cache.Prefetch("p.example.com", dns.TypeTXT) {
		t.Error("Prefetch false for a cached answer")
	}
	a, err := f.cache.Lookup(context.Background(), "p.example.com", dns.TypeTXT)
	if err != nil || len(a.TXT) != 1 || a.TXT[0] != "p" {
		t.Fatalf("lookup after the prefetch: %+v, %v", a, err)
	}
	if q := f.srv.Queries.Load(); q != 1 {
		t.Errorf("%d queries, want 1", q)
	}
	// Negative answers are cached as a fill's are.
	if !f.cache.Prefetch("none.example.com", dns.TypeTXT) {
		t.Fatal("Prefetch of a missing name: not started")
	}
	f.waitLate(t, 2)
	if a, err := f.cache.Lookup(context.Background(), "none.example.com", dns.TypeTXT); err != nil || !a.NXDomain() {
		t.Fatalf("missing name after the prefetch: %+v, %v", a, err)
	}
	if q := f.srv.Queries.Load(); q != 2 {
		t.Errorf("%d queries, want 2", q)
	}
}

// TestCachePrefetchJoined: a lookup made while the prefetched query is on
// the wire waits for it rather than asking again, whatever it comes to: an
// answer, or (the server silent) the client's timeout after its retries,
// each attempt sent as the lookup itself would have sent it.
func TestCachePrefetchJoined(t *testing.T) {
	f := newLateFixture(t, 100*time.Millisecond, resolvercache.WithTimeout(150*time.Millisecond), resolvercache.WithRetries(1))
	f.srv.AddRR(dnstest.TXT("j.example.com", "j", 300))
	f.srv.AddTimeout("silent.example.com")
	if !f.cache.Prefetch("j.example.com", dns.TypeTXT) || !f.cache.Prefetch("silent.example.com", dns.TypeTXT) {
		t.Fatal("Prefetch: not started")
	}
	ctx := context.Background()
	j, silent := f.lookupAsync(ctx, "j.example.com"), f.lookupAsync(ctx, "silent.example.com")
	if r := <-j; r.err != nil || r.a.TXT[0] != "j" {
		t.Fatalf("j.example.com: %+v, %v", r.a, r.err)
	}
	if r := <-silent; kindOf(r.err) != resolvercache.KindTimeout {
		t.Fatalf("silent.example.com: %+v, %v; want KindTimeout", r.a, r.err)
	}
	// j once; silent twice (the first attempt and its retry).
	if q := f.srv.Queries.Load(); q != 3 {
		t.Errorf("%d queries, want 3", q)
	}
	// The timeout is cached for the error TTL, as a fill's would be.
	if _, err := f.cache.Lookup(ctx, "silent.example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindTimeout {
		t.Errorf("silent.example.com again: %v, want the cached KindTimeout", err)
	}
	if q := f.srv.Queries.Load(); q != 3 {
		t.Errorf("%d queries after the cached timeout, want 3", q)
	}
}

// TestCachePrefetchNoSlot: with every in-flight slot taken, Prefetch sends
// nothing, waits for nothing and says so, and leaves no flight behind: the
// caller's own lookup asks once a slot is free.
func TestCachePrefetchNoSlot(t *testing.T) {
	f := newLateFixture(t, 200*time.Millisecond, resolvercache.WithMaxInFlight(1))
	f.srv.AddRR(dnstest.TXT("a.example.com", "a", 300))
	f.srv.AddRR(dnstest.TXT("b.example.com", "b", 300))
	if !f.cache.Prefetch("a.example.com", dns.TypeTXT) {
		t.Fatal("Prefetch a: not started")
	}
	if f.cache.Prefetch("b.example.com", dns.TypeTXT) {
		t.Fatal("Prefetch b started with the only slot taken")
	}
	f.waitLate(t, 1) // a's
	a, err := f.cache.Lookup(context.Background(), "b.example.com", dns.TypeTXT)
	if err != nil || a.TXT[0] != "b" {
		t.Fatalf("b.example.com: %+v, %v", a, err)
	}
	// b asked once, by its lookup, which no prefetch settled.
	if q, l := f.srv.Queries.Load(), f.late(); q != 2 || l != 1 {
		t.Errorf("%d queries and %v prefetches settled, want 2 and 1", q, l)
	}
}

// TestCachePrefetchOtherUpstream: a cache in front of anything but a
// Client starts nothing, and says the answer is neither cached nor on its
// way, so that the caller looks it up itself.
func TestCachePrefetchOtherUpstream(t *testing.T) {
	z, err := resolvercache.ParseZone(strings.NewReader("z.example. 300 IN TXT \"z\"\n"), "example.")
	if err != nil {
		t.Fatal(err)
	}
	c, err := resolvercache.NewCache(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if c.Prefetch("z.example", dns.TypeTXT) {
		t.Fatal("Prefetch true in front of a Zone")
	}
	if _, err := c.Lookup(context.Background(), "z.example", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if !c.Prefetch("z.example", dns.TypeTXT) {
		t.Error("Prefetch false for a cached answer")
	}
}

// TestCachePrefetchThenLookups: the waiters of settled prefetches go back
// to the client's pool, and lookups that take them from there wait for
// their own replies as lookups, not as prefetches: each is answered.
// (A waiter that went back still marked as a prefetch's left its lookup
// waiting for a reply that was cached instead of handed to it.)
func TestCachePrefetchThenLookups(t *testing.T) {
	f := newLateFixture(t, 0)
	const n = 64
	for i := range n {
		name := fmt.Sprintf("p%d.example.com", i)
		f.srv.AddRR(dnstest.TXT(name, "p", 300))
		f.srv.AddRR(dnstest.TXT("l"+name, "l", 300))
		if !f.cache.Prefetch(name, dns.TypeTXT) {
			t.Fatalf("Prefetch %s: not started", name)
		}
	}
	f.waitLate(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range n {
		name := fmt.Sprintf("lp%d.example.com", i)
		if a, err := f.cache.Lookup(ctx, name, dns.TypeTXT); err != nil || a.TXT[0] != "l" {
			t.Fatalf("%s after the prefetches: %+v, %v", name, a, err)
		}
	}
}
