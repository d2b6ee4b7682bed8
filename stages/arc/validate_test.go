package arc

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/internal/judgetime"
	"github.com/authpipe/authpipe/stages/message"
)

func parseRaw(t testing.TB, raw []byte) *message.Message {
	t.Helper()
	m, err := message.Parse(raw, message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sealHop validates raw and adds one set sealed by domain, signing names.
func sealHop(t testing.TB, v *Validator, key crypto.Signer, raw []byte, domain string, names []string) []byte {
	t.Helper()
	m := parseRaw(t, raw)
	chain := v.Validate(context.Background(), m)
	s := &Sealer{Domain: domain, Selector: "s1", Key: key, AuthServID: domain, Headers: names, Now: suiteClock}
	set, err := s.Seal(m, chain, "arc="+chain.Result)
	if err != nil {
		t.Fatalf("seal %s: %v", domain, err)
	}
	return set.Prepend(m.Raw)
}

func TestValidateSealedChain(t *testing.T) {
	for name, key := range map[string]crypto.Signer{"ed25519": edKey, "rsa2048": rsaKey()} {
		t.Run(name, func(t *testing.T) {
			v := newTestValidator(t, testRecords(key))
			raw := sealChain(t, v, key, []byte(baseMessage), 3)
			r := validateString(t, v, string(raw))
			if r.Result != ResultPass || r.Instances != 3 || r.OldestPass != 1 || r.Reason != "" || r.Temporary {
				t.Fatalf("result %+v", r)
			}
			for i, s := range r.Sets {
				if s.Instance != i+1 || s.Sealer != hopDomains[i] || s.Selector != "s1" || s.AMSDomain != hopDomains[i] ||
					!s.SealValid || s.AMSValid == nil || !*s.AMSValid {
					t.Errorf("set %d = %+v", i+1, s)
				}
				wantCV := []string{"none", "pass", "pass"}[i]
				if s.CV != wantCV {
					t.Errorf("set %d cv = %q, want %q", i+1, s.CV, wantCV)
				}
				wantAR := hopDomains[i] + "; spf=pass smtp.mailfrom=d1.example.org; dkim=pass header.d=d1.example.org; arc=" + wantCV
				if got := strings.Join(strings.Fields(s.AuthResults), " "); got != wantAR {
					t.Errorf("set %d auth results = %q, want %q", i+1, got, wantAR)
				}
			}
			// Tampering with a signed field breaks the newest AMS.
			bad := bytes.Replace(raw, []byte("Subject: Example 1"), []byte("Subject: Example 2"), 1)
			if r := validateString(t, v, string(bad)); r.Result != ResultFail || !strings.Contains(r.Reason, "ARC-Message-Signature i=3") {
				t.Errorf("tampered: %+v", r)
			}
			// Tampering with an older AAR breaks the seals.
			bad = bytes.Replace(raw, []byte("arc=none"), []byte("arc=pass"), 1)
			if r := validateString(t, v, string(bad)); r.Result != ResultFail || !strings.Contains(r.Reason, "ARC-Seal i=3") {
				t.Errorf("tampered AAR: %+v", r)
			}
		})
	}
}

// TestOldestPass: hop 1 signs Subject, hops 2 and 3 do not; Subject is
// changed after hop 1. The chain passes, AMS(1) fails, OldestPass is 2
// (RFC 8617 5.2 step 5); with SkipOldestPass AMS(1) is not checked.
func TestOldestPass(t *testing.T) {
	v := newTestValidator(t, testRecords(edKey))
	raw := sealHop(t, v, edKey, []byte(baseMessage), hopDomains[0], []string{"from", "subject"})
	raw = bytes.Replace(raw, []byte("Subject: Example 1"), []byte("Subject: [list] Example 1"), 1)
	// AMS(1) is now broken and is the newest: sealing records cv=fail.
	if r := validateString(t, v, string(raw)); r.Result != ResultFail {
		t.Fatalf("broken newest AMS: %+v", r)
	}

	raw = sealHop(t, v, edKey, []byte(baseMessage), hopDomains[0], []string{"from", "subject"})
	raw = sealHop(t, v, edKey, raw, hopDomains[1], []string{"from"})
	raw = bytes.Replace(raw, []byte("Subject: Example 1"), []byte("Subject: [list] Example 1"), 1)
	raw = sealHop(t, v, edKey, raw, hopDomains[2], []string{"from", "to"})
	r := validateString(t, v, string(raw))
	if r.Result != ResultPass || r.OldestPass != 2 {
		t.Fatalf("result %+v", r)
	}
	if a := r.Sets[0].AMSValid; a == nil || *a {
		t.Errorf("AMS(1) valid = %v, want false", a)
	}
	v.SkipOldestPass = true
	r = validateString(t, v, string(raw))
	if r.Result != ResultPass || r.OldestPass != 0 || r.Sets[0].AMSValid != nil || r.Sets[1].AMSValid != nil {
		t.Errorf("SkipOldestPass: %+v", r)
	}
}

func TestMaxSets(t *testing.T) {
	v := newTestValidator(t, testRecords(edKey))
	raw := sealChain(t, v, edKey, []byte(baseMessage), 3)
	v.MaxSets = 2
	if r := validateString(t, v, string(raw)); r.Result != ResultFail || !strings.Contains(r.Reason, "2 sets") {
		t.Errorf("3 sets with MaxSets 2: %+v", r)
	}
	s := &Sealer{Domain: "x.example", Selector: "s1", Key: edKey, AuthServID: "x", MaxSets: 3, Now: suiteClock}
	v.MaxSets = 0
	m := parseRaw(t, raw)
	if _, err := s.Seal(m, v.Validate(context.Background(), m), ""); !errors.Is(err, ErrNoSeal) {
		t.Errorf("sealing a 4th set with MaxSets 3: %v", err)
	}
}

// failingResolver answers every question with a SERVFAIL error.
type failingResolver struct{}

func (failingResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindServFail, Rcode: 2}
}

func TestTemporaryKeyFailure(t *testing.T) {
	good := newTestValidator(t, testRecords(edKey))
	raw := sealChain(t, good, edKey, []byte(baseMessage), 2)
	v := &Validator{Keys: &dkim.KeyFetcher{Resolver: failingResolver{}}, Now: suiteClock}
	r := validateString(t, v, string(raw))
	if r.Result != ResultFail || !r.Temporary {
		t.Errorf("SERVFAIL: %+v", r)
	}
	if r := validateString(t, &Validator{}, string(raw)); r.Result != ResultFail || !r.Temporary {
		t.Errorf("no key fetcher: %+v", r)
	}
	// A missing key is permanent.
	v = newTestValidator(t, map[string]string{})
	if r := validateString(t, v, string(raw)); r.Result != ResultFail || r.Temporary {
		t.Errorf("NXDOMAIN: %+v", r)
	}
}

func TestKeyPolicy(t *testing.T) {
	raw := sealChain(t, newTestValidator(t, testRecords(edKey)), edKey, []byte(baseMessage), 1)
	for _, rec := range []string{
		keyRecord(edKey) + "; s=other", // service type not email
		keyRecord(edKey) + "; h=sha1",  // hash not allowed
		"v=DKIM1; k=ed25519; p=",       // revoked
		keyRecord(rsaKey()),            // key type mismatch
	} {
		recs := map[string]string{}
		for k := range testRecords(edKey) {
			recs[k] = rec
		}
		if r := validateString(t, newTestValidator(t, recs), string(raw)); r.Result != ResultFail {
			t.Errorf("key %q: %+v", rec, r)
		}
	}
}

// TestSealFailedChain: a broken chain is sealed with cv=fail over the new
// set only (RFC 8617 5.1.2); after that no set may be added.
func TestSealFailedChain(t *testing.T) {
	v := newTestValidator(t, testRecords(edKey))
	raw := sealChain(t, v, edKey, []byte(baseMessage), 1)
	raw = bytes.Replace(raw, []byte("Subject: Example 1"), []byte("Subject: changed"), 1)
	m := parseRaw(t, raw)
	chain := v.Validate(context.Background(), m)
	if chain.Result != ResultFail {
		t.Fatalf("chain %+v", chain)
	}
	s := &Sealer{Domain: hopDomains[1], Selector: "s1", Key: edKey, AuthServID: "x", Now: suiteClock}
	set, err := s.Seal(m, chain, "arc=fail")
	if err != nil || !strings.Contains(set.AS, "cv=fail") || set.Instance != 2 {
		t.Fatalf("seal: %v %+v", err, set)
	}
	m2 := parseRaw(t, set.Prepend(m.Raw))
	r := v.Validate(context.Background(), m2)
	if r.Result != ResultFail || !strings.Contains(r.Reason, "cv=fail") {
		t.Errorf("after cv=fail seal: %+v", r)
	}
	if _, err := s.Seal(m2, r, ""); !errors.Is(err, ErrNoSeal) {
		t.Errorf("sealing after cv=fail: %v", err)
	}
}

func TestSealErrors(t *testing.T) {
	m := parseRaw(t, []byte(baseMessage))
	none := Result{Result: ResultNone}
	cases := map[string]*Sealer{
		"no key":        {Domain: "a.example", Selector: "s", AuthServID: "x"},
		"bad domain":    {Domain: "a..example", Selector: "s", Key: edKey, AuthServID: "x"},
		"h has seal":    {Domain: "a.example", Selector: "s", Key: edKey, AuthServID: "x", Headers: []string{"from", "ARC-Seal"}},
		"bad selector":  {Domain: "a.example", Selector: "", Key: edKey, AuthServID: "x"},
		"no servid":     {Domain: "a.example", Selector: "s", Key: edKey},
		"unknown chain": nil,
	}
	for name, s := range cases {
		chain := none
		if s == nil {
			s = &Sealer{Domain: "a.example", Selector: "s", Key: edKey}
			chain = Result{Result: "temperror"}
		}
		if set, err := s.Seal(m, chain, ""); err == nil {
			t.Errorf("%s: sealed %+v", name, set)
		}
	}
	good := &Sealer{Domain: "a.example", Selector: "s", Key: edKey, AuthServID: "x"}
	for _, res := range []string{"spf=pass\r\nX-Injected: 1", "spf=pass\n dkim=pass", "a\r"} {
		if _, err := good.Seal(m, none, res); err == nil {
			t.Errorf("results %q accepted", res)
		}
	}
	if _, err := good.Seal(m, none, "spf=pass;\r\n\tdkim=pass"); err != nil {
		t.Errorf("folded results: %v", err)
	}
	if _, err := good.Seal(m, Result{Result: ResultFail, Temporary: true}, ""); err == nil {
		t.Error("sealed over a temporary failure")
	}
	// A structurally broken chain cannot be sealed over.
	lines := strings.SplitAfterN(chainHeaders(2), "\r\n", 2) // drop AS(2)
	bad := parseRaw(t, []byte(lines[1]+baseMessage))
	s := &Sealer{Domain: "a.example", Selector: "s", Key: edKey, AuthServID: "x"}
	if _, err := s.Seal(bad, Result{Result: ResultFail}, ""); !errors.Is(err, ErrNoSeal) {
		t.Errorf("broken chain: %v", err)
	}
}

func TestCollectAuthResults(t *testing.T) {
	m := parseRaw(t, []byte("Authentication-Results: mx.example.org; arc=none;\r\n"+
		"  spf=pass smtp.mailfrom=a.example (comment; with semicolon)\r\n"+
		"Authentication-Results: other.example; dkim=fail\r\n"+
		"Authentication-Results: MX.example.org 1; dkim=pass header.d=\"a;b\"; ; none\r\n"+
		"Authentication-Results: mx.example.org; none\r\n"+
		"From: a@example.com\r\n\r\n"))
	got := CollectAuthResults(m, "mx.example.org")
	want := "arc=none;\r\n    spf=pass smtp.mailfrom=a.example (comment; with semicolon);\r\n    dkim=pass header.d=\"a;b\""
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestResultJSON(t *testing.T) {
	ok := true
	r := Result{Result: ResultPass, Instances: 1, OldestPass: 1, Sets: []Set{{Instance: 1, Sealer: "a.example", Selector: "s",
		AMSDomain: "a.example", CV: "none", AuthResults: "a.example; spf=pass", SealValid: true, AMSValid: &ok}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"result":"pass","instances":1,"oldest_pass":1,"sets":[{"instance":1,"sealer":"a.example","selector":"s","ams_domain":"a.example","cv":"none","auth_results":"a.example; spf=pass","seal_valid":true,"ams_valid":true}]}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

func TestExpiredAMS(t *testing.T) {
	v := newTestValidator(t, testRecords(edKey))
	raw := string(sealChain(t, v, edKey, []byte(baseMessage), 1))
	// x= is not emitted by the Sealer; adding it breaks the signature, so
	// only the expiry check is reachable first. Place it before b=.
	raw = strings.Replace(raw, "h=from:", "x=1000; h=from:", 1)
	r := validateString(t, v, raw)
	if r.Result != ResultFail || !strings.Contains(r.Reason, "x= is before t=") {
		t.Errorf("x before t: %+v", r)
	}
	raw = strings.Replace(raw, "x=1000;", "x=1700000100;", 1)
	v.Now = func() time.Time { return time.Unix(1800000000, 0) }
	r = validateString(t, v, raw)
	if r.Result != ResultFail || !strings.Contains(r.Reason, "expired") {
		t.Errorf("expired: %+v", r)
	}
	// Judged as of an arrival time before x= (judgetime, as the engine sets
	// it for re-scoring), the AMS has not expired; it fails only for the
	// x= tag added after sealing.
	arrived := judgetime.With(context.Background(), time.Unix(1700000050, 0))
	if r := v.Validate(arrived, parseRaw(t, []byte(raw))); r.Result != ResultFail || strings.Contains(r.Reason, "expired") {
		t.Errorf("judged as of its arrival: %+v", r)
	}
}

// TestFiftySets checks the RFC 8617 4.2.1 bound end to end: a 50-set chain
// validates, a 51st set cannot be sealed, and a forged 51st set fails.
func TestFiftySets(t *testing.T) {
	v := newTestValidator(t, testRecords(edKey))
	raw := []byte(baseMessage)
	for range 50 {
		raw = sealHop(t, v, edKey, raw, hopDomains[0], []string{"from"})
	}
	m := parseRaw(t, raw)
	r := v.Validate(context.Background(), m)
	if r.Result != ResultPass || r.Instances != 50 || r.OldestPass != 1 {
		t.Fatalf("50 sets: %s %s (%d sets)", r.Result, r.Reason, r.Instances)
	}
	s := &Sealer{Domain: hopDomains[0], Selector: "s1", Key: edKey, AuthServID: "x", Now: suiteClock}
	if _, err := s.Seal(m, r, ""); !errors.Is(err, ErrNoSeal) {
		t.Errorf("51st seal: %v", err)
	}
	forged := "ARC-Seal: i=51; a=ed25519-sha256; cv=pass; d=x.example; s=s; b=AAAA\r\n" +
		"ARC-Message-Signature: i=51; a=ed25519-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA\r\n" +
		"ARC-Authentication-Results: i=51; x.example; none\r\n" + string(raw)
	if r := validateString(t, v, forged); r.Result != ResultFail || !strings.Contains(r.Reason, "50 sets") {
		t.Errorf("51 sets: %s %s", r.Result, r.Reason)
	}
}

// TestPrefetchChainKeys: validating a three-hop chain whose keys are not
// held offers Prefetch the other two sealers' keys once, when the first
// key must come from DNS, and nothing once the keys are held.
func TestPrefetchChainKeys(t *testing.T) {
	key := rsaKey()
	v := newTestValidator(t, testRecords(key))
	raw := sealChain(t, v, key, []byte(baseMessage), 3)
	// A validator with an empty key cache, as after a restart.
	var offered []string
	cold := newTestValidator(t, testRecords(key))
	cold.Prefetch = func(_ context.Context, names []string) { offered = append(offered, names...) }
	if r := validateString(t, cold, string(raw)); r.Result != ResultPass {
		t.Fatalf("result %+v", r)
	}
	// The newest AMS key (mx.example.com) is asked for first; the others,
	// newest first, are offered before it.
	if want := "[s1._domainkey.fwd.example.net s1._domainkey.list.example.org]"; fmt.Sprint(offered) != want {
		t.Errorf("offered %v, want %s", offered, want)
	}
	offered = nil
	if r := validateString(t, cold, string(raw)); r.Result != ResultPass {
		t.Fatalf("warm result %+v", r)
	}
	if offered != nil {
		t.Errorf("warm chain offered %v", offered)
	}
}

// TestPrefetchBounded: a chain of twelve sets, each sealed under a key of
// its own that is not held, has MaxPrefetchKeys keys offered, the newest
// sets', not all eleven others: validation of a forged chain stops
// at its first failure, and must not have asked for a key per set first.
func TestPrefetchBounded(t *testing.T) {
	raw := []byte(baseMessage)
	chain := Result{Result: ResultNone}
	var domains []string
	for i := 1; i <= 12; i++ {
		m := parseRaw(t, raw)
		d := fmt.Sprintf("hop%d.example", i)
		domains = append(domains, d)
		s := &Sealer{Domain: d, Selector: "s1", Key: edKey, AuthServID: d, Now: suiteClock}
		set, err := s.Seal(m, chain, "arc="+chain.Result)
		if err != nil {
			t.Fatal(err)
		}
		raw = set.Prepend(m.Raw)
		chain = Result{Result: ResultPass, Instances: i}
	}
	v := newTestValidator(t, map[string]string{}) // no keys published
	var offered []string
	v.Prefetch = func(_ context.Context, names []string) { offered = append(offered, names...) }
	if r := validateString(t, v, string(raw)); r.Result != ResultFail || r.Instances != 12 {
		t.Fatalf("result %+v", r)
	}
	// hop12 is fetched first; then hop11 down to hop8 are offered.
	var want []string
	for _, d := range slices.Backward(domains[12-1-MaxPrefetchKeys : 11]) {
		want = append(want, "s1._domainkey."+d)
	}
	if fmt.Sprint(offered) != fmt.Sprint(want) {
		t.Errorf("offered %v, want %v", offered, want)
	}
}
