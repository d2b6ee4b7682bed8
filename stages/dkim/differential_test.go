package dkim

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/stages/message"
)

// FuzzDifferential signs a fuzzer-built message with go-msgauth's dkim.Sign
// (RSA-2048 or Ed25519, any canonicalisation), applies one byte mutation
// (insert, delete or replace at a position) and requires that this package
// and go-msgauth v0.7.0 (the oracle) agree on pass versus not pass.
//
// Known, deliberate differences are excluded or mapped rather than hidden:
//   - header-stack policy: the oracle has none, so HeaderStack is disabled
//     here (an unsigned extra From would be "policy" for us);
//   - bare CR: we keep a lone CR as content (RFC 5322 forbids it, RFC 6376
//     is silent); go-msgauth treats it as a line break. Inputs with a lone
//     CR are skipped;
//   - malformed header sections (a line without a colon, a leading
//     continuation, a non-printable name): we refuse to parse the message,
//     go-msgauth reads such lines as fields. Skipped when Parse fails;
//   - base64 in b=/bh=: RFC 6376 makes "=" padding optional and allows only
//     FWS inside; go-msgauth requires padding and strips any Unicode space
//     (\v, \f, U+0085, U+00A0). Mutations touching those are mapped: when
//     the oracle reports a malformed base64 value we do not compare;
//   - the oracle's regexp strips every "b=" it finds, including inside other
//     tags ("xb=..."); messages where it would match twice are skipped;
//   - l=, x= against another clock, key t= flags, multiple TXT records:
//     not produced by the signer or the mutator here.
func FuzzDifferential(f *testing.F) {
	testKeys(f)
	hdrs := "X-Extra: fuzz\r\n"
	bodies := []string{"Hello  world \r\nsecond line\r\n\r\n", "", "x", "a\tb \r\n\r\n \r\n", "line\r\n.\r\n"}
	for mode := uint8(0); mode < 8; mode++ {
		for i, body := range bodies {
			f.Add(hdrs, body, mode, uint8(0), uint16(0), byte(0))
			f.Add(hdrs, body, mode, uint8(1+i%3), uint16(40*i+7), byte(' '))
		}
		f.Add("Subject: other\r\n", "body\r\n", mode, uint8(1), uint16(1000), byte('\t'))
		f.Add("", "body text here\r\n", mode, uint8(3), uint16(500), byte('A'))
		f.Add("", "body text here\r\n", mode, uint8(2), uint16(600), byte(0))
		f.Add("", "body text here\r\n", mode, uint8(1), uint16(65535), byte('\n'))
	}
	f.Fuzz(func(t *testing.T, hdrs, body string, mode, op uint8, pos uint16, b byte) {
		if len(hdrs)+len(body) > 8<<10 || strings.Contains(strings.ToLower(hdrs), "dkim-signature") {
			return
		}
		ed := mode&1 != 0
		hc, bc := "simple", "simple"
		if mode&2 != 0 {
			hc = "relaxed"
		}
		if mode&4 != 0 {
			bc = "relaxed"
		}
		raw := "From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: test\r\n" + hdrs + "\r\n" + body
		if _, err := message.Parse([]byte(raw), message.Limits{}); err != nil {
			return
		}
		opts := &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: rsaKey,
			HeaderCanonicalization: msgauth.Canonicalization(hc), BodyCanonicalization: msgauth.Canonicalization(bc),
			HeaderKeys: []string{"From", "To", "Subject", "X-Extra"}}
		if ed {
			opts.Selector, opts.Signer = "ed", edKey
		}
		var out bytes.Buffer
		if err := msgauth.Sign(&out, strings.NewReader(raw), opts); err != nil {
			return // the signer refuses some inputs (e.g. no header end)
		}
		signed := out.Bytes()
		if len(signed) > 0 {
			p := int(pos) % (len(signed) + 1)
			switch op % 4 {
			case 1:
				signed = append(signed[:p:p], append([]byte{b}, signed[p:]...)...)
			case 2:
				if p < len(signed) {
					signed = append(signed[:p:p], signed[p+1:]...)
				}
			case 3:
				if p < len(signed) {
					signed = append([]byte(nil), signed...)
					signed[p] = b
				}
			}
		}
		compareWithOracle(t, signed)
	})
}

var oracleB = regexp.MustCompile(`(b\s*=)[^;]+`)

func hasLoneCR(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			return true
		}
	}
	return false
}

// compareWithOracle verifies signed with both verifiers; it returns
// whether a comparison happened and how many signatures passed.
func compareWithOracle(t *testing.T, signed []byte) (compared bool, passes int) {
	t.Helper()
	if hasLoneCR(signed) {
		return
	}
	m, err := message.Parse(signed, message.Limits{})
	if err != nil {
		return
	}
	sigs := m.FieldsByKey("dkim-signature")
	for _, s := range sigs {
		if len(oracleB.FindAll(s.Raw, -1)) > 1 {
			return
		}
		if bytes.ContainsAny(s.Raw, "\v\f") || bytes.Contains(s.Raw, []byte("\u0085")) || bytes.Contains(s.Raw, []byte("\u00a0")) {
			return
		}
	}
	v, _ := testEnv(t)
	v.HeaderStack = map[string]bool{}
	ours := v.Verify(context.Background(), m)
	theirs, err := msgauth.VerifyWithOptions(bytes.NewReader(signed), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			switch strings.ToLower(name) {
			case "rsa._domainkey.example.org":
				return []string{rsaKeyText}, nil
			case "ed._domainkey.example.org":
				return []string{edKeyText}, nil
			}
			return nil, &netErr{}
		},
	})
	if err != nil {
		return // the oracle could not read the message at all
	}
	compared = true
	if len(ours) != len(theirs) {
		t.Fatalf("%d results, oracle %d\n%q", len(ours), len(theirs), signed)
	}
	for i := range ours {
		weOK := ours[i].Result == Pass
		theyOK := theirs[i].Err == nil
		if weOK {
			passes++
		}
		if weOK == theyOK {
			continue
		}
		if theirs[i].Err != nil && strings.Contains(theirs[i].Err.Error(), "malformed") {
			continue // base64 strictness, see above
		}
		t.Fatalf("signature %d: ours %s (%s), oracle %v\n%q", i, ours[i].Result, ours[i].Reason, theirs[i].Err, signed)
	}
	return compared, passes
}

// TestDifferentialCoverage makes sure the comparison is not vacuous: every
// mode of unmutated input is compared and passes on both sides, and
// mutated inputs are compared too.
func TestDifferentialCoverage(t *testing.T) {
	testKeys(t)
	compared, passes := 0, 0
	for mode := 0; mode < 8; mode++ {
		hc, bc := "simple", "simple"
		if mode&2 != 0 {
			hc = "relaxed"
		}
		if mode&4 != 0 {
			bc = "relaxed"
		}
		signed := goSign(t, baseMsg, mode&1 != 0, hc, bc)
		for p := 0; p <= len(signed); p += 7 {
			mut := append(append(append([]byte(nil), signed[:p]...), ' '), signed[p:]...)
			for _, in := range [][]byte{signed, mut} {
				c, n := compareWithOracle(t, in)
				if c {
					compared++
				}
				passes += n
			}
		}
	}
	t.Logf("differential: %d messages compared, %d signatures passed on both sides", compared, passes)
	if compared < 400 || passes < 100 {
		t.Fatalf("too few comparisons: %d compared, %d passes", compared, passes)
	}
}

// netErr is a permanent DNS error for the oracle's LookupTXT.
type netErr struct{}

func (netErr) Error() string   { return "no such host" }
func (netErr) Timeout() bool   { return false }
func (netErr) Temporary() bool { return false }
