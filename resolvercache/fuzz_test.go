package resolvercache

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func seedReply(f *testing.F, build func(m *dns.Msg)) []byte {
	f.Helper()
	q := new(dns.Msg)
	q.SetQuestion("example.com.", dns.TypeTXT)
	q.Id = 0x1234
	m := new(dns.Msg)
	m.SetReply(q)
	m.SetEdns0(UDPSize, false)
	build(m)
	b, err := m.Pack()
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func txtRR(owner string, ttl uint32, parts ...string) *dns.TXT {
	return &dns.TXT{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl}, Txt: parts}
}

func cnameRR(owner, target string, ttl uint32) *dns.CNAME {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
}

func soaRR(owner string, ttl, minimum uint32) *dns.SOA {
	return &dns.SOA{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns." + owner, Mbox: "h." + owner, Minttl: minimum}
}

// FuzzParseResponse feeds arbitrary bytes to the pure reply step of the
// client (decodeReply, chain.absorb, chain.answer), following any alias
// target it returns against the same bytes, as the client would ask again.
// It must never panic, and the chain must stay within its bounds.
func FuzzParseResponse(f *testing.F) {
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Answer = append(m.Answer, txtRR("example.com.", 300, "v=spf1 ", "-all"))
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Answer = append(m.Answer, cnameRR("example.com.", "b.example.", 60), cnameRR("b.example.", "c.example.", 30),
			txtRR("c.example.", 300, "\x00\xff\"\\"))
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soaRR("example.com.", 3600, 300))
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Answer = append(m.Answer, cnameRR("example.com.", "example.com.", 60))
	}), "example.com", uint16(dns.TypeTXT), false)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Answer = append(m.Answer, cnameRR("example.com.", "elsewhere.test.", 60))
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) { m.Truncated = true }), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) { m.Rcode = dns.RcodeServerFailure }), "example.com", uint16(dns.TypeTXT), true)
	f.Add([]byte("\x12\x34\x81\x80garbage"), "example.com", uint16(dns.TypeA), true)
	f.Add([]byte{}, "", uint16(0), false)

	f.Fuzz(func(t *testing.T, wire []byte, name string, qtype uint16, udp bool) {
		canon := CanonicalName(name)
		if ValidateName(canon) != nil {
			canon = "example.com"
		}
		q := &question{name: EscapeName(canon), qtype: qtype, orig: canon, otype: qtype}
		if len(wire) >= 2 {
			q.id = binary.BigEndian.Uint16(wire)
		}
		const hops = 4
		ch := newChain(q.name, qtype, hops, 30)
		for step := 0; ; step++ {
			if step > hops+1 {
				t.Fatalf("chain did not end after %d steps", step)
			}
			next, err := parseResponse(wire, q, ch, udp)
			if err != nil {
				if err != errTruncated {
					if _, ok := err.(*Error); !ok {
						t.Fatalf("error of type %T: %v", err, err)
					}
				}
				return
			}
			if next == "" {
				break
			}
			q.name = next
		}
		a := ch.answer(canon, time.Unix(0, 0))
		if a.Rcode != dns.RcodeSuccess && a.Rcode != dns.RcodeNameError {
			t.Fatalf("answer with rcode %d", a.Rcode)
		}
		if len(a.CNAMEs) > hops {
			t.Fatalf("%d aliases followed, limit %d", len(a.CNAMEs), hops)
		}
	})
}

// FuzzEscapeRoundTrip checks that raw names and TXT strings survive the trip
// through presentation form and the wire format of miekg/dns.
func FuzzEscapeRoundTrip(f *testing.F) {
	for _, s := range []string{
		"example.com", "Foo Bar.example.com.", `a\b"c(d);e@f'g.test`, "\x00\xff\x7f.\xc3\xa9",
		"macro%percent  space%20url-space.example.com", `\065\.x`, "\\", strings.Repeat("z", 63),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		// Names.
		canon := CanonicalName(raw)
		if ValidateName(canon) == nil {
			esc := EscapeName(raw)
			if got := UnescapeName(esc); got != canon {
				t.Fatalf("UnescapeName(EscapeName(%q)) = %q, want %q", raw, got, canon)
			}
			buf := make([]byte, 512)
			n, err := dns.PackDomainName(esc, buf, 0, nil, false)
			if err != nil {
				t.Fatalf("miekg cannot pack %q (from %q): %v", esc, raw, err)
			}
			back, _, err := dns.UnpackDomainName(buf[:n], 0)
			if err != nil {
				t.Fatalf("unpack %q: %v", esc, err)
			}
			if got := UnescapeName(back); got != canon {
				t.Fatalf("wire round trip of %q = %q (via %q)", raw, got, back)
			}
			if !equalName(back, esc) {
				t.Fatalf("equalName(%q, %q) false", back, esc)
			}
		}
		// TXT character-strings.
		if got := unescapeTXT(EscapeTXT(raw)); got != raw {
			t.Fatalf("unescapeTXT(EscapeTXT(%q)) = %q", raw, got)
		}
		if len(raw) <= 255 {
			rr := txtRR("x.", 1, EscapeTXT(raw))
			buf := make([]byte, 1024)
			n, err := dns.PackRR(rr, buf, 0, nil, false)
			if err != nil {
				t.Fatalf("pack TXT %q: %v", raw, err)
			}
			back, _, err := dns.UnpackRR(buf[:n], 0)
			if err != nil {
				t.Fatalf("unpack TXT %q: %v", raw, err)
			}
			if got := joinTXT(back.(*dns.TXT).Txt); got != raw {
				t.Fatalf("TXT wire round trip of %q = %q", raw, got)
			}
		}
		// Arbitrary input never panics.
		_ = UnescapeName(raw)
		_ = unescape(raw)
	})
}
