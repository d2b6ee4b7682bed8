package pipeline

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages/verdict"
)

// BenchmarkHandleOverhead measures, one part at a time, the work handle
// adds to each message besides the engine and the Kafka client: decoding
// the record, encoding the verdict, counting it in the metrics and adding
// it to the batch's partial aggregates. The message is one of
// BenchmarkPipelineVsEngine's (DKIM-signed, SPF and DMARC published).
func BenchmarkHandleOverhead(b *testing.B) {
	dns := startTestDNS(b)
	msgs := signedCorpus(b, dns, 1)
	e := cachedEngine(b, dns.Addr, 1)
	m := &msgs[0]
	v := e.Verify(context.Background(), m.raw, m.env)
	v.Key = m.key
	rec := &kgo.Record{Key: []byte(m.key), Value: m.raw, Headers: EnvelopeHeaders(m.env, "Q1")}
	met, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(rec, 64<<20); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = verdict.AppendJSON(buf[:0], v)
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("metrics", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			met.countVerdict(v)
		}
	})
	b.Run("aggregate", func(b *testing.B) {
		b.ReportAllocs()
		aggs := newBatchAggregates()
		var key [256]byte
		for b.Loop() {
			r, k, err := reportgen.VerdictRowOf(v, key[:0])
			if err != nil {
				b.Fatal(err)
			}
			aggs.add(&r, k)
		}
	})
}
