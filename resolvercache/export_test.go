package resolvercache

// JoinedForTest reports how many misses have joined an in-flight upstream
// lookup, so tests can release a gated upstream once all have joined.
func (c *Cache) JoinedForTest() int64 { return c.joined.Load() }
