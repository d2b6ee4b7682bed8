package arc

import (
	"errors"
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
		l, err := parseTags([]byte(c.in))
		if err != nil {
			t.Errorf("parseTags(%q): %v", c.in, err)
			continue
		}
		if got := l.asMap(); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("parseTags(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	bad := []string{
		"", ";", " ; ", "a=1;;b=2", "a=1; ==; b=2", "=1", "1a=2", "a-b=1",
		"a=1; a=2", "a", "a=1; b", "a=\x01", "a=caf\xc3\xa9",
		strings.Repeat("a=1;", 2) + tagsN(MaxTags), // a duplicate after MaxTags
	}
	for _, in := range bad {
		if l, err := parseTags([]byte(in)); err == nil {
			t.Errorf("parseTags(%q) = %v, want error", in, l.asMap())
		}
	}
	if _, err := parseTags([]byte(tagsN(MaxTags))); err != nil {
		t.Errorf("%d tags: %v", MaxTags, err)
	}
	if _, err := parseTags([]byte(tagsN(MaxTags + 1))); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("%d tags: %v, want the tag limit", MaxTags+1, err)
	}
}

// tagsN is a tag-list of n distinct tags.
func tagsN(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "t%d=%d; ", i, i)
	}
	return b.String()
}

// asMap is l as the map the parser used to return.
func (l tagList) asMap() map[string]string {
	m := make(map[string]string, len(l.tags))
	for _, t := range l.tags {
		m[string(l.src[t.name0:t.name1])] = string(l.src[t.val0:t.val1])
	}
	return m
}

// parseTagsMap is the parser as it was before tagList (it copied the field
// to a string and returned a map), kept as FuzzParseTags's reference; it
// has no tag limit.
func parseTagsMap(s string) (map[string]string, error) {
	tags := make(map[string]string, 10)
	rest := s
	for {
		spec, tail, more := strings.Cut(rest, ";")
		spec = trimFWS(spec)
		if spec == "" {
			if !more && len(tags) > 0 {
				return tags, nil
			}
			return nil, errors.New("empty tag-spec")
		}
		name, val, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("tag-spec %q without '='", truncate(spec))
		}
		name, val = trimFWS(name), trimFWS(val)
		if !validTagName([]byte(name)) {
			return nil, fmt.Errorf("invalid tag name %q", truncate(name))
		}
		for i := 0; i < len(val); i++ {
			if c := val[i]; !(c >= 0x21 && c <= 0x3a || c >= 0x3c && c <= 0x7e || isFWS(c)) {
				return nil, fmt.Errorf("tag %s: invalid octet 0x%02x in value", name, c)
			}
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("duplicate tag %s", name)
		}
		tags[name] = val
		if !more {
			return tags, nil
		}
		rest = tail
	}
}

// FuzzParseTags holds parseTags to the map-based parser it replaced: the
// same tag-lists accepted with the same values, the same errors, except
// that lists of more than MaxTags tags are now refused.
func FuzzParseTags(f *testing.F) {
	for _, s := range []string{
		"a=1", "a=1;", " a = 1 ; b=x y \r\n\t; ", "a=; b_2=c=d", "h=from : to", "a=1;;b=2",
		"i=1; a=rsa-sha256; cv=none; d=example.org; s=s1; t=1700000000;\r\n\tb=AAAA BBBB\r\n\t CCCC==",
		"a=1; a=2", "=1", "a-b=1", "a=\x01", "", ";", tagsN(MaxTags + 1),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		l, err := parseTags(in)
		want, wantErr := parseTagsMap(string(in))
		if err != nil && strings.Contains(err.Error(), "more than") {
			if len(want) <= MaxTags && wantErr == nil {
				t.Fatalf("%q: %v, but the reference has %d tags", in, err, len(want))
			}
			return
		}
		if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("%q: error %v, reference %v", in, err, wantErr)
		}
		if err != nil {
			return
		}
		if got := l.asMap(); fmt.Sprint(got) != fmt.Sprint(want) || len(l.tags) != len(want) {
			t.Fatalf("%q: %v, reference %v", in, got, want)
		}
		for name, v := range want {
			if got, ok := l.get(name); !ok || got != v {
				t.Fatalf("%q: get(%s) = %q, %v; want %q", in, name, got, ok, v)
			}
		}
	})
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
		inst, raw, err := parseAAR([]byte(c.in), DefaultMaxSets)
		if payload := unfold(raw); (err == nil) != c.ok || inst != c.inst || payload != c.payload {
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
		if s.instance != i+1 || s.aar.payload != "mx.example.org; spf=pass" || s.as.tags.val("i") != fmt.Sprint(i+1) {
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
