package resolvercache

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestUDPWriteDeadline: a shared socket's write deadline covers every
// write for at least a timeout and lapses within two, so a write that
// blocks ends; once lapsed, the next query moves it on rather than
// failing. No real part here can make a UDP write block (on loopback the
// sender's system call delivers the datagram or drops it), so the test
// checks the deadline on the socket itself: a write made directly after
// it lapses fails with os.ErrDeadlineExceeded. (An internal test, to reach
// the socket; it cannot use dnstest, which imports this package: the
// upstream is a bare UDP socket that never answers.)
func TestUDPWriteDeadline(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	const timeout = 50 * time.Millisecond
	c, err := NewClient(WithUpstreams(sink.LocalAddr().String()), WithTimeout(timeout), WithRetries(0), WithUDPSockets(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lookup := func() {
		t.Helper()
		start := int64(time.Since(c.epoch))
		_, err := c.Lookup(context.Background(), "w.example.com", dns.TypeTXT)
		var e *Error
		if !errors.As(err, &e) || e.Kind != KindTimeout {
			t.Fatalf("lookup: %v, want KindTimeout", err)
		}
		u := c.upstreams[0]
		u.mu.Lock()
		uc := u.slots[0]
		u.mu.Unlock()
		by := uc.writeBy.Load()
		if by < start+int64(timeout) || by > int64(time.Since(c.epoch))+2*int64(timeout) {
			t.Fatalf("write deadline %v after the epoch, for a write at %v: want within [+timeout, +2×timeout]", time.Duration(by), time.Duration(start))
		}
		time.Sleep(time.Duration(by-int64(time.Since(c.epoch))) + 10*time.Millisecond)
		if _, err := uc.conn.Write([]byte{0}); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write after the deadline: %v, want os.ErrDeadlineExceeded", err)
		}
	}
	lookup()
	lookup() // the lapsed deadline is moved on, the write goes out
}
