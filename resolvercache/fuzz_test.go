package resolvercache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"reflect"
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

// replySeeds adds replies to a TXT query for example.com with ID 0x1234.
func replySeeds(f *testing.F) {
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
	// Compressed names, mixed case, records off the chain, empty TXT,
	// through an alias with a '.' octet in a label (refused by the wire
	// path; see FuzzDecodeMatchesMiekg).
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Compress = true
		m.Question[0].Name = "EXAMPLE.com."
		m.Answer = append(m.Answer, cnameRR("Example.COM.", "a\\.b.example.com.", 60),
			txtRR("unrelated.example.", 5, "x"), txtRR("A\\.b.example.com.", 7), txtRR("a\\.b.example.com.", 9, "p", "q"))
		m.Ns = append(m.Ns, soaRR("example.com.", 100, 50))
	}), "example.com", uint16(dns.TypeTXT), true)
	// The same through an alias whose label holds the other octets
	// miekg/dns escapes (space, '\\', '"', '(', ')', ';', '@', '\'') and
	// '$', '\x00', '\x7f', '\xff': raw form keeps them as they are.
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Compress = true
		m.Question[0].Name = "EXAMPLE.com."
		m.Answer = append(m.Answer, cnameRR("Example.COM.", `A\ b\\c\"d\(\)\;\@\'$\000\127\255.example.com.`, 60),
			txtRR("unrelated.example.", 5, "x"), txtRR(`a\ B\\c\"d\(\)\;\@\'$\000\127\255.example.com.`, 9, "p", "q"))
	}), "example.com", uint16(dns.TypeTXT), true)
	// Names with a '.' octet inside a label, which the wire path refuses
	// (checkRaw): an alias target ending in one, an MX host, a PTR target.
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Answer = append(m.Answer, cnameRR("example.com.", `0.000000\..`, 60))
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Question[0].Qtype = dns.TypeMX
		m.Answer = append(m.Answer, &dns.MX{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 20},
			Preference: 10, Mx: `mail\.victim.example.`})
	}), "example.com", uint16(dns.TypeMX), true)
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Question[0].Qtype = dns.TypePTR
		m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 20},
			Ptr: `a\046b.example.`})
	}), "example.com", uint16(dns.TypePTR), true)
	// The other types with fields, and an OPT record with extended RCODE bits.
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Compress = true
		m.Question[0].Qtype = dns.TypeMX
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: "example.com.", Rrtype: t, Class: dns.ClassINET, Ttl: 20}
		}
		m.Answer = append(m.Answer,
			&dns.MX{Hdr: hdr(dns.TypeMX), Preference: 10, Mx: "MX1.example.com."},
			&dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(192, 0, 2, 1)},
			&dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: net.ParseIP("2001:db8::1")},
			&dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: "host.example.com."},
			&dns.NS{Hdr: hdr(dns.TypeNS), Ns: "ns.example.com."})
	}), "example.com", uint16(dns.TypeMX), true)
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeNS} {
		f.Add(seedReply(f, func(m *dns.Msg) {
			m.Question[0].Qtype = t
			hdr := dns.RR_Header{Name: "example.com.", Rrtype: t, Class: dns.ClassINET, Ttl: 20}
			var rr dns.RR
			switch t {
			case dns.TypeA:
				rr = &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 1)}
			case dns.TypeAAAA:
				rr = &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("::ffff:192.0.2.7")}
			case dns.TypePTR:
				rr = &dns.PTR{Hdr: hdr, Ptr: "x\\032y.example."}
			case dns.TypeNS:
				rr = &dns.NS{Hdr: hdr, Ns: "ns.example."}
			}
			m.Answer = append(m.Answer, rr)
		}), "example.com", t, true)
	}
	f.Add(seedReply(f, func(m *dns.Msg) {
		m.Rcode = dns.RcodeBadVers // 16: four bits in the header, one in OPT
	}), "example.com", uint16(dns.TypeTXT), true)
	f.Add([]byte("\x12\x34\x81\x80garbage"), "example.com", uint16(dns.TypeA), true)
	f.Add([]byte{}, "", uint16(0), false)
}

// FuzzParseResponse feeds arbitrary bytes to the pure reply step of the
// client (decodeReply, chain.absorb, chain.answer), following any alias
// target it returns against the same bytes, as the client would ask again.
// It must never panic, and the chain must stay within its bounds.
func FuzzParseResponse(f *testing.F) {
	replySeeds(f)
	f.Fuzz(func(t *testing.T, wire []byte, name string, qtype uint16, udp bool) {
		canon := CanonicalName(name)
		if ValidateName(canon) != nil {
			canon = "example.com"
		}
		q := &question{name: wireName(canon), qtype: qtype, orig: canon, otype: qtype}
		if len(wire) >= 2 {
			q.id = binary.BigEndian.Uint16(wire)
		}
		const hops = 4
		var ch chain
		ch.init(q.name, qtype, hops, 30)
		for step := 0; ; step++ {
			if step > hops+1 {
				t.Fatalf("chain did not end after %d steps", step)
			}
			next, err := parseResponse(wire, q, &ch, udp)
			if errors.Is(err, errReplyPanic) {
				t.Fatal(err)
			}
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
			// The alias is reported raw (Answer.CNAMEs): that raw form
			// must name the very name asked next.
			if w := wireName(rawName(next)); !equalWire(w, next) {
				t.Fatalf("alias %q reported as %q, which is %q on the wire", next, rawName(next), w)
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
			if w := wireName(canon); !equalWire(buf[:n], w) {
				t.Fatalf("wireName(%q) = %q, miekg packs %q as %q", canon, w, esc, buf[:n])
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

// FuzzPackQuery checks that the client packs a query octet for octet as
// dns.Msg did (refPack), for any valid name, type and ID.
func FuzzPackQuery(f *testing.F) {
	for _, s := range []string{"example.com", "Foo Bar.example.com.", `a\b"c(d);e@f'g.test`, "\x00\xff.x", strings.Repeat("z", 63)} {
		f.Add(s, uint16(dns.TypeTXT), uint16(0xbeef))
	}
	f.Fuzz(func(t *testing.T, raw string, qtype, id uint16) {
		canon := CanonicalName(raw)
		if ValidateName(canon) != nil {
			return
		}
		q := &question{id: id, name: wireName(canon), qtype: qtype}
		got := q.pack(nil)
		want, err := refPack(&refQuestion{id: id, name: EscapeName(canon), qtype: qtype})
		if err != nil {
			t.Fatalf("dns.Msg cannot pack %q: %v", canon, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("pack %q type %d:\n got %x\nwant %x", canon, qtype, got, want)
		}
		if len(got) > maxQueryOctets {
			t.Fatalf("query of %d octets", len(got))
		}
	})
}

// FuzzDecodeMatchesMiekg runs the client's reply step (decodeReply and
// chain on the wire form) and the dns.Msg-based one it replaced (ref_test.go)
// side by side on the same bytes. Where both take the reply they must
// agree on every field of the Answer and on the alias to ask next; where
// they differ on taking it at all, each must fail with an *Error (the
// wire reader checks the RDATA of the types it reads, dns.Msg that of
// every type it knows).
//
// One difference is deliberate: a name the chain would follow or report
// (an alias target, or the name in an MX, PTR, NS, CNAME or DNAME record
// of the asked type) whose label holds a '.' octet. dns.Msg writes that
// octet as \. and the reference takes the reply, but UnescapeName turns
// it into a label boundary, so the reference reports another name
// (a\.b. as "a.b"; 0.000000\.. as "0.000000"). The wire path refuses
// such a reply (errDotInLabel, see checkRaw). The target holds both sides
// to that where the reference takes the reply: the wire path takes none
// in which the reference followed or collected such a name
// (refChain.sawDotLabel), and fails with errDotInLabel on no other. (Either
// side may refuse such a reply first for another fault.)
func FuzzDecodeMatchesMiekg(f *testing.F) {
	replySeeds(f)
	f.Fuzz(func(t *testing.T, wire []byte, name string, qtype uint16, udp bool) {
		canon := CanonicalName(name)
		if ValidateName(canon) != nil {
			canon = "example.com"
		}
		q := &question{name: wireName(canon), qtype: qtype, orig: canon, otype: qtype}
		rq := &refQuestion{name: EscapeName(canon), qtype: qtype}
		if len(wire) >= 2 {
			q.id = binary.BigEndian.Uint16(wire)
			rq.id = q.id
		}
		const hops = 4
		var ch chain
		ch.init(q.name, qtype, hops, 30)
		rch := newRefChain(rq.name, qtype, hops, 30)
		for step := 0; step <= hops+1; step++ {
			next, err := parseResponse(wire, q, &ch, udp)
			if errors.Is(err, errReplyPanic) {
				t.Fatal(err)
			}
			var rnext string
			m, rerr := refDecodeReply(wire, rq, udp)
			if rerr == nil {
				rnext, rerr = rch.absorb(m, rq.name, rq)
			}
			// A reply that either side refuses for another fault (a
			// record whose RDATA one side checks and the other lets
			// pass) may hold such a name too.
			dot, refDot := errors.Is(err, errDotInLabel), rerr == nil && rch.sawDotLabel()
			if dot && rerr == nil && !refDot || err == nil && refDot {
				t.Fatalf("wire path: %v; reference (error %v) followed or reported a name with a '.' octet in a label: %v",
					err, rerr, refDot)
			}
			if err != nil || rerr != nil {
				if (err == nil) != (rerr == nil) {
					checkError(t, err)
					checkError(t, rerr)
					return
				}
				if errors.Is(err, errTruncated) != errors.Is(rerr, errTruncated) {
					t.Fatalf("truncation: %v, reference %v", err, rerr)
				}
				var e, re *Error
				if errors.As(err, &e) && errors.As(rerr, &re) && e.Kind != re.Kind && re.Kind != KindMalformed && e.Kind != KindMalformed {
					t.Fatalf("error kinds differ: %v, reference %v", err, rerr)
				}
				return
			}
			if got, want := rawName(next), UnescapeName(rnext); got != want || (next == "") != (rnext == "") {
				t.Fatalf("next %q, reference %q", got, want)
			}
			if next == "" {
				a, ra := ch.answer(canon, time.Unix(0, 0)), rch.answer(canon, time.Unix(0, 0))
				if !reflect.DeepEqual(a, ra) {
					t.Fatalf("answer\n%+v\nreference\n%+v", a, ra)
				}
				return
			}
			q.name, rq.name = next, rnext
		}
	})
}

func checkError(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if err != nil && !errors.Is(err, errTruncated) && !errors.As(err, &e) {
		t.Fatalf("error of type %T: %v", err, err)
	}
}
