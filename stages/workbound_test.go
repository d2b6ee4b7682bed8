package stages_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/message"
)

// TestMessageWorkBytesBound: messages in flight with the most work the
// limits allow hold at most MessageWorkBytes each, plus MessageCopies
// times their size, while they wait on DNS: goroutine stacks and live
// heap, measured after a collection with every lookup outstanding. The
// worst cases: five DKIM signatures under keys of their own with a
// four-set ARC chain through sealers of their own, and one signature under
// a chain of the longest length allowed (arc.DefaultMaxSets), whose parse
// state grows with its header bytes, with CRLF line ends and with bare LF
// (which Parse copies to CRLF first); SPF and DMARC records not cached.
func TestMessageWorkBytesBound(t *testing.T) {
	for _, tc := range []struct {
		name       string
		n          int // messages in flight
		sigs, sets int
		lf         bool // bare LF line ends
		// queries each message sends before it waits: SPF's record, the
		// DMARC record, its first DKIM key and the later ones (4 with 5
		// signatures), its newest ARC key and the others (at most
		// arc.MaxPrefetchKeys), all at once: the prefetches are queries
		// nobody waits for (resolvercache.Cache.Prefetch), 2 KiB each,
		// with no goroutine. n keeps them within the client's 1,024
		// in-flight slots; a prefetch that finds none free is looked up
		// on a helper goroutine instead (a stack of about 12 KiB), as
		// every prefetch was until session 19, when this test measured
		// that path: the bound holds either way.
		perMessage int64
	}{
		{"5 signatures, 4 ARC sets", 90, 5, 4, false, 11},
		{"1 signature, 50 ARC sets", 20, 1, arc.DefaultMaxSets, false, 8},
		{"1 signature, 50 ARC sets, LF", 20, 1, arc.DefaultMaxSets, true, 8},
	} {
		if os.Getenv(workBoundCase) == tc.name {
			measureWorkBytes(t, tc.n, tc.sigs, tc.sets, tc.lf, tc.perMessage)
			return
		}
		if os.Getenv(workBoundCase) != "" {
			continue
		}
		// Each case runs in a process of its own: goroutine stacks are
		// measured as the runtime's stack memory, and stacks an earlier
		// case freed would be reused uncounted (or, its idle helpers
		// exiting, leave the count during the measurement).
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestMessageWorkBytesBound$", "-test.v")
			cmd.Env = append(os.Environ(), workBoundCase+"="+tc.name)
			out, err := cmd.CombinedOutput()
			for line := range strings.Lines(string(out)) {
				if _, msg, ok := strings.Cut(line, "workbound_test.go:"); ok {
					_, msg, _ = strings.Cut(msg, ": ")
					t.Log(strings.TrimSpace(msg))
				}
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

// workBoundCase names the case a child process of
// TestMessageWorkBytesBound measures.
const workBoundCase = "AUTHPIPE_WORKBOUND_CASE"

func measureWorkBytes(t *testing.T, n, sigs, sets int, lf bool, perMessage int64) {
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
	msgs := make([][]byte, n)
	size := 0
	for i := range msgs {
		m := newMessage(fmt.Sprintf("alice@x%d.example", i), 1<<10)
		for j := range sigs {
			m = sign(t, m, fmt.Sprintf("s%d-%d", i, j), w.rsaKey)
		}
		chain := arc.Result{Result: arc.ResultNone}
		for h := range sets {
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
		if lf {
			m = bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))
		}
		msgs[i] = m
		size += len(m)
	}
	w.srv.SetDelay(time.Minute) // nothing is answered while we measure
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ms0, ms1 runtime.MemStats
	// Building the messages grew this goroutine's stack; each collection
	// halves an oversized stack, so shrink it before the baseline too.
	for range 4 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms0)
	q0 := w.srv.Queries.Load()
	var wg sync.WaitGroup
	for i := range msgs {
		wg.Go(func() {
			e.Verify(ctx, msgs[i], stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: fmt.Sprintf("b@y%d.example", i)})
		})
	}
	want := perMessage * int64(n)
	for deadline := time.Now().Add(10 * time.Second); w.srv.Queries.Load()-q0 < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if q := w.srv.Queries.Load() - q0; q != want {
		t.Fatalf("%d queries outstanding, want %d", q, want)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	stacks := int64(ms1.StackInuse) - int64(ms0.StackInuse)
	heap := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)
	per := (stacks + heap) / int64(n)
	limit := stages.MessageWorkBytes + stages.MessageCopies*int64(size/n)
	t.Logf("message %d B; per message: stacks %d KiB, live heap %d KiB, %d KiB in all (bound %d KiB + %d × the message = %d KiB; %.1f × the message beyond MessageWorkBytes)",
		size/n, stacks/int64(n)>>10, heap/int64(n)>>10, per>>10, stages.MessageWorkBytes>>10, stages.MessageCopies, limit>>10,
		float64(max(per-stages.MessageWorkBytes, 0))/float64(size/n))
	if per > limit {
		t.Errorf("%d bytes a message in flight, over MessageWorkBytes (%d) + %d × its size (%d)", per, stages.MessageWorkBytes, stages.MessageCopies, size/n)
	}
	cancel()
	wg.Wait()
}
