package resolvercache_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

func startServer(t testing.TB) *dnstest.Server {
	t.Helper()
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newClient(t testing.TB, opts ...resolvercache.ClientOption) *resolvercache.Client {
	t.Helper()
	c, err := resolvercache.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func clientFor(t testing.TB, s *dnstest.Server, opts ...resolvercache.ClientOption) *resolvercache.Client {
	t.Helper()
	base := []resolvercache.ClientOption{resolvercache.WithUpstreams(s.Addr), resolvercache.WithTimeout(time.Second)}
	return newClient(t, append(base, opts...)...)
}

func mustZone(t testing.TB, s *dnstest.Server, text string) {
	t.Helper()
	if err := s.AddZone(text); err != nil {
		t.Fatal(err)
	}
}

func kindOf(err error) resolvercache.ErrorKind {
	var e *resolvercache.Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func lookup(t *testing.T, r resolvercache.Resolver, name string, qtype uint16) *resolvercache.Answer {
	t.Helper()
	a, err := r.Lookup(context.Background(), name, qtype)
	if err != nil {
		t.Fatalf("Lookup(%q, %s): %v", name, dns.TypeToString[qtype], err)
	}
	return a
}

func TestClientRecordTypes(t *testing.T) {
	s := startServer(t)
	mustZone(t, s, `$ORIGIN example.com.
@       300 IN A     192.0.2.1
@       200 IN A     192.0.2.2
@       300 IN AAAA  2001:db8::1
@       300 IN MX    10 MX1.Example.com.
@       300 IN MX    0 .
@       300 IN TXT   "v=spf1 -all"
1.2.0.192.in-addr.arpa. 300 IN PTR Host.Example.COM.
`)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := clientFor(t, s, resolvercache.WithClock(func() time.Time { return t0 }))

	a := lookup(t, c, "Example.COM.", dns.TypeA)
	if a.Name != "example.com" || a.Type != dns.TypeA || a.Rcode != dns.RcodeSuccess || a.NXDomain() || a.Empty() {
		t.Errorf("A answer header: %+v", a)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}
	if len(a.IPs) != 2 || a.IPs[0] != want[0] || a.IPs[1] != want[1] {
		t.Errorf("IPs = %v, want %v", a.IPs, want)
	}
	if a.TTL != 200 {
		t.Errorf("TTL = %d, want min 200", a.TTL)
	}
	if !a.Received.Equal(t0) || a.Remaining(t0.Add(50*time.Second)) != 150*time.Second {
		t.Errorf("Received %v, Remaining wrong", a.Received)
	}
	if a := lookup(t, c, "example.com", dns.TypeAAAA); len(a.IPs) != 1 || a.IPs[0] != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("AAAA = %v", a.IPs)
	}
	mx := lookup(t, c, "example.com", dns.TypeMX).MX
	if len(mx) != 2 || mx[0] != (resolvercache.MX{Preference: 10, Host: "mx1.example.com"}) || mx[1] != (resolvercache.MX{}) {
		t.Errorf("MX = %+v", mx)
	}
	if names := lookup(t, c, "1.2.0.192.IN-ADDR.arpa", dns.TypePTR).Names; len(names) != 1 || names[0] != "host.example.com" {
		t.Errorf("PTR = %v", names)
	}
	if txt := lookup(t, c, "example.com", dns.TypeTXT).TXT; len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Errorf("TXT = %q", txt)
	}
}

func TestClientTXTJoinedAndRaw(t *testing.T) {
	s := startServer(t)
	long := strings.Repeat("0123456789", 60)  // 600 octets: three character-strings
	huge := strings.Repeat("abcdefghij", 200) // 2000 octets: over the UDP size, TC then TCP
	odd := "v=DKIM1; p=\x00\x01\xef\xbb\xbf\xff \"quoted\" back\\slash; \\065 é"
	s.AddRR(dnstest.TXT("long.example.com", long, 300))
	s.AddRR(dnstest.TXT("huge.example.com", huge, 300))
	s.AddRR(dnstest.TXT("odd.example.com", odd, 300))
	s.AddRR(dnstest.TXTStrings("split.example.com", 300, "v=spf1 ", "include:a ", "-all"))
	s.AddRR(dnstest.TXTStrings("multi.example.com", 300, "first"))
	s.AddRR(dnstest.TXTStrings("multi.example.com", 300, "second"))
	c := clientFor(t, s)
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"long.example.com", []string{long}},
		{"huge.example.com", []string{huge}},
		{"odd.example.com", []string{odd}},
		{"split.example.com", []string{"v=spf1 include:a -all"}},
		{"multi.example.com", []string{"first", "second"}},
	} {
		got := lookup(t, c, tc.name, dns.TypeTXT).TXT
		if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
			t.Errorf("%s: TXT = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestClientTruncationRetriesOverTCP(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("tc.example.com", "v=spf1 -all", 300))
	s.SetTruncateUDP(true)
	c := clientFor(t, s)
	before := s.Queries.Load()
	a := lookup(t, c, "tc.example.com", dns.TypeTXT)
	if len(a.TXT) != 1 || a.TXT[0] != "v=spf1 -all" {
		t.Fatalf("TXT = %q", a.TXT)
	}
	if n := s.Queries.Load() - before; n != 2 {
		t.Errorf("%d queries, want 2 (UDP then TCP)", n)
	}
}

func TestClientOddOwnerNames(t *testing.T) {
	s := startServer(t)
	owners := []string{
		"macro%percent  space%20url-space.example.com",
		"foo:bar/baz.example.com",
		`back\slash.example.com`,
		`q"uo'te(x);y@z.example.com`,
		"\xc3\xa9t\xe9\x00\x7f.example.com",
		"_dmarc.example.com",
		strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61),
	}
	for i, o := range owners {
		s.AddRR(dnstest.TXT(o, "v="+string(rune('a'+i)), 300))
	}
	c := clientFor(t, s)
	for i, o := range owners {
		a := lookup(t, c, asciiUpper(o), dns.TypeTXT)
		if len(a.TXT) != 1 || a.TXT[0] != "v="+string(rune('a'+i)) {
			t.Errorf("%q: TXT = %q", o, a.TXT)
		}
		if a.Name != resolvercache.CanonicalName(o) {
			t.Errorf("%q: Name = %q", o, a.Name)
		}
	}
}

func TestClientNegativeAnswers(t *testing.T) {
	s := startServer(t)
	s.SetNegativeTTL(77)
	mustZone(t, s, `$ORIGIN example.com.
a.b.c 300 IN TXT "deep"
host  300 IN A   192.0.2.1
`)
	c := clientFor(t, s)
	nx := lookup(t, c, "missing.example.com", dns.TypeTXT)
	if !nx.NXDomain() || !nx.Empty() || nx.TTL != 77 {
		t.Errorf("NXDOMAIN: %+v", nx)
	}
	nodata := lookup(t, c, "host.example.com", dns.TypeTXT)
	if nodata.NXDomain() || !nodata.Empty() || nodata.Rcode != dns.RcodeSuccess || nodata.TTL != 77 {
		t.Errorf("NODATA: %+v", nodata)
	}
	ent := lookup(t, c, "b.c.example.com", dns.TypeTXT)
	if ent.NXDomain() || !ent.Empty() {
		t.Errorf("empty non-terminal should be NODATA: %+v", ent)
	}
}

func TestClientServFail(t *testing.T) {
	s := startServer(t)
	s.SetRcode("sf.example.com", 0, dns.RcodeServerFailure)
	s.SetRcode("refused.example.com", dns.TypeTXT, dns.RcodeRefused)
	c := clientFor(t, s)
	for name, rcode := range map[string]int{"sf.example.com": dns.RcodeServerFailure, "refused.example.com": dns.RcodeRefused} {
		before := s.Queries.Load()
		_, err := c.Lookup(context.Background(), name, dns.TypeTXT)
		var e *resolvercache.Error
		if !errors.As(err, &e) || e.Kind != resolvercache.KindServFail || e.Rcode != rcode || !e.Temporary() || !resolvercache.IsTemporary(err) {
			t.Errorf("%s: err = %v, want servfail rcode %d", name, err, rcode)
		}
		if n := s.Queries.Load() - before; n != 1 {
			t.Errorf("%s: %d queries; SERVFAIL from the only upstream is not retried", name, n)
		}
	}
}

func TestClientTimeout(t *testing.T) {
	s := startServer(t)
	s.AddTimeout("slow.example.com")
	c := clientFor(t, s, resolvercache.WithTimeout(100*time.Millisecond), resolvercache.WithRetries(1))
	before := s.Queries.Load()
	start := time.Now()
	_, err := c.Lookup(context.Background(), "slow.example.com", dns.TypeTXT)
	var e *resolvercache.Error
	if !errors.As(err, &e) || e.Kind != resolvercache.KindTimeout || !e.Timeout() || !e.Temporary() {
		t.Fatalf("err = %v, want timeout", err)
	}
	if n := s.Queries.Load() - before; n != 2 {
		t.Errorf("%d queries, want 2 (one retry)", n)
	}
	t.Logf("timeout after %v", time.Since(start))
	// The shared socket stays usable after its queries timed out.
	s.AddRR(dnstest.TXT("fast.example.com", "ok", 60))
	if a := lookup(t, c, "fast.example.com", dns.TypeTXT); len(a.TXT) != 1 {
		t.Errorf("after timeout: %+v", a)
	}
}

func TestClientContext(t *testing.T) {
	s := startServer(t)
	s.AddTimeout("slow.example.com")
	c := clientFor(t, s, resolvercache.WithTimeout(10*time.Second))

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(ctx, "slow.example.com", dns.TypeTXT)
	if kindOf(err) != resolvercache.KindCanceled || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: err = %v, want canceled wrapping DeadlineExceeded", err)
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { time.Sleep(30 * time.Millisecond); cancel2() }()
	_, err = c.Lookup(ctx2, "slow.example.com", dns.TypeTXT)
	if kindOf(err) != resolvercache.KindCanceled || !errors.Is(err, context.Canceled) {
		t.Errorf("cancel: err = %v, want canceled", err)
	}

	before := s.Queries.Load()
	_, err = c.Lookup(ctx2, "anything.example.com", dns.TypeTXT)
	if kindOf(err) != resolvercache.KindCanceled || s.Queries.Load() != before {
		t.Errorf("done context: err = %v, queries %d", err, s.Queries.Load()-before)
	}
}

func TestClientCNAME(t *testing.T) {
	s := startServer(t)
	mustZone(t, s, `$ORIGIN example.com.
a    300 IN CNAME b
b    100 IN CNAME c.other.test.
c.other.test. 200 IN TXT "target"
loop1 300 IN CNAME loop2
loop2 300 IN CNAME loop1
self  300 IN CNAME self
tonx  300 IN CNAME nowhere.example.com.
tonodata 300 IN CNAME host
host 300 IN A 192.0.2.1
`)
	// A chain of 10 aliases: dnstest follows 8 itself and stops, so the
	// client must ask again for the rest.
	for i := range 10 {
		s.AddRR(&dns.CNAME{Hdr: dnstest.Header(hop(i), dns.TypeCNAME, 300), Target: dnstest.Name(hop(i + 1))})
	}
	s.AddRR(dnstest.TXT(hop(10), "end", 300))
	s.SetNegativeTTL(60)

	c := clientFor(t, s)
	a := lookup(t, c, "a.example.com", dns.TypeTXT)
	if len(a.TXT) != 1 || a.TXT[0] != "target" || strings.Join(a.CNAMEs, ",") != "b.example.com,c.other.test" || a.TTL != 100 {
		t.Errorf("chain: %+v", a)
	}
	if a := lookup(t, c, "a.example.com", dns.TypeCNAME); len(a.Names) != 1 || a.Names[0] != "b.example.com" || len(a.CNAMEs) != 0 {
		t.Errorf("CNAME query: %+v", a)
	}
	nx := lookup(t, c, "tonx.example.com", dns.TypeTXT)
	if !nx.NXDomain() || len(nx.CNAMEs) != 1 || nx.TTL != 60 {
		t.Errorf("CNAME to NXDOMAIN: %+v", nx)
	}
	before := s.Queries.Load()
	nd := lookup(t, c, "tonodata.example.com", dns.TypeTXT)
	if nd.NXDomain() || !nd.Empty() || len(nd.CNAMEs) != 1 {
		t.Errorf("CNAME to NODATA: %+v", nd)
	}
	if n := s.Queries.Load() - before; n != 2 {
		t.Errorf("CNAME to NODATA: %d queries, want 2 (target asked again)", n)
	}
	for _, name := range []string{"loop1.example.com", "self.example.com"} {
		if _, err := c.Lookup(context.Background(), name, dns.TypeTXT); kindOf(err) != resolvercache.KindCNAMELoop || resolvercache.IsTemporary(err) {
			t.Errorf("%s: err = %v, want permanent cname-loop", name, err)
		}
	}
	// Default 8 hops: the 10-alias chain is too long.
	if _, err := c.Lookup(context.Background(), hop(0), dns.TypeTXT); kindOf(err) != resolvercache.KindCNAMELoop {
		t.Errorf("10 hops with limit 8: err = %v", err)
	}
	c12 := clientFor(t, s, resolvercache.WithMaxCNAMEHops(12))
	before = s.Queries.Load()
	long := lookup(t, c12, hop(0), dns.TypeTXT)
	if len(long.TXT) != 1 || long.TXT[0] != "end" || len(long.CNAMEs) != 10 {
		t.Errorf("10 hops with limit 12: %+v", long)
	}
	if n := s.Queries.Load() - before; n != 2 {
		t.Errorf("10 hops: %d queries, want 2", n)
	}
}

// asciiUpper upper-cases ASCII letters only, as DNS case folding does.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func hop(i int) string { return "h" + string(rune('a'+i)) + ".chain.test" }

func TestClientBadNames(t *testing.T) {
	s := startServer(t)
	c := clientFor(t, s)
	for _, name := range []string{
		"",
		".",
		strings.Repeat("x", 64) + ".example.com",
		"a..example.com",
		".example.com",
		strings.Repeat("abcdefghi.", 26) + "com", // 263 octets
	} {
		before := s.Queries.Load()
		_, err := c.Lookup(context.Background(), name, dns.TypeTXT)
		if kindOf(err) != resolvercache.KindBadName || resolvercache.IsTemporary(err) {
			t.Errorf("%q: err = %v, want bad-name", name, err)
		}
		if s.Queries.Load() != before {
			t.Errorf("%q: a query was sent", name)
		}
	}
}

func TestClientRetryNextUpstream(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("r.example.com", "ok", 300))

	dead := deadUDPAddr(t)
	c := newClient(t, resolvercache.WithUpstreams(dead, s.Addr), resolvercache.WithTimeout(time.Second))
	if a := lookup(t, c, "r.example.com", dns.TypeTXT); len(a.TXT) != 1 || a.TXT[0] != "ok" {
		t.Errorf("dead first upstream: %+v", a)
	}

	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c2 := newClient(t, resolvercache.WithUpstreams(silent.LocalAddr().String(), s.Addr), resolvercache.WithTimeout(100*time.Millisecond))
	if a := lookup(t, c2, "r.example.com", dns.TypeTXT); len(a.TXT) != 1 {
		t.Errorf("silent first upstream: %+v", a)
	}

	c3 := newClient(t, resolvercache.WithUpstreams(dead), resolvercache.WithRetries(0))
	if _, err := c3.Lookup(context.Background(), "r.example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindNetwork {
		t.Errorf("only a dead upstream: err = %v, want network", err)
	}
}

// deadUDPAddr returns a loopback address where nothing listens.
func deadUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestClientOptions(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 127.0.0.53\nnameserver ::1\noptions edns0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, resolvercache.WithResolvConf(rc))
	if got := strings.Join(c.Upstreams(), " "); got != "127.0.0.53:53 [::1]:53" {
		t.Errorf("upstreams from resolv.conf = %s", got)
	}
	c = newClient(t, resolvercache.WithResolvConf(rc), resolvercache.WithUpstreams("192.0.2.1"))
	if got := strings.Join(c.Upstreams(), " "); got != "192.0.2.1:53" {
		t.Errorf("WithUpstreams must replace resolv.conf: %s", got)
	}
	for _, o := range []resolvercache.ClientOption{
		resolvercache.WithTimeout(0), resolvercache.WithRetries(-1), resolvercache.WithRetries(100),
		resolvercache.WithMaxCNAMEHops(-1), resolvercache.WithUpstreams(), resolvercache.WithClock(nil),
		resolvercache.WithNegativeTTL(-time.Second), resolvercache.WithUDPSockets(-1), resolvercache.WithUDPSockets(1025),
	} {
		if _, err := resolvercache.NewClient(resolvercache.WithUpstreams("127.0.0.1:53"), o); err == nil {
			t.Errorf("bad option accepted")
		}
	}
	if _, err := resolvercache.NewClient(resolvercache.WithResolvConf(filepath.Join(dir, "missing"))); err == nil {
		t.Errorf("missing resolv.conf accepted")
	}
}

func TestClientConcurrent(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("c.example.com", "v=spf1 -all", 300))
	for _, sockets := range []int{0, 1, 4} {
		c := clientFor(t, s, resolvercache.WithUDPSockets(sockets))
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for range 32 {
			wg.Go(func() {
				for range 20 {
					a, err := c.Lookup(context.Background(), "c.example.com", dns.TypeTXT)
					if err != nil {
						errs <- err
						return
					}
					if len(a.TXT) != 1 || a.TXT[0] != "v=spf1 -all" {
						errs <- errors.New("wrong answer")
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("%d sockets: %v", sockets, err)
		}
	}
}

func TestClientMetrics(t *testing.T) {
	s := startServer(t)
	s.AddRR(dnstest.TXT("m.example.com", "x", 300))
	s.SetRcode("sf.example.com", 0, dns.RcodeServerFailure)
	m, reg := newMetrics(t)
	c := clientFor(t, s, resolvercache.WithMetrics(m))
	lookup(t, c, "m.example.com", dns.TypeTXT)
	_, _ = c.Lookup(context.Background(), "sf.example.com", dns.TypeTXT)
	_, _ = c.Lookup(context.Background(), "bad..name", dns.TypeTXT)
	if got := metricValue(t, reg, "authpipe_dns_lookups_total", "client"); got != 3 {
		t.Errorf("lookups = %v", got)
	}
	if got := metricValue(t, reg, "authpipe_dns_errors_total", "servfail", "client"); got != 1 {
		t.Errorf("servfail errors = %v", got)
	}
	if got := metricValue(t, reg, "authpipe_dns_errors_total", "bad-name", "client"); got != 1 {
		t.Errorf("bad-name errors = %v", got)
	}
	if got := metricValue(t, reg, "authpipe_dns_queries_total", "udp"); got != 2 {
		t.Errorf("udp queries = %v", got)
	}
}
