package pipeline

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolWorkersBounded runs many short functions through a pool of 8 and
// checks that the live workers never exceed 8, that they are reused (far
// fewer goroutines started than functions run), and that Close lets them go.
func TestPoolWorkersBounded(t *testing.T) {
	const maxN, runs = 8, 20000
	p := NewPool(maxN, 1<<20)
	var ran, peakWorkers atomic.Int64
	before := runtime.NumGoroutine()
	for range runs {
		if _, err := p.Go(context.Background(), 1, func() {
			ran.Add(1)
			if w := int64(p.Workers()); w > peakWorkers.Load() {
				peakWorkers.Store(w)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if w := p.Workers(); w > maxN {
			t.Fatalf("%d workers, bound %d", w, maxN)
		}
	}
	p.Wait()
	if ran.Load() != runs {
		t.Fatalf("ran %d of %d", ran.Load(), runs)
	}
	if w := p.Workers(); w < 1 || w > maxN {
		t.Fatalf("%d idle workers after Wait, want 1..%d", w, maxN)
	}
	if g := runtime.NumGoroutine() - before; g > maxN {
		t.Fatalf("%d more goroutines than before, want ≤ %d", g, maxN)
	}
	p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Workers() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still alive after Close", p.Workers())
		}
		time.Sleep(time.Millisecond)
	}
	// After Close, Go still runs functions (on goroutines of their own).
	done := make(chan struct{})
	if _, err := p.Go(context.Background(), 1, func() { close(done) }); err != nil {
		t.Fatal(err)
	}
	<-done
	p.Wait()
}

// TestPoolWorkerKeepsStack checks the reason for keeping workers: a function
// that needs a deep stack grows it once per worker, not once per call.
func TestPoolWorkerKeepsStack(t *testing.T) {
	p := NewPool(1, 1<<20)
	defer p.Close()
	var ids []uint64
	for range 3 {
		if _, err := p.Go(context.Background(), 1, func() {
			var buf [64]byte
			n := runtime.Stack(buf[:], false)
			var id uint64
			for _, c := range buf[len("goroutine "):n] {
				if c < '0' || c > '9' {
					break
				}
				id = id*10 + uint64(c-'0')
			}
			ids = append(ids, id)
		}); err != nil {
			t.Fatal(err)
		}
		p.Wait()
	}
	if ids[0] == 0 || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("functions ran on goroutines %v, want one worker reused", ids)
	}
}

// BenchmarkPool measures the pool's own cost per function: admission, the
// hand-off to a kept worker, and the release, with functions that do
// nothing (go test ./pipeline -run '^$' -bench Pool$ -benchmem).
func BenchmarkPool(b *testing.B) {
	p := NewPool(256, 1<<30)
	defer p.Close()
	ctx := context.Background()
	fn := func() {}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Go(ctx, 4096, fn); err != nil {
			b.Fatal(err)
		}
	}
	p.Wait()
}
