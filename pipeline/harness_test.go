package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// The tests run against real parts: the embedded kfake broker over TCP on
// 127.0.0.1, the in-process authoritative DNS server dnstest, the real DNS
// client of resolvercache and the real engine.

var fixedNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

const testDomains = 8

func startTestBroker(t testing.TB) *Broker {
	t.Helper()
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", MinSessionTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// startTestStack is what most pipeline tests start with: the embedded
// broker with the topics created (4 partitions), the DNS server
// (startTestDNS), an engine on it, and the broker's addresses.
func startTestStack(t testing.TB) (*Broker, *dnstest.Server, *stages.Engine, []string) {
	t.Helper()
	b := startTestBroker(t)
	dns := startTestDNS(t)
	e := testEngine(t, dns.Addr)
	createTopics(t, b.Addrs(), 4)
	return b, dns, e, b.Addrs()
}

// startTestDNS serves SPF records for sender0.example … sender7.example:
// even ones authorise 192.0.2.0/24, odd ones end in -all only.
func startTestDNS(t testing.TB) *dnstest.Server {
	t.Helper()
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	for i := range testDomains {
		rec := "v=spf1 -all"
		if i%2 == 0 {
			rec = "v=spf1 ip4:192.0.2.0/24 -all"
		}
		s.AddRR(dnstest.TXT(fmt.Sprintf("sender%d.example", i), rec, 300))
	}
	return s
}

func testEngine(t testing.TB, dnsAddr string) *stages.Engine {
	t.Helper()
	e := testEngineNoT(dnsAddr)
	if e == nil {
		t.Fatal("no DNS client")
	}
	return e
}

// testEngineNoT builds the engine used by tests and by child processes:
// the real DNS client (no cache, so outages show at once) against dnsAddr
// and a fixed clock, so verdicts are reproducible.
func testEngineNoT(dnsAddr string) *stages.Engine {
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dnsAddr), resolvercache.WithTimeout(150*time.Millisecond))
	if err != nil {
		return nil
	}
	return stages.New(c, stages.WithClock(func() time.Time { return fixedNow }), stages.WithDNSBudget(600*time.Millisecond))
}

// cachedEngine builds the engine `authpipe run` has for inFlight messages
// verified at once: the real DNS client against dnsAddr, with run's
// queries in flight and sockets (benchDNSClient), behind the cache (options such as its size in cacheOpts), and the real
// clock, as the benchmarks' signatures carry t= of now.
func cachedEngine(tb testing.TB, dnsAddr string, inFlight int, cacheOpts ...resolvercache.CacheOption) *stages.Engine {
	tb.Helper()
	// Counting, as `authpipe run`'s client and cache do (unregistered).
	m, err := resolvercache.NewMetrics(nil)
	if err != nil {
		tb.Fatal(err)
	}
	queries, sockets := benchDNSClient(inFlight)
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dnsAddr), resolvercache.WithTimeout(time.Second),
		resolvercache.WithMetrics(m), resolvercache.WithMaxInFlight(queries), resolvercache.WithUDPSockets(sockets))
	if err != nil {
		tb.Fatal(err)
	}
	res, err := resolvercache.NewCache(c, append([]resolvercache.CacheOption{resolvercache.WithCacheMetrics(m)}, cacheOpts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(res.Close)
	return stages.New(res)
}

// benchDNSClient returns the DNS query slots and UDP sockets of the
// benchmarks' client for inFlight messages: `authpipe run`'s
// (DNSQueriesInFlight, resolvercache.UDPSocketsFor), unless
// AUTHPIPE_BENCH_DNS_INFLIGHT or AUTHPIPE_BENCH_DNS_SOCKETS says otherwise.
func benchDNSClient(inFlight int) (queries, sockets int) {
	queries = DNSQueriesInFlight(Config{MaxInFlight: inFlight})
	if n, err := strconv.Atoi(os.Getenv("AUTHPIPE_BENCH_DNS_INFLIGHT")); err == nil {
		queries = n
	}
	sockets = resolvercache.UDPSocketsFor(queries)
	if n, err := strconv.Atoi(os.Getenv("AUTHPIPE_BENCH_DNS_SOCKETS")); err == nil {
		sockets = n
	}
	return queries, sockets
}

type testMsg struct {
	key string
	raw []byte
	env stages.Envelope
}

func corpus(n int, prefix string) []testMsg {
	out := make([]testMsg, n)
	for i := range out {
		d := fmt.Sprintf("sender%d.example", i%testDomains)
		out[i] = testMsg{
			key: fmt.Sprintf("%s%05d", prefix, i),
			raw: []byte(fmt.Sprintf("From: a@%s\r\nTo: b@rcpt.example\r\nSubject: m %d\r\nMessage-ID: <%s%d@%s>\r\n\r\nbody %d\r\n", d, i, prefix, i, d, i)),
			env: stages.Envelope{
				ClientIP:   netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 250)}),
				HELO:       "mta." + d,
				MailFrom:   "bounce@" + d,
				RcptTo:     []string{"b@rcpt.example"},
				ReceivedAt: fixedNow,
			},
		}
	}
	return out
}

func produceCorpus(t testing.TB, brokers []string, topic string, msgs []testMsg) {
	t.Helper()
	if err := produceErr(brokers, topic, msgs); err != nil {
		t.Fatal(err)
	}
}

func produceErr(brokers []string, topic string, msgs []testMsg) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(m.key), Value: m.raw, Headers: EnvelopeHeaders(m.env, m.key)}
	}
	return cl.ProduceSync(context.Background(), recs...).FirstErr()
}

func createTopics(t testing.TB, brokers []string, partitions int32) {
	t.Helper()
	ensureTestTopics(t, brokers, partitions, "mail.raw", "mail.verdicts", "mail.raw.dlq")
}

// ensureTestTopics creates those of topics that do not exist, with the
// given partitions each.
func ensureTestTopics(t testing.TB, brokers []string, partitions int32, topics ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.MetadataMinAge(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := EnsureTopics(context.Background(), cl, partitions, -1, nil, topics...); err != nil {
		t.Fatal(err)
	}
}

// testConfig is a configuration with timeouts short enough for tests.
func testConfig(brokers []string, txnID string) Config {
	return Config{
		Brokers:            brokers,
		Partitions:         4,
		TransactionalID:    txnID,
		MaxInFlight:        64,
		BatchInterval:      50 * time.Millisecond,
		SessionTimeout:     time.Second,
		RebalanceTimeout:   2 * time.Second,
		TransactionTimeout: 5 * time.Second,
		ShutdownGrace:      5 * time.Second,
	}
}

func testKafkaOpts() []kgo.Opt {
	return []kgo.Opt{kgo.HeartbeatInterval(100 * time.Millisecond), kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond })}
}

// collector reads a topic read_committed from the start.
type collector struct {
	mu   sync.Mutex
	recs []*kgo.Record
	cl   *kgo.Client
	done chan struct{}
}

func collect(t testing.TB, brokers []string, topic string) *collector {
	t.Helper()
	return collectIsolated(t, brokers, topic, kgo.ReadCommitted())
}

// collectIsolated is collect at the given isolation level.
func collectIsolated(t testing.TB, brokers []string, topic string, isolation kgo.IsolationLevel) *collector {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(isolation), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(10*time.Millisecond), kgo.MetadataMinAge(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{cl: cl, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			fs := cl.PollFetches(context.Background())
			if fs.IsClientClosed() {
				return
			}
			c.mu.Lock()
			c.recs = append(c.recs, fs.Records()...)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cl.Close(); <-c.done })
	return c
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.recs)
}

func (c *collector) snapshot() []*kgo.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*kgo.Record(nil), c.recs...)
}

// waitCount waits until at least n records arrived, then a little longer to
// catch extras; it fails the test on timeout.
func (c *collector) waitCount(t testing.TB, n int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for c.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out with %d of %d records", c.count(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return c.snapshot()
}

// checkVerdicts checks that recs hold exactly one verdict per message of
// msgs, each equal to the engine's own verdict for it.
func checkVerdicts(t testing.TB, e *stages.Engine, msgs []testMsg, recs []*kgo.Record) {
	t.Helper()
	byKey := map[string]int{}
	got := map[string][]byte{}
	for _, r := range recs {
		byKey[string(r.Key)]++
		got[string(r.Key)] = r.Value
	}
	dups, missing, wrong := 0, 0, 0
	for _, m := range msgs {
		switch c := byKey[m.key]; {
		case c == 0:
			missing++
			continue
		case c > 1:
			dups++
		}
		want := e.Verify(context.Background(), m.raw, m.env)
		want.Key = m.key
		wantJS, _ := json.Marshal(want)
		if string(wantJS) != string(got[m.key]) {
			if wrong < 3 {
				t.Errorf("verdict for %s:\n got %s\nwant %s", m.key, got[m.key], wantJS)
			}
			wrong++
		}
	}
	if len(recs) != len(msgs) || dups+missing+wrong > 0 {
		t.Fatalf("%d verdicts for %d messages: %d duplicated, %d missing, %d different from the engine's", len(recs), len(msgs), dups, missing, wrong)
	}
	t.Logf("%d messages in, %d verdicts out, each once, all equal to the engine's", len(msgs), len(recs))
}

func decodeVerdict(t testing.TB, r *kgo.Record) *verdict.Verdict {
	t.Helper()
	var v verdict.Verdict
	if err := json.Unmarshal(r.Value, &v); err != nil {
		t.Fatalf("verdict %s: %v", r.Key, err)
	}
	return &v
}

func runPipeline(t testing.TB, ctx context.Context, cfg Config, v Verifier, opts ...Option) (*Pipeline, chan error) {
	t.Helper()
	opts = append([]Option{WithKafkaOpts(testKafkaOpts()...)}, opts...)
	p, err := New(cfg, v, opts...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return p, done
}

// runStages runs a pipeline as runPipeline does and, when cfg defers
// stragglers, its retry stage (RetryStage of the first's effective
// configuration) beside it, as `authpipe run` does. wait waits for both to
// return and fails on an error.
func runStages(t testing.TB, ctx context.Context, cfg Config, v Verifier, opts ...Option) (p *Pipeline, wait func()) {
	t.Helper()
	p, done := runPipeline(t, ctx, cfg, v, opts...)
	dones := []chan error{done}
	if cfg.RetryTopic != "" {
		_, retryDone := runPipeline(t, ctx, RetryStage(p.Config()), v, opts...)
		dones = append(dones, retryDone)
	}
	return p, func() {
		t.Helper()
		for _, d := range dones {
			if err := <-d; err != nil {
				t.Error(err)
			}
		}
	}
}

// slowVerifier adds a fixed delay (standing in for DNS latency) and counts
// calls.
type slowVerifier struct {
	Verifier
	delay time.Duration
	mu    sync.Mutex
	n     int
	cur   int
	peak  int
}

func (s *slowVerifier) Verify(ctx context.Context, raw []byte, env stages.Envelope) *verdict.Verdict {
	s.mu.Lock()
	s.n++
	s.cur++
	s.peak = max(s.peak, s.cur)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cur--
		s.mu.Unlock()
	}()
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
	}
	return s.Verifier.Verify(ctx, raw, env)
}

func (s *slowVerifier) maxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

func (s *slowVerifier) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
