package resolvercache

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the Prometheus collectors of the DNS layer. One Metrics may
// be shared by a Client, a Cache and a Zone; each counts what it sees. A nil
// *Metrics is valid and records nothing.
//
// Collectors (all prefixed authpipe_dns_):
//
//	lookups_total{resolver}          Lookup calls, resolver = client|cache|zone
//	errors_total{resolver,kind}      Lookups that returned an *Error, kind = ErrorKind.String()
//	queries_total{proto}             wire queries sent upstream, proto = udp|tcp
//	upstream_duration_seconds{proto} time from send to a usable reply or failure, per wire query
//	cache_hits_total                 lookups answered from the cache (answers and cached errors)
//	cache_misses_total               lookups that had to go upstream (or join an in-flight query)
//	cache_shared_total               misses that joined another caller's in-flight query
//	cache_late_total                 wire queries no lookup waited for (prefetches, and those left running after their lookup gave up), settled (answer, error or nothing usable)
//	cache_cost_bytes                 approximate bytes held by the cache (read when scraped)
//	cache_evictions_total            entries evicted or expired by the cache
//	upstream_up{server}              1 while a Client's upstream server answers, 0 while it is held down (WithHealthFunc)
//	upstream_replies_total{server}   datagrams received from each upstream server
//	upstream_failures_total{server,kind} wire queries to each upstream server that timed out (kind timeout) or failed on the network (network: refused, unreachable)
type Metrics struct {
	lookupsClient, lookupsCache, lookupsZone prometheus.Counter
	errors                                   *prometheus.CounterVec
	queriesUDP, queriesTCP                   prometheus.Counter
	durUDP, durTCP                           prometheus.Observer
	hits, misses, shared, late               prometheus.Counter
	evictions                                prometheus.Counter
	upstreams                                *prometheus.GaugeVec
	replies, failures                        *prometheus.CounterVec
	// cost reads the bytes held by the cache counting into these
	// metrics (the last one made with them), for cache_cost_bytes when
	// it is scraped: summing ristretto's cost counters on every insert
	// instead took about 0.25 µs a fill.
	cost atomic.Pointer[func() int64]
}

// NewMetrics creates the collectors and registers them with reg. A nil reg
// leaves them unregistered (useful in tests). It never touches the global
// default registry.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "lookups_total",
		Help: "DNS Lookup calls by resolver (client, cache, zone).",
	}, []string{"resolver"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "errors_total",
		Help: "DNS lookups that failed, by resolver and error kind.",
	}, []string{"resolver", "kind"})
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "queries_total",
		Help: "Wire queries sent to upstream servers, by transport.",
	}, []string{"proto"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "upstream_duration_seconds",
		Help:    "Time per wire query to an upstream server, by transport.",
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}, []string{"proto"})
	hits := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_hits_total",
		Help: "Lookups answered from the DNS cache.",
	})
	misses := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_misses_total",
		Help: "Lookups the DNS cache could not answer.",
	})
	shared := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_shared_total",
		Help: "Cache misses that joined an identical in-flight upstream query.",
	})
	late := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_late_total",
		Help: "Wire queries no lookup waited for, by the time they settled (an answer or error cached as a fill's, or nothing usable): prefetches, and queries left running after the lookup that asked gave up.",
	})
	m := new(Metrics)
	cost := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_cost_bytes",
		Help: "Approximate bytes held by the DNS cache.",
	}, func() float64 {
		if f := m.cost.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	evictions := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "cache_evictions_total",
		Help: "DNS cache entries evicted or expired.",
	})
	upstreams := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "upstream_up",
		Help: "1 while the upstream DNS server answers, 0 while it is held down after queries in a row timed out or failed (asked after the others, probed every few seconds).",
	}, []string{"server"})
	replies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "upstream_replies_total",
		Help: "Datagrams received from each upstream DNS server.",
	}, []string{"server"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authpipe", Subsystem: "dns", Name: "upstream_failures_total",
		Help: "Wire queries to each upstream DNS server that timed out (kind timeout) or failed on the network (kind network: refused, unreachable).",
	}, []string{"server", "kind"})
	if reg != nil {
		for _, c := range []prometheus.Collector{lookups, errs, queries, dur, hits, misses, shared, late, cost, evictions, upstreams, replies, failures} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if errors.As(err, &are) {
					return nil, fmt.Errorf("resolvercache: metrics already registered: %w", err)
				}
				return nil, fmt.Errorf("resolvercache: register metrics: %w", err)
			}
		}
	}
	m.lookupsClient = lookups.WithLabelValues("client")
	m.lookupsCache = lookups.WithLabelValues("cache")
	m.lookupsZone = lookups.WithLabelValues("zone")
	m.errors = errs
	m.queriesUDP = queries.WithLabelValues("udp")
	m.queriesTCP = queries.WithLabelValues("tcp")
	m.durUDP = dur.WithLabelValues("udp")
	m.durTCP = dur.WithLabelValues("tcp")
	m.hits, m.misses, m.shared, m.late = hits, misses, shared, late
	m.evictions = evictions
	m.upstreams = upstreams
	m.replies, m.failures = replies, failures
	return m, nil
}

// upstreamCounters are one upstream server's series of upstream_replies_total
// and upstream_failures_total, bound once so that a datagram costs an
// atomic add, not a label lookup; all nil without metrics.
type upstreamCounters struct {
	replies, timeouts, network prometheus.Counter
}

// forUpstream binds server's counters (created at 0, so that a server that
// never answers shows as such).
func (m *Metrics) forUpstream(server string) upstreamCounters {
	if m == nil {
		return upstreamCounters{}
	}
	return upstreamCounters{
		replies:  m.replies.WithLabelValues(server),
		timeouts: m.failures.WithLabelValues(server, "timeout"),
		network:  m.failures.WithLabelValues(server, "network"),
	}
}

// upstreamUp sets upstream_up for server.
func (m *Metrics) upstreamUp(server string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.upstreams.WithLabelValues(server).Set(v)
}

func (m *Metrics) cacheHit() {
	if m != nil {
		m.hits.Inc()
	}
}

func (m *Metrics) cacheMiss(shared bool) {
	if m != nil {
		m.misses.Inc()
		if shared {
			m.shared.Inc()
		}
	}
}

func (m *Metrics) cacheLate() {
	if m != nil {
		m.late.Inc()
	}
}

func (m *Metrics) cacheEvicted() {
	if m != nil {
		m.evictions.Inc()
	}
}

// costFrom makes cache_cost_bytes read cost.
func (m *Metrics) costFrom(cost func() int64) {
	if m != nil {
		m.cost.Store(&cost)
	}
}

// lookup counts one Lookup by resolver and, if err is an *Error, its kind.
func (m *Metrics) lookup(resolver string, err error) {
	if m == nil {
		return
	}
	switch resolver {
	case "client":
		m.lookupsClient.Inc()
	case "cache":
		m.lookupsCache.Inc()
	case "zone":
		m.lookupsZone.Inc()
	}
	if err != nil {
		kind := "other"
		var e *Error
		if errors.As(err, &e) {
			kind = e.Kind.String()
		}
		m.errors.WithLabelValues(resolver, kind).Inc()
	}
}

func (m *Metrics) query(tcp bool, seconds float64) {
	if m == nil {
		return
	}
	if tcp {
		m.queriesTCP.Inc()
		m.durTCP.Observe(seconds)
		return
	}
	m.queriesUDP.Inc()
	m.durUDP.Observe(seconds)
}
