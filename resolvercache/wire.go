package resolvercache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// This file reads and writes the DNS wire format (RFC 1035 4.1) for the
// Client directly, without building a dns.Msg. Packing a query through
// dns.Msg took six allocations and 2 µs, and unpacking a reply into one
// ten to twenty allocations and 3 µs: a fifth of the client's CPU per
// cold lookup. A query is a fixed header, one name and a fixed OPT
// record; a reply is checked once (decodeReply) and then read in place
// (chain.absorb) for the few record types the checks use.

const (
	headerOctets  = 12
	maxNameOctets = 255 // wire form, root label included (RFC 1035 2.3.4)
	// maxPointers bounds the compression pointers followed in one name,
	// as miekg/dns does: a name of 255 octets has at most 127 labels.
	maxPointers = (maxNameOctets+1)/2 - 2
	// rrFixedOctets is TYPE, CLASS, TTL and RDLENGTH after an owner name.
	rrFixedOctets = 10
)

var (
	errShortMsg  = errors.New("message ends inside a field")
	errLongName  = errors.New("name longer than 255 octets")
	errPointers  = errors.New("too many compression pointers")
	errLabelType = errors.New("reserved label type")
	errRdata     = errors.New("record data does not match its RDLENGTH")
	// errDotInLabel marks a name the client would follow or report whose
	// label holds a '.' octet (0x2E): legal on the wire (RFC 2181 11), but
	// its raw form would read as a name of more labels (see checkRaw).
	errDotInLabel = errors.New("a label holds a '.' octet, which a raw name cannot tell from a label boundary")
)

// wireName returns the wire form of a raw, dot-separated name that
// ValidateName accepted: each label prefixed by its length, then the root.
// The root itself is "" in raw form (as rawName gives it), one zero octet
// on the wire.
func wireName(raw string) string {
	if raw == "" {
		return "\x00"
	}
	var buf [maxNameOctets]byte
	b := buf[:0]
	start := 0
	for i := 0; i <= len(raw); i++ {
		if i == len(raw) || raw[i] == '.' {
			b = append(b, byte(i-start))
			b = append(b, raw[start:i]...)
			start = i + 1
		}
	}
	b = append(b, 0)
	return string(b)
}

// rawName returns the raw form of a wire name (uncompressed, as readName
// gives it): labels joined by dots, ASCII lower case, no trailing dot, as
// UnescapeName gives for the presentation form. The root is "". A label
// holding a '.' octet makes it ambiguous; see checkRaw.
func rawName[T string | []byte](w T) string {
	if len(w) <= 1 {
		return ""
	}
	var b strings.Builder
	b.Grow(len(w) - 2)
	for i := 0; i < len(w) && w[i] != 0; {
		if i > 0 {
			b.WriteByte('.')
		}
		n := int(w[i])
		for j := i + 1; j <= i+n; j++ {
			c := w[j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b.WriteByte(c)
		}
		i += 1 + n
	}
	return b.String()
}

// checkRaw returns an error wrapping errDotInLabel unless the
// uncompressed wire name w can be given to callers in raw form: rawName keeps every octet of a label except that it
// joins labels with '.', so a label holding a '.' octet (escaped as \. in
// presentation form, as miekg/dns writes it) would come back as a
// different name with more labels; a caller looking it up again, or
// checking it against a domain, would use that other name. Such names
// are not hostnames (RFC 952, RFC 1123 2.1) and no record the checks use
// needs them, so a reply that hands one to the caller is refused rather
// than reported ambiguously (the octets '\\', '"', space and the others
// miekg/dns escapes are kept as they are: raw form holds them exactly).
// The error names w in presentation form.
func checkRaw(w []byte) error {
	for i := 0; i < len(w) && w[i] != 0; i += 1 + int(w[i]) {
		for _, c := range w[i+1 : min(i+1+int(w[i]), len(w))] {
			if c == '.' {
				name, _, err := dns.UnpackDomainName(w, 0)
				if err != nil {
					name = fmt.Sprintf("%q", w)
				}
				return fmt.Errorf("%s: %w", name, errDotInLabel)
			}
		}
	}
	return nil
}

// equalWire compares two uncompressed wire names ASCII case-insensitively
// (RFC 4343). Length octets are at most 63, below 'A', so folding the
// whole string never changes them.
func equalWire[A, B string | []byte](a A, b B) bool {
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

// pack appends the query to buf: a header with RD set (the upstream is a
// recursive resolver) and AD set to ask for the authentication status (RFC
// 6840 5.7), the question, and an EDNS0 OPT record advertising UDPSize
// octets (RFC 6891 6.1.2, 6.2.5): root owner, TYPE 41, CLASS the payload
// size, TTL 0 (extended RCODE 0, version 0, DO clear), no options. q.name
// is at most 255 octets, so the query fits in maxQueryOctets.
func (q *question) pack(buf []byte) []byte {
	buf = append(buf,
		byte(q.id>>8), byte(q.id),
		0x01,       // QR 0, OPCODE QUERY, AA 0, TC 0, RD 1
		0x20,       // RA 0, Z 0, AD 1, CD 0, RCODE 0
		0, 1, 0, 0, // QDCOUNT 1, ANCOUNT 0
		0, 0, 0, 1) // NSCOUNT 0, ARCOUNT 1
	buf = append(buf, q.name...)
	buf = append(buf, byte(q.qtype>>8), byte(q.qtype), 0, byte(dns.ClassINET))
	return append(buf,
		0,                    // root
		0, byte(dns.TypeOPT), // TYPE
		byte(UDPSize>>8), byte(UDPSize&0xff), // CLASS: payload size
		0, 0, 0, 0, // TTL
		0, 0) // RDLENGTH
}

// readName reads the possibly compressed name at off (RFC 1035 4.1.4)
// into dst, uncompressed, and returns it with the offset just past the
// name where it stands. Pointers may point anywhere in msg, as miekg/dns
// allows; their number and the length of the name are bounded.
func readName(msg []byte, off int, dst *[maxNameOctets]byte) ([]byte, int, error) {
	name := dst[:0]
	end := -1
	for ptrs := 0; ; {
		if off >= len(msg) {
			return nil, 0, errShortMsg
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if len(name)+1+c > maxNameOctets {
				return nil, 0, errLongName
			}
			if off+1+c > len(msg) {
				return nil, 0, errShortMsg
			}
			name = append(name, msg[off:off+1+c]...)
			off += 1 + c
			if c == 0 {
				if end < 0 {
					end = off
				}
				return name, end, nil
			}
		case 0xC0:
			if off+2 > len(msg) {
				return nil, 0, errShortMsg
			}
			if end < 0 {
				end = off + 2
			}
			if ptrs++; ptrs > maxPointers {
				return nil, 0, errPointers
			}
			off = int(binary.BigEndian.Uint16(msg[off:]) & 0x3FFF)
		default:
			return nil, 0, errLabelType
		}
	}
}

// rrHeader is the fixed part of one resource record (RFC 1035 4.1.3).
type rrHeader struct {
	typ   uint16
	class uint16
	ttl   uint32
	rdata int // offset of RDATA
	end   int // offset past RDATA
}

// readRR reads the record at off, checking its RDATA if it is of a type
// the client uses.
func readRR(msg []byte, off int, scratch *[maxNameOctets]byte) (rrHeader, error) {
	_, p, err := readName(msg, off, scratch)
	if err != nil {
		return rrHeader{}, fmt.Errorf("owner name: %w", err)
	}
	if p+rrFixedOctets > len(msg) {
		return rrHeader{}, errShortMsg
	}
	h := rrHeader{
		typ:   binary.BigEndian.Uint16(msg[p:]),
		class: binary.BigEndian.Uint16(msg[p+2:]),
		ttl:   binary.BigEndian.Uint32(msg[p+4:]),
		rdata: p + rrFixedOctets,
	}
	h.end = h.rdata + int(binary.BigEndian.Uint16(msg[p+8:]))
	if h.end > len(msg) {
		return rrHeader{}, fmt.Errorf("%v record: RDLENGTH past the end", dns.Type(h.typ))
	}
	if err := checkRdata(msg[:h.end], h.typ, h.rdata, scratch); err != nil {
		return rrHeader{}, fmt.Errorf("%v record: %w", dns.Type(h.typ), err)
	}
	return h, nil
}

// checkRdata checks the RDATA at off, which ends at len(msg), for the
// types whose data the client reads (addRecord, negativeTTL, the OPT
// record's extended RCODE): it must be exactly as long as its fields.
// Names in it may point back into the message, but not past the RDATA.
// Other types are not read and not checked.
func checkRdata(msg []byte, typ uint16, off int, scratch *[maxNameOctets]byte) error {
	n := len(msg) - off
	var err error
	switch typ {
	case dns.TypeA: // empty, as miekg/dns allows: no address
		if n != 0 && n != 4 {
			return errRdata
		}
		return nil
	case dns.TypeAAAA:
		if n != 0 && n != 16 {
			return errRdata
		}
		return nil
	case dns.TypeTXT, dns.TypeSPF:
		for off < len(msg) {
			off += 1 + int(msg[off])
		}
	case dns.TypeCNAME, dns.TypeNS, dns.TypePTR, dns.TypeDNAME:
		_, off, err = readName(msg, off, scratch)
	case dns.TypeMX:
		if n < 2 {
			return errRdata
		}
		_, off, err = readName(msg, off+2, scratch)
	case dns.TypeSOA:
		if _, off, err = readName(msg, off, scratch); err == nil {
			_, off, err = readName(msg, off, scratch)
			off += 20 // SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM
		}
	case dns.TypeOPT: // options: code, length, data (RFC 6891 6.1.2)
		for off+4 <= len(msg) {
			off += 4 + int(binary.BigEndian.Uint16(msg[off+2:]))
		}
	default:
		return nil
	}
	if err != nil {
		return err
	}
	if off != len(msg) {
		return errRdata
	}
	return nil
}

// replyView is a reply that decodeReply has checked, read in place.
type replyView struct {
	b       []byte
	rcode   int // with the OPT record's extended bits (RFC 6891 6.1.3)
	ad      bool
	an      int // offset of the answer section
	ancount int // records in it
	ns      int // offset of the authority section
	nscount int
}

// rrIter walks the records of a section that decodeReply has checked.
type rrIter struct {
	msg     []byte
	off     int
	left    int
	scratch [maxNameOctets]byte
}

// next returns the next record and its owner name (valid until the next
// call), or false at the end of the section.
func (it *rrIter) next() (rrHeader, []byte, bool) {
	if it.left <= 0 {
		return rrHeader{}, nil, false
	}
	owner, p, err := readName(it.msg, it.off, &it.scratch)
	if err != nil || p+rrFixedOctets > len(it.msg) {
		return rrHeader{}, nil, false // not after decodeReply
	}
	h := rrHeader{
		typ:   binary.BigEndian.Uint16(it.msg[p:]),
		class: binary.BigEndian.Uint16(it.msg[p+2:]),
		ttl:   binary.BigEndian.Uint32(it.msg[p+4:]),
		rdata: p + rrFixedOctets,
	}
	h.end = min(h.rdata+int(binary.BigEndian.Uint16(it.msg[p+8:])), len(it.msg))
	it.off, it.left = h.end, it.left-1
	return h, owner, true
}

func (v *replyView) answers() rrIter   { return rrIter{msg: v.b, off: v.an, left: v.ancount} }
func (v *replyView) authority() rrIter { return rrIter{msg: v.b, off: v.ns, left: v.nscount} }

// decodeReply checks one reply against q. It returns errTruncated for a
// UDP reply with TC set, an *Error wrapping errMismatch for a reply to
// some other query (ID, QR bit, question), an *Error of KindMalformed for
// bytes that do not parse, and an *Error of KindServFail for any RCODE
// other than NOERROR and NXDOMAIN (RFC 1035 4.1.1). The view refers to
// wire.
//
// It reads every record of every section, as dns.Msg.Unpack did, and the
// RDATA of the types the client uses; like it, it takes a message that
// ends right after its header as one without sections, a section that
// ends where the message does as having no more records whatever its
// count says, and ignores octets after the last record counted. A panic
// while reading is a KindMalformed error too (errReplyPanic).
func decodeReply(wire []byte, q *question, udp bool) (_ replyView, err error) {
	defer malformedOnPanic(q, &err)
	if len(wire) < headerOctets {
		return replyView{}, q.fail(KindMalformed, fmt.Errorf("reply of %d octets is shorter than a header", len(wire)))
	}
	if id := binary.BigEndian.Uint16(wire); id != q.id {
		return replyView{}, q.fail(KindMalformed, fmt.Errorf("%w: ID %d, want %d", errMismatch, id, q.id))
	}
	if wire[2]&0x80 == 0 {
		return replyView{}, q.fail(KindMalformed, fmt.Errorf("%w: QR bit not set", errMismatch))
	}
	if udp && wire[2]&0x02 != 0 {
		return replyView{}, errTruncated
	}
	v := replyView{b: wire, rcode: int(wire[3] & 0x0F), ad: wire[3]&0x20 != 0}
	var scratch [maxNameOctets]byte
	var qname []byte
	var qtype, qclass uint16
	nq := 0
	off := headerOctets
	if off < len(wire) {
		for range int(binary.BigEndian.Uint16(wire[4:])) {
			name, p, err := readName(wire, off, &scratch)
			if err == nil && p+4 > len(wire) {
				err = errShortMsg
			}
			if err != nil {
				return replyView{}, q.fail(KindMalformed, fmt.Errorf("unpack reply: question: %w", err))
			}
			if nq == 0 {
				qname = name
				qtype = binary.BigEndian.Uint16(wire[p:])
				qclass = binary.BigEndian.Uint16(wire[p+2:])
			}
			nq++
			off = p + 4
		}
		var err error
		v.an = off
		if v.ancount, off, err = checkSection(wire, off, binary.BigEndian.Uint16(wire[6:]), nil); err == nil {
			v.ns = off
			if v.nscount, off, err = checkSection(wire, off, binary.BigEndian.Uint16(wire[8:]), nil); err == nil {
				_, _, err = checkSection(wire, off, binary.BigEndian.Uint16(wire[10:]), &v.rcode)
			}
		}
		if err != nil {
			return replyView{}, q.fail(KindMalformed, fmt.Errorf("unpack reply: %w", err))
		}
	}
	if v.rcode != dns.RcodeSuccess && v.rcode != dns.RcodeNameError {
		e := q.fail(KindServFail, nil)
		e.Rcode = v.rcode
		return replyView{}, e
	}
	if nq != 1 {
		return replyView{}, q.fail(KindMalformed, fmt.Errorf("%w: %d questions in reply", errMismatch, nq))
	}
	if !equalWire(qname, q.name) || qtype != q.qtype || qclass != dns.ClassINET {
		return replyView{}, q.fail(KindMalformed, fmt.Errorf("%w: reply is for %s %s", errMismatch,
			rawName(qname), dns.TypeToString[qtype]))
	}
	return v, nil
}

// checkSection reads count records from off and returns how many there
// are and where they end. With rcode set (the additional section) the
// last OPT record's extended RCODE bits are added to it (RFC 6891 6.1.3).
func checkSection(msg []byte, off int, count uint16, rcode *int) (int, int, error) {
	var scratch [maxNameOctets]byte
	opt := -1
	n := 0
	for ; n < int(count) && off < len(msg); n++ {
		h, err := readRR(msg, off, &scratch)
		if err != nil {
			return 0, 0, err
		}
		if h.typ == dns.TypeOPT {
			opt = int(h.ttl >> 24)
		}
		off = h.end
	}
	if rcode != nil && opt > 0 {
		*rcode |= opt << 4
	}
	return n, off, nil
}
