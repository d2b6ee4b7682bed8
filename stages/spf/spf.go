// Package spf implements the Sender Policy Framework check of RFC 7208:
// the check_host() function (section 4) with every mechanism (section 5:
// all, include, a, mx, ptr, ip4, ip6, exists), the redirect and exp
// modifiers (section 6), macro expansion (section 7) and the processing
// limits of section 4.6.4.
//
// All DNS goes through a [resolvercache.Resolver]; the package has no global
// state and reads the clock only through [Checker.Now]. DNS outcomes map to
// results as RFC 7208 4.4 and 5 say: a temporary resolver error
// ([resolvercache.IsTemporary]: timeout, SERVFAIL, the context ending) is
// temperror, except behind ptr (no match, 5.5), a ptr/%{p} name's address
// check (name skipped) and exp= (default explanation). NXDOMAIN and NODATA
// are "no records" and both count as void lookups. A permanent resolver
// error (a name that cannot be asked, a CNAME loop) is treated as a name
// without records. Only TXT is queried for records; type-99 SPF records
// are ignored (RFC 7208 3.1, 14.1).
//
// A <domain> produced by macro expansion that is not a usable DNS name
// (empty label, label over 63 octets) makes a, mx, ptr and exists not
// match and include and redirect permerror; RFC 7208 leaves this open
// (the test suite accepts fail or permerror).
//
// # Bounds
//
// Every bound below is enforced per check_host() evaluation (one call of
// [Checker.CheckHost] or [Checker.Verify], including all include/redirect
// recursion) and covered by tests:
//
//   - DNS-querying terms (include, a, mx, ptr, exists, redirect): at most
//     [Checker.MaxLookups] (default 10, RFC 7208 4.6.4); the next one gives
//     permerror. The exp lookup does not count.
//   - Void lookups (the query of an a, mx, ptr or exists term returned
//     NXDOMAIN or no records): at most [Checker.MaxVoidLookups] (default
//     2); the next gives permerror. The exp lookup, the address lookups of
//     MX and PTR names and the lookups behind %{p} do not count (an
//     include or redirect target without records is a permerror anyway).
//   - mx: an MX answer with more than 10 exchanges (null MX excluded) gives
//     permerror before any address is queried (4.6.4, deterministic whatever
//     the order of the answer).
//   - ptr and %{p}: only the first 10 PTR names are considered; the rest
//     are ignored (4.6.4).
//   - Recursion: include and redirect each count as a DNS-querying term, so
//     the nesting depth is at most MaxLookups and include/redirect loops end
//     in permerror.
//   - Records: an SPF record (the joined TXT strings) longer than
//     [MaxRecordLength] octets is a permerror. A macro expansion longer
//     than 2048 octets fails (a permerror for a domain-spec, the default
//     explanation for exp=); an expanded domain-spec is then cut to 253
//     octets by dropping labels from the left (7.3); explanations are cut
//     at [MaxExplanationLength]. A <sender> over 1024 octets gives none.
//   - Time: none of its own; DNS waits are bounded by the resolver and the
//     caller's context (RFC 7208 4.6.4 recommends allowing at least 20 s).
//     A context that ends gives temperror.
package spf

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/internal/parsecache"
)

// Result is an SPF result (RFC 7208 2.6).
type Result string

// The seven results of RFC 7208 2.6.
const (
	None      Result = "none"
	Neutral   Result = "neutral"
	Pass      Result = "pass"
	Fail      Result = "fail"
	Softfail  Result = "softfail"
	Temperror Result = "temperror"
	Permerror Result = "permerror"
)

// Identity values for [Outcome.Identity] (RFC 7208 2.3, 2.4).
const (
	IdentityMailFrom = "mailfrom"
	IdentityHELO     = "helo"
)

const (
	// DefaultMaxLookups is the RFC 7208 4.6.4 limit on DNS-querying terms.
	DefaultMaxLookups = 10
	// DefaultMaxVoidLookups is the RFC 7208 4.6.4 limit on void lookups.
	DefaultMaxVoidLookups = 2
	// MaxRecordLength is the longest SPF record accepted, in octets. RFC 7208
	// 3.4 asks publishers to stay within 450 octets; 4096 leaves room for
	// the many records that do not.
	MaxRecordLength = 4096
	// MaxExplanationLength is the longest explanation returned; a longer
	// expansion is cut (RFC 7208 6.2 lets implementations limit it).
	MaxExplanationLength = 512
	// maxNames is the 4.6.4 limit on MX and PTR names per lookup.
	maxNames = 10
	// maxExpansion bounds the result of one macro expansion.
	maxExpansion = 2048
	// maxSender bounds the sender (local-part@domain) accepted; RFC 5321
	// 4.5.3.1.3 caps a path at 256 octets.
	maxSender = 1024
)

// DefaultExplanation is the explanation used for a fail when the record
// has no usable exp= and [Checker.DefaultExplanation] is empty. It is
// macro-expanded like an exp= text (RFC 7208 6.2).
const DefaultExplanation = "%{c} is not a permitted sender for %{o} (SPF, domain %{d})"

// Checker evaluates SPF policies. The zero value is not usable: Resolver
// must be set. A Checker is safe for concurrent use; it is not modified by
// the checks.
type Checker struct {
	// Resolver answers every DNS question. Required.
	Resolver resolvercache.Resolver
	// MaxLookups is the limit on DNS-querying terms (RFC 7208 4.6.4);
	// 0 means DefaultMaxLookups.
	MaxLookups int
	// MaxVoidLookups is the limit on void lookups (RFC 7208 4.6.4);
	// 0 means DefaultMaxVoidLookups, a negative value means no void lookup
	// is tolerated.
	MaxVoidLookups int
	// Hostname is the receiving host's domain name, the %{r} macro of
	// exp= texts (RFC 7208 7.3); "unknown" when empty.
	Hostname string
	// Now gives the time for the %{t} macro; time.Now when nil. It is only
	// called when an explanation uses %{t}.
	Now func() time.Time
	// DefaultExplanation replaces the package's DefaultExplanation for fail
	// results without a usable exp= (RFC 7208 6.2). It is macro-expanded as
	// an explain-string; if it does not expand, it is used as written.
	DefaultExplanation string

	// records memoises parsed records by their text (shared, read-only
	// after parse); created on first use.
	records atomic.Pointer[parsecache.Cache[*record]]
}

// recordCache returns the parsed-record cache, creating it on first use.
func (c *Checker) recordCache() *parsecache.Cache[*record] {
	if p := c.records.Load(); p != nil {
		return p
	}
	c.records.CompareAndSwap(nil, parsecache.New(0, 0, (*record).bytes))
	return c.records.Load()
}

// Request is the SMTP context of one message (RFC 7208 2.3, 2.4).
type Request struct {
	// IP is the SMTP client's address. IPv4-mapped IPv6 addresses are
	// treated as IPv4 (RFC 7208 5, final paragraphs).
	IP netip.Addr
	// HELO is the HELO/EHLO argument as sent.
	HELO string
	// MailFrom is the MAIL FROM address without angle brackets ("" = the
	// null reverse-path). Surrounding angle brackets are tolerated.
	MailFrom string
}

// Outcome is the result of one check, with what a report needs.
type Outcome struct {
	Result Result `json:"result"`
	// Domain is the <domain> check_host() started with, lower case,
	// without a trailing dot.
	Domain string `json:"domain"`
	// Identity is "mailfrom" or "helo"; empty from CheckHost.
	Identity string `json:"identity,omitempty"`
	// Sender is the <sender> used, after the postmaster substitutions of
	// RFC 7208 2.4 and 4.3.
	Sender string `json:"sender,omitempty"`
	// Mechanism is the term that decided the result as written in the
	// record (e.g. "ip4:192.0.2.0/24", "-all", "include:_spf.example.com"),
	// "default" when no mechanism matched (4.7), or the term that caused a
	// permerror/temperror when one did. For redirect=, it is the term of
	// the target record.
	Mechanism string `json:"mechanism,omitempty"`
	// Lookups counts the DNS-querying terms evaluated (4.6.4).
	Lookups int `json:"lookups"`
	// VoidLookups counts the terms whose lookup was void (4.6.4).
	VoidLookups int `json:"void_lookups"`
	// Explanation is set for fail only: the expanded exp= text, or the
	// default explanation (RFC 7208 6.2).
	Explanation string `json:"explanation,omitempty"`
	// Err says why the result is permerror or temperror (or, for none,
	// why there was nothing to check).
	Err string `json:"error,omitempty"`
}

// CheckHost runs check_host(<ip>, <domain>, <sender>) of RFC 7208 4 with
// helo as the %{h} macro value. sender is local-part@domain; a missing
// local-part (or an empty sender) becomes "postmaster" (4.3). A malformed
// <domain> (empty label, label over 63 octets, single label, address
// literal, non-ASCII) gives none without any lookup (4.3).
func (c *Checker) CheckHost(ctx context.Context, ip netip.Addr, domain, sender, helo string) Outcome {
	d, ok := normalizeDomain(domain)
	if !ok {
		return Outcome{Result: None, Domain: strings.ToLower(domain), Sender: sender, Err: "spf: malformed domain " + quote(domain)}
	}
	local, sdom := splitSender(sender)
	if sdom == "" {
		sdom = d
	} else if n, ok := normalizeDomain(sdom); ok {
		sdom = n
	}
	return c.run(ctx, ip, d, local, sdom, helo)
}

// Verify checks the MAIL FROM identity (RFC 7208 2.4): check_host() with
// the domain of MailFrom. For the null reverse-path it checks the HELO
// identity instead, with <sender> "postmaster@" + HELO (2.4); a HELO that
// is an address literal or not a multi-label domain gives none.
//
// A MailFrom without "@" is taken as a bare domain with local-part
// "postmaster". Verify does not additionally check HELO when MailFrom is
// set; callers wanting the separate HELO check of RFC 7208 2.3 use
// [Checker.VerifyHELO].
func (c *Checker) Verify(ctx context.Context, r Request) Outcome {
	mf := trimReversePath(r.MailFrom)
	if mf == "" {
		o := c.VerifyHELO(ctx, r.IP, r.HELO)
		return o
	}
	local, dom := splitSender(mf)
	if dom == "" {
		// No domain at all: nothing to check (4.3).
		return Outcome{Result: None, Identity: IdentityMailFrom, Sender: mf, Err: "spf: MAIL FROM has no domain"}
	}
	d, ok := normalizeDomain(dom)
	if !ok {
		return Outcome{Result: None, Domain: strings.ToLower(dom), Identity: IdentityMailFrom, Sender: local + "@" + dom,
			Err: "spf: malformed MAIL FROM domain " + quote(dom)}
	}
	o := c.run(ctx, r.IP, d, local, d, r.HELO)
	o.Identity = IdentityMailFrom
	return o
}

// FirstQuery returns the name whose TXT record [Checker.Verify] asks for
// first on r (its check_host() <domain>: the MAIL FROM domain, or the HELO
// name for the null reverse-path), and false when Verify would ask nothing.
// A caller uses it to start that lookup early, beside other work, so the
// answer is cached or in flight when Verify needs it.
func FirstQuery(r Request) (string, bool) {
	if !r.IP.IsValid() {
		return "", false
	}
	mf := trimReversePath(r.MailFrom)
	local, dom := "postmaster", r.HELO
	if mf != "" {
		local, dom = splitSender(mf)
		if dom == "" {
			return "", false
		}
	}
	d, ok := normalizeDomain(dom)
	if local == "" {
		local = "postmaster" // as run
	}
	if !ok || len(local)+1+len(d) > maxSender {
		return "", false
	}
	return d, true
}

// VerifyHELO checks the HELO identity (RFC 7208 2.3): check_host() with
// <domain> = helo and <sender> = "postmaster@" + helo. An address literal
// or a name that is not a multi-label domain gives none (4.3).
func (c *Checker) VerifyHELO(ctx context.Context, ip netip.Addr, helo string) Outcome {
	d, ok := normalizeDomain(helo)
	if !ok {
		return Outcome{Result: None, Domain: strings.ToLower(helo), Identity: IdentityHELO, Sender: "postmaster@" + helo,
			Err: "spf: HELO " + quote(helo) + " is not a domain name"}
	}
	o := c.run(ctx, ip, d, "postmaster", d, helo)
	o.Identity = IdentityHELO
	return o
}

// trimReversePath strips the angle brackets of a MAIL FROM reverse-path.
func trimReversePath(mailFrom string) string {
	mf := strings.TrimSpace(mailFrom)
	if len(mf) >= 2 && mf[0] == '<' && mf[len(mf)-1] == '>' {
		mf = mf[1 : len(mf)-1]
	}
	return mf
}

// run evaluates check_host() for a validated, normalised domain.
func (c *Checker) run(ctx context.Context, ip netip.Addr, domain, local, senderDomain, helo string) Outcome {
	if local == "" {
		local = "postmaster" // RFC 7208 4.3
	}
	sender := local + "@" + senderDomain
	out := Outcome{Domain: domain, Sender: sender}
	if c.Resolver == nil {
		out.Result, out.Err = Temperror, "spf: no resolver configured"
		return out
	}
	if !ip.IsValid() {
		out.Result, out.Err = None, "spf: no client IP"
		return out
	}
	if len(sender) > maxSender {
		out.Result, out.Err = None, "spf: sender too long"
		return out
	}
	e := evaluator{
		c:            c,
		ctx:          ctx,
		ip:           ip.Unmap(),
		sender:       sender,
		local:        local,
		senderDomain: senderDomain,
		helo:         helo,
		maxLookups:   c.MaxLookups,
		maxVoids:     c.MaxVoidLookups,
	}
	if e.maxLookups <= 0 {
		e.maxLookups = DefaultMaxLookups
	}
	if e.maxVoids == 0 {
		e.maxVoids = DefaultMaxVoidLookups
	} else if e.maxVoids < 0 {
		e.maxVoids = 0
	}
	r := e.checkHost(domain, false)
	out.Result = r.result
	out.Mechanism = r.mechanism
	out.Explanation = r.explanation
	if r.err != nil {
		out.Err = "spf: " + r.err.Error()
	}
	out.Lookups = e.lookups
	out.VoidLookups = e.voids
	return out
}

// splitSender splits local-part@domain at the last "@". Without an "@"
// the whole string is taken as the domain.
func splitSender(s string) (local, domain string) {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return "", s
	}
	return s[:i], s[i+1:]
}

// normalizeDomain applies RFC 7208 4.3: it returns the domain lower case
// without a trailing dot, or false if it is malformed: empty, an address
// literal or bare IP address, a single label, an empty label or one over
// 63 octets, over 253 octets, an all-numeric last label, or containing
// octets outside printable ASCII. (Internationalised names must be given as A-labels.)
func normalizeDomain(s string) (string, bool) {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 || s[0] == '[' {
		return "", false
	}
	labels, start, numeric := 0, 0, true
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if n := i - start; n == 0 || n > 63 {
				return "", false
			}
			labels++
			start = i + 1
			if i < len(s) {
				numeric = true
			}
			continue
		}
		c := s[i]
		if c <= ' ' || c >= 0x7f {
			return "", false
		}
		if !isDigit(c) {
			numeric = false
		}
	}
	// A numeric last label means an IPv4 address, not a domain; IPv6
	// literals have no dots and fail the multi-label test.
	if labels < 2 || numeric {
		return "", false
	}
	return resolvercache.CanonicalName(s), true
}

func quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strconv.Quote(s)
}
