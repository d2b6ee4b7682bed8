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
// against the question (decodeReply, wire.go), folding it into a CNAME chain
// (chain.absorb) and building the Answer (chain.answer). The Client wraps
// them in I/O; the fuzz targets FuzzParseResponse and FuzzDecodeMatchesMiekg
// drive them directly. addRecords serves the Zone, which holds dns.RR.

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

// errReplyPanic marks a reply whose reading panicked: a bug in this
// package, met on bytes from outside. The reply is reported as
// KindMalformed (a temporary error for the lookup) instead of ending the
// process, since replies are also read on a socket's reader goroutine,
// where no caller could recover the panic. The fuzz targets fail on it.
var errReplyPanic = errors.New("reading the reply panicked (a bug in resolvercache)")

// malformedOnPanic, deferred by the functions that read a reply's bytes
// (decodeReply, chain.absorb), turns a panic into a KindMalformed *Error
// for q wrapping errReplyPanic.
func malformedOnPanic(q *question, err *error) {
	if v := recover(); v != nil {
		*err = q.fail(KindMalformed, fmt.Errorf("%w: %v", errReplyPanic, v))
	}
}

// question is one wire query.
type question struct {
	id    uint16
	name  string // wire form (RFC 1035 3.1), uncompressed; from wireName or a CNAME target
	qtype uint16
	orig  string // the caller's canonical raw name, for errors
	otype uint16 // the caller's type, for errors
}

func (q *question) fail(kind ErrorKind, err error) *Error {
	return &Error{Name: q.orig, Type: q.otype, Kind: kind, Err: err}
}

// chain accumulates one lookup across the replies of a CNAME chain.
type chain struct {
	qtype   uint16
	maxHops int
	defNeg  uint32   // negative TTL when a negative reply has no SOA
	qname   string   // the name asked first, wire form
	seen    []string // alias targets visited, wire form, for loop detection
	cnames  []string // aliases followed, raw
	ttl     uint32
	neg     uint32 // negative TTL of the last reply, if it had no records
	rcode   int
	ad      bool
	found   bool // records of qtype at the end of the chain

	// The records of qtype at the end of the chain, as Answer keeps them.
	txt   []string
	ips   []netip.Addr
	mx    []MX
	names []string
}

// init starts the chain at the wire name qname.
func (c *chain) init(qname string, qtype uint16, maxHops int, defNeg uint32) {
	*c = chain{qtype: qtype, maxHops: maxHops, defNeg: defNeg, qname: qname, ttl: math.MaxUint32, ad: true}
}

// absorb folds the reply m to the question (cur, c.qtype) into the chain. It
// follows the CNAME records in the answer section from cur (RFC 1034 3.6.2,
// 4.3.2) and collects the records of the asked type owned by the end of the
// chain; records owned by other names are ignored. If the chain ends at an
// alias target without records and the RCODE is NOERROR, absorb returns that
// target: the server did not chase it (it is out of its zone, or the chain
// was cut short), and it must be asked again. Loops and chains longer than
// maxHops aliases are KindCNAMELoop errors.
func (c *chain) absorb(m *replyView, cur string, q *question) (next string, err error) {
	defer malformedOnPanic(q, &err)
	c.ad = c.ad && m.ad
	start := cur
	for {
		cname := rrHeader{end: -1}
		it := m.answers()
		for h, owner, ok := it.next(); ok; h, owner, ok = it.next() {
			if h.class != dns.ClassINET || !equalWire(owner, cur) {
				continue
			}
			if h.typ == c.qtype {
				if err := c.addRecord(m.b, h); err != nil {
					return "", q.fail(KindMalformed, fmt.Errorf("%v record: %w", dns.Type(h.typ), err))
				}
				c.minTTL(h.ttl)
				c.found = true
			} else if h.typ == dns.TypeCNAME && cname.end < 0 {
				cname = h
			}
		}
		if c.found {
			// Records at the end of the chain: the name exists, whatever
			// RCODE a confused server set.
			c.rcode = dns.RcodeSuccess
			return "", nil
		}
		if cname.end < 0 {
			break
		}
		var buf [maxNameOctets]byte
		target, _, err := readName(m.b[:cname.end], cname.rdata, &buf)
		if err == nil {
			// The target is asked again exactly as it stands on the
			// wire, but reported raw (Answer.CNAMEs), which must name it.
			err = checkRaw(target)
		}
		if err != nil { // checkRaw's, or a read error (none after decodeReply)
			return "", q.fail(KindMalformed, fmt.Errorf("CNAME target: %w", err))
		}
		if err := c.follow(target, cname.ttl, q); err != nil {
			return "", err
		}
		cur = c.seen[len(c.seen)-1]
	}
	c.rcode = m.rcode
	if m.rcode == dns.RcodeSuccess && !equalWire(cur, start) {
		return cur, nil
	}
	c.neg = negativeTTL(m, c.defNeg)
	return "", nil
}

func (c *chain) follow(target []byte, ttl uint32, q *question) error {
	loop := equalWire(c.qname, target)
	for _, s := range c.seen {
		loop = loop || equalWire(s, target)
	}
	if loop {
		return q.fail(KindCNAMELoop, fmt.Errorf("CNAME loop at %s", rawName(target)))
	}
	if len(c.cnames) >= c.maxHops {
		return q.fail(KindCNAMELoop, fmt.Errorf("CNAME chain longer than %d", c.maxHops))
	}
	c.seen = append(c.seen, string(target))
	c.cnames = append(c.cnames, rawName(target))
	c.minTTL(ttl)
	return nil
}

// addRecord converts one record of the asked type into the Answer's
// fields, as addRecords does for a dns.RR: TXT and SPF into TXT
// (character-strings joined, raw octets, RFC 7208 3.3, RFC 6376 3.6.2.2),
// A and AAAA into IPs, MX into MX, and name-valued types (PTR, NS, CNAME,
// DNAME) into Names. Other types have no field. decodeReply has checked
// the RDATA of these types. A name that raw form cannot hold (checkRaw)
// is an error: callers look these names up again.
func (c *chain) addRecord(msg []byte, h rrHeader) error {
	rd := msg[h.rdata:h.end]
	var buf [maxNameOctets]byte
	switch h.typ {
	case dns.TypeTXT, dns.TypeSPF:
		c.txt = append(c.txt, joinStrings(rd))
	case dns.TypeA:
		if len(rd) == 4 {
			c.ips = append(c.ips, netip.AddrFrom4([4]byte(rd)))
		}
	case dns.TypeAAAA:
		if len(rd) == 16 {
			c.ips = append(c.ips, netip.AddrFrom16([16]byte(rd)))
		}
	case dns.TypeMX:
		if len(rd) >= 2 {
			host, _, err := readName(msg[:h.end], h.rdata+2, &buf)
			if err == nil {
				err = checkRaw(host)
			}
			if err != nil {
				return err
			}
			c.mx = append(c.mx, MX{Preference: binary.BigEndian.Uint16(rd), Host: rawName(host)})
		}
	case dns.TypePTR, dns.TypeNS, dns.TypeCNAME, dns.TypeDNAME:
		name, _, err := readName(msg[:h.end], h.rdata, &buf)
		if err == nil {
			err = checkRaw(name)
		}
		if err != nil {
			return err
		}
		c.names = append(c.names, rawName(name))
	}
	return nil
}

// joinStrings joins the character-strings of TXT RDATA (RFC 1035 3.3.14)
// into one string of raw octets.
func joinStrings(rd []byte) string {
	if len(rd) > 0 && int(rd[0]) == len(rd)-1 {
		return string(rd[1:])
	}
	n := 0
	for i := 0; i < len(rd); i += 1 + int(rd[i]) {
		n += min(int(rd[i]), len(rd)-i-1)
	}
	var b strings.Builder // one allocation, no copy
	b.Grow(n)
	for i := 0; i < len(rd); i += 1 + int(rd[i]) {
		b.Write(rd[i+1 : min(i+1+int(rd[i]), len(rd))])
	}
	return b.String()
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
		TXT:           c.txt,
		IPs:           c.ips,
		MX:            c.mx,
		Names:         c.names,
	}
	if !c.found {
		c.minTTL(c.neg)
	}
	a.TTL = c.ttl
	return a
}

// negativeTTL returns the RFC 2308 section 5 negative TTL of a reply: the
// minimum of the TTL and the MINIMUM field of the SOA records in the
// authority section, or def if there are none.
func negativeTTL(m *replyView, def uint32) uint32 {
	ttl, ok := uint32(math.MaxUint32), false
	it := m.authority()
	for h, _, more := it.next(); more; h, _, more = it.next() {
		if h.typ == dns.TypeSOA && h.end-h.rdata >= 4 {
			ok = true
			ttl = min(ttl, h.ttl, binary.BigEndian.Uint32(m.b[h.end-4:]))
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

// parseResponse is the pure core of one client step: it checks the wire
// reply against q, folds it into c and reports the alias target to ask next
// ("" when the chain is complete). The fuzz target drives it directly.
func parseResponse(wire []byte, q *question, c *chain, udp bool) (next string, err error) {
	m, err := decodeReply(wire, q, udp)
	if err != nil {
		return "", err
	}
	return c.absorb(&m, q.name, q)
}
