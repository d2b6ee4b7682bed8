package reportgen

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/authpipe/authpipe/internal/panictest"
	"github.com/authpipe/authpipe/resolvercache"
)

// dmarcDocs returns the DMARC report documents mailed to rcpt, unpacked.
func dmarcDocs(t *testing.T, s *sink, rcpt string) [][]byte {
	t.Helper()
	var docs [][]byte
	for _, m := range s.messages() {
		if m.To == rcpt {
			_, files := m.attachments(t)
			for _, b := range files {
				docs = append(docs, gunzip(t, b))
			}
		}
	}
	return docs
}

// bugAt returns a fixture past its day's grace period whose resolver
// panics when asked for name (panictest.Resolver: no real part panics on
// demand), and the working resolver, to put back once the "bug" is fixed.
func bugAt(t *testing.T, name string) (*fixture, resolvercache.Resolver) {
	t.Helper()
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	res := f.rep.Deliverer.Resolver
	f.rep.Deliverer.Resolver = panictest.Resolver{Resolver: res, Name: name}
	f.now = testDay.Add(26 * time.Hour)
	return f, res
}

// TestBuildPanicContained: a bug met building one window's report (here a
// panic in the DNS lookup of its policy, panictest.Resolver: no real part
// panics on demand) fails that window only. Before, the panic ended the
// process (with the embedded broker, the whole `authpipe run` service, and
// every restart would meet it again at the next round), and a window that
// failed to build with an error stopped the round: no later window was
// built and nothing was delivered, for any domain. Now the TLS window is
// built and delivered in the same round, the DMARC window stays closed
// and, once the bug is gone, is built and delivered with every count.
func TestBuildPanicContained(t *testing.T) {
	f, res := bugAt(t, "_dmarc.example.com")
	ctx := context.Background()

	bs, ds, err := f.rep.Tick(ctx)
	var pe *PanicError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "dmarc report example.com/") {
		t.Fatalf("tick error %v, want the contained panic of the example.com window", err)
	}
	if bs.Failed != 1 || bs.Windows != 1 || ds.Sent != 2 {
		t.Fatalf("build %+v deliver %+v: want 1 failed, the TLS window built and sent (mail and HTTPS)", bs, ds)
	}
	if msgs := f.sink.messages(); len(msgs) != 1 || msgs[0].To != "tls@company-y.example" {
		t.Fatalf("mails %+v", msgs)
	}
	wins, err := f.store.Windows(KindDMARC)
	if err != nil || len(wins) != 1 || wins[0].State != StateClosed {
		t.Fatalf("DMARC window %+v %v: want it left closed", wins, err)
	}
	w := wins[0].Window
	// The window says so (`report list` shows it).
	checkFailures := func(n uint64, msg string) {
		t.Helper()
		wi, err := f.store.WindowInfo(KindDMARC, w)
		if err != nil || wi == nil || wi.BuildFailures != n || !strings.Contains(wi.BuildError, msg) || (msg == "") != (wi.BuildError == "") {
			t.Fatalf("window %+v %v: want %d failed builds, error %q", wi, err, n, msg)
		}
	}
	checkFailures(1, "panic: injected bug")

	// The bug still there a round later: the same, and no crash.
	if bs, _, err = f.rep.Tick(ctx); !errors.As(err, &pe) || bs.Failed != 1 {
		t.Fatalf("second round: %v %+v", err, bs)
	}
	checkFailures(2, "panic: injected bug")

	// The bug fixed: the window is built and delivered, every count in it.
	f.rep.Deliverer.Resolver = res
	bs, ds, err = f.rep.Tick(ctx)
	if err != nil || bs.Failed != 0 || bs.Windows != 1 || ds.Sent != 2 {
		t.Fatalf("after the fix: %v build %+v deliver %+v", err, bs, ds)
	}
	checkFailures(2, "") // the count kept, the error gone
	docs := dmarcDocs(t, f.sink, "dmarc@example.com")
	if len(docs) != 1 {
		t.Fatalf("%d DMARC reports to dmarc@example.com", len(docs))
	}
	checkCounts(t, docs, f.want)
}

// TestSendPanicContained: a bug met sending one outbox item (a panic in
// the MX lookup for its address) fails that attempt only, as a temporary
// failure with the panic in its LastError: the round's other items are
// sent, and the item is sent once the bug is gone.
func TestSendPanicContained(t *testing.T) {
	f, res := bugAt(t, "example.com")
	ctx := context.Background()

	bs, ds, err := f.rep.Tick(ctx)
	if err != nil || bs.Failed != 0 || bs.Windows != 2 || ds.Sent != 3 || ds.TempFailed != 1 {
		t.Fatalf("%v build %+v deliver %+v: want 3 sent and the one to example.com failed for now", err, bs, ds)
	}
	items, err := f.store.OutboxItems(false)
	if err != nil {
		t.Fatal(err)
	}
	var failed int
	for _, it := range items {
		if it.Dest == "mailto:dmarc@example.com" {
			failed++
			if it.State != ItemPending || !strings.Contains(it.LastError, "panic: injected bug") {
				t.Fatalf("item %+v", it)
			}
		}
	}
	if failed != 1 {
		t.Fatalf("%d items to dmarc@example.com", failed)
	}

	f.rep.Deliverer.Resolver = res
	f.now = f.now.Add(5 * time.Minute) // the first retry's backoff
	if _, ds, err = f.rep.Tick(ctx); err != nil || ds.Sent != 1 {
		t.Fatalf("after the fix: %v %+v", err, ds)
	}
	checkCounts(t, dmarcDocs(t, f.sink, "dmarc@example.com"), f.want)
}
