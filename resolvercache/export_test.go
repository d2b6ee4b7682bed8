package resolvercache

import "time"

// JoinedForTest reports how many misses have joined an in-flight upstream
// lookup, so tests can release a gated upstream once all have joined.
func (c *Cache) JoinedForTest() int64 { return c.joined.Load() }

// SetQueryIDsForTest replaces the client's source of message IDs. next
// must not return only IDs already used on a socket.
func SetQueryIDsForTest(c *Client, next func() uint16) { c.newID = next }

// ReadersForTest reports how many socket reader goroutines are running.
func ReadersForTest(c *Client) int64 { return c.reading.Load() }

// UDPSocketMaxUses is how many queries a UDP socket carries before it is
// replaced.
const UDPSocketMaxUses = udpSocketMaxUses

// SetSocketMaxAgeForTest shortens the age at which a UDP socket retires.
func SetSocketMaxAgeForTest(c *Client, d time.Duration) { c.maxAge = d }

// FlightsForTest reports how many entries the flights map holds: lookups in
// progress and kept fills.
func (c *Cache) FlightsForTest() int {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	return len(c.flights)
}

// KeptFills is how many filled entries stay in the flights map.
const KeptFills = keptFills

// UDPSocketsForTest reports how many shared UDP sockets the client keeps
// for its first upstream.
func UDPSocketsForTest(c *Client) int { return len(c.upstreams[0].slots) }

// ProbeNowForTest ends the hold-down of every upstream that is down: the
// next lookup probes the first of them.
func ProbeNowForTest(c *Client) {
	for _, u := range c.upstreams {
		if u.down.Load() != 0 {
			u.down.Store(1)
		}
	}
}

// UpstreamDownAfter is how many wire queries in a row must time out or
// fail before an upstream is held down.
const UpstreamDownAfter = upstreamDownAfter
