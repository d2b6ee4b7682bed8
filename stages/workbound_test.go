package stages_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/message"
)

// TestMessageWorkBytesBound: messages in flight with the most work the
// limits allow short of long ARC chains (five DKIM signatures under keys of
// their own, a four-set ARC chain through sealers of their own, SPF and
// DMARC records not cached) hold at most MessageWorkBytes each, plus their
// size, while they wait on DNS: goroutine stacks and live heap, measured
// after a collection with every lookup outstanding.
func TestMessageWorkBytesBound(t *testing.T) {
	w := newWorld(t)
	// A client and cache that wait as long as the test does: with the
	// world's 300 ms timeout, a slow machine would see lookups fail and
	// messages finish while it measures.
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(w.srv.Addr), resolvercache.WithTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cache, err := resolvercache.NewCache(c, resolvercache.WithFillTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	e := newEngine(&world{srv: w.srv, res: cache, rsaKey: w.rsaKey, edKey: w.edKey}, stages.WithDNSBudget(time.Minute))
	const n = 100
	msgs := make([][]byte, n)
	size := 0
	for i := range msgs {
		m := newMessage(fmt.Sprintf("alice@x%d.example", i), 1<<10)
		for j := range 5 {
			m = sign(t, m, fmt.Sprintf("s%d-%d", i, j), w.rsaKey)
		}
		chain := arc.Result{Result: arc.ResultNone}
		for h := range 4 {
			pm, err := message.Parse(m, message.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			s := &arc.Sealer{Domain: fmt.Sprintf("h%d-%d.example", i, h), Selector: "s1", Key: w.rsaKey, AuthServID: "x", Now: func() time.Time { return now }}
			set, err := s.Seal(pm, chain, "spf=pass")
			if err != nil {
				t.Fatal(err)
			}
			m = set.Prepend(m)
			chain = arc.Result{Result: arc.ResultPass, Instances: h + 1}
		}
		msgs[i] = m
		size += len(m)
	}
	w.srv.SetDelay(time.Minute) // nothing is answered while we measure
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	q0 := w.srv.Queries.Load()
	var wg sync.WaitGroup
	for i := range msgs {
		wg.Go(func() {
			e.Verify(ctx, msgs[i], stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: fmt.Sprintf("b@y%d.example", i)})
		})
	}
	// Each message sends six queries before it waits: SPF's record, the
	// DMARC record, its first DKIM key and the next, its newest ARC key
	// and the next.
	const perMessage = 6
	for deadline := time.Now().Add(10 * time.Second); w.srv.Queries.Load()-q0 < perMessage*n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if q := w.srv.Queries.Load() - q0; q != perMessage*n {
		t.Fatalf("%d queries outstanding, want %d", q, perMessage*n)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	stacks := int64(ms1.StackInuse) - int64(ms0.StackInuse)
	heap := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)
	per := (stacks + heap) / n
	t.Logf("message %d B; per message: stacks %d KiB, live heap %d KiB, %d KiB in all (bound %d KiB + the message)",
		size/n, stacks/n>>10, heap/n>>10, per>>10, stages.MessageWorkBytes>>10)
	if per > stages.MessageWorkBytes+int64(size/n) {
		t.Errorf("%d bytes a message in flight, over MessageWorkBytes (%d) + its size (%d)", per, stages.MessageWorkBytes, size/n)
	}
	cancel()
	wg.Wait()
}
