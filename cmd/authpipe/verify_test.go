package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/internal/schematest"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages/verdict"
)

// authpipe runs the command line in-process and returns exit code, stdout
// and stderr.
func authpipe(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func decodeVerdict(t *testing.T, out string) verdict.Verdict {
	t.Helper()
	schematest.Validate(t, schematest.Compile(t, "verdict.schema.json"), []byte(out))
	var v verdict.Verdict
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("verdict is not JSON: %v\n%s", err, out)
	}
	return v
}

// readmeArgs are the arguments of the README's verify example.
var readmeArgs = []string{"verify", "--zone", "../../examples/example.zone", "--ip", "192.0.2.10",
	"--helo", "mail.example.com", "--mail-from", "alice@example.com", "../../examples/message.eml"}

func TestVerifyBundledExample(t *testing.T) {
	code, out, errs := authpipe(t, "", readmeArgs...)
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	v := decodeVerdict(t, out)
	if v.SPF == nil || v.SPF.Result != "pass" || v.SPF.Domain != "example.com" {
		t.Errorf("spf = %+v, want pass for example.com", v.SPF)
	}
	if len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[1].Result != "pass" {
		t.Errorf("dkim = %+v, want two passing signatures (rsa2026, ed2026)", v.DKIM)
	}
	if v.ARC == nil || v.ARC.Result != "none" {
		t.Errorf("arc = %+v, want none", v.ARC)
	}
	if d := v.DMARC; d == nil || d.Result != "pass" || d.PolicyDomain != "example.com" || d.Disposition != "none" {
		t.Errorf("dmarc = %+v, want pass for example.com", d)
	}
	if !strings.HasPrefix(v.AuthenticationResults, "authpipe; spf=pass") {
		t.Errorf("authentication_results = %q", v.AuthenticationResults)
	}
	if v.Envelope.ClientIP != "192.0.2.10" || v.Envelope.MailFrom != "alice@example.com" {
		t.Errorf("envelope = %+v", v.Envelope)
	}
}

func TestVerifyStdinAndLF(t *testing.T) {
	raw, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	lf := strings.ReplaceAll(string(raw), "\r\n", "\n")
	args := append(append([]string{}, readmeArgs[:len(readmeArgs)-1]...), "-")
	code, out, errs := authpipe(t, lf, args...)
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	if v := decodeVerdict(t, out); v.SPF.Result != "pass" {
		t.Errorf("spf = %+v", v.SPF)
	}
}

// TestVerifyMboxFromLine: a message saved with its mbox "From " line is
// verified as the message after the line (both signatures pass, so not a
// byte was changed); an mbox of two messages is refused (exit 1); a message
// whose first field is From in the obsolete "From :" form is a message.
func TestVerifyMboxFromLine(t *testing.T) {
	raw, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, readmeArgs[:len(readmeArgs)-1]...), "-")
	one := "From alice@example.com Mon Nov 23 09:15:00 2026\r\n" + string(raw) + "\r\n"
	code, out, errs := authpipe(t, one, args...)
	if code != exitOK {
		t.Fatalf("one-message mbox: exit %d, stderr: %s", code, errs)
	}
	if v := decodeVerdict(t, out); v.Message != nil || len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[1].Result != "pass" || v.DMARC.Result != "pass" {
		t.Errorf("one-message mbox: message %+v, dkim %+v, dmarc %+v", v.Message, v.DKIM, v.DMARC)
	}
	code, _, errs = authpipe(t, one+one, args...)
	if code != exitFailure || !strings.Contains(errs, "more than one message") {
		t.Errorf("two-message mbox: exit %d, stderr: %s", code, errs)
	}
	obs := "From : alice@example.com\r\nSubject: x\r\n\r\nbody\r\n"
	code, out, errs = authpipe(t, obs, args...)
	if code != exitOK {
		t.Fatalf("obsolete From field: exit %d, stderr: %s", code, errs)
	}
	if v := decodeVerdict(t, out); v.Message != nil || len(v.HeaderFrom) != 1 || v.HeaderFrom[0] != "example.com" {
		t.Errorf("obsolete From field: message %+v, header_from %q", v.Message, v.HeaderFrom)
	}
}

func TestVerifySPFFailAndAt(t *testing.T) {
	args := []string{"verify", "--zone", "../../examples/example.zone", "--ip", "203.0.113.9",
		"--mail-from", "alice@example.com", "--at", "2026-05-01T12:00:00Z", "../../examples/message.eml"}
	code, out, errs := authpipe(t, "", args...)
	if code != exitOK {
		t.Fatalf("exit %d (a fail verdict still exits 0), stderr: %s", code, errs)
	}
	v := decodeVerdict(t, out)
	if v.SPF.Result != "fail" {
		t.Errorf("spf = %+v, want fail", v.SPF)
	}
	// Judged as of May 2026 the signatures (t= November 2026) lie in the
	// future: archived mail is re-scored as of its arrival.
	for _, d := range v.DKIM {
		if d.Result == "pass" {
			t.Errorf("dkim %s passed although its t= is after --at", d.Selector)
		}
	}
	if want := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC); !v.EvaluatedAt.Equal(want) || !v.Envelope.ReceivedAt.Equal(want) {
		t.Errorf("evaluated_at %v received_at %v, want %v", v.EvaluatedAt, v.Envelope.ReceivedAt, want)
	}
}

// TestVerifyResolverFlag sends the queries over real sockets to an
// in-process authoritative server.
func TestVerifyResolverFlag(t *testing.T) {
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddRR(dnstest.TXT("example.org", "v=spf1 ip4:198.51.100.0/24 -all", 300))
	code, out, errs := authpipe(t, "From: a@example.org\r\n\r\nhi\r\n", "verify", "--resolver", srv.Addr,
		"--ip", "198.51.100.7", "--mail-from", "a@example.org", "-")
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	if v := decodeVerdict(t, out); v.SPF.Result != "pass" {
		t.Errorf("spf = %+v", v.SPF)
	}
	if srv.Queries.Load() == 0 {
		t.Error("no query reached the DNS server")
	}
}

func TestVerifyNullSenderUsesHELO(t *testing.T) {
	code, out, errs := authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "--ip", "192.0.2.10",
		"--helo", "example.com", "../../examples/message.eml")
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	v := decodeVerdict(t, out)
	if v.SPF.Result != "pass" || v.SPF.Domain != "example.com" {
		t.Errorf("null sender: spf = %+v, want pass for postmaster@example.com", v.SPF)
	}
}

func TestVerifyExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"no file", []string{"verify"}, exitUsage},
		{"stdin among files", []string{"verify", "-", "b"}, exitUsage},
		{"bad concurrency", []string{"verify", "--concurrency", "0", "-"}, exitUsage},
		{"missing file of an archive", []string{"verify", "--zone", "../../examples/example.zone", "../../examples/message.eml", "/nonexistent/b.eml"}, exitFailure},
		{"bad ip", []string{"verify", "--ip", "300.1.1.1", "-"}, exitUsage},
		{"bad at", []string{"verify", "--at", "yesterday", "-"}, exitUsage},
		{"unknown flag", []string{"verify", "--nope", "-"}, exitUsage},
		{"zone and resolver", []string{"verify", "--zone", "x", "--resolver", "127.0.0.1:53", "-"}, exitUsage},
		{"resolver without port", []string{"verify", "--resolver", "127.0.0.1", "-"}, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"bad dmarc mode", []string{"verify", "--dmarc-mode", "rfc1234", "-"}, exitUsage},
		{"bad allow ip", []string{"verify", "--dmarc-allow-ip", "192.0.2.0/33", "-"}, exitUsage},
		{"bad deny ip", []string{"verify", "--dmarc-deny-ip", "mx.example", "-"}, exitUsage},
		{"bad trusted sealer", []string{"verify", "--trusted-arc-sealer", "a@b.example", "-"}, exitUsage},
		{"missing file", []string{"verify", "--zone", "../../examples/example.zone", "/nonexistent/message.eml"}, exitFailure},
		{"missing zone", []string{"verify", "--zone", "/nonexistent.zone", "-"}, exitFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := authpipe(t, "", tc.args...)
			if code != tc.want {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.want, errs)
			}
			if out != "" {
				t.Errorf("stdout should be empty on error, got %q", out)
			}
			if errs == "" {
				t.Error("stderr should explain the error")
			}
		})
	}
}

// TestVersion: --version names the build (version, revision, Go release).
func TestVersion(t *testing.T) {
	code, out, _ := authpipe(t, "", "--version")
	if code != exitOK || !strings.HasPrefix(out, "authpipe ") || !strings.Contains(out, runtime.Version()) || !strings.Contains(out, "revision ") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

// TestCommandLineMistakes: a mistyped command or flag is a usage error
// (exit 2) that suggests the likely one and points at the help of the
// command it was given to. Until session 24 `authpipe report sned` printed
// report's help and exited 0, so a typo in a cron job passed for success.
func TestCommandLineMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // the error line, then the help line
	}{
		{[]string{"rnu"}, `authpipe: unknown command "rnu" for "authpipe" (did you mean "run"?)` + "\nRun 'authpipe --help' for usage."},
		{[]string{"report", "sned"}, `authpipe: unknown command "sned" for "authpipe report" (did you mean "send"?)` + "\nRun 'authpipe report --help' for usage."},
		{[]string{"report", "frobnicate"}, `authpipe: unknown command "frobnicate" for "authpipe report"` + "\nRun 'authpipe report --help' for usage."},
		{[]string{"run", "--max-inflight", "3"}, `authpipe: unknown flag: --max-inflight (did you mean "max-in-flight"?)` + "\nRun 'authpipe run --help' for usage."},
		{[]string{"report", "list", "--dat-dir", "x"}, `authpipe: unknown flag: --dat-dir (did you mean "data-dir"?)` + "\nRun 'authpipe report list --help' for usage."},
		{[]string{"run", "--max-in-flight", "ten"}, `authpipe: --max-in-flight: "ten" is not an int` + "\nRun 'authpipe run --help' for usage."},
		{[]string{"verify", "--nope", "-"}, "authpipe: unknown flag: --nope\nRun 'authpipe verify --help' for usage."},
	} {
		code, out, errs := authpipe(t, "", tc.args...)
		if code != exitUsage || out != "" || strings.TrimSpace(errs) != tc.want {
			t.Errorf("%q: exit %d, stdout %q, stderr\n%s\nwant exit 2, no stdout, stderr\n%s", tc.args, code, out, errs, tc.want)
		}
	}
	// A group alone prints its help, as before.
	if code, out, _ := authpipe(t, "", "report"); code != exitOK || !strings.Contains(out, "Available Commands") {
		t.Errorf("report alone: exit %d, %q", code, out)
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := authpipe(t, "", "verify", "--help")
	if code != exitOK || !strings.Contains(out, "--zone") || !strings.Contains(out, "Exit status") {
		t.Errorf("verify --help: exit %d, output %q", code, out)
	}
}

func TestVerifyDMARCModeRFC7489(t *testing.T) {
	args := append([]string{"verify", "--dmarc-mode", "rfc7489"}, readmeArgs[1:]...)
	code, out, errs := authpipe(t, "", args...)
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	v := decodeVerdict(t, out)
	if v.DMARC.Mode != "rfc7489" || v.DMARC.DiscoveryMethod != "psl" || v.DMARC.Result != "pass" {
		t.Errorf("dmarc = %+v", v.DMARC)
	}
}

// TestVerifyOverrides: the receiver's local policy reaches the verdict: a
// denied author domain is rejected (local_policy) though it passes DMARC,
// and a client address on the allow list (a prefix, or an address) turns a
// failing message's disposition to none.
func TestVerifyOverrides(t *testing.T) {
	args := append([]string{"verify", "--dmarc-deny-domain", "Example.COM."}, readmeArgs[1:]...)
	code, out, errs := authpipe(t, "", args...)
	if code != exitOK {
		t.Fatalf("exit %d, stderr: %s", code, errs)
	}
	if v := decodeVerdict(t, out); v.DMARC.Result != "pass" || v.DMARC.Disposition != "reject" || len(v.DMARC.Reasons) != 1 || v.DMARC.Reasons[0].Type != "local_policy" {
		t.Errorf("denied domain: dmarc %+v", v.DMARC)
	}
	spoof := "From: ceo@example.com\r\nSubject: x\r\n\r\nbody\r\n"
	for _, allow := range []string{"203.0.113.0/24", "203.0.113.7"} {
		code, out, errs = authpipe(t, spoof, "verify", "--zone", "../../examples/example.zone", "--ip", "203.0.113.7", "--mail-from", "x@example.com", "--dmarc-allow-ip", allow, "-")
		if code != exitOK {
			t.Fatalf("exit %d, stderr: %s", code, errs)
		}
		if v := decodeVerdict(t, out); v.DMARC.Result != "fail" || v.DMARC.Disposition != "none" || len(v.DMARC.Reasons) != 1 || v.DMARC.Reasons[0].Type != "local_policy" {
			t.Errorf("allowed %s: dmarc %+v", allow, v.DMARC)
		}
	}
}

// TestVerifyReadsRunConfig: verify takes run's YAML file (--config or
// AUTHPIPE_CONFIG), so a message is judged with the pipeline's DNS and
// local policy: run-only keys are skipped, a key no command knows is a
// usage error.
func TestVerifyReadsRunConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "authpipe.yaml")
	yaml := "zone: ../../examples/example.zone\ndmarc-deny-domain: [example.com]\nmax-in-flight: 64\nbrokers: [k1:9092]\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--ip", "192.0.2.10", "--mail-from", "alice@example.com", "../../examples/message.eml"}
	for _, how := range []string{"flag", "environment"} {
		a := args
		if how == "flag" {
			a = append([]string{"verify", "--config", cfg}, args[1:]...)
		} else {
			t.Setenv("AUTHPIPE_CONFIG", cfg)
		}
		code, out, errs := authpipe(t, "", a...)
		if code != exitOK {
			t.Fatalf("%s: exit %d, stderr: %s", how, code, errs)
		}
		if v := decodeVerdict(t, out); v.SPF.Result != "pass" || v.DMARC.Disposition != "reject" || len(v.DMARC.Reasons) != 1 || v.DMARC.Reasons[0].Type != "local_policy" {
			t.Errorf("%s: spf %+v, dmarc %+v", how, v.SPF, v.DMARC)
		}
	}
	t.Setenv("AUTHPIPE_CONFIG", "")
	if err := os.WriteFile(cfg, []byte(yaml+"dmarc-deny-domian: [x.example]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := authpipe(t, "", append([]string{"verify", "--config", cfg}, args[1:]...)...); code != exitUsage || !strings.Contains(errs, "dmarc-deny-domian") {
		t.Errorf("typo: exit %d, stderr: %s", code, errs)
	}
}

func TestPrefixList(t *testing.T) {
	got, err := prefixList("x", []string{"192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120", " 203.0.113.9/24 ", "::ffff:192.0.2.9"})
	want := "[192.0.2.7/32 2001:db8::/32 ::ffff:198.51.100.0/120 203.0.113.0/24 192.0.2.9/32]"
	if err != nil || fmt.Sprint(got) != want {
		t.Errorf("got %v %v, want %s", got, err, want)
	}
	for _, bad := range []string{"::ffff:0.0.0.0/90", "192.0.2.0/33", "mx.example"} {
		if _, err := prefixList("x", []string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestVerifyEnvelopeMessage: verify --envelope message judges a saved
// message with the envelope its trace fields record (here the bundled
// example as the provider's store would keep it: a Return-Path, the
// store's LMTP hop from a private address, then the MX's), as produce
// does for an archive; a message that names no outside client is an
// error, not a verdict with an empty envelope.
func TestVerifyEnvelopeMessage(t *testing.T) {
	msg, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	trace := "Return-Path: <alice@example.com>\r\n" +
		"Received: from mx1.example.net (mx1.example.net [10.1.2.3]) by store.example.net with LMTP; Tue, 24 Nov 2026 10:15:01 +0000\r\n" +
		"Received: from mail.example.com (mail.example.com [192.0.2.10]) by mx1.example.net with ESMTPS id 4X for <bob@example.net>; Tue, 24 Nov 2026 10:15:00 +0000\r\n"
	dir := t.TempDir()
	saved := writeTestFile(t, dir, "saved.eml", trace+string(msg))
	code, out, errs := authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "--envelope", "message", saved)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	v := decodeVerdict(t, out)
	if v.SPF == nil || v.SPF.Result != "pass" || v.Envelope.ClientIP != "192.0.2.10" || v.Envelope.MailFrom != "alice@example.com" || v.Envelope.HELO != "mail.example.com" {
		t.Errorf("spf %+v, envelope %+v: want pass with the MX hop's client and the Return-Path", v.SPF, v.Envelope)
	}
	internalOnly := writeTestFile(t, dir, "internal.eml", "Received: from a (a [10.0.0.1]) by b; Tue, 24 Nov 2026 10:15:00 +0000\r\n"+string(msg))
	if code, out, errs := authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "--envelope", "message", internalOnly); code != exitFailure || out != "" || !strings.Contains(errs, "no Received field names a client outside the provider") {
		t.Errorf("no outside client: exit %d, stdout %q, stderr %s", code, out, errs)
	}
}

// TestVerifyArchive: verify given several PATHs, a directory or an mbox of
// several messages re-scores them all without Kafka: one compact verdict a
// line, in input order whatever the concurrency, each with its key; with
// --at arrival each judged as of its own arrival. A message over the size
// bound is named on stderr, the rest are printed, and verify exits 1.
func TestVerifyArchive(t *testing.T) {
	msg, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"a/Maildir/cur/1.eml": string(msg),
		"a/Maildir/new/2.eml": "Received: from x (x [192.0.2.99]) by mx; Mon, 23 Nov 2026 08:00:00 +0000\nFrom: b@example.org\nSubject: 2\n\nbody\n",
		"a/Maildir/tmp/3.eml": "Subject: being delivered\n\n",
		"a/big.eml":           "Subject: big\n\n" + strings.Repeat("x", 5000),
		"b.mbox":              "From alice@example.com Sun Feb  1 12:00:00 2026\n" + string(msg) + "\nFrom bob@example.com Mon Feb  2 13:30:00 2026\nSubject: b2\n\nbody\n",
	})
	base := []string{"verify", "--zone", "../../examples/example.zone", "--ip", "192.0.2.10", "--mail-from", "alice@example.com", "--max-message-bytes", "4000", "--at", "arrival"}
	var first string
	for _, conc := range []string{"1", "64"} {
		code, out, errs := authpipe(t, "", append(base, "--concurrency", conc, filepath.Join(dir, "a"), filepath.Join(dir, "b.mbox"))...)
		if code != exitFailure || !strings.Contains(errs, "a/big.eml: the file, over --max-message-bytes (4000): not verified") || !strings.Contains(errs, "1 message not verified") ||
			!regexp.MustCompile(`verified 4 messages in [0-9.]+s; DMARC: `).MatchString(errs) {
			t.Fatalf("--concurrency %s: exit %d, stderr %s", conc, code, errs)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		var keys []string
		for _, l := range lines {
			var v struct {
				Key         string    `json:"key"`
				EvaluatedAt time.Time `json:"evaluated_at"`
				SPF         struct{ Result string }
			}
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			keys = append(keys, v.Key+" "+v.EvaluatedAt.Format(time.RFC3339))
		}
		want := []string{"a/Maildir/cur/1.eml", "a/Maildir/new/2.eml 2026-11-23T08:00:00Z", "b.mbox#1 2026-02-01T12:00:00Z", "b.mbox#2 2026-02-02T13:30:00Z"}
		if len(keys) != len(want) || !strings.HasPrefix(keys[0], want[0]+" ") || !slices.Equal(keys[1:], want[1:]) {
			t.Errorf("--concurrency %s: verdicts %q, want %q (the first as of now: it has no date)", conc, keys, want)
		}
		if first == "" {
			first = out
		} else if stripTimes(out) != stripTimes(first) {
			t.Errorf("--concurrency %s printed other verdicts than --concurrency 1:\n%s\n%s", conc, out, first)
		}
	}
}

// stripTimes removes the times of verdicts (a message without a date of
// its own is judged as of now), so two runs' outputs compare.
func stripTimes(out string) string {
	return regexp.MustCompile(`"(evaluated_at|received_at)":"[^"]*"`).ReplaceAllString(out, "")
}

// TestVerifyEnvelopesFile: verify --envelopes re-scores the messages of a
// JSON-lines envelope file (as produce reads it), each with its own
// envelope and key, after the PATHs; a line that does not parse stops it
// there, naming the line.
func TestVerifyEnvelopesFile(t *testing.T) {
	msg, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	raw, _ := json.Marshal(string(msg))
	writeTree(t, dir, map[string]string{
		"m.eml": string(msg),
		"env.jsonl": `{"path": "m.eml", "client_ip": "192.0.2.10", "mail_from": "alice@example.com", "queue_id": "Q1"}` + "\n" +
			"# a comment\n" +
			`{"raw": ` + string(raw) + `, "client_ip": "198.51.100.1", "mail_from": "alice@example.com", "key": "K2"}` + "\n",
		"bad.jsonl": `{"raw": "Subject: x\n\n", "client_ip": "192.0.2.10"}` + "\n" + `{"raw": 1}` + "\n",
	})
	code, out, errs := authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "--ip", "203.0.113.1",
		filepath.Join(dir, "m.eml"), "--envelopes", filepath.Join(dir, "env.jsonl"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var v verdict.Verdict
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, v.Key+" "+v.Envelope.ClientIP+" "+v.SPF.Result)
	}
	want := []string{"m.eml 203.0.113.1 none", "Q1 192.0.2.10 pass", "K2 198.51.100.1 fail"}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts %q, want %q", got, want)
	}
	code, out, errs = authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "--envelopes", filepath.Join(dir, "bad.jsonl"))
	if code != exitFailure || strings.Count(out, "\n") != 1 || !strings.Contains(errs, "bad.jsonl:2") {
		t.Errorf("a bad line: exit %d, stdout %q, stderr %s", code, out, errs)
	}
}
