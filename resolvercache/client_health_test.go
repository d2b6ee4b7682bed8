package resolvercache_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// healthLog records WithHealthFunc's calls.
type healthLog struct {
	mu     sync.Mutex
	events []string
}

func (h *healthLog) option() resolvercache.ClientOption {
	return resolvercache.WithHealthFunc(func(server string, answering bool, err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if answering != (err == nil) {
			h.events = append(h.events, fmt.Sprintf("%s answering=%v with error %v", server, answering, err))
			return
		}
		h.events = append(h.events, fmt.Sprintf("%s %v", server, answering))
	})
}

func (h *healthLog) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// TestDeadUpstreamAskedLast: with two servers and the first not
// answering, a lookup went to the first and waited out its timeout every
// time (the first in resolv.conf is asked first). Now, once
// UpstreamDownAfter queries to it in a row have timed out, lookups ask
// the second first; the first gets one probe per hold-down, and once it
// answers one it is asked first again. Both changes are told to the
// health func. Query counts, not times, show where lookups went.
func TestDeadUpstreamAskedLast(t *testing.T) {
	dead, good := startServer(t), startServer(t)
	for _, s := range []*dnstest.Server{dead, good} {
		s.AddRR(dnstest.TXT("a.example.", "v=ok", 300))
	}
	dead.SetDown(true)
	var h healthLog
	m, reg := newMetrics(t)
	c := newClient(t, resolvercache.WithUpstreams(dead.Addr, good.Addr), resolvercache.WithTimeout(100*time.Millisecond),
		resolvercache.WithRetries(1), h.option(), resolvercache.WithMetrics(m))
	lookup := func() {
		t.Helper()
		if _, err := c.Lookup(context.Background(), "a.example", dns.TypeTXT); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		lookup()
	}
	if got := dead.Queries.Load(); got != resolvercache.UpstreamDownAfter {
		t.Errorf("the dead server was asked %d times in 20 lookups, want %d (then held down)", got, resolvercache.UpstreamDownAfter)
	}
	if got := good.Queries.Load(); got != 20 {
		t.Errorf("the good server was asked %d times, want 20", got)
	}
	if want := []string{dead.Addr + " false"}; !slices.Equal(h.get(), want) {
		t.Errorf("health events %q, want %q", h.get(), want)
	}
	// The metrics say the same, per server.
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"authpipe_dns_upstream_up", []string{dead.Addr}, 0},
		{"authpipe_dns_upstream_up", []string{good.Addr}, 1},
		{"authpipe_dns_upstream_failures_total", []string{"timeout", dead.Addr}, resolvercache.UpstreamDownAfter},
		{"authpipe_dns_upstream_failures_total", []string{"timeout", good.Addr}, 0},
		{"authpipe_dns_upstream_replies_total", []string{dead.Addr}, 0},
		{"authpipe_dns_upstream_replies_total", []string{good.Addr}, 20},
	} {
		if got := metricValue(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// Hold-down over: the next lookup probes the first server, which
	// answers now; it is up and asked first again.
	dead.SetDown(false)
	resolvercache.ProbeNowForTest(c)
	lookup()
	lookup()
	if got := dead.Queries.Load(); got != resolvercache.UpstreamDownAfter+2 {
		t.Errorf("after recovery the first server was asked %d times, want %d", got, resolvercache.UpstreamDownAfter+2)
	}
	if got := good.Queries.Load(); got != 20 {
		t.Errorf("after recovery the second server was asked %d times, want still 20", got)
	}
	if want := []string{dead.Addr + " false", dead.Addr + " true"}; !slices.Equal(h.get(), want) {
		t.Errorf("health events %q, want %q", h.get(), want)
	}
	if up := metricValue(t, reg, "authpipe_dns_upstream_up", dead.Addr); up != 1 {
		t.Errorf("upstream_up of the recovered server = %v, want 1", up)
	}

	// A probe that fails leaves it down, and the lookup goes on to the
	// second server.
	dead.SetDown(true)
	for range resolvercache.UpstreamDownAfter {
		lookup()
	}
	resolvercache.ProbeNowForTest(c)
	before := dead.Queries.Load()
	lookup()
	lookup()
	if got := dead.Queries.Load() - before; got != 1 {
		t.Errorf("a probe that timed out: the first server was asked %d times in 2 lookups, want 1", got)
	}
	if want := []string{dead.Addr + " false", dead.Addr + " true", dead.Addr + " false"}; !slices.Equal(h.get(), want) {
		t.Errorf("health events %q, want %q", h.get(), want)
	}
}

// TestRefusingUpstream: a server whose port is closed answers with ICMP
// port unreachable, which a connected UDP socket reports as a network
// error: it is held down like a silent one, with that error.
func TestRefusingUpstream(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	good := startServer(t)
	good.AddRR(dnstest.TXT("a.example.", "v=ok", 300))
	var h healthLog
	c := newClient(t, resolvercache.WithUpstreams(closed, good.Addr), resolvercache.WithTimeout(time.Second),
		resolvercache.WithRetries(1), h.option())
	for range 10 {
		if _, err := c.Lookup(context.Background(), "a.example", dns.TypeTXT); err != nil {
			t.Fatal(err)
		}
	}
	if got := good.Queries.Load(); got != 10 {
		t.Errorf("the good server was asked %d times, want 10", got)
	}
	if want := []string{closed + " false"}; !slices.Equal(h.get(), want) {
		t.Errorf("health events %q, want %q", h.get(), want)
	}
}

// TestSingleUpstreamHealth: with one server there is nothing to ask
// instead, so it is asked whatever its state, but its changes are told.
func TestSingleUpstreamHealth(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("a.example.", "v=ok", 300))
	s.SetDown(true)
	var h healthLog
	c := newClient(t, resolvercache.WithUpstreams(s.Addr), resolvercache.WithTimeout(50*time.Millisecond),
		resolvercache.WithRetries(0), h.option())
	for range resolvercache.UpstreamDownAfter + 2 {
		if _, err := c.Lookup(context.Background(), "a.example", dns.TypeTXT); err == nil {
			t.Fatal("a lookup of a silent server succeeded")
		}
	}
	if got := s.Queries.Load(); got != resolvercache.UpstreamDownAfter+2 {
		t.Errorf("the only server was asked %d times, want every time (%d)", got, resolvercache.UpstreamDownAfter+2)
	}
	s.SetDown(false)
	if _, err := c.Lookup(context.Background(), "a.example", dns.TypeTXT); err != nil {
		t.Fatal(err)
	}
	if want := []string{s.Addr + " false", s.Addr + " true"}; !slices.Equal(h.get(), want) {
		t.Errorf("health events %q, want %q", h.get(), want)
	}
}

// TestTCPBlockedIsNoOutage: a server that answers over UDP with the TC bit
// and whose TCP port is closed (a firewall that lets DNS over TCP through
// nowhere) fails those lookups, but it has answered: it is not held down.
func TestTCPBlockedIsNoOutage(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dns.Msg
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			r := new(dns.Msg)
			r.SetReply(&q)
			r.Truncated = true
			if b, err := r.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	var h healthLog
	c := newClient(t, resolvercache.WithUpstreams(pc.LocalAddr().String()), resolvercache.WithTimeout(time.Second),
		resolvercache.WithRetries(0), h.option())
	// At once, as traffic asks: the UDP answers come before the TCP
	// failures, which would otherwise be that many in a row.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := c.Lookup(context.Background(), fmt.Sprintf("big%d.example", i), dns.TypeTXT); err == nil {
				t.Error("a lookup over blocked TCP succeeded")
			}
		})
	}
	wg.Wait()
	if got := h.get(); len(got) != 0 {
		t.Errorf("health events %q, want none: the server answered every query over UDP", got)
	}
}

// TestSlowNameIsNoOutage: a resolver asked about a domain whose own
// servers are dead takes longer than the client's timeout for that name,
// while it answers the rest: those timeouts, however many in a row, do not
// hold it down, since it was heard from while they waited.
func TestSlowNameIsNoOutage(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("a.example.", "v=ok", 300))
	for i := range 3 * resolvercache.UpstreamDownAfter {
		s.AddTimeout(fmt.Sprintf("x%d.dead.example.", i))
	}
	var h healthLog
	c := newClient(t, resolvercache.WithUpstreams(s.Addr), resolvercache.WithTimeout(300*time.Millisecond),
		resolvercache.WithRetries(0), h.option())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { // the rest of the traffic, answered
		for ctx.Err() == nil {
			if _, err := c.Lookup(ctx, "a.example", dns.TypeTXT); err != nil && ctx.Err() == nil {
				t.Error(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	var slow sync.WaitGroup
	for i := range 3 * resolvercache.UpstreamDownAfter {
		slow.Go(func() {
			if _, err := c.Lookup(context.Background(), fmt.Sprintf("x%d.dead.example", i), dns.TypeTXT); err == nil {
				t.Error("a lookup of a name the server never answers succeeded")
			}
		})
	}
	slow.Wait()
	cancel()
	wg.Wait()
	if got := h.get(); len(got) != 0 {
		t.Errorf("health events %q, want none: the server answered other names meanwhile", got)
	}
}
