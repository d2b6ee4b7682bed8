package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/message"
)

// mapResolver is a map-backed resolvercache.Resolver for unit tests.
type mapResolver struct {
	mu      sync.Mutex
	txt     map[string][]string
	fail    map[string]resolvercache.ErrorKind
	ttl     uint32
	now     func() time.Time
	lookups atomic.Int64
}

func newMapResolver() *mapResolver {
	return &mapResolver{txt: map[string][]string{}, fail: map[string]resolvercache.ErrorKind{}, ttl: 300}
}

func (r *mapResolver) set(name string, txt ...string) {
	r.mu.Lock()
	r.txt[strings.ToLower(name)] = txt
	r.mu.Unlock()
}

func (r *mapResolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	r.lookups.Add(1)
	name = resolvercache.CanonicalName(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.fail[name]; ok {
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: k}
	}
	now := time.Now()
	if r.now != nil {
		now = r.now()
	}
	a := &resolvercache.Answer{Name: name, Type: qtype, TTL: r.ttl, Received: now}
	txt, ok := r.txt[name]
	if !ok {
		a.Rcode = 3 // NXDOMAIN
		return a, nil
	}
	a.TXT = txt
	return a, nil
}

var (
	keysOnce   sync.Once
	rsaKey     *rsa.PrivateKey
	edKey      ed25519.PrivateKey
	rsaKeyText string
	edKeyText  string
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		rsaKey, err = rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
		rsaKeyText = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
		edKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
		edKeyText = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edKey.Public().(ed25519.PublicKey))
	})
}

// testEnv is a verifier over a map resolver holding the test keys at
// rsa._domainkey.example.org and ed._domainkey.example.org.
func testEnv(t testing.TB) (*Verifier, *mapResolver) {
	testKeys(t)
	r := newMapResolver()
	r.set("rsa._domainkey.example.org", rsaKeyText)
	r.set("ed._domainkey.example.org", edKeyText)
	return &Verifier{Keys: &KeyFetcher{Resolver: r}}, r
}

const baseMsg = "From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: test message\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello  world \r\nsecond line\r\n\r\n\r\n"

// goSign signs raw with go-msgauth (the oracle) and returns the signed
// message.
func goSign(t testing.TB, raw string, ed bool, hc, bc string) []byte {
	t.Helper()
	testKeys(t)
	opts := &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: rsaKey,
		HeaderCanonicalization: msgauth.Canonicalization(hc), BodyCanonicalization: msgauth.Canonicalization(bc),
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"}}
	if ed {
		opts.Selector, opts.Signer = "ed", edKey
	}
	var out bytes.Buffer
	if err := msgauth.Sign(&out, strings.NewReader(raw), opts); err != nil {
		t.Fatalf("dkim.Sign: %v", err)
	}
	return out.Bytes()
}

// ownSig describes a signature made by ownSign, for policy cases go-msgauth
// cannot sign (rsa-sha1, l=, x=, i=, unusual tags).
type ownSig struct {
	a     string // default rsa-sha256
	d, s  string // default example.org, rsa
	c     string // default relaxed/relaxed
	h     string // default from:to:subject
	extra string // more tags, e.g. " i=@x.example.org;"
	l     int64  // -1: no l=
	key   crypto.Signer
}

// ownSign prepends a DKIM-Signature to raw computed with this package's
// canonicalisation (verified against go-msgauth in other tests).
func ownSign(t testing.TB, raw string, o ownSig) []byte {
	t.Helper()
	testKeys(t)
	if o.a == "" {
		o.a = "rsa-sha256"
	}
	if o.d == "" {
		o.d = "example.org"
	}
	if o.s == "" {
		o.s = "rsa"
	}
	if o.c == "" {
		o.c = "relaxed/relaxed"
	}
	if o.h == "" {
		o.h = "from:to:subject"
	}
	if o.key == nil {
		o.key = rsaKey
		if strings.HasPrefix(o.a, "ed25519") {
			o.key = edKey
		}
	}
	hc, bc, _ := strings.Cut(o.c, "/")
	if bc == "" {
		bc = "simple"
	}
	h := crypto.SHA256
	if strings.HasSuffix(o.a, "sha1") {
		h = crypto.SHA1
	}
	m, err := message.Parse([]byte(raw), message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	lim := int64(-1)
	ltag := ""
	if o.l >= 0 {
		lim = o.l
		ltag = fmt.Sprintf(" l=%d;", o.l)
	}
	bh, _ := BodyHash(m.Body, Canonicalization(bc), h, lim)
	field := fmt.Sprintf("DKIM-Signature: v=1; a=%s; c=%s; d=%s; s=%s;%s%s\r\n h=%s; bh=%s;\r\n b=\r\n",
		o.a, o.c, o.d, o.s, ltag, o.extra, o.h, base64.StdEncoding.EncodeToString(bh))
	signed := field + raw
	m2, err := message.Parse([]byte(signed), message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	st := verifyState{m: m2}
	var hh = sha256.New()
	if h == crypto.SHA1 {
		hh = sha1.New()
	}
	st.hashHeaders(hh, 0, o.h, Canonicalization(hc))
	digest := hh.Sum(nil)
	var sig []byte
	if _, ok := o.key.(ed25519.PrivateKey); ok {
		sig, err = o.key.Sign(nil, digest, crypto.Hash(0))
	} else {
		sig, err = o.key.Sign(rand.Reader, digest, h)
	}
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(sig)
	return []byte(strings.Replace(signed, " b=\r\n", " b="+b64+"\r\n", 1))
}

func verifyRaw(t testing.TB, v *Verifier, raw []byte) []Result {
	t.Helper()
	m, err := message.Parse(raw, message.Limits{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return v.Verify(context.Background(), m)
}

func wantOne(t *testing.T, res []Result, want Status, reasonPart string) Result {
	t.Helper()
	if len(res) != 1 {
		t.Fatalf("got %d results: %+v", len(res), res)
	}
	if res[0].Result != want || !strings.Contains(res[0].Reason, reasonPart) {
		t.Fatalf("got %s (%s), want %s containing %q", res[0].Result, res[0].Reason, want, reasonPart)
	}
	return res[0]
}
