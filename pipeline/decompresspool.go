package pipeline

import (
	"encoding/binary"
	"math/bits"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// decompressPool lends the Kafka client the buffers it decompresses
// fetched record batches into (kgo.PoolDecompressBytes), so that a batch's
// buffer is used again once every record in it is recycled
// (kgo.Record.Recycle, which handle calls once a record's output is
// produced).
//
// Without it each batch got a fresh buffer (about 1 MB for 200 messages
// of 4–5 KB), which the collector freed only once every record of the
// batch was done; with the heap in that churn the runtime kept handing
// pages back to the kernel and faulting new ones in (2–3 µs a page on this
// VM), and zeroing them.
//
// Buffers are kept by size class (powers of two), up to maxBytes in all;
// more are left to the collector.
type decompressPool struct {
	mu       sync.Mutex
	free     [decompressClasses][][]byte
	bytes    int64
	maxBytes int64
	reused   int64 // buffers handed out again, for tests
}

const (
	decompressMinClass = 16 // 64 KiB
	decompressClasses  = 31 // up to 1 GiB
)

func newDecompressPool(maxBytes int64) *decompressPool {
	return &decompressPool{maxBytes: maxBytes}
}

// GetDecompressBytes returns an empty buffer for compressed's contents:
// at least their decoded length for snappy (its block format starts with
// it), four times their length otherwise (the codec grows it if need be).
func (p *decompressPool) GetDecompressBytes(compressed []byte, codec kgo.CompressionCodecType) []byte {
	want := max(uint64(len(compressed))*4, 1)
	if codec == kgo.CodecSnappy {
		if n, k := binary.Uvarint(compressed); k > 0 && n >= uint64(len(compressed)) {
			want = n
		}
	}
	c := max(bits.Len64(want-1), decompressMinClass) // ceiling log2
	if c >= decompressClasses {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Its own class, or the next (at most twice the size needed): batches
	// of one producer vary around a size, and may fall either side of a
	// power of two.
	for k := c; k <= c+1 && k < decompressClasses; k++ {
		if l := len(p.free[k]); l > 0 {
			b := p.free[k][l-1]
			p.free[k] = p.free[k][:l-1]
			p.bytes -= int64(cap(b))
			p.reused++
			return b[:0]
		}
	}
	return make([]byte, 0, 1<<c)
}

// PutDecompressBytes takes b back (the client has zeroed it), unless the
// pool is full.
func (p *decompressPool) PutDecompressBytes(b []byte) {
	c := bits.Len(uint(cap(b))) - 1 // floor log2: the class whose size b holds
	if c < decompressMinClass || c >= decompressClasses {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+int64(cap(b)) > p.maxBytes {
		return
	}
	p.free[c] = append(p.free[c], b)
	p.bytes += int64(cap(b))
}

// reuses returns how many buffers the pool has handed out again.
func (p *decompressPool) reuses() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reused
}
