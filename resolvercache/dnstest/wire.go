package dnstest

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// The UDP fast path: an ordinary query is read and answered on the wire
// bytes, without unpacking it into a dns.Msg or packing a reply through
// one. "Ordinary" is narrow on purpose: for each query it takes, miekg's
// server would have accepted the message (dns.DefaultMsgAcceptFunc),
// unpacked it without error, and the handler (Server.reply) packed the very
// octets fastReply writes; every other datagram goes the slow way, which is
// that same code. wire_test.go holds the two paths to each other.

// query is what the fast path reads from an ordinary query.
type query struct {
	qend    int // end of the question: msg[headerLen:qend] is echoed as received
	qtype   uint16
	edns    bool   // the query has an OPT record
	udpSize uint16 // its UDP payload size, as sent
}

// Header bits (RFC 1035 4.1.1).
const (
	bitQR = 0x8000
	bitAA = 0x0400
	bitTC = 0x0200
	bitRD = 0x0100
	bitCD = 0x0010
)

// udpReadSize is how much of a datagram is read. miekg's server read into
// buffers of its default UDPSize, dns.MinMsgSize, cutting longer queries
// short; this server reads the same.
const udpReadSize = dns.MinMsgSize

// maxNameWire is the budget miekg's UnpackDomainName gives a name: the
// label octets plus one per label must stay below it.
const maxNameWire = 255

// parseQuery reads msg as an ordinary query: QR clear, opcode QUERY, one
// question whose name is plain labels (no compression pointer), no answer
// or authority records, and either nothing after the question or exactly
// one OPT record with the root owner and no options, ending the message.
// It appends the question name in canonical raw form (labels joined by
// dots, ASCII lower case, as resolvercache.UnescapeName gives it) to name.
// ok is false for anything else, which the slow path handles.
func parseQuery(msg, name []byte) (q query, _ []byte, ok bool) {
	if len(msg) < headerLen {
		return q, name, false
	}
	bits := binary.BigEndian.Uint16(msg[2:])
	if bits&bitQR != 0 || (bits>>11)&0xF != dns.OpcodeQuery ||
		binary.BigEndian.Uint16(msg[4:]) != 1 || // QDCOUNT
		binary.BigEndian.Uint16(msg[6:]) != 0 || // ANCOUNT
		binary.BigEndian.Uint16(msg[8:]) != 0 { // NSCOUNT
		return q, name, false
	}
	arcount := binary.BigEndian.Uint16(msg[10:])
	if arcount > 1 {
		return q, name, false
	}
	start := len(name)
	off, wire := headerLen, 0
	for {
		if off >= len(msg) {
			return q, name, false
		}
		c := int(msg[off])
		off++
		if c == 0 {
			break
		}
		if c > 63 || off+c > len(msg) { // a pointer, a reserved label type, or short
			return q, name, false
		}
		if wire += c + 1; wire >= maxNameWire {
			return q, name, false
		}
		if len(name) > start {
			name = append(name, '.')
		}
		for _, b := range msg[off : off+c] {
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			name = append(name, b)
		}
		off += c
	}
	// CanonicalName drops one trailing dot, which a last label ending in
	// a dot octet leaves.
	if len(name) > start && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if off+4 > len(msg) {
		return q, name, false
	}
	q.qtype = binary.BigEndian.Uint16(msg[off:])
	off += 4
	q.qend = off
	if arcount == 0 {
		return q, name, off == len(msg)
	}
	// The OPT record: root owner, TYPE 41, CLASS the UDP size, TTL the
	// extended rcode, version and flags (a reply ignores them), RDLENGTH 0.
	const optLen = 11
	if len(msg)-off != optLen || msg[off] != 0 ||
		binary.BigEndian.Uint16(msg[off+1:]) != dns.TypeOPT ||
		binary.BigEndian.Uint16(msg[off+9:]) != 0 {
		return q, name, false
	}
	q.edns = true
	q.udpSize = binary.BigEndian.Uint16(msg[off+3:])
	return q, name, true
}

// fastReply appends to dst the reply to msg, an ordinary query that
// parseQuery read as q, with name the canonical question name: the octets
// Server.reply(req, true) would give once packed. send is false for no
// reply (SetDown, a timeout marker). ok is false when the reply is not
// one the fast path builds: an answer too large for the client's UDP
// size (miekg truncates it, compressing names), an rcode that needs the
// OPT record or is out of range, a record that did not pack. The caller
// then takes the slow path.
func (s *Server) fastReply(dst, msg []byte, q query, name string, scratch []*item) (_ []byte, send, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.down {
		return dst, false, true
	}
	ans, rcode, negative, reply := s.resolve(name, q.qtype, scratch[:0])
	if !reply {
		return dst, false, true
	}
	if rcode < 0 || rcode > 0xF {
		return dst, false, false
	}
	truncate := s.truncate && len(ans) > 0
	bits := uint16(bitQR|bitAA) | binary.BigEndian.Uint16(msg[2:])&(bitRD|bitCD) | uint16(rcode)
	ancount := len(ans)
	if truncate {
		bits |= bitTC
		ancount = 0
	}
	var nscount, arcount uint16
	if negative {
		nscount = 1
	}
	if q.edns {
		arcount = 1
	}
	start := len(dst)
	dst = append(dst, msg[0], msg[1])
	dst = binary.BigEndian.AppendUint16(dst, bits)
	dst = binary.BigEndian.AppendUint16(dst, 1)
	dst = binary.BigEndian.AppendUint16(dst, uint16(ancount))
	dst = binary.BigEndian.AppendUint16(dst, nscount)
	dst = binary.BigEndian.AppendUint16(dst, arcount)
	dst = append(dst, msg[headerLen:q.qend]...)
	if !truncate {
		for _, it := range ans {
			if it.wire == nil {
				return dst[:start], false, false
			}
			dst = append(dst, it.wire...)
		}
	}
	if negative {
		dst = append(dst, s.soa...)
	}
	if q.edns {
		dst = append(dst, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(q.udpSize>>8), byte(q.udpSize), 0, 0, 0, 0, 0, 0)
	}
	if !truncate {
		// Server.reply calls Msg.Truncate with the client's size (512
		// without EDNS, and at least 512), which leaves a reply that
		// fits as it is.
		limit := dns.MinMsgSize
		if q.edns {
			limit = max(limit, int(q.udpSize))
		}
		if len(dst)-start > limit {
			return dst[:start], false, false
		}
	}
	return dst, true, true
}

// answerer is one goroutine's scratch space for answering queries.
type answerer struct {
	s     *Server
	name  []byte  // the question name, canonical
	items []*item // the answer records; a longer answer allocates
}

func newAnswerer(s *Server) *answerer {
	return &answerer{s: s, name: make([]byte, 0, maxNameWire), items: make([]*item, 0, 16)}
}

// receive does what miekg's server did with a datagram on receipt, before
// any handler: drop it (shorter than a header, or a response), answer it at
// once (FORMERR or NOTIMP, appended to dst: reply), or accept it, for the
// handler to answer after the delay. Accepted queries are counted in
// Queries.
func (a *answerer) receive(dst, msg []byte) (_ []byte, reply, accepted bool) {
	var ok bool
	if _, a.name, ok = parseQuery(msg, a.name[:0]); ok {
		a.s.Queries.Add(1)
		return dst, false, true
	}
	if len(msg) < headerLen {
		return dst, false, false
	}
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(msg),
		Bits:    binary.BigEndian.Uint16(msg[2:]),
		Qdcount: binary.BigEndian.Uint16(msg[4:]),
		Ancount: binary.BigEndian.Uint16(msg[6:]),
		Nscount: binary.BigEndian.Uint16(msg[8:]),
		Arcount: binary.BigEndian.Uint16(msg[10:]),
	}
	req := new(dns.Msg)
	action := dns.DefaultMsgAcceptFunc(dh)
	switch action {
	case dns.MsgIgnore:
		return dst, false, false
	case dns.MsgAccept:
		if req.Unpack(msg) == nil {
			a.s.Queries.Add(1)
			return dst, false, true
		}
	default:
		_ = req.Unpack(msg[:headerLen]) // the header alone, as miekg's server rejects
	}
	// As miekg's Server.serveDNS answers a message it rejects or fails to
	// unpack.
	opcode := req.Opcode
	req.SetRcodeFormatError(req)
	req.Zero = false
	if action == dns.MsgRejectNotImplemented {
		req.Opcode = opcode
		req.Rcode = dns.RcodeNotImplemented
	}
	req.Ns, req.Answer, req.Extra = nil, nil, nil
	b, err := req.Pack()
	if err != nil {
		return dst, false, false
	}
	return append(dst, b...), true, false
}

// answer appends to dst the answer to an accepted query, once its delay
// is over; send is false for no answer.
func (a *answerer) answer(dst, msg []byte) (_ []byte, send bool) {
	q, name, ok := parseQuery(msg, a.name[:0])
	a.name = name
	if ok {
		var b []byte
		if b, send, ok = a.s.fastReply(dst, msg, q, string(name), a.items[:0]); ok {
			return b, send
		}
	}
	// The slow path: the handler, on the message miekg's server unpacked.
	req := new(dns.Msg)
	if req.Unpack(msg) != nil {
		return dst, false // cannot happen: it was unpacked on receipt
	}
	m := a.s.reply(req, true)
	if m == nil {
		return dst, false
	}
	b, err := m.Pack()
	if err != nil {
		return dst, false // as miekg's WriteMsg failed to pack it
	}
	return append(dst, b...), true
}
