package resolvercache

import (
	"strings"
)

// miekg/dns keeps names and TXT strings in zone-file presentation form:
// special octets are backslash-escaped and non-printable ones written as
// \DDD. Mail checks work on the raw octets ("foo bar.example" is a legal
// owner name for a TXT record, and TXT data may hold any byte), so these
// helpers convert between the two forms at the edge of this package.

// EscapeName converts a raw, dot-separated domain name into the fully
// qualified presentation form miekg/dns expects: octets that are special in
// a label are backslash-escaped, non-printable ones written as \DDD.
func EscapeName(raw string) string {
	raw = strings.TrimSuffix(raw, ".")
	plain := true
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c > '~' || (c != '.' && isLabelSpecial(c)) {
			plain = false
			break
		}
	}
	if plain {
		return raw + "."
	}
	var b strings.Builder
	b.Grow(len(raw) + 8)
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '.':
			b.WriteByte('.')
		case c < ' ' || c > '~':
			writeDDD(&b, c)
		case isLabelSpecial(c):
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('.')
	return b.String()
}

// UnescapeName converts a presentation-form name from miekg/dns into raw
// octets: lower case, without the trailing dot. An escaped dot inside a
// label stays a dot (such names cannot be told apart in raw form, and no
// mail check needs them).
func UnescapeName(s string) string {
	return CanonicalName(unescape(strings.TrimSuffix(s, ".")))
}

// unescapeTXT converts one presentation-form TXT character-string from
// miekg/dns back into its raw octets.
func unescapeTXT(s string) string { return unescape(s) }

func unescape(s string) string {
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b = append(b, c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v <= 255 {
				b = append(b, byte(v))
				i += 3
				continue
			}
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isLabelSpecial(c byte) bool {
	switch c {
	case '.', ' ', '\'', '@', ';', '(', ')', '"', '\\':
		return true
	}
	return false
}

func writeDDD(b *strings.Builder, c byte) {
	b.WriteByte('\\')
	b.WriteByte('0' + c/100)
	b.WriteByte('0' + c/10%10)
	b.WriteByte('0' + c%10)
}

// EscapeTXT converts raw TXT octets into the presentation form miekg/dns
// packs (the inverse of what it does when unpacking).
func EscapeTXT(raw string) string {
	plain := true
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			plain = false
			break
		}
	}
	if plain {
		return raw
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			writeDDD(&b, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
