package verdict

import (
	"strconv"
	"strings"

	"github.com/emersion/go-msgauth/authres"
)

// authenticationResultsReference is the former AuthenticationResults, built
// on authres.Format, kept verbatim as the oracle for the differential test
// and FuzzAuthenticationResults: the hand-written renderer must match it
// byte for byte.
func authenticationResultsReference(authservID string, v *Verdict) string {
	results := make([]authres.Result, 0, 3+len(v.DKIM))
	if s := v.SPF; s != nil {
		r := &authres.SPFResult{Value: authres.ResultValue(s.Result), Reason: reasonTokenReference(s.Error)}
		if s.Identity == "helo" {
			r.Helo = s.Domain
		} else {
			r.From = s.Sender
			if r.From == "" {
				r.From = s.Domain
			}
		}
		results = append(results, r)
	}
	for _, d := range v.DKIM {
		params := make(map[string]string, 6)
		setParamReference(params, "reason", reasonTokenReference(d.Reason))
		setParamReference(params, "header.d", d.Domain)
		setParamReference(params, "header.s", d.Selector)
		setParamReference(params, "header.a", d.Algorithm)
		setParamReference(params, "header.b", d.HeaderB)
		setParamReference(params, "header.i", d.Identity)
		results = append(results, &authres.GenericResult{Method: "dkim", Value: authres.ResultValue(d.Result), Params: params})
	}
	if a := v.ARC; a != nil {
		params := make(map[string]string, 3)
		setParamReference(params, "reason", reasonTokenReference(a.Reason))
		if a.OldestPass > 0 {
			params["header.oldest-pass"] = strconv.Itoa(a.OldestPass)
		}
		setParamReference(params, "smtp.remote-ip", v.Envelope.ClientIP)
		results = append(results, &authres.GenericResult{Method: "arc", Value: authres.ResultValue(a.Result), Params: params})
	}
	if d := v.DMARC; d != nil {
		from := d.AuthorDomain
		if from == "" && len(v.HeaderFrom) > 0 {
			from = v.HeaderFrom[0]
		}
		params := make(map[string]string, 3)
		setParamReference(params, "header.from", from)
		setParamReference(params, "reason", reasonTokenReference(d.Error))
		setParamReference(params, "policy.dmarc", d.appliedPolicyValue())
		results = append(results, &authres.GenericResult{Method: "dmarc", Value: authres.ResultValue(d.Result), Params: params})
	}
	if len(results) == 0 {
		return authres.Format(authservID, nil)
	}
	// authres.Format writes a space after each method's value, so a method
	// whose parameters are all empty leaves " ;" or a trailing space. In the
	// usual case every method has a parameter and one call suffices.
	oneCall := true
	for _, r := range results {
		switch r := r.(type) {
		case *authres.GenericResult:
			oneCall = oneCall && len(r.Params) > 0
		case *authres.SPFResult:
			oneCall = oneCall && r.From+r.Helo+r.Reason != ""
		}
	}
	if oneCall {
		return strings.TrimRight(authres.Format(authservID, results), " ")
	}
	var b strings.Builder
	b.WriteString(authservID)
	for _, r := range results {
		one := authres.Format("", []authres.Result{r})
		b.WriteString("; ")
		b.WriteString(strings.TrimSpace(strings.TrimPrefix(one, "; ")))
	}
	return b.String()
}

// setParamReference records a non-empty parameter (authres.Format skips
// empty ones, but sorts every key first).
func setParamReference(m map[string]string, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// reasonTokenReference is the former reasonToken, which built a string.
func reasonTokenReference(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range s {
		ok := c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".+_-", c))
		if ok {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}
