package reportgen

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/authpipe/authpipe/internal/schematest"
)

func tlsEvents() []TLSResult {
	base := TLSResult{Version: 1, Timestamp: testDay.Add(5 * time.Hour), PolicyDomain: "company-y.example", PolicyType: "sts",
		PolicyStrings: []string{"version: STSv1", "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"},
		PolicyMXHosts: []string{"*.mail.company-y.example"}, MXHost: "mx1.mail.company-y.example",
		SendingIP: "2001:db8:abcd:12::1", ReceivingIP: "203.0.113.56", Result: "success"}
	var out []TLSResult
	for i := 0; i < 50; i++ {
		out = append(out, base)
	}
	f := base
	f.Result, f.FailureReasonCode = "certificate-expired", "X509_V_ERR_CERT_HAS_EXPIRED"
	for i := 0; i < 7; i++ {
		out = append(out, f)
	}
	f.Result, f.MXHost, f.ReceivingMXHELO = "starttls-not-supported", "mx2.mail.company-y.example", "mx2"
	f.FailureReasonCode, f.AdditionalInformation = "", "https://reports.example/info#x"
	for i := 0; i < 3; i++ {
		out = append(out, f)
	}
	n := TLSResult{Version: 1, Timestamp: testDay.Add(6 * time.Hour), PolicyDomain: "company-y.example", PolicyType: "no-policy-found",
		MXHost: "mx9.company-y.example", SendingIP: "192.0.2.1", Result: "success"}
	out = append(out, n, n)
	return out
}

func TestTLSEventSchema(t *testing.T) {
	s := schematest.Compile(t, "tls-results.schema.json")
	for _, ev := range tlsEvents()[48:] {
		b, _ := json.Marshal(ev)
		schematest.Validate(t, s, b)
		back, err := ParseTLSResult(b)
		if err != nil || back.Result != ev.Result {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{`{}`, `{"version":1}`, `{"version":1,"timestamp":"2026-11-20T00:00:00Z","policy_domain":"x","policy_type":"dane","result":"success"}`,
		`{"version":1,"timestamp":"2026-11-20T00:00:00Z","policy_domain":"x","policy_type":"sts","result":"bad"}`, `[`} {
		if _, err := ParseTLSResult([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzParseTLSResult(f *testing.F) {
	for _, ev := range tlsEvents()[55:] {
		b, _ := json.Marshal(ev)
		f.Add(b)
	}
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := ParseTLSResult(data)
		if err != nil {
			return
		}
		a := NewTLSAggregator()
		if err := a.Add(&ev); err != nil {
			t.Fatal(err)
		}
	})
}

func buildTLS(t *testing.T) (TLSReport, ReportFile, []byte) {
	now := testDay
	s := openTestStore(t, &now)
	a := NewTLSAggregator()
	for _, ev := range tlsEvents() {
		if err := a.Add(&ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.MergeTLS(a.Flush(), []Offset{{Topic: "mail.tls-results", Next: 62}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := Window{"company-y.example", DayOf(testDay)}
	rf, err := BuildTLSRPT(s, w, TLSReportConfig{OrganizationName: "Company-X", ContactInfo: "sts-reporting@company-x.example", Sender: "company-x.example"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	var rep TLSReport
	raw := gunzip(t, buf.Bytes())
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	return rep, rf, buf.Bytes()
}

func TestTLSReport(t *testing.T) {
	rep, rf, _ := buildTLS(t)
	if rf.FileName != "company-x.example!company-y.example!1795132800!1795219199!"+tlsUnique("company-x.example", rf.Window)+".json.gz" {
		t.Fatalf("file name %s", rf.FileName)
	}
	if len(rep.Policies) != 2 {
		t.Fatalf("policies %d", len(rep.Policies))
	}
	var sts, none *TLSPolicyData
	for i := range rep.Policies {
		switch rep.Policies[i].Policy.PolicyType {
		case "sts":
			sts = &rep.Policies[i]
		case "no-policy-found":
			none = &rep.Policies[i]
		}
	}
	if sts.Summary.TotalSuccessfulSessionCount != 50 || sts.Summary.TotalFailureSessionCount != 10 || len(sts.FailureDetails) != 2 {
		t.Fatalf("sts %+v", sts)
	}
	if none.Summary.TotalSuccessfulSessionCount != 2 || len(none.FailureDetails) != 0 {
		t.Fatalf("no-policy %+v", none)
	}
	if rep.DateRange.Start != testDay || rep.DateRange.End != testDay.Add(86399*time.Second) || rep.ReportID == "" {
		t.Fatalf("%+v", rep)
	}
}

// TestTLSRPTSamples parses the conformance samples with the report types
// and checks that re-encoding and parsing again gives the same report.
func TestTLSRPTSamples(t *testing.T) {
	dir := "../../shared/conformance/tlsrpt"
	files, _ := filepath.Glob(dir + "/*/*.json")
	if len(files) == 0 {
		t.Skip("conformance tlsrpt samples missing")
	}
	n := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rep TLSReport
		if err := json.Unmarshal(raw, &rep); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if rep.OrganizationName == "" || len(rep.Policies) == 0 || rep.DateRange.Start.IsZero() {
			t.Fatalf("%s: incomplete %+v", f, rep)
		}
		again, _ := json.Marshal(rep)
		var rep2 TLSReport
		if err := json.Unmarshal(again, &rep2); err != nil {
			t.Fatal(err)
		}
		b2, _ := json.Marshal(rep2)
		if !bytes.Equal(again, b2) {
			t.Fatalf("%s: round trip differs", f)
		}
		n++
	}
	t.Logf("%d/%d TLSRPT samples parsed and round-tripped", n, len(files))
	if n < 4 {
		t.Fatalf("only %d samples", n)
	}
}
