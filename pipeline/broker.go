package pipeline

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the listen address (default 127.0.0.1:9092). Port 0 picks a
	// free port.
	Addr string
	// DataDir persists topics, records and committed offsets across
	// restarts; "" keeps everything in memory.
	DataDir string
	// MaxMessageBytes is the broker's message.max.bytes (default 65 MiB,
	// above the pipeline's 64 MiB message cap; kfake's own default is 1 MiB).
	MaxMessageBytes int
	// MinSessionTimeout lowers the smallest group session timeout the
	// broker accepts (default 6s as in Kafka); tests use less.
	MinSessionTimeout time.Duration
	// Retention is how long records are kept (Kafka's log.retention.ms;
	// default 7 days, as in Kafka). RetentionBytes, when positive, also
	// caps each partition's bytes (log.retention.bytes; default no cap).
	// Both are enforced every RetentionCheck (default 5 minutes, Kafka's
	// log.retention.check.interval.ms). Without a DataDir the topics live
	// in this process's memory, about 0.8 KiB per verified message (input,
	// verdict, aggregates, compressed), so these bound its growth (plus up
	// to two segments a partition: see SegmentBytes); with one they bound
	// the disk.
	Retention      time.Duration
	RetentionBytes int64
	RetentionCheck time.Duration
	// SegmentBytes is the size at which a partition's log rolls to a new
	// segment (Kafka's log.segment.bytes; default DefaultSegmentBytes).
	// Retention advances a partition's start batch by batch but frees
	// storage a whole segment at a time, so a partition holds up to one
	// segment more than RetentionBytes, and without a DataDir the segment
	// being filled may have as much again allocated ahead.
	SegmentBytes int64
}

// DefaultSegmentBytes is the embedded broker's segment size. kfake's own
// default is 100 MiB; without a DataDir its segments are in-memory buffers
// grown by doubling, so each partition then carried up to 28 MiB of slack
// and the broker spent its time copying and zeroing buffers of up to
// 128 MiB (docs/configuration.md has the measurement).
const DefaultSegmentBytes = 16 << 20

// Broker is an embedded single-node Kafka-compatible broker (franz-go's
// kfake): real Kafka protocol on TCP, consumer groups, transactions,
// persistence. It has no replication; use it for one-host deployments,
// demos and tests, and a real cluster (--brokers) otherwise.
type Broker struct {
	c        *kfake.Cluster
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	running  *os.File // the locked runningFile; nil without a data directory
	recovery BrokerRecovery
}

// runningFile marks a data directory in use: StartBroker creates and locks
// it and Close removes it, so finding it unlocked at the start means that
// the last broker on the directory did not close it (killed, crashed, or
// the machine lost power) and StartBroker recovers it (abortCrashedTxns);
// finding it locked means that another process's broker has the
// directory, and StartBroker refuses to start.
const runningFile = "authpipe-broker.running"

// errLocked is lockFile's error for a file locked already.
var errLocked = errors.New("locked by another open file")

// errDataDirInUse is lockDataDir's error for a data directory in use.
var errDataDirInUse = errors.New("in use by another process (a running 'authpipe run'?); one broker at a time can use a data directory")

// lockDataDir creates (if need be) and locks dir's runningFile, writing
// this process's ID into it; unclean is set if the file was there
// already.
func lockDataDir(dir string) (f *os.File, unclean bool, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	path := filepath.Join(dir, runningFile)
	switch _, err := os.Stat(path); {
	case err == nil:
		unclean = true
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	if err := lockFile(f); err != nil {
		_ = f.Close()
		if errors.Is(err, errLocked) {
			err = errDataDirInUse
		}
		return nil, false, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err = f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		_ = f.Close()
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	return f, unclean, nil
}

// unlockDataDir releases the lock of lockDataDir (nil: no data directory),
// removing the file first if clean: the broker has closed the directory.
func unlockDataDir(f *os.File, clean bool) {
	if f == nil {
		return
	}
	if clean {
		_ = os.Remove(f.Name())
	}
	_ = f.Close()
}

// BrokerRecovery is what StartBroker did to a data directory whose last
// broker did not close it.
type BrokerRecovery struct {
	// Unclean is set when the last broker on the data directory did not
	// close it.
	Unclean bool
	// Producers is how many transactional producers the broker knew, and
	// Markers how many abort markers it wrote for them.
	Producers, Markers int
}

// Recovery tells what StartBroker did to the data directory because the
// last broker on it did not close it; the zero value if it did.
func (b *Broker) Recovery() BrokerRecovery { return b.recovery }

// recoveryTimeout bounds abortCrashedTxns' requests to the broker it
// starts for them.
const recoveryTimeout = time.Minute

// abortCrashedTxns completes, for the broker about to start with opts on a
// data directory that the last broker did not close, the aborts that
// kfake's recovery leaves half done.
//
// On loading such a directory kfake counts every transaction that was
// open at the stop as aborted, but writes no abort marker for it. A Kafka
// consumer reading committed records (franz-go's, Java's) drops every
// transactional batch of an aborted transaction's producer ID from the
// transaction's first offset on until it reads that producer's abort
// marker; a producer that comes back with the same transactional ID keeps
// its producer ID, so without the marker everything it commits on that
// partition afterwards is lost to those consumers. Worse, after a second
// unclean stop kfake's replay of the same logs pairs the cut-short
// transaction's records with the producer's next commit marker and serves
// them as committed (TestBrokerCrashRecovery; cmd/authpipe's
// TestRunSIGKILL end to end).
//
// kfake keeps which transactions it aborted this way to itself, so this
// writes an abort marker for every transactional producer it knows to
// every partition, at its current epoch: where the producer had a
// transaction cut short the marker ends it, and elsewhere consumers pass
// over a marker that closes nothing (Kafka's coordinator writes such
// markers too, for partitions a transaction added but never wrote to). It
// does so on a broker of its own, on a free loopback port no client knows,
// which it then closes cleanly, so that no producer writes before the
// markers are in place.
func abortCrashedTxns(opts []kfake.Opt) (BrokerRecovery, error) {
	r := BrokerRecovery{Unclean: true}
	c, err := kfake.NewCluster(append(opts[:len(opts):len(opts)], kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, "127.0.0.1:0")
	}))...)
	if err != nil {
		return r, err
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.MetadataMinAge(MetadataMinAge))
	if err != nil {
		return r, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	listed, err := adm.ListTransactions(ctx, nil, nil)
	if err != nil {
		return r, fmt.Errorf("listing transactional producers: %w", err)
	}
	if len(listed) == 0 {
		return r, nil
	}
	described, err := adm.DescribeTransactions(ctx, listed.TransactionalIDs()...)
	if err != nil {
		return r, fmt.Errorf("describing transactional producers: %w", err)
	}
	topics, err := adm.ListTopics(ctx)
	if err != nil {
		return r, fmt.Errorf("listing topics: %w", err)
	}
	if err := topics.Error(); err != nil {
		return r, fmt.Errorf("listing topics: %w", err)
	}
	all := kadm.TopicsSet{}
	for _, td := range topics {
		all.Add(td.Topic, td.Partitions.Numbers()...)
	}
	var markers []kadm.TxnMarkers
	for _, d := range described.Sorted() {
		if d.Err != nil {
			return r, fmt.Errorf("describing transactional ID %q: %w", d.TxnID, d.Err)
		}
		markers = append(markers, kadm.TxnMarkers{ProducerID: d.ProducerID, ProducerEpoch: d.ProducerEpoch, Topics: all})
	}
	r.Producers = len(markers)
	resps, err := adm.WriteTxnMarkers(ctx, markers...)
	if err != nil {
		return r, fmt.Errorf("writing abort markers: %w", err)
	}
	for _, m := range resps.Sorted() {
		for _, p := range m.Topics.SortedPartitions() {
			if p.Err != nil {
				return r, fmt.Errorf("writing an abort marker for producer %d to %s/%d: %w", m.ProducerID, p.Topic, p.Partition, p.Err)
			}
			r.Markers++
		}
	}
	return r, nil
}

// StartBroker starts an embedded broker.
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:9092"
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 65 << 20
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: port %q: %w", portStr, err)
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.RetentionBytes <= 0 {
		cfg.RetentionBytes = -1
	}
	if cfg.RetentionCheck <= 0 {
		cfg.RetentionCheck = 5 * time.Minute
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = DefaultSegmentBytes
	}
	mmb := strconv.Itoa(cfg.MaxMessageBytes)
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.BrokerConfigs(map[string]string{
			"message.max.bytes":   mmb,
			"log.retention.ms":    strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
			"log.retention.bytes": strconv.FormatInt(cfg.RetentionBytes, 10),
			"log.segment.bytes":   strconv.FormatInt(cfg.SegmentBytes, 10),
		}),
		// An ID of its own, kept in the data directory (kfake reads it
		// back from there, over this option), so that instances can tell
		// clusters apart by it (claimTransactionalID).
		kfake.ClusterID("authpipe-" + rand.Text()),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.MinSessionTimeout > 0 {
		opts = append(opts, kfake.GroupMinSessionTimeout(cfg.MinSessionTimeout))
	}
	var recovery BrokerRecovery
	var running *os.File
	if cfg.DataDir != "" {
		var unclean bool
		if running, unclean, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		if unclean {
			if recovery, err = abortCrashedTxns(opts); err != nil {
				unlockDataDir(running, false)
				return nil, fmt.Errorf("embedded broker: recovering %s after an unclean stop: %w", cfg.DataDir, err)
			}
		}
	}
	opts = append(opts, kfake.Ports(port), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
	}))
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		unlockDataDir(running, true) // the directory is as clean as it was, or as recovery left it
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b := &Broker{c: c, stop: make(chan struct{}), done: make(chan struct{}), running: running, recovery: recovery}
	// kfake enforces retention on its own only for topics with their own
	// retention configs; the broker-wide values are applied here.
	go func() {
		defer close(b.done)
		t := time.NewTicker(cfg.RetentionCheck)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				c.ApplyRetention()
			case <-b.stop:
				return
			}
		}
	}()
	return b, nil
}

// Addrs returns the broker's listen addresses (host:port).
func (b *Broker) Addrs() []string { return b.c.ListenAddrs() }

// ApplyRetention drops the records that are past the retention limits now,
// rather than at the next RetentionCheck.
func (b *Broker) ApplyRetention() { b.c.ApplyRetention() }

// Close stops the broker, flushing its data directory.
func (b *Broker) Close() {
	b.stopOnce.Do(func() {
		close(b.stop)
		<-b.done
		b.c.Close()
		unlockDataDir(b.running, true)
	})
}
