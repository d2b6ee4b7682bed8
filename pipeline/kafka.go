package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// stream is the Kafka side of a batch: the source of records and the sink
// of results, tied together because a batch's outputs and its input offsets
// commit as one unit. txnStream does it with a transaction (exactly once),
// aloStream with produce-then-commit (at least once).
type stream interface {
	poll(ctx context.Context, max int) kgo.Fetches
	begin() error
	produce(ctx context.Context, r *kgo.Record, promise func(*kgo.Record, error))
	// flush waits until every record produced so far has been written or
	// has failed, its promise called: a batch decides whether to commit
	// only after it (a record can fail late, such as one for a topic that
	// does not exist, failed after some metadata retries). An error means
	// ctx ended first.
	flush(ctx context.Context) error
	// end finishes the batch: commit=true commits outputs and input offsets
	// (reporting whether it did), false discards the batch so its records
	// are consumed again.
	end(ctx context.Context, commit bool) (committed bool, err error)
	// resync sets the consumer's position to the offsets the group has
	// committed on the broker, for the partitions it consumes; after an
	// end that failed, the client's own view may be behind them.
	resync(ctx context.Context, group string) error
	// idle is called after a poll that returned nothing.
	idle()
	client() *kgo.Client
	close()
}

type txnStream struct{ s *kgo.GroupTransactSession }

func (t *txnStream) poll(ctx context.Context, max int) kgo.Fetches {
	return t.s.PollRecords(ctx, max)
}
func (t *txnStream) begin() error { return t.s.Begin() }
func (t *txnStream) produce(ctx context.Context, r *kgo.Record, p func(*kgo.Record, error)) {
	t.s.Produce(ctx, r, p)
}
func (t *txnStream) flush(ctx context.Context) error { return t.s.Client().Flush(ctx) }
func (t *txnStream) end(ctx context.Context, commit bool) (bool, error) {
	return t.s.End(ctx, kgo.TransactionEndTry(commit))
}
func (t *txnStream) resync(ctx context.Context, group string) error {
	return resyncOffsets(ctx, t.s.Client(), group)
}
func (t *txnStream) idle()               {}
func (t *txnStream) client() *kgo.Client { return t.s.Client() }
func (t *txnStream) close()              { t.s.Close() }

type aloStream struct{ cl *kgo.Client }

func (a *aloStream) poll(ctx context.Context, max int) kgo.Fetches {
	return a.cl.PollRecords(ctx, max)
}
func (a *aloStream) begin() error { return nil }
func (a *aloStream) produce(ctx context.Context, r *kgo.Record, p func(*kgo.Record, error)) {
	a.cl.Produce(ctx, r, p)
}

func (a *aloStream) flush(ctx context.Context) error { return a.cl.Flush(ctx) }

func (a *aloStream) end(ctx context.Context, commit bool) (bool, error) {
	defer a.cl.AllowRebalance()
	if !commit {
		// Rewind to the committed offsets so the batch is redone, even
		// if what it produced cannot be flushed now (at least once: its
		// outputs may yet go out, and again with the redone batch).
		a.cl.SetOffsets(a.cl.CommittedOffsets())
	}
	if err := a.cl.Flush(ctx); err != nil {
		return false, fmt.Errorf("flush: %w", err)
	}
	if !commit {
		return false, nil
	}
	if err := a.cl.CommitUncommittedOffsets(ctx); err != nil {
		return false, fmt.Errorf("commit offsets: %w", err)
	}
	return true, nil
}
func (a *aloStream) resync(context.Context, string) error { return nil } // redoing more is allowed
func (a *aloStream) idle()                                { a.cl.AllowRebalance() }
func (a *aloStream) client() *kgo.Client                  { return a.cl }
func (a *aloStream) close()                               { a.cl.Close() }

// resyncOffsets moves cl's consumed partitions to the offsets the group
// has committed on the broker. When a transaction's end fails, franz-go
// rewinds the consumer to the offsets it last saw committed; but a commit
// can take effect on the broker with the client never learning it (the
// reply lost, then every retry failing while the coordinator moves), and
// redoing that batch would write its verdicts twice. Once the failed
// transaction is settled (its abort re-initialised the producer ID, which
// the broker grants only when no transaction of the ID is pending), the
// group's committed offsets say which it was; RequireStable makes the
// fetch wait for any offset commit still pending.
func resyncOffsets(ctx context.Context, cl *kgo.Client, group string) error {
	resps, err := kadm.NewClient(cl).FetchOffsets(kadm.RequireStable(ctx), group)
	if err == nil {
		err = resps.Error()
	}
	if err != nil {
		return fmt.Errorf("fetch committed offsets of group %s: %w", group, err)
	}
	set := map[string]map[int32]kgo.EpochOffset{}
	for topic, parts := range cl.CommittedOffsets() {
		for p, mine := range parts {
			r, ok := resps.Lookup(topic, p)
			if !ok || r.Err != nil || r.At < 0 || r.At == mine.Offset {
				continue
			}
			if set[topic] == nil {
				set[topic] = map[int32]kgo.EpochOffset{}
			}
			set[topic][p] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.At}
		}
	}
	if len(set) > 0 {
		cl.SetOffsets(set)
	}
	return nil
}

// MetadataMinAge is how far apart authpipe's Kafka clients refresh their
// metadata at most. A request answered NOT_LEADER (a leader moving) is
// retried after a refresh, and with franz-go's default spacing of 5 s
// three of them in a row outlasted a batch's end (TestBrokerFaults);
// Kafka's own clients refresh after 100 ms.
const MetadataMinAge = time.Second

// kafkaOpts returns the client options shared by the source and the sink.
func (p *Pipeline) kafkaOpts() []kgo.Opt {
	c := p.cfg
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.MetadataMinAge(MetadataMinAge),
		kgo.ConsumerGroup(c.Group),
		kgo.ConsumeTopics(c.InputTopic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.SessionTimeout(c.SessionTimeout),
		kgo.RebalanceTimeout(c.RebalanceTimeout),
		kgo.FetchMaxWait(c.FetchMaxWait),
		kgo.DisableAutoCommit(),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		// Bounded buffering (see MemoryBound): at most one fetch per
		// broker waits in the client, each at most fetchMaxBytes (plus one
		// oversized batch), at most that per partition too.
		kgo.FetchMaxBytes(fetchMaxBytes),
		kgo.FetchMaxPartitionBytes(fetchMaxBytes),
		kgo.BrokerMaxReadBytes(int32(min(fetchMaxBytes+2*int64(c.MaxMessageBytes)+(1<<20), 1<<30))),
		kgo.ProducerBatchMaxBytes(int32(min(int64(c.MaxMessageBytes)+(1<<20), 1<<30))),
		kgo.MaxBufferedBytes(int(producerBufferBytes(c))),
		kgo.WithPools(p.decompress),
	}
	if p.cfg.Delivery == ExactlyOnce {
		opts = append(opts,
			kgo.TransactionalID(p.txnID),
			kgo.TransactionTimeout(c.TransactionTimeout),
		)
	} else {
		opts = append(opts, kgo.BlockRebalanceOnPoll())
	}
	return append(opts, p.kopts...)
}

func (p *Pipeline) openStream() (stream, error) {
	if p.cfg.Delivery == ExactlyOnce {
		s, err := kgo.NewGroupTransactSession(p.kafkaOpts()...)
		if err != nil {
			return nil, fmt.Errorf("pipeline: kafka transactional session: %w", err)
		}
		return &txnStream{s}, nil
	}
	cl, err := kgo.NewClient(p.kafkaOpts()...)
	if err != nil {
		return nil, fmt.Errorf("pipeline: kafka client: %w", err)
	}
	return &aloStream{cl}, nil
}

// EnsureTopics creates whichever of topics do not exist, with partitions
// partitions, replication factor rf (-1 = broker default) and topic configs
// cfg. Existing topics are left alone.
func EnsureTopics(ctx context.Context, cl *kgo.Client, partitions int32, rf int16, cfg map[string]*string, topics ...string) error {
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopics(ctx, partitions, rf, cfg, topics...)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

// adminClient is a plain client (no group, no transactions) for topic
// administration.
func (p *Pipeline) adminClient() (*kgo.Client, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...)}, p.kopts...)...)
	if err != nil {
		return nil, fmt.Errorf("pipeline: kafka admin client: %w", err)
	}
	return cl, nil
}

// clusterID returns the ID the brokers give their cluster in a metadata
// response, or "" if they give none or do not answer within 10 s (the
// caller falls back on the broker addresses).
func (p *Pipeline) clusterID(ctx context.Context) string {
	cl, err := p.adminClient()
	if err != nil {
		return ""
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		p.log.Debug("no cluster id: the transactional id slot is keyed by the brokers' addresses", "err", err)
		return ""
	}
	return m.Cluster
}

// topics are those the pipeline reads and writes.
func (p *Pipeline) topics() []string {
	topics := []string{p.cfg.InputTopic, p.cfg.VerdictTopic, p.cfg.DLQTopic, p.cfg.AggregateTopic}
	if p.cfg.RetryTopic != "" {
		topics = append(topics, p.cfg.RetryTopic)
	}
	return topics
}

func (p *Pipeline) ensureTopics(ctx context.Context) error {
	cl, err := p.adminClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	maxBytes := strconv.Itoa(p.cfg.MaxMessageBytes + 1<<20)
	cfg := map[string]*string{"max.message.bytes": &maxBytes}
	if err := EnsureTopics(ctx, cl, p.cfg.Partitions, p.cfg.ReplicationFactor, cfg, p.topics()...); err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	return nil
}

// missingTopics returns those of topics that do not exist, in order.
func missingTopics(ctx context.Context, adm *kadm.Client, topics ...string) ([]string, error) {
	tds, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("look up topics: %w", err)
	}
	var missing []string
	for _, t := range topics {
		if td, ok := tds[t]; !ok || td.Err != nil {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

// checkTopics returns an error naming the pipeline's topics that do not
// exist, if any (with topic creation off).
func (p *Pipeline) checkTopics(ctx context.Context) error {
	cl, err := p.adminClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	missing, err := missingTopics(ctx, kadm.NewClient(cl), p.topics()...)
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	switch {
	case len(missing) == 0:
		return nil
	case len(missing) == 1 && missing[0] == p.cfg.RetryTopic:
		return fmt.Errorf("pipeline: retry topic %s does not exist and topic creation is off: create it, or turn deferral off (StragglerWait 0; run --straggler-wait 0)", missing[0])
	}
	return fmt.Errorf("pipeline: topics %s do not exist and topic creation is off (run --create-topics=false): "+
		"create them, or let run create them", strings.Join(missing, ", "))
}
