package dnstest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// The UDP fast path (parseQuery, fastReply) must give, for every query it
// takes, the octets the handler (Server.reply) gives once miekg packs them,
// and must take only queries miekg's server accepts and unpacks. These
// tests hold the two against each other over a zone with every feature
// the server has.

// testZone fills s with records, markers and rcodes that exercise every
// branch of Server.resolve, and returns the owners worth asking for.
func testZone(t testing.TB, s *Server) []string {
	t.Helper()
	add := func(rr dns.RR) { s.AddRR(rr) }
	add(TXT("plain.example", "v=spf1 ip4:192.0.2.0/24 -all", 300))
	add(TXT("big.example", "v=DKIM1; k=rsa; p="+strings.Repeat("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A", 12), 300))
	add(TXTStrings("multi.example", 60, "one", "two \"quoted\"", "three\\back"))
	add(&dns.A{Hdr: Header("mx.example", dns.TypeA, 30), A: []byte{192, 0, 2, 1}})
	add(&dns.AAAA{Hdr: Header("mx.example", dns.TypeAAAA, 30), AAAA: make([]byte, 16)})
	add(&dns.MX{Hdr: Header("mx.example", dns.TypeMX, 30), Preference: 10, Mx: Name("mail.example")})
	for i := range 10 {
		add(TXT("huge.example", strings.Repeat(fmt.Sprint(i), 200), 300))
	}
	// Answers around 512 octets, with and without EDNS.
	for n := 440; n <= 490; n += 5 {
		add(TXT(fmt.Sprintf("size%d.example", n), strings.Repeat("x", n), 300))
	}
	add(&dns.CNAME{Hdr: Header("alias.example", dns.TypeCNAME, 300), Target: Name("plain.example")})
	add(&dns.CNAME{Hdr: Header("Alias2.Example", dns.TypeCNAME, 300), Target: Name("ALIAS.example")})
	add(&dns.CNAME{Hdr: Header("dangling.example", dns.TypeCNAME, 300), Target: Name("nowhere.example")})
	add(&dns.CNAME{Hdr: Header("loop1.example", dns.TypeCNAME, 300), Target: Name("loop2.example")})
	add(&dns.CNAME{Hdr: Header("loop2.example", dns.TypeCNAME, 300), Target: Name("loop1.example")})
	add(&dns.CNAME{Hdr: Header("to-ent.example", dns.TypeCNAME, 300), Target: Name("ent.example")})
	add(&dns.CNAME{Hdr: Header("to-sf.example", dns.TypeCNAME, 300), Target: Name("sf.example")})
	add(&dns.CNAME{Hdr: Header("to-to.example", dns.TypeCNAME, 300), Target: Name("to.example")})
	for i := range 12 {
		add(&dns.CNAME{Hdr: Header(fmt.Sprintf("c%d.chain.example", i), dns.TypeCNAME, 300), Target: Name(fmt.Sprintf("c%d.chain.example", i+1))})
	}
	add(TXT("c12.chain.example", "end", 300))
	s.AddTimeout("to.example")
	add(TXT("tomixed.example", "served", 300))
	s.AddTimeout("tomixed.example")
	add(&dns.A{Hdr: Header("tomixed.example", dns.TypeA, 30), A: []byte{192, 0, 2, 2}})
	add(&dns.CNAME{Hdr: Header("cname-to.example", dns.TypeCNAME, 300), Target: Name("plain.example")})
	s.AddTimeout("cname-to.example")
	s.SetRcode("sf.example", 0, dns.RcodeServerFailure)
	add(TXT("sftxt.example", "x", 300))
	s.SetRcode("sftxt.example", dns.TypeTXT, dns.RcodeRefused)
	s.SetRcode("nx-forced.example", 0, dns.RcodeNameError)
	s.SetRcode("ext.example", 0, dns.RcodeBadVers) // 16: only an OPT record carries it
	s.SetRcode("neg.example", 0, -1)               // does not pack: no reply
	add(TXT("a.b.ent.example", "deep", 300))
	add(TXT("foo bar.example", "space", 300))
	add(TXT("MiXeD.Example", "case", 300))
	add(TXT("caf\xc3\xa9.example", "utf-8 octets", 300))
	add(TXT("back\\slash.example", "backslash", 300))
	add(TXT("odd@;()\".example", "specials", 300))
	add(TXT("dot\\.in.example", "escaped dot", 300))
	add(TXT("trailing.example.", "trailing dot", 300))
	add(TXT("_dmarc.example", "v=DMARC1; p=reject", 300))
	return []string{
		"plain.example", "PLAIN.Example", "big.example", "multi.example", "mx.example", "huge.example",
		"size440.example", "size450.example", "size460.example", "size465.example", "size470.example", "size480.example", "size490.example",
		"alias.example", "alias2.example", "dangling.example", "loop1.example", "to-ent.example", "to-sf.example", "to-to.example",
		"c0.chain.example", "c4.chain.example", "to.example", "tomixed.example", "cname-to.example",
		"sf.example", "sftxt.example", "nx-forced.example", "ext.example", "neg.example",
		"a.b.ent.example", "b.ent.example", "ent.example", "example", "", "nowhere.example", "x.plain.example",
		"foo bar.example", "mixed.example", "café.example", "back\\slash.example", "odd@;()\".example",
		"dot.in.example", "trailing.example", "_dmarc.example",
	}
}

// testQueries packs queries for owners in every form the server must
// handle the same way on both paths.
func testQueries(owners []string) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	types := []uint16{dns.TypeTXT, dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeCNAME, dns.TypeANY, dns.TypeNS, dns.TypeSOA, 0, 65280}
	sizes := []int{-1, 0, 100, 512, 513, 600, 1232, 4096, 65535}
	var out [][]byte
	for _, o := range owners {
		for _, qt := range types {
			for _, size := range sizes {
				m := new(dns.Msg)
				m.Id = uint16(rng.Uint32())
				m.Question = []dns.Question{{Name: Name(o), Qtype: qt, Qclass: dns.ClassINET}}
				m.RecursionDesired = rng.IntN(2) == 0
				m.CheckingDisabled = rng.IntN(3) == 0
				m.AuthenticatedData = rng.IntN(2) == 0
				if size >= 0 {
					m.SetEdns0(uint16(size), rng.IntN(4) == 0)
				}
				b, err := m.Pack()
				if err != nil {
					continue
				}
				out = append(out, b)
			}
		}
	}
	return out
}

// referenceReply is what the handler sent for msg over UDP: miekg's
// Unpack, Server.reply and Pack; nil for no reply.
func referenceReply(t testing.TB, s *Server, msg []byte) []byte {
	t.Helper()
	req := new(dns.Msg)
	if err := req.Unpack(msg); err != nil {
		t.Fatalf("reference unpack of % x: %v", msg, err)
	}
	m := s.reply(req, true)
	if m == nil {
		return nil
	}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// checkFast holds the fast path against the reference for one query; it
// reports whether the fast path answered it.
func checkFast(t testing.TB, s *Server, msg []byte) bool {
	t.Helper()
	q, name, ok := parseQuery(msg, nil)
	if !ok {
		return false
	}
	if len(msg) < headerLen {
		t.Fatalf("parseQuery took % x, shorter than a header", msg)
	}
	dh := dns.Header{
		Id: binary.BigEndian.Uint16(msg), Bits: binary.BigEndian.Uint16(msg[2:]),
		Qdcount: binary.BigEndian.Uint16(msg[4:]), Ancount: binary.BigEndian.Uint16(msg[6:]),
		Nscount: binary.BigEndian.Uint16(msg[8:]), Arcount: binary.BigEndian.Uint16(msg[10:]),
	}
	if a := dns.DefaultMsgAcceptFunc(dh); a != dns.MsgAccept {
		t.Fatalf("parseQuery took % x, which miekg's server does not accept (%d)", msg, a)
	}
	req := new(dns.Msg)
	if err := req.Unpack(msg); err != nil {
		t.Fatalf("parseQuery took % x, which miekg cannot unpack: %v", msg, err)
	}
	if len(req.Question) != 1 {
		t.Fatalf("parseQuery took % x, with %d questions", msg, len(req.Question))
	}
	if want := resolvercache.UnescapeName(req.Question[0].Name); string(name) != want {
		t.Fatalf("parseQuery name %q, handler's %q (% x)", name, want, msg)
	}
	if q.qtype != req.Question[0].Qtype {
		t.Fatalf("parseQuery qtype %d, miekg's %d", q.qtype, req.Question[0].Qtype)
	}
	if opt := req.IsEdns0(); (opt != nil) != q.edns || opt != nil && opt.UDPSize() != q.udpSize {
		t.Fatalf("parseQuery EDNS %v/%d, miekg's %v", q.edns, q.udpSize, opt)
	}
	want := referenceReply(t, s, msg)
	got, send, fast := s.fastReply([]byte("junk"), msg, q, string(name), nil)
	if !fast {
		return false
	}
	got = got[len("junk"):]
	if !send {
		if want != nil {
			t.Fatalf("fast path: no reply to % x; handler replied % x", msg, want)
		}
		return true
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("fast path reply to % x:\n% x\nhandler's:\n% x", msg, got, want)
	}
	return true
}

func TestFastPathMatchesHandler(t *testing.T) {
	s := newServer("")
	queries := testQueries(testZone(t, s))
	var fast, total int
	for _, setting := range []func(){
		func() {},
		func() { s.SetTruncateUDP(true) },
		func() { s.SetTruncateUDP(false); s.SetNegativeTTL(7) },
		func() { s.SetDown(true) },
	} {
		setting()
		a := newAnswerer(s)
		for _, msg := range queries {
			total++
			if checkFast(t, s, msg) {
				fast++
			}
			// Whichever path answer takes, the octets are the handler's.
			got, send := a.answer(nil, msg)
			want := referenceReply(t, s, msg)
			if send != (want != nil) || !bytes.Equal(got, want) {
				t.Fatalf("answer to % x: %v % x, handler's % x", msg, send, got, want)
			}
		}
	}
	t.Logf("%d of %d queries on the fast path", fast, total)
	if fast < total*3/4 {
		t.Fatalf("only %d of %d queries on the fast path", fast, total)
	}
}

// TestParseQueryNames checks the name parseQuery reads against miekg's
// and resolvercache.UnescapeName for every octet in every position.
func TestParseQueryNames(t *testing.T) {
	s := newServer("")
	for c := range 256 {
		for _, labels := range [][]string{
			{string([]byte{byte(c)})},
			{"a" + string([]byte{byte(c)}) + "b", "example"},
			{"x", string([]byte{byte(c)})},
			{"A", string([]byte{byte(c), byte(c)}) + "Z"},
		} {
			msg := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
			for _, l := range labels {
				msg = append(msg, byte(len(l)))
				msg = append(msg, l...)
			}
			msg = append(msg, 0, 0, 16, 0, 1)
			if !checkFast(t, s, msg) {
				t.Fatalf("not on the fast path: % x", msg)
			}
		}
	}
	// The longest name miekg accepts, and one octet more.
	long := func(total int) []byte {
		msg := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for total > 0 {
			n := min(63, total-1)
			msg = append(msg, byte(n))
			msg = append(msg, bytes.Repeat([]byte{'a'}, n)...)
			total -= n + 1
		}
		return append(msg, 0, 0, 16, 0, 1)
	}
	if !checkFast(t, s, long(254)) {
		t.Fatal("a name of 254 octets is not on the fast path")
	}
	if _, _, ok := parseQuery(long(255), nil); ok {
		t.Fatal("parseQuery took a name miekg rejects as too long")
	}
}

// malformedQueries are datagrams the fast path must leave to the slow one,
// which answers them as miekg's server did.
func malformedQueries() [][]byte {
	q := func(b ...byte) []byte { return b }
	std := q(0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'p', 'l', 'a', 'i', 'n', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 16, 0, 1)
	with := func(mut func(b []byte) []byte) []byte { return mut(bytes.Clone(std)) }
	opt := []byte{0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0}
	return [][]byte{
		nil,
		q(1, 2, 3),
		std[:11],
		std[:12],         // QDCOUNT 1, no question
		std[:20],         // question cut short
		std[:len(std)-2], // no QCLASS
		std[:len(std)-4], // no QTYPE
		with(func(b []byte) []byte { b[2] |= 0x80; return b }),                            // a response: ignored
		with(func(b []byte) []byte { b[2] = 2 << 3; return b }),                           // opcode STATUS: NOTIMP
		with(func(b []byte) []byte { b[2] = 4 << 3; return b }),                           // NOTIFY: accepted
		with(func(b []byte) []byte { b[2] = 5 << 3; return b }),                           // UPDATE: NOTIMP
		with(func(b []byte) []byte { b[5] = 0; return b }),                                // QDCOUNT 0
		with(func(b []byte) []byte { b[5] = 2; return b }),                                // QDCOUNT 2
		with(func(b []byte) []byte { b[7] = 1; return b }),                                // ANCOUNT 1, none there
		with(func(b []byte) []byte { b[7] = 2; return b }),                                // ANCOUNT 2
		with(func(b []byte) []byte { b[9] = 2; return b }),                                // NSCOUNT 2
		with(func(b []byte) []byte { b[11] = 3; return b }),                               // ARCOUNT 3
		with(func(b []byte) []byte { b[11] = 1; return b }),                               // ARCOUNT 1, none there
		with(func(b []byte) []byte { b[11] = 1; return append(b, opt[:5]...) }),           // OPT cut short
		with(func(b []byte) []byte { b[11] = 1; return append(append(b, opt...), 0xff) }), // trailing octet
		with(func(b []byte) []byte { return append(b, 0xff, 0xee) }),                      // trailing octets
		with(func(b []byte) []byte {
			b[11] = 1 // OPT with an option (a cookie)
			o := append(bytes.Clone(opt[:9]), 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8)
			return append(b, o...)
		}),
		with(func(b []byte) []byte { b[11] = 2; return append(append(b, opt...), opt...) }), // two OPTs
		with(func(b []byte) []byte {
			b[11] = 1 // an A record, not OPT, in the additional section
			return append(b, 0, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 192, 0, 2, 1)
		}),
		with(func(b []byte) []byte {
			b[11] = 1
			o := bytes.Clone(opt)
			o[0] = 0xc0
			return append(b, append(o, 0)...)
		}), // OPT owner a pointer
		q(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 16, 0, 1),                                // question name a pointer (a loop)
		q(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 'a', 0, 0, 16, 0, 1),                            // label type 0x40
		q(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 'a', 0, 0, 16, 0, 1),                            // label type 0x80
		q(0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'a', 'b'),                                          // label past the end
		append(bytes.Clone(std[:12]), bytes.Repeat([]byte{1, 'a'}, 200)...),                         // no end of name
		append(append(bytes.Clone(std[:12]), bytes.Repeat([]byte{1, 'a'}, 127)...), 0, 0, 16, 0, 1), // name too long
		append(bytes.Clone(std), bytes.Repeat([]byte{0}, 600)...),                                   // over 512 octets
	}
}

func TestMalformedQueriesTakeSlowPath(t *testing.T) {
	s := newServer("")
	testZone(t, s)
	a := newAnswerer(s)
	for _, msg := range malformedQueries() {
		checkFast(t, s, msg) // parseQuery may take none it should not
		// receive must not panic on anything.
		a.receive(nil, msg)
	}
}

// FuzzParseQuery: whatever the datagram, the fast path takes only what
// miekg accepts and answers it as the handler does, and receiving it does
// not panic.
func FuzzParseQuery(f *testing.F) {
	s := newServer("")
	owners := testZone(f, s)
	for i, q := range testQueries(owners) {
		if i%7 == 0 {
			f.Add(q)
		}
	}
	for _, q := range malformedQueries() {
		f.Add(q)
	}
	a := newAnswerer(s)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > udpReadSize {
			msg = msg[:udpReadSize]
		}
		checkFast(t, s, msg)
		b, reply, accepted := a.receive(nil, msg)
		if reply && len(b) < headerLen {
			t.Fatalf("reply of %d octets", len(b))
		}
		if accepted {
			a.answer(nil, msg)
		}
	})
}
