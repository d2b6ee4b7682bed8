package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/authpipe/authpipe/reportgen"
)

// ReporterConfig configures the reporter role (RunReporter). Zero values
// take the defaults named on each field.
type ReporterConfig struct {
	Brokers []string
	// AggregateTopic holds the partial DMARC aggregates written by the
	// verify workers, key = policy domain (default authpipe.aggregates).
	// Its retention must cover the open window plus grace (a day, the
	// grace period and the time a reporter may be down): a new owner of a
	// partition rebuilds the open days by replaying it.
	AggregateTopic string
	// AggregateDLQTopic receives partials that cannot be decoded (default
	// authpipe.aggregates.dlq).
	AggregateDLQTopic string
	// TLSTopic holds JSON TLS results, key = lower-case policy domain
	// (default mail.tls-results). Same retention rule.
	TLSTopic string
	// TLSDLQTopic receives malformed or misrouted TLS results (default
	// mail.tls-results.dlq).
	TLSDLQTopic string
	// StateTopic is the compacted delivery state topic (default
	// authpipe.report-state).
	StateTopic string
	// Group is the consumer group of the reporters (default authpipe-report).
	Group string
	// TickInterval is how often due windows are closed, built and
	// delivered (default 1m).
	TickInterval time.Duration
	// CreateTopics creates the missing topics at start (the state topic
	// with cleanup.policy=compact); existing topics are left alone.
	CreateTopics bool
	// Partitions and ReplicationFactor apply to created topics (defaults
	// 12 and the broker's default).
	Partitions        int32
	ReplicationFactor int16
	// MaxPollRecords bounds the records merged in one store transaction
	// (default 10000).
	MaxPollRecords int
	// StateWait bounds how long a tick waits for the state topic to be
	// applied up to its end; the tick is skipped after it (default 30s).
	StateWait time.Duration
	// Metrics receives the reporter's metrics (default: unregistered).
	Metrics *ReporterMetrics
	// Clock, when set, replaces the store's clock (it judges when windows
	// close).
	Clock func() time.Time
}

func (c *ReporterConfig) defaults() error {
	str := func(p *string, d string) {
		if *p == "" {
			*p = d
		}
	}
	str(&c.AggregateTopic, "authpipe.aggregates")
	str(&c.AggregateDLQTopic, "authpipe.aggregates.dlq")
	str(&c.TLSTopic, "mail.tls-results")
	str(&c.TLSDLQTopic, "mail.tls-results.dlq")
	str(&c.StateTopic, "authpipe.report-state")
	str(&c.Group, "authpipe-report")
	if c.TickInterval <= 0 {
		c.TickInterval = time.Minute
	}
	if c.Partitions <= 0 {
		c.Partitions = 12
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.MaxPollRecords <= 0 {
		c.MaxPollRecords = 10000
	}
	if c.StateWait <= 0 {
		c.StateWait = 30 * time.Second
	}
	if c.Metrics == nil {
		m, err := NewReporterMetrics(nil)
		if err != nil {
			return err
		}
		c.Metrics = m
	}
	if len(c.Brokers) == 0 {
		return errors.New("pipeline: reporter: no brokers")
	}
	topics := []string{c.AggregateTopic, c.AggregateDLQTopic, c.TLSTopic, c.TLSDLQTopic, c.StateTopic}
	for i, t := range topics {
		if slices.Contains(topics[i+1:], t) {
			return fmt.Errorf("pipeline: reporter: topic %s configured twice", t)
		}
	}
	return nil
}

// ReportConsumerConfig configures ConsumeAggregates.
type ReportConsumerConfig struct {
	Brokers []string
	// Topic is the partial aggregate topic (default authpipe.aggregates).
	Topic string
	// Group is the consumer group (default authpipe-report).
	Group string
}

// ConsumeAggregates merges partial aggregates into st (no TLS results, no
// state topic, no closing or building): RunReporter in merge-only mode for
// the aggregate topic alone, with the same replay rule (each partition
// resumes from st's offsets, never the group's). Undecodable partials go
// to authpipe.aggregates.dlq, created on first use when missing. It
// returns nil when ctx ends.
func ConsumeAggregates(ctx context.Context, cfg ReportConsumerConfig, st *reportgen.Store, log *slog.Logger, kopts ...kgo.Opt) error {
	rc := ReporterConfig{Brokers: cfg.Brokers, AggregateTopic: cfg.Topic, Group: cfg.Group}
	return runReporter(ctx, rc, st, nil, log, kopts, false)
}

// RunReporter runs one member of the reporter fleet until ctx ends (then
// it returns nil).
//
// It consumes authpipe.aggregates and mail.tls-results in consumer group
// cfg.Group and merges each polled batch into st together with the
// consumed offsets (one bbolt transaction per topic: Store.Merge,
// Store.MergeTLS), so a crash at any point neither loses nor double-counts.
// The store is this reporter's snapshot, not the only copy: when a
// partition is assigned, consumption resumes from st's offset for it, or
// from the earliest retained offset when st has none — never from the
// group's committed offset, which reflects another owner's store. A new
// owner thus replays the partition and rebuilds its open days; the topics'
// retention must cover the open window plus grace. Group offsets are
// still committed after each merge, for lag monitoring only.
//
// Each domain belongs to the owner of its partition (Kafka's default
// murmur2 partitioner of the lower-case domain). Every TickInterval the
// reporter applies the delivery state topic up to its end, then closes
// due windows and builds them (rep.BuildClosed) — only for domains whose
// partition it owns and has replayed up to the end offset seen at
// assignment — publishes the state transitions, and delivers its outbox
// (rep.Deliver: items are delivered by the store that holds them, owned
// or not). Closing and building run under a lock the partition revocation
// waits for, so a partition is not handed over in the middle of a build.
//
// A window another reporter built stays in st (built-remote, its rows
// kept and still merged) until the state topic says every one of its
// outbox items was sent or failed; then it becomes a done marker. If that
// has not happened rep.TakeoverAfter after the build (the builder's store
// may be lost before it sent them), the window's owner rebuilds it from
// its own rows (same Report-IDs and file names) and delivers the items
// not yet final: nothing is lost with one reporter's disk, and an item
// the builder sent without publishing it yet is sent twice.
//
// Malformed TLS results (and ones on the wrong partition for their domain)
// go to cfg.TLSDLQTopic with an authpipe.error header and the stream
// continues; undecodable partials likewise go to cfg.AggregateDLQTopic. A
// DLQ topic that does not exist is created when first needed.
//
// rep may be nil (merge-only mode: windows are closed, not built). When
// set, rep.Store must be st; while it runs, RunReporter sets rep.Owns and
// wraps rep.OnState (chaining a hook already set), and restores both when
// it returns.
func RunReporter(ctx context.Context, cfg ReporterConfig, st *reportgen.Store, rep *reportgen.Reporter, log *slog.Logger, kopts ...kgo.Opt) error {
	return runReporter(ctx, cfg, st, rep, log, kopts, true)
}

// reporterRun is one RunReporter (full) or ConsumeAggregates (!full).
type reporterRun struct {
	cfg   ReporterConfig
	full  bool
	st    *reportgen.Store
	rep   *reportgen.Reporter
	log   *slog.Logger
	m     *ReporterMetrics
	kopts []kgo.Opt

	admCl *kgo.Client
	adm   *kadm.Client
	cl    *kgo.Client
	state *stateSync
	own   *ownership

	storedMu sync.Mutex
	stored   map[string]map[int32]int64 // the store's offsets: records below are merged already

	stackLogged atomic.Int64 // unix ns of the last panic stack logged (logPanic)
}

func runReporter(ctx context.Context, cfg ReporterConfig, st *reportgen.Store, rep *reportgen.Reporter, log *slog.Logger, kopts []kgo.Opt, full bool) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	if st == nil {
		return errors.New("pipeline: reporter: no store")
	}
	if rep != nil && rep.Store != st {
		return errors.New("pipeline: reporter: rep.Store is not the store given")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock != nil {
		st.Now = cfg.Clock
	}
	r := &reporterRun{cfg: cfg, full: full, st: st, rep: rep, log: log, m: cfg.Metrics, kopts: kopts, stored: map[string]map[int32]int64{}}
	topics := []string{cfg.AggregateTopic}
	if full {
		topics = append(topics, cfg.TLSTopic)
	}
	r.own = newOwnership(cfg.AggregateTopic, cfg.TLSTopic, cfg.Metrics)

	admCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, kopts...)...)
	if err != nil {
		return fmt.Errorf("pipeline: reporter admin client: %w", err)
	}
	defer admCl.Close()
	r.admCl, r.adm = admCl, kadm.NewClient(admCl)
	if cfg.CreateTopics {
		if err := r.createTopics(ctx, admCl); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting: a stop, as Pipeline.Run has it
			}
			return err
		}
	} else if full {
		// A topic to read that does not exist would leave the reporter
		// idle without a word (a mistyped --aggregate-topic), the state
		// topic failing every publish: say so at start. The DLQ topics
		// are created when first needed (deadLetter).
		missing, err := missingTopics(ctx, r.adm, cfg.AggregateTopic, cfg.TLSTopic, cfg.StateTopic)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("pipeline: reporter: %w", err)
		case len(missing) > 0:
			return fmt.Errorf("pipeline: reporter: topics %s do not exist and topic creation is off (run --create-topics=false): "+
				"create them, or let run create them", strings.Join(missing, ", "))
		}
	}
	offs, err := st.Offsets()
	if err != nil {
		return fmt.Errorf("pipeline: reporter: %w", err)
	}
	for _, o := range offs {
		r.setStored(o.Topic, o.Partition, o.Next)
	}

	g, gctx := errgroup.WithContext(ctx)
	if full {
		r.state, err = newStateSync(&r.cfg, st, log, kopts)
		if err != nil {
			return err
		}
		defer r.state.close()
		if err := r.state.republish(gctx); err != nil && ctx.Err() == nil {
			log.Warn("reporter: republish delivery state", "err", err)
		}
		g.Go(func() error { return r.state.run(gctx) })
		if rep != nil {
			prevOwns, prev := rep.Owns, rep.OnState
			defer func() { rep.Owns, rep.OnState = prevOwns, prev }()
			rep.Owns = r.own.owns
			rep.OnState = func(ev reportgen.StateEvent) {
				if prev != nil {
					prev(ev)
				}
				r.state.publish(gctx, ev)
			}
		}
	}

	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.MetadataMinAge(MetadataMinAge),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(topics...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Control records (transaction markers) advance the stored
		// offsets too, so a caught-up partition's stored offset
		// reaches its last stable offset (see ownership).
		kgo.KeepControlRecords(),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.BlockRebalanceOnPoll(),
		kgo.AdjustFetchOffsetsFn(r.adjustOffsets),
		kgo.OnPartitionsRevoked(r.revoked),
		kgo.OnPartitionsLost(r.revoked),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	}
	r.cl, err = kgo.NewClient(append(opts, kopts...)...)
	if err != nil {
		return fmt.Errorf("pipeline: reporter kafka client: %w", err)
	}
	defer r.cl.Close()
	log.Info("reporter started", "topics", topics, "group", cfg.Group, "state_topic", cfg.StateTopic, "full", full, "build", rep != nil)

	g.Go(func() error { return r.consume(gctx) })
	if full {
		g.Go(func() error { return r.tickLoop(gctx) })
	}
	err = g.Wait()
	if r.state != nil {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if ferr := r.state.flush(fctx); ferr != nil {
			log.Warn("reporter: flush state events at stop (republished at the next start)", "err", ferr)
		}
		cancel()
	}
	return err
}

func (r *reporterRun) createTopics(ctx context.Context, cl *kgo.Client) error {
	c := r.cfg
	topics := []string{c.AggregateTopic, c.AggregateDLQTopic}
	if r.full {
		topics = append(topics, c.TLSTopic, c.TLSDLQTopic)
	}
	if err := EnsureTopics(ctx, cl, c.Partitions, c.ReplicationFactor, nil, topics...); err != nil {
		return fmt.Errorf("pipeline: reporter: %w", err)
	}
	if r.full {
		compact := "compact"
		if err := EnsureTopics(ctx, cl, c.Partitions, c.ReplicationFactor, map[string]*string{"cleanup.policy": &compact}, c.StateTopic); err != nil {
			return fmt.Errorf("pipeline: reporter: %w", err)
		}
	}
	return nil
}

func (r *reporterRun) setStored(topic string, p int32, next int64) {
	r.storedMu.Lock()
	defer r.storedMu.Unlock()
	m := r.stored[topic]
	if m == nil {
		m = map[int32]int64{}
		r.stored[topic] = m
	}
	if next > m[p] {
		m[p] = next
	}
}

func (r *reporterRun) storedOffset(topic string, p int32) (int64, bool) {
	r.storedMu.Lock()
	defer r.storedMu.Unlock()
	n, ok := r.stored[topic][p]
	return n, ok
}

// adjustOffsets replaces the group's committed offsets of newly assigned
// partitions by the store's (or the earliest retained offset when the
// store has none), and registers the partitions as owned, with the end
// offset they must be replayed to before their windows may close.
func (r *reporterRun) adjustOffsets(ctx context.Context, offs map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	topics := slices.Collect(maps.Keys(offs))
	var counts map[string]int
	var starts, ends kadm.ListedOffsets
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if counts, starts, ends, err = r.listOffsets(ctx, topics); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		// kgo rejoins the group and calls us again.
		return nil, fmt.Errorf("pipeline: reporter: partition assignment: %w", err)
	}
	stored, err := r.st.Offsets()
	if err != nil {
		return nil, fmt.Errorf("pipeline: reporter: partition assignment: %w", err)
	}
	for _, o := range stored {
		r.setStored(o.Topic, o.Partition, o.Next)
	}
	for topic, parts := range offs {
		assigned := map[int32]partOwn{}
		fromStore, replay := 0, int64(0)
		for p := range parts {
			start := int64(0)
			if o, ok := starts.Lookup(topic, p); ok && o.Err == nil {
				start = o.Offset
			}
			end := int64(-1)
			if o, ok := ends.Lookup(topic, p); ok && o.Err == nil {
				end = o.Offset
			}
			next, ok := r.storedOffset(topic, p)
			if ok {
				parts[p] = kgo.NewOffset().At(next).WithEpoch(-1)
				if next < start {
					r.log.Error("reporter: records between the store's offset and the earliest retained one are gone: "+
						"the retention of the topic is shorter than the reporting window; open days of this partition are incomplete",
						"topic", topic, "partition", p, "stored", next, "log_start", start)
				}
			} else {
				parts[p] = kgo.NewOffset().AtStart()
			}
			if end < 0 {
				end = start // unknown: do not hold the partition back forever
			}
			assigned[p] = partOwn{next: max(next, start), target: end}
			if ok {
				fromStore++
			}
			replay += max(end-max(next, start), 0)
			r.log.Debug("reporter: partition assigned", "topic", topic, "partition", p, "from_store", ok, "resume_at", max(next, start), "replay_to", end)
		}
		// One line per topic at info: a reporter takes every partition of
		// its topics at a start (24 with the defaults), each with a line
		// of its own at debug.
		r.log.Info("reporter: partitions assigned", "topic", topic, "partitions", slices.Sorted(maps.Keys(assigned)),
			"from_store", fromStore, "records_to_replay", replay)
		r.own.assign(topic, counts[topic], assigned)
	}
	return offs, nil
}

func (r *reporterRun) listOffsets(ctx context.Context, topics []string) (map[string]int, kadm.ListedOffsets, kadm.ListedOffsets, error) {
	td, err := r.adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, nil, nil, err
	}
	counts := map[string]int{}
	for _, t := range td.Sorted() {
		if t.Err != nil {
			return nil, nil, nil, fmt.Errorf("topic %s: %w", t.Topic, t.Err)
		}
		counts[t.Topic] = len(t.Partitions)
	}
	starts, err := r.adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, nil, nil, err
	}
	// Read committed: the last stable offset is where a caught-up
	// consumer of the partition stands.
	ends, err := r.adm.ListCommittedOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, nil, nil, err
	}
	return counts, starts, ends, nil
}

// revoked drops partitions from the owned set. It waits for a build in
// progress (ownership.buildMu) so the partition is not handed to the next
// owner while this reporter is still building one of its windows.
func (r *reporterRun) revoked(ctx context.Context, cl *kgo.Client, lost map[string][]int32) {
	r.own.buildMu.Lock()
	for topic, parts := range lost {
		r.own.revoke(topic, parts)
		r.log.Info("reporter: partitions revoked", "topic", topic, "partitions", parts)
	}
	r.own.buildMu.Unlock()
	if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
		r.log.Debug("reporter: commit group offsets on revoke", "err", err)
	}
}

// consume polls and merges until ctx ends.
func (r *reporterRun) consume(ctx context.Context) error {
	for {
		fs := r.cl.PollRecords(ctx, r.cfg.MaxPollRecords)
		if ctx.Err() != nil {
			r.cl.AllowRebalance()
			return nil
		}
		if fs.IsClientClosed() {
			return errors.New("pipeline: reporter: kafka client closed")
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				r.log.Warn("reporter: fetch", "topic", t, "partition", p, "err", err)
			}
		})
		recs := fs.Records()
		if len(recs) == 0 {
			r.cl.AllowRebalance()
			continue
		}
		err := r.process(ctx, recs)
		if err == nil {
			if cerr := r.cl.CommitUncommittedOffsets(ctx); cerr != nil && ctx.Err() == nil {
				r.log.Warn("reporter: commit group offsets (monitoring only: the store's offsets rule)", "err", cerr)
			}
		}
		r.cl.AllowRebalance()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// process merges one poll: the aggregate records in one transaction with
// their offsets, the TLS records (aggregated per window first) in another.
// Bad records are dead-lettered before the offsets that pass them are
// stored, so a crash in between redoes (and may duplicate) the DLQ copy
// but never loses it.
func (r *reporterRun) process(ctx context.Context, recs []*kgo.Record) error {
	aggTopic, tlsTopic := r.cfg.AggregateTopic, r.cfg.TLSTopic
	aggNext, tlsNext := map[int32]int64{}, map[int32]int64{}
	var batch []reportgen.PartialAggregate
	tagg := reportgen.NewTLSAggregator()
	tlsEvents := 0
	var dlq []*kgo.Record
	for _, rec := range recs {
		if stored, ok := r.storedOffset(rec.Topic, rec.Partition); ok && rec.Offset < stored {
			continue // merged before (the group offsets lag the store's)
		}
		switch rec.Topic {
		case aggTopic:
			aggNext[rec.Partition] = rec.Offset + 1
			if rec.Attrs.IsControl() {
				continue
			}
			// Decoding outside data: a panic (a bug this record meets)
			// dead-letters the record like any decoding error.
			var p reportgen.PartialAggregate
			if err := reportgen.Contain(func() error { return p.UnmarshalBinary(rec.Value) }); err != nil {
				r.logPanic(err)
				r.m.deadLettered.WithLabelValues("aggregates").Inc()
				r.log.Error("reporter: bad partial aggregate dead-lettered", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				dlq = append(dlq, deadLetter(rec, r.cfg.AggregateDLQTopic, err))
				continue
			}
			batch = append(batch, p)
		case tlsTopic:
			tlsNext[rec.Partition] = rec.Offset + 1
			if rec.Attrs.IsControl() {
				continue
			}
			// As above; Add counts last, so a panic in it counts nothing.
			err := reportgen.Contain(func() error {
				ev, err := decodeTLSResult(rec, r.own.partitions(tlsTopic), r.own.partition)
				if err != nil {
					return err
				}
				return tagg.Add(&ev)
			})
			if err != nil {
				r.logPanic(err)
				r.m.deadLettered.WithLabelValues("tls-results").Inc()
				r.log.Warn("reporter: TLS result dead-lettered", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				dlq = append(dlq, deadLetter(rec, r.cfg.TLSDLQTopic, err))
				continue
			}
			tlsEvents++
		}
	}
	if len(dlq) > 0 {
		if err := r.deadLetter(ctx, dlq); err != nil {
			return fmt.Errorf("pipeline: reporter: dead-letter: %w", err)
		}
	}
	if len(aggNext) > 0 {
		res, err := r.st.Merge(batch, offsetList(aggTopic, aggNext))
		if err != nil {
			return fmt.Errorf("pipeline: reporter: %w", err)
		}
		if res.Applied {
			r.m.partialsMerged.Add(float64(len(batch) - res.LatePartials))
			r.m.rowsMerged.WithLabelValues("dmarc").Add(float64(res.Rows))
			r.late(reportgen.KindDMARC, res)
		}
		r.advance(aggTopic, aggNext)
	}
	if len(tlsNext) > 0 {
		res, err := r.st.MergeTLS(tagg.Flush(), offsetList(tlsTopic, tlsNext))
		if err != nil {
			return fmt.Errorf("pipeline: reporter: %w", err)
		}
		if res.Applied {
			r.m.tlsMerged.Add(float64(tlsEvents))
			r.m.rowsMerged.WithLabelValues("tlsrpt").Add(float64(res.Rows))
			r.late(reportgen.KindTLS, res)
		}
		r.advance(tlsTopic, tlsNext)
	}
	return nil
}

// deadLetter produces recs to their DLQ topics. A DLQ topic that does not
// exist (ConsumeAggregates, or RunReporter without CreateTopics) is
// created and the records that failed are produced again, so a bad record
// does not stop the reporter; any other error is returned (the offsets
// past the record are then not stored and the record is read again).
func (r *reporterRun) deadLetter(ctx context.Context, recs []*kgo.Record) error {
	var retry []*kgo.Record
	var missing []string
	for _, pr := range r.cl.ProduceSync(ctx, recs...) {
		switch {
		case pr.Err == nil:
		case errors.Is(pr.Err, kerr.UnknownTopicOrPartition):
			retry = append(retry, pr.Record)
			if !slices.Contains(missing, pr.Record.Topic) {
				missing = append(missing, pr.Record.Topic)
			}
		default:
			return pr.Err
		}
	}
	if len(retry) == 0 {
		return nil
	}
	if err := EnsureTopics(ctx, r.admCl, r.cfg.Partitions, r.cfg.ReplicationFactor, nil, missing...); err != nil {
		return err
	}
	r.log.Info("reporter: dead-letter topic created", "topics", missing)
	for _, rec := range retry {
		rec.Partition, rec.Offset = 0, 0
	}
	return r.cl.ProduceSync(ctx, retry...).FirstErr()
}

func offsetList(topic string, next map[int32]int64) []reportgen.Offset {
	out := make([]reportgen.Offset, 0, len(next))
	for p, n := range next {
		out = append(out, reportgen.Offset{Topic: topic, Partition: p, Next: n})
	}
	return out
}

func (r *reporterRun) advance(topic string, next map[int32]int64) {
	for p, n := range next {
		r.setStored(topic, p, n)
		r.own.advance(topic, p, n)
	}
}

// late reports partials that hit windows already closed, built or done:
// a late arrival, or a replay (after a partition move) of a window another
// reporter already delivered. They are counted in the window, not merged.
func (r *reporterRun) late(kind reportgen.Kind, res reportgen.MergeResult) {
	if res.LatePartials == 0 {
		return
	}
	r.m.latePartials.WithLabelValues(kind.String()).Add(float64(res.LatePartials))
	r.m.lateMessages.WithLabelValues(kind.String()).Add(float64(res.Late))
	for _, w := range res.LateWindows {
		r.log.Info("reporter: late partials counted, not merged (window closed or delivered, or older than its done marker would be kept)", "kind", kind.String(), "window", w.String())
	}
}

func (r *reporterRun) tickLoop(ctx context.Context) error {
	t := time.NewTicker(r.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := r.tick(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Warn("reporter: tick", "err", err)
		}
	}
}

// tick applies the state topic up to its end, then closes and builds the
// owned windows under buildMu, then delivers the outbox.
func (r *reporterRun) tick(ctx context.Context) (err error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.StateWait)
	err = r.state.waitCaughtUp(wctx)
	cancel()
	if err != nil {
		return fmt.Errorf("tick skipped: %w", err)
	}
	var bs reportgen.BuildStats
	// Windows that failed to build hold back neither the state flush nor
	// the delivery of the others; their errors end up in tick's.
	var buildErr error
	defer func() { err = errors.Join(buildErr, err) }()
	err = func() error {
		r.own.buildMu.Lock()
		defer r.own.buildMu.Unlock()
		closed, err := r.st.CloseDueIf(r.own.owns)
		if err != nil {
			return err
		}
		for _, wi := range closed {
			r.m.windowsClosed.WithLabelValues(wi.Kind.String()).Inc()
			r.log.Info("reporter: window closed", "kind", wi.Kind.String(), "window", wi.Window.String(), "messages", wi.Messages, "late", wi.Late)
		}
		if r.rep != nil {
			bs, buildErr = r.rep.BuildClosed(ctx)
			r.m.reportsBuilt.Add(float64(bs.Files))
			r.m.windowsTakenOver.Add(float64(bs.TakenOver))
			r.m.buildFailures.Add(float64(bs.Failed))
			if buildErr != nil {
				buildErr = fmt.Errorf("build: %w", buildErr)
				r.logPanic(buildErr)
			}
		}
		// The next owner must see this build before it can build.
		return r.state.flush(ctx)
	}()
	if err != nil {
		return err
	}
	if bs.Windows > 0 {
		r.log.Info("reporter: reports built", "windows", bs.Windows, "files", bs.Files, "items", bs.Items,
			"no_destination", bs.NoDestination, "unverified", bs.Unverified, "deferred", bs.Deferred, "taken_over", bs.TakenOver, "failed", bs.Failed)
	}
	if bs.TakenOver > 0 {
		r.log.Warn("reporter: windows built by another reporter taken over (their items were not all sent after the takeover delay: "+
			"the builder's store may be lost); items it did send are not sent again, the others may be duplicates", "windows", bs.TakenOver)
	}
	if r.rep == nil {
		if pruned, err := r.st.PruneDone(); err != nil {
			return err
		} else if len(pruned) > 0 {
			r.log.Info("reporter: done markers pruned", "markers", len(pruned))
		}
		return nil
	}
	ds, err := r.rep.Deliver(ctx)
	r.m.itemsSent.Add(float64(ds.Sent))
	r.m.itemsFailed.Add(float64(ds.PermFailed + ds.Expired))
	// Info only when an item was sent or failed; a quiet round (nothing
	// due, or only rate-limited items waiting) is debug.
	level := slog.LevelDebug
	if ds.Sent+ds.TempFailed+ds.PermFailed+ds.Expired+ds.Suppressed > 0 {
		level = slog.LevelInfo
	}
	r.log.Log(ctx, level, "reporter: delivery", "sent", ds.Sent, "temp_failed", ds.TempFailed, "perm_failed", ds.PermFailed,
		"expired", ds.Expired, "suppressed", ds.Suppressed, "rate_limited", ds.RateLimited)
	if err != nil {
		return fmt.Errorf("deliver: %w", err)
	}
	if err := r.rep.Prune(); err != nil {
		return err
	}
	return r.state.flush(ctx)
}

// logPanic logs the stack of a panic contained in err (a
// *reportgen.PanicError: a bug met on one report's data), at most once a
// minute, so that a bug every round meets does not flood the log; the
// error itself is logged by tickLoop.
func (r *reporterRun) logPanic(err error) {
	var pe *reportgen.PanicError
	if !errors.As(err, &pe) {
		return
	}
	now := time.Now().UnixNano()
	if last := r.stackLogged.Load(); now-last >= int64(time.Minute) && r.stackLogged.CompareAndSwap(last, now) {
		r.log.Error("reporter: panic contained (a bug); its report is left for a later round", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
	}
}

// ownership tracks the partitions assigned to this reporter and whether
// each has been replayed up to the end offset seen at assignment. A domain
// is owned when its partition (murmur2 of the lower-case domain, as the
// producers partition it) is assigned and replayed: only then are its
// windows complete here.
type ownership struct {
	// buildMu is held while closing and building, and by the revocation
	// callback: a partition is not revoked in the middle of a build.
	buildMu sync.Mutex

	mu        sync.Mutex
	part      kgo.TopicPartitioner
	kindTopic map[reportgen.Kind]string
	topics    map[string]*topicOwn
	m         *ReporterMetrics
}

type topicOwn struct {
	n     int
	parts map[int32]*partOwn
}

type partOwn struct {
	next, target int64
}

func newOwnership(aggTopic, tlsTopic string, m *ReporterMetrics) *ownership {
	return &ownership{
		part:      kgo.StickyKeyPartitioner(nil).ForTopic(aggTopic),
		kindTopic: map[reportgen.Kind]string{reportgen.KindDMARC: aggTopic, reportgen.KindTLS: tlsTopic},
		topics:    map[string]*topicOwn{},
		m:         m,
	}
}

// partition is the partition of domain among n (Kafka's default
// partitioner for keyed records).
func (o *ownership) partition(domain string, n int) int32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return int32(o.part.Partition(&kgo.Record{Key: []byte(domain)}, n))
}

// partitions returns the partition count of topic seen at the last
// assignment (0: unknown).
func (o *ownership) partitions(topic string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if t := o.topics[topic]; t != nil {
		return t.n
	}
	return 0
}

func (o *ownership) owns(kind reportgen.Kind, w reportgen.Window) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := o.topics[o.kindTopic[kind]]
	if t == nil || t.n == 0 {
		return false
	}
	p := t.parts[int32(o.part.Partition(&kgo.Record{Key: []byte(w.Domain)}, t.n))]
	return p != nil && p.next >= p.target
}

func (o *ownership) assign(topic string, n int, parts map[int32]partOwn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := o.topics[topic]
	if t == nil {
		t = &topicOwn{parts: map[int32]*partOwn{}}
		o.topics[topic] = t
	}
	if n > 0 {
		t.n = n
	}
	for p, po := range parts {
		t.parts[p] = &po
	}
	o.gauge(topic, t)
}

func (o *ownership) revoke(topic string, parts []int32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := o.topics[topic]
	if t == nil {
		return
	}
	for _, p := range parts {
		delete(t.parts, p)
	}
	o.gauge(topic, t)
}

func (o *ownership) advance(topic string, p int32, next int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if t := o.topics[topic]; t != nil {
		if po := t.parts[p]; po != nil && next > po.next {
			po.next = next
			o.gauge(topic, t)
		}
	}
}

func (o *ownership) gauge(topic string, t *topicOwn) {
	ready := 0
	for _, po := range t.parts {
		if po.next >= po.target {
			ready++
		}
	}
	o.m.ownedPartitions.WithLabelValues(topic, strconv.FormatBool(true)).Set(float64(ready))
	o.m.ownedPartitions.WithLabelValues(topic, strconv.FormatBool(false)).Set(float64(len(t.parts) - ready))
}
