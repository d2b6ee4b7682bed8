package arc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Field names of the three ARC header fields (RFC 8617 4.1), lower case.
const (
	keyAAR = "arc-authentication-results"
	keyAMS = "arc-message-signature"
	keyAS  = "arc-seal"
)

// isFWS reports whether c is folding white space or a line-break octet.
func isFWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimFWS(s string) string {
	i, j := 0, len(s)
	for i < j && isFWS(s[i]) {
		i++
	}
	for j > i && isFWS(s[j-1]) {
		j--
	}
	return s[i:j]
}

// parseTags parses an RFC 6376 3.2 tag-list strictly: every tag-spec must
// be non-empty (";;" is an error, a single trailing ";" is allowed), tag
// names are ALPHA *(ALPHA / DIGIT / "_") and case-sensitive, values consist
// of VALCHARs separated by white space, and a tag may appear only once.
// ARC-Seal and ARC-Message-Signature use this syntax (RFC 8617 4.1.2,
// 4.1.3); the validation suite requires each of these rules.
func parseTags(s string) (map[string]string, error) {
	tags := make(map[string]string, 10)
	rest := s
	for {
		spec, tail, more := strings.Cut(rest, ";")
		spec = trimFWS(spec)
		if spec == "" {
			if !more && len(tags) > 0 {
				return tags, nil // trailing ";" (or nothing) after the last tag-spec
			}
			return nil, errors.New("empty tag-spec")
		}
		name, val, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("tag-spec %q without '='", truncate(spec))
		}
		name, val = trimFWS(name), trimFWS(val)
		if !validTagName(name) {
			return nil, fmt.Errorf("invalid tag name %q", truncate(name))
		}
		for i := 0; i < len(val); i++ {
			if c := val[i]; !(c >= 0x21 && c <= 0x3a || c >= 0x3c && c <= 0x7e || isFWS(c)) {
				return nil, fmt.Errorf("tag %s: invalid octet 0x%02x in value", name, c)
			}
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("duplicate tag %s", name)
		}
		tags[name] = val
		if !more {
			return tags, nil
		}
		rest = tail
	}
}

func validTagName(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlpha(c) && !(c >= '0' && c <= '9') && c != '_' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// parseInstance parses an i= value (RFC 8617 4.2.1: 1*2DIGIT, 1 to 50;
// values up to max are accepted so the set limit can be configured).
func parseInstance(v string, max int) (int, error) {
	if v == "" || len(v) > 4 {
		return 0, fmt.Errorf("invalid instance %q", truncate(v))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("invalid instance %q", truncate(v))
		}
	}
	n, _ := strconv.Atoi(v)
	if n < 1 {
		return 0, fmt.Errorf("instance %d out of range", n)
	}
	if n > max {
		return 0, fmt.Errorf("instance %d exceeds the limit of %d sets", n, max)
	}
	return n, nil
}

// parseAAR splits an ARC-Authentication-Results value into its instance
// and the authres-payload that follows "i=N;" (RFC 8617 4.1.1: the field
// must start with the instance tag, then a semicolon).
func parseAAR(v string, max int) (int, string, error) {
	s := trimFWS(v)
	if len(s) < 2 || s[0] != 'i' {
		return 0, "", errors.New("does not start with i=")
	}
	s = trimFWS(s[1:])
	if s == "" || s[0] != '=' {
		return 0, "", errors.New("does not start with i=")
	}
	num, payload, ok := strings.Cut(s[1:], ";")
	if !ok {
		return 0, "", errors.New("no ';' after the instance tag")
	}
	inst, err := parseInstance(trimFWS(num), max)
	if err != nil {
		return 0, "", err
	}
	return inst, trimFWS(payload), nil
}

// unfold removes line breaks from a folded value and trims it; runs of
// white space are kept as they are.
func unfold(s string) string {
	if strings.IndexByte(s, '\n') < 0 && strings.IndexByte(s, '\r') < 0 {
		return trimFWS(s)
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\r' && s[i] != '\n' {
			b.WriteByte(s[i])
		}
	}
	return trimFWS(b.String())
}

// stripWSP removes all white space (used for b= and bh= values, RFC 6376
// 3.5: white space in them is ignored).
func stripWSP(s string) string {
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if !isFWS(s[i]) {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// validDomain checks the RFC 6376 domain-name syntax used by d=: dot-
// separated labels of letters, digits, hyphens (and underscores, seen in
// practice), none empty, none over 63 octets, at most 253 octets.
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	return validLabels(d)
}

// validSelector checks an s= value: one or more dot-separated labels.
func validSelector(s string) bool { return s != "" && len(s) <= 253 && validLabels(s) }

func validLabels(s string) bool {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			n := i - start
			if n == 0 || n > 63 {
				return false
			}
			if s[start] == '-' || s[i-1] == '-' {
				return false
			}
			start = i + 1
			continue
		}
		c := s[i]
		if !isAlpha(c) && !(c >= '0' && c <= '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// parseTime parses a t= or x= value: 1*12DIGIT (RFC 6376 3.5).
func parseTime(v string) (int64, error) {
	if v == "" || len(v) > 12 {
		return 0, fmt.Errorf("invalid timestamp %q", truncate(v))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("invalid timestamp %q", truncate(v))
		}
	}
	return strconv.ParseInt(v, 10, 64)
}
