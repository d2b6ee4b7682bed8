package resolvercache

// Cached reports whether a lookup of name and qtype made now would be
// answered without a new upstream query: an unexpired answer (or cached
// error) is in the cache, or a lookup of it is already in flight. It asks
// nothing upstream and counts neither a hit nor a miss. Callers use it to
// decide whether starting a lookup early is worth a goroutine: a lookup
// that would hit or join costs nothing to make later.
func (c *Cache) Cached(name string, qtype uint16) bool {
	var buf [maxKey]byte
	n, h, ok := cacheKey(&buf, name, qtype)
	if !ok {
		return false
	}
	if e, found := c.rc.Get(h); found && e.qtype == qtype && e.name == string(buf[:n]) && c.clock().Before(e.expires) {
		return true
	}
	// f.stored is set under fmu when the flight ends: read it there too.
	c.fmu.Lock()
	defer c.fmu.Unlock()
	f := c.flights[string(buf[:n+2])]
	return f != nil && (f.stored == nil || c.clock().Before(f.stored.expires))
}
