package dmarc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParseRecord checks that ParseRecord never panics, that it agrees
// with itself between the exported and internal entry points, and that a
// parsed record respects its invariants. Seeds: a few records written here
// plus every record of dmarc-mox/dmarc-record-syntax.yml when present.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"v=DMARC1; p=reject",
		"v=DMARC1; p=none; rua=mailto:a@example.com!10m,https://r.example/; ruf=mailto:f@example.com; fo=0:d:s",
		"v=DMARC1; p=quarantine; sp=none; np=reject; t=y; psd=y; adkim=s; aspf=s",
		"v=DMARC1; rua=mailto:a@b.example",
		"V = DMARC1 ; P = reject ;\tSP=none; unknown \t=\t x \t ; pct=0; rf=afrf:x; ri=10",
		"v=DMARC1;;;", "v=DMARC1; =; ==; ;=;", "v=DMARC1; rua=!,!!,mailto:@!1t",
	} {
		f.Add(s)
	}
	if b, err := os.ReadFile(filepath.Join(conformanceDir, "dmarc-mox/dmarc-record-syntax.yml")); err == nil {
		var s syntaxSuite
		if yaml.Unmarshal(b, &s) == nil {
			for _, c := range s.Invalid {
				f.Add(c.Record)
			}
			for _, c := range s.Valid {
				f.Add(c.Record)
			}
		}
	}
	f.Fuzz(func(t *testing.T, txt string) {
		for _, mode := range []Mode{ModeRFC9989, ModeRFC7489} {
			r, err := ParseRecord(txt, mode)
			if err != nil {
				if r != nil {
					t.Fatalf("record and error both returned")
				}
				continue
			}
			if r.Version != "DMARC1" {
				t.Fatalf("version %q", r.Version)
			}
			if _, ok := parsePolicy(string(r.P)); !ok {
				t.Fatalf("p %q", r.P)
			}
			if r.ADKIM != "r" && r.ADKIM != "s" || r.ASPF != "r" && r.ASPF != "s" {
				t.Fatalf("alignment %q %q", r.ADKIM, r.ASPF)
			}
			if r.PSD != "y" && r.PSD != "n" && r.PSD != "u" {
				t.Fatalf("psd %q", r.PSD)
			}
			if r.Pct < 0 || r.Pct > 100 {
				t.Fatalf("pct %d", r.Pct)
			}
			if r.PNoneFallback && len(r.RUA) == 0 {
				t.Fatalf("p=none fallback without rua")
			}
		}
		// ExternalReportsAccepted's parser on the same text.
		_ = basicTagList(txt)
		// And the whole evaluation with the text as the published record.
		m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {txt}}}
		e := &Evaluator{Resolver: m}
		res := e.Evaluate(context.Background(), Input{FromDomains: []string{"a.example.com"}})
		if res.Disposition == "" || res.Result == "" {
			t.Fatalf("empty result %+v", res)
		}
	})
}

// FuzzParsePSL checks that ParsePSL never panics on a list, and that a
// list it accepts gives, for any domain, a public suffix that is the
// domain itself or one of its label-aligned tails (lower-cased, without a
// final dot), and a registrable domain lookup that does not panic. Seeds:
// a few lists written here, each with the domains of psl/tests.txt when
// the suite is present.
func FuzzParsePSL(f *testing.F) {
	lists := []string{
		"com\nuk\nco.uk\n*.ck\n!www.ck\n",
		"// comment\n\n  jp \t trailing words\n*.kobe.jp\n!city.kobe.jp\n公司.cn\nxn--55qx5d.cn\n",
		"!\n*.\n*.*\n.\n..\n!.x\n*.!x\n\xff\xfe\n",
	}
	domains := []string{"example.com", "a.b.example.co.uk", "www.ck", "b.city.kobe.jp", "EXAMPLE.COM.", "", ".", "..", "a..b", "公司.cn"}
	if b, err := os.ReadFile(filepath.Join(conformanceDir, "psl/tests.txt")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if fs := strings.Fields(line); len(fs) == 2 && !strings.HasPrefix(fs[0], "//") && fs[0] != "null" {
				domains = append(domains, fs[0])
			}
		}
	}
	for i, d := range domains {
		f.Add(lists[i%len(lists)], d)
	}
	f.Fuzz(func(t *testing.T, list, domain string) {
		l, err := ParsePSL(strings.NewReader(list))
		if err != nil {
			return
		}
		d := strings.ToLower(strings.TrimSuffix(domain, "."))
		if s := l.PublicSuffix(domain); s != d && !strings.HasSuffix(d, "."+s) {
			t.Fatalf("PublicSuffix(%q) = %q: not a tail of the domain", domain, s)
		}
		_, _ = RegistrableDomain(l, domain)
		_ = OrgDomainPSL(l, domain)
	})
}
