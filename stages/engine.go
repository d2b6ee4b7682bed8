// Package stages runs authpipe's verification of one message: parse it once
// (RFC 5322), check SPF (RFC 7208), DKIM (RFC 6376, 8301, 8463) and ARC
// (RFC 8617) with their DNS lookups overlapping, then DMARC (RFC 9989, or
// RFC 7489 as a mode), and return a verdict.Verdict with its
// Authentication-Results (RFC 8601).
//
// The engine is pure in the sense the pipeline relies on: given the message
// bytes, the SMTP envelope, a resolver and a clock it returns a verdict. It
// starts no long-lived goroutines, reads no files and knows nothing of
// Kafka, so `authpipe verify`, `run`, `rescore` and `bench` share it.
package stages

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/dmarc"
	"github.com/authpipe/authpipe/stages/internal/judgetime"
	"github.com/authpipe/authpipe/stages/message"
	"github.com/authpipe/authpipe/stages/spf"
	"github.com/authpipe/authpipe/stages/verdict"
)

// Envelope is the SMTP envelope of one message.
type Envelope struct {
	// ClientIP is the address of the SMTP client. Invalid (zero) when
	// unknown, in which case SPF cannot be evaluated.
	ClientIP netip.Addr
	HELO     string
	// MailFrom is the reverse path without angle brackets; "" is the null
	// sender.
	MailFrom   string
	RcptTo     []string
	ReceivedAt time.Time
}

// ParseClientIP parses the SMTP client's address as an envelope carries
// it, the one way every input (Kafka record headers, produce, verify)
// reads it: surrounding space is ignored, an IPv4-mapped IPv6 address
// becomes the IPv4 address it maps (SPF's ip4 mechanisms then match it),
// and an IPv6 zone is dropped: it names an interface of the receiving
// host, not part of the client's address, and netip never matches a
// zoned address against a prefix, so SPF's ip6 mechanisms would all fail.
func ParseClientIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, err
	}
	return ip.Unmap().WithZone(""), nil
}

// Engine verifies messages. It is safe for concurrent use; one Engine
// serves a whole worker pool, and its DKIM key cache is shared by all.
type Engine struct {
	now        func() time.Time
	authservID string
	dnsBudget  time.Duration
	limits     message.Limits
	spf        spf.Checker
	dkim       dkim.Verifier
	arc        arc.Validator
	dmarc      dmarc.Evaluator
	helpers    *helpers
	pre        prefetcher // res, if it can ask without waiting: for prefetch
	keyEntries int        // the DKIM key cache's bound (WithKeyCacheEntries)
	// judgeAtArrival: see WithJudgeAtArrival.
	judgeAtArrival bool
}

// Option configures an Engine.
type Option func(*Engine)

// WithJudgeAtArrival judges each message whose envelope has a ReceivedAt as
// of that time instead of the engine's clock: DKIM and ARC x= and t=, SPF's
// %{t}. It is for re-scoring archived mail through the pipeline, where
// every message arrived at its own time. The verdict's evaluated_at, the
// time its checks were judged as of, is then the arrival time, as with
// WithClock; caches keep the wall clock.
func WithJudgeAtArrival(on bool) Option { return func(e *Engine) { e.judgeAtArrival = on } }

// WithClock sets the clock checks are judged against (DKIM x= and t=, SPF's
// %{t}). Re-scoring one archived message passes its arrival time (verify
// --at); a stream of them, each with its own, uses WithJudgeAtArrival.
// Caches keep using the wall clock.
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// WithAuthServID sets the authserv-id of Authentication-Results (RFC 8601
// 2.5). Default "authpipe".
func WithAuthServID(id string) Option { return func(e *Engine) { e.authservID = id } }

// WithDNSBudget bounds the time all DNS work for one message may take
// (default 10s). When it runs out, checks still waiting on DNS report
// temperror.
func WithDNSBudget(d time.Duration) Option { return func(e *Engine) { e.dnsBudget = d } }

// WithMessageLimits bounds message size, header count and header field
// size (defaults in package message: 64 MiB, 1000, 64 KiB). A message over a
// bound gets a verdict with permerror results, not a crash.
func WithMessageLimits(l message.Limits) Option { return func(e *Engine) { e.limits = l } }

// WithSPFLimits sets the RFC 7208 4.6.4 limits: DNS-querying terms
// (default 10) and void lookups (default 2).
func WithSPFLimits(lookups, voids int) Option {
	return func(e *Engine) {
		e.spf.MaxLookups = lookups
		e.spf.MaxVoidLookups = voids
	}
}

// DKIMPolicy is the local DKIM policy; zero fields take the defaults of
// dkim.Verifier (5 signatures, no rsa-sha1, l= rejected, From stack check).
type DKIMPolicy struct {
	MaxSignatures int
	AllowSHA1     bool
	// BodyLength is "reject" or "honour" for signatures with l=.
	BodyLength string
	// HeaderStack names the fields whose unsigned extra instances turn a
	// passing signature into policy; nil means From only.
	HeaderStack []string
}

// WithDKIMPolicy sets the DKIM policy.
func WithDKIMPolicy(p DKIMPolicy) Option {
	return func(e *Engine) {
		e.dkim.MaxSignatures = p.MaxSignatures
		e.dkim.AllowSHA1 = p.AllowSHA1
		e.dkim.BodyLength = p.BodyLength
		if p.HeaderStack != nil {
			e.dkim.HeaderStack = make(map[string]bool, len(p.HeaderStack))
			for _, h := range p.HeaderStack {
				e.dkim.HeaderStack[h] = true
			}
		}
		e.arc.AllowSHA1 = p.AllowSHA1
	}
}

// WithKeyCacheEntries bounds the DKIM key cache (shared by DKIM and ARC) at
// n keys, and so at dkim.KeyCacheBytesFor(n) bytes (default
// dkim.DefaultKeyCacheEntries, 10,000; 32 MiB). A verifier that sees more
// signing keys than that within their TTLs fetches (from the DNS cache) and
// parses them again. Engine.CacheBytes follows it. n < 1 keeps the default.
func WithKeyCacheEntries(n int) Option {
	return func(e *Engine) {
		if n >= 1 {
			e.keyEntries = n
		}
	}
}

// WithARCMaxSets bounds the ARC chain length (default 50, RFC 8617 4.2.1).
func WithARCMaxSets(n int) Option { return func(e *Engine) { e.arc.MaxSets = n } }

// WithDMARC selects the DMARC mode (dmarc.ModeRFC9989 by default, or
// dmarc.ModeRFC7489), the local overrides and, for RFC 7489 pct sampling,
// the random source (nil: math/rand/v2).
func WithDMARC(mode dmarc.Mode, overrides dmarc.Overrides, random func() float64) Option {
	return func(e *Engine) {
		e.dmarc.Mode = mode
		e.dmarc.Overrides = overrides
		e.dmarc.Rand = random
	}
}

// New returns an Engine that resolves through res (normally a
// resolvercache.Cache).
func New(res resolvercache.Resolver, opts ...Option) *Engine {
	e := &Engine{
		now:        time.Now,
		authservID: "authpipe",
		dnsBudget:  10 * time.Second,
		helpers:    newHelpers(helperIdle),
	}
	for _, o := range opts {
		o(e)
	}
	keys := &dkim.KeyFetcher{Resolver: res, MaxEntries: e.keyEntries}
	e.spf.Resolver = res
	e.spf.Hostname = e.authservID
	e.spf.Now = e.now
	e.dkim.Keys = keys
	e.dkim.Now = e.now
	e.arc.Keys = keys
	e.arc.Now = e.now
	e.dmarc.Resolver = res
	e.pre, _ = res.(prefetcher)
	if e.pre != nil {
		// A message signed by several domains, or forwarded through
		// several sealers, seen for the first time asks for their other
		// keys beside the first.
		e.dkim.Prefetch, e.arc.Prefetch = e.prefetch, e.prefetch
	}
	return e
}

// Verify evaluates one message. It always returns a verdict: problems with
// the message or with DNS become permerror or temperror results in it. A
// bug that panics reaches the caller's goroutine, whichever check it was
// in (PanicError).
func (e *Engine) Verify(ctx context.Context, raw []byte, env Envelope) *verdict.Verdict {
	judgedAt := e.now()
	if e.judgeAtArrival && !env.ReceivedAt.IsZero() {
		judgedAt = env.ReceivedAt
		ctx = judgetime.With(ctx, judgedAt)
	}
	budget := withBudget(ctx, e.dnsBudget)
	defer budget.cancel()
	ctx = budget
	v := &verdict.Verdict{
		Version:     verdict.SchemaVersion,
		EvaluatedAt: judgedAt.UTC(),
		Envelope: verdict.Envelope{
			HELO:       env.HELO,
			MailFrom:   env.MailFrom,
			RcptTo:     env.RcptTo,
			ReceivedAt: env.ReceivedAt,
		},
	}
	if env.ClientIP.IsValid() {
		v.Envelope.ClientIP = env.ClientIP.String()
	}

	msg, perr := message.Parse(raw, e.limits)
	if perr != nil {
		v.Message = &verdict.MessageProblem{Error: perr.Error()}
		var pe *message.ParseError
		if errors.As(perr, &pe) {
			v.Message.Kind = pe.Kind
		}
		// SPF needs only the envelope; everything else needs the message.
		v.SPF = e.checkSPF(ctx, env)
		v.DMARC = &verdict.DMARC{Result: dmarc.ResultPermError, Disposition: "none",
			Mode: e.dmarcMode(), Error: "dmarc: message not evaluated: " + perr.Error()}
		v.AuthenticationResults = verdict.AuthenticationResults(e.authservID, v)
		return v
	}
	if ids := msg.FieldsByKey("message-id"); len(ids) > 0 {
		v.MessageID = strings.TrimSpace(string(ids[0].Value))
	}
	for _, a := range msg.From {
		v.HeaderFrom = append(v.HeaderFrom, a.Domain)
	}

	// SPF, DKIM and ARC are independent; their DNS waits overlap so the
	// message waits for the slowest chain, not the sum of them. DKIM stays
	// on this goroutine: its RSA path is stack-hungry, and a fresh
	// goroutine would pay for growing its stack on every message. SPF runs
	// here after DKIM when the resolver has its first record cached or on
	// its way (prefetcher: asked now, answered while DKIM waits for its
	// key), so a message hands nothing to another goroutine (that hand-off
	// cost about 5 µs a message in the pipeline, and a quarter of the
	// engine's CPU in BenchmarkEngineTypical, where the helper's core went
	// idle between messages). SPF's later lookups (include, a, mx) cannot
	// start before its first record has come, so they wait no longer here
	// than on a helper. Otherwise SPF runs on a reused helper goroutine
	// (helpers). ARC gets a helper only when there is a chain to validate.
	var (
		spfRes *verdict.SPF
		arcRes arc.Result
	)
	spfHere := false
	if e.pre != nil {
		name, ok := spf.FirstQuery(spfRequest(env))
		spfHere = !ok || e.pre.Prefetch(name, dns.TypeTXT)
	}
	arcHelper := msg.Count("arc-seal") > 0
	h := newHelped(!spfHere || arcHelper)
	if !spfHere {
		h.wg.Add(1)
		e.helpers.Go(func() {
			defer h.wg.Done()
			defer carryPanic(&h.spfPanic, "spf")
			h.spf = e.checkSPF(ctx, env)
		})
	}
	if len(msg.From) > 0 {
		if name, ok := dmarc.FirstQuery(msg.From[0].Domain); ok {
			e.prefetch(ctx, []string{name})
		}
	}
	if arcHelper {
		h.wg.Add(1)
		e.helpers.Go(func() {
			defer h.wg.Done()
			defer carryPanic(&h.arcPanic, "arc")
			h.arc = e.arc.Validate(ctx, msg)
		})
	} else {
		arcRes = e.arc.Validate(ctx, msg) // no chain: returns none without DNS
	}
	dkimRes := e.dkim.Verify(ctx, msg)
	if spfHere {
		spfRes = e.checkSPF(ctx, env)
	}
	if h != nil {
		h.wg.Wait()
		if h.spfPanic != nil {
			panic(h.spfPanic)
		}
		if h.arcPanic != nil {
			panic(h.arcPanic)
		}
		if !spfHere {
			spfRes = h.spf
		}
		if arcHelper {
			arcRes = h.arc
		}
	}

	v.SPF = spfRes
	v.DKIM = dkimVerdicts(dkimRes)
	v.ARC = arcVerdict(arcRes)
	v.DMARC = e.checkDMARC(ctx, env, v, dkimRes, arcRes)
	v.AuthenticationResults = verdict.AuthenticationResults(e.authservID, v)
	return v
}

// helped is what Verify shares with the checks it runs on helpers: their
// results, and a panic to raise again on Verify's goroutine (PanicError).
// One is allocated only for a message that starts a helper; variables the
// helpers' closures captured would each be allocated for every message.
type helped struct {
	wg                 sync.WaitGroup
	spf                *verdict.SPF
	arc                arc.Result
	spfPanic, arcPanic *PanicError
}

// newHelped returns a helped if need, else nil. It is a function so that
// Verify's variable is assigned once, and its closures capture it by value.
func newHelped(need bool) *helped {
	if !need {
		return nil
	}
	return &helped{}
}

// prefetch asks early for those of names (TXT records) the resolver does
// not hold: the first author domain's _dmarc record (policy discovery's
// first query), and the keys a DKIM or ARC verifier offers (those it will
// need after the one it is about to fetch). The check that needs one later
// finds it cached or joins the lookup in flight, so a message from domains
// seen for the first time does not wait for them one after another. Only
// resolvers that can ask without waiting (resolvercache.Cache) get
// prefetches: without that a warm message would pay for asking.
//
// The cache sends each query on this goroutine and its reader caches the
// reply (resolvercache.Cache.Prefetch), so nothing waits for it here. A
// name the cache cannot start that way (no in-flight slot free, an
// upstream that is not its client) is looked up on a single helper, one
// after another: one helper, not one per name, bounds what a message with
// many signatures holds while it waits (each goroutine is a stack of about
// 12 KiB). Those lookups end with ctx, when Verify returns.
func (e *Engine) prefetch(ctx context.Context, names []string) {
	if e.pre == nil {
		return
	}
	var todo []string
	for _, n := range names {
		if !e.pre.Prefetch(n, dns.TypeTXT) {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return
	}
	e.helpers.Go(func() {
		// A panic here would end the process, and there is no caller
		// to carry it to: it is dropped. The check that needs the name
		// asks for it again on a goroutine whose panic reaches Verify's
		// caller, and the cache ends a lookup that panicked so that
		// those waiting for it ask again (resolvercache.Cache).
		defer func() { _ = recover() }()
		for _, n := range todo {
			if ctx.Err() != nil {
				return
			}
			_, _ = e.dmarc.Resolver.Lookup(ctx, n, dns.TypeTXT)
		}
	})
}

// prefetcher is a resolver that can start asking for an answer without
// waiting for it (resolvercache.Cache). Prefetch reports whether the
// answer is cached or on its way; false means neither, and the caller
// asks itself.
type prefetcher interface {
	Prefetch(name string, qtype uint16) bool
}

func (e *Engine) dmarcMode() string {
	if e.dmarc.Mode == "" {
		return string(dmarc.ModeRFC9989)
	}
	return string(e.dmarc.Mode)
}

func (e *Engine) checkSPF(ctx context.Context, env Envelope) *verdict.SPF {
	if !env.ClientIP.IsValid() {
		return &verdict.SPF{Result: string(spf.None), Identity: "mailfrom", Error: "no client IP in the envelope"}
	}
	o := e.spf.Verify(ctx, spfRequest(env))
	return &verdict.SPF{
		Result:      string(o.Result),
		Domain:      o.Domain,
		Identity:    o.Identity,
		Sender:      o.Sender,
		Mechanism:   o.Mechanism,
		Lookups:     o.Lookups,
		VoidLookups: o.VoidLookups,
		Explanation: o.Explanation,
		Error:       o.Err,
	}
}

func spfRequest(env Envelope) spf.Request {
	return spf.Request{IP: env.ClientIP, HELO: env.HELO, MailFrom: env.MailFrom}
}

func dkimVerdicts(rs []dkim.Result) []verdict.DKIM {
	if len(rs) == 0 {
		return nil
	}
	out := make([]verdict.DKIM, len(rs))
	for i, r := range rs {
		d := verdict.DKIM{
			Result:      string(r.Result),
			Domain:      r.Domain,
			Selector:    r.Selector,
			Algorithm:   r.Algorithm,
			KeyBits:     r.KeyBits,
			Identity:    r.Identity,
			HeaderB:     r.BHeader,
			Reason:      r.Reason,
			PartialBody: r.PartialBody,
			Testing:     r.Testing,
		}
		for _, f := range r.UnsignedStack {
			d.UnsignedDuplicates = append(d.UnsignedDuplicates, f.Field)
		}
		out[i] = d
	}
	return out
}

func arcVerdict(r arc.Result) *verdict.ARC {
	a := &verdict.ARC{Result: r.Result, Reason: r.Reason, Instances: r.Instances, OldestPass: r.OldestPass}
	for _, s := range r.Sets {
		a.Sets = append(a.Sets, verdict.ARCSet{
			Instance: s.Instance, Sealer: s.Sealer, Selector: s.Selector,
			CV: s.CV, SealValid: s.SealValid, AuthResults: s.AuthResults,
		})
	}
	return a
}

func (e *Engine) checkDMARC(ctx context.Context, env Envelope, v *verdict.Verdict, dk []dkim.Result, ar arc.Result) *verdict.DMARC {
	in := dmarc.Input{
		FromDomains: v.HeaderFrom,
		ClientIP:    env.ClientIP,
		ARC:         dmarc.ARCInput{Result: ar.Result},
	}
	if s := v.SPF; s != nil {
		// DMARC uses the MAIL FROM identity only (RFC 9989 4.4.2); a null
		// sender was checked as postmaster@HELO, which still counts as
		// the MAIL FROM identity (RFC 7208 2.4).
		in.SPF = dmarc.SPFResult{Result: s.Result, Domain: s.Domain, Scope: "mfrom"}
	}
	for _, r := range dk {
		in.DKIM = append(in.DKIM, dmarc.DKIMResult{Result: string(r.Result), Domain: r.Domain, Selector: r.Selector})
	}
	for _, s := range ar.Sets {
		in.ARC.Sets = append(in.ARC.Sets, dmarc.ARCSet{Instance: s.Instance, Sealer: s.Sealer, AuthResults: s.AuthResults})
	}
	r := e.dmarc.Evaluate(ctx, in)
	d := &verdict.DMARC{
		Result:            r.Result,
		PolicyDomain:      r.PolicyDomain,
		AuthorDomain:      r.AuthorDomain,
		OrgDomain:         r.OrgDomain,
		DiscoveryMethod:   r.DiscoveryMethod,
		Mode:              e.dmarcMode(),
		SPFAligned:        r.SPFAligned,
		DKIMAligned:       r.DKIMAligned,
		AlignedDKIMDomain: r.AlignedDKIMDomain,
		AppliedPolicy:     r.AppliedPolicy,
		Disposition:       r.Disposition,
		Error:             r.Err,
	}
	if p := r.Policy; p != nil {
		d.Policy = &verdict.Policy{Domain: p.Domain, P: p.P, SP: p.SP, NP: p.NP, ADKIM: p.ADKIM, ASPF: p.ASPF,
			Testing: p.Testing, PSD: p.PSD, Pct: p.Pct, FO: p.FO, RUA: p.RUA, RUF: p.RUF}
	}
	for _, rs := range r.Reasons {
		d.Reasons = append(d.Reasons, verdict.Reason{Type: rs.Type, Comment: rs.Comment})
	}
	return d
}
