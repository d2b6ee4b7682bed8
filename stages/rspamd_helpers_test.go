package stages_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/dmarc"
	"github.com/authpipe/authpipe/stages/verdict"
)

// Helpers for TestConformanceRspamd: the suite's YAML shapes, rspamd's fake
// DNS served by dnstest, and the mapping from rspamd symbols to verdict
// predicates (README section 4b of the conformance tree).

// rspamdCase is one case of a cases.*.yml file, derived from rspamd's Robot
// Framework functional tests.
type rspamdCase struct {
	Name       string          `yaml:"name"`
	Message    string          `yaml:"message"`
	ScanParams rspamdScanParam `yaml:"scan_params"`
	Expect     []rspamdSymbol  `yaml:"expect_symbols"`
	Absent     []rspamdSymbol  `yaml:"expect_absent_symbols"`
	OtherSteps []string        `yaml:"other_steps"`
}

// rspamdScanParam is what rspamc passed to the scan: the SMTP client IP,
// the MAIL FROM (SMTP, not the header From) and the HELO name. Settings and
// Rewrite-Mime-From are rspamd configuration and have no authpipe meaning.
type rspamdScanParam struct {
	IP   string `yaml:"IP"`
	From string `yaml:"From"`
	Helo string `yaml:"Helo"`
}

// rspamdSymbol is an expected symbol, written either as a bare name or as
// {symbol, option}.
type rspamdSymbol struct {
	Name   string
	Option string
}

func (s *rspamdSymbol) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		s.Name = n.Value
		return nil
	}
	var m struct {
		Symbol string `yaml:"symbol"`
		Option string `yaml:"option"`
	}
	if err := n.Decode(&m); err != nil {
		return fmt.Errorf("expected symbol: %w", err)
	}
	s.Name, s.Option = m.Symbol, m.Option
	return nil
}

// rspamdRR is one entry of a fake-dns.*.yml file: replies for (name, type),
// or an rcode for it.
type rspamdRR struct {
	Name    string   `yaml:"name"`
	Type    string   `yaml:"type"`
	Replies []string `yaml:"replies"`
	Rcode   string   `yaml:"rcode"`
}

func readRspamdYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// serveRspamdDNS loads rspamd's fake DNS into an in-process authoritative
// server. Every (name, type) entry is honoured for that type only:
// replies become records (TXT values over 255 octets split into several
// character-strings), "norec" is NOERROR with no answer (NODATA),
// "nxdomain" is NXDOMAIN, "timeout" no reply at all. Names absent from the
// file are NXDOMAIN.
func serveRspamdDNS(t *testing.T, path string) *dnstest.Server {
	t.Helper()
	var rrs []rspamdRR
	readRspamdYAML(t, path, &rrs)
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	const ttl = 300
	var timeouts []string
	for _, r := range rrs {
		owner := strings.TrimSuffix(r.Name, ".")
		qtype, ok := dns.StringToType[r.Type]
		if !ok {
			t.Fatalf("%s: %s: unknown type %q", path, owner, r.Type)
		}
		switch r.Rcode {
		case "":
		case "norec":
			srv.SetRcode(owner, qtype, dns.RcodeSuccess)
			continue
		case "nxdomain":
			srv.SetRcode(owner, qtype, dns.RcodeNameError)
			continue
		case "timeout":
			timeouts = append(timeouts, owner)
			continue
		default:
			t.Fatalf("%s: %s: unknown rcode %q", path, owner, r.Rcode)
		}
		for _, rep := range r.Replies {
			var rr dns.RR
			switch qtype {
			case dns.TypeTXT:
				rr = dnstest.TXT(owner, rep, ttl)
			case dns.TypeA, dns.TypeAAAA:
				ip, err := netip.ParseAddr(rep)
				if err != nil || ip.Is4() != (qtype == dns.TypeA) {
					t.Fatalf("%s: %s %s %q: not an address of that family", path, owner, r.Type, rep)
				}
				if qtype == dns.TypeA {
					rr = &dns.A{Hdr: dnstest.Header(owner, qtype, ttl), A: ip.AsSlice()}
				} else {
					rr = &dns.AAAA{Hdr: dnstest.Header(owner, qtype, ttl), AAAA: ip.AsSlice()}
				}
			case dns.TypeMX:
				pref, host, ok := strings.Cut(rep, " ")
				p, err := strconv.ParseUint(pref, 10, 16)
				if !ok || err != nil {
					t.Fatalf("%s: %s MX %q: want \"pref host\"", path, owner, rep)
				}
				rr = &dns.MX{Hdr: dnstest.Header(owner, qtype, ttl), Preference: uint16(p), Mx: dnstest.Name(strings.TrimSpace(host))}
			case dns.TypePTR:
				rr = &dns.PTR{Hdr: dnstest.Header(owner, qtype, ttl), Ptr: dnstest.Name(rep)}
			default:
				t.Fatalf("%s: %s: no support for %s replies", path, owner, r.Type)
			}
			srv.AddRR(rr)
		}
	}
	// dnstest's timeout marker covers every type not answered by a record
	// listed before it, so it goes after all records; per-type rcodes above
	// take precedence over it (www.dnssec-failed.org: AAAA is NODATA while
	// A, MX and TXT time out).
	for _, o := range timeouts {
		srv.AddTimeout(o)
	}
	return srv
}

// rspamdEpoch is the clock of every run: after the newest signature
// timestamp in the suite's messages (t=1601054347, arcallow.eml, September
// 2020). No message carries x=, so no signature expires whatever the
// clock; a fixed clock keeps the verdicts independent of the day CI runs.
var rspamdEpoch = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)

// verifyRspamd runs the engine on raw with a fresh client and cache
// against srv, so no case sees another's cached answers.
func verifyRspamd(t *testing.T, srv *dnstest.Server, mode dmarc.Mode, sp rspamdScanParam, raw []byte) *verdict.Verdict {
	t.Helper()
	client, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr),
		resolvercache.WithTimeout(150*time.Millisecond), resolvercache.WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := resolvercache.NewCache(client)
	if err != nil {
		t.Fatal(err)
	}
	e := stages.New(cache,
		stages.WithClock(func() time.Time { return rspamdEpoch }),
		// pct sampling (RFC 7489 6.6.4) draws 0: the message is in the
		// sample for any pct > 0, out of it only for pct=0.
		stages.WithDMARC(mode, dmarc.Overrides{}, func() float64 { return 0 }),
		stages.WithDNSBudget(3*time.Second))
	env := stages.Envelope{
		HELO: sp.Helo,
		// rspamc's From is the SMTP MAIL FROM; "<>" is the null sender.
		MailFrom:   strings.TrimSuffix(strings.TrimPrefix(sp.From, "<"), ">"),
		ReceivedAt: rspamdEpoch,
	}
	if sp.IP != "" {
		ip, err := netip.ParseAddr(sp.IP)
		if err != nil {
			t.Fatalf("scan_params IP %q: %v", sp.IP, err)
		}
		env.ClientIP = ip
	}
	return e.Verify(context.Background(), raw, env)
}

// Symbol categories, for the per-category agreement counts.
const (
	catDMARC = "DMARC"
	catSPF   = "SPF"
	catDKIM  = "DKIM"
	catARC   = "ARC"
)

func rspamdCategory(sym string) string {
	switch {
	case strings.HasPrefix(sym, "DMARC_"):
		return catDMARC
	case strings.HasPrefix(sym, "R_SPF_"):
		return catSPF
	case strings.HasPrefix(sym, "R_DKIM_"):
		return catDKIM
	case strings.HasPrefix(sym, "ARC_"):
		return catARC
	}
	return ""
}

// rspamdSymbols maps each rspamd symbol the cases use to what the verdict
// must say for rspamd to have inserted it (README 4b). DMARC_POLICY_SOFTFAIL
// is rspamd's "fail, but the applied policy is none": p=none, or a stricter
// policy sampled out by pct down to none.
var rspamdSymbols = map[string]func(v *verdict.Verdict) bool{
	"DMARC_POLICY_ALLOW":      func(v *verdict.Verdict) bool { return v.DMARC.Result == "pass" },
	"DMARC_POLICY_REJECT":     func(v *verdict.Verdict) bool { return dmarcFail(v, "reject") },
	"DMARC_POLICY_QUARANTINE": func(v *verdict.Verdict) bool { return dmarcFail(v, "quarantine") },
	"DMARC_POLICY_SOFTFAIL":   func(v *verdict.Verdict) bool { return dmarcFail(v, "none") },
	"DMARC_NA":                func(v *verdict.Verdict) bool { return v.DMARC.Result == "none" },
	"DMARC_DNSFAIL":           func(v *verdict.Verdict) bool { return v.DMARC.Result == "temperror" },

	"R_SPF_ALLOW":    func(v *verdict.Verdict) bool { return v.SPF.Result == "pass" },
	"R_SPF_FAIL":     func(v *verdict.Verdict) bool { return v.SPF.Result == "fail" },
	"R_SPF_SOFTFAIL": func(v *verdict.Verdict) bool { return v.SPF.Result == "softfail" },
	"R_SPF_NEUTRAL":  func(v *verdict.Verdict) bool { return v.SPF.Result == "neutral" },
	"R_SPF_NA":       func(v *verdict.Verdict) bool { return v.SPF.Result == "none" },
	"R_SPF_DNSFAIL":  func(v *verdict.Verdict) bool { return v.SPF.Result == "temperror" },
	"R_SPF_PERMFAIL": func(v *verdict.Verdict) bool { return v.SPF.Result == "permerror" },
	// rspamd adds R_SPF_PLUSALL when a record's "+all"/"all" authorised the
	// client (it also keeps R_SPF_ALLOW).
	"R_SPF_PLUSALL": func(v *verdict.Verdict) bool {
		m := strings.TrimPrefix(v.SPF.Mechanism, "+")
		return v.SPF.Result == "pass" && strings.EqualFold(m, "all")
	},

	// rspamd inserts one R_DKIM_* symbol per outcome present among the
	// signatures; R_DKIM_NA means there was no signature at all.
	"R_DKIM_ALLOW":    func(v *verdict.Verdict) bool { return anyDKIMResult(v, "pass") },
	"R_DKIM_REJECT":   func(v *verdict.Verdict) bool { return anyDKIMResult(v, "fail") },
	"R_DKIM_TEMPFAIL": func(v *verdict.Verdict) bool { return anyDKIMResult(v, "temperror") },
	"R_DKIM_PERMFAIL": func(v *verdict.Verdict) bool { return anyDKIMResult(v, "permerror") },
	"R_DKIM_NA":       func(v *verdict.Verdict) bool { return len(v.DKIM) == 0 },

	"ARC_ALLOW":   func(v *verdict.Verdict) bool { return v.ARC != nil && v.ARC.Result == "pass" },
	"ARC_INVALID": func(v *verdict.Verdict) bool { return v.ARC != nil && v.ARC.Result == "fail" },
}

func dmarcFail(v *verdict.Verdict, disposition string) bool {
	return v.DMARC.Result == "fail" && v.DMARC.Disposition == disposition
}

func anyDKIMResult(v *verdict.Verdict, result string) bool {
	return slices.ContainsFunc(v.DKIM, func(d verdict.DKIM) bool { return d.Result == result })
}

// rspamdOptionHolds checks a symbol option. The suite uses options only on
// DMARC symbols, whose options name the RFC5322.From domain.
func rspamdOptionHolds(v *verdict.Verdict, sym rspamdSymbol) bool {
	if sym.Option == "" {
		return true
	}
	if rspamdCategory(sym.Name) != catDMARC {
		return false
	}
	return strings.EqualFold(v.DMARC.AuthorDomain, sym.Option) || strings.EqualFold(v.DMARC.PolicyDomain, sym.Option)
}

// rspamdCheck returns, per symbol category, what in v contradicts the
// expectations. A symbol with no mapping is an error of the test itself.
func rspamdCheck(t *testing.T, expect, absent []rspamdSymbol, v *verdict.Verdict) map[string][]string {
	t.Helper()
	problems := map[string][]string{}
	check := func(syms []rspamdSymbol, want bool) {
		for _, s := range syms {
			pred, ok := rspamdSymbols[s.Name]
			if !ok {
				t.Fatalf("symbol %s has no mapping onto the verdict: add it to rspamdSymbols", s.Name)
			}
			got := pred(v) && (!want || rspamdOptionHolds(v, s))
			switch {
			case want && !got:
				problems[rspamdCategory(s.Name)] = append(problems[rspamdCategory(s.Name)], "expected "+s.Name)
			case !want && got:
				problems[rspamdCategory(s.Name)] = append(problems[rspamdCategory(s.Name)], "unexpected "+s.Name)
			}
		}
	}
	check(expect, true)
	check(absent, false)
	return problems
}

// rspamdCategories lists the symbol categories a case's expectations touch.
func rspamdCategories(expect, absent []rspamdSymbol) []string {
	var cats []string
	for _, s := range slices.Concat(expect, absent) {
		if c := rspamdCategory(s.Name); c != "" && !slices.Contains(cats, c) {
			cats = append(cats, c)
		}
	}
	slices.Sort(cats)
	return cats
}

// rspamdDescribe summarises a verdict for failure messages.
func rspamdDescribe(v *verdict.Verdict) string {
	var b strings.Builder
	if v.SPF != nil {
		fmt.Fprintf(&b, "spf=%s (%s %s) %s; ", v.SPF.Result, v.SPF.Domain, v.SPF.Mechanism, v.SPF.Error)
	}
	for _, d := range v.DKIM {
		fmt.Fprintf(&b, "dkim=%s (d=%s s=%s) %s; ", d.Result, d.Domain, d.Selector, d.Reason)
	}
	if v.ARC != nil {
		fmt.Fprintf(&b, "arc=%s %s; ", v.ARC.Result, v.ARC.Reason)
	}
	if d := v.DMARC; d != nil {
		fmt.Fprintf(&b, "dmarc=%s disposition=%s applied=%s policy_domain=%s org=%s spf_aligned=%v dkim_aligned=%v %s",
			d.Result, d.Disposition, d.AppliedPolicy, d.PolicyDomain, d.OrgDomain, d.SPFAligned, d.DKIMAligned, d.Error)
	}
	return b.String()
}

// rspamdMessage reads a case's message; "/dev/null" is the empty message
// rspamc was given.
func rspamdMessage(t *testing.T, dir, name string) []byte {
	t.Helper()
	if name == "/dev/null" {
		return nil
	}
	raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
