package dnstest

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func start(t *testing.T) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// startReference serves s over UDP the way this package did before it had
// a UDP loop of its own: miekg/dns's server calling the handler.
func startReference(t *testing.T, s *Server) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// exchange sends msg to addr from a fresh socket and returns the reply,
// nil if none comes within wait. Goroutines call it: it fails t with
// Error, not Fatal.
func exchange(t *testing.T, addr string, msg []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer c.Close()
	if _, err := c.Write(msg); err != nil {
		t.Error(err)
		return nil
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Error(err)
		}
		return nil
	}
	return buf[:n]
}

// TestUDPMatchesMiekgServer sends the same datagrams, well-formed and
// not, to this server and to miekg's server with the same handler and
// zone: the replies (or their absence) and the Queries counts are the
// same.
func TestUDPMatchesMiekgServer(t *testing.T) {
	s := start(t)
	ref := newServer("")
	owners := testZone(t, s)
	testZone(t, ref)
	refAddr := startReference(t, ref)

	msgs := malformedQueries()
	for i, q := range testQueries(owners) {
		if i%13 == 0 {
			msgs = append(msgs, q)
		}
	}
	// Without a reply, wait this long to be sure none comes.
	const wait = 300 * time.Millisecond
	jobs := make(chan []byte)
	var wg sync.WaitGroup
	var mu sync.Mutex
	replies := 0
	for range 32 {
		wg.Go(func() {
			for msg := range jobs {
				var want, got []byte
				var inner sync.WaitGroup
				inner.Go(func() { want = exchange(t, refAddr, msg, wait) })
				inner.Go(func() { got = exchange(t, s.Addr, msg, wait) })
				inner.Wait()
				if !bytes.Equal(got, want) {
					t.Errorf("query % x:\nreply  % x\nmiekg's % x", msg, got, want)
				}
				if got != nil {
					mu.Lock()
					replies++
					mu.Unlock()
				}
			}
		})
	}
	for _, m := range msgs {
		jobs <- m
	}
	close(jobs)
	wg.Wait()
	if got, want := s.Queries.Load(), ref.Queries.Load(); got != want {
		t.Errorf("Queries %d, miekg's server counted %d", got, want)
	}
	if replies < len(msgs)/2 {
		t.Errorf("only %d replies to %d datagrams", replies, len(msgs))
	}
}

func packQuery(t *testing.T, name string, qtype uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(Name(name), qtype)
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unpack(t *testing.T, b []byte) *dns.Msg {
	t.Helper()
	if b == nil {
		t.Fatal("no reply")
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestUDPDelay(t *testing.T) {
	s := start(t)
	s.AddRR(TXT("d.example", "delayed", 300))
	const d = 40 * time.Millisecond
	s.SetDelay(d)

	t0 := time.Now()
	m := unpack(t, exchange(t, s.Addr, packQuery(t, "d.example", dns.TypeTXT), 5*time.Second))
	if el := time.Since(t0); el < d {
		t.Errorf("answer after %v, delay %v", el, d)
	}
	if len(m.Answer) != 1 {
		t.Errorf("answer %v", m)
	}

	// One query after another: never two held at once, because a query
	// stops counting before its answer is sent.
	s.ResetPeak()
	for range 5 {
		unpack(t, exchange(t, s.Addr, packQuery(t, "d.example", dns.TypeTXT), 5*time.Second))
	}
	if p := s.PeakConcurrent(); p != 1 {
		t.Errorf("PeakConcurrent %d after queries one at a time, want 1", p)
	}

	// A burst from one socket: all answered, all held at once. The
	// answers come back as fast: room for them all in the socket.
	c, err := net.Dial("udp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.UDPConn).SetReadBuffer(4 << 20)
	s.ResetPeak()
	const burst = 500
	for i := range burst {
		q := packQuery(t, "d.example", dns.TypeTXT)
		q[0], q[1] = byte(i>>8), byte(i)
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint16]bool{}
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(seen) < burst {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d answers: %v", len(seen), burst, err)
		}
		seen[uint16(buf[0])<<8|uint16(buf[1])] = true
		_ = n
	}
	if p := s.PeakConcurrent(); p < 2 || p > burst {
		t.Errorf("PeakConcurrent %d for a burst of %d", p, burst)
	}
	s.ResetPeak()
	if p := s.PeakConcurrent(); p != 0 {
		t.Errorf("%d queries still held after every answer", p)
	}
}

// TestUDPDelayAnswersWhenDue: an answer is worked out when it is sent, as
// the handler did after sleeping.
func TestUDPDelayAnswersWhenDue(t *testing.T) {
	s := start(t)
	s.SetDelay(100 * time.Millisecond)
	done := make(chan []byte)
	go func() { done <- exchange(t, s.Addr, packQuery(t, "late.example", dns.TypeTXT), 5*time.Second) }()
	waitFor(t, func() bool { return s.Queries.Load() == 1 })
	s.AddRR(TXT("late.example", "added during the delay", 300))
	if m := unpack(t, <-done); len(m.Answer) != 1 || m.Rcode != dns.RcodeSuccess {
		t.Errorf("answer %v", m)
	}

	go func() { done <- exchange(t, s.Addr, packQuery(t, "late.example", dns.TypeTXT), time.Second) }()
	waitFor(t, func() bool { return s.Queries.Load() == 2 })
	s.SetDown(true)
	if b := <-done; b != nil {
		t.Errorf("answer from a server set down during the delay: % x", b)
	}
}

// TestUDPDelayZero: after SetDelay(0) new queries are answered at once,
// while one held from before still waits out its delay.
func TestUDPDelayZero(t *testing.T) {
	s := start(t)
	s.AddRR(TXT("z.example", "z", 300))
	s.SetDelay(time.Second)
	held := make(chan time.Time)
	t0 := time.Now()
	go func() {
		exchange(t, s.Addr, packQuery(t, "z.example", dns.TypeTXT), 5*time.Second)
		held <- time.Now()
	}()
	waitFor(t, func() bool { return s.Queries.Load() == 1 })
	s.SetDelay(0)
	t1 := time.Now()
	unpack(t, exchange(t, s.Addr, packQuery(t, "z.example", dns.TypeTXT), 5*time.Second))
	if el := time.Since(t1); el > 500*time.Millisecond {
		t.Errorf("answer without delay took %v", el)
	}
	if at := (<-held).Sub(t0); at < time.Second {
		t.Errorf("held answer after %v, its delay was 1s", at)
	}
}

// TestUDPCloseDropsHeld: Close does not wait out the delay, and held
// queries stop counting.
func TestUDPCloseDropsHeld(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	s.SetDelay(10 * time.Second)
	c, err := net.Dial("udp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 10 {
		if _, err := c.Write(packQuery(t, "x.example", dns.TypeTXT)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return s.Queries.Load() == 10 })
	t0 := time.Now()
	s.Close()
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("Close took %v", el)
	}
	s.ResetPeak()
	if p := s.PeakConcurrent(); p != 0 {
		t.Errorf("%d queries held after Close", p)
	}
}

// TestUDPCloseIdle: Close wakes the goroutine waiting for datagrams.
func TestUDPCloseIdle(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	unpack(t, exchange(t, s.Addr, packQuery(t, "x.example", dns.TypeTXT), 5*time.Second))
	time.Sleep(10 * time.Millisecond)
	t0 := time.Now()
	s.Close()
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("Close took %v", el)
	}
}

// TestUDPTruncation: SetTruncateUDP, and answers larger than the client's
// UDP size, come back with TC over UDP and whole over TCP.
func TestUDPTruncation(t *testing.T) {
	s := start(t)
	for range 10 {
		s.AddRR(TXT("big.example", string(bytes.Repeat([]byte{'b'}, 200)), 300))
	}
	s.AddRR(TXT("small.example", "s", 300))
	m := unpack(t, exchange(t, s.Addr, packQuery(t, "big.example", dns.TypeTXT), 5*time.Second))
	if !m.Truncated || len(m.Answer) >= 10 {
		t.Errorf("over UDP: TC %v, %d answers", m.Truncated, len(m.Answer))
	}
	s.SetTruncateUDP(true)
	m = unpack(t, exchange(t, s.Addr, packQuery(t, "small.example", dns.TypeTXT), 5*time.Second))
	if !m.Truncated || len(m.Answer) != 0 {
		t.Errorf("SetTruncateUDP: TC %v, %d answers", m.Truncated, len(m.Answer))
	}
	c := &dns.Client{Net: "tcp"}
	q := new(dns.Msg)
	q.SetQuestion("big.example.", dns.TypeTXT)
	r, _, err := c.Exchange(q, s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 10 {
		t.Errorf("over TCP: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
