package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// dmarcSchema is the RFC 9990 aggregate report schema of the conformance
// suites beside the checkout.
const dmarcSchema = "../../../shared/conformance/schemas/dmarcbis-aggregate/dmarc-xml-0.2.xsd"

// testClock runs at the wall clock's pace from where the test sets it.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time  { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Set(t time.Time) { c.offset.Store(int64(time.Until(t))) }

// e2eCase is the mail of one policy domain on one UTC day: legit messages
// pass SPF aligned from 192.0.2.10; spoofs come from 203.0.113.5.
type e2eCase struct {
	domain       string
	day          time.Time
	legit, spoof int
}

// TestRunReportsEndToEnd runs `authpipe run --role all` with report
// delivery on: messages of two policy domains over two UTC days go through
// the embedded broker and the verify pipeline; the report role merges the
// partial aggregates, closes both days, builds the four RFC 9990 reports
// and delivers them by SMTP to the rua domain's MX (a loopback server, via
// --allow), each mail signed with an RSA and an Ed25519 DKIM key. The test
// verifies both signatures against the DNS, validates each XML document
// against the RFC 9990 schema and checks every count against the input.
// TLS session results of a third domain, produced to mail.tls-results, give
// one RFC 8460 report per day, delivered both by mail (mailto: rua) and by
// HTTPS POST (https: rua, a TLS server trusted through --report-ca); both
// copies are parsed and their session counts checked.
func TestRunReportsEndToEnd(t *testing.T) {
	day1 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	day2 := day1.AddDate(0, 0, 1)
	cases := []e2eCase{
		{"alpha.example", day1, 3, 1},
		{"alpha.example", day2, 2, 2},
		{"beta.example", day1, 4, 0},
		{"beta.example", day2, 1, 3},
	}

	// DNS: policies whose rua is at reports.example (another organisation,
	// which confirms it takes the reports), its MX on loopback, and the
	// report signer's keys.
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	sink, err := startMailSink("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	keyDir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	rsaFile, edFile := filepath.Join(keyDir, "rsa.pem"), filepath.Join(keyDir, "ed25519.pem")
	writePEM(t, rsaFile, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	writePEM(t, edFile, "PRIVATE KEY", edDER)
	zone := `
reports.example. 300 IN MX 10 mx.reports.example.
mx.reports.example. 300 IN A 127.0.0.1
rsa2026._domainkey.reporter.example. 300 IN TXT "v=DKIM1; k=rsa; p=` + base64.StdEncoding.EncodeToString(rsaPub) + `"
ed2026._domainkey.reporter.example. 300 IN TXT "v=DKIM1; k=ed25519; p=` + base64.StdEncoding.EncodeToString(edKey.Public().(ed25519.PublicKey)) + `"
`
	for _, d := range []string{"alpha.example", "beta.example"} {
		zone += d + `. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.` + d + `. 300 IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@reports.example"
` + d + `._report._dmarc.reports.example. 300 IN TXT "v=DMARC1"
`
	}
	tlsrpt := startTLSRPTServer(t, "tlsrpt.gamma.example")
	zone += `_smtp._tls.gamma.example. 300 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@gamma.example,https://tlsrpt.gamma.example:` + tlsrpt.port + `/v1/report"
gamma.example. 300 IN MX 10 mx.gamma.example.
mx.gamma.example. 300 IN A 127.0.0.1
tlsrpt.gamma.example. 300 IN A 127.0.0.1
`
	if err := srv.AddZone(zone); err != nil {
		t.Fatal(err)
	}

	// The input, and what the reports must say about it.
	want := map[string]uint64{} // domain|day|source ip|disposition → count
	var lines bytes.Buffer
	total := 0
	for ci, c := range cases {
		for i := range c.legit + c.spoof {
			ip, mailFrom, disp := "192.0.2.10", "bounce@"+c.domain, "pass"
			if i >= c.legit {
				ip, mailFrom, disp = "203.0.113.5", "x@spoof.example", "reject"
			}
			at := c.day.Add(time.Duration(2+5*i) * time.Hour)
			raw := fmt.Sprintf("From: News <news@%s>\r\nTo: user@rcpt.example\r\nSubject: case %d message %d\r\nDate: %s\r\nMessage-ID: <c%d.%d@%s>\r\n\r\nHello.\r\n",
				c.domain, ci, i, at.Format(time.RFC1123Z), ci, i, c.domain)
			line, _ := json.Marshal(map[string]any{"raw": raw, "client_ip": ip, "helo": "mta." + c.domain, "mail_from": mailFrom,
				"rcpt_to": []string{"user@rcpt.example"}, "received_at": at.Format(time.RFC3339), "key": fmt.Sprintf("c%d-%d", ci, i)})
			lines.Write(append(line, '\n'))
			want[c.domain+"|"+c.day.Format(time.DateOnly)+"|"+ip+"|"+disp]++
			total++
		}
	}
	envelopes := filepath.Join(t.TempDir(), "envelopes.jsonl")
	if err := os.WriteFile(envelopes, lines.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	// `authpipe run` on a clock still inside day 1: no day closes while
	// the aggregates arrive.
	clock := &testClock{}
	clock.Set(day1.Add(12 * time.Hour))
	addrs, dataDir := freeAddrs(t, 2), t.TempDir()
	addr, httpAddr := addrs[0], addrs[1]
	stop, logs := startRunWith(t, httpAddr, func(ctx context.Context, args []string, stderr io.Writer) int {
		cmd := newRunCmdClock(clock.Now)
		cmd.SetArgs(args[1:]) // without "run"
		cmd.SetOut(io.Discard)
		cmd.SetErr(stderr)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		if err := cmd.ExecuteContext(ctx); err != nil {
			fmt.Fprintln(stderr, "authpipe:", err)
			return exitFailure
		}
		return exitOK
	}, "--role", "all", "--listen", addr, "--data-dir", dataDir, "--resolver", srv.Addr, "--batch-interval", "50ms",
		"--report-interval", "100ms", "--receiver", "reporter.example", "--org", "Reporter Org", "--from", "dmarc-reports@reporter.example",
		"--helo", "reports.reporter.example", "--dkim-key", "rsa2026="+rsaFile, "--dkim-key", "ed2026="+edFile,
		"--smtp-port", fmt.Sprint(sink.Port()), "--allow", "127.0.0.1/32", "--report-ca", tlsrpt.caFile)
	defer func() {
		if t.Failed() {
			t.Logf("run log:\n%s", logs)
		}
	}()
	if !strings.Contains(logs.String(), "report delivery on") {
		t.Errorf("no log line saying report delivery is on:\n%s", logs)
	}

	if code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addr, "--envelopes", envelopes); code != 0 {
		t.Fatalf("produce: %d %s", code, stderr)
	}
	if code, out, stderr := cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", fmt.Sprint(total), "--format", "json"); code != 0 ||
		strings.Count(out, "\n") != total {
		t.Fatalf("tail: %d %s", code, stderr)
	}
	tlsLast, wantTLS := produceTLSResults(t, addr, day1, day2)
	waitMerged(t, addr, total, tlsLast)

	// While run holds the store, `report list` and `report show` read it
	// through run's report views: found by the run.json beside the
	// store, or given as --url.
	for _, where := range [][]string{{"--data-dir", dataDir}, {"--url", "http://" + httpAddr}} {
		out, code := runCmd(t, append([]string{"report", "list", "--json"}, where...)...)
		var l reportList
		if code != 0 || json.Unmarshal([]byte(out), &l) != nil {
			t.Fatalf("report list %v while run holds the store (%d): %s", where, code, out)
		}
		listed := map[string]uint64{}
		for _, w := range l.Windows {
			listed[w.Kind+" "+w.Domain+" "+w.Day+" "+w.State] = w.Messages
		}
		wantListed := map[string]uint64{}
		for _, c := range cases {
			wantListed["dmarc "+c.domain+" "+c.day.Format(time.DateOnly)+" open"] = uint64(c.legit + c.spoof)
		}
		for day, summary := range wantTLS { // "sts success=5 failure=2 […]": 7 sessions
			var ok, failed uint64
			if _, err := fmt.Sscanf(summary, "sts success=%d failure=%d", &ok, &failed); err != nil {
				t.Fatalf("TLS summary %q: %v", summary, err)
			}
			wantListed["tlsrpt gamma.example "+day+" open"] = ok + failed
		}
		if fmt.Sprint(listed) != fmt.Sprint(wantListed) {
			t.Fatalf("report list %v while run holds the store:\n got %v\nwant %v", where, listed, wantListed)
		}
		out, code = runCmd(t, append([]string{"report", "show", "--domain", "alpha.example", "--day", day1.Format(time.DateOnly), "--receiver", "reporter.example"}, where...)...)
		if code != 0 {
			t.Fatalf("report show %v while run holds the store (%d): %s", where, code, out)
		}
		validateDMARCXML(t, []byte(out))
		if n := strings.Count(out, "<record>"); n != 2 { // the legitimate source and the spoofer
			t.Fatalf("report show %v: %d records, want 2:\n%s", where, n, out)
		}
	}

	// Past both days' grace period: the next round closes, builds and
	// delivers.
	clock.Set(day2.Add(26 * time.Hour))
	wantMails := len(cases) + len(wantTLS) // DMARC reports + TLS reports by mail
	deadline := time.Now().Add(60 * time.Second)
	for len(sink.Messages()) < wantMails || tlsrpt.count() < len(wantTLS) {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: %d of %d report mails, %d of %d HTTPS reports", len(sink.Messages()), wantMails, tlsrpt.count(), len(wantTLS))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // one more would be a bug
	msgs := sink.Messages()
	if len(msgs) != wantMails || tlsrpt.count() != len(wantTLS) {
		t.Fatalf("%d report mails, want %d; %d HTTPS reports, want %d", len(msgs), wantMails, tlsrpt.count(), len(wantTLS))
	}

	res, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	lookupTXT := func(name string) ([]string, error) {
		ans, err := res.Lookup(context.Background(), name, dns.TypeTXT)
		if err != nil {
			return nil, err
		}
		return ans.TXT, nil
	}
	got := map[string]uint64{}
	seen := map[string]bool{}
	gotTLSMail := map[string]string{}
	for _, m := range msgs {
		if m.From != "dmarc-reports@reporter.example" || len(m.To) != 1 || (m.To[0] != "dmarc@reports.example" && m.To[0] != "tlsrpt@gamma.example") {
			t.Fatalf("envelope %s → %v", m.From, m.To)
		}
		// Two DKIM signatures, RSA and Ed25519, both verified.
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: lookupTXT})
		if err != nil || len(vs) != 2 {
			t.Fatalf("dkim: %v, %d signatures", err, len(vs))
		}
		for _, v := range vs {
			if v.Err != nil || v.Domain != "reporter.example" {
				t.Fatalf("dkim signature: %+v", v)
			}
		}
		sigs := dkimSignatures(t, m.Data)
		if len(sigs) != 2 || !strings.Contains(sigs[0]+sigs[1], "a=rsa-sha256") || !strings.Contains(sigs[0]+sigs[1], "a=ed25519-sha256") {
			t.Fatalf("want one RSA and one Ed25519 signature: %q", sigs)
		}
		name, file := reportAttachment(t, m.Data)
		if m.To[0] == "tlsrpt@gamma.example" {
			hdr := mailHeader(t, m.Data)
			if hdr.Get("TLS-Report-Domain") != "gamma.example" || hdr.Get("TLS-Report-Submitter") != "reporter.example" ||
				!strings.HasPrefix(hdr.Get("Content-Type"), `multipart/report; report-type="tlsrpt"`) ||
				!strings.HasPrefix(name, "reporter.example!gamma.example!") || !strings.HasSuffix(name, ".json.gz") {
				t.Fatalf("TLS report mail: %s %v", name, hdr)
			}
			day, summary := tlsReportSummary(t, gunzipBytes(t, file))
			gotTLSMail[day] = summary
			continue
		}
		doc := gunzipBytes(t, file)
		validateDMARCXML(t, doc)
		var r struct {
			OrgName  string `xml:"report_metadata>org_name"`
			ReportID string `xml:"report_metadata>report_id"`
			Begin    int64  `xml:"report_metadata>date_range>begin"`
			End      int64  `xml:"report_metadata>date_range>end"`
			Domain   string `xml:"policy_published>domain"`
			P        string `xml:"policy_published>p"`
			Records  []struct {
				SourceIP    string `xml:"row>source_ip"`
				Count       uint64 `xml:"row>count"`
				Disposition string `xml:"row>policy_evaluated>disposition"`
				HeaderFrom  string `xml:"identifiers>header_from"`
			} `xml:"record"`
		}
		if err := xml.Unmarshal(doc, &r); err != nil {
			t.Fatal(err)
		}
		day := time.Unix(r.Begin, 0).UTC()
		key := r.Domain + "|" + day.Format(time.DateOnly)
		if seen[key] {
			t.Fatalf("two reports for %s", key)
		}
		seen[key] = true
		if r.OrgName != "Reporter Org" || r.P != "reject" || r.End != r.Begin+86399 || !day.Equal(day.Truncate(24*time.Hour)) ||
			!strings.HasPrefix(name, "reporter.example!"+r.Domain+"!") || !strings.Contains(name, r.ReportID) {
			t.Fatalf("report %s: %+v", name, r)
		}
		for _, rec := range r.Records {
			if rec.HeaderFrom != r.Domain {
				t.Fatalf("%s: header_from %s", key, rec.HeaderFrom)
			}
			got[key+"|"+rec.SourceIP+"|"+rec.Disposition] += rec.Count
		}
		t.Logf("%s: %d records, 2 DKIM signatures (rsa-sha256, ed25519-sha256) verified, %s", key, len(r.Records), name)
	}
	if fmt.Sprint(sortedCounts(got)) != fmt.Sprint(sortedCounts(want)) {
		t.Fatalf("report counts\n got %v\nwant %v", sortedCounts(got), sortedCounts(want))
	}
	gotTLSPost := map[string]string{}
	for _, body := range tlsrpt.bodies() {
		day, summary := tlsReportSummary(t, gunzipBytes(t, body))
		gotTLSPost[day] = summary
	}
	if fmt.Sprint(gotTLSMail) != fmt.Sprint(wantTLS) || fmt.Sprint(gotTLSPost) != fmt.Sprint(wantTLS) {
		t.Fatalf("TLS reports\n by mail  %v\n by HTTPS %v\n want     %v", gotTLSMail, gotTLSPost, wantTLS)
	}
	t.Logf("TLS reports for gamma.example, by mail and by HTTPS POST: %v", wantTLS)
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d", code)
	}

	if _, err := os.Stat(filepath.Join(reportStoreDir(dataDir), runInfoFile)); !os.IsNotExist(err) {
		t.Fatalf("run.json after run stopped: %v", err)
	}
	// The store agrees: every outbox item sent, no window left.
	out, code := runCmd(t, "report", "list", "--data-dir", dataDir, "--json")
	var listed struct {
		Windows []any
		Outbox  []map[string]any
	}
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("report list: %d %s", code, out)
	}
	if len(listed.Windows) != 0 || len(listed.Outbox) != len(cases)+2*len(wantTLS) {
		t.Fatalf("after delivery: %d windows, %d outbox items", len(listed.Windows), len(listed.Outbox))
	}
	// An outbox item is listed in the windows' words: kind by name, day as
	// YYYY-MM-DD, the file by its name.
	wantKeys := []string{"Attempts", "Created", "Day", "Dest", "Domain", "File", "ID", "Kind", "NextAttempt", "Part", "Parts", "ReportID", "SentAt", "State"}
	for _, it := range listed.Outbox {
		keys := slices.Sorted(maps.Keys(it))
		if !slices.Equal(keys, wantKeys) {
			t.Fatalf("outbox item keys %q, want %q", keys, wantKeys)
		}
		if it["State"] != reportgen.ItemSent || it["Attempts"] != 1.0 {
			t.Fatalf("outbox item %s: %s after %v attempts", it["File"], it["State"], it["Attempts"])
		}
		file, _ := it["File"].(string)
		day, _ := it["Day"].(string)
		_, dayErr := time.Parse(time.DateOnly, day)
		switch {
		case dayErr != nil,
			it["Kind"] == "dmarc" && !strings.HasSuffix(file, ".xml.gz"),
			it["Kind"] == "tlsrpt" && !strings.HasSuffix(file, ".json.gz"),
			it["Kind"] != "dmarc" && it["Kind"] != "tlsrpt",
			!strings.Contains(file, "!"+it["Domain"].(string)+"!"):
			t.Fatalf("outbox item %v", it)
		}
	}
}

// waitMerged waits until the report role has merged all n messages and
// the TLS results ending at tlsLast (partition → offset of the last
// record): the partial aggregates on authpipe.aggregates hold n messages,
// and group authpipe-report has committed past the last record of each
// topic (it commits after each merge into the store).
func waitMerged(t *testing.T, addr string, n int, tlsLast map[int32]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("authpipe.aggregates"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	last := map[string]map[int32]int64{"authpipe.aggregates": {}, "mail.tls-results": tlsLast}
	msgs := 0
	for msgs < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("aggregates hold %d of %d messages", msgs, n)
		}
		for _, r := range fs.Records() {
			var p reportgen.PartialAggregate
			if err := p.UnmarshalBinary(r.Value); err != nil {
				t.Fatal(err)
			}
			msgs += int(p.Messages)
			last["authpipe.aggregates"][r.Partition] = r.Offset
		}
	}
	adm := kadm.NewClient(cl)
	for {
		offs, err := adm.FetchOffsets(ctx, "authpipe-report")
		done := err == nil
		for topic, parts := range last {
			for p, o := range parts {
				c, ok := offs.Lookup(topic, p)
				done = done && ok && c.At > o
			}
		}
		if done {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("group authpipe-report did not commit past %v: %v %v", last, offs, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// produceTLSResults produces TLS session results for gamma.example on two
// days to mail.tls-results (key = policy domain) once the topic exists. It
// returns the offset of the last record per partition and, per day, the
// summary the TLS reports must show (see tlsReportSummary).
func produceTLSResults(t *testing.T, addr string, day1, day2 time.Time) (map[int32]int64, map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for {
		td, err := adm.ListTopics(ctx, "mail.tls-results")
		if err == nil && td.Has("mail.tls-results") && td["mail.tls-results"].Err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("topic mail.tls-results not created: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sts := []string{"version: STSv1", "mode: enforce", "mx: mx.gamma.example", "max_age: 86400"}
	var recs []*kgo.Record
	add := func(at time.Time, result string, n int) {
		for i := range n {
			ev := reportgen.TLSResult{Version: 1, Timestamp: at.Add(time.Duration(i) * time.Minute), PolicyDomain: "gamma.example",
				PolicyType: "sts", PolicyStrings: sts, PolicyMXHosts: []string{"mx.gamma.example"}, MXHost: "mx.gamma.example",
				SendingIP: "192.0.2.25", ReceivingIP: "198.51.100.7", Result: result}
			b, _ := json.Marshal(ev)
			recs = append(recs, &kgo.Record{Topic: "mail.tls-results", Key: []byte("gamma.example"), Value: b})
		}
	}
	add(day1.Add(3*time.Hour), "success", 5)
	add(day1.Add(9*time.Hour), "certificate-expired", 2)
	add(day2.Add(4*time.Hour), "success", 3)
	add(day2.Add(5*time.Hour), "starttls-not-supported", 1)
	res := cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	last := map[int32]int64{}
	for _, r := range res {
		last[r.Record.Partition] = max(last[r.Record.Partition], r.Record.Offset)
	}
	return last, map[string]string{
		day1.Format(time.DateOnly): "sts success=5 failure=2 [certificate-expired 192.0.2.25→198.51.100.7 mx.gamma.example: 2]",
		day2.Format(time.DateOnly): "sts success=3 failure=1 [starttls-not-supported 192.0.2.25→198.51.100.7 mx.gamma.example: 1]",
	}
}

// tlsReportSummary parses an RFC 8460 report and returns its UTC day and
// a summary of its counts.
func tlsReportSummary(t *testing.T, doc []byte) (string, string) {
	t.Helper()
	var r reportgen.TLSReport
	if err := json.Unmarshal(doc, &r); err != nil {
		t.Fatalf("TLS report: %v\n%s", err, doc)
	}
	if r.OrganizationName != "Reporter Org" || r.ContactInfo != "dmarc-reports@reporter.example" || len(r.Policies) != 1 ||
		r.DateRange.End.Sub(r.DateRange.Start) < 23*time.Hour {
		t.Fatalf("TLS report: %s", doc)
	}
	p := r.Policies[0]
	if p.Policy.PolicyDomain != "gamma.example" {
		t.Fatalf("TLS report policy: %+v", p.Policy)
	}
	var fails []string
	for _, f := range p.FailureDetails {
		fails = append(fails, fmt.Sprintf("%s %s→%s %s: %d", f.ResultType, f.SendingMTAIP, f.ReceivingIP, f.ReceivingMXHostname, f.FailedSessionCount))
	}
	return r.DateRange.Start.UTC().Format(time.DateOnly), fmt.Sprintf("%s success=%d failure=%d %v", p.Policy.PolicyType,
		p.Summary.TotalSuccessfulSessionCount, p.Summary.TotalFailureSessionCount, fails)
}

// tlsrptServer is an HTTPS server taking TLSRPT POSTs (RFC 8460 5.2).
type tlsrptServer struct {
	port   string
	caFile string
	mu     sync.Mutex
	posts  [][]byte
}

func (s *tlsrptServer) count() int { return len(s.bodies()) }

func (s *tlsrptServer) bodies() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.posts...)
}

// startTLSRPTServer starts an HTTPS server on loopback with a self-signed
// certificate for host, written to a PEM file for --report-ca.
func startTLSRPTServer(t *testing.T, host string) *tlsrptServer {
	t.Helper()
	der, key := issue(t, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}, nil, nil)
	s := &tlsrptServer{caFile: filepath.Join(t.TempDir(), "ca.pem")}
	writePEM(t, s.caFile, "CERTIFICATE", der)
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/report" || r.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
			http.Error(w, "want a POST of application/tlsrpt+gzip to /v1/report", http.StatusBadRequest)
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.posts = append(s.posts, b)
		s.mu.Unlock()
	}))
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	_, s.port, _ = net.SplitHostPort(hs.Listener.Addr().String())
	return s
}

// reportAttachment returns the file name and bytes of a report mail's
// attachment.
func reportAttachment(t *testing.T, data []byte) (string, []byte) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(msg.Header.Get("Subject"), "Report Domain: ") {
		t.Fatalf("subject %q", msg.Header.Get("Subject"))
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no attachment: %v", err)
		}
		if p.FileName() != "" {
			b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if err != nil {
				t.Fatal(err)
			}
			return p.FileName(), b
		}
	}
}

func mailHeader(t *testing.T, data []byte) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return msg.Header
}

// dkimSignatures returns the DKIM-Signature fields of a message, unfolded.
func dkimSignatures(t *testing.T, data []byte) []string {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range msg.Header["Dkim-Signature"] {
		out = append(out, strings.Join(strings.Fields(v), ""))
	}
	return out
}

func gunzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// validateDMARCXML validates doc against the RFC 9990 schema with xmllint.
// Without xmllint the check is skipped with a message, unless CI is set
// (CI installs it). Without the conformance folder beside the checkout it
// is skipped too, as the conformance tests are.
func validateDMARCXML(t *testing.T, doc []byte) {
	t.Helper()
	path, err := exec.LookPath("xmllint")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("xmllint not installed, and CI is set: install libxml2-utils")
		}
		t.Log("xmllint not installed (apt-get install libxml2-utils): XML schema validation skipped")
		return
	}
	if _, err := os.Stat(dmarcSchema); err != nil {
		t.Logf("conformance schemas missing (%v): XML schema validation skipped", err)
		return
	}
	f := filepath.Join(t.TempDir(), "report.xml")
	if err := os.WriteFile(f, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(path, "--noout", "--schema", dmarcSchema, f).CombinedOutput(); err != nil {
		t.Fatalf("xmllint: %v\n%s\n%s", err, out, doc)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func sortedCounts(m map[string]uint64) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(out)
	return out
}
