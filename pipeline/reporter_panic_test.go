package pipeline

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authpipe/authpipe/internal/panictest"
	"github.com/authpipe/authpipe/reportgen"
)

// TestReporterBuildPanicContained: RunReporter (as `authpipe run` runs it)
// meets a bug building one domain's report (a panic in the DNS lookup of
// its policy; panictest.Resolver, as no real part panics on demand). The
// other domain's report is built and delivered with its exact count, the
// failed window stays closed for a later round, the failures are counted
// (authpipe_reporter_build_failures_total), and the reporter runs on and
// stops cleanly. Before, the panic ended RunReporter's process: with the
// embedded broker the whole service, and again at every restart's first
// round.
func TestReporterBuildPanicContained(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	day := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	clock := &testClock{t: day.Add(10 * time.Hour)}
	st, err := reportgen.OpenStore(filepath.Join(t.TempDir(), "s"), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sink := startSMTPSink(t)
	res := panictest.Resolver{Resolver: reportDNS(t, "a.example", "b.example"), Name: "_dmarc.a.example"}
	rep := newTestReporter(st, res, sink.port, clock.Now)
	reg := prometheus.NewRegistry()
	m, err := NewReporterMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := reporterTestConfig(brokers, clock.Now)
	cfg.Metrics = m
	createAggregateTopic(t, brokers)
	stop := runTestReporter(t, cfg, st, rep)

	parts := []reportgen.PartialAggregate{partialFor("a.example", day, 30, 0), partialFor("b.example", day, 40, 1)}
	producePartials(t, brokers, "panic-producer", parts, 1)
	waitUntil(t, 30*time.Second, "both partials merged", func() bool {
		c := windowCounts(t, st, reportgen.KindDMARC)
		return c[parts[0].Window] == 30 && c[parts[1].Window] == 40
	})
	clock.Set(day.Add(26 * time.Hour)) // past the day's grace period
	waitUntil(t, 30*time.Second, "b.example's report delivered", func() bool { return len(sink.snapshot()) == 1 })
	waitUntil(t, 10*time.Second, "a second failed round", func() bool {
		return counterValue(t, reg, "authpipe_reporter_build_failures_total") >= 2
	})
	mails := sink.snapshot()
	if len(mails) != 1 || mails[0].to != "agg@b.example" {
		t.Fatalf("mails %+v", mails)
	}
	if _, n := reportOf(t, mails[0]); n != 40 {
		t.Fatalf("b.example report counts %d messages, want 40", n)
	}
	wins, err := st.Windows(reportgen.KindDMARC)
	if err != nil || len(wins) != 1 || wins[0].Window != parts[0].Window || wins[0].State != reportgen.StateClosed {
		t.Fatalf("windows %+v %v: want a.example's left closed", wins, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("reporter: %v", err)
	}
}
