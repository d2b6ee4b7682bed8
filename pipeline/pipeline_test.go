package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestExactlyOnceNInNOut(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	msgs := corpus(1000, "q")
	produceCorpus(t, brokers, "mail.raw", msgs)
	out := collect(t, brokers, "mail.verdicts")

	ctx, cancel := context.WithCancel(context.Background())
	_, done := runPipeline(t, ctx, testConfig(brokers, "t-eos"), e)
	recs := out.waitCount(t, len(msgs), 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkVerdicts(t, e, msgs, recs)
}

func TestAtLeastOnceNInNOut(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	msgs := corpus(500, "a")
	produceCorpus(t, brokers, "mail.raw", msgs)
	out := collect(t, brokers, "mail.verdicts")
	cfg := testConfig(brokers, "")
	cfg.Delivery = AtLeastOnce
	ctx, cancel := context.WithCancel(context.Background())
	_, done := runPipeline(t, ctx, cfg, e)
	recs := out.waitCount(t, len(msgs), 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkVerdicts(t, e, msgs, recs)
}

// TestCrashRestart SIGKILLs a pipeline process mid-stream and starts it
// again: a read_committed consumer still sees exactly one verdict per
// message.
func TestCrashRestart(t *testing.T) {
	crashRestart(t, "crash", 3000, 500, nil)
}

// crashRestart produces n corpus messages, starts a pipeline process
// (txnID, extraEnv), SIGKILLs it once minBefore verdicts are committed
// and the condition watch returns holds (watch nil: none), restarts it,
// and checks that every message then has exactly one verdict, equal to
// the engine's.
func crashRestart(t *testing.T, txnID string, n, minBefore int, watch func(brokers []string) func() bool, extraEnv ...string) {
	t.Helper()
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(n, txnID[:1])
	produceCorpus(t, brokers, "mail.raw", msgs)
	out := collect(t, brokers, "mail.verdicts")
	ready := func() bool { return true }
	if watch != nil {
		ready = watch(brokers)
	}

	child := startChild(t, brokers, dns.Addr, txnID, extraEnv...)
	deadline := time.Now().Add(30 * time.Second)
	for out.count() < minBefore || !ready() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d verdicts before the crash", out.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	before := out.count()
	t.Logf("killed after %d committed verdicts", before)
	if before >= len(msgs) {
		t.Fatalf("the stream finished before the kill (%d verdicts); slow it down", before)
	}

	child = startChild(t, brokers, dns.Addr, txnID, extraEnv...)
	recs := out.waitCount(t, len(msgs), 90*time.Second)
	checkVerdicts(t, e, msgs, recs)
	stopChild(t, child)
}

func stopChild(t *testing.T, child *exec.Cmd) {
	t.Helper()
	if err := child.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- child.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("pipeline process after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("pipeline process did not exit within 20s of SIGTERM")
	}
}

// TestSIGTERMDrainsAndCommits stops a pipeline process with SIGTERM
// mid-stream: it exits 0, and the input offsets it committed match the
// verdicts it published. A second process finishes the stream exactly.
func TestSIGTERMDrainsAndCommits(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(2000, "s")
	produceCorpus(t, brokers, "mail.raw", msgs)
	out := collect(t, brokers, "mail.verdicts")

	child := startChild(t, brokers, dns.Addr, "term", "AUTHPIPE_TEST_DELAY=10ms")
	deadline := time.Now().Add(30 * time.Second)
	for out.count() < 200 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d verdicts before SIGTERM", out.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopChild(t, child)
	time.Sleep(300 * time.Millisecond)
	verdicts := out.count()
	committed := committedTotal(t, brokers, "authpipe-verify", "mail.raw")
	t.Logf("SIGTERM: %d verdicts published, %d input offsets committed", verdicts, committed)
	if int64(verdicts) != committed {
		t.Fatalf("after SIGTERM %d verdicts but %d offsets committed", verdicts, committed)
	}
	if verdicts >= len(msgs) {
		t.Fatalf("the stream finished before SIGTERM; slow it down")
	}
	child = startChild(t, brokers, dns.Addr, "term", "AUTHPIPE_TEST_DELAY=0s")
	recs := out.waitCount(t, len(msgs), 60*time.Second)
	checkVerdicts(t, e, msgs, recs)
	stopChild(t, child)
}

func committedTotal(t *testing.T, brokers []string, group, topic string) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At > 0 {
			sum += o.At
		}
	})
	return sum
}

// TestTwoInstancesOneLeaves runs two instances in one group; one leaves
// mid-stream. Both did work and the totals are exact.
func TestTwoInstancesOneLeaves(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	msgs := corpus(2000, "g")
	out := collect(t, brokers, "mail.verdicts")

	va := &slowVerifier{Verifier: e, delay: 5 * time.Millisecond}
	vb := &slowVerifier{Verifier: e, delay: 5 * time.Millisecond}
	cfgA, cfgB := testConfig(brokers, "inst-a"), testConfig(brokers, "inst-b")
	cfgA.MaxInFlight, cfgB.MaxInFlight = 4, 4
	ctxA, cancelA := context.WithCancel(context.Background())
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelA()
	_, doneA := runPipeline(t, ctxA, cfgA, va)
	_, doneB := runPipeline(t, ctxB, cfgB, vb)
	time.Sleep(500 * time.Millisecond) // let both join
	produceCorpus(t, brokers, "mail.raw", msgs)
	deadline := time.Now().Add(30 * time.Second)
	for out.count() < 500 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d verdicts", out.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancelB()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	t.Logf("instance b left after %d verdicts", out.count())
	recs := out.waitCount(t, len(msgs), 60*time.Second)
	cancelA()
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	t.Logf("verifications: a %d, b %d (peak concurrency a %d, b %d)", va.calls(), vb.calls(), va.maxConcurrent(), vb.maxConcurrent())
	if va.calls() == 0 || vb.calls() == 0 {
		t.Errorf("an instance did no work: a %d, b %d", va.calls(), vb.calls())
	}
	if va.maxConcurrent() > 4 || vb.maxConcurrent() > 4 {
		t.Errorf("in-flight bound 4 exceeded: a %d, b %d", va.maxConcurrent(), vb.maxConcurrent())
	}
	checkVerdicts(t, e, msgs, recs)
}

// TestTwoInstancesOneKilledReplaced: two pipeline processes share the
// partitions; one is SIGKILLed while its transaction has verdicts in the
// log, and never comes back. A replacement joins under a transactional ID
// of its own, as a rescheduled pod with a new hostname would, so nothing
// fences the dead producer: its transaction ends only when the broker's
// transaction timeout aborts it. A read_committed consumer must still see
// exactly one verdict per message, equal to the engine's.
func TestTwoInstancesOneKilledReplaced(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(3000, "r")
	out := collect(t, brokers, "mail.verdicts")
	logged := collectIsolated(t, brokers, "mail.verdicts", kgo.ReadUncommitted())
	adm := kadm.NewClient(mustClient(t, brokers))

	slow := "AUTHPIPE_TEST_DELAY=10ms"
	startChild(t, brokers, dns.Addr, "replace-a", slow)
	victim := startChild(t, brokers, dns.Addr, "replace-b", slow)
	time.Sleep(time.Second) // let both join
	produceCorpus(t, brokers, "mail.raw", msgs)

	// Kill b once it has verdicts in the log that its open transaction
	// has not committed: more of its producer's records read
	// uncommitted than committed.
	byProducer := func(c *collector, pid int64) (n int) {
		for _, r := range c.snapshot() {
			if r.ProducerID == pid {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("instance b never had uncommitted verdicts in the log (%d verdicts committed)", out.count())
		}
		time.Sleep(2 * time.Millisecond)
		txn, ok := describeTxn(adm, "replace-b")
		if !ok || txn.State != "Ongoing" {
			continue
		}
		if out.count() >= 300 && byProducer(logged, txn.ProducerID) > byProducer(out, txn.ProducerID) {
			break
		}
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	killed := time.Now()
	t.Logf("b killed after %d committed verdicts, %d in the log", out.count(), logged.count())
	if out.count() >= len(msgs) {
		t.Fatalf("the stream finished before the kill (%d verdicts); slow it down", out.count())
	}

	startChild(t, brokers, dns.Addr, "replace-c", slow)
	recs := out.waitCount(t, len(msgs), 90*time.Second)
	t.Logf("all %d verdicts committed %v after the kill; %d records in the log", len(recs), time.Since(killed).Round(time.Millisecond), logged.count())
	checkVerdicts(t, e, msgs, recs)
}

// TestDefaultTransactionalIDs: two pipeline processes of one group on one
// host, neither given a transactional ID, claim distinct ones
// (claimTransactionalID), so that neither fences the other. The second is
// SIGKILLed while its transaction has verdicts in the log and restarted
// without an ID either: it takes the killed process's ID back, and with it
// fences the dead producer and ends its open transaction, instead of
// leaving it to the broker's transaction timeout. A read_committed consumer
// sees exactly one verdict per message, equal to the engine's.
func TestDefaultTransactionalIDs(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(3000, "d")
	out := collect(t, brokers, "mail.verdicts")
	logged := collectIsolated(t, brokers, "mail.verdicts", kgo.ReadUncommitted())
	adm := kadm.NewClient(mustClient(t, brokers))
	host, _ := os.Hostname()
	first, second := "authpipe-verify-"+host, "authpipe-verify-"+host+"-2"

	// claimed waits until the processes started hold n slots.
	lockDir := t.TempDir()
	meta, err := adm.BrokerMetadata(context.Background())
	if err != nil || meta.Cluster == "" {
		t.Fatalf("cluster id %q (%v)", meta.Cluster, err)
	}
	claimed := func(n int) {
		t.Helper()
		want := first
		if n > 0 {
			want += "-" + strconv.Itoa(n+1)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			id, release, err := claimTransactionalID(lockDir, "authpipe-verify", host, meta.Cluster, brokers)
			if err != nil {
				t.Fatal(err)
			}
			release()
			if id == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the next free transactional id is %q, want %q", id, want)
			}
		}
	}
	slow, dir := "AUTHPIPE_TEST_DELAY=10ms", "AUTHPIPE_TEST_LOCKDIR="+lockDir
	startChild(t, brokers, dns.Addr, "", slow, dir)
	claimed(1)
	victim := startChild(t, brokers, dns.Addr, "", slow, dir)
	claimed(2)
	time.Sleep(time.Second) // let both join
	produceCorpus(t, brokers, "mail.raw", msgs)

	// Kill the second once its open transaction has verdicts in the log.
	var before kadm.DescribedTransaction
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never had uncommitted verdicts in the log (%d verdicts committed)", second, out.count())
		}
		d, ok := describeTxn(adm, second)
		if ok && d.State == "Ongoing" && out.count() >= 300 && logged.count() > out.count() {
			before = d
			break
		}
	}
	if err := victim.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	killed := time.Now()
	if out.count() >= len(msgs) {
		t.Fatalf("the stream finished before the kill (%d verdicts); slow it down", out.count())
	}
	claimed(1) // the kill gave up the second slot
	startChild(t, brokers, dns.Addr, "", slow, dir)
	recs := out.waitCount(t, len(msgs), 90*time.Second)
	t.Logf("all %d verdicts committed %v after the kill", len(recs), time.Since(killed).Round(time.Millisecond))
	checkVerdicts(t, e, msgs, recs)

	// The restart produced as the killed process's ID, fencing it: the
	// same producer, a later epoch.
	after, ok := describeTxn(adm, second)
	if !ok || after.ProducerID != before.ProducerID || after.ProducerEpoch <= before.ProducerEpoch {
		t.Errorf("%s after the restart: %+v (ok %v); before the kill %+v: want the same producer, a later epoch", second, after, ok, before)
	}
	if _, ok := describeTxn(adm, first); !ok {
		t.Errorf("no transactions as %s", first)
	}
}

// describeTxn describes the transactional ID id; ok is false if the broker
// does not know it (yet) or did not answer.
func describeTxn(adm *kadm.Client, id string) (kadm.DescribedTransaction, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	d, err := adm.DescribeTransactions(ctx, id)
	if err != nil {
		return kadm.DescribedTransaction{}, false
	}
	txn, ok := d[id]
	return txn, ok && txn.Err == nil
}

// TestChurnKills: one pipeline process stays while another is SIGKILLed
// and started again (same transactional ID, as a restarted pod of a
// StatefulSet) four times mid-stream, so that partitions move back and
// forth while transactions are open. A read_committed consumer must still
// see exactly one verdict per message, equal to the engine's.
//
// Each kill comes a varying time after the restarted process has its
// partitions. A kill inside a join (after the JoinGroup request, before the
// SyncGroup) would leave kfake holding the dead member and its partitions
// for good: kfake starts a member's session timer only once it has sent
// the member its JoinGroup response, which fails on the closed connection,
// and the leader's SyncGroup then ends the timer that would remove members
// that never synced. The stream then stopped short (3,008 and 2,972 of
// 4,000 verdicts after 90 s) where Kafka would expire the member after
// the session timeout.
func TestChurnKills(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(4000, "c")
	out := collect(t, brokers, "mail.verdicts")
	adm := kadm.NewClient(mustClient(t, brokers))

	slow := "AUTHPIPE_TEST_DELAY=5ms"
	stay := startChild(t, brokers, dns.Addr, "churn-a", slow)
	churn := startChild(t, brokers, dns.Addr, "churn-b", slow)
	waitGroupStable(t, adm, "authpipe-verify", stay, churn)
	produceCorpus(t, brokers, "mail.raw", msgs)
	for i, run := range []time.Duration{300 * time.Millisecond, 50 * time.Millisecond, 700 * time.Millisecond, 150 * time.Millisecond} {
		time.Sleep(run)
		if err := churn.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = churn.Wait()
		t.Logf("kill %d, %v after the rebalance: %d verdicts committed", i+1, run, out.count())
		if out.count() >= len(msgs) {
			t.Fatalf("the stream finished before kill %d; slow it down", i+1)
		}
		churn = startChild(t, brokers, dns.Addr, "churn-b", slow)
		waitGroupStable(t, adm, "authpipe-verify", stay, churn)
	}
	recs := out.waitCount(t, len(msgs), 90*time.Second)
	checkVerdicts(t, e, msgs, recs)
}

// waitGroupStable waits until group is stable with the child processes
// procs as its members (by their client IDs, childClientID), each with
// partitions assigned: a member of a process killed before has left.
func waitGroupStable(t *testing.T, adm *kadm.Client, group string, procs ...*exec.Cmd) {
	t.Helper()
	want := map[string]bool{}
	for _, p := range procs {
		want[childClientID(p.Process.Pid)] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		described, err := adm.DescribeGroups(ctx, group)
		cancel()
		if g, ok := described[group]; err == nil && ok && g.Err == nil {
			ok := g.State == "Stable" && len(g.Members) == len(want)
			for _, m := range g.Members {
				a, isConsumer := m.Assigned.AsConsumer()
				ok = ok && want[m.ClientID] && isConsumer && len(a.Topics) > 0
			}
			if ok {
				return
			}
			last = fmt.Sprintf("%s with %d members", g.State, len(g.Members))
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s not stable with members %v within 30s (last: %s, %v)", group, want, last, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoisonToDLQ mixes undecodable records into the stream: each goes to
// the DLQ with its reason, the good ones get verdicts.
func TestPoisonToDLQ(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	good := corpus(100, "p")
	env := good[0].env
	big := append([]byte("Subject: big\r\n\r\n"), make([]byte, 5000)...)
	poison := []*kgo.Record{
		{Key: []byte("x-noenv"), Value: good[0].raw},
		{Key: []byte("x-notmsg"), Value: []byte("this is not a message\r\n"), Headers: EnvelopeHeaders(env, "")},
		{Key: []byte("x-empty"), Value: nil, Headers: EnvelopeHeaders(env, "")},
		{Key: []byte("x-big"), Value: big, Headers: EnvelopeHeaders(env, "")},
		{Key: []byte("x-badip"), Value: good[0].raw, Headers: []kgo.RecordHeader{{Key: HeaderClientIP, Value: []byte("999.1.1.1")}}},
		{Key: []byte("x-badtime"), Value: good[0].raw, Headers: []kgo.RecordHeader{{Key: HeaderReceivedAt, Value: []byte("yesterday")}}},
	}
	wantKind := map[string]string{"x-noenv": "no-envelope", "x-notmsg": "not-a-message", "x-empty": "not-a-message",
		"x-big": "too-large", "x-badip": "bad-envelope", "x-badtime": "bad-envelope"}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("mail.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i, m := range good {
		r := &kgo.Record{Key: []byte(m.key), Value: m.raw, Headers: EnvelopeHeaders(m.env, "")}
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if i%16 == 0 && i/16 < len(poison) {
			if err := cl.ProduceSync(context.Background(), poison[i/16]).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := collect(t, brokers, "mail.verdicts")
	dlq := collect(t, brokers, "mail.raw.dlq")
	cfg := testConfig(brokers, "poison")
	cfg.MaxMessageBytes = 4096
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(t, ctx, cfg, e)
	recs := out.waitCount(t, len(good), 30*time.Second)
	dead := dlq.waitCount(t, len(poison), 10*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkVerdicts(t, e, good, recs)
	if len(dead) != len(poison) {
		t.Fatalf("%d DLQ records, want %d", len(dead), len(poison))
	}
	for _, r := range dead {
		var reason, truncated string
		for _, h := range r.Headers {
			switch h.Key {
			case HeaderError:
				reason = string(h.Value)
			case HeaderTruncated:
				truncated = string(h.Value)
			}
		}
		k := string(r.Key)
		if !strings.HasPrefix(reason, wantKind[k]+":") {
			t.Errorf("DLQ %s: authpipe.error %q, want kind %s", k, reason, wantKind[k])
		}
		if k == "x-big" {
			if truncated != strconv.Itoa(len(big)) || len(r.Value) != 4096 {
				t.Errorf("DLQ x-big: truncated header %q, value %d bytes", truncated, len(r.Value))
			}
		} else {
			for _, p := range poison {
				if string(p.Key) == k && (string(p.Value) != string(r.Value) || len(r.Headers) != len(p.Headers)+1) {
					t.Errorf("DLQ %s is not the original record plus authpipe.error", k)
				}
			}
		}
		t.Logf("DLQ %s: %s", k, reason)
	}
}

// TestDNSOutage stops the DNS server: verdicts report temperror and the
// stream keeps moving; after the server returns, verdicts are normal.
func TestDNSOutage(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	out := collect(t, brokers, "mail.verdicts")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(t, ctx, testConfig(brokers, "outage"), e)

	dns.SetDown(true)
	down := corpus(64, "d")
	produceCorpus(t, brokers, "mail.raw", down)
	recs := out.waitCount(t, len(down), 30*time.Second)
	for _, r := range recs {
		if v := decodeVerdict(t, r); v.SPF == nil || v.SPF.Result != "temperror" {
			t.Fatalf("verdict during the outage: spf %+v, want temperror", v.SPF)
		}
	}
	dns.SetDown(false)
	up := corpus(64, "u")
	produceCorpus(t, brokers, "mail.raw", up)
	recs = out.waitCount(t, len(down)+len(up), 30*time.Second)
	checkVerdicts(t, e, up, recs[len(down):])
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRetryTemperror re-verifies temperror verdicts after a delay: an
// outage shorter than the retries leaves no temperror behind.
func TestRetryTemperror(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	out := collect(t, brokers, "mail.verdicts")
	cfg := testConfig(brokers, "retry")
	cfg.RetryTemperror = 5
	cfg.RetryDelay = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(t, ctx, cfg, e)
	dns.SetDown(true)
	msgs := corpus(32, "r")
	produceCorpus(t, brokers, "mail.raw", msgs)
	time.Sleep(700 * time.Millisecond)
	dns.SetDown(false)
	recs := out.waitCount(t, len(msgs), 30*time.Second)
	checkVerdicts(t, e, msgs, recs)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFencedInstanceStops: a pipeline started with the transactional ID of
// a running one fences it, as Kafka's exactly-once requires; the older one
// stops at its next commit with an error that names the ID and the
// option to set (the broker's PRODUCER_FENCED text alone says neither),
// and the newer one goes on. Different groups get different IDs by
// default (TestConfigDefaults); here both set the same one on purpose.
func TestFencedInstanceStops(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	produceCorpus(t, brokers, "mail.raw", corpus(10, "a"))
	out := collect(t, brokers, "mail.verdicts")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfgA := testConfig(brokers, "shared-id")
	cfgA.Group = "group-a"
	_, doneA := runPipeline(t, ctx, cfgA, e)
	out.waitCount(t, 10, 30*time.Second)

	cfgB := testConfig(brokers, "shared-id")
	cfgB.Group = "group-b"
	_, doneB := runPipeline(t, ctx, cfgB, e)
	out.waitCount(t, 20, 30*time.Second) // B verdicts the first 10 for its own group
	produceCorpus(t, brokers, "mail.raw", corpus(10, "b"))
	select {
	case err := <-doneA:
		if !errors.Is(err, kerr.ProducerFenced) || !strings.Contains(err.Error(), `transactional id "shared-id"`) ||
			!strings.Contains(err.Error(), "--transactional-id") {
			t.Fatalf("fenced instance: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the fenced instance did not stop")
	}
	out.waitCount(t, 30, 30*time.Second) // B's verdicts of the new 10
	cancel()
	if err := <-doneB; err != nil {
		t.Fatalf("the newer instance: %v", err)
	}
}

// TestMissingOutputTopicLosesNothing: a verdict that cannot be written
// keeps its input uncommitted, in both delivery modes. The verdict topic
// is missing while the pipeline runs; franz-go fails a record for a topic
// it has never seen only after some metadata retries, during the flush
// at the batch's end, and before the fix the batch had already decided
// to commit: the input offsets were committed and the verdicts lost. Now
// every batch aborts until the topic exists, and then each message gets
// exactly one verdict. The pipeline runs as the retry stage does, whose
// topics are not checked at start (the first stage's are:
// TestMissingTopicsRefusedAtStart), so the missing topic is met in a batch.
func TestMissingOutputTopicLosesNothing(t *testing.T) {
	for _, delivery := range []Delivery{ExactlyOnce, AtLeastOnce} {
		t.Run(string(delivery), func(t *testing.T) {
			b := startTestBroker(t)
			dns := startTestDNS(t)
			e := testEngine(t, dns.Addr)
			brokers := b.Addrs()
			ensureTestTopics(t, brokers, 4, "mail.raw", "mail.raw.dlq", "authpipe.aggregates")
			msgs := corpus(20, "m")
			produceCorpus(t, brokers, "mail.raw", msgs)
			cfg := testConfig(brokers, "t-missing")
			cfg.Delivery = delivery
			cfg.SkipCreateTopics, cfg.retryStage = true, true
			reg := prometheus.NewRegistry()
			met, err := NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, done := runPipeline(t, ctx, cfg, e, WithMetrics(met))

			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			adm := kadm.NewClient(cl)
			waitUntil(t, 20*time.Second, "a batch's end", func() bool {
				return counterValue(t, reg, "authpipe_pipeline_batches_total", "outcome", "aborted")+counterValue(t, reg, "authpipe_pipeline_batches_total", "outcome", "committed") > 0
			})
			offs, err := adm.FetchOffsets(context.Background(), cfg.Group)
			if err != nil && !errors.Is(err, kerr.GroupIDNotFound) { // not found: nothing committed
				t.Fatal(err)
			}
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Err == nil && o.At > 0 {
					t.Errorf("offset %d of %s/%d committed without its verdicts", o.At, o.Topic, o.Partition)
				}
			})
			if n := counterValue(t, reg, "authpipe_pipeline_batches_total", "outcome", "committed"); n != 0 {
				t.Fatalf("%v batches committed without their verdicts", n)
			}

			ensureTestTopics(t, brokers, 4, "mail.verdicts")
			out := collect(t, brokers, "mail.verdicts")
			recs := out.waitCount(t, len(msgs), 30*time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if delivery == ExactlyOnce {
				checkVerdicts(t, e, msgs, recs)
			} else {
				checkVerdictsAtLeastOnce(t, e, msgs, out.snapshot())
			}
		})
	}
}

// TestMissingTopicsRefusedAtStart: with topic creation off, a pipeline
// whose topics do not all exist stops at start and names them, rather
// than redo every batch for ever (an output) or idle without a word (the
// input).
func TestMissingTopicsRefusedAtStart(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	ensureTestTopics(t, brokers, 4, "mail.raw", "mail.raw.dlq")
	cfg := testConfig(brokers, "t-refused")
	cfg.SkipCreateTopics = true
	p, err := New(cfg, nil, WithKafkaOpts(testKafkaOpts()...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = p.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "topics mail.verdicts, authpipe.aggregates do not exist and topic creation is off") {
		t.Fatalf("Run = %v, want an error naming mail.verdicts and authpipe.aggregates", err)
	}
}
