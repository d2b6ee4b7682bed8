package resolvercache_test

import (
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkLoopbackWrite measures the kernel's floor under the client's
// cost: the process CPU (cpu-ns/op) of one write(2) over loopback, a UDP
// datagram of a query's size to a socket nobody reads (the kernel's send
// and receive paths, no wake-up), and TCP writes of one query's size and
// of a hundred queries' to a reader; getppid is a system call that does
// nothing. Recorded in docs/design-notes.md (session 7, DNS over
// pipelined TCP): a datagram costs far more than entering the kernel, and
// a stream write costs about the same for one query as for a hundred.
func BenchmarkLoopbackWrite(b *testing.B) {
	b.Run("getppid", func(b *testing.B) {
		cpu0 := cpuTime(b)
		for b.Loop() {
			syscall.Getppid()
		}
		b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
	})
	b.Run("udp-60", func(b *testing.B) {
		srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Close()
		c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		msg, buf := make([]byte, 60), make([]byte, 512)
		// Datagrams go in rounds of 256, the receive buffer drained
		// between rounds (neither timed nor counted).
		var cpu time.Duration
		b.ResetTimer()
		for done := 0; done < b.N; {
			n := min(256, b.N-done)
			cpu0 := cpuTime(b)
			for range n {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			cpu += cpuTime(b) - cpu0
			done += n
			b.StopTimer()
			for {
				_ = srv.SetReadDeadline(time.Now().Add(time.Millisecond))
				if _, _, err := srv.ReadFrom(buf); err != nil {
					break
				}
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	})
	for _, size := range []int{60, 6000} {
		b.Run("tcp-"+strconv.Itoa(size), func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, size)
			cpu0 := cpuTime(b)
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
