package verdict

import (
	"testing"

	"github.com/emersion/go-msgauth/authres"
)

// typicalVerdict is what the engine produces for aligned mail: SPF pass,
// one DKIM pass, DMARC pass.
func typicalVerdict() *Verdict {
	return &Verdict{
		Envelope:   Envelope{ClientIP: "192.0.2.10", MailFrom: "bounce@example.com"},
		HeaderFrom: []string{"example.com"},
		SPF:        &SPF{Result: "pass", Identity: "mailfrom", Domain: "example.com", Sender: "bounce@example.com"},
		DKIM: []DKIM{{Result: "pass", Domain: "example.com", Selector: "rsa", Algorithm: "rsa-sha256",
			HeaderB: "dGhpcyBp", Identity: "@example.com"}},
		DMARC: &DMARC{Result: "pass", AuthorDomain: "example.com"},
	}
}

// BenchmarkAuthenticationResults renders the header of a typical verdict:
// go test -run '^$' -bench AuthenticationResults ./stages/verdict/
func BenchmarkAuthenticationResults(b *testing.B) {
	v := typicalVerdict()
	b.ReportAllocs()
	for b.Loop() {
		AuthenticationResults("mx.example.net", v)
	}
}

// TestAuthenticationResultsParses: the typical header parses back.
func TestAuthenticationResultsParses(t *testing.T) {
	h := AuthenticationResults("mx.example.net", typicalVerdict())
	id, rs, err := authres.Parse(h)
	if err != nil || id != "mx.example.net" || len(rs) != 3 {
		t.Fatalf("%q: id %q, %d results, %v", h, id, len(rs), err)
	}
	t.Log(h)
}
