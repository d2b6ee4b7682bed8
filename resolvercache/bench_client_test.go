package resolvercache_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// BenchmarkClientColdConcurrent is a cold cache under load, without the
// cache: lookups of distinct names (one wire query each, NXDOMAIN with an
// SOA) against dnstest over loopback UDP, whose answers are held back by
// rtt. "steady" keeps g goroutines looking up one name after another;
// "burst" starts g lookups at once and waits for all before the next g,
// as a pipeline batch of messages does on a cold cache. Besides ns/op it
// reports cpu-ns/op, the process CPU time (user and system, dnstest
// included) per lookup: when the round trip bounds the throughput, that
// is what the socket design changes.
func BenchmarkClientColdConcurrent(b *testing.B) {
	for _, tc := range []struct {
		mode string
		g    int
		rtt  time.Duration
	}{
		{"steady", 256, 0},
		{"steady", 2048, 20 * time.Millisecond},
		{"burst", 1024, 20 * time.Millisecond},
	} {
		b.Run(fmt.Sprintf("%s/g=%d/rtt=%v", tc.mode, tc.g, tc.rtt), func(b *testing.B) {
			s := startServer(b)
			s.SetDelay(tc.rtt)
			c := clientFor(b, s, resolvercache.WithTimeout(5*time.Second))
			var next atomic.Int64
			lookup := func() bool {
				i := next.Add(1)
				if i > int64(b.N) {
					return false
				}
				if _, err := c.Lookup(context.Background(), fmt.Sprintf("n%d.cold.example", i), dns.TypeTXT); err != nil {
					b.Error(err)
					return false
				}
				return true
			}
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			b.ResetTimer()
			var wg sync.WaitGroup
			switch tc.mode {
			case "steady":
				for range tc.g {
					wg.Go(func() {
						for lookup() {
						}
					})
				}
				wg.Wait()
			case "burst":
				for done := 0; done < b.N; done += tc.g {
					for range min(tc.g, b.N-done) {
						wg.Go(func() { lookup() })
					}
					wg.Wait()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkCacheColdConcurrent is BenchmarkClientColdConcurrent's steady
// case through a Cache, as the engine looks names up on a cold cache:
// every name new (a miss, one flight, one fill), each lookup under a
// context with a 10 s deadline, as the engine's per-message DNS budget
// gives (stages.WithDNSBudget).
func BenchmarkCacheColdConcurrent(b *testing.B) {
	s := startServer(b)
	s.SetDelay(20 * time.Millisecond)
	cache, err := resolvercache.NewCache(clientFor(b, s, resolvercache.WithTimeout(5*time.Second)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cache.Close)
	coldLookups(b, func(i int64) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cache.Lookup(ctx, fmt.Sprintf("n%d.cold.example", i), dns.TypeTXT)
		return err
	})
}

// coldLookups runs b.N lookups of fresh names (lookup(i) for i in 1..b.N)
// on 2048 goroutines, as many as the client's in-flight limit and a
// queue as long again, and reports the process's CPU a lookup as
// cpu-ns/op.
func coldLookups(b *testing.B, lookup func(i int64) error) {
	var next atomic.Int64
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 2048 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := lookup(i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime returns the CPU time (user and system) used by the process.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
