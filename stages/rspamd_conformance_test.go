package stages_test

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// TestConformanceRspamd runs rspamd's functional test cases for DMARC, SPF,
// DKIM and ARC (shared/conformance/rspamd-functional, README section 4b)
// end to end: the case's message and SMTP envelope go through the engine,
// which resolves rspamd's fake DNS through the real client and cache from
// an in-process authoritative server. rspamd's expected symbols are mapped
// onto the verdict (rspamdSymbols).
//
// Cases whose expectations involve DMARC run in both DMARC modes: rspamd
// implements RFC 7489 (with its own reduced public-suffix list), authpipe's
// default is RFC 9989. Other cases do not depend on the mode and run once.
//
// Every case must agree with rspamd or be listed in rspamdKnown with the
// reason, so a regression (or a fix) shows up as a failure.
func TestConformanceRspamd(t *testing.T) {
	const dir = "../../shared/conformance/rspamd-functional"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("rspamd functional suite not available (%v); CI checks shared/ out beside the repository", err)
	}
	suites := []struct{ category, cases, dns string }{
		{catDMARC, "cases.115_dmarc.yml", "fake-dns.rspamd-merged-local.yml"},
		{catSPF, "cases.117_spf.yml", "fake-dns.rspamd-merged-local.yml"},
		{catDKIM, "cases.116_dkim.yml", "fake-dns.rspamd-plugins.yml"},
		{catARC, "cases.321_arc_check.yml", "fake-dns.rspamd-merged-local.yml"},
	}
	servers := map[string]*dnstest.Server{}
	tl := newRspamdTally()
	usedKnown := map[string]bool{}
	for _, s := range suites {
		var cases []rspamdCase
		readRspamdYAML(t, filepath.Join(dir, s.cases), &cases)
		if servers[s.dns] == nil {
			servers[s.dns] = serveRspamdDNS(t, filepath.Join(dir, s.dns))
		}
		srv := servers[s.dns]
		for _, c := range cases {
			t.Run(s.category+"/"+c.Name, func(t *testing.T) {
				if len(c.OtherSteps) > 0 {
					tl.skip(s.category)
					t.Skipf("not portable: the Robot test has rspamd-specific steps (%s)", c.OtherSteps[0])
				}
				if c.Message == "" {
					tl.skip(s.category)
					t.Skip("not portable: no message to scan")
				}
				raw := rspamdMessage(t, dir, c.Message)
				for _, sc := range rspamdScans(c) {
					cats := rspamdCategories(sc.expect, sc.absent)
					modes := []dmarc.Mode{""}
					if slices.Contains(cats, catDMARC) {
						modes = []dmarc.Mode{dmarc.ModeRFC7489, dmarc.ModeRFC9989}
					}
					for _, mode := range modes {
						name := strings.Trim(sc.label+"/"+string(mode), "/")
						run := func(t *testing.T) {
							v := verifyRspamd(t, srv, mode, sc.params, raw)
							problems := rspamdCheck(t, sc.expect, sc.absent, v)
							id := c.Name
							if sc.label != "" {
								id += "/" + sc.label
							}
							key, known := rspamdKnownKey(mode, id)
							if known {
								usedKnown[key] = true
							}
							var got []string
							for _, cat := range cats {
								got = append(got, problems[cat]...)
							}
							for _, cat := range cats {
								// A mode-independent category counts once,
								// from the RFC 7489 run.
								if cat != catDMARC && mode == dmarc.ModeRFC9989 {
									continue
								}
								tl.add(rspamdTallyLabel(cat, mode), len(problems[cat]) > 0)
							}
							summary := strings.Join(got, "; ")
							switch {
							case known && summary == rspamdKnown[key].problems:
								t.Logf("known disagreement (%s): %s\n\t%s", summary, rspamdKnown[key].reason, rspamdDescribe(v))
							case known && summary == "":
								t.Errorf("listed in rspamdKnown[%q] but now agrees with rspamd: remove the entry\n\t%s", key, rspamdDescribe(v))
							case known:
								t.Errorf("rspamdKnown[%q] expects %q, got %q\n\t%s", key, rspamdKnown[key].problems, summary, rspamdDescribe(v))
							case summary != "":
								t.Errorf("disagrees with rspamd: %s\n\t%s", summary, rspamdDescribe(v))
							default:
								t.Logf("agrees: %s", rspamdDescribe(v))
							}
						}
						if name == "" {
							run(t)
						} else {
							t.Run(name, run)
						}
					}
				}
			})
		}
	}
	// A stale entry is an error too, when the whole suite ran (a -run
	// pattern that selects subtests leaves entries unused).
	if f := flag.Lookup("test.run"); f == nil || !strings.Contains(f.Value.String(), "/") {
		for key := range rspamdKnown {
			if !usedKnown[key] {
				t.Errorf("rspamdKnown[%q] matches no case: remove it", key)
			}
		}
	}
	tl.log(t)
}

// rspamdKnownDisagreement is one deliberate difference from rspamd: the
// exact problems the check reports, and why authpipe is right (or why the
// case cannot hold here).
type rspamdKnownDisagreement struct {
	problems string
	reason   string
}

// rspamdKnown lists the known disagreements, keyed by DMARC mode ("*" for
// every mode) + "/" + case name (+ "/" + scan, for split cases). Any other
// disagreement fails the test, and so does an entry that no longer
// disagrees.
var rspamdKnown = map[string]rspamdKnownDisagreement{
	// SPF: rspamd deviates from RFC 7208.
	"*/SPF FAIL UNRESOLVEABLE INCLUDE": {
		problems: "expected R_SPF_FAIL",
		reason: "fail3.org.org.za is \"v=spf1 ip4:8.8.8.8 include:total.barf -all\" and total.barf is NXDOMAIN; " +
			"RFC 7208 5.2 makes an include whose target has no SPF record permerror. rspamd skips the include " +
			"and reaches -all",
	},
	"*/SPF ALLOW DNS REQUESTS AT LIMIT": {
		problems: "expected R_SPF_ALLOW",
		reason: "the record has 30 DNS-querying terms and only the last one matches; rspamd's max_dns_requests " +
			"is 30, RFC 7208 4.6.4 allows 10, so the 11th term is permerror",
	},

	"*/SPF PTRS/128.66.0.1": {
		problems: "expected R_SPF_FAIL",
		reason: "v=spf1 ptr:cacophony.za.org ptr:rspamd.com ptr:yahoo.com ptr:yahoo.net ptr:highsecure.ru -all and " +
			"the client's PTR is NXDOMAIN: every ptr term's lookup is void, and RFC 7208 4.6.4 limits terms with " +
			"void lookups to two, so the third ptr term is permerror. rspamd counts the (cached) PTR query once " +
			"and reaches -all; its own test expected R_SPF_PERMFAIL here in earlier versions",
	},

	// ARC: the suite is not self-contained.
	"*/ARC ALLOW CHECK": {
		problems: "expected ARC_ALLOW",
		reason: "arcallow.eml is sealed with google.com's real ARC key (selector arc-20160816), which the fake " +
			"DNS does not carry (README 4b): the key lookup is NXDOMAIN, so the seal cannot verify",
	},

	// DMARC, RFC 9989 mode only: rspamd implements RFC 7489.
	"rfc9989/DMARC SUBDOMAIN PASS DKIM RELAXED ALIGNMENT": {
		problems: "expected DMARC_POLICY_ALLOW",
		reason: "From my.mom.za.org, DKIM d=mom.za.org, the only policy is _dmarc.my.mom.za.org. RFC 9989 4.10.2: " +
			"the tree walk from my.mom.za.org makes my.mom.za.org the Organizational Domain, the one from " +
			"mom.za.org finds no record so mom.za.org is its own: not aligned, p=reject applies. Under RFC 7489 " +
			"the public-suffix list (rspamd's, or the real one listing za.org) makes both mom.za.org",
	},
	"rfc9989/DMARC SUBDOMAIN PASS SPF RELAXED ALIGNMENT": {
		problems: "expected DMARC_POLICY_ALLOW",
		reason:   "as DMARC SUBDOMAIN PASS DKIM RELAXED ALIGNMENT, with the SPF-authenticated domain mom.za.org",
	},
	"rfc9989/DMARC PCT ZERO REJECT": {
		problems: "expected DMARC_POLICY_QUARANTINE",
		reason: "p=reject; pct=0: RFC 9989 (Appendix A.6, IANA registry \"historic\") drops pct, so p=reject " +
			"applies in full; RFC 7489 6.6.4 samples the message out and applies the next policy, quarantine",
	},
	"rfc9989/DMARC PCT ZERO SP QUARANTINE": {
		problems: "expected DMARC_POLICY_SOFTFAIL",
		reason: "sp=quarantine; pct=0: RFC 9989 drops pct, so quarantine applies; RFC 7489 6.6.4 samples the " +
			"message out down to none",
	},
}

// rspamdKnownKey returns the rspamdKnown key for a run and whether it is
// listed.
func rspamdKnownKey(mode dmarc.Mode, id string) (string, bool) {
	if _, ok := rspamdKnown["*/"+id]; ok {
		return "*/" + id, true
	}
	if mode != "" {
		if _, ok := rspamdKnown[string(mode)+"/"+id]; ok {
			return string(mode) + "/" + id, true
		}
	}
	return "*/" + id, false
}

// rspamdScan is one scan of a case: envelope and expectations.
type rspamdScan struct {
	label          string // "" for the case's only scan
	params         rspamdScanParam
	expect, absent []rspamdSymbol
}

// rspamdSplit restores Robot tests that scan several times. The derived
// YAML keeps one scan_params and concatenates the expectations; the scans
// below are those of rspamd's test/functional/cases/117_spf.robot (same
// commit as the suite). They apply only while the YAML still has the merged
// form, so a corrected YAML is used as written.
var rspamdSplit = map[string]struct {
	merged []string
	scans  []rspamdScan
}{
	"SPF PTRS": {
		merged: []string{"R_SPF_ALLOW", "R_SPF_FAIL", "R_SPF_FAIL"},
		scans: []rspamdScan{
			// PTR mail.highsecure.ru, whose A is the client: ptr:highsecure.ru matches.
			{label: "88.99.142.95", params: rspamdScanParam{IP: "88.99.142.95", From: "foo@crazyspf.cacophony.za.org"},
				expect: []rspamdSymbol{{Name: "R_SPF_ALLOW"}}},
			// PTR NXDOMAIN: no ptr term matches, -all.
			{label: "128.66.0.1", params: rspamdScanParam{IP: "128.66.0.1", From: "foo@crazyspf.cacophony.za.org"},
				expect: []rspamdSymbol{{Name: "R_SPF_FAIL"}}},
			// PTR mail-qt0-f182.google.com, a domain no ptr term names.
			{label: "209.85.216.182", params: rspamdScanParam{IP: "209.85.216.182", From: "foo@crazyspf.cacophony.za.org"},
				expect: []rspamdSymbol{{Name: "R_SPF_FAIL"}}},
		},
	},
}

func rspamdScans(c rspamdCase) []rspamdScan {
	if sp, ok := rspamdSplit[c.Name]; ok {
		var names []string
		for _, s := range c.Expect {
			names = append(names, s.Name)
		}
		if slices.Equal(names, sp.merged) && len(c.Absent) == 0 {
			return sp.scans
		}
	}
	return []rspamdScan{{params: c.ScanParams, expect: c.Expect, absent: c.Absent}}
}

// rspamdTally counts, per symbol category (DMARC per mode), the cases that
// agree, those that are known disagreements, and the skipped ones.
type rspamdTally struct {
	counts map[string]*[3]int // agree, known, skipped
}

func newRspamdTally() *rspamdTally { return &rspamdTally{counts: map[string]*[3]int{}} }

func rspamdTallyLabel(cat string, mode dmarc.Mode) string {
	if cat == catDMARC {
		return cat + " (" + string(mode) + ")"
	}
	return cat
}

func (tl *rspamdTally) get(label string) *[3]int {
	if tl.counts[label] == nil {
		tl.counts[label] = new([3]int)
	}
	return tl.counts[label]
}

func (tl *rspamdTally) add(label string, disagrees bool) {
	if disagrees {
		tl.get(label)[1]++
	} else {
		tl.get(label)[0]++
	}
}

func (tl *rspamdTally) skip(category string) {
	if category == catDMARC {
		tl.get(rspamdTallyLabel(catDMARC, dmarc.ModeRFC7489))[2]++
		tl.get(rspamdTallyLabel(catDMARC, dmarc.ModeRFC9989))[2]++
		return
	}
	tl.get(category)[2]++
}

func (tl *rspamdTally) log(t *testing.T) {
	labels := make([]string, 0, len(tl.counts))
	for l := range tl.counts {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	for _, l := range labels {
		c := tl.counts[l]
		t.Logf("rspamd %-17s agree %2d, known disagreement %d, skipped %d", l, c[0], c[1], c[2])
	}
}
