package resolvercache

// Prefetch starts a lookup of name and type that the caller will need
// soon but does not wait for, unless the answer is cached or already being
// asked, and reports whether the answer is now cached or on its way. The
// query goes out on the caller's goroutine and its reply is cached by the
// socket's reader, as a query left running is (Client.leave), so no
// goroutine waits for it; a Lookup of the name meanwhile joins it. It
// starts nothing, and reports false, when the upstream is not the Client
// this cache is in front of, or that Client has no in-flight slot free: a
// caller that must have the name asked early then looks it up itself. The
// query is bounded as any lookup's: the client's timeout and retries, and
// its MaxInFlight slots.
func (c *Cache) Prefetch(name string, qtype uint16) bool {
	var buf [maxKey]byte
	n, h, ok := cacheKey(&buf, name, qtype)
	if !ok {
		return false
	}
	if e, found := c.rc.Get(h); found && e.qtype == qtype && e.name == string(buf[:n]) &&
		c.clock().Before(e.expires) {
		return true
	}
	cl, ok := c.up.(*Client)
	if !ok || cl.late.Load() != c {
		return false
	}
	key := string(buf[:n+2])
	c.fmu.Lock()
	if f := c.flights[key]; f != nil {
		if e := f.stored; e == nil || c.clock().Before(e.expires) {
			c.fmu.Unlock() // asked already, or a kept fill
			return true
		}
		delete(c.flights, key) // an expired kept fill: ask again
	}
	// No leader: the flight ends when the query settles (settled).
	f := &flight{orphan: true, leaderGone: true}
	c.flights[key] = f
	c.fmu.Unlock()
	if cl.start(key[:n], qtype) {
		c.metrics.cacheMiss(false)
		return true
	}
	c.fmu.Lock()
	var done chan struct{}
	if c.flights[key] == f && f.stored == nil {
		f.abandoned = true // those who joined ask again
		done = c.endLocked(key, f, fillResult{}, nil)
	}
	c.fmu.Unlock()
	if done != nil {
		close(done)
	}
	return false
}
