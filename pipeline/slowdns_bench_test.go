package pipeline

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// BenchmarkPipelineSlowDNS measures what a few messages whose DNS never
// answers do to everyone else's throughput. The corpus is
// BenchmarkPipelineVsEngine's, warm; in the slow pass, one message in
// AUTHPIPE_BENCH_SLOW_EVERY (default 100) has a MAIL FROM domain of its own
// whose SPF record lookup times out (1 s per attempt, one retry, as the
// benchmark's client is configured), so its verdict takes about 2 s.
//
// A batch commits only when all its messages are done (their offsets and
// verdicts go into one transaction), so each batch that holds a slow
// message waits for it: slow-msgs/s over clean-msgs/s (slow/clean) shows
// how much. It reports both rates and their ratio, and others/clean: the
// rate at which the first n minus the slow-message count verdicts appeared
// (the stream past the slow messages) over the clean rate. With
// AUTHPIPE_BENCH_STRAGGLER_WAIT set (say 250ms) the pipeline defers, after
// that wait, the messages still being verified to mail.raw.retry, where a
// second pipeline (as `authpipe run` starts) gives them their verdicts;
// the slow pass then counts until every verdict, deferred ones included,
// is visible.
func BenchmarkPipelineSlowDNS(b *testing.B) {
	const n = 10000
	every := 100
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_SLOW_EVERY", "")); err == nil && v > 0 {
		every = v
	}
	brokers := benchBroker(b).Addrs()
	dns := startTestDNS(b)
	msgs := signedCorpus(b, dns, n)
	e := cachedEngine(b, dns.Addr, 1024)
	createTopics(b, brokers, 4)
	ld := startLoader(b, brokers)
	dir := b.TempDir()
	clean := writeCorpusFile(b, dir, msgs)
	slowMsgs := make([]testMsg, n)
	copy(slowMsgs, msgs)
	cfg := testConfig(brokers, "bench-slow")
	cfg.MaxInFlight = 1024
	cfg.BatchInterval = benchDuration("AUTHPIPE_BENCH_BATCH", 250*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if wait := benchDuration("AUTHPIPE_BENCH_STRAGGLER_WAIT", 0); wait > 0 {
		cfg.RetryTopic, cfg.StragglerWait = "mail.raw.retry", wait
	}
	_, wait := runStages(b, ctx, cfg, e)
	ld.load(b, clean)
	ld.run(b, n) // warm the cache and join the group

	var cleanDur, slowDur, slowFastDur time.Duration
	slowCount := n / every
	b.ResetTimer()
	for iter := range b.N {
		b.StopTimer()
		for i := range slowMsgs {
			slowMsgs[i].key = fmt.Sprintf("slow%d-%d", iter, i)
			if i%every == every-1 {
				d := fmt.Sprintf("timeout%d-%d.example", iter, i)
				dns.AddTimeout(d)
				slowMsgs[i].env.MailFrom = "bounce@" + d
			}
		}
		slow := writeCorpusFile(b, dir, slowMsgs)
		b.StartTimer()
		ld.load(b, clean)
		wall, _ := ld.run(b, n)
		cleanDur += wall
		ld.load(b, slow)
		wall, _, early := ld.runEarly(b, n, n-slowCount)
		slowDur += wall
		slowFastDur += early
	}
	b.StopTimer()
	cleanRate := float64(n*b.N) / cleanDur.Seconds()
	slowRate := float64(n*b.N) / slowDur.Seconds()
	b.ReportMetric(cleanRate, "clean-msgs/s")
	b.ReportMetric(slowRate, "slow-msgs/s")
	b.ReportMetric(slowRate/cleanRate, "slow/clean")
	// The others: the first n minus the slow ones to be visible.
	othersRate := float64((n-slowCount)*b.N) / slowFastDur.Seconds()
	b.ReportMetric(othersRate/cleanRate, "others/clean")
	b.ReportMetric(0, "ns/op")
	cancel()
	wait()
}
