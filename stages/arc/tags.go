package arc

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
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
	i, j := trimFWSSpan(s, 0, len(s))
	return s[i:j]
}

// MaxTags is the most tag-specs an ARC-Seal or ARC-Message-Signature may
// have. RFC 8617 defines 12 tags for the AMS and 7 for the seal; unknown
// tags are allowed (RFC 6376 3.2), and the cap keeps the duplicate check,
// a scan of the tags before it, bounded.
const MaxTags = 64

// tagList is a parsed tag-list: where each tag's name and value lie in the
// field value, which stays the message's bytes. Nothing is copied while
// parsing: a 50-set chain's tags as maps of copied strings held about
// 116 KiB (TestMessageWorkBytesBound), for values most of which are read
// once. Values that are compared, parsed or decoded (a=, b=, bh=, c=, cv=,
// i=, t=, x=) are read in place (bytes); those kept as strings (d=, s=,
// h=, ...) are copied when asked for (get).
type tagList struct {
	src  []byte
	tags []tagSpan
}

// tagSpan is one tag-spec: src[name0:name1] = src[val0:val1], both trimmed.
type tagSpan struct{ name0, name1, val0, val1 int32 }

// find returns the span of tag name, if present.
func (l tagList) find(name string) (tagSpan, bool) {
	for _, t := range l.tags {
		if string(l.src[t.name0:t.name1]) == name {
			return t, true
		}
	}
	return tagSpan{}, false
}

// get returns a copy of the value of tag name, and whether it is present.
func (l tagList) get(name string) (string, bool) {
	t, ok := l.find(name)
	if !ok {
		return "", false
	}
	return string(l.src[t.val0:t.val1]), true
}

// val returns the value of tag name, or "" when it is absent.
func (l tagList) val(name string) string {
	v, _ := l.get(name)
	return v
}

// has reports whether tag name is present.
func (l tagList) has(name string) bool {
	_, ok := l.find(name)
	return ok
}

// bytes returns the value of tag name as the field's own bytes (not to be
// modified), and whether it is present.
func (l tagList) bytes(name string) ([]byte, bool) {
	t, ok := l.find(name)
	if !ok {
		return nil, false
	}
	return l.src[t.val0:t.val1], true
}

// is reports whether tag name is present with value v.
func (l tagList) is(name, v string) bool {
	b, ok := l.bytes(name)
	return ok && string(b) == v
}

// parseTags parses an RFC 6376 3.2 tag-list strictly: every tag-spec must
// be non-empty (";;" is an error, a single trailing ";" is allowed), tag
// names are ALPHA *(ALPHA / DIGIT / "_") and case-sensitive, values consist
// of VALCHARs separated by white space, and a tag may appear only once.
// ARC-Seal and ARC-Message-Signature use this syntax (RFC 8617 4.1.2,
// 4.1.3); the validation suite requires each of these rules. At most
// MaxTags tag-specs are accepted. The list refers to s; s must not change
// while it is in use.
func parseTags(s []byte) (tagList, error) {
	if len(s) > math.MaxInt32 {
		return tagList{}, errors.New("tag-list too long")
	}
	l := tagList{src: s, tags: make([]tagSpan, 0, 12)}
	pos := 0
	for {
		end := len(s)
		more := false
		if k := bytes.IndexByte(s[pos:], ';'); k >= 0 {
			end, more = pos+k, true
		}
		a, b := trimFWSSpan(s, pos, end)
		if a == b {
			if !more && len(l.tags) > 0 {
				return l, nil // trailing ";" (or nothing) after the last tag-spec
			}
			return tagList{}, errors.New("empty tag-spec")
		}
		eq := bytes.IndexByte(s[a:b], '=')
		if eq < 0 {
			return tagList{}, fmt.Errorf("tag-spec %q without '='", truncate(string(s[a:b])))
		}
		n0, n1 := trimFWSSpan(s, a, a+eq)
		v0, v1 := trimFWSSpan(s, a+eq+1, b)
		name := s[n0:n1]
		if !validTagName(name) {
			return tagList{}, fmt.Errorf("invalid tag name %q", truncate(string(name)))
		}
		for i := v0; i < v1; i++ {
			if c := s[i]; !(c >= 0x21 && c <= 0x3a || c >= 0x3c && c <= 0x7e || isFWS(c)) {
				return tagList{}, fmt.Errorf("tag %s: invalid octet 0x%02x in value", name, c)
			}
		}
		if _, dup := l.find(string(name)); dup {
			return tagList{}, fmt.Errorf("duplicate tag %s", name)
		}
		if len(l.tags) == MaxTags {
			return tagList{}, fmt.Errorf("more than %d tags", MaxTags)
		}
		l.tags = append(l.tags, tagSpan{int32(n0), int32(n1), int32(v0), int32(v1)})
		if !more {
			return l, nil
		}
		pos = end + 1
	}
}

// trimFWSSpan returns the bounds of s[i:j] without leading and trailing
// folding white space.
func trimFWSSpan[T string | []byte](s T, i, j int) (int, int) {
	for i < j && isFWS(s[i]) {
		i++
	}
	for j > i && isFWS(s[j-1]) {
		j--
	}
	return i, j
}

func validTagName(s []byte) bool {
	if len(s) == 0 || !isAlpha(s[0]) {
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
func parseInstance[T string | []byte](v T, max int) (int, error) {
	if len(v) == 0 || len(v) > 4 {
		return 0, fmt.Errorf("invalid instance %q", truncate(string(v)))
	}
	n := 0
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("invalid instance %q", truncate(string(v)))
		}
		n = n*10 + int(v[i]-'0')
	}
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
// must start with the instance tag, then a semicolon). The payload is the
// field's own bytes.
func parseAAR(v []byte, max int) (int, []byte, error) {
	s := bytes.TrimLeft(v, " \t\r\n")
	if len(s) < 2 || s[0] != 'i' {
		return 0, nil, errors.New("does not start with i=")
	}
	s = bytes.TrimLeft(s[1:], " \t\r\n")
	if len(s) == 0 || s[0] != '=' {
		return 0, nil, errors.New("does not start with i=")
	}
	num, payload, ok := bytes.Cut(s[1:], []byte{';'})
	if !ok {
		return 0, nil, errors.New("no ';' after the instance tag")
	}
	a, b := trimFWSSpan(num, 0, len(num))
	inst, err := parseInstance(num[a:b], max)
	if err != nil {
		return 0, nil, err
	}
	return inst, payload, nil
}

// unfold returns a folded value as a string without its line breaks,
// trimmed; runs of white space are kept as they are.
func unfold(v []byte) string {
	a, b := trimFWSSpan(v, 0, len(v))
	v = v[a:b]
	if bytes.IndexByte(v, '\n') < 0 && bytes.IndexByte(v, '\r') < 0 {
		return string(v)
	}
	out := make([]byte, 0, len(v))
	for _, c := range v {
		if c != '\r' && c != '\n' {
			out = append(out, c)
		}
	}
	return string(out)
}

// decodeB64 decodes a b= or bh= value, ignoring white space in it (RFC
// 6376 3.5).
func decodeB64(name string, v []byte) ([]byte, error) {
	clean := make([]byte, 0, len(v))
	for _, c := range v {
		if !isFWS(c) {
			clean = append(clean, c)
		}
	}
	if len(clean) == 0 {
		return nil, fmt.Errorf("empty %s= tag", name)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		return nil, fmt.Errorf("%s= is not base64", name)
	}
	return out[:n], nil
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
func parseTime[T string | []byte](v T) (int64, error) {
	if len(v) == 0 || len(v) > 12 {
		return 0, fmt.Errorf("invalid timestamp %q", truncate(string(v)))
	}
	var n int64 // 12 digits cannot overflow
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("invalid timestamp %q", truncate(string(v)))
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, nil
}
