package reportgen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TLS result types (RFC 8460 4.3.2.1 negotiation failures, 4.3.2.2 policy
// failures, 4.3.2.3 general failures). "success" is the event's value for a
// session that negotiated TLS as the policy required.
var tlsResultTypes = []string{
	"starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
	"certificate-not-trusted", "validation-failure",
	"tlsa-invalid", "dnssec-invalid", "dane-required",
	"sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
}

// Policy types (RFC 8460 4.3 "policy-type").
var tlsPolicyTypes = []string{"sts", "tlsa", "no-policy-found"}

// Bounds on a TLS result event (checked by ParseTLSResult).
const (
	MaxTLSEventSize     = 64 << 10
	MaxTLSPolicyStrings = 64
)

// TLSResult is one outbound TLS session attempt: the value of a record on
// topic mail.tls-results (schema docs/tls-results.schema.json, version 1).
type TLSResult struct {
	Version   int       `json:"version"`
	Timestamp time.Time `json:"timestamp"`
	// PolicyDomain is the recipient domain whose policy applied.
	PolicyDomain string `json:"policy_domain"`
	// PolicyType is sts, tlsa or no-policy-found.
	PolicyType string `json:"policy_type"`
	// PolicyStrings are the policy's lines (MTA-STS) or TLSA records.
	PolicyStrings []string `json:"policy_strings,omitempty"`
	// PolicyMXHosts are the policy's MX patterns (MTA-STS "mx:") or the MX
	// host a TLSA policy applies to (RFC 8460 "mx-host").
	PolicyMXHosts []string `json:"policy_mx_hosts,omitempty"`
	// MXHost is the MX host name the sender connected to.
	MXHost      string `json:"mx_host,omitempty"`
	SendingIP   string `json:"sending_ip,omitempty"`
	ReceivingIP string `json:"receiving_ip,omitempty"`
	// ReceivingMXHELO is the name in the receiving MX's greeting.
	ReceivingMXHELO string `json:"receiving_mx_helo,omitempty"`
	// Result is "success" or an RFC 8460 result type.
	Result            string `json:"result"`
	FailureReasonCode string `json:"failure_reason_code,omitempty"`
	// AdditionalInformation is a URI pointing to more details.
	AdditionalInformation string `json:"additional_information,omitempty"`
}

// ParseTLSResult decodes and validates one event. Bad input gives an error,
// never a panic.
func ParseTLSResult(data []byte) (TLSResult, error) {
	var ev TLSResult
	if len(data) > MaxTLSEventSize {
		return ev, fmt.Errorf("reportgen: tls result: %d octets over %d", len(data), MaxTLSEventSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return ev, fmt.Errorf("reportgen: tls result: %w", err)
	}
	return ev, ev.Validate()
}

// Validate checks the fields that the aggregation relies on.
func (ev *TLSResult) Validate() error {
	switch {
	case ev.Version != 1:
		return fmt.Errorf("reportgen: tls result: version %d", ev.Version)
	case ev.Timestamp.IsZero():
		return errors.New("reportgen: tls result: no timestamp")
	case ev.PolicyDomain == "" || len(ev.PolicyDomain) > 253:
		return errors.New("reportgen: tls result: bad policy_domain")
	case !slices.Contains(tlsPolicyTypes, ev.PolicyType):
		return fmt.Errorf("reportgen: tls result: policy_type %q", ev.PolicyType)
	case ev.Result != "success" && !slices.Contains(tlsResultTypes, ev.Result):
		return fmt.Errorf("reportgen: tls result: result %q", ev.Result)
	case len(ev.PolicyStrings) > MaxTLSPolicyStrings || len(ev.PolicyMXHosts) > MaxTLSPolicyStrings:
		return errors.New("reportgen: tls result: too many policy strings")
	}
	for _, ip := range []string{ev.SendingIP, ev.ReceivingIP} {
		if ip != "" {
			if _, err := netip.ParseAddr(ip); err != nil {
				return fmt.Errorf("reportgen: tls result: %w", err)
			}
		}
	}
	return nil
}

// tlsKey encodes (policy, detail) as the store key: the policy part first
// (length-prefixed) so a cursor sees one policy's keys together, then 'S'
// for successes or 'F' and the failure detail.
func tlsKey(ev *TLSResult) []byte {
	var pol []byte
	pol = appendStr(pol, ev.PolicyType)
	pol = appendStr(pol, strings.ToLower(ev.PolicyDomain))
	pol = appendList(pol, ev.PolicyStrings)
	pol = appendList(pol, ev.PolicyMXHosts)
	b := []byte{2} // first octet: never 0 (metadata)
	b = appendStr(b, string(pol))
	if ev.Result == "success" {
		return append(b, 'S')
	}
	b = append(b, 'F')
	for _, s := range []string{ev.Result, ev.SendingIP, ev.MXHost, ev.ReceivingMXHELO, ev.ReceivingIP, ev.AdditionalInformation, ev.FailureReasonCode} {
		b = appendStr(b, s)
	}
	return b
}

func appendList(b []byte, l []string) []byte {
	b = appendUvarint(b, uint64(len(l)))
	for _, s := range l {
		b = appendStr(b, s)
	}
	return b
}

func (d *decoder) list() []string {
	n := d.count(MaxTLSPolicyStrings)
	var out []string
	for i := 0; i < n && d.err == nil; i++ {
		out = append(out, d.str())
	}
	return out
}

// TLSPartial is the aggregate of some TLS results of one window.
type TLSPartial struct {
	Window
	Sessions uint64
	Rows     []RowCount
}

// TLSAggregator accumulates TLS results in memory; not safe for concurrent
// use.
type TLSAggregator struct {
	wins map[Window]map[string]uint64
	n    map[Window]uint64
}

// NewTLSAggregator returns an empty TLSAggregator.
func NewTLSAggregator() *TLSAggregator {
	return &TLSAggregator{wins: map[Window]map[string]uint64{}, n: map[Window]uint64{}}
}

// Add counts ev in the window (policy domain, UTC day of its timestamp).
func (a *TLSAggregator) Add(ev *TLSResult) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	w := Window{Domain: strings.ToLower(ev.PolicyDomain), Day: DayOf(ev.Timestamp)}
	m := a.wins[w]
	if m == nil {
		m = map[string]uint64{}
		a.wins[w] = m
	}
	m[string(tlsKey(ev))]++
	a.n[w]++
	return nil
}

// Flush returns the partials accumulated since the last Flush.
func (a *TLSAggregator) Flush() []TLSPartial {
	var out []TLSPartial
	for w, m := range a.wins {
		p := TLSPartial{Window: w, Sessions: a.n[w]}
		for k, c := range m {
			p.Rows = append(p.Rows, RowCount{Key: []byte(k), Count: c})
		}
		slices.SortFunc(p.Rows, func(x, y RowCount) int { return bytes.Compare(x.Key, y.Key) })
		out = append(out, p)
	}
	clear(a.wins)
	clear(a.n)
	return out
}

// MergeTLS applies TLS partials and offsets in one transaction (see Merge).
func (s *Store) MergeTLS(batch []TLSPartial, offsets []Offset) (MergeResult, error) {
	in := make([]windowBatch, len(batch))
	for i := range batch {
		in[i] = windowBatch{w: batch[i].Window, msgs: batch[i].Sessions, rows: batch[i].Rows}
	}
	return s.merge(KindTLS, in, offsets)
}

// StringList is a JSON string array that also accepts a single string
// (RFC 8460 4.3 defines "mx-host" as an array; its 4.4 example and some
// reporters use a string).
type StringList []string

// UnmarshalJSON accepts a string or an array of strings.
func (l *StringList) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*l = StringList{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	*l = a
	return nil
}

// TLSReport is an SMTP TLS report (RFC 8460 4.3).
type TLSReport struct {
	OrganizationName string          `json:"organization-name"`
	DateRange        TLSDateRange    `json:"date-range"`
	ContactInfo      string          `json:"contact-info"`
	ReportID         string          `json:"report-id"`
	Policies         []TLSPolicyData `json:"policies"`
}

// TLSDateRange is the report period (RFC 3339 date-times).
type TLSDateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// TLSPolicyData is one policy with its summary and failure details.
type TLSPolicyData struct {
	Policy         TLSPolicy          `json:"policy"`
	Summary        TLSSummary         `json:"summary"`
	FailureDetails []TLSFailureDetail `json:"failure-details,omitempty"`
}

// TLSPolicy is RFC 8460 4.3 "policy".
type TLSPolicy struct {
	PolicyType   string     `json:"policy-type"`
	PolicyString []string   `json:"policy-string,omitempty"`
	PolicyDomain string     `json:"policy-domain"`
	MXHost       StringList `json:"mx-host,omitempty"`
}

// TLSSummary holds the session counts of a policy.
type TLSSummary struct {
	TotalSuccessfulSessionCount uint64 `json:"total-successful-session-count"`
	TotalFailureSessionCount    uint64 `json:"total-failure-session-count"`
}

// TLSFailureDetail is one group of failed sessions with equal details.
type TLSFailureDetail struct {
	ResultType            string `json:"result-type"`
	SendingMTAIP          string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname   string `json:"receiving-mx-hostname,omitempty"`
	ReceivingMXHelo       string `json:"receiving-mx-helo,omitempty"`
	ReceivingIP           string `json:"receiving-ip,omitempty"`
	FailedSessionCount    uint64 `json:"failed-session-count"`
	AdditionalInformation string `json:"additional-information,omitempty"`
	FailureReasonCode     string `json:"failure-reason-code,omitempty"`
}

// TLSReportConfig describes the reporting organisation (RFC 8460 4.3).
type TLSReportConfig struct {
	OrganizationName string
	ContactInfo      string
	// Sender is the reporting domain: the file name's sender part (RFC
	// 8460 5.1) and TLS-Report-Submitter.
	Sender string
}

// TLSFileName returns the RFC 8460 5.1 file name:
// sender!policy-domain!begin!end!unique-id.json.gz.
func TLSFileName(sender string, w Window) string { return TLSFileNamePart(sender, w, 1) }

// TLSFileNamePart is the file name of part n of a split report; part 1 is
// TLSFileName.
func TLSFileNamePart(sender string, w Window, part int) string {
	begin := DayStart(w.Day).Unix()
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", strings.ToLower(sender), w.Domain, begin, begin+86399, tlsUniquePart(sender, w, part))
}

func tlsUnique(sender string, w Window) string {
	h := sha256.Sum256([]byte("tlsrpt\x00" + strings.ToLower(sender) + "\x00" + w.Domain + "\x00" + DayString(w.Day)))
	return hex.EncodeToString(h[:8])
}

// tlsUniquePart is the file name's unique-id (RFC 8460 5.1: 1*(ALPHA /
// DIGIT)) of part n: the window's hex digest, then "p" and the part number
// from part 2 on ("p" is not a hex digit, so the forms cannot collide).
func tlsUniquePart(sender string, w Window, part int) string {
	if part <= 1 {
		return tlsUnique(sender, w)
	}
	return tlsUnique(sender, w) + "p" + strconv.Itoa(part)
}

// TLSReportID returns the stable report-id of a window.
func TLSReportID(sender string, w Window) string { return TLSReportIDPart(sender, w, 1) }

// TLSReportIDPart returns the stable report-id of part n of a split
// report; part 1 is TLSReportID. It depends only on sender, window and
// part, so a rebuilt report keeps it.
func TLSReportIDPart(sender string, w Window, part int) string {
	return DayString(w.Day) + "_" + w.Domain + "_" + tlsUniquePart(sender, w, part) + "@" + strings.ToLower(sender)
}

// BuildTLSRPT writes the gzip TLSRPT JSON of window w to out, unsplit.
// Policies are streamed from the store cursor one at a time, so memory is
// bounded by the largest single policy's failure details.
func BuildTLSRPT(s *Store, w Window, cfg TLSReportConfig, out io.Writer) (ReportFile, error) {
	files, err := BuildTLSRPTParts(s, w, cfg, 0, func(ReportFile) (io.Writer, error) { return out, nil })
	if err != nil {
		return ReportFile{}, err
	}
	return files[0], nil
}

// BuildTLSRPTParts writes the TLSRPT report(s) of window w: each a complete
// RFC 8460 JSON document, gzipped, of at most maxSize octets (0: no cap,
// one report). open is called for each part. Policies are divided between
// the parts; a policy too large for one part on its own is split by its
// failure details, each piece carrying the session counts of its details
// (the successful sessions go with the first piece), so that together the
// parts carry every policy and every count exactly once. Each part has its
// own stable report-id and file name (TLSReportIDPart, TLSFileNamePart). A
// single failure detail larger than the cap is an error. A window without
// rows gives one report with no policies.
func BuildTLSRPTParts(s *Store, w Window, cfg TLSReportConfig, maxSize int64, open func(ReportFile) (io.Writer, error)) ([]ReportFile, error) {
	b := &tlsBuilder{w: w, cfg: cfg, max: maxSize, open: open}
	var cur *TLSPolicyData
	var curKey string
	var curRows int
	flush := func() error {
		if cur == nil {
			return nil
		}
		err := b.addPolicy(cur, curRows, true)
		cur = nil
		return err
	}
	err := s.forEachRaw(KindTLS, w, func(k []byte, n uint64) error {
		d := &decoder{b: k}
		if d.byte1() != 2 {
			return fmt.Errorf("%w: tls key", ErrBadEncoding)
		}
		polRaw := d.bytes(maxRowKeyLen)
		if d.err != nil {
			return d.err
		}
		if string(polRaw) != curKey || cur == nil {
			if err := flush(); err != nil {
				return err
			}
			pd := &decoder{b: polRaw}
			cur = &TLSPolicyData{Policy: TLSPolicy{PolicyType: pd.str(), PolicyDomain: pd.str(), PolicyString: pd.list(), MXHost: pd.list()}}
			if pd.err != nil {
				return pd.err
			}
			curKey, curRows = string(polRaw), 0
		}
		switch d.byte1() {
		case 'S':
			cur.Summary.TotalSuccessfulSessionCount += n
		case 'F':
			fd := TLSFailureDetail{ResultType: d.str(), SendingMTAIP: d.str(), ReceivingMXHostname: d.str(), ReceivingMXHelo: d.str(),
				ReceivingIP: d.str(), AdditionalInformation: d.str(), FailureReasonCode: d.str(), FailedSessionCount: n}
			cur.Summary.TotalFailureSessionCount += n
			cur.FailureDetails = append(cur.FailureDetails, fd)
		default:
			return fmt.Errorf("%w: tls key kind", ErrBadEncoding)
		}
		curRows++
		return d.err
	})
	if err == nil {
		err = flush()
	}
	if err == nil && !b.part.isOpen() {
		err = b.startPart() // no rows: one empty report
	}
	if err == nil {
		err = b.finishPart()
	}
	if err != nil {
		return b.files, fmt.Errorf("reportgen: build tlsrpt %s: %w", w, err)
	}
	return b.files, nil
}

// tlsBuilder writes the parts of a TLSRPT report, measuring the gzip
// output as it goes (gzPart, like the DMARC builder).
type tlsBuilder struct {
	w     Window
	cfg   TLSReportConfig
	max   int64
	open  func(ReportFile) (io.Writer, error)
	files []ReportFile

	cur  ReportFile
	part gzPart
	npol int
}

const tlsCloseTag = "\n]}\n"

func (b *tlsBuilder) header(part int) ([]byte, error) {
	begin := DayStart(b.w.Day)
	head := TLSReport{OrganizationName: b.cfg.OrganizationName, ContactInfo: b.cfg.ContactInfo, ReportID: TLSReportIDPart(b.cfg.Sender, b.w, part),
		DateRange: TLSDateRange{Start: begin, End: begin.Add(86399 * time.Second)}}
	hb, err := json.Marshal(head)
	if err != nil {
		return nil, err
	}
	// Replace the empty policies array with a streamed one.
	hb = bytes.TrimSuffix(hb, []byte(`"policies":null}`))
	return append(hb, `"policies":[`...), nil
}

func (b *tlsBuilder) fits(n int64) bool {
	return b.max <= 0 || b.part.bound(n, int64(len(tlsCloseTag))) <= b.max
}

// fitsEmpty reports whether n octets of policies fit a fresh part.
func (b *tlsBuilder) fitsEmpty(n int64) (bool, error) {
	if b.max <= 0 {
		return true, nil
	}
	hb, err := b.header(len(b.files) + 2)
	if err != nil {
		return false, err
	}
	// A fresh part has emitted the 10-octet gzip header; counting 16
	// keeps fitsEmpty(n) ⇒ fits(n) on a fresh part.
	return sizeBound(16, int64(len(hb))+n+2+int64(len(tlsCloseTag))) <= b.max, nil
}

func (b *tlsBuilder) startPart() error {
	part := len(b.files) + 1
	begin := DayStart(b.w.Day).Unix()
	b.cur = ReportFile{Window: b.w, Part: part, ReportID: TLSReportIDPart(b.cfg.Sender, b.w, part),
		FileName: TLSFileNamePart(b.cfg.Sender, b.w, part), Begin: begin, End: begin + 86399}
	hb, err := b.header(part)
	if err != nil {
		return err
	}
	if b.max > 0 && sizeBound(0, int64(len(hb))+int64(len(tlsCloseTag))) > b.max {
		return fmt.Errorf("size cap %d is smaller than the report header", b.max)
	}
	out, err := b.open(b.cur)
	if err != nil {
		return err
	}
	b.part.open(out, "", DayStart(b.w.Day+1))
	b.npol = 0
	return b.part.write(hb)
}

func (b *tlsBuilder) finishPart() error {
	size, err := b.part.finish(tlsCloseTag)
	if err != nil {
		return err
	}
	b.cur.Size = size
	b.files = append(b.files, b.cur)
	return nil
}

// tryWrite writes one encoded policy into the current part if it fits.
func (b *tlsBuilder) tryWrite(blob []byte, rows int, sessions uint64) (bool, error) {
	n := int64(len(blob)) + 2
	if !b.fits(n) {
		if b.part.pending == 0 {
			return false, nil
		}
		// Measure exactly what the pending input compressed to.
		if err := b.part.flush(); err != nil {
			return false, err
		}
		if !b.fits(n) {
			return false, nil
		}
	}
	sep := "\n"
	if b.npol > 0 {
		sep = ",\n"
	}
	if err := b.part.write([]byte(sep)); err != nil {
		return false, err
	}
	if err := b.part.write(blob); err != nil {
		return false, err
	}
	b.npol++
	b.cur.Rows += rows
	b.cur.Messages += sessions
	return true, nil
}

// addPolicy writes a policy into the current part, or a new one, or
// splits it by failure details when it does not fit a part on its own.
func (b *tlsBuilder) addPolicy(pd *TLSPolicyData, rows int, maySplit bool) error {
	blob, err := json.Marshal(pd)
	if err != nil {
		return err
	}
	sessions := pd.Summary.TotalSuccessfulSessionCount + pd.Summary.TotalFailureSessionCount
	if !b.part.isOpen() {
		if err := b.startPart(); err != nil {
			return err
		}
	}
	if ok, err := b.tryWrite(blob, rows, sessions); ok || err != nil {
		return err
	}
	if b.npol > 0 {
		if err := b.finishPart(); err != nil {
			return err
		}
		if err := b.startPart(); err != nil {
			return err
		}
		if ok, err := b.tryWrite(blob, rows, sessions); ok || err != nil {
			return err
		}
	}
	if !maySplit {
		return fmt.Errorf("a piece of policy %s (%d octets) does not fit the size cap %d", pd.Policy.PolicyType, len(blob), b.max)
	}
	return b.splitPolicy(pd)
}

// splitPolicy divides a policy too large for one part into pieces that
// each fit an empty part, greedily in failure-detail order.
func (b *tlsBuilder) splitPolicy(pd *TLSPolicyData) error {
	// The size of a piece is its shell plus its details; the shell is
	// measured with the largest counts any piece can have.
	shell := TLSPolicyData{Policy: pd.Policy, Summary: pd.Summary}
	sb, err := json.Marshal(shell)
	if err != nil {
		return err
	}
	shellLen := int64(len(sb) + len(`,"failure-details":[]`))
	piece := TLSPolicyData{Policy: pd.Policy, Summary: TLSSummary{TotalSuccessfulSessionCount: pd.Summary.TotalSuccessfulSessionCount}}
	size := shellLen
	rows := 0
	if piece.Summary.TotalSuccessfulSessionCount > 0 {
		rows = 1
	}
	emit := func() error {
		if len(piece.FailureDetails) == 0 && piece.Summary.TotalSuccessfulSessionCount == 0 {
			return nil
		}
		if err := b.addPolicy(&piece, rows, false); err != nil {
			return err
		}
		piece = TLSPolicyData{Policy: pd.Policy}
		size, rows = shellLen, 0
		return nil
	}
	// Pieces of at most a quarter of the cap (uncompressed) pack several
	// to a part; a piece that must be larger only needs to fit an empty
	// part.
	target := b.max / 4
	for _, fd := range pd.FailureDetails {
		db, err := json.Marshal(fd)
		if err != nil {
			return err
		}
		add := int64(len(db) + 1)
		ok, err := b.fitsEmpty(size + add)
		if err != nil {
			return err
		}
		if ok && size+add > target && len(piece.FailureDetails) > 0 {
			ok = false
		}
		if !ok {
			if len(piece.FailureDetails) == 0 && piece.Summary.TotalSuccessfulSessionCount == 0 {
				return fmt.Errorf("a single failure detail (%d octets) does not fit the size cap %d", len(db), b.max)
			}
			if err := emit(); err != nil {
				return err
			}
			if ok, err := b.fitsEmpty(size + add); err != nil || !ok {
				return errors.Join(err, fmt.Errorf("a single failure detail (%d octets) does not fit the size cap %d", len(db), b.max))
			}
		}
		piece.FailureDetails = append(piece.FailureDetails, fd)
		piece.Summary.TotalFailureSessionCount += fd.FailedSessionCount
		size += add
		rows++
	}
	if len(piece.FailureDetails) == 0 && piece.Summary.TotalSuccessfulSessionCount > 0 && len(pd.FailureDetails) == 0 {
		return fmt.Errorf("a policy without failure details (%d octets) does not fit the size cap %d", shellLen, b.max)
	}
	return emit()
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}
