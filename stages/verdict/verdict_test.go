package verdict

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
)

func sample() *Verdict {
	return &Verdict{
		Version:     SchemaVersion,
		EvaluatedAt: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC),
		Envelope:    Envelope{ClientIP: "192.0.2.1", HELO: "mail.example.com", MailFrom: "bounce@example.com"},
		HeaderFrom:  []string{"example.com"},
		SPF:         &SPF{Result: "pass", Domain: "example.com", Identity: "mailfrom", Sender: "bounce@example.com", Mechanism: "ip4:192.0.2.0/24", Lookups: 1},
		DKIM: []DKIM{
			{Result: "pass", Domain: "example.com", Selector: "s1", Algorithm: "rsa-sha256", KeyBits: 2048, HeaderB: "abcdefgh"},
			{Result: "fail", Domain: "other.example", Selector: "k", Algorithm: "ed25519-sha256", Reason: "body hash did not verify"},
		},
		ARC:   &ARC{Result: "pass", Instances: 2, OldestPass: 1},
		DMARC: &DMARC{Result: "pass", PolicyDomain: "example.com", AuthorDomain: "example.com", Disposition: "none", AppliedPolicy: "p", Policy: &Policy{Domain: "example.com", P: "reject", ADKIM: "r", ASPF: "r"}},
	}
}

func TestAuthenticationResultsParsesBack(t *testing.T) {
	v := sample()
	ar := AuthenticationResults("mx.authpipe.test", v)
	id, results, err := authres.Parse(ar)
	if err != nil {
		t.Fatalf("authres.Parse(%q): %v", ar, err)
	}
	if id != "mx.authpipe.test" {
		t.Errorf("authserv-id = %q", id)
	}
	if len(results) != 5 {
		t.Fatalf("got %d results from %q, want 5", len(results), ar)
	}
	spf, ok := results[0].(*authres.SPFResult)
	if !ok || spf.Value != authres.ResultPass || spf.From != "bounce@example.com" {
		t.Errorf("spf result = %#v", results[0])
	}
	dk, ok := results[2].(*authres.DKIMResult)
	if !ok || dk.Value != authres.ResultFail || dk.Domain != "other.example" || dk.Reason != "body-hash-did-not-verify" {
		t.Errorf("second dkim result = %#v", results[2])
	}
	arc, ok := results[3].(*authres.ARCResult)
	if !ok || arc.Value != authres.ResultPass || arc.OldestPass != 1 || arc.RemoteIP != "192.0.2.1" {
		t.Errorf("arc result = %#v", results[3])
	}
	dm, ok := results[4].(*authres.DMARCResult)
	if !ok || dm.Value != authres.ResultPass || dm.From != "example.com" {
		t.Errorf("dmarc result = %#v", results[4])
	}
	if !strings.Contains(ar, "policy.dmarc=reject") {
		t.Errorf("applied policy value missing from %q", ar)
	}
	if strings.Contains(ar, " ;") || strings.HasSuffix(ar, " ") {
		t.Errorf("stray spaces in %q", ar)
	}
}

func TestAuthenticationResultsHELOAndEmpty(t *testing.T) {
	v := &Verdict{SPF: &SPF{Result: "none", Domain: "helo.example", Identity: "helo"}}
	ar := AuthenticationResults("id", v)
	if ar != "id; spf=none smtp.helo=helo.example" {
		t.Errorf("got %q", ar)
	}
	if got := AuthenticationResults("id", &Verdict{}); got != "id; none" {
		t.Errorf("empty verdict: got %q", got)
	}
}

func TestJSONFieldNames(t *testing.T) {
	v := sample()
	v.AuthenticationResults = AuthenticationResults("id", v)
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	// The names the issue fixes for every consumer of the verdict.
	get := func(path ...string) any {
		var cur any = m
		for _, p := range path {
			switch c := cur.(type) {
			case map[string]any:
				cur = c[p]
			case []any:
				cur = c[0].(map[string]any)[p]
			default:
				return nil
			}
		}
		return cur
	}
	for _, path := range [][]string{
		{"spf", "result"}, {"spf", "domain"},
		{"dkim", "result"}, {"dkim", "domain"}, {"dkim", "selector"}, {"dkim", "algorithm"},
		{"arc", "result"},
		{"dmarc", "result"}, {"dmarc", "policy_domain"}, {"dmarc", "disposition"},
		{"authentication_results"},
	} {
		if get(path...) == nil {
			t.Errorf("JSON lacks %v: %s", path, b)
		}
	}
	var back Verdict
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.DKIM[1].Reason != v.DKIM[1].Reason || back.DMARC.Policy.P != "reject" {
		t.Errorf("round trip lost data: %+v", back)
	}
}
