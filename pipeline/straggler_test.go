package pipeline

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
)

// TestStragglersDeferred: messages whose DNS never answers (their MAIL
// FROM domain times out: 2 × 1 s) are written to the
// retry topic once they stop finishing for StragglerWait, so batches
// commit without them; a second pipeline on the retry topic gives them
// their verdicts. Every message gets exactly one verdict, equal to the
// engine's own, in both delivery modes (no crash here, so at-least-once
// duplicates nothing either).
func TestStragglersDeferred(t *testing.T) {
	for _, d := range []Delivery{ExactlyOnce, AtLeastOnce} {
		t.Run(string(d), func(t *testing.T) { stragglersDeferred(t, d) })
	}
}

func stragglersDeferred(t *testing.T, delivery Delivery) {
	b := startTestBroker(t)
	dns := startTestDNS(t)
	// The dead domains' DNS must outlast the deferral by far: it comes at
	// most stragglerMaxWaits × StragglerWait (300 ms) after the batch's
	// input is in, and a loaded machine can take hundreds of ms more to
	// get there. With testEngine's 2 × 150 ms, a message admitted early
	// sometimes finished with temperror first and was not deferred.
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	e := stages.New(c, stages.WithClock(func() time.Time { return fixedNow }), stages.WithDNSBudget(3*time.Second))
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	msgs := corpus(400, "s")
	slow := map[string]bool{}
	for i := 7; i < len(msgs); i += 20 {
		d := fmt.Sprintf("dead%d.example", i)
		dns.AddTimeout(d)
		msgs[i].env.MailFrom = "bounce@" + d
		slow[msgs[i].key] = true
	}
	out := collect(t, brokers, "mail.verdicts")
	retried := collect(t, brokers, "mail.raw.retry")

	cfg := deferringConfig(brokers, "t-strag")
	cfg.Delivery = delivery
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, wait := runStages(t, ctx, cfg, e)
	produceCorpus(t, brokers, "mail.raw", msgs)

	recs := out.waitCount(t, len(msgs), 60*time.Second)
	// The dead domains' verdicts name the client's ephemeral port in
	// their error text, so those are checked for exactly one temperror
	// each; the others against the engine's own verdicts.
	var fastMsgs []testMsg
	var fastRecs []*kgo.Record
	for _, m := range msgs {
		if !slow[m.key] {
			fastMsgs = append(fastMsgs, m)
		}
	}
	slowSeen := map[string]int{}
	for _, r := range recs {
		if !slow[string(r.Key)] {
			fastRecs = append(fastRecs, r)
			continue
		}
		slowSeen[string(r.Key)]++
		if v := decodeVerdict(t, r); v.SPF == nil || v.SPF.Result != "temperror" {
			t.Errorf("verdict for %s: spf %+v, want temperror", r.Key, v.SPF)
		}
	}
	for k := range slow {
		if slowSeen[k] != 1 {
			t.Errorf("message %s: %d verdicts, want 1", k, slowSeen[k])
		}
	}
	checkVerdicts(t, e, fastMsgs, fastRecs)
	deferred := retried.snapshot()
	t.Logf("%d messages, %d with a dead domain, %d deferred", len(msgs), len(slow), len(deferred))
	seen := map[string]bool{}
	for _, r := range deferred {
		if h := headerValue(r, HeaderDeferred); h != "1" {
			t.Errorf("deferred record %s: %s = %q, want 1", r.Key, HeaderDeferred, h)
		}
		if headerValue(r, HeaderClientIP) == "" {
			t.Errorf("deferred record %s lost its envelope headers", r.Key)
		}
		seen[string(r.Key)] = true
	}
	for k := range slow {
		if !seen[k] {
			t.Errorf("message %s (dead domain, 2 s of DNS) was not deferred", k)
		}
	}
	cancel()
	wait()
}

// TestDeferredStragglersAskOnce: with `authpipe run`'s resolver (the
// client behind the cache), a straggler deferred while its DNS is still on
// the wire does not make the retry stage ask again: the cancelled lookups'
// queries stay on the wire, and the retry stage's lookups wait for them.
// The resolver answers every query after 2 s, long after the deferral
// (at most 10 × 30 ms of no progress), so every message is deferred; the
// upstream is asked each question once, and every verdict is the engine's.
func TestDeferredStragglersAskOnce(t *testing.T) {
	b := startTestBroker(t)
	dns := startTestDNS(t)
	dns.SetDelay(2 * time.Second)
	newEngine := func() *stages.Engine {
		c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		res, err := resolvercache.NewCache(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(res.Close)
		return stages.New(res, stages.WithClock(func() time.Time { return fixedNow }), stages.WithDNSBudget(10*time.Second))
	}
	e := newEngine()
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	msgs := corpus(40, "o")
	out := collect(t, brokers, "mail.verdicts")
	retried := collect(t, brokers, "mail.raw.retry")
	cfg := deferringConfig(brokers, "t-askonce")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, wait := runStages(t, ctx, cfg, e)
	produceCorpus(t, brokers, "mail.raw", msgs)
	recs := out.waitCount(t, len(msgs), 60*time.Second)
	cancel()
	wait()
	asked := dns.Queries.Load()
	if n := retried.count(); n == 0 {
		t.Fatal("nothing deferred: the test's premise (DNS slower than the deferral) did not hold")
	}

	// The questions the corpus asks: one fresh engine's queries for it.
	dns.SetDelay(0)
	dns.Queries.Store(0)
	fresh := newEngine()
	for _, m := range msgs {
		fresh.Verify(context.Background(), m.raw, m.env)
	}
	if want := dns.Queries.Load(); asked != want {
		t.Errorf("%d messages, %d deferred: %d queries upstream, want %d (each question once)", len(msgs), retried.count(), asked, want)
	}
	checkVerdicts(t, e, msgs, recs)
}

// deferringConfig is testConfig deferring stragglers to mail.raw.retry
// after 30 ms without progress.
func deferringConfig(brokers []string, txnID string) Config {
	cfg := testConfig(brokers, txnID)
	cfg.RetryTopic = "mail.raw.retry"
	cfg.StragglerWait = 30 * time.Millisecond
	return cfg
}

// TestStragglerConfig: RetryTopic and StragglerWait go together, and the
// retry topic is a topic of its own.
func TestStragglerConfig(t *testing.T) {
	for _, c := range []Config{
		{RetryTopic: "mail.raw.retry"},
		{StragglerWait: time.Second},
		{RetryTopic: "mail.raw", StragglerWait: time.Second},
		{RetryTopic: "mail.verdicts", StragglerWait: time.Second},
	} {
		if _, err := New(c, nil); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	p, err := New(Config{RetryTopic: "mail.raw.retry", StragglerWait: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The retry stage's share is part of the stated memory bound.
	with, without := MemoryBound(p.Config(), 64<<20, stages.CacheBytes), MemoryBound(Defaults(), 64<<20, stages.CacheBytes)
	if with.Retry <= 0 || with.Total <= without.Total {
		t.Errorf("bound with a retry stage %+v, without %+v", with, without)
	}
	r := RetryStage(p.Config())
	// Without an ID of its own, each stage claims its group's default.
	if r.InputTopic != "mail.raw.retry" || r.RetryTopic != "" || r.StragglerWait != 0 || r.Group == p.Config().Group || r.TransactionalID != "" {
		t.Errorf("retry stage config %+v", r)
	}
	if r := RetryStage(Config{TransactionalID: "mx1"}); r.TransactionalID != "mx1-retry" {
		t.Errorf("retry stage of mx1: transactional id %q, want mx1-retry", r.TransactionalID)
	}
}

// headerValue is the value of r's header key, "" when absent.
func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestCrashRestartWithStragglers is TestCrashRestart with deferral on: one
// message in ten outlasts the straggler wait and goes through the retry
// stage. The process is SIGKILLed mid-stream, once deferrals have been
// committed, and restarted; every message still has exactly one verdict,
// equal to the engine's.
func TestCrashRestartWithStragglers(t *testing.T) {
	crashRestart(t, "kcrash-strag", 2000, 300, func(brokers []string) func() bool {
		retried := collect(t, brokers, "mail.raw.retry")
		return func() bool { return retried.count() > 0 }
	}, "AUTHPIPE_TEST_STRAGGLER=20ms")
}

// TestTwoInstancesWithStragglers is TestTwoInstancesOneLeaves with
// deferral on: two instances, each with its retry stage, share the
// partitions of both topics; one message in ten outlasts the straggler
// wait; instance b leaves mid-stream (SIGTERM-like, its context ends).
// Every message still has exactly one verdict, equal to the engine's.
func TestTwoInstancesWithStragglers(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	msgs := corpus(1500, "w")
	out := collect(t, brokers, "mail.verdicts")
	retried := collect(t, brokers, "mail.raw.retry")

	start := func(name string) (context.CancelFunc, func()) {
		v := &tailVerifier{Verifier: &slowVerifier{Verifier: e, delay: 2 * time.Millisecond}, delay: 200 * time.Millisecond}
		cfg := testConfig(brokers, name)
		cfg.MaxInFlight = 8
		cfg.RetryTopic, cfg.StragglerWait = "mail.raw.retry", 20*time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		_, wait := runStages(t, ctx, cfg, v)
		return cancel, wait
	}
	cancelA, waitA := start("inst-sa")
	defer cancelA()
	cancelB, waitB := start("inst-sb")
	time.Sleep(500 * time.Millisecond) // let both join
	produceCorpus(t, brokers, "mail.raw", msgs)
	deadline := time.Now().Add(30 * time.Second)
	for out.count() < 300 || retried.count() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d verdicts and %d deferrals", out.count(), retried.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancelB()
	waitB()
	t.Logf("instance b left after %d verdicts, %d deferrals", out.count(), retried.count())
	recs := out.waitCount(t, len(msgs), 90*time.Second)
	cancelA()
	waitA()
	t.Logf("%d deferrals in all", retried.count())
	checkVerdicts(t, e, msgs, recs)
}

// TestRetryTopicMustExist: with topic creation off, a missing retry topic
// is an error at start, not a batch that fails and is redone for ever at
// the first straggler.
func TestRetryTopicMustExist(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	ensureTestTopics(t, brokers, 4, "authpipe.aggregates") // the retry topic alone is missing
	cfg := testConfig(brokers, "t-noretry")
	cfg.SkipCreateTopics = true
	cfg.RetryTopic, cfg.StragglerWait = "mail.raw.missing", 20*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := New(cfg, nil, WithKafkaOpts(testKafkaOpts()...))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "retry topic mail.raw.missing does not exist") {
		t.Fatalf("Run = %v, want an error naming the missing retry topic", err)
	}
}
