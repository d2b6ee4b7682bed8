package spf

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// firstLookup records the first name and type a Checker asks for and
// answers every question from an empty zone (NXDOMAIN), which stops
// check_host() after that first lookup.
type firstLookup struct {
	mapResolver
	mu    sync.Mutex
	name  string
	qtype uint16
	n     int
}

func (f *firstLookup) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	f.mu.Lock()
	if f.n == 0 {
		f.name, f.qtype = name, qtype
	}
	f.n++
	f.mu.Unlock()
	return f.mapResolver.Lookup(ctx, name, qtype)
}

// FuzzFirstQuery: FirstQuery names exactly the TXT record Verify asks for
// first, and says false exactly when Verify asks nothing, for any
// envelope. The engine prefetches that name, so a mismatch would cost a
// wasted query and a round trip. The seeds run in go test.
func FuzzFirstQuery(f *testing.F) {
	for _, s := range []struct{ ip, helo, mailFrom string }{
		{"192.0.2.1", "mta.example.org", "bounce@example.com"},
		{"192.0.2.1", "mta.example.org", "<bounce@Example.COM.>"},
		{"192.0.2.1", "mta.example.org", ""},
		{"192.0.2.1", "mta.example.org", "<>"},
		{"192.0.2.1", "[192.0.2.1]", ""},
		{"192.0.2.1", "localhost", ""},
		{"192.0.2.1", "mta.example.org", "example.com"},
		{"192.0.2.1", "mta.example.org", "bounce@"},
		{"192.0.2.1", "mta.example.org", "a@b@example.com"},
		{"192.0.2.1", "mta.example.org", "@example.com"},
		{"192.0.2.1", "mta.example.org", "bounce@1.2.3.4"},
		{"192.0.2.1", "mta.example.org", " <x@example.net> "},
		{"2001:db8::1", "mta.example.org", "x@example.net"},
		{"", "mta.example.org", "x@example.net"},
		{"192.0.2.1", "mta.example.org", string(make([]byte, 300)) + "@example.com"},
	} {
		f.Add(s.ip, s.helo, s.mailFrom)
	}
	f.Fuzz(func(t *testing.T, ip, helo, mailFrom string) {
		addr, _ := netip.ParseAddr(ip)
		r := Request{IP: addr, HELO: helo, MailFrom: mailFrom}
		rec := &firstLookup{}
		c := &Checker{Resolver: rec, Hostname: "mx.receiver.example"}
		c.Verify(context.Background(), r)
		name, ok := FirstQuery(r)
		if ok != (rec.n > 0) {
			t.Fatalf("FirstQuery(%+v) = %q, %v; Verify made %d lookups (first %q)", r, name, ok, rec.n, rec.name)
		}
		if ok && (rec.name != name || rec.qtype != dns.TypeTXT) {
			t.Fatalf("FirstQuery(%+v) = %q; Verify asked first for %q type %d", r, name, rec.name, rec.qtype)
		}
	})
}
