package resolvercache_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// rawServer is a UDP server that answers each query with whatever datagrams
// reply returns, at once and in order, to feed the client crafted bytes.
func rawServer(t *testing.T, reply func(q *dns.Msg) [][]byte) string {
	t.Helper()
	return startUDPServer(t, func(_ int, q *dns.Msg) (time.Duration, [][]byte) { return 0, reply(q) }).addr
}

func pack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goodReply answers q with one TXT record.
func goodReply(t *testing.T, q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Answer = append(m.Answer, dnstest.TXT(resolvercache.UnescapeName(q.Question[0].Name), "good", 60))
	return m
}

func TestClientCraftedReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(t *testing.T, q *dns.Msg) [][]byte
		kind  resolvercache.ErrorKind // 0: success expected
	}{
		{"garbage", func(t *testing.T, q *dns.Msg) [][]byte {
			return [][]byte{[]byte("this is not a DNS message at all")}
		}, resolvercache.KindMalformed},
		{"short header", func(t *testing.T, q *dns.Msg) [][]byte {
			return [][]byte{{byte(q.Id >> 8), byte(q.Id)}}
		}, resolvercache.KindMalformed},
		{"cut records", func(t *testing.T, q *dns.Msg) [][]byte {
			b := pack(t, goodReply(t, q))
			return [][]byte{b[:len(b)-3]}
		}, resolvercache.KindMalformed},
		{"ID mismatch only", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Id = q.Id + 1
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"ID mismatch then good", func(t *testing.T, q *dns.Msg) [][]byte {
			bad := goodReply(t, q)
			bad.Id = q.Id ^ 0xffff
			return [][]byte{pack(t, bad), pack(t, goodReply(t, q))}
		}, 0},
		{"QR bit missing", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Response = false
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"other question name", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Question[0].Name = "evil.example."
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"other question type", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Question[0].Qtype = dns.TypeA
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"no question", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Question = nil
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"oversize", func(t *testing.T, q *dns.Msg) [][]byte {
			m := new(dns.Msg)
			m.SetReply(q)
			m.Answer = append(m.Answer, dnstest.TXT(resolvercache.UnescapeName(q.Question[0].Name), strings.Repeat("x", 1400), 60))
			return [][]byte{pack(t, m)}
		}, resolvercache.KindMalformed},
		{"servfail without question", func(t *testing.T, q *dns.Msg) [][]byte {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeServerFailure)
			m.Question = nil
			return [][]byte{pack(t, m)}
		}, resolvercache.KindServFail},
		{"uppercase question echo", func(t *testing.T, q *dns.Msg) [][]byte {
			m := goodReply(t, q)
			m.Question[0].Name = strings.ToUpper(q.Question[0].Name)
			return [][]byte{pack(t, m)}
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, func(q *dns.Msg) [][]byte { return tc.reply(t, q) })
			c := newClient(t, resolvercache.WithUpstreams(addr), resolvercache.WithTimeout(150*time.Millisecond), resolvercache.WithRetries(0))
			a, err := c.Lookup(context.Background(), "q.example.com", dns.TypeTXT)
			if tc.kind == 0 {
				if err != nil || len(a.TXT) != 1 || a.TXT[0] != "good" {
					t.Fatalf("got %+v, %v", a, err)
				}
				return
			}
			if kindOf(err) != tc.kind {
				t.Fatalf("err = %v, want %s", err, tc.kind)
			}
			if !resolvercache.IsTemporary(err) {
				t.Errorf("%v should be temporary", err)
			}
		})
	}
}

func TestClientAuthenticatedAndRecordsOffChain(t *testing.T) {
	addr := rawServer(t, func(q *dns.Msg) [][]byte {
		m := new(dns.Msg)
		m.SetReply(q)
		m.AuthenticatedData = q.AuthenticatedData // the client asks for AD
		name := resolvercache.UnescapeName(q.Question[0].Name)
		m.Answer = append(m.Answer,
			dnstest.TXT("unrelated.example.net", "injected", 60), // not on the chain: ignored
			dnstest.TXT(name, "mine", 60))
		return [][]byte{pack(t, m)}
	})
	c := newClient(t, resolvercache.WithUpstreams(addr))
	a := lookup(t, c, "ad.example.com", dns.TypeTXT)
	if !a.Authenticated || len(a.TXT) != 1 || a.TXT[0] != "mine" {
		t.Errorf("got %+v", a)
	}
}

func TestClientNegativeTTLFromSOA(t *testing.T) {
	for _, tc := range []struct {
		soaTTL, minimum uint32
		withSOA         bool
		want            uint32
	}{
		{600, 120, true, 120},
		{90, 3600, true, 90},
		{0, 0, false, 45},
	} {
		addr := rawServer(t, func(q *dns.Msg) [][]byte {
			m := new(dns.Msg)
			m.SetRcode(q, dns.RcodeNameError)
			if tc.withSOA {
				m.Ns = append(m.Ns, &dns.SOA{
					Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: tc.soaTTL},
					Ns:  "ns.example.com.", Mbox: "h.example.com.", Minttl: tc.minimum,
				})
			}
			return [][]byte{pack(t, m)}
		})
		c := newClient(t, resolvercache.WithUpstreams(addr), resolvercache.WithNegativeTTL(45*time.Second))
		a := lookup(t, c, "nx.example.com", dns.TypeTXT)
		if !a.NXDomain() || a.TTL != tc.want {
			t.Errorf("SOA ttl %d minimum %d (present %v): TTL %d, want %d", tc.soaTTL, tc.minimum, tc.withSOA, a.TTL, tc.want)
		}
	}
}

func TestClientTCPMismatchIsMalformed(t *testing.T) {
	// UDP says TC; TCP answers with the wrong ID.
	udp := rawServer(t, func(q *dns.Msg) [][]byte {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Truncated = true
		return [][]byte{pack(t, m)}
	})
	l, err := net.Listen("tcp", udp)
	if err != nil {
		t.Skipf("no TCP on the same port: %v", err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			dc := &dns.Conn{Conn: conn}
			q, err := dc.ReadMsg()
			if err == nil {
				m := goodReply(t, q)
				m.Id = q.Id + 1
				_ = dc.WriteMsg(m)
			}
			conn.Close()
		}
	}()
	c := newClient(t, resolvercache.WithUpstreams(udp), resolvercache.WithRetries(0))
	_, err = c.Lookup(context.Background(), "tcp.example.com", dns.TypeTXT)
	var e *resolvercache.Error
	if !errors.As(err, &e) || e.Kind != resolvercache.KindMalformed {
		t.Errorf("err = %v, want malformed", err)
	}
}

// TestClientAliasTargetOnTheWire: the client asks an alias target again
// exactly as it stands on the wire, whatever octets its labels hold; a
// target with a '.' octet inside a label, which the raw names of Answer
// cannot tell from a name of more labels, is refused, and neither it nor
// the name of more labels is asked.
func TestClientAliasTargetOnTheWire(t *testing.T) {
	for _, tc := range []struct {
		target string // presentation form
		kind   resolvercache.ErrorKind
		cname  string // raw, as reported
	}{
		{`X\\y\"z\ w\000\255.alias.test.`, 0, "x\\y\"z w\x00\xff.alias.test"},
		{`a\.b.alias.test.`, resolvercache.KindMalformed, ""},
	} {
		t.Run(tc.target, func(t *testing.T) {
			var mu sync.Mutex
			var asked []string
			addr := rawServer(t, func(q *dns.Msg) [][]byte {
				name := q.Question[0].Name
				mu.Lock()
				asked = append(asked, name)
				mu.Unlock()
				m := new(dns.Msg)
				m.SetReply(q)
				if strings.EqualFold(name, "start.alias.test.") {
					m.Answer = append(m.Answer, &dns.CNAME{
						Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60},
						Target: tc.target})
				} else {
					m.Answer = append(m.Answer, &dns.TXT{
						Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
						Txt: []string{"aliased"}})
				}
				return [][]byte{pack(t, m)}
			})
			c := newClient(t, resolvercache.WithUpstreams(addr), resolvercache.WithRetries(0))
			a, err := c.Lookup(context.Background(), "start.alias.test", dns.TypeTXT)
			mu.Lock()
			defer mu.Unlock()
			if tc.kind != 0 {
				if kindOf(err) != tc.kind || len(asked) != 1 {
					t.Fatalf("got %+v, %v after asking %q; want %s after asking only start.alias.test", a, err, asked, tc.kind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.target // octet for octet, case included
			if len(asked) != 2 || asked[1] != want {
				t.Fatalf("asked %q, want the alias %q second", asked, want)
			}
			if len(a.CNAMEs) != 1 || a.CNAMEs[0] != tc.cname || len(a.TXT) != 1 || a.TXT[0] != "aliased" {
				t.Errorf("answer %+v", a)
			}
		})
	}
}
