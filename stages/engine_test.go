package stages_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/internal/schematest"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/dmarc"
	"github.com/authpipe/authpipe/stages/message"
	"github.com/authpipe/authpipe/stages/verdict"
)

// world is a sending domain's DNS served by a real authoritative server on
// loopback, plus the keys to sign its mail.
type world struct {
	srv    *dnstest.Server
	res    resolvercache.Resolver
	rsaKey *rsa.PrivateKey
	edKey  ed25519.PrivateKey
}

var (
	testRSAKey *rsa.PrivateKey
	testEdKey  ed25519.PrivateKey
)

func init() {
	var err error
	if testRSAKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	_, testEdKey, _ = ed25519.GenerateKey(rand.Reader)
}

func newWorld(t testing.TB) *world {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	der, _ := x509.MarshalPKIXPublicKey(&testRSAKey.PublicKey)
	srv.AddRR(dnstest.TXT("example.com", "v=spf1 include:_spf.example.com -all", 3600))
	srv.AddRR(dnstest.TXT("_spf.example.com", "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/25 ip4:192.0.2.0/24 -all", 3600))
	srv.AddRR(dnstest.TXT("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:d@example.com", 3600))
	srv.AddRR(dnstest.TXT("rsa._domainkey.example.com", "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(der), 3600))
	srv.AddRR(dnstest.TXT("ed._domainkey.example.com", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(testEdKey.Public().(ed25519.PublicKey)), 3600))
	srv.AddRR(dnstest.TXT("_dmarc.bank.example", "v=DMARC1; p=reject", 3600))
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := resolvercache.NewCache(c)
	if err != nil {
		t.Fatal(err)
	}
	return &world{srv: srv, res: cache, rsaKey: testRSAKey, edKey: testEdKey}
}

// newMessage builds a message of about bodySize bytes from the given author.
func newMessage(from string, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <%s>\r\nTo: rcpt@example.net\r\nSubject: test message\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <t1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n", from)
	line := "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
	for b.Len() < bodySize {
		b.WriteString(line)
	}
	return b.Bytes()
}

func sign(t testing.TB, msg []byte, selector string, key crypto.Signer) []byte {
	t.Helper()
	var out bytes.Buffer
	err := msgdkim.Sign(&out, bytes.NewReader(msg), &msgdkim.SignOptions{
		Domain: "example.com", Selector: selector, Signer: key,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

var (
	goodIP = netip.MustParseAddr("192.0.2.25")
	badIP  = netip.MustParseAddr("203.0.113.200")
	// now is fixed for a test run; go-msgauth stamps t= with the real
	// clock, so the engine's clock must not be earlier than that.
	now = time.Now().Add(time.Minute)
)

func newEngine(w *world, opts ...stages.Option) *stages.Engine {
	opts = append([]stages.Option{stages.WithClock(func() time.Time { return now }), stages.WithAuthServID("mx.test")}, opts...)
	return stages.New(w.res, opts...)
}

// check validates the verdict against the documented schema and checks that
// its Authentication-Results parses back.
func check(t *testing.T, v *verdict.Verdict) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	schematest.Validate(t, schematest.Compile(t, "verdict.schema.json"), b)
	id, _, err := authres.Parse(v.AuthenticationResults)
	if err != nil || id != "mx.test" {
		t.Errorf("Authentication-Results %q: id %q, err %v", v.AuthenticationResults, id, err)
	}
}

func TestAlignedSenderPasses(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := sign(t, sign(t, newMessage("alice@example.com", 10<<10), "rsa", w.rsaKey), "ed", w.edKey)
	v := e.Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"})
	check(t, v)
	if v.SPF.Result != "pass" {
		t.Errorf("spf = %+v", v.SPF)
	}
	if len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[1].Result != "pass" {
		t.Errorf("dkim = %+v", v.DKIM)
	}
	if v.DKIM[0].Algorithm != "ed25519-sha256" || v.DKIM[1].Algorithm != "rsa-sha256" || v.DKIM[1].KeyBits != 2048 {
		t.Errorf("dkim algorithms = %+v", v.DKIM)
	}
	if v.ARC.Result != "none" {
		t.Errorf("arc = %+v", v.ARC)
	}
	d := v.DMARC
	if d.Result != "pass" || d.PolicyDomain != "example.com" || d.Disposition != "none" || !d.SPFAligned || !d.DKIMAligned {
		t.Errorf("dmarc = %+v", d)
	}
	if v.MessageID != "<t1@example.com>" || len(v.HeaderFrom) != 1 || v.HeaderFrom[0] != "example.com" {
		t.Errorf("message id %q, header_from %v", v.MessageID, v.HeaderFrom)
	}
}

func TestSpooferIsRejected(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := newMessage("ceo@bank.example", 2000)
	v := e.Verify(context.Background(), msg, stages.Envelope{ClientIP: badIP, HELO: "x.invalid", MailFrom: "x@example.com"})
	check(t, v)
	if v.SPF.Result != "fail" || len(v.DKIM) != 0 {
		t.Errorf("spf %+v dkim %+v", v.SPF, v.DKIM)
	}
	if v.DMARC.Result != "fail" || v.DMARC.Disposition != "reject" || v.DMARC.PolicyDomain != "bank.example" {
		t.Errorf("dmarc = %+v", v.DMARC)
	}
}

func TestTamperedBodyFailsDKIMButSPFAligns(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := sign(t, newMessage("alice@example.com", 3000), "rsa", w.rsaKey)
	msg = bytes.Replace(msg, []byte("lazy dog"), []byte("lazy cat"), 1)
	v := e.Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, MailFrom: "alice@example.com"})
	check(t, v)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != "fail" {
		t.Errorf("dkim = %+v", v.DKIM)
	}
	if v.DMARC.Result != "pass" || !v.DMARC.SPFAligned || v.DMARC.DKIMAligned {
		t.Errorf("dmarc = %+v", v.DMARC)
	}
}

func TestOversizeMessageIsPermerror(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w, stages.WithMessageLimits(message.Limits{MaxSize: 1024}))
	v := e.Verify(context.Background(), newMessage("alice@example.com", 4096), stages.Envelope{ClientIP: goodIP, MailFrom: "alice@example.com"})
	check(t, v)
	if v.Message == nil || v.Message.Kind != "size" {
		t.Fatalf("message problem = %+v", v.Message)
	}
	if v.DMARC.Result != "permerror" || v.SPF.Result != "pass" {
		t.Errorf("dmarc %+v spf %+v", v.DMARC, v.SPF)
	}
}

func TestGarbageInputGivesVerdict(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	for _, raw := range [][]byte{nil, []byte("\x00\xff"), []byte(":\r\n\r\n"), []byte("From: <<<@@@>>>\r\n\r\nx"), bytes.Repeat([]byte("X-A: b\r\n"), 5000)} {
		v := e.Verify(context.Background(), raw, stages.Envelope{})
		check(t, v)
		if v.DMARC == nil || v.SPF == nil {
			t.Errorf("%q: incomplete verdict %+v", raw, v)
		}
	}
}

// TestDNSOutageGivesTemperror stops the DNS server: the verdict must come
// back within the DNS budget with temperror, not hang.
func TestDNSOutageGivesTemperror(t *testing.T) {
	w := newWorld(t)
	w.srv.SetDown(true)
	e := newEngine(w, stages.WithDNSBudget(2*time.Second))
	msg := sign(t, newMessage("alice@example.com", 1000), "rsa", w.rsaKey)
	v := e.Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, MailFrom: "alice@example.com"})
	check(t, v)
	if v.SPF.Result != "temperror" || v.DKIM[0].Result != "temperror" || v.DMARC.Result != "temperror" {
		t.Errorf("spf %s dkim %s dmarc %s", v.SPF.Result, v.DKIM[0].Result, v.DMARC.Result)
	}
	w.srv.SetDown(false)
	v = newEngine(newWorld(t)).Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, MailFrom: "alice@example.com"})
	if v.DMARC.Result != "pass" {
		t.Errorf("after recovery: dmarc %+v", v.DMARC)
	}
}

func TestAuthenticationResultsMentionsEverything(t *testing.T) {
	w := newWorld(t)
	msg := sign(t, newMessage("alice@example.com", 100), "rsa", w.rsaKey)
	v := newEngine(w).Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, MailFrom: "alice@example.com"})
	for _, want := range []string{"mx.test; spf=pass", "dkim=pass", "header.d=example.com", "header.s=rsa", "arc=none", "dmarc=pass", "policy.dmarc=reject"} {
		if !strings.Contains(v.AuthenticationResults, want) {
			t.Errorf("%q lacks %q", v.AuthenticationResults, want)
		}
	}
}

// TestForwardedThroughTrustedARCSealer: a mailing list rewrites the subject
// (breaking the author's DKIM signature), records what it saw in an ARC set
// and relays from its own address (SPF no longer aligns). DMARC fails; only
// when the list is a trusted sealer does the override apply.
func TestForwardedThroughTrustedARCSealer(t *testing.T) {
	w := newWorld(t)
	der, _ := x509.MarshalPKIXPublicKey(&w.rsaKey.PublicKey)
	w.srv.AddRR(dnstest.TXT("arc._domainkey.lists.example.org", "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(der), 3600))
	orig := sign(t, newMessage("alice@example.com", 2000), "rsa", w.rsaKey)
	sealer := &arc.Sealer{Domain: "lists.example.org", Selector: "arc", Key: w.rsaKey, AuthServID: "lists.example.org",
		Now: func() time.Time { return now }}
	modified := bytes.Replace(orig, []byte("Subject: test message"), []byte("Subject: [list] test message"), 1)
	mm, err := message.Parse(modified, message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	set, err := sealer.Seal(mm, arc.Result{Result: arc.ResultNone},
		"spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com")
	if err != nil {
		t.Fatal(err)
	}
	fwd := set.Prepend(modified)
	env := stages.Envelope{ClientIP: netip.MustParseAddr("198.18.0.1"), MailFrom: "list-bounces@lists.example.org"}

	v := newEngine(w).Verify(context.Background(), fwd, env)
	check(t, v)
	if v.ARC.Result != "pass" || len(v.ARC.Sets) != 1 || v.ARC.Sets[0].Sealer != "lists.example.org" {
		t.Errorf("arc = %+v", v.ARC)
	}
	if v.DKIM[0].Result != "fail" || v.DMARC.Result != "fail" || v.DMARC.Disposition != "reject" {
		t.Errorf("untrusted: dkim %+v dmarc %+v", v.DKIM, v.DMARC)
	}

	trusted := newEngine(w, stages.WithDMARC(dmarc.ModeRFC9989, dmarc.Overrides{TrustedARCSealers: []string{"lists.example.org"}}, nil))
	v = trusted.Verify(context.Background(), fwd, env)
	check(t, v)
	if v.DMARC.Result != "fail" || v.DMARC.Disposition != "none" || len(v.DMARC.Reasons) == 0 || v.DMARC.Reasons[0].Type != "trusted_forwarder" {
		t.Errorf("trusted: dmarc %+v", v.DMARC)
	}
}

// TestDMARCLookupStartsWithSPFAndDKIM: with nothing cached, the DMARC
// record's lookup goes out beside SPF's and DKIM's (prefetch), so a
// message from a new domain waits one round trip before DMARC, not two;
// and it is the same single query DMARC evaluation then uses. The server
// holds every answer back 100 ms, so the three queries are outstanding
// together however the goroutines are scheduled.
func TestDMARCLookupStartsWithSPFAndDKIM(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := sign(t, newMessage("alice@example.com", 1<<10), "rsa", w.rsaKey)
	w.srv.SetDelay(100 * time.Millisecond)
	w.srv.ResetPeak()
	v := e.Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"})
	check(t, v)
	if v.DMARC.Result != "pass" || v.SPF.Result != "pass" || len(v.DKIM) != 1 || v.DKIM[0].Result != "pass" {
		t.Fatalf("verdict spf %+v dkim %+v dmarc %+v", v.SPF, v.DKIM, v.DMARC)
	}
	// SPF's first TXT, the DKIM key and _dmarc.example.com at once; then
	// SPF's include, then the tree walk's _dmarc.com.
	if p := w.srv.PeakConcurrent(); p != 3 {
		t.Errorf("peak concurrent queries %d, want 3", p)
	}
	// One query for _dmarc.example.com, shared by the prefetch and DMARC
	// evaluation; _dmarc.com is the tree walk's next step (RFC 9989 4.10.1).
	if q := w.srv.Queries.Load(); q != 5 {
		t.Errorf("%d queries, want 5 (example.com, _spf, rsa._domainkey, _dmarc, _dmarc.com)", q)
	}
	// Warm: everything cached (once the cache has taken its writes), nothing
	// asked.
	w.res.(*resolvercache.Cache).Wait()
	v = e.Verify(context.Background(), msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"})
	if v.DMARC.Result != "pass" {
		t.Fatalf("warm dmarc %+v", v.DMARC)
	}
	if q := w.srv.Queries.Load(); q != 5 {
		t.Errorf("%d queries after a warm message, want 5", q)
	}
}

// TestEngineOverPlainResolver: over a resolver that cannot say what it
// holds (the bare client, no cache), nothing is prefetched and SPF runs on
// a helper beside DKIM, so their lookups still overlap; the verdict is the
// one the cached engine gives. The server holds every answer back 100 ms,
// so the two queries are outstanding together however the goroutines are
// scheduled.
func TestEngineOverPlainResolver(t *testing.T) {
	w := newWorld(t)
	msg := sign(t, newMessage("alice@example.com", 1<<10), "rsa", w.rsaKey)
	env := stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}
	want := newEngine(w).Verify(context.Background(), msg, env)

	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(w.srv.Addr), resolvercache.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	plain := &world{srv: w.srv, res: c, rsaKey: w.rsaKey, edKey: w.edKey}
	w.srv.SetDelay(100 * time.Millisecond)
	w.srv.ResetPeak()
	got := newEngine(plain).Verify(context.Background(), msg, env)
	check(t, got)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("verdict over the bare client\n%+v\nover the cache\n%+v", got, want)
	}
	// SPF's first TXT beside the DKIM key; no DMARC prefetch.
	if p := w.srv.PeakConcurrent(); p != 2 {
		t.Errorf("peak concurrent queries %d, want 2", p)
	}
}

// TestDKIMKeysFetchedTogether: a message with two signatures whose keys
// are not cached asks for both keys at once (dkim.Verifier.Prefetch, set
// by stages.New), beside SPF's
// and DMARC's first lookups, instead of the second key after the first.
// The server holds every answer back 100 ms, so the four queries are
// outstanding together however the goroutines are scheduled. Warm, it
// asks nothing.
func TestDKIMKeysFetchedTogether(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := sign(t, sign(t, newMessage("alice@example.com", 1<<10), "rsa", w.rsaKey), "ed", w.edKey)
	env := stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}
	w.srv.SetDelay(100 * time.Millisecond)
	w.srv.ResetPeak()
	v := e.Verify(context.Background(), msg, env)
	check(t, v)
	if len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[1].Result != "pass" || v.DMARC.Result != "pass" {
		t.Fatalf("verdict dkim %+v dmarc %+v", v.DKIM, v.DMARC)
	}
	if p := w.srv.PeakConcurrent(); p != 4 {
		t.Errorf("peak concurrent queries %d, want 4 (SPF, DMARC, both keys)", p)
	}
	// example.com, _spf, both keys, _dmarc, _dmarc.com: each once.
	if q := w.srv.Queries.Load(); q != 6 {
		t.Errorf("%d queries, want 6", q)
	}
	w.res.(*resolvercache.Cache).Wait()
	e.Verify(context.Background(), msg, env)
	if q := w.srv.Queries.Load(); q != 6 {
		t.Errorf("%d queries after a warm message, want 6", q)
	}
}

// TestARCKeysFetchedTogether: a message forwarded through three sealers
// whose keys are not cached asks for all three keys at once (the newest
// seal's, and the others through arc.Validator.Prefetch, which asks
// without waiting: resolvercache.Cache.Prefetch), beside SPF's, DMARC's
// and the DKIM key's first lookups: one round trip for the chain's keys
// instead of three (two until session 19, when the prefetches were looked
// up one after another on a helper). The server holds every answer back
// 100 ms, so the six queries are outstanding together however the
// goroutines are scheduled.
func TestARCKeysFetchedTogether(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	msg := sign(t, newMessage("alice@example.com", 1<<10), "rsa", w.rsaKey)
	der, _ := x509.MarshalPKIXPublicKey(&w.rsaKey.PublicKey)
	chain := arc.Result{Result: arc.ResultNone}
	for i, d := range []string{"list.example.org", "fwd.example.net", "mx.example.com"} {
		w.srv.AddRR(dnstest.TXT("s1._domainkey."+d, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(der), 3600))
		m, err := message.Parse(msg, message.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		s := &arc.Sealer{Domain: d, Selector: "s1", Key: w.rsaKey, AuthServID: d, Now: func() time.Time { return now }}
		set, err := s.Seal(m, chain, "spf=pass smtp.mailfrom=example.com")
		if err != nil {
			t.Fatal(err)
		}
		msg = set.Prepend(msg)
		chain = arc.Result{Result: arc.ResultPass, Instances: i + 1}
	}
	env := stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}
	w.srv.SetDelay(100 * time.Millisecond)
	w.srv.ResetPeak()
	v := e.Verify(context.Background(), msg, env)
	check(t, v)
	if v.ARC == nil || v.ARC.Result != "pass" || v.ARC.Instances != 3 || v.DMARC.Result != "pass" {
		t.Fatalf("verdict arc %+v dmarc %+v", v.ARC, v.DMARC)
	}
	if p := w.srv.PeakConcurrent(); p != 6 {
		t.Errorf("peak concurrent queries %d, want 6 (SPF, DMARC, DKIM key, three sealers' keys)", p)
	}
}

// TestKeyPrefetchGoroutinesBounded: however many signatures a message
// carries, asking for their keys early holds no goroutine. Fifty cold
// messages, each signed under five keys of its own, wait on DNS together
// (answers held back 1 s); each holds only its own goroutine: SPF's first
// record, the DMARC record and the later keys are queries nobody waits for
// (resolvercache.Cache.Prefetch), SPF runs after DKIM on the message's
// goroutine, and the sockets' readers cache the answers. Until session 19
// each held four (its own, the SPF helper, the DMARC prefetch and one key
// prefetch), and a goroutine per key would have held three more.
func TestKeyPrefetchGoroutinesBounded(t *testing.T) {
	w := newWorld(t)
	e := newEngine(w)
	const n = 50
	msgs := make([][]byte, n)
	for i := range msgs {
		m := newMessage(fmt.Sprintf("alice@x%d.example", i), 1<<10)
		for j := range 5 {
			m = sign(t, m, fmt.Sprintf("s%d-%d", i, j), w.rsaKey)
		}
		msgs[i] = m
	}
	w.srv.SetDelay(time.Second)
	g0 := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for i := range msgs {
		wg.Go(func() {
			e.Verify(context.Background(), msgs[i], stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: fmt.Sprintf("b@y%d.example", i)})
		})
	}
	// Every message has sent its first queries well before the answers.
	time.Sleep(300 * time.Millisecond)
	if g := runtime.NumGoroutine() - g0; g > n+10 {
		t.Errorf("%d goroutines for %d messages waiting on DNS, want at most %d", g, n, n+10)
	} else {
		t.Logf("%d goroutines for %d messages", g, n)
	}
	wg.Wait()
}

func TestParseClientIP(t *testing.T) {
	for in, want := range map[string]string{
		" 192.0.2.1\t": "192.0.2.1", "::ffff:192.0.2.1": "192.0.2.1", "fe80::1%eth0": "fe80::1",
		"2001:DB8::1": "2001:db8::1",
	} {
		if got, err := stages.ParseClientIP(in); err != nil || got.String() != want {
			t.Errorf("ParseClientIP(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "192.0.2", "host.example", "::%", "::% "} {
		if got, err := stages.ParseClientIP(in); err == nil {
			t.Errorf("ParseClientIP(%q) = %v, want an error", in, got)
		}
	}
}

// TestJudgeAtArrival: with WithJudgeAtArrival, a message is judged as of
// its envelope's ReceivedAt (re-scoring an archive): a DKIM signature that
// had expired by the engine's clock passes, and SPF's %{t} in an exp=
// explanation is the arrival time; without ReceivedAt, or without the
// option, the engine's clock judges; evaluated_at says which.
func TestJudgeAtArrival(t *testing.T) {
	w := newWorld(t)
	w.srv.AddRR(dnstest.TXT("old.example", "v=spf1 -all exp=why.old.example", 3600))
	w.srv.AddRR(dnstest.TXT("why.old.example", "refused at %{t}", 3600))
	arrived := time.Now().Truncate(time.Second)
	var signed bytes.Buffer
	err := msgdkim.Sign(&signed, bytes.NewReader(newMessage("alice@example.com", 1000)), &msgdkim.SignOptions{
		Domain: "example.com", Selector: "ed", Signer: w.edKey, Expiration: arrived.Add(time.Hour),
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	later := arrived.Add(30 * 24 * time.Hour) // the archive is re-scored a month on
	clock := stages.WithClock(func() time.Time { return later })
	env := stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@old.example", ReceivedAt: arrived.Add(time.Minute)}
	for _, tc := range []struct {
		name     string
		opts     []stages.Option
		env      stages.Envelope
		judgedAt time.Time
	}{
		{"arrival", []stages.Option{clock, stages.WithJudgeAtArrival(true)}, env, env.ReceivedAt},
		{"no option", []stages.Option{clock}, env, later},
		{"no arrival time", []stages.Option{clock, stages.WithJudgeAtArrival(true)}, stages.Envelope{ClientIP: env.ClientIP, HELO: env.HELO, MailFrom: env.MailFrom}, later},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := stages.New(w.res, append(tc.opts, stages.WithAuthServID("mx.test"))...).Verify(context.Background(), signed.Bytes(), tc.env)
			check(t, v)
			wantDKIM := "pass"
			if tc.judgedAt.Equal(later) {
				wantDKIM = "permerror" // expired an hour after it was signed
			}
			if len(v.DKIM) != 1 || v.DKIM[0].Result != wantDKIM {
				t.Errorf("dkim %+v, want %s", v.DKIM, wantDKIM)
			}
			if want := fmt.Sprintf("refused at %d", tc.judgedAt.Unix()); v.SPF.Result != "fail" || v.SPF.Explanation != want {
				t.Errorf("spf %+v, want the explanation %q", v.SPF, want)
			}
			if !v.EvaluatedAt.Equal(tc.judgedAt) {
				t.Errorf("evaluated_at %v, want the time judged as of, %v", v.EvaluatedAt, tc.judgedAt)
			}
		})
	}
}
