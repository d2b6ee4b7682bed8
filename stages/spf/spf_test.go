package spf

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

var (
	clientIP  = netip.MustParseAddr("192.0.2.10")
	clientIP6 = netip.MustParseAddr("2001:db8::cb01")
)

func newChecker(z zone) (*Checker, *mapResolver) {
	r := &mapResolver{z: z}
	return &Checker{Resolver: r, DefaultExplanation: "DEFAULT", Hostname: "mx.receiver.example"}, r
}

func check(t *testing.T, c *Checker, ip netip.Addr, mailfrom string) Outcome {
	t.Helper()
	return c.Verify(context.Background(), Request{IP: ip, HELO: "helo.example.org", MailFrom: mailfrom})
}

func wantResult(t *testing.T, o Outcome, want Result) {
	t.Helper()
	if o.Result != want {
		t.Fatalf("result %s, want %s (mechanism %q, err %q)", o.Result, want, o.Mechanism, o.Err)
	}
}

// Lookup limit (RFC 7208 4.6.4): ten DNS-querying terms are allowed, the
// eleventh is a permerror; MaxLookups changes the limit.
func TestLookupLimit(t *testing.T) {
	z := zone{}
	for i := range 12 {
		z.add(fmt.Sprintf("h%d.example.com", i), rrA("198.51.100.1"))
	}
	terms := func(n int) string {
		var b strings.Builder
		b.WriteString("v=spf1")
		for i := range n {
			fmt.Fprintf(&b, " a:h%d.example.com", i)
		}
		b.WriteString(" ip4:192.0.2.10 -all")
		return b.String()
	}
	z.add("ten.example.com", rrTXT(terms(10)))
	z.add("eleven.example.com", rrTXT(terms(11)))
	c, _ := newChecker(z)

	o := check(t, c, clientIP, "u@ten.example.com")
	wantResult(t, o, Pass)
	if o.Lookups != 10 || o.Mechanism != "ip4:192.0.2.10" {
		t.Errorf("lookups %d mechanism %q, want 10 and ip4:192.0.2.10", o.Lookups, o.Mechanism)
	}
	o = check(t, c, clientIP, "u@eleven.example.com")
	wantResult(t, o, Permerror)
	if o.Lookups != 11 || !strings.Contains(o.Err, "too many DNS-querying terms") || o.Mechanism != "a:h10.example.com" {
		t.Errorf("lookups %d err %q mechanism %q", o.Lookups, o.Err, o.Mechanism)
	}

	c.MaxLookups = 3
	wantResult(t, check(t, c, clientIP, "u@ten.example.com"), Permerror)
}

// Include and redirect loops end at the lookup limit; the recursion depth
// is thereby bounded by MaxLookups.
func TestLoops(t *testing.T) {
	z := zone{}
	z.add("loop1.example.com", rrTXT("v=spf1 include:loop2.example.com -all"))
	z.add("loop2.example.com", rrTXT("v=spf1 include:loop1.example.com -all"))
	z.add("self.example.com", rrTXT("v=spf1 redirect=self.example.com"))
	z.add("mixed.example.com", rrTXT("v=spf1 include:mixed2.example.com"))
	z.add("mixed2.example.com", rrTXT("v=spf1 redirect=mixed.example.com"))
	c, r := newChecker(z)
	for _, d := range []string{"loop1.example.com", "self.example.com", "mixed.example.com"} {
		r.queries.Store(0)
		o := check(t, c, clientIP, "u@"+d)
		wantResult(t, o, Permerror)
		if o.Lookups != DefaultMaxLookups+1 || !strings.Contains(o.Err, "too many DNS-querying terms") {
			t.Errorf("%s: lookups %d err %q", d, o.Lookups, o.Err)
		}
		if q := r.queries.Load(); q > 11 {
			t.Errorf("%s: %d queries for a loop, want at most 11", d, q)
		}
		if strings.Count(o.Err, "include:") > 1 {
			t.Errorf("%s: error repeats the loop: %q", d, o.Err)
		}
	}
}

// Void lookups (4.6.4): two are tolerated, the third is a permerror; NXDOMAIN
// and NODATA both count; MaxVoidLookups changes the limit.
func TestVoidLimit(t *testing.T) {
	z := zone{}
	z.add("nodata.example.com", rrTXT("not spf"))
	z.add("two.example.com", rrTXT("v=spf1 a:nx1.example.com a:nodata.example.com ?all"))
	z.add("three.example.com", rrTXT("v=spf1 a:nx1.example.com mx:nodata.example.com exists:nx2.example.com ?all"))
	z.add("ptrvoid.example.com", rrTXT("v=spf1 a:nx1.example.com a:nx2.example.com ptr ?all"))
	c, _ := newChecker(z)
	o := check(t, c, clientIP, "u@two.example.com")
	wantResult(t, o, Neutral)
	if o.VoidLookups != 2 {
		t.Errorf("void lookups %d, want 2", o.VoidLookups)
	}
	o = check(t, c, clientIP, "u@three.example.com")
	wantResult(t, o, Permerror)
	if o.VoidLookups != 3 || !strings.Contains(o.Err, "void") {
		t.Errorf("void %d err %q", o.VoidLookups, o.Err)
	}
	wantResult(t, check(t, c, clientIP, "u@ptrvoid.example.com"), Permerror)

	c.MaxVoidLookups = 5
	wantResult(t, check(t, c, clientIP, "u@three.example.com"), Neutral)
	c.MaxVoidLookups = -1 // none tolerated
	wantResult(t, check(t, c, clientIP, "u@two.example.com"), Permerror)
}

// At most 10 MX names per mx mechanism (4.6.4): more is a permerror before
// any address lookup; the null MX does not count.
func TestMXLimit(t *testing.T) {
	z := zone{}
	ten := []zoneRR{rrMX(0, "")}
	for i := range 10 {
		host := fmt.Sprintf("mx%d.example.com", i)
		ten = append(ten, rrMX(uint16(i), host))
		ip := "198.51.100.1"
		if i == 9 {
			ip = "192.0.2.10"
		}
		z.add(host, rrA(ip))
	}
	z.add("ten.example.com", append(ten, rrTXT("v=spf1 mx -all"))...)
	eleven := append(append([]zoneRR{}, ten...), rrMX(10, "mx10.example.com"))
	z.add("eleven.example.com", append(eleven, rrTXT("v=spf1 mx -all"))...)
	z.add("mx10.example.com", rrA("192.0.2.10"))
	c, r := newChecker(z)

	o := check(t, c, clientIP, "u@ten.example.com")
	wantResult(t, o, Pass)
	r.queries.Store(0)
	o = check(t, c, clientIP, "u@eleven.example.com")
	wantResult(t, o, Permerror)
	if !strings.Contains(o.Err, "11 MX names") {
		t.Errorf("err %q", o.Err)
	}
	if q := r.queries.Load(); q != 2 { // TXT + MX, no address lookups
		t.Errorf("%d queries, want 2", q)
	}
}

// Only the first 10 PTR names are used, by ptr and by %{p} (4.6.4).
func TestPTRLimit(t *testing.T) {
	z := zone{}
	var ptrs []zoneRR
	for i := range 11 {
		host := fmt.Sprintf("h%d.ptr.example.com", i)
		ptrs = append(ptrs, rrPTR(host))
		z.add(host, rrA("192.0.2.10"))
	}
	z.add("10.2.0.192.in-addr.arpa", ptrs...)
	z.add("first.example.com", rrTXT("v=spf1 ptr:h0.ptr.example.com -all"))
	z.add("tenth.example.com", rrTXT("v=spf1 ptr:h9.ptr.example.com -all"))
	z.add("eleventh.example.com", rrTXT("v=spf1 ptr:h10.ptr.example.com -all"))
	z.add("pmacro.example.com", rrTXT("v=spf1 -all exp=why.example.com"))
	z.add("why.example.com", rrTXT("%{p}"))
	z.add("h10.ptr.example.com", rrTXT("v=spf1 -all exp=why.example.com"))
	c, _ := newChecker(z)
	wantResult(t, check(t, c, clientIP, "u@first.example.com"), Pass)
	wantResult(t, check(t, c, clientIP, "u@tenth.example.com"), Pass)
	wantResult(t, check(t, c, clientIP, "u@eleventh.example.com"), Fail)

	// %{p} with <domain> h10.ptr.example.com: the exact name is the 11th,
	// so it is ignored and another validated name is used.
	o := check(t, c, clientIP, "u@h10.ptr.example.com")
	wantResult(t, o, Fail)
	if o.Explanation == "h10.ptr.example.com" || !strings.HasSuffix(o.Explanation, ".ptr.example.com") {
		t.Errorf("explanation %q", o.Explanation)
	}
}

// Records over MaxRecordLength are a permerror.
func TestRecordLength(t *testing.T) {
	pad := strings.Repeat(" ip4:198.51.100.1", (MaxRecordLength-20)/17)
	ok := "v=spf1" + pad + " -all"
	long := "v=spf1" + pad + strings.Repeat(" ip4:198.51.100.2", 3) + " -all"
	if len(ok) > MaxRecordLength || len(long) <= MaxRecordLength {
		t.Fatalf("test setup: %d %d", len(ok), len(long))
	}
	z := zone{}
	z.add("ok.example.com", rrTXT(ok))
	z.add("long.example.com", rrTXT(long))
	c, _ := newChecker(z)
	wantResult(t, check(t, c, clientIP, "u@ok.example.com"), Fail)
	o := check(t, c, clientIP, "u@long.example.com")
	wantResult(t, o, Permerror)
	if !strings.Contains(o.Err, "longer than") {
		t.Errorf("err %q", o.Err)
	}
}

// The RFC 7208 7.4 examples, plus the other letters and escapes.
func TestMacroExpansion(t *testing.T) {
	now := time.Unix(1700000000, 0)
	c := &Checker{Hostname: "mx.receiver.example", Now: func() time.Time { return now }}
	mk := func(ip netip.Addr) *evaluator {
		return &evaluator{c: c, ip: ip, sender: "strong-bad@email.example.com", local: "strong-bad",
			senderDomain: "email.example.com", domain: "email.example.com", helo: "mail.example.org",
			ctx: context.Background()}
	}
	e4, e6 := mk(netip.MustParseAddr("192.0.2.3")), mk(netip.MustParseAddr("2001:db8::cb01"))
	// %{p} needs DNS; give it a resolver with nothing in it.
	c.Resolver = &mapResolver{z: zone{}}
	tests := []struct {
		e       *evaluator
		in, out string
		exp     bool
	}{
		{e4, "%{s}", "strong-bad@email.example.com", false},
		{e4, "%{o}", "email.example.com", false},
		{e4, "%{d}", "email.example.com", false},
		{e4, "%{d4}", "email.example.com", false},
		{e4, "%{d3}", "email.example.com", false},
		{e4, "%{d2}", "example.com", false},
		{e4, "%{d1}", "com", false},
		{e4, "%{dr}", "com.example.email", false},
		{e4, "%{d2r}", "example.email", false},
		{e4, "%{l}", "strong-bad", false},
		{e4, "%{l-}", "strong.bad", false},
		{e4, "%{lr}", "strong-bad", false},
		{e4, "%{lr-}", "bad.strong", false},
		{e4, "%{l1r-}", "strong", false},
		{e4, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com", false},
		{e4, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com", false},
		{e4, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com", false},
		{e4, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com", false},
		{e4, "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net", false},
		{e6, "%{ir}.%{v}._spf.%{d2}", "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com", false},
		{e4, "%{h}", "mail.example.org", false},
		{e4, "%{p}", "unknown", false},
		{e4, "a%%b%_c%-d", "a%b c%20d", false},
		{e4, "%{S}", "strong-bad%40email.example.com", false},
		{e4, "%{d200}", "email.example.com", false},
		{e4, "%{l+-_=,/.}", "strong.bad", false},
		{e4, "%{DR}", "com.example.email", false},
		{e4, "%{c} %{r} %{t}", "192.0.2.3 mx.receiver.example 1700000000", true},
		{e6, "%{c}", "2001:db8::cb01", true},
	}
	for _, tt := range tests {
		allowed := letterDomain
		if tt.exp {
			allowed = letterAll
		}
		got, err := expandMacros(tt.in, allowed, tt.exp, tt.e)
		if err != nil || got != tt.out {
			t.Errorf("expand(%q) = %q, %v; want %q", tt.in, got, err, tt.out)
		}
	}
	for _, bad := range []string{"%{d0}", "%{x}", "%{c}", "%{r}", "%{t}", "%", "%a", "%{d", "%{}", "%{d2x}", "a b"} {
		if got, err := expandMacros(bad, letterDomain, false, e4); err == nil {
			t.Errorf("expand(%q) = %q, want error", bad, got)
		}
	}
}

// Verify: identities, the postmaster substitutions of 2.4 and 4.3, and the
// none results of 4.3.
func TestVerifyIdentities(t *testing.T) {
	z := zone{}
	z.add("example.net", rrTXT("v=spf1 -all exp=why.example.net"))
	z.add("why.example.net", rrTXT("%{s} via %{h}"))
	z.add("helo.example.org", rrTXT("v=spf1 ip4:192.0.2.10 -all"))
	c, _ := newChecker(z)
	ctx := context.Background()

	o := c.Verify(ctx, Request{IP: clientIP, HELO: "helo.example.org", MailFrom: "<Joe@Example.NET>"})
	wantResult(t, o, Fail)
	if o.Identity != "mailfrom" || o.Domain != "example.net" || o.Explanation != "Joe@example.net via helo.example.org" {
		t.Errorf("outcome %+v", o)
	}
	o = c.Verify(ctx, Request{IP: clientIP, HELO: "helo.example.org", MailFrom: "@example.net"})
	if o.Sender != "postmaster@example.net" || o.Explanation != "postmaster@example.net via helo.example.org" {
		t.Errorf("no local part: %+v", o)
	}
	o = c.Verify(ctx, Request{IP: clientIP, HELO: "helo.example.org", MailFrom: ""})
	wantResult(t, o, Pass)
	if o.Identity != "helo" || o.Sender != "postmaster@helo.example.org" || o.Domain != "helo.example.org" {
		t.Errorf("null sender: %+v", o)
	}
	for _, helo := range []string{"[192.0.2.10]", "localhost", "192.0.2.10", "", "a..example.org"} {
		o = c.Verify(ctx, Request{IP: clientIP, HELO: helo})
		if o.Result != None || o.Identity != "helo" {
			t.Errorf("HELO %q: %+v", helo, o)
		}
	}
	o = c.VerifyHELO(ctx, clientIP, "helo.example.org")
	wantResult(t, o, Pass)
	o = c.CheckHost(ctx, clientIP, "example.net", "", "x")
	if o.Sender != "postmaster@example.net" {
		t.Errorf("CheckHost sender %q", o.Sender)
	}
	if o := c.CheckHost(ctx, clientIP, strings.Repeat("a", 64)+".example.net", "u@x", "x"); o.Result != None {
		t.Errorf("long label: %+v", o)
	}
	if o := c.Verify(ctx, Request{HELO: "helo.example.org", MailFrom: "u@example.net"}); o.Result != None {
		t.Errorf("no IP: %+v", o)
	}
}

// DNS failures give temperror (RFC 7208 2.6.6, 4.4, 5); the context ending
// too; a failure behind ptr or exp= does not.
func TestTemporaryErrors(t *testing.T) {
	z := zone{}
	z.add("slow.example.com", rrTimeout())
	z.add("t-a.example.com", rrTXT("v=spf1 a:slow.example.com -all"))
	z.add("t-mx.example.com", rrTXT("v=spf1 mx -all"), rrMX(1, "slow.example.com"))
	z.add("t-inc.example.com", rrTXT("v=spf1 include:slow.example.com -all"))
	z.add("t-ptr.example.com", rrTXT("v=spf1 ptr -all"))
	z.add("10.2.0.192.in-addr.arpa", rrTimeout())
	z.add("t-exp.example.com", rrTXT("v=spf1 -all exp=slow.example.com"))
	c, _ := newChecker(z)
	for _, d := range []string{"slow", "t-a", "t-mx", "t-inc"} {
		o := check(t, c, clientIP, "u@"+d+".example.com")
		wantResult(t, o, Temperror)
		if !strings.Contains(o.Err, "timeout") {
			t.Errorf("%s: err %q", d, o.Err)
		}
	}
	wantResult(t, check(t, c, clientIP, "u@t-ptr.example.com"), Fail)
	o := check(t, c, clientIP, "u@t-exp.example.com")
	wantResult(t, o, Fail)
	if o.Explanation != "DEFAULT" {
		t.Errorf("explanation %q", o.Explanation)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o = c.Verify(ctx, Request{IP: clientIP, MailFrom: "u@t-a.example.com"})
	wantResult(t, o, Temperror)
}

// A permanent resolver error (bad name, CNAME loop) is treated as a name
// without records.
func TestPermanentDNSError(t *testing.T) {
	z := zone{}
	z.add("loop.example.com", rrCNAME("loop.example.com"))
	z.add("p.example.com", rrTXT("v=spf1 a:loop.example.com -all"))
	c, _ := newChecker(z)
	o := check(t, c, clientIP, "u@p.example.com")
	wantResult(t, o, Fail)
	if o.VoidLookups != 1 {
		t.Errorf("void %d", o.VoidLookups)
	}
	wantResult(t, check(t, c, clientIP, "u@loop.example.com"), None)
}

// Explanations: only for fail, macro-expanded, default when exp= is
// unusable, US-ASCII only, cut at MaxExplanationLength.
func TestExplanation(t *testing.T) {
	z := zone{}
	z.add("soft.example.com", rrTXT("v=spf1 ~all exp=e.example.com"))
	z.add("hard.example.com", rrTXT("v=spf1 -all exp=e.example.com"))
	z.add("e.example.com", rrTXT("%{i} rejected by %{d} at %{r}"))
	z.add("long.example.com", rrTXT("v=spf1 -all exp=l.example.com"))
	z.add("l.example.com", rrTXT(strings.Repeat("x", 300), strings.Repeat("y", 300)))
	z.add("nonascii.example.com", rrTXT("v=spf1 -all exp=n.example.com"))
	z.add("n.example.com", rrTXT("caf\u00e9"))
	z.add("def.example.com", rrTXT("v=spf1 -all"))
	c, _ := newChecker(z)
	if o := check(t, c, clientIP, "u@soft.example.com"); o.Explanation != "" {
		t.Errorf("softfail explanation %q", o.Explanation)
	}
	if o := check(t, c, clientIP, "u@hard.example.com"); o.Explanation != "192.0.2.10 rejected by hard.example.com at mx.receiver.example" {
		t.Errorf("explanation %q", o.Explanation)
	}
	if o := check(t, c, clientIP, "u@long.example.com"); len(o.Explanation) != MaxExplanationLength {
		t.Errorf("long explanation: %d octets", len(o.Explanation))
	}
	if o := check(t, c, clientIP, "u@nonascii.example.com"); o.Explanation != "DEFAULT" {
		t.Errorf("non-ASCII explanation %q", o.Explanation)
	}
	c.DefaultExplanation = ""
	if o := check(t, c, clientIP, "u@def.example.com"); o.Explanation != "192.0.2.10 is not a permitted sender for def.example.com (SPF, domain def.example.com)" {
		t.Errorf("default explanation %q", o.Explanation)
	}
}

// Mechanism reporting and the JSON form embedded in verdicts.
func TestOutcomeJSON(t *testing.T) {
	z := zone{}
	z.add("example.com", rrTXT("v=spf1 include:_spf.example.com -all"))
	z.add("_spf.example.com", rrTXT("v=spf1 ip4:192.0.2.0/24 ~all"))
	c, _ := newChecker(z)
	o := check(t, c, clientIP, "u@example.com")
	wantResult(t, o, Pass)
	if o.Mechanism != "include:_spf.example.com" || o.Lookups != 1 {
		t.Errorf("%+v", o)
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"result", "domain", "identity", "sender", "mechanism", "lookups", "void_lookups"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON %s lacks %q", b, k)
		}
	}
	o = check(t, c, netip.MustParseAddr("198.51.100.1"), "u@example.com")
	b, _ = json.Marshal(Outcome{Result: Permerror, Err: "x", Explanation: "y"})
	if !strings.Contains(string(b), `"error":"x"`) || !strings.Contains(string(b), `"explanation":"y"`) {
		t.Errorf("JSON %s", b)
	}
	wantResult(t, o, Fail)
}

// Record parsing details not covered by the suites.
func TestParseRecord(t *testing.T) {
	good := []string{
		"v=spf1",
		"V=SPF1 IP4:192.0.2.0/24 MX/24 A:Example.COM//64 PTR ?ALL",
		"v=spf1 a:%{d}/24 mx:%{d}//64 a:x.example.com/32//128 exists:%{i}._spf.%{d}",
		"v=spf1 ip6:2001:db8::/32 ip6:::ffff:192.0.2.1 ip4:0.0.0.0/0",
		"v=spf1 foo=%{c}%{r}%{t} bar= -all",
		"v=spf1 redirect=_spf.example.com. exp=%{d}",
		"v=spf1 a:xn--bcher-kva.example",
	}
	for _, s := range good {
		if _, err := parseRecord(s); err != nil {
			t.Errorf("parseRecord(%q): %v", s, err)
		}
	}
	bad := []string{
		"v=spf1 ip4:192.0.2.1/08", "v=spf1 ip6:fe80::1%eth0", "v=spf1 ip6:192.0.2.1",
		"v=spf1 ip4:2001:db8::1", "v=spf1 a:example.com/24/", "v=spf1 a//0128",
		"v=spf1 mx:%{d}x", "v=spf1 -redirect=x.example.com", "v=spf1 +exp=x.example.com",
		"v=spf1 exists:%{c}.example.com", "v=spf1 a\tmx", "v=spf1 include:%{d}.", "v=spf1 ~",
		"v=spf1 a:example.com//24//64", "v=spf1 a:" + strings.Repeat("x.", 2100) + "com",
	}
	for _, s := range bad {
		if _, err := parseRecord(s); err == nil {
			t.Errorf("parseRecord(%q) succeeded", s)
		}
	}
}

// IPv6 clients: a and mx use AAAA and the ip6 CIDR length; IPv4-mapped
// clients are IPv4.
func TestIPv6(t *testing.T) {
	z := zone{}
	z.add("example.com", rrTXT("v=spf1 a//48 mx -all"), rrA("192.0.2.99"), rrAAAA("2001:db8::1"), rrMX(1, "mx.example.com"))
	z.add("mx.example.com", rrAAAA("2001:db8:ffff::25"), rrA("192.0.2.25"))
	c, _ := newChecker(z)
	wantResult(t, check(t, c, netip.MustParseAddr("2001:db8:0:1::7"), "u@example.com"), Pass)
	wantResult(t, check(t, c, netip.MustParseAddr("2001:db8:ffff::25"), "u@example.com"), Pass)
	wantResult(t, check(t, c, netip.MustParseAddr("::ffff:192.0.2.25"), "u@example.com"), Pass)
	wantResult(t, check(t, c, netip.MustParseAddr("2001:db9::1"), "u@example.com"), Fail)
	if got := reverseName(clientIP6); got != "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa" {
		t.Errorf("reverseName %s", got)
	}
}

// A resolver returning an Answer with SPF type-99 data for TXT questions
// would be a bug; make sure only TXT is asked.
func TestOnlyTXTQueried(t *testing.T) {
	rec := &recordingResolver{up: &mapResolver{z: zone{"example.com": {rrTXT("v=spf1 a mx ptr exists:x.example.com -all")}}}}
	c := &Checker{Resolver: rec}
	c.Verify(context.Background(), Request{IP: clientIP, MailFrom: "u@example.com"})
	for _, q := range rec.types {
		if q == dns.TypeSPF {
			t.Errorf("queried type SPF")
		}
	}
	if len(rec.types) == 0 {
		t.Fatal("no queries")
	}
}

type recordingResolver struct {
	up    resolvercache.Resolver
	types []uint16
}

func (r *recordingResolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	r.types = append(r.types, qtype)
	return r.up.Lookup(ctx, name, qtype)
}

// Macro expansions are bounded: over 2048 octets is a permerror for a
// domain-spec; a long but bounded one is cut to 253 octets from the left.
func TestExpansionBound(t *testing.T) {
	z := zone{}
	z.add("huge.example.com", rrTXT("v=spf1 a:"+strings.Repeat("%{s}.", 30)+"example.com -all"))
	z.add("long.example.com", rrTXT("v=spf1 exists:"+strings.Repeat("%{l}.", 20)+"example.com -all"))
	z.add("lbl.example.com", rrA("192.0.2.1"))
	c, r := newChecker(z)
	local := strings.Repeat("x", 60)
	o := check(t, c, clientIP, local+"@huge.example.com")
	wantResult(t, o, Permerror)
	if !strings.Contains(o.Err, "longer than") {
		t.Errorf("err %q", o.Err)
	}
	// 20 labels of 61 octets: cut to the last 4 labels (4*61+11 = 255 > 253,
	// so 3 labels and example.com), queried once.
	r.queries.Store(0)
	o = check(t, c, clientIP, local+"@long.example.com")
	wantResult(t, o, Fail)
	if r.queries.Load() != 2 {
		t.Errorf("%d queries", r.queries.Load())
	}
	name, ok := targetName(strings.Repeat(local+".", 20) + "example.com")
	if !ok || len(name) > 253 || !strings.HasSuffix(name, local+".example.com") || len(name) != 3*61+11 {
		t.Errorf("targetName: %d %q", len(name), name)
	}
}
