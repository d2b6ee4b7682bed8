package stages

import (
	"sync"
	"testing"
	"time"
)

// deepStack uses about 16 KiB of stack, as an SPF evaluation does several.
//
//go:noinline
func deepStack(n int) byte {
	var b [1024]byte
	b[n%len(b)] = byte(n)
	if n == 0 {
		return b[0]
	}
	return deepStack(n-1) + b[n%len(b)]
}

// TestHelpersReused: sequential work runs on one helper; concurrent work
// on at most as many helpers as run at once; idle helpers exit.
func TestHelpersReused(t *testing.T) {
	h := newHelpers(50 * time.Millisecond)
	for i := range 1000 {
		done := make(chan struct{})
		h.Go(func() { deepStack(16 + i%2); close(done) })
		<-done
	}
	// A helper signals done before it is back at the receive, so a second
	// one can start when the next Go comes first; never one per call.
	if n := h.started.Load(); n > 2 {
		t.Errorf("1000 sequential calls started %d helpers, want ≤ 2", n)
	}
	const width = 8
	for range 200 {
		var wg sync.WaitGroup
		for range width {
			wg.Add(1)
			h.Go(func() { defer wg.Done(); deepStack(16) })
		}
		wg.Wait()
	}
	if n := h.alive.Load(); n > 2*width {
		t.Errorf("%d helpers alive for %d concurrent calls", n, width)
	}
	t.Logf("started %d helpers for %d calls", h.started.Load(), 1000+200*width)
	deadline := time.Now().Add(5 * time.Second)
	for h.alive.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d helpers still alive after their idle time", h.alive.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
