package dkim

import (
	"errors"
	"fmt"
)

// maxTags bounds the tags of one tag-list (signature or key record); more
// is a syntax error. Real signatures use about a dozen.
const maxTags = 64

func isFWSByte(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimFWS(s string) string {
	i, j := 0, len(s)
	for i < j && isFWSByte(s[i]) {
		i++
	}
	for j > i && isFWSByte(s[j-1]) {
		j--
	}
	return s[i:j]
}

func isAlpha(c byte) bool { u := c &^ 0x20; return 'A' <= u && u <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tagIter walks an RFC 6376 3.2 tag-list without allocating.
type tagIter struct {
	s string
	i int
}

// next returns the next tag. ok is false at the end. Empty tag-specs
// (";;", or a trailing ";") are skipped. The value has surrounding FWS
// removed; FWS inside it is kept.
func (it *tagIter) next() (name, value string, ok bool, err error) {
	for it.i <= len(it.s) {
		end := it.i
		for end < len(it.s) && it.s[end] != ';' {
			end++
		}
		spec := it.s[it.i:end]
		it.i = end + 1
		eq := -1
		for k := 0; k < len(spec); k++ {
			if spec[k] == '=' {
				eq = k
				break
			}
		}
		if eq < 0 {
			if trimFWS(spec) == "" {
				continue
			}
			return "", "", false, fmt.Errorf("tag %q has no '='", trimFWS(spec))
		}
		name = trimFWS(spec[:eq])
		if name == "" || !isAlpha(name[0]) {
			return "", "", false, fmt.Errorf("invalid tag name %q", name)
		}
		for k := 1; k < len(name); k++ {
			c := name[k]
			if !isAlpha(c) && !isDigit(c) && c != '_' {
				return "", "", false, fmt.Errorf("invalid tag name %q", name)
			}
		}
		return name, trimFWS(spec[eq+1:]), true, nil
	}
	return "", "", false, nil
}

// ParseTagList parses an RFC 6376 3.2 tag-list ("a=b; c=d") into a map from
// tag name to value. Tag names are case-sensitive. Values have leading and
// trailing FWS removed and inner FWS kept as written. A duplicate tag, a
// tag-spec without "=", an invalid tag name or more than 64 tags is an
// error.
func ParseTagList(s string) (map[string]string, error) {
	m := make(map[string]string)
	it := tagIter{s: s}
	for n := 0; ; n++ {
		name, value, ok, err := it.next()
		if err != nil {
			return nil, fmt.Errorf("dkim: tag-list: %w", err)
		}
		if !ok {
			return m, nil
		}
		if n >= maxTags {
			return nil, fmt.Errorf("dkim: tag-list: more than %d tags", maxTags)
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("dkim: tag-list: duplicate tag %q", name)
		}
		m[name] = value
	}
}

// bValueSpan locates the value of the b= tag in a raw DKIM-Signature (or
// ARC) header field: [start, end) runs from just after "=" up to the ";"
// that ends the tag or the final CRLF, so it includes the surrounding
// whitespace RFC 6376 3.7 says to delete.
func bValueSpan(raw []byte) (start, end int, ok bool) {
	i := 0
	for i < len(raw) && raw[i] != ':' {
		i++
	}
	i++
	fieldEnd := len(raw)
	if fieldEnd >= 2 && raw[fieldEnd-2] == '\r' && raw[fieldEnd-1] == '\n' {
		fieldEnd -= 2
	}
	for i < fieldEnd {
		// One tag-spec: [FWS] name [FWS] "=" value up to ";".
		j := i
		for j < fieldEnd && isFWSByte(raw[j]) {
			j++
		}
		ns := j
		for j < fieldEnd && raw[j] != '=' && raw[j] != ';' && !isFWSByte(raw[j]) {
			j++
		}
		ne := j
		for j < fieldEnd && isFWSByte(raw[j]) {
			j++
		}
		isB := ne-ns == 1 && raw[ns] == 'b'
		if j < fieldEnd && raw[j] == '=' {
			j++
			vs := j
			for j < fieldEnd && raw[j] != ';' {
				j++
			}
			if isB {
				return vs, j, true
			}
		} else {
			for j < fieldEnd && raw[j] != ';' {
				j++
			}
		}
		i = j + 1
	}
	return 0, 0, false
}

// StripSignature returns a copy of the raw signature header field raw with
// the value of its b= tag, and the whitespace around that value, removed
// (RFC 6376 3.7: the signature is computed with b= empty). Everything else,
// including the final CRLF, is kept byte for byte. Without a b= tag the copy
// equals raw.
func StripSignature(raw []byte) []byte {
	return appendStripped(make([]byte, 0, len(raw)), raw)
}

func appendStripped(dst, raw []byte) []byte {
	s, e, ok := bValueSpan(raw)
	if !ok {
		return append(dst, raw...)
	}
	dst = append(dst, raw[:s]...)
	return append(dst, raw[e:]...)
}

var errBase64 = errors.New("invalid base64")

var b64dec = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alpha); i++ {
		t[alpha[i]] = byte(i)
	}
	return t
}()

// appendBase64 decodes s (RFC 6376 base64string: base64 with FWS anywhere
// and optional "=" padding) and appends the octets to dst. Padding may be
// omitted; characters after padding, wrong padding and leftover bits that
// do not fit a whole octet are errors.
func appendBase64(dst []byte, s string) ([]byte, error) {
	var acc uint32
	n := 0   // sextets in acc
	pad := 0 // "=" seen
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isFWSByte(c) {
			continue
		}
		if c == '=' {
			pad++
			continue
		}
		if pad > 0 {
			return dst, errBase64
		}
		v := b64dec[c]
		if v == 0xff {
			return dst, errBase64
		}
		acc = acc<<6 | uint32(v)
		n++
		if n == 4 {
			dst = append(dst, byte(acc>>16), byte(acc>>8), byte(acc))
			acc, n = 0, 0
		}
	}
	switch n {
	case 0:
		if pad != 0 {
			return dst, errBase64
		}
	case 1:
		return dst, errBase64
	case 2:
		if pad != 0 && pad != 2 {
			return dst, errBase64
		}
		dst = append(dst, byte(acc>>4))
	case 3:
		if pad != 0 && pad != 1 {
			return dst, errBase64
		}
		dst = append(dst, byte(acc>>10), byte(acc>>2))
	}
	return dst, nil
}
