package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/internal/parsecache"
)

// DMARC results (RFC 9989 9.2, Authentication-Results "dmarc=").
const (
	ResultPass      = "pass"
	ResultFail      = "fail"
	ResultNone      = "none"
	ResultTempError = "temperror"
	ResultPermError = "permerror"
)

// Override reason types (RFC 9990 PolicyOverrideType). ReasonSampledOut is
// RFC 7489 Appendix C only (pct was removed by RFC 9989) and is produced in
// ModeRFC7489 only.
const (
	ReasonTrustedForwarder = "trusted_forwarder"
	ReasonLocalPolicy      = "local_policy"
	ReasonMailingList      = "mailing_list"
	ReasonSampledOut       = "sampled_out"
	ReasonPolicyTestMode   = "policy_test_mode"
	ReasonOther            = "other"
)

// Discovery methods (RFC 9990 DiscoveryType).
const (
	DiscoveryTreeWalk = "treewalk"
	DiscoveryPSL      = "psl"
)

// MultipleFrom values for Evaluator.MultipleFrom.
const (
	// MultipleFromStrictest evaluates every author domain and applies the
	// strictest disposition (the default, also for "").
	MultipleFromStrictest = "strictest"
	// MultipleFromReject evaluates every author domain but rejects messages
	// with more than one distinct author domain (RFC 9989 4.4 and 11.5 leave
	// such messages to local policy; reason local_policy).
	MultipleFromReject = "reject"
)

// Bounds.
const (
	// DefaultMaxQueries is the RFC 9989 4.10 limit on DNS queries of one
	// tree walk. Evaluator.MaxQueries overrides it.
	DefaultMaxQueries = 8
	// MaxAuthorDomains bounds the distinct RFC5322.From domains evaluated;
	// a message with more gets permerror and disposition reject.
	MaxAuthorDomains = 10
	// MaxAlignmentWalks bounds, per author domain, the tree walks done to
	// find Organizational Domains of Authenticated Identifiers (SPF, DKIM,
	// and identifiers recorded in trusted ARC sets). Identifiers beyond it
	// are treated as not aligned. Each walk is itself bounded by MaxQueries.
	MaxAlignmentWalks = 10
	// maxExistenceQueries is the A, AAAA, MX probe for np (RFC 9989 A.4).
	maxExistenceQueries = 3
)

// SPFResult is the SPF outcome for the message (RFC 7208).
type SPFResult struct {
	// Result is the SPF result: pass, fail, softfail, neutral, none,
	// temperror, permerror.
	Result string `json:"result"`
	// Domain is the domain checked: the MAIL FROM domain, or the HELO domain
	// for a null reverse-path (RFC 7208 2.4, postmaster@HELO).
	Domain string `json:"domain"`
	// Scope is "mfrom" (also for a null reverse-path checked as
	// postmaster@HELO, RFC 7208 2.4) or "helo" for a separate HELO check.
	// Only "mfrom" (or "") is used for alignment: DMARC relies solely on the
	// MAIL FROM identity (RFC 9989 3.2.4, 4.4.2).
	Scope string `json:"scope"`
}

// DKIMResult is the outcome of one DKIM signature (RFC 6376).
type DKIMResult struct {
	Result   string `json:"result"` // pass, fail, neutral, temperror, permerror, policy, none
	Domain   string `json:"domain"` // d=
	Selector string `json:"selector"`
}

// ARCSet is one ARC set as validated by the ARC stage (RFC 8617).
type ARCSet struct {
	Instance int    `json:"instance"`
	Sealer   string `json:"sealer"` // d= of the ARC-Seal
	// AuthResults is the raw ARC-Authentication-Results value of the set,
	// "i=N; authserv-id; ..." (the i= tag is stripped before parsing).
	AuthResults string `json:"auth_results"`
}

// ARCInput is the ARC chain outcome.
type ARCInput struct {
	Result string   `json:"result"` // pass, fail, none
	Sets   []ARCSet `json:"sets,omitempty"`
}

// Input holds the already-computed authentication results for one message.
type Input struct {
	FromDomains []string     // RFC5322.From domains, one per author
	SPF         SPFResult    // SPF of the MAIL FROM identity
	DKIM        []DKIMResult // every verified DKIM signature
	ARC         ARCInput     // ARC chain (used by trusted-forwarder overrides)
	ClientIP    netip.Addr   // SMTP client (used by allow/deny lists)
}

// Overrides is the Mail Receiver's local policy (RFC 9989 5.3.6 leaves the
// final handling to it; RFC 9990 names the reasons). Domain entries match
// the author domain and its subdomains, case-insensitively.
type Overrides struct {
	// TrustedARCSealers: ARC sealer domains whose recorded results are
	// trusted. When the DMARC result is fail, the ARC chain validated
	// (ARC.Result "pass") and a set sealed by one of them records dmarc=pass
	// for the author domain, or an spf/dkim pass aligned with it (under the
	// policy's adkim/aspf), the disposition becomes none with reason
	// trusted_forwarder.
	TrustedARCSealers []string `json:"trusted_arc_sealers,omitempty"`
	// AllowDomains, AllowIPs: a failing message from these author domains
	// or client addresses gets disposition none (reason local_policy).
	AllowDomains []string       `json:"allow_domains,omitempty"`
	AllowIPs     []netip.Prefix `json:"allow_ips,omitempty"`
	// DenyDomains, DenyIPs: any message from these author domains or client
	// addresses gets disposition reject (reason local_policy), whatever the
	// DMARC result. Deny wins over every other override.
	DenyDomains []string       `json:"deny_domains,omitempty"`
	DenyIPs     []netip.Prefix `json:"deny_ips,omitempty"`
	// RequireBothAligned: author domains (for senders on shared
	// infrastructure, where any tenant can pass SPF) for which a DMARC pass
	// needs both an aligned SPF pass and an aligned DKIM pass; otherwise the
	// result is fail (reason local_policy).
	RequireBothAligned []string `json:"require_both_aligned,omitempty"`
}

// Evaluator evaluates DMARC. The zero value plus a Resolver is a valid RFC
// 9989 evaluator. It is safe for concurrent use if Rand is.
//
// DNS bounds per author domain: the policy tree walk makes at most
// MaxQueries lookups (RFC 7489 mode: 2); each of at most MaxAlignmentWalks
// identifier walks at most MaxQueries more (lookups already made for the
// message are reused, and identifiers not at or below the author's
// Organizational Domain are never walked); the np existence check 3. At
// most MaxAuthorDomains author domains are evaluated.
type Evaluator struct {
	Resolver resolvercache.Resolver
	// Mode is ModeRFC9989 (default) or ModeRFC7489.
	Mode Mode
	// MaxQueries bounds the DNS queries of one tree walk (RFC 9989 4.10);
	// 0 means DefaultMaxQueries (8). Names longer than MaxQueries labels are
	// shortened as the RFC describes for 8.
	MaxQueries int
	// PSL is the public suffix list of ModeRFC7489; nil means DefaultPSL().
	PSL PublicSuffixList
	// Rand returns a number in [0,1) for pct sampling (ModeRFC7489); nil
	// means math/rand/v2.Float64.
	Rand func() float64
	// Overrides is the local policy.
	Overrides Overrides
	// MultipleFrom is MultipleFromStrictest (default) or MultipleFromReject.
	MultipleFrom string

	// records memoises parsed records by their text for one Mode (shared,
	// read-only after parse); created on first use.
	records atomic.Pointer[recordCache]
}

type recordCache struct {
	mode  Mode
	cache *parsecache.Cache[*Record]
	parse func(string) (*Record, error)
}

// parse returns the parsed record txt in e.Mode, memoised.
func (e *Evaluator) parse(txt string) (*Record, error) {
	rc := e.records.Load()
	if rc == nil || rc.mode != e.Mode {
		mode := e.Mode
		rc = &recordCache{mode: mode, cache: parsecache.New(0, 0, (*Record).bytes),
			parse: func(t string) (*Record, error) { return parseRecord(t, mode) }}
		e.records.Store(rc)
	}
	return rc.cache.Get(txt, rc.parse)
}

// PublishedPolicy is the DMARC policy as evaluated (RFC 9990
// PolicyPublishedType, plus rua/ruf for the report builders).
type PublishedPolicy struct {
	Domain  string   `json:"domain"`
	P       string   `json:"p"`
	SP      string   `json:"sp,omitempty"`
	NP      string   `json:"np,omitempty"`
	ADKIM   string   `json:"adkim"`
	ASPF    string   `json:"aspf"`
	Testing string   `json:"testing"`       // "y" or "n"
	PSD     string   `json:"psd,omitempty"` // "y", "n", "u" (RFC 9989 mode)
	Pct     *int     `json:"pct,omitempty"` // RFC 7489 mode only
	RUA     []string `json:"rua,omitempty"`
	RUF     []string `json:"ruf,omitempty"`
	FO      string   `json:"fo,omitempty"` // colon-joined, e.g. "0:d"
	// PNoneFallback: p=none was assumed (RFC 9989 4.10.1).
	PNoneFallback bool `json:"p_none_fallback,omitempty"`
}

// Reason is a policy override reason (RFC 9990 PolicyOverrideReason).
type Reason struct {
	Type    string `json:"type"`
	Comment string `json:"comment,omitempty"`
}

// Result is the DMARC outcome for a message (or for one author domain, in
// Authors).
type Result struct {
	// Result: pass, fail, none, temperror, permerror.
	Result string `json:"result"`
	// PolicyDomain is where the applied record was found ("" if none).
	PolicyDomain string `json:"policy_domain"`
	// OrgDomain is the Organizational Domain of the author domain.
	OrgDomain    string `json:"org_domain,omitempty"`
	AuthorDomain string `json:"author_domain"`
	// DiscoveryMethod: "treewalk" (RFC 9989) or "psl" (RFC 7489).
	DiscoveryMethod   string           `json:"discovery_method"`
	Policy            *PublishedPolicy `json:"policy,omitempty"`
	SPFAligned        bool             `json:"spf_aligned"`
	DKIMAligned       bool             `json:"dkim_aligned"`
	AlignedDKIMDomain string           `json:"aligned_dkim_domain,omitempty"`
	// Disposition: none, quarantine, reject.
	Disposition string `json:"disposition"`
	// AppliedPolicy: which tag gave the policy: "p", "sp" or "np" ("" when
	// there is no usable record).
	AppliedPolicy string   `json:"applied_policy,omitempty"`
	Reasons       []Reason `json:"reasons,omitempty"`
	// Queries is the number of DNS lookups made.
	Queries int `json:"queries"`
	// Err explains none/temperror/permerror results (or a problem that was
	// worked around, such as several records at one name).
	Err string `json:"error,omitempty"`
	// Authors holds one result per author domain when the message has more
	// than one; the top-level fields are those of the strictest.
	Authors []Result `json:"authors,omitempty"`
}

func (e *Evaluator) maxQueries() int {
	if e.MaxQueries > 0 {
		return e.MaxQueries
	}
	return DefaultMaxQueries
}

func (e *Evaluator) psl() PublicSuffixList {
	if e.PSL != nil {
		return e.PSL
	}
	return DefaultPSL()
}

func (e *Evaluator) rand() float64 {
	if e.Rand != nil {
		return e.Rand()
	}
	return rand.Float64()
}

// canonicalDomain lower-cases, strips a trailing dot and converts U-labels
// to A-labels.
func canonicalDomain(d string) (string, error) {
	d = resolvercache.CanonicalName(strings.TrimSpace(d))
	if d == "" {
		return "", errors.New("empty domain")
	}
	if !isASCII(d) {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return "", fmt.Errorf("domain %q: %w", d, err)
		}
		d = strings.ToLower(a)
	}
	if err := resolvercache.ValidateName(d); err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return d, nil
}

// FirstQuery returns the name policy discovery looks up first for the
// RFC5322.From domain fromDomain, _dmarc.<author domain> as Evaluate
// canonicalises it (RFC 9989 4.10.1 step 1 of the tree walk; RFC 7489
// 6.6.3 step 1), and false for a domain Evaluate would not look up. A
// caller uses it to start that lookup beside SPF and DKIM, so a message
// whose DMARC record is not cached waits one DNS round trip, not two.
func FirstQuery(fromDomain string) (string, bool) {
	d, err := canonicalDomain(fromDomain)
	if err != nil {
		return "", false
	}
	return "_dmarc." + d, true
}

// Evaluate runs DMARC for one message. It never panics on bad input: an
// unusable author domain gives permerror, DNS failures temperror.
//
// DNS temporary errors: RFC 9989 4.10.1 leaves their handling to the
// receiver and 5.3.6 says the message then neither passes nor fails. A
// temporary error on any query of the author domain's tree walk gives
// temperror with disposition none ("fail open"); callers wanting "fail
// closed" can answer 4xx on temperror. A temporary error while finding the
// Organizational Domain of an Authenticated Identifier gives temperror
// only if no other identifier aligned. Permanent DNS errors (a name too
// long, a CNAME loop) count as "no record at that name".
func (e *Evaluator) Evaluate(ctx context.Context, in Input) Result {
	method := DiscoveryTreeWalk
	if e.Mode.is7489() {
		method = DiscoveryPSL
	}
	if len(in.FromDomains) == 1 {
		// The common case, without the bookkeeping for several authors.
		d, err := canonicalDomain(in.FromDomains[0])
		if err != nil {
			return Result{Result: ResultPermError, AuthorDomain: in.FromDomains[0], DiscoveryMethod: method,
				Disposition: string(PolicyNone), Err: "dmarc: RFC5322.From " + err.Error()}
		}
		return e.evaluateAuthor(ctx, in, d)
	}
	// Distinct author domains, in order.
	var authors []string
	seen := map[string]bool{}
	var bad []Result
	for _, raw := range in.FromDomains {
		d, err := canonicalDomain(raw)
		if err != nil {
			bad = append(bad, Result{Result: ResultPermError, AuthorDomain: raw, DiscoveryMethod: method,
				Disposition: string(PolicyNone), Err: "dmarc: RFC5322.From " + err.Error()})
			continue
		}
		if !seen[d] {
			seen[d] = true
			authors = append(authors, d)
		}
	}
	switch {
	case len(authors) == 0 && len(bad) == 0:
		return Result{Result: ResultPermError, DiscoveryMethod: method, Disposition: string(PolicyNone),
			Err: "dmarc: no RFC5322.From domain"}
	case len(authors)+len(bad) > MaxAuthorDomains:
		return Result{Result: ResultPermError, DiscoveryMethod: method, Disposition: string(PolicyReject),
			Reasons: []Reason{{Type: ReasonLocalPolicy, Comment: fmt.Sprintf("more than %d RFC5322.From domains", MaxAuthorDomains)}},
			Err:     fmt.Sprintf("dmarc: more than %d RFC5322.From domains", MaxAuthorDomains)}
	}
	results := bad
	for _, a := range authors {
		results = append(results, e.evaluateAuthor(ctx, in, a))
	}
	if len(results) == 1 {
		return results[0]
	}
	best, queries := 0, 0
	for i := range results {
		queries += results[i].Queries
		if stricter(results[i], results[best]) {
			best = i
		}
	}
	top := results[best]
	top.Authors = results
	top.Queries = queries
	top.Reasons = append([]Reason(nil), top.Reasons...)
	if e.MultipleFrom == MultipleFromReject && len(results) > 1 {
		top.Disposition = string(PolicyReject)
		top.Reasons = append(top.Reasons, Reason{Type: ReasonLocalPolicy, Comment: "several RFC5322.From domains"})
	}
	return top
}

// stricter orders per-author results: higher disposition first, then
// fail > temperror > permerror > none > pass.
func stricter(a, b Result) bool {
	ra, rb := Policy(a.Disposition).rank(), Policy(b.Disposition).rank()
	if ra != rb {
		return ra > rb
	}
	return resultRank(a.Result) > resultRank(b.Result)
}

func resultRank(r string) int {
	switch r {
	case ResultFail:
		return 4
	case ResultTempError:
		return 3
	case ResultPermError:
		return 2
	case ResultNone:
		return 1
	}
	return 0
}

// nameInfo is the outcome of the TXT query at _dmarc.<domain>.
type nameInfo struct {
	found    bool    // exactly one record starting with v=DMARC1
	multiple bool    // several: all discarded (RFC 9989 4.10 step 2)
	rec      *Record // the record (partial when err != nil)
	err      error   // syntax error of that record
	temp     error   // temporary DNS error
}

// authorState is the per-author evaluation state: memoised _dmarc lookups
// and counters.
//
// The memos are slices searched in order, not maps: a message asks a few
// names (four in BenchmarkEvaluateWarm), and the first memoStates of them,
// with their outcomes, live in the state itself, so an evaluation
// allocates the state once instead of two maps and a nameInfo a name
// (scripts/benchab -n 8 -p ./stages/dmarc -b 'EvaluateWarm$' -t 1s -a
// -test.benchmem, session 10, with Evaluate's one-author path: 2.28 to
// 1.53 µs, 18 to 10 allocations). The searches stay short: at most
// MaxAlignmentWalks+1 tree walks of at most MaxQueries names each.
type authorState struct {
	author  string
	org     string
	rec     *Record
	names   []memoName // memoised _dmarc lookups, in the order asked
	orgs    []memoOrg  // identifier → Organizational Domain, at most MaxAlignmentWalks
	queries int
	walks   int
	notes   []string
	// boundNoted: errWalkBound already added to notes.
	boundNoted bool

	nameBuf [memoStates]memoName // names' first backing array
	infoBuf [memoStates]nameInfo // the first names' outcomes
	orgBuf  [memoStates]memoOrg  // orgs' first backing array
}

// memoStates is how many names, and identifiers' Organizational Domains,
// an authorState holds without allocating.
const memoStates = 4

type memoName struct {
	domain string
	ni     *nameInfo
}

type memoOrg struct{ ident, org string }

func newAuthorState(author string) *authorState {
	st := &authorState{author: author}
	st.names, st.orgs = st.nameBuf[:0], st.orgBuf[:0]
	return st
}

func (e *Evaluator) lookupDMARC(ctx context.Context, st *authorState, domain string) *nameInfo {
	for _, m := range st.names {
		if m.domain == domain {
			return m.ni
		}
	}
	var ni *nameInfo
	if n := len(st.names); n < len(st.infoBuf) {
		ni = &st.infoBuf[n]
	} else {
		ni = &nameInfo{}
	}
	st.names = append(st.names, memoName{domain, ni})
	st.queries++
	ans, err := e.Resolver.Lookup(ctx, "_dmarc."+domain, dns.TypeTXT)
	if err != nil {
		if resolvercache.IsTemporary(err) {
			ni.temp = fmt.Errorf("dmarc: looking up _dmarc.%s: %w", domain, err)
		}
		return ni
	}
	n := 0
	for _, txt := range ans.TXT {
		rec, err := e.parse(txt)
		if errors.Is(err, ErrNotDMARC) {
			continue
		}
		n++
		ni.rec, ni.err = rec, err
	}
	switch {
	case n == 1:
		ni.found = true
	case n > 1:
		ni.multiple, ni.rec, ni.err = true, nil, nil
		st.notes = append(st.notes, fmt.Sprintf("%d DMARC records at _dmarc.%s, all discarded", n, domain))
	}
	return ni
}

type walkEntry struct {
	domain string
	ni     *nameInfo
}

type walkResult struct {
	start   string
	entries []walkEntry // names with exactly one DMARC record, longest first
	temp    error
}

// treeWalk is the RFC 9989 4.10 DNS Tree Walk from start: query start, then
// (if start has MaxQueries labels or more) jump to its last MaxQueries-1
// labels, then drop one label at a time; stop early at a record with psd=y
// or psd=n. At most MaxQueries lookups (fewer when memoised).
func (e *Evaluator) treeWalk(ctx context.Context, st *authorState, start string) walkResult {
	w := walkResult{start: start}
	max := e.maxQueries()
	target := start
	for step := 0; step < max; step++ {
		ni := e.lookupDMARC(ctx, st, target)
		if ni.temp != nil {
			w.temp = ni.temp
			return w
		}
		if ni.found {
			w.entries = append(w.entries, walkEntry{domain: target, ni: ni})
			if ni.rec != nil && (ni.rec.PSD == "y" || ni.rec.PSD == "n") {
				return w
			}
		}
		x := strings.Count(target, ".") + 1
		if x == 1 {
			break
		}
		keep := x - 1
		if step == 0 && x >= max {
			keep = max - 1
		}
		if keep < 1 {
			break
		}
		target = lastLabels(target, keep)
	}
	return w
}

// lastLabels returns the last n labels of d (n ≥ 1).
func lastLabels(d string, n int) string {
	i := len(d)
	for ; n > 0; n-- {
		j := strings.LastIndexByte(d[:i], '.')
		if j < 0 {
			return d
		}
		i = j
	}
	return d[i+1:]
}

// orgFromWalk selects the Organizational Domain per RFC 9989 4.10.2.
func orgFromWalk(w walkResult) string {
	for _, en := range w.entries {
		if en.ni.rec == nil {
			continue
		}
		if en.ni.rec.PSD == "n" {
			return en.domain
		}
		if en.ni.rec.PSD == "y" && en.domain != w.start {
			return lastLabels(w.start, strings.Count(en.domain, ".")+2)
		}
	}
	if len(w.entries) > 0 {
		return w.entries[len(w.entries)-1].domain
	}
	return w.start
}

var errWalkBound = fmt.Errorf("dmarc: more than %d alignment tree walks, further identifiers treated as not aligned", MaxAlignmentWalks)

// orgDomain returns the Organizational Domain of an Authenticated
// Identifier.
func (e *Evaluator) orgDomain(ctx context.Context, st *authorState, d string) (string, error) {
	if d == st.author {
		return st.org, nil
	}
	if e.Mode.is7489() {
		return OrgDomainPSL(e.psl(), d), nil
	}
	for _, m := range st.orgs {
		if m.ident == d {
			return m.org, nil
		}
	}
	if st.walks >= MaxAlignmentWalks {
		return "", errWalkBound
	}
	st.walks++
	w := e.treeWalk(ctx, st, d)
	if w.temp != nil {
		return "", w.temp
	}
	org := orgFromWalk(w)
	st.orgs = append(st.orgs, memoOrg{d, org})
	return org, nil
}

// aligned reports whether identifier ident is aligned with the author
// domain under mode "r" or "s" (RFC 9989 3.2.10, 4.10.2).
func (e *Evaluator) aligned(ctx context.Context, st *authorState, ident, mode string) (bool, error) {
	d, err := canonicalDomain(ident)
	if err != nil {
		return false, nil
	}
	if d == st.author {
		return true, nil
	}
	if mode == "s" {
		return false, nil
	}
	// org(d) is d or one of its ancestors, so it can only equal the
	// author's Organizational Domain if d is at or below it.
	if d != st.org && !strings.HasSuffix(d, "."+st.org) {
		return false, nil
	}
	org, err := e.orgDomain(ctx, st, d)
	if errors.Is(err, errWalkBound) {
		if !st.boundNoted {
			st.boundNoted = true
			st.notes = append(st.notes, errWalkBound.Error())
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return org == st.org, nil
}

func domainOfAddr(s string) string {
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func (e *Evaluator) evaluateAuthor(ctx context.Context, in Input, author string) (res Result) {
	st := newAuthorState(author)
	res = Result{AuthorDomain: author, Disposition: string(PolicyNone), DiscoveryMethod: DiscoveryTreeWalk}
	if e.Mode.is7489() {
		res.DiscoveryMethod = DiscoveryPSL
	}
	defer func() {
		res.Queries = st.queries
		if len(st.notes) > 0 {
			note := strings.Join(st.notes, "; ")
			if res.Err == "" {
				res.Err = note
			} else {
				res.Err += "; " + note
			}
		}
		e.applyDeny(in, &res)
	}()
	if e.Resolver == nil {
		res.Result, res.Err = ResultTempError, "dmarc: no resolver configured"
		return res
	}

	// Policy discovery.
	var (
		policyDomain string
		ni           *nameInfo
	)
	if e.Mode.is7489() {
		// RFC 7489 6.6.3: the From domain, then its Organizational Domain.
		st.org = OrgDomainPSL(e.psl(), author)
		policyDomain, ni = author, e.lookupDMARC(ctx, st, author)
		if !ni.found && !ni.multiple && ni.temp == nil && st.org != author {
			policyDomain, ni = st.org, e.lookupDMARC(ctx, st, st.org)
		}
		if ni.temp != nil {
			res.Result, res.Err, res.PolicyDomain = ResultTempError, ni.temp.Error(), policyDomain
			return res
		}
		if !ni.found {
			res.Result, res.PolicyDomain = ResultNone, policyDomain
			if !ni.multiple {
				res.Err = "dmarc: no DMARC record"
			}
			return res
		}
	} else {
		w := e.treeWalk(ctx, st, author)
		if w.temp != nil {
			res.Result, res.Err = ResultTempError, w.temp.Error()
			return res
		}
		st.org = orgFromWalk(w)
		if len(w.entries) == 0 {
			res.Result, res.OrgDomain = ResultNone, st.org
			if len(st.notes) == 0 {
				res.Err = "dmarc: no DMARC record"
			}
			return res
		}
		// RFC 9989 4.10.1: the Author Domain's record, else the
		// Organizational Domain's, else the Public Suffix Domain's.
		pick := -1
		if w.entries[0].domain == author {
			pick = 0
		} else {
			for i, en := range w.entries {
				if en.domain == st.org {
					pick = i
					break
				}
			}
			if pick < 0 {
				for i, en := range w.entries {
					if en.ni.rec != nil && en.ni.rec.PSD == "y" {
						pick = i
						break
					}
				}
			}
			if pick < 0 { // not reachable with 4.10.2 selection; be safe
				pick = len(w.entries) - 1
			}
		}
		policyDomain, ni = w.entries[pick].domain, w.entries[pick].ni
	}
	res.PolicyDomain, res.OrgDomain = policyDomain, st.org
	if ni.err != nil {
		res.Result, res.Err = ResultPermError, ni.err.Error()
		return res
	}
	rec := ni.rec
	st.rec = rec
	res.Policy = publishedPolicy(policyDomain, rec, e.Mode)

	// Identifier alignment (RFC 9989 4.4, 4.10.2).
	var tempErr error
	spfMfrom := in.SPF.Scope == "" || strings.EqualFold(in.SPF.Scope, "mfrom")
	if spf := in.SPF; strings.EqualFold(spf.Result, "pass") && spfMfrom {
		ok, err := e.aligned(ctx, st, domainOfAddr(spf.Domain), rec.ASPF)
		res.SPFAligned = ok
		if err != nil {
			tempErr = err
		}
	}
	for _, sig := range in.DKIM {
		if !strings.EqualFold(sig.Result, "pass") {
			continue
		}
		ok, err := e.aligned(ctx, st, sig.Domain, rec.ADKIM)
		if err != nil && tempErr == nil {
			tempErr = err
		}
		if ok {
			res.DKIMAligned = true
			res.AlignedDKIMDomain = strings.ToLower(strings.TrimSuffix(sig.Domain, "."))
			break
		}
	}
	switch {
	case res.SPFAligned || res.DKIMAligned:
		res.Result = ResultPass
	case tempErr != nil:
		res.Result, res.Err = ResultTempError, tempErr.Error()
	default:
		res.Result = ResultFail
		// RFC 9989 5.3.6: an SPF or DKIM temperror on an identifier that
		// would have aligned means the message neither passes nor fails.
		if strings.EqualFold(in.SPF.Result, "temperror") && spfMfrom {
			if in.SPF.Domain == "" {
				res.Result, res.Err = ResultTempError, "dmarc: SPF temperror"
			} else if ok, _ := e.aligned(ctx, st, domainOfAddr(in.SPF.Domain), rec.ASPF); ok {
				res.Result, res.Err = ResultTempError, "dmarc: SPF temperror for aligned domain "+in.SPF.Domain
			}
		}
		for _, sig := range in.DKIM {
			if res.Result != ResultFail || !strings.EqualFold(sig.Result, "temperror") {
				continue
			}
			if ok, _ := e.aligned(ctx, st, sig.Domain, rec.ADKIM); ok {
				res.Result, res.Err = ResultTempError, "dmarc: DKIM temperror for aligned domain "+sig.Domain
			}
		}
	}

	// Local policy: require both SPF and DKIM alignment.
	if res.Result == ResultPass && !(res.SPFAligned && res.DKIMAligned) && matchDomain(e.Overrides.RequireBothAligned, author) {
		res.Result = ResultFail
		res.Reasons = append(res.Reasons, Reason{Type: ReasonLocalPolicy, Comment: "local policy requires both SPF and DKIM alignment"})
	}

	// Policy tag (RFC 9989 4.10.1).
	res.AppliedPolicy = "p"
	policy := rec.P
	if policyDomain != author {
		res.AppliedPolicy, policy = "sp", rec.SP
		if policy == "" {
			res.AppliedPolicy, policy = "p", rec.P
		}
		if res.Result == ResultFail && rec.NP != "" && rec.NP != policy && e.nonExistent(ctx, st, author) {
			res.AppliedPolicy, policy = "np", rec.NP
		}
	}
	if res.Result != ResultFail {
		return res
	}
	disp := policy
	if rec.Testing && disp != PolicyNone {
		lower := disp.lower()
		res.Reasons = append(res.Reasons, Reason{Type: ReasonPolicyTestMode,
			Comment: fmt.Sprintf("t=y: %s applied as %s", disp, lower)})
		disp = lower
	}
	if e.Mode.is7489() && rec.Pct < 100 && disp != PolicyNone && e.rand()*100 >= float64(rec.Pct) {
		lower := disp.lower()
		res.Reasons = append(res.Reasons, Reason{Type: ReasonSampledOut,
			Comment: fmt.Sprintf("pct=%d: %s applied as %s", rec.Pct, disp, lower)})
		disp = lower
	}
	if disp != PolicyNone {
		if r, ok := e.trustedForwarder(ctx, in, st); ok {
			res.Reasons = append(res.Reasons, r)
			disp = PolicyNone
		} else if matchDomain(e.Overrides.AllowDomains, author) || matchIP(e.Overrides.AllowIPs, in.ClientIP) {
			res.Reasons = append(res.Reasons, Reason{Type: ReasonLocalPolicy, Comment: "allow list"})
			disp = PolicyNone
		}
	}
	res.Disposition = string(disp)
	return res
}

// applyDeny forces reject for deny-listed author domains or client IPs.
func (e *Evaluator) applyDeny(in Input, res *Result) {
	if res.Disposition == string(PolicyReject) {
		return
	}
	if matchDomain(e.Overrides.DenyDomains, res.AuthorDomain) || matchIP(e.Overrides.DenyIPs, in.ClientIP) {
		res.Disposition = string(PolicyReject)
		res.Reasons = append(res.Reasons, Reason{Type: ReasonLocalPolicy, Comment: "deny list"})
	}
}

// nonExistent reports whether the author domain does not exist (RFC 9989
// 3.2.13, A.4): NXDOMAIN for A, AAAA and MX alike. Any other answer, or a DNS
// error, counts as existing (np is then not applied). At most 3 queries.
func (e *Evaluator) nonExistent(ctx context.Context, st *authorState, d string) bool {
	for _, qt := range [maxExistenceQueries]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
		st.queries++
		ans, err := e.Resolver.Lookup(ctx, d, qt)
		if err != nil {
			st.notes = append(st.notes, fmt.Sprintf("existence check of %s: %v (np not applied)", d, err))
			return false
		}
		if !ans.NXDomain() {
			return false
		}
	}
	return true
}

func matchDomain(list []string, d string) bool {
	for _, x := range list {
		x = resolvercache.CanonicalName(x)
		if x != "" && (d == x || strings.HasSuffix(d, "."+x)) {
			return true
		}
	}
	return false
}

func matchIP(list []netip.Prefix, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range list {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96) // compared unmapped, as ip is
		}
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func publishedPolicy(domain string, r *Record, mode Mode) *PublishedPolicy {
	p := &PublishedPolicy{Domain: domain, P: string(r.P), SP: string(r.SP), NP: string(r.NP),
		ADKIM: r.ADKIM, ASPF: r.ASPF, Testing: "n", FO: strings.Join(r.FO, ":"), PNoneFallback: r.PNoneFallback}
	if r.Testing {
		p.Testing = "y"
	}
	if mode.is7489() {
		pct := r.Pct
		p.Pct = &pct
	} else {
		p.PSD = r.PSD
	}
	for _, u := range r.RUA {
		p.RUA = append(p.RUA, u.Address)
	}
	for _, u := range r.RUF {
		p.RUF = append(p.RUF, u.Address)
	}
	return p
}
