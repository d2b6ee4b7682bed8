package pipeline

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// floorTopic is the input of BenchmarkPipelineVsEngine's Kafka-floor
// phase, so that the pipeline (on mail.raw) and the floor's session never
// see each other's records.
const floorTopic = "bench.floor.raw"

// startFloor starts the Kafka-floor phase's consumer: the pipeline's client
// options (kafkaOpts, for cfg with its own group, transactional id and
// input, floorTopic) in a GroupTransactSession that answers each record
// with its verdict from values, encoded beforehand (floorLoop). stop ends
// it.
func startFloor(tb testing.TB, cfg Config, values map[string][]byte, opts ...Option) (stop func()) {
	tb.Helper()
	cfg.Group, cfg.TransactionalID, cfg.InputTopic = "bench-floor", "bench-floor", floorTopic
	p, err := New(cfg, nopVerifier{}, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	p.txnID = cfg.TransactionalID // as Run sets it
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		tb.Fatal(err)
	}
	err = EnsureTopics(context.Background(), cl, int32(cfg.Partitions), -1, nil, floorTopic)
	cl.Close()
	if err != nil {
		tb.Fatal(err)
	}
	s, err := kgo.NewGroupTransactSession(p.kafkaOpts()...)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- floorLoop(ctx, s, p.Config(), values) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
		s.Close()
	}
}

// nopVerifier is never called: startFloor needs a Pipeline only for its
// configuration and client options.
type nopVerifier struct{}

func (nopVerifier) Verify(context.Context, []byte, stages.Envelope) *verdict.Verdict {
	panic("nopVerifier: not for verifying")
}

// floorLoop is the Kafka-floor phase's consume-transform-produce loop:
// each record polled is answered on cfg.VerdictTopic with values[its key]
// (and recycled once that is produced, as the pipeline's records are), in
// a transaction that begins with a batch's first record and ends as the
// pipeline's batch does (input drained for batchIdleGap, or BatchInterval
// over).
func floorLoop(ctx context.Context, s *kgo.GroupTransactSession, cfg Config, values map[string][]byte) error {
	idle := batchIdleGap(cfg.BatchInterval)
	for ctx.Err() == nil {
		began := false
		var end time.Time
		for !began || time.Now().Before(end) {
			pctx, pcancel := ctx, context.CancelFunc(func() {})
			if began {
				pctx, pcancel = context.WithTimeout(ctx, min(time.Until(end), idle))
			}
			fs := s.PollRecords(pctx, cfg.MaxInFlight)
			pcancel()
			if fs.NumRecords() == 0 {
				if !began {
					if ctx.Err() != nil {
						return nil
					}
					continue
				}
				break // drained
			}
			if !began {
				if err := s.Begin(); err != nil {
					return err
				}
				began, end = true, time.Now().Add(cfg.BatchInterval)
			}
			fs.EachRecord(func(r *kgo.Record) {
				s.Produce(ctx, &kgo.Record{Topic: cfg.VerdictTopic, Key: r.Key, Value: values[string(r.Key)]}, func(*kgo.Record, error) { r.Recycle() })
			})
		}
		if _, err := s.End(context.WithoutCancel(ctx), kgo.TryCommit); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("floor: end transaction: %w", err)
		}
	}
	return nil
}
