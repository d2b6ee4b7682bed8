package reportgen

import (
	"bytes"
	"container/heap"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Rows of a window are stored as sorted runs (a small log-structured merge
// tree inside bbolt): each Merge appends the batch, already sorted and
// de-duplicated, as a new run of chunks, and runs of similar size are merged
// in the same transaction, so every row is rewritten O(log n) times instead
// of rewriting the B+tree pages of every touched row in every batch.
// Closing a window compacts it into one run, whose length is then the exact
// number of distinct rows. Readers merge the runs on the fly, summing the
// counts of equal keys, with one chunk per run in memory.
//
// Bucket rows/<window>: key = run id (8 octets) + chunk index (4 octets),
// value = a chunk: repeated (uvarint key length, key, uvarint count).

// chunkSize is the target size of one stored chunk.
const chunkSize = 64 << 10

// maxRuns bounds the runs of a window: beyond it all runs are merged.
const maxRuns = 64

// RunInfo describes one stored run.
type RunInfo struct {
	ID      uint64 `json:"id"`
	Entries uint64 `json:"entries"`
	Chunks  uint32 `json:"chunks"`
}

func chunkKey(id uint64, idx uint32) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 12), id)
	return binary.BigEndian.AppendUint32(k, idx)
}

type runWriter struct {
	b     *bolt.Bucket
	run   RunInfo
	chunk []byte
}

func newRunWriter(b *bolt.Bucket, id uint64) *runWriter {
	return &runWriter{b: b, run: RunInfo{ID: id}, chunk: make([]byte, 0, chunkSize+1024)}
}

// add appends an entry; callers pass keys in strictly increasing order
// (dedupeSorted input, or mergeRuns output).
func (w *runWriter) add(k []byte, n uint64) error {
	w.chunk = binary.AppendUvarint(w.chunk, uint64(len(k)))
	w.chunk = append(w.chunk, k...)
	w.chunk = binary.AppendUvarint(w.chunk, n)
	w.run.Entries++
	if len(w.chunk) >= chunkSize {
		return w.flush()
	}
	return nil
}

func (w *runWriter) flush() error {
	if len(w.chunk) == 0 {
		return nil
	}
	// bbolt keeps a reference to the value until commit: hand it this
	// chunk and start a new one.
	if err := w.b.Put(chunkKey(w.run.ID, w.run.Chunks), w.chunk); err != nil {
		return err
	}
	w.run.Chunks++
	w.chunk = make([]byte, 0, chunkSize+1024)
	return nil
}

func (w *runWriter) finish() (RunInfo, error) {
	return w.run, w.flush()
}

// runReader iterates one run.
type runReader struct {
	b     *bolt.Bucket
	run   RunInfo
	idx   uint32
	buf   []byte
	copy  bool
	key   []byte
	count uint64
	err   error
}

// next advances; false at the end or on error (see err).
func (r *runReader) next() bool {
	for len(r.buf) == 0 {
		if r.idx >= r.run.Chunks {
			return false
		}
		v := r.b.Get(chunkKey(r.run.ID, r.idx))
		if v == nil {
			r.err = fmt.Errorf("reportgen: run %d chunk %d missing", r.run.ID, r.idx)
			return false
		}
		if r.copy {
			v = bytes.Clone(v)
		}
		r.buf = v
		r.idx++
	}
	kl, n := binary.Uvarint(r.buf)
	if n <= 0 || kl > uint64(len(r.buf)-n) {
		r.err = fmt.Errorf("reportgen: run %d: %w", r.run.ID, ErrBadEncoding)
		return false
	}
	r.key = r.buf[n : n+int(kl)]
	r.buf = r.buf[n+int(kl):]
	c, m := binary.Uvarint(r.buf)
	if m <= 0 {
		r.err = fmt.Errorf("reportgen: run %d: %w", r.run.ID, ErrBadEncoding)
		return false
	}
	r.count = c
	r.buf = r.buf[m:]
	return true
}

type runHeap []*runReader

func (h runHeap) Len() int { return len(h) }
func (h runHeap) Less(i, j int) bool {
	if c := bytes.Compare(h[i].key, h[j].key); c != 0 {
		return c < 0
	}
	return h[i].run.ID < h[j].run.ID
}
func (h runHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)   { *h = append(*h, x.(*runReader)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeRuns calls fn for every distinct key of runs in order with the sum
// of its counts.
func mergeRuns(b *bolt.Bucket, runs []RunInfo, copyChunks bool, fn func(k []byte, n uint64) error) error {
	h := make(runHeap, 0, len(runs))
	for _, ri := range runs {
		r := &runReader{b: b, run: ri, copy: copyChunks}
		if r.next() {
			h = append(h, r)
		} else if r.err != nil {
			return r.err
		}
	}
	heap.Init(&h)
	var cur []byte
	var sum uint64
	have := false
	for h.Len() > 0 {
		r := h[0]
		if have && !bytes.Equal(r.key, cur) {
			if err := fn(cur, sum); err != nil {
				return err
			}
			have = false
		}
		if !have {
			cur, sum, have = r.key, 0, true
		}
		sum += r.count
		if r.next() {
			heap.Fix(&h, 0)
		} else {
			if r.err != nil {
				return r.err
			}
			heap.Pop(&h)
		}
	}
	if have {
		return fn(cur, sum)
	}
	return nil
}

// compactRuns merges runs[from:] into one new run and deletes them.
func compactRuns(b *bolt.Bucket, wi *WindowInfo, from int) error {
	if len(wi.Runs)-from < 2 {
		return nil
	}
	old := wi.Runs[from:]
	w := newRunWriter(b, wi.NextRun)
	wi.NextRun++
	// Chunks are read in place: within a write transaction bbolt changes
	// neither the mapped pages nor values already Put before commit.
	err := mergeRuns(b, old, false, w.add)
	if err != nil {
		return err
	}
	nr, err := w.finish()
	if err != nil {
		return err
	}
	for _, r := range old {
		for i := uint32(0); i < r.Chunks; i++ {
			if err := b.Delete(chunkKey(r.ID, i)); err != nil {
				return err
			}
		}
	}
	wi.Runs = append(wi.Runs[:from], nr)
	return nil
}

// tierFanout is the size-tiered compaction fan-out: when the last
// tierFanout runs are in the same size tier (floor(log8(entries))), they are
// merged into one run of the next tier. Each row is thus rewritten about
// log8(rows/batch) times.
const tierFanout = 8

func tier(n uint64) int {
	t := 0
	for n >= tierFanout {
		n /= tierFanout
		t++
	}
	return t
}

// appendRun writes sorted, de-duplicated rows as a new run and merges runs
// of the same size tier.
func appendRun(b *bolt.Bucket, wi *WindowInfo, rows []RowCount) error {
	if len(rows) == 0 {
		return nil
	}
	w := newRunWriter(b, wi.NextRun)
	wi.NextRun++
	for _, r := range rows {
		if err := w.add(r.Key, r.Count); err != nil {
			return err
		}
	}
	nr, err := w.finish()
	if err != nil {
		return err
	}
	wi.Runs = append(wi.Runs, nr)
	for n := len(wi.Runs); n >= tierFanout && tier(wi.Runs[n-tierFanout].Entries) <= tier(wi.Runs[n-1].Entries); n = len(wi.Runs) {
		if err := compactRuns(b, wi, n-tierFanout); err != nil {
			return err
		}
	}
	if len(wi.Runs) > maxRuns {
		return compactRuns(b, wi, 0)
	}
	return nil
}

// dedupeSorted sorts rows by key and sums duplicates (in place when
// already sorted and unique).
func dedupeSorted(rows []RowCount) []RowCount {
	sorted, unique := true, true
	for i := 1; i < len(rows); i++ {
		c := bytes.Compare(rows[i-1].Key, rows[i].Key)
		if c > 0 {
			sorted = false
			break
		}
		if c == 0 {
			unique = false
		}
	}
	if sorted && unique {
		return rows
	}
	rows = append([]RowCount(nil), rows...)
	if !sorted {
		slices.SortFunc(rows, func(a, b RowCount) int { return bytes.Compare(a.Key, b.Key) })
	}
	out := rows[:0]
	for _, r := range rows {
		if len(out) > 0 && bytes.Equal(out[len(out)-1].Key, r.Key) {
			out[len(out)-1].Count += r.Count
			continue
		}
		out = append(out, r)
	}
	return out
}
