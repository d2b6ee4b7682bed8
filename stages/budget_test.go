package stages

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestBudgetCtx holds budgetCtx to context.WithTimeout's behaviour, and
// checks that only waiting starts a timer.
func TestBudgetCtx(t *testing.T) {
	errParent := errors.New("parent's cause")

	t.Run("polling does not arm", func(t *testing.T) {
		c := withBudget(context.Background(), time.Hour)
		defer c.cancel()
		if err := c.Err(); err != nil {
			t.Fatalf("Err = %v", err)
		}
		if v := c.Value(t); v != nil {
			t.Fatalf("Value = %v", v)
		}
		if d, ok := c.Deadline(); !ok || time.Until(d) < 59*time.Minute {
			t.Fatalf("Deadline = %v %v", d, ok)
		}
		if c.armed.Load() != nil {
			t.Fatal("Err, Value or Deadline started a timer")
		}
		select {
		case <-c.Done():
			t.Fatal("Done closed early")
		default:
		}
		if c.armed.Load() == nil {
			t.Fatal("Done did not arm")
		}
	})

	t.Run("past deadline, polled", func(t *testing.T) {
		c := withBudget(context.Background(), -time.Second)
		defer c.cancel()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err = %v", err)
		}
		if err := context.Cause(c); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Cause = %v", err)
		}
		<-c.Done()
	})

	t.Run("deadline reached while waiting", func(t *testing.T) {
		c := withBudget(context.Background(), 20*time.Millisecond)
		defer c.cancel()
		<-c.Done()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err = %v", err)
		}
	})

	t.Run("deadline reached, never waited on", func(t *testing.T) {
		c := withBudget(context.Background(), time.Millisecond)
		defer c.cancel()
		for c.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err = %v", err)
		}
		<-c.Done()
	})

	t.Run("canceled before armed", func(t *testing.T) {
		c := withBudget(context.Background(), time.Hour)
		c.cancel()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err = %v", err)
		}
		<-c.Done()
		c.cancel() // twice is fine
	})

	t.Run("canceled after armed", func(t *testing.T) {
		c := withBudget(context.Background(), time.Hour)
		done := c.Done()
		c.cancel()
		<-done
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err = %v", err)
		}
	})

	t.Run("parent ends", func(t *testing.T) {
		parent, pcancel := context.WithCancelCause(context.Background())
		c := withBudget(parent, time.Hour)
		defer c.cancel()
		pcancel(errParent)
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err = %v", err)
		}
		if err := context.Cause(c); !errors.Is(err, errParent) {
			t.Fatalf("Cause = %v", err)
		}
		<-c.Done()
	})

	t.Run("parent ends while waiting", func(t *testing.T) {
		parent, pcancel := context.WithCancel(context.Background())
		c := withBudget(parent, time.Hour)
		defer c.cancel()
		done := c.Done()
		pcancel()
		<-done
	})

	t.Run("parent's earlier deadline", func(t *testing.T) {
		pd := time.Now().Add(time.Minute)
		parent, pcancel := context.WithDeadline(context.Background(), pd)
		defer pcancel()
		c := withBudget(parent, time.Hour)
		defer c.cancel()
		if d, _ := c.Deadline(); !d.Equal(pd) {
			t.Fatalf("Deadline = %v, want %v", d, pd)
		}
	})

	t.Run("values", func(t *testing.T) {
		type key struct{}
		parent := context.WithValue(context.Background(), key{}, "v")
		c := withBudget(parent, time.Hour)
		defer c.cancel()
		if c.Value(key{}) != "v" {
			t.Fatal("value lost before arming")
		}
		c.Done()
		if c.Value(key{}) != "v" {
			t.Fatal("value lost after arming")
		}
	})

	t.Run("derived context ends with it", func(t *testing.T) {
		c := withBudget(context.Background(), time.Hour)
		child, ccancel := context.WithCancel(c)
		defer ccancel()
		c.cancel()
		<-child.Done()
		if err := child.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("child Err = %v", err)
		}
	})

	t.Run("concurrent arm and cancel", func(t *testing.T) {
		for range 200 {
			c := withBudget(context.Background(), time.Hour)
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() { <-c.Done() })
			}
			wg.Go(func() { _ = c.Err(); _ = c.Value(t) })
			wg.Go(c.cancel)
			wg.Wait() // every waiter returns: cancel reached the armed context
			if err := c.Err(); !errors.Is(err, context.Canceled) {
				t.Fatalf("Err = %v", err)
			}
		}
	})
}

// BenchmarkBudgetCtx compares a message's DNS budget as a timer
// (context.WithTimeout) with budgetCtx when nothing waits on it (a warm
// message) and when a lookup does.
func BenchmarkBudgetCtx(b *testing.B) {
	const d = 10 * time.Second
	for _, v := range []struct {
		name string
		op   func()
	}{
		{"WithTimeout", func() {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			_ = ctx.Err()
			cancel()
		}},
		{"budget-polled", func() {
			ctx := withBudget(context.Background(), d)
			_ = ctx.Err()
			ctx.cancel()
		}},
		{"budget-waited", func() {
			ctx := withBudget(context.Background(), d)
			_ = ctx.Done()
			ctx.cancel()
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v.op()
			}
		})
	}
}
