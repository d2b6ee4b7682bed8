package pipeline

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authpipe/authpipe/internal/panictest"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// nilVerifier stands for a Verifier with a bug of another kind: it returns
// no verdict for the messages from one envelope domain, so that the
// pipeline's own handling of the verdict panics.
type nilVerifier struct {
	Verifier
	domain string
}

func (n nilVerifier) Verify(ctx context.Context, raw []byte, env stages.Envelope) *verdict.Verdict {
	if strings.HasSuffix(env.MailFrom, "@"+n.domain) {
		return nil
	}
	return n.Verifier.Verify(ctx, raw, env)
}

// TestVerifyPanicToDLQ: the engine panics for every message from one sender
// domain, in its SPF check, which runs on a helper goroutine (the engine
// raises it again on the worker's); for another domain the verifier
// returns no verdict, and the pipeline's encoding of it panics. Each of
// those records goes to the DLQ with the panic in its authpipe.error
// header and kind verify-panic; the stream goes on, every other message
// gets its verdict (equal to a working engine's), and the process lives.
// The error log carries the stack once, not once a record.
func TestVerifyPanicToDLQ(t *testing.T) {
	_, dns, e, brokers := startTestStack(t)
	msgs := corpus(400, "x")
	var good []testMsg
	bad := map[string]string{} // key: the DLQ reason
	for _, m := range msgs {
		switch {
		case strings.HasSuffix(m.env.MailFrom, "@sender3.example"):
			bad[m.key] = "verify-panic: stages: spf check panicked: injected bug looking up sender3.example"
		case strings.HasSuffix(m.env.MailFrom, "@sender5.example"):
			bad[m.key] = "verify-panic: runtime error: invalid memory address or nil pointer dereference"
		default:
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
	buggy := stages.New(panictest.Resolver{Resolver: c, Name: "sender3.example"},
		stages.WithClock(func() time.Time { return fixedNow }), stages.WithDNSBudget(600*time.Millisecond))
	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	met, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(t, ctx, testConfig(brokers, "panics"), nilVerifier{Verifier: buggy, domain: "sender5.example"},
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
		if reason, want := headerValue(r, HeaderError), bad[string(r.Key)]; want == "" || reason != want {
			t.Errorf("DLQ %s: reason %q, want %q", r.Key, reason, want)
		}
	}
	// Every DLQ record of this test is of kind verify-panic.
	if n := counterValue(t, reg, "authpipe_pipeline_dlq_total"); int(n) != len(bad) {
		t.Errorf("dlq_total = %v, want %d", n, len(bad))
	}
	lines := strings.Count(logs.String(), "verification panicked")
	stacks := strings.Count(logs.String(), `"stack":`)
	// The one stack is the first panic's: the resolver's, or the
	// pipeline's own for a missing verdict.
	named := strings.Contains(logs.String(), "panictest.Resolver.Lookup") || strings.Contains(logs.String(), "outputContained")
	if lines != len(bad) || stacks != 1 || !named {
		t.Errorf("%d panic log lines (want %d), %d with a stack (want 1, naming where it panicked)", lines, len(bad), stacks)
	}
	t.Logf("%d verdicts, %d records to the DLQ", len(recs), len(dead))
}
