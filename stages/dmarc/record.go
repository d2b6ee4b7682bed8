package dmarc

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unsafe"
)

// Mode selects the DMARC specification the Evaluator follows.
type Mode string

const (
	// ModeRFC9989 is DMARCbis (RFC 9989): tree-walk discovery, psd, np, t.
	// It is the default; the empty Mode means ModeRFC9989.
	ModeRFC9989 Mode = "rfc9989"
	// ModeRFC7489 is the original DMARC (RFC 7489): public suffix list,
	// pct sampling, rf and ri, strict record syntax.
	ModeRFC7489 Mode = "rfc7489"
)

func (m Mode) is7489() bool { return m == ModeRFC7489 }

// Policy is a Domain Owner Assessment Policy value (p, sp, np).
type Policy string

// Policy values (RFC 9989 section 4.7, dmarc-request).
const (
	PolicyNone       Policy = "none"
	PolicyQuarantine Policy = "quarantine"
	PolicyReject     Policy = "reject"
)

// lower returns the next less strict policy: reject → quarantine →
// none (RFC 9989 4.7 t=y, RFC 7489 6.6.4 pct).
func (p Policy) lower() Policy {
	switch p {
	case PolicyReject:
		return PolicyQuarantine
	default:
		return PolicyNone
	}
}

func (p Policy) rank() int {
	switch p {
	case PolicyReject:
		return 2
	case PolicyQuarantine:
		return 1
	}
	return 0
}

// Errors returned by ParseRecord, to be tested with errors.Is.
var (
	// ErrNotDMARC: the text does not start with v=DMARC1, so it is not a
	// DMARC record at all and is discarded (RFC 9989 4.7 "v", 4.10 step 2).
	ErrNotDMARC = errors.New("not a DMARC record")
	// ErrSyntax: the text starts with v=DMARC1 but cannot be used: no valid
	// p (or an invalid sp/np) and no valid rua URI (RFC 9989 4.10.1), a
	// repeated tag (RFC 6376 3.2 tag-list rules), or, in RFC 7489 mode, any
	// syntax error.
	ErrSyntax = errors.New("invalid DMARC record")
)

// URI is one DMARC reporting URI from rua or ruf.
type URI struct {
	// Address is the URI without any size suffix, e.g. "mailto:d@example.com".
	Address string `json:"address"`
	// MaxSize and Unit are the RFC 7489 "!size[k|m|g|t]" suffix (Unit lower
	// case, "" for bytes). Only set in RFC 7489 mode: RFC 9989 4.8 makes the
	// suffix obsolete and says it is ignored.
	MaxSize uint64 `json:"max_size,omitempty"`
	Unit    string `json:"unit,omitempty"`
}

// Scheme returns the URI scheme in lower case ("mailto", "https", ...).
func (u URI) Scheme() string {
	if i := strings.IndexByte(u.Address, ':'); i > 0 {
		return strings.ToLower(u.Address[:i])
	}
	return ""
}

// Record is a parsed DMARC Policy Record (RFC 9989 4.7; RFC 7489 6.3 in
// RFC 7489 mode). Absent optional tags hold their defaults, except SP and NP
// which are "" when absent (their fallback depends on the other tags).
type Record struct {
	Version string // always "DMARC1"
	P       Policy
	SP      Policy // "" when absent
	NP      Policy // "" when absent
	ADKIM   string // "r" or "s"
	ASPF    string // "r" or "s"
	FO      []string
	RUA     []URI
	RUF     []URI
	// Testing is t=y (RFC 9989 only; always false in RFC 7489 mode).
	Testing bool
	// PSD is "y", "n" or "u" (RFC 9989 only; "u" in RFC 7489 mode).
	PSD string
	// Pct, RF, RI are RFC 7489 tags, parsed in RFC 7489 mode only (defaults
	// 100, ["afrf"], 86400 otherwise).
	Pct int
	RF  []string
	RI  uint32
	// PNoneFallback reports that p was missing or invalid (or sp/np
	// invalid) and the record is used as p=none because rua holds a valid
	// URI (RFC 9989 4.10.1, RFC 7489 6.6.3).
	PNoneFallback bool
	// Ignored lists tags whose value was discarded for a syntax error (RFC
	// 9989 4.8: "Syntax errors in the remainder of the record MUST be
	// discarded in favor of default values"), as "tag: reason".
	Ignored []string
}

// bytes is what r keeps alive besides its text, for the parse cache's byte
// bound: the record, its lists and every string in them, each rounded up to
// 16 octets as the allocator does (counted even when it is a substring of
// the text: Ignored holds new strings, and counting all is simpler than
// telling them apart). A record of 2000 empty tags is the worst case: 2000
// Ignored strings, 37 bytes each for 1 octet of text.
func (r *Record) bytes() int {
	if r == nil {
		return 0
	}
	str := func(s string) int { return (len(s) + 15) &^ 15 }
	n := int(unsafe.Sizeof(*r))
	for _, l := range [...][]string{r.FO, r.RF, r.Ignored} {
		n += cap(l) * int(unsafe.Sizeof(""))
		for _, s := range l {
			n += str(s)
		}
	}
	for _, l := range [...][]URI{r.RUA, r.RUF} {
		n += cap(l) * int(unsafe.Sizeof(URI{}))
		for _, u := range l {
			n += str(u.Address) + str(u.Unit)
		}
	}
	return n
}

// MaxRecordLen bounds the record text ParseRecord accepts (longer → ErrSyntax).
// DMARC records are a few hundred octets; 4096 leaves room for long rua lists.
const MaxRecordLen = 4096

// isWSP reports RFC 5234 WSP.
func isWSP(c byte) bool { return c == ' ' || c == '\t' }

func trimWSP(s string) string {
	for len(s) > 0 && isWSP(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isWSP(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// splitTag splits "name = value" (RFC 9989 4.8 dmarc-tag). ok is false when
// there is no "=" or the name is not 1*ALPHA.
func splitTag(part string) (name, value string, ok bool) {
	i := strings.IndexByte(part, '=')
	if i < 0 {
		return "", "", false
	}
	name = trimWSP(part[:i])
	value = trimWSP(part[i+1:])
	if name == "" {
		return "", "", false
	}
	for j := 0; j < len(name); j++ {
		c := name[j] | 0x20
		if c < 'a' || c > 'z' {
			return "", "", false
		}
	}
	return strings.ToLower(name), value, true
}

// startsWithV1 reports whether txt starts with the tag v=DMARC1 (tag name
// case-insensitive, value case-sensitive, RFC 9989 4.7 "v").
func startsWithV1(txt string) bool {
	first := txt
	if i := strings.IndexByte(txt, ';'); i >= 0 {
		first = txt[:i]
	}
	name, value, ok := splitTag(trimWSP(first))
	return ok && name == "v" && value == "DMARC1"
}

// ParseRecord parses the text of one DMARC TXT record (character-strings
// already joined, RFC 9989 4.5).
//
// It returns an error wrapping ErrNotDMARC when the text does not start with
// v=DMARC1 and one wrapping ErrSyntax when the record cannot be used. In
// ModeRFC9989 other syntax errors are discarded in favour of defaults (RFC
// 9989 4.8) and listed in Record.Ignored; in ModeRFC7489 the parser is
// strict, as mox and most RFC 7489 implementations are: every syntax error
// in a known tag, p not directly after v, or an invalid rua URI invalidates
// the record, except that an invalid or missing p/sp/np with a valid rua
// gives p=none (RFC 7489 6.6.3). Unknown tags are ignored in both modes, as
// are pct/rf/ri in RFC 9989 mode and t/psd in RFC 7489 mode.
func ParseRecord(txt string, mode Mode) (*Record, error) {
	r, err := parseRecord(txt, mode)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parseRecord is ParseRecord, except that for an unusable record (ErrSyntax
// for a missing/invalid p without rua) it also returns what was parsed, so
// the tree walk can still see psd (RFC 9989 4.10 step 2 keeps every record
// that starts with v=DMARC1).
func parseRecord(txt string, mode Mode) (*Record, error) {
	if len(txt) > MaxRecordLen {
		return nil, fmt.Errorf("dmarc: record of %d octets, over %d: %w", len(txt), MaxRecordLen, ErrSyntax)
	}
	if !startsWithV1(txt) {
		return nil, fmt.Errorf("dmarc: record does not start with v=DMARC1: %w", ErrNotDMARC)
	}
	strict := mode.is7489()
	r := &Record{Version: "DMARC1", ADKIM: "r", ASPF: "r", FO: []string{"0"}, PSD: "u", Pct: 100, RF: []string{"afrf"}, RI: 86400}
	parts := strings.Split(txt, ";")
	seen := make(map[string]bool, len(parts))
	var (
		strictErr  error // first syntax error in RFC 7489 mode (other than p/sp/np)
		policyBad  bool  // p missing/invalid or sp/np invalid
		havePolicy bool
	)
	fail := func(tag, why string) {
		if strict {
			if strictErr == nil {
				strictErr = fmt.Errorf("dmarc: tag %q: %s: %w", tag, why, ErrSyntax)
			}
			return
		}
		r.Ignored = append(r.Ignored, tag+": "+why)
	}
	for i, part := range parts {
		if i == 0 {
			seen["v"] = true
			continue
		}
		part = trimWSP(part)
		if part == "" {
			if i != len(parts)-1 {
				fail("", "empty tag")
			}
			continue
		}
		name, value, ok := splitTag(part)
		if !ok {
			fail(part, "not a tag=value pair")
			continue
		}
		if seen[name] {
			return nil, fmt.Errorf("dmarc: tag %q repeated: %w", name, ErrSyntax)
		}
		seen[name] = true
		if value == "" {
			if isKnownTag(name, mode) {
				if name == "p" || name == "sp" || name == "np" {
					policyBad = true
				} else {
					fail(name, "empty value")
				}
			}
			continue
		}
		switch name {
		case "p", "sp", "np":
			if strict && name == "p" && i != 1 {
				policyBad = true
				continue
			}
			p, ok := parsePolicy(value)
			if !ok {
				policyBad = true
				continue
			}
			switch name {
			case "p":
				r.P, havePolicy = p, true
			case "sp":
				r.SP = p
			case "np":
				r.NP = p
			}
		case "adkim", "aspf":
			v := strings.ToLower(value)
			if v != "r" && v != "s" {
				fail(name, "not r or s")
				continue
			}
			if name == "adkim" {
				r.ADKIM = v
			} else {
				r.ASPF = v
			}
		case "fo":
			fo, err := parseFO(value, strict)
			if err != nil {
				fail(name, err.Error())
				continue
			}
			r.FO = fo
		case "rua", "ruf":
			uris, err := parseURIList(value, strict)
			if err != nil {
				fail(name, err.Error())
			}
			if len(uris) == 0 {
				if err == nil {
					fail(name, "no valid URI")
				}
				continue
			}
			if strict && err != nil {
				continue
			}
			if name == "rua" {
				r.RUA = uris
			} else {
				r.RUF = uris
			}
		case "t":
			if strict {
				continue
			}
			switch strings.ToLower(value) {
			case "y":
				r.Testing = true
			case "n":
				r.Testing = false
			default:
				fail(name, "not y or n")
			}
		case "psd":
			if strict {
				continue
			}
			v := strings.ToLower(value)
			if v != "y" && v != "n" && v != "u" {
				fail(name, "not y, n or u")
				continue
			}
			r.PSD = v
		case "pct":
			if !strict {
				continue
			}
			n, err := strconv.ParseUint(value, 10, 8)
			if err != nil || n > 100 {
				fail(name, "not an integer 0-100")
				continue
			}
			r.Pct = int(n)
		case "rf":
			if !strict {
				continue
			}
			rf, err := parseRF(value)
			if err != nil {
				fail(name, err.Error())
				continue
			}
			r.RF = rf
		case "ri":
			if !strict {
				continue
			}
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				fail(name, "not a 32-bit unsigned integer")
				continue
			}
			r.RI = uint32(n)
		case "v":
			// Unreachable: v is marked seen before the loop.
		}
	}
	if strictErr != nil {
		return nil, strictErr
	}
	if !havePolicy || policyBad {
		if len(r.RUA) == 0 {
			return r, fmt.Errorf("dmarc: no valid p tag (or invalid sp/np) and no valid rua URI: %w", ErrSyntax)
		}
		r.P, r.SP, r.NP = PolicyNone, "", ""
		r.PNoneFallback = true
	}
	return r, nil
}

func isKnownTag(name string, mode Mode) bool {
	switch name {
	case "p", "sp", "np", "adkim", "aspf", "fo", "rua", "ruf":
		return true
	case "t", "psd":
		return !mode.is7489()
	case "pct", "rf", "ri":
		return mode.is7489()
	}
	return false
}

func parsePolicy(v string) (Policy, bool) {
	switch p := Policy(strings.ToLower(v)); p {
	case PolicyNone, PolicyQuarantine, PolicyReject:
		return p, true
	}
	return "", false
}

// parseFO parses fo. RFC 7489 allows any of 0, 1, d, s joined by ":";
// RFC 9989 4.8 (dmarc-fo) makes 0 and 1 exclusive and each value unique.
func parseFO(v string, rfc7489 bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.Split(v, ":") {
		f = strings.ToLower(trimWSP(f))
		switch f {
		case "0", "1", "d", "s":
		default:
			return nil, fmt.Errorf("value %q not 0, 1, d or s", f)
		}
		if !rfc7489 {
			if seen[f] {
				return nil, fmt.Errorf("value %q repeated", f)
			}
			if (f == "0" && seen["1"]) || (f == "1" && seen["0"]) {
				return nil, errors.New("0 and 1 are mutually exclusive")
			}
		}
		seen[f] = true
		out = append(out, f)
	}
	if !rfc7489 && !seen["0"] && !seen["1"] {
		// dmarc-fo requires exactly one of 0 or 1 in every alternative.
		return nil, errors.New("neither 0 nor 1")
	}
	return out, nil
}

// parseRF parses the RFC 7489 rf tag: Keyword *(":" Keyword), Keyword as in
// RFC 5321 (Ldh-str: letters, digits, hyphens, not ending in a hyphen).
func parseRF(v string) ([]string, error) {
	var out []string
	for _, k := range strings.Split(v, ":") {
		k = trimWSP(k)
		if k == "" || k[len(k)-1] == '-' {
			return nil, fmt.Errorf("bad report format %q", k)
		}
		for i := 0; i < len(k); i++ {
			c := k[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return nil, fmt.Errorf("bad report format %q", k)
			}
		}
		out = append(out, strings.ToLower(k))
	}
	return out, nil
}

// parseURIList parses a dmarc-urilist. It returns the valid URIs and the
// first error; callers in RFC 9989 mode keep the valid ones, RFC 7489 mode
// rejects the whole tag on any error.
func parseURIList(v string, rfc7489 bool) ([]URI, error) {
	var (
		out      []URI
		firstErr error
	)
	for _, s := range strings.Split(v, ",") {
		u, err := parseURI(trimWSP(s), rfc7489)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		out = append(out, u)
	}
	return out, firstErr
}

// parseURI parses one DMARC URI (RFC 9989 4.8 dmarc-uri / obs-dmarc-uri).
// A scheme is required; mailto: needs an address with "@", http(s): a host.
func parseURI(s string, rfc7489 bool) (URI, error) {
	var u URI
	if i := strings.LastIndexByte(s, '!'); i >= 0 {
		size, unit, err := parseSize(s[i+1:])
		if err != nil {
			return u, fmt.Errorf("URI %q: %w", s, err)
		}
		if rfc7489 {
			u.MaxSize, u.Unit = size, unit
		}
		s = s[:i]
	}
	if s == "" {
		return u, errors.New("empty URI")
	}
	pu, err := url.Parse(s)
	if err != nil {
		return u, fmt.Errorf("URI %q: %w", s, err)
	}
	switch strings.ToLower(pu.Scheme) {
	case "":
		return u, fmt.Errorf("URI %q: no scheme", s)
	case "mailto":
		if pu.Opaque == "" || !strings.Contains(pu.Opaque, "@") {
			return u, fmt.Errorf("URI %q: mailto without address", s)
		}
	case "http", "https":
		if pu.Host == "" {
			return u, fmt.Errorf("URI %q: no host", s)
		}
	}
	u.Address = s
	return u, nil
}

// parseSize parses the obsolete "!" 1*DIGIT [k/m/g/t] size suffix.
func parseSize(s string) (uint64, string, error) {
	unit := ""
	if n := len(s); n > 0 {
		switch c := s[n-1] | 0x20; c {
		case 'k', 'm', 'g', 't':
			unit = string(c)
			s = s[:n-1]
		}
	}
	if s == "" {
		return 0, "", errors.New("size suffix without digits")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, "", fmt.Errorf("bad size suffix %q", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("size suffix: %w", err)
	}
	return n, unit, nil
}
