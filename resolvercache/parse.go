package resolvercache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// This file holds the pure steps of a lookup: checking one wire-format reply
// against the question (decodeReply), folding it into a CNAME chain
// (chain.absorb) and building the Answer (chain.answer). The Client wraps
// them in I/O; the fuzz target FuzzParseResponse drives them directly.

// UDPSize is the EDNS0 payload size the Client advertises (RFC 6891 6.2.5;
// 1232 octets avoids IP fragmentation on any path, as recommended by DNS Flag
// Day 2020). A UDP reply larger than this is malformed.
const UDPSize = 1232

// errTruncated reports a UDP reply with the TC bit set (RFC 1035 4.1.1): the
// question must be asked again over TCP (RFC 7766 5).
var errTruncated = errors.New("reply truncated")

// errMismatch marks a reply that does not answer the question asked (wrong
// ID, question or QR bit). Over UDP the client ignores such datagrams and
// keeps waiting (they may be stray or spoofed); if nothing better arrives it
// reports them as KindMalformed.
var errMismatch = errors.New("reply does not match the query")

// question is one wire query.
type question struct {
	id    uint16
	name  string // presentation form, fully qualified (EscapeName)
	qtype uint16
	orig  string // the caller's canonical raw name, for errors
	otype uint16 // the caller's type, for errors
}

func (q *question) fail(kind ErrorKind, err error) *Error {
	return &Error{Name: q.orig, Type: q.otype, Kind: kind, Err: err}
}

// pack encodes the query: RD set (the upstream is a recursive resolver),
// AD set to ask for the authentication status (RFC 6840 5.7), and an EDNS0
// OPT record advertising UDPSize (RFC 6891).
func (q *question) pack(buf []byte) ([]byte, error) {
	m := dns.Msg{
		MsgHdr: dns.MsgHdr{
			Id:                q.id,
			Opcode:            dns.OpcodeQuery,
			RecursionDesired:  true,
			AuthenticatedData: true,
		},
		Question: []dns.Question{{Name: q.name, Qtype: q.qtype, Qclass: dns.ClassINET}},
	}
	m.SetEdns0(UDPSize, false)
	return m.PackBuffer(buf)
}

// decodeReply checks one reply against q and unpacks it. It returns
// errTruncated for a UDP reply with TC set, an *Error wrapping errMismatch
// for a reply to some other query, an *Error of KindMalformed for bytes that
// do not parse, and an *Error of KindServFail for any RCODE other than
// NOERROR and NXDOMAIN (RFC 1035 4.1.1).
func decodeReply(wire []byte, q *question, udp bool) (*dns.Msg, error) {
	if len(wire) < 12 {
		return nil, q.fail(KindMalformed, fmt.Errorf("reply of %d octets is shorter than a header", len(wire)))
	}
	if id := binary.BigEndian.Uint16(wire); id != q.id {
		return nil, q.fail(KindMalformed, fmt.Errorf("%w: ID %d, want %d", errMismatch, id, q.id))
	}
	if wire[2]&0x80 == 0 {
		return nil, q.fail(KindMalformed, fmt.Errorf("%w: QR bit not set", errMismatch))
	}
	if udp && wire[2]&0x02 != 0 {
		return nil, errTruncated
	}
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		return nil, q.fail(KindMalformed, fmt.Errorf("unpack reply: %w", err))
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		e := q.fail(KindServFail, nil)
		e.Rcode = m.Rcode
		return nil, e
	}
	if len(m.Question) != 1 {
		return nil, q.fail(KindMalformed, fmt.Errorf("%w: %d questions in reply", errMismatch, len(m.Question)))
	}
	if rq := m.Question[0]; !equalName(rq.Name, q.name) || rq.Qtype != q.qtype || rq.Qclass != dns.ClassINET {
		return nil, q.fail(KindMalformed, fmt.Errorf("%w: reply is for %s %s", errMismatch,
			UnescapeName(rq.Name), dns.TypeToString[rq.Qtype]))
	}
	return m, nil
}

// chain accumulates one lookup across the replies of a CNAME chain.
type chain struct {
	qtype   uint16
	maxHops int
	defNeg  uint32   // negative TTL when a negative reply has no SOA
	seen    []string // names visited, presentation form, for loop detection
	cnames  []string // aliases followed, raw
	recs    []dns.RR // records of qtype at the end of the chain
	ttl     uint32
	neg     uint32 // negative TTL of the last reply, if it had no records
	rcode   int
	ad      bool
}

func newChain(qname string, qtype uint16, maxHops int, defNeg uint32) *chain {
	return &chain{
		qtype: qtype, maxHops: maxHops, defNeg: defNeg,
		seen: []string{qname}, ttl: math.MaxUint32, ad: true,
	}
}

// absorb folds the reply m to the question (cur, c.qtype) into the chain. It
// follows the CNAME records in the answer section from cur (RFC 1034 3.6.2,
// 4.3.2) and collects the records of the asked type owned by the end of the
// chain; records owned by other names are ignored. If the chain ends at an
// alias target without records and the RCODE is NOERROR, absorb returns that
// target: the server did not chase it (it is out of its zone, or the chain
// was cut short), and it must be asked again. Loops and chains longer than
// maxHops aliases are KindCNAMELoop errors.
func (c *chain) absorb(m *dns.Msg, cur string, q *question) (next string, err error) {
	c.ad = c.ad && m.AuthenticatedData
	start := cur
	for {
		var cname *dns.CNAME
		found := false
		for _, rr := range m.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !equalName(h.Name, cur) {
				continue
			}
			if h.Rrtype == c.qtype {
				c.recs = append(c.recs, rr)
				c.minTTL(h.Ttl)
				found = true
			} else if cn, ok := rr.(*dns.CNAME); ok && cname == nil {
				cname = cn
			}
		}
		if found {
			// Records at the end of the chain: the name exists, whatever
			// RCODE a confused server set.
			c.rcode = dns.RcodeSuccess
			return "", nil
		}
		if cname == nil {
			break
		}
		if err := c.follow(cname, q); err != nil {
			return "", err
		}
		cur = cname.Target
	}
	c.rcode = m.Rcode
	if m.Rcode == dns.RcodeSuccess && !equalName(cur, start) {
		return cur, nil
	}
	c.neg = negativeTTL(m, c.defNeg)
	return "", nil
}

func (c *chain) follow(cn *dns.CNAME, q *question) error {
	target := cn.Target
	for _, s := range c.seen {
		if equalName(s, target) {
			return q.fail(KindCNAMELoop, fmt.Errorf("CNAME loop at %s", UnescapeName(target)))
		}
	}
	if len(c.cnames) >= c.maxHops {
		return q.fail(KindCNAMELoop, fmt.Errorf("CNAME chain longer than %d", c.maxHops))
	}
	c.seen = append(c.seen, target)
	c.cnames = append(c.cnames, UnescapeName(target))
	c.minTTL(cn.Hdr.Ttl)
	return nil
}

func (c *chain) minTTL(t uint32) {
	if t < c.ttl {
		c.ttl = t
	}
}

// answer builds the Answer for the canonical raw name.
func (c *chain) answer(name string, received time.Time) *Answer {
	a := &Answer{
		Name:          name,
		Type:          c.qtype,
		Rcode:         c.rcode,
		CNAMEs:        c.cnames,
		Received:      received,
		Authenticated: c.ad,
	}
	if len(c.recs) == 0 {
		c.minTTL(c.neg)
	} else {
		addRecords(a, c.recs)
	}
	a.TTL = c.ttl
	return a
}

// negativeTTL returns the RFC 2308 section 5 negative TTL of a reply: the
// minimum of the TTL and the MINIMUM field of the SOA records in the
// authority section, or def if there are none.
func negativeTTL(m *dns.Msg, def uint32) uint32 {
	ttl, ok := uint32(math.MaxUint32), false
	for _, rr := range m.Ns {
		if soa, isSOA := rr.(*dns.SOA); isSOA {
			ok = true
			ttl = min(ttl, soa.Hdr.Ttl, soa.Minttl)
		}
	}
	if !ok {
		return def
	}
	return ttl
}

// addRecords converts records into the Answer's fields: TXT and SPF into
// TXT (character-strings un-escaped to raw octets and joined, RFC 7208 3.3,
// RFC 6376 3.6.2.2), A and AAAA into IPs, MX into MX, and name-valued types
// (PTR, NS, CNAME, DNAME) into Names. Other types have no field; their
// answers look empty apart from TTL and Rcode.
func addRecords(a *Answer, recs []dns.RR) {
	for _, rr := range recs {
		switch r := rr.(type) {
		case *dns.TXT:
			a.TXT = append(a.TXT, joinTXT(r.Txt))
		case *dns.SPF:
			a.TXT = append(a.TXT, joinTXT(r.Txt))
		case *dns.A:
			if ip, ok := netip.AddrFromSlice(r.A.To4()); ok {
				a.IPs = append(a.IPs, ip)
			}
		case *dns.AAAA:
			if ip, ok := netip.AddrFromSlice(r.AAAA.To16()); ok {
				a.IPs = append(a.IPs, ip)
			}
		case *dns.MX:
			a.MX = append(a.MX, MX{Preference: r.Preference, Host: UnescapeName(r.Mx)})
		case *dns.PTR:
			a.Names = append(a.Names, UnescapeName(r.Ptr))
		case *dns.NS:
			a.Names = append(a.Names, UnescapeName(r.Ns))
		case *dns.CNAME:
			a.Names = append(a.Names, UnescapeName(r.Target))
		case *dns.DNAME:
			a.Names = append(a.Names, UnescapeName(r.Target))
		}
	}
}

// joinTXT un-escapes the presentation-form character-strings of one TXT
// record and joins them.
func joinTXT(parts []string) string {
	switch len(parts) {
	case 0:
		return ""
	case 1:
		return unescapeTXT(parts[0])
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(unescapeTXT(p))
	}
	return b.String()
}

// equalName compares two presentation-form names case-insensitively (ASCII
// only, RFC 4343), ignoring one trailing dot on either.
func equalName(a, b string) bool {
	a = strings.TrimSuffix(a, ".")
	b = strings.TrimSuffix(b, ".")
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parseResponse is the pure core of one client step: it checks the wire
// reply against q, folds it into c and reports the alias target to ask next
// ("" when the chain is complete). The fuzz target drives it directly.
func parseResponse(wire []byte, q *question, c *chain, udp bool) (next string, err error) {
	m, err := decodeReply(wire, q, udp)
	if err != nil {
		return "", err
	}
	return c.absorb(m, q.name, q)
}
