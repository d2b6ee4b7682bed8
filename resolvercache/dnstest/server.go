// Package dnstest runs a small authoritative DNS server on 127.0.0.1, over
// UDP and TCP on the same port, for tests that must exercise authpipe's real
// DNS client over real sockets. Records are added in code; owners can be
// made to time out (no reply at all) or to answer SERVFAIL, per name or per
// name and type, which is how conformance suites simulate DNS failures.
//
// Names are given raw (the octets of the name, dot-separated, any case); the
// server escapes them for miekg/dns itself, so owners such as
// "foo bar.example.com" work.
//
// TCP is served by miekg/dns. UDP, on Linux, is served by this package's
// own loop (udp_linux.go; elsewhere miekg's server serves it too), because
// benchmarks run this server inside the process they measure, on a machine
// it shares with the code under test. With miekg's server every UDP query
// cost a goroutine, another one sleeping out SetDelay, a full unpack and
// pack, a sendmsg of its own and, while the process was otherwise idle, a
// thread woken by each datagram: about 20 µs of CPU a query in the
// cold-cache pipeline benchmark, a sixth of its CPU. The loop reads
// and writes in batches (recvmmsg, sendmmsg), holds delayed queries in one
// deadline-ordered queue that it serves on a short tick, and answers an
// ordinary query (one question, at most an OPT record without options)
// from records packed when they were added, echoing the question as
// received (wire.go). Anything else takes the path miekg's server took
// (its accept rules, Unpack, the same handler, Pack), so the answers on
// the wire are the same octets as before: wire_test.go and udp_test.go
// hold the two paths against each other and against miekg's server. That
// leaves about 7 µs a query, half of it the kernel's own cost of sending a
// datagram over loopback (BenchmarkServerDelayedBurst measures it apart).
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// item is one entry in an owner's ordered list: a record, or a marker that
// makes queries time out (see AddTimeout). A record keeps what answering
// needs, worked out once when it is added rather than at every query.
type item struct {
	rr      dns.RR
	rrtype  uint16
	wire    []byte // rr packed uncompressed, as in a reply; nil if it does not pack
	cname   bool   // rr is a *dns.CNAME
	target  string // its target, canonical raw, when cname
	timeout bool
}

func newItem(rr dns.RR) item {
	it := item{rr: rr, rrtype: rr.Header().Rrtype}
	// Msg.Pack, unlike dns.PackRR, does not write the record's Rdlength,
	// so a caller's record is not modified.
	m := dns.Msg{Answer: []dns.RR{rr}}
	if b, err := m.Pack(); err == nil {
		it.wire = b[headerLen:]
	}
	if c, ok := rr.(*dns.CNAME); ok {
		it.cname = true
		it.target = resolvercache.UnescapeName(c.Target)
	}
	return it
}

// Server is an in-process authoritative server. Its methods are safe for
// concurrent use while it serves.
type Server struct {
	// Addr is "127.0.0.1:port", valid for both UDP and TCP.
	Addr string

	udp *udpServer
	tcp *dns.Server

	mu     sync.RWMutex
	owners map[string][]item // key: canonical raw owner name
	// parents holds every name that some owner lies below (each suffix
	// of an owner after one of its dots), so that telling an empty
	// non-terminal from NXDOMAIN does not scan every owner.
	parents  map[string]struct{}
	rcodes   map[string]int // key: owner + "/" + type ("*" for any type)
	negTTL   uint32
	soa      []byte // the SOA for negative answers, packed, with negTTL
	down     bool
	Queries  atomic.Int64 // questions received, for tests that count upstream traffic
	truncate bool
	delay    atomic.Int64 // nanoseconds each answer is held back
	active   atomic.Int64 // queries held back by the delay now
	peak     atomic.Int64 // most queries held back at once since ResetPeak
}

// Start listens on a free port on 127.0.0.1 (UDP and TCP) and serves until
// Close.
func Start() (*Server, error) {
	// Find a port free for both protocols.
	for range 20 {
		u, addr, err := listenUDP()
		if err != nil {
			return nil, fmt.Errorf("dnstest: listen udp: %w", err)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			u.close()
			continue
		}
		return serve(u, addr, l)
	}
	return nil, fmt.Errorf("dnstest: no free port for UDP and TCP")
}

// udpReadBuffer is the SO_RCVBUF asked for the UDP socket. A burst of
// concurrent queries (thousands of messages in flight against a cold
// cache) overflows the default 208 KiB receive buffer and the kernel
// drops queries, which then wait out the client's timeout. The kernel
// caps it at net.core.rmem_max.
const udpReadBuffer = 8 << 20

// newServer returns a Server's state, empty, serving nothing yet.
func newServer(addr string) *Server {
	s := &Server{
		Addr:    addr,
		owners:  map[string][]item{},
		parents: map[string]struct{}{},
		rcodes:  map[string]int{},
	}
	s.setNegativeTTL(300)
	return s
}

func serve(u *udpServer, addr string, l net.Listener) (*Server, error) {
	s := newServer(addr)
	s.udp = u
	s.tcp = &dns.Server{Listener: l, Handler: dns.HandlerFunc(s.handle)}
	started := make(chan error, 1)
	s.tcp.NotifyStartedFunc = func() { started <- nil }
	go func() {
		if err := s.tcp.ActivateAndServe(); err != nil {
			started <- err
		}
	}()
	if err := <-started; err != nil {
		u.close()
		_ = l.Close()
		return nil, fmt.Errorf("dnstest: serve: %w", err)
	}
	if err := u.start(s); err != nil {
		_ = s.tcp.Shutdown()
		return nil, fmt.Errorf("dnstest: serve: %w", err)
	}
	return s, nil
}

// Close stops both listeners. Answers still held back by SetDelay are
// not sent.
func (s *Server) Close() {
	s.udp.close()
	_ = s.tcp.Shutdown()
}

// Reset removes every record, marker and forced rcode.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owners = map[string][]item{}
	s.parents = map[string]struct{}{}
	s.rcodes = map[string]int{}
	s.down = false
	s.truncate = false
}

// SetDown makes the server drop every query unanswered (true) or serve
// again (false), simulating an outage without giving up the port.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetNegativeTTL sets the SOA MINIMUM (and SOA TTL) sent with NXDOMAIN and
// NODATA answers. Default 300.
func (s *Server) SetNegativeTTL(ttl uint32) {
	s.mu.Lock()
	s.setNegativeTTL(ttl)
	s.mu.Unlock()
}

func (s *Server) setNegativeTTL(ttl uint32) {
	s.negTTL = ttl
	m := dns.Msg{Ns: []dns.RR{s.negativeSOA()}}
	b, err := m.Pack()
	if err != nil {
		panic(err) // a constant record with a TTL: cannot fail
	}
	s.soa = b[headerLen:]
}

// negativeSOA is the SOA sent with NXDOMAIN and NODATA; under s.mu.
func (s *Server) negativeSOA() *dns.SOA {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.negTTL},
		Ns:  "ns.dnstest.", Mbox: "hostmaster.dnstest.", Serial: 1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.negTTL,
	}
}

// PeakConcurrent returns the most queries held back by SetDelay at once
// since the server started or since ResetPeak: how many a client had
// outstanding (without a delay, nothing is counted).
func (s *Server) PeakConcurrent() int64 { return s.peak.Load() }

// ResetPeak restarts PeakConcurrent from the queries in progress now.
func (s *Server) ResetPeak() { s.peak.Store(s.active.Load()) }

// SetDelay holds every answer back by d, simulating the round trip to a
// distant server. Queries are answered concurrently, so the delay adds
// latency, not serialisation.
func (s *Server) SetDelay(d time.Duration) {
	s.delay.Store(int64(d))
	if s.udp != nil {
		s.udp.delayChanged()
	}
}

// SetTruncateUDP makes every UDP answer that has records come back empty
// with the TC bit set, so clients must retry over TCP.
func (s *Server) SetTruncateUDP(on bool) {
	s.mu.Lock()
	s.truncate = on
	s.mu.Unlock()
}

// AddRR adds one record. Its owner name is taken from the record header,
// which is in miekg/dns presentation form. The record is packed now, for
// the UDP answers: do not change it once added.
func (s *Server) AddRR(rr dns.RR) {
	owner := resolvercache.UnescapeName(rr.Header().Name)
	it := newItem(rr)
	s.mu.Lock()
	s.add(owner, it)
	s.mu.Unlock()
}

// add appends it to owner's list; under s.mu.
func (s *Server) add(owner string, it item) {
	items, ok := s.owners[owner]
	s.owners[owner] = append(items, it)
	if ok {
		return
	}
	for i := 0; i < len(owner); i++ {
		if owner[i] == '.' {
			s.parents[owner[i+1:]] = struct{}{}
		}
	}
}

// AddZone parses RFC 1035 zone-file text (with $ORIGIN and $TTL as needed)
// and adds every record in it.
func (s *Server) AddZone(text string) error {
	zp := dns.NewZoneParser(strings.NewReader(text), "", "")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		s.AddRR(rr)
	}
	if err := zp.Err(); err != nil {
		return fmt.Errorf("dnstest: zone: %w", err)
	}
	return nil
}

// AddTimeout appends a timeout marker to owner's list. A query of type Q for
// owner gets no reply if the marker comes before any record of type Q in the
// list; records of type Q added before the marker are served. So a marker
// alone makes every query for the owner time out. (These are the semantics
// of the pyspf test suite's TIMEOUT entries.)
func (s *Server) AddTimeout(owner string) {
	owner = resolvercache.CanonicalName(owner)
	s.mu.Lock()
	s.add(owner, item{timeout: true})
	s.mu.Unlock()
}

// SetRcode forces the response code for owner and qtype (0 = any type), for
// example dns.RcodeServerFailure.
func (s *Server) SetRcode(owner string, qtype uint16, rcode int) {
	s.mu.Lock()
	s.rcodes[rcodeKey(resolvercache.CanonicalName(owner), qtype)] = rcode
	s.mu.Unlock()
}

func rcodeKey(owner string, qtype uint16) string {
	if qtype == 0 {
		return owner + "/*"
	}
	return owner + "/" + dns.TypeToString[qtype]
}

// Name builds a record header's owner in presentation form from a raw name.
func Name(raw string) string { return resolvercache.EscapeName(raw) }

// TXT builds a TXT record for a raw owner name and raw value, splitting the
// value into character-strings of at most 255 octets.
func TXT(owner, value string, ttl uint32) *dns.TXT {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, resolvercache.EscapeTXT(value[:255]))
		value = value[255:]
	}
	parts = append(parts, resolvercache.EscapeTXT(value))
	return &dns.TXT{Hdr: hdr(owner, dns.TypeTXT, ttl), Txt: parts}
}

// TXTStrings builds a TXT record whose character-strings are given one by one.
func TXTStrings(owner string, ttl uint32, strs ...string) *dns.TXT {
	parts := make([]string, len(strs))
	for i, p := range strs {
		parts[i] = resolvercache.EscapeTXT(p)
	}
	return &dns.TXT{Hdr: hdr(owner, dns.TypeTXT, ttl), Txt: parts}
}

func hdr(owner string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: Name(owner), Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

// Header returns a record header for a raw owner name, for building other
// record types by hand.
func Header(owner string, t uint16, ttl uint32) dns.RR_Header { return hdr(owner, t, ttl) }

const maxCNAMEHops = 8

// headerLen is the size of a DNS message header.
const headerLen = 12

// handle serves one query for miekg/dns's server: over TCP, and over UDP
// where this package has no UDP loop of its own (udp_other.go).
func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	s.Queries.Add(1)
	if d := s.delay.Load(); d > 0 {
		s.hold()
		time.Sleep(time.Duration(d))
		s.active.Add(-1) // before the reply, so a client's next query cannot overlap it
	}
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	if m := s.reply(req, isUDP); m != nil {
		_ = w.WriteMsg(m)
	}
}

// hold counts one more query held back by the delay.
func (s *Server) hold() {
	n := s.active.Add(1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
}

// reply builds the answer to req, once its delay is over, or returns nil
// for no reply. udp applies the UDP size limit and SetTruncateUDP.
func (s *Server) reply(req *dns.Msg, udp bool) *dns.Msg {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		return m
	}
	q := req.Question[0]

	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.down {
		return nil
	}
	ans, rcode, negative, ok := s.resolve(resolvercache.UnescapeName(q.Name), q.Qtype, nil)
	if !ok {
		return nil // no reply: the client times out
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	m.Rcode = rcode
	for _, it := range ans {
		m.Answer = append(m.Answer, it.rr)
	}
	if negative {
		m.Ns = append(m.Ns, s.negativeSOA())
	}
	if udp {
		if s.truncate && len(m.Answer) > 0 {
			m.Answer = nil
			m.Truncated = true
		} else {
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size) // sets TC when the answer does not fit, as real servers do
		}
	}
	return m
}

// resolve answers a question for name (canonical raw) and qtype, under
// s.mu (read): the answer section, CNAMEs followed (appended to ans), the
// rcode, and whether the SOA goes in the authority section (NXDOMAIN or
// NODATA). ok is false when a timeout marker means no reply at all.
func (s *Server) resolve(name string, qtype uint16, ans []*item) (_ []*item, rcode int, negative, ok bool) {
	for hop := 0; ; hop++ {
		if len(s.rcodes) > 0 {
			if rc, ok := s.rcodes[rcodeKey(name, qtype)]; ok {
				return ans, rc, false, true
			}
			if rc, ok := s.rcodes[rcodeKey(name, 0)]; ok {
				return ans, rc, false, true
			}
		}
		items, exists := s.owners[name]
		first := len(ans) // this hop's records are ans[first:]
		var cname *item
		for i := range items {
			it := &items[i]
			if it.timeout {
				if len(ans) == first && cname == nil {
					return nil, 0, false, false
				}
				break
			}
			if it.rrtype == qtype {
				ans = append(ans, it)
			} else if it.cname && qtype != dns.TypeCNAME {
				cname = it
			}
		}
		if len(ans) == first && cname != nil && hop < maxCNAMEHops {
			ans = append(ans, cname)
			name = cname.target
			continue
		}
		if len(ans) == first {
			if !exists && !s.hasDescendant(name) {
				rcode = dns.RcodeNameError
			}
			negative = true
		}
		return ans, rcode, negative, true
	}
}

// hasDescendant reports whether some owner lies below name, which makes name
// an empty non-terminal: it exists (NODATA), it is not NXDOMAIN.
func (s *Server) hasDescendant(name string) bool {
	_, ok := s.parents[name]
	return ok
}
