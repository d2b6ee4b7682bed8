package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages"
)

// brokerFault fails some of the pipeline's requests of one kind: after
// the first `after` of them pass, the next `times` are answered with
// code, or, when code is 0, by closing the connection with the request
// unanswered (a network failure: the client cannot tell whether the
// broker acted on it).
type brokerFault struct {
	name        string
	key         int16
	after       int
	times       int
	code        int16
	atLeastOnce bool // run the pipeline at least once (duplicates allowed)
	// abortsBatch: the fault outlasts franz-go's retries, so the pipeline
	// aborts the batch itself (afterFailedEnd), not ready meanwhile.
	abortsBatch bool
}

// TestBrokerFaults runs the exactly-once pipeline against the embedded
// broker while the broker fails some of its requests mid-stream (kfake's
// request control hooks, on the real broker over TCP: no other part can
// make a broker fail on cue). A read_committed consumer must still see
// exactly one verdict per message, each the engine's, and the pipeline
// must ride through without returning: each fault is one a broker gives
// in ordinary operation (a leader or coordinator moving, a connection
// dropped), which franz-go retries or the pipeline answers by aborting the
// batch and doing it again.
func TestBrokerFaults(t *testing.T) {
	faults := []brokerFault{
		{name: "produce/not-leader", key: kmsg.Produce.Int16(), after: 3, times: 3, code: kerr.NotLeaderForPartition.Code},
		{name: "produce/connection-dropped", key: kmsg.Produce.Int16(), after: 3, times: 2},
		{name: "end-txn/coordinator-not-available", key: kmsg.EndTxn.Int16(), after: 2, times: 2, code: kerr.CoordinatorNotAvailable.Code},
		// More than franz-go's 20 tries of a request: End fails, and the
		// pipeline aborts the batch and redoes it (afterFailedEnd).
		{name: "end-txn/coordinator-gone", key: kmsg.EndTxn.Int16(), after: 2, times: 25, code: kerr.CoordinatorNotAvailable.Code, abortsBatch: true},
		{name: "end-txn/concurrent-transactions", key: kmsg.EndTxn.Int16(), after: 2, times: 2, code: kerr.ConcurrentTransactions.Code},
		{name: "end-txn/connection-dropped", key: kmsg.EndTxn.Int16(), after: 2, times: 1},
		{name: "txn-offset-commit/coordinator-loading", key: kmsg.TxnOffsetCommit.Int16(), after: 2, times: 2, code: kerr.CoordinatorLoadInProgress.Code},
		{name: "heartbeat/rebalance-in-progress", key: kmsg.Heartbeat.Int16(), after: 1, times: 1, code: kerr.RebalanceInProgress.Code},
		{name: "at-least-once/produce/not-leader", key: kmsg.Produce.Int16(), after: 3, times: 3, code: kerr.NotLeaderForPartition.Code, atLeastOnce: true},
		// More than franz-go's tries: the commit fails, the batch is redone.
		{name: "at-least-once/offset-commit/coordinator-gone", key: kmsg.OffsetCommit.Int16(), after: 2, times: 25, code: kerr.CoordinatorNotAvailable.Code, atLeastOnce: true},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			b, _, e, brokers := startTestStack(t)
			msgs := corpus(400, "f")
			produceCorpus(t, brokers, "mail.raw", msgs)
			out := collect(t, brokers, "mail.verdicts")

			cfg := testConfig(brokers, "t-faults")
			if f.atLeastOnce {
				cfg.TransactionalID, cfg.Delivery = "", AtLeastOnce
			}
			cfg.BatchMaxRecords = 40 // ten transactions or more
			var seen, failed atomic.Int32
			b.c.ControlKey(f.key, func(req kmsg.Request) (kmsg.Response, error, bool) {
				if !fromPipeline(req, cfg.TransactionalID) {
					return nil, nil, false
				}
				if int(seen.Add(1)) <= f.after {
					return nil, nil, false
				}
				if int(failed.Add(1)) < f.times {
					b.c.KeepControl()
				} else {
					b.c.DropControl() // kept once, kfake keeps it for good
				}
				if f.code == 0 {
					return nil, errors.New("test: connection dropped"), true
				}
				return faultResponse(req, f.code), nil, true
			})

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// While a failed batch is aborted (its producer ID
			// re-initialised), the pipeline is not ready.
			var pl atomic.Pointer[Pipeline]
			var readyAtAbort, notReadyAtAbort atomic.Int32
			b.c.ControlKey(kmsg.InitProducerID.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
				if p := pl.Load(); p != nil && failed.Load() > 0 {
					if p.Ready() {
						readyAtAbort.Add(1)
					} else {
						notReadyAtAbort.Add(1)
					}
				}
				return nil, nil, false
			})
			log := testLog(t)
			p, done := runPipeline(t, ctx, cfg, e, WithLogger(log), WithKafkaOpts(kgo.WithLogger(kslog.New(log))))
			pl.Store(p)
			deadline := time.Now().Add(30 * time.Second)
			for out.count() < len(msgs) {
				select {
				case err := <-done:
					t.Fatalf("pipeline returned mid-stream (%d of %d verdicts out): %v", out.count(), len(msgs), err)
				case <-time.After(20 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("timed out with %d of %d verdicts", out.count(), len(msgs))
				}
			}
			recs := out.waitCount(t, len(msgs), time.Second) // and any extra
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if int(failed.Load()) != f.times {
				t.Fatalf("%d requests failed, want %d (the fault never came)", failed.Load(), f.times)
			}
			if f.abortsBatch && (notReadyAtAbort.Load() == 0 || readyAtAbort.Load() > 0) {
				t.Errorf("the abort's producer ID requests came with the pipeline ready %d times, not ready %d; want only not ready",
					readyAtAbort.Load(), notReadyAtAbort.Load())
			}
			if f.atLeastOnce {
				checkVerdictsAtLeastOnce(t, e, msgs, recs)
				return
			}
			checkVerdicts(t, e, msgs, recs)
		})
	}
}

// fromPipeline reports whether req is the pipeline's, whose transactional
// ID is txnID ("" at least once): a Produce, EndTxn or TxnOffsetCommit of
// its producer, or an OffsetCommit or Heartbeat of its consumer group.
// (The tests' own producer is done before the pipeline starts.)
func fromPipeline(req kmsg.Request, txnID string) bool {
	switch r := req.(type) {
	case *kmsg.ProduceRequest:
		if txnID == "" {
			return r.TransactionID == nil
		}
		return r.TransactionID != nil && *r.TransactionID == txnID
	case *kmsg.EndTxnRequest:
		return r.TransactionalID == txnID
	case *kmsg.TxnOffsetCommitRequest:
		return r.TransactionalID == txnID
	case *kmsg.OffsetCommitRequest:
		return r.Group == "authpipe-verify"
	case *kmsg.HeartbeatRequest:
		return r.Group == "authpipe-verify"
	}
	return false
}

// checkVerdictsAtLeastOnce is checkVerdicts for at-least-once delivery:
// every message has a verdict, equal to the engine's; a redone batch may
// have written some twice.
func checkVerdictsAtLeastOnce(t *testing.T, e *stages.Engine, msgs []testMsg, recs []*kgo.Record) {
	t.Helper()
	first := map[string]*kgo.Record{}
	for _, r := range recs {
		if _, ok := first[string(r.Key)]; !ok {
			first[string(r.Key)] = r
		}
	}
	uniq := make([]*kgo.Record, 0, len(first))
	for _, m := range msgs {
		if r, ok := first[m.key]; ok {
			uniq = append(uniq, r)
		}
	}
	checkVerdicts(t, e, msgs, uniq)
	t.Logf("%d records in all, %d of them repeats of a redone batch", len(recs), len(recs)-len(uniq))
}

// faultResponse answers req with the error code on everything it asks.
func faultResponse(req kmsg.Request, code int16) kmsg.Response {
	switch r := req.(type) {
	case *kmsg.ProduceRequest:
		resp := r.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID // v13+ names topics by ID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp
	case *kmsg.EndTxnRequest:
		resp := r.ResponseKind().(*kmsg.EndTxnResponse)
		resp.ErrorCode = code
		return resp
	case *kmsg.HeartbeatRequest:
		resp := r.ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = code
		return resp
	case *kmsg.OffsetCommitRequest:
		resp := r.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp
	case *kmsg.TxnOffsetCommitRequest:
		resp := r.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewTxnOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp
	}
	panic("faultResponse: unexpected request")
}

// TestResyncOffsets: a transactional session whose own view of its
// group's committed offsets is behind the broker's (as after an end whose
// commit took effect with the client never learning it, which kfake
// cannot stage) is moved to the broker's offsets by resyncOffsets, and so
// does not consume the committed records again.
func TestResyncOffsets(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	msgs := corpus(100, "r")
	produceCorpus(t, brokers, "mail.raw", msgs)
	const group = "resync"
	s, err := kgo.NewGroupTransactSession(append(testKafkaOpts(), kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group),
		kgo.ConsumeTopics("mail.raw"), kgo.TransactionalID("t-resync"), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < len(msgs); {
		fs := s.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d: %v", n, len(msgs), err)
		}
		if err := s.Begin(); err != nil {
			t.Fatal(err)
		}
		n += len(fs.Records())
		if committed, err := s.End(ctx, kgo.TryCommit); err != nil || !committed {
			t.Fatalf("end: committed %v, %v", committed, err)
		}
	}
	onBroker := offsetsOf(s.Client().CommittedOffsets())

	// The session forgets its last commits: back to the start.
	back := map[string]map[int32]kgo.EpochOffset{}
	for topic, parts := range s.Client().CommittedOffsets() {
		back[topic] = map[int32]kgo.EpochOffset{}
		for p := range parts {
			back[topic][p] = kgo.EpochOffset{Epoch: -1, Offset: 0}
		}
	}
	s.Client().SetOffsets(back)
	if got := offsetsOf(s.Client().CommittedOffsets()); got == onBroker {
		t.Fatalf("SetOffsets did not move the session back: %s", got)
	}

	if err := resyncOffsets(ctx, s.Client(), group); err != nil {
		t.Fatal(err)
	}
	if got := offsetsOf(s.Client().CommittedOffsets()); got != onBroker {
		t.Fatalf("after resync the session holds %s, the broker %s", got, onBroker)
	}
	pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer pcancel()
	if n := len(s.PollFetches(pctx).Records()); n != 0 {
		t.Fatalf("%d committed records consumed again", n)
	}
}

// offsetsOf renders committed offsets (without epochs) for comparison.
func offsetsOf(m map[string]map[int32]kgo.EpochOffset) string {
	var parts []string
	for topic, ps := range m {
		for p, o := range ps {
			parts = append(parts, fmt.Sprintf("%s/%d@%d", topic, p, o.Offset))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// TestReporterBrokerFaults runs the reporter (RunReporter: merge, state
// topic, build and delivery) while the embedded broker fails its offset
// commits past franz-go's retries, or its produce requests (the state
// topic's delivery records) with NOT_LEADER: it must deliver day 1 once
// with the exact counts, hold day 2's exact counts, and keep running.
func TestReporterBrokerFaults(t *testing.T) {
	faults := []brokerFault{
		{name: "offset-commit/coordinator-gone", key: kmsg.OffsetCommit.Int16(), times: 25, code: kerr.CoordinatorNotAvailable.Code},
		{name: "produce/not-leader", key: kmsg.Produce.Int16(), times: 3, code: kerr.NotLeaderForPartition.Code},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			b := startTestBroker(t)
			brokers := b.Addrs()
			domains := []string{"a.example", "b.example"}
			res := reportDNS(t, domains...)
			sink := startSMTPSink(t)
			day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
			day2 := day1.Add(24 * time.Hour)
			clock := &testClock{t: day2.Add(10 * time.Hour)} // day 1 due, day 2 open
			want := map[reportgen.Window]uint64{}
			var parts []reportgen.PartialAggregate
			for _, d := range domains {
				for i := range 20 {
					for _, day := range []time.Time{day1, day2} {
						p := partialFor(d, day, 3, i*7)
						parts = append(parts, p)
						want[p.Window] += p.Messages
					}
				}
			}
			cfg := reporterTestConfig(brokers, clock.Now)
			createAggregateTopic(t, brokers)
			producePartials(t, brokers, "faults-producer", parts, 8)

			var seen, failed atomic.Int32
			b.c.ControlKey(f.key, func(req kmsg.Request) (kmsg.Response, error, bool) {
				switch r := req.(type) {
				case *kmsg.OffsetCommitRequest:
					if r.Group != "authpipe-report" {
						return nil, nil, false
					}
				case *kmsg.ProduceRequest:
					if r.TransactionID != nil { // the test's own producer
						return nil, nil, false
					}
				}
				if int(seen.Add(1)) <= f.after {
					return nil, nil, false
				}
				if int(failed.Add(1)) < f.times {
					b.c.KeepControl()
				} else {
					b.c.DropControl()
				}
				return faultResponse(req, f.code), nil, true
			})

			st, err := reportgen.OpenStore(t.TempDir(), clock.Now)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			stop := runTestReporter(t, cfg, st, newTestReporter(st, res, sink.port, clock.Now))
			waitUntil(t, 30*time.Second, "day 1 delivered", func() bool { return len(sink.snapshot()) == 2 })
			wantDay2 := map[reportgen.Window]uint64{}
			for w, n := range want {
				if w.Day == reportgen.DayOf(day2) {
					wantDay2[w] = n
				}
			}
			waitUntil(t, 30*time.Second, "day 2's exact counts", func() bool {
				return fmt.Sprint(windowCounts(t, st, reportgen.KindDMARC)) == fmt.Sprint(wantDay2)
			})
			for _, m := range sink.snapshot() {
				_, n := reportOf(t, m)
				if w := (reportgen.Window{Domain: strings.TrimPrefix(m.to, "agg@"), Day: reportgen.DayOf(day1)}); n != want[w] {
					t.Fatalf("day-1 report for %s counts %d, want %d", w, n, want[w])
				}
			}
			time.Sleep(500 * time.Millisecond) // a few more ticks: nothing sent twice
			if n := len(sink.snapshot()); n != 2 {
				t.Fatalf("%d mails, want 2", n)
			}
			if failed.Load() == 0 {
				t.Fatal("no request failed: the fault never came")
			}
			t.Logf("%d requests failed", failed.Load())
			if err := stop(); err != nil {
				t.Fatalf("reporter: %v", err)
			}
		})
	}
}
