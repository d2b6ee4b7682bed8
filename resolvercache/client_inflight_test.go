package resolvercache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// TestClientMaxInFlight sends 64 concurrent lookups of distinct names to a
// server that holds every answer back, through a client bounded to 4 in
// flight: the server never sees more than 4 at once, and every lookup
// still succeeds (the rest waited for a slot).
func TestClientMaxInFlight(t *testing.T) {
	const bound, lookups = 4, 64
	s := startServer(t)
	for i := range lookups {
		s.AddRR(dnstest.TXT(fmt.Sprintf("n%d.example", i), "v=spf1 -all", 300))
	}
	s.SetDelay(5 * time.Millisecond)
	c := newClient(t, resolvercache.WithUpstreams(s.Addr), resolvercache.WithMaxInFlight(bound), resolvercache.WithTimeout(5*time.Second))
	var wg sync.WaitGroup
	errs := make(chan error, lookups)
	for i := range lookups {
		wg.Go(func() {
			if _, err := c.Lookup(context.Background(), fmt.Sprintf("n%d.example", i), dns.TypeTXT); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := s.PeakConcurrent(); p > bound || p < 1 {
		t.Fatalf("server saw %d queries at once, bound %d", p, bound)
	}
	if q := s.Queries.Load(); q != lookups {
		t.Fatalf("server got %d queries, want %d", q, lookups)
	}
}

// TestClientMaxInFlightWaitHonoursContext: a lookup waiting for a slot
// returns KindCanceled when its context ends, without sending anything.
func TestClientMaxInFlightWaitHonoursContext(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("slow.example", "x", 300))
	s.AddRR(dnstest.TXT("other.example", "y", 300))
	s.SetDelay(300 * time.Millisecond)
	c := newClient(t, resolvercache.WithUpstreams(s.Addr), resolvercache.WithMaxInFlight(1), resolvercache.WithTimeout(5*time.Second))
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(context.Background(), "slow.example", dns.TypeTXT)
		done <- err
	}()
	for s.Queries.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(ctx, "other.example", dns.TypeTXT)
	var e *resolvercache.Error
	if !errors.As(err, &e) || e.Kind != resolvercache.KindCanceled {
		t.Fatalf("waiting lookup: %v, want KindCanceled", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("slot holder: %v", err)
	}
	if q := s.Queries.Load(); q != 1 {
		t.Fatalf("server got %d queries, want 1 (the cancelled one never sent)", q)
	}
	if _, err := resolvercache.NewClient(resolvercache.WithUpstreams(s.Addr), resolvercache.WithMaxInFlight(0)); err == nil {
		t.Fatal("WithMaxInFlight(0) accepted")
	}
}

// TestClientSocketsFollowInFlight: a bound on queries in flight over the
// default gets a socket per 128 of them (as many replies outstanding on
// each as at the defaults), at most 64, unless WithUDPSockets says
// otherwise; under it, the default 8.
func TestClientSocketsFollowInFlight(t *testing.T) {
	for _, tc := range []struct {
		opts []resolvercache.ClientOption
		want int
	}{
		{nil, resolvercache.DefaultUDPSockets},
		{[]resolvercache.ClientOption{resolvercache.WithMaxInFlight(100)}, 8},
		{[]resolvercache.ClientOption{resolvercache.WithMaxInFlight(2048)}, 16},
		{[]resolvercache.ClientOption{resolvercache.WithMaxInFlight(4097)}, 33},
		{[]resolvercache.ClientOption{resolvercache.WithMaxInFlight(1 << 20)}, 64},
		{[]resolvercache.ClientOption{resolvercache.WithMaxInFlight(4096), resolvercache.WithUDPSockets(4)}, 4},
		{[]resolvercache.ClientOption{resolvercache.WithUDPSockets(2), resolvercache.WithMaxInFlight(4096)}, 2},
	} {
		c := newClient(t, append([]resolvercache.ClientOption{resolvercache.WithUpstreams("127.0.0.1:53")}, tc.opts...)...)
		if got := resolvercache.UDPSocketsForTest(c); got != tc.want {
			t.Errorf("%d options: %d sockets, want %d", len(tc.opts), got, tc.want)
		}
	}
}
