package main

import (
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
)

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":               "example.com",
		"bücher.example":            "bücher.example",
		"evil\x1b[2J.example":       `evil\x1b[2J.example`,
		"a\tb\r\nc":                 `a\x09b\x0d\x0ac`,
		"\u202egnp.exe":             `\u202egnp.exe`,
		"bad \xff utf-8":            `bad \xff utf-8`,
		"c1 \u009b control":         `c1 \u009b control`,
		"550 5.7.1 go away\x07\x00": `550 5.7.1 go away\x07\x00`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTailPrettyIsTerminalSafe: a received message's text reaches tail's
// pretty line (here a DKIM d= tag and a record key holding terminal escape
// sequences) escaped, never as raw control characters.
func TestTailPrettyIsTerminalSafe(t *testing.T) {
	raw := "From: a@example.com\r\nDKIM-Signature: v=1; a=rsa-sha256; d=evil\x1b[2J.example; s=s; h=from; bh=abc; b=abc\r\nSubject: x\r\n\r\nbody\r\n"
	code, out, errs := authpipe(t, raw, "verify", "--zone", "../../examples/example.zone", "-")
	if code != exitOK || !strings.Contains(out, `evil\u001b[2j.example`) {
		t.Fatalf("verify: exit %d, %s\n%s", code, errs, out)
	}
	line := prettyVerdict(&kgo.Record{Key: []byte("q\x1b]0;title\x07"), Value: []byte(out), Timestamp: time.Now()})
	for _, c := range line {
		if c < 0x20 || c == 0x7f {
			t.Fatalf("raw control character %q in %q", c, line)
		}
	}
	if !strings.Contains(line, `dkim=permerror(evil\x1b[2j.example)`) || !strings.Contains(line, `q\x1b]0;title\x07`) {
		t.Errorf("line %q", line)
	}
}

// TestTailPrettyTime: a pretty line gives the time the verdict's checks
// were judged as of, so that re-scored mail (run --judge-at arrival) shows
// its arrival, not when the verdict was written; a verdict without one
// shows the record's time.
func TestTailPrettyTime(t *testing.T) {
	written := time.Date(2026, 11, 25, 4, 0, 0, 0, time.UTC)
	for _, tc := range []struct{ value, want string }{
		{`{"version":1,"evaluated_at":"2026-02-01T12:00:00Z","envelope":{"mail_from":""}}`, "2026-02-01T12:00:00Z k "},
		{`{"version":1,"envelope":{"mail_from":""}}`, "2026-11-25T04:00:00Z k "},
	} {
		if line := prettyVerdict(&kgo.Record{Key: []byte("k"), Value: []byte(tc.value), Timestamp: written}); !strings.HasPrefix(line, tc.want) {
			t.Errorf("%s: line %q, want it to start %q", tc.value, line, tc.want)
		}
	}
}

// TestErrorsAreTerminalSafe: an error's text reaches standard error with
// its control characters escaped, line by line.
func TestErrorsAreTerminalSafe(t *testing.T) {
	code, _, errs := authpipe(t, "", "verify", "--zone", "../../examples/example.zone", "/nonexistent/\x1b[2J.eml")
	if code != exitFailure || strings.ContainsRune(errs, 0x1b) || !strings.Contains(errs, `/nonexistent/\x1b[2J.eml`) {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

// TestPrettyDLQ: a dead-letter record reads as one line with its key,
// error, size, cut and envelope, escaped for a terminal.
func TestPrettyDLQ(t *testing.T) {
	r := &kgo.Record{Key: []byte("q\x1b[2J1"), Value: []byte("0123456789"), Timestamp: time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC), Headers: []kgo.RecordHeader{
		{Key: pipeline.HeaderClientIP, Value: []byte("192.0.2.1")}, {Key: pipeline.HeaderMailFrom, Value: nil},
		{Key: pipeline.HeaderError, Value: []byte("too-large: 70000000 bytes\x07")}, {Key: pipeline.HeaderTruncated, Value: []byte("70000000")},
	}}
	want := `2026-11-25T01:00:00Z q\x1b[2J1           DLQ error="too-large: 70000000 bytes\a" bytes=10 (cut from 70000000) ip=192.0.2.1 mail-from=-`
	if got := prettyDLQ(r); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}
