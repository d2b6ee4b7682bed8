package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
)

// panicResolver stands for a bug in the engine: it panics when asked for
// one name, and otherwise asks the real server. No real part panics on
// demand; this is the only fake in the test.
type panicResolver struct {
	resolvercache.Resolver
	name string
}

func (r panicResolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	if strings.EqualFold(strings.TrimSuffix(name, "."), r.name) {
		panic(errors.New("injected bug looking up " + r.name))
	}
	return r.Resolver.Lookup(ctx, name, qtype)
}

// TestVerifyPanicToDLQ: the engine panics for every message from one sender
// domain, in its SPF check, which runs on a helper goroutine (the engine
// raises it again on the worker's). Each of those records goes to the DLQ
// with the panic in its authpipe.error header and kind verify-panic; the
// stream goes on, every other message gets its verdict (equal to a
// working engine's), and the process lives. The error log carries the
// stack once, not once a record.
func TestVerifyPanicToDLQ(t *testing.T) {
	b := startTestBroker(t)
	dns := startTestDNS(t)
	e := testEngine(t, dns.Addr)
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	msgs := corpus(400, "x")
	var good []testMsg
	bad := map[string]bool{}
	for _, m := range msgs {
		if strings.HasSuffix(m.env.MailFrom, "@sender3.example") {
			bad[m.key] = true
		} else {
			good = append(good, m)
		}
	}
	produceCorpus(t, brokers, "mail.raw", msgs)
	out := collect(t, brokers, "mail.verdicts")
	dlq := collect(t, brokers, "mail.raw.dlq")

	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(150*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	buggy := stages.New(panicResolver{Resolver: c, name: "sender3.example"},
		stages.WithClock(func() time.Time { return fixedNow }), stages.WithDNSBudget(600*time.Millisecond))
	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	met, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(t, ctx, testConfig(brokers, "panics"), buggy,
		WithLogger(slog.New(slog.NewJSONHandler(logs, nil))), WithMetrics(met))
	recs := out.waitCount(t, len(good), 30*time.Second)
	dead := dlq.waitCount(t, len(bad), 10*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkVerdicts(t, e, good, recs)
	if len(dead) != len(bad) {
		t.Fatalf("%d DLQ records, want %d", len(dead), len(bad))
	}
	for _, r := range dead {
		if !bad[string(r.Key)] {
			t.Errorf("DLQ record %s is not from the buggy domain", r.Key)
		}
		reason := ""
		for _, h := range r.Headers {
			if h.Key == HeaderError {
				reason = string(h.Value)
			}
		}
		if want := "verify-panic: stages: spf check panicked: injected bug looking up sender3.example"; reason != want {
			t.Errorf("DLQ %s: reason %q, want %q", r.Key, reason, want)
		}
	}
	// Every DLQ record of this test is of kind verify-panic.
	if n := counterValue(t, reg, "authpipe_pipeline_dlq_total"); int(n) != len(bad) {
		t.Errorf("dlq_total = %v, want %d", n, len(bad))
	}
	lines := strings.Count(logs.String(), "verification panicked")
	stacks := strings.Count(logs.String(), `"stack":`)
	if lines != len(bad) || stacks != 1 || !strings.Contains(logs.String(), "panicResolver.Lookup") {
		t.Errorf("%d panic log lines (want %d), %d with a stack (want 1, naming panicResolver.Lookup)", lines, len(bad), stacks)
	}
	t.Logf("%d verdicts, %d records to the DLQ", len(recs), len(dead))
}
