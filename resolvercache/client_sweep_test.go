package resolvercache_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// TestClientTimeoutsSwept: queries time out through the sweeper rather
// than timers of their own. Many unanswered queries over the shared
// sockets all end with KindTimeout, none before its timeout and none much
// after (the sweeper is at most 1 ms late; the bound here leaves room for
// a loaded machine and the race detector); a second round, after the
// sweeper has gone idle, times out as well.
func TestClientTimeoutsSwept(t *testing.T) {
	const (
		n       = 40
		timeout = 100 * time.Millisecond
		slack   = 150 * time.Millisecond
	)
	s := startServer(t)
	for i := range n {
		s.AddTimeout(fmt.Sprintf("s%d.slow.example", i))
	}
	c := clientFor(t, s, resolvercache.WithTimeout(timeout), resolvercache.WithRetries(0))
	for round := range 2 {
		var wg sync.WaitGroup
		late := make([]time.Duration, n)
		for i := range n {
			wg.Go(func() {
				start := time.Now()
				_, err := c.Lookup(context.Background(), fmt.Sprintf("s%d.slow.example", i), dns.TypeTXT)
				d := time.Since(start)
				if kindOf(err) != resolvercache.KindTimeout {
					t.Errorf("round %d, query %d: %v, want a timeout", round, i, err)
				}
				if d < timeout || d > timeout+slack {
					t.Errorf("round %d, query %d: timed out after %v, want %v to %v", round, i, d, timeout, timeout+slack)
				}
				late[i] = d - timeout
			})
		}
		wg.Wait()
		t.Logf("round %d: late by up to %v", round, slices.Max(late))
		time.Sleep(2 * timeout) // the sweeper goes idle
	}
}
