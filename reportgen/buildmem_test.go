package reportgen

import (
	"io"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// peakHeapDuring runs fn while sampling the live heap objects
// (runtime/metrics) every millisecond, and returns the largest sample over
// the heap before fn. A GC runs first so the baseline is the live heap.
func peakHeapDuring(fn func()) int64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() int64 { metrics.Read(s); return int64(s[0].Value.Uint64()) }
	base := read()
	var peak int64
	stop, done := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			v := read()
			mu.Lock()
			peak = max(peak, v)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(stop)
	<-done
	return peak - base
}

// TestBuildDMARCMemoryBounded: building a report streams its rows from the
// store, so the heap it needs does not grow with the number of rows. A
// report of 100,000 rows and one of 10,000 rows are built with the
// collector forced to run often (GOGC 10), and the peak heap of the larger
// must stay within a fixed allowance of the smaller's.
func TestBuildDMARCMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 100,000-row report")
	}
	peak := map[int]int64{}
	for _, rows := range []int{10000, 100000} {
		now := testDay
		s := openTestStore(t, &now)
		for _, p := range benchPartials(1, rows, rows) {
			if _, err := s.Merge(p, nil); err != nil {
				t.Fatal(err)
			}
		}
		w := Window{"example.com", DayOf(testDay)}
		wi, err := s.WindowInfo(KindDMARC, w)
		if err != nil || wi.Rows != uint64(rows) {
			t.Fatalf("window: %v rows %d", err, wi.Rows)
		}
		var built []ReportFile
		old := debug.SetGCPercent(10)
		peak[rows] = peakHeapDuring(func() {
			built, err = BuildDMARC(s, w, wi.Policy, testCfg, func(ReportFile) (io.Writer, error) { return io.Discard, nil })
		})
		debug.SetGCPercent(old)
		if err != nil || len(built) != 1 || uint64(built[0].Rows) != uint64(rows) {
			t.Fatalf("build: %v %+v", err, built)
		}
		t.Logf("%d rows: peak heap over the baseline %.1f MiB", rows, float64(peak[rows])/(1<<20))
	}
	const allowance = 8 << 20
	if peak[100000] > peak[10000]+allowance {
		t.Errorf("peak heap grows with the rows: %d rows %d bytes, %d rows %d bytes", 10000, peak[10000], 100000, peak[100000])
	}
}
