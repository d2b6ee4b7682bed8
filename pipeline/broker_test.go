package pipeline

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestBrokerCrashRecovery: the embedded broker is killed (SIGKILL, as the
// OOM killer or a power cut would stop it) while a transaction has records
// in its log and neither commit nor abort, then started again on its data
// directory, and the producer comes back with the same transactional ID;
// twice over, so that the producer has two transactions cut short. A
// read_committed consumer must then see every transaction committed
// before and after the kills and nothing of those the kills cut short.
//
// kfake's own recovery counts a cut-short transaction as aborted but
// writes no abort marker for it, and Kafka consumers (franz-go's, Java's)
// skip every later transactional batch of that producer ID until they
// meet one; and kfake's next recovery from the same logs pairs the
// cut-short records with the producer's next commit marker. Without the
// markers StartBroker writes after an unclean stop (abortCrashedTxns),
// this test reads cut-0 as committed and misses after (40 records each).
func TestBrokerCrashRecovery(t *testing.T) {
	const topic, txnID, perTxn, kills = "crash", "crash-test", 40, 2
	dir := t.TempDir()
	var committed []string
	for i := range kills {
		child, addrs := startBrokerProc(t, "AUTHPIPE_BROKER_DATADIR="+dir)
		if i == 0 {
			ensureTestTopics(t, addrs, 2, topic)
		}
		committed = append(committed, transact(t, addrs, topic, txnID, fmt.Sprintf("before-kill-%d", i), perTxn, true)...)
		transact(t, addrs, topic, txnID, fmt.Sprintf("cut-%d", i), perTxn, false)
		if err := child.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = child.cmd.Wait()
	}

	br, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	// Two partitions for the one producer.
	if r := br.Recovery(); r != (BrokerRecovery{Unclean: true, Producers: 1, Markers: 2}) {
		t.Errorf("recovery %+v, want an unclean stop and 2 markers for 1 producer", r)
	}
	committed = append(committed, transact(t, br.Addrs(), topic, txnID, "after", perTxn, true)...)

	got := readAll(t, br.Addrs(), topic, kgo.ReadCommitted(), len(committed))
	sort.Strings(committed)
	if strings.Join(got, " ") != strings.Join(committed, " ") {
		t.Errorf("read_committed after the restart: %d records %v\nwant %d: %v", len(got), got, len(committed), committed)
	}
	all := (2*kills + 1) * perTxn
	if got := readAll(t, br.Addrs(), topic, kgo.ReadUncommitted(), all); len(got) != all {
		t.Errorf("read_uncommitted: %d records, want %d (the cut-short transactions' included)", len(got), all)
	}

	// Closed, the directory opens again without recovery, and the same.
	br.Close()
	br, err = StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	if r := br.Recovery(); r != (BrokerRecovery{}) {
		t.Errorf("recovery after a clean stop: %+v", r)
	}
	if got := readAll(t, br.Addrs(), topic, kgo.ReadCommitted(), len(committed)); len(got) != len(committed) {
		t.Errorf("read_committed after a clean restart: %d records, want %d", len(got), len(committed))
	}
}

// transact produces n records (values prefix-0, prefix-1, …, spread over
// the topic's partitions) in one transaction of txnID, and commits it if
// commit is set; otherwise it leaves the transaction open, its records
// acknowledged by the broker. It returns the values.
func transact(t *testing.T, brokers []string, topic, txnID, prefix string, n int, commit bool) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID(txnID), kgo.DefaultProduceTopic(topic),
		kgo.MetadataMinAge(MetadataMinAge))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	values := make([]string, n)
	recs := make([]*kgo.Record, n)
	for i := range n {
		values[i] = fmt.Sprintf("%s-%d", prefix, i)
		recs[i] = &kgo.Record{Key: []byte(values[i]), Value: []byte(values[i])}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if !commit {
		return values // the client is left as it is: the kill ends it
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	return values
}

// readAll reads topic from the start at the given isolation level until
// want records have come, or 2 s pass without one, and returns their
// values sorted.
func readAll(t *testing.T, brokers []string, topic string, isolation kgo.IsolationLevel, want int) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(isolation))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []string
	for len(got) < want {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	sort.Strings(got)
	return got
}

// TestBrokerDataDirInUse: a second broker on a data directory that a
// running broker has refuses to start, rather than load and overwrite
// the first's files; once the first is closed the directory opens.
func TestBrokerDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	br, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if second, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir}); err == nil {
		second.Close()
		t.Fatal("a second broker started on a data directory in use")
	} else if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("error %q does not say that the directory is in use", err)
	}
	br.Close()
	br, err = StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	defer br.Close()
	if r := br.Recovery(); r.Unclean {
		t.Errorf("recovery after a clean stop and a refused start: %+v", r)
	}
}
