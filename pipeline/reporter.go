package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
)

// ReportConsumerConfig configures the reporter role's consumer.
type ReportConsumerConfig struct {
	Brokers []string
	// Topic is the partial aggregate topic (default authpipe.aggregates).
	Topic string
	// Group is the consumer group (default authpipe-report).
	Group string
}

// ConsumeAggregates reads partial aggregates (read_committed, group
// cfg.Group) and merges each polled batch into st together with the
// consumed offsets (reportgen.Store.Merge, one bbolt transaction). The
// group offsets are committed after each Merge and may lag the store's;
// records below the offsets stored in st are skipped, so a crash at any
// point neither loses nor double-counts. Domains are owned by partition
// (the record key is the policy domain). Known gap: when a partition moves
// to another reporter with its own store, the open days merged by the old
// owner are not replayed there. It returns nil when ctx ends.
func ConsumeAggregates(ctx context.Context, cfg ReportConsumerConfig, st *reportgen.Store, log *slog.Logger, kopts ...kgo.Opt) error {
	if cfg.Topic == "" {
		cfg.Topic = "authpipe.aggregates"
	}
	if cfg.Group == "" {
		cfg.Group = "authpipe-report"
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	topic := cfg.Topic
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.BlockRebalanceOnPoll(),
	}
	cl, err := kgo.NewClient(append(opts, kopts...)...)
	if err != nil {
		return fmt.Errorf("pipeline: reporter kafka client: %w", err)
	}
	defer cl.Close()
	// Records below the stored offsets were merged already (the group
	// offsets are committed after each Merge and may lag): skip them.
	stored := map[int32]int64{}
	offs0, err := st.Offsets()
	if err != nil {
		return fmt.Errorf("pipeline: reporter: %w", err)
	}
	for _, o := range offs0 {
		if o.Topic == topic {
			stored[o.Partition] = o.Next
		}
	}
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		if fs.IsClientClosed() {
			return errors.New("pipeline: reporter: kafka client closed")
		}
		recs := fs.Records()
		if len(recs) == 0 {
			cl.AllowRebalance()
			continue
		}
		batch := make([]reportgen.PartialAggregate, 0, len(recs))
		next := map[int32]int64{}
		for _, r := range recs {
			if r.Offset < stored[r.Partition] {
				continue
			}
			next[r.Partition] = r.Offset + 1
			var p reportgen.PartialAggregate
			if err := p.UnmarshalBinary(r.Value); err != nil {
				log.Warn("reporter: bad partial aggregate skipped", "partition", r.Partition, "offset", r.Offset, "err", err)
				continue
			}
			batch = append(batch, p)
		}
		offs := make([]reportgen.Offset, 0, len(next))
		for p, n := range next {
			offs = append(offs, reportgen.Offset{Topic: topic, Partition: p, Next: n})
		}
		if len(offs) > 0 {
			if _, err := st.Merge(batch, offs); err != nil {
				cl.AllowRebalance()
				return fmt.Errorf("pipeline: reporter: %w", err)
			}
			for p, n := range next {
				stored[p] = n
			}
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			log.Warn("reporter: commit group offsets (the store's offsets rule)", "err", err)
		}
		cl.AllowRebalance()
	}
	return nil
}
