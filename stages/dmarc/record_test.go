package dmarc

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseRecordRFC9989(t *testing.T) {
	r, err := ParseRecord("v=DMARC1; p=reject; sp=none; np=quarantine; adkim=s; aspf=x; t=y; psd=n; fo=1:d; "+
		"rua=mailto:a@example.com!10m, bogus, https://r.example/x; ruf=mailto:f@example.com; pct=5; future=1", ModeRFC9989)
	if err != nil {
		t.Fatal(err)
	}
	if r.P != PolicyReject || r.SP != PolicyNone || r.NP != PolicyQuarantine || r.ADKIM != "s" || r.ASPF != "r" ||
		!r.Testing || r.PSD != "n" || !reflect.DeepEqual(r.FO, []string{"1", "d"}) || r.Pct != 100 {
		t.Fatalf("got %+v", r)
	}
	wantRUA := []URI{{Address: "mailto:a@example.com"}, {Address: "https://r.example/x"}}
	if !reflect.DeepEqual(r.RUA, wantRUA) || r.RUA[1].Scheme() != "https" {
		t.Errorf("rua %+v", r.RUA)
	}
	if len(r.Ignored) != 2 { // aspf=x, the bogus URI
		t.Errorf("ignored %v", r.Ignored)
	}
}

func TestParseRecordModes(t *testing.T) {
	cases := []struct {
		rec            string
		ok9989, ok7489 bool
	}{
		{"v=DMARC1; p=none", true, true},
		{"v=DMARC1;p=none;", true, true},
		{"v=DMARC1; p=none; bogus", true, false},        // 9989 4.8 discards the error
		{"v=DMARC1; p=none;; adkim=s", true, false},     // empty tag
		{"v=DMARC1; adkim=s; p=none", true, false},      // 7489: p right after v
		{"v=DMARC1; p=none; fo=0:1", true, true},        // 9989 ignores the bad fo
		{"v=DMARC1; p=none; rua=mailto:x", true, false}, // mailto without @
		{"v=DMARC1; p=none; p=none", false, false},      // repeated tag
		{"v=DMARC1; psd=y", false, false},               // no p, no rua
		{"v=DMARC1; p=none; t=maybe", true, true},
		{" v = DMARC1 ; p = none", true, true},
		{"v=DMARC1; p=none; rua=mailto:a@b.example!", true, false},
	}
	for _, c := range cases {
		_, err9 := ParseRecord(c.rec, ModeRFC9989)
		_, err7 := ParseRecord(c.rec, ModeRFC7489)
		if (err9 == nil) != c.ok9989 || (err7 == nil) != c.ok7489 {
			t.Errorf("%q: 9989 err %v (want ok %v), 7489 err %v (want ok %v)", c.rec, err9, c.ok9989, err7, c.ok7489)
		}
	}
	for _, notDMARC := range []string{"", "v=DMARC2; p=none", "p=none; v=DMARC1", "spf1", "v=dmarc1; p=none", "x v=DMARC1; p=none"} {
		if _, err := ParseRecord(notDMARC, ModeRFC9989); !errors.Is(err, ErrNotDMARC) {
			t.Errorf("%q: %v, want ErrNotDMARC", notDMARC, err)
		}
	}
	if _, err := ParseRecord("v=DMARC1; p=none; x="+strings.Repeat("a", MaxRecordLen), ModeRFC9989); !errors.Is(err, ErrSyntax) {
		t.Errorf("oversized record: %v", err)
	}
}

func TestPolicyFallback(t *testing.T) {
	for _, mode := range []Mode{ModeRFC9989, ModeRFC7489} {
		r, err := ParseRecord("v=DMARC1; p=reject; np=bad; rua=mailto:d@example.com", mode)
		if err != nil || r.P != PolicyNone || r.SP != "" || r.NP != "" || !r.PNoneFallback {
			t.Errorf("%s: %+v %v", mode, r, err)
		}
	}
}
