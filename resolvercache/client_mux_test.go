package resolvercache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// These tests cover the shared UDP sockets: many queries outstanding on
// one socket, told apart by ID, sockets replaced every UDPSocketMaxUses
// queries, and the reader goroutines ended by Close.

// udpServer is a UDP server on 127.0.0.1 that answers every query from a
// goroutine of its own, after the delay handle returns, with the datagrams
// handle returns, and records the query IDs and client ports it saw.
type udpServer struct {
	pc   net.PacketConn
	addr string

	mu    sync.Mutex
	ports map[int]int // client port → queries
	ids   []uint16    // in arrival order
}

func startUDPServer(t *testing.T, handle func(n int, q *dns.Msg) (time.Duration, [][]byte)) *udpServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = pc.(*net.UDPConn).SetReadBuffer(8 << 20)
	s := &udpServer{pc: pc, addr: pc.LocalAddr().String(), ports: map[int]int{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			s.mu.Lock()
			s.ports[addr.(*net.UDPAddr).Port]++
			seq := len(s.ids)
			s.ids = append(s.ids, q.Id)
			s.mu.Unlock()
			delay, replies := handle(seq, q)
			wg.Go(func() {
				time.Sleep(delay)
				for _, d := range replies {
					_, _ = pc.WriteTo(d, addr)
				}
			})
		}
	})
	return s
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *udpServer) seen() (ports int, ids []uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ports), append([]uint16(nil), s.ids...)
}

// txtReply answers q with one TXT record holding value.
func txtReply(t *testing.T, q *dns.Msg, value string) []byte {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Answer = append(m.Answer, dnstest.TXT(resolvercache.UnescapeName(q.Question[0].Name), value, 60))
	return pack(t, m)
}

func txtOf(t *testing.T, c *resolvercache.Client, ctx context.Context, name string) (string, error) {
	t.Helper()
	a, err := c.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return "", err
	}
	if len(a.TXT) != 1 {
		return "", fmt.Errorf("%s: %d TXT records", name, len(a.TXT))
	}
	return a.TXT[0], nil
}

// TestClientSharesAndRotatesSockets sends 4000 concurrent lookups of
// distinct names to a server that holds each answer 5 ms: all succeed,
// each with its own answer, over at most DefaultUDPSockets × (1 +
// 4000/UDPSocketMaxUses) source ports, so sockets are shared (up to
// MaxInFlight queries were outstanding), and over at least
// 4000/UDPSocketMaxUses, so they are replaced as they wear out.
func TestClientSharesAndRotatesSockets(t *testing.T) {
	const lookups = 4000
	s := startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) {
		return 5 * time.Millisecond, [][]byte{txtReply(t, q, "for "+resolvercache.UnescapeName(q.Question[0].Name))}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithTimeout(10*time.Second), resolvercache.WithRetries(0))
	var wg sync.WaitGroup
	errs := make(chan error, lookups)
	for i := range lookups {
		wg.Go(func() {
			name := fmt.Sprintf("n%d.shared.example", i)
			v, err := txtOf(t, c, context.Background(), name)
			if err == nil && v != "for "+name {
				err = fmt.Errorf("%s: got answer %q", name, v)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ports, ids := s.seen()
	if len(ids) != lookups {
		t.Errorf("server saw %d queries, want %d", len(ids), lookups)
	}
	bound := resolvercache.DefaultUDPSockets * (1 + lookups/resolvercache.UDPSocketMaxUses)
	if ports > bound || ports < lookups/resolvercache.UDPSocketMaxUses {
		t.Errorf("server saw %d client ports, want between %d and %d", ports, lookups/resolvercache.UDPSocketMaxUses, bound)
	}
	t.Logf("%d lookups over %d source ports", lookups, ports)
}

// TestClientRotatesSourcePort: with one socket, query UDPSocketMaxUses+1
// comes from a new source port.
func TestClientRotatesSourcePort(t *testing.T) {
	s := startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) {
		return 0, [][]byte{txtReply(t, q, "ok")}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1))
	for i := range resolvercache.UDPSocketMaxUses + 1 {
		if _, err := txtOf(t, c, context.Background(), fmt.Sprintf("r%d.example", i)); err != nil {
			t.Fatal(err)
		}
		if ports, _ := s.seen(); i < resolvercache.UDPSocketMaxUses && ports != 1 {
			t.Fatalf("query %d: %d source ports, want 1", i+1, ports)
		}
	}
	if ports, _ := s.seen(); ports != 2 {
		t.Fatalf("%d source ports after %d queries, want 2", ports, resolvercache.UDPSocketMaxUses+1)
	}
}

// TestClientRotatesByAge: a quiet client moves to a new source port once
// its socket is older than the age limit, however few queries it carried.
func TestClientRotatesByAge(t *testing.T) {
	s := startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) {
		return 0, [][]byte{txtReply(t, q, "ok")}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1))
	resolvercache.SetSocketMaxAgeForTest(c, 50*time.Millisecond)
	for i := range 3 {
		if _, err := txtOf(t, c, context.Background(), fmt.Sprintf("a%d.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	if ports, _ := s.seen(); ports != 1 {
		t.Fatalf("%d source ports for 3 quick queries, want 1", ports)
	}
	time.Sleep(60 * time.Millisecond)
	// The next query is the old socket's last; the one after opens a new one.
	for i := range 2 {
		if _, err := txtOf(t, c, context.Background(), fmt.Sprintf("b%d.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	if ports, _ := s.seen(); ports != 2 {
		t.Fatalf("%d source ports after the age limit, want 2", ports)
	}
}

// TestClientLateReplyNotMisdelivered: a query gives up (its context
// ends); the next query on the socket draws the same ID first and asks the
// same question. The late reply to the first must not be taken for the
// second's: IDs are never reused on a socket, so the second query gets
// another ID and its own answer.
func TestClientLateReplyNotMisdelivered(t *testing.T) {
	s := startUDPServer(t, func(n int, q *dns.Msg) (time.Duration, [][]byte) {
		if n == 0 {
			return 200 * time.Millisecond, [][]byte{txtReply(t, q, "stale")}
		}
		return 400 * time.Millisecond, [][]byte{txtReply(t, q, "fresh")}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1),
		resolvercache.WithTimeout(5*time.Second), resolvercache.WithRetries(0))
	var draws atomic.Int32
	ids := []uint16{7, 7, 8} // the first query's, the second's first draw, its second
	resolvercache.SetQueryIDsForTest(c, func() uint16 {
		i := int(draws.Add(1)) - 1
		return ids[min(i, len(ids)-1)]
	})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := txtOf(t, c, ctx, "same.example"); kindOf(err) != resolvercache.KindCanceled {
		t.Fatalf("first query: %v, want canceled", err)
	}
	v, err := txtOf(t, c, context.Background(), "same.example")
	if err != nil || v != "fresh" {
		t.Fatalf("second query: %q, %v; want its own answer %q", v, err, "fresh")
	}
	if _, got := s.seen(); len(got) != 2 || got[0] != 7 || got[1] != 8 {
		t.Fatalf("server saw IDs %v, want [7 8]", got)
	}
}

// TestClientRetryLateReplyNotMisdelivered: a lookup's wire queries share
// one waiter, and its reply buffer. The first attempt times out; its late
// reply comes while the retry, on the same socket, waits: it must be
// dropped, not copied over the retry's reply, which must come through.
func TestClientRetryLateReplyNotMisdelivered(t *testing.T) {
	s := startUDPServer(t, func(n int, q *dns.Msg) (time.Duration, [][]byte) {
		if n == 0 { // at 500 ms, while the retry (sent at 400 ms) waits
			return 500 * time.Millisecond, [][]byte{txtReply(t, q, "stale")}
		}
		return 250 * time.Millisecond, [][]byte{txtReply(t, q, "fresh")} // at 650 ms
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1),
		resolvercache.WithTimeout(400*time.Millisecond), resolvercache.WithRetries(1))
	v, err := txtOf(t, c, context.Background(), "retry.example")
	if err != nil || v != "fresh" {
		t.Fatalf("lookup: %q, %v; want the retry's answer %q", v, err, "fresh")
	}
	if ports, ids := s.seen(); len(ids) != 2 || ports != 1 {
		t.Fatalf("server saw IDs %v from %d ports, want 2 queries on one socket", ids, ports)
	}
}

// TestClientCancelOneWaiter: one of ten queries outstanding on a socket is
// cancelled; it returns at once and the other nine get their answers.
func TestClientCancelOneWaiter(t *testing.T) {
	s := startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) {
		return 500 * time.Millisecond, [][]byte{txtReply(t, q, "for "+resolvercache.UnescapeName(q.Question[0].Name))}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1),
		resolvercache.WithTimeout(5*time.Second), resolvercache.WithRetries(0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancelled := make(chan error, 1)
	go func() {
		_, err := txtOf(t, c, ctx, "cancel.example")
		cancelled <- err
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for i := range 9 {
		wg.Go(func() {
			name := fmt.Sprintf("w%d.example", i)
			if v, err := txtOf(t, c, context.Background(), name); err != nil || v != "for "+name {
				errs <- fmt.Errorf("%s: %q, %v", name, v, err)
			}
		})
	}
	waitFor(t, "10 queries at the server", func() bool { _, ids := s.seen(); return len(ids) == 10 })
	start := time.Now()
	cancel()
	if err := <-cancelled; kindOf(err) != resolvercache.KindCanceled || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled query: %v", err)
	}
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("cancelled query returned after %v", d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ports, _ := s.seen(); ports != 1 {
		t.Errorf("%d source ports, want 1", ports)
	}
	// The late reply to the cancelled query is dropped; the socket works.
	time.Sleep(550 * time.Millisecond)
	if v, err := txtOf(t, c, context.Background(), "after.example"); err != nil || v != "for after.example" {
		t.Errorf("after: %q, %v", v, err)
	}
}

// TestClientSpoofedRepliesIgnored: before each real reply, the server's
// address sends one with the query's ID but another question (a spoof,
// here the question of another query outstanding on the same socket).
// Every query ignores it and takes its real reply.
func TestClientSpoofedRepliesIgnored(t *testing.T) {
	s := startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) {
		other := "victim.example"
		if resolvercache.UnescapeName(q.Question[0].Name) == other {
			other = "s0.example"
		}
		spoof := new(dns.Msg)
		spoof.SetReply(q)
		spoof.Question[0].Name = dnstest.Name(other)
		spoof.Answer = append(spoof.Answer, dnstest.TXT(other, "evil", 60))
		return 20 * time.Millisecond, [][]byte{pack(t, spoof), txtReply(t, q, "real")}
	})
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1),
		resolvercache.WithTimeout(2*time.Second), resolvercache.WithRetries(0))
	var wg sync.WaitGroup
	errs := make(chan error, 21)
	for i := range 20 {
		wg.Go(func() {
			if v, err := txtOf(t, c, context.Background(), fmt.Sprintf("s%d.example", i)); err != nil || v != "real" {
				errs <- fmt.Errorf("s%d: %q, %v", i, v, err)
			}
		})
	}
	wg.Go(func() {
		if v, err := txtOf(t, c, context.Background(), "victim.example"); err != nil || v != "real" {
			errs <- fmt.Errorf("victim: %q, %v", v, err)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestClientReadErrorFailsAllWaiters: queries wait on a socket to a server
// that has gone away without a word; the next query draws ICMP port
// unreachable, and the read error fails every query on the socket with
// KindNetwork at once, not at their timeout.
func TestClientReadErrorFailsAllWaiters(t *testing.T) {
	s := startUDPServer(t, func(int, *dns.Msg) (time.Duration, [][]byte) { return 0, nil })
	c := newClient(t, resolvercache.WithUpstreams(s.addr), resolvercache.WithUDPSockets(1),
		resolvercache.WithTimeout(10*time.Second), resolvercache.WithRetries(0))
	const waiting = 8
	errs := make(chan error, waiting+1)
	for i := range waiting {
		go func() {
			_, err := txtOf(t, c, context.Background(), fmt.Sprintf("e%d.example", i))
			errs <- err
		}()
	}
	waitFor(t, "the queries at the server", func() bool { _, ids := s.seen(); return len(ids) == waiting })
	s.pc.Close()
	start := time.Now()
	go func() {
		_, err := txtOf(t, c, context.Background(), "last.example")
		errs <- err
	}()
	for range waiting + 1 {
		if err := <-errs; kindOf(err) != resolvercache.KindNetwork {
			t.Errorf("err = %v, want network", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("queries failed after %v", d)
	}
}

// TestClientCloseEndsReaders: Close fails the queries in flight, returns
// once the reader goroutines have exited, and lookups after it still work
// on sockets of their own, whose readers exit too.
func TestClientCloseEndsReaders(t *testing.T) {
	s := startServer(t)
	for i := range 300 {
		s.AddRR(dnstest.TXT(fmt.Sprintf("c%d.example", i), "ok", 300))
	}
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(s.Addr), resolvercache.WithUDPSockets(4),
		resolvercache.WithTimeout(5*time.Second), resolvercache.WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	run := func(from, to int) []error {
		var wg sync.WaitGroup
		errs := make([]error, to-from)
		for i := from; i < to; i++ {
			wg.Go(func() { _, errs[i-from] = txtOf(t, c, context.Background(), fmt.Sprintf("c%d.example", i)) })
		}
		wg.Wait()
		return errs
	}
	for _, err := range run(0, 100) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := resolvercache.ReadersForTest(c); n < 1 || n > 4 {
		t.Errorf("%d readers for 4 sockets", n)
	}

	// Close with queries in flight: they fail (network, wrapping
	// net.ErrClosed) or were answered first.
	s.SetDelay(time.Second)
	var inflight []error
	done := make(chan struct{})
	go func() { inflight = run(100, 200); close(done) }()
	waitFor(t, "100 queries in flight", func() bool { return s.Queries.Load() == 200 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := resolvercache.ReadersForTest(c); n != 0 {
		t.Errorf("%d readers after Close", n)
	}
	<-done
	for _, err := range inflight {
		if err != nil && (kindOf(err) != resolvercache.KindNetwork || !errors.Is(err, net.ErrClosed)) {
			t.Errorf("in flight at Close: %v", err)
		}
	}

	s.SetDelay(0)
	for _, err := range run(200, 300) {
		if err != nil {
			t.Errorf("after Close: %v", err)
		}
	}
	_ = c.Close()
	waitFor(t, "the readers to exit", func() bool { return resolvercache.ReadersForTest(c) == 0 })
}
