package stages

import (
	"sync/atomic"
	"time"
)

// helpers runs the work Verify starts beside DKIM on reused goroutines: ARC
// when there is a chain, and, when the resolver cannot ask without waiting
// (a prefetcher, or one with no in-flight slot free), SPF and the lookups
// started early (DMARC's first, the keys of later DKIM signatures and ARC
// sets). SPF evaluation needs a stack of
// several KiB; a fresh goroutine starts with 2 KiB and copies its stack as
// it grows, which cost 4–7% of a typical message's CPU. A helper that
// finished waits up to helperIdle for the next function, so the stack it
// grew serves the following messages.
//
// There is no fixed pool size: a function that finds no idle helper gets a
// new one, so helpers never make Verify wait, and their number follows the
// number of messages verified at once (bounded by the caller's in-flight
// limit).
type helpers struct {
	work    chan func() // unbuffered: a send succeeds only into an idle helper
	idle    time.Duration
	started atomic.Int64 // helpers ever started
	alive   atomic.Int64 // helpers running or idle now
}

// helperIdle is how long an idle helper waits for work before it exits.
const helperIdle = 10 * time.Second

func newHelpers(idle time.Duration) *helpers {
	return &helpers{work: make(chan func()), idle: idle}
}

// Go runs f on an idle helper, or on a new one.
func (h *helpers) Go(f func()) {
	select {
	case h.work <- f:
	default:
		h.started.Add(1)
		h.alive.Add(1)
		go h.loop(f)
	}
}

func (h *helpers) loop(f func()) {
	defer h.alive.Add(-1)
	idle := time.NewTimer(h.idle)
	defer idle.Stop()
	for {
		f()
		f = nil // do not keep the last message's closure alive while idle
		idle.Reset(h.idle)
		select {
		case f = <-h.work:
		case <-idle.C:
			return
		}
	}
}
