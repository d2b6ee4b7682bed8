package reportgen

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// --- SMTP sink --------------------------------------------------------------

type sinkMsg struct {
	From, To string
	Data     []byte
	TLS      bool
}

type sink struct {
	mu     sync.Mutex
	msgs   []sinkMsg
	reject atomic.Int32 // SMTP code to answer DATA with (0: accept)
	port   int
}

type sinkSession struct {
	s        *sink
	conn     *smtp.Conn
	from, to string
}

func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }
func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	return nil
}
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.to = to
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if code := ss.s.reject.Load(); code != 0 {
		return &smtp.SMTPError{Code: int(code), Message: "rejected by test"}
	}
	_, isTLS := ss.conn.TLSConnectionState()
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, sinkMsg{From: ss.from, To: ss.to, Data: b, TLS: isTLS})
	ss.s.mu.Unlock()
	return nil
}

// attachments returns the names and bytes (base64 decoded, still
// compressed) of the attached files of a received report mail.
func (m sinkMsg) attachments(t testing.TB) (names []string, files [][]byte) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		if p.FileName() != "" {
			b, _ := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			names, files = append(names, p.FileName()), append(files, b)
		}
	}
	return names, files
}

func (s *sink) messages() []sinkMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMsg(nil), s.msgs...)
}

// startSink starts an in-process SMTP server on 127.0.0.1 (STARTTLS with
// cert when given).
func startSink(t *testing.T, cert *tls.Certificate) *sink {
	t.Helper()
	sk := &sink{}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: sk, conn: c}, nil
	}))
	srv.Domain = "mx.test"
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = 50 << 20
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sk.port = l.Addr().(*net.TCPAddr).Port
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sk
}

// selfSigned makes a certificate for the given names and 127.0.0.1.
func selfSigned(t *testing.T, names ...string) (tls.Certificate, *x509.CertPool) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// --- fixture ----------------------------------------------------------------

type fixture struct {
	dns      *dnstest.Server
	res      resolvercache.Resolver
	sink     *sink
	pool     *x509.CertPool
	cert     tls.Certificate
	now      time.Time
	store    *Store
	rep      *Reporter
	https    *httptest.Server
	posts    atomic.Int32
	postBody chan []byte
	want     map[string]uint64 // source IP → messages
}

func newFixture(t *testing.T, dkimKeys ...any) *fixture {
	t.Helper()
	f := &fixture{postBody: make(chan []byte, 10)}
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	f.dns = srv
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	f.res = c
	f.cert, f.pool = selfSigned(t, "mx.example.com", "tlsrpt.company-y.example", "mx.company-y.example", "mx.thirdparty.example", "mx.unauth.example")
	f.sink = startSink(t, &f.cert)

	f.https = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/tlsrpt+gzip" || r.Method != http.MethodPost {
			http.Error(w, "bad request", 400)
			return
		}
		b, _ := io.ReadAll(r.Body)
		f.posts.Add(1)
		f.postBody <- b
	}))
	f.https.TLS = &tls.Config{Certificates: []tls.Certificate{f.cert}}
	f.https.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.https.StartTLS()
	t.Cleanup(f.https.Close)
	httpsPort := f.https.Listener.Addr().(*net.TCPAddr).Port

	zone := `
_dmarc.example.com. 300 IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com,mailto:agg@thirdparty.example,mailto:agg@unauth.example"
example.com. 300 IN MX 10 mx.example.com.
mx.example.com. 300 IN A 127.0.0.1
thirdparty.example. 300 IN MX 10 mx.thirdparty.example.
mx.thirdparty.example. 300 IN A 127.0.0.1
example.com._report._dmarc.thirdparty.example. 300 IN TXT "v=DMARC1"
unauth.example. 300 IN MX 10 mx.unauth.example.
mx.unauth.example. 300 IN A 127.0.0.1
_smtp._tls.company-y.example. 300 IN TXT "v=TLSRPTv1; rua=mailto:tls@company-y.example,https://tlsrpt.company-y.example:` + strconv.Itoa(httpsPort) + `/report"
company-y.example. 300 IN MX 10 mx.company-y.example.
mx.company-y.example. 300 IN A 127.0.0.1
tlsrpt.company-y.example. 300 IN A 127.0.0.1
`
	if err := srv.AddZone(zone); err != nil {
		t.Fatal(err)
	}
	var signers []DKIMKey
	for _, key := range dkimKeys {
		switch k := key.(type) {
		case *rsa.PrivateKey:
			pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
			srv.AddRR(dnstest.TXT("rsa._domainkey.receiver.example", "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 300))
			signers = append(signers, DKIMKey{Domain: "receiver.example", Selector: "rsa", Signer: k})
		case ed25519.PrivateKey:
			srv.AddRR(dnstest.TXT("ed._domainkey.receiver.example", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey)), 300))
			signers = append(signers, DKIMKey{Domain: "receiver.example", Selector: "ed", Signer: k})
		default:
			t.Fatalf("fixture: key type %T", key)
		}
	}
	f.now = testDay.Add(12 * time.Hour)
	f.store = openTestStore(t, &f.now)
	f.rep = &Reporter{
		Store: f.store,
		Deliverer: &Deliverer{Resolver: f.res, From: "dmarc-noreply@receiver.example", HELO: "reporter.receiver.example", DKIM: signers,
			SMTPPort: f.sink.port, TLSConfig: &tls.Config{RootCAs: f.pool}, Timeout: 10 * time.Second,
			Addresses: AddressPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, Now: func() time.Time { return f.now }},
		DMARC:        ReportConfig{OrgName: "Receiver Org", Email: "dmarc-noreply@receiver.example", Receiver: "receiver.example", Generator: "authpipe"},
		TLS:          TLSReportConfig{OrganizationName: "Receiver Org", ContactInfo: "tlsrpt@receiver.example", Sender: "receiver.example"},
		RateInterval: -1,
	}
	f.want = fillStore(t, f.store, 2000)
	a := NewTLSAggregator()
	for _, ev := range tlsEvents() {
		a.Add(&ev)
	}
	if _, err := f.store.MergeTLS(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) lookupTXT(name string) ([]string, error) {
	ans, err := f.res.Lookup(context.Background(), name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	return ans.TXT, nil
}

// parsedMail is a received report mail, DKIM-verified and unpacked.
type parsedMail struct {
	Header   mail.Header
	Subject  string
	FileName string
	CType    string
	File     []byte
}

func (f *fixture) parse(t *testing.T, m sinkMsg) parsedMail {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: f.lookupTXT})
	if err != nil || len(vs) != len(f.rep.Deliverer.DKIM) {
		t.Fatalf("dkim: %v: %d signatures, want %d", err, len(vs), len(f.rep.Deliverer.DKIM))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "receiver.example" {
			t.Fatalf("dkim: %+v", v)
		}
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	from, _ := mail.ParseAddress(msg.Header.Get("From"))
	if !strings.HasSuffix(from.Address, "@receiver.example") {
		t.Fatalf("From %s not aligned with d=receiver.example", from.Address)
	}
	pm := parsedMail{Header: msg.Header, Subject: msg.Header.Get("Subject")}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") {
		t.Fatalf("content-type %q", msg.Header.Get("Content-Type"))
	}
	pm.CType = msg.Header.Get("Content-Type")
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.FileName() != "" {
			pm.FileName = p.FileName()
			ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			pm.CType += " | " + ct
			b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if err != nil {
				t.Fatal(err)
			}
			pm.File = b
		}
	}
	if pm.File == nil {
		t.Fatal("no attachment")
	}
	return pm
}

var subjectRE = regexp.MustCompile(`^Report Domain: (\S+)\s+Submitter: (\S+)\s+Report-ID: <([A-Za-z0-9.@_-]+)>$`)

func TestDeliveryEndToEnd(t *testing.T) {
	for _, keyType := range []string{"rsa", "ed25519", "rsa+ed25519"} {
		t.Run(keyType, func(t *testing.T) {
			var keys []any
			for _, kt := range strings.Split(keyType, "+") {
				if kt == "rsa" {
					k, _ := rsa.GenerateKey(rand.Reader, 2048)
					keys = append(keys, k)
				} else {
					_, k, _ := ed25519.GenerateKey(rand.Reader)
					keys = append(keys, k)
				}
			}
			f := newFixture(t, keys...)
			ctx := context.Background()
			// Before the grace period ends nothing is built.
			f.now = testDay.Add(24*time.Hour + 30*time.Minute)
			bs, ds, err := f.rep.Tick(ctx)
			if err != nil || bs.Windows != 0 || ds.Sent != 0 {
				t.Fatalf("early tick: %v %+v %+v", err, bs, ds)
			}
			f.now = testDay.Add(25 * time.Hour)
			bs, ds, err = f.rep.Tick(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if bs.Unverified != 1 || bs.Windows != 2 || ds.Sent != 4 {
				t.Fatalf("build %+v deliver %+v", bs, ds)
			}
			msgs := f.sink.messages()
			if len(msgs) != 3 {
				t.Fatalf("%d mails", len(msgs))
			}
			got := map[string]bool{}
			for _, m := range msgs {
				got[m.To] = true
				if !m.TLS {
					t.Errorf("mail to %s not over TLS", m.To)
				}
				pm := f.parse(t, m)
				sm := subjectRE.FindStringSubmatch(strings.Join(strings.Fields(pm.Subject), " "))
				if sm == nil {
					t.Fatalf("subject %q", pm.Subject)
				}
				switch m.To {
				case "dmarc@example.com", "agg@thirdparty.example":
					if sm[1] != "example.com" || sm[2] != "receiver.example" || !strings.Contains(pm.FileName, "!"+sm[3]+".xml.gz") {
						t.Fatalf("subject %v file %s", sm, pm.FileName)
					}
					if !strings.HasSuffix(pm.CType, "| application/gzip") {
						t.Fatalf("ctype %s", pm.CType)
					}
					doc := gunzip(t, pm.File)
					checkCounts(t, [][]byte{doc}, f.want)
					xmllint(t, schemaDir+"/dmarcbis-aggregate/dmarc-xml-0.2.xsd", doc)
				case "tls@company-y.example":
					if pm.Header.Get("TLS-Report-Domain") != "company-y.example" || pm.Header.Get("TLS-Report-Submitter") != "receiver.example" ||
						!strings.Contains(pm.CType, `multipart/report; report-type="tlsrpt"`) || !strings.HasSuffix(pm.CType, "| application/tlsrpt+gzip") {
						t.Fatalf("tls mail headers %v %s", pm.Header, pm.CType)
					}
					checkTLSJSON(t, gunzip(t, pm.File))
				default:
					t.Fatalf("unexpected mail to %s", m.To)
				}
			}
			if got["agg@unauth.example"] {
				t.Fatal("unverified third party got a report")
			}
			if f.posts.Load() != 1 {
				t.Fatalf("%d https posts", f.posts.Load())
			}
			checkTLSJSON(t, gunzip(t, <-f.postBody))
			// Everything delivered: windows are gone, nothing is re-sent.
			if wins, _ := f.store.Windows(KindDMARC); len(wins) != 0 {
				t.Fatalf("windows left: %+v", wins)
			}
			_, ds, _ = f.rep.Tick(ctx)
			if ds.Sent != 0 || len(f.sink.messages()) != 3 {
				t.Fatalf("re-sent: %+v", ds)
			}
			t.Logf("%s: 3 mails DKIM-verified with %d signature(s) each (2 DMARC over STARTTLS, 1 TLSRPT), 1 HTTPS POST, 1 unverified rua skipped", keyType, len(keys))
		})
	}
}

func checkTLSJSON(t *testing.T, b []byte) {
	t.Helper()
	var rep TLSReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	var succ, fail uint64
	for _, p := range rep.Policies {
		succ += p.Summary.TotalSuccessfulSessionCount
		fail += p.Summary.TotalFailureSessionCount
	}
	if succ != 52 || fail != 10 || rep.OrganizationName != "Receiver Org" {
		t.Fatalf("tls report %d/%d %+v", succ, fail, rep)
	}
}

func TestDeliverySplitOverCap(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.rep.Caps = map[string]int64{"example.com": 24000}
	f.now = testDay.Add(26 * time.Hour)
	bs, ds, err := f.rep.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	ids := map[string]bool{}
	for _, m := range f.sink.messages() {
		if m.To != "dmarc@example.com" {
			continue
		}
		if len(m.Data) > 24000 {
			t.Fatalf("mail of %d octets over the 24000 cap", len(m.Data))
		}
		names, files := m.attachments(t)
		for i, b := range files {
			ids[names[i]] = true
			docs = append(docs, gunzip(t, b))
		}
	}
	if len(docs) < 2 || len(ids) != len(docs) {
		t.Fatalf("expected a split into distinct files: %d docs %d names (%+v %+v)", len(docs), len(ids), bs, ds)
	}
	checkCounts(t, docs, f.want)
	for _, d := range docs {
		xmllint(t, schemaDir+"/dmarcbis-aggregate/dmarc-xml-0.2.xsd", d)
	}
	t.Logf("report split into %d mails under 24000 octets, every count present", len(docs))
}

func TestOutboxCrashBetweenAcceptAndMark(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.now = testDay.Add(26 * time.Hour)
	crashed := false
	errCrash := errors.New("simulated crash")
	f.rep.AfterAccept = func(it OutboxItem) error {
		if !crashed && it.Dest == "mailto:dmarc@example.com" {
			crashed = true
			return errCrash
		}
		return nil
	}
	if _, _, err := f.rep.Tick(context.Background()); !errors.Is(err, errCrash) {
		t.Fatalf("want crash, got %v", err)
	}
	// "Restart": a new Reporter on the same store.
	r2 := *f.rep
	r2.AfterAccept = nil
	if _, _, err := r2.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r2.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	var subjects, names []string
	for _, m := range f.sink.messages() {
		if m.To != "dmarc@example.com" {
			continue
		}
		msg, _ := mail.ReadMessage(bytes.NewReader(m.Data))
		subjects = append(subjects, msg.Header.Get("Subject"))
		n, _ := m.attachments(t)
		names = append(names, n...)
	}
	if len(subjects) != 2 || subjects[0] != subjects[1] || len(names) != 2 || names[0] != names[1] {
		t.Fatalf("want exactly one re-send with the same Report-ID and file name: %q %q", subjects, names)
	}
	t.Logf("crash after acceptance → exactly one re-send, same Report-ID and file name %s", names[0])
}

func TestOutboxRetryAndSuppression(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.rep.SuppressAfter = 1
	f.now = testDay.Add(26 * time.Hour)
	f.sink.reject.Store(451)
	_, ds, err := f.rep.Tick(context.Background())
	if err != nil || ds.TempFailed != 3 || ds.Sent != 1 { // the HTTPS POST succeeds
		t.Fatalf("%v %+v", err, ds)
	}
	items, _ := f.store.OutboxItems(false)
	for _, it := range items {
		if it.State == ItemPending && (it.Attempts != 1 || !it.NextAttempt.Equal(f.now.Add(5*time.Minute))) {
			t.Fatalf("backoff %+v", it)
		}
	}
	// Not due yet: nothing happens.
	if _, ds, _ = f.rep.Tick(context.Background()); ds.TempFailed != 0 {
		t.Fatalf("%+v", ds)
	}
	f.now = f.now.Add(5 * time.Minute)
	f.sink.reject.Store(550)
	_, ds, _ = f.rep.Tick(context.Background())
	if ds.PermFailed != 3 {
		t.Fatalf("%+v", ds)
	}
	sp, _ := f.store.Suppression("mailto:dmarc@example.com")
	if !sp.Suppressed || sp.PermanentFailures != 1 {
		t.Fatalf("suppression %+v", sp)
	}
	// Manual suppression list.
	if err := f.store.Suppress("mailto:someone@example.org", true, "asked"); err != nil {
		t.Fatal(err)
	}
	if sp, _ := f.store.Suppression("MAILTO:someone@example.org"); !sp.Manual {
		t.Fatal("manual suppression lost")
	}
	if len(f.sink.messages()) != 0 {
		t.Fatal("rejected mail recorded")
	}
}

func TestTLSReportPlaintextFallback(t *testing.T) {
	// A server whose certificate the sender does not trust: TLS reports
	// are still delivered (RFC 8460 5.1), over a plaintext retry; DMARC
	// reports with RequireTLS are not.
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.rep.Deliverer.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()}
	f.rep.RequireTLS = true
	f.now = testDay.Add(26 * time.Hour)
	_, ds, err := f.rep.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msgs := f.sink.messages()
	if len(msgs) != 1 || msgs[0].To != "tls@company-y.example" || msgs[0].TLS {
		t.Fatalf("%+v %+v", ds, msgs)
	}
	if ds.TempFailed != 3 { // 2 DMARC (TLS required) + HTTPS (untrusted cert)
		t.Fatalf("%+v", ds)
	}
}

func TestSSRFRefusal(t *testing.T) {
	// A listener on loopback that must never see a connection.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	srv, _ := dnstest.Start()
	defer srv.Close()
	srv.AddZone(`
internal.example. 300 IN A 10.0.0.1
rebind.example. 300 IN A 127.0.0.1
linklocal.example. 300 IN A 169.254.1.1
mixed.example. 300 IN MX 10 rebind.example.
`)
	res, _ := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(500*time.Millisecond))
	d := &Deliverer{Resolver: res, From: "r@receiver.example", SMTPPort: l.Addr().(*net.TCPAddr).Port, Timeout: 2 * time.Second}
	ctx := context.Background()
	for _, uri := range []string{
		"https://127.0.0.1:" + port + "/r", "https://10.0.0.1/r", "https://169.254.1.1/r", "https://[::1]:" + port + "/",
		"https://internal.example/r", "https://rebind.example:" + port + "/r", "https://linklocal.example/r",
		"https://192.168.1.1/", "https://172.16.0.1/", "https://[fe80::1]/", "https://100.64.0.1/",
	} {
		err := d.PostHTTPS(ctx, uri, []byte("x"))
		if !errors.Is(err, ErrRefusedAddress) || !IsPermanent(err) {
			t.Errorf("%s: %v", uri, err)
		}
	}
	if err := d.SendMail(ctx, "x@mixed.example", []byte("Subject: x\r\n\r\nx\r\n"), false); !errors.Is(err, ErrRefusedAddress) {
		t.Errorf("smtp to loopback MX: %v", err)
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the loopback listener", n)
	}
	// Allowlisting loopback lets the POST through to the listener.
	d.Addresses.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	d.PostHTTPS(ctx, "https://127.0.0.1:"+port+"/r", []byte("x"))
	if conns.Load() != 1 {
		t.Fatal("allowlisted address not contacted")
	}
	// Public addresses pass the policy.
	if err := (AddressPolicy{}).Check(netip.MustParseAddr("8.8.8.8")); err != nil {
		t.Fatal(err)
	}
	// Oversized bodies are refused before any connection.
	d.MaxHTTPSize = 10
	if err := d.PostHTTPS(ctx, "https://127.0.0.1:"+port+"/r", make([]byte, 11)); !IsPermanent(err) || conns.Load() != 1 {
		t.Fatalf("size cap: %v", err)
	}
}

func TestSmarthost(t *testing.T) {
	sk := startSink(t, nil) // no STARTTLS offered: plaintext
	d := &Deliverer{Resolver: mapResolver{}, From: "r@receiver.example", HELO: "me.example",
		Smarthost: "127.0.0.1:" + strconv.Itoa(sk.port), Timeout: 5 * time.Second}
	if err := d.SendMail(context.Background(), "x@nomx.example", []byte("Subject: x\r\n\r\nbody\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := d.SendMail(context.Background(), "x@nomx.example", []byte("Subject: x\r\n\r\nbody\r\n"), true); err == nil || IsPermanent(err) {
		t.Fatalf("require TLS without STARTTLS: %v", err)
	}
	m := sk.messages()
	if len(m) != 1 || m[0].To != "x@nomx.example" || m[0].TLS {
		t.Fatalf("%+v", m)
	}
}

func TestOutboxPrune(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.now = testDay.Add(26 * time.Hour)
	if _, _, err := f.rep.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	items, _ := f.store.OutboxItems(false)
	if len(items) != 4 {
		t.Fatalf("%d items", len(items))
	}
	f.now = f.now.Add(8 * 24 * time.Hour)
	if _, _, err := f.rep.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if items, _ = f.store.OutboxItems(false); len(items) != 0 {
		t.Fatalf("%d items after prune", len(items))
	}
}

func TestParseTLSRPTRecord(t *testing.T) {
	d, err := ParseTLSRPTRecord("v=TLSRPTv1; rua=mailto:a@example.com, https://r.example/x ;ext=1")
	if err != nil || len(d) != 2 || d[0].Address != "a@example.com" || d[1].Scheme() != "https" {
		t.Fatalf("%v %+v", err, d)
	}
	for _, bad := range []string{"", "v=TLSRPTv2; rua=mailto:a@b", "v=TLSRPTv1;", "v=TLSRPTv1; rua=ftp://x"} {
		if _, err := ParseTLSRPTRecord(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzParseTLSRPTRecord(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:a@example.com,https://r.example/x")
	f.Add("v=TLSRPTv1;rua=mailto:%40@x")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseTLSRPTRecord(s)
		if err == nil && (len(d) == 0 || len(d) > MaxDestinations) {
			t.Fatalf("%d destinations", len(d))
		}
	})
}

// mapResolver answers TXT queries from a map (unit tests of discovery).
type mapResolver map[string][]string

func (m mapResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	txt, ok := m[strings.ToLower(name)]
	a := &resolvercache.Answer{Name: name, Type: qtype, TXT: txt}
	if !ok {
		a.Rcode = dns.RcodeNameError
	}
	return a, nil
}

func TestDiscoverDMARCSizeSuffix(t *testing.T) {
	r := mapResolver{"_dmarc.example.com": {"v=DMARC1; p=none; rua=mailto:a@example.com!10m,mailto:b@example.com,https://x.example/r"}}
	d, err := DiscoverDMARC(context.Background(), r, "example.com", "rfc7489")
	if err != nil || len(d) != 2 || d[0].MaxSize != 10<<20 || d[1].MaxSize != 0 {
		t.Fatalf("%v %+v", err, d)
	}
	rep := &Reporter{DefaultCap: 50 << 20, Caps: map[string]int64{"mailto:b@example.com": 1 << 20}}
	if rep.capFor(d[0]) != 10<<20 || rep.capFor(d[1]) != 1<<20 {
		t.Fatalf("caps %d %d", rep.capFor(d[0]), rep.capFor(d[1]))
	}
	// RFC 9989 ignores the suffix.
	d, _ = DiscoverDMARC(context.Background(), r, "example.com", "rfc9989")
	if d[0].MaxSize != 0 {
		t.Fatalf("%+v", d)
	}
	if _, err := DiscoverDMARC(context.Background(), r, "none.example", "rfc9989"); !errors.Is(err, ErrNoPolicyRecord) {
		t.Fatalf("no record: %v", err)
	}
	two := mapResolver{"_dmarc.example.com": {"v=DMARC1; p=none; rua=mailto:a@example.com", "v=DMARC1; p=reject"}}
	if _, err := DiscoverDMARC(context.Background(), two, "example.com", "rfc9989"); !errors.Is(err, ErrNoPolicyRecord) {
		t.Fatalf("two records: %v", err)
	}
}

func TestParseDKIMKey(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	p8, _ := x509.MarshalPKCS8PrivateKey(ek)
	// Go refuses to generate or parse RSA keys under 1024 bits; our own
	// check is the second line of defence for older encodings.
	for _, c := range []struct {
		pem string
		ok  bool
	}{
		{string(pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk))), true},
		{string(pemBlock("PRIVATE KEY", p8)), true},
		{string(pemBlock("PRIVATE KEY", []byte("garbage"))), false},
		{"not pem", false},
	} {
		if _, err := ParseDKIMKey([]byte(c.pem)); (err == nil) != c.ok {
			t.Errorf("ok=%v: %v", c.ok, err)
		}
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
