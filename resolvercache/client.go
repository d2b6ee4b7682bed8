package resolvercache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Client defaults. Each can be changed with a ClientOption.
const (
	DefaultTimeout       = 2 * time.Second // per wire query (WithTimeout)
	DefaultRetries       = 1               // extra attempts, rotating over upstreams (WithRetries)
	DefaultMaxCNAMEHops  = 8               // aliases followed per lookup (WithMaxCNAMEHops)
	DefaultNegativeTTL   = 30 * time.Second
	DefaultUDPPoolSize   = 256  // idle UDP sockets kept per upstream (WithUDPPoolSize)
	DefaultMaxInFlight   = 1024 // wire queries in flight per upstream (WithMaxInFlight)
	udpSocketMaxUses     = 256  // a pooled socket is replaced after this many queries
	maxRetries           = 16
	maxCNAMEHopsLimit    = 64
	defaultResolvConf    = "/etc/resolv.conf"
	maxQueryOctets       = 512
	tcpLengthPrefixBytes = 2
)

// Client is a stub resolver over github.com/miekg/dns that asks recursive
// upstream servers and implements Resolver.
//
// Each wire query goes over UDP with an EDNS0 OPT record advertising
// UDPSize octets (RFC 6891) and RD set; a reply with TC set is asked again
// over TCP (RFC 1035 4.2.2, RFC 7766 5; one connection per such query). UDP
// sockets are connected, pooled per upstream and reused (at most
// udpSocketMaxUses queries each, so source ports keep changing); a socket
// that saw a timeout or error is closed, never reused. Every query has a
// fresh random ID; replies with another ID, another question or no QR bit
// are ignored while waiting (and reported as KindMalformed if nothing else
// comes); over TCP they are KindMalformed at once.
//
// A lookup is bounded: each wire query by the timeout (default 2s) and the
// caller's context; failed attempts are retried on the next upstream
// (default one retry; SERVFAIL is not retried on the same single upstream);
// at most MaxCNAMEHops aliases (default 8) are followed, so a lookup sends at
// most (hops+1)*(retries+1)*2 wire queries.
//
// At most MaxInFlight wire queries (default 1024) are outstanding to one
// upstream at a time; a query over the bound waits for a slot, or for its
// context to end (KindCanceled). A cold cache under load (thousands of
// messages in flight, each with several lookups) would otherwise open as
// many sockets at once and flood the resolver.
type Client struct {
	upstreams []*upstream
	timeout   time.Duration
	retries   int
	maxHops   int
	negTTL    uint32
	poolSize  int
	clock     func() time.Time
	metrics   *Metrics
	dialer    net.Dialer

	closeOnce sync.Once
}

// upstream is one server with its pool of idle connected UDP sockets.
type upstream struct {
	addr string
	udp  *net.UDPAddr
	pool chan *udpConn
	sem  chan struct{} // one token per wire query in flight; capacity MaxInFlight

	mu     sync.Mutex
	closed bool
}

type udpConn struct {
	*net.UDPConn
	buf  [UDPSize + 1]byte // a reply that fills this is larger than advertised
	wbuf [maxQueryOctets]byte
	uses int
}

// ClientOption configures a Client.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	upstreams  []string
	resolvConf string
	timeout    time.Duration
	retries    int
	maxHops    int
	negTTL     time.Duration
	poolSize   int
	maxFlight  int
	clock      func() time.Time
	metrics    *Metrics
}

// WithUpstreams sets the servers to ask, as "host:port" (or "host", port
// 53). The first is asked first; retries move down the list. When given,
// these servers and no others are used; /etc/resolv.conf is not read.
func WithUpstreams(addrs ...string) ClientOption {
	return func(c *clientConfig) error {
		if len(addrs) == 0 {
			return errors.New("WithUpstreams: no address")
		}
		c.upstreams = append([]string(nil), addrs...)
		return nil
	}
}

// WithResolvConf reads the upstream servers from a resolv.conf file other
// than /etc/resolv.conf. Ignored if WithUpstreams is given.
func WithResolvConf(path string) ClientOption {
	return func(c *clientConfig) error { c.resolvConf = path; return nil }
}

// WithTimeout sets the time allowed for each wire query (default 2s).
func WithTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return fmt.Errorf("WithTimeout: %v is not positive", d)
		}
		c.timeout = d
		return nil
	}
}

// WithRetries sets how many more attempts follow a failed one (timeout,
// network error, malformed reply, SERVFAIL from one of several upstreams),
// each on the next upstream in turn. Default 1, at most 16.
func WithRetries(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 0 || n > maxRetries {
			return fmt.Errorf("WithRetries: %d is outside [0, %d]", n, maxRetries)
		}
		c.retries = n
		return nil
	}
}

// WithMaxCNAMEHops sets how many aliases one lookup may follow (default 8,
// at most 64). A longer chain, or a loop, is a KindCNAMELoop error.
func WithMaxCNAMEHops(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 0 || n > maxCNAMEHopsLimit {
			return fmt.Errorf("WithMaxCNAMEHops: %d is outside [0, %d]", n, maxCNAMEHopsLimit)
		}
		c.maxHops = n
		return nil
	}
}

// WithNegativeTTL sets the TTL given to NXDOMAIN and NODATA answers whose
// reply carries no SOA record (default 30s). RFC 2308 5 says such answers
// SHOULD NOT be cached; a Cache in front clamps this value like any other.
func WithNegativeTTL(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d < 0 {
			return fmt.Errorf("WithNegativeTTL: %v is negative", d)
		}
		c.negTTL = d
		return nil
	}
}

// WithUDPPoolSize sets how many idle UDP sockets are kept per upstream
// (default 256; 0 opens a new socket for every query). With fewer idle
// sockets than queries in flight, a burst of misses opens and closes a
// socket per query (socket, connect, epoll registration, close: about
// 20 µs of CPU each, 10% of a cold-cache pipeline run at 16).
func WithUDPPoolSize(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 0 {
			return fmt.Errorf("WithUDPPoolSize: %d is negative", n)
		}
		c.poolSize = n
		return nil
	}
}

// WithMaxInFlight bounds the wire queries outstanding to each upstream
// (default 1024). Queries over the bound wait for a slot or for their
// context to end.
func WithMaxInFlight(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 1 {
			return fmt.Errorf("WithMaxInFlight: %d is not positive", n)
		}
		c.maxFlight = n
		return nil
	}
}

// WithClock sets the clock that stamps Answer.Received (default time.Now).
// Socket deadlines always use the real clock.
func WithClock(now func() time.Time) ClientOption {
	return func(c *clientConfig) error {
		if now == nil {
			return errors.New("WithClock: nil clock")
		}
		c.clock = now
		return nil
	}
}

// WithMetrics makes the client count lookups, errors and wire queries.
func WithMetrics(m *Metrics) ClientOption {
	return func(c *clientConfig) error { c.metrics = m; return nil }
}

// NewClient builds a Client. Without WithUpstreams it reads the name servers
// (and their port) from /etc/resolv.conf.
func NewClient(opts ...ClientOption) (*Client, error) {
	cfg := clientConfig{
		resolvConf: defaultResolvConf,
		timeout:    DefaultTimeout,
		retries:    DefaultRetries,
		maxHops:    DefaultMaxCNAMEHops,
		negTTL:     DefaultNegativeTTL,
		poolSize:   DefaultUDPPoolSize,
		maxFlight:  DefaultMaxInFlight,
		clock:      time.Now,
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("resolvercache: %w", err)
		}
	}
	addrs := cfg.upstreams
	if len(addrs) == 0 {
		rc, err := dns.ClientConfigFromFile(cfg.resolvConf)
		if err != nil {
			return nil, fmt.Errorf("resolvercache: read %s: %w", cfg.resolvConf, err)
		}
		for _, s := range rc.Servers {
			addrs = append(addrs, net.JoinHostPort(s, rc.Port))
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("resolvercache: no nameserver in %s", cfg.resolvConf)
		}
	}
	c := &Client{
		timeout:  cfg.timeout,
		retries:  cfg.retries,
		maxHops:  cfg.maxHops,
		negTTL:   uint32(min(cfg.negTTL/time.Second, 1<<31-1)),
		poolSize: cfg.poolSize,
		clock:    cfg.clock,
		metrics:  cfg.metrics,
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, "53")
		}
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			return nil, fmt.Errorf("resolvercache: upstream %q: %w", a, err)
		}
		c.upstreams = append(c.upstreams, &upstream{
			addr: ua.String(),
			udp:  ua,
			pool: make(chan *udpConn, cfg.poolSize),
			sem:  make(chan struct{}, cfg.maxFlight),
		})
	}
	return c, nil
}

// Upstreams returns the server addresses in the order they are asked.
func (c *Client) Upstreams() []string {
	out := make([]string, len(c.upstreams))
	for i, u := range c.upstreams {
		out[i] = u.addr
	}
	return out
}

// Close closes the pooled sockets. Lookups after Close still work but do
// not pool sockets.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		for _, u := range c.upstreams {
			u.mu.Lock()
			u.closed = true
			u.mu.Unlock()
			for {
				select {
				case uc := <-u.pool:
					_ = uc.Close()
					continue
				default:
				}
				break
			}
		}
	})
	return nil
}

// Lookup implements Resolver. The name is raw (octets, dot-separated, any
// case, optional trailing dot) and is validated first: an invalid name is a
// KindBadName error and nothing is sent.
func (c *Client) Lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	ans, err := c.lookup(ctx, name, qtype)
	c.metrics.lookup("client", err)
	if err != nil {
		return nil, err
	}
	return ans, nil
}

func (c *Client) lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	canon := CanonicalName(name)
	if err := ValidateName(canon); err != nil {
		return nil, &Error{Name: canon, Type: qtype, Kind: KindBadName, Err: err}
	}
	q := question{name: EscapeName(canon), qtype: qtype, orig: canon, otype: qtype}
	if err := ctx.Err(); err != nil {
		return nil, q.fail(KindCanceled, err)
	}
	received := c.clock()
	ch := newChain(q.name, qtype, c.maxHops, c.negTTL)
	for {
		m, err := c.query(ctx, &q)
		if err != nil {
			return nil, err
		}
		next, err := ch.absorb(m, q.name, &q)
		if err != nil {
			return nil, err
		}
		if next == "" {
			return ch.answer(canon, received), nil
		}
		q.name = next
	}
}

// query asks q of the upstreams in turn until one gives a usable reply.
func (c *Client) query(ctx context.Context, q *question) (*dns.Msg, error) {
	var last error
	for attempt := 0; attempt <= c.retries; attempt++ {
		u := c.upstreams[attempt%len(c.upstreams)]
		m, err := c.try(ctx, u, q)
		if err == nil {
			return m, nil
		}
		last = err
		var e *Error
		if !errors.As(err, &e) {
			break
		}
		if e.Kind == KindCanceled || e.Kind == KindBadName ||
			(e.Kind == KindServFail && len(c.upstreams) == 1) {
			break
		}
	}
	return nil, last
}

// try sends q to u over UDP, and again over TCP if the reply is truncated.
func (c *Client) try(ctx context.Context, u *upstream, q *question) (*dns.Msg, error) {
	select {
	case u.sem <- struct{}{}:
	default:
		select {
		case u.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, q.fail(KindCanceled, ctx.Err())
		}
	}
	defer func() { <-u.sem }()
	q.id = uint16(rand.Uint32())
	m, err := c.exchangeUDP(ctx, u, q)
	if !errors.Is(err, errTruncated) {
		return m, err
	}
	q.id = uint16(rand.Uint32())
	return c.exchangeTCP(ctx, u, q)
}

// deadline returns the end of one wire query, and whether it is the
// caller's context deadline rather than the per-query timeout.
func (c *Client) deadline(ctx context.Context) (time.Time, bool) {
	d := time.Now().Add(c.timeout)
	if cd, ok := ctx.Deadline(); ok && !cd.After(d) {
		return cd, true
	}
	return d, false
}

// ioError classifies a socket error.
func ioError(ctx context.Context, q *question, err error, ctxBound bool, deadline time.Time) *Error {
	if cerr := ctx.Err(); cerr != nil {
		return q.fail(KindCanceled, cerr)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		if ctxBound && !time.Now().Before(deadline) {
			return q.fail(KindCanceled, context.DeadlineExceeded)
		}
		return q.fail(KindTimeout, err)
	}
	return q.fail(KindNetwork, err)
}

var longAgo = time.Unix(1, 0)

func (c *Client) exchangeUDP(ctx context.Context, u *upstream, q *question) (_ *dns.Msg, err error) {
	start := time.Now()
	defer func() { c.metrics.query(false, time.Since(start).Seconds()) }()
	deadline, ctxBound := c.deadline(ctx)
	uc, err := u.get()
	if err != nil {
		return nil, q.fail(KindNetwork, err)
	}
	keep := false
	var stop func() bool
	defer func() {
		if stop != nil && !stop() {
			keep = false // the cancel hook ran or is running: do not reuse
		}
		if keep {
			u.put(uc, c.poolSize)
		} else {
			_ = uc.Close()
		}
	}()
	wire, err := q.pack(uc.wbuf[:0])
	if err != nil {
		return nil, q.fail(KindBadName, fmt.Errorf("pack query: %w", err))
	}
	if err := uc.SetDeadline(deadline); err != nil {
		return nil, q.fail(KindNetwork, err)
	}
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { _ = uc.SetReadDeadline(longAgo) })
	}
	uc.uses++
	if _, err := uc.Write(wire); err != nil {
		return nil, ioError(ctx, q, err, ctxBound, deadline)
	}
	var mismatch error
	for {
		n, err := uc.Read(uc.buf[:])
		if err != nil {
			e := ioError(ctx, q, err, ctxBound, deadline)
			if e.Kind == KindTimeout && mismatch != nil {
				return nil, mismatch
			}
			return nil, e
		}
		if n > UDPSize {
			keep = true
			return nil, q.fail(KindMalformed, fmt.Errorf("UDP reply larger than the advertised %d octets", UDPSize))
		}
		m, err := decodeReply(uc.buf[:n], q, true)
		if errors.Is(err, errMismatch) {
			mismatch = err
			continue
		}
		keep = true
		return m, err
	}
}

func (c *Client) exchangeTCP(ctx context.Context, u *upstream, q *question) (_ *dns.Msg, err error) {
	start := time.Now()
	defer func() { c.metrics.query(true, time.Since(start).Seconds()) }()
	deadline, ctxBound := c.deadline(ctx)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := c.dialer.DialContext(dctx, "tcp", u.addr)
	if err != nil {
		return nil, ioError(ctx, q, err, ctxBound, deadline)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, q.fail(KindNetwork, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(longAgo) })
	defer stop()
	var buf [tcpLengthPrefixBytes + maxQueryOctets]byte
	wire, err := q.pack(buf[tcpLengthPrefixBytes:tcpLengthPrefixBytes])
	if err != nil {
		return nil, q.fail(KindBadName, fmt.Errorf("pack query: %w", err))
	}
	out := make([]byte, tcpLengthPrefixBytes+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[tcpLengthPrefixBytes:], wire)
	if _, err := conn.Write(out); err != nil {
		return nil, ioError(ctx, q, err, ctxBound, deadline)
	}
	var lenBuf [tcpLengthPrefixBytes]byte
	if _, err := io.ReadFull(conn, lenBuf[:]); err != nil {
		return nil, ioError(ctx, q, fmt.Errorf("read TCP length: %w", err), ctxBound, deadline)
	}
	n := int(binary.BigEndian.Uint16(lenBuf[:]))
	body := make([]byte, n) // at most 65535 octets by construction
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, ioError(ctx, q, fmt.Errorf("read TCP reply of %d octets: %w", n, err), ctxBound, deadline)
	}
	return decodeReply(body, q, false)
}

func (u *upstream) get() (*udpConn, error) {
	select {
	case uc := <-u.pool:
		return uc, nil
	default:
	}
	conn, err := net.DialUDP("udp", nil, u.udp)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.addr, err)
	}
	return &udpConn{UDPConn: conn}, nil
}

func (u *upstream) put(uc *udpConn, size int) {
	if uc.uses >= udpSocketMaxUses || size == 0 {
		_ = uc.Close()
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		_ = uc.Close()
		return
	}
	select {
	case u.pool <- uc:
	default:
		_ = uc.Close()
	}
}
