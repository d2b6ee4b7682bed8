package reportgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/authpipe/authpipe/stages/verdict"
)

// PolicyPublished is the DMARC record as evaluated (RFC 9990
// PolicyPublishedType; RFC 7489 adds pct). Empty strings are absent tags.
type PolicyPublished struct {
	Domain          string
	P, SP, NP       string
	ADKIM, ASPF     string
	FO              string
	Testing         string // "y" or "n" (RFC 9989 t=)
	DiscoveryMethod string // "psl" or "treewalk"
	// Pct is the RFC 7489 pct (0..100); -1 when unknown (RFC 9989 has none).
	Pct int
}

func policyOf(d *verdict.DMARC) PolicyPublished {
	p := d.Policy
	pp := PolicyPublished{
		Domain: strings.ToLower(p.Domain), P: p.P, SP: p.SP, NP: p.NP, ADKIM: p.ADKIM, ASPF: p.ASPF,
		FO: p.FO, Testing: p.Testing, DiscoveryMethod: d.DiscoveryMethod, Pct: -1,
	}
	if pp.Domain == "" {
		pp.Domain = strings.ToLower(d.PolicyDomain)
	}
	if p.Pct != nil {
		pp.Pct = *p.Pct
	}
	return pp
}

func (p *PolicyPublished) appendBinary(b []byte) []byte {
	for _, s := range []string{p.Domain, p.P, p.SP, p.NP, p.ADKIM, p.ASPF, p.FO, p.Testing, p.DiscoveryMethod} {
		b = appendStr(b, s)
	}
	return binary.AppendVarint(b, int64(p.Pct))
}

func (d *decoder) policy() PolicyPublished {
	var p PolicyPublished
	for _, s := range []*string{&p.Domain, &p.P, &p.SP, &p.NP, &p.ADKIM, &p.ASPF, &p.FO, &p.Testing, &p.DiscoveryMethod} {
		*s = d.str()
	}
	if d.err != nil {
		return p
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || v < -1 || v > 100 {
		d.err = fmt.Errorf("%w: pct", ErrBadEncoding)
		return p
	}
	d.b = d.b[n:]
	p.Pct = int(v)
	return p
}

// Window names one report period: a policy domain and a UTC day.
type Window struct {
	Domain string
	Day    uint32
}

func (w Window) String() string { return w.Domain + "/" + DayString(w.Day) }

// RowCount is one encoded RowKey (RowKey.AppendBinary) with its count.
type RowCount struct {
	Key   []byte
	Count uint64
}

// PartialAggregate is the aggregate of some verdicts of one window: what a
// verify worker writes to topic authpipe.aggregates (keyed by PolicyDomain)
// in the same transaction as its verdicts.
type PartialAggregate struct {
	Window
	// Policy is the policy as evaluated by the latest verdict added.
	Policy PolicyPublished
	// Messages is the sum of the row counts.
	Messages uint64
	Rows     []RowCount
}

// RecordKey is the Kafka record key of p on topic authpipe.aggregates: the
// policy domain, so all partials of a domain land in one partition and one
// reporter merges them.
func (p *PartialAggregate) RecordKey() []byte { return []byte(p.Domain) }

// partialVersion is the first octet of an encoded PartialAggregate.
const partialVersion = 1

// MaxPartialRows bounds the rows of one decoded partial aggregate.
const MaxPartialRows = 1 << 20

// MarshalBinary encodes p compactly: version, domain, day, policy, rows
// (length-prefixed key, varint count). The encoding is stable.
func (p *PartialAggregate) MarshalBinary() ([]byte, error) {
	return p.AppendBinary(nil), nil
}

// AppendBinary appends the encoding of p to b.
func (p *PartialAggregate) AppendBinary(b []byte) []byte {
	b = append(b, partialVersion)
	b = appendStr(b, p.Domain)
	b = binary.BigEndian.AppendUint32(b, p.Day)
	b = p.Policy.appendBinary(b)
	b = binary.AppendUvarint(b, uint64(len(p.Rows)))
	for _, r := range p.Rows {
		b = binary.AppendUvarint(b, uint64(len(r.Key)))
		b = append(b, r.Key...)
		b = binary.AppendUvarint(b, r.Count)
	}
	return b
}

// maxRowKeyLen bounds one encoded row key.
const maxRowKeyLen = 64 << 10

// UnmarshalBinary decodes the encoding of MarshalBinary. Row keys are
// validated with DecodeRowKey; the Key slices alias data.
func (p *PartialAggregate) UnmarshalBinary(data []byte) error {
	d := &decoder{b: data}
	if v := d.byte1(); d.err == nil && v != partialVersion {
		return fmt.Errorf("%w: partial aggregate version %d", ErrBadEncoding, v)
	}
	p.Domain = d.str()
	if d.err == nil {
		if len(d.b) < 4 {
			return fmt.Errorf("%w: truncated day", ErrBadEncoding)
		}
		p.Day = binary.BigEndian.Uint32(d.b)
		d.b = d.b[4:]
	}
	p.Policy = d.policy()
	n := d.count(MaxPartialRows)
	p.Rows = make([]RowCount, 0, min(n, 4096))
	p.Messages = 0
	for i := 0; i < n && d.err == nil; i++ {
		k := d.bytes(maxRowKeyLen)
		c := d.uvarint()
		if d.err != nil {
			break
		}
		if _, err := DecodeRowKey(k); err != nil {
			return fmt.Errorf("reportgen: partial aggregate row %d: %w", i, err)
		}
		p.Rows = append(p.Rows, RowCount{Key: k, Count: c})
		p.Messages += c
	}
	if d.err != nil {
		return fmt.Errorf("reportgen: partial aggregate: %w", d.err)
	}
	if p.Domain == "" {
		return fmt.Errorf("reportgen: partial aggregate: %w: empty domain", ErrBadEncoding)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("reportgen: partial aggregate: %w: trailing octets", ErrBadEncoding)
	}
	return nil
}

// ErrNoPolicy is returned by Aggregator.Add for a verdict without a DMARC
// policy domain: there is no report to add it to.
var ErrNoPolicy = errors.New("reportgen: verdict has no DMARC policy")

// Aggregator accumulates verdicts into partial aggregates in memory. It is
// not safe for concurrent use: callers that share one compute each
// verdict's VerdictRow (VerdictRowOf, safe to run concurrently) outside
// their lock and hold it only for AddRow.
type Aggregator struct {
	wins map[Window]*aggWindow
	buf  []byte
}

type aggWindow struct {
	policy PolicyPublished
	rows   map[string]*uint64 // pointers: a repeated row counts without a map assignment and its key copy
	msgs   uint64
}

// NewAggregator returns an empty Aggregator.
func NewAggregator() *Aggregator { return &Aggregator{wins: map[Window]*aggWindow{}} }

// VerdictRow is where one verdict counts: its window and the policy it was
// evaluated under. The row key (RowKey.AppendBinary) comes apart from it
// (VerdictRowOf): kept in the same struct as the policy's strings, which
// AddRow stores, escape analysis would send a caller's key buffer to the
// heap with them for every verdict.
type VerdictRow struct {
	Window Window
	Policy PolicyPublished
}

// VerdictRowOf returns v's VerdictRow and its row key, appended to buf.
// Verdicts without a DMARC policy give ErrNoPolicy.
func VerdictRowOf(v *verdict.Verdict, buf []byte) (VerdictRow, []byte, error) {
	if v == nil || v.DMARC == nil || v.DMARC.Policy == nil || v.DMARC.PolicyDomain == "" {
		return VerdictRow{}, nil, ErrNoPolicy
	}
	k, err := RowKeyOf(v)
	if err != nil {
		return VerdictRow{}, nil, err
	}
	return VerdictRow{
		Window: Window{Domain: strings.ToLower(v.DMARC.PolicyDomain), Day: DayOf(VerdictTime(v))},
		Policy: policyOf(v.DMARC),
	}, k.AppendBinary(buf), nil
}

// Add counts v in the window of its policy domain and day (VerdictTime).
// Verdicts without a DMARC policy give ErrNoPolicy and are not counted.
func (a *Aggregator) Add(v *verdict.Verdict) error {
	r, key, err := VerdictRowOf(v, a.buf[:0])
	if err != nil {
		return err
	}
	a.buf = key
	a.AddRow(&r, key)
	return nil
}

// AddRow counts one message in row key of r. The window's policy becomes
// r's (the latest verdict's); key is copied when the row is new, and not
// kept.
func (a *Aggregator) AddRow(r *VerdictRow, key []byte) {
	aw := a.wins[r.Window]
	if aw == nil {
		aw = &aggWindow{rows: map[string]*uint64{}}
		a.wins[r.Window] = aw
	}
	aw.policy = r.Policy
	if c := aw.rows[string(key)]; c != nil {
		*c++
	} else {
		n := uint64(1)
		aw.rows[string(key)] = &n
	}
	aw.msgs++
}

// Len returns the number of distinct rows held.
func (a *Aggregator) Len() int {
	n := 0
	for _, w := range a.wins {
		n += len(w.rows)
	}
	return n
}

// Flush returns the partial aggregates accumulated since the last Flush,
// ordered by window and row key, and empties the Aggregator.
func (a *Aggregator) Flush() []PartialAggregate {
	out := make([]PartialAggregate, 0, len(a.wins))
	for w, aw := range a.wins {
		p := PartialAggregate{Window: w, Policy: aw.policy, Messages: aw.msgs, Rows: make([]RowCount, 0, len(aw.rows))}
		for k, c := range aw.rows {
			p.Rows = append(p.Rows, RowCount{Key: []byte(k), Count: *c})
		}
		sort.Slice(p.Rows, func(i, j int) bool { return string(p.Rows[i].Key) < string(p.Rows[j].Key) })
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Domain != out[j].Domain {
			return out[i].Domain < out[j].Domain
		}
		return out[i].Day < out[j].Day
	})
	clear(a.wins)
	return out
}
