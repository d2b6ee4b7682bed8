package spf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/internal/judgetime"
)

// evaluator carries the state of one check_host() evaluation, shared by
// all include/redirect recursion: the SMTP values the macros expand to and
// the 4.6.4 counters.
type evaluator struct {
	c            *Checker
	ctx          context.Context
	ip           netip.Addr // unmapped
	sender       string
	local        string
	senderDomain string
	helo         string

	maxLookups, maxVoids int
	lookups, voids       int

	// domain is the <domain> of the record being evaluated, for %{d}
	// and %{p}; set by checkHost.
	domain string
	// ptrDomain/ptrName memoise %{p} for one <domain>.
	ptrDomain, ptrName string
}

// hostResult is what one check_host() level returns.
type hostResult struct {
	result      Result
	mechanism   string
	explanation string
	err         error
}

var (
	errLookupLimit = errors.New("too many DNS-querying terms (RFC 7208 4.6.4)")
	errVoidLimit   = errors.New("too many void lookups (RFC 7208 4.6.4)")
)

// lookup asks one question. A temporary failure (timeout, SERVFAIL, the
// context ending) is returned as an error. A permanent failure (a name the
// resolver cannot ask, a CNAME loop) is reported as an empty answer: such a
// name cannot have records.
func (e *evaluator) lookup(name string, qtype uint16) (*resolvercache.Answer, error) {
	if err := e.ctx.Err(); err != nil {
		return nil, err
	}
	ans, err := e.c.Resolver.Lookup(e.ctx, name, qtype)
	if err != nil {
		if resolvercache.IsTemporary(err) {
			return nil, err
		}
		return &resolvercache.Answer{Name: name, Type: qtype, Rcode: dns.RcodeNameError}, nil
	}
	if ans == nil {
		return &resolvercache.Answer{Name: name, Type: qtype, Rcode: dns.RcodeNameError}, nil
	}
	return ans, nil
}

// wrapNested adds the include/redirect context to an error from a nested
// check_host(), except for the limit errors, which would otherwise repeat
// the whole chain of a loop.
func wrapNested(where string, err error) error {
	if err == nil || errors.Is(err, errLookupLimit) || errors.Is(err, errVoidLimit) {
		return err
	}
	return fmt.Errorf("%s: %w", where, err)
}

// countLookup accounts for one DNS-querying term (4.6.4).
func (e *evaluator) countLookup() error {
	e.lookups++
	if e.lookups > e.maxLookups {
		return errLookupLimit
	}
	return nil
}

// countVoid accounts for a void answer to a term's query (4.6.4).
func (e *evaluator) countVoid(a *resolvercache.Answer) error {
	if !a.Empty() {
		return nil
	}
	e.voids++
	if e.voids > e.maxVoids {
		return errVoidLimit
	}
	return nil
}

// findRecord fetches and selects the SPF record of domain (RFC 7208 4.4,
// 4.5): result None when there is none, Permerror for several or a syntax
// error, Temperror for a DNS failure.
func (e *evaluator) findRecord(domain string) (*record, Result, error) {
	ans, err := e.lookup(domain, dns.TypeTXT)
	if err != nil {
		return nil, Temperror, fmt.Errorf("TXT lookup for %s: %w", domain, err)
	}
	txt := ""
	n := 0
	for _, t := range ans.TXT {
		if isSPFRecord(t) {
			n++
			txt = t
		}
	}
	switch n {
	case 0:
		return nil, None, fmt.Errorf("no SPF record at %s", domain)
	case 1:
	default:
		return nil, Permerror, fmt.Errorf("%d SPF records at %s", n, domain)
	}
	rec, err := e.c.recordCache().Get(txt, parseRecord)
	if err != nil {
		return nil, Permerror, fmt.Errorf("%w (record at %s)", err, domain)
	}
	return rec, "", nil
}

// checkHost evaluates the record of domain (RFC 7208 4.6-4.7). nested is
// set inside include, where exp= is not used (6.2).
func (e *evaluator) checkHost(domain string, nested bool) hostResult {
	rec, res, err := e.findRecord(domain)
	if rec == nil {
		return hostResult{result: res, err: err}
	}
	return e.evalRecord(rec, domain, nested)
}

func (e *evaluator) evalRecord(rec *record, domain string, nested bool) hostResult {
	for i := range rec.terms {
		t := &rec.terms[i]
		e.domain = domain
		match, hr := e.evalTerm(t, domain)
		if hr != nil {
			if hr.mechanism == "" {
				hr.mechanism = t.text
			}
			return *hr
		}
		if !match {
			continue
		}
		r := hostResult{result: t.qual, mechanism: t.text}
		if r.result == Fail && !nested {
			e.domain = domain
			r.explanation = e.explain(rec)
		}
		return r
	}
	// No match: redirect, unless an all mechanism is present (6.1).
	if rec.hasRedirect && !rec.hasAll {
		e.domain = domain
		if err := e.countLookup(); err != nil {
			return hostResult{result: Permerror, mechanism: "redirect=" + rec.redirect, err: err}
		}
		target, ok, err := e.expandTarget(rec.redirect)
		if err != nil {
			return hostResult{result: Permerror, mechanism: "redirect=" + rec.redirect, err: err}
		}
		if !ok {
			return hostResult{result: Permerror, mechanism: "redirect=" + rec.redirect,
				err: fmt.Errorf("redirect target %s is not a valid domain name", quote(rec.redirect))}
		}
		r := e.checkHost(target, nested)
		if r.result == None {
			// 6.1: no record at the target is a permerror.
			r.result = Permerror
			r.err = wrapNested("redirect="+target, r.err)
			r.mechanism = "redirect=" + rec.redirect
		}
		return r
	}
	return hostResult{result: Neutral, mechanism: "default"}
}

// evalTerm evaluates one mechanism. It returns a non-nil hostResult when
// evaluation must stop with an error result.
func (e *evaluator) evalTerm(t *term, domain string) (bool, *hostResult) {
	fail := func(r Result, err error) (bool, *hostResult) {
		return false, &hostResult{result: r, mechanism: t.text, err: err}
	}
	switch t.kind {
	case mechAll:
		return true, nil
	case mechIP4, mechIP6:
		return t.prefix.Contains(e.ip), nil
	}

	// The rest query DNS (4.6.4).
	if err := e.countLookup(); err != nil {
		return fail(Permerror, err)
	}
	target := domain
	if t.domain != "" {
		name, ok, err := e.expandTarget(t.domain)
		if err != nil {
			return fail(Permerror, err)
		}
		if !ok {
			if t.kind == mechInclude {
				return fail(Permerror, fmt.Errorf("include target %s is not a valid domain name", quote(t.domain)))
			}
			// A target that cannot be a DNS name matches nothing
			// (RFC 7208 4.3 and 4.8 by analogy).
			return false, nil
		}
		target = name
	}

	switch t.kind {
	case mechInclude:
		r := e.checkHost(target, true)
		e.domain = domain
		switch r.result {
		case Pass:
			return true, nil
		case Fail, Softfail, Neutral:
			return false, nil
		case Temperror:
			return fail(Temperror, wrapNested("include:"+target, r.err))
		default: // permerror, and none (5.2)
			return fail(Permerror, wrapNested("include:"+target, r.err))
		}

	case mechA:
		ans, err := e.lookup(target, e.addrType())
		if err != nil {
			return fail(Temperror, fmt.Errorf("a:%s: %w", target, err))
		}
		if err := e.countVoid(ans); err != nil {
			return fail(Permerror, err)
		}
		return e.matchAddrs(ans.IPs, t), nil

	case mechMX:
		ans, err := e.lookup(target, dns.TypeMX)
		if err != nil {
			return fail(Temperror, fmt.Errorf("mx:%s: %w", target, err))
		}
		if err := e.countVoid(ans); err != nil {
			return fail(Permerror, err)
		}
		n := 0
		for _, mx := range ans.MX {
			if mx.Host != "" {
				n++
			}
		}
		if n > maxNames {
			return fail(Permerror, fmt.Errorf("mx:%s: %d MX names, over %d (RFC 7208 4.6.4)", target, n, maxNames))
		}
		for _, mx := range ans.MX {
			if mx.Host == "" {
				continue // null MX (RFC 7505)
			}
			a, err := e.lookup(mx.Host, e.addrType())
			if err != nil {
				return fail(Temperror, fmt.Errorf("mx:%s: address of %s: %w", target, mx.Host, err))
			}
			if e.matchAddrs(a.IPs, t) {
				return true, nil
			}
		}
		return false, nil

	case mechPTR:
		ans, err := e.lookup(reverseName(e.ip), dns.TypePTR)
		if err != nil {
			// 5.5: a DNS error on the PTR query means no match.
			return false, nil
		}
		if err := e.countVoid(ans); err != nil {
			return fail(Permerror, err)
		}
		names := ans.Names
		if len(names) > maxNames {
			names = names[:maxNames] // 4.6.4: ignore all but the first 10
		}
		for _, n := range names {
			n = resolvercache.CanonicalName(n)
			if !isSubdomain(n, target) {
				continue
			}
			if e.validated(n) {
				return true, nil
			}
		}
		return false, nil

	case mechExists:
		ans, err := e.lookup(target, dns.TypeA) // 5.7: always A
		if err != nil {
			return fail(Temperror, fmt.Errorf("exists:%s: %w", target, err))
		}
		if err := e.countVoid(ans); err != nil {
			return fail(Permerror, err)
		}
		return len(ans.IPs) > 0, nil
	}
	return fail(Permerror, fmt.Errorf("internal error: unknown mechanism in %s", quote(t.text)))
}

// addrType is the address query for the client's family (5.3).
func (e *evaluator) addrType() uint16 {
	if e.ip.Is4() {
		return dns.TypeA
	}
	return dns.TypeAAAA
}

// matchAddrs reports whether the client is in one of the networks given
// by addrs and the term's CIDR lengths (5.3, 5.4).
func (e *evaluator) matchAddrs(addrs []netip.Addr, t *term) bool {
	bits := int(t.cidr6)
	if e.ip.Is4() {
		bits = int(t.cidr4)
	}
	for _, a := range addrs {
		if e.ip.Is4() {
			a = a.Unmap()
		}
		if a.Is4() != e.ip.Is4() {
			continue
		}
		p, err := a.Prefix(bits)
		if err == nil && p.Contains(e.ip) {
			return true
		}
	}
	return false
}

// validated reports whether name has an address record equal to the
// client IP (the forward check of 5.5). Any DNS error skips the name.
func (e *evaluator) validated(name string) bool {
	ans, err := e.lookup(name, e.addrType())
	if err != nil {
		return false
	}
	for _, a := range ans.IPs {
		if a.Unmap() == e.ip {
			return true
		}
	}
	return false
}

// isSubdomain reports whether name equals domain or ends in "." + domain,
// ignoring case.
func isSubdomain(name, domain string) bool {
	if len(name) < len(domain) {
		return false
	}
	if !strings.EqualFold(name[len(name)-len(domain):], domain) {
		return false
	}
	return len(name) == len(domain) || name[len(name)-len(domain)-1] == '.'
}

// expandTarget expands a domain-spec into a query name. ok is false when
// the expansion is not a usable DNS name.
func (e *evaluator) expandTarget(spec string) (name string, ok bool, err error) {
	s, err := expandMacros(spec, letterDomain, false, e)
	if err != nil {
		return "", false, fmt.Errorf("expanding %s: %w", quote(spec), err)
	}
	name, ok = targetName(s)
	return name, ok, nil
}

// explain computes the explanation for a fail (RFC 7208 6.2). Any problem
// with exp= (no or several TXT records, a DNS error, a macro error,
// non-ASCII text) falls back to the default explanation. The exp lookup
// counts against no limit.
func (e *evaluator) explain(rec *record) string {
	if rec.hasExp {
		if s, ok := e.fetchExplanation(rec.exp); ok {
			return s
		}
	}
	def := e.c.DefaultExplanation
	if def == "" {
		def = DefaultExplanation
	}
	s, err := expandMacros(def, letterAll, true, e)
	if err != nil {
		s = def
	}
	return clip(s)
}

func (e *evaluator) fetchExplanation(spec string) (string, bool) {
	name, ok, err := e.expandTarget(spec)
	if err != nil || !ok {
		return "", false
	}
	ans, err := e.lookup(name, dns.TypeTXT)
	if err != nil || len(ans.TXT) != 1 {
		return "", false
	}
	txt := ans.TXT[0]
	for i := 0; i < len(txt); i++ {
		if txt[i] >= 0x80 {
			return "", false // 6.2: explanations are US-ASCII
		}
	}
	s, err := expandMacros(txt, letterAll, true, e)
	if err != nil {
		return "", false
	}
	return clip(s), true
}

func clip(s string) string {
	if len(s) > MaxExplanationLength {
		return s[:MaxExplanationLength]
	}
	return s
}

// macroValue implements expander (RFC 7208 7.2).
func (e *evaluator) macroValue(letter byte) (string, error) {
	switch letter {
	case 's':
		return e.sender, nil
	case 'l':
		return e.local, nil
	case 'o':
		return e.senderDomain, nil
	case 'd':
		return e.domain, nil
	case 'i':
		return dottedIP(e.ip), nil
	case 'p':
		return e.ptrMacro(), nil
	case 'v':
		if e.ip.Is4() {
			return "in-addr", nil
		}
		return "ip6", nil
	case 'h':
		return e.helo, nil
	case 'c':
		return e.ip.String(), nil
	case 'r':
		if e.c.Hostname != "" {
			return e.c.Hostname, nil
		}
		return "unknown", nil
	case 't':
		if t, ok := judgetime.From(e.ctx); ok {
			return itoa(t.Unix()), nil
		}
		now := time.Now
		if e.c.Now != nil {
			now = e.c.Now
		}
		return itoa(now().Unix()), nil
	}
	return "", fmt.Errorf("unknown macro letter %q", letter)
}

// ptrMacro finds a validated domain name of the client (RFC 7208 7.3):
// <domain> itself if validated, else a validated subdomain of it, else any
// validated name, else "unknown". Only the first 10 PTR names are used
// (4.6.4). These lookups count against no limit. The answer is memoised
// per <domain>.
func (e *evaluator) ptrMacro() string {
	if e.ptrName != "" && e.ptrDomain == e.domain {
		return e.ptrName
	}
	name := "unknown"
	ans, err := e.lookup(reverseName(e.ip), dns.TypePTR)
	if err == nil {
		names := ans.Names
		if len(names) > maxNames {
			names = names[:maxNames]
		}
		// Try the preferred candidates first so fewer names need checking.
		found := false
		for pass := 0; pass < 3 && !found; pass++ {
			for _, n := range names {
				n = resolvercache.CanonicalName(n)
				exact := strings.EqualFold(n, e.domain)
				sub := !exact && isSubdomain(n, e.domain)
				if (pass == 0 && !exact) || (pass == 1 && !sub) || (pass == 2 && (exact || sub)) {
					continue
				}
				if e.validated(n) {
					name, found = n, true
					break
				}
			}
		}
	}
	e.ptrDomain, e.ptrName = e.domain, name
	return name
}

// reverseName is the in-addr.arpa or ip6.arpa name of ip.
func reverseName(ip netip.Addr) string {
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		b.Grow(29)
		for i := 3; i >= 0; i-- {
			b.WriteString(itoa(int64(a[i])))
			b.WriteByte('.')
		}
		b.WriteString("in-addr.arpa")
		return b.String()
	}
	const hex = "0123456789abcdef"
	a := ip.As16()
	b.Grow(72)
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[a[i]&15])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa")
	return b.String()
}

// dottedIP is the %{i} form: dotted quad, or 32 dot-separated nibbles.
func dottedIP(ip netip.Addr) string {
	if ip.Is4() {
		return ip.String()
	}
	const hex = "0123456789abcdef"
	a := ip.As16()
	buf := make([]byte, 0, 63)
	for i := 0; i < 16; i++ {
		if i > 0 {
			buf = append(buf, '.')
		}
		buf = append(buf, hex[a[i]>>4], '.', hex[a[i]&15])
	}
	return string(buf)
}
