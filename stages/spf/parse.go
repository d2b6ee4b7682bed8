package spf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unsafe"
)

// mechKind identifies a mechanism (RFC 7208 5).
type mechKind uint8

const (
	mechAll mechKind = iota + 1
	mechInclude
	mechA
	mechMX
	mechPTR
	mechIP4
	mechIP6
	mechExists
)

// term is one parsed directive.
type term struct {
	text   string // as written, qualifier included
	qual   Result // pass, fail, softfail or neutral
	kind   mechKind
	domain string       // domain-spec as written (validated), "" if absent
	prefix netip.Prefix // ip4, ip6
	cidr4  uint8        // a, mx
	cidr6  uint8        // a, mx
}

// record is a parsed SPF record (RFC 7208 4.6, 12 (ABNF)).
type record struct {
	terms       []term
	redirect    string // domain-spec; valid only if hasRedirect
	exp         string // domain-spec; valid only if hasExp
	hasRedirect bool
	hasExp      bool
	hasAll      bool
}

// bytes is what r keeps alive besides its text, for the parse cache's byte
// bound: the record and its terms (their strings are substrings of the
// text). A record of many short terms ("a a a …") is the worst case, 96
// bytes a term on 64-bit platforms for 2 octets of text.
func (r *record) bytes() int {
	if r == nil {
		return 0
	}
	return int(unsafe.Sizeof(*r)) + cap(r.terms)*int(unsafe.Sizeof(term{}))
}

// errRecordTooLong is returned for records over MaxRecordLength.
var errRecordTooLong = fmt.Errorf("record longer than %d octets", MaxRecordLength)

// isSPFRecord reports whether a TXT string is an SPF version 1 record: it
// begins with "v=spf1" (any case) followed by a space or the end
// (RFC 7208 4.5).
func isSPFRecord(txt string) bool {
	if len(txt) < 6 || !strings.EqualFold(txt[:6], "v=spf1") {
		return false
	}
	return len(txt) == 6 || txt[6] == ' '
}

// parseRecord parses a complete SPF record. Every term is checked, so a
// syntax error anywhere is reported even when an earlier term would match
// (RFC 7208 4.6). The record must satisfy isSPFRecord.
func parseRecord(txt string) (*record, error) {
	if len(txt) > MaxRecordLength {
		return nil, errRecordTooLong
	}
	if !isSPFRecord(txt) {
		return nil, errors.New("not a v=spf1 record")
	}
	rest := txt[6:]
	// Count terms first so the slice is allocated once.
	n := 0
	for i := 0; i < len(rest); i++ {
		if rest[i] != ' ' && (i == 0 || rest[i-1] == ' ') {
			n++
		}
	}
	rec := &record{terms: make([]term, 0, n)}
	for len(rest) > 0 {
		if rest[0] == ' ' {
			rest = rest[1:]
			continue
		}
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		tok := rest[:end]
		rest = rest[end:]
		if err := rec.parseTerm(tok); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

func (rec *record) parseTerm(tok string) error {
	// One pass: check the octets and find the first ":", "/" or "=".
	sep := -1
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c < 0x21 || c > 0x7e {
			return fmt.Errorf("term %s: invalid character 0x%02x", quote(tok), c)
		}
		if sep < 0 && (c == ':' || c == '/' || c == '=') {
			sep = i
		}
	}
	// A modifier has "=" before any ":" or "/" (RFC 7208 4.6.1).
	if sep >= 0 && tok[sep] == '=' {
		return rec.parseModifier(tok, tok[:sep], tok[sep+1:])
	}
	t := term{text: tok, qual: Pass}
	body := tok
	switch body[0] {
	case '+':
		body = body[1:]
	case '-':
		t.qual, body = Fail, body[1:]
	case '~':
		t.qual, body = Softfail, body[1:]
	case '?':
		t.qual, body = Neutral, body[1:]
	}
	name, arg := body, ""
	if sep >= 0 {
		k := sep - (len(tok) - len(body))
		name, arg = body[:k], body[k:]
	}
	bad := func(why string) error { return fmt.Errorf("term %s: %s", quote(tok), why) }
	// Mechanism names are case-insensitive; lower-case into a small
	// buffer (|0x20 maps only A-Z onto letters).
	var lbuf [8]byte
	k := 0
	if len(name) <= len(lbuf) {
		for k = 0; k < len(name); k++ {
			lbuf[k] = name[k] | 0x20
		}
	}
	switch string(lbuf[:k]) {
	case "all":
		if arg != "" {
			return bad("all takes no argument")
		}
		t.kind = mechAll
		rec.hasAll = true
	case "include", "exists":
		t.kind = mechInclude
		if len(name) == 6 {
			t.kind = mechExists
		}
		if len(arg) < 2 || arg[0] != ':' {
			return bad("domain-spec required")
		}
		if err := checkDomainSpec(arg[1:]); err != nil {
			return bad(err.Error())
		}
		t.domain = arg[1:]
	case "a", "mx":
		t.kind = mechA
		if len(name) == 2 {
			t.kind = mechMX
		}
		t.cidr4, t.cidr6 = 32, 128
		if arg == "" {
			break
		}
		spec := ""
		if arg[0] == ':' {
			spec = arg[1:]
			arg = ""
			if j := dualCIDRStart(spec); j >= 0 {
				spec, arg = spec[:j], spec[j:]
			}
			if spec == "" {
				return bad("empty domain-spec")
			}
			if err := checkDomainSpec(spec); err != nil {
				return bad(err.Error())
			}
			t.domain = spec
		}
		if arg != "" {
			c4, c6, err := parseDualCIDR(arg)
			if err != nil {
				return bad(err.Error())
			}
			t.cidr4, t.cidr6 = c4, c6
		}
	case "ptr":
		t.kind = mechPTR
		if arg == "" {
			break
		}
		if len(arg) < 2 || arg[0] != ':' {
			return bad("ptr takes only a domain-spec")
		}
		if err := checkDomainSpec(arg[1:]); err != nil {
			return bad(err.Error())
		}
		t.domain = arg[1:]
	case "ip4", "ip6":
		v6 := name[2] == '6'
		t.kind = mechIP4
		if v6 {
			t.kind = mechIP6
		}
		if len(arg) < 2 || arg[0] != ':' {
			return bad("address required")
		}
		p, err := parseNetwork(arg[1:], v6)
		if err != nil {
			return bad(err.Error())
		}
		t.prefix = p
	default:
		return bad("unknown mechanism")
	}
	rec.terms = append(rec.terms, t)
	return nil
}

func (rec *record) parseModifier(tok, name, value string) error {
	bad := func(why string) error { return fmt.Errorf("modifier %s: %s", quote(tok), why) }
	if !validModifierName(name) {
		return bad("invalid modifier name")
	}
	switch {
	case strings.EqualFold(name, "redirect"):
		if rec.hasRedirect {
			return bad("redirect appears twice") // RFC 7208 6
		}
		if err := checkDomainSpec(value); err != nil {
			return bad(err.Error())
		}
		rec.redirect, rec.hasRedirect = value, true
	case strings.EqualFold(name, "exp"):
		if rec.hasExp {
			return bad("exp appears twice") // RFC 7208 6
		}
		// An explicit but empty or malformed exp= is a syntax error
		// (RFC 7208 6.2 and erratum 5227); problems found later, when
		// the explanation is fetched, are ignored.
		if err := checkDomainSpec(value); err != nil {
			return bad(err.Error())
		}
		rec.exp, rec.hasExp = value, true
	default:
		// unknown-modifier = name "=" macro-string; ignored, but its
		// syntax must be valid (RFC 7208 6, A).
		if _, err := checkMacroString(value, letterAll, false); err != nil {
			return bad(err.Error())
		}
	}
	return nil
}

// validModifierName checks name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
func validModifierName(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// dualCIDRStart returns the index where a trailing dual-cidr-length
// ("/n", "//n" or "/n//m") begins in s, or -1.
func dualCIDRStart(s string) int {
	end := len(s)
	j := digitsStart(s, end)
	if j == end || j == 0 || s[j-1] != '/' {
		return -1
	}
	start := j - 1
	if j >= 2 && s[j-2] == '/' {
		// "//m": an ip6 length; an ip4 length may precede it.
		start = j - 2
		k := digitsStart(s, start)
		if k < start && k > 0 && s[k-1] == '/' && (k < 2 || s[k-2] != '/') {
			start = k - 1
		}
	}
	return start
}

// digitsStart returns the start of the run of digits ending at end.
func digitsStart(s string, end int) int {
	j := end
	for j > 0 && isDigit(s[j-1]) {
		j--
	}
	return j
}

// parseDualCIDR parses dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ].
func parseDualCIDR(s string) (c4, c6 uint8, err error) {
	c4, c6 = 32, 128
	if s == "" || s[0] != '/' {
		return 0, 0, errors.New("invalid CIDR length")
	}
	s = s[1:]
	if !strings.HasPrefix(s, "/") {
		i := strings.IndexByte(s, '/')
		v := s
		if i >= 0 {
			v, s = s[:i], s[i:]
		} else {
			s = ""
		}
		n, err := parseCIDRLen(v, 32)
		if err != nil {
			return 0, 0, err
		}
		c4 = n
		if s == "" {
			return c4, c6, nil
		}
		if !strings.HasPrefix(s, "//") {
			return 0, 0, errors.New("invalid CIDR length")
		}
		s = s[1:]
	}
	n, err := parseCIDRLen(s[1:], 128)
	if err != nil {
		return 0, 0, err
	}
	return c4, n, nil
}

// parseCIDRLen parses a prefix length: decimal, no leading zero, at most max.
func parseCIDRLen(s string, max int) (uint8, error) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid CIDR length %s", quote(s))
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, fmt.Errorf("invalid CIDR length %s", quote(s))
		}
		n = n*10 + int(s[i]-'0')
	}
	if n > max {
		return 0, fmt.Errorf("CIDR length %d over %d", n, max)
	}
	return uint8(n), nil
}

// parseNetwork parses ip4-network [ ip4-cidr-length ] or the ip6 form.
func parseNetwork(s string, v6 bool) (netip.Prefix, error) {
	addr, bits := s, ""
	hasBits := false
	if i := strings.IndexByte(s, '/'); i >= 0 {
		addr, bits, hasBits = s[:i], s[i+1:], true
	}
	var ip netip.Addr
	if v6 {
		a, err := netip.ParseAddr(addr)
		if err != nil || a.Zone() != "" || !a.Is6() {
			return netip.Prefix{}, fmt.Errorf("invalid address %s", quote(addr))
		}
		ip = a
	} else {
		a, ok := parseIPv4(addr)
		if !ok {
			return netip.Prefix{}, fmt.Errorf("invalid address %s", quote(addr))
		}
		ip = a
	}
	n := ip.BitLen()
	if hasBits {
		b, err := parseCIDRLen(bits, ip.BitLen())
		if err != nil {
			return netip.Prefix{}, err
		}
		n = int(b)
	}
	return netip.PrefixFrom(ip, n).Masked(), nil
}

func isAlpha(c byte) bool { return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseIPv4 parses ip4-network: four decimal octets without leading zeros
// (RFC 7208 5.6, qnum).
func parseIPv4(s string) (netip.Addr, bool) {
	var a [4]byte
	field, digits, v := 0, 0, 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if digits == 0 || field > 3 {
				return netip.Addr{}, false
			}
			a[field] = byte(v)
			field++
			digits, v = 0, 0
			continue
		}
		c := s[i]
		if !isDigit(c) || (digits == 1 && v == 0) {
			return netip.Addr{}, false
		}
		v = v*10 + int(c-'0')
		digits++
		if v > 255 {
			return netip.Addr{}, false
		}
	}
	if field != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(a), true
}
