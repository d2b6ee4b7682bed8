package reportgen

import (
	"bytes"
	"compress/gzip"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const schemaDir = "../../shared/conformance/schemas"

var testCfg = ReportConfig{OrgName: "Receiver Org", Email: "dmarc-reports@receiver.example",
	Generator: "authpipe test", Receiver: "receiver.example", ExtraContactInfo: "https://receiver.example/dmarc"}

// parsedReport is the subset of the XML read back by tests.
type parsedReport struct {
	XMLName  xml.Name `xml:"feedback"`
	ReportID string   `xml:"report_metadata>report_id"`
	Begin    int64    `xml:"report_metadata>date_range>begin"`
	Domain   string   `xml:"policy_published>domain"`
	Records  []struct {
		SourceIP string `xml:"row>source_ip"`
		Count    uint64 `xml:"row>count"`
		Disp     string `xml:"row>policy_evaluated>disposition"`
		Reasons  []struct {
			Type    string `xml:"type"`
			Comment string `xml:"comment"`
		} `xml:"row>policy_evaluated>reason"`
		HeaderFrom string `xml:"identifiers>header_from"`
		DKIM       []struct {
			Domain, Selector, Result string
		} `xml:"auth_results>dkim"`
	} `xml:"record"`
}

func gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// xmllint validates doc against a schema. When xmllint or the conformance
// directory is missing it logs that validation was skipped (and the schema
// test itself skips), so the other checks of a test still run.
func xmllint(t *testing.T, schema string, doc []byte) bool {
	t.Helper()
	path, err := exec.LookPath("xmllint")
	if err != nil {
		t.Log("xmllint not installed (apt-get install libxml2-utils): schema validation skipped")
		return false
	}
	if _, err := os.Stat(schema); err != nil {
		t.Logf("conformance schemas missing (%v): schema validation skipped", err)
		return false
	}
	f := filepath.Join(t.TempDir(), "report.xml")
	os.WriteFile(f, doc, 0o600)
	out, err := exec.Command(path, "--noout", "--schema", schema, f).CombinedOutput()
	if err != nil {
		t.Fatalf("xmllint %s: %v\n%s\n%s", schema, err, out, doc[:min(len(doc), 3000)])
	}
	return true
}

func fillStore(t testing.TB, s *Store, n int) map[string]uint64 {
	a := NewAggregator()
	want := map[string]uint64{}
	for i := 0; i < n; i++ {
		v := mkVerdict(i, testDay.Add(time.Duration(i%86400)*time.Second))
		if i%5 == 0 {
			v.Envelope.ClientIP = fmt.Sprintf("2001:db8::%x", i%300)
		}
		if i%13 == 0 {
			v.SPF = nil
			v.Envelope.MailFrom = ""
		}
		if err := a.Add(v); err != nil {
			t.Fatal(err)
		}
		want[sourceIP(v.Envelope.ClientIP, false)]++
	}
	if _, err := s.Merge(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
	return want
}

func buildAll(t testing.TB, s *Store, cfg ReportConfig) ([]ReportFile, [][]byte) {
	w := Window{"example.com", DayOf(testDay)}
	wi, err := s.WindowInfo(KindDMARC, w)
	if err != nil || wi == nil {
		t.Fatal(err)
	}
	var bufs []*bytes.Buffer
	files, err := BuildDMARC(s, w, wi.Policy, cfg, func(ReportFile) (io.Writer, error) {
		b := &bytes.Buffer{}
		bufs = append(bufs, b)
		return b, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, b := range bufs {
		out = append(out, b.Bytes())
	}
	return files, out
}

func TestDMARCReportSchemas(t *testing.T) {
	for _, c := range []struct {
		format Format
		schema string
	}{
		{FormatRFC9990, schemaDir + "/dmarcbis-aggregate/dmarc-xml-0.2.xsd"},
		{FormatRFC7489, schemaDir + "/rfc7489/rfc7489-appendix-c.xsd"},
	} {
		t.Run(string(c.format), func(t *testing.T) {
			now := testDay
			s := openTestStore(t, &now)
			want := fillStore(t, s, 3000)
			cfg := testCfg
			cfg.Format = c.format
			files, gz := buildAll(t, s, cfg)
			if len(files) != 1 {
				t.Fatalf("%d files", len(files))
			}
			f := files[0]
			if f.FileName != fmt.Sprintf("receiver.example!example.com!%d!%d!%s.xml.gz", testDay.Unix(), testDay.Unix()+86399, f.ReportID) {
				t.Fatalf("file name %s", f.FileName)
			}
			doc := gunzip(t, gz[0])
			checkCounts(t, [][]byte{doc}, want)
			if c.format == FormatRFC9990 && !bytes.Contains(doc, []byte(`<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">`)) {
				t.Fatal("namespace missing")
			}
			if !xmllint(t, c.schema, doc) {
				t.Skip("schema validation unavailable")
			}
			t.Logf("%s: %d rows, %d messages, %d octets gz, valid against %s", c.format, f.Rows, f.Messages, f.Size, filepath.Base(c.schema))
		})
	}
}

func checkCounts(t *testing.T, docs [][]byte, want map[string]uint64) {
	t.Helper()
	got := map[string]uint64{}
	ids := map[string]bool{}
	for _, doc := range docs {
		var r parsedReport
		if err := xml.Unmarshal(doc, &r); err != nil {
			t.Fatal(err)
		}
		if ids[r.ReportID] {
			t.Fatalf("duplicate report id %s", r.ReportID)
		}
		ids[r.ReportID] = true
		if len(r.Records) == 0 {
			t.Fatal("report without records")
		}
		for _, rec := range r.Records {
			got[sourceIP(rec.SourceIP, false)] += rec.Count
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("source %s: count %d want %d", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d sources want %d", len(got), len(want))
	}
}

func TestDMARCReportSplit(t *testing.T) {
	now := testDay
	s := openTestStore(t, &now)
	want := fillStore(t, s, 3000)
	cfg := testCfg
	cfg.MaxSize = 6000
	files, gz := buildAll(t, s, cfg)
	if len(files) < 3 {
		t.Fatalf("expected a split, got %d files", len(files))
	}
	var docs [][]byte
	rows := 0
	names := map[string]bool{}
	for i, f := range files {
		if int64(len(gz[i])) > cfg.MaxSize || f.Size != int64(len(gz[i])) {
			t.Fatalf("part %d: %d octets over cap %d", f.Part, len(gz[i]), cfg.MaxSize)
		}
		if names[f.FileName] {
			t.Fatal("duplicate file name")
		}
		names[f.FileName] = true
		rows += f.Rows
		doc := gunzip(t, gz[i])
		docs = append(docs, doc)
		xmllint(t, schemaDir+"/dmarcbis-aggregate/dmarc-xml-0.2.xsd", doc)
	}
	checkCounts(t, docs, want)
	s.CloseWindow(KindDMARC, Window{"example.com", DayOf(testDay)})
	wi, _ := s.WindowInfo(KindDMARC, Window{"example.com", DayOf(testDay)})
	if uint64(rows) != wi.Rows {
		t.Fatalf("rows %d want %d", rows, wi.Rows)
	}
	t.Logf("split into %d reports under %d octets; all %d rows present", len(files), cfg.MaxSize, rows)
	// Stable: rebuilding gives the same ids and names.
	files2, _ := buildAll(t, s, cfg)
	for i := range files {
		if files[i].ReportID != files2[i].ReportID || files[i].FileName != files2[i].FileName {
			t.Fatal("report ids not stable")
		}
	}
	// A cap too small for one record is an error, not a silent drop.
	cfg.MaxSize = 900
	w := Window{"example.com", DayOf(testDay)}
	if _, err := BuildDMARC(s, w, wi.Policy, cfg, func(ReportFile) (io.Writer, error) { return io.Discard, nil }); err == nil || !strings.Contains(err.Error(), "cap") {
		t.Fatalf("tiny cap: %v", err)
	}
}

// BenchmarkBuildDMARC builds one gzip report of 100,000 rows from the
// store.
func BenchmarkBuildDMARC(b *testing.B) {
	now := testDay
	s := openTestStore(b, &now)
	for _, p := range benchPartials(1, 100000, 100000) {
		if _, err := s.Merge(p, nil); err != nil {
			b.Fatal(err)
		}
	}
	w := Window{"example.com", DayOf(testDay)}
	wi, _ := s.WindowInfo(KindDMARC, w)
	if wi.Rows != 100000 {
		b.Fatalf("rows %d", wi.Rows)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var cw countWriter
		cw.w = io.Discard
		files, err := BuildDMARC(s, w, wi.Policy, testCfg, func(ReportFile) (io.Writer, error) { return &cw, nil })
		if err != nil || files[0].Rows != 100000 {
			b.Fatal(err)
		}
		b.ReportMetric(float64(cw.n), "gz-octets")
	}
}
