package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsFloor is the least a process can spend on DNS round trips: queries
// packed beforehand, written to a few connected UDP sockets, at most
// inflight outstanding, each reply read and matched by its ID only (no
// unpacking, no cache, no retries). BenchmarkPipelineColdCache's DNS-floor
// phase asks it the questions a cold message asks, so that its CPU (this
// process's: the writes and reads, plus the DNS server when it runs in
// process) is what the cold pass cannot spend less on, however cheap the
// resolver, cache and engine around it become.
type dnsFloor struct {
	conns   []*net.UDPConn
	queries [][]byte // queries[i] goes on conns[i%len(conns)] with ID i/len(conns)
}

// newDNSFloor packs a TXT query for each name (fully qualified) to addr,
// spread over sockets connected UDP sockets (the benchmarks' client's
// number, benchDNSClient). Queries on one socket have distinct IDs, so at
// most 65,536 per socket.
func newDNSFloor(tb testing.TB, addr string, names []string, sockets int) *dnsFloor {
	tb.Helper()
	if sockets < 1 || len(names) > sockets*65536 {
		tb.Fatalf("dns floor: %d names on %d sockets, at most 65,536 a socket", len(names), sockets)
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	f := &dnsFloor{}
	for range sockets {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = c.Close() })
		f.conns = append(f.conns, c)
	}
	for i, name := range names {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeTXT)
		m.Id = uint16(i / sockets)
		q, err := m.Pack()
		if err != nil {
			tb.Fatal(err)
		}
		f.queries = append(f.queries, q)
	}
	return f
}

// run asks every query, at most inflight outstanding, and returns when
// every one has its reply, or an error after timeout.
func (f *dnsFloor) run(inflight int, timeout time.Duration) error {
	slots := make(chan struct{}, inflight)
	errc := make(chan error, len(f.conns))
	failed := make(chan struct{}) // closed when a reader gives up
	var failOnce sync.Once
	var wg sync.WaitGroup
	for s, c := range f.conns {
		want := (len(f.queries) - s + len(f.conns) - 1) / len(f.conns) // queries on socket s
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		wg.Go(func() {
			seen := make([]bool, want)
			buf := make([]byte, 4096)
			for got := 0; got < want; {
				n, err := c.Read(buf)
				if err != nil {
					errc <- fmt.Errorf("dns floor: socket %d, %d of %d replies: %w", s, got, want, err)
					failOnce.Do(func() { close(failed) })
					return
				}
				if n < 12 {
					continue
				}
				id := int(binary.BigEndian.Uint16(buf))
				if id >= want || seen[id] {
					continue
				}
				seen[id] = true
				got++
				<-slots
			}
		})
	}
	var werr error
send:
	for i, q := range f.queries {
		select {
		case slots <- struct{}{}:
		case <-failed:
			break send
		}
		if _, err := f.conns[i%len(f.conns)].Write(q); err != nil {
			werr = fmt.Errorf("dns floor: write: %w", err)
			for _, c := range f.conns {
				_ = c.SetReadDeadline(time.Now())
			}
			break send
		}
	}
	wg.Wait()
	close(errc)
	errs := []error{werr}
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
