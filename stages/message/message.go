// Package message parses an Internet message (RFC 5322) once, for every
// authentication stage that reads it.
//
// [Parse] keeps the header section exactly as received (DKIM and ARC hash the
// raw bytes, RFC 6376 3.4), records each header field with its name, its
// lower-case key, its raw bytes and its unfolded value (RFC 5322 2.2.3),
// locates the body (RFC 5322 2.1: the first empty line ends the header
// section), and parses the author addresses of the From field
// (RFC 5322 3.6.2, 3.4) that DMARC aligns against.
//
// Input may use CRLF (RFC 5322 2.1) or bare LF line endings (as stored by many
// MTAs and archives). Bare LF is rewritten to CRLF so that every later stage
// sees the canonical wire form; input that already uses CRLF throughout is
// used in place, without a copy.
//
// Bounds: the whole message, the number of header fields and the size of one
// header field are limited by [Limits]; exceeding one is a *[ParseError], never
// a panic or unbounded allocation.
package message

import (
	"bytes"
	"fmt"
	"strings"
)

// Default limits used when a [Limits] field is zero or negative.
const (
	DefaultMaxSize      = 64 << 20 // 64 MiB
	DefaultMaxFields    = 1000
	DefaultMaxFieldSize = 64 << 10 // 64 KiB
)

// Limits bounds the work [Parse] does. Zero fields take the defaults.
type Limits struct {
	// MaxSize is the largest accepted message in octets (default 64 MiB),
	// measured on the input as given.
	MaxSize int
	// MaxFields is the largest number of header fields (default 1000).
	MaxFields int
	// MaxFieldSize is the largest header field in octets, name and folded
	// value and CRLF included (default 64 KiB).
	MaxFieldSize int
}

func (l Limits) withDefaults() Limits {
	if l.MaxSize <= 0 {
		l.MaxSize = DefaultMaxSize
	}
	if l.MaxFields <= 0 {
		l.MaxFields = DefaultMaxFields
	}
	if l.MaxFieldSize <= 0 {
		l.MaxFieldSize = DefaultMaxFieldSize
	}
	return l
}

// Field is one header field (RFC 5322 2.2).
type Field struct {
	// Name is the field name as written (without trailing whitespace
	// before the colon, which RFC 5322 4.5 obs-optional permits).
	Name string
	// Key is Name in lower case (field names are case-insensitive).
	Key string
	// Raw is the whole field as it appears in Message.Raw: name, colon,
	// folded value and the final CRLF. DKIM "simple" header
	// canonicalisation hashes exactly these bytes (RFC 6376 3.4.1).
	Raw []byte
	// Value is the text after the colon, unfolded (each CRLF followed by
	// WSP is removed, the WSP kept, RFC 5322 2.2.3) and not trimmed. It
	// shares memory with Raw when the field was not folded; callers must
	// not modify it.
	Value []byte
}

// Address is one mailbox from an address field (RFC 5322 3.4).
type Address struct {
	// Addr is the address as local@domain, with the domain in the form of
	// the Domain field. The local part keeps its case.
	Addr string
	// Local is the local part without surrounding quotes (RFC 5322 3.4.1;
	// quoted-pairs are resolved).
	Local string
	// Domain is lower-case ASCII; an internationalised domain is converted
	// to its IDNA A-label form (RFC 5890), and a domain literal is kept in
	// brackets.
	Domain string
}

// Message is a parsed message. It must be treated as read-only: its slices
// share memory with the input.
type Message struct {
	// Raw is the CRLF-normalised message: the input itself when it already
	// used CRLF throughout, else a copy with every bare LF turned into CRLF
	// (and a CRLF added after a header section that ended without one).
	Raw []byte
	// Fields lists the header fields top first, with duplicates and order
	// kept.
	Fields []Field
	// Body is the slice of Raw after the empty line that ends the header
	// section; empty (not nil) when the message has no body.
	Body []byte
	// BodyOffset is the offset of Body in Raw.
	BodyOffset int
	// From holds the author mailboxes of every From field, in message order
	// (RFC 5322 3.6.2). Empty when there is no From field or it cannot be
	// parsed.
	From []Address
	// FromFields is the number of From fields (RFC 5322 3.6 allows exactly
	// one; DMARC treats other counts specially).
	FromFields int
	// FromErr says why a From field could not be parsed, if so.
	FromErr error

	headerEnd int
}

// ParseError reports a message that cannot be parsed or exceeds a limit.
type ParseError struct {
	// Kind is "size", "fields", "field-size" or "syntax".
	Kind string
	// Detail says what was found.
	Detail string
}

func (e *ParseError) Error() string { return "message: " + e.Kind + ": " + e.Detail }

// Parse parses raw as an RFC 5322 message under the limits lim.
//
// The header section ends at the first empty line; a message without one
// is all header. A header line that is neither a field ("name:" with a name
// of printable ASCII other than colon, RFC 5322 2.2) nor a continuation line
// (starting with SP or HTAB) is a syntax error, as is a continuation before
// the first field.
//
// Problems with the From field do not make Parse fail; they are reported in
// Message.FromErr.
func Parse(raw []byte, lim Limits) (*Message, error) {
	lim = lim.withDefaults()
	if len(raw) > lim.MaxSize {
		return nil, &ParseError{Kind: "size", Detail: fmt.Sprintf("%d octets, over the limit of %d", len(raw), lim.MaxSize)}
	}
	raw = normalize(raw)

	// First pass: count the fields so Fields is allocated once.
	n, hdrLen, err := countFields(raw, lim)
	if err != nil {
		return nil, err
	}
	m := &Message{Raw: raw, Fields: make([]Field, 0, n)}
	var unfold []byte // shared backing store for unfolded values
	pos := 0
	m.headerEnd = -1
	for pos < len(raw) {
		if raw[pos] == '\r' && pos+1 < len(raw) && raw[pos+1] == '\n' {
			m.headerEnd = pos
			pos += 2 // end of header section
			break
		}
		end := fieldEnd(raw, pos)
		f := raw[pos:end]
		colon := bytes.IndexByte(f, ':')
		if colon <= 0 {
			return nil, &ParseError{Kind: "syntax", Detail: fmt.Sprintf("header line at offset %d is not a field", pos)}
		}
		name := f[:colon]
		for len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t') {
			name = name[:len(name)-1]
		}
		if len(name) == 0 || !validName(name) {
			return nil, &ParseError{Kind: "syntax", Detail: fmt.Sprintf("invalid field name at offset %d", pos)}
		}
		val := f[colon+1 : len(f)-2]
		if bytes.IndexByte(val, '\n') >= 0 {
			if unfold == nil {
				unfold = make([]byte, 0, hdrLen-pos)
			}
			start := len(unfold)
			for i := 0; i < len(val); i++ {
				if val[i] == '\r' && i+1 < len(val) && val[i+1] == '\n' {
					i++
					continue
				}
				unfold = append(unfold, val[i])
			}
			val = unfold[start:len(unfold):len(unfold)]
		}
		nm := internName(name)
		m.Fields = append(m.Fields, Field{Name: nm, Key: lowerKey(nm), Raw: f, Value: val})
		pos = end
	}
	if m.headerEnd < 0 {
		m.headerEnd = pos
	}
	m.BodyOffset = pos
	m.Body = raw[pos:len(raw):len(raw)]
	m.parseFrom()
	return m, nil
}

// FieldsByKey returns the fields whose lower-case name is key (which must be
// lower case), in message order. The result is a new slice; nil if none.
func (m *Message) FieldsByKey(key string) []Field {
	var out []Field
	for i := range m.Fields {
		if m.Fields[i].Key == key {
			out = append(out, m.Fields[i])
		}
	}
	return out
}

// Count returns how many fields have the lower-case name key.
func (m *Message) Count(key string) int {
	n := 0
	for i := range m.Fields {
		if m.Fields[i].Key == key {
			n++
		}
	}
	return n
}

// Header returns the raw header section of Raw: every field, without the
// empty line that ends the section.
func (m *Message) Header() []byte { return m.Raw[:m.headerEnd] }

// TraceFields groups the trace and authentication fields of a message
// (RFC 5321 4.4, RFC 8601, RFC 8617), each list top (most recent) first.
type TraceFields struct {
	Received              []Field
	ReturnPath            []Field
	AuthenticationResults []Field
	// ARC holds ARC-Seal, ARC-Message-Signature and
	// ARC-Authentication-Results fields in message order.
	ARC []Field
}

// Trace returns the Received, Return-Path, Authentication-Results and
// ARC-* fields.
func (m *Message) Trace() TraceFields {
	var t TraceFields
	for _, f := range m.Fields {
		switch f.Key {
		case "received":
			t.Received = append(t.Received, f)
		case "return-path":
			t.ReturnPath = append(t.ReturnPath, f)
		case "authentication-results":
			t.AuthenticationResults = append(t.AuthenticationResults, f)
		case "arc-seal", "arc-message-signature", "arc-authentication-results":
			t.ARC = append(t.ARC, f)
		}
	}
	return t
}

// normalize returns raw with every bare LF replaced by CRLF, and with a CRLF
// appended when the header section ends the input without a line end. It
// returns raw itself when nothing needs to change.
func normalize(raw []byte) []byte {
	bare := 0
	for i := bytes.IndexByte(raw, '\n'); i >= 0; {
		if i == 0 || raw[i-1] != '\r' {
			bare++
		}
		j := bytes.IndexByte(raw[i+1:], '\n')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	needTail := headerNeedsTail(raw)
	if bare == 0 && !needTail {
		return raw
	}
	out := make([]byte, 0, len(raw)+bare+2)
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '\n' && (i == 0 || raw[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if needTail {
		out = append(out, '\r', '\n')
	}
	return out
}

// headerNeedsTail reports whether raw has no empty line and does not end
// with a line end, so its last header field lacks the CRLF every Field.Raw
// must end with.
func headerNeedsTail(raw []byte) bool {
	if len(raw) == 0 || raw[len(raw)-1] == '\n' {
		return false
	}
	if raw[0] == '\n' || (len(raw) > 1 && raw[0] == '\r' && raw[1] == '\n') {
		return false // empty header section
	}
	return !bytes.Contains(raw, []byte("\n\n")) && !bytes.Contains(raw, []byte("\n\r\n"))
}

// fieldEnd returns the offset just past the CRLF that ends the field
// starting at pos, continuation lines included. raw is CRLF-normalised.
func fieldEnd(raw []byte, pos int) int {
	for {
		i := bytes.IndexByte(raw[pos:], '\n')
		if i < 0 {
			return len(raw) // cannot happen after normalize
		}
		pos += i + 1
		if pos >= len(raw) || (raw[pos] != ' ' && raw[pos] != '\t') {
			return pos
		}
	}
}

// countFields counts the header fields and enforces the field limits.
func countFields(raw []byte, lim Limits) (int, int, error) {
	n, pos := 0, 0
	for pos < len(raw) {
		if raw[pos] == '\r' && pos+1 < len(raw) && raw[pos+1] == '\n' {
			break
		}
		if raw[pos] == ' ' || raw[pos] == '\t' {
			return 0, 0, &ParseError{Kind: "syntax", Detail: "continuation line before the first header field"}
		}
		end := fieldEnd(raw, pos)
		if end-pos > lim.MaxFieldSize {
			return 0, 0, &ParseError{Kind: "field-size", Detail: fmt.Sprintf("header field at offset %d is %d octets, over the limit of %d", pos, end-pos, lim.MaxFieldSize)}
		}
		n++
		if n > lim.MaxFields {
			return 0, 0, &ParseError{Kind: "fields", Detail: fmt.Sprintf("more than %d header fields", lim.MaxFields)}
		}
		pos = end
	}
	return n, pos, nil
}

// validName reports whether name is an RFC 5322 2.2 field name: printable
// US-ASCII except colon.
func validName(name []byte) bool {
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// commonNames lets the usual field names be returned without allocating.
var commonNames = [...]string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Message-Id", "Received",
	"DKIM-Signature", "Dkim-Signature", "Return-Path", "MIME-Version", "Mime-Version",
	"Content-Type", "Content-Transfer-Encoding", "Reply-To", "Sender", "List-Id",
	"List-Unsubscribe", "Authentication-Results", "ARC-Seal", "ARC-Message-Signature",
	"ARC-Authentication-Results", "References", "In-Reply-To", "X-Mailer",
	"from", "to", "cc", "subject", "date", "message-id", "received", "dkim-signature",
	"return-path", "mime-version", "content-type", "content-transfer-encoding", "reply-to",
	"sender", "authentication-results", "arc-seal", "arc-message-signature",
	"arc-authentication-results", "references", "in-reply-to", "list-id", "list-unsubscribe",
}

// interned maps the common names (and their lower-case forms) to shared
// strings. It is built once and only read afterwards.
var interned = func() map[string]string {
	m := make(map[string]string, 2*len(commonNames))
	for _, s := range commonNames {
		m[s] = s
		l := strings.ToLower(s)
		if _, ok := m[l]; !ok {
			m[l] = l
		}
	}
	return m
}()

func internName(name []byte) string {
	if s, ok := interned[string(name)]; ok {
		return s
	}
	return string(name)
}

func lowerKey(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			var buf [64]byte
			low := buf[:0]
			if len(name) > len(buf) {
				low = make([]byte, 0, len(name))
			}
			for j := 0; j < len(name); j++ {
				c := name[j]
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				low = append(low, c)
			}
			if s, ok := interned[string(low)]; ok {
				return s
			}
			return string(low)
		}
	}
	return name
}
