package resolvercache_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// lateFixture is a dnstest server answering after delay, a Client and a
// Cache in front of it, counting into reg.
type lateFixture struct {
	srv    *dnstest.Server
	client *resolvercache.Client
	cache  *resolvercache.Cache
	late   func() float64
}

func newLateFixture(t *testing.T, delay time.Duration, opts ...resolvercache.ClientOption) *lateFixture {
	t.Helper()
	return lateFixtureOn(t, startServer(t), delay, opts...)
}

// lateFixtureOn is newLateFixture on the server s; opts may name other
// upstreams.
func lateFixtureOn(t *testing.T, s *dnstest.Server, delay time.Duration, opts ...resolvercache.ClientOption) *lateFixture {
	t.Helper()
	s.SetDelay(delay)
	m, reg := newMetrics(t)
	cl := clientFor(t, s, append([]resolvercache.ClientOption{resolvercache.WithTimeout(5 * time.Second), resolvercache.WithRetries(0)}, opts...)...)
	c, err := resolvercache.NewCache(cl, resolvercache.WithCacheMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &lateFixture{srv: s, client: cl, cache: c, late: func() float64 { return metricValue(t, reg, "authpipe_dns_cache_late_total") }}
}

// giveUp looks name up under a context that ends after d, before the
// server answers, and expects KindCanceled.
func (f *lateFixture) giveUp(t *testing.T, name string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if a, err := f.cache.Lookup(ctx, name, dns.TypeTXT); kindOf(err) != resolvercache.KindCanceled {
		t.Fatalf("%s: %v, %v; want KindCanceled", name, a, err)
	}
}

// waitLate waits until n queries left running have settled and their
// outcomes are in the cache.
func (f *lateFixture) waitLate(t *testing.T, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.late() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%v late answers cached after 10s, want %v", f.late(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.cache.Wait()
}

// TestCacheKeepsLateAnswers: a lookup that gives up before the reply comes
// (a straggler deferred to the retry stage, a message's DNS budget spent)
// leaves its wire query running, and the reply, positive or negative, is
// cached: the next lookup of the name does not ask the server again.
func TestCacheKeepsLateAnswers(t *testing.T) {
	f := newLateFixture(t, 150*time.Millisecond)
	f.srv.AddRR(dnstest.TXT("slow.example.com", "v=spf1 -all", 300))

	f.giveUp(t, "slow.example.com", 20*time.Millisecond)
	f.giveUp(t, "missing.example.com", 20*time.Millisecond) // NXDOMAIN
	f.waitLate(t, 2)
	asked := f.srv.Queries.Load()
	if asked != 2 {
		t.Fatalf("%d queries, want 2", asked)
	}
	a, err := f.cache.Lookup(context.Background(), "SLOW.example.com.", dns.TypeTXT)
	if err != nil || len(a.TXT) != 1 || a.TXT[0] != "v=spf1 -all" {
		t.Fatalf("slow.example.com: %+v, %v", a, err)
	}
	if a, err := f.cache.Lookup(context.Background(), "missing.example.com", dns.TypeTXT); err != nil || a.Rcode != dns.RcodeNameError {
		t.Fatalf("missing.example.com: %+v, %v; want NXDOMAIN", a, err)
	}
	if q := f.srv.Queries.Load(); q != asked {
		t.Errorf("%d queries after the late answers were cached, want %d (no new one)", q, asked)
	}
}

// TestCacheLateQueryHoldsItsSlot: a query left running keeps its place
// under WithMaxInFlight until its reply comes, so what the upstream is
// asked stays bounded; the slot is free again afterwards.
func TestCacheLateQueryHoldsItsSlot(t *testing.T) {
	f := newLateFixture(t, 300*time.Millisecond, resolvercache.WithMaxInFlight(1))
	f.srv.AddRR(dnstest.TXT("a.example.com", "a", 300))
	f.srv.AddRR(dnstest.TXT("b.example.com", "b", 300))

	f.giveUp(t, "a.example.com", 20*time.Millisecond)
	// The only slot is a.example.com's until its reply: b waits for it
	// and gives up without asking.
	f.giveUp(t, "b.example.com", 50*time.Millisecond)
	if q := f.srv.Queries.Load(); q != 1 {
		t.Errorf("%d queries while the slot was taken, want 1", q)
	}
	f.waitLate(t, 1)
	a, err := f.cache.Lookup(context.Background(), "b.example.com", dns.TypeTXT)
	if err != nil || a.TXT[0] != "b" {
		t.Fatalf("b.example.com after the slot came free: %+v, %v", a, err)
	}
	if q := f.srv.Queries.Load(); q != 2 {
		t.Errorf("%d queries, want 2", q)
	}
}

// TestCacheLateErrorCached: a late SERVFAIL is cached for the error TTL,
// as a fill's would be, and the next lookup does not ask again.
func TestCacheLateErrorCached(t *testing.T) {
	f := newLateFixture(t, 50*time.Millisecond)
	f.srv.SetRcode("fail.example.com", dns.TypeTXT, dns.RcodeServerFailure)
	f.giveUp(t, "fail.example.com", 10*time.Millisecond)
	f.waitLate(t, 1)
	if _, err := f.cache.Lookup(context.Background(), "fail.example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindServFail {
		t.Fatalf("err = %v, want KindServFail", err)
	}
	if q := f.srv.Queries.Load(); q != 1 {
		t.Errorf("%d queries, want 1", q)
	}
}

// lookupAsync looks name up under ctx on a goroutine of its own.
func (f *lateFixture) lookupAsync(ctx context.Context, name string) <-chan lateResult {
	out := make(chan lateResult, 1)
	go func() {
		a, err := f.cache.Lookup(ctx, name, dns.TypeTXT)
		out <- lateResult{a, err}
	}()
	return out
}

type lateResult struct {
	a   *resolvercache.Answer
	err error
}

// TestCacheJoinsQueryLeftRunning: a lookup made after the first one gave
// up, while its query is still on the wire, waits for that query instead
// of asking again, whatever it comes to: the answer, the client's timeout,
// or the client's shutdown.
func TestCacheJoinsQueryLeftRunning(t *testing.T) {
	t.Run("answer", func(t *testing.T) {
		f := newLateFixture(t, 300*time.Millisecond)
		f.srv.AddRR(dnstest.TXT("j.example.com", "joined", 300))
		f.giveUp(t, "j.example.com", 20*time.Millisecond)
		r := <-f.lookupAsync(context.Background(), "j.example.com")
		if r.err != nil || r.a.TXT[0] != "joined" {
			t.Fatalf("%+v, %v", r.a, r.err)
		}
		if q := f.srv.Queries.Load(); q != 1 {
			t.Errorf("%d queries, want 1", q)
		}
	})
	// With an attempt left, the first attempt's timeout is not the
	// lookup's outcome: the query left running tries again, as the lookup
	// would have, and the joiner gets the second attempt's timeout.
	for retries := range 2 {
		t.Run(fmt.Sprintf("timeout, %d retries", retries), func(t *testing.T) {
			f := newLateFixture(t, 0, resolvercache.WithTimeout(100*time.Millisecond), resolvercache.WithRetries(retries))
			f.srv.AddTimeout("dead.example.com")
			f.giveUp(t, "dead.example.com", 20*time.Millisecond)
			if r := <-f.lookupAsync(context.Background(), "dead.example.com"); kindOf(r.err) != resolvercache.KindTimeout {
				t.Fatalf("%+v, %v; want KindTimeout", r.a, r.err)
			}
			if q := f.srv.Queries.Load(); q != int64(retries+1) {
				t.Errorf("%d queries, want %d", q, retries+1)
			}
		})
	}
	t.Run("second upstream answers", func(t *testing.T) {
		// Two upstreams, the first silent: the query left running fails
		// over to the second, as the lookup would have, and its answer is
		// cached.
		silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		s := startServer(t)
		s.AddRR(dnstest.TXT("fo.example.com", "second", 300))
		f := lateFixtureOn(t, s, 0, resolvercache.WithUpstreams(silent.LocalAddr().String(), s.Addr),
			resolvercache.WithTimeout(100*time.Millisecond), resolvercache.WithRetries(1))
		f.giveUp(t, "fo.example.com", 20*time.Millisecond)
		f.waitLate(t, 1)
		if a, err := f.cache.Lookup(context.Background(), "fo.example.com", dns.TypeTXT); err != nil || a.TXT[0] != "second" {
			t.Fatalf("%+v, %v", a, err)
		}
		if q := s.Queries.Load(); q != 1 {
			t.Errorf("%d queries to the second upstream, want 1", q)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		f := newLateFixture(t, 0)
		f.srv.AddTimeout("dead.example.com")
		f.giveUp(t, "dead.example.com", 20*time.Millisecond)
		res := f.lookupAsync(context.Background(), "dead.example.com")
		for f.cache.JoinedForTest() < 2 {
			time.Sleep(time.Millisecond)
		}
		f.client.Close()
		if r := <-res; kindOf(r.err) != resolvercache.KindNetwork {
			t.Fatalf("%+v, %v; want KindNetwork", r.a, r.err)
		}
	})
}
