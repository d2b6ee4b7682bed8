package dmarc

import (
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

func eval(t *testing.T, e *Evaluator, in Input) Result {
	t.Helper()
	return e.Evaluate(context.Background(), in)
}

func txtQueries(m *mapResolver) []string {
	var out []string
	for _, q := range m.queries() {
		if strings.HasPrefix(q, "TXT ") {
			out = append(out, strings.TrimPrefix(q, "TXT _dmarc."))
		}
	}
	return out
}

func TestTreeWalkOrgDomainFewestLabels(t *testing.T) {
	// RFC 9989 4.10.2 example: records at mail.example.com and example.com,
	// none at a.mail.example.com or com → org domain example.com.
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.mail.example.com": {"v=DMARC1; p=none"},
		"_dmarc.example.com":      {"v=DMARC1; p=reject; sp=quarantine"},
	}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"a.mail.example.com"}})
	if r.OrgDomain != "example.com" || r.PolicyDomain != "example.com" || r.Result != ResultFail ||
		r.AppliedPolicy != "sp" || r.Disposition != "quarantine" || r.DiscoveryMethod != DiscoveryTreeWalk {
		t.Fatalf("got %+v", r)
	}
	want := []string{"a.mail.example.com", "mail.example.com", "example.com", "com"}
	if got := txtQueries(m); !reflect.DeepEqual(got, want) {
		t.Errorf("queries %v, want %v", got, want)
	}
}

func TestTreeWalkAuthorRecordWins(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.mail.example.com": {"v=DMARC1; p=quarantine"},
		"_dmarc.example.com":      {"v=DMARC1; p=reject"},
	}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"mail.example.com"},
		DKIM: []DKIMResult{{Result: "pass", Domain: "other.example.com"}}})
	// Policy from the author domain (p), org domain example.com, so the
	// DKIM d=other.example.com is relaxed-aligned.
	if r.PolicyDomain != "mail.example.com" || r.OrgDomain != "example.com" || r.AppliedPolicy != "p" || r.Result != ResultPass || !r.DKIMAligned {
		t.Fatalf("got %+v", r)
	}
}

func TestTreeWalkPSDn(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.mail.example.com": {"v=DMARC1; p=reject; psd=n"},
		"_dmarc.example.com":      {"v=DMARC1; p=none"},
	}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"a.mail.example.com"},
		SPF: SPFResult{Result: "pass", Domain: "example.com", Scope: "mfrom"}})
	// psd=n stops the walk: mail.example.com is the org domain and policy
	// domain, so SPF for example.com is not aligned.
	if r.OrgDomain != "mail.example.com" || r.PolicyDomain != "mail.example.com" || r.SPFAligned || r.Result != ResultFail || r.Disposition != "reject" {
		t.Fatalf("got %+v", r)
	}
	if got := txtQueries(m); !reflect.DeepEqual(got, []string{"a.mail.example.com", "mail.example.com"}) {
		t.Errorf("queries %v", got)
	}
}

func TestTreeWalkPSDy(t *testing.T) {
	// RFC 9989 B.4.3.
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.bank.example":       {"v=DMARC1; p=quarantine; psd=y; np=reject"},
		"_dmarc.giant.bank.example": {"v=DMARC1; p=quarantine"},
	}}
	e := &Evaluator{Resolver: m}
	r := eval(t, e, Input{FromDomains: []string{"giant.bank.example"},
		SPF:  SPFResult{Result: "pass", Domain: "mail.giant.bank.example", Scope: "mfrom"},
		DKIM: []DKIMResult{{Result: "pass", Domain: "mail.mega.bank.example"}}})
	if r.OrgDomain != "giant.bank.example" || r.PolicyDomain != "giant.bank.example" || !r.SPFAligned || r.DKIMAligned || r.Result != ResultPass {
		t.Fatalf("got %+v", r)
	}
	if r.Policy.PSD != "u" {
		t.Errorf("psd %q", r.Policy.PSD)
	}
	// Only DKIM from mega.bank.example: its org domain is mega.bank.example
	// (one below the PSD), not aligned — in fact never walked, since it is
	// not under giant.bank.example.
	r = eval(t, e, Input{FromDomains: []string{"giant.bank.example"}, DKIM: []DKIMResult{{Result: "pass", Domain: "mail.mega.bank.example"}}})
	if r.DKIMAligned || r.Result != ResultFail || r.Disposition != "quarantine" {
		t.Fatalf("got %+v", r)
	}

	// An author under the PSD with no record of its own and none at its
	// org domain: the PSD record applies; np for a non-existent name.
	m.log = nil
	r = eval(t, e, Input{FromDomains: []string{"x.unreg.bank.example"}})
	if r.OrgDomain != "unreg.bank.example" || r.PolicyDomain != "bank.example" || r.AppliedPolicy != "np" || r.Disposition != "reject" {
		t.Fatalf("got %+v", r)
	}
	if r.Policy.PSD != "y" {
		t.Errorf("psd %q", r.Policy.PSD)
	}
}

func TestTreeWalkPSDyAtAuthor(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.bank.example": {"v=DMARC1; p=reject; psd=y"}}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"bank.example"}})
	if r.OrgDomain != "bank.example" || r.PolicyDomain != "bank.example" || r.AppliedPolicy != "p" || r.Queries != 1 {
		t.Fatalf("got %+v", r)
	}
}

func TestTreeWalkLongName(t *testing.T) {
	// RFC 9989 4.10 / B.4.2: more than 8 labels → at most 8 queries,
	// skipping to the last 7 labels after the first.
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}}}
	author := "a.b.c.d.e.f.g.h.i.j.k.example.com"
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{author},
		SPF: SPFResult{Result: "pass", Domain: "example.com", Scope: "mfrom"}})
	want := []string{author, "g.h.i.j.k.example.com", "h.i.j.k.example.com", "i.j.k.example.com",
		"j.k.example.com", "k.example.com", "example.com", "com"}
	if got := txtQueries(m); !reflect.DeepEqual(got, want) {
		t.Fatalf("queries %v\nwant %v", got, want)
	}
	if r.Queries != 8 || r.PolicyDomain != "example.com" || r.OrgDomain != "example.com" || !r.SPFAligned || r.Result != ResultPass {
		t.Fatalf("got %+v", r)
	}

	// Exactly 8 labels: parent next, 8 queries in all.
	m.log = nil
	eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"c.d.e.f.g.h.example.com"}})
	if got := txtQueries(m); len(got) != 8 || got[1] != "d.e.f.g.h.example.com" {
		t.Fatalf("queries %v", got)
	}

	// A configured bound of 4: first query, then the last 3 labels.
	m.log = nil
	r = eval(t, &Evaluator{Resolver: m, MaxQueries: 4}, Input{FromDomains: []string{author}})
	want = []string{author, "k.example.com", "example.com", "com"}
	if got := txtQueries(m); !reflect.DeepEqual(got, want) || r.Queries != 4 {
		t.Fatalf("queries %v (%d), want %v", got, r.Queries, want)
	}
}

func TestTreeWalkAlignmentWalk(t *testing.T) {
	// RFC 9989 B.4.1: the DKIM identifier's own walk finds example.com.
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.example.com":         {"v=DMARC1; p=reject"},
		"_dmarc.signing.example.com": {"v=DMARC1; p=none"},
	}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"example.com"},
		DKIM: []DKIMResult{{Result: "fail", Domain: "example.com"}, {Result: "pass", Domain: "other.net"}, {Result: "pass", Domain: "signing.example.com"}}})
	if !r.DKIMAligned || r.AlignedDKIMDomain != "signing.example.com" || r.Result != ResultPass {
		t.Fatalf("got %+v", r)
	}
	// other.net is never walked (it cannot share example.com's org
	// domain); _dmarc.example.com and _dmarc.com are asked only once.
	want := []string{"example.com", "com", "signing.example.com"}
	if got := txtQueries(m); !reflect.DeepEqual(got, want) {
		t.Errorf("queries %v, want %v", got, want)
	}
}

func TestStrictAlignment(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject; adkim=s; aspf=s"}}}
	e := &Evaluator{Resolver: m}
	r := eval(t, e, Input{FromDomains: []string{"example.com"},
		SPF:  SPFResult{Result: "pass", Domain: "mail.example.com", Scope: "mfrom"},
		DKIM: []DKIMResult{{Result: "pass", Domain: "mail.example.com"}}})
	if r.Result != ResultFail || r.SPFAligned || r.DKIMAligned || r.Disposition != "reject" {
		t.Fatalf("got %+v", r)
	}
	r = eval(t, e, Input{FromDomains: []string{"Example.COM."}, DKIM: []DKIMResult{{Result: "pass", Domain: "EXAMPLE.com"}}})
	if r.Result != ResultPass || !r.DKIMAligned {
		t.Fatalf("got %+v", r)
	}
	// SPF of the HELO identity never aligns (RFC 9989 4.4.2).
	r = eval(t, e, Input{FromDomains: []string{"example.com"}, SPF: SPFResult{Result: "pass", Domain: "example.com", Scope: "helo"}})
	if r.SPFAligned || r.Result != ResultFail {
		t.Fatalf("got %+v", r)
	}
}

func TestNPForNonExistentSubdomain(t *testing.T) {
	m := &mapResolver{
		txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=none; sp=quarantine; np=reject"}},
		a:   map[string][]netip.Addr{"www.example.com": {netip.MustParseAddr("192.0.2.1")}},
	}
	e := &Evaluator{Resolver: m}
	r := eval(t, e, Input{FromDomains: []string{"nx.example.com"}})
	if r.AppliedPolicy != "np" || r.Disposition != "reject" || r.Result != ResultFail {
		t.Fatalf("nx: %+v", r)
	}
	if r.Queries != 3+3 { // walk nx.example.com, example.com, com + A, AAAA, MX
		t.Errorf("queries %d: %v", r.Queries, m.queries())
	}
	r = eval(t, e, Input{FromDomains: []string{"www.example.com"}})
	if r.AppliedPolicy != "sp" || r.Disposition != "quarantine" {
		t.Fatalf("existing: %+v", r)
	}
	r = eval(t, e, Input{FromDomains: []string{"example.com"}})
	if r.AppliedPolicy != "p" || r.Disposition != "none" {
		t.Fatalf("org: %+v", r)
	}
	// No np: sp, then p, applies to non-existent subdomains too.
	m.txt["_dmarc.example.com"] = []string{"v=DMARC1; p=reject"}
	r = eval(t, e, Input{FromDomains: []string{"nx.example.com"}})
	if r.AppliedPolicy != "p" || r.Disposition != "reject" {
		t.Fatalf("no np: %+v", r)
	}
	// Existence check failing → np not applied.
	m.txt["_dmarc.example.com"] = []string{"v=DMARC1; p=none; np=reject"}
	r = eval(t, &Evaluator{Resolver: &failAOnly{m: m, fail: map[string]bool{"broken.example.com": true}}}, Input{FromDomains: []string{"broken.example.com"}})
	if r.AppliedPolicy != "p" || r.Disposition != "none" || !strings.Contains(r.Err, "np not applied") {
		t.Fatalf("broken: %+v", r)
	}
}

// failAOnly fails every non-TXT query for the names in fail.
type failAOnly struct {
	m    *mapResolver
	fail map[string]bool
}

func (f *failAOnly) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	if qtype != dns.TypeTXT && f.fail[name] {
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindTimeout}
	}
	return f.m.Lookup(ctx, name, qtype)
}

func TestTestingMode(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.r.example": {"v=DMARC1; p=reject; t=y"},
		"_dmarc.q.example": {"v=DMARC1; p=quarantine; t=y"},
		"_dmarc.n.example": {"v=DMARC1; p=none; t=y"},
	}}
	e := &Evaluator{Resolver: m}
	for _, c := range []struct{ dom, disp string }{{"r.example", "quarantine"}, {"q.example", "none"}, {"n.example", "none"}} {
		r := eval(t, e, Input{FromDomains: []string{c.dom}})
		if r.Disposition != c.disp || r.Policy.Testing != "y" {
			t.Errorf("%s: %+v", c.dom, r)
		}
		hasReason := len(r.Reasons) == 1 && r.Reasons[0].Type == ReasonPolicyTestMode
		if hasReason != (c.dom != "n.example") {
			t.Errorf("%s: reasons %+v", c.dom, r.Reasons)
		}
	}
	// t is not a tag in RFC 7489 mode.
	r := eval(t, &Evaluator{Resolver: m, Mode: ModeRFC7489}, Input{FromDomains: []string{"r.example"}})
	if r.Disposition != "reject" {
		t.Errorf("7489: %+v", r)
	}
}

func TestSeveralRecordsAtOneName(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.sub.example.com": {"v=DMARC1; p=none", "v=DMARC1; p=reject", "unrelated"},
		"_dmarc.example.com":     {"v=DMARC1; p=quarantine", "google-site-verification=x"},
	}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"sub.example.com"}})
	// RFC 9989 4.10 step 2: both discarded, the walk goes on.
	if r.PolicyDomain != "example.com" || r.Disposition != "quarantine" || !strings.Contains(r.Err, "2 DMARC records at _dmarc.sub.example.com") {
		t.Fatalf("got %+v", r)
	}
	// RFC 7489 6.6.3 step 5: no DMARC processing.
	r = eval(t, &Evaluator{Resolver: m, Mode: ModeRFC7489}, Input{FromDomains: []string{"sub.example.com"}})
	if r.Result != ResultNone || r.Disposition != "none" {
		t.Fatalf("7489: %+v", r)
	}
}

func TestTempErrorAndNoRecord(t *testing.T) {
	m := &mapResolver{
		txt:  map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}},
		fail: map[string]bool{"_dmarc.example.com": true},
	}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"a.example.com"}})
	if r.Result != ResultTempError || r.Disposition != "none" || r.Err == "" {
		t.Fatalf("got %+v", r)
	}
	r = eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"nothing.test"}})
	if r.Result != ResultNone || r.Disposition != "none" || r.PolicyDomain != "" {
		t.Fatalf("got %+v", r)
	}
	// Temporary failure while walking for an identifier's org domain.
	m2 := &mapResolver{
		txt:  map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}},
		fail: map[string]bool{"_dmarc.mail.example.com": true},
	}
	r = eval(t, &Evaluator{Resolver: m2}, Input{FromDomains: []string{"example.com"}, DKIM: []DKIMResult{{Result: "pass", Domain: "mail.example.com"}}})
	if r.Result != ResultTempError {
		t.Fatalf("got %+v", r)
	}
}

func TestUnusableRecords(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.bad.example":  {"v=DMARC1; p=bogus"},
		"_dmarc.rua.example":  {"v=DMARC1; p=bogus; rua=mailto:d@rua.example"},
		"_dmarc.norp.example": {"v=DMARC1; rua=mailto:d@rua.example; adkim=x"},
	}}
	e := &Evaluator{Resolver: m}
	if r := eval(t, e, Input{FromDomains: []string{"bad.example"}}); r.Result != ResultPermError || r.PolicyDomain != "bad.example" {
		t.Errorf("bad: %+v", r)
	}
	r := eval(t, e, Input{FromDomains: []string{"rua.example"}})
	if r.Result != ResultFail || r.Policy.P != "none" || !r.Policy.PNoneFallback || r.Disposition != "none" {
		t.Errorf("rua: %+v", r)
	}
	r = eval(t, e, Input{FromDomains: []string{"norp.example"}})
	if r.Result != ResultFail || r.Policy.P != "none" || r.Policy.ADKIM != "r" {
		t.Errorf("norp: %+v", r)
	}
}

func TestAuthorDomainInput(t *testing.T) {
	e := &Evaluator{Resolver: &mapResolver{}}
	if r := eval(t, e, Input{}); r.Result != ResultPermError {
		t.Errorf("no From: %+v", r)
	}
	if r := eval(t, e, Input{FromDomains: []string{"a..b"}}); r.Result != ResultPermError {
		t.Errorf("bad From: %+v", r)
	}
	if r := eval(t, e, Input{FromDomains: []string{strings.Repeat("a", 64) + ".example"}}); r.Result != ResultPermError {
		t.Errorf("long label: %+v", r)
	}
	many := make([]string, MaxAuthorDomains+1)
	for i := range many {
		many[i] = strings.Repeat("x", i+1) + ".example"
	}
	if r := eval(t, e, Input{FromDomains: many}); r.Result != ResultPermError || r.Disposition != "reject" {
		t.Errorf("too many: %+v", r)
	}
	// IDN author domain is looked up in A-label form.
	m := &mapResolver{txt: map[string][]string{"_dmarc.xn--bcher-kva.example": {"v=DMARC1; p=reject"}}}
	if r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"bücher.example"}}); r.PolicyDomain != "xn--bcher-kva.example" {
		t.Errorf("idn: %+v", r)
	}
}

func TestMultipleFrom(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{
		"_dmarc.a.example": {"v=DMARC1; p=none"},
		"_dmarc.b.example": {"v=DMARC1; p=reject"},
	}}
	in := Input{FromDomains: []string{"a.example", "B.example", "a.example"}, DKIM: []DKIMResult{{Result: "pass", Domain: "a.example"}}}
	r := eval(t, &Evaluator{Resolver: m}, in)
	if r.AuthorDomain != "b.example" || r.Disposition != "reject" || len(r.Authors) != 2 || r.Authors[0].Result != ResultPass {
		t.Fatalf("strictest: %+v", r)
	}
	in.DKIM = append(in.DKIM, DKIMResult{Result: "pass", Domain: "b.example"})
	r = eval(t, &Evaluator{Resolver: m}, in)
	if r.Disposition != "none" || r.Result != ResultPass {
		t.Fatalf("both pass: %+v", r)
	}
	r = eval(t, &Evaluator{Resolver: m, MultipleFrom: MultipleFromReject}, in)
	if r.Disposition != "reject" || r.Reasons[len(r.Reasons)-1].Type != ReasonLocalPolicy {
		t.Fatalf("reject mode: %+v", r)
	}
}

func TestPctSampling(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject; pct=50"}}}
	in := Input{FromDomains: []string{"example.com"}}
	r := eval(t, &Evaluator{Resolver: m, Mode: ModeRFC7489, Rand: func() float64 { return 0.3 }}, in)
	if r.Disposition != "reject" || len(r.Reasons) != 0 || *r.Policy.Pct != 50 {
		t.Fatalf("sampled in: %+v", r)
	}
	r = eval(t, &Evaluator{Resolver: m, Mode: ModeRFC7489, Rand: func() float64 { return 0.7 }}, in)
	if r.Disposition != "quarantine" || len(r.Reasons) != 1 || r.Reasons[0].Type != ReasonSampledOut {
		t.Fatalf("sampled out: %+v", r)
	}
	// pct means nothing in RFC 9989 mode.
	r = eval(t, &Evaluator{Resolver: m, Rand: func() float64 { return 0.7 }}, in)
	if r.Disposition != "reject" || r.Policy.Pct != nil {
		t.Fatalf("9989: %+v", r)
	}
}

func TestOverrides(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}}}
	aar := "i=1; mx.forwarder.example; dkim=pass header.d=example.com; spf=fail smtp.mailfrom=x@example.com; dmarc=pass header.from=example.com"
	in := Input{FromDomains: []string{"example.com"}, ClientIP: netip.MustParseAddr("198.51.100.7"),
		ARC: ARCInput{Result: "pass", Sets: []ARCSet{{Instance: 1, Sealer: "Forwarder.example", AuthResults: aar}}}}

	r := eval(t, &Evaluator{Resolver: m, Overrides: Overrides{TrustedARCSealers: []string{"forwarder.example"}}}, in)
	if r.Result != ResultFail || r.Disposition != "none" || len(r.Reasons) != 1 || r.Reasons[0].Type != ReasonTrustedForwarder {
		t.Fatalf("trusted forwarder: %+v", r)
	}
	// Untrusted sealer or broken chain: policy applies.
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{TrustedARCSealers: []string{"other.example"}}}, in)
	if r.Disposition != "reject" {
		t.Fatalf("untrusted: %+v", r)
	}
	in2 := in
	in2.ARC.Result = "fail"
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{TrustedARCSealers: []string{"forwarder.example"}}}, in2)
	if r.Disposition != "reject" {
		t.Fatalf("chain failed: %+v", r)
	}
	// Aligned DKIM pass recorded by the sealer (no dmarc= result).
	in3 := in
	in3.ARC.Sets = []ARCSet{{Instance: 2, Sealer: "forwarder.example", AuthResults: "i=2; mx.forwarder.example; dkim=pass header.d=mail.example.com"}}
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{TrustedARCSealers: []string{"forwarder.example"}}}, in3)
	if r.Disposition != "none" || !strings.Contains(r.Reasons[0].Comment, "aligned dkim=pass") {
		t.Fatalf("aligned dkim in AAR: %+v", r)
	}

	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{AllowIPs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}, in)
	if r.Disposition != "none" || r.Reasons[0].Type != ReasonLocalPolicy {
		t.Fatalf("allow ip: %+v", r)
	}
	// An IPv4-mapped prefix matches the IPv4 client it maps.
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{AllowIPs: []netip.Prefix{netip.MustParsePrefix("::ffff:198.51.100.0/120")}}}, in)
	if r.Disposition != "none" || r.Reasons[0].Type != ReasonLocalPolicy {
		t.Fatalf("allow ip, mapped prefix: %+v", r)
	}
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{AllowDomains: []string{"example.com"}, DenyIPs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}}}, in)
	if r.Disposition != "reject" || r.Reasons[len(r.Reasons)-1].Comment != "deny list" {
		t.Fatalf("deny beats allow: %+v", r)
	}
	// Deny applies even to a pass.
	pass := Input{FromDomains: []string{"example.com"}, DKIM: []DKIMResult{{Result: "pass", Domain: "example.com"}}}
	r = eval(t, &Evaluator{Resolver: m, Overrides: Overrides{DenyDomains: []string{"example.com"}}}, pass)
	if r.Result != ResultPass || r.Disposition != "reject" {
		t.Fatalf("deny pass: %+v", r)
	}

	// Require both alignments.
	e := &Evaluator{Resolver: m, Overrides: Overrides{RequireBothAligned: []string{"example.com"}}}
	r = eval(t, e, Input{FromDomains: []string{"example.com"}, SPF: SPFResult{Result: "pass", Domain: "example.com", Scope: "mfrom"}})
	if r.Result != ResultFail || r.Disposition != "reject" || r.Reasons[0].Type != ReasonLocalPolicy {
		t.Fatalf("require both, spf only: %+v", r)
	}
	r = eval(t, e, Input{FromDomains: []string{"example.com"}, SPF: SPFResult{Result: "pass", Domain: "example.com", Scope: "mfrom"},
		DKIM: []DKIMResult{{Result: "pass", Domain: "example.com"}}})
	if r.Result != ResultPass || r.Disposition != "none" {
		t.Fatalf("require both, both: %+v", r)
	}
}

func TestStripInstance(t *testing.T) {
	for in, want := range map[string]string{
		"i=1; mx.example; spf=pass": " mx.example; spf=pass",
		" I = 12 ;x":                "x",
		"mx.example; spf=pass":      "mx.example; spf=pass",
	} {
		if got := stripInstance(in); got != want {
			t.Errorf("stripInstance(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestResultJSON(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject; rua=mailto:d@example.com"}}}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"example.com"}})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"result":"fail"`, `"policy_domain":"example.com"`, `"disposition":"reject"`, `"discovery_method":"treewalk"`, `"rua":["mailto:d@example.com"]`, `"applied_policy":"p"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON %s lacks %s", b, k)
		}
	}
}

func TestExternalReportsAcceptedBounds(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"example.com._report._dmarc.rcpt.example": {"v=DMARC1"}}}
	e := &Evaluator{Resolver: m}
	if ok, err := e.ExternalReportsAccepted(context.Background(), "Example.com", "rcpt.example."); !ok || err != nil {
		t.Fatalf("got %v %v", ok, err)
	}
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60)
	if ok, err := e.ExternalReportsAccepted(context.Background(), long, long); ok || err == nil {
		t.Fatalf("too long: %v %v", ok, err)
	}
	if n := len(m.queries()); n != 1 {
		t.Errorf("%d queries", n)
	}
}

func TestAlignmentWalkBound(t *testing.T) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject"}}}
	var sigs []DKIMResult
	for i := 0; i < MaxAlignmentWalks+5; i++ {
		d := strings.Repeat("s", i+1) + ".example.com"
		m.txt["_dmarc."+d] = []string{"v=DMARC1; p=none; psd=n"} // own org domain: not aligned
		sigs = append(sigs, DKIMResult{Result: "pass", Domain: d})
	}
	r := eval(t, &Evaluator{Resolver: m}, Input{FromDomains: []string{"example.com"}, DKIM: sigs})
	if r.Result != ResultFail || r.DKIMAligned || !strings.Contains(r.Err, "alignment tree walks") {
		t.Fatalf("got %+v", r)
	}
	if r.Queries != 2+MaxAlignmentWalks {
		t.Errorf("queries %d, want %d", r.Queries, 2+MaxAlignmentWalks)
	}
}
