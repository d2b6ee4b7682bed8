package spf

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

func benchZone() zone {
	z := zone{}
	z.add("example.com", rrTXT("v=spf1 include:_spf.example.com ip4:198.51.100.0/24 -all"))
	z.add("_spf.example.com", rrTXT("v=spf1 ip4:203.0.113.0/24 ip4:198.18.0.0/15 ip4:192.0.2.0/24"))
	return z
}

// BenchmarkCheckHostWarm: a typical include chain answered from a warm
// resolvercache.Cache (in front of the real client and a dnstest server),
// and, for comparison, from the in-memory map resolver.
func BenchmarkCheckHostWarm(b *testing.B) {
	ip := netip.MustParseAddr("192.0.2.10")
	run := func(b *testing.B, res resolvercache.Resolver) {
		c := &Checker{Resolver: res}
		ctx := context.Background()
		if o := c.CheckHost(ctx, ip, "example.com", "user@example.com", "mail.example.com"); o.Result != Pass {
			b.Fatalf("warm-up: %+v", o)
		}
		if w, ok := res.(interface{ Wait() }); ok {
			w.Wait()
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if o := c.CheckHost(ctx, ip, "example.com", "user@example.com", "mail.example.com"); o.Result != Pass {
				b.Fatalf("%+v", o)
			}
		}
	}
	b.Run("cache", func(b *testing.B) {
		srv, err := dnstest.Start()
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Close()
		if err := loadDNSTest(srv, benchZone()); err != nil {
			b.Fatal(err)
		}
		cl, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		cache, err := resolvercache.NewCache(cl)
		if err != nil {
			b.Fatal(err)
		}
		defer cache.Close()
		run(b, cache)
		if q := srv.Queries.Load(); q > 4 {
			b.Errorf("%d upstream queries: cache not warm", q)
		}
	})
	b.Run("map", func(b *testing.B) { run(b, &mapResolver{z: benchZone()}) })
}

// BenchmarkParseRecord measures the record parser alone.
func BenchmarkParseRecord(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRecord("v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 include:_spf.google.com include:spf.protection.outlook.com mx a:mail.example.com ~all"); err != nil {
			b.Fatal(err)
		}
	}
}
