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
	"time"
	"unicode"
	"unicode/utf8"
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
//
// It runs for every message, so it writes into one buffer rather than
// going through authres.Format (a map of properties per method, sorted
// keys, string concatenation), which cost about a tenth of a verification.
// The output is byte for byte what the former authres.Format-based code
// produced, quirks included, so that verdicts do not change;
// FuzzAuthenticationResults holds the two together.
func AuthenticationResults(authservID string, v *Verdict) string {
	// On the stack, so that the string is the only allocation; a typical
	// header is under 200 bytes, a longer one grows onto the heap.
	var buf [512]byte
	b, bare := appendAuthenticationResults(buf[:0], authservID, v, false)
	if bare { // rare: a result with no property changes the white space
		b, _ = appendAuthenticationResults(b[:0], authservID, v, true)
	}
	return string(b)
}

// appendAuthenticationResults appends to b the authserv-id followed by one
// "; resinfo" per method (RFC 8601 2.2), or by "; none" when there is no
// result. A resinfo is "method=result" and then " ptype.property=pvalue"
// for each non-empty property (RFC 8601 2.7), in the order authres.Format
// wrote them: reason first, the others sorted by name. The authserv-id
// and the result values are written as they are, as authres.Format did.
//
// It reports whether some result had no property. The former code then
// rendered each result apart and passed it through strings.TrimSpace, to
// drop the space authres.Format leaves after a bare result; that also
// dropped any trailing Unicode white space (U+00A0, say, which needs no
// quoting) of the last value of every result. With trim set, each result
// is trimmed the same way. Otherwise nothing is trimmed: the former
// strings.TrimRight(…, " ") found no space to remove, as the header then
// ends with a property value, which ends in '"' or in a byte above SPACE.
func appendAuthenticationResults(b []byte, authservID string, v *Verdict, trim bool) (_ []byte, bare bool) {
	b = append(b, authservID...)
	if v.SPF == nil && len(v.DKIM) == 0 && v.ARC == nil && v.DMARC == nil {
		return append(b, "; none"...), false
	}
	if s := v.SPF; s != nil {
		b = append(b, "; spf="...)
		b = append(b, s.Result...)
		props := len(b)
		b = appendReason(b, s.Error)
		if s.Identity == "helo" {
			b = appendProperty(b, " smtp.helo=", s.Domain)
		} else {
			from := s.Sender
			if from == "" {
				from = s.Domain
			}
			b = appendProperty(b, " smtp.mailfrom=", from)
		}
		b, bare = endResult(b, props, trim, bare)
	}
	for i := range v.DKIM {
		d := &v.DKIM[i]
		b = append(b, "; dkim="...)
		b = append(b, d.Result...)
		props := len(b)
		b = appendReason(b, d.Reason)
		b = appendProperty(b, " header.a=", d.Algorithm)
		b = appendProperty(b, " header.b=", d.HeaderB)
		b = appendProperty(b, " header.d=", d.Domain)
		b = appendProperty(b, " header.i=", d.Identity)
		b = appendProperty(b, " header.s=", d.Selector)
		b, bare = endResult(b, props, trim, bare)
	}
	if a := v.ARC; a != nil {
		b = append(b, "; arc="...)
		b = append(b, a.Result...)
		props := len(b)
		b = appendReason(b, a.Reason)
		if a.OldestPass > 0 {
			b = append(b, " header.oldest-pass="...)
			b = strconv.AppendInt(b, int64(a.OldestPass), 10)
		}
		b = appendProperty(b, " smtp.remote-ip=", v.Envelope.ClientIP)
		b, bare = endResult(b, props, trim, bare)
	}
	if d := v.DMARC; d != nil {
		b = append(b, "; dmarc="...)
		b = append(b, d.Result...)
		props := len(b)
		b = appendReason(b, d.Error)
		from := d.AuthorDomain
		if from == "" && len(v.HeaderFrom) > 0 {
			from = v.HeaderFrom[0]
		}
		b = appendProperty(b, " header.from=", from)
		b = appendProperty(b, " policy.dmarc=", d.appliedPolicyValue())
		b, bare = endResult(b, props, trim, bare)
	}
	return b, bare
}

// endResult finishes a result whose properties start at props: it notes in
// bare whether there were none and, with trim, drops trailing white space
// as strings.TrimSpace does (the "method=" before props stops it).
func endResult(b []byte, props int, trim, bare bool) ([]byte, bool) {
	bare = bare || len(b) == props
	for trim {
		r, size := utf8.DecodeLastRune(b)
		if !unicode.IsSpace(r) {
			break
		}
		b = b[:len(b)-size]
	}
	return b, bare
}

// appendReason appends the reason property for free text, or nothing when
// no token is left. The value is an RFC 2045 token: every run of
// characters outside [A-Za-z0-9.+_-] becomes one hyphen (none at the
// start), and trailing hyphens go. RFC 8601 allows a quoted-string there,
// but common parsers (go-msgauth's among them) split values on white space
// and ';', and the header must parse back everywhere. The verdict's JSON
// keeps the full text.
func appendReason(b []byte, text string) []byte {
	start := len(b)
	b = append(b, " reason="...)
	token := len(b)
	dash := false
	// Byte by byte: the bytes of a non-ASCII character are all outside the
	// set, and being adjacent they make one run.
	for i := 0; i < len(text); i++ {
		if c := text[i]; 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '+' || c == '_' || c == '-' {
			b = append(b, c)
			dash = false
		} else if !dash && len(b) > token {
			b = append(b, '-')
			dash = true
		}
	}
	for len(b) > token && b[len(b)-1] == '-' {
		b = b[:len(b)-1]
	}
	if len(b) == token {
		return b[:start]
	}
	return b
}

// ASCII byte classes of authres.Format's pvalue rule, as 128-bit sets: bit
// c of lo for c < 64, bit c-64 of hi above.
const (
	// quoteLo, quoteHi: SPACE, the controls and the RFC 2045 tspecials,
	// which make a value a quoted-string.
	quoteLo = 1<<(' '+1) - 1 | 1<<'(' | 1<<')' | 1<<'<' | 1<<'>' | 1<<',' | 1<<';' |
		1<<':' | 1<<'"' | 1<<'/' | 1<<'?' | 1<<'='
	quoteHi = 1<<('@'-64) | 1<<('\\'-64) | 1<<('['-64) | 1<<(']'-64)
	// addressLo, addressHi: digits, letters and the punctuation that
	// authres.Format leaves bare in an address-like value: all but
	// ! " ( ) : ; < = > ? (so ',', '/', '@', '[', ']', '\' are in).
	addressLo = (1<<10-1)<<'0' | 1<<'#' | 1<<'$' | 1<<'%' | 1<<'&' | 1<<'\'' | 1<<'*' |
		1<<'+' | 1<<',' | 1<<'.' | 1<<'/' | 1<<'-'
	addressHi = (1<<26-1)<<('A'-64) | (1<<26-1)<<('a'-64) | 1<<('@'-64) | 1<<('['-64) |
		1<<(']'-64) | 1<<('\\'-64) | 1<<('^'-64) | 1<<('_'-64) | 1<<('`'-64) | 1<<('{'-64) |
		1<<('|'-64) | 1<<('}'-64) | 1<<('~'-64)
)

// inASCIISet reports whether the ASCII byte c is in the set lo, hi.
func inASCIISet(lo, hi uint64, c byte) bool {
	set := lo
	if c >= 64 {
		set = hi
	}
	return set>>(c&63)&1 != 0
}

// appendProperty appends key (" ptype.property=") and the value, or
// nothing when the value is empty, as authres.Format does (RFC 8601 2.7):
// the value stays bare when it looks like an address or holds nothing
// that needs quoting; otherwise it is a quoted-string (RFC 2045 5.1,
// RFC 5322 3.2.4).
//
// Unlike authres.Format, which escapes only '"', a backslash is escaped
// too, and CR, LF and the other controls but HTAB become '?'. Values such
// as smtp.mailfrom come from the sender: with the backslash left alone,
// MAIL FROM:<"x\" ; dkim=pass"@example.org> closed the quoted-string
// early and added a "dkim=pass" of the sender's making for every
// RFC-conforming reader of the header; a bare CR or LF would end the
// header field itself. The verdict's JSON keeps every value exactly.
func appendProperty(b []byte, key, value string) []byte {
	if value == "" {
		return b
	}
	b = append(b, key...)
	if addressLike(value) || !needsQuotes(value) {
		return append(b, value...)
	}
	b = append(b, '"')
	for i := 0; i < len(value); i++ {
		switch c := value[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < ' ' && c != '\t' || c == 0x7f:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// addressLike reports whether every character of s is a letter, a digit
// or address punctuation: authres.Format leaves such a value bare even
// though '@', '/' and others are tspecials. Most values (domains,
// addresses, selectors) are, and this test alone settles them.
func addressLike(s string) bool {
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if !inASCIISet(addressLo, addressHi, c) {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return false
		}
		i += size
	}
	return true
}

// needsQuotes reports whether s holds SPACE, a control or a tspecial,
// which authres.Format quotes. No character beyond ASCII does.
func needsQuotes(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < utf8.RuneSelf && inASCIISet(quoteLo, quoteHi, c) {
			return true
		}
	}
	return false
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
