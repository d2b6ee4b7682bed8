package resolvercache_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authpipe/authpipe/resolvercache"
)

func newMetrics(t testing.TB) (*resolvercache.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := resolvercache.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// metricValue returns the value of the series of family name whose label
// values are labels (in label-name order), or 0.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			lp := m.GetLabel()
			if len(lp) != len(labels) {
				continue
			}
			for i, l := range lp {
				if l.GetValue() != labels[i] {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := resolvercache.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := resolvercache.NewMetrics(reg); err == nil {
		t.Error("second registration on the same registry should fail")
	}
	if _, err := resolvercache.NewMetrics(nil); err != nil {
		t.Error(err)
	}
}
