package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/message"
)

func TestVerifyGoMsgauthSigned(t *testing.T) {
	v, _ := testEnv(t)
	for _, ed := range []bool{false, true} {
		for _, hc := range []string{"simple", "relaxed"} {
			for _, bc := range []string{"simple", "relaxed"} {
				signed := goSign(t, baseMsg, ed, hc, bc)
				r := wantOne(t, verifyRaw(t, v, signed), Pass, "")
				if r.Domain != "example.org" || r.Canonicalization != hc+"/"+bc || r.Identity != "" || len(r.BHeader) < 8 {
					t.Errorf("result %+v", r)
				}
				if ed && (r.Algorithm != "ed25519-sha256" || r.KeyBits != 256) || !ed && (r.Algorithm != "rsa-sha256" || r.KeyBits != 2048) {
					t.Errorf("algorithm %s bits %d", r.Algorithm, r.KeyBits)
				}
				// LF line ends verify too.
				lf := bytes.ReplaceAll(signed, []byte("\r\n"), []byte("\n"))
				wantOne(t, verifyRaw(t, v, lf), Pass, "")
				// Tampering.
				body := bytes.Replace(signed, []byte("second line"), []byte("second Line"), 1)
				wantOne(t, verifyRaw(t, v, body), Fail, "body hash")
				hdr := bytes.Replace(signed, []byte("Subject: test"), []byte("Subject: Test"), 1)
				wantOne(t, verifyRaw(t, v, hdr), Fail, "signature did not verify")
			}
		}
	}
}

func TestRelaxedWhitespaceTolerance(t *testing.T) {
	v, _ := testEnv(t)
	signed := goSign(t, baseMsg, false, "relaxed", "relaxed")
	// Relaxed survives refolding and whitespace changes in body lines.
	s := bytes.Replace(signed, []byte("Subject: test message"), []byte("subject:   test\r\n\tmessage "), 1)
	s = bytes.Replace(s, []byte("Hello  world \r\n"), []byte("Hello \t world\r\n"), 1)
	s = append(s, []byte("  \r\n\r\n")...)
	wantOne(t, verifyRaw(t, v, s), Pass, "")
}

func TestCanonicalizeHeader(t *testing.T) {
	raw := []byte("SubJect : A  \t b\r\n\t c  \r\n")
	if got := string(CanonicalizeHeader(nil, raw, Relaxed)); got != "subject:A b c\r\n" {
		t.Errorf("relaxed = %q", got)
	}
	if got := CanonicalizeHeader(nil, raw, Simple); !bytes.Equal(got, raw) {
		t.Errorf("simple = %q", got)
	}
	if got := string(CanonicalizeHeader(nil, []byte("X:\r\n"), Relaxed)); got != "x:\r\n" {
		t.Errorf("empty = %q", got)
	}
}

func TestBodyHash(t *testing.T) {
	// RFC 6376 3.4.5 examples.
	body := []byte(" C \r\nD \t E\r\n\r\n\r\n")
	sum := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	cases := []struct {
		c    Canonicalization
		want string
	}{
		{Relaxed, " C\r\nD E\r\n"},
		{Simple, " C \r\nD \t E\r\n"},
	}
	for _, c := range cases {
		got, n := BodyHash(body, c.c, crypto.SHA256, -1)
		if !bytes.Equal(got, sum(c.want)) || n != int64(len(c.want)) {
			t.Errorf("%s: len %d", c.c, n)
		}
	}
	// Empty bodies: simple is CRLF, relaxed is empty (RFC 6376 3.4.3/3.4.4).
	if got, n := BodyHash(nil, Simple, crypto.SHA256, -1); !bytes.Equal(got, sum("\r\n")) || n != 2 {
		t.Error("simple empty")
	}
	if got, n := BodyHash([]byte("\r\n \r\n"), Relaxed, crypto.SHA256, -1); !bytes.Equal(got, sum("")) || n != 0 {
		t.Error("relaxed empty")
	}
	// No trailing CRLF; limit.
	if got, _ := BodyHash([]byte("abc"), Relaxed, crypto.SHA256, -1); !bytes.Equal(got, sum("abc\r\n")) {
		t.Error("relaxed no CRLF")
	}
	if got, n := BodyHash([]byte("abc def\r\n"), Relaxed, crypto.SHA256, 4); !bytes.Equal(got, sum("abc ")) || n != 9 {
		t.Error("limit")
	}
	// A bare CR is content, not whitespace.
	if got, _ := BodyHash([]byte("a\r\n\r\r\n"), Relaxed, crypto.SHA256, -1); !bytes.Equal(got, sum("a\r\n\r\r\n")) {
		t.Error("bare CR")
	}
}

func TestStripSignature(t *testing.T) {
	cases := map[string]string{
		"DKIM-Signature: v=1; b=abc\r\n def; bh=x\r\n": "DKIM-Signature: v=1; b=; bh=x\r\n",
		"DKIM-Signature: v=1; bh=x; b = abc\r\n":       "DKIM-Signature: v=1; bh=x; b =\r\n",
		"DKIM-Signature: v=1; bh=b=x\r\n":              "DKIM-Signature: v=1; bh=b=x\r\n",
		"ARC-Seal: i=1; b=Zm9v;\r\n":                   "ARC-Seal: i=1; b=;\r\n",
	}
	for in, want := range cases {
		if got := string(StripSignature([]byte(in))); got != want {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestParseTagList(t *testing.T) {
	m, err := ParseTagList(" v = 1 ; a=rsa-sha256;\r\n\th=from :\r\n to ; ")
	if err != nil || m["v"] != "1" || m["a"] != "rsa-sha256" || m["h"] != "from :\r\n to" || len(m) != 3 {
		t.Errorf("got %q %v", m, err)
	}
	for _, bad := range []string{"a=1; a=2", "novalue", "1a=x", "=x", "a b=c"} {
		if _, err := ParseTagList(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := ParseTagList(strings.Repeat("a=b;", 1) + strings.Repeat("x", 0)); err != nil {
		t.Error(err)
	}
}

func TestParseKeyRecord(t *testing.T) {
	testKeys(t)
	k, err := ParseKeyRecord(rsaKeyText + "; h=sha256:foo; s=email; t=y:s; n=note")
	if err != nil || k.Algorithm != "rsa" || k.Bits != 2048 || !k.AllowsHash("sha256") || k.AllowsHash("sha1") || !k.AllowsEmail() || !k.HasFlag("y") || !k.HasFlag("s") {
		t.Fatalf("%+v %v", k, err)
	}
	k, err = ParseKeyRecord(edKeyText)
	if err != nil || k.Algorithm != "ed25519" || len(k.Ed25519) != 32 {
		t.Fatalf("%+v %v", k, err)
	}
	// Bare PKCS#1 RSAPublicKey is accepted (erratum 3017).
	p1 := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey))
	if k, err := ParseKeyRecord("p=" + p1); err != nil || k.Bits != 2048 {
		t.Errorf("pkcs1: %v", err)
	}
	if k, err := ParseKeyRecord("v=DKIM1; p="); err != nil || !k.Revoked {
		t.Errorf("revoked: %+v %v", k, err)
	}
	for _, bad := range []string{
		"v=DKIM2; p=" + p1, "k=rsa; v=DKIM1; p=" + p1, "k=dsa; p=" + p1, "v=DKIM1", "p=!!!!", "p=" + p1 + "; p=" + p1,
		"k=ed25519; p=" + p1, "p=AAAA",
	} {
		_, err := ParseKeyRecord(bad)
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Temporary() {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestKeyPolicies(t *testing.T) {
	v, r := testEnv(t)
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	p := base64.StdEncoding.EncodeToString(der)
	cases := []struct {
		rec    string
		extra  string
		want   Status
		reason string
	}{
		{"v=DKIM1; p=", "", PermError, "revoked"},
		{"v=DKIM1; s=tlsrpt; p=" + p, "", PermError, "s= does not allow"},
		{"v=DKIM1; s=email:tlsrpt; p=" + p, "", Pass, ""},
		{"v=DKIM1; s=*; p=" + p, "", Pass, ""},
		{"v=DKIM1; h=sha1; p=" + p, "", PermError, "h= does not allow"},
		{"v=DKIM1; k=ed25519; p=" + p, "", PermError, "key syntax"},
		{"v=DKIM1; t=s; p=" + p, " i=@sub.example.org;", PermError, "t=s"},
		{"v=DKIM1; t=s; p=" + p, " i=u@example.org;", Pass, ""},
		{"v=DKIM1; t=y; p=" + p, "", Pass, "testing"},
		{"v=spf1 -all", "", PermError, "incompatible key version"},
	}
	for _, c := range cases {
		r.set("k1._domainkey.example.org", c.rec)
		v.Keys = &KeyFetcher{Resolver: r}
		res := verifyRaw(t, v, ownSign(t, baseMsg, ownSig{s: "k1", extra: c.extra, l: -1}))
		got := wantOne(t, res, c.want, c.reason)
		if strings.Contains(c.rec, "t=y") && !got.Testing {
			t.Error("testing flag not reported")
		}
	}
	// ed25519 key for an rsa signature.
	r.set("k2._domainkey.example.org", edKeyText)
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{s: "k2", l: -1})), PermError, "does not match")
	// Multiple TXT: first valid key wins.
	r.set("k3._domainkey.example.org", "v=spf1 -all", rsaKeyText)
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{s: "k3", l: -1})), Pass, "")
}

func TestRSAKeySizes(t *testing.T) {
	v, r := testEnv(t)
	small := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 511), E: 65537}
	small.N.Add(small.N, big.NewInt(1))
	der, _ := x509.MarshalPKIXPublicKey(small)
	r.set("small._domainkey.example.org", "p="+base64.StdEncoding.EncodeToString(der))
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{s: "small", l: -1})), PermError, "under 1024")
	v.MaxRSABits = 1024
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: -1})), PermError, "over 1024")
}

func TestSignaturePolicies(t *testing.T) {
	v, _ := testEnv(t)
	now := time.Unix(1_800_000_000, 0)
	v.Now = func() time.Time { return now }
	type tc struct {
		name   string
		sig    ownSig
		want   Status
		reason string
	}
	cases := []tc{
		{"sha1 refused", ownSig{a: "rsa-sha1", l: -1}, PermError, "RFC 8301"},
		{"unknown alg", ownSig{a: "rsa-md5", l: -1}, PermError, "unsupported algorithm"},
		{"no from", ownSig{h: "to:subject", l: -1}, PermError, "From"},
		{"i outside d", ownSig{extra: " i=x@example.com;", l: -1}, PermError, "not within"},
		{"i subdomain", ownSig{extra: " i=x@Mail.Example.org;", l: -1}, Pass, ""},
		{"expired", ownSig{extra: " t=1700000000; x=1700000100;", l: -1}, PermError, "expired"},
		{"not expired", ownSig{extra: " t=1799999000; x=1800000100;", l: -1}, Pass, ""},
		{"x before t", ownSig{extra: " t=1799999000; x=1799998000;", l: -1}, PermError, "before t="},
		{"future", ownSig{extra: " t=1800001000;", l: -1}, PermError, "future"},
		{"skew ok", ownSig{extra: " t=1800000100;", l: -1}, Pass, ""},
		{"bad q", ownSig{extra: " q=http;", l: -1}, PermError, "query method"},
		{"q dns/txt", ownSig{extra: " q=dns/txt;", l: -1}, Pass, ""},
		{"bad c", ownSig{c: "relaxed/nowsp", l: -1}, PermError, "canonicalization"},
		{"c relaxed alone", ownSig{c: "relaxed", l: -1}, Pass, ""},
		{"l= rejected", ownSig{l: 10}, Policy, "l=10"},
		{"l= too long", ownSig{l: 100000}, Fail, "exceeds"},
		{"unknown tag", ownSig{extra: " zz=whatever;", l: -1}, Pass, ""},
		{"dup tag", ownSig{extra: " d=example.org;", l: -1}, PermError, "duplicate"},
		{"ed25519", ownSig{a: "ed25519-sha256", s: "ed", l: -1}, Pass, ""},
		{"no key", ownSig{s: "missing", l: -1}, PermError, "no key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, c.sig)), c.want, c.reason)
		})
	}
	// With AllowSHA1, sha1 passes; with honour, l= passes with PartialBody.
	v.AllowSHA1 = true
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{a: "rsa-sha1", l: -1})), Pass, "")
	v.BodyLength = "honour"
	r := wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: 10})), Pass, "")
	if !r.PartialBody || r.BodyLength != 10 {
		t.Errorf("partial body not reported: %+v", r)
	}
	// l= covering exactly the body is not partial; appended text is.
	full := ownSign(t, baseMsg, ownSig{l: 26})
	if r := wantOne(t, verifyRaw(t, v, full), Pass, ""); r.PartialBody {
		t.Error("full l= reported partial")
	}
	if r := wantOne(t, verifyRaw(t, v, append(full, "appended by attacker\r\n"...)), Pass, ""); !r.PartialBody {
		t.Error("appended text not reported")
	}
	// Archived mail: x= judged as of Now.
	v.Now = func() time.Time { return time.Unix(1_700_000_050, 0) }
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{extra: " t=1700000000; x=1700000100;", l: -1})), Pass, "")
}

func TestDNSFailures(t *testing.T) {
	v, r := testEnv(t)
	r.fail["rsa._domainkey.example.org"] = resolvercache.KindTimeout
	res := wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: -1})), TempError, "key unavailable")
	_ = res
	r.fail["rsa._domainkey.example.org"] = resolvercache.KindServFail
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: -1})), TempError, "servfail")
	r.fail["rsa._domainkey.example.org"] = resolvercache.KindBadName
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: -1})), PermError, "")
	// Temporary failures are not cached.
	delete(r.fail, "rsa._domainkey.example.org")
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{l: -1})), Pass, "")
	// No resolver configured.
	wantOne(t, verifyRaw(t, &Verifier{}, ownSign(t, baseMsg, ownSig{l: -1})), TempError, "no key fetcher")
}

func TestKeyFetcherCache(t *testing.T) {
	testKeys(t)
	r := newMapResolver()
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	r.now = now
	r.ttl = 60
	r.set("a._domainkey.example.org", rsaKeyText)
	kf := &KeyFetcher{Resolver: r, Now: now, MaxEntries: 2}
	ctx := context.Background()
	k1, err := kf.Fetch(ctx, "example.org", "a")
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := kf.Fetch(ctx, "example.org", "a")
	if k1 != k2 || r.lookups.Load() != 1 {
		t.Errorf("not cached: lookups %d", r.lookups.Load())
	}
	if !k1.Expires.Equal(clock.Add(60 * time.Second)) {
		t.Errorf("expires %v", k1.Expires)
	}
	// Permanent errors are cached too.
	if _, err := kf.Fetch(ctx, "example.org", "none"); err == nil || IsTemporary(err) {
		t.Fatal(err)
	}
	kf.Fetch(ctx, "example.org", "none")
	if r.lookups.Load() != 2 {
		t.Errorf("negative not cached: %d", r.lookups.Load())
	}
	// Bounded: a third key evicts one.
	kf.Fetch(ctx, "example.org", "c")
	if kf.Len() != 2 {
		t.Errorf("len %d", kf.Len())
	}
	// Expiry after TTL.
	clock = clock.Add(61 * time.Second)
	before := r.lookups.Load()
	kf.Fetch(ctx, "example.org", "a")
	if r.lookups.Load() != before+1 {
		t.Error("expired entry served")
	}
	// Invalid names are permanent errors without a lookup.
	if _, err := kf.Fetch(ctx, "example..org", "a"); err == nil || IsTemporary(err) {
		t.Errorf("bad name: %v", err)
	}
}

// TestKeyFetcherEviction: a full cache drops its expired entries first,
// then arbitrary ones down to 7/8 of the bound, so the next eighth of new
// keys is stored without another pass.
func TestKeyFetcherEviction(t *testing.T) {
	const max = 16
	r := newMapResolver()
	clock := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return clock }
	r.now = now
	kf := &KeyFetcher{Resolver: r, Now: now, MaxEntries: max}
	ctx := context.Background()
	fetch := func(sel string) { kf.Fetch(ctx, "example.org", sel) } // NXDOMAIN: a cached permanent error
	r.ttl = 60
	for i := range max / 2 {
		fetch(fmt.Sprintf("short%d", i))
	}
	r.ttl = 600
	for i := range max / 2 {
		fetch(fmt.Sprintf("long%d", i))
	}
	if kf.Len() != max {
		t.Fatalf("len %d, want %d", kf.Len(), max)
	}
	// Expired entries go first, and suffice: every long-lived one stays.
	clock = clock.Add(61 * time.Second)
	fetch("new0")
	if kf.Len() != max/2+1 {
		t.Fatalf("after expiry: len %d, want %d", kf.Len(), max/2+1)
	}
	before := r.lookups.Load()
	for i := range max / 2 {
		fetch(fmt.Sprintf("long%d", i))
	}
	if got := r.lookups.Load() - before; got != 0 {
		t.Errorf("%d long-lived entries were evicted", got)
	}
	// Full of live entries: one new key frees max/8 slots beyond its own.
	for i := 1; kf.Len() < max; i++ {
		fetch(fmt.Sprintf("new%d", i))
	}
	fetch("over")
	if want := max - max/8; kf.Len() != want {
		t.Fatalf("after overflow: len %d, want %d", kf.Len(), want)
	}
	for i := range max/8 - 1 {
		fetch(fmt.Sprintf("more%d", i))
	}
	if kf.Len() != max-1 {
		t.Fatalf("len %d, want %d: evicted again before full", kf.Len(), max-1)
	}
}

// TestKeyFetcherKeepsRecentlyUsed: a full cache evicts the entries least
// recently stored or found first, so keys in use survive a stream of new
// ones: here half the cache is found again before each eighth of new
// keys, and none of that half is ever looked up again.
func TestKeyFetcherKeepsRecentlyUsed(t *testing.T) {
	const max = 64
	r := newMapResolver()
	kf := &KeyFetcher{Resolver: r, MaxEntries: max}
	ctx := context.Background()
	fetch := func(sel string) { kf.Fetch(ctx, "example.org", sel) } // NXDOMAIN: a cached permanent error
	for i := range max {
		fetch(fmt.Sprintf("hot%d", i))
	}
	before := r.lookups.Load()
	for round := range 8 {
		for i := range max / 2 {
			fetch(fmt.Sprintf("hot%d", i))
		}
		for i := range max / 8 {
			fetch(fmt.Sprintf("cold%d-%d", round, i))
		}
	}
	if got, want := r.lookups.Load()-before, int64(8*max/8); got != want {
		t.Errorf("%d lookups, want %d (the new keys only): keys in use were evicted", got, want)
	}
	if kf.Len() > max {
		t.Errorf("len %d over %d", kf.Len(), max)
	}
}

// TestKeyFetcherChurn: a full cache replacing its entries stays at its
// size (evict copies the map once as many entries have been deleted as it
// holds; without that the cache grew 2.6-fold over 100 rounds of
// replacement here, and went on growing), and keeps copies of the names,
// not the strings passed.
func TestKeyFetcherChurn(t *testing.T) {
	const max = 2048
	live := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	base := live()
	kf := &KeyFetcher{Resolver: newMapResolver(), MaxEntries: max}
	ctx := context.Background()
	field := strings.Repeat("x", 1024) // d= and s= are substrings of a whole field
	fetch := func(i int) {
		s := "s" + strconv.Itoa(i) + "." + field
		kf.Fetch(ctx, "example.org", s[:len(s)-len(field)-1]) // NXDOMAIN: a cached permanent error
	}
	for i := range max {
		fetch(i)
	}
	full := live() - base
	for i := max; i < 100*max; i++ {
		fetch(i)
	}
	grown := live() - base - full
	t.Logf("%d entries: %d bytes; %d more after %d replacements", max, full, grown, 99*max)
	if full > max*1024 || grown > full/4 {
		t.Errorf("the cache took %d bytes full and %d more after replacing its entries", full, grown)
	}
	runtime.KeepAlive(kf)
}

func TestMaxSignatures(t *testing.T) {
	v, r := testEnv(t)
	signed := []byte(baseMsg)
	for i := 0; i < 7; i++ {
		signed = ownSign(t, string(signed), ownSig{l: -1, extra: fmt.Sprintf(" z=%d;", i)})
	}
	before := r.lookups.Load()
	res := verifyRaw(t, v, signed)
	if len(res) != 7 {
		t.Fatalf("%d results", len(res))
	}
	for i, x := range res {
		if i < 5 && x.Result != Pass || i >= 5 && (x.Result != Policy || !x.Skipped || !strings.Contains(x.Reason, "not evaluated")) {
			t.Errorf("sig %d: %+v", i, x)
		}
		if x.Domain != "example.org" || x.Index != i {
			t.Errorf("sig %d: %+v", i, x)
		}
	}
	if r.lookups.Load()-before > 1 {
		t.Errorf("lookups %d", r.lookups.Load()-before)
	}
	// BHeader values are distinct.
	seen := map[string]bool{}
	for _, x := range res {
		if seen[x.BHeader] {
			t.Errorf("duplicate header.b %q", x.BHeader)
		}
		seen[x.BHeader] = true
	}
	// Identical signatures get the whole b= value as header.b.
	dup := goSign(t, baseMsg, false, "relaxed", "relaxed")
	f := dup[:bytes.Index(dup, []byte("\r\nFrom: "))+2]
	res2 := verifyRaw(t, v, append(append([]byte(nil), f...), dup...))
	if len(res2) != 2 || res2[0].BHeader != res2[1].BHeader || len(res2[0].BHeader) < 300 {
		t.Errorf("identical signatures: %q", res2[0].BHeader)
	}
	v.MaxSignatures = 2
	res = verifyRaw(t, v, signed)
	if res[1].Skipped || !res[2].Skipped {
		t.Error("MaxSignatures=2 not honoured")
	}
}

func TestHeaderStack(t *testing.T) {
	v, _ := testEnv(t)
	signed := ownSign(t, baseMsg, ownSig{l: -1})
	attack := append([]byte("From: ceo@example.org\r\n"), signed...)
	res := wantOne(t, verifyRaw(t, v, attack), Policy, "2 from fields")
	if len(res.UnsignedStack) != 1 || res.UnsignedStack[0] != (StackFinding{Field: "from", Present: 2, Signed: 1}) {
		t.Errorf("findings %+v", res.UnsignedStack)
	}
	// Knob off: pass, finding still reported.
	v.HeaderStack = map[string]bool{}
	if res := wantOne(t, verifyRaw(t, v, attack), Pass, ""); len(res.UnsignedStack) != 1 {
		t.Error("finding missing")
	}
	// Oversigning From protects and is reported.
	over := ownSign(t, baseMsg, ownSig{h: "from:from:to:subject", l: -1})
	v.HeaderStack = nil
	if res := wantOne(t, verifyRaw(t, v, over), Pass, ""); len(res.Oversigned) != 1 || res.Oversigned[0] != "from" {
		t.Errorf("oversigned %+v", res.Oversigned)
	}
	wantOne(t, verifyRaw(t, v, append([]byte("From: ceo@example.org\r\n"), over...)), Fail, "signature did not verify")
}

func TestMalformedSignatures(t *testing.T) {
	v, _ := testEnv(t)
	for _, f := range []string{
		"DKIM-Signature: v=1; a=rsa-sha256\r\n",
		"DKIM-Signature: garbage\r\n",
		"DKIM-Signature: v=2; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=!!; b=AAAA\r\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=example..org; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=\r\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; l=x; bh=AAAA; b=AAAA\r\n",
		"DKIM-Signature: \r\n",
	} {
		res := verifyRaw(t, v, []byte(f+baseMsg))
		if len(res) != 1 || res[0].Result != PermError {
			t.Errorf("%q: %+v", f, res)
		}
	}
	if res := verifyRaw(t, v, []byte(baseMsg)); res != nil {
		t.Errorf("unsigned: %+v", res)
	}
}

func TestResultJSON(t *testing.T) {
	v, _ := testEnv(t)
	res := verifyRaw(t, v, goSign(t, baseMsg, false, "relaxed", "relaxed"))
	b, err := json.Marshal(res[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"result":"pass"`, `"domain":"example.org"`, `"selector":"rsa"`, `"algorithm":"rsa-sha256"`, `"key_bits":2048`, `"b_header":`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON %s lacks %s", b, k)
		}
	}
}

func TestVerifySignatureAPI(t *testing.T) {
	testKeys(t)
	k, _ := ParseKeyRecord(edKeyText)
	d := sha256.Sum256([]byte("x"))
	sig, _ := edKey.Sign(nil, d[:], crypto.Hash(0))
	if err := VerifySignature(k, "ed25519-sha256", d[:], sig); err != nil {
		t.Error(err)
	}
	if err := VerifySignature(k, "rsa-sha256", d[:], sig); err == nil {
		t.Error("wrong algorithm accepted")
	}
	if err := VerifySignature(nil, "rsa-sha256", d[:], sig); err == nil {
		t.Error("nil key accepted")
	}
}

func FuzzParseTagList(f *testing.F) {
	f.Add("v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to; bh=AAAA; b=BBBB")
	f.Add(" a = b ; ;c=\r\n d;")
	f.Add("a=1;a=2")
	f.Add("=")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseTagList(s)
		if err != nil {
			return
		}
		for k, v := range m {
			if k == "" || strings.ContainsAny(k, "=; \t\r\n") || strings.Contains(v, ";") || trimFWS(v) != v {
				t.Fatalf("bad tag %q=%q", k, v)
			}
		}
		// The signature parser agrees on success.
		var sig sigTags
		_ = sig.parse(s)
	})
}

func FuzzParseKeyRecord(f *testing.F) {
	testKeys(f)
	f.Add(rsaKeyText)
	f.Add(edKeyText)
	f.Add("v=DKIM1; p=")
	f.Add("v=DKIM1; k=rsa; h=sha1:sha256; s=email; t=y:s; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBALgSoqXVSEmfcIsOzw7oRuCCOwsmtX/SJnTWxYyj2leFxfS/AVJ+dYfY+hXqMsT7l+MZvvh/R1WzN4MO/kI/7XsCAwEAAQ==")
	f.Add("k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKeyRecord(s)
		if err != nil {
			var ke *KeyError
			if !errors.As(err, &ke) || ke.Temp {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		switch {
		case k.Revoked:
		case k.Algorithm == "rsa" && k.RSA != nil && k.Bits == k.RSA.N.BitLen():
		case k.Algorithm == "ed25519" && len(k.Ed25519) == 32:
		default:
			t.Fatalf("inconsistent key %+v", k)
		}
	})
}

func FuzzBase64(f *testing.F) {
	f.Add("Zm9v")
	f.Add("Zm8=")
	f.Add("Z m\r\n 8")
	f.Add("Zg==")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := appendBase64(nil, s)
		clean := strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, s)
		want, err2 := base64.RawStdEncoding.DecodeString(strings.TrimRight(clean, "="))
		if err == nil && err2 == nil && !bytes.Equal(got, want) {
			t.Fatalf("%q: %x != %x", s, got, want)
		}
		if err == nil && err2 != nil && !strings.Contains(clean, "=") {
			t.Fatalf("%q accepted, stdlib says %v", s, err2)
		}
	})
}

// Keep message imported for helpers used in other files.
var _ = message.Limits{}

func TestSignedHeadersBound(t *testing.T) {
	v, _ := testEnv(t)
	h := "from" + strings.Repeat(":x", MaxSignedHeaders)
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{h: h, l: -1})), PermError, "over the limit")
	h = "from" + strings.Repeat(":x", MaxSignedHeaders-1)
	wantOne(t, verifyRaw(t, v, ownSign(t, baseMsg, ownSig{h: h, l: -1})), Pass, "")
}

func TestConcurrentVerify(t *testing.T) {
	v, r := testEnv(t)
	msgs := [][]byte{
		goSign(t, baseMsg, false, "relaxed", "simple"),
		goSign(t, baseMsg, true, "simple", "relaxed"),
		append([]byte("From: x@y.test\r\n"), goSign(t, baseMsg, false, "relaxed", "relaxed")...),
	}
	want := []Status{Pass, Pass, Policy}
	done := make(chan error)
	for g := 0; g < 8; g++ {
		go func(g int) {
			for i := 0; i < 30; i++ {
				k := (g + i) % len(msgs)
				m, err := message.Parse(msgs[k], message.Limits{})
				if err != nil {
					done <- err
					return
				}
				res := v.Verify(context.Background(), m)
				if len(res) != 1 || res[0].Result != want[k] {
					done <- fmt.Errorf("message %d: %+v", k, res)
					return
				}
			}
			done <- nil
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := r.lookups.Load(); n > 16 {
		t.Errorf("%d lookups for 2 keys", n)
	}
}

func TestHashHeadersExported(t *testing.T) {
	signed := goSign(t, baseMsg, false, "relaxed", "relaxed")
	m, err := message.Parse(signed, message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	tags, _ := ParseTagList(string(m.Fields[0].Value))
	a, b := sha256.New(), sha256.New()
	HashHeaders(a, m.Fields, tags["h"], Relaxed, m.Fields[0].Raw)
	st := verifyState{m: m}
	st.hashHeaders(b, 0, tags["h"], Relaxed)
	if !bytes.Equal(a.Sum(nil), b.Sum(nil)) {
		t.Fatal("HashHeaders differs from the verifier")
	}
	testKeys(t)
	k, _ := ParseKeyRecord(rsaKeyText)
	sig, _ := appendBase64(nil, tags["b"])
	if err := VerifySignature(k, "rsa-sha256", a.Sum(nil), sig); err != nil {
		t.Fatal(err)
	}
}

// TestKeyFetcherBytesScale: the byte bound follows MaxEntries
// (KeyCacheBytesFor): a cache of 1,000 keys filled with entries charged
// about 6 KB each stops at KeyCacheBytesFor(1000), well before its count.
func TestKeyFetcherBytesScale(t *testing.T) {
	if got := KeyCacheBytesFor(DefaultKeyCacheEntries); got != KeyCacheBytes {
		t.Fatalf("KeyCacheBytesFor(default) = %d, want KeyCacheBytes %d", got, KeyCacheBytes)
	}
	if got := KeyCacheBytesFor(10); got != 1<<20 {
		t.Fatalf("KeyCacheBytesFor(10) = %d, want the 1 MiB floor", got)
	}
	const max = 1000
	r := newMapResolver()
	kf := &KeyFetcher{Resolver: r, MaxEntries: max}
	bound := KeyCacheBytesFor(max)
	// A malformed tag: the error quotes it, \x01 as four octets, so the
	// entry is charged about 6 KB.
	bad := "v=DKIM1; p=; " + strings.Repeat("\x01", 1400)
	ctx := context.Background()
	for i := range max {
		sel := fmt.Sprintf("s%d", i)
		r.set(sel+"._domainkey.example.org", bad)
		if _, err := kf.Fetch(ctx, "example.org", sel); err == nil {
			t.Fatal("malformed key accepted")
		}
		if b := kf.Bytes(); b > bound {
			t.Fatalf("after %d keys: %d bytes charged, bound %d", i+1, b, bound)
		}
	}
	if kf.Len() >= max {
		t.Errorf("%d entries: the byte bound (%d) never applied", kf.Len(), bound)
	}
	t.Logf("%d of %d entries, %d bytes charged, bound %d", kf.Len(), max, kf.Bytes(), bound)
}
