package pipeline

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ReporterMetrics are the reporter role's Prometheus collectors, registered
// on the registry given to NewReporterMetrics (no package-level
// collectors).
type ReporterMetrics struct {
	partialsMerged   prometheus.Counter
	rowsMerged       *prometheus.CounterVec
	latePartials     *prometheus.CounterVec
	lateMessages     *prometheus.CounterVec
	tlsMerged        prometheus.Counter
	deadLettered     *prometheus.CounterVec
	windowsClosed    *prometheus.CounterVec
	reportsBuilt     prometheus.Counter
	windowsTakenOver prometheus.Counter
	buildFailures    prometheus.Counter
	itemsSent        prometheus.Counter
	itemsFailed      prometheus.Counter
	stateApplied     prometheus.Counter
	statePublished   prometheus.Counter
	stateErrors      *prometheus.CounterVec
	ownedPartitions  *prometheus.GaugeVec
}

// NewReporterMetrics creates the collectors and registers them on reg (nil:
// not registered, for tests and callers that do not export them).
func NewReporterMetrics(reg prometheus.Registerer) (*ReporterMetrics, error) {
	m := &ReporterMetrics{
		partialsMerged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_partials_merged_total",
			Help: "Partial DMARC aggregates merged into the report store (replays of already stored offsets excluded).",
		}),
		rowsMerged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_rows_merged_total",
			Help: "Rows merged into open windows of the report store, by kind (dmarc, tlsrpt).",
		}, []string{"kind"}),
		latePartials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_late_partials_total",
			Help: "Partials for windows already closed, built or delivered, or for days that closed longer ago than a done marker is kept: counted late (in the window's late field when it has one), not in a report. Replays after a partition move count here too.",
		}, []string{"kind"}),
		lateMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_late_messages_total",
			Help: "Messages (DMARC) or sessions (TLS) carried by late partials.",
		}, []string{"kind"}),
		tlsMerged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_tls_events_merged_total",
			Help: "TLS result events aggregated and merged into the report store.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_dead_lettered_total",
			Help: "Records sent to a dead-letter topic with an authpipe.error header, by source (tls-results, aggregates).",
		}, []string{"source"}),
		windowsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_windows_closed_total",
			Help: "Day windows closed by this reporter, by kind.",
		}, []string{"kind"}),
		reportsBuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_reports_built_total",
			Help: "Report files built into the outbox.",
		}),
		windowsTakenOver: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_windows_taken_over_total",
			Help: "Windows another reporter built whose items were not all sent or failed after the takeover delay, rebuilt and delivered by this reporter (its owner).",
		}),
		buildFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_build_failures_total",
			Help: "Window builds that failed (an error, or a panic contained to its window): the window stays closed and is built again on the next round; the others go on.",
		}),
		itemsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_items_sent_total",
			Help: "Outbox items accepted by their destination.",
		}),
		itemsFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_items_failed_total",
			Help: "Outbox items failed for good (permanent error or retry window over).",
		}),
		stateApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_state_applied_total",
			Help: "Delivery state events from the state topic that changed the local store (windows built or items finished by another reporter).",
		}),
		statePublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "authpipe_reporter_state_published_total",
			Help: "Delivery state events produced to the state topic.",
		}),
		stateErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authpipe_reporter_state_errors_total",
			Help: "State topic problems, by op: decode (a record that is not a state event, skipped and logged), produce.",
		}, []string{"op"}),
		ownedPartitions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "authpipe_reporter_owned_partitions",
			Help: "Partitions assigned to this reporter, by topic and readiness (ready: replayed up to the end seen at assignment).",
		}, []string{"topic", "ready"}),
	}
	// The kinds are known: their series exist from the start at 0, so that
	// rate() and alerts on late reports see the first increase.
	for _, kind := range []string{"dmarc", "tlsrpt"} {
		m.rowsMerged.WithLabelValues(kind)
		m.latePartials.WithLabelValues(kind)
		m.lateMessages.WithLabelValues(kind)
		m.windowsClosed.WithLabelValues(kind)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.partialsMerged, m.rowsMerged, m.latePartials, m.lateMessages, m.tlsMerged, m.deadLettered,
			m.windowsClosed, m.reportsBuilt, m.windowsTakenOver, m.buildFailures, m.itemsSent, m.itemsFailed, m.stateApplied, m.statePublished, m.stateErrors, m.ownedPartitions} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
