package dnstest_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// BenchmarkServerDelayedBurst measures the server's own CPU per answered
// UDP query under the load of a cold-cache pipeline run: every query for a
// fresh name, many outstanding at once, answers held back by SetDelay. The
// load comes from a child process (this test binary re-run as
// TestLoadClient), so that getrusage(RUSAGE_SELF) here counts the server
// alone: server-cpu-ns/op is that CPU per query (user and system,
// including the kernel's work for the server's reads and writes and the
// runtime's timers and collections), client-cpu-ns/op the child's, for
// comparison. Each query is packed by hand as authpipe's client packs it
// (RD, AD, EDNS0 with a 1232-octet UDP size).
//
// "txt" asks names that have one TXT record (an SPF-sized answer), "nx"
// names that do not exist (NXDOMAIN with the SOA). window is how many
// queries the client keeps outstanding; rate, when set, paces it to that
// many queries a second (the cold-cache pipeline benchmark sends about
// 20,000 a second), otherwise it sends as fast as answers come back.
func BenchmarkServerDelayedBurst(b *testing.B) {
	for _, tc := range []struct {
		kind   string
		rtt    time.Duration
		window int
		rate   int
	}{
		{"txt", 0, 64, 0},
		{"txt", 20 * time.Millisecond, 1000, 0},
		{"txt", 20 * time.Millisecond, 1000, 20000},
		{"nx", 20 * time.Millisecond, 1000, 20000},
	} {
		name := fmt.Sprintf("%s/rtt=%v/window=%d", tc.kind, tc.rtt, tc.window)
		if tc.rate > 0 {
			name += fmt.Sprintf("/rate=%d", tc.rate)
		}
		b.Run(name, func(b *testing.B) {
			s, err := dnstest.Start()
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if tc.kind == "txt" {
				for i := range b.N {
					s.AddRR(dnstest.TXT(loadName(i), "v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all", 300))
				}
			}
			s.SetDelay(tc.rtt)
			cmd := exec.Command(os.Args[0], "-test.run=^TestLoadClient$", "-test.count=1")
			cmd.Env = append(os.Environ(),
				"DNSTEST_LOAD_ADDR="+s.Addr,
				"DNSTEST_LOAD_N="+strconv.Itoa(b.N),
				"DNSTEST_LOAD_WINDOW="+strconv.Itoa(tc.window),
				"DNSTEST_LOAD_RATE="+strconv.Itoa(tc.rate),
				"DNSTEST_LOAD_RCODE="+strconv.Itoa(map[string]int{"txt": dns.RcodeSuccess, "nx": dns.RcodeNameError}[tc.kind]),
			)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			b.ResetTimer()
			cpu0 := cpuTime(b)
			if err := cmd.Run(); err != nil {
				b.Fatalf("load client: %v\n%s", err, out.Bytes())
			}
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			if q := s.Queries.Load(); q != int64(b.N) {
				b.Fatalf("server saw %d queries, want %d", q, b.N)
			}
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			client := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			b.ReportMetric(float64(cpu)/float64(b.N), "server-cpu-ns/op")
			b.ReportMetric(float64(client)/float64(b.N), "client-cpu-ns/op")
			if tc.rtt > 0 {
				b.ReportMetric(float64(s.PeakConcurrent()), "peak-outstanding")
			}
		})
	}
}

func loadName(i int) string { return fmt.Sprintf("q%d.load.example", i) }

// TestLoadClient is the load generator of BenchmarkServerDelayedBurst, run
// in a child process; run directly it does nothing. It sends
// DNSTEST_LOAD_N queries for distinct names over a few connected UDP
// sockets, keeping up to DNSTEST_LOAD_WINDOW outstanding and, if
// DNSTEST_LOAD_RATE is set, at most that many a second, and checks that
// every one is answered with DNSTEST_LOAD_RCODE.
func TestLoadClient(t *testing.T) {
	addr := os.Getenv("DNSTEST_LOAD_ADDR")
	if addr == "" {
		t.Skip("load generator for BenchmarkServerDelayedBurst")
	}
	n, _ := strconv.Atoi(os.Getenv("DNSTEST_LOAD_N"))
	window, _ := strconv.Atoi(os.Getenv("DNSTEST_LOAD_WINDOW"))
	rate, _ := strconv.Atoi(os.Getenv("DNSTEST_LOAD_RATE"))
	rcode, _ := strconv.Atoi(os.Getenv("DNSTEST_LOAD_RCODE"))
	if err := runLoad(addr, n, window, rate, rcode); err != nil {
		t.Fatal(err)
	}
}

// loadSockets is how many client sockets share the load, as authpipe's
// client spreads its queries over a few (resolvercache.DefaultUDPSockets).
const loadSockets = 8

func runLoad(addr string, n, window, rate, rcode int) error {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	conns := make([]*net.UDPConn, loadSockets)
	for i := range conns {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return err
		}
		_ = c.SetReadBuffer(1 << 20)
		defer c.Close()
		conns[i] = c
	}
	tokens := make(chan struct{}, window)
	var received atomic.Int64
	var bad atomic.Int64
	var badMsg atomic.Value
	all := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				k, err := c.Read(buf)
				if err != nil {
					return
				}
				if k < 12 || buf[2]&0x80 == 0 || int(buf[3]&0xF) != rcode || buf[2]&0x02 != 0 {
					bad.Add(1)
					badMsg.Store(fmt.Sprintf("reply % x", buf[:min(k, 16)]))
				}
				<-tokens
				if received.Add(1) == int64(n) {
					close(all)
				}
			}
		})
	}
	var q []byte
	start := time.Now()
	for i := range n {
		if rate > 0 {
			// Sleep whenever a millisecond's worth is sent ahead of the
			// pace, so that queries go out in small bursts.
			if ahead := time.Duration(i)*time.Second/time.Duration(rate) - time.Since(start); ahead > time.Millisecond {
				time.Sleep(ahead)
			}
		}
		tokens <- struct{}{}
		q = packLoadQuery(q[:0], uint16(i/loadSockets), loadName(i))
		if _, err := conns[i%loadSockets].Write(q); err != nil {
			return err
		}
	}
	var lost error
	for last := received.Load(); ; {
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			if now := received.Load(); now > last {
				last = now
				continue
			}
			lost = fmt.Errorf("%d of %d queries unanswered", int64(n)-received.Load(), n)
		}
		break
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	if bad.Load() > 0 {
		return fmt.Errorf("%d unexpected replies, last %v", bad.Load(), badMsg.Load())
	}
	return lost
}

// packLoadQuery appends a query as authpipe's client sends it: RD and AD
// set, one TXT question, an OPT record advertising 1232 octets.
func packLoadQuery(b []byte, id uint16, name string) []byte {
	b = binary.BigEndian.AppendUint16(b, id)
	b = append(b, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1)
	for len(name) > 0 {
		label := name
		if i := strings.IndexByte(name, '.'); i >= 0 {
			label, name = name[:i], name[i+1:]
		} else {
			name = ""
		}
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	b = append(b, 0, 0, byte(dns.TypeTXT), 0, 1)
	return append(b, 0, 0, 41, 1232>>8, 1232&0xFF, 0, 0, 0, 0, 0, 0)
}

// cpuTime returns the CPU time (user and system) used by this process.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
