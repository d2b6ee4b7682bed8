package resolvercache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dgraph-io/ristretto/v2"
)

// Cache defaults. Each can be changed with a CacheOption.
const (
	DefaultCacheBytes     = 64 << 20 // WithMaxBytes
	DefaultMinTTL         = 30 * time.Second
	DefaultMaxTTL         = time.Hour
	DefaultMinNegativeTTL = 30 * time.Second
	DefaultMaxNegativeTTL = 15 * time.Minute
	DefaultErrorTTL       = 2 * time.Second
	MaxErrorTTL           = 30 * time.Second
	DefaultFillTimeout    = 30 * time.Second

	// entryOverhead approximates the bytes of one entry besides its strings
	// and slices: the entry, the Answer, ristretto's item and map slots.
	entryOverhead = 320
	minCacheBytes = 16 << 10
)

// Cache is a byte-bounded cache in front of any Resolver, on
// github.com/dgraph-io/ristretto/v2 (TinyLFU admission, sampled LFU
// eviction). It implements Resolver.
//
//   - Answers with records are kept for their TTL clamped to [MinTTL, MaxTTL]
//     (default 30s to 1h).
//   - NXDOMAIN and NODATA answers are kept for their negative TTL (RFC 2308
//     5: min of SOA TTL and SOA MINIMUM, as computed by the backend) clamped
//     to [MinNegativeTTL, MaxNegativeTTL] (default 30s to 15m).
//   - Errors other than KindCanceled and KindBadName (SERVFAIL, timeouts,
//     network errors, malformed replies, CNAME loops) are kept for ErrorTTL
//     (default 2s, at most 30s; RFC 2308 7 allows up to 5 minutes), so a
//     failing domain is not hammered by every message naming it.
//
// The expiry is stored with the entry and checked against the cache's clock
// on every hit; ristretto's own TTL only collects garbage. A hit returns the
// shared *Answer stored at insert: when the TTL was clamped it is a copy
// made once with the clamped TTL, so Remaining(now) counts down correctly.
//
// Identical concurrent misses (same canonical name and type) share one
// upstream lookup. The first caller (the leader) runs it on its own
// goroutine under its own context, bounded by the fill timeout (default
// 30s); the others wait for its result. Every caller returns as soon as its
// own context ends. If the leader's context ends first, its lookup stops,
// nothing is cached, and one of the waiters asks again; unless the upstream
// is a Client: the wire query then stays on the wire until its reply or its
// timeout, the flight stays open for misses to join meanwhile, and what the
// query comes to is cached as any fill's outcome (leftRunning, settled).
// (A goroutine per shared lookup, as golang.org/x/sync/singleflight.DoChan
// starts, grew a fresh stack through the DNS client on every miss: 10% of
// the CPU of a cold-cache run.)
//
// Ristretto inserts asynchronously and may drop or refuse an insert; the
// cache is then merely colder, never wrong. So that a lookup made just
// after a fill (a message's second query for a name its first one filled,
// or a prefetch's) does not go upstream again while ristretto's insert is
// still buffered, the last keptFills filled entries stay findable in the
// flights map, each until keptFills later fills push it out; expiry is
// checked on them as on any hit. The cost of an entry is its
// approximate size in bytes and the total is bounded by WithMaxBytes
// (default 64 MiB).
type Cache struct {
	up      Resolver
	rc      *ristretto.Cache[uint64, *entry]
	fmu     sync.Mutex
	flights map[string]*flight    // key: canonical name + type; one per upstream lookup in progress, or kept after its fill
	kept    [keptFills]keptFlight // ring of filled flights left in flights, under fmu
	keptN   int                   // fills so far; the next goes to kept[keptN%keptFills]
	clock   func() time.Time
	metrics *Metrics

	minTTL, maxTTL       time.Duration
	minNegTTL, maxNegTTL time.Duration
	errTTL               time.Duration
	fillTimeout          time.Duration

	joined atomic.Int64 // misses that have joined a flight; for tests
}

// entry is one cached outcome. name and qtype guard against 64-bit hash
// collisions.
type entry struct {
	name    string
	qtype   uint16
	ans     *Answer
	err     error
	expires time.Time
}

// CacheOption configures a Cache.
type CacheOption func(*cacheConfig) error

type cacheConfig struct {
	maxBytes             int64
	minTTL, maxTTL       time.Duration
	minNegTTL, maxNegTTL time.Duration
	errTTL               time.Duration
	fillTimeout          time.Duration
	clock                func() time.Time
	metrics              *Metrics
}

// WithMaxBytes bounds the approximate bytes the cache holds (default 64 MiB,
// at least 16 KiB).
func WithMaxBytes(n int64) CacheOption {
	return func(c *cacheConfig) error {
		if n < minCacheBytes {
			return fmt.Errorf("WithMaxBytes: %d is under %d", n, minCacheBytes)
		}
		c.maxBytes = n
		return nil
	}
}

// WithTTLBounds clamps the TTL of answers with records (default 30s, 1h).
func WithTTLBounds(lo, hi time.Duration) CacheOption {
	return func(c *cacheConfig) error {
		if lo < 0 || hi < lo {
			return fmt.Errorf("WithTTLBounds: bad range [%v, %v]", lo, hi)
		}
		c.minTTL, c.maxTTL = lo, hi
		return nil
	}
}

// WithNegativeTTLBounds clamps the TTL of NXDOMAIN and NODATA answers
// (default 30s, 15m).
func WithNegativeTTLBounds(lo, hi time.Duration) CacheOption {
	return func(c *cacheConfig) error {
		if lo < 0 || hi < lo {
			return fmt.Errorf("WithNegativeTTLBounds: bad range [%v, %v]", lo, hi)
		}
		c.minNegTTL, c.maxNegTTL = lo, hi
		return nil
	}
}

// WithErrorTTL sets how long failures are cached (default 2s, at most 30s,
// 0 disables).
func WithErrorTTL(d time.Duration) CacheOption {
	return func(c *cacheConfig) error {
		if d < 0 || d > MaxErrorTTL {
			return fmt.Errorf("WithErrorTTL: %v is outside [0, %v]", d, MaxErrorTTL)
		}
		c.errTTL = d
		return nil
	}
}

// WithFillTimeout bounds the shared upstream lookup of a miss (default 30s).
func WithFillTimeout(d time.Duration) CacheOption {
	return func(c *cacheConfig) error {
		if d <= 0 {
			return fmt.Errorf("WithFillTimeout: %v is not positive", d)
		}
		c.fillTimeout = d
		return nil
	}
}

// WithCacheClock sets the clock used for expiry (default time.Now).
func WithCacheClock(now func() time.Time) CacheOption {
	return func(c *cacheConfig) error {
		if now == nil {
			return errors.New("WithCacheClock: nil clock")
		}
		c.clock = now
		return nil
	}
}

// WithCacheMetrics makes the cache count hits, misses, shared misses,
// evictions and its cost (cache_cost_bytes reads the last cache made
// with m).
func WithCacheMetrics(m *Metrics) CacheOption {
	return func(c *cacheConfig) error { c.metrics = m; return nil }
}

// NewCache builds a Cache in front of upstream.
func NewCache(upstream Resolver, opts ...CacheOption) (*Cache, error) {
	if upstream == nil {
		return nil, errors.New("resolvercache: NewCache: nil upstream")
	}
	cfg := cacheConfig{
		maxBytes:    DefaultCacheBytes,
		minTTL:      DefaultMinTTL,
		maxTTL:      DefaultMaxTTL,
		minNegTTL:   DefaultMinNegativeTTL,
		maxNegTTL:   DefaultMaxNegativeTTL,
		errTTL:      DefaultErrorTTL,
		fillTimeout: DefaultFillTimeout,
		clock:       time.Now,
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("resolvercache: %w", err)
		}
	}
	c := &Cache{
		up:          upstream,
		clock:       cfg.clock,
		metrics:     cfg.metrics,
		minTTL:      cfg.minTTL,
		maxTTL:      cfg.maxTTL,
		minNegTTL:   cfg.minNegTTL,
		maxNegTTL:   cfg.maxNegTTL,
		errTTL:      cfg.errTTL,
		fillTimeout: cfg.fillTimeout,
		flights:     map[string]*flight{},
	}
	// Ristretto wants about ten counters per item it may hold; entries are
	// a few hundred bytes, so one counter per 32 bytes of budget.
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		NumCounters:        max(cfg.maxBytes/32, 1024),
		MaxCost:            cfg.maxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		Metrics:            cfg.metrics != nil,
		OnEvict:            func(*ristretto.Item[*entry]) { cfg.metrics.cacheEvicted() },
	})
	if err != nil {
		return nil, fmt.Errorf("resolvercache: ristretto: %w", err)
	}
	c.rc = rc
	cfg.metrics.costFrom(c.Cost)
	if cl, ok := upstream.(*Client); ok {
		cl.late.CompareAndSwap(nil, c) // the first Cache in front of cl
	}
	return c, nil
}

// Wait blocks until pending inserts are applied (for tests).
func (c *Cache) Wait() { c.rc.Wait() }

// Close stops the cache's background goroutines. Lookups after Close go
// straight to the upstream.
func (c *Cache) Close() { c.rc.Close() }

// Cost returns the approximate bytes held, when the cache has metrics
// (WithCacheMetrics), else -1.
func (c *Cache) Cost() int64 {
	if c.rc.Metrics == nil {
		return -1
	}
	return int64(c.rc.Metrics.CostAdded() - c.rc.Metrics.CostEvicted())
}

// maxKey is the longest canonical name plus two octets of type.
const maxKey = 253 + 2

// cacheKey writes the canonical form of name (lower case, no trailing dot)
// and the type into buf and returns its length and hash. ok is false for a
// name too long to be valid.
func cacheKey(buf *[maxKey]byte, name string, qtype uint16) (n int, h uint64, ok bool) {
	if len(name) > 0 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if len(name) > 253 {
		return 0, 0, false
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		buf[i] = ch
	}
	n = len(name)
	buf[n] = byte(qtype >> 8)
	buf[n+1] = byte(qtype)
	return n, xxhash.Sum64(buf[:n+2]), true
}

// Lookup implements Resolver.
func (c *Cache) Lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	var buf [maxKey]byte
	n, h, ok := cacheKey(&buf, name, qtype)
	if !ok {
		ans, err := c.up.Lookup(ctx, name, qtype)
		c.metrics.lookup("cache", err)
		return ans, err
	}
	if e, found := c.rc.Get(h); found && e.qtype == qtype && e.name == string(buf[:n]) &&
		c.clock().Before(e.expires) {
		c.metrics.cacheHit()
		c.metrics.lookup("cache", e.err)
		return e.ans, e.err
	}
	key := string(buf[:n+2])
	ans, err := c.miss(ctx, key[:n], qtype, h, key)
	c.metrics.lookup("cache", err)
	return ans, err
}

type fillResult struct {
	ans *Answer
	err error
}

// flight is one upstream lookup shared by identical misses.
type flight struct {
	// done is closed when res is set. The first miss to join makes it,
	// under Cache.fmu; most flights (a cold cache, a domain per message)
	// have no one joining and need none.
	done chan struct{}
	res  fillResult
	// abandoned: the leader's context ended before the answer came, so res
	// is its cancellation, not an answer; waiters ask again.
	abandoned bool
	// orphan: the leader's wire query stays on the wire after the leader
	// gave up (Client.leave, leftRunning). The flight then stays open, and
	// new misses join it, until settled ends it with the query's outcome.
	// Under fmu, as are the fields below.
	orphan bool
	// leaderGone: the leader has returned; settled may end the flight.
	// Before that it leaves the outcome in late for the leader to end it.
	leaderGone bool
	late       *lateOutcome
	// stored is the entry the fill gave ristretto, set under fmu when
	// the flight ends and stays in flights as a kept fill; nil while in
	// progress, and for outcomes that are not cached.
	stored *entry
}

// keptFills is how many filled entries stay findable in the flights map
// after their fill (see Cache). Ristretto applies a buffered insert within
// microseconds to milliseconds, or drops it when its buffers are full. A
// prefetched answer (Prefetch) waits for its use as long as its message
// waits for CPU: with 1,024 cold messages in flight, about 100 ms, some
// 3,000 fills later. At 1,024 kept fills BenchmarkPipelineColdCache asked
// 3.03–3.06 queries a message where 3 suffice (an answer neither kept nor
// yet in ristretto is asked again); at 4,096, exactly 3 (session 19). A
// kept fill is a flight and its key: under 1 MiB in all.
const keptFills = 4096

// keptFlight is a slot of Cache.kept: a filled flight and its key.
type keptFlight struct {
	key string
	f   *flight
}

// keep leaves f, filled, in the flights map, pushing out the oldest kept
// fill if it is still there; under fmu.
func (c *Cache) keep(key string, f *flight) {
	slot := &c.kept[c.keptN%keptFills]
	if old := slot.f; old != nil && c.flights[slot.key] == old {
		delete(c.flights, slot.key)
	}
	*slot = keptFlight{key: key, f: f}
	c.keptN++
}

func (c *Cache) miss(ctx context.Context, canon string, qtype uint16, h uint64, key string) (*Answer, error) {
	for {
		if err := ctx.Err(); err != nil {
			c.metrics.cacheMiss(false)
			return nil, &Error{Name: canon, Type: qtype, Kind: KindCanceled, Err: err}
		}
		c.fmu.Lock()
		f := c.flights[key]
		if f != nil && f.stored != nil {
			// A kept fill: ristretto has not shown it yet, or has
			// dropped it.
			if e := f.stored; c.clock().Before(e.expires) {
				c.fmu.Unlock()
				c.metrics.cacheHit()
				return e.ans, e.err
			}
			delete(c.flights, key) // expired: ask again
			f = nil
		}
		if f != nil {
			// In flight (a finished flight is kept with stored set, or
			// gone), so its leader has not yet taken done.
			if f.done == nil {
				f.done = make(chan struct{})
			}
			done := f.done
			c.fmu.Unlock()
			c.joined.Add(1)
			select {
			case <-done:
				if f.abandoned {
					continue
				}
				c.metrics.cacheMiss(true)
				return f.res.ans, f.res.err
			case <-ctx.Done():
				c.metrics.cacheMiss(false)
				return nil, &Error{Name: canon, Type: qtype, Kind: KindCanceled, Err: ctx.Err()}
			}
		}
		f = &flight{}
		c.flights[key] = f
		c.fmu.Unlock()
		c.joined.Add(1)
		res, stored := c.fillEnding(ctx, key, f, canon, qtype, h)
		c.fmu.Lock()
		var done chan struct{}
		switch {
		case f.orphan && stored == nil && f.late != nil:
			done = c.endLocked(key, f, f.late.res, f.late.stored) // settled already
		case f.orphan && stored == nil:
			f.leaderGone = true // settled ends f
		default:
			f.abandoned = ctx.Err() != nil && res.err != nil
			done = c.endLocked(key, f, res, stored)
		}
		c.fmu.Unlock()
		if done != nil {
			close(done)
		}
		c.metrics.cacheMiss(false)
		return res.ans, res.err
	}
}

// fillEnding is fill for the leader of flight f: if fill panics (a bug),
// it ends f as abandoned, so that the lookups waiting for it ask again
// rather than wait on a flight nobody will end, and later ones do not join
// it; then the panic goes on to the leader's caller.
func (c *Cache) fillEnding(ctx context.Context, key string, f *flight, canon string, qtype uint16, h uint64) (res fillResult, stored *entry) {
	filled := false
	defer func() {
		if filled {
			return
		}
		c.fmu.Lock()
		var done chan struct{}
		if c.flights[key] == f {
			f.abandoned = true
			done = c.endLocked(key, f, fillResult{}, nil)
		}
		c.fmu.Unlock()
		if done != nil {
			close(done)
		}
	}()
	res, stored = c.fill(ctx, canon, qtype, h)
	filled = true
	return res, stored
}

// endLocked ends the flight f for key with res, keeping it findable if
// stored is its entry (see keep), and returns the channel to close for its
// waiters, if any; under fmu.
func (c *Cache) endLocked(key string, f *flight, res fillResult, stored *entry) chan struct{} {
	f.res = res
	if stored != nil {
		f.stored = stored
		c.keep(key, f)
	} else {
		delete(c.flights, key)
	}
	return f.done
}

// lateOutcome is what a wire query left running came to (settled).
type lateOutcome struct {
	res    fillResult
	stored *entry
}

// leftRunning is told by the Client that the leader's wire query for
// name and type stays on the wire although the leader gives up
// (Client.leave): its flight stays open until settled. It runs on the
// leader's goroutine, inside its fill, before the query's outcome can come.
func (c *Cache) leftRunning(name string, qtype uint16) {
	var buf [maxKey]byte
	n, _, ok := cacheKey(&buf, name, qtype)
	if !ok {
		return
	}
	c.fmu.Lock()
	if f := c.flights[string(buf[:n+2])]; f != nil && f.stored == nil {
		f.orphan = true
	}
	c.fmu.Unlock()
}

// settled takes the outcome of a wire query left running (leftRunning),
// once for each: an answer or an error, cached as a fill's would be, or
// neither (an alias to follow, a truncated reply): nothing is cached and
// the lookups waiting ask again. It ends the query's flight, or leaves the
// outcome to its leader if the leader has not returned yet.
func (c *Cache) settled(name string, qtype uint16, ans *Answer, err error) {
	var buf [maxKey]byte
	n, h, ok := cacheKey(&buf, name, qtype)
	if !ok {
		return
	}
	canon := string(buf[:n])
	var out lateOutcome
	if ans != nil || err != nil {
		out.res, out.stored = c.outcome(canon, qtype, h, ans, err)
	}
	c.metrics.cacheLate()
	key := string(buf[:n+2])
	c.fmu.Lock()
	f := c.flights[key]
	if f == nil || !f.orphan || f.stored != nil || f.late != nil {
		c.fmu.Unlock() // a flight not waiting for this outcome
		return
	}
	var done chan struct{}
	f.abandoned = ans == nil && err == nil
	if f.leaderGone {
		done = c.endLocked(key, f, out.res, out.stored)
	} else {
		f.late = &out
	}
	c.fmu.Unlock()
	if done != nil {
		close(done)
	}
}

// fill asks the upstream and stores the outcome; stored is the entry given
// to ristretto, nil if the outcome is not cached. The lookup is bounded by
// the fill timeout unless ctx ends sooner anyway, as it does under the
// engine's per-message DNS budget: a context of its own would then be a
// cancelCtx for nothing, entered in ctx's children and taken out again.
func (c *Cache) fill(ctx context.Context, canon string, qtype uint16, h uint64) (_ fillResult, stored *entry) {
	fctx := ctx
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > c.fillTimeout {
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, c.fillTimeout)
		defer cancel()
	}
	ans, err := c.up.Lookup(fctx, canon, qtype)
	if err != nil {
		// Declared here: re escapes (errors.As), so it costs an
		// allocation wherever it is declared.
		var re *Error
		if errors.As(err, &re) && re.Kind == KindCanceled {
			if fctx.Err() != nil && ctx.Err() == nil {
				// Our fill timeout, not the caller's context; not
				// cached either.
				err = &Error{Name: canon, Type: qtype, Kind: KindTimeout, Err: fmt.Errorf("cache fill: %w", re)}
			}
			return fillResult{err: err}, nil
		}
	}
	return c.outcome(canon, qtype, h, ans, err)
}

// outcome stores what an upstream lookup came to, unless it is not to be
// cached, and returns it with the entry given to ristretto (nil if none).
func (c *Cache) outcome(canon string, qtype uint16, h uint64, ans *Answer, err error) (_ fillResult, stored *entry) {
	if err == nil && ans == nil {
		err = &Error{Name: canon, Type: qtype, Kind: KindMalformed, Err: errors.New("upstream returned no answer")}
	}
	now := c.clock()
	var e *entry
	var ttl time.Duration
	if err != nil {
		var re *Error
		if !errors.As(err, &re) || re.Kind == KindCanceled || re.Kind == KindBadName {
			return fillResult{err: err}, nil
		}
		if c.errTTL <= 0 {
			return fillResult{err: err}, nil
		}
		ttl = c.errTTL
		e = &entry{name: canon, qtype: qtype, err: err, expires: now.Add(ttl)}
	} else {
		lo, hi := c.minTTL, c.maxTTL
		if ans.Empty() {
			lo, hi = c.minNegTTL, c.maxNegTTL
		}
		d := time.Duration(ans.TTL) * time.Second
		if clamped := min(max(d, lo), hi); clamped != d || ans.Received.IsZero() {
			// One copy at insert; every hit then shares it.
			cp := *ans
			cp.TTL = uint32(clamped / time.Second)
			if cp.Received.IsZero() {
				cp.Received = now
			}
			ans = &cp
			d = time.Duration(cp.TTL) * time.Second
		}
		e = &entry{name: canon, qtype: qtype, ans: ans, expires: ans.Received.Add(d)}
		if ttl = e.expires.Sub(now); ttl <= 0 {
			return fillResult{ans: ans}, nil
		}
	}
	c.rc.SetWithTTL(h, e, entryCost(e), ttl)
	return fillResult{ans: e.ans, err: e.err}, e
}

// entryCost approximates the bytes an entry keeps alive.
func entryCost(e *entry) int64 {
	n := entryOverhead + len(e.name)
	if e.err != nil {
		return int64(n + len(e.err.Error()))
	}
	a := e.ans
	n += len(a.Name)
	for _, s := range a.CNAMEs {
		n += 16 + len(s)
	}
	for _, s := range a.TXT {
		n += 16 + len(s)
	}
	for _, s := range a.Names {
		n += 16 + len(s)
	}
	for _, m := range a.MX {
		n += 24 + len(m.Host)
	}
	n += 24 * len(a.IPs)
	return int64(n)
}

// Compile-time checks that every backend is a Resolver.
var (
	_ Resolver = (*Client)(nil)
	_ Resolver = (*Cache)(nil)
)
