package pipeline

import (
	"context"
	"sync"
)

// Pool runs functions on goroutines, at most maxN at once and with at most
// maxBytes of declared size at once. Go blocks while either bound is
// reached, which is how the pipeline applies backpressure: while Go blocks,
// nothing is fetched. A single item larger than maxBytes is admitted when
// the pool is otherwise empty, so it cannot block forever.
type Pool struct {
	maxN     int
	maxBytes int64

	mu      sync.Mutex
	n       int
	bytes   int64
	changed chan struct{} // closed and replaced whenever n or bytes drop
	wg      sync.WaitGroup
}

// NewPool returns a pool with the given bounds (each at least 1).
func NewPool(maxN int, maxBytes int64) *Pool {
	return &Pool{maxN: max(maxN, 1), maxBytes: max(maxBytes, 1), changed: make(chan struct{})}
}

// Go runs fn on a new goroutine once a slot and size bytes are free. It
// returns ctx.Err() without running fn if ctx ends first. blocked reports
// whether Go had to wait.
func (p *Pool) Go(ctx context.Context, size int64, fn func()) (blocked bool, err error) {
	for {
		p.mu.Lock()
		if p.n < p.maxN && (p.bytes+size <= p.maxBytes || p.n == 0) {
			p.n++
			p.bytes += size
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.release(size)
				fn()
			}()
			return blocked, nil
		}
		ch := p.changed
		p.mu.Unlock()
		blocked = true
		select {
		case <-ch:
		case <-ctx.Done():
			return blocked, ctx.Err()
		}
	}
}

func (p *Pool) release(size int64) {
	p.mu.Lock()
	p.n--
	p.bytes -= size
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.wg.Done()
}

// InFlight returns the number and bytes of running functions.
func (p *Pool) InFlight() (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.bytes
}

// Wait blocks until every function started by Go has returned.
func (p *Pool) Wait() { p.wg.Wait() }
