package resolvercache

// Cached reports whether an unexpired answer (or cached error) for name and
// qtype is in the cache, without asking upstream and without counting a hit
// or a miss. Callers use it to decide whether starting a lookup early is
// worth a goroutine: a lookup that would hit costs nothing to make later.
func (c *Cache) Cached(name string, qtype uint16) bool {
	var buf [maxKey]byte
	n, h, ok := cacheKey(&buf, name, qtype)
	if !ok {
		return false
	}
	e, found := c.rc.Get(h)
	return found && e.qtype == qtype && e.name == string(buf[:n]) && c.clock().Before(e.expires)
}
