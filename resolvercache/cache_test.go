package resolvercache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// fakeClock is a settable clock shared by client and cache.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time                        { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration)               { c.ns.Add(int64(d)) }
func (c *fakeClock) clientOpt() resolvercache.ClientOption { return resolvercache.WithClock(c.Now) }

// cacheFixture is a dnstest server, a client and a cache sharing a clock.
type cacheFixture struct {
	srv   *dnstest.Server
	clock *fakeClock
	cache *resolvercache.Cache
}

func newCacheFixture(t *testing.T, opts ...resolvercache.CacheOption) *cacheFixture {
	t.Helper()
	s := startServer(t)
	clk := newFakeClock()
	cl := clientFor(t, s, clk.clientOpt(), resolvercache.WithTimeout(200*time.Millisecond), resolvercache.WithRetries(0))
	c, err := resolvercache.NewCache(cl, append([]resolvercache.CacheOption{resolvercache.WithCacheClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &cacheFixture{srv: s, clock: clk, cache: c}
}

// get looks name up and waits for the cache's asynchronous insert.
func (f *cacheFixture) get(t *testing.T, name string, qtype uint16) (*resolvercache.Answer, error) {
	t.Helper()
	a, err := f.cache.Lookup(context.Background(), name, qtype)
	f.cache.Wait()
	return a, err
}

func (f *cacheFixture) queries() int64 { return f.srv.Queries.Load() }

func TestCacheHitMiss(t *testing.T) {
	m, reg := newMetrics(t)
	f := newCacheFixture(t, resolvercache.WithCacheMetrics(m))
	f.srv.AddRR(dnstest.TXT("hit.example.com", "v=spf1 -all", 300))
	a1, err := f.get(t, "hit.example.com", dns.TypeTXT)
	if err != nil || len(a1.TXT) != 1 {
		t.Fatal(a1, err)
	}
	a2, _ := f.get(t, "HIT.Example.com.", dns.TypeTXT)
	if a2 != a1 {
		t.Errorf("hit should return the shared *Answer")
	}
	if q := f.queries(); q != 1 {
		t.Errorf("%d upstream queries, want 1", q)
	}
	// Another type is another entry.
	if _, err := f.get(t, "hit.example.com", dns.TypeA); err != nil {
		t.Fatal(err)
	}
	if q := f.queries(); q != 2 {
		t.Errorf("%d upstream queries, want 2", q)
	}
	if h := metricValue(t, reg, "authpipe_dns_cache_hits_total"); h != 1 {
		t.Errorf("hits = %v", h)
	}
	if h := metricValue(t, reg, "authpipe_dns_cache_misses_total"); h != 2 {
		t.Errorf("misses = %v", h)
	}
	if v := metricValue(t, reg, "authpipe_dns_lookups_total", "cache"); v != 3 {
		t.Errorf("cache lookups = %v", v)
	}
	if v := metricValue(t, reg, "authpipe_dns_cache_cost_bytes"); v <= 0 {
		t.Errorf("cost = %v", v)
	}
}

func TestCacheTTLCountdownAndExpiry(t *testing.T) {
	f := newCacheFixture(t)
	f.srv.AddRR(dnstest.TXT("ttl.example.com", "x", 300))
	a, _ := f.get(t, "ttl.example.com", dns.TypeTXT)
	start := f.clock.Now()
	if a.TTL != 300 || a.Remaining(start) != 300*time.Second {
		t.Fatalf("fresh: TTL %d remaining %v", a.TTL, a.Remaining(start))
	}
	f.clock.Advance(100 * time.Second)
	b, _ := f.get(t, "ttl.example.com", dns.TypeTXT)
	if b != a || b.Remaining(f.clock.Now()) != 200*time.Second {
		t.Errorf("after 100s: remaining %v", b.Remaining(f.clock.Now()))
	}
	f.clock.Advance(199 * time.Second)
	f.get(t, "ttl.example.com", dns.TypeTXT)
	if q := f.queries(); q != 1 {
		t.Errorf("at 299s: %d queries, want 1", q)
	}
	f.clock.Advance(time.Second)
	c, _ := f.get(t, "ttl.example.com", dns.TypeTXT)
	if q := f.queries(); q != 2 {
		t.Errorf("at 300s: %d queries, want 2 (expired)", q)
	}
	if c == a || c.Remaining(f.clock.Now()) != 300*time.Second {
		t.Errorf("refetched answer should be new and full")
	}
}

func TestCacheClamps(t *testing.T) {
	f := newCacheFixture(t, resolvercache.WithTTLBounds(60*time.Second, 2*time.Hour),
		resolvercache.WithNegativeTTLBounds(10*time.Second, 15*time.Minute))
	f.srv.AddRR(dnstest.TXT("short.example.com", "x", 5))
	f.srv.AddRR(dnstest.TXT("long.example.com", "x", 86400))
	f.srv.AddRR(dnstest.TXT("mid.example.com", "x", 600))
	for name, want := range map[string]uint32{"short.example.com": 60, "long.example.com": 7200, "mid.example.com": 600} {
		a, err := f.get(t, name, dns.TypeTXT)
		if err != nil || a.TTL != want {
			t.Errorf("%s: TTL %v, want %d (%v)", name, a.TTL, want, err)
		}
		b, _ := f.get(t, name, dns.TypeTXT)
		if b != a {
			t.Errorf("%s: not served from cache", name)
		}
	}
	// The clamped short answer stays for 60s, not 5s.
	f.clock.Advance(59 * time.Second)
	before := f.queries()
	f.get(t, "short.example.com", dns.TypeTXT)
	if f.queries() != before {
		t.Errorf("short answer should live 60s")
	}
	f.clock.Advance(time.Second)
	f.get(t, "short.example.com", dns.TypeTXT)
	if f.queries() != before+1 {
		t.Errorf("short answer should expire at 60s")
	}

	for negTTL, want := range map[uint32]uint32{3: 10, 600: 600, 86400: 900} {
		f.srv.SetNegativeTTL(negTTL)
		name := fmt.Sprintf("nx%d.example.com", negTTL)
		a, err := f.get(t, name, dns.TypeTXT)
		if err != nil || !a.NXDomain() || a.TTL != want {
			t.Errorf("negative TTL %d: got %+v, %v; want TTL %d", negTTL, a, err, want)
		}
	}
}

func TestCacheNegative(t *testing.T) {
	f := newCacheFixture(t)
	f.srv.SetNegativeTTL(120)
	f.srv.AddRR(dnstest.TXT("exists.example.com", "x", 300))
	for _, name := range []string{"nx.example.com", "exists.example.com"} {
		a, err := f.get(t, name, dns.TypeMX)
		if err != nil || !a.Empty() || a.TTL != 120 {
			t.Fatalf("%s: %+v %v", name, a, err)
		}
	}
	f.clock.Advance(119 * time.Second)
	f.get(t, "nx.example.com", dns.TypeMX)
	f.get(t, "exists.example.com", dns.TypeMX)
	if q := f.queries(); q != 2 {
		t.Errorf("%d queries, want 2 (negative answers cached)", q)
	}
	f.clock.Advance(time.Second)
	f.get(t, "nx.example.com", dns.TypeMX)
	if q := f.queries(); q != 3 {
		t.Errorf("%d queries, want 3 (negative answer expired)", q)
	}
}

func TestCacheErrors(t *testing.T) {
	f := newCacheFixture(t)
	f.srv.SetRcode("sf.example.com", 0, dns.RcodeServerFailure)
	f.srv.AddTimeout("slow.example.com")
	_, err1 := f.get(t, "sf.example.com", dns.TypeTXT)
	_, err2 := f.get(t, "sf.example.com", dns.TypeTXT)
	if kindOf(err1) != resolvercache.KindServFail || err2 != err1 {
		t.Errorf("servfail: %v then %v", err1, err2)
	}
	if q := f.queries(); q != 1 {
		t.Errorf("%d queries, want 1 (SERVFAIL cached)", q)
	}
	f.clock.Advance(resolvercache.DefaultErrorTTL)
	f.get(t, "sf.example.com", dns.TypeTXT)
	if q := f.queries(); q != 2 {
		t.Errorf("%d queries, want 2 (SERVFAIL cached only %v)", q, resolvercache.DefaultErrorTTL)
	}

	_, err := f.get(t, "slow.example.com", dns.TypeTXT)
	if kindOf(err) != resolvercache.KindTimeout {
		t.Fatalf("timeout: %v", err)
	}
	f.get(t, "slow.example.com", dns.TypeTXT)
	if q := f.queries(); q != 3 {
		t.Errorf("%d queries, want 3 (timeout cached)", q)
	}

	// Bad names are not cached (and never reach the server).
	for range 2 {
		if _, err := f.get(t, "a..b", dns.TypeTXT); kindOf(err) != resolvercache.KindBadName {
			t.Errorf("bad name: %v", err)
		}
	}
	if _, err := f.get(t, strings.Repeat("a.", 200), dns.TypeTXT); kindOf(err) != resolvercache.KindBadName {
		t.Errorf("long name: %v", err)
	}
	if q := f.queries(); q != 3 {
		t.Errorf("%d queries after bad names", q)
	}

	if _, err := resolvercache.NewCache(&fakeResolver{}, resolvercache.WithErrorTTL(time.Minute)); err == nil {
		t.Error("error TTL over 30s accepted")
	}
}

// fakeResolver answers from a function and counts calls.
type fakeResolver struct {
	calls atomic.Int64
	fn    func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error)
}

func (r *fakeResolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	r.calls.Add(1)
	return r.fn(ctx, name, qtype)
}

func TestCacheNeverCachesCanceled(t *testing.T) {
	up := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindCanceled, Err: context.Canceled}
	}}
	c, err := resolvercache.NewCache(up)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		_, err := c.Lookup(context.Background(), "x.example.com", dns.TypeTXT)
		c.Wait()
		if kindOf(err) != resolvercache.KindCanceled {
			t.Fatalf("err = %v", err)
		}
	}
	if n := up.calls.Load(); n != 3 {
		t.Errorf("%d upstream calls, want 3", n)
	}
	// A plain (non-*Error) error passes through uncached.
	up.fn = func(context.Context, string, uint16) (*resolvercache.Answer, error) { return nil, errors.New("boom") }
	for range 2 {
		if _, err := c.Lookup(context.Background(), "y.example.com", dns.TypeTXT); err == nil || err.Error() != "boom" {
			t.Fatalf("err = %v", err)
		}
		c.Wait()
	}
	if n := up.calls.Load(); n != 5 {
		t.Errorf("%d upstream calls, want 5", n)
	}
}

// gate blocks every upstream lookup until released.
type gate struct {
	up      resolvercache.Resolver
	release chan struct{}
}

func (g *gate) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	<-g.release
	return g.up.Lookup(ctx, name, qtype)
}

func TestCacheSingleflight(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("sf.example.com", "shared", 300))
	g := &gate{up: clientFor(t, s), release: make(chan struct{})}
	m, reg := newMetrics(t)
	c, err := resolvercache.NewCache(g, resolvercache.WithCacheMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 50
	var wg sync.WaitGroup
	answers := make([]*resolvercache.Answer, n)
	for i := range n {
		wg.Go(func() {
			name := "sf.example.com"
			if i%2 == 1 {
				name = "SF.EXAMPLE.COM."
			}
			a, err := c.Lookup(context.Background(), name, dns.TypeTXT)
			if err != nil {
				t.Error(err)
			}
			answers[i] = a
		})
	}
	for c.JoinedForTest() < n {
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	if q := s.Queries.Load(); q != 1 {
		t.Errorf("%d upstream queries for %d concurrent lookups, want 1", q, n)
	}
	for _, a := range answers {
		if a != answers[0] || a == nil || a.TXT[0] != "shared" {
			t.Fatalf("answers differ")
		}
	}
	if v := metricValue(t, reg, "authpipe_dns_cache_shared_total"); v != n-1 {
		t.Errorf("shared = %v, want %d", v, n-1)
	}
}

// TestCacheWaiterCancel: every caller returns when its own context ends.
// The leader's lookup runs under the leader's context: when the leader
// gives up, a waiter asks again and gets the answer; when the only caller
// gives up, nothing is cached.
func TestCacheWaiterCancel(t *testing.T) {
	release := make(chan struct{})
	up := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, &resolvercache.Error{Kind: resolvercache.KindCanceled, Err: ctx.Err()}
		}
		return &resolvercache.Answer{Name: name, Type: qtype, TXT: []string{"late"}, TTL: 300, Received: time.Now()}, nil
	}}
	c, err := resolvercache.NewCache(up)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Leader and a waiter; the leader gives up.
	lctx, lcancel := context.WithCancel(context.Background())
	leader := make(chan error)
	go func() {
		_, err := c.Lookup(lctx, "w.example.com", dns.TypeTXT)
		leader <- err
	}()
	for c.JoinedForTest() < 1 {
		time.Sleep(time.Millisecond)
	}
	type result struct {
		a   *resolvercache.Answer
		err error
	}
	waiter := make(chan result)
	go func() {
		a, err := c.Lookup(context.Background(), "w.example.com", dns.TypeTXT)
		waiter <- result{a, err}
	}()
	for c.JoinedForTest() < 2 {
		time.Sleep(time.Millisecond)
	}
	lcancel()
	if err := <-leader; kindOf(err) != resolvercache.KindCanceled {
		t.Errorf("leader: %v", err)
	}
	for up.calls.Load() < 2 { // the waiter took over
		time.Sleep(time.Millisecond)
	}
	close(release)
	if r := <-waiter; r.err != nil || r.a.TXT[0] != "late" {
		t.Errorf("waiter: %+v %v", r.a, r.err)
	}

	// The only caller gives up: the lookup stops, nothing is cached.
	release = make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Lookup(ctx, "alone.example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindCanceled {
		t.Errorf("alone: %v", err)
	}
	c.Wait()
	close(release)
	calls := up.calls.Load()
	if a, err := c.Lookup(context.Background(), "alone.example.com", dns.TypeTXT); err != nil || a.TXT[0] != "late" || up.calls.Load() != calls+1 {
		t.Errorf("after release: %+v %v, %d calls (want %d)", a, err, up.calls.Load(), calls+1)
	}
}

func TestCacheByteBudget(t *testing.T) {
	value := strings.Repeat("k", 1000)
	up := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		return &resolvercache.Answer{Name: name, Type: qtype, TXT: []string{value}, TTL: 3600, Received: time.Now()}, nil
	}}
	m, reg := newMetrics(t)
	const budget = 64 << 10
	c, err := resolvercache.NewCache(up, resolvercache.WithMaxBytes(budget), resolvercache.WithCacheMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2000 {
		if _, err := c.Lookup(context.Background(), fmt.Sprintf("n%d.example.com", i), dns.TypeTXT); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	cost := c.Cost()
	if cost <= 0 || cost > budget {
		t.Errorf("cost %d outside (0, %d]", cost, budget)
	}
	if ev := metricValue(t, reg, "authpipe_dns_cache_evictions_total"); ev == 0 {
		t.Logf("no evictions counted (admission refused the rest)")
	}
	t.Logf("cost %d of %d bytes after 2000 inserts of ~1.3 KB", cost, budget)
	if _, err := resolvercache.NewCache(up, resolvercache.WithMaxBytes(100)); err == nil {
		t.Error("tiny budget accepted")
	}
}

func TestCacheOptionsValidation(t *testing.T) {
	up := &fakeResolver{}
	for _, o := range []resolvercache.CacheOption{
		resolvercache.WithTTLBounds(time.Hour, time.Second),
		resolvercache.WithNegativeTTLBounds(-1, time.Second),
		resolvercache.WithErrorTTL(-1),
		resolvercache.WithFillTimeout(0),
		resolvercache.WithCacheClock(nil),
	} {
		if _, err := resolvercache.NewCache(up, o); err == nil {
			t.Error("bad option accepted")
		}
	}
	if _, err := resolvercache.NewCache(nil); err == nil {
		t.Error("nil upstream accepted")
	}
}

func TestCacheAnswerWithoutReceived(t *testing.T) {
	clk := newFakeClock()
	up := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		return &resolvercache.Answer{Name: name, Type: qtype, TXT: []string{"x"}, TTL: 100}, nil
	}}
	c, err := resolvercache.NewCache(up, resolvercache.WithCacheClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, _ := c.Lookup(context.Background(), "r.example.com", dns.TypeTXT)
	c.Wait()
	if a.Received.IsZero() || a.Remaining(clk.Now()) != 100*time.Second {
		t.Errorf("Received not stamped: %+v", a)
	}
	clk.Advance(99 * time.Second)
	if b, _ := c.Lookup(context.Background(), "r.example.com", dns.TypeTXT); b != a || up.calls.Load() != 1 {
		t.Errorf("not cached")
	}
}

func TestCacheFillTimeoutAndErrorTTL(t *testing.T) {
	up := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		<-ctx.Done() // an upstream that only gives up when told to
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindCanceled, Err: ctx.Err()}
	}}
	c, err := resolvercache.NewCache(up, resolvercache.WithFillTimeout(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 2 {
		_, err := c.Lookup(context.Background(), "stuck.example.com", dns.TypeTXT)
		c.Wait()
		if kindOf(err) != resolvercache.KindTimeout {
			t.Fatalf("err = %v, want timeout", err)
		}
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("%d calls: a fill timeout must not be cached", n)
	}

	clk := newFakeClock()
	sf := &fakeResolver{fn: func(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindServFail, Rcode: dns.RcodeServerFailure}
	}}
	c2, err := resolvercache.NewCache(sf, resolvercache.WithErrorTTL(10*time.Second), resolvercache.WithCacheClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	for _, step := range []time.Duration{0, 9 * time.Second, time.Second} {
		clk.Advance(step)
		_, _ = c2.Lookup(context.Background(), "sf.example.com", dns.TypeTXT)
		c2.Wait()
	}
	if n := sf.calls.Load(); n != 2 {
		t.Errorf("%d calls, want 2 (error cached 10s)", n)
	}
}

// panicOnce panics in its first lookup, once released, as a bug in the
// upstream would; later lookups go to the real server. No real part panics
// on demand.
type panicOnce struct {
	up      resolvercache.Resolver
	release chan struct{}
	calls   atomic.Int64
}

func (p *panicOnce) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	if p.calls.Add(1) == 1 {
		<-p.release
		panic("injected upstream bug")
	}
	return p.up.Lookup(ctx, name, qtype)
}

// TestCacheFlightPanic: when the leader's fill panics, the panic reaches
// the leader's caller, and the lookups waiting on its flight ask again at
// once rather than wait out their contexts; the name is not left stuck
// behind a flight nobody ends.
func TestCacheFlightPanic(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("p.example.com", "after", 300))
	up := &panicOnce{up: clientFor(t, s), release: make(chan struct{})}
	c, err := resolvercache.NewCache(up)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	leader := make(chan any, 1)
	go func() {
		defer func() { leader <- recover() }()
		_, _ = c.Lookup(context.Background(), "p.example.com", dns.TypeTXT)
	}()
	for c.JoinedForTest() < 1 {
		time.Sleep(time.Millisecond)
	}
	const n = 5
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make(chan error, n)
	for range n {
		go func() {
			a, err := c.Lookup(ctx, "p.example.com", dns.TypeTXT)
			if err == nil && (len(a.TXT) != 1 || a.TXT[0] != "after") {
				err = fmt.Errorf("answer %v", a.TXT)
			}
			errs <- err
		}()
	}
	for c.JoinedForTest() < n+1 {
		time.Sleep(time.Millisecond)
	}
	close(up.release)
	if got := <-leader; got != "injected upstream bug" {
		t.Fatalf("leader recovered %v, want the upstream's panic", got)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("waiter: %v", err)
		}
	}
	if ctx.Err() != nil {
		t.Error("waiters waited out their contexts")
	}
	if q := s.Queries.Load(); q != 1 {
		t.Errorf("%d queries after the panic, want 1 (one new flight for the waiters)", q)
	}
}
