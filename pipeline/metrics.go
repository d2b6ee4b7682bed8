package pipeline

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authpipe/authpipe/stages/verdict"
)

// Metrics are the pipeline's Prometheus collectors. They are registered on
// the registry given to NewMetrics; there are no package-level collectors.
type Metrics struct {
	verdicts   *prometheus.CounterVec
	dlq        *prometheus.CounterVec
	inFlight   prometheus.Gauge
	inFlightB  prometheus.Gauge
	stage      *prometheus.HistogramVec
	batches    *prometheus.CounterVec
	batchSize  prometheus.Histogram
	retries    prometheus.Counter
	deferred   prometheus.Counter
	pausedTime prometheus.Counter

	// The per-message collectors, resolved once: a label lookup hashes
	// the values and takes the vector's lock on every call.
	decodeObs, verifyObs, encodeObs, commitObs prometheus.Observer
	verdictCounters                            sync.Map // verdictLabel → prometheus.Counter
}

type verdictLabel struct{ check, result string }

// NewMetrics creates the collectors, named authpipe_pipeline_*, and
// registers them on reg (nil: not registered, for tests that do not look).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	return newMetrics(reg, "authpipe_pipeline_")
}

// NewRetryMetrics is NewMetrics for the retry stage (RetryStage): the same
// collectors, named authpipe_retry_*.
func NewRetryMetrics(reg prometheus.Registerer) (*Metrics, error) {
	return newMetrics(reg, "authpipe_retry_")
}

func newMetrics(reg prometheus.Registerer, prefix string) (*Metrics, error) {
	m := &Metrics{
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "messages_total",
			Help: "Messages verified, by check (spf, dkim, arc, dmarc) and result. A message with several DKIM signatures counts once per signature.",
		}, []string{"check", "result"}),
		dlq: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "dlq_total",
			Help: "Records sent to the dead-letter topic, by reason kind.",
		}, []string{"kind"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "in_flight_messages",
			Help: "Messages being verified now.",
		}),
		inFlightB: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "in_flight_bytes",
			Help: "Bytes of the messages being verified now.",
		}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prefix + "stage_seconds",
			Help:    "Latency per pipeline stage: decode, verify, encode, commit (end of a batch: flush, offsets, transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"stage"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "batches_total",
			Help: "Batches ended, by outcome: committed, aborted (the records are redone).",
		}, []string{"outcome"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    prefix + "batch_records",
			Help:    "Records per batch (transaction or offset commit).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "temperror_retries_total",
			Help: "Verifications repeated because the verdict held a temperror.",
		}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "deferred_total",
			Help: "Messages written to the retry topic because their verification outlasted the straggler wait.",
		}),
		pausedTime: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "backpressure_seconds_total",
			Help: "Time spent not fetching because the in-flight bounds were reached.",
		}),
	}
	m.decodeObs = m.stage.WithLabelValues("decode")
	m.verifyObs = m.stage.WithLabelValues("verify")
	m.encodeObs = m.stage.WithLabelValues("encode")
	m.commitObs = m.stage.WithLabelValues("commit")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.verdicts, m.dlq, m.inFlight, m.inFlightB, m.stage, m.batches, m.batchSize, m.retries, m.deferred, m.pausedTime} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Metrics) countVerdict(v *verdict.Verdict) {
	if v.SPF != nil {
		m.verdictCounter("spf", v.SPF.Result).Inc()
	}
	for _, d := range v.DKIM {
		m.verdictCounter("dkim", d.Result).Inc()
	}
	if v.ARC != nil {
		m.verdictCounter("arc", v.ARC.Result).Inc()
	}
	if v.DMARC != nil {
		m.verdictCounter("dmarc", v.DMARC.Result).Inc()
	}
}

// verdictCounter returns the counter of one check and result. The results
// are a small fixed vocabulary (RFC 8601 result names), so the cache is
// bounded by it.
func (m *Metrics) verdictCounter(check, result string) prometheus.Counter {
	k := verdictLabel{check, result}
	if c, ok := m.verdictCounters.Load(k); ok {
		return c.(prometheus.Counter)
	}
	c := m.verdicts.WithLabelValues(check, result)
	m.verdictCounters.Store(k, c)
	return c
}

// hasTemperror reports whether any check of v ended in temperror.
func hasTemperror(v *verdict.Verdict) bool {
	if v.SPF != nil && v.SPF.Result == "temperror" {
		return true
	}
	for _, d := range v.DKIM {
		if d.Result == "temperror" {
			return true
		}
	}
	if v.ARC != nil && v.ARC.Result == "temperror" {
		return true
	}
	return v.DMARC != nil && v.DMARC.Result == "temperror"
}
