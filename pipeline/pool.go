package pipeline

import (
	"context"
	"sync"
	"time"
)

// Pool runs functions on worker goroutines, at most maxN at once and with at
// most maxBytes of declared size at once. Go blocks while either bound is
// reached, which is how the pipeline applies backpressure: while Go blocks,
// nothing is fetched. A single item larger than maxBytes is admitted when
// the pool is otherwise empty, so it cannot block forever.
//
// Workers are kept between functions (at most maxN of them; one leaves after
// workerIdle without work, and Close stops them all). A fresh goroutine per
// message started on a 8 KiB stack and grew it through the engine's RSA path
// for every message: 10–12% of the pipeline's CPU went to runtime.newstack
// and copystack. A kept worker keeps its grown stack.
type Pool struct {
	maxN     int
	maxBytes int64

	mu      sync.Mutex
	n       int
	bytes   int64
	workers int           // live worker goroutines, at most maxN
	idle    int           // workers waiting for a task and not yet claimed
	changed chan struct{} // closed and replaced when n or bytes drop while blocked > 0
	blocked int           // callers of Go waiting on changed
	closed  bool
	wg      sync.WaitGroup

	tasks chan task     // capacity maxN; a task is queued only for a claimed idle worker
	quit  chan struct{} // closed by Close
}

type task struct {
	fn   func()
	size int64
}

// workerIdle is how long a worker waits for work before it exits.
const workerIdle = 30 * time.Second

// NewPool returns a pool with the given bounds (each at least 1).
func NewPool(maxN int, maxBytes int64) *Pool {
	return &Pool{
		maxN: max(maxN, 1), maxBytes: max(maxBytes, 1),
		changed: make(chan struct{}), tasks: make(chan task, max(maxN, 1)), quit: make(chan struct{}),
	}
}

// Go runs fn on a worker once a slot and size bytes are free. It returns
// ctx.Err() without running fn if ctx ends first. blocked reports whether Go
// had to wait. After Close, fn runs on a goroutine of its own.
func (p *Pool) Go(ctx context.Context, size int64, fn func()) (blocked bool, err error) {
	for {
		p.mu.Lock()
		if p.n < p.maxN && (p.bytes+size <= p.maxBytes || p.n == 0) {
			p.n++
			p.bytes += size
			p.wg.Add(1)
			t := task{fn: fn, size: size}
			switch {
			case p.idle > 0:
				// Claim an idle worker. The queue holds at most maxN
				// tasks (one per admitted function), so this never blocks.
				p.idle--
				p.tasks <- t
			case !p.closed:
				p.workers++
				go p.work(t)
			default:
				go p.run(t, false)
			}
			p.mu.Unlock()
			return blocked, nil
		}
		ch := p.changed
		p.blocked++
		p.mu.Unlock()
		blocked = true
		select {
		case <-ch:
		case <-ctx.Done():
			p.mu.Lock()
			if p.changed == ch { // else release has counted us out
				p.blocked--
			}
			p.mu.Unlock()
			return blocked, ctx.Err()
		}
	}
}

// work runs t, then further tasks, until it has been idle for workerIdle or
// the pool is closed.
func (p *Pool) work(t task) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		p.run(t, true)
		idle.Reset(workerIdle)
		select {
		case t = <-p.tasks: // the sender took us off the idle count
			continue
		case <-idle.C:
		case <-p.quit:
		}
		// Leave, unless a task was queued for an idle worker meanwhile
		// (the queue is checked under the lock the senders hold).
		p.mu.Lock()
		select {
		case t = <-p.tasks:
			p.mu.Unlock()
			continue
		default:
		}
		p.idle--
		p.workers--
		p.mu.Unlock()
		return
	}
}

// run runs t and frees its slot; a worker turns idle in the same step, so
// live workers are always busy (n) plus idle: never more than maxN.
func (p *Pool) run(t task, worker bool) {
	defer p.release(t.size, worker)
	t.fn()
}

func (p *Pool) release(size int64, worker bool) {
	p.mu.Lock()
	p.n--
	p.bytes -= size
	if worker {
		p.idle++
	}
	// A new channel only when someone waits on the old one: in the
	// pipeline's profile, making one a message cost 1.5% of its CPU.
	if p.blocked > 0 {
		close(p.changed)
		p.changed = make(chan struct{})
		p.blocked = 0
	}
	p.mu.Unlock()
	p.wg.Done()
}

// InFlight returns the number and bytes of running functions.
func (p *Pool) InFlight() (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.bytes
}

// Workers returns the number of live worker goroutines (at most maxN).
func (p *Pool) Workers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.workers
}

// Wait blocks until every function started by Go has returned.
func (p *Pool) Wait() { p.wg.Wait() }

// Close lets idle workers exit and busy ones exit after their function. It
// does not wait; use Wait for that.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.quit)
	}
}
