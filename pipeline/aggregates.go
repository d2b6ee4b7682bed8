package pipeline

import (
	"context"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
)

// batchAggregates pre-aggregates the verdicts of one batch into DMARC
// partial aggregates (reportgen.Aggregator), safe for the pool's
// concurrent workers. At the end of a batch that is about to commit, the
// partials are produced to Config.AggregateTopic (key = policy domain) in
// the same stream as the verdicts: inside the batch's Kafka transaction in
// ExactlyOnce mode (verdicts, partials and input offsets commit together),
// or before the offset commit in AtLeastOnce mode (a crash between the
// produce and the commit redoes the batch, so its partials are counted
// twice by the reporter: at-least-once double-count risk).
type batchAggregates struct {
	mu  sync.Mutex
	agg *reportgen.Aggregator
}

func newBatchAggregates() *batchAggregates {
	return &batchAggregates{agg: reportgen.NewAggregator()}
}

// add counts one reportable verdict in row key of r
// (reportgen.VerdictRowOf, built outside the lock, which covers the count
// only).
func (b *batchAggregates) add(r *reportgen.VerdictRow, key []byte) {
	b.mu.Lock()
	b.agg.AddRow(r, key)
	b.mu.Unlock()
}

// produce flushes the partials to topic through st. It returns the number
// of records produced; produce errors go to fail.
func (b *batchAggregates) produce(ctx context.Context, st stream, topic string, fail func(error)) int {
	b.mu.Lock()
	parts := b.agg.Flush()
	b.mu.Unlock()
	for i := range parts {
		p := &parts[i]
		val, err := p.MarshalBinary()
		if err != nil {
			fail(fmt.Errorf("pipeline: encode partial aggregate: %w", err))
			return i
		}
		st.produce(ctx, &kgo.Record{Topic: topic, Key: p.RecordKey(), Value: val}, func(_ *kgo.Record, err error) {
			if err != nil {
				fail(fmt.Errorf("pipeline: produce to %s: %w", topic, err))
			}
		})
	}
	return len(parts)
}
