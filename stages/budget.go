package stages

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// budgetCtx is the context a message is verified under: its parent, ended
// at the engine's DNS budget as context.WithDeadline would end it, but
// without a timer until something waits on it.
//
// Why: context.WithTimeout starts a runtime timer on every message and
// stops it when Verify returns, for a deadline that only a DNS wait can
// reach; a warm message asks nothing upstream and never waits. In a
// BenchmarkPipelineVsEngine profile the timer's start (context.WithDeadline)
// and its cancel took 3.6% of the pipeline's CPU, about 2.5 µs a message.
// Measured with scripts/benchab -n 8 (the builds before and after,
// interleaved): the pipeline's CPU a message, median, from 71.7 to 62.5
// µs, lower in 7 of 8 pairs, a larger gain than the profile accounts for
// but within the runs' spread (±11–14%); the engine alone from 44.8 to
// 42.8 µs (not significant); BenchmarkEngineTypical (-cpu 1, one message
// at a time) unchanged, 45.6 and 46.1 µs, with 43 allocations instead of
// 46.
//
// Here the first Done (a lookup that selects on it, or a context derived
// from this one) starts the real context.WithDeadline; until then Err
// compares the clock against the deadline itself, so the deadline holds
// for callers that only poll Err (SPF's evaluator checks Err before each
// lookup).
//
// The semantics are WithDeadline's: Deadline is the earlier of the budget
// and the parent's; Err is nil, then context.DeadlineExceeded or the
// parent's error (context.Canceled after cancel); Done, once asked for,
// closes when Err turns non-nil. Value goes to the armed context once there
// is one (context.Cause finds its cancel cause there), else to the parent.
type budgetCtx struct {
	parent   context.Context
	deadline time.Time // the budget's end, before taking the parent's into account

	once     sync.Once
	armed    atomic.Pointer[armedCtx] // set once, by arm
	canceled atomic.Bool              // cancel ran; an arm after it starts out canceled
}

type armedCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// withBudget returns ctx limited to d from now, as context.WithTimeout(ctx,
// d) does; the caller calls its cancel method when done. (A CancelFunc
// would be one more allocation a message.)
func withBudget(ctx context.Context, d time.Duration) *budgetCtx {
	return &budgetCtx{parent: ctx, deadline: time.Now().Add(d)}
}

func (c *budgetCtx) Deadline() (time.Time, bool) {
	if pd, ok := c.parent.Deadline(); ok && pd.Before(c.deadline) {
		return pd, true
	}
	return c.deadline, true
}

// arm starts the real context, once, and returns it.
func (c *budgetCtx) arm() context.Context {
	c.once.Do(func() {
		ctx, cancel := context.WithDeadline(c.parent, c.deadline)
		c.armed.Store(&armedCtx{ctx, cancel})
		// cancel stores canceled before it loads armed, and arm the other
		// way round: whichever runs second sees the other's store.
		if c.canceled.Load() {
			cancel()
		}
	})
	return c.armed.Load().ctx
}

// ended reports whether the context, not yet armed, has ended: canceled,
// past its deadline, or its parent ended.
func (c *budgetCtx) ended() bool {
	return c.canceled.Load() || c.parent.Err() != nil || !time.Now().Before(c.deadline)
}

func (c *budgetCtx) Done() <-chan struct{} { return c.arm().Done() }

func (c *budgetCtx) Err() error {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Err()
	}
	if c.ended() {
		// From here the armed context decides, so that Err, Done and
		// context.Cause agree: WithDeadline ends at once on a past deadline.
		return c.arm().Err()
	}
	return nil
}

func (c *budgetCtx) Value(key any) any {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Value(key)
	}
	if c.ended() {
		// context.Cause reads the cancel cause through Value.
		return c.arm().Value(key)
	}
	return c.parent.Value(key)
}

// cancel ends the context with context.Canceled (unless it ended before)
// and stops the timer if one was started.
func (c *budgetCtx) cancel() {
	c.canceled.Store(true)
	if a := c.armed.Load(); a != nil {
		a.cancel()
	}
}

func (c *budgetCtx) String() string { return "stages.budgetCtx" }
