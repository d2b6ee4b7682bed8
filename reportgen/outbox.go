package reportgen

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/authpipe/authpipe/stages/dmarc"
)

// Outbox item states.
const (
	ItemPending = "pending"
	ItemSent    = "sent"
	ItemFailed  = "failed"
	// ItemSuppressed items were not sent because their destination is on
	// the suppression list.
	ItemSuppressed = "suppressed"
)

// OutboxItem is one report file for one destination.
type OutboxItem struct {
	ID          string    `json:"id"`
	Kind        Kind      `json:"kind"`
	Window      Window    `json:"window"`
	Meta        MailMeta  `json:"meta"`
	Dest        string    `json:"dest"`
	File        []byte    `json:"file"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	Created     time.Time `json:"created"`
	NextAttempt time.Time `json:"next_attempt"`
	SentAt      time.Time `json:"sent_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// Remote is set when another reporter sent (or failed) the same item
	// and this one finished it from the state topic without sending.
	Remote bool `json:"remote,omitempty"`
}

// Suppression is an entry of the suppression list, keyed by destination
// URI (lower case).
type Suppression struct {
	Suppressed        bool      `json:"suppressed"`
	Manual            bool      `json:"manual,omitempty"`
	PermanentFailures int       `json:"permanent_failures"`
	Since             time.Time `json:"since,omitzero"`
	Reason            string    `json:"reason,omitempty"`
}

func itemID(kind Kind, fileName, dest string) string {
	h := sha256.Sum256([]byte(kind.String() + "\x00" + fileName + "\x00" + strings.ToLower(dest)))
	return hex.EncodeToString(h[:16])
}

// enqueue stores the items and marks the window built in one transaction.
// Items another reporter already sent or failed (their state came from the
// state topic) are stored finished (Remote) and not sent again. It
// returns false, storing nothing, when the window became done or built
// meanwhile (a state event applied during the build).
func (s *Store) enqueue(kind Kind, w Window, items []OutboxItem, dests []BuiltDest, at time.Time) (bool, error) {
	stored := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		stored = false
		wi, err := getWindow(tx, kind, w)
		if err != nil || wi == nil {
			return fmt.Errorf("reportgen: enqueue %s: window gone (%v)", w, err)
		}
		if wi.State != StateClosed && wi.State != StateBuiltRemote {
			return nil
		}
		ob := tx.Bucket(bucketOutbox)
		ids := make([]string, 0, len(items))
		for i := range items {
			ri, err := getRemoteItem(tx, items[i].ID)
			if err != nil {
				return err
			}
			if ri != nil {
				finishRemotely(&items[i], ri.State, ri.At)
			}
			b, err := json.Marshal(&items[i])
			if err != nil {
				return err
			}
			if err := ob.Put([]byte(items[i].ID), b); err != nil {
				return err
			}
			ids = append(ids, items[i].ID)
		}
		wi.State, wi.Remote, wi.Reports, wi.Dests, wi.BuiltAt, wi.BuildError = StateBuilt, false, ids, dests, at, ""
		if err := putWindow(tx, wi); err != nil {
			return err
		}
		stored = true
		return finishIfDone(tx, kind, w)
	})
	return stored, err
}

// OutboxItems returns the outbox items (files included when withFiles).
func (s *Store) OutboxItems(withFiles bool) ([]OutboxItem, error) {
	var out []OutboxItem
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			var it OutboxItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("outbox %s: %w", k, err)
			}
			if !withFiles {
				it.File = nil
			}
			out = append(out, it)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b OutboxItem) int { return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID)) })
	return out, err
}

// outboxFile loads the report file of one item (Deliver keeps one file in
// memory at a time).
func (s *Store) outboxFile(id string) ([]byte, error) {
	var it OutboxItem
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketOutbox).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("reportgen: no outbox item %s", id)
		}
		return json.Unmarshal(v, &it)
	})
	return it.File, err
}

// PruneOutbox deletes finished items (sent, failed, suppressed) created
// before the given time, and returns how many it deleted.
func (s *Store) PruneOutbox(before time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		ob := tx.Bucket(bucketOutbox)
		var del [][]byte
		err := ob.ForEach(func(k, v []byte) error {
			var it struct {
				State   string    `json:"state"`
				Created time.Time `json:"created"`
			}
			if err := json.Unmarshal(v, &it); err != nil {
				return err
			}
			if it.State != ItemPending && it.Created.Before(before) {
				del = append(del, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := ob.Delete(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

func (s *Store) updateItem(id string, fn func(*OutboxItem) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		ob := tx.Bucket(bucketOutbox)
		v := ob.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("reportgen: no outbox item %s", id)
		}
		var it OutboxItem
		if err := json.Unmarshal(v, &it); err != nil {
			return err
		}
		if err := fn(&it); err != nil {
			return err
		}
		b, err := json.Marshal(&it)
		if err != nil {
			return err
		}
		return ob.Put([]byte(id), b)
	})
}

// Suppress adds (or with on=false removes) a destination to the manual
// suppression list.
func (s *Store) Suppress(dest string, on bool, reason string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		sb := tx.Bucket(bucketSuppr)
		k := []byte(strings.ToLower(dest))
		if !on {
			return sb.Delete(k)
		}
		b, _ := json.Marshal(Suppression{Suppressed: true, Manual: true, Since: s.Now(), Reason: reason})
		return sb.Put(k, b)
	})
}

// Suppression returns the suppression entry of a destination.
func (s *Store) Suppression(dest string) (Suppression, error) {
	var sp Suppression
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketSuppr).Get([]byte(strings.ToLower(dest))); v != nil {
			return json.Unmarshal(v, &sp)
		}
		return nil
	})
	return sp, err
}

// Reporter closes windows, builds their reports into the outbox and
// delivers them. Its zero durations take the defaults documented on each
// field.
type Reporter struct {
	Store     *Store
	Deliverer *Deliverer
	DMARC     ReportConfig
	TLS       TLSReportConfig
	// Mode is the DMARC record syntax used to read rua at send time.
	Mode dmarc.Mode
	// Caps maps a destination URI (or a mail domain) to a cap on the
	// report mail in octets; DefaultCap applies otherwise (0: none).
	Caps       map[string]int64
	DefaultCap int64
	// RetryWindow is how long delivery is retried (default 72h).
	RetryWindow time.Duration
	// MinBackoff and MaxBackoff bound the exponential retry delay
	// (defaults 5 minutes and 6 hours).
	MinBackoff, MaxBackoff time.Duration
	// RateInterval is the minimum time between two sends to the same
	// destination (default 1s; negative: none).
	RateInterval time.Duration
	// SuppressAfter permanent failures put a destination on the
	// suppression list (default 3).
	SuppressAfter int
	// Suppressed lists destinations (lower-case URIs such as
	// "mailto:dmarc@example.com" or "https://…") never delivered to, from
	// configuration; the store's list (Store.Suppress, and the automatic
	// entries after SuppressAfter failures) applies as well.
	Suppressed map[string]bool
	// KeepDone is how long finished outbox items are kept as a record
	// (default 7 days; pruned by Tick).
	KeepDone time.Duration
	// RequireTLS makes STARTTLS mandatory for DMARC report mail (TLS
	// reports never require it, RFC 8460 5.1).
	RequireTLS bool
	// TakeoverAfter is how long after another reporter built a window
	// (the built event's time, judged by the store's clock) this
	// reporter, when it owns the window, rebuilds it from its own rows
	// and delivers the items not yet final, in case the builder's store
	// was lost before they were sent (default 1h; negative: never). The
	// rebuilt files have the same Report-IDs and file names, so an item
	// the builder sent but whose sent state was not published yet is
	// sent twice (receivers deduplicate); it must exceed the time a
	// live builder takes to deliver, or retry, its outbox.
	TakeoverAfter time.Duration

	// AfterAccept, when set, runs after a server accepted an item and
	// before the item is marked sent; an error stops Deliver there. Tests
	// use it to simulate a crash between acceptance and marking.
	AfterAccept func(OutboxItem) error

	// Owns, when set, limits closing (Tick) and building (BuildClosed) to
	// the windows it returns true for. In a fleet each window belongs to
	// the reporter that owns its domain's partition; the others would
	// build it from an incomplete or stale copy. Delivery is not limited:
	// an outbox item is delivered by the store that holds it.
	Owns func(Kind, Window) bool
	// OnState, when set, is called after each delivery state transition
	// is durable in the store: a window built (or found to have no
	// destination), an item sent or failed for good, a done marker
	// pruned. pipeline.RunReporter publishes the events to the compacted
	// state topic that every reporter applies (Store.ApplyState). It must
	// not block for long (it runs inside BuildClosed and Deliver).
	OnState func(StateEvent)
}

func (r *Reporter) emit(ev StateEvent) {
	if r.OnState != nil {
		r.OnState(ev)
	}
}

func (r *Reporter) owns(kind Kind, w Window) bool { return r.Owns == nil || r.Owns(kind, w) }

// BuildStats counts what BuildClosed did.
type BuildStats struct {
	Windows, Files, Items int
	// NoDestination counts windows whose domain publishes no usable rua.
	NoDestination int
	// Unverified counts destinations outside the policy domain that did
	// not confirm (RFC 9990 external verification): skipped.
	Unverified int
	// Deferred counts windows left for later after a temporary DNS error.
	Deferred int
	// TakenOver counts windows built elsewhere and rebuilt here (see
	// Reporter.TakeoverAfter); they are counted in Windows too.
	TakenOver int
	// Failed counts windows whose build failed (an error, or a panic
	// contained as a *PanicError): each stays closed, to be built on a
	// later round, and holds no other window back.
	Failed int
}

func (r *Reporter) takeoverAfter() time.Duration {
	if r.TakeoverAfter == 0 {
		return time.Hour
	}
	return r.TakeoverAfter
}

func (r *Reporter) capFor(d Destination) int64 {
	c := r.DefaultCap
	if v, ok := r.Caps[strings.ToLower(d.URI)]; ok {
		c = v
	} else if d.Address != "" {
		if v, ok := r.Caps[strings.ToLower(d.Address[strings.LastIndexByte(d.Address, '@')+1:])]; ok {
			c = v
		}
	}
	if d.MaxSize > 0 && (c == 0 || d.MaxSize < c) {
		c = d.MaxSize
	}
	return c
}

// BuildClosed builds the reports of every closed window into the outbox:
// destinations are discovered now (DNS through the Deliverer's resolver),
// external mailto: destinations are verified, and one set of files is
// built per distinct size cap. The outbox items and the window's new state
// are written in one transaction.
//
// It also takes over the built-remote windows it owns whose build is older
// than TakeoverAfter (their items are not all final: the builder may have
// lost its store): such a window is closed here (later partials are late,
// as for any closed window) and rebuilt from this store's rows for the
// builder's destinations, which gives the same file names, Report-IDs and
// item ids; the items the builder sent or failed are stored finished and
// the others are delivered from this outbox. A built-remote window without
// rows here (nothing merged: nothing to rebuild from) is not taken over.
//
// A window whose build fails, with an error or a panic (a *PanicError), is
// counted in BuildStats.Failed and left closed, to be built on a later
// call; the other windows are built. The error returned joins those
// failures (and a store error that ended the call).
func (r *Reporter) BuildClosed(ctx context.Context) (BuildStats, error) {
	var st BuildStats
	var failed []error
	now := r.Store.Now()
	for _, kind := range []Kind{KindDMARC, KindTLS} {
		wins, err := r.Store.Windows(kind)
		if err != nil {
			return st, errors.Join(append(failed, err)...)
		}
		for _, wi := range wins {
			if !r.owns(kind, wi.Window) {
				continue
			}
			// One window's failure, a panic included, is that window's:
			// left closed for a later round, while the others are built
			// (and, by Tick, delivered). A bolt transaction a panic
			// leaves is rolled back by bolt.
			err := Contain(func() error {
				switch {
				case wi.State == StateClosed:
					return r.buildWindow(ctx, wi, &st)
				case wi.State == StateBuiltRemote && wi.Messages > 0 && r.takeoverAfter() > 0 && !now.Before(wi.BuiltAt.Add(r.takeoverAfter())):
					return r.takeover(ctx, wi.Kind, wi.Window, &st)
				}
				return nil
			})
			if err != nil {
				st.Failed++
				failed = append(failed, fmt.Errorf("reportgen: build %s report %s: %w", kind, wi.Window, err))
				if err := r.Store.noteBuildFailure(kind, wi.Window, err); err != nil {
					failed = append(failed, err)
				}
			}
		}
	}
	return st, errors.Join(failed...)
}

// takeover closes a built-remote window (compacting its rows) and builds
// it here.
func (r *Reporter) takeover(ctx context.Context, kind Kind, w Window, st *BuildStats) error {
	wi, err := r.Store.closeForTakeover(kind, w)
	if err != nil || wi == nil {
		return err
	}
	st.TakenOver++
	return r.buildWindow(ctx, *wi, st)
}

// closeForTakeover closes a built-remote window whose items are not all
// final and returns it (nil when it is no longer built-remote).
func (s *Store) closeForTakeover(kind Kind, w Window) (*WindowInfo, error) {
	var out *WindowInfo
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = nil
		wi, err := getWindow(tx, kind, w)
		if err != nil || wi == nil || wi.State != StateBuiltRemote {
			return err
		}
		if err := finishRemote(tx, wi); err != nil {
			return err
		}
		if wi.State == StateDone {
			return nil
		}
		out = wi
		return closeWindow(tx, wi)
	})
	if err != nil {
		return nil, fmt.Errorf("reportgen: take over %s %s: %w", kind, w, err)
	}
	return out, nil
}

// discover returns the destinations of a window: the recorded ones of a
// window taken over from another reporter (verified by the builder), else
// from DNS. ok is false when a temporary DNS failure defers the window.
func (r *Reporter) discover(ctx context.Context, wi WindowInfo, st *BuildStats) (dests []Destination, ok bool) {
	if wi.Remote && len(wi.Dests) > 0 {
		return destinations(wi.Kind, wi.Dests), true
	}
	res := r.Deliverer.Resolver
	var err error
	if wi.Kind == KindTLS {
		dests, err = DiscoverTLSRPT(ctx, res, wi.Domain)
	} else {
		dests, err = DiscoverDMARC(ctx, res, wi.Domain, r.Mode)
	}
	if err != nil && !errors.Is(err, ErrNoPolicyRecord) {
		st.Deferred++
		return nil, false // temporary DNS trouble: try again on the next run
	}
	if wi.Kind == KindDMARC {
		ev := &dmarc.Evaluator{Resolver: res, Mode: r.Mode}
		kept := dests[:0]
		for _, d := range dests {
			if dest, ext := needsExternalCheck(wi.Domain, d.Address); ext {
				ok, err := ev.ExternalReportsAccepted(ctx, wi.Domain, dest)
				if err != nil && !ok {
					var tmp interface{ Temporary() bool }
					if errors.As(err, &tmp) && tmp.Temporary() {
						st.Deferred++
						return nil, false
					}
				}
				if !ok {
					st.Unverified++
					continue
				}
			}
			kept = append(kept, d)
		}
		dests = kept
	}
	return dests, true
}

func (r *Reporter) buildWindow(ctx context.Context, wi WindowInfo, st *BuildStats) error {
	dests, ok := r.discover(ctx, wi, st)
	if !ok {
		return nil
	}
	st.Windows++
	if len(dests) == 0 {
		st.NoDestination++
		if err := r.Store.MarkDone(wi.Kind, wi.Window); err != nil {
			return err
		}
		r.emit(StateEvent{Kind: wi.Kind, Window: wi.Window, State: StateBuilt, At: r.Store.Now()})
		return nil
	}
	now := r.Store.Now()
	type built struct {
		files []ReportFile
		data  [][]byte
	}
	byCap := map[int64]*built{}
	var items []OutboxItem
	nfiles := 0
	for _, d := range dests {
		fileCap := MailFileCap(r.capFor(d))
		if wi.Kind == KindTLS && d.Scheme() == "https" {
			fileCap = r.httpsCap(d)
		}
		b := byCap[fileCap]
		if b == nil {
			b = &built{}
			var bufs []*bytes.Buffer
			open := func(ReportFile) (io.Writer, error) {
				bufs = append(bufs, &bytes.Buffer{})
				return bufs[len(bufs)-1], nil
			}
			var files []ReportFile
			var err error
			if wi.Kind == KindTLS {
				files, err = BuildTLSRPTParts(r.Store, wi.Window, r.TLS, fileCap, open)
			} else {
				cfg := r.DMARC
				cfg.MaxSize = fileCap
				files, err = BuildDMARC(r.Store, wi.Window, wi.Policy, cfg, open)
			}
			if err != nil {
				return err
			}
			b.files = files
			for _, bb := range bufs {
				b.data = append(b.data, bb.Bytes())
			}
			byCap[fileCap] = b
			nfiles += len(b.files)
		}
		for i, f := range b.files {
			sub := r.DMARC.Receiver
			if wi.Kind == KindTLS {
				sub = r.TLS.Sender
			}
			meta := MailMeta{Kind: wi.Kind, PolicyDomain: wi.Domain, Submitter: sub, ReportID: f.ReportID, FileName: f.FileName,
				Part: f.Part, Parts: len(b.files), Day: wi.Day}
			items = append(items, OutboxItem{ID: itemID(wi.Kind, f.FileName, d.URI), Kind: wi.Kind, Window: wi.Window, Meta: meta,
				Dest: d.URI, File: b.data[i], State: ItemPending, Created: now, NextAttempt: now})
		}
	}
	bds := builtDests(dests)
	stored, err := r.Store.enqueue(wi.Kind, wi.Window, items, bds, now)
	if err != nil || !stored {
		return err
	}
	st.Files += nfiles
	st.Items += len(items)
	ev := StateEvent{Kind: wi.Kind, Window: wi.Window, State: StateBuilt, At: now, Dests: bds}
	for i := range items {
		ev.Items = append(ev.Items, items[i].ID)
		if !slices.Contains(ev.Files, items[i].Meta.FileName) {
			ev.Files = append(ev.Files, items[i].Meta.FileName)
			ev.ReportIDs = append(ev.ReportIDs, items[i].Meta.ReportID)
		}
	}
	r.emit(ev)
	return nil
}

// httpsCap is the cap on a TLSRPT file POSTed to d: the Deliverer's body
// cap (default 10 MiB), lowered by a Caps entry for the URI.
func (r *Reporter) httpsCap(d Destination) int64 {
	c := int64(10 << 20)
	if r.Deliverer != nil && r.Deliverer.MaxHTTPSize > 0 {
		c = r.Deliverer.MaxHTTPSize
	}
	if v, ok := r.Caps[strings.ToLower(d.URI)]; ok && v > 0 && v < c {
		c = v
	}
	return c
}

// DeliverStats counts what Deliver did.
type DeliverStats struct {
	Sent, TempFailed, PermFailed, Suppressed, RateLimited, Expired int
}

func (r *Reporter) backoff(attempts int) time.Duration {
	lo, hi := r.MinBackoff, r.MaxBackoff
	if lo <= 0 {
		lo = 5 * time.Minute
	}
	if hi <= 0 {
		hi = 6 * time.Hour
	}
	d := lo
	for i := 1; i < attempts && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Deliver sends every due pending item. An item is marked sent only after
// the server accepted it (SMTP 250 after DATA, HTTP 2xx); a crash in
// between leaves it pending, and the next run sends the same file with the
// same Report-ID and file name again. Windows whose items are all done
// become done markers. The per-destination rate limit is kept in the store
// (Store.LastSend), so a restart does not send a burst.
func (r *Reporter) Deliver(ctx context.Context) (DeliverStats, error) {
	var st DeliverStats
	items, err := r.Store.OutboxItems(false)
	if err != nil {
		return st, err
	}
	rate := r.RateInterval
	if rate == 0 {
		rate = time.Second
	}
	retry := r.RetryWindow
	if retry <= 0 {
		retry = 72 * time.Hour
	}
	suppressAfter := r.SuppressAfter
	if suppressAfter <= 0 {
		suppressAfter = 3
	}
	touched := map[kindWindow]bool{}
	for _, it := range items {
		now := r.Store.Now()
		if it.State != ItemPending || now.Before(it.NextAttempt) {
			continue
		}
		touched[kindWindow{it.Kind, it.Window}] = true
		dest := strings.ToLower(it.Dest)
		sp, err := r.Store.Suppression(dest)
		if err != nil {
			return st, err
		}
		if sp.Suppressed || r.Suppressed[dest] {
			st.Suppressed++
			if err := r.Store.updateItem(it.ID, func(x *OutboxItem) error { x.State = ItemSuppressed; return nil }); err != nil {
				return st, err
			}
			continue
		}
		if rate > 0 {
			last, err := r.Store.LastSend(dest)
			if err != nil {
				return st, err
			}
			if !last.IsZero() && now.Sub(last) < rate {
				st.RateLimited++
				continue
			}
			// Recorded before the attempt: a crash during the send
			// must not let the next process send at once again.
			if err := r.Store.recordSend(dest, now); err != nil {
				return st, fmt.Errorf("reportgen: record send to %s: %w", dest, err)
			}
		}
		file, err := r.Store.outboxFile(it.ID)
		if err != nil {
			return st, err
		}
		it.File = file
		// A panic sending this item (a bug its data meets) fails this
		// attempt only: retried with backoff as a temporary failure.
		sendErr := Contain(func() error { return r.send(ctx, &it) })
		it.File = nil
		if sendErr == nil {
			if r.AfterAccept != nil {
				if err := r.AfterAccept(it); err != nil {
					return st, err
				}
			}
			st.Sent++
			if err := r.Store.updateItem(it.ID, func(x *OutboxItem) error {
				x.State, x.SentAt, x.Attempts, x.LastError = ItemSent, now, x.Attempts+1, ""
				return nil
			}); err != nil {
				return st, err
			}
			r.emit(itemEvent(&it, ItemSent, now))
			continue
		}
		perm := IsPermanent(sendErr)
		expired := !perm && now.Add(r.backoff(it.Attempts+1)).After(it.Created.Add(retry))
		switch {
		case perm:
			st.PermFailed++
		case expired:
			st.Expired++
		default:
			st.TempFailed++
		}
		if err := r.Store.updateItem(it.ID, func(x *OutboxItem) error {
			x.Attempts++
			x.LastError = sendErr.Error()
			if perm || expired {
				x.State = ItemFailed
			} else {
				x.NextAttempt = now.Add(r.backoff(x.Attempts))
			}
			return nil
		}); err != nil {
			return st, err
		}
		if perm || expired {
			r.emit(itemEvent(&it, ItemFailed, now))
		}
		if perm {
			if err := r.countPermanent(dest, sendErr, suppressAfter); err != nil {
				return st, err
			}
		}
	}
	return st, r.cleanup(touched)
}

func (r *Reporter) countPermanent(dest string, cause error, after int) error {
	return r.Store.db.Update(func(tx *bolt.Tx) error {
		sb := tx.Bucket(bucketSuppr)
		var sp Suppression
		if v := sb.Get([]byte(dest)); v != nil {
			if err := json.Unmarshal(v, &sp); err != nil {
				return err
			}
		}
		sp.PermanentFailures++
		if sp.PermanentFailures >= after && !sp.Suppressed {
			sp.Suppressed, sp.Since, sp.Reason = true, r.Store.Now(), "automatic: "+cause.Error()
		}
		b, _ := json.Marshal(sp)
		return sb.Put([]byte(dest), b)
	})
}

// kindWindow names a window of one kind (a domain has a DMARC and a TLS
// window for the same day).
type kindWindow struct {
	kind Kind
	w    Window
}

// cleanup turns the windows whose outbox items are all done into done
// markers (the items stay in the outbox as a record until pruned).
func (r *Reporter) cleanup(touched map[kindWindow]bool) error {
	return r.Store.db.Update(func(tx *bolt.Tx) error {
		for kw := range touched {
			if err := finishIfDone(tx, kw.kind, kw.w); err != nil {
				return err
			}
		}
		return nil
	})
}

func (r *Reporter) send(ctx context.Context, it *OutboxItem) error {
	d := Destination{URI: it.Dest}
	if d.Scheme() == "https" {
		return r.Deliverer.PostHTTPS(ctx, it.Dest, it.File)
	}
	addr, err := mailtoAddress(it.Dest)
	if err != nil {
		return permanent(err)
	}
	msg, err := r.Deliverer.BuildMail(it.Meta, addr, it.File)
	if err != nil {
		return permanent(err)
	}
	return r.Deliverer.SendMail(ctx, addr, msg, r.RequireTLS && it.Kind == KindDMARC)
}

// Tick runs one reporting round: close due windows (those Owns accepts),
// build closed ones, deliver due items, prune.
func (r *Reporter) Tick(ctx context.Context) (BuildStats, DeliverStats, error) {
	if _, err := r.Store.CloseDueIf(r.Owns); err != nil {
		return BuildStats{}, DeliverStats{}, err
	}
	// Windows that failed to build do not hold back the delivery of
	// what was built; their errors are returned with the round's.
	bs, buildErr := r.BuildClosed(ctx)
	ds, err := r.Deliver(ctx)
	if err != nil {
		return bs, ds, errors.Join(buildErr, err)
	}
	return bs, ds, errors.Join(buildErr, r.Prune())
}

// Prune deletes finished outbox items older than KeepDone, done markers
// older than the store's MarkerTTL (emitting StatePruned events for their
// state keys) and stale rate limit entries.
func (r *Reporter) Prune() error {
	now := r.Store.Now()
	keep := r.KeepDone
	if keep <= 0 {
		keep = 7 * 24 * time.Hour
	}
	if _, err := r.Store.PruneOutbox(now.Add(-keep)); err != nil {
		return fmt.Errorf("reportgen: prune outbox: %w", err)
	}
	pruned, err := r.Store.PruneDone()
	if err != nil {
		return err
	}
	for _, wi := range pruned {
		r.emit(StateEvent{Kind: wi.Kind, Window: wi.Window, State: StatePruned, At: now})
		for _, id := range wi.Reports {
			r.emit(StateEvent{Kind: wi.Kind, Window: wi.Window, Item: id, State: StatePruned, At: now})
		}
	}
	rate := max(r.RateInterval, time.Hour)
	if err := r.Store.pruneSends(now.Add(-rate)); err != nil {
		return fmt.Errorf("reportgen: prune rate limit entries: %w", err)
	}
	return nil
}

// Run calls Tick every interval until ctx ends; errors go to onErr (which
// may be nil) and do not stop the loop.
func (r *Reporter) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, _, err := r.Tick(ctx); err != nil && onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
