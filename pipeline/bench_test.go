package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// TestPipelineBenchmarkRuns runs BenchmarkPipelineVsEngine once on a small
// corpus, in a child process of this test binary so that its log is kept
// (testing.Benchmark discards it), so that its four phases and the replay
// and floor machinery the figures rest on keep working between the times
// someone measures.
func TestPipelineBenchmarkRuns(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run", "^$", "-test.bench", "^BenchmarkPipelineVsEngine$", "-test.benchtime", "1x")
	cmd.Env = append(os.Environ(), "AUTHPIPE_BENCH_N=300", "AUTHPIPE_BENCH_PROFILE=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("BenchmarkPipelineVsEngine: %v\n%s", err, out)
	}
	var line string
	for l := range strings.Lines(string(out)) {
		if strings.HasPrefix(l, "BenchmarkPipelineVsEngine") {
			line = l
		}
	}
	fields := strings.Fields(line)
	for _, m := range []string{"ratio", "ratio-ceiling", "floor-ceiling", "loop-µs/msg", "floor-µs/msg"} {
		i := slices.Index(fields, m)
		if i < 1 {
			t.Errorf("no %s in the result line %q", m, line)
			continue
		}
		if v, err := strconv.ParseFloat(fields[i-1], 64); err != nil || v <= 0 {
			t.Errorf("%s = %s, want > 0", m, fields[i-1])
		}
	}
	t.Log(line)
}

// signedCorpus returns n messages of about 4 KiB, each DKIM-signed with
// RSA-2048 by its sender domain, and publishes SPF, DKIM and DMARC records
// for the domains on dns: the work of typical inbound mail. At most
// signedDistinct different messages are signed (signing is 1–2 ms each and
// only setup); the rest repeat them under their own keys, which costs the
// verifier exactly as much as distinct messages (it caches keys, not
// results).
func signedCorpus(tb testing.TB, dns *dnstest.Server, n int) []testMsg {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	for i := range testDomains {
		d := fmt.Sprintf("sender%d.example", i)
		dns.AddRR(dnstest.TXT("sel._domainkey."+d, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 300))
		dns.AddRR(dnstest.TXT("_dmarc."+d, "v=DMARC1; p=reject; rua=mailto:dmarc@"+d, 300))
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 64)
	msgs := corpus(n, "b")
	for i := range msgs {
		if i >= signedDistinct {
			// Same domain (i ≡ j mod testDomains), so the same envelope fits.
			msgs[i].raw = msgs[i%signedDistinct].raw
			continue
		}
		d := fmt.Sprintf("sender%d.example", i%testDomains)
		raw := fmt.Sprintf("From: a@%s\r\nTo: b@rcpt.example\r\nSubject: m %d\r\nDate: Fri, 01 May 2026 12:00:00 +0000\r\nMessage-ID: <b%d@%s>\r\n\r\n%s", d, i, i, d, body)
		var buf bytes.Buffer
		if err := dkim.Sign(&buf, strings.NewReader(raw), &dkim.SignOptions{Domain: d, Selector: "sel", Signer: key}); err != nil {
			tb.Fatal(err)
		}
		msgs[i].raw = buf.Bytes()
	}
	return msgs
}

// signedDistinct is how many different messages signedCorpus signs; a
// multiple of testDomains.
const signedDistinct = 1024

// BenchmarkPipelineVsEngine runs the full loop (embedded broker over TCP,
// exactly once, real DNS client behind the cache, in-process DNS server)
// on a corpus of signed messages, and the engine alone on the same corpus
// with the same concurrency, in the same run. A third phase runs the loop
// alone: the same records through the same pipeline, whose verifier now
// looks each message's verdict up (replayVerifier) instead of computing it.
// A fourth, the Kafka floor, has them answered by a bare transactional
// session instead of the pipeline.
//
// The benchmark process holds what `authpipe run` holds: the pipeline and
// the embedded broker (plus the test DNS server). The MTAs producing to
// mail.raw and the read_committed consumer of mail.verdicts are another
// process (startLoader), as they are in production; their CPU is reported
// as loader-cpus and not charged to the pipeline.
//
// Metrics: pipeline-msgs/s and engine-msgs/s are wall-clock rates;
// pipeline-cpus and engine-cpus the cores each used on average (CPU time
// of this process / wall time); ratio is the per-core ratio, messages per
// CPU-second of the pipeline over that of the engine (the target,
// ≥ 0.8); wall-ratio is the plain rate ratio, which on a shared 2-core
// machine also depends on what else runs (the load driver included);
// overhead-µs/msg is this process's CPU a message beyond the engine's;
// loop-µs/msg is this process's CPU a message in the loop-alone phase
// (the Kafka client, the broker, decoding, verdict JSON, aggregation,
// metrics, the pool and the collector for all of them); interference-µs/msg
// is what the pipeline costs beyond engine and loop measured apart (the
// two halves slowing each other down: caches, the collector, the shared
// cores); ratio-ceiling is engine/(engine + loop), the ratio the pipeline
// would reach with no interference at all: the loop alone bounds it;
// floor-µs/msg is this process's CPU a message in the Kafka-floor phase, in
// which a bare franz-go transactional session with the pipeline's client
// options (startFloor) answers the same records, on a topic of their own,
// with their verdicts encoded beforehand: the broker and the client with
// none of authpipe's work (no decoding, verifying, encoding, aggregating,
// metrics or worker pool), floor-msgs/s its wall-clock rate (measured at
// about one core's worth of CPU, so not a CPU-bound figure); floor-ceiling is
// engine/(engine + floor), the ratio if everything authpipe adds to the
// loop cost nothing;
// pipeline-sleeps/msg and engine-sleeps/msg count the process's voluntary
// context switches (a thread going to sleep) a message;
// pipeline-sys-µs/msg, engine-sys-µs/msg, pipeline-faults/msg and
// engine-faults/msg are the kernel's share of that CPU and the minor page
// faults a message in each phase (a fault costs 2–3 µs on this VM, and the
// run-to-run spread of the ratio is in good part the spread of these: the
// Go scavenger hands pages back and the heap faults them in again; see
// GODEBUG=madvdontneed=0 in docs/configuration.md).
//
// Knobs (environment): AUTHPIPE_BENCH_N sets the messages a phase
// (default 20,000), AUTHPIPE_BENCH_INFLIGHT the messages in flight (default
// 256); AUTHPIPE_BENCH_BROKER=process runs the broker in a
// process of its own (TestBenchBroker), as a cluster reached with --brokers
// would be, and reports its CPU as broker-µs/msg; AUTHPIPE_BENCH_SEGMENT
// sets its segment size and AUTHPIPE_BENCH_DATADIR=1 puts it on disk;
// AUTHPIPE_BENCH_CODEC and AUTHPIPE_BENCH_LOADER_CODEC (none, snappy, lz4,
// zstd) choose the compression of the verdicts and of mail.raw;
// AUTHPIPE_BENCH_LINGER the producer linger (franz-go's 10ms by default);
// AUTHPIPE_BENCH_DNS_INFLIGHT and AUTHPIPE_BENCH_DNS_SOCKETS the DNS
// client's query slots and UDP sockets (default DNSQueriesInFlight and
// resolvercache.UDPSocketsFor, as `authpipe run` sizes them);
// AUTHPIPE_BENCH_DELIVERY, AUTHPIPE_BENCH_BATCH and
// AUTHPIPE_BENCH_BATCH_RECORDS set the delivery mode, batch interval and
// batch size; AUTHPIPE_BENCH_INFLIGHT_BYTES the in-flight bytes;
// AUTHPIPE_BENCH_STRAGGLER_WAIT turns straggler deferral on with its retry
// stage (as `authpipe run` has it); AUTHPIPE_BENCH_PROFILE writes a CPU
// profile per phase.
func BenchmarkPipelineVsEngine(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_N", "")); err == nil && v > 0 {
		n = v
	}
	conc := 256
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_INFLIGHT", "")); err == nil && v > 0 {
		conc = v
	}
	var brokers []string
	var brProc *brokerProc
	if os.Getenv("AUTHPIPE_BENCH_BROKER") == "process" {
		brProc, brokers = startBrokerProc(b)
	} else {
		brokers = benchBroker(b).Addrs()
	}
	dns := startTestDNS(b)
	msgs := signedCorpus(b, dns, n)
	e := cachedEngine(b, dns.Addr, conc)
	rv := newReplayVerifier(b, e, msgs)
	if v := e.Verify(context.Background(), msgs[0].raw, msgs[0].env); v.DMARC == nil || len(v.DKIM) != 1 || v.DKIM[0].Result != "pass" {
		b.Fatalf("corpus verdict: %+v %+v", v.DMARC, v.DKIM)
	}
	createTopics(b, brokers, 4)
	ld := startLoader(b, brokers)
	ld.load(b, writeCorpusFile(b, b.TempDir(), msgs))
	cfg := testConfig(brokers, "bench")
	cfg.MaxInFlight = conc
	cfg.BatchInterval = benchDuration("AUTHPIPE_BENCH_BATCH", 250*time.Millisecond)
	cfg.Delivery = Delivery(envOr("AUTHPIPE_BENCH_DELIVERY", string(ExactlyOnce)))
	if n, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_BATCH_RECORDS", "")); err == nil {
		cfg.BatchMaxRecords = n
	}
	if n, err := strconv.ParseInt(envOr("AUTHPIPE_BENCH_INFLIGHT_BYTES", ""), 10, 64); err == nil {
		cfg.MaxInFlightBytes = n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kopts := WithKafkaOpts(kgo.ProducerBatchCompression(benchCodec("AUTHPIPE_BENCH_CODEC")...),
		kgo.ProducerLinger(benchDuration("AUTHPIPE_BENCH_LINGER", 10*time.Millisecond)))
	if wait := benchDuration("AUTHPIPE_BENCH_STRAGGLER_WAIT", 0); wait > 0 {
		// Deferral on, with its retry stage, as `authpipe run` has it.
		cfg.RetryTopic, cfg.StragglerWait = "mail.raw.retry", wait
	}
	p, wait := runStages(b, ctx, cfg, rv, kopts)
	defer runGCSettings(p.Config())() // every phase runs under them

	// Warm the DNS cache and the group join outside the measurement.
	ld.run(b, 100)

	stopFloor := startFloor(b, p.Config(), rv.encodeAll(b, msgs), WithKafkaOpts(testKafkaOpts()...), kopts)
	defer stopFloor()
	ld.topic(b, floorTopic)
	ld.run(b, 100) // the floor's group join
	ld.topic(b, "mail.raw")

	var pipeDur, engDur, floorDur, pipeCPU, engCPU, loopCPU, floorCPU, loadCPU, brokerCPU, pipeSys, engSys time.Duration
	var pipeFlt, engFlt, pipeCsw, engCsw int64
	q0 := dns.Queries.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		// The clock runs from the first record produced to the last verdict
		// committed: producing is part of the loop.
		stopProf := phaseProfile(b, "pipeline")
		var bcpu0 time.Duration
		if brProc != nil {
			bcpu0 = brProc.cpu(b)
		}
		u0 := usage()
		wall, lcpu := ld.run(b, n)
		u1 := usage()
		pipeCPU += u1.user + u1.sys - u0.user - u0.sys
		pipeSys += u1.sys - u0.sys
		pipeFlt += u1.minflt - u0.minflt
		pipeCsw += u1.nvcsw - u0.nvcsw
		if brProc != nil {
			brokerCPU += brProc.cpu(b) - bcpu0
		}
		pipeDur += wall
		loadCPU += lcpu
		stopProf()

		stopProf = phaseProfile(b, "engine")
		start := time.Now()
		u0 = usage()
		verifyAll(e, msgs, conc)
		engDur += time.Since(start)
		u1 = usage()
		engCPU += u1.user + u1.sys - u0.user - u0.sys
		engSys += u1.sys - u0.sys
		engFlt += u1.minflt - u0.minflt
		engCsw += u1.nvcsw - u0.nvcsw
		stopProf()

		// The loop alone: the same records through the same pipeline,
		// each verdict the engine's, looked up instead of computed.
		stopProf = phaseProfile(b, "loop")
		rv.replay.Store(true)
		u0 = usage()
		ld.run(b, n)
		u1 = usage()
		rv.replay.Store(false)
		loopCPU += u1.user + u1.sys - u0.user - u0.sys
		stopProf()

		// The Kafka floor: the same records, each answered with its
		// verdict encoded beforehand, by a bare transactional session.
		stopProf = phaseProfile(b, "floor")
		ld.topic(b, floorTopic)
		u0 = usage()
		wall, _ = ld.run(b, n)
		u1 = usage()
		floorDur += wall
		ld.topic(b, "mail.raw")
		floorCPU += u1.user + u1.sys - u0.user - u0.sys
		stopProf()
	}
	b.StopTimer()
	pipeRate := float64(n*b.N) / pipeDur.Seconds()
	engRate := float64(n*b.N) / engDur.Seconds()
	b.ReportMetric(pipeRate, "pipeline-msgs/s")
	b.ReportMetric(engRate, "engine-msgs/s")
	b.ReportMetric(engCPU.Seconds()/pipeCPU.Seconds(), "ratio")
	b.ReportMetric(pipeRate/engRate, "wall-ratio")
	b.ReportMetric(pipeCPU.Seconds()/pipeDur.Seconds(), "pipeline-cpus")
	b.ReportMetric(engCPU.Seconds()/engDur.Seconds(), "engine-cpus")
	b.ReportMetric(loadCPU.Seconds()/pipeDur.Seconds(), "loader-cpus")
	b.ReportMetric(float64(pipeCPU.Microseconds())/float64(n*b.N), "pipeline-µs/msg")
	b.ReportMetric(float64(engCPU.Microseconds())/float64(n*b.N), "engine-µs/msg")
	b.ReportMetric(float64((pipeCPU-engCPU).Microseconds())/float64(n*b.N), "overhead-µs/msg")
	b.ReportMetric(float64(pipeSys.Microseconds())/float64(n*b.N), "pipeline-sys-µs/msg")
	b.ReportMetric(float64(engSys.Microseconds())/float64(n*b.N), "engine-sys-µs/msg")
	b.ReportMetric(float64(pipeFlt)/float64(n*b.N), "pipeline-faults/msg")
	b.ReportMetric(float64(engFlt)/float64(n*b.N), "engine-faults/msg")
	b.ReportMetric(float64(pipeCsw)/float64(n*b.N), "pipeline-sleeps/msg")
	b.ReportMetric(float64(engCsw)/float64(n*b.N), "engine-sleeps/msg")
	b.ReportMetric(float64(loopCPU.Microseconds())/float64(n*b.N), "loop-µs/msg")
	b.ReportMetric(float64((pipeCPU-engCPU-loopCPU).Microseconds())/float64(n*b.N), "interference-µs/msg")
	b.ReportMetric(engCPU.Seconds()/(engCPU+loopCPU).Seconds(), "ratio-ceiling")
	b.ReportMetric(float64(floorCPU.Microseconds())/float64(n*b.N), "floor-µs/msg")
	b.ReportMetric(float64(n*b.N)/floorDur.Seconds(), "floor-msgs/s")
	b.ReportMetric(engCPU.Seconds()/(engCPU+floorCPU).Seconds(), "floor-ceiling")
	if brProc != nil {
		b.ReportMetric(float64(brokerCPU.Microseconds())/float64(n*b.N), "broker-µs/msg")
	}
	// The engine and pipeline phases should find every record cached (TTL 300 s).
	b.ReportMetric(float64(dns.Queries.Load()-q0)/float64(2*n*b.N), "dns-queries/msg")
	b.ReportMetric(0, "ns/op")
	cancel()
	wait()
}

// replayVerifier is the pipeline benchmark's verifier: the engine, or,
// while replay is set, a lookup of the verdict the engine gave a corpus
// message beforehand, so that a phase measures the loop without the
// engine's work. A message is recognised by its first replayPrefix bytes,
// which hold its DKIM-Signature's b= value, so they tell the corpus's
// 1,024 distinct messages apart (newReplayVerifier checks). Messages that
// share their bytes share a verdict (their envelopes differ in the client
// IP, which changes no field's length), so the verdicts read stay as few,
// and as likely in cache, as the raw messages the engine phase reads.
type replayVerifier struct {
	engine   Verifier
	replay   atomic.Bool
	verdicts map[string]*verdict.Verdict
}

const replayPrefix = 640

func replayKeyOf(raw []byte) []byte { return raw[:min(len(raw), replayPrefix)] }

// encodeAll returns each message's verdict as the pipeline would write it
// (the replayed verdict with the message's key), by key: the Kafka-floor
// phase's output.
func (r *replayVerifier) encodeAll(tb testing.TB, msgs []testMsg) map[string][]byte {
	tb.Helper()
	out := make(map[string][]byte, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		v := *r.verdicts[string(replayKeyOf(m.raw))]
		v.Key = m.key
		js, err := verdict.AppendJSON(nil, &v)
		if err != nil {
			tb.Fatal(err)
		}
		out[m.key] = js
	}
	return out
}

func newReplayVerifier(tb testing.TB, e Verifier, msgs []testMsg) *replayVerifier {
	tb.Helper()
	r := &replayVerifier{engine: e, verdicts: make(map[string]*verdict.Verdict)}
	raws := make(map[string][]byte)
	for i := range msgs {
		m := &msgs[i]
		k := string(replayKeyOf(m.raw))
		if prev, ok := raws[k]; ok {
			if !bytes.Equal(prev, m.raw) {
				tb.Fatalf("replay: message %d shares its first %d bytes with another", i, replayPrefix)
			}
			continue
		}
		raws[k] = m.raw
		r.verdicts[k] = e.Verify(context.Background(), m.raw, m.env)
	}
	return r
}

func (r *replayVerifier) Verify(ctx context.Context, raw []byte, env stages.Envelope) *verdict.Verdict {
	if !r.replay.Load() {
		return r.engine.Verify(ctx, raw, env)
	}
	v, ok := r.verdicts[string(replayKeyOf(raw))]
	if !ok {
		return r.engine.Verify(ctx, raw, env)
	}
	c := *v // the pipeline sets the key
	return &c
}

// verifyAll verifies msgs with e on conc goroutines: the engine-alone
// phase of the pipeline benchmarks.
func verifyAll(e *stages.Engine, msgs []testMsg, conc int) {
	var wg sync.WaitGroup
	work := make(chan *testMsg)
	for range conc {
		wg.Go(func() {
			for m := range work {
				_ = e.Verify(context.Background(), m.raw, m.env)
			}
		})
	}
	for i := range msgs {
		work <- &msgs[i]
	}
	close(work)
	wg.Wait()
}

// benchBroker starts the embedded broker with its topics in memory, or
// under a data directory as `authpipe run` keeps them when
// AUTHPIPE_BENCH_DATADIR=1.
func benchBroker(b *testing.B) *Broker {
	cfg := BrokerConfig{Addr: "127.0.0.1:0", MinSessionTimeout: 100 * time.Millisecond}
	if n, err := strconv.ParseInt(os.Getenv("AUTHPIPE_BENCH_SEGMENT"), 10, 64); err == nil {
		cfg.SegmentBytes = n
	}
	if os.Getenv("AUTHPIPE_BENCH_DATADIR") == "1" {
		cfg.DataDir = b.TempDir()
	}
	br, err := StartBroker(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	return br
}

// phaseProfile writes a CPU profile of one phase of a benchmark to
// $AUTHPIPE_BENCH_PROFILE.<phase>.<unix ns> (go tool pprof merges several) when that variable is set (run without
// -cpuprofile then), so the profile holds the measured work only, not the
// corpus signing. The returned function stops it.
// runGCSettings applies the collector settings `authpipe run` ships with
// (GOGC 400, memory limit at 75% of the pipeline's bound computed with the
// default 64 MiB DNS cache), unless GOGC or GOMEMLIMIT is set in the
// environment, and returns the function that restores the previous ones.
func runGCSettings(cfg Config) (restore func()) {
	gc, limit := -2, int64(-1)
	if os.Getenv("GOGC") == "" {
		gc = debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		limit = debug.SetMemoryLimit(MemoryBound(cfg, 64<<20, stages.CacheBytes).GoMemoryLimit())
	}
	return func() {
		if gc != -2 {
			debug.SetGCPercent(gc)
		}
		if limit >= 0 {
			debug.SetMemoryLimit(limit)
		}
	}
}

func phaseProfile(b *testing.B, phase string) func() {
	prefix := os.Getenv("AUTHPIPE_BENCH_PROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%s.%d", prefix, phase, time.Now().UnixNano()))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// procUsage is this process's resource use so far (getrusage).
type procUsage struct {
	user, sys time.Duration
	minflt    int64 // minor page faults
	nvcsw     int64 // voluntary context switches: a thread of the process went to sleep
}

func usage() procUsage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return procUsage{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), ru.Minflt, ru.Nvcsw}
}

func benchDuration(env string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(envOr(env, "")); err == nil {
		return d
	}
	return def
}

// BenchmarkPageFault measures what a minor page fault costs this machine:
// each op first-touches one 4 KiB page of anonymous memory that
// MADV_DONTNEED has handed back, as the Go heap does with pages its
// scavenger returned. It is the unit behind the *-faults/msg figures of
// the pipeline benchmarks (2.2–2.7 µs on the 2-CPU VM of session 9).
func BenchmarkPageFault(b *testing.B) {
	const size = 64 << 20
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = syscall.Munmap(mem) }()
	const page = 4096
	off := size // start with a release
	for b.Loop() {
		if off == size {
			b.StopTimer()
			if err := syscall.Madvise(mem, syscall.MADV_DONTNEED); err != nil {
				b.Fatal(err)
			}
			off = 0
			b.StartTimer()
		}
		mem[off] = 1
		off += page
	}
}

// BenchmarkEngineBuffers checks whether BenchmarkPipelineVsEngine's engine
// phase gains from reading the corpus's shared buffers: the same 20,000
// messages with 256 verified at once, once from the signedDistinct (1,024)
// buffers the corpus repeats ("shared", about 11 MB, within this machine's
// 32 MB L3 cache) and once from a copy of their own each ("distinct", as
// the pipeline meets them), the two alternating round by round in one
// process. It reports CPU µs a message for each and their ratio. Session
// 10: distinct/shared 0.96–1.05 (3 runs of 6 rounds): no gain, so the
// engine phase keeps the shared buffers and its 200 MB fewer.
func BenchmarkEngineBuffers(b *testing.B) {
	const n = 20000
	const conc = 256
	dns := startTestDNS(b)
	shared := signedCorpus(b, dns, n)
	distinct := make([]testMsg, n)
	for i, m := range shared {
		distinct[i] = m
		distinct[i].raw = bytes.Clone(m.raw)
	}
	e := cachedEngine(b, dns.Addr, conc)
	run := func(msgs []testMsg) time.Duration {
		u0 := usage()
		verifyAll(e, msgs, conc)
		u1 := usage()
		return u1.user + u1.sys - u0.user - u0.sys
	}
	run(shared) // warm the DNS cache
	var sharedCPU, distinctCPU time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			sharedCPU += run(shared)
			distinctCPU += run(distinct)
		} else {
			distinctCPU += run(distinct)
			sharedCPU += run(shared)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(sharedCPU.Microseconds())/float64(n*b.N), "shared-µs/msg")
	b.ReportMetric(float64(distinctCPU.Microseconds())/float64(n*b.N), "distinct-µs/msg")
	b.ReportMetric(distinctCPU.Seconds()/sharedCPU.Seconds(), "distinct/shared")
	b.ReportMetric(0, "ns/op")
}
