package dmarc

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/emersion/go-msgauth/authres"
)

// MaxARCSets bounds the ARC sets inspected for trusted forwarders (RFC 8617
// 4.2.1 limits a chain to 50).
const MaxARCSets = 50

// stripInstance removes the leading "i=N;" of an ARC-Authentication-Results
// value (RFC 8617 4.1.1) so that authres.Parse sees an ordinary
// Authentication-Results value.
func stripInstance(v string) string {
	s := strings.TrimLeft(v, " \t\r\n")
	if len(s) >= 2 && (s[0] == 'i' || s[0] == 'I') {
		rest := strings.TrimLeft(s[1:], " \t")
		if strings.HasPrefix(rest, "=") {
			if j := strings.IndexByte(rest, ';'); j >= 0 {
				return rest[j+1:]
			}
		}
	}
	return v
}

// trustedForwarder implements Overrides.TrustedARCSealers: the ARC chain
// validated and a set sealed by a trusted sealer recorded dmarc=pass for the
// author domain, or an aligned spf/dkim pass. Newest sets are looked at
// first.
func (e *Evaluator) trustedForwarder(ctx context.Context, in Input, st *authorState) (Reason, bool) {
	if len(e.Overrides.TrustedARCSealers) == 0 || !strings.EqualFold(in.ARC.Result, "pass") {
		return Reason{}, false
	}
	sets := in.ARC.Sets
	if len(sets) > MaxARCSets {
		sets = sets[:MaxARCSets]
	}
	order := make([]int, len(sets))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return sets[order[a]].Instance > sets[order[b]].Instance })
	for _, i := range order {
		set := sets[i]
		sealer, err := canonicalDomain(set.Sealer)
		if err != nil || !containsDomain(e.Overrides.TrustedARCSealers, sealer) {
			continue
		}
		_, results, err := authres.Parse(stripInstance(set.AuthResults))
		if err != nil && len(results) == 0 {
			continue
		}
		for _, r := range results {
			var what string
			switch r := r.(type) {
			case *authres.DMARCResult:
				if r.Value == authres.ResultPass {
					if d, err := canonicalDomain(domainOfAddr(r.From)); err == nil && d == st.author {
						what = "dmarc=pass"
					}
				}
			case *authres.SPFResult:
				if r.Value == authres.ResultPass && r.From != "" {
					if ok, _ := e.aligned(ctx, st, domainOfAddr(r.From), st.rec.ASPF); ok {
						what = "aligned spf=pass"
					}
				}
			case *authres.DKIMResult:
				if r.Value == authres.ResultPass && r.Domain != "" {
					if ok, _ := e.aligned(ctx, st, r.Domain, st.rec.ADKIM); ok {
						what = "aligned dkim=pass"
					}
				}
			}
			if what != "" {
				return Reason{Type: ReasonTrustedForwarder,
					Comment: fmt.Sprintf("ARC set i=%d sealed by %s recorded %s", set.Instance, sealer, what)}, true
			}
		}
	}
	return Reason{}, false
}

func containsDomain(list []string, d string) bool {
	for _, x := range list {
		if strings.EqualFold(strings.TrimSuffix(x, "."), d) {
			return true
		}
	}
	return false
}
