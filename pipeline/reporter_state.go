package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
)

// stateSync keeps the local store in step with the compacted delivery
// state topic and publishes this reporter's own transitions to it.
//
// Every reporter reads the whole topic (all partitions, no group, from the
// start), because any reporter may come to own any domain; compaction keeps
// it to the latest state per window and item. Before a tick builds
// anything the reporter waits until it has applied the topic up to the end
// offsets listed at that moment (waitCaughtUp): a window another reporter
// built before this one got the partition is then known here, and is not
// built or sent again.
type stateSync struct {
	cl    *kgo.Client
	adm   *kadm.Client
	topic string
	st    *reportgen.Store
	log   *slog.Logger
	m     *ReporterMetrics

	mu      sync.Mutex
	pos     map[int32]int64 // next offset to apply, per partition
	advance chan struct{}   // closed (and replaced) when pos moves
}

func newStateSync(cfg *ReporterConfig, st *reportgen.Store, log *slog.Logger, kopts []kgo.Opt) (*stateSync, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.MetadataMinAge(MetadataMinAge),
		kgo.ConsumeTopics(cfg.StateTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Keyed records: a key always lands on the same partition, as
		// compaction requires.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerLinger(0),
	}
	cl, err := kgo.NewClient(append(opts, kopts...)...)
	if err != nil {
		return nil, fmt.Errorf("pipeline: reporter state client: %w", err)
	}
	return &stateSync{cl: cl, adm: kadm.NewClient(cl), topic: cfg.StateTopic, st: st, log: log, m: cfg.Metrics,
		pos: map[int32]int64{}, advance: make(chan struct{})}, nil
}

// run applies state records until ctx ends. A record that is not a state
// event is logged and counted (it cannot be dead-lettered into the topic it
// came from, and skipping it only means a window may be built twice, with
// the same Report-ID); a store error ends the run.
func (s *stateSync) run(ctx context.Context) error {
	for {
		fs := s.cl.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return nil
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.log.Warn("reporter: state topic fetch", "topic", t, "partition", p, "err", err)
			}
		})
		var err error
		fs.EachRecord(func(r *kgo.Record) {
			if err != nil {
				return
			}
			ev, perr := reportgen.ParseStateEvent(r.Key, r.Value)
			if perr != nil {
				s.m.stateErrors.WithLabelValues("decode").Inc()
				s.log.Error("reporter: bad state record skipped", "partition", r.Partition, "offset", r.Offset, "err", perr)
			} else {
				changed, aerr := s.st.ApplyState(ev)
				if aerr != nil {
					err = fmt.Errorf("pipeline: reporter: %w", aerr)
					return
				}
				if changed {
					s.m.stateApplied.Inc()
					s.log.Debug("reporter: state applied", "key", string(r.Key), "state", ev.State)
				}
			}
			s.mu.Lock()
			s.pos[r.Partition] = r.Offset + 1
			s.mu.Unlock()
		})
		if err != nil {
			return err
		}
		s.mu.Lock()
		close(s.advance)
		s.advance = make(chan struct{})
		s.mu.Unlock()
	}
}

// waitCaughtUp returns once every state record present when it was called
// has been applied, or ctx's error.
func (s *stateSync) waitCaughtUp(ctx context.Context) error {
	ends, err := s.adm.ListEndOffsets(ctx, s.topic)
	if err != nil {
		return fmt.Errorf("list end offsets of %s: %w", s.topic, err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("list end offsets of %s: %w", s.topic, err)
	}
	for {
		behind := false
		s.mu.Lock()
		ch := s.advance
		ends.Each(func(o kadm.ListedOffset) {
			if o.Offset > 0 && s.pos[o.Partition] < o.Offset {
				behind = true
			}
		})
		s.mu.Unlock()
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("state topic %s not read to its end: %w", s.topic, ctx.Err())
		case <-ch:
		}
	}
}

// publish produces ev (asynchronously; flush waits). A produce error is
// logged and counted: the event is produced again at the next start from
// the store's snapshot (Store.StateSnapshot).
func (s *stateSync) publish(ctx context.Context, ev reportgen.StateEvent) {
	val, err := ev.Value()
	if err != nil {
		s.m.stateErrors.WithLabelValues("produce").Inc()
		s.log.Error("reporter: encode state event", "key", string(ev.Key()), "err", err)
		return
	}
	s.cl.Produce(ctx, &kgo.Record{Topic: s.topic, Key: ev.Key(), Value: val}, func(r *kgo.Record, err error) {
		if err != nil {
			s.m.stateErrors.WithLabelValues("produce").Inc()
			s.log.Error("reporter: produce state event", "key", string(r.Key), "err", err)
			return
		}
		s.m.statePublished.Inc()
	})
}

// flush waits until the published events are acknowledged.
func (s *stateSync) flush(ctx context.Context) error {
	if err := s.cl.Flush(ctx); err != nil {
		return fmt.Errorf("flush state events: %w", err)
	}
	return nil
}

// republish produces the store's own state (see Store.StateSnapshot).
func (s *stateSync) republish(ctx context.Context) error {
	evs, err := s.st.StateSnapshot()
	if err != nil {
		return fmt.Errorf("pipeline: reporter: %w", err)
	}
	for _, ev := range evs {
		s.publish(ctx, ev)
	}
	if len(evs) > 0 {
		s.log.Info("reporter: republished own delivery state", "events", len(evs))
	}
	return s.flush(ctx)
}

func (s *stateSync) close() { s.cl.Close() }
