package pipeline

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// dmarcVerifier returns a DMARC verdict whose policy domain is a.example
// for messages whose From names an even sender, b.example otherwise.
type dmarcVerifier struct{}

func (dmarcVerifier) Verify(_ context.Context, raw []byte, env stages.Envelope) *verdict.Verdict {
	d := "b.example"
	for _, even := range []string{"sender0.", "sender2.", "sender4.", "sender6."} {
		if strings.Contains(string(raw), even) {
			d = "a.example"
		}
	}
	return &verdict.Verdict{
		Version: 1, EvaluatedAt: env.ReceivedAt,
		Envelope:   verdict.Envelope{ClientIP: env.ClientIP.String(), RcptTo: env.RcptTo, ReceivedAt: env.ReceivedAt},
		HeaderFrom: []string{d},
		DMARC: &verdict.DMARC{Result: "pass", PolicyDomain: d, AuthorDomain: d, Disposition: "none", AppliedPolicy: "p",
			Policy: &verdict.Policy{Domain: d, P: "none", ADKIM: "r", ASPF: "r"}},
	}
}

// TestPipelineAggregatesExact: verdicts for two domains over two UTC days
// go to authpipe.aggregates in the verdicts' transactions; merging every
// committed partial gives exactly the input counts per window.
func TestPipelineAggregatesExact(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	msgs := corpus(200, "agg")
	day1 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	want := map[reportgen.Window]uint64{}
	for i := range msgs {
		at := day1.Add(time.Duration((i/3)%2) * 24 * time.Hour)
		msgs[i].env.ReceivedAt = at
		d := "b.example"
		if (i%testDomains)%2 == 0 {
			d = "a.example"
		}
		want[reportgen.Window{Domain: d, Day: reportgen.DayOf(at)}]++
	}
	createTopics(t, brokers, 4)
	aggs := collect(t, brokers, "authpipe.aggregates")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig(brokers, "agg-1")
	_, errc := runPipeline(t, ctx, cfg, dmarcVerifier{}, WithKafkaOpts(testKafkaOpts()...))
	produceCorpus(t, brokers, "mail.raw", msgs)

	now := day1
	st, err := reportgen.OpenStore(t.TempDir(), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	deadline := time.Now().Add(30 * time.Second)
	var total uint64
	merged := 0
	for total < uint64(len(msgs)) && time.Now().Before(deadline) {
		recs := aggs.snapshot()[merged:]
		if len(recs) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		batch := make([]reportgen.PartialAggregate, len(recs))
		for i, r := range recs {
			if err := batch[i].UnmarshalBinary(r.Value); err != nil {
				t.Fatal(err)
			}
			if string(r.Key) != batch[i].Domain {
				t.Fatalf("record key %q, domain %q", r.Key, batch[i].Domain)
			}
			total += batch[i].Messages
		}
		if _, err := st.Merge(batch, nil); err != nil {
			t.Fatal(err)
		}
		merged += len(recs)
	}
	time.Sleep(300 * time.Millisecond)
	if extra := len(aggs.snapshot()) - merged; extra != 0 {
		t.Fatalf("%d extra partial aggregates after all messages counted", extra)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	wins, err := st.Windows(reportgen.KindDMARC)
	if err != nil {
		t.Fatal(err)
	}
	if len(wins) != len(want) {
		t.Fatalf("got %d windows, want %d", len(wins), len(want))
	}
	for _, wi := range wins {
		if wi.Messages != want[wi.Window] {
			t.Errorf("window %s: %d messages, want %d", wi.Window, wi.Messages, want[wi.Window])
		}
	}
	t.Logf("%d partial aggregates, %d windows, %d messages", merged, len(wins), total)
}

// TestReporterRestartExact: the reporter merges partials with their
// offsets; cancelling it mid-stream and starting it again over the same
// store neither loses nor double-counts.
func TestReporterRestartExact(t *testing.T) {
	b := startTestBroker(t)
	brokers := b.Addrs()
	createTopics(t, brokers, 4)
	day1 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	msgs := corpus(300, "rst")
	for i := range msgs {
		msgs[i].env.ReceivedAt = day1.Add(time.Duration((i/3)%2) * 24 * time.Hour)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig(brokers, "rst-1")
	_, errc := runPipeline(t, ctx, cfg, dmarcVerifier{})
	now := day1
	dir := t.TempDir()
	st, err := reportgen.OpenStore(dir, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	count := func() uint64 {
		wins, err := st.Windows(reportgen.KindDMARC)
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, w := range wins {
			n += w.Messages
		}
		return n
	}
	startReporter := func() (context.CancelFunc, chan error) {
		rctx, rcancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- ConsumeAggregates(rctx, ReportConsumerConfig{Brokers: brokers}, st, nil, testKafkaOpts()...)
		}()
		return rcancel, done
	}
	waitFor := func(n uint64) {
		deadline := time.Now().Add(30 * time.Second)
		for count() < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		if got := count(); got != n {
			t.Fatalf("store counts %d messages, want %d", got, n)
		}
	}
	rcancel, rdone := startReporter()
	produceCorpus(t, brokers, "mail.raw", msgs[:150])
	waitFor(150)
	rcancel()
	if err := <-rdone; err != nil {
		t.Fatal(err)
	}
	produceCorpus(t, brokers, "mail.raw", msgs[150:])
	time.Sleep(500 * time.Millisecond)
	rcancel, rdone = startReporter()
	waitFor(300)
	rcancel()
	if err := <-rdone; err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("store holds %d messages after a reporter restart", count())
}
