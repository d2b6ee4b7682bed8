package resolvercache

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The committed fuzz seed testdata/fuzz/FuzzDecodeMatchesMiekg/d5747fe697afb4a7:
// a NOERROR reply to example.com TXT whose answer is one CNAME from
// example.com to the two labels "0" and "000000." (the second ends in a
// '.' octet), i.e. 0.000000\.. in presentation form.
const dotLabelReply = "00\x810\x00\x01000000\aeXAmple\x03Com\x00\x00\x10\x00\x01" +
	"\aeXAmple\x03Com\x00\x00\x05\x00\x010000\x00\v\x010\a000000.\x00"

func TestDotLabelSeedIsCommitted(t *testing.T) {
	b, err := os.ReadFile("testdata/fuzz/FuzzDecodeMatchesMiekg/d5747fe697afb4a7")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `[]byte("00\x810\x00\x01000000\aeXAmple\x03Com\x00\x00\x10\x00\x01\aeXAmple\x03Com\x00\x00\x05\x00\x010000\x00\v\x010\a000000.\x00")`) {
		t.Fatalf("seed no longer holds the reply this test copies:\n%s", b)
	}
}

// TestCNAMETargetDotInLabelRefused is the regression test for that seed.
// The wire path read the target as labels "0", "000000." and reported it
// raw as "0.000000." (dns.Msg, through UnescapeName, as "0.000000"): either
// reads as a name of other labels. The reply is refused instead.
func TestCNAMETargetDotInLabelRefused(t *testing.T) {
	q := &question{id: 0x3030, name: wireName("example.com"), qtype: dns.TypeTXT, orig: "example.com", otype: dns.TypeTXT}
	var ch chain
	ch.init(q.name, q.qtype, 4, 30)
	next, err := parseResponse([]byte(dotLabelReply), q, &ch, true)
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindMalformed || !errors.Is(err, errDotInLabel) {
		t.Fatalf("parseResponse = %q, %v; want a KindMalformed error wrapping errDotInLabel", next, err)
	}
	if !e.Temporary() {
		t.Errorf("%v should be temporary", err)
	}
	// The error names the target as miekg/dns writes it.
	if !strings.Contains(err.Error(), `CNAME target: 0.000000\..`) {
		t.Errorf("error %q does not name the target 0.000000\\..", err)
	}

	// The reference took the reply and followed 0.000000\.. exactly, but
	// reported it as "0.000000", the name of labels "0" and "000000".
	rq := &refQuestion{id: 0x3030, name: "example.com.", qtype: dns.TypeTXT}
	m, err := refDecodeReply([]byte(dotLabelReply), rq, true)
	if err != nil {
		t.Fatal(err)
	}
	rch := newRefChain(rq.name, rq.qtype, 4, 30)
	rnext, err := rch.absorb(m, rq.name, rq)
	if err != nil || rnext != `0.000000\..` || UnescapeName(rnext) != "0.000000" || !rch.sawDotLabel() {
		t.Errorf("reference: next %q (raw %q), %v", rnext, UnescapeName(rnext), err)
	}
}

// buildReply packs a reply to example.com of type qtype with answers.
func buildReply(t *testing.T, qtype uint16, answers ...dns.RR) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.Id = 0x1234
	m.Response = true
	m.Question = []dns.Question{{Name: "example.com.", Qtype: qtype, Qclass: dns.ClassINET}}
	m.Answer = answers
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hdr(owner string, typ uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: typ, Class: dns.ClassINET, Ttl: 60}
}

// TestNameDotInLabelRefused: every name the chain follows or hands to the
// caller is refused if a label holds a '.' octet, however dns.Msg wrote it
// (\. or \046), wherever the label stands; its octets are otherwise kept.
func TestNameDotInLabelRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		qtype uint16
		rr    dns.RR
	}{
		{"CNAME target, inner label", dns.TypeTXT, &dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: `a\.b.example.`}},
		{"CNAME target, last label", dns.TypeTXT, &dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: `example\.com.`}},
		{"CNAME target, label of one dot", dns.TypeTXT, &dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: `\..`}},
		{"CNAME target, \\046", dns.TypeTXT, &dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: `a\046b.example.`}},
		{"MX host", dns.TypeMX, &dns.MX{Hdr: hdr("example.com.", dns.TypeMX), Preference: 10, Mx: `mail\.victim.example.`}},
		{"PTR target", dns.TypePTR, &dns.PTR{Hdr: hdr("example.com.", dns.TypePTR), Ptr: `host\.victim.example.`}},
		{"NS target", dns.TypeNS, &dns.NS{Hdr: hdr("example.com.", dns.TypeNS), Ns: `ns\.x.example.`}},
		{"CNAME asked for", dns.TypeCNAME, &dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: `a\.b.example.`}},
		{"DNAME target", dns.TypeDNAME, &dns.DNAME{Hdr: hdr("example.com.", dns.TypeDNAME), Target: `a\.b.example.`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := &question{id: 0x1234, name: wireName("example.com"), qtype: tc.qtype, orig: "example.com", otype: tc.qtype}
			var ch chain
			ch.init(q.name, q.qtype, 4, 30)
			next, err := parseResponse(buildReply(t, tc.qtype, tc.rr), q, &ch, true)
			var e *Error
			if !errors.As(err, &e) || e.Kind != KindMalformed || !errors.Is(err, errDotInLabel) {
				t.Fatalf("parseResponse = %q, %v; want a KindMalformed error wrapping errDotInLabel", next, err)
			}
		})
	}

	// A '.' octet in a name the chain neither follows nor reports is none
	// of its business: an SOA RNAME (a mailbox with a dot in its local
	// part, RFC 1035 8), an owner off the chain, a record of another type.
	q := &question{id: 0x1234, name: wireName("example.com"), qtype: dns.TypeTXT, orig: "example.com", otype: dns.TypeTXT}
	var ch chain
	ch.init(q.name, q.qtype, 4, 30)
	wire := buildReply(t, dns.TypeTXT,
		&dns.CNAME{Hdr: hdr(`other\.example.com.`, dns.TypeCNAME), Target: `x\.y.example.`},
		&dns.MX{Hdr: hdr("example.com.", dns.TypeMX), Preference: 1, Mx: `mail\.victim.example.`},
		txtRR("example.com.", 60, "v=spf1 -all"))
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		t.Fatal(err)
	}
	m.Ns = append(m.Ns, &dns.SOA{Hdr: hdr("example.com.", dns.TypeSOA), Ns: "ns.example.com.", Mbox: `john\.doe.example.com.`})
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if next, err := parseResponse(wire, q, &ch, true); err != nil || next != "" {
		t.Fatalf("parseResponse = %q, %v", next, err)
	}
	if a := ch.answer("example.com", time.Unix(0, 0)); len(a.TXT) != 1 || a.TXT[0] != "v=spf1 -all" {
		t.Errorf("answer %+v", a)
	}
}

// TestNameSpecialOctetsKept: the other octets dns.Msg escapes in names
// (backslash, double and single quote, space, parentheses, semicolon and
// '@' as \X; below 0x20 and above 0x7e as \DDD) and '$' are kept as they
// are, in the alias asked next (exactly the wire name) and in the raw names
// reported, which name the same wire name.
func TestNameSpecialOctetsKept(t *testing.T) {
	const target = `A\\b\"c\ d\(\)\;\@\'$\000\031\127\128\255.example.`
	const raw = "a\\b\"c d();@'$\x00\x1f\x7f\x80\xff.example"
	q := &question{id: 0x1234, name: wireName("example.com"), qtype: dns.TypeTXT, orig: "example.com", otype: dns.TypeTXT}
	var ch chain
	ch.init(q.name, q.qtype, 4, 30)
	next, err := parseResponse(buildReply(t, dns.TypeTXT,
		&dns.CNAME{Hdr: hdr("example.com.", dns.TypeCNAME), Target: target}), q, &ch, true)
	if err != nil {
		t.Fatal(err)
	}
	wantWire := "\x12A\\b\"c d();@'$\x00\x1f\x7f\x80\xff\x07example\x00"
	if next != wantWire {
		t.Fatalf("next %q, want %q", next, wantWire)
	}
	if got := rawName(next); got != raw || !equalWire(wireName(got), next) {
		t.Fatalf("raw %q, want %q naming %q", got, raw, next)
	}

	// The follow-up reply: the records of the alias, an MX and a PTR of
	// such names.
	for _, tc := range []struct {
		qtype uint16
		rr    dns.RR
		check func(a *Answer) bool
	}{
		{dns.TypeMX, &dns.MX{Hdr: hdr(target, dns.TypeMX), Preference: 5, Mx: target},
			func(a *Answer) bool { return len(a.MX) == 1 && a.MX[0].Host == raw }},
		{dns.TypePTR, &dns.PTR{Hdr: hdr(target, dns.TypePTR), Ptr: target},
			func(a *Answer) bool { return len(a.Names) == 1 && a.Names[0] == raw }},
	} {
		m := new(dns.Msg)
		m.Id = 0x1234
		m.Response = true
		m.Question = []dns.Question{{Name: target, Qtype: tc.qtype, Qclass: dns.ClassINET}}
		m.Answer = []dns.RR{tc.rr}
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		q := &question{id: 0x1234, name: next, qtype: tc.qtype, orig: "example.com", otype: tc.qtype}
		var ch chain
		ch.init(wireName("example.com"), tc.qtype, 4, 30)
		if n, err := parseResponse(wire, q, &ch, true); err != nil || n != "" {
			t.Fatalf("type %d: parseResponse = %q, %v", tc.qtype, n, err)
		}
		if a := ch.answer("example.com", time.Unix(0, 0)); !tc.check(a) {
			t.Errorf("type %d: answer %+v", tc.qtype, a)
		}
	}
}

// TestCNAMEToRoot is the regression test for the committed fuzz seed
// testdata/fuzz/FuzzParseResponse/52a8ef19545682ae: a CNAME whose target
// is the root. The alias is reported raw as "" (the root), and wireName
// gave that back as "\x00\x00" (an empty label, then the root) instead of
// the root's one zero octet.
func TestCNAMEToRoot(t *testing.T) {
	if w := wireName(""); w != "\x00" {
		t.Fatalf(`wireName("") = %q, want the root, "\x00"`, w)
	}
	reply := "00\x810\x00\x01000000\aeXAmple\x03Com\x00\x00\x10\x00\x01" +
		"\aeXAmple\x03Com\x00\x00\x05\x00\x010000\x00\x01\x00"
	q := &question{id: 0x3030, name: wireName("example.com"), qtype: dns.TypeTXT, orig: "example.com", otype: dns.TypeTXT}
	var ch chain
	ch.init(q.name, q.qtype, 4, 30)
	next, err := parseResponse([]byte(reply), q, &ch, true)
	if err != nil || next != "\x00" {
		t.Fatalf("parseResponse: next %q, %v; want the root", next, err)
	}
	if raw := rawName(next); raw != "" || wireName(raw) != next {
		t.Fatalf("alias reported as %q, %q on the wire", raw, wireName(raw))
	}
}
