//go:build linux

package dnstest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The UDP server on Linux: one goroutine serves the socket, reading and
// writing in batches (recvmmsg, sendmmsg: one system call for up to
// udpBatch datagrams).
//
// Without a delay it waits in Go's poller, through a duplicate of the
// socket's descriptor registered there (poll), and answers each batch as it
// arrives. With SetDelay it takes the socket out of the poller (unpoll) and
// polls it itself: every tick (tickFor, at most 250 µs) it reads whatever
// has arrived without blocking, holds each query until its arrival (the
// kernel's receive timestamp, SO_TIMESTAMPNS) plus the delay, and sends
// every answer then due in one sendmmsg. Waking once a tick rather than once
// a datagram is what makes a held query cheap: while a socket is in Go's
// poller, every datagram that arrives wakes a thread out of epoll_wait
// whenever the process is otherwise idle, which costs more than answering
// the query (BenchmarkServerDelayedBurst). An answer so goes out at most a
// tick after its delay is over, or up to a millisecond while the process is
// otherwise idle, as Go's timers then wake it to the millisecond (as they
// did the sleeping handlers before). Answers are computed when they are
// sent, as the handler did after sleeping, so a record added or SetDown
// during the delay applies.

const (
	// udpBatch is how many datagrams one recvmmsg or sendmmsg moves at
	// most.
	udpBatch = 64
	// oobSize holds one control message with a struct timespec, the
	// receive timestamp (SO_TIMESTAMPNS).
	oobSize = 64
	// maxTick is the longest tick while queries are held: answers are
	// sent at most this late, and a busy server wakes this often.
	maxTick = 250 * time.Microsecond
	// minTick is the shortest, for delays of under a few hundred µs.
	minTick = 50 * time.Microsecond
	// maxIdleWait is the longest wait between reads while the delay is
	// set but no query comes, so that an idle server costs next to
	// nothing; it never exceeds a quarter of the delay (maxIdleFor), so
	// a query is read before its answer is due.
	maxIdleWait = 8 * time.Millisecond
	// maxAge bounds the receive timestamps believed: a query is read at
	// most maxIdleWait after it came, so an older timestamp means the
	// wall clock stepped, and the time of reading is used instead.
	maxAge = 4 * maxIdleWait
	// sendWait and maxSendWaits bound how long a batch waits for room in
	// the send buffer before its datagram is dropped, as a full network
	// would.
	sendWait     = 50 * time.Microsecond
	maxSendWaits = 200
)

// tickFor is the tick for delay d: an eighth of it, within [minTick,
// maxTick], so that answers are late by little against the delay.
func tickFor(d time.Duration) time.Duration { return min(max(d/8, minTick), maxTick) }

func maxIdleFor(d time.Duration) time.Duration { return max(min(d/4, maxIdleWait), tickFor(d)) }

// udpServer serves the UDP side of a Server on its socket.
type udpServer struct {
	s     *Server
	fd    int
	epoch time.Time     // deadlines are monotonic durations since epoch
	wake  chan struct{} // capacity 1: SetDelay changed the delay
	stop  chan struct{} // closed by close
	done  chan struct{} // closed when serve returns
	once  sync.Once

	// The rest belongs to the serving goroutine.
	in    *recvBatch
	out   *sendBatch
	a     *answerer
	queue []*held // queries held back, a heap by deadline then arrival
	free  []*held // spent ones, for reuse
	seq   uint64  // arrivals so far: orders equal deadlines
	// polled is a duplicate of fd in Go's poller, while there is no
	// delay (poll); rc is its raw connection, deadline its read deadline.
	// close closes polled too, under pmu, to wake a read waiting on it.
	pmu      sync.Mutex
	polled   *os.File
	rc       syscall.RawConn
	deadline time.Duration
}

// held is one accepted query waiting out the delay.
type held struct {
	due  time.Duration
	seq  uint64
	from unix.RawSockaddrInet4
	n    int
	buf  [udpReadSize]byte
}

// listenUDP opens the socket on a free port of 127.0.0.1, non-blocking,
// and not registered with Go's poller (see above).
func listenUDP() (*udpServer, string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, udpReadBuffer)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		_ = unix.Close(fd)
		return nil, "", fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		_ = unix.Close(fd)
		return nil, "", err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, "", err
	}
	u := &udpServer{
		fd:    fd,
		epoch: time.Now(),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	return u, fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port), nil
}

// start serves the socket for s.
func (u *udpServer) start(s *Server) error {
	u.s = s
	u.in = newRecvBatch()
	u.out = newSendBatch()
	u.a = newAnswerer(s)
	go u.serve()
	return nil
}

// close stops serving and closes the socket. Queries still held back are
// dropped unanswered (and no longer count as active).
func (u *udpServer) close() {
	u.once.Do(func() {
		close(u.stop)
		u.pmu.Lock()
		if u.polled != nil {
			_ = u.polled.Close() // wakes a read waiting in the poller
		}
		u.pmu.Unlock()
		if u.s != nil {
			<-u.done
		}
		_ = unix.Close(u.fd)
	})
}

// delayChanged wakes the serving goroutine if it is waiting out a tick, so
// that SetDelay(0) makes answers immediate at once.
func (u *udpServer) delayChanged() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

func (u *udpServer) stopped() bool {
	select {
	case <-u.stop:
		return true
	default:
		return false
	}
}

func (u *udpServer) serve() {
	defer close(u.done)
	defer func() {
		u.s.active.Add(-int64(len(u.queue)))
		u.queue = nil
		u.unpoll()
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var idle time.Duration
	for !u.stopped() {
		d := time.Duration(u.s.delay.Load())
		if d <= 0 {
			// Answer as queries come, woken by Go's poller. Answers
			// still held from an earlier delay bound the wait.
			if err := u.poll(); err != nil {
				time.Sleep(maxTick) // cannot be: out of descriptors?
				continue
			}
			var n int
			err := u.rc.Read(func(fd uintptr) bool {
				var err error
				n, err = u.in.recv(int(fd))
				return err != unix.EAGAIN
			})
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				if u.stopped() {
					return // close closed polled
				}
				time.Sleep(maxTick) // cannot be, but do not spin
			}
			u.take(n)
			u.release()
			u.out.flush(u.fd)
			idle = 0
			continue
		}
		u.unpoll()
		got := 0
		for {
			n, _ := u.in.recv(u.fd)
			u.take(n)
			got += n
			if n < udpBatch {
				break
			}
		}
		u.release()
		u.out.flush(u.fd)
		wait := tickFor(d)
		if got == 0 {
			// Nothing came: wait longer each time, up to maxIdleFor(d),
			// and no longer than until the earliest answer is due.
			idle = min(max(2*idle, wait), maxIdleFor(d))
			if len(u.queue) > 0 {
				wait = max(u.queue[0].due-u.now(), wait)
			} else {
				wait = idle
			}
			wait = min(wait, idle)
		} else {
			idle = 0
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-u.wake:
			timer.Stop()
		case <-u.stop:
			timer.Stop()
		}
	}
}

// poll makes the socket wait in Go's poller, through a duplicate of its
// descriptor registered there, with a read deadline when the earliest
// held answer is due.
func (u *udpServer) poll() error {
	if u.polled == nil {
		fd, err := unix.FcntlInt(uintptr(u.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		// The descriptor is non-blocking, so os.NewFile registers it.
		f := os.NewFile(uintptr(fd), "dnstest-udp")
		rc, err := f.SyscallConn()
		if err != nil {
			_ = f.Close()
			return err
		}
		u.pmu.Lock()
		defer u.pmu.Unlock()
		if u.stopped() {
			_ = f.Close()
			return os.ErrClosed
		}
		u.polled, u.rc, u.deadline = f, rc, 0
	}
	var deadline time.Duration
	if len(u.queue) > 0 {
		deadline = u.queue[0].due
	}
	if deadline != u.deadline {
		t := time.Time{}
		if deadline != 0 {
			t = u.epoch.Add(deadline)
		}
		if err := u.polled.SetReadDeadline(t); err != nil {
			return err
		}
		u.deadline = deadline
	}
	return nil
}

// unpoll takes the socket out of Go's poller: closing the duplicate
// removes it from the epoll set, so that arriving datagrams wake nothing.
func (u *udpServer) unpoll() {
	if u.polled != nil {
		u.pmu.Lock()
		_ = u.polled.Close()
		u.polled, u.rc = nil, nil
		u.pmu.Unlock()
	}
}

func (u *udpServer) now() time.Duration { return time.Since(u.epoch) }

// take handles the n datagrams just read: rejected ones are answered at
// once, accepted ones too if there is no delay, else held.
func (u *udpServer) take(n int) {
	if n <= 0 {
		return
	}
	d := time.Duration(u.s.delay.Load())
	var t time.Time
	for i := range n {
		msg, from := u.in.msg(i)
		if from == nil {
			continue // not from an IPv4 address: cannot be
		}
		b, reply, accepted := u.a.receive(u.out.buf(), msg)
		switch {
		case reply:
			u.out.add(u.fd, b, from)
		case !accepted:
		case d <= 0:
			if b, send := u.a.answer(u.out.buf(), msg); send {
				u.out.add(u.fd, b, from)
			}
		default:
			u.s.hold()
			if t.IsZero() {
				t = time.Now()
			}
			age := time.Duration(0)
			if ts, ok := u.in.stamp(i); ok {
				if a := t.Sub(ts); a > 0 && a < maxAge {
					age = a
				}
			}
			var h *held
			if k := len(u.free); k > 0 {
				h, u.free = u.free[k-1], u.free[:k-1]
			} else {
				h = new(held)
			}
			h.due, h.seq, h.from, h.n = t.Sub(u.epoch)-age+d, u.seq, *from, copy(h.buf[:], msg)
			u.seq++
			u.push(h)
		}
	}
}

// release answers every held query that is due.
func (u *udpServer) release() {
	if len(u.queue) == 0 {
		return
	}
	now := u.now()
	for len(u.queue) > 0 && u.queue[0].due <= now {
		h := u.pop()
		u.s.active.Add(-1) // before the reply, so a client's next query cannot overlap it
		if b, send := u.a.answer(u.out.buf(), h.buf[:h.n]); send {
			u.out.add(u.fd, b, &h.from)
		}
		u.free = append(u.free, h)
	}
}

// before orders the queue: earlier deadline first, then earlier arrival.
func before(a, b *held) bool { return a.due < b.due || a.due == b.due && a.seq < b.seq }

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

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// recvBatch is the memory recvmmsg fills: udpBatch datagrams, their
// sources and their receive timestamps.
type recvBatch struct {
	hs    []mmsghdr
	iov   []unix.Iovec
	names []unix.RawSockaddrInet4
	oob   []byte
	bufs  []byte
}

func newRecvBatch() *recvBatch {
	r := &recvBatch{
		hs:    make([]mmsghdr, udpBatch),
		iov:   make([]unix.Iovec, udpBatch),
		names: make([]unix.RawSockaddrInet4, udpBatch),
		oob:   make([]byte, udpBatch*oobSize),
		bufs:  make([]byte, udpBatch*udpReadSize),
	}
	for i := range r.hs {
		r.iov[i].Base = &r.bufs[i*udpReadSize]
		r.iov[i].SetLen(udpReadSize)
		r.hs[i].hdr.Iov = &r.iov[i]
		r.hs[i].hdr.SetIovlen(1)
		r.hs[i].hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.hs[i].hdr.Control = &r.oob[i*oobSize]
	}
	return r
}

// recv reads up to udpBatch datagrams, without blocking: EAGAIN when
// there are none.
func (r *recvBatch) recv(fd int) (int, error) {
	for i := range r.hs {
		r.hs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		r.hs[i].hdr.SetControllen(oobSize)
		r.hs[i].hdr.Flags = 0
		r.hs[i].n = 0
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hs[0])), uintptr(len(r.hs)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// msg returns datagram i as read and its source, nil if that is not an
// IPv4 address (which a socket bound to 127.0.0.1 cannot receive).
func (r *recvBatch) msg(i int) ([]byte, *unix.RawSockaddrInet4) {
	b := r.bufs[i*udpReadSize : i*udpReadSize+int(r.hs[i].n)]
	if r.hs[i].hdr.Namelen != unix.SizeofSockaddrInet4 || r.names[i].Family != unix.AF_INET {
		return b, nil
	}
	return b, &r.names[i]
}

// stamp returns when datagram i arrived, from its SCM_TIMESTAMPNS.
func (r *recvBatch) stamp(i int) (time.Time, bool) {
	oob := r.oob[i*oobSize : i*oobSize+int(r.hs[i].hdr.Controllen)]
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && len(data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
			return time.Unix(ts.Unix()), true
		}
		oob = rest
	}
	return time.Time{}, false
}

// sendBatch collects answers and sends them with one sendmmsg per
// udpBatch. Each slot keeps its buffer, so answers are built in place.
type sendBatch struct {
	hs    []mmsghdr
	iov   []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte
	n     int
}

func newSendBatch() *sendBatch {
	w := &sendBatch{
		hs:    make([]mmsghdr, udpBatch),
		iov:   make([]unix.Iovec, udpBatch),
		names: make([]unix.RawSockaddrInet4, udpBatch),
		bufs:  make([][]byte, udpBatch),
	}
	for i := range w.hs {
		w.bufs[i] = make([]byte, 0, 1024)
		w.hs[i].hdr.Iov = &w.iov[i]
		w.hs[i].hdr.SetIovlen(1)
		w.hs[i].hdr.Name = (*byte)(unsafe.Pointer(&w.names[i]))
		w.hs[i].hdr.Namelen = unix.SizeofSockaddrInet4
	}
	return w
}

// buf returns the next slot's buffer, empty, to append an answer to.
func (w *sendBatch) buf() []byte { return w.bufs[w.n][:0] }

// add queues b, usually appended to buf(), for to.
func (w *sendBatch) add(fd int, b []byte, to *unix.RawSockaddrInet4) {
	w.bufs[w.n] = b
	w.names[w.n] = *to
	if w.n++; w.n == udpBatch {
		w.flush(fd)
	}
}

// flush sends what add queued. A datagram the kernel refuses is skipped,
// as miekg's server ignored a failed write.
func (w *sendBatch) flush(fd int) {
	for i := range w.n {
		w.iov[i].Base = unsafe.SliceData(w.bufs[i])
		w.iov[i].SetLen(len(w.bufs[i]))
	}
	for off, full := 0, 0; off < w.n; {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&w.hs[off])), uintptr(w.n-off), 0, 0, 0)
		switch {
		case errno == unix.EINTR:
		case errno == unix.EAGAIN && full < maxSendWaits:
			// The send buffer is full (on loopback it empties as the
			// receiver queues each datagram): wait a little.
			full++
			time.Sleep(sendWait)
		case errno != 0 || n == 0:
			off++
		default:
			off += int(n)
		}
	}
	w.n = 0
}
