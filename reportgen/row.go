package reportgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/authpipe/authpipe/stages/verdict"
)

// Bounds on one row, stated here and enforced by the encoder and decoder.
const (
	// MaxDKIMPerRow is the number of DKIM results kept per row: RFC 9990
	// 2.1.4 "SHOULD contain no more than 100 signatures for a given row",
	// kept in the RFC's order of preference.
	MaxDKIMPerRow = 100
	// MaxReasonsPerRow bounds the override reasons kept per row.
	MaxReasonsPerRow = 16
	// MaxFieldLen bounds each string in a row (domain names are ≤ 253,
	// comments are cut to this length).
	MaxFieldLen = 1024
)

// rowKeyVersion is the first octet of an encoded RowKey. Store metadata keys
// start with 0x00, so they never collide with row keys.
const rowKeyVersion = 1

// Reason is a DMARC policy override reason (RFC 9990 PolicyOverrideReason).
type Reason struct {
	Type    string
	Comment string
}

// DKIMResult is one auth_results/dkim element: d=, s= and the result.
type DKIMResult struct {
	Domain, Selector, Result string
}

// SPFResult is the auth_results/spf element. Scope is "mfrom" or "helo".
type SPFResult struct {
	Domain, Scope, Result string
}

// RowKey identifies one report row (RFC 9990 RecordType): everything of a
// record except the count. Messages with equal keys in one window are
// counted together.
type RowKey struct {
	SourceIP     string
	EnvelopeTo   string
	EnvelopeFrom string
	HeaderFrom   string
	// Disposition is none, quarantine, reject, or pass (RFC 9990
	// ActionDispositionType: passed DMARC under an enforcing policy).
	Disposition string
	DKIMAligned bool
	SPFAligned  bool
	Reasons     []Reason
	DKIM        []DKIMResult
	// SPF is nil when no SPF check was made.
	SPF *SPFResult
}

// Row is a RowKey with its message count.
type Row struct {
	RowKey
	Count uint64
}

// ErrBadEncoding is wrapped by decoders of outside bytes.
var ErrBadEncoding = errors.New("reportgen: bad encoding")

func clip(s string) string {
	if len(s) > MaxFieldLen {
		return s[:MaxFieldLen]
	}
	return s
}

func appendStr(b []byte, s string) []byte {
	s = clip(s)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendBinary appends the compact encoding of k to b. The encoding is
// stable (versioned by its first octet) and is used both in partial
// aggregates and as the store key, so equal rows have equal bytes.
func (k *RowKey) AppendBinary(b []byte) []byte {
	b = append(b, rowKeyVersion)
	var flags byte
	if k.DKIMAligned {
		flags |= 1
	}
	if k.SPFAligned {
		flags |= 2
	}
	if k.SPF != nil {
		flags |= 4
	}
	b = appendStr(b, k.SourceIP)
	b = appendStr(b, k.HeaderFrom)
	b = appendStr(b, k.EnvelopeFrom)
	b = appendStr(b, k.EnvelopeTo)
	b = appendStr(b, k.Disposition)
	b = append(b, flags)
	reasons := k.Reasons
	if len(reasons) > MaxReasonsPerRow {
		reasons = reasons[:MaxReasonsPerRow]
	}
	b = binary.AppendUvarint(b, uint64(len(reasons)))
	for _, r := range reasons {
		b = appendStr(b, r.Type)
		b = appendStr(b, r.Comment)
	}
	dk := k.DKIM
	if len(dk) > MaxDKIMPerRow {
		dk = dk[:MaxDKIMPerRow]
	}
	b = binary.AppendUvarint(b, uint64(len(dk)))
	for _, d := range dk {
		b = appendStr(b, d.Domain)
		b = appendStr(b, d.Selector)
		b = appendStr(b, d.Result)
	}
	if k.SPF != nil {
		b = appendStr(b, k.SPF.Domain)
		b = appendStr(b, k.SPF.Scope)
		b = appendStr(b, k.SPF.Result)
	}
	return b
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated varint", ErrBadEncoding)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = fmt.Errorf("%w: truncated", ErrBadEncoding)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes(max int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: length %d out of range", ErrBadEncoding, n)
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) str() string { return string(d.bytes(MaxFieldLen)) }

func (d *decoder) count(max int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(max) {
		d.err = fmt.Errorf("%w: count %d over %d", ErrBadEncoding, n, max)
	}
	return int(n)
}

// DecodeRowKey decodes the encoding written by AppendBinary. Bad input
// gives an error wrapping ErrBadEncoding, never a panic.
func DecodeRowKey(b []byte) (RowKey, error) {
	d := &decoder{b: b}
	k, err := d.rowKey()
	if err == nil && len(d.b) != 0 {
		err = fmt.Errorf("%w: %d trailing octets in row key", ErrBadEncoding, len(d.b))
	}
	return k, err
}

func (d *decoder) rowKey() (RowKey, error) {
	var k RowKey
	if v := d.byte1(); d.err == nil && v != rowKeyVersion {
		return k, fmt.Errorf("%w: row key version %d", ErrBadEncoding, v)
	}
	k.SourceIP = d.str()
	k.HeaderFrom = d.str()
	k.EnvelopeFrom = d.str()
	k.EnvelopeTo = d.str()
	k.Disposition = d.str()
	flags := d.byte1()
	k.DKIMAligned = flags&1 != 0
	k.SPFAligned = flags&2 != 0
	n := d.count(MaxReasonsPerRow)
	for i := 0; i < n && d.err == nil; i++ {
		k.Reasons = append(k.Reasons, Reason{Type: d.str(), Comment: d.str()})
	}
	n = d.count(MaxDKIMPerRow)
	for i := 0; i < n && d.err == nil; i++ {
		k.DKIM = append(k.DKIM, DKIMResult{Domain: d.str(), Selector: d.str(), Result: d.str()})
	}
	if flags&4 != 0 {
		k.SPF = &SPFResult{Domain: d.str(), Scope: d.str(), Result: d.str()}
	}
	return k, d.err
}

// DayOf returns the UTC day number (days since 1970-01-01) of t.
func DayOf(t time.Time) uint32 {
	u := t.Unix()
	if u < 0 {
		return 0
	}
	return uint32(u / 86400)
}

// DayStart returns the first instant of UTC day d.
func DayStart(d uint32) time.Time { return time.Unix(int64(d)*86400, 0).UTC() }

// DayString formats a day number as YYYY-MM-DD.
func DayString(d uint32) string { return DayStart(d).Format(time.DateOnly) }

// ParseDay parses YYYY-MM-DD into a day number.
func ParseDay(s string) (uint32, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return 0, fmt.Errorf("reportgen: day %q: %w", s, err)
	}
	return DayOf(t), nil
}

// VerdictTime is the instant that decides a verdict's report day: the
// envelope's received_at when set (the arrival time, which is what the
// report's date_range describes), else evaluated_at.
func VerdictTime(v *verdict.Verdict) time.Time {
	if !v.Envelope.ReceivedAt.IsZero() {
		return v.Envelope.ReceivedAt
	}
	return v.EvaluatedAt
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		addr = addr[i+1:]
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(addr, "<> "), "."))
}

// RowKeyOf builds the row of v (RFC 9990 RecordType). envelope_to is the
// domain of the first recipient (a message counts once, however many
// recipients it has); envelope_from is the MAIL FROM domain, empty for the
// null sender. It fails when v has no DMARC policy domain (nothing to
// report).
func RowKeyOf(v *verdict.Verdict) (RowKey, error) {
	var k RowKey
	dm := v.DMARC
	if dm == nil || dm.PolicyDomain == "" || dm.Policy == nil {
		return k, errors.New("reportgen: verdict has no DMARC policy domain")
	}
	if ip, err := netip.ParseAddr(v.Envelope.ClientIP); err == nil {
		if ip.Is4() {
			// ParseAddr takes dotted-quad IPv4 only in its canonical
			// form (no leading zeros), so the text is already String().
			k.SourceIP = v.Envelope.ClientIP
		} else {
			k.SourceIP = ip.Unmap().String()
		}
	} else {
		k.SourceIP = v.Envelope.ClientIP
	}
	if len(v.Envelope.RcptTo) > 0 {
		k.EnvelopeTo = domainOf(v.Envelope.RcptTo[0])
	}
	if v.Envelope.MailFrom != "" {
		k.EnvelopeFrom = domainOf(v.Envelope.MailFrom)
	}
	k.HeaderFrom = strings.ToLower(dm.AuthorDomain)
	if k.HeaderFrom == "" && len(v.HeaderFrom) > 0 {
		k.HeaderFrom = strings.ToLower(v.HeaderFrom[0])
	}
	k.DKIMAligned = dm.DKIMAligned
	k.SPFAligned = dm.SPFAligned
	k.Disposition = dm.Disposition
	if k.Disposition == "" {
		k.Disposition = "none"
	}
	if dm.Result == "pass" && k.Disposition == "none" && appliedPolicy(dm) != "none" && appliedPolicy(dm) != "" {
		k.Disposition = "pass"
	}
	for _, r := range dm.Reasons {
		if len(k.Reasons) == MaxReasonsPerRow {
			break
		}
		k.Reasons = append(k.Reasons, Reason{Type: r.Type, Comment: r.Comment})
	}
	k.DKIM = orderDKIM(v.DKIM, k.HeaderFrom, dm.AlignedDKIMDomain)
	if s := v.SPF; s != nil {
		scope := "mfrom"
		if s.Identity == "helo" {
			scope = "helo"
		}
		k.SPF = &SPFResult{Domain: strings.ToLower(s.Domain), Scope: scope, Result: s.Result}
	}
	return k, nil
}

func appliedPolicy(d *verdict.DMARC) string {
	if d.Policy == nil {
		return ""
	}
	switch d.AppliedPolicy {
	case "sp":
		return d.Policy.SP
	case "np":
		return d.Policy.NP
	}
	return d.Policy.P
}

// orderDKIM orders signatures as RFC 9990 2.1.4 prefers (passing strictly
// aligned, passing relaxed aligned, other passing, not passing), keeping
// the original order within each class, and keeps MaxDKIMPerRow.
func orderDKIM(sigs []verdict.DKIM, from, alignedD string) []DKIMResult {
	if len(sigs) == 0 {
		return nil
	}
	out := make([]DKIMResult, 0, min(len(sigs), MaxDKIMPerRow))
	for class := 0; class < 4 && len(out) < MaxDKIMPerRow; class++ {
		for _, s := range sigs {
			d := strings.ToLower(s.Domain)
			var c int
			switch {
			case s.Result == "pass" && d == from:
				c = 0
			case s.Result == "pass" && (d == strings.ToLower(alignedD) || hasDotSuffix(from, d) || hasDotSuffix(d, from)):
				c = 1
			case s.Result == "pass":
				c = 2
			default:
				c = 3
			}
			if c == class && len(out) < MaxDKIMPerRow {
				out = append(out, DKIMResult{Domain: d, Selector: s.Selector, Result: s.Result})
			}
		}
	}
	return out
}

// hasDotSuffix reports whether s ends in "." + suffix (without building it).
func hasDotSuffix(s, suffix string) bool {
	return len(s) > len(suffix) && s[len(s)-len(suffix)-1] == '.' && strings.HasSuffix(s, suffix)
}
