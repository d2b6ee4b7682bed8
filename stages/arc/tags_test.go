package arc

import (
	"fmt"
	"strings"
	"testing"

	"github.com/authpipe/authpipe/stages/message"
)

func TestParseTags(t *testing.T) {
	good := []struct {
		in   string
		want map[string]string
	}{
		{"a=1", map[string]string{"a": "1"}},
		{"a=1;", map[string]string{"a": "1"}},
		{" a = 1 ; b=x y \r\n\t; ", map[string]string{"a": "1", "b": "x y"}},
		{"a=; b_2=c=d", map[string]string{"a": "", "b_2": "c=d"}},
		{"h=from : to", map[string]string{"h": "from : to"}},
	}
	for _, c := range good {
		got, err := parseTags(c.in)
		if err != nil {
			t.Errorf("parseTags(%q): %v", c.in, err)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("parseTags(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	bad := []string{
		"", ";", " ; ", "a=1;;b=2", "a=1; ==; b=2", "=1", "1a=2", "a-b=1",
		"a=1; a=2", "a", "a=1; b", "a=\x01", "a=caf\xc3\xa9",
	}
	for _, in := range bad {
		if got, err := parseTags(in); err == nil {
			t.Errorf("parseTags(%q) = %v, want error", in, got)
		}
	}
}

func TestParseAAR(t *testing.T) {
	cases := []struct {
		in      string
		inst    int
		payload string
		ok      bool
	}{
		{" i=1; lists.example.org; spf=pass", 1, "lists.example.org; spf=pass", true},
		{"i = 12 ;x", 12, "x", true},
		{"i=1;", 1, "", true},
		{"lists.example.org; i=1; spf=pass", 0, "", false},
		{"i=1 lists.example.org", 0, "", false},
		{"i=; x", 0, "", false},
		{"i=0; x", 0, "", false},
		{"i=51; x", 0, "", false},
		{"i=a; x", 0, "", false},
		{"I=1; x", 0, "", false},
		{"", 0, "", false},
	}
	for _, c := range cases {
		inst, payload, err := parseAAR(c.in, DefaultMaxSets)
		if (err == nil) != c.ok || inst != c.inst || payload != c.payload {
			t.Errorf("parseAAR(%q) = %d, %q, %v; want %d, %q, ok=%v", c.in, inst, payload, err, c.inst, c.payload, c.ok)
		}
	}
}

func TestValidNames(t *testing.T) {
	for _, d := range []string{"example.org", "a.b-c.d", "_x.example", "x"} {
		if !validDomain(d) {
			t.Errorf("validDomain(%q) = false", d)
		}
	}
	for _, d := range []string{"", "example...", ".example", "***", "a..b", "-a.b", "a-.b", strings.Repeat("a", 64) + ".b", "exa mple.org"} {
		if validDomain(d) {
			t.Errorf("validDomain(%q) = true", d)
		}
	}
	for _, v := range []string{"", "1 2", "-1", "1234567890123"} {
		if _, err := parseTime(v); err == nil {
			t.Errorf("parseTime(%q) succeeded", v)
		}
	}
}

// chainHeaders builds the ARC header fields of n minimal sets, newest first.
func chainHeaders(n int) string {
	var b strings.Builder
	for i := n; i >= 1; i-- {
		cv := "pass"
		if i == 1 {
			cv = "none"
		}
		fmt.Fprintf(&b, "ARC-Seal: i=%d; a=rsa-sha256; cv=%s; d=example.org; s=s; b=AAAA\r\n", i, cv)
		fmt.Fprintf(&b, "ARC-Message-Signature: i=%d; a=rsa-sha256; d=example.org; s=s; h=from; bh=AAAA; b=AAAA\r\n", i)
		fmt.Fprintf(&b, "ARC-Authentication-Results: i=%d; mx.example.org; spf=pass\r\n", i)
	}
	return b.String()
}

func parseMsg(t testing.TB, hdr string) *message.Message {
	t.Helper()
	m, err := message.Parse([]byte(hdr+"From: a@example.com\r\n\r\nbody\r\n"), message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCollectSets(t *testing.T) {
	m := parseMsg(t, chainHeaders(3))
	sets, err := collectSets(m, DefaultMaxSets)
	if err != nil || len(sets) != 3 {
		t.Fatalf("collectSets = %d sets, %v", len(sets), err)
	}
	for i, s := range sets {
		if s.instance != i+1 || s.aar.payload != "mx.example.org; spf=pass" || s.as.tags["i"] != fmt.Sprint(i+1) {
			t.Errorf("set %d = %+v", i, s)
		}
	}
	if sets, err := collectSets(parseMsg(t, ""), DefaultMaxSets); sets != nil || err != nil {
		t.Errorf("no ARC fields: %v, %v", sets, err)
	}

	// Structural failures.
	full := chainHeaders(2)
	lines := strings.SplitAfter(full, "\r\n")
	bad := map[string]string{
		"missing AS":     strings.Join(lines[1:], ""),
		"duplicate AAR":  full + lines[2],
		"gap":            strings.Replace(full, "i=2", "i=3", 3),
		"i=0":            strings.Replace(full, "i=1", "i=0", 3),
		"unparseable AS": strings.Replace(full, "cv=none;", "cv=none;;", 1),
		"AAR without i":  strings.Replace(full, "i=1; mx", "mx", 1),
	}
	for name, hdr := range bad {
		if _, err := collectSets(parseMsg(t, hdr), DefaultMaxSets); err == nil {
			t.Errorf("%s: collectSets succeeded", name)
		}
	}
}

// TestCollectSetsLimit checks the RFC 8617 4.2.1 bound: 50 sets are
// accepted structurally, 51 are not, and a configured lower limit applies.
func TestCollectSetsLimit(t *testing.T) {
	if sets, err := collectSets(parseMsg(t, chainHeaders(50)), DefaultMaxSets); err != nil || len(sets) != 50 {
		t.Errorf("50 sets: %d, %v", len(sets), err)
	}
	if _, err := collectSets(parseMsg(t, chainHeaders(51)), DefaultMaxSets); err == nil {
		t.Error("51 sets accepted")
	}
	if _, err := collectSets(parseMsg(t, chainHeaders(4)), 3); err == nil {
		t.Error("4 sets accepted with MaxSets 3")
	}
	// Many ARC fields of one instance: rejected by count before parsing.
	hdr := strings.Repeat("ARC-Seal: i=1\r\n", 151)
	if _, err := collectSets(parseMsg(t, hdr), DefaultMaxSets); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("151 fields: %v", err)
	}
}
