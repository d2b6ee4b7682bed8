// Package stages runs authpipe's verification of one message: parse it once,
// check SPF (RFC 7208), DKIM (RFC 6376, 8301, 8463) and ARC (RFC 8617)
// concurrently, then DMARC (RFC 9989, or RFC 7489 as a mode), and return a
// verdict.Verdict with its Authentication-Results (RFC 8601).
//
// The engine is pure in the sense the pipeline relies on: given the message
// bytes, the SMTP envelope, a resolver and a clock it returns a verdict. It
// starts no long-lived goroutines, reads no files and knows nothing of
// Kafka, so `authpipe verify`, `run`, `rescore` and `bench` share it.
package stages

import (
	"context"
	"net/netip"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
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

// Engine verifies messages. It is safe for concurrent use; one Engine
// serves a whole worker pool.
type Engine struct {
	resolver   resolvercache.Resolver
	now        func() time.Time
	authservID string
	dnsBudget  time.Duration
	spf        spf.Checker
}

// Option configures an Engine.
type Option func(*Engine)

// WithClock sets the clock checks are judged against (signature expiry,
// SPF's %{t}). Re-scoring archived mail passes the arrival time.
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// WithAuthServID sets the authserv-id of Authentication-Results (RFC 8601
// 2.5). Default "authpipe".
func WithAuthServID(id string) Option { return func(e *Engine) { e.authservID = id } }

// WithDNSBudget bounds the time all DNS work for one message may take
// (default 10s). When it runs out, checks still waiting on DNS report
// temperror.
func WithDNSBudget(d time.Duration) Option { return func(e *Engine) { e.dnsBudget = d } }

// WithSPFLimits sets the RFC 7208 4.6.4 limits: DNS-querying terms
// (default 10) and void lookups (default 2).
func WithSPFLimits(lookups, voids int) Option {
	return func(e *Engine) {
		e.spf.MaxLookups = lookups
		e.spf.MaxVoidLookups = voids
	}
}

// New returns an Engine that resolves through res.
func New(res resolvercache.Resolver, opts ...Option) *Engine {
	e := &Engine{
		resolver:   res,
		now:        time.Now,
		authservID: "authpipe",
		dnsBudget:  10 * time.Second,
	}
	for _, o := range opts {
		o(e)
	}
	e.spf.Resolver = res
	e.spf.Hostname = e.authservID
	e.spf.Now = e.now
	return e
}

// Verify evaluates one message. It always returns a verdict: problems with
// the message or with DNS become permerror or temperror results in it.
func (e *Engine) Verify(ctx context.Context, raw []byte, env Envelope) *verdict.Verdict {
	ctx, cancel := context.WithTimeout(ctx, e.dnsBudget)
	defer cancel()
	now := e.now()
	v := &verdict.Verdict{
		Version:     verdict.SchemaVersion,
		EvaluatedAt: now.UTC(),
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
	v.SPF = e.checkSPF(ctx, env)
	v.AuthenticationResults = verdict.AuthenticationResults(e.authservID, v)
	return v
}

func (e *Engine) checkSPF(ctx context.Context, env Envelope) *verdict.SPF {
	if !env.ClientIP.IsValid() {
		return &verdict.SPF{Result: string(spf.None), Identity: "mailfrom", Error: "no client IP in the envelope"}
	}
	o := e.spf.Verify(ctx, spf.Request{IP: env.ClientIP, HELO: env.HELO, MailFrom: env.MailFrom})
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
