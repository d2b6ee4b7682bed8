package resolvercache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Client defaults. Each can be changed with a ClientOption.
const (
	DefaultTimeout      = 2 * time.Second // per wire query (WithTimeout)
	DefaultRetries      = 1               // extra attempts, rotating over upstreams (WithRetries)
	DefaultMaxCNAMEHops = 8               // aliases followed per lookup (WithMaxCNAMEHops)
	DefaultNegativeTTL  = 30 * time.Second

	// DefaultUDPSockets is how many connected UDP sockets the queries to
	// one upstream share (WithUDPSockets) at the default MaxInFlight; a
	// larger MaxInFlight gets one more socket per udpRepliesPerSocket
	// queries, up to maxAutoUDPSockets. Each has one reader goroutine,
	// which reads and checks every reply on it (about 3 µs of CPU, most
	// of it the kernel's read and the handoff to the waiting query), so 8
	// readers work in parallel on up to 8 cores, far more replies per
	// second than a resolver sends; at the default MaxInFlight each socket
	// has about 128 replies outstanding, which fit its receive buffer
	// (udpReadBuffer). More sockets buy no spoofing resistance (see
	// Client) and cost a descriptor and a goroutine each.
	DefaultUDPSockets  = 8
	DefaultMaxInFlight = 1024 // wire queries in flight per upstream (WithMaxInFlight)

	// udpSocketMaxUses is how many queries a UDP socket carries before it
	// is retired and a new one (a new source port) takes its place. At 256
	// a busy client moves to new ports many times a second while opening
	// a socket (about 20 µs) costs under 0.1 µs a query, and a socket's
	// IDs in use (never reused, see udpConn.waiters) stay below 256 of
	// 65536, so drawing a free one rarely takes two draws.
	udpSocketMaxUses = 256
	// udpSocketMaxAge retires a socket by age too, so that a quiet client
	// does not keep the same few source ports for hours (RFC 5452 10).
	udpSocketMaxAge = 10 * time.Second
	// udpReadBuffer is the SO_RCVBUF asked for each shared socket (the
	// kernel caps it at net.core.rmem_max): 128 replies of up to UDPSize
	// octets, with the kernel's overhead, overflow the usual 208 KiB
	// default when they come together.
	udpReadBuffer = 1 << 20

	maxUDPSockets        = 1024
	udpRepliesPerSocket  = DefaultMaxInFlight / DefaultUDPSockets
	maxAutoUDPSockets    = 64
	maxRetries           = 16
	maxCNAMEHopsLimit    = 64
	defaultResolvConf    = "/etc/resolv.conf"
	maxQueryOctets       = 512
	tcpLengthPrefixBytes = 2
)

// Client is a stub resolver that asks recursive upstream servers and
// implements Resolver. It packs its queries and reads the replies in place
// itself (wire.go), with miekg/dns's constants; FuzzDecodeMatchesMiekg
// holds it to what dns.Msg reads from the same bytes.
//
// Each wire query goes over UDP (RFC 1035 4.2.1) with an EDNS0 OPT record
// advertising UDPSize octets (RFC 6891 6.2.5) and RD set; a reply with TC
// set is asked again over TCP (RFC 1035 4.2.2, RFC 7766 5; one connection
// per such query).
//
// UDP sockets are connected and shared: the queries to one upstream take
// turns over a few sockets (WithUDPSockets, default 8), many of them
// outstanding on a socket at once and told apart by their message ID. One
// goroutine per socket reads the replies and hands each to the query with
// its ID, which waits for it, its timeout or its context, whichever comes
// first. A socket per outstanding query would instead be opened and closed
// for most queries of a cold cache, with a thousand queries in flight and
// a few hundred sockets worth keeping idle: a fifth of the client's CPU.
//
// Forged replies are kept out as RFC 5452 9.1 and 9.2 ask. Every ID is
// drawn at random over all 16 bits (math/rand/v2's global generator,
// ChaCha8 seeded by the OS) and is never used twice on a socket; every
// socket is retired after udpSocketMaxUses (256) queries or
// udpSocketMaxAge (10s), whichever comes first: it takes no new query,
// closes once its last one has ended, and a new socket, on a new
// ephemeral port chosen by the kernel, takes its place. With K queries outstanding a forger must hit one of K (port, ID)
// pairs, as many as with a socket per query, so sharing costs no entropy.
// A reply must match the query's ID, question and QR bit (RFC 5452 9.1): a
// datagram whose ID no query on the socket has used is dropped, one whose
// ID matches but whose question or QR bit does not is ignored while the
// query waits, and either turns that query's timeout into KindMalformed;
// late or repeated replies to queries that have ended are dropped. Over
// TCP a mismatch is KindMalformed at once. A read error (ICMP port
// unreachable: nothing listens upstream) fails every query on the socket
// with KindNetwork and retires it; a write error fails its own query and
// retires the socket.
//
// A lookup is bounded: each wire query by the timeout (default 2s; over
// UDP one sweeper per upstream ends the queries whose time is up, at most
// sweepSlack, 1 ms, late) and the caller's context, and a UDP write that
// blocks by twice the timeout (boundWrite); failed attempts are retried on
// the next upstream (default one retry; SERVFAIL is not retried on the
// same single upstream);
// at most MaxCNAMEHops aliases (default 8) are followed, so a lookup sends at
// most (hops+1)*(retries+1)*2 wire queries.
//
// At most MaxInFlight wire queries (default 1024) are outstanding to one
// upstream at a time; a query over the bound waits for a slot, or for its
// context to end (KindCanceled). A cold cache under load (thousands of
// messages in flight, each with several lookups) would otherwise flood the
// resolver.
//
// A lookup that gives up (its context ends) stops waiting at once. Its wire
// query is dropped, unless the Client is the upstream of a Cache and the
// query asks the lookup's own name: it then stays on the wire until its
// reply or its timeout, in its MaxInFlight slot; lookups of the name meanwhile
// wait for it, and the Cache keeps what it comes to if the lookup would
// have returned that (see leave, settleLate). A straggler that the pipeline
// defers to its retry stage thus finds its answer cached or on its way,
// and a slow resolver is not asked twice.
type Client struct {
	upstreams []*upstream
	timeout   time.Duration
	retries   int
	maxHops   int
	negTTL    uint32
	clock     func() time.Time
	metrics   *Metrics
	dialer    net.Dialer
	newID     func() uint16 // message IDs; tests replace it
	maxAge    time.Duration // udpSocketMaxAge; tests shorten it
	epoch     time.Time     // origin of the expiry times of UDP queries (expiry.at)

	waiterPool sync.Pool      // *waiter, to spare a lookup's channel and buffers
	readers    sync.WaitGroup // reader goroutines of the sockets Close closes
	reading    atomic.Int64   // reader goroutines running, of any socket
	closeOnce  sync.Once

	// late is the Cache in front (NewCache sets it), told of the queries
	// left running for it and of what they come to (see leave); nil
	// without one.
	late atomic.Pointer[Cache]

	// health is told when an upstream stops or starts answering (see
	// upstream.down).
	health func(server string, answering bool, err error)
}

// upstream is one server with its shared UDP sockets.
type upstream struct {
	c    *Client
	idx  int // in c.upstreams
	addr string
	udp  *net.UDPAddr
	sem  chan struct{} // one token per wire query in flight; capacity MaxInFlight

	// Health. fails counts the wire queries in a row that failed on the
	// network, or timed out with nothing at all heard from the server
	// while they waited (heard counts its datagrams: a resolver still
	// answering others is alive, only slow for that name, as for a
	// domain whose own servers are dead); any datagram resets it. After
	// upstreamDownAfter of them the server is down: down holds the time
	// (nanoseconds since the client's epoch) from which one query may
	// probe it, and lookups ask the servers that answer first. 0: up.
	fails atomic.Int32
	down  atomic.Int64
	heard atomic.Uint64
	count upstreamCounters // its metrics

	mu     sync.Mutex
	slots  []*udpConn            // the sockets taking new queries; nil: dial at next use
	next   uint                  // round robin over slots
	open   map[*udpConn]struct{} // every socket Close must close, retired ones too
	live   map[*udpConn]struct{} // every socket not yet closed, own ones too: what sweep scans
	closed bool

	// The sweeper times the UDP queries out (see sweep): a timer running
	// sweep, armed while any query waits.
	sweeper *time.Timer
	armed   atomic.Bool  // sweeper armed or running; its holder alone may arm it
	waiting atomic.Int64 // queries registered on u's sockets and not yet ended
}

// udpConn is one connected UDP socket and the queries waiting on it.
type udpConn struct {
	u      *upstream
	conn   *net.UDPConn
	uses   int               // queries given this socket; under u.mu
	opened time.Time         // when dialled; a socket older than udpSocketMaxAge retires
	buf    [UDPSize + 1]byte // the reader's; a reply that fills it is larger than advertised
	// writeBy is the socket's write deadline, in nanoseconds since the
	// client's epoch (boundWrite); 0 before the first write.
	writeBy atomic.Int64

	mu sync.Mutex
	// waiters holds every ID used on this socket: the waiting query, or
	// nil once it has ended. IDs are never reused on a socket, so a late
	// reply cannot reach a later query.
	waiters map[uint16]*waiter
	// expiries lists every query registered, in order, with its deadline;
	// those before swept have ended. Deadlines are the start of each query
	// plus the timeout, so they rise with the list but for the moments
	// between a query's clock reading and its registration.
	expiries []expiry
	swept    int
	pending  int    // non-nil waiters
	retired  bool   // takes no new query; closes when pending is 0
	done     bool   // closed or closing; waiters failed
	strays   uint64 // datagrams whose ID no query here has used
	strayID  int    // the ID of the last of them, -1 if it had none
}

// waiter carries one lookup's wire queries over UDP, one at a time: each
// waits on a udpConn under an ID of its own. A lookup takes one from the
// pool and reads its replies in place (rbuf) until its Answer is built.
type waiter struct {
	q  question   // a copy, decoded against by the reader
	ch chan reply // capacity 1: one send, under udpConn.mu, as it leaves waiters

	// Under udpConn.mu.
	mismatch error  // the last reply with this ID that did not match
	strays   uint64 // udpConn.strays when it was registered

	// first: the query asks the lookup's own name and type, not an alias
	// target, so its reply alone is an Answer; only such a query is left
	// running when its lookup gives up (leave).
	first bool
	// attempt: which of its lookup's attempts at its name the query is
	// (query), so that an orphan fails over to the next upstream as the
	// lookup would have (settleLate).
	attempt int
	// orphan: a query left running when its lookup gave up (leave),
	// holding its in-flight slot until it ends; what it comes to goes to
	// Client.late (settleLate). It is a waiter of its own, not the
	// lookup's.
	orphan bool
	// handed: exchangeUDP handed its in-flight slot on to an orphan, so
	// try must not give it back.
	handed bool
	// sent: when an orphan that sendOrphan sent (an attempt after the
	// first, or a prefetch) went out, for the metrics; zero for the
	// lookup's own.
	sent time.Time
	// up: the upstream of its current query (register), so that an
	// orphan's next attempt goes to the server after it (continueOrphan);
	// heard: up.heard when it was registered (see upstream.fails).
	up    *upstream
	heard uint64

	wbuf [maxQueryOctets]byte // the packed query
	// rbuf holds the reply: the reader copies it here under udpConn.mu,
	// only while this waiter is registered under the reply's ID.
	rbuf [UDPSize]byte
}

type reply struct {
	m   replyView
	err error
}

// expiry is when a query on a socket times out, in nanoseconds since the
// client's epoch.
type expiry struct {
	at int64
	id uint16
}

// errExpired is the reply sweep hands a query whose time is up:
// exchangeUDP turns it into the error to report.
var errExpired = errors.New("resolvercache: wire query expired")

// sweepSlack bounds how often the sweeper wakes while queries time out:
// at most once per sweepSlack, so that a query times out at most
// sweepSlack late (see sweep).
const sweepSlack = time.Millisecond

// ClientOption configures a Client.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	health     func(server string, answering bool, err error)
	upstreams  []string
	resolvConf string
	timeout    time.Duration
	retries    int
	maxHops    int
	negTTL     time.Duration
	udpSockets int
	socketsSet bool // WithUDPSockets given: not sized from maxFlight
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

// WithHealthFunc has f told, once per change, when an upstream server
// stops answering (answering false, with the error of the query that
// decided it: upstreamDownAfter wire queries in a row timed out or failed
// on the network) and when it answers again (true, nil). f runs on the
// goroutine that saw the change and must not block. While a server is
// down, with more than one upstream, lookups ask the others first and it
// gets one probe query every UpstreamHoldDown (5 s), so a dead first
// server in resolv.conf does not cost every lookup its timeout. The
// client keeps that state with or without f.
func WithHealthFunc(f func(server string, answering bool, err error)) ClientOption {
	return func(c *clientConfig) error {
		c.health = f
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

// WithUDPSockets sets how many connected UDP sockets the queries to each
// upstream share (default 8, or one per 128 of WithMaxInFlight's queries
// if more, up to 64; at most 1024); each has a goroutine reading
// its replies, and is replaced by a new one every 256 queries. 0 gives
// every query a socket of its own, closed after its reply, which costs
// about 20 µs of CPU a query for the socket alone.
func WithUDPSockets(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 0 || n > maxUDPSockets {
			return fmt.Errorf("WithUDPSockets: %d is outside [0, %d]", n, maxUDPSockets)
		}
		c.udpSockets, c.socketsSet = n, true
		return nil
	}
}

// WithMaxInFlight bounds the wire queries outstanding to each upstream
// (default 1024). Queries over the bound wait for a slot or for their
// context to end; a prefetch (Cache.Prefetch) finds none and is not sent.
// Unless WithUDPSockets says otherwise, a bound over the default gets
// more sockets, one per 128 queries, up to 64.
func WithMaxInFlight(n int) ClientOption {
	return func(c *clientConfig) error {
		if n < 1 {
			return fmt.Errorf("WithMaxInFlight: %d is not positive", n)
		}
		c.maxFlight = n
		return nil
	}
}

// UDPSocketsFor returns how many UDP sockets per upstream a client with
// WithMaxInFlight(maxInFlight) opens unless WithUDPSockets says otherwise:
// DefaultUDPSockets, or one per 128 queries if more, up to 64.
func UDPSocketsFor(maxInFlight int) int {
	n := (maxInFlight + udpRepliesPerSocket - 1) / udpRepliesPerSocket
	return min(max(DefaultUDPSockets, n), maxAutoUDPSockets)
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
// (and their port) from /etc/resolv.conf. Sockets are opened at first use.
func NewClient(opts ...ClientOption) (*Client, error) {
	cfg := clientConfig{
		resolvConf: defaultResolvConf,
		timeout:    DefaultTimeout,
		retries:    DefaultRetries,
		maxHops:    DefaultMaxCNAMEHops,
		negTTL:     DefaultNegativeTTL,
		udpSockets: DefaultUDPSockets,
		maxFlight:  DefaultMaxInFlight,
		clock:      time.Now,
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("resolvercache: %w", err)
		}
	}
	if !cfg.socketsSet {
		cfg.udpSockets = UDPSocketsFor(cfg.maxFlight)
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
		timeout: cfg.timeout,
		retries: cfg.retries,
		maxHops: cfg.maxHops,
		negTTL:  uint32(min(cfg.negTTL/time.Second, 1<<31-1)),
		clock:   cfg.clock,
		metrics: cfg.metrics,
		newID:   func() uint16 { return uint16(rand.Uint32()) },
		maxAge:  udpSocketMaxAge,
		epoch:   time.Now(),
		health:  cfg.health,
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, "53")
		}
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			return nil, fmt.Errorf("resolvercache: upstream %q: %w", a, err)
		}
		u := &upstream{
			c:     c,
			idx:   len(c.upstreams),
			addr:  ua.String(),
			udp:   ua,
			sem:   make(chan struct{}, cfg.maxFlight),
			slots: make([]*udpConn, cfg.udpSockets),
			open:  map[*udpConn]struct{}{},
			live:  map[*udpConn]struct{}{},
		}
		u.sweeper = time.AfterFunc(time.Hour, u.sweep)
		u.sweeper.Stop()
		u.count = c.metrics.forUpstream(u.addr)
		c.upstreams = append(c.upstreams, u)
		c.metrics.upstreamUp(u.addr, true)
	}
	return c, nil
}

// Upstream health: a server whose last upstreamDownAfter wire queries all
// timed out or failed on the network is down, asked after the others for
// UpstreamHoldDown, then probed by one query; any datagram from it makes
// it up again.
const (
	upstreamDownAfter = 3
	// UpstreamHoldDown is how long a server that stopped answering is
	// asked only after the others, until one query probes it.
	UpstreamHoldDown = 5 * time.Second
)

// firstUpstream returns the index of the server a lookup asks first: the
// first in order that is up, or a down one whose hold-down has passed, the
// lookup then being its one probe until the next. With every server down
// it is the first.
func (c *Client) firstUpstream() int {
	if len(c.upstreams) == 1 {
		return 0
	}
	now := int64(-1)
	for i, u := range c.upstreams {
		d := u.down.Load()
		if d == 0 {
			return i
		}
		if now < 0 {
			now = int64(time.Since(c.epoch))
		}
		if now >= d && u.down.CompareAndSwap(d, now+int64(UpstreamHoldDown)) {
			return i
		}
	}
	return 0
}

// answered records that a datagram came from u: it is up.
func (u *upstream) answered() {
	u.heard.Add(1)
	if u.count.replies != nil {
		u.count.replies.Inc()
	}
	if u.fails.Load() != 0 {
		u.fails.Store(0)
	}
	if u.down.Load() != 0 && u.down.Swap(0) != 0 {
		u.c.metrics.upstreamUp(u.addr, true)
		if f := u.c.health; f != nil {
			f(u.addr, true, nil)
		}
	}
}

// timedOut records that the query w to u timed out: a failure if nothing
// came from u while it waited.
func (u *upstream) timedOut(w *waiter) {
	if u.count.timeouts != nil {
		u.count.timeouts.Inc()
	}
	if u.heard.Load() == w.heard {
		u.failed(nil)
	}
}

// failed records a wire query to u that failed on the network (err) or
// timed out with u silent (nil); the upstreamDownAfter-th in a row makes
// it down.
func (u *upstream) failed(err error) {
	if err != nil && u.count.network != nil {
		u.count.network.Inc()
	}
	if u.down.Load() != 0 || u.fails.Add(1) < upstreamDownAfter {
		return // down already (nothing to count), or not yet
	}
	if u.down.CompareAndSwap(0, int64(time.Since(u.c.epoch))+int64(UpstreamHoldDown)) {
		if err == nil {
			err = fmt.Errorf("%d queries in a row had no reply within %v, and nothing else came from the server meanwhile", upstreamDownAfter, u.c.timeout)
		}
		u.c.metrics.upstreamUp(u.addr, false)
		if f := u.c.health; f != nil {
			f(u.addr, false, err)
		}
	}
}

// Upstreams returns the server addresses in the order they are asked.
func (c *Client) Upstreams() []string {
	out := make([]string, len(c.upstreams))
	for i, u := range c.upstreams {
		out[i] = u.addr
	}
	return out
}

// Close closes the UDP sockets, failing the queries waiting on them with
// KindNetwork (a lookup retries on a socket of its own if it has attempts
// left), and returns once their reader goroutines have exited. Lookups
// after Close still work, each wire query on a socket of its own, closed
// after it.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		for _, u := range c.upstreams {
			u.close()
		}
		c.readers.Wait()
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
	q := question{name: wireName(canon), qtype: qtype, orig: canon, otype: qtype}
	if err := ctx.Err(); err != nil {
		return nil, q.fail(KindCanceled, err)
	}
	received := c.clock()
	w := c.waiter()
	defer c.waiterPool.Put(w)
	var ch chain
	ch.init(q.name, qtype, c.maxHops, c.negTTL)
	w.first = true
	for {
		m, err := c.query(ctx, &q, w)
		if err != nil {
			return nil, err
		}
		next, err := ch.absorb(&m, q.name, &q)
		if err != nil {
			return nil, err
		}
		if next == "" {
			return ch.answer(canon, received), nil
		}
		q.name = next
		w.first = false
	}
}

// query asks q of the upstreams in turn until one gives a usable reply.
func (c *Client) query(ctx context.Context, q *question, w *waiter) (replyView, error) {
	var last error
	first := c.firstUpstream()
	for attempt := 0; attempt <= c.retries; attempt++ {
		u := c.upstreams[(first+attempt)%len(c.upstreams)]
		w.attempt = attempt
		m, err := c.try(ctx, u, q, w)
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
	return replyView{}, last
}

// try sends q to u over UDP, and again over TCP if the reply is truncated.
func (c *Client) try(ctx context.Context, u *upstream, q *question, w *waiter) (replyView, error) {
	select {
	case u.sem <- struct{}{}:
	default:
		select {
		case u.sem <- struct{}{}:
		case <-ctx.Done():
			return replyView{}, q.fail(KindCanceled, ctx.Err())
		}
	}
	defer func() {
		if w.handed {
			w.handed = false // the orphan gives the slot back
		} else {
			<-u.sem
		}
	}()
	m, err := c.exchangeUDP(ctx, u, q, w)
	if !errors.Is(err, errTruncated) {
		return m, err
	}
	q.id = c.newID()
	return c.exchangeTCP(ctx, u, q)
}

// deadline returns the end of one wire query starting at now, and whether
// it is the caller's context deadline rather than the per-query timeout.
func (c *Client) deadline(ctx context.Context, now time.Time) (time.Time, bool) {
	d := now.Add(c.timeout)
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

// exchangeUDP asks q over one of u's shared sockets through w and waits
// for the reply, the per-query timeout or the end of ctx. The reply it
// returns is in w.rbuf.
//
// The query waits on its channel and ctx alone: its timeout comes from
// u's sweeper (sweep), as errExpired in the channel, at most sweepSlack
// late. A timer per query in the select cost about 3 µs of CPU a query
// (its Reset and Stop, the three-way select).
func (c *Client) exchangeUDP(ctx context.Context, u *upstream, q *question, w *waiter) (replyView, error) {
	// One reading of the clock serves the deadline, the socket's age and
	// the metrics.
	start := time.Now()
	if c.metrics != nil {
		defer func() { c.metrics.query(false, time.Since(start).Seconds()) }()
	}
	deadline, ctxBound := c.deadline(ctx, start)
	w.q, w.mismatch = *q, nil
	rel := int64(start.Sub(c.epoch))
	uc, err := u.register(w, start, rel+int64(c.timeout))
	if err != nil {
		return replyView{}, q.fail(KindNetwork, err)
	}
	q.id = w.q.id
	uc.boundWrite(rel)
	if _, err := uc.conn.Write(q.pack(w.wbuf[:0])); err != nil {
		uc.drop(w)
		uc.retire()
		if !errors.Is(err, net.ErrClosed) {
			u.failed(err)
		}
		return replyView{}, ioError(ctx, q, err, ctxBound, deadline)
	}
	var r reply
	if done := ctx.Done(); done == nil {
		r = <-w.ch
	} else {
		select {
		case r = <-w.ch:
		case <-done:
			if uc.leave(w) {
				return replyView{}, q.fail(KindCanceled, ctx.Err())
			}
			r = <-w.ch // the reply came after all
		}
	}
	// A lookup's query that failed counts against its server here, on
	// the lookup's goroutine, before the lookup goes on to the next
	// server: the next lookup sees the server's health with it.
	if r.err != errExpired {
		if e := (*Error)(nil); errors.As(r.err, &e) && e.Kind == KindNetwork && !errors.Is(r.err, net.ErrClosed) {
			u.failed(r.err)
		}
		return r.m, r.err
	}
	switch {
	case ctx.Err() != nil:
		return replyView{}, q.fail(KindCanceled, ctx.Err())
	case ctxBound:
		return replyView{}, q.fail(KindCanceled, context.DeadlineExceeded)
	case w.mismatch != nil:
		return replyView{}, w.mismatch
	}
	u.timedOut(w)
	return replyView{}, c.timeoutError(u, q)
}

// timeoutError is the error of a query to u that had no reply in time.
func (c *Client) timeoutError(u *upstream, q *question) *Error {
	return q.fail(KindTimeout, fmt.Errorf("no reply from %s in %v: %w", u.addr, c.timeout, os.ErrDeadlineExceeded))
}

// waiter returns a waiter from the pool for one lookup. Each of its wire
// queries leaves it out of its socket's waiters with its channel empty,
// so the next may reuse it, and so may another lookup once it is back in
// the pool: the reader of an earlier query may still hold it, but finds
// that query's ID taken by nil (IDs are never reused on a socket) and
// leaves it alone.
func (c *Client) waiter() *waiter {
	w, _ := c.waiterPool.Get().(*waiter)
	if w == nil {
		w = &waiter{ch: make(chan reply, 1)}
	}
	return w
}

// drop takes w out of uc as its write failed.
func (uc *udpConn) drop(w *waiter) {
	if !uc.abandon(w) {
		<-w.ch // failed by shutdown meanwhile
	}
}

func (c *Client) exchangeTCP(ctx context.Context, u *upstream, q *question) (_ replyView, err error) {
	start := time.Now()
	defer func() { c.metrics.query(true, time.Since(start).Seconds()) }()
	deadline, ctxBound := c.deadline(ctx, start)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// A failure here does not count against the server's health: it has
	// just answered over UDP (truncated), and TCP blocked on the way (a
	// firewall) would otherwise hold a working server down.
	conn, err := c.dialer.DialContext(dctx, "tcp", u.addr)
	if err != nil {
		return replyView{}, ioError(ctx, q, err, ctxBound, deadline)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return replyView{}, q.fail(KindNetwork, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(longAgo) })
	defer stop()
	var buf [tcpLengthPrefixBytes + maxQueryOctets]byte
	out := q.pack(buf[:tcpLengthPrefixBytes])
	binary.BigEndian.PutUint16(out, uint16(len(out)-tcpLengthPrefixBytes))
	if _, err := conn.Write(out); err != nil {
		return replyView{}, ioError(ctx, q, err, ctxBound, deadline)
	}
	var lenBuf [tcpLengthPrefixBytes]byte
	if _, err := io.ReadFull(conn, lenBuf[:]); err != nil {
		return replyView{}, ioError(ctx, q, fmt.Errorf("read TCP length: %w", err), ctxBound, deadline)
	}
	n := int(binary.BigEndian.Uint16(lenBuf[:]))
	body := make([]byte, n) // at most 65535 octets by construction
	if _, err := io.ReadFull(conn, body); err != nil {
		return replyView{}, ioError(ctx, q, fmt.Errorf("read TCP reply of %d octets: %w", n, err), ctxBound, deadline)
	}
	return decodeReply(body, q, false)
}

// boundWrite makes sure that a write starting at rel (nanoseconds since
// the client's epoch) ends within twice the timeout. A write to a
// connected UDP socket blocks while the socket's send buffer is full (an
// interface that does not drain), and neither the query's timeout nor its
// context would end it. The deadline is moved about once per timeout on a
// socket, not for every query: SetWriteDeadline locks the descriptor and
// resets the poller's timer.
func (uc *udpConn) boundWrite(rel int64) {
	c := uc.u.c
	if uc.writeBy.Load() >= rel+int64(c.timeout) {
		return
	}
	by := rel + 2*int64(c.timeout)
	_ = uc.conn.SetWriteDeadline(c.epoch.Add(time.Duration(by)))
	uc.writeBy.Store(by)
}

// register gives w a socket and an ID on it, to time out at expiry (in
// nanoseconds since the client's epoch), and makes sure the sweeper runs.
func (u *upstream) register(w *waiter, now time.Time, at int64) (*udpConn, error) {
	for range 3 { // a socket retired or failed since acquire: take the next
		uc, last, err := u.acquire(now)
		if err != nil {
			return nil, err
		}
		w.up, w.heard = u, u.heard.Load()
		if uc.register(w, last, at) {
			// u.waiting counts w before this reads armed: sweep, which
			// clears armed before it reads u.waiting, either sees w or
			// leaves the sweeper to this query to arm.
			if !u.armed.Load() && u.armed.CompareAndSwap(false, true) {
				u.sweeper.Reset(u.c.timeout)
			}
			return uc, nil
		}
	}
	return nil, fmt.Errorf("no usable socket to %s", u.addr)
}

// sweep times out the queries on u's sockets whose deadline has passed:
// it takes each out of its socket's waiters and hands it errExpired. It
// runs on u.sweeper's goroutine while any query waits, armed by the first
// query registered when it is idle, and arms itself again for the next
// deadline, but no sooner than sweepSlack from now: a query times out at
// most sweepSlack (1 ms) late, plus the scheduler's latency and the time
// between the query's clock reading and its registration (a query's
// per-query timer, before the sweeper, was late by the time from its clock
// reading to after its write). While no query times out it wakes about
// once per timeout; while many do, at most once per sweepSlack.
func (u *upstream) sweep() {
	u.mu.Lock()
	socks := make([]*udpConn, 0, len(u.live))
	for uc := range u.live {
		socks = append(socks, uc)
	}
	u.mu.Unlock()
	now := int64(time.Since(u.c.epoch))
	next, pending := int64(0), false
	for _, uc := range socks {
		if at, ok := uc.expire(now); ok && (!pending || at < next) {
			next, pending = at, true
		}
	}
	if !pending {
		u.armed.Store(false)
		if u.waiting.Load() == 0 || !u.armed.CompareAndSwap(false, true) {
			return // idle, or armed by a query registered meanwhile
		}
		// Queries registered after their socket was swept end no later
		// than a timeout from now.
		next = int64(time.Since(u.c.epoch) + u.c.timeout)
	}
	u.sweeper.Reset(max(time.Duration(next-now), sweepSlack))
}

// acquire returns the socket for the next query in turn, opening it if
// needed, and whether that query is its last: the socket is then already
// out of the rotation. After Close, or without shared sockets, every query
// gets a socket of its own.
func (u *upstream) acquire(now time.Time) (uc *udpConn, last bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || len(u.slots) == 0 {
		uc, err := u.dial(1)
		return uc, true, err
	}
	i := u.next % uint(len(u.slots))
	u.next++
	if uc = u.slots[i]; uc == nil {
		if uc, err = u.dial(udpSocketMaxUses); err != nil {
			return nil, false, err
		}
		_ = uc.conn.SetReadBuffer(udpReadBuffer)
		u.slots[i] = uc
	}
	uc.uses++
	if uc.uses >= udpSocketMaxUses || now.Sub(uc.opened) >= u.c.maxAge {
		u.slots[i] = nil
		return uc, true, nil
	}
	return uc, false, nil
}

// dial opens a socket for up to uses queries and starts its reader.
// Called with u.mu held.
func (u *upstream) dial(uses int) (*udpConn, error) {
	conn, err := net.DialUDP("udp", nil, u.udp)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.addr, err)
	}
	// The waiters map and the expiries list hold every ID the socket will
	// carry: sized for all of them at once rather than grown in steps.
	uc := &udpConn{u: u, conn: conn, opened: time.Now(), waiters: make(map[uint16]*waiter, uses),
		expiries: make([]expiry, 0, uses)}
	u.live[uc] = struct{}{}
	// Close waits for the readers it can reach; those of sockets opened
	// after it end with their single query.
	tracked := !u.closed
	if tracked {
		u.open[uc] = struct{}{}
		u.c.readers.Add(1)
	}
	u.c.reading.Add(1)
	go uc.read(tracked)
	return uc, nil
}

// close shuts every socket of u down; later queries get their own.
func (u *upstream) close() {
	u.mu.Lock()
	u.closed = true
	open := u.open
	u.open = nil
	clear(u.slots)
	u.mu.Unlock()
	for uc := range open {
		uc.shutdown(fmt.Errorf("client closed: %w", net.ErrClosed))
	}
}

// register enters w under a random ID not used on uc before, to expire at
// at, unless uc takes no new queries. last makes it uc's final query: uc
// retires.
func (uc *udpConn) register(w *waiter, last bool, at int64) bool {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	if uc.done || uc.retired {
		return false
	}
	id := uc.u.c.newID()
	for _, used := uc.waiters[id]; used; _, used = uc.waiters[id] {
		id = uc.u.c.newID()
	}
	w.q.id = id
	w.strays = uc.strays
	uc.waiters[id] = w
	uc.expiries = append(uc.expiries, expiry{at: at, id: id})
	uc.pending++
	uc.u.waiting.Add(1)
	uc.retired = last
	return true
}

// endLocked takes the query with ID id out of uc's waiters; an orphan
// gives its in-flight slot back.
func (uc *udpConn) endLocked(id uint16) {
	if w := uc.waiters[id]; w != nil && w.orphan {
		<-uc.u.sem
	}
	uc.waiters[id] = nil
	uc.pending--
	uc.u.waiting.Add(-1)
}

// expire hands errExpired to the queries on uc whose deadline is at or
// before now, and returns the deadline of the next query waiting, if any.
func (uc *udpConn) expire(now int64) (next int64, pending bool) {
	var orphans []*waiter // their outcome goes to the Cache once uc.mu is free
	uc.mu.Lock()
	for uc.swept < len(uc.expiries) {
		e := uc.expiries[uc.swept]
		w := uc.waiters[e.id] // nil once shut down
		if w == nil {
			uc.swept++
			continue
		}
		if e.at > now {
			next, pending = e.at, true
			break
		}
		uc.swept++
		w.mismatch = uc.mismatchLocked(w)
		uc.endLocked(e.id)
		if w.orphan {
			orphans = append(orphans, w)
		} else {
			w.ch <- reply{err: errExpired}
		}
	}
	drained := uc.drainedLocked()
	uc.mu.Unlock()
	for _, w := range orphans {
		uc.u.timedOut(w) // a lookup's own counts in exchangeUDP
		err := w.mismatch
		if err == nil {
			err = uc.u.c.timeoutError(uc.u, &w.q)
		}
		uc.u.c.settleLate(w, reply{err: err})
	}
	if drained {
		uc.close()
	}
	return next, pending
}

// mismatchLocked returns the error to report for w instead of a timeout:
// the last reply with its ID that did not match, or else a datagram with
// an ID no query used that came while it waited; nil if neither.
func (uc *udpConn) mismatchLocked(w *waiter) error {
	if w.mismatch != nil || uc.strays <= w.strays {
		return w.mismatch
	}
	err := fmt.Errorf("%w: ID %d, want %d", errMismatch, uc.strayID, w.q.id)
	if uc.strayID < 0 {
		err = fmt.Errorf("%w: a datagram too short for an ID", errMismatch)
	}
	return w.q.fail(KindMalformed, err)
}

// abandon takes w out when its query gives up (cancellation, failed
// write). It returns false if a reply, failure or expiry was handed to w
// first: it is then in w.ch.
func (uc *udpConn) abandon(w *waiter) bool {
	uc.mu.Lock()
	if uc.waiters[w.q.id] != w {
		uc.mu.Unlock()
		return false
	}
	uc.endLocked(w.q.id)
	drained := uc.drainedLocked()
	uc.mu.Unlock()
	if drained {
		uc.close()
	}
	return true
}

// leave takes w out as its lookup gives up (its context ended), like
// abandon. Behind a Cache (Client.late), a query for the lookup's own name
// stays on the wire instead, as an orphan waiter of its own, until its
// reply or its timeout: it keeps the in-flight slot (w.handed), so
// MaxInFlight still bounds what the upstream is asked. The Cache is told
// now (leftRunning: the flight stays open for other lookups to join) and
// of the outcome when it comes (settleLate), exactly once: from dispatch,
// expire or shutdown, whichever ends the orphan. leave returns false if a
// reply, failure or expiry was handed to w first: it is then in w.ch.
func (uc *udpConn) leave(w *waiter) bool {
	cache := uc.u.c.late.Load()
	if !w.first || cache == nil {
		return uc.abandon(w)
	}
	uc.mu.Lock()
	defer uc.mu.Unlock()
	if uc.waiters[w.q.id] != w {
		return false
	}
	// Before the orphan is in waiters, so before its outcome can come.
	cache.leftRunning(w.q.orig, w.q.otype)
	o := uc.u.c.orphan(w.q, w.attempt)
	o.mismatch, o.strays, o.up, o.heard = w.mismatch, w.strays, uc.u, w.heard
	uc.waiters[w.q.id] = o
	w.handed = true
	return true
}

// settleLate tells the Cache (Client.late) what the orphaned query w
// (leave) came to: its reply r as an Answer, or the error the lookup would
// have returned. A failure the lookup would have tried again after (query)
// is tried again the same way, on the next upstream, as an orphan too
// (continueOrphan), so the lookups waiting for it get what the lookup would
// have come to. Neither is given, and those lookups ask again, when the
// reply ends at an alias to ask next (the lookup that would have followed
// it is gone), is truncated (to be asked over TCP), or the next attempt
// cannot be sent. r.m views the reader's buffer; the Answer copies what it
// keeps.
func (c *Client) settleLate(w *waiter, r reply) {
	// w is out of its socket's waiters, and ends here (see orphan); r.m
	// views the reader's buffer, not w's, and continueOrphan copies what
	// it needs of w before this returns.
	defer c.release(w)
	cache := c.late.Load()
	if cache == nil {
		return
	}
	if !w.sent.IsZero() {
		c.metrics.query(false, time.Since(w.sent).Seconds())
	}
	q := &w.q
	var ans *Answer
	err := r.err
	if err == nil {
		var ch chain
		ch.init(q.name, q.qtype, c.maxHops, c.negTTL)
		var next string
		if next, err = ch.absorb(&r.m, q.name, q); err == nil && next == "" {
			ans = ch.answer(q.orig, c.clock())
		}
	}
	var e *Error
	switch {
	case err == nil:
	case errors.Is(err, errTruncated):
		err = nil
	case errors.As(err, &e) && e.Kind == KindServFail && len(c.upstreams) == 1:
		// Final whatever the attempt (query).
	case w.attempt < c.retries:
		if c.continueOrphan(w) {
			return // settled when the next attempt ends
		}
		err = nil
	}
	cache.settled(q.orig, q.otype, ans, err)
}

// continueOrphan sends the next attempt of the orphan w's lookup, on the
// upstream query would have chosen, as an orphan of its own that settles
// as w would have. It takes a free in-flight slot without waiting (it runs
// on a socket's reader or the sweeper), and reports false if there is none,
// the client is closed, or the query cannot be sent.
func (c *Client) continueOrphan(w *waiter) bool {
	return c.sendOrphan(w.q, w.attempt+1, c.upstreams[(w.up.idx+1)%len(c.upstreams)])
}

// start sends the first query of a lookup of name and type that nobody
// waits for, as an orphan (see leave): what it comes to goes to the Cache
// in front (settleLate), which caches it as any fill's. It is how
// Cache.Prefetch asks without a goroutine blocked on the reply. It takes
// a free in-flight slot without waiting, and reports false, having sent
// nothing, if there is none, there is no Cache in front, the name is not
// valid, the client is closed, or the query cannot be sent.
func (c *Client) start(name string, qtype uint16) bool {
	canon := CanonicalName(name)
	if c.late.Load() == nil || ValidateName(canon) != nil {
		return false
	}
	return c.sendOrphan(question{name: wireName(canon), qtype: qtype, orig: canon, otype: qtype}, 0, c.upstreams[c.firstUpstream()])
}

// sendOrphan sends attempt of the query q (its name the lookup's own) as
// an orphan waiter, to u (the upstream query would have chosen for it),
// taking a free in-flight slot without waiting; it reports whether the
// query went out (or is settled by the socket's shutdown).
func (c *Client) sendOrphan(q question, attempt int, u *upstream) bool {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return false
	}
	select {
	case u.sem <- struct{}{}:
	default:
		return false
	}
	o := c.orphan(q, attempt)
	o.sent = time.Now()
	rel := int64(o.sent.Sub(c.epoch))
	uc, err := u.register(o, o.sent, rel+int64(c.timeout))
	if err != nil {
		<-u.sem
		c.release(o)
		return false
	}
	uc.boundWrite(rel)
	if _, err := uc.conn.Write(o.q.pack(o.wbuf[:0])); err != nil {
		if !errors.Is(err, net.ErrClosed) {
			u.failed(err)
		}
		if !uc.abandon(o) { // out, and its slot given back (endLocked)
			return true // the socket failed meanwhile: shutdown settles o
		}
		c.release(o)
		uc.retire()
		return false
	}
	return true
}

// orphan returns a waiter from the pool for an orphan query of q: one left
// running (leave) or sent with nobody waiting (sendOrphan). It goes back
// to the pool once settled (settleLate): a cold message's prefetches make
// two of its three queries orphans, and a fresh one each (2 KiB) was
// garbage that the collector and the page faults of a growing heap paid
// for. Its channel is empty: nothing is ever sent to an orphan's.
func (c *Client) orphan(q question, attempt int) *waiter {
	o := c.waiter()
	o.q, o.attempt, o.orphan = q, attempt, true
	o.mismatch, o.strays, o.first, o.handed, o.sent, o.up = nil, 0, false, false, time.Time{}, nil
	return o
}

// release gives the orphan o back to the pool once it has ended, marked
// as no orphan: a lookup that takes it from there must get its replies in
// its channel (dispatch and expire hand an orphan's to the Cache instead;
// TestCachePrefetchThenLookups).
func (c *Client) release(o *waiter) {
	o.orphan = false
	c.waiterPool.Put(o)
}

// retire takes uc out of the rotation; it closes once its queries end.
func (uc *udpConn) retire() {
	uc.u.unslot(uc)
	uc.mu.Lock()
	uc.retired = true
	drained := uc.drainedLocked()
	uc.mu.Unlock()
	if drained {
		uc.close()
	}
}

// drainedLocked reports, once, that uc is retired and has no query left:
// the caller must close it.
func (uc *udpConn) drainedLocked() bool {
	if uc.retired && uc.pending == 0 && !uc.done {
		uc.done = true
		return true
	}
	return false
}

// shutdown closes uc at once, failing its queries with KindNetwork.
func (uc *udpConn) shutdown(cause error) {
	uc.mu.Lock()
	if uc.done {
		uc.mu.Unlock()
		return
	}
	uc.done = true
	var orphans []*waiter
	for _, w := range uc.waiters {
		switch {
		case w == nil:
		case w.orphan:
			<-uc.u.sem
			orphans = append(orphans, w)
		default:
			w.ch <- reply{err: w.q.fail(KindNetwork, cause)}
		}
	}
	uc.u.waiting.Add(int64(-uc.pending))
	uc.waiters, uc.pending, uc.expiries = nil, 0, nil
	uc.mu.Unlock()
	if len(orphans) > 0 && !errors.Is(cause, net.ErrClosed) {
		// Refused (ICMP), unreachable: not our own Close. A lookup's
		// own query counts in exchangeUDP.
		uc.u.failed(cause)
	}
	for _, w := range orphans {
		uc.u.c.settleLate(w, reply{err: w.q.fail(KindNetwork, cause)})
	}
	uc.close()
}

// close closes the socket, which ends its reader, and forgets it.
func (uc *udpConn) close() {
	_ = uc.conn.Close()
	uc.u.unslot(uc)
}

func (u *upstream) unslot(uc *udpConn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, s := range u.slots {
		if s == uc {
			u.slots[i] = nil
		}
	}
	delete(u.open, uc)
	delete(u.live, uc)
}

// read is uc's reader goroutine: it hands each datagram to the query
// with its ID until the socket fails or is closed.
//
// It reads one datagram a call. recvmmsg(2) (x/net's ReadBatch, 16
// buffers) was measured in session 5: the cold benchmarks' replies come
// in bursts of 9 to 12 a call, yet neither the reader's CPU nor the
// process's changed beyond the noise; the kernel's work per datagram
// (about 1.3 µs on the test machine) dominates the system call's, and
// ReadBatch allocates the source address of every datagram.
func (uc *udpConn) read(tracked bool) {
	defer func() {
		uc.u.c.reading.Add(-1)
		if tracked {
			uc.u.c.readers.Done()
		}
	}()
	for {
		n, err := uc.conn.Read(uc.buf[:])
		if err != nil {
			uc.shutdown(err) // nothing left to fail if uc was closed on purpose
			return
		}
		uc.u.answered()
		uc.dispatch(uc.buf[:n])
	}
}

// dispatch checks one datagram against the query with its ID (decodeReply)
// and hands it over, unless it does not match: the query then keeps
// waiting and remembers the mismatch.
func (uc *udpConn) dispatch(b []byte) {
	id := -1
	if len(b) >= 2 {
		id = int(binary.BigEndian.Uint16(b))
	}
	uc.mu.Lock()
	w, used := uc.waiters[uint16(id)]
	if id < 0 || !used {
		if !uc.done {
			uc.strays++
			uc.strayID = id
		}
		uc.mu.Unlock()
		return
	}
	if w == nil { // a late or repeated reply to a query that has ended
		uc.mu.Unlock()
		return
	}
	q := w.q
	uc.mu.Unlock()

	var r reply
	if len(b) > UDPSize {
		r.err = q.fail(KindMalformed, fmt.Errorf("UDP reply larger than the advertised %d octets", UDPSize))
	} else {
		r.m, r.err = decodeReply(b, &q, true)
	}

	late := false
	uc.mu.Lock()
	// w may have given up meanwhile: gone, or replaced by its orphan (IDs
	// are never reused on a socket, so nothing else takes its place).
	if cur := uc.waiters[q.id]; cur != nil && (cur == w || cur.orphan) {
		w = cur
		switch {
		case errors.Is(r.err, errMismatch):
			w.mismatch = r.err
		case w.orphan:
			uc.endLocked(q.id)
			late = true
		default:
			uc.endLocked(q.id)
			if r.err == nil { // the view moves from the reader's buffer to w's
				r.m.b = w.rbuf[:copy(w.rbuf[:], b)]
			}
			w.ch <- r
		}
	}
	drained := uc.drainedLocked()
	uc.mu.Unlock()
	if late {
		uc.u.c.settleLate(w, r)
	}
	if drained {
		uc.close()
	}
}
