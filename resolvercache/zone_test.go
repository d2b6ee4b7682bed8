package resolvercache_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

const testZone = `$ORIGIN example.com.
$TTL 3600
@        IN SOA  ns.example.com. hostmaster.example.com. 1 7200 900 1209600 300
@        IN NS   ns
@   600  IN TXT  "v=spf1 " "ip4:192.0.2.0/24 " "-all"
@        IN MX   10 mx1
@        IN MX   20 MX2.Example.Com.
mx1      IN A    192.0.2.10
mx1      IN AAAA 2001:db8::10
sel._domainkey 120 IN TXT "v=DKIM1; k=rsa; p=\000\255\"x\"\\y"
a.b.c    IN TXT  "deep"
alias    60 IN CNAME target
target   IN TXT  "via alias"
ext      IN CNAME nowhere.example.com.
loop1    IN CNAME loop2
loop2    IN CNAME loop1
*.wild   IN TXT  "wildcard"
odd\032name IN TXT "space"
$ORIGIN other.test.
host 100 IN A 198.51.100.1
`

func mustParseZone(t *testing.T, clk func() time.Time) *resolvercache.Zone {
	t.Helper()
	z, err := resolvercache.ParseZone(strings.NewReader(testZone), "", resolvercache.WithZoneClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func TestZoneAnswers(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	z := mustParseZone(t, func() time.Time { return t0 })
	ctx := context.Background()

	a := lookup(t, z, "EXAMPLE.com.", dns.TypeTXT)
	if len(a.TXT) != 1 || a.TXT[0] != "v=spf1 ip4:192.0.2.0/24 -all" || a.TTL != 600 || !a.Received.Equal(t0) || a.Authenticated {
		t.Errorf("apex TXT: %+v", a)
	}
	if a := lookup(t, z, "sel._domainkey.example.com", dns.TypeTXT); len(a.TXT) != 1 || a.TXT[0] != "v=DKIM1; k=rsa; p=\x00\xff\"x\"\\y" || a.TTL != 120 {
		t.Errorf("escaped TXT: %q", a.TXT)
	}
	mx := lookup(t, z, "example.com", dns.TypeMX).MX
	if len(mx) != 2 || mx[0].Host != "mx1.example.com" || mx[1] != (resolvercache.MX{Preference: 20, Host: "mx2.example.com"}) {
		t.Errorf("MX: %+v", mx)
	}
	ips := append(lookup(t, z, "mx1.example.com", dns.TypeA).IPs, lookup(t, z, "mx1.example.com", dns.TypeAAAA).IPs...)
	if len(ips) != 2 || ips[0] != netip.MustParseAddr("192.0.2.10") || ips[1] != netip.MustParseAddr("2001:db8::10") {
		t.Errorf("addresses: %v", ips)
	}
	if a := lookup(t, z, "odd name.example.com", dns.TypeTXT); len(a.TXT) != 1 || a.TXT[0] != "space" {
		t.Errorf("odd owner: %+v", a)
	}
	if a := lookup(t, z, "host.other.test", dns.TypeA); len(a.IPs) != 1 || a.TTL != 100 {
		t.Errorf("second origin: %+v", a)
	}

	// NXDOMAIN and NODATA with the SOA's negative TTL: min(3600, 300).
	nx := lookup(t, z, "missing.example.com", dns.TypeTXT)
	if !nx.NXDomain() || !nx.Empty() || nx.TTL != 300 {
		t.Errorf("NXDOMAIN: %+v", nx)
	}
	nodata := lookup(t, z, "mx1.example.com", dns.TypeTXT)
	if nodata.NXDomain() || !nodata.Empty() || nodata.TTL != 300 {
		t.Errorf("NODATA: %+v", nodata)
	}
	for _, ent := range []string{"b.c.example.com", "c.example.com"} {
		if a := lookup(t, z, ent, dns.TypeTXT); a.NXDomain() || !a.Empty() {
			t.Errorf("empty non-terminal %s: %+v", ent, a)
		}
	}
	// No SOA above other.test: the default negative TTL.
	if a := lookup(t, z, "nope.other.test", dns.TypeA); !a.NXDomain() || a.TTL != uint32(resolvercache.DefaultNegativeTTL/time.Second) {
		t.Errorf("NXDOMAIN without SOA: %+v", a)
	}

	// CNAMEs.
	al := lookup(t, z, "alias.example.com", dns.TypeTXT)
	if len(al.TXT) != 1 || al.TXT[0] != "via alias" || len(al.CNAMEs) != 1 || al.CNAMEs[0] != "target.example.com" || al.TTL != 60 {
		t.Errorf("alias: %+v", al)
	}
	if a := lookup(t, z, "alias.example.com", dns.TypeCNAME); len(a.Names) != 1 || a.Names[0] != "target.example.com" {
		t.Errorf("CNAME query: %+v", a)
	}
	if a := lookup(t, z, "ext.example.com", dns.TypeTXT); !a.NXDomain() || len(a.CNAMEs) != 1 {
		t.Errorf("CNAME to NXDOMAIN: %+v", a)
	}
	if _, err := z.Lookup(ctx, "loop1.example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindCNAMELoop {
		t.Errorf("loop: %v", err)
	}

	// Wildcards.
	if a := lookup(t, z, "anything.wild.example.com", dns.TypeTXT); len(a.TXT) != 1 || a.TXT[0] != "wildcard" {
		t.Errorf("wildcard: %+v", a)
	}
	if a := lookup(t, z, "anything.wild.example.com", dns.TypeA); a.NXDomain() || !a.Empty() {
		t.Errorf("wildcard NODATA: %+v", a)
	}
	if a := lookup(t, z, "wild.example.com", dns.TypeTXT); a.NXDomain() || !a.Empty() {
		t.Errorf("wildcard parent is an empty non-terminal: %+v", a)
	}

	// Bad names and contexts.
	if _, err := z.Lookup(ctx, strings.Repeat("x", 64)+".example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindBadName {
		t.Errorf("long label: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := z.Lookup(cctx, "example.com", dns.TypeTXT); kindOf(err) != resolvercache.KindCanceled {
		t.Errorf("canceled: %v", err)
	}
}

func TestZoneCNAMEHops(t *testing.T) {
	var b strings.Builder
	b.WriteString("$ORIGIN chain.test.\n")
	for i := range 10 {
		b.WriteString(hopLabel(i) + " 300 IN CNAME " + hopLabel(i+1) + "\n")
	}
	b.WriteString(hopLabel(10) + " 300 IN TXT \"end\"\n")
	z, err := resolvercache.ParseZone(strings.NewReader(b.String()), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := z.Lookup(context.Background(), hopLabel(0)+".chain.test", dns.TypeTXT); kindOf(err) != resolvercache.KindCNAMELoop {
		t.Errorf("10 hops, limit 8: %v", err)
	}
	z, err = resolvercache.ParseZone(strings.NewReader(b.String()), "", resolvercache.WithZoneMaxCNAMEHops(10))
	if err != nil {
		t.Fatal(err)
	}
	if a := lookup(t, z, hopLabel(0)+".chain.test", dns.TypeTXT); len(a.CNAMEs) != 10 || a.TXT[0] != "end" {
		t.Errorf("10 hops, limit 10: %+v", a)
	}
}

func hopLabel(i int) string { return "h" + string(rune('a'+i)) }

func TestZoneFileAndErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "db.example")
	if err := os.WriteFile(p, []byte(testZone), 0o600); err != nil {
		t.Fatal(err)
	}
	z, err := resolvercache.LoadZoneFile(p, resolvercache.WithZoneNegativeTTL(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if a := lookup(t, z, "nope.other.test", dns.TypeA); a.TTL != 10 {
		t.Errorf("negative TTL option: %+v", a)
	}
	if _, err := resolvercache.LoadZoneFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	for _, bad := range []string{
		"example.com. IN TXT \"unterminated\n",
		"$INCLUDE /etc/passwd\n",
		"relative 300 IN A 192.0.2.1\n", // no origin
		"x.example.com. 300 IN A 999.1.1.1\n",
	} {
		if _, err := resolvercache.ParseZone(strings.NewReader(bad), ""); err == nil {
			t.Errorf("bad zone accepted: %q", bad)
		}
	}
	// Relative names with an origin argument.
	z, err = resolvercache.ParseZone(strings.NewReader("www 300 IN A 192.0.2.1\n"), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if a := lookup(t, z, "www.example.org", dns.TypeA); len(a.IPs) != 1 {
		t.Errorf("origin argument: %+v", a)
	}
}

// TestZoneRefusesDotInLabel: a zone name with a '.' octet inside a label
// (an owner, or a CNAME, MX, NS or PTR target) is refused at load, since
// its raw dotted form would be another name of more labels; other escapes
// load as before.
func TestZoneRefusesDotInLabel(t *testing.T) {
	for _, rr := range []string{
		`a\.b.example. 300 IN TXT "x"`,
		`a\046b.example. 300 IN TXT "x"`,
		`alias.example. 300 IN CNAME a\.b.example.`,
		`example. 300 IN MX 10 mail\.host.example.`,
		`example. 300 IN NS ns\.1.example.`,
		`1.2.0.192.in-addr.arpa. 300 IN PTR host\.x.example.`,
	} {
		if _, err := resolvercache.ParseZone(strings.NewReader(rr+"\n"), ""); err == nil || !strings.Contains(err.Error(), "'.' inside a label") {
			t.Errorf("%s: err %v, want a '.' inside a label error", rr, err)
		}
	}
	z, err := resolvercache.ParseZone(strings.NewReader("foo\\ bar.example. 300 IN TXT \"x\"\nsoa\\@x.example. 300 IN CNAME foo\\ bar.example.\n"), "")
	if err != nil {
		t.Fatalf("other escapes refused: %v", err)
	}
	a, err := z.Lookup(context.Background(), "soa@x.example", dns.TypeTXT)
	if err != nil || len(a.TXT) != 1 || len(a.CNAMEs) != 1 || a.CNAMEs[0] != "foo bar.example" {
		t.Fatalf("lookup through escaped names: %+v, %v", a, err)
	}
}

// FuzzParseZone: any zone-file text either fails to load with an error or
// loads into a Zone whose lookups return an answer or an error; nothing
// panics, and a loaded zone never hands out a name it refused to load.
func FuzzParseZone(f *testing.F) {
	f.Add(testZone)
	f.Add("a\\.b.example. 300 IN TXT \"x\"\n")
	f.Add("alias.example. 300 IN CNAME a\\046b.example.\n")
	f.Add("*.w.example. 60 IN MX 10 mx.example.\nw.example. 60 IN CNAME *.w.example.\n")
	f.Fuzz(func(t *testing.T, text string) {
		z, err := resolvercache.ParseZone(strings.NewReader(text), "example.")
		if err != nil {
			return
		}
		ctx := context.Background()
		for _, name := range []string{"example", "www.example", "a.b.example", "x.w.example", "alias.example"} {
			for _, qt := range []uint16{dns.TypeTXT, dns.TypeA, dns.TypeMX, dns.TypeCNAME, dns.TypePTR} {
				a, err := z.Lookup(ctx, name, qt)
				if (a == nil) == (err == nil) {
					t.Fatalf("%s/%d: answer %v and error %v", name, qt, a, err)
				}
			}
		}
	})
}
