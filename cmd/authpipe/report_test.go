package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages/verdict"
)

func fillReportStore(t *testing.T, dir string) {
	t.Helper()
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	s, err := reportgen.OpenStore(reportStoreDir(dir), func() time.Time { return day.Add(time.Hour) })
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
	// The settings come from run's YAML file: its run-only keys are
	// skipped, a key no command knows is refused.
	cfgFile := filepath.Join(dir, "authpipe.yaml")
	yaml := "data-dir: " + dir + "\nzone: " + zone + "\nreceiver: r.example\nfrom: reports@r.example\nbrokers: [k1:9092]\nmax-in-flight: 64\nreport-interval: 5m\n"
	os.WriteFile(cfgFile, []byte(yaml), 0o600)
	os.WriteFile(filepath.Join(dir, "typo.yaml"), []byte(yaml+"recevier: x\n"), 0o600)
	if out, code = runCmd(t, "report", "send", "--config", filepath.Join(dir, "typo.yaml")); code != exitUsage || !strings.Contains(out, "recevier") {
		t.Fatalf("send with a typo in the config (%d): %s", code, out)
	}
	out, code = runCmd(t, "report", "send", "--config", cfgFile)
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

// TestDeliveryFlagErrors: report delivery settings that cannot work are
// usage errors (exit 2), found before anything starts, in `run` and
// `report send` alike.
func TestDeliveryFlagErrors(t *testing.T) {
	dir := t.TempDir()
	fillReportStore(t, dir)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	rsaFile, edFile := filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "ed.pem")
	writePEM(t, rsaFile, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	writePEM(t, edFile, "PRIVATE KEY", edDER)
	zone := "../../examples/example.zone"
	ok := []string{"--receiver", "r.example", "--from", "reports@r.example", "--zone", zone}
	for name, args := range map[string][]string{
		"receiver without from":  {"--receiver", "r.example", "--zone", zone},
		"from without receiver":  {"--from", "reports@r.example", "--zone", zone},
		"from not an address":    {"--receiver", "r.example", "--from", "r.example", "--zone", zone},
		"same selector twice":    append(ok, "--dkim-key", "s1="+rsaFile, "--dkim-key", "s1="+edFile),
		"default selector twice": append(ok, "--dkim-key", rsaFile, "--dkim-key", edFile),
		"unaligned dkim domain":  append(ok, "--dkim-key", rsaFile, "--dkim-domain", "other.example"),
		"not a key":              append(ok, "--dkim-key", "s1="+zone),
		"bad allow prefix":       append(ok, "--allow", "127.0.0.1"),
		"bad smarthost":          append(ok, "--smarthost", "relay.example"),
		"dest cap without size":  append(ok, "--dest-max-size", "mailto:a@b.example"),
		"dest cap bad size":      append(ok, "--dest-max-size", "b.example=10x"),
		"suppress not a URI":     append(ok, "--suppress", "a@b.example"),
	} {
		for _, cmd := range [][]string{{"report", "send", "--data-dir", dir}, {"run", "--data-dir", t.TempDir(), "--http-addr", ""}} {
			out, code := runCmd(t, append(cmd, args...)...)
			if code != exitUsage {
				t.Errorf("%s: %s: exit %d, want %d: %s", cmd[0], name, code, exitUsage, out)
			}
		}
	}
	// An RSA and an Ed25519 key at once, in an aligned subdomain.
	out, code := runCmd(t, append([]string{"report", "send", "--data-dir", dir, "--dkim-key", "rsa=" + rsaFile, "--dkim-key", "ed=" + edFile,
		"--dkim-domain", "mail.r.example"}, ok...)...)
	if code != 0 {
		t.Fatalf("send with two keys (%d): %s", code, out)
	}
}

// TestDeliveryFlagsCapsAndSuppression: --dest-max-size and --suppress
// reach the Reporter, keyed in lower case.
func TestDeliveryFlagsCapsAndSuppression(t *testing.T) {
	var d deliveryFlags
	f := pflag.NewFlagSet("t", pflag.ContinueOnError)
	d.register(f)
	if err := f.Parse([]string{"--receiver", "r.example", "--from", "reports@r.example",
		"--dest-max-size", "mailto:Agg@B.example=2m", "--dest-max-size", "c.example=1500",
		"--suppress", "mailto:Gone@D.example"}); err != nil {
		t.Fatal(err)
	}
	r, err := d.reporter(nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if r.Caps["mailto:agg@b.example"] != 2<<20 || r.Caps["c.example"] != 1500 || len(r.Caps) != 2 {
		t.Errorf("caps %v", r.Caps)
	}
	if !r.Suppressed["mailto:gone@d.example"] || len(r.Suppressed) != 1 {
		t.Errorf("suppressed %v", r.Suppressed)
	}
	for in, want := range map[string]int64{"10": 10, "4k": 4096, "10m": 10 << 20, "1G": 1 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "-", "9223372036854775807g"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestReportGrace: --report-grace decides which days are due. The store's
// day (2026-11-20) ended days ago: with a grace of 1000 hours it is still
// open, with the default it closes.
func TestReportGrace(t *testing.T) {
	dir := t.TempDir()
	fillReportStore(t, dir)
	out, code := runCmd(t, "report", "close", "--data-dir", dir, "--due", "--report-grace", "1000h")
	if code != 0 || strings.Contains(out, "closed dmarc example.com/2026-11-20") {
		t.Fatalf("grace 1000h (%d): %s", code, out)
	}
	out, code = runCmd(t, "report", "close", "--data-dir", dir, "--due")
	if code != 0 || !strings.Contains(out, "closed dmarc example.com/2026-11-20") {
		t.Fatalf("default grace (%d): %s", code, out)
	}
	if _, code := runCmd(t, "report", "close", "--data-dir", dir, "--due", "--report-grace", "0s"); code != exitUsage {
		t.Fatalf("grace 0: exit %d, want %d", code, exitUsage)
	}
}
