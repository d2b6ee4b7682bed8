package reportgen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestAggregateMergeCounts(t *testing.T) {
	now := testDay.Add(3 * time.Hour)
	s := openTestStore(t, &now)
	a := NewAggregator()
	want := map[string]uint64{}
	for i := 0; i < 5000; i++ {
		v := mkVerdict(i, testDay.Add(time.Duration(i)*time.Second))
		if err := a.Add(v); err != nil {
			t.Fatal(err)
		}
		k, _ := RowKeyOf(v)
		want[string(k.AppendBinary(nil))]++
	}
	parts := a.Flush()
	if len(parts) != 1 || parts[0].Messages != 5000 {
		t.Fatalf("partials %d", len(parts))
	}
	// Round trip the Kafka encoding.
	var got PartialAggregate
	b, _ := parts[0].MarshalBinary()
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	t.Logf("partial: %d rows, %d octets encoded", len(got.Rows), len(b))
	res, err := s.Merge([]PartialAggregate{got}, []Offset{{Topic: "authpipe.aggregates", Partition: 0, Next: 10}})
	if err != nil || !res.Applied {
		t.Fatal(err, res)
	}
	// Replay of the same batch and offsets: skipped.
	res, err = s.Merge([]PartialAggregate{got}, []Offset{{Topic: "authpipe.aggregates", Partition: 0, Next: 10}})
	if err != nil || res.Applied {
		t.Fatalf("replay applied: %v %+v", err, res)
	}
	// A second, fresh batch doubles every count.
	if _, err := s.Merge([]PartialAggregate{got}, []Offset{{Topic: "authpipe.aggregates", Partition: 0, Next: 20}}); err != nil {
		t.Fatal(err)
	}
	// A batch mixing a replayed and a new partition is refused.
	_, err = s.Merge([]PartialAggregate{got}, []Offset{{Topic: "authpipe.aggregates", Partition: 0, Next: 20}, {Topic: "authpipe.aggregates", Partition: 1, Next: 5}})
	if !errors.Is(err, ErrMixedReplay) {
		t.Fatalf("mixed replay: %v", err)
	}
	w := Window{Domain: "example.com", Day: DayOf(testDay)}
	n := 0
	err = s.ForEachRow(w, func(r Row) error {
		k := string(r.RowKey.AppendBinary(nil))
		if r.Count != 2*want[k] {
			return fmt.Errorf("row %+v: count %d want %d", r.RowKey, r.Count, 2*want[k])
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("rows %d want %d", n, len(want))
	}
	wi, _ := s.WindowInfo(KindDMARC, w)
	if wi.Messages != 10000 || wi.Rows < uint64(len(want)) || wi.State != StateOpen {
		t.Fatalf("window %+v", wi)
	}
	// Closing compacts the runs: Rows is then exact.
	if err := s.CloseWindow(KindDMARC, w); err != nil {
		t.Fatal(err)
	}
	wi, _ = s.WindowInfo(KindDMARC, w)
	if wi.Rows != uint64(len(want)) || len(wi.Runs) != 1 || wi.State != StateClosed {
		t.Fatalf("closed window %+v", wi)
	}
	offs, _ := s.Offsets()
	if len(offs) != 1 || offs[0].Next != 20 {
		t.Fatalf("offsets %+v", offs)
	}
	t.Logf("%d distinct rows, counts verified", n)
}

// TestRunsRandomized merges random batches (duplicates, unsorted, many
// runs and compactions) and compares the store with an in-memory count.
func TestRunsRandomized(t *testing.T) {
	now := testDay
	s := openTestStore(t, &now)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]uint64{}
	w := Window{"example.com", DayOf(testDay)}
	check := func() {
		t.Helper()
		n := 0
		var prev []byte
		err := s.forEachRaw(KindDMARC, w, func(k []byte, c uint64) error {
			if prev != nil && string(prev) >= string(k) {
				return fmt.Errorf("order")
			}
			prev = append(prev[:0], k...)
			if want[string(k)] != c {
				return fmt.Errorf("key %q: %d want %d", k, c, want[string(k)])
			}
			n++
			return nil
		})
		if err != nil || n != len(want) {
			t.Fatalf("%v: %d keys want %d", err, n, len(want))
		}
	}
	for batch := 0; batch < 120; batch++ {
		size := 1 + rng.IntN(300)
		rows := make([]RowCount, size)
		for i := range rows {
			k := []byte{1, byte(rng.IntN(40)), byte(rng.IntN(40))}
			c := uint64(1 + rng.IntN(5))
			rows[i] = RowCount{Key: k, Count: c}
			want[string(k)] += c
		}
		if _, err := s.Merge([]PartialAggregate{{Window: w, Rows: rows}}, nil); err != nil {
			t.Fatal(err)
		}
		if batch%17 == 0 {
			check()
		}
	}
	check()
	wi, _ := s.WindowInfo(KindDMARC, w)
	t.Logf("%d runs before close", len(wi.Runs))
	s.CloseWindow(KindDMARC, w)
	check()
	wi, _ = s.WindowInfo(KindDMARC, w)
	if len(wi.Runs) != 1 || wi.Rows != uint64(len(want)) {
		t.Fatalf("%+v", wi)
	}
}

func TestWindowClosing(t *testing.T) {
	now := testDay.Add(23 * time.Hour)
	s := openTestStore(t, &now)
	a := NewAggregator()
	a.Add(mkVerdict(1, testDay.Add(time.Hour)))
	if _, err := s.Merge(a.Flush(), nil); err != nil {
		t.Fatal(err)
	}
	w := Window{"example.com", DayOf(testDay)}
	for _, c := range []struct {
		at     time.Time
		closed bool
	}{
		{testDay.Add(24 * time.Hour), false},                 // midnight
		{testDay.Add(25*time.Hour - time.Nanosecond), false}, // inside grace
		{testDay.Add(25 * time.Hour), true},                  // grace over
	} {
		now = c.at
		if _, err := s.CloseDue(); err != nil {
			t.Fatal(err)
		}
		wi, _ := s.WindowInfo(KindDMARC, w)
		if (wi.State == StateClosed) != c.closed {
			t.Fatalf("at %v state %s", c.at, wi.State)
		}
	}
	// A late event for the closed day is counted, not merged.
	a.Add(mkVerdict(2, testDay.Add(2*time.Hour)))
	res, err := s.Merge(a.Flush(), nil)
	if err != nil || res.Late != 1 {
		t.Fatal(err, res)
	}
	wi, _ := s.WindowInfo(KindDMARC, w)
	if wi.Late != 1 || wi.Messages != 1 {
		t.Fatalf("%+v", wi)
	}
}

// TestMergeBeyondMarkerHorizon: partials for a day whose window would have
// closed more than MarkerTTL ago, with no window stored (its done marker
// pruned, or it never had one: mail re-scored from an archive), are counted
// late and open no window, so the day is not reported again; a day inside
// the horizon with no window (a replay after a partition move) is merged.
func TestMergeBeyondMarkerHorizon(t *testing.T) {
	now := testDay.Add(40 * 24 * time.Hour)
	s := openTestStore(t, &now)
	a := NewAggregator()
	old := testDay                             // closed 39 days ago: beyond 30
	recent := testDay.Add(20 * 24 * time.Hour) // closed 19 days ago: inside
	a.Add(mkVerdict(1, old.Add(time.Hour)))
	a.Add(mkVerdict(2, old.Add(2*time.Hour)))
	a.Add(mkVerdict(3, recent.Add(time.Hour)))
	res, err := s.Merge(a.Flush(), nil)
	if err != nil || res.Late != 2 || res.LatePartials != 1 || len(res.LateWindows) != 1 || res.LateWindows[0].Day != DayOf(old) {
		t.Fatalf("merge: %v %+v", err, res)
	}
	if wi, err := s.WindowInfo(KindDMARC, Window{"example.com", DayOf(old)}); err != nil || wi != nil {
		t.Fatalf("window beyond the horizon stored: %+v %v", wi, err)
	}
	if wi, err := s.WindowInfo(KindDMARC, Window{"example.com", DayOf(recent)}); err != nil || wi == nil || wi.Messages != 1 {
		t.Fatalf("window inside the horizon: %+v %v", wi, err)
	}
	// Nothing due to report from the old day; the recent one closes.
	closed, err := s.CloseDue()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range closed {
		if w.Day == DayOf(old) {
			t.Fatalf("the old day closed for a report: %+v", closed)
		}
	}
}

func TestPartialDecodeBad(t *testing.T) {
	a := NewAggregator()
	a.Add(mkVerdict(1, testDay))
	b, _ := a.Flush()[0].MarshalBinary()
	for i := 0; i < len(b); i++ {
		var p PartialAggregate
		if err := p.UnmarshalBinary(b[:i]); err == nil {
			t.Fatalf("truncated at %d accepted", i)
		}
	}
}

func FuzzPartialAggregate(f *testing.F) {
	a := NewAggregator()
	for i := 0; i < 20; i++ {
		a.Add(mkVerdict(i, testDay))
	}
	b, _ := a.Flush()[0].MarshalBinary()
	f.Add(b)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var p PartialAggregate
		if err := p.UnmarshalBinary(data); err != nil {
			return
		}
		out, _ := p.MarshalBinary()
		var q PartialAggregate
		if err := q.UnmarshalBinary(out); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// benchPartials builds batches of distinct rows spread over a few windows.
func benchPartials(batches, rowsPerBatch, distinct int) [][]PartialAggregate {
	out := make([][]PartialAggregate, batches)
	for b := range out {
		a := NewAggregator()
		for i := 0; i < rowsPerBatch; i++ {
			n := (b*rowsPerBatch + i) % distinct
			v := mkVerdict(n, testDay)
			v.Envelope.ClientIP = fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)
			a.Add(v)
		}
		out[b] = a.Flush()
	}
	return out
}

// BenchmarkStoreMerge merges batches of partial aggregates into the bbolt
// store: batches of 10,000 and 100,000 rows into a window of 200,000
// distinct rows, each batch one fsynced transaction with its offsets.
func BenchmarkStoreMerge(b *testing.B) {
	for _, size := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) { benchMerge(b, size, 200000) })
	}
}

func benchMerge(b *testing.B, size, distinct int) {
	now := testDay
	s := openTestStore(b, &now)
	batches := benchPartials(max(2, 2*distinct/size), size, distinct)
	b.ReportAllocs()
	b.ResetTimer()
	rows := 0
	for i := 0; i < b.N; i++ {
		res, err := s.Merge(batches[i%len(batches)], []Offset{{Topic: "t", Partition: 0, Next: int64(i + 1)}})
		if err != nil {
			b.Fatal(err)
		}
		rows += res.Rows
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

// TestOpenStoreLocked: a second process (here: a second handle) gets a
// clear error, ErrStoreLocked, after the lock wait instead of hanging, since
// bbolt locks the file; once the first closes, the store opens.
func TestOpenStoreLocked(t *testing.T) {
	dir := t.TempDir()
	now := func() time.Time { return time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC) }
	s, err := OpenStore(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenStore(dir, now, WithLockWait(50*time.Millisecond))
	if !errors.Is(err, ErrStoreLocked) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
	s.Close()
	s, err = OpenStore(dir, now, WithLockWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s.Close()
}

// TestNoteBuildFailure: a failed build is counted on its window with its
// error cut to maxBuildError bytes of valid UTF-8; a window gone is left
// gone.
func TestNoteBuildFailure(t *testing.T) {
	s, err := OpenStore(t.TempDir(), func() time.Time { return time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := NewAggregator()
	if err := a.Add(mkVerdict(1, time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC))); err != nil {
		t.Fatal(err)
	}
	parts := a.Flush()
	if _, err := s.Merge(parts, nil); err != nil {
		t.Fatal(err)
	}
	w := parts[0].Window
	long := errors.New(strings.Repeat("é", maxBuildError)) // 2 bytes each: the cut falls inside one
	for range 2 {
		if err := s.noteBuildFailure(KindDMARC, w, long); err != nil {
			t.Fatal(err)
		}
	}
	wi, err := s.WindowInfo(KindDMARC, w)
	if err != nil || wi == nil || wi.BuildFailures != 2 || len(wi.BuildError) > maxBuildError+len("…") || !utf8.ValidString(wi.BuildError) ||
		!strings.HasSuffix(wi.BuildError, "é…") {
		t.Fatalf("%+v %v", wi, err)
	}
	gone := Window{Domain: "gone.example", Day: w.Day}
	if err := s.noteBuildFailure(KindDMARC, gone, long); err != nil {
		t.Fatalf("window gone: %v", err)
	}
	if wi, err := s.WindowInfo(KindDMARC, gone); wi != nil || err != nil {
		t.Fatalf("window gone, now %+v %v", wi, err)
	}
}
