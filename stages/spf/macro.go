package spf

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Macro letters (RFC 7208 7.2), as bits of a set.
const (
	letterDomain = 1 << iota // s l o d i p v h: allowed everywhere
	letterExp                // c r t: only in explanation text (7.2)
	letterAll    = letterDomain | letterExp
)

// letterClass returns the class of a macro letter (either case), 0 if it
// is not one.
func letterClass(c byte) int {
	switch c | 0x20 {
	case 's', 'l', 'o', 'd', 'i', 'p', 'v', 'h':
		return letterDomain
	case 'c', 'r', 't':
		return letterExp
	}
	return 0
}

var (
	errMacroTooLong = fmt.Errorf("macro expansion longer than %d octets", maxExpansion)
	errBadPercent   = errors.New("'%' not followed by '{', '%', '_' or '-'")
)

// checkMacroString validates macro-string (RFC 7208 7.1) or, with
// explain set, explain-string (which also allows SP). allowed is the set
// of letter classes accepted. It returns the offset just past the last
// macro-expand, for the domain-end check.
func checkMacroString(s string, allowed int, explain bool) (lastMacroEnd int, err error) {
	lastMacroEnd = -1
	for i := 0; i < len(s); {
		c := s[i]
		if c != '%' {
			if (c < 0x21 || c > 0x7e) && !(explain && c == ' ') {
				return 0, fmt.Errorf("invalid character 0x%02x", c)
			}
			i++
			continue
		}
		if i+1 >= len(s) {
			return 0, errBadPercent
		}
		switch s[i+1] {
		case '%', '_', '-':
			i += 2
		case '{':
			j := strings.IndexByte(s[i+2:], '}')
			if j < 0 {
				return 0, errors.New("unterminated macro")
			}
			if _, err := parseMacroBody(s[i+2:i+2+j], allowed); err != nil {
				return 0, err
			}
			i += 2 + j + 1
		default:
			return 0, errBadPercent
		}
		lastMacroEnd = i
	}
	return lastMacroEnd, nil
}

// macro is a parsed macro-expand body: letter transformers *delimiter.
type macro struct {
	letter  byte // lower case
	upper   bool // URL-escape the result (7.3)
	digits  int  // 0 = all parts
	reverse bool
	delims  uint8 // bit set over delimChars; 0 = "."
}

const delimChars = ".-+,/_="

// parseMacroBody parses the text between "%{" and "}".
func parseMacroBody(b string, allowed int) (macro, error) {
	var m macro
	if b == "" {
		return m, errors.New("empty macro")
	}
	cl := letterClass(b[0])
	if cl == 0 {
		return m, fmt.Errorf("unknown macro letter %q", b[0])
	}
	if cl&allowed == 0 {
		return m, fmt.Errorf("macro letter %q is allowed only in exp= text", b[0])
	}
	m.letter = b[0] | 0x20
	m.upper = b[0] != m.letter
	i := 1
	hasDigits := false
	for i < len(b) && isDigit(b[i]) {
		hasDigits = true
		if m.digits < 1000 {
			m.digits = m.digits*10 + int(b[i]-'0')
		}
		i++
	}
	if hasDigits && m.digits == 0 {
		return m, errors.New("macro transformer digits must be nonzero") // 7.3
	}
	if i < len(b) && (b[i] == 'r' || b[i] == 'R') {
		m.reverse = true
		i++
	}
	for ; i < len(b); i++ {
		k := strings.IndexByte(delimChars, b[i])
		if k < 0 {
			return m, fmt.Errorf("invalid macro delimiter %q", b[i])
		}
		m.delims |= 1 << k
	}
	return m, nil
}

// checkDomainSpec validates domain-spec = macro-string domain-end, where
// domain-end = ( "." toplabel [ "." ] ) / macro-expand (RFC 7208 7.1).
// Letters c, r and t are not allowed.
func checkDomainSpec(s string) error {
	if s == "" {
		return errors.New("empty domain-spec")
	}
	last, err := checkMacroString(s, letterDomain, false)
	if err != nil {
		return err
	}
	if last == len(s) {
		return nil
	}
	t := strings.TrimSuffix(s, ".")
	dot := strings.LastIndexByte(t, '.')
	if dot < 0 || dot < last {
		return errors.New("domain-spec must end in a macro or a top label")
	}
	if !validTopLabel(t[dot+1:]) {
		return fmt.Errorf("invalid top label %s", quote(t[dot+1:]))
	}
	return nil
}

// validTopLabel checks toplabel = ( *alphanum ALPHA *alphanum ) /
// ( 1*alphanum "-" *( alphanum / "-" ) alphanum ).
func validTopLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	alpha := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlpha(c), c == '-':
			alpha = true
		case isDigit(c):
		default:
			return false
		}
	}
	return alpha
}

// expander holds the values macros expand to (RFC 7208 7.2).
type expander interface {
	macroValue(letter byte) (string, error)
}

// expandMacros expands a validated macro-string or explain-string. allowed
// limits the letters as in checkMacroString. The result is at most
// maxExpansion octets.
func expandMacros(s string, allowed int, explain bool, x expander) (string, error) {
	if strings.IndexByte(s, '%') < 0 {
		if _, err := checkMacroString(s, allowed, explain); err != nil {
			return "", err
		}
		if len(s) > maxExpansion {
			return "", errMacroTooLong
		}
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s) + 32)
	for i := 0; i < len(s); {
		c := s[i]
		if c != '%' {
			if (c < 0x21 || c > 0x7e) && !(explain && c == ' ') {
				return "", fmt.Errorf("invalid character 0x%02x", c)
			}
			b.WriteByte(c)
			i++
		} else {
			if i+1 >= len(s) {
				return "", errBadPercent
			}
			switch s[i+1] {
			case '%':
				b.WriteByte('%')
				i += 2
			case '_':
				b.WriteByte(' ')
				i += 2
			case '-':
				b.WriteString("%20")
				i += 2
			case '{':
				j := strings.IndexByte(s[i+2:], '}')
				if j < 0 {
					return "", errors.New("unterminated macro")
				}
				m, err := parseMacroBody(s[i+2:i+2+j], allowed)
				if err != nil {
					return "", err
				}
				v, err := x.macroValue(m.letter)
				if err != nil {
					return "", err
				}
				if err := m.apply(&b, v); err != nil {
					return "", err
				}
				i += 2 + j + 1
			default:
				return "", errBadPercent
			}
		}
		if b.Len() > maxExpansion {
			return "", errMacroTooLong
		}
	}
	return b.String(), nil
}

// apply writes the transformed value (RFC 7208 7.3): split on the
// delimiters, optionally reverse, keep the right-most digits parts, join
// with ".", and URL-escape for an upper-case letter.
func (m macro) apply(b *strings.Builder, v string) error {
	if len(v) > maxExpansion {
		return errMacroTooLong
	}
	if m.delims == 0 && !m.reverse && m.digits == 0 {
		writeMaybeEscaped(b, v, m.upper)
		return nil
	}
	isDelim := func(c byte) bool {
		if m.delims == 0 {
			return c == '.'
		}
		k := strings.IndexByte(delimChars, c)
		return k >= 0 && m.delims&(1<<k) != 0
	}
	var stack [64]string
	parts := stack[:0]
	start := 0
	for i := 0; i <= len(v); i++ {
		if i == len(v) || isDelim(v[i]) {
			parts = append(parts, v[start:i])
			start = i + 1
		}
	}
	if m.reverse {
		for l, r := 0, len(parts)-1; l < r; l, r = l+1, r-1 {
			parts[l], parts[r] = parts[r], parts[l]
		}
	}
	if m.digits > 0 && m.digits < len(parts) {
		parts = parts[len(parts)-m.digits:]
	}
	for k, p := range parts {
		if k > 0 {
			b.WriteByte('.')
		}
		writeMaybeEscaped(b, p, m.upper)
	}
	return nil
}

// writeMaybeEscaped writes v, URL-escaping every octet outside the
// unreserved set of RFC 3986 when escape is set (RFC 7208 7.3).
func writeMaybeEscaped(b *strings.Builder, v string, escape bool) {
	if !escape {
		b.WriteString(v)
		return
	}
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
}

// targetName turns an expanded domain-spec into a name to query
// (RFC 7208 7.3 and 4.3): one trailing dot removed, labels dropped from
// the left until it fits in 253 octets. ok is false if the result is not
// a usable DNS name (empty, or an empty label or one over 63 octets),
// which the callers treat as a name that does not exist.
func targetName(s string) (name string, ok bool) {
	s = strings.TrimSuffix(s, ".")
	for len(s) > 253 {
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return "", false
		}
		s = s[i+1:]
	}
	if s == "" {
		return "", false
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if n := i - start; n == 0 || n > 63 {
				return "", false
			}
			start = i + 1
		}
	}
	return s, true
}

// itoa is strconv.Itoa for the %{t} macro.
func itoa(n int64) string { return strconv.FormatInt(n, 10) }
