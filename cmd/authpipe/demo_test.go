package main

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "reports")
	code, out, stderr := cli(t, 60*time.Second, "demo", "--messages", "200", "--domains", "6", "--max-in-flight", "32", "--reports-dir", dir)
	if code != 0 {
		t.Fatalf("demo: %d %s\n%s", code, stderr, out)
	}
	if !strings.Contains(out, "200") {
		t.Errorf("demo output lacks the message count:\n%s", out)
	}
	for _, want := range []string{"messages ", "DNS cache hit rate", "legit → pass/none", "spf-only → pass/none",
		"forwarded → pass/none", "forwarded-arc → fail/none (trusted_forwarder)", "spoof → fail/",
		"altered → pass/none", "null-sender → pass/none", "dns-failure → temperror/none"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}

	// The report summary: one line per sender domain, and the files it
	// names are in --reports-dir with the counts it prints. 200 messages,
	// every 11th a DNS failure without a DMARC policy: 182 are reported.
	line := regexp.MustCompile(`(?m)^  (sender\d\.example)\s+(\d{4}-\d\d-\d\d)\s+(\d+)\s+(\d+)\s+((?:\w+=\d+ ?)+)\s+(\S+\.xml\.gz)\s+(\d+)$`)
	rows := line.FindAllStringSubmatch(out, -1)
	if len(rows) != 6 {
		t.Fatalf("%d report lines, want 6:\n%s", len(rows), out)
	}
	var total uint64
	for _, r := range rows {
		var msgs, size uint64
		mustScan(t, r[4], &msgs)
		mustScan(t, r[7], &size)
		var disp uint64
		for _, kv := range strings.Fields(r[5]) {
			var n uint64
			mustScan(t, kv[strings.IndexByte(kv, '=')+1:], &n)
			disp += n
		}
		if disp != msgs {
			t.Errorf("%s: dispositions add up to %d, messages %d", r[1], disp, msgs)
		}
		b, err := os.ReadFile(filepath.Join(dir, r[6]))
		if err != nil || uint64(len(b)) != size || !strings.HasPrefix(r[6], "rcpt.example!"+r[1]+"!") {
			t.Fatalf("report file %s: %v (%d octets, summary says %d)", r[6], err, len(b), size)
		}
		doc := gunzipBytes(t, b)
		validateDMARCXML(t, doc)
		var rep struct {
			Domain string   `xml:"policy_published>domain"`
			Counts []uint64 `xml:"record>row>count"`
		}
		if err := xml.Unmarshal(doc, &rep); err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range rep.Counts {
			n += c
		}
		if rep.Domain != r[1] || n != msgs {
			t.Errorf("%s: report for %s counts %d messages, summary says %d", r[6], rep.Domain, n, msgs)
		}
		total += msgs
	}
	if total != 182 {
		t.Errorf("reports count %d messages, want 182", total)
	}
	for _, want := range []string{"6 reports, 182 messages; files in " + dir, "delivered 6 of 6 by SMTP",
		"6 mails with both DKIM signatures (rsa-sha256, ed25519-sha256) verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func mustScan(t *testing.T, s string, v *uint64) {
	t.Helper()
	if _, err := fmt.Sscan(s, v); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
}
