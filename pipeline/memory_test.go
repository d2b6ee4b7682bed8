package pipeline

import (
	"bufio"
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
)

// memSampler samples this process's RSS (/proc/self/status VmRSS) and the
// Go runtime's view (all memory mapped by the runtime, and the live heap
// after the last GC) until stopped, keeping the peaks.
type memSampler struct {
	stop                      chan struct{}
	done                      chan struct{}
	mu                        sync.Mutex
	peakRSS, peakGo, peakLive int64
	lastRSS, lastGo, lastLive int64
	samples                   int
}

func startMemSampler(t testing.TB, every time.Duration) *memSampler {
	t.Helper()
	if _, err := readRSS(); err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	m := &memSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			m.sample()
			select {
			case <-tk.C:
			case <-m.stop:
				m.sample()
				return
			}
		}
	}()
	return m
}

var memMetrics = []string{"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes", "/gc/heap/live:bytes"}

func (m *memSampler) sample() {
	rss, _ := readRSS()
	s := make([]metrics.Sample, len(memMetrics))
	for i, n := range memMetrics {
		s[i].Name = n
	}
	metrics.Read(s)
	// Mapped by the runtime and not returned to the OS.
	goTotal, live := int64(s[0].Value.Uint64()-s[1].Value.Uint64()), int64(s[2].Value.Uint64())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.samples++
	m.lastRSS, m.lastGo, m.lastLive = rss, goTotal, live
	m.peakRSS, m.peakGo, m.peakLive = max(m.peakRSS, rss), max(m.peakGo, goTotal), max(m.peakLive, live)
}

func (m *memSampler) finish() {
	close(m.stop)
	<-m.done
}

// readRSS returns VmRSS from /proc/self/status in bytes.
func readRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte("kB")))), 10, 64)
			return kb << 10, err
		}
	}
	return 0, os.ErrNotExist
}

func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }

// TestMemoryBoundSustained streams tens of thousands of DKIM-signed
// messages (about 4.5 KiB each, 30000 by default, AUTHPIPE_TEST_MEM_N)
// through the real pipeline, exactly once, against the embedded broker
// keeping its topics on disk (BrokerConfig.DataDir, as `authpipe run`
// does), with the producer and the verdict consumer in another process. It
// samples this process's memory every 20ms and requires the peaks to stay
// under MemoryBound for the configuration, over the memory the process
// held before the stream (runtime, test binary, idle clients, broker),
// with the collector settings of `authpipe run` (GOGC 400 and a memory
// limit at the bound).
//
// The broker's topic data is measured apart (DescribeLogDirs): on disk
// with a data directory; resident in memory without one (kfake's in-memory
// file system), where it grows with every record until retention removes
// it (BrokerConfig.Retention, RetentionBytes).
func TestMemoryBoundSustained(t *testing.T) {
	if testing.Short() {
		t.Skip("sustained stream")
	}
	if raceEnabled {
		t.Skip("the race detector's shadow memory multiplies RSS")
	}
	n := 30000
	if v, err := strconv.Atoi(os.Getenv("AUTHPIPE_TEST_MEM_N")); err == nil && v > 0 {
		n = v
	}
	br, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MinSessionTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(br.Close)
	dns := startTestDNS(t)
	msgs := signedCorpus(t, dns, n)
	const cacheBytes = 4 << 20
	e := cachedEngine(t, dns.Addr, 128, resolvercache.WithMaxBytes(cacheBytes))
	brokers := br.Addrs()
	createTopics(t, brokers, 4)
	ld := startLoader(t, brokers)
	ld.load(t, writeCorpusFile(t, t.TempDir(), msgs))
	msgBytes := int64(len(msgs[0].raw))
	msgs = nil // the loader process holds the corpus now

	cfg := testConfig(brokers, "mem")
	cfg.MaxInFlight = 128
	cfg.MaxInFlightBytes = 4 << 20
	cfg.MaxMessageBytes = 1 << 20
	cfg.BatchInterval = 250 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, done := runPipeline(t, ctx, cfg, e)
	bound := MemoryBound(p.Config(), cacheBytes, stages.CacheBytes)

	ld.run(t, 100)       // join the group, warm the DNS cache
	debug.FreeOSMemory() // the setup's garbage (corpus signing) out of the base
	time.Sleep(100 * time.Millisecond)
	baseRSS, _ := readRSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseGo := int64(ms.Sys - ms.HeapReleased)

	// The collector settings `authpipe run` uses by default: GOGC 400,
	// held under the bound by a memory limit of 75% of it (cmd/authpipe
	// applyMemorySettings; the limit counts the base as well here).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(baseGo + bound.GoMemoryLimit()))

	sm := startMemSampler(t, 20*time.Millisecond)
	start := time.Now()
	ld.run(t, n)
	elapsed := time.Since(start)
	sm.finish()

	t.Logf("%d messages of %d bytes in %v (%.0f/s); %d samples", n, msgBytes, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), sm.samples)
	t.Logf("bound %s over a base of RSS %s (Go runtime %s)", mib(bound.Total), mib(baseRSS), mib(baseGo))
	t.Logf("  in flight %s + per-message work %s + fetch %s + producer %s + DNS cache %s + engine caches %s + aggregates %s, ×%.1f GC headroom",
		mib(bound.InFlight), mib(bound.Work), mib(bound.Fetch), mib(bound.Produce), mib(bound.DNSCache), mib(bound.Engine), mib(bound.Aggregates), bound.GCHeadroom)
	t.Logf("peak RSS %s (+%s), Go runtime total %s (+%s), live heap %s", mib(sm.peakRSS), mib(sm.peakRSS-baseRSS),
		mib(sm.peakGo), mib(sm.peakGo-baseGo), mib(sm.peakLive))

	// The broker's share, apart: topic bytes it retains (on disk here).
	adm := kadm.NewClient(mustClient(t, brokers))
	dirs, err := adm.DescribeAllLogDirs(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var topicBytes int64
	dirs.Each(func(d kadm.DescribedLogDir) {
		d.Topics.Each(func(p kadm.DescribedLogDirPartition) { topicBytes += p.Size })
	})
	t.Logf("embedded broker retains %s of topic data (%.0f bytes a message), on disk under its data directory; without one it would be resident",
		mib(topicBytes), float64(topicBytes)/float64(n+110))

	if grow := sm.peakRSS - baseRSS; grow > bound.Total {
		t.Errorf("RSS grew by %s during the stream, over the bound %s", mib(grow), mib(bound.Total))
	}
	if grow := sm.peakGo - baseGo; grow > bound.Total {
		t.Errorf("Go runtime memory grew by %s, over the bound %s", mib(grow), mib(bound.Total))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func mustClient(t testing.TB, brokers []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestBrokerRetention: with RetentionBytes the embedded broker drops a
// partition's oldest batches past the cap, so an in-memory broker (no data
// directory) does not grow without end.
func TestBrokerRetention(t *testing.T) {
	br, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", RetentionBytes: 64 << 10, RetentionCheck: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(br.Close)
	brokers := br.Addrs()
	cl := mustClient(t, brokers)
	if err := EnsureTopics(context.Background(), cl, 1, -1, nil, "ret"); err != nil {
		t.Fatal(err)
	}
	for range 256 { // 1 MiB, incompressible, in 256 batches
		val := make([]byte, 4096)
		_, _ = cryptorand.Read(val)
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "ret", Value: val}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	size := func() int64 {
		dirs, err := adm.DescribeAllLogDirs(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		dirs.Each(func(d kadm.DescribedLogDir) {
			d.Topics.Each(func(p kadm.DescribedLogDirPartition) {
				if p.Topic == "ret" {
					n += p.Size
				}
			})
		})
		return n
	}
	before := size()
	br.ApplyRetention()
	after := size()
	starts, err := adm.ListStartOffsets(context.Background(), "ret")
	if err != nil {
		t.Fatal(err)
	}
	so, _ := starts.Lookup("ret", 0)
	t.Logf("partition bytes %d → %d, log start offset %d", before, after, so.Offset)
	if before < 1<<20 || after > 64<<10 || so.Offset == 0 {
		t.Fatalf("retention not applied: %d → %d bytes, start offset %d", before, after, so.Offset)
	}
	// The segment size the broker runs with (kfake's own is 100 MiB).
	rcs, err := adm.DescribeBrokerConfigs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var seg string
	for _, rc := range rcs {
		for _, c := range rc.Configs {
			if c.Key == "log.segment.bytes" {
				seg = c.MaybeValue()
			}
		}
	}
	if seg != strconv.Itoa(DefaultSegmentBytes) {
		t.Fatalf("log.segment.bytes = %q, want %d", seg, DefaultSegmentBytes)
	}
}
