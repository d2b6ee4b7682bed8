package resolvercache

// The miekg/dns-based reply path the client used before wire.go, kept as
// the reference that FuzzDecodeMatchesMiekg compares the in-place reader
// against: names are presentation form here, wire form there.

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/miekg/dns"
)

type refQuestion struct {
	id    uint16
	name  string // presentation form
	qtype uint16
}

func (q *refQuestion) fail(kind ErrorKind, err error) *Error {
	return &Error{Name: "ref", Type: q.qtype, Kind: kind, Err: err}
}

// refPack is the query as the client packed it through dns.Msg.
func refPack(q *refQuestion) ([]byte, error) {
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
	return m.Pack()
}

func refDecodeReply(wire []byte, q *refQuestion, udp bool) (*dns.Msg, error) {
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
	if rq := m.Question[0]; !refEqualName(rq.Name, q.name) || rq.Qtype != q.qtype || rq.Qclass != dns.ClassINET {
		return nil, q.fail(KindMalformed, fmt.Errorf("%w: reply is for %s %s", errMismatch,
			UnescapeName(rq.Name), dns.TypeToString[rq.Qtype]))
	}
	return m, nil
}

// chain accumulates one lookup across the replies of a CNAME chain.
type refChain struct {
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

func newRefChain(qname string, qtype uint16, maxHops int, defNeg uint32) *refChain {
	return &refChain{
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
func (c *refChain) absorb(m *dns.Msg, cur string, q *refQuestion) (next string, err error) {
	c.ad = c.ad && m.AuthenticatedData
	start := cur
	for {
		var cname *dns.CNAME
		found := false
		for _, rr := range m.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !refEqualName(h.Name, cur) {
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
	if m.Rcode == dns.RcodeSuccess && !refEqualName(cur, start) {
		return cur, nil
	}
	c.neg = refNegativeTTL(m, c.defNeg)
	return "", nil
}

func (c *refChain) follow(cn *dns.CNAME, q *refQuestion) error {
	target := cn.Target
	for _, s := range c.seen {
		if refEqualName(s, target) {
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

func (c *refChain) minTTL(t uint32) {
	if t < c.ttl {
		c.ttl = t
	}
}

// answer builds the Answer for the canonical raw name.
func (c *refChain) answer(name string, received time.Time) *Answer {
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
func refNegativeTTL(m *dns.Msg, def uint32) uint32 {
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

// equalName compares two presentation-form names case-insensitively (ASCII
// only, RFC 4343), ignoring one trailing dot on either.
func refEqualName(a, b string) bool {
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

// sawDotLabel reports whether the chain followed an alias, or collected a
// record naming a name, with a '.' octet inside a label (written \. or
// \046 in presentation form): what the wire path refuses (checkRaw).
func (c *refChain) sawDotLabel() bool {
	for _, s := range c.seen {
		if refDotInLabel(s) {
			return true
		}
	}
	for _, rr := range c.recs {
		var name string
		switch r := rr.(type) {
		case *dns.MX:
			name = r.Mx
		case *dns.PTR:
			name = r.Ptr
		case *dns.NS:
			name = r.Ns
		case *dns.CNAME:
			name = r.Target
		case *dns.DNAME:
			name = r.Target
		}
		if refDotInLabel(name) {
			return true
		}
	}
	return false
}

// refDotInLabel reports whether a presentation-form name has an escaped
// '.' (\. or \046).
func refDotInLabel(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			if s[i+1:i+4] == "046" {
				return true
			}
			i += 3
			continue
		}
		if s[i+1] == '.' {
			return true
		}
		i++
	}
	return false
}
