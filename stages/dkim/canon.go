package dkim

import (
	"bytes"
	"crypto"
	"hash"
)

// Canonicalization names a DKIM canonicalisation algorithm (RFC 6376 3.4).
type Canonicalization string

// The two canonicalisation algorithms of RFC 6376 3.4.
const (
	Simple  Canonicalization = "simple"
	Relaxed Canonicalization = "relaxed"
)

// CanonicalizeHeader appends the canonical form of one header field to dst
// and returns the extended slice (RFC 6376 3.4.1 "simple", 3.4.2 "relaxed").
// raw is the field as it appears in the message (message.Field.Raw): name,
// colon, folded value and final CRLF. The output always ends with CRLF; the
// caller drops it for the DKIM-Signature field itself (RFC 6376 3.7).
// Any value of c other than [Relaxed] is treated as [Simple].
func CanonicalizeHeader(dst []byte, raw []byte, c Canonicalization) []byte {
	if c != Relaxed {
		dst = append(dst, raw...)
		if len(raw) < 2 || raw[len(raw)-2] != '\r' || raw[len(raw)-1] != '\n' {
			dst = append(dst, '\r', '\n')
		}
		return dst
	}
	// Relaxed: lower-case the name, unfold, collapse WSP runs to one SP,
	// drop WSP at the end of the value and around the colon.
	colon := -1
	for i, b := range raw {
		if b == ':' {
			colon = i
			break
		}
	}
	name := raw
	if colon >= 0 {
		name = raw[:colon]
	}
	end := len(name)
	for end > 0 && isWSP(name[end-1]) {
		end--
	}
	for _, b := range name[:end] {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		dst = append(dst, b)
	}
	dst = append(dst, ':')
	if colon < 0 {
		return append(dst, '\r', '\n')
	}
	v := raw[colon+1:]
	space := false
	started := false
	for i, b := range v {
		switch b {
		case '\r', '\n':
			if b == '\r' && i+1 < len(v) && v[i+1] == '\n' || b == '\n' && i > 0 && v[i-1] == '\r' {
				continue // unfold: CRLF removed, WSP after it kept
			}
		case ' ', '\t':
			space = true
			continue
		}
		if space && started {
			dst = append(dst, ' ')
		}
		space = false
		started = true
		dst = append(dst, b)
	}
	return append(dst, '\r', '\n')
}

func isWSP(b byte) bool { return b == ' ' || b == '\t' }

// BodyHash returns the hash h of the canonical body (RFC 6376 3.4.3
// "simple", 3.4.4 "relaxed") and the length of the canonical body. When
// limit is zero or more only the first limit octets of the canonical body
// are hashed (the l= tag, RFC 6376 3.5, 3.7); canonLen is always the full
// canonical length, so a caller can tell whether l= covered the whole body.
// body must use CRLF line ends (message.Message.Body does). The body is
// hashed in place, without copying runs that are already canonical.
func BodyHash(body []byte, c Canonicalization, h crypto.Hash, limit int64) (sum []byte, canonLen int64) {
	hh := h.New()
	canonLen = hashBody(hh, body, c, limit)
	return hh.Sum(nil), canonLen
}

var crlf = []byte("\r\n")
var space = []byte(" ")

// hashBody writes the canonical body to w (at most limit octets when
// limit >= 0) and returns the full canonical length.
func hashBody(w hash.Hash, body []byte, c Canonicalization, limit int64) int64 {
	lw := limitWriter{w: w, left: limit}
	if c != Relaxed {
		// Simple: remove all trailing empty lines, then end with exactly one
		// CRLF (an empty body becomes a single CRLF).
		end := len(body)
		for end >= 2 && body[end-2] == '\r' && body[end-1] == '\n' {
			end -= 2
		}
		if end < len(body) {
			lw.write(body[:end+2]) // includes one CRLF
			return int64(end + 2)
		}
		lw.write(body)
		lw.write(crlf)
		return int64(len(body) + 2)
	}
	// Relaxed: ignore WSP at line ends, collapse WSP runs to one SP, ignore
	// empty lines at the end of the body; a non-empty body ends in CRLF.
	end := relaxedContentEnd(body)
	if end == 0 {
		return 0
	}
	b := body[:end]
	for len(b) > 0 && isWSP(b[len(b)-1]) {
		b = b[:len(b)-1] // WSP at the end of the last line
	}
	// Only three patterns make text non-canonical: a tab, two spaces in a
	// row, and a space before CRLF. Find them with the (vectorised) bytes
	// searches and hash everything between them in place.
	var n int64
	start, pos := 0, 0
	nextTab := indexFrom(b, 0, "\t")
	nextDbl := indexFrom(b, 0, "  ")
	nextEOL := indexFrom(b, 0, " \r\n")
	for {
		i := min(nextTab, nextDbl, nextEOL)
		if i >= len(b) {
			break
		}
		rs := i
		for rs > pos && isWSP(b[rs-1]) {
			rs--
		}
		j := i + 1
		for j < len(b) && isWSP(b[j]) {
			j++
		}
		lw.write(b[start:rs])
		n += int64(rs - start)
		atEOL := j == len(b) || (b[j] == '\r' && j+1 < len(b) && b[j+1] == '\n')
		if !atEOL {
			lw.write(space)
			n++
		}
		start, pos = j, j
		if nextTab < pos {
			nextTab = indexFrom(b, pos, "\t")
		}
		if nextDbl < pos {
			nextDbl = indexFrom(b, pos, "  ")
		}
		if nextEOL < pos {
			nextEOL = indexFrom(b, pos, " \r\n")
		}
	}
	lw.write(b[start:])
	n += int64(len(b) - start)
	lw.write(crlf)
	n += 2
	return n
}

// indexFrom returns the index of sep in b at or after from, or len(b).
func indexFrom(b []byte, from int, sep string) int {
	var i int
	if len(sep) == 1 {
		i = bytes.IndexByte(b[from:], sep[0])
	} else {
		i = bytes.Index(b[from:], []byte(sep))
	}
	if i < 0 {
		return len(b)
	}
	return from + i
}

// limitWriter hashes at most left octets when left >= 0.
type limitWriter struct {
	w    hash.Hash
	left int64
}

func (l *limitWriter) write(p []byte) {
	if l.left < 0 {
		l.w.Write(p)
		return
	}
	if l.left == 0 {
		return
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	l.w.Write(p)
	l.left -= int64(len(p))
}

// relaxedContentEnd returns the end of the content of the last line of body
// that holds anything but WSP (its CRLF excluded), or 0 if there is none:
// RFC 6376 3.4.4 ignores all empty lines at the end of the body, where a
// line of WSP only is empty once its trailing WSP is removed.
func relaxedContentEnd(body []byte) int {
	pos := len(body)
	for pos > 0 {
		ce := pos
		if ce >= 2 && body[ce-2] == '\r' && body[ce-1] == '\n' {
			ce -= 2
		}
		ls := ce
		blank := true
		for ls > 0 && !(ls >= 2 && body[ls-2] == '\r' && body[ls-1] == '\n') {
			if !isWSP(body[ls-1]) {
				blank = false
			}
			ls--
		}
		if !blank {
			return ce
		}
		if ls == pos { // empty unterminated tail cannot happen; guard anyway
			return 0
		}
		pos = ls
	}
	return 0
}
