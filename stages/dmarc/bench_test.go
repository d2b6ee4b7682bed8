package dmarc

import (
	"context"
	"testing"
)

// BenchmarkEvaluateWarm: record at the org domain, From on a subdomain,
// relaxed DKIM and SPF alignment, answers from an in-memory resolver (a
// warm cache's cost without its lookup).
func BenchmarkEvaluateWarm(b *testing.B) {
	m := &mapResolver{txt: map[string][]string{"_dmarc.example.com": {"v=DMARC1; p=reject; rua=mailto:dmarc@example.com"}}}
	e := &Evaluator{Resolver: newQuietResolver(m)}
	in := Input{
		FromDomains: []string{"news.example.com"},
		SPF:         SPFResult{Result: "pass", Domain: "bounce.example.com", Scope: "mfrom"},
		DKIM:        []DKIMResult{{Result: "pass", Domain: "example.com", Selector: "s1"}},
	}
	ctx := context.Background()
	if r := e.Evaluate(ctx, in); r.Result != ResultPass || r.PolicyDomain != "example.com" {
		b.Fatalf("got %+v", r)
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Evaluate(ctx, in)
	}
}
