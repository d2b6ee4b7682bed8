package spf

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

var recordSeeds = []string{
	"v=spf1",
	"v=spf1 -all",
	"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ptr ~all",
	"v=spf1 a:%{d}/24//64 mx:mail.%{o2}//48 exists:%{ir}.%{v}._spf.%{d2} include:_spf.example.com ?all",
	"v=spf1 redirect=_spf.example.com exp=why.%{d}",
	"v=spf1 foo=bar moo.cow-far_out=man:dog/cat -all",
	"v=spf1 a:foo:bar/baz.example.com a:foo.example.xn--zckzah",
	"v=spf1 ip4:1.2.3.4/032 a//129 -all/8 ptr/0",
	"v=spf1 exp= redirect= =all 1up=x %{",
	"v=spf1 a:macro%%percent%_%_space%-url-space.example.com",
	"V=SpF1 IP6:::FFFF:1.2.3.4/128 ip4:1.2.3.4//32",
	"v=spf1 \x80a:example.net \x96all\x00",
}

// FuzzParseRecord: the record parser must never panic, must reject
// anything outside printable ASCII, and what it accepts must be consistent.
func FuzzParseRecord(f *testing.F) {
	for _, s := range recordSeeds {
		f.Add(s)
	}
	f.Add("1.2.3.4")
	f.Add("01.2.3.4")
	f.Add("255.255.255.256")
	f.Fuzz(func(t *testing.T, txt string) {
		// The strict ip4-network parser agrees with net/netip on IPv4.
		if a, ok := parseIPv4(txt); ok {
			if b, err := netip.ParseAddr(txt); err != nil || a != b {
				t.Fatalf("parseIPv4(%q) = %v, netip %v %v", txt, a, b, err)
			}
		} else if b, err := netip.ParseAddr(txt); err == nil && b.Is4() {
			t.Fatalf("parseIPv4(%q) refused what netip accepts", txt)
		}
		rec, err := parseRecord(txt)
		if err != nil {
			if rec != nil {
				t.Fatal("record and error")
			}
			return
		}
		if len(txt) > MaxRecordLength || !isSPFRecord(txt) {
			t.Fatalf("accepted %q", txt)
		}
		for i := 0; i < len(txt); i++ {
			if c := txt[i]; c != ' ' && (c < 0x21 || c > 0x7e) {
				t.Fatalf("accepted octet 0x%02x", c)
			}
		}
		if len(rec.terms) > len(txt)/2 {
			t.Fatalf("%d terms from %d octets", len(rec.terms), len(txt))
		}
		for _, tm := range rec.terms {
			if tm.text == "" || !strings.Contains(txt, tm.text) {
				t.Fatalf("term text %q", tm.text)
			}
			if (tm.kind == mechInclude || tm.kind == mechExists) && tm.domain == "" {
				t.Fatalf("%s without domain", tm.text)
			}
			if tm.cidr4 > 32 || tm.cidr6 > 128 {
				t.Fatalf("cidr %d %d", tm.cidr4, tm.cidr6)
			}
		}
	})
}

// FuzzExpandMacro: expansion never panics, its output is bounded, and it
// accepts exactly what the syntax check accepts.
func FuzzExpandMacro(f *testing.F) {
	for _, s := range []string{
		"%{s}", "%{l1r-}.lp.%{ir}.%{v}._spf.%{d2}", "%{S}%{L}%{O}", "a%%b%_c%-d",
		"%{d0}", "%{x}", "%{c} %{r} %{t}", "%{p}.example.com", "%{l2r+-}.user.%{d2}",
		"%{i999999999999r-+,/_=.}", "%{", "%", "%{}", "%{ir}.%{ir}.%{ir}.%{ir}.%{ir}.%{ir}.%{ir}.%{ir}",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	z := zone{}
	z.add("10.2.0.192.in-addr.arpa", rrPTR("mail.example.com"))
	z.add("mail.example.com", rrA("192.0.2.10"))
	c := &Checker{Resolver: &mapResolver{z: z}, Hostname: "mx.example.net"}
	f.Fuzz(func(t *testing.T, s string, explain bool) {
		e := &evaluator{c: c, ctx: context.Background(), ip: netip.MustParseAddr("192.0.2.10"),
			sender: strings.Repeat("Very.Long-Local+Part", 12) + "@example.com", local: strings.Repeat("Very.Long-Local+Part", 12),
			senderDomain: "example.com", domain: "example.com", helo: "helo.example.com"}
		allowed := letterDomain
		if explain {
			allowed = letterAll
		}
		_, checkErr := checkMacroString(s, allowed, explain)
		out, err := expandMacros(s, allowed, explain, e)
		if err == nil && checkErr != nil {
			t.Fatalf("expanded %q although invalid: %v", s, checkErr)
		}
		if err != nil && checkErr == nil && err != errMacroTooLong {
			t.Fatalf("valid %q failed to expand: %v", s, err)
		}
		if len(out) > maxExpansion {
			t.Fatalf("output of %d octets", len(out))
		}
		if name, ok := targetName(out); ok && (len(name) > 253 || name == "") {
			t.Fatalf("target name of %d octets", len(name))
		}
		if !explain && checkErr == nil {
			_ = checkDomainSpec(s)
		}
	})
}
