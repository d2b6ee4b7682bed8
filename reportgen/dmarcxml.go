package reportgen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Format selects the aggregate report format.
type Format string

const (
	// FormatRFC9990 is the DMARCbis aggregate format (RFC 9990, namespace
	// urn:ietf:params:xml:ns:dmarc-2.0, schema dmarc-xml-0.2.xsd).
	FormatRFC9990 Format = "rfc9990"
	// FormatRFC7489 is RFC 7489 Appendix C (no namespace, pct required,
	// no np/testing/discovery_method, IPv6 source addresses in full form).
	FormatRFC7489 Format = "rfc7489"
)

// Namespace is the RFC 9990 XML namespace.
const Namespace = "urn:ietf:params:xml:ns:dmarc-2.0"

// ReportConfig describes the reporting organisation (RFC 9990 2.1.1
// report_metadata) and the output.
type ReportConfig struct {
	OrgName          string
	Email            string
	ExtraContactInfo string
	// Generator names the software (RFC 9990 generator; not in RFC 7489).
	Generator string
	// Receiver is the reporting domain: the file name's receiver part
	// (RFC 9990 "filename") and the Submitter in the Subject.
	Receiver string
	Format   Format
	// MaxSize caps the size of one gzip report file in octets; 0 means no
	// cap. Rows that do not fit go into further reports (parts) of the
	// same window; a row that cannot fit even alone is an error.
	MaxSize int64
}

// ReportFile describes one built report (one part of a window).
type ReportFile struct {
	Window
	Part int // 1-based
	// ReportID is the report_id, also the file name's unique-id and the
	// Subject's Report-ID: alphanumeric, derived from receiver, domain, day
	// and part only, so a rebuilt or re-sent report keeps it.
	ReportID string
	FileName string
	Begin    int64
	End      int64
	Rows     int
	Messages uint64
	Size     int64
}

// ReportID returns the stable report id of a window part.
func ReportID(receiver string, w Window, part int) string {
	h := sha256.Sum256([]byte(strings.ToLower(receiver) + "\x00" + w.Domain + "\x00" + strconv.Itoa(int(w.Day))))
	return strings.ReplaceAll(DayString(w.Day), "-", "") + hex.EncodeToString(h[:6]) + "p" + strconv.Itoa(part)
}

// FileName returns the RFC 9990 file name:
// receiver!policy-domain!begin!end!unique-id.xml.gz.
func FileName(receiver string, w Window, part int) string {
	begin := DayStart(w.Day).Unix()
	return fmt.Sprintf("%s!%s!%d!%d!%s.xml.gz", strings.ToLower(receiver), w.Domain, begin, begin+86399, ReportID(receiver, w, part))
}

// RowSource iterates the rows of a window in a stable order.
type RowSource interface {
	ForEachRow(w Window, fn func(Row) error) error
}

// BuildDMARC streams the aggregate report(s) of window w from src: rows
// are read one at a time from the store cursor and encoded token by token
// (encoding/xml), so memory stays bounded whatever the row count. open is
// called for each part and receives the gzip file; the files are returned
// in order. Together the parts carry every row exactly once. A window
// without rows gives no report.
func BuildDMARC(src RowSource, w Window, policy PolicyPublished, cfg ReportConfig, open func(ReportFile) (io.Writer, error)) ([]ReportFile, error) {
	if cfg.Receiver == "" || cfg.OrgName == "" || cfg.Email == "" {
		return nil, errors.New("reportgen: report config needs receiver, org_name and email")
	}
	b := &xmlBuilder{cfg: cfg, w: w, policy: policy, open: open}
	b.recEnc = xml.NewEncoder(&b.recBuf)
	err := src.ForEachRow(w, b.add)
	if err == nil && b.part.isOpen() {
		err = b.finishPart()
	}
	if err != nil {
		return b.files, fmt.Errorf("reportgen: build report %s: %w", w, err)
	}
	return b.files, nil
}

type xmlBuilder struct {
	cfg    ReportConfig
	w      Window
	policy PolicyPublished
	open   func(ReportFile) (io.Writer, error)
	files  []ReportFile

	cur    ReportFile
	part   gzPart
	recBuf bytes.Buffer
	recEnc *xml.Encoder
}

const closeTag = "\n</feedback>\n"

func (b *xmlBuilder) fits(n int64) bool {
	if b.cfg.MaxSize <= 0 {
		return true
	}
	return b.part.bound(n, int64(len(closeTag))) <= b.cfg.MaxSize
}

func (b *xmlBuilder) add(r Row) error {
	b.recBuf.Reset()
	if err := b.encodeRecord(r); err != nil {
		return err
	}
	rec := b.recBuf.Bytes()
	for attempt := 0; ; attempt++ {
		if !b.part.isOpen() {
			if err := b.startPart(); err != nil {
				return err
			}
		}
		if b.fits(int64(len(rec))) {
			break
		}
		if b.part.pending > 0 {
			// Measure exactly what the pending input compressed to.
			if err := b.part.flush(); err != nil {
				return err
			}
			if b.fits(int64(len(rec))) {
				break
			}
		}
		if b.cur.Rows == 0 {
			return fmt.Errorf("a single record (%d octets) does not fit the size cap %d", len(rec), b.cfg.MaxSize)
		}
		if err := b.finishPart(); err != nil {
			return err
		}
	}
	if err := b.part.write(rec); err != nil {
		return err
	}
	b.cur.Rows++
	b.cur.Messages += r.Count
	return nil
}

func (b *xmlBuilder) startPart() error {
	part := len(b.files) + 1
	begin := DayStart(b.w.Day).Unix()
	b.cur = ReportFile{Window: b.w, Part: part, ReportID: ReportID(b.cfg.Receiver, b.w, part),
		FileName: FileName(b.cfg.Receiver, b.w, part), Begin: begin, End: begin + 86399}
	out, err := b.open(b.cur)
	if err != nil {
		return err
	}
	b.part.open(out, strings.TrimSuffix(b.cur.FileName, ".gz"), DayStart(b.w.Day+1))
	var hdr bytes.Buffer
	if err := b.writeHeader(&hdr); err != nil {
		return err
	}
	if b.cfg.MaxSize > 0 && sizeBound(0, int64(hdr.Len())+int64(len(closeTag))) > b.cfg.MaxSize {
		return fmt.Errorf("size cap %d is smaller than the report header", b.cfg.MaxSize)
	}
	return b.part.write(hdr.Bytes())
}

func (b *xmlBuilder) finishPart() error {
	size, err := b.part.finish(closeTag)
	if err != nil {
		return err
	}
	b.cur.Size = size
	b.files = append(b.files, b.cur)
	return nil
}

type tokenWriter struct {
	e   *xml.Encoder
	err error
}

func (t *tokenWriter) start(name string, attrs ...xml.Attr) {
	if t.err == nil {
		t.err = t.e.EncodeToken(xml.StartElement{Name: xml.Name{Local: name}, Attr: attrs})
	}
}

func (t *tokenWriter) end(name string) {
	if t.err == nil {
		t.err = t.e.EncodeToken(xml.EndElement{Name: xml.Name{Local: name}})
	}
}

func (t *tokenWriter) text(s string) {
	if t.err == nil {
		t.err = t.e.EncodeToken(xml.CharData(s))
	}
}

func (t *tokenWriter) elem(name, value string) {
	t.start(name)
	t.text(value)
	t.end(name)
}

func (t *tokenWriter) opt(name, value string) {
	if value != "" {
		t.elem(name, value)
	}
}

func (t *tokenWriter) nl() {
	if t.err == nil {
		t.err = t.e.EncodeToken(xml.CharData("\n"))
	}
}

// writeHeader writes the XML declaration, <feedback>, version,
// report_metadata and policy_published.
func (b *xmlBuilder) writeHeader(out *bytes.Buffer) error {
	out.WriteString(xml.Header)
	enc := xml.NewEncoder(out)
	t := &tokenWriter{e: enc}
	is7489 := b.cfg.Format == FormatRFC7489
	if is7489 {
		t.start("feedback")
	} else {
		t.start("feedback", xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: Namespace})
	}
	t.nl()
	t.elem("version", "1.0")
	t.nl()
	t.start("report_metadata")
	t.elem("org_name", b.cfg.OrgName)
	t.elem("email", b.cfg.Email)
	t.opt("extra_contact_info", b.cfg.ExtraContactInfo)
	t.elem("report_id", b.cur.ReportID)
	t.start("date_range")
	t.elem("begin", strconv.FormatInt(b.cur.Begin, 10))
	t.elem("end", strconv.FormatInt(b.cur.End, 10))
	t.end("date_range")
	if !is7489 {
		t.opt("generator", b.cfg.Generator)
	}
	t.end("report_metadata")
	t.nl()
	p := b.policy
	t.start("policy_published")
	t.elem("domain", firstNonEmpty(p.Domain, b.w.Domain))
	t.opt("adkim", oneOf(p.ADKIM, "r", "s"))
	t.opt("aspf", oneOf(p.ASPF, "r", "s"))
	t.elem("p", firstNonEmpty(oneOf(p.P, "none", "quarantine", "reject"), "none"))
	t.opt("sp", oneOf(p.SP, "none", "quarantine", "reject"))
	if is7489 {
		pct := p.Pct
		if pct < 0 {
			pct = 100
		}
		t.elem("pct", strconv.Itoa(pct))
		t.opt("fo", p.FO)
	} else {
		t.opt("np", oneOf(p.NP, "none", "quarantine", "reject"))
		t.opt("discovery_method", oneOf(p.DiscoveryMethod, "psl", "treewalk"))
		t.opt("fo", p.FO)
		t.elem("testing", firstNonEmpty(oneOf(p.Testing, "y", "n"), "n"))
	}
	t.end("policy_published")
	t.nl()
	if t.err == nil {
		t.err = enc.Flush()
	}
	// The encoder's open <feedback> is closed by closeTag, written raw.
	return t.err
}

func (b *xmlBuilder) encodeRecord(r Row) error {
	t := &tokenWriter{e: b.recEnc}
	is7489 := b.cfg.Format == FormatRFC7489
	t.start("record")
	t.start("row")
	t.elem("source_ip", sourceIP(r.SourceIP, is7489))
	t.elem("count", strconv.FormatUint(r.Count, 10))
	t.start("policy_evaluated")
	disp := firstNonEmpty(oneOf(r.Disposition, "none", "pass", "quarantine", "reject"), "none")
	if is7489 && disp == "pass" {
		disp = "none"
	}
	t.elem("disposition", disp)
	t.elem("dkim", passFail(r.DKIMAligned))
	t.elem("spf", passFail(r.SPFAligned))
	for _, rs := range r.Reasons {
		typ, comment := reasonType(rs, is7489)
		t.start("reason")
		t.elem("type", typ)
		t.opt("comment", comment)
		t.end("reason")
	}
	t.end("policy_evaluated")
	t.end("row")
	t.start("identifiers")
	t.opt("envelope_to", r.EnvelopeTo)
	if is7489 {
		t.elem("envelope_from", r.EnvelopeFrom)
	} else {
		t.opt("envelope_from", r.EnvelopeFrom)
	}
	t.elem("header_from", r.HeaderFrom)
	t.end("identifiers")
	t.start("auth_results")
	for _, d := range r.DKIM {
		t.start("dkim")
		t.elem("domain", d.Domain)
		t.elem("selector", d.Selector)
		t.elem("result", firstNonEmpty(oneOf(d.Result, "none", "pass", "fail", "policy", "neutral", "temperror", "permerror"), "permerror"))
		t.end("dkim")
	}
	spf := r.SPF
	if spf == nil && is7489 {
		// RFC 7489 requires an spf element: report "none" for the MAIL
		// FROM domain (or the author domain for the null sender).
		spf = &SPFResult{Domain: firstNonEmpty(r.EnvelopeFrom, r.HeaderFrom), Scope: "mfrom", Result: "none"}
	}
	if spf != nil {
		t.start("spf")
		t.elem("domain", spf.Domain)
		if is7489 {
			t.elem("scope", firstNonEmpty(oneOf(spf.Scope, "helo", "mfrom"), "mfrom"))
		} else if spf.Scope == "mfrom" {
			t.elem("scope", "mfrom")
		}
		valid := []string{"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}
		if !is7489 {
			valid = append(valid, "policy")
		}
		t.elem("result", firstNonEmpty(oneOf(spf.Result, valid...), "permerror"))
		t.end("spf")
	}
	t.end("auth_results")
	t.end("record")
	t.nl()
	if t.err == nil {
		t.err = b.recEnc.Flush()
	}
	return t.err
}

func passFail(ok bool) string {
	if ok {
		return "pass"
	}
	return "fail"
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// oneOf returns the lower-cased v when it is one of allowed, else "".
func oneOf(v string, allowed ...string) string {
	v = strings.ToLower(strings.TrimSpace(v))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	return ""
}

// reasonType maps an override reason onto the format's enumeration; an
// unknown type becomes "other" with the original type in the comment.
func reasonType(r Reason, is7489 bool) (string, string) {
	valid := []string{"local_policy", "mailing_list", "other", "trusted_forwarder"}
	if is7489 {
		valid = append(valid, "forwarded", "sampled_out")
	} else {
		valid = append(valid, "policy_test_mode")
	}
	if t := oneOf(r.Type, valid...); t != "" {
		return t, r.Comment
	}
	c := r.Type
	if r.Comment != "" {
		c += ": " + r.Comment
	}
	return "other", c
}

// sourceIP renders the address; RFC 7489's schema only accepts IPv6 in
// the full eight-group form.
func sourceIP(s string, is7489 bool) string {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return s
	}
	ip = ip.Unmap()
	if is7489 && ip.Is6() {
		return ip.StringExpanded()
	}
	return ip.String()
}
