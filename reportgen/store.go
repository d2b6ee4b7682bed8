package reportgen

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Window states, in order. A window is open until its UTC day ended more
// than Grace ago; closed windows wait for their reports to be built into the
// outbox (built); once every destination is done the rows are deleted and
// the window stays as a done marker (see StateDone). A window another
// reporter built is built-remote until every one of its outbox items is
// final (then done), or until this store takes it over (see
// StateBuiltRemote).
const (
	StateOpen   = "open"
	StateClosed = "closed"
	StateBuilt  = "built"
	// StateBuiltRemote marks a window another reporter built (learnt from
	// the delivery state topic) whose outbox items are not all final yet.
	// Its rows are kept, and partials are still merged into it (a
	// partition replay after a move must rebuild it completely): this
	// store's copy is what a takeover (Reporter.TakeoverAfter) rebuilds
	// the reports from when the builder's store is lost before it sent
	// them. WindowInfo.Reports holds the builder's outbox item ids,
	// Dests its destinations and BuiltAt the build time.
	StateBuiltRemote = "built-remote"
	// StateDone marks a window whose reports were built and delivered
	// (here, or by another reporter: WindowInfo.Remote). Its rows are
	// gone; the marker is kept for Store.MarkerTTL so that partials
	// replayed from Kafka after a partition move, or arriving late, are
	// counted as late instead of re-opening the window (which would build
	// and send a second report with the same Report-ID).
	StateDone = "done"
)

// DefaultMarkerTTL is how long done markers are kept after their window
// closed. It must exceed the retention of the aggregate and TLS result
// topics: a replay must never reach partials of a day whose marker is gone.
const DefaultMarkerTTL = 30 * 24 * time.Hour

// DefaultGrace is how long after UTC midnight late events are still merged
// into the day that ended.
const DefaultGrace = time.Hour

var (
	bucketWindows = []byte("windows")
	bucketRows    = []byte("rows")
	bucketOffsets = []byte("offsets")
	bucketOutbox  = []byte("outbox")
	bucketSuppr   = []byte("suppressed")
	bucketTLS     = []byte("tls")
	bucketTLSWin  = []byte("tlswindows")
	bucketRate    = []byte("ratelimit")
	// bucketRemote holds the final states (sent, failed) of outbox items
	// of other reporters, by item id, until their window is done here.
	bucketRemote = []byte("remoteitems")
)

// Kind selects the report family of a window.
type Kind int

const (
	// KindDMARC windows hold DMARC aggregate rows (RFC 9990).
	KindDMARC Kind = iota
	// KindTLS windows hold TLS session results (RFC 8460).
	KindTLS
)

func (k Kind) String() string {
	if k == KindTLS {
		return "tlsrpt"
	}
	return "dmarc"
}

func (k Kind) buckets() (windows, rows []byte) {
	if k == KindTLS {
		return bucketTLSWin, bucketTLS
	}
	return bucketWindows, bucketRows
}

// WindowInfo is the stored state of a window.
type WindowInfo struct {
	Window   `json:"-"`
	Kind     Kind            `json:"-"`
	State    string          `json:"state"`
	Policy   PolicyPublished `json:"policy"`
	Messages uint64          `json:"messages"`
	// Rows is the number of stored row entries: the exact number of
	// distinct rows once the window is closed (compacted into one run),
	// an upper bound before.
	Rows uint64 `json:"rows"`
	// Runs are the sorted runs holding the rows (see runs.go).
	Runs    []RunInfo `json:"runs,omitempty"`
	NextRun uint64    `json:"next_run,omitempty"`
	// Late counts messages that arrived after the window closed: they are
	// not in the report, and are counted here rather than dropped silently.
	Late uint64 `json:"late,omitempty"`
	// Reports lists the outbox item ids of the built reports: this
	// store's outbox items, or for a window built elsewhere the
	// builder's (from its state event).
	Reports []string `json:"reports,omitempty"`
	// Dests are the destinations the reports were built for, and
	// BuiltAt when (a takeover rebuilds for the same destinations).
	Dests   []BuiltDest `json:"dests,omitempty"`
	BuiltAt time.Time   `json:"built_at,omitzero"`
	// Remote is set on a window another reporter built (learnt from the
	// delivery state topic): built-remote, done, or closed again for a
	// takeover in progress.
	Remote bool `json:"remote,omitempty"`
	// BuildFailures counts the rounds whose build of the window failed
	// (an error, or a panic contained by BuildClosed), and BuildError is
	// the last failure's, cut to maxBuildError bytes and cleared once the
	// window is built. A window that fails for good stays closed and is
	// tried again every round; these show it in `authpipe report list`
	// beside the log and authpipe_reporter_build_failures_total.
	BuildFailures uint64 `json:"build_failures,omitempty"`
	BuildError    string `json:"build_error,omitempty"`
}

// maxBuildError bounds WindowInfo.BuildError.
const maxBuildError = 512

// noteBuildFailure records a failed build of kind's window w: one more
// BuildFailures, and buildErr as BuildError. A window gone meanwhile is
// left gone.
func (s *Store) noteBuildFailure(kind Kind, w Window, buildErr error) error {
	msg := buildErr.Error()
	if len(msg) > maxBuildError {
		msg = strings.ToValidUTF8(msg[:maxBuildError], "") + "…"
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		wi, err := getWindow(tx, kind, w)
		if err != nil || wi == nil {
			return err
		}
		wi.BuildFailures++
		wi.BuildError = msg
		return putWindow(tx, wi)
	})
	if err != nil {
		return fmt.Errorf("reportgen: note failed build of %s %s: %w", kind, w, err)
	}
	return nil
}

// Offset is a consumed position: the next offset to read from a partition.
type Offset struct {
	Topic     string
	Partition int32
	Next      int64
}

// Store is the durable aggregate store: a bbolt file under a data directory.
// It is safe for concurrent use (bbolt serialises writers).
type Store struct {
	db *bolt.DB
	// Now is the clock that judges window closing.
	Now func() time.Time
	// Grace is how long after a day's UTC end its window stays open
	// (DefaultGrace when 0).
	Grace time.Duration
	// MarkerTTL is how long a done marker is kept after its window closed
	// (DefaultMarkerTTL when 0); see StateDone.
	MarkerTTL time.Duration
}

// StoreFile is the name of the store file in the data directory.
const StoreFile = "reports.db"

// ErrStoreLocked is the error OpenStore wraps when another process holds
// the store: bbolt takes an exclusive file lock, so one process at a time
// can use a store.
var ErrStoreLocked = errors.New("locked by another process")

// DefaultLockWait is how long OpenStore waits for another process's lock
// on the store to go (WithLockWait).
const DefaultLockWait = 5 * time.Second

// StoreOption configures OpenStore.
type StoreOption func(*storeConfig)

type storeConfig struct{ lockWait time.Duration }

// WithLockWait sets how long OpenStore waits for another process to
// release the store before it fails with ErrStoreLocked (DefaultLockWait).
// It waits at least a millisecond (bbolt's zero would be for ever).
func WithLockWait(d time.Duration) StoreOption {
	return func(c *storeConfig) { c.lockWait = max(d, time.Millisecond) }
}

// OpenStore opens (creating if needed) the store in dir.
func OpenStore(dir string, now func() time.Time, opts ...StoreOption) (*Store, error) {
	if now == nil {
		return nil, errors.New("reportgen: OpenStore needs a clock")
	}
	cfg := storeConfig{lockWait: DefaultLockWait}
	for _, o := range opts {
		o(&cfg)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("reportgen: data dir: %w", err)
	}
	path := filepath.Join(dir, StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: cfg.lockWait, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("reportgen: open store %s: %w (a running 'authpipe run'?) after %s", path, ErrStoreLocked, cfg.lockWait)
	}
	if err != nil {
		return nil, fmt.Errorf("reportgen: open store: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketWindows, bucketRows, bucketOffsets, bucketOutbox, bucketSuppr, bucketTLS, bucketTLSWin, bucketRate, bucketRemote} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("reportgen: init store: %w", err)
	}
	return &Store{db: db, Now: now}, nil
}

// Close closes the store file.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) markerTTL() time.Duration {
	if s.MarkerTTL <= 0 {
		return DefaultMarkerTTL
	}
	return s.MarkerTTL
}

func (s *Store) grace() time.Duration {
	if s.Grace <= 0 {
		return DefaultGrace
	}
	return s.Grace
}

// ClosesAt returns when the window of day d closes: the next UTC midnight
// plus the grace period.
func (s *Store) ClosesAt(d uint32) time.Time { return DayStart(d + 1).Add(s.grace()) }

func windowKey(w Window) []byte {
	k := make([]byte, 0, len(w.Domain)+5)
	k = append(k, w.Domain...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, w.Day)
}

func parseWindowKey(k []byte) (Window, bool) {
	if len(k) < 5 || k[len(k)-5] != 0 {
		return Window{}, false
	}
	return Window{Domain: string(k[:len(k)-5]), Day: binary.BigEndian.Uint32(k[len(k)-4:])}, true
}

func offsetKey(topic string, part int32) []byte {
	k := append([]byte(topic), 0)
	return binary.BigEndian.AppendUint32(k, uint32(part))
}

func getWindow(tx *bolt.Tx, kind Kind, w Window) (*WindowInfo, error) {
	wb, _ := kind.buckets()
	v := tx.Bucket(wb).Get(windowKey(w))
	if v == nil {
		return nil, nil
	}
	wi := &WindowInfo{}
	if err := json.Unmarshal(v, wi); err != nil {
		return nil, fmt.Errorf("reportgen: window %s: %w", w, err)
	}
	wi.Window, wi.Kind = w, kind
	return wi, nil
}

func putWindow(tx *bolt.Tx, wi *WindowInfo) error {
	b, err := json.Marshal(wi)
	if err != nil {
		return err
	}
	wb, _ := wi.Kind.buckets()
	return tx.Bucket(wb).Put(windowKey(wi.Window), b)
}

// ErrMixedReplay is returned by Merge when some offsets of a batch are new
// and others were already merged: applying it would double-count, skipping
// it would lose data, so the caller must re-read from Offsets().
var ErrMixedReplay = errors.New("reportgen: batch mixes new and already merged offsets")

// MergeResult says what a Merge did.
type MergeResult struct {
	// Applied is false when every offset of the batch was already stored:
	// the batch was applied before (a replay after a crash) and is skipped.
	Applied bool
	Rows    int
	// Late counts messages for windows that were already closed (or
	// built, or done); LatePartials counts the partials that carried them
	// and LateWindows names those windows (each once).
	Late         uint64
	LatePartials int
	LateWindows  []Window
}

// Merge applies partial aggregates and the consumed offsets in one bbolt
// transaction: either both are durable or neither is, so a reporter that
// resumes from Offsets() after a crash neither loses nor double-counts.
// Offsets are the next offsets to consume after the batch. When none is
// beyond the stored ones the batch is a replay and nothing is changed; when
// some are and some are not, Merge fails with ErrMixedReplay. Partials for
// a closed, built or done window are counted in its Late field, and
// partials for a day that closed more than MarkerTTL ago, with no window
// stored, are counted late (MergeResult) without opening one; partials
// for a window another reporter built and that is not done yet
// (StateBuiltRemote) are merged, since a takeover rebuilds it from these
// rows. The Key slices of batch must not change during Merge.
func (s *Store) Merge(batch []PartialAggregate, offsets []Offset) (MergeResult, error) {
	in := make([]windowBatch, len(batch))
	for i := range batch {
		in[i] = windowBatch{w: batch[i].Window, policy: batch[i].Policy, msgs: batch[i].Messages, rows: batch[i].Rows}
	}
	return s.merge(KindDMARC, in, offsets)
}

type windowBatch struct {
	w      Window
	policy PolicyPublished
	msgs   uint64
	rows   []RowCount
}

func (s *Store) merge(kind Kind, batch []windowBatch, offsets []Offset) (MergeResult, error) {
	var res MergeResult
	err := s.db.Update(func(tx *bolt.Tx) error {
		res = MergeResult{}
		ob := tx.Bucket(bucketOffsets)
		if len(offsets) > 0 {
			fresh, stale := 0, 0
			for _, o := range offsets {
				k := offsetKey(o.Topic, o.Partition)
				cur := ob.Get(k)
				if cur == nil || int64(binary.BigEndian.Uint64(cur)) < o.Next {
					fresh++
				} else {
					stale++
				}
			}
			if fresh == 0 {
				return nil
			}
			if stale > 0 {
				return fmt.Errorf("%w: %d of %d partitions already merged up to these offsets", ErrMixedReplay, stale, len(offsets))
			}
			for _, o := range offsets {
				if err := ob.Put(offsetKey(o.Topic, o.Partition), binary.BigEndian.AppendUint64(nil, uint64(o.Next))); err != nil {
					return err
				}
			}
		}
		res.Applied = true
		total := 0
		for i := range batch {
			total += len(batch[i].rows)
		}
		_, rowsName := kind.buckets()
		rowsRoot := tx.Bucket(rowsName)
		horizon := s.Now().Add(-s.markerTTL())
		for i := range batch {
			p := &batch[i]
			if p.w.Domain == "" {
				return errors.New("reportgen: merge: partial aggregate without domain")
			}
			wi, err := getWindow(tx, kind, p.w)
			if err != nil {
				return err
			}
			if wi == nil && s.ClosesAt(p.w.Day).Before(horizon) {
				// A day whose window would have closed longer ago than a
				// done marker is kept: its report, if there was one, was
				// sent and its marker is gone. Opening the window would
				// report the day again (mail re-scored from an archive,
				// an MTA with its clock years off); it is counted late,
				// and no window is stored for it.
				res.Late += p.msgs
				res.LatePartials++
				if !slices.Contains(res.LateWindows, p.w) {
					res.LateWindows = append(res.LateWindows, p.w)
				}
				continue
			}
			if wi == nil {
				wi = &WindowInfo{Window: p.w, Kind: kind, State: StateOpen}
			}
			if wi.State != StateOpen && wi.State != StateBuiltRemote {
				wi.Late += p.msgs
				res.Late += p.msgs
				res.LatePartials++
				if !slices.Contains(res.LateWindows, p.w) {
					res.LateWindows = append(res.LateWindows, p.w)
				}
				if err := putWindow(tx, wi); err != nil {
					return err
				}
				continue
			}
			rb, err := rowsRoot.CreateBucketIfNotExists(windowKey(p.w))
			if err != nil {
				return err
			}
			rb.FillPercent = 1 // chunk keys only ever grow
			rows := dedupeSorted(p.rows)
			for _, r := range rows {
				if len(r.Key) == 0 || r.Key[0] == 0 || len(r.Key) > maxRowKeyLen {
					return fmt.Errorf("reportgen: merge %s: %w: row key", p.w, ErrBadEncoding)
				}
			}
			if err := appendRun(rb, wi, rows); err != nil {
				return err
			}
			res.Rows += len(p.rows)
			wi.Rows = 0
			for _, r := range wi.Runs {
				wi.Rows += r.Entries
			}
			wi.Messages += p.msgs
			if p.policy.Domain != "" {
				wi.Policy = p.policy
			}
			if err := putWindow(tx, wi); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return MergeResult{}, fmt.Errorf("reportgen: merge: %w", err)
	}
	return res, nil
}

// Offsets returns the stored consumed offsets (where to resume).
func (s *Store) Offsets() ([]Offset, error) {
	var out []Offset
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOffsets).ForEach(func(k, v []byte) error {
			i := len(k) - 5
			if i < 0 || k[i] != 0 || len(v) != 8 {
				return fmt.Errorf("reportgen: bad offset key %q", k)
			}
			out = append(out, Offset{Topic: string(k[:i]), Partition: int32(binary.BigEndian.Uint32(k[i+1:])), Next: int64(binary.BigEndian.Uint64(v))})
			return nil
		})
	})
	return out, err
}

// CloseDue closes every open window (DMARC and TLS) whose day ended more
// than Grace before the clock's now, and returns them.
func (s *Store) CloseDue() ([]WindowInfo, error) { return s.CloseDueIf(nil) }

// CloseDueIf is CloseDue restricted to the windows for which owns returns
// true (nil: all). A reporter in a fleet closes only the windows of the
// partitions it owns and has caught up on: closing a window whose
// partials are still being replayed, or merged by another reporter, would
// make the rest of them late.
func (s *Store) CloseDueIf(owns func(Kind, Window) bool) ([]WindowInfo, error) {
	now := s.Now()
	var closed []WindowInfo
	err := s.db.Update(func(tx *bolt.Tx) error {
		closed = closed[:0]
		for _, kind := range []Kind{KindDMARC, KindTLS} {
			all, err := listWindows(tx, kind)
			if err != nil {
				return err
			}
			for _, wi := range all {
				if wi.State == StateOpen && !now.Before(s.ClosesAt(wi.Day)) && (owns == nil || owns(kind, wi.Window)) {
					if err := closeWindow(tx, &wi); err != nil {
						return err
					}
					closed = append(closed, wi)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reportgen: close windows: %w", err)
	}
	return closed, nil
}

// CloseWindow closes one window now, whatever the clock says (the `report
// close` command).
func (s *Store) CloseWindow(kind Kind, w Window) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wi, err := getWindow(tx, kind, w)
		if err != nil {
			return err
		}
		if wi == nil {
			return fmt.Errorf("reportgen: no %s window %s", kind, w)
		}
		if wi.State == StateOpen {
			return closeWindow(tx, wi)
		}
		return nil
	})
}

// closeWindow marks a window closed and compacts its rows into one run.
func closeWindow(tx *bolt.Tx, wi *WindowInfo) error {
	wi.State = StateClosed
	_, rowsName := wi.Kind.buckets()
	if rb := tx.Bucket(rowsName).Bucket(windowKey(wi.Window)); rb != nil {
		if err := compactRuns(rb, wi, 0); err != nil {
			return err
		}
	}
	wi.Rows = 0
	for _, r := range wi.Runs {
		wi.Rows += r.Entries
	}
	return putWindow(tx, wi)
}

// SetState records a window's state and the outbox ids of its reports.
func (s *Store) SetState(kind Kind, w Window, state string, reports []string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wi, err := getWindow(tx, kind, w)
		if err != nil {
			return err
		}
		if wi == nil {
			return fmt.Errorf("reportgen: no %s window %s", kind, w)
		}
		wi.State, wi.Reports = state, reports
		return putWindow(tx, wi)
	})
}

func listWindows(tx *bolt.Tx, kind Kind) ([]WindowInfo, error) {
	var out []WindowInfo
	wb, _ := kind.buckets()
	err := tx.Bucket(wb).ForEach(func(k, v []byte) error {
		w, ok := parseWindowKey(k)
		if !ok {
			return nil
		}
		wi := WindowInfo{}
		if err := json.Unmarshal(v, &wi); err != nil {
			return fmt.Errorf("window %s: %w", w, err)
		}
		wi.Window, wi.Kind = w, kind
		out = append(out, wi)
		return nil
	})
	return out, err
}

// Windows lists the live windows of a kind (open, closed, built or
// built-remote; not the done markers, see DoneWindows), ordered by domain
// and day.
func (s *Store) Windows(kind Kind) ([]WindowInfo, error) {
	return s.windows(kind, func(wi *WindowInfo) bool { return wi.State != StateDone })
}

// DoneWindows lists the done markers of a kind, ordered by domain and day.
func (s *Store) DoneWindows(kind Kind) ([]WindowInfo, error) {
	return s.windows(kind, func(wi *WindowInfo) bool { return wi.State == StateDone })
}

func (s *Store) windows(kind Kind, keep func(*WindowInfo) bool) ([]WindowInfo, error) {
	var out []WindowInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		all, err := listWindows(tx, kind)
		for i := range all {
			if keep(&all[i]) {
				out = append(out, all[i])
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reportgen: list windows: %w", err)
	}
	slices.SortFunc(out, func(a, b WindowInfo) int {
		if c := strings.Compare(a.Domain, b.Domain); c != 0 {
			return c
		}
		return int(a.Day) - int(b.Day)
	})
	return out, nil
}

// WindowInfo returns the state of one window (nil when absent).
func (s *Store) WindowInfo(kind Kind, w Window) (*WindowInfo, error) {
	var wi *WindowInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		wi, err = getWindow(tx, kind, w)
		return err
	})
	return wi, err
}

// forEachRaw calls fn for every (key, count) of a window in key order
// inside one read transaction.
func (s *Store) forEachRaw(kind Kind, w Window, fn func(k []byte, count uint64) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		wi, err := getWindow(tx, kind, w)
		if err != nil || wi == nil {
			return err
		}
		_, rowsName := kind.buckets()
		rb := tx.Bucket(rowsName).Bucket(windowKey(w))
		if rb == nil {
			return nil
		}
		return mergeRuns(rb, wi.Runs, false, fn)
	})
}

// ForEachRow calls fn for every DMARC row of window w in key order, inside
// one read transaction (memory stays bounded: rows are decoded one at a
// time).
func (s *Store) ForEachRow(w Window, fn func(Row) error) error {
	return s.forEachRaw(KindDMARC, w, func(k []byte, n uint64) error {
		rk, err := DecodeRowKey(k)
		if err != nil {
			return fmt.Errorf("reportgen: window %s: %w", w, err)
		}
		return fn(Row{RowKey: rk, Count: n})
	})
}

// DeleteWindow removes a window and its rows. Reporters do not call it for
// delivered windows (they keep a done marker, see StateDone); it is for
// operators removing a window for good.
func (s *Store) DeleteWindow(kind Kind, w Window) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wb, _ := kind.buckets()
		if err := tx.Bucket(wb).Delete(windowKey(w)); err != nil {
			return err
		}
		return deleteRows(tx, kind, w)
	})
}

func deleteRows(tx *bolt.Tx, kind Kind, w Window) error {
	_, rowsName := kind.buckets()
	err := tx.Bucket(rowsName).DeleteBucket(windowKey(w))
	if errors.Is(err, berrors.ErrBucketNotFound) {
		return nil
	}
	return err
}

// markDone turns a window into a done marker: its rows and the remote
// item states of its reports are deleted, its counters and report ids
// kept.
func markDone(tx *bolt.Tx, wi *WindowInfo, remote bool) error {
	if err := deleteRows(tx, wi.Kind, wi.Window); err != nil {
		return err
	}
	rb := tx.Bucket(bucketRemote)
	for _, id := range wi.Reports {
		if err := rb.Delete([]byte(id)); err != nil {
			return err
		}
	}
	wi.State, wi.Remote, wi.Runs, wi.NextRun, wi.Rows = StateDone, remote, nil, 0, 0
	return putWindow(tx, wi)
}

// MarkDone turns a window into a done marker (creating the marker when the
// window is absent). The reporter calls it when a window has no
// destination or all its outbox items are finished.
func (s *Store) MarkDone(kind Kind, w Window) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wi, err := getWindow(tx, kind, w)
		if err != nil {
			return err
		}
		if wi == nil {
			wi = &WindowInfo{Window: w, Kind: kind}
		}
		return markDone(tx, wi, false)
	})
}

// PruneDone deletes the done markers whose window closed more than
// MarkerTTL before the clock's now, and returns them. Built-remote windows
// that old (another reporter's build never finished and nobody took it
// over) go too, with their rows, and so do remote item states.
func (s *Store) PruneDone() ([]WindowInfo, error) {
	limit := s.Now().Add(-s.markerTTL())
	var out []WindowInfo
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		for _, kind := range []Kind{KindDMARC, KindTLS} {
			all, err := listWindows(tx, kind)
			if err != nil {
				return err
			}
			wb, _ := kind.buckets()
			for _, wi := range all {
				if (wi.State == StateDone || wi.State == StateBuiltRemote) && s.ClosesAt(wi.Day).Before(limit) {
					if err := tx.Bucket(wb).Delete(windowKey(wi.Window)); err != nil {
						return err
					}
					if err := deleteRows(tx, kind, wi.Window); err != nil {
						return err
					}
					out = append(out, wi)
				}
			}
		}
		return pruneRemoteItems(tx, func(day uint32) bool { return s.ClosesAt(day).Before(limit) })
	})
	if err != nil {
		return nil, fmt.Errorf("reportgen: prune done markers: %w", err)
	}
	return out, nil
}
