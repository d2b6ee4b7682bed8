package verdict

import (
	"fmt"
	"strings"
	"testing"
	"unicode"
)

// authResultsCase is one input of the differential test.
type authResultsCase struct {
	name string
	id   string
	v    *Verdict
}

// authResultsCases are hand-written edge cases for the comparison of
// AuthenticationResults with authenticationResultsReference: each method
// present and absent, properties empty, values that need quoting or
// trimming, and the odd corners of the former code.
func authResultsCases() []authResultsCase {
	// Values that exercise formatPvalue: bare, address-like, quoted with
	// and without escapes, non-ASCII, white space that TrimSpace drops.
	values := []string{
		"example.com", "bounce@example.com", "@example.com", "a b", `a"b`, `a\b`, `\`,
		`"`, "a;b", "a(b)", "(comment)", "a=b", "a:b", "2001:db8::1", "a,b", "a/b", "a?b",
		"[192.0.2.1]", "<a@b>", "a\tb", "a\x00b", "a\x7fb", "!", "é.example", "例え.jp",
		"a\u00a0", "\u00a0", "a\u0085", "a\u2003", "a\u3000 ", "a\u00a0b", "\xff", "a\xc2",
		"a\xc2\xa0", "ª.µ.º", "a×b", "٣", "٣@example.com", "é@[192.0.2.1]", "×@example.com",
		"\xff@example.com", " ", " a", "a ", "+_-.~{}|^`'#$%&*",
	}
	var cs []authResultsCase
	add := func(name, id string, v *Verdict) {
		cs = append(cs, authResultsCase{name, id, v})
	}
	add("empty", "mx.example.net", &Verdict{})
	add("empty id", "", &Verdict{})
	add("typical", "mx.example.net", typicalVerdict())
	add("sample", "mx.authpipe.test", sample())
	add("id with spaces", " mx example ", typicalVerdict())

	// SPF: identity, mailfrom falling back to the domain, reasons, bare.
	for _, s := range []SPF{
		{Result: "pass", Identity: "mailfrom", Domain: "example.com", Sender: "bounce@example.com"},
		{Result: "pass", Identity: "mailfrom", Domain: "example.com"},
		{Result: "pass", Domain: "example.com", Sender: "a@example.com"},
		{Result: "none", Identity: "helo", Domain: "helo.example", Sender: "ignored@example.com"},
		{Result: "none", Identity: "helo"},
		{Result: "none", Identity: "HELO", Domain: "helo.example"},
		{Result: "temperror", Identity: "mailfrom", Domain: "example.com", Error: "lookup timed out (DNS)"},
		{Result: "permerror", Identity: "helo", Error: "too many DNS lookups"},
		{Result: "permerror", Error: "-leading--and trailing--"},
		{Result: "permerror", Error: "!!! ;; é"},
		{Result: "permerror", Error: "é x\xff y\u00a0"},
		{},
		{Result: "pass\u00a0", Domain: "example.com"},
		{Result: "pass\u00a0"},
		{Result: "pass "},
		{Result: "a b;c"},
	} {
		add(fmt.Sprintf("spf %#v", s), "id", &Verdict{SPF: &s})
		add(fmt.Sprintf("spf %#v with dmarc", s), "id", &Verdict{SPF: &s, DMARC: &DMARC{Result: "pass", AuthorDomain: "example.com"}})
	}

	// DKIM: every property alone, none, several signatures.
	full := DKIM{Result: "pass", Domain: "example.com", Selector: "s1", Algorithm: "rsa-sha256",
		HeaderB: "dGhpcyBp", Identity: "@example.com", Reason: "fine"}
	for _, d := range []DKIM{
		full,
		{Result: "pass", Domain: "example.com"},
		{Result: "pass", Selector: "s"},
		{Result: "pass", Algorithm: "ed25519-sha256"},
		{Result: "pass", HeaderB: "abc+/=="},
		{Result: "pass", Identity: "user@example.com"},
		{Result: "fail", Reason: "body hash did not verify"},
		{Result: "fail", Reason: "\u00a0"},
		{Result: "none"},
		{},
	} {
		add(fmt.Sprintf("dkim %#v", d), "id", &Verdict{DKIM: []DKIM{d}})
		add(fmt.Sprintf("dkim %#v twice", d), "id", &Verdict{DKIM: []DKIM{d, full}})
		add(fmt.Sprintf("dkim %#v last", d), "id", &Verdict{SPF: &SPF{Result: "pass", Domain: "x\u00a0"}, DKIM: []DKIM{full, d}})
	}
	add("dkim three", "id", &Verdict{DKIM: []DKIM{full, {Result: "fail", Domain: "other.example"}, {Result: "neutral"}}})

	// Every property value, in a result of its own and next to a bare one.
	for _, val := range values {
		add(fmt.Sprintf("value %+q", val), "id", &Verdict{
			SPF:  &SPF{Result: "pass", Domain: val},
			DKIM: []DKIM{{Result: "pass", Domain: val, Selector: val, Algorithm: val, HeaderB: val, Identity: val}},
		})
		add(fmt.Sprintf("value %+q helo, bare dkim", val), "id", &Verdict{
			SPF:  &SPF{Result: "pass", Identity: "helo", Domain: val},
			DKIM: []DKIM{{Result: "pass", Identity: val}, {Result: "none"}},
			ARC:  &ARC{Result: val},
		})
		add(fmt.Sprintf("value %+q in arc and dmarc", val), "id", &Verdict{
			Envelope: Envelope{ClientIP: val},
			ARC:      &ARC{Result: "pass", Reason: val},
			DMARC:    &DMARC{Result: val, AuthorDomain: val, Error: val, AppliedPolicy: "p", Policy: &Policy{P: val}},
		})
	}

	// ARC: oldest-pass, remote-ip, bare.
	for _, oldest := range []int{0, 1, 5, -1} {
		for _, ip := range []string{"", "192.0.2.1", "2001:db8::1"} {
			add(fmt.Sprintf("arc oldest %d ip %q", oldest, ip), "id", &Verdict{
				Envelope: Envelope{ClientIP: ip},
				ARC:      &ARC{Result: "pass", Instances: 2, OldestPass: oldest},
			})
		}
	}
	add("arc reason", "id", &Verdict{ARC: &ARC{Result: "fail", Reason: "seal 2: bad signature"}})

	// DMARC: the applied policy tag, no policy, header.from fallback.
	pol := &Policy{Domain: "example.com", P: "reject", SP: "quarantine", NP: "none"}
	for _, tag := range []string{"p", "sp", "np", "", "x"} {
		for _, p := range []*Policy{pol, nil, {P: "reject"}} {
			add(fmt.Sprintf("dmarc %q %v", tag, p != nil), "id", &Verdict{
				DMARC: &DMARC{Result: "fail", AuthorDomain: "example.com", AppliedPolicy: tag, Policy: p},
			})
		}
	}
	add("dmarc header from", "id", &Verdict{HeaderFrom: []string{"from.example", "other.example"}, DMARC: &DMARC{Result: "pass"}})
	add("dmarc author over header from", "id", &Verdict{HeaderFrom: []string{"from.example"}, DMARC: &DMARC{Result: "pass", AuthorDomain: "author.example"}})
	add("dmarc bare", "id", &Verdict{DMARC: &DMARC{Result: "none"}})
	add("dmarc error", "id", &Verdict{DMARC: &DMARC{Result: "temperror", Error: "DNS: SERVFAIL for _dmarc.example.com"}})
	add("all bare", "id", &Verdict{SPF: &SPF{}, DKIM: []DKIM{{}, {}}, ARC: &ARC{}, DMARC: &DMARC{}})
	add("all bare, white space results", "id", &Verdict{SPF: &SPF{Result: " "}, DKIM: []DKIM{{Result: "\u00a0"}}, ARC: &ARC{Result: "a\t"}, DMARC: &DMARC{Result: "\u2003"}})
	return cs
}

// TestAuthenticationResultsReference compares AuthenticationResults with
// the former authres.Format-based code on the hand-written cases and on
// every byte and a few runes as a property value.
func TestAuthenticationResultsReference(t *testing.T) {
	cs := authResultsCases()
	for c := range 256 {
		s := string([]byte{byte(c)})
		cs = append(cs, authResultsCase{fmt.Sprintf("byte %#x", c), "id", &Verdict{
			Envelope: Envelope{ClientIP: "a" + s + "b"},
			DKIM:     []DKIM{{Result: "pass", Domain: s, Selector: s + "x", Identity: "x" + s, Reason: s}},
			ARC:      &ARC{Result: "pass"},
		}})
	}
	for _, r := range []rune{0x80, 0x85, 0xa0, 0xaa, 0xad, 0xb5, 0xd7, 0x1680, 0x2000, 0x2028, 0x3000, 0x0663, 0xfeff, 0xfffd, 0x1f600} {
		s := string(r)
		cs = append(cs, authResultsCase{fmt.Sprintf("rune %U", r), "id", &Verdict{
			DKIM:  []DKIM{{Result: "pass", Domain: s, Selector: "a@" + s, Identity: s + " "}},
			DMARC: &DMARC{Result: "pass", AuthorDomain: "x" + s},
		}})
	}
	compared := 0
	for _, c := range cs {
		got := AuthenticationResults(c.id, c.v)
		checkResinfos(t, c.id, c.v, got)
		if !sameAsReference(c.id, c.v) {
			continue
		}
		compared++
		if want := authenticationResultsReference(c.id, c.v); got != want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, want)
		}
	}
	if compared < len(cs)/2 {
		t.Errorf("only %d of %d cases compared with the reference", compared, len(cs))
	}
}

// TestAuthenticationResultsNoInjection: a sender-chosen MAIL FROM that
// closed authres.Format's quoted-string early (it leaves backslashes
// alone) added a dkim=pass of its own; escaped, it stays one value.
func TestAuthenticationResultsNoInjection(t *testing.T) {
	for _, from := range []string{
		`"x\" ; dkim=pass"@example.org`,
		`"x\\" ; dkim=pass"@example.org`,
		"a\r\nX-Injected: yes ; dkim=pass",
		"a\nb; dkim=pass",
	} {
		v := &Verdict{SPF: &SPF{Result: "fail", Identity: "mailfrom", Domain: "example.org", Sender: from}}
		h := AuthenticationResults("mx.example.net", v)
		checkResinfos(t, "mx.example.net", v, h)
		if strings.ContainsAny(h, "\r\n") {
			t.Errorf("%q: header %q holds CR or LF", from, h)
		}
	}
	if old := authenticationResultsReference("id", &Verdict{SPF: &SPF{Result: "fail", Sender: `"x\" ; dkim=pass"@example.org`}}); len(resinfos(old)) != 3 {
		t.Errorf("the reference no longer shows the injection: %q", old)
	}
}

// sameAsReference reports whether AuthenticationResults must equal the
// former code for this input: no value holds a backslash or a control but
// HTAB, which only the new code escapes.
func sameAsReference(id string, v *Verdict) bool {
	s := fmt.Sprintf("%s %#v %#v %#v %#v %#v", id, v.SPF, v.DKIM, v.ARC, v.DMARC, v.Envelope)
	if v.DMARC != nil && v.DMARC.Policy != nil {
		s += fmt.Sprintf("%#v", v.DMARC.Policy)
	}
	s += strings.Join(v.HeaderFrom, " ")
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\\' || c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// resinfos splits an Authentication-Results value at each ';' outside a
// quoted-string (RFC 5322 3.2.4, with quoted-pairs), as an RFC 8601
// reader does.
func resinfos(h string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == ';':
			out = append(out, strings.TrimSpace(h[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(h[start:]))
}

// checkResinfos checks that header h holds the authserv-id and one resinfo
// per result of v, each starting with its method, whatever the property
// values hold, and no CR or LF. The authserv-id and the result values are
// the engine's own (configuration and result names); inputs where they
// are not tokens are skipped.
func checkResinfos(t testing.TB, id string, v *Verdict, h string) {
	t.Helper()
	var methods, results []string
	if v.SPF != nil {
		methods, results = append(methods, "spf"), append(results, v.SPF.Result)
	}
	for _, d := range v.DKIM {
		methods, results = append(methods, "dkim"), append(results, d.Result)
	}
	if v.ARC != nil {
		methods, results = append(methods, "arc"), append(results, v.ARC.Result)
	}
	if v.DMARC != nil {
		methods, results = append(methods, "dmarc"), append(results, v.DMARC.Result)
	}
	for _, s := range append(results, id) {
		if s == "" || strings.ContainsAny(s, ";\"\\()= \t\r\n") || strings.TrimSpace(s) != s {
			return
		}
		for _, r := range s {
			if unicode.IsSpace(r) {
				return
			}
		}
	}
	if strings.ContainsAny(h, "\r\n") {
		t.Fatalf("header %q holds CR or LF", h)
	}
	got := resinfos(h)
	if len(methods) == 0 {
		methods = []string{"none"}
	}
	if len(got) != 1+len(methods) || got[0] != id {
		t.Fatalf("header %q: resinfos %q, want %s and %q", h, got, id, methods)
	}
	for i, m := range methods {
		if r := got[i+1]; r != m && !strings.HasPrefix(r, m+"=") {
			t.Fatalf("header %q: resinfo %d is %q, want method %s", h, i+1, r, m)
		}
	}
}

// fuzzSep separates the fields of a fuzzed verdict.
const fuzzSep = "\x1e"

// Bits of the shape argument of FuzzAuthenticationResults: which parts of
// the verdict are present; the low two bits are the number of DKIM results.
const (
	fuzzSPF = 1 << (2 + iota)
	fuzzARC
	fuzzDMARC
	fuzzPolicy
	fuzzHeaderFrom
)

// fuzzVerdict builds a verdict from fuzzed fields (fuzzSep-separated; a
// missing one is empty) laid out as fuzzFields writes them.
func fuzzVerdict(shape uint8, oldestPass int, fields string) *Verdict {
	f := strings.Split(fields, fuzzSep)
	next := func() string {
		if len(f) == 0 {
			return ""
		}
		s := f[0]
		f = f[1:]
		return s
	}
	v := &Verdict{}
	spf := SPF{Result: next(), Domain: next(), Identity: next(), Sender: next(), Error: next()}
	if shape&fuzzSPF != 0 {
		v.SPF = &spf
	}
	arc := ARC{Result: next(), Reason: next(), OldestPass: oldestPass}
	v.Envelope.ClientIP = next()
	if shape&fuzzARC != 0 {
		v.ARC = &arc
	}
	dmarc := DMARC{Result: next(), AuthorDomain: next(), Error: next(), AppliedPolicy: next()}
	pol := Policy{P: next(), SP: next(), NP: next()}
	if shape&fuzzPolicy != 0 {
		dmarc.Policy = &pol
	}
	if shape&fuzzDMARC != 0 {
		v.DMARC = &dmarc
	}
	if from := next(); shape&fuzzHeaderFrom != 0 {
		v.HeaderFrom = []string{from}
	}
	for range shape & 3 {
		v.DKIM = append(v.DKIM, DKIM{Result: next(), Domain: next(), Selector: next(), Algorithm: next(),
			HeaderB: next(), Identity: next(), Reason: next()})
	}
	return v
}

// fuzzFields is the inverse of fuzzVerdict for the fields it reads (up to
// three DKIM results), to seed the corpus with the hand-written cases.
func fuzzFields(v *Verdict) (shape uint8, oldestPass int, fields string) {
	var f []string
	var spf SPF
	if v.SPF != nil {
		shape |= fuzzSPF
		spf = *v.SPF
	}
	f = append(f, spf.Result, spf.Domain, spf.Identity, spf.Sender, spf.Error)
	var arc ARC
	if v.ARC != nil {
		shape |= fuzzARC
		arc = *v.ARC
	}
	f = append(f, arc.Result, arc.Reason, v.Envelope.ClientIP)
	var dmarc DMARC
	if v.DMARC != nil {
		shape |= fuzzDMARC
		dmarc = *v.DMARC
	}
	var pol Policy
	if dmarc.Policy != nil {
		shape |= fuzzPolicy
		pol = *dmarc.Policy
	}
	f = append(f, dmarc.Result, dmarc.AuthorDomain, dmarc.Error, dmarc.AppliedPolicy, pol.P, pol.SP, pol.NP)
	var from string
	if len(v.HeaderFrom) > 0 {
		shape |= fuzzHeaderFrom
		from = v.HeaderFrom[0]
	}
	f = append(f, from)
	shape |= uint8(min(len(v.DKIM), 3))
	for _, d := range v.DKIM[:shape&3] {
		f = append(f, d.Result, d.Domain, d.Selector, d.Algorithm, d.HeaderB, d.Identity, d.Reason)
	}
	return shape, arc.OldestPass, strings.Join(f, fuzzSep)
}

// FuzzAuthenticationResults checks, for verdicts built from fuzzed
// strings, that AuthenticationResults always yields one resinfo per result
// (no value can end its quoted-string early or the header field), and
// that it renders exactly what the former authres.Format-based code did
// wherever no value holds a backslash or a control. The seed corpus is
// the hand-written cases.
func FuzzAuthenticationResults(f *testing.F) {
	for _, c := range authResultsCases() {
		shape, oldest, fields := fuzzFields(c.v)
		v := fuzzVerdict(shape, oldest, fields)
		if got, want := AuthenticationResults(c.id, v), AuthenticationResults(c.id, c.v); got != want {
			f.Fatalf("%s does not survive fuzzFields: %q, want %q", c.name, got, want)
		}
		f.Add(c.id, shape, oldest, fields)
	}
	f.Fuzz(func(t *testing.T, id string, shape uint8, oldestPass int, fields string) {
		v := fuzzVerdict(shape, oldestPass, fields)
		got := AuthenticationResults(id, v)
		checkResinfos(t, id, v, got)
		if !sameAsReference(id, v) {
			return
		}
		if want := authenticationResultsReference(id, v); got != want {
			t.Fatalf("verdict %+v:\n got %q\nwant %q", v, got, want)
		}
	})
}
