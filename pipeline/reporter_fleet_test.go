package pipeline

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages/verdict"
)

// --- helpers ------------------------------------------------------------------

// testClock is a settable clock shared by the reporter's goroutines.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// smtpSink is a go-smtp server on 127.0.0.1 that keeps every mail.
type smtpSink struct {
	mu    sync.Mutex
	mails []sinkMail
	port  int
}

type sinkMail struct {
	to   string
	data []byte
}

type sinkSession struct {
	s  *smtpSink
	to string
}

func (ss *sinkSession) Reset()                                    {}
func (ss *sinkSession) Logout() error                             { return nil }
func (ss *sinkSession) Mail(string, *smtp.MailOptions) error      { return nil }
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error { ss.to = to; return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.mails = append(ss.s.mails, sinkMail{to: ss.to, data: b})
	ss.s.mu.Unlock()
	return nil
}

func startSMTPSink(t testing.TB) *smtpSink {
	t.Helper()
	sk := &smtpSink{}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: sk}, nil }))
	srv.Domain = "mx.test"
	srv.MaxMessageBytes = 10 << 20
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sk.port = l.Addr().(*net.TCPAddr).Port
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sk
}

func (s *smtpSink) snapshot() []sinkMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkMail(nil), s.mails...)
}

var countRE = regexp.MustCompile(`<count>(\d+)</count>`)

// reportOf unpacks a DMARC report mail: Report-ID (from the Subject) and
// the sum of the record counts of its XML.
func reportOf(t testing.TB, m sinkMail) (string, uint64) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.data))
	if err != nil {
		t.Fatal(err)
	}
	subj := strings.Join(strings.Fields(msg.Header.Get("Subject")), " ")
	id := subj[strings.LastIndex(subj, "<")+1 : len(subj)-1]
	_, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var n uint64
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		if p.FileName() == "" {
			continue
		}
		zr, err := gzip.NewReader(base64.NewDecoder(base64.StdEncoding, p))
		if err != nil {
			t.Fatal(err)
		}
		doc, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range countRE.FindAllSubmatch(doc, -1) {
			v, _ := strconv.ParseUint(string(c[1]), 10, 64)
			n += v
		}
	}
	return id, n
}

// partialFor aggregates n verdicts of domain on day into one partial
// (distinct source IPs make distinct rows).
func partialFor(domain string, day time.Time, n, salt int) reportgen.PartialAggregate {
	a := reportgen.NewAggregator()
	for i := range n {
		at := day.Add(time.Duration(i+salt) * time.Minute)
		v := &verdict.Verdict{Version: 1, EvaluatedAt: at,
			Envelope:   verdict.Envelope{ClientIP: fmt.Sprintf("192.0.2.%d", (i+salt)%200), RcptTo: []string{"u@rcpt.example"}, ReceivedAt: at},
			HeaderFrom: []string{domain},
			DMARC: &verdict.DMARC{Result: "pass", PolicyDomain: domain, AuthorDomain: domain, Disposition: "none", AppliedPolicy: "p",
				Policy: &verdict.Policy{Domain: domain, P: "none", ADKIM: "r", ASPF: "r"}}}
		if err := a.Add(v); err != nil {
			panic(err)
		}
	}
	return a.Flush()[0]
}

// producePartials writes partials to authpipe.aggregates, key = domain as
// the verify workers do, in Kafka transactions of chunk records (so the
// partitions carry transaction markers, like the real stream).
func producePartials(t testing.TB, brokers []string, txnID string, parts []reportgen.PartialAggregate, chunk int) {
	t.Helper()
	cl, err := kgo.NewClient(append(testClientOpts(brokers), kgo.TransactionalID(txnID))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	for len(parts) > 0 {
		n := min(chunk, len(parts))
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		recs := make([]*kgo.Record, n)
		for i := range n {
			v, _ := parts[i].MarshalBinary()
			recs[i] = &kgo.Record{Topic: "authpipe.aggregates", Key: parts[i].RecordKey(), Value: v}
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
		parts = parts[n:]
	}
}

// reportDNS serves _dmarc records with a mailto: rua for each domain, the
// mail going to 127.0.0.1.
func reportDNS(t testing.TB, domains ...string) resolvercache.Resolver {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	var zone strings.Builder
	for _, d := range domains {
		fmt.Fprintf(&zone, "_dmarc.%s. 300 IN TXT \"v=DMARC1; p=none; rua=mailto:agg@%s\"\n%s. 300 IN MX 10 mx.%s.\nmx.%s. 300 IN A 127.0.0.1\n", d, d, d, d, d)
	}
	if err := srv.AddZone(zone.String()); err != nil {
		t.Fatal(err)
	}
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestReporter(st *reportgen.Store, res resolvercache.Resolver, smtpPort int, clock func() time.Time) *reportgen.Reporter {
	return &reportgen.Reporter{
		Store: st,
		Deliverer: &reportgen.Deliverer{Resolver: res, From: "dmarc@receiver.example", HELO: "reporter.receiver.example", SMTPPort: smtpPort,
			Addresses: reportgen.AddressPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, Timeout: 5 * time.Second, Now: clock},
		DMARC:        reportgen.ReportConfig{OrgName: "Receiver", Email: "dmarc@receiver.example", Receiver: "receiver.example", Generator: "authpipe"},
		TLS:          reportgen.TLSReportConfig{OrganizationName: "Receiver", ContactInfo: "tlsrpt@receiver.example", Sender: "receiver.example"},
		RateInterval: -1,
	}
}

func reporterTestConfig(brokers []string, clock func() time.Time) ReporterConfig {
	return ReporterConfig{Brokers: brokers, CreateTopics: true, Partitions: 4, TickInterval: 100 * time.Millisecond, StateWait: 5 * time.Second, Clock: clock}
}

// testClientOpts are for the tests' own producers: short retry backoff
// and metadata age, so a topic just created is found at once.
func testClientOpts(brokers []string) []kgo.Opt {
	return []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ProducerLinger(time.Millisecond), kgo.MetadataMinAge(50 * time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond })}
}

func reporterKafkaOpts() []kgo.Opt {
	return append(testKafkaOpts(), kgo.SessionTimeout(time.Second), kgo.RebalanceTimeout(3*time.Second),
		kgo.FetchMaxWait(50*time.Millisecond), kgo.MetadataMinAge(100*time.Millisecond))
}

// createAggregateTopic creates authpipe.aggregates with 4 partitions.
func createAggregateTopic(t testing.TB, brokers []string) {
	t.Helper()
	ensureTestTopics(t, brokers, 4, "authpipe.aggregates")
}

// runTestReporter starts RunReporter; stop cancels it and returns its error.
func runTestReporter(t testing.TB, cfg ReporterConfig, st *reportgen.Store, rep *reportgen.Reporter) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := testLog(t)
	go func() { done <- RunReporter(ctx, cfg, st, rep, log, reporterKafkaOpts()...) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func windowCounts(t testing.TB, st *reportgen.Store, kind reportgen.Kind) map[reportgen.Window]uint64 {
	t.Helper()
	wins, err := st.Windows(kind)
	if err != nil {
		t.Fatal(err)
	}
	out := map[reportgen.Window]uint64{}
	for _, w := range wins {
		out[w.Window] = w.Messages
	}
	return out
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// --- a. partition move ----------------------------------------------------------

// TestReporterPartitionMove: reporter A merges part of the stream and
// delivers day 1 (closed), then stops. Reporter B joins the group with an
// EMPTY store: it replays the partitions from the earliest offset (not
// from the group offsets A committed), so its open day-2 windows end with
// exact totals; the state topic tells it day 1 was delivered, so it does
// not send day 1 again (counted at the SMTP server) and the replayed day-1
// partials count as late. B then delivers day 2 with the exact counts.
func TestReporterPartitionMove(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	domains := []string{"a.example", "b.example"}
	res := reportDNS(t, domains...)
	sink := startSMTPSink(t)
	day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	day2 := day1.Add(24 * time.Hour)
	clock := &testClock{t: day2.Add(10 * time.Hour)} // day 1 due, day 2 open

	want := map[reportgen.Window]uint64{}
	var part1, part2 []reportgen.PartialAggregate
	add := func(dst *[]reportgen.PartialAggregate, d string, day time.Time, n, msgs int) {
		for i := range n {
			p := partialFor(d, day, msgs, i*7)
			*dst = append(*dst, p)
			want[p.Window] += p.Messages
		}
	}
	for _, d := range domains {
		add(&part1, d, day1, 30, 5)
		add(&part1, d, day2, 20, 3)
		add(&part2, d, day2, 25, 4)
	}
	// Part 1 is in the topic before A starts, so A's replay target covers
	// it: A closes day 1 only after merging all of it.
	cfg := reporterTestConfig(brokers, clock.Now)
	createAggregateTopic(t, brokers)
	producePartials(t, brokers, "move-producer", part1, 8)

	stA, err := reportgen.OpenStore(t.TempDir(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer stA.Close()
	stopA := runTestReporter(t, cfg, stA, newTestReporter(stA, res, sink.port, clock.Now))
	waitUntil(t, 30*time.Second, "A to deliver day 1", func() bool { return len(sink.snapshot()) == 2 })
	waitUntil(t, 10*time.Second, "A's day-2 windows", func() bool {
		c := windowCounts(t, stA, reportgen.KindDMARC)
		return len(c) == 2 && c[reportgen.Window{Domain: "a.example", Day: reportgen.DayOf(day2)}] == 60
	})
	day1IDs := map[string]bool{}
	for _, m := range sink.snapshot() {
		id, n := reportOf(t, m)
		day1IDs[id] = true
		if w := (reportgen.Window{Domain: strings.TrimPrefix(m.to, "agg@"), Day: reportgen.DayOf(day1)}); n != want[w] {
			t.Fatalf("A's day-1 report for %s counts %d, want %d", w, n, want[w])
		}
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}

	// More stream while no reporter runs: the rest of day 2 and two late
	// day-1 partials.
	late := []reportgen.PartialAggregate{partialFor("a.example", day1, 2, 999), partialFor("b.example", day1, 3, 999)}
	producePartials(t, brokers, "move-producer", append(part2, late...), 8)

	stB, err := reportgen.OpenStore(t.TempDir(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	metricsB, _ := NewReporterMetrics(nil)
	cfgB := cfg
	cfgB.Metrics = metricsB
	stopB := runTestReporter(t, cfgB, stB, newTestReporter(stB, res, sink.port, clock.Now))
	wantDay2 := map[reportgen.Window]uint64{}
	for w, n := range want {
		if w.Day == reportgen.DayOf(day2) {
			wantDay2[w] = n
		}
	}
	var gotB map[reportgen.Window]uint64
	defer func() {
		if t.Failed() {
			t.Logf("B's open windows at the end: %v, want %v", gotB, wantDay2)
		}
	}()
	waitUntil(t, 30*time.Second, "B's replayed day-2 windows", func() bool {
		gotB = windowCounts(t, stB, reportgen.KindDMARC)
		return fmt.Sprint(gotB) == fmt.Sprint(wantDay2)
	})
	// Several ticks: B must not send day 1 again.
	time.Sleep(1500 * time.Millisecond)
	if got := windowCounts(t, stB, reportgen.KindDMARC); fmt.Sprint(got) != fmt.Sprint(wantDay2) {
		t.Fatalf("B's open windows %v, want %v", got, wantDay2)
	}
	if n := len(sink.snapshot()); n != 2 {
		t.Fatalf("%d mails after B joined; day 1 was re-sent", n)
	}
	done, _ := stB.DoneWindows(reportgen.KindDMARC)
	var lateMsgs uint64
	for _, wi := range done {
		if wi.Day != reportgen.DayOf(day1) || !wi.Remote {
			t.Fatalf("B's marker %+v", wi)
		}
		lateMsgs += wi.Late
	}
	if len(done) != 2 {
		t.Fatalf("B has %d day-1 markers", len(done))
	}
	// Next day: B closes and delivers day 2 with the exact totals.
	clock.Set(day2.Add(26 * time.Hour))
	waitUntil(t, 30*time.Second, "B to deliver day 2", func() bool { return len(sink.snapshot()) == 4 })
	for _, m := range sink.snapshot()[2:] {
		id, n := reportOf(t, m)
		w := reportgen.Window{Domain: strings.TrimPrefix(m.to, "agg@"), Day: reportgen.DayOf(day2)}
		if day1IDs[id] || n != want[w] {
			t.Fatalf("B's report %s for %s counts %d, want %d", id, w, n, want[w])
		}
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	t.Logf("A delivered day 1 (2 mails); B replayed from an empty store: day 2 exact (%v), day 1 not re-sent (%d replayed/late messages counted), then day 2 delivered (4 mails in all)",
		wantDay2, lateMsgs)
}

// --- b. SIGKILL during aggregation ------------------------------------------

// TestReporterChildProcess is the reporter process of
// TestReporterKillMidStream (it runs only when re-executed with
// AUTHPIPE_REPORTER_CHILD=1): RunReporter in merge-only mode over the store
// in AUTHPIPE_TEST_DIR, printing the store's message total every 10ms,
// until SIGTERM.
func TestReporterChildProcess(t *testing.T) {
	if os.Getenv("AUTHPIPE_REPORTER_CHILD") != "1" {
		t.Skip("reporter child process of TestReporterKillMidStream")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	now := func() time.Time { return time.Date(2026, 5, 2, 10, 0, 0, 0, time.UTC) }
	st, err := reportgen.OpenStore(os.Getenv("AUTHPIPE_TEST_DIR"), now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	go func() {
		for ctx.Err() == nil {
			wins, err := st.Windows(reportgen.KindDMARC)
			if err == nil {
				var n uint64
				for _, w := range wins {
					n += w.Messages
				}
				fmt.Printf("total %d\n", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	cfg := ReporterConfig{Brokers: strings.Split(os.Getenv("AUTHPIPE_TEST_BROKERS"), ","), CreateTopics: true, Partitions: 4,
		TickInterval: time.Hour, MaxPollRecords: 5}
	if err := RunReporter(ctx, cfg, st, nil, nil, reporterKafkaOpts()...); err != nil {
		t.Fatal(err)
	}
}

// TestReporterKillMidStream: the reporter runs as a real process and is
// SIGKILLed twice while it merges the stream; restarted over the same
// store, it ends with every window's count exact (none lost, none
// doubled).
func TestReporterKillMidStream(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	dir := t.TempDir()
	day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	want := map[reportgen.Window]uint64{}
	var parts []reportgen.PartialAggregate
	var total uint64
	for i := range 900 {
		p := partialFor(fmt.Sprintf("d%d.example", i%6), day1.Add(time.Duration(i%2)*24*time.Hour), 1+i%5, i)
		parts = append(parts, p)
		want[p.Window] += p.Messages
		total += p.Messages
	}
	createAggregateTopic(t, brokers)
	var progress atomic.Uint64
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReporterChildProcess$")
		cmd.Env = append(os.Environ(), "AUTHPIPE_REPORTER_CHILD=1", "AUTHPIPE_TEST_BROKERS="+strings.Join(brokers, ","), "AUTHPIPE_TEST_DIR="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		})
		progress.Store(0)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "total "); ok {
					n, _ := strconv.ParseUint(v, 10, 64)
					progress.Store(n)
				}
			}
		}()
		return cmd
	}
	// The stream arrives in chunks while the reporter merges; it is
	// killed twice part-way.
	produced := 0
	produce := func(n int) {
		end := min(produced+n, len(parts))
		producePartials(t, brokers, "kill-producer", parts[produced:end], 10)
		produced = end
	}
	producedMsgs := func() (n uint64) {
		for _, p := range parts[:produced] {
			n += p.Messages
		}
		return n
	}
	kills := 0
	for _, killAt := range []uint64{total / 4, total / 2} {
		cmd := start()
		for progress.Load() <= killAt {
			// Keep the reporter busy, a little behind the stream.
			if produced < len(parts) && producedMsgs()-progress.Load() < 150 {
				produce(30)
			} else {
				time.Sleep(5 * time.Millisecond)
			}
		}
		produce(60) // more in flight while it dies
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		kills++
		t.Logf("SIGKILL %d with %d of %d messages merged, %d of %d partials produced", kills, progress.Load(), total, produced, len(parts))
	}
	produce(len(parts))
	cmd := start()
	waitUntil(t, 60*time.Second, "the restarted reporter to merge everything", func() bool { return progress.Load() >= total })
	time.Sleep(500 * time.Millisecond) // room for a double count to show
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reporter exit: %v", err)
	}
	st, err := reportgen.OpenStore(dir, func() time.Time { return day1 })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := windowCounts(t, st, reportgen.KindDMARC)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("store counts %v, want %v", got, want)
	}
	for w, n := range want {
		var rows uint64
		if err := st.ForEachRow(w, func(r reportgen.Row) error { rows += r.Count; return nil }); err != nil || rows != n {
			t.Fatalf("window %s: rows sum to %d, want %d (%v)", w, rows, n, err)
		}
	}
	t.Logf("2 SIGKILLs mid-stream: %d windows, %d messages, every count exact", len(got), total)
}

// --- c. TLS results ---------------------------------------------------------------

// TestReporterTLSResults: TLS results for 2 domains over 2 days, produced
// keyed by policy domain, become TLS windows with exact success and failure
// counts; a malformed event, an invalid one and one on the wrong partition
// go to mail.tls-results.dlq with an authpipe.error header (key and value
// preserved) and the stream continues past them.
func TestReporterTLSResults(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	// Before 2026-05-01's grace period ends (01:00 the next day): no
	// window may close while the stream is still arriving, or its later
	// events would be counted as late instead of merged.
	clock := &testClock{t: time.Date(2026, 5, 2, 0, 30, 0, 0, time.UTC)}
	st, err := reportgen.OpenStore(t.TempDir(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := reporterTestConfig(brokers, clock.Now)
	stop := runTestReporter(t, cfg, st, nil)
	dlq := collect(t, brokers, "mail.tls-results.dlq")

	day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	type counts struct{ ok, fail uint64 }
	want := map[reportgen.Window]counts{}
	var recs []*kgo.Record
	for i := range 400 {
		d := []string{"a.example", "b.example"}[i%2]
		day := day1.Add(time.Duration(i/2%2) * 24 * time.Hour)
		ev := reportgen.TLSResult{Version: 1, Timestamp: day.Add(time.Duration(i) * time.Minute), PolicyDomain: d, PolicyType: "sts",
			PolicyStrings: []string{"version: STSv1", "mode: enforce"}, PolicyMXHosts: []string{"mx." + d}, MXHost: "mx." + d,
			SendingIP: "192.0.2.1", ReceivingIP: fmt.Sprintf("203.0.113.%d", i%7), Result: "success"}
		c := want[reportgen.Window{Domain: d, Day: reportgen.DayOf(day)}]
		if i%5 == 0 {
			ev.Result, ev.FailureReasonCode = "certificate-expired", "X509_V_ERR_CERT_HAS_EXPIRED"
			c.fail++
		} else {
			c.ok++
		}
		want[reportgen.Window{Domain: d, Day: reportgen.DayOf(day)}] = c
		v, _ := json.Marshal(ev)
		recs = append(recs, &kgo.Record{Topic: "mail.tls-results", Key: []byte(d), Value: v})
	}
	// Bad events in the middle of the stream.
	own := newOwnership("authpipe.aggregates", "mail.tls-results", cfg.Metrics)
	misKey := "a.example"
	for i := 0; own.partition(misKey, 4) == own.partition("b.example", 4); i++ {
		misKey = fmt.Sprintf("k%d", i)
	}
	misrouted, _ := json.Marshal(reportgen.TLSResult{Version: 1, Timestamp: day1, PolicyDomain: "b.example", PolicyType: "sts", Result: "success"})
	bad := []*kgo.Record{
		{Topic: "mail.tls-results", Key: []byte("a.example"), Value: []byte(`{"version":1,"timestamp":`)},
		{Topic: "mail.tls-results", Key: []byte("b.example"), Value: []byte(`{"version":1,"timestamp":"2026-05-01T10:00:00Z","policy_domain":"b.example","policy_type":"sts","result":"bogus"}`)},
		{Topic: "mail.tls-results", Key: []byte(misKey), Value: misrouted, Headers: []kgo.RecordHeader{{Key: "origin", Value: []byte("mta-1")}}},
	}
	stream := append(append(append([]*kgo.Record{}, recs[:200]...), bad...), recs[200:]...)
	cl, err := kgo.NewClient(testClientOpts(brokers)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < len(stream); i += 50 {
		if err := cl.ProduceSync(context.Background(), stream[i:min(i+50, len(stream))]...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var sessions uint64
	for _, c := range want {
		sessions += c.ok + c.fail
	}
	waitUntil(t, 30*time.Second, "all TLS sessions merged", func() bool {
		var n uint64
		for _, m := range windowCounts(t, st, reportgen.KindTLS) {
			n += m
		}
		return n == sessions
	})
	dl := dlq.waitCount(t, len(bad), 10*time.Second)
	if len(dl) != len(bad) {
		t.Fatalf("%d DLQ records, want %d", len(dl), len(bad))
	}
	for i, r := range dl {
		var errh, src string
		for _, h := range r.Headers {
			switch h.Key {
			case HeaderError:
				errh = string(h.Value)
			case HeaderSource:
				src = string(h.Value)
			}
		}
		if errh == "" || !strings.HasPrefix(src, "mail.tls-results/") {
			t.Fatalf("DLQ record %d without error/source header: %+v", i, r.Headers)
		}
		found := false
		for _, o := range bad {
			found = found || (string(o.Key) == string(r.Key) && bytes.Equal(o.Value, r.Value))
		}
		if !found {
			t.Fatalf("DLQ record %q = %q is not one of the bad events", r.Key, r.Value)
		}
		t.Logf("DLQ: %s", errh)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Exact success and failure counts per window, through the report.
	wins, _ := st.Windows(reportgen.KindTLS)
	if len(wins) != 4 {
		t.Fatalf("%d TLS windows", len(wins))
	}
	for _, wi := range wins {
		var buf bytes.Buffer
		if _, err := reportgen.BuildTLSRPT(st, wi.Window, reportgen.TLSReportConfig{OrganizationName: "R", ContactInfo: "c@r.example", Sender: "r.example"}, &buf); err != nil {
			t.Fatal(err)
		}
		zr, _ := gzip.NewReader(&buf)
		var rep reportgen.TLSReport
		if err := json.NewDecoder(zr).Decode(&rep); err != nil {
			t.Fatal(err)
		}
		var got counts
		for _, p := range rep.Policies {
			got.ok += p.Summary.TotalSuccessfulSessionCount
			got.fail += p.Summary.TotalFailureSessionCount
		}
		if got != want[wi.Window] {
			t.Fatalf("window %s: %+v, want %+v", wi.Window, got, want[wi.Window])
		}
	}
	t.Logf("%d TLS results → 4 windows with exact counts; 3 bad events dead-lettered, stream continued", sessions)
}

// TestReporterBadPartialDLQ: an undecodable partial aggregate goes to
// authpipe.aggregates.dlq and the partials after it are merged, with
// RunReporter creating the topics and with ConsumeAggregates (merge-only,
// no topic creation) when the DLQ topic does not exist yet: it is created
// on first use instead of stopping the consumer.
func TestReporterBadPartialDLQ(t *testing.T) {
	for _, mode := range []string{"RunReporter", "ConsumeAggregates"} {
		t.Run(mode, func(t *testing.T) {
			b := startTestBroker(t)
			brokers := b.Addrs()
			clock := &testClock{t: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)}
			st, err := reportgen.OpenStore(filepath.Join(t.TempDir(), "s"), clock.Now)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			cl, err := kgo.NewClient(testClientOpts(brokers)...)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			var stop func() error
			if mode == "RunReporter" {
				stop = runTestReporter(t, ReporterConfig{Brokers: brokers, CreateTopics: true, Partitions: 2, TickInterval: time.Hour}, st, nil)
			} else {
				if err := EnsureTopics(context.Background(), cl, 2, -1, nil, "authpipe.aggregates"); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				log := testLog(t)
				go func() {
					done <- ConsumeAggregates(ctx, ReportConsumerConfig{Brokers: brokers}, st, log, reporterKafkaOpts()...)
				}()
				stop = func() error { cancel(); return <-done }
			}
			dlq := collect(t, brokers, "authpipe.aggregates.dlq")
			p := partialFor("a.example", clock.Now(), 4, 0)
			v, _ := p.MarshalBinary()
			recs := []*kgo.Record{
				{Topic: "authpipe.aggregates", Key: []byte("a.example"), Value: []byte{1, 2, 3}},
				{Topic: "authpipe.aggregates", Key: []byte("a.example"), Value: v},
			}
			if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 30*time.Second, "the good partial merged", func() bool { return windowCounts(t, st, reportgen.KindDMARC)[p.Window] == 4 })
			if dl := dlq.waitCount(t, 1, 10*time.Second); len(dl) != 1 || !bytes.Equal(dl[0].Value, []byte{1, 2, 3}) {
				t.Fatalf("DLQ %+v", dl)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// --- d. lost store --------------------------------------------------------------

// TestReporterTakeoverAfterLostStore: reporter A builds day 1 of two
// domains (state topic: built) but cannot deliver (its SMTP target is
// down), then stops and its store is deleted. Reporter B starts with an
// empty store in the same group: it replays the partitions into the
// windows A built (kept built-remote, not late), sends nothing before
// TakeoverAfter has passed since A's build, then takes them over and
// delivers A's reports (same Report-IDs) with the exact counts.
func TestReporterTakeoverAfterLostStore(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	domains := []string{"a.example", "b.example"}
	res := reportDNS(t, domains...)
	sink := startSMTPSink(t)
	day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	clock := &testClock{t: day1.Add(34 * time.Hour)} // day 1 due
	want := map[reportgen.Window]uint64{}
	var parts []reportgen.PartialAggregate
	for _, d := range domains {
		for i := range 20 {
			p := partialFor(d, day1, 4, i*5)
			parts = append(parts, p)
			want[p.Window] += p.Messages
		}
	}
	createAggregateTopic(t, brokers)
	producePartials(t, brokers, "takeover-producer", parts, 8)
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downPort := down.Addr().(*net.TCPAddr).Port
	down.Close()

	cfg := reporterTestConfig(brokers, clock.Now)
	dirA := t.TempDir()
	stA, err := reportgen.OpenStore(dirA, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	stopA := runTestReporter(t, cfg, stA, newTestReporter(stA, res, downPort, clock.Now))
	idsA := map[string]bool{}
	waitUntil(t, 30*time.Second, "A to build day 1 and fail to deliver it", func() bool {
		items, _ := stA.OutboxItems(false)
		tried := 0
		for _, it := range items {
			if it.State == reportgen.ItemPending && it.Attempts > 0 {
				tried++
				idsA[it.Meta.ReportID] = true
			}
		}
		return tried == 2
	})
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	stA.Close()
	if err := os.RemoveAll(dirA); err != nil {
		t.Fatal(err)
	}

	stB, err := reportgen.OpenStore(t.TempDir(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	reg := prometheus.NewRegistry()
	cfgB := cfg
	if cfgB.Metrics, err = NewReporterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	stopB := runTestReporter(t, cfgB, stB, newTestReporter(stB, res, sink.port, clock.Now))
	waitUntil(t, 30*time.Second, "B's replayed built-remote windows", func() bool {
		wins, _ := stB.Windows(reportgen.KindDMARC)
		got := map[reportgen.Window]uint64{}
		for _, wi := range wins {
			if wi.State == reportgen.StateBuiltRemote && wi.Late == 0 {
				got[wi.Window] = wi.Messages
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
	time.Sleep(500 * time.Millisecond) // several ticks before TakeoverAfter
	if n := len(sink.snapshot()); n != 0 {
		t.Fatalf("B sent %d mails before the takeover delay", n)
	}
	clock.Set(clock.Now().Add(time.Hour + time.Minute))
	waitUntil(t, 30*time.Second, "B to deliver day 1", func() bool { return len(sink.snapshot()) == 2 })
	for _, m := range sink.snapshot() {
		id, n := reportOf(t, m)
		w := reportgen.Window{Domain: strings.TrimPrefix(m.to, "agg@"), Day: reportgen.DayOf(day1)}
		if !idsA[id] || n != want[w] {
			t.Fatalf("B's report %s for %s counts %d (want %d), A built %v", id, w, n, want[w], idsA)
		}
	}
	waitUntil(t, 10*time.Second, "B's done markers", func() bool {
		done, _ := stB.DoneWindows(reportgen.KindDMARC)
		return len(done) == 2
	})
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	if v := counterValue(t, reg, "authpipe_reporter_windows_taken_over_total"); v != 2 {
		t.Fatalf("windows taken over: %v", v)
	}
	if n := len(sink.snapshot()); n != 2 {
		t.Fatalf("%d mails", n)
	}
	t.Logf("A built day 1 and lost its store unsent; B replayed, took over after the delay and delivered %v with A's Report-IDs", want)
}

// counterValue sums the counter name in reg over the series whose labels
// include every name, value pair of labels.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}) {
					continue series
				}
			}
			v += m.GetCounter().GetValue()
		}
	}
	return v
}

// testLog is a debug-level logger for what the test starts. Its lines go
// to standard error as they come with AUTHPIPE_TEST_LOG set; otherwise
// they are kept and printed with the test's output if it fails (a timeout
// in a reporter test says little without the reporter's own account).
func testLog(t testing.TB) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	if os.Getenv("AUTHPIPE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	buf := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, opts))
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestReporterStoppedWhileStarting: a reporter whose context ends while it
// creates its topics (a SIGTERM just after start) stops cleanly, as the
// pipeline does, rather than failing with "create topics: context
// canceled" (TestRunWarnsOfExposedReportViews saw run exit 1 so).
func TestReporterStoppedWhileStarting(t *testing.T) {
	b := startTestBroker(t)
	st, err := reportgen.OpenStore(t.TempDir(), func() time.Time { return fixedNow })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // ended before the topics are created
	cfg := ReporterConfig{Brokers: b.Addrs(), CreateTopics: true, Partitions: 4, TickInterval: time.Hour}
	if err := RunReporter(ctx, cfg, st, nil, nil, reporterKafkaOpts()...); err != nil {
		t.Fatalf("RunReporter stopped while starting: %v", err)
	}
}

// TestReporterLogsAssignmentPerTopic: at info, a reporter says once per
// topic which partitions it took, not once per partition (24 lines at a
// start with the defaults); the per-partition lines are at debug.
func TestReporterLogsAssignmentPerTopic(t *testing.T) {
	b := startTestBroker(t)
	st, err := reportgen.OpenStore(t.TempDir(), func() time.Time { return fixedNow })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := ReporterConfig{Brokers: b.Addrs(), CreateTopics: true, Partitions: 4, TickInterval: time.Hour}
	done := make(chan error, 1)
	go func() { done <- RunReporter(ctx, cfg, st, nil, log, reporterKafkaOpts()...) }()
	type line struct {
		Msg        string  `json:"msg"`
		Topic      string  `json:"topic"`
		Partitions []int32 `json:"partitions"`
		FromStore  *int    `json:"from_store"`
		Replay     *int64  `json:"records_to_replay"`
	}
	var assigned map[string]line
	waitUntil(t, 15*time.Second, "both topics assigned", func() bool {
		assigned = map[string]line{}
		for _, s := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if s == "" {
				continue
			}
			var m struct{ Msg string }
			if json.Unmarshal([]byte(s), &m) != nil {
				t.Fatalf("not JSON: %s", s)
			}
			switch m.Msg {
			case "reporter: partition assigned":
				t.Fatalf("a line per partition at info: %s", s)
			case "reporter: partitions assigned":
				var l line
				if err := json.Unmarshal([]byte(s), &l); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
				assigned[l.Topic] = l
			}
		}
		return len(assigned) == 2
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"authpipe.aggregates", "mail.tls-results"} {
		l, ok := assigned[topic]
		if !ok {
			t.Fatalf("no assignment line for %s: %v", topic, assigned)
		}
		if !slices.Equal(l.Partitions, []int32{0, 1, 2, 3}) || l.FromStore == nil || *l.FromStore != 0 || l.Replay == nil || *l.Replay != 0 {
			t.Errorf("%s: %+v, want partitions [0 1 2 3], from_store 0, records_to_replay 0", topic, l)
		}
	}
}

// TestReporterMissingTopicsRefusedAtStart: with topic creation off, a
// reporter whose aggregate, TLS or state topic does not exist stops at
// start and names them, rather than idle without a word.
func TestReporterMissingTopicsRefusedAtStart(t *testing.T) {
	b := startTestBroker(t)
	ensureTestTopics(t, b.Addrs(), 4, "mail.tls-results")
	st, err := reportgen.OpenStore(t.TempDir(), func() time.Time { return fixedNow })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := ReporterConfig{Brokers: b.Addrs(), AggregateTopic: "aggs.typo", Partitions: 4, TickInterval: time.Hour}
	err = RunReporter(ctx, cfg, st, nil, nil, reporterKafkaOpts()...)
	if err == nil || !strings.Contains(err.Error(), "topics aggs.typo, authpipe.report-state do not exist and topic creation is off") {
		t.Fatalf("RunReporter = %v, want an error naming aggs.typo and authpipe.report-state", err)
	}
}
