package resolvercache_test

import (
	"context"
	"testing"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

func benchCache(b *testing.B, opts ...resolvercache.CacheOption) *resolvercache.Cache {
	b.Helper()
	s := startServer(b)
	s.AddRR(dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com", 3600))
	c, err := resolvercache.NewCache(clientFor(b, s), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	for range 3 { // ristretto may drop the first insert
		if _, err := c.Lookup(context.Background(), "_dmarc.example.com", dns.TypeTXT); err != nil {
			b.Fatal(err)
		}
		c.Wait()
	}
	return c
}

// BenchmarkCacheHitTXT measures a cache hit (target ≤ 1 µs, ≤ 2 allocs).
func BenchmarkCacheHitTXT(b *testing.B) {
	c := benchCache(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT)
		if err != nil || len(a.TXT) != 1 {
			b.Fatal(a, err)
		}
	}
}

// BenchmarkCacheHitTXTMixedCase hits with a name that needs case folding
// and a trailing dot.
func BenchmarkCacheHitTXTMixedCase(b *testing.B) {
	c := benchCache(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(ctx, "_DMARC.Example.COM.", dns.TypeTXT); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCacheHitTXTMetrics is a hit with Prometheus metrics enabled.
func BenchmarkCacheHitTXTMetrics(b *testing.B) {
	m, _ := newMetrics(b)
	c := benchCache(b, resolvercache.WithCacheMetrics(m))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCacheHitTXTParallel(b *testing.B) {
	c := benchCache(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchClient(b *testing.B, opts ...resolvercache.ClientOption) *resolvercache.Client {
	b.Helper()
	s := startServer(b)
	s.AddRR(dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com", 3600))
	return clientFor(b, s, opts...)
}

// BenchmarkClientMissLoopback is one full wire query per lookup (no cache)
// against dnstest over loopback UDP, on shared sockets.
func BenchmarkClientMissLoopback(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientMissLoopbackNoPool opens a new socket per query
// (WithUDPSockets(0)).
func BenchmarkClientMissLoopbackNoPool(b *testing.B) {
	c := benchClient(b, resolvercache.WithUDPSockets(0))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientMissLoopbackParallel(b *testing.B) {
	c := benchClient(b)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := c.Lookup(ctx, "_dmarc.example.com", dns.TypeTXT); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
