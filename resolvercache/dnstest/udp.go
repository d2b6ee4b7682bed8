package dnstest

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The UDP server. One goroutine reads datagrams in batches (recvmmsg),
// decides on receipt what miekg's server would have (drop, reject at once,
// or accept and count the query), and answers accepted queries at once
// when there is no delay. With a delay, accepted queries wait in one queue
// ordered by deadline, and a second goroutine, woken by one timer for the
// earliest, answers all that are due and writes the answers in batches
// (sendmmsg). Answers are computed when they are sent, as the handler did
// after sleeping, so a record added or SetDown during the delay applies.

const (
	// udpBatch is how many datagrams one recvmmsg or sendmmsg moves at
	// most.
	udpBatch = 64
	// udpReadSize is how much of a datagram is read. miekg's server read
	// into buffers of its default UDPSize, dns.MinMsgSize, cutting longer
	// queries short; this server reads the same.
	udpReadSize = dns.MinMsgSize
)

// udpServer serves the UDP side of a Server on its socket.
type udpServer struct {
	s     *Server
	conn  *net.UDPConn
	pc    *ipv4.PacketConn
	epoch time.Time // deadlines are monotonic durations since epoch

	mu     sync.Mutex
	queue  []*held // queries held back, a heap by deadline then arrival
	free   []*held // spent ones, for reuse
	seq    uint64  // arrivals so far: orders equal deadlines
	closed bool

	wake chan struct{} // capacity 1: the earliest deadline moved earlier
	stop chan struct{} // closed by close
	wg   sync.WaitGroup
	once sync.Once
}

// held is one accepted query waiting out the delay.
type held struct {
	due  time.Duration
	seq  uint64
	addr net.Addr
	n    int
	buf  [udpReadSize]byte
}

func startUDP(s *Server, conn *net.UDPConn) *udpServer {
	u := &udpServer{
		s:     s,
		conn:  conn,
		pc:    ipv4.NewPacketConn(conn),
		epoch: time.Now(),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
	}
	u.wg.Add(2)
	go u.read()
	go u.release()
	return u
}

// close stops both goroutines and closes the socket. Queries still held
// back are dropped unanswered (and no longer count as active).
func (u *udpServer) close() {
	u.once.Do(func() {
		u.mu.Lock()
		u.closed = true
		dropped := len(u.queue)
		u.queue = nil
		u.mu.Unlock()
		u.s.active.Add(-int64(dropped))
		close(u.stop)
		_ = u.conn.Close()
		u.wg.Wait()
	})
}

func (u *udpServer) now() time.Duration { return time.Since(u.epoch) }

// read is the receiving goroutine.
func (u *udpServer) read() {
	defer u.wg.Done()
	ms := make([]ipv4.Message, udpBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, udpReadSize)}
	}
	w := newBatchWriter(u.pc)
	a := newAnswerer(u.s)
	var hold, spare []*held
	for {
		n, err := u.pc.ReadBatch(ms, 0)
		if err != nil {
			select {
			case <-u.stop:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		d := time.Duration(u.s.delay.Load())
		var now time.Duration
		for i := range ms[:n] {
			m := &ms[i]
			msg := m.Buffers[0][:m.N]
			b, reply, accepted := a.receive(w.buf(), msg)
			switch {
			case reply:
				w.add(b, m.Addr)
			case !accepted:
			case d <= 0:
				if b, send := a.answer(w.buf(), msg); send {
					w.add(b, m.Addr)
				}
			default:
				u.s.hold()
				if now == 0 {
					now = u.now()
				}
				var h *held
				if k := len(spare); k > 0 {
					h, spare = spare[k-1], spare[:k-1]
				} else {
					h = new(held)
				}
				h.due, h.addr, h.n = now+d, m.Addr, copy(h.buf[:], msg)
				hold = append(hold, h)
			}
			m.Addr = nil
		}
		w.flush()
		if len(hold) > 0 {
			spare = u.enqueue(hold, spare)
			clear(hold)
			hold = hold[:0]
		}
	}
}

// enqueue adds held queries to the queue and takes spent ones from the
// free list into spare, under one lock.
func (u *udpServer) enqueue(hs, spare []*held) []*held {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		u.s.active.Add(-int64(len(hs)))
		return spare
	}
	var root *held
	if len(u.queue) > 0 {
		root = u.queue[0]
	}
	for _, h := range hs {
		h.seq = u.seq
		u.seq++
		u.push(h)
	}
	earlier := u.queue[0] != root
	if k := min(len(u.free), udpBatch-len(spare)); k > 0 {
		spare = append(spare, u.free[len(u.free)-k:]...)
		clear(u.free[len(u.free)-k:])
		u.free = u.free[:len(u.free)-k]
	}
	u.mu.Unlock()
	if earlier {
		select {
		case u.wake <- struct{}{}:
		default:
		}
	}
	return spare
}

// release is the goroutine that answers held queries once they are due.
func (u *udpServer) release() {
	defer u.wg.Done()
	w := newBatchWriter(u.pc)
	a := newAnswerer(u.s)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	due := make([]*held, 0, udpBatch)
	for {
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			return
		}
		now := u.now()
		for len(u.queue) > 0 && u.queue[0].due <= now && len(due) < udpBatch {
			due = append(due, u.pop())
		}
		wait := time.Duration(-1)
		if len(u.queue) > 0 {
			wait = u.queue[0].due - now
		}
		u.mu.Unlock()

		if len(due) > 0 {
			for _, h := range due {
				u.s.active.Add(-1) // before the reply, so a client's next query cannot overlap it
				if b, send := a.answer(w.buf(), h.buf[:h.n]); send {
					w.add(b, h.addr)
				}
				h.addr = nil
			}
			w.flush()
			u.mu.Lock()
			u.free = append(u.free, due...)
			u.mu.Unlock()
			clear(due)
			due = due[:0]
			continue
		}
		if wait < 0 {
			select {
			case <-u.wake:
			case <-u.stop:
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-u.wake:
			timer.Stop()
		case <-u.stop:
			timer.Stop()
			return
		}
	}
}

// before orders the queue: earlier deadline first, then earlier arrival.
func before(a, b *held) bool { return a.due < b.due || a.due == b.due && a.seq < b.seq }

// push adds h to the heap; under u.mu.
func (u *udpServer) push(h *held) {
	q := append(u.queue, h)
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !before(q[i], q[p]) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
	u.queue = q
}

// pop removes the earliest from the heap; under u.mu.
func (u *udpServer) pop() *held {
	q := u.queue
	h := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = nil
	q = q[:last]
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(q) {
			break
		}
		if c+1 < len(q) && before(q[c+1], q[c]) {
			c++
		}
		if !before(q[c], q[i]) {
			break
		}
		q[i], q[c] = q[c], q[i]
		i = c
	}
	u.queue = q
	return h
}

// batchWriter collects answers and sends them with one sendmmsg per
// udpBatch. Each slot keeps its buffer, so answers are built in place.
type batchWriter struct {
	pc *ipv4.PacketConn
	ms []ipv4.Message
	n  int
}

func newBatchWriter(pc *ipv4.PacketConn) *batchWriter {
	w := &batchWriter{pc: pc, ms: make([]ipv4.Message, udpBatch)}
	for i := range w.ms {
		w.ms[i].Buffers = [][]byte{make([]byte, 0, 1024)}
	}
	return w
}

// buf returns the next slot's buffer, empty, to append an answer to.
func (w *batchWriter) buf() []byte { return w.ms[w.n].Buffers[0][:0] }

// add queues b, usually appended to buf(), for addr.
func (w *batchWriter) add(b []byte, addr net.Addr) {
	w.ms[w.n].Buffers[0] = b
	w.ms[w.n].Addr = addr
	if w.n++; w.n == len(w.ms) {
		w.flush()
	}
}

// flush sends what add queued. A datagram the kernel refuses is skipped,
// as miekg's server ignored a failed write.
func (w *batchWriter) flush() {
	ms := w.ms[:w.n]
	for len(ms) > 0 {
		k, err := w.pc.WriteBatch(ms, 0)
		if err != nil {
			k = max(k, 0) + 1
		}
		ms = ms[min(k, len(ms)):]
	}
	for i := range w.ms[:w.n] {
		w.ms[i].Addr = nil
	}
	w.n = 0
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
