// Package verdict defines the Verdict, the one record authpipe produces per
// message, and its JSON form: the contract of the mail.verdicts topic and of
// `authpipe verify`. It also renders the Authentication-Results header field
// (RFC 8601) that summarises a verdict.
//
// The JSON form is versioned (Version) and documented by the JSON Schema in
// docs/verdict.schema.json. Field names are stable: a field may be added in
// a minor change, never renamed or removed without a new version.
//
// The types here are plain data, independent of the verification packages,
// so that consumers (report generation, tests, other languages) depend on
// the contract and not on the code that fills it.
package verdict

import (
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/authres"
)

// SchemaVersion is the version of the JSON form produced by this package.
const SchemaVersion = 1

// Verdict is the outcome of verifying one message.
type Verdict struct {
	Version int `json:"version"`
	// Key is the input record's key (the MTA queue id), when there is one.
	Key string `json:"key,omitempty"`
	// EvaluatedAt is the time the checks were judged as of: the clock for
	// live traffic, the arrival time when re-scoring archived mail.
	EvaluatedAt time.Time `json:"evaluated_at"`
	Envelope    Envelope  `json:"envelope"`
	// MessageID is the Message-ID field, for correlation.
	MessageID string `json:"message_id,omitempty"`
	// HeaderFrom lists the domains of the RFC5322.From authors, in order.
	HeaderFrom []string `json:"header_from,omitempty"`
	// Message reports a message that could not be parsed or broke a bound
	// (size, header count); the checks that need the message then report
	// permerror.
	Message *MessageProblem `json:"message,omitempty"`

	SPF   *SPF   `json:"spf,omitempty"`
	DKIM  []DKIM `json:"dkim,omitempty"`
	ARC   *ARC   `json:"arc,omitempty"`
	DMARC *DMARC `json:"dmarc,omitempty"`

	// AuthenticationResults is the value of the Authentication-Results
	// header field (RFC 8601) for this verdict, without the field name.
	AuthenticationResults string `json:"authentication_results"`
}

// Envelope is the SMTP envelope the message arrived with.
type Envelope struct {
	ClientIP string `json:"client_ip,omitempty"`
	HELO     string `json:"helo,omitempty"`
	// MailFrom is the reverse path; "" is the null sender.
	MailFrom   string    `json:"mail_from"`
	RcptTo     []string  `json:"rcpt_to,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// MessageProblem says why the message itself could not be evaluated.
type MessageProblem struct {
	Error string `json:"error"`
	// Kind is a short class: size, fields, field-size, syntax.
	Kind string `json:"kind,omitempty"`
}

// SPF is the SPF result (RFC 7208) for the identity that was checked.
type SPF struct {
	Result string `json:"result"`
	Domain string `json:"domain"`
	// Identity is "mailfrom" or "helo" (RFC 7208 2.3, 2.4).
	Identity    string `json:"identity"`
	Sender      string `json:"sender,omitempty"`
	Mechanism   string `json:"mechanism,omitempty"`
	Lookups     int    `json:"lookups"`
	VoidLookups int    `json:"void_lookups"`
	Explanation string `json:"explanation,omitempty"`
	Error       string `json:"error,omitempty"`
}

// DKIM is the result for one DKIM-Signature (RFC 6376 6, RFC 8301, RFC 8463).
type DKIM struct {
	Result    string `json:"result"`
	Domain    string `json:"domain"`
	Selector  string `json:"selector"`
	Algorithm string `json:"algorithm"`
	KeyBits   int    `json:"key_bits,omitempty"`
	Identity  string `json:"identity,omitempty"`
	// HeaderB is the leading part of b=, identifying the signature in
	// Authentication-Results (RFC 6008).
	HeaderB     string `json:"header_b,omitempty"`
	Reason      string `json:"reason,omitempty"`
	PartialBody bool   `json:"partial_body,omitempty"`
	// UnsignedDuplicates lists header fields that occur in the message
	// more often than the signature covers them.
	UnsignedDuplicates []string `json:"unsigned_duplicates,omitempty"`
	Testing            bool     `json:"testing,omitempty"`
}

// ARC is the ARC chain validation result (RFC 8617 5.2).
type ARC struct {
	Result     string   `json:"result"`
	Reason     string   `json:"reason,omitempty"`
	Instances  int      `json:"instances"`
	OldestPass int      `json:"oldest_pass,omitempty"`
	Sets       []ARCSet `json:"sets,omitempty"`
}

// ARCSet describes one ARC set: who sealed it and what it recorded.
type ARCSet struct {
	Instance    int    `json:"instance"`
	Sealer      string `json:"sealer"`
	Selector    string `json:"selector,omitempty"`
	CV          string `json:"cv,omitempty"`
	SealValid   bool   `json:"seal_valid"`
	AuthResults string `json:"auth_results,omitempty"`
}

// DMARC is the DMARC evaluation (RFC 9989, or RFC 7489 in that mode).
type DMARC struct {
	Result          string  `json:"result"`
	PolicyDomain    string  `json:"policy_domain,omitempty"`
	AuthorDomain    string  `json:"author_domain,omitempty"`
	OrgDomain       string  `json:"org_domain,omitempty"`
	DiscoveryMethod string  `json:"discovery_method,omitempty"`
	Mode            string  `json:"mode,omitempty"`
	Policy          *Policy `json:"policy,omitempty"`
	SPFAligned      bool    `json:"spf_aligned"`
	DKIMAligned     bool    `json:"dkim_aligned"`
	// AlignedDKIMDomain is the d= of the signature that gave alignment.
	AlignedDKIMDomain string `json:"aligned_dkim_domain,omitempty"`
	// AppliedPolicy names the policy tag that applied: "p", "sp" or "np"
	// (RFC 9989 4.7).
	AppliedPolicy string `json:"applied_policy,omitempty"`
	// Disposition is what the receiver applies: none, quarantine, reject.
	Disposition string   `json:"disposition"`
	Reasons     []Reason `json:"reasons,omitempty"`
	Error       string   `json:"error,omitempty"`
}

// Policy is the DMARC policy record as evaluated (RFC 9990 policy_published).
type Policy struct {
	Domain  string   `json:"domain"`
	P       string   `json:"p"`
	SP      string   `json:"sp,omitempty"`
	NP      string   `json:"np,omitempty"`
	ADKIM   string   `json:"adkim"`
	ASPF    string   `json:"aspf"`
	Testing string   `json:"testing,omitempty"`
	PSD     string   `json:"psd,omitempty"`
	Pct     *int     `json:"pct,omitempty"`
	FO      string   `json:"fo,omitempty"`
	RUA     []string `json:"rua,omitempty"`
	RUF     []string `json:"ruf,omitempty"`
}

// Reason is a policy override reason (RFC 9990 PolicyOverrideType).
type Reason struct {
	Type    string `json:"type"`
	Comment string `json:"comment,omitempty"`
}

// AuthenticationResults renders the Authentication-Results value (RFC 8601)
// for v as added by authservID. Methods appear in the order spf, dkim (one
// per signature), arc, dmarc.
func AuthenticationResults(authservID string, v *Verdict) string {
	results := make([]authres.Result, 0, 3+len(v.DKIM))
	if s := v.SPF; s != nil {
		r := &authres.SPFResult{Value: authres.ResultValue(s.Result), Reason: reasonToken(s.Error)}
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
		setParam(params, "reason", reasonToken(d.Reason))
		setParam(params, "header.d", d.Domain)
		setParam(params, "header.s", d.Selector)
		setParam(params, "header.a", d.Algorithm)
		setParam(params, "header.b", d.HeaderB)
		setParam(params, "header.i", d.Identity)
		results = append(results, &authres.GenericResult{Method: "dkim", Value: authres.ResultValue(d.Result), Params: params})
	}
	if a := v.ARC; a != nil {
		params := make(map[string]string, 3)
		setParam(params, "reason", reasonToken(a.Reason))
		if a.OldestPass > 0 {
			params["header.oldest-pass"] = strconv.Itoa(a.OldestPass)
		}
		setParam(params, "smtp.remote-ip", v.Envelope.ClientIP)
		results = append(results, &authres.GenericResult{Method: "arc", Value: authres.ResultValue(a.Result), Params: params})
	}
	if d := v.DMARC; d != nil {
		from := d.AuthorDomain
		if from == "" && len(v.HeaderFrom) > 0 {
			from = v.HeaderFrom[0]
		}
		params := make(map[string]string, 3)
		setParam(params, "header.from", from)
		setParam(params, "reason", reasonToken(d.Error))
		setParam(params, "policy.dmarc", d.appliedPolicyValue())
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

// setParam records a non-empty parameter (authres.Format skips empty
// ones, but sorts every key first).
func setParam(m map[string]string, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// reasonToken turns free text into an RFC 2045 token for the reason
// property: every run of characters outside [A-Za-z0-9.+_-] becomes one
// hyphen. RFC 8601 allows a quoted-string there, but common parsers
// (go-msgauth's among them) split values on white space and ';', and the
// header must parse back everywhere. The verdict's JSON keeps the full text.
func reasonToken(s string) string {
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

// appliedPolicyValue returns the value (none, quarantine, reject) of the
// policy tag that applied, or "" when no policy applied.
func (d *DMARC) appliedPolicyValue() string {
	if d.Policy == nil {
		return ""
	}
	switch d.AppliedPolicy {
	case "p":
		return d.Policy.P
	case "sp":
		return d.Policy.SP
	case "np":
		return d.Policy.NP
	}
	return ""
}
