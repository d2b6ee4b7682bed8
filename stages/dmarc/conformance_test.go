package dmarc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/authpipe/authpipe/resolvercache"
)

const conformanceDir = "../../../shared/conformance"

func readSuite(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(conformanceDir, rel))
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("conformance suite %s not present (expected beside the repo)", rel)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- dmarc-mox/dmarc-eval-cases.yml ----

type moxDoc struct {
	Test     string              `yaml:"test"`
	Zonedata map[string][]string `yaml:"zonedata"`
	Servfail []string            `yaml:"servfail"`
	Cases    []moxCase           `yaml:"cases"`
}

type moxCase struct {
	ID      string `yaml:"id"`
	Comment string `yaml:"comment"`
	Input   struct {
		FromDomain string `yaml:"from_domain"`
		Domain     string `yaml:"domain"`
		DestDomain string `yaml:"destination_domain"`
		DKIM       []struct {
			Result string `yaml:"result"`
			D      string `yaml:"d"`
		} `yaml:"dkim"`
		SPF struct {
			Result string  `yaml:"result"`
			Domain *string `yaml:"domain"`
		} `yaml:"spf"`
	} `yaml:"input"`
	Expect struct {
		UseResult    *bool   `yaml:"use_result"`
		Reject       *bool   `yaml:"reject"`
		Status       string  `yaml:"status"`
		AlignedSPF   *bool   `yaml:"aligned_spf"`
		AlignedDKIM  *bool   `yaml:"aligned_dkim"`
		PolicyDomain string  `yaml:"policy_domain"`
		RecordP      *string `yaml:"record_p"`
		Error        *string `yaml:"error"`
		Accepts      *bool   `yaml:"accepts"`
	} `yaml:"expect"`
}

func loadMox(t *testing.T) map[string]moxDoc {
	b := readSuite(t, "dmarc-mox/dmarc-eval-cases.yml")
	dec := yaml.NewDecoder(bytes.NewReader(b))
	docs := map[string]moxDoc{}
	for {
		var d moxDoc
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("yaml: %v", err)
		}
		docs[d.Test] = d
	}
	return docs
}

// errorClass maps a Result to mox's error classes.
func errorClass(r Result) string {
	switch {
	case r.Result == ResultTempError && r.Policy == nil:
		return "dns" // the DMARC lookup failed (not an SPF/DKIM temperror)
	case r.Result == ResultPermError:
		return "syntax"
	case strings.Contains(r.Err, "DMARC records at"):
		return "multiple-records"
	case r.Result == ResultNone:
		return "no-record"
	}
	return ""
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// policyValue is the value of the applied tag (p/sp/np) before t=/pct.
func policyValue(r Result) string {
	if r.Policy == nil {
		return ""
	}
	switch r.AppliedPolicy {
	case "sp":
		return r.Policy.SP
	case "np":
		return r.Policy.NP
	}
	return r.Policy.P
}

func compareVerify(c moxCase, r Result) []string {
	var diffs []string
	ex := c.Expect
	if r.Result != ex.Status {
		diffs = append(diffs, fmt.Sprintf("status %s, want %s", r.Result, ex.Status))
	}
	reject := r.Result == ResultFail && policyValue(r) == "reject"
	if ex.Reject != nil && reject != *ex.Reject {
		diffs = append(diffs, fmt.Sprintf("reject %v, want %v", reject, *ex.Reject))
	}
	use := (r.Result == ResultPass || r.Result == ResultFail || r.Result == ResultTempError)
	for _, rs := range r.Reasons {
		if rs.Type == ReasonSampledOut {
			use = false
		}
	}
	if ex.UseResult != nil && use != *ex.UseResult {
		diffs = append(diffs, fmt.Sprintf("use_result %v, want %v", use, *ex.UseResult))
	}
	if ex.AlignedSPF != nil && r.SPFAligned != *ex.AlignedSPF {
		diffs = append(diffs, fmt.Sprintf("aligned_spf %v, want %v", r.SPFAligned, *ex.AlignedSPF))
	}
	if ex.AlignedDKIM != nil && r.DKIMAligned != *ex.AlignedDKIM {
		diffs = append(diffs, fmt.Sprintf("aligned_dkim %v, want %v", r.DKIMAligned, *ex.AlignedDKIM))
	}
	// With no usable record the tree walk names no policy domain; mox
	// reports the domain it queried. Both say "nothing here".
	if r.PolicyDomain != ex.PolicyDomain && !(r.PolicyDomain == "" && r.Result == ResultNone) && !(r.PolicyDomain == "" && r.Result == ResultTempError) {
		diffs = append(diffs, fmt.Sprintf("policy_domain %q, want %q", r.PolicyDomain, ex.PolicyDomain))
	}
	if got := errorClass(r); got != str(ex.Error) {
		diffs = append(diffs, fmt.Sprintf("error class %q, want %q", got, str(ex.Error)))
	}
	return diffs
}

func verifyInput(c moxCase) Input {
	in := Input{FromDomains: []string{c.Input.FromDomain}}
	in.SPF = SPFResult{Result: c.Input.SPF.Result, Domain: str(c.Input.SPF.Domain), Scope: "mfrom"}
	for _, d := range c.Input.DKIM {
		in.DKIM = append(in.DKIM, DKIMResult{Result: d.Result, Domain: d.D, Selector: "s"})
	}
	return in
}

// knownRFC9989Differences lists mox (RFC 7489) expectations RFC 9989 mode
// legitimately disagrees with, and why.
var knownRFC9989Differences = map[string]string{
	"pct-zero":         "RFC 9989 removed pct (A.6): pct=0 is an unknown tag, p=reject applies",
	"malformed-record": "RFC 9989 4.8: the syntax error 'bogus' is discarded, the record is p=none, so no-auth mail fails with disposition none",
	"lookup-malformed": "RFC 9989 4.8: the syntax error 'bogus' is discarded, the record p=none is used",
}

func TestConformanceMoxVerify(t *testing.T) {
	docs := loadMox(t)
	doc, ok := docs["Verify"]
	if !ok {
		t.Fatal("no Verify document")
	}
	res := dnsZone(t, doc.Zonedata, doc.Servfail)
	for _, mode := range []Mode{ModeRFC7489, ModeRFC9989} {
		e := &Evaluator{Resolver: res, Mode: mode, Rand: func() float64 { return 0.5 }}
		pass, legit := 0, 0
		for _, c := range doc.Cases {
			r := e.Evaluate(context.Background(), verifyInput(c))
			diffs := compareVerify(c, r)
			switch {
			case len(diffs) == 0:
				pass++
			case mode == ModeRFC9989 && knownRFC9989Differences[c.ID] != "":
				legit++
				t.Logf("%s %s: differs (legitimate: %s): %s", mode, c.ID, knownRFC9989Differences[c.ID], strings.Join(diffs, "; "))
			default:
				t.Errorf("%s %s: %s (result %+v)", mode, c.ID, strings.Join(diffs, "; "), r)
			}
		}
		t.Logf("mox Verify %s: %d/%d agree, %d legitimate RFC 9989 differences", mode, pass, len(doc.Cases), legit)
		if pass+legit != len(doc.Cases) || len(doc.Cases) != 15 {
			t.Errorf("mox Verify %s: %d+%d of %d (want 15)", mode, pass, legit, len(doc.Cases))
		}
	}
}

func TestConformanceMoxLookup(t *testing.T) {
	docs := loadMox(t)
	doc, ok := docs["Lookup"]
	if !ok {
		t.Fatal("no Lookup document")
	}
	res := dnsZone(t, doc.Zonedata, doc.Servfail)
	for _, mode := range []Mode{ModeRFC7489, ModeRFC9989} {
		e := &Evaluator{Resolver: res, Mode: mode}
		pass, legit := 0, 0
		for _, c := range doc.Cases {
			r := e.Evaluate(context.Background(), Input{FromDomains: []string{c.Input.Domain}})
			var diffs []string
			// mox's Lookup status is "none" whenever a record was found and
			// used; Evaluate goes on to a DMARC result (fail, with no
			// authentication at all).
			status := r.Result
			if status == ResultFail {
				status = ResultNone
			}
			if status != c.Expect.Status {
				diffs = append(diffs, fmt.Sprintf("status %s, want %s", r.Result, c.Expect.Status))
			}
			p := ""
			if r.Policy != nil {
				p = r.Policy.P
			}
			if p != str(c.Expect.RecordP) {
				diffs = append(diffs, fmt.Sprintf("record p %q, want %q", p, str(c.Expect.RecordP)))
			}
			if r.PolicyDomain != c.Expect.PolicyDomain && r.PolicyDomain != "" {
				diffs = append(diffs, fmt.Sprintf("policy_domain %q, want %q", r.PolicyDomain, c.Expect.PolicyDomain))
			}
			if got := errorClass(r); got != str(c.Expect.Error) && !(got == "" && r.Result == ResultFail && str(c.Expect.Error) == "") {
				diffs = append(diffs, fmt.Sprintf("error class %q, want %q", got, str(c.Expect.Error)))
			}
			switch {
			case len(diffs) == 0:
				pass++
			case mode == ModeRFC9989 && knownRFC9989Differences[c.ID] != "":
				legit++
				t.Logf("%s %s: differs (legitimate: %s): %s", mode, c.ID, knownRFC9989Differences[c.ID], strings.Join(diffs, "; "))
			default:
				t.Errorf("%s %s: %s (result %+v)", mode, c.ID, strings.Join(diffs, "; "), r)
			}
		}
		t.Logf("mox Lookup %s: %d/%d agree, %d legitimate RFC 9989 differences", mode, pass, len(doc.Cases), legit)
		if pass+legit != len(doc.Cases) || len(doc.Cases) != 7 {
			t.Errorf("mox Lookup %s: %d+%d of %d (want 7)", mode, pass, legit, len(doc.Cases))
		}
	}
}

func TestConformanceMoxExternalReports(t *testing.T) {
	docs := loadMox(t)
	doc, ok := docs["LookupExternalReportsAccepted"]
	if !ok {
		t.Fatal("no LookupExternalReportsAccepted document")
	}
	e := &Evaluator{Resolver: dnsZone(t, doc.Zonedata, doc.Servfail)}
	pass := 0
	for _, c := range doc.Cases {
		ok, err := e.ExternalReportsAccepted(context.Background(), c.Input.Domain, c.Input.DestDomain)
		class, status := "", "none"
		switch {
		case err != nil && resolvercache.IsTemporary(err):
			class, status = "dns", "temperror"
		case errors.Is(err, ErrSyntax):
			class, status = "syntax", "permerror"
		case err != nil:
			class, status = "other", "permerror"
		case !ok:
			class = "no-record"
		}
		if ok == *c.Expect.Accepts && status == c.Expect.Status && class == str(c.Expect.Error) {
			pass++
		} else {
			t.Errorf("%s: accepts %v status %s error %q (%v), want %v %s %q", c.ID, ok, status, class, err, *c.Expect.Accepts, c.Expect.Status, str(c.Expect.Error))
		}
	}
	t.Logf("mox LookupExternalReportsAccepted: %d/%d agree", pass, len(doc.Cases))
	if pass != 8 {
		t.Errorf("want 8/8")
	}
}

// ---- dmarc-mox/dmarc-record-syntax.yml ----

type syntaxURI struct {
	Address string `yaml:"Address"`
	MaxSize uint64 `yaml:"MaxSize"`
	Unit    string `yaml:"Unit"`
}

type syntaxSuite struct {
	Invalid []struct {
		Record  string `yaml:"record"`
		Comment string `yaml:"comment"`
	} `yaml:"invalid"`
	Valid []struct {
		Record string `yaml:"record"`
		Expect struct {
			V     *string     `yaml:"v"`
			P     *string     `yaml:"p"`
			SP    *string     `yaml:"sp"`
			ADKIM *string     `yaml:"adkim"`
			ASPF  *string     `yaml:"aspf"`
			RUA   []syntaxURI `yaml:"rua"`
			RUF   []syntaxURI `yaml:"ruf"`
			RI    *uint32     `yaml:"ri"`
			FO    []string    `yaml:"fo"`
			RF    []string    `yaml:"rf"`
			Pct   *int        `yaml:"pct"`
		} `yaml:"expect"`
	} `yaml:"valid"`
}

func loadSyntax(t testing.TB) *syntaxSuite {
	b, err := os.ReadFile(filepath.Join(conformanceDir, "dmarc-mox/dmarc-record-syntax.yml"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if tt, ok := t.(*testing.T); ok {
				tt.Skip("dmarc-record-syntax.yml not present")
			}
			return nil
		}
		t.Fatal(err)
	}
	var s syntaxSuite
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func uris(us []URI) []syntaxURI {
	var out []syntaxURI
	for _, u := range us {
		out = append(out, syntaxURI(u))
	}
	return out
}

// rfc9989SyntaxDifferences: records whose RFC 7489 (mox) expectation RFC
// 9989 parsing legitimately does not meet.
var rfc9989SyntaxDifferences = map[string]string{
	"v=DMARC1; sp=reject; p=reject": "RFC 9989 4.7 only requires v first; p may come anywhere",
}

func TestConformanceRecordSyntax(t *testing.T) {
	s := loadSyntax(t)
	for _, mode := range []Mode{ModeRFC7489, ModeRFC9989} {
		pass, legit, total := 0, 0, 0
		for _, c := range s.Invalid {
			total++
			_, err := ParseRecord(c.Record, mode)
			switch {
			case err != nil:
				pass++
			case mode == ModeRFC9989 && rfc9989SyntaxDifferences[c.Record] != "":
				legit++
				t.Logf("%s %q: parses (legitimate: %s)", mode, c.Record, rfc9989SyntaxDifferences[c.Record])
			default:
				t.Errorf("%s %q: parsed, want error (%s)", mode, c.Record, c.Comment)
			}
		}
		for _, c := range s.Valid {
			total++
			r, err := ParseRecord(c.Record, mode)
			if err != nil {
				t.Errorf("%s %q: %v", mode, c.Record, err)
				continue
			}
			ex := c.Expect
			var diffs, legitDiffs []string
			chk := func(name string, got, want any, rfc9989Why string) {
				if reflect.DeepEqual(got, want) {
					return
				}
				d := fmt.Sprintf("%s %v, want %v", name, got, want)
				if mode == ModeRFC9989 && rfc9989Why != "" {
					legitDiffs = append(legitDiffs, d+" ("+rfc9989Why+")")
				} else {
					diffs = append(diffs, d)
				}
			}
			if ex.V != nil {
				chk("v", r.Version, *ex.V, "")
			}
			if ex.P != nil {
				chk("p", string(r.P), *ex.P, "")
			}
			sp := string(r.SP)
			if sp == "" {
				sp = string(r.P)
			}
			if ex.SP != nil {
				chk("sp", sp, *ex.SP, "")
			}
			if ex.ADKIM != nil {
				chk("adkim", r.ADKIM, *ex.ADKIM, "")
			}
			if ex.ASPF != nil {
				chk("aspf", r.ASPF, *ex.ASPF, "")
			}
			const sizeWhy = "RFC 9989 4.8: the !size suffix is obsolete and ignored"
			if ex.RUA != nil {
				chk("rua", uris(r.RUA), ex.RUA, sizeWhy)
			}
			if ex.RUF != nil {
				chk("ruf", uris(r.RUF), ex.RUF, sizeWhy)
			}
			const gone = "RFC 9989 removed pct, rf and ri (C.5.2)"
			wantRI := uint32(86400)
			if ex.RI != nil {
				wantRI = *ex.RI
			}
			chk("ri", r.RI, wantRI, gone)
			wantFO := []string{"0"}
			if ex.FO != nil {
				wantFO = ex.FO
			}
			chk("fo", r.FO, wantFO, "RFC 9989 4.8 dmarc-fo: 0 and 1 are mutually exclusive, so fo=0:1:d:s is discarded for the default 0")
			wantRF := []string{"afrf"}
			if ex.RF != nil {
				wantRF = ex.RF
			}
			chk("rf", r.RF, wantRF, gone)
			wantPct := 100
			if ex.Pct != nil {
				wantPct = *ex.Pct
			}
			chk("pct", r.Pct, wantPct, gone)
			switch {
			case len(diffs) > 0:
				t.Errorf("%s %q: %s", mode, c.Record, strings.Join(diffs, "; "))
			case len(legitDiffs) > 0:
				legit++
				t.Logf("%s %q: legitimate differences: %s", mode, c.Record, strings.Join(legitDiffs, "; "))
			default:
				pass++
			}
		}
		t.Logf("record syntax %s: %d/%d agree, %d legitimate RFC 9989 differences", mode, pass, total, legit)
		if total != 41 || pass+legit != total || (mode == ModeRFC7489 && pass != total) {
			t.Errorf("record syntax %s: %d+%d of %d (want 41)", mode, pass, legit, total)
		}
	}
}

// ---- psl/tests.txt ----

func TestConformancePSL(t *testing.T) {
	dat := readSuite(t, "psl/public_suffix_list.dat")
	list, err := ParsePSL(bytes.NewReader(dat))
	if err != nil {
		t.Fatal(err)
	}
	tests := readSuite(t, "psl/tests.txt")
	sc := bufio.NewScanner(bytes.NewReader(tests))
	pass, total := 0, 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "//") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Errorf("bad line %q", line)
			continue
		}
		total++
		in, want := f[0], f[1]
		if in == "null" {
			in = ""
		}
		got, err := RegistrableDomain(list, in)
		if err != nil {
			got = "null"
		}
		if got == want {
			pass++
		} else {
			t.Errorf("RegistrableDomain(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
	t.Logf("psl tests.txt: %d/%d pass", pass, total)
	if pass != 78 || total != 78 {
		t.Errorf("want 78/78")
	}
}

// The RFC 7489 evaluator takes its PSL from the Evaluator, so a pinned .dat
// can replace the compiled-in list.
func TestRFC7489WithPinnedPSL(t *testing.T) {
	dat := readSuite(t, "psl/public_suffix_list.dat")
	list, err := ParsePSL(bytes.NewReader(dat))
	if err != nil {
		t.Fatal(err)
	}
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.co.uk": {"v=DMARC1; p=reject"}}}
	e := &Evaluator{Resolver: m, Mode: ModeRFC7489, PSL: list}
	r := e.Evaluate(context.Background(), Input{FromDomains: []string{"a.b.example.co.uk"},
		DKIM: []DKIMResult{{Result: "pass", Domain: "mail.example.co.uk"}}})
	if r.Result != ResultPass || r.OrgDomain != "example.co.uk" || r.PolicyDomain != "example.co.uk" || r.DiscoveryMethod != DiscoveryPSL {
		t.Fatalf("got %+v", r)
	}
	if q := m.queries(); len(q) != 2 {
		t.Errorf("queries %v, want From domain then org domain", q)
	}
}
