package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages/verdict"
)

func fillReportStore(t *testing.T, dir string) {
	t.Helper()
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	s, err := reportgen.OpenStore(dir, func() time.Time { return day.Add(time.Hour) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := reportgen.NewAggregator()
	for i := 0; i < 10; i++ {
		v := &verdict.Verdict{Version: 1, EvaluatedAt: day.Add(time.Minute), Envelope: verdict.Envelope{ClientIP: "192.0.2.1", MailFrom: "a@example.com"},
			HeaderFrom: []string{"example.com"}, SPF: &verdict.SPF{Result: "pass", Domain: "example.com", Identity: "mailfrom"},
			DMARC: &verdict.DMARC{Result: "pass", PolicyDomain: "example.com", SPFAligned: true, Disposition: "none", AppliedPolicy: "p",
				Policy: &verdict.Policy{Domain: "example.com", P: "reject", ADKIM: "r", ASPF: "r"}}}
		if err := a.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Merge(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
}

func runCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String() + errb.String(), code
}

func TestReportCommands(t *testing.T) {
	dir := t.TempDir()
	fillReportStore(t, dir)
	out, code := runCmd(t, "report", "list", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "example.com") || !strings.Contains(out, "2026-11-20") || !strings.Contains(out, "open") {
		t.Fatalf("list (%d): %s", code, out)
	}
	out, code = runCmd(t, "report", "show", "--data-dir", dir, "--domain", "example.com", "--day", "2026-11-20", "--receiver", "r.example")
	if code != 0 {
		t.Fatalf("show (%d): %s", code, out)
	}
	var fb struct {
		Count int `xml:"record>row>count"`
	}
	if err := xml.Unmarshal([]byte(out), &fb); err != nil || fb.Count != 10 {
		t.Fatalf("show: %v %d\n%s", err, fb.Count, out)
	}
	out, code = runCmd(t, "report", "close", "--data-dir", dir, "--domain", "example.com", "--day", "2026-11-20")
	if code != 0 || !strings.Contains(out, "closed dmarc example.com/2026-11-20") {
		t.Fatalf("close (%d): %s", code, out)
	}
	out, _ = runCmd(t, "report", "list", "--data-dir", dir, "--json")
	if !strings.Contains(out, `"State": "closed"`) {
		t.Fatalf("list json: %s", out)
	}
	// send with a zone that has no DMARC record for example.com: the
	// window has no destination and is dropped.
	zone := filepath.Join(dir, "zone.txt")
	os.WriteFile(zone, []byte("example.org. 300 IN TXT \"x\"\n"), 0o600)
	out, code = runCmd(t, "report", "send", "--data-dir", dir, "--zone", zone, "--receiver", "r.example", "--from", "reports@r.example")
	if code != 0 || !strings.Contains(out, "no-rua=1") {
		t.Fatalf("send (%d): %s", code, out)
	}
	if _, code = runCmd(t, "report", "show", "--data-dir", dir); code != exitUsage {
		t.Fatalf("show without window: exit %d", code)
	}
	if _, code = runCmd(t, "report", "list", "--data-dir", filepath.Join(dir, "missing")); code != exitFailure {
		t.Fatalf("missing dir: exit %d", code)
	}
}
