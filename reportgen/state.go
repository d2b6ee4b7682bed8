package reportgen

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StatePruned is the state of the event a Reporter emits when it prunes a
// done marker: the key's delivery state is no longer needed (a tombstone on
// the compacted state topic).
const StatePruned = "pruned"

// Bounds on a decoded state event.
const (
	MaxStateValueSize = 256 << 10
	maxStateList      = 1024
	maxDestURI        = 2048
)

// BuiltDest is a destination a window's reports were built for: enough to
// build the same outbox items again (same file names, same item ids).
type BuiltDest struct {
	// URI is the rua URI without a size suffix.
	URI string `json:"uri"`
	// MaxSize is the RFC 7489 "!size" limit in octets (0: none).
	MaxSize int64 `json:"max_size,omitempty"`
}

func builtDests(ds []Destination) []BuiltDest {
	out := make([]BuiltDest, 0, len(ds))
	for _, d := range ds {
		out = append(out, BuiltDest{URI: d.URI, MaxSize: d.MaxSize})
	}
	return out
}

// destinations turns recorded destinations back into Destinations for a
// window of kind; invalid ones (which ParseStateEvent already refuses)
// are skipped.
func destinations(kind Kind, bds []BuiltDest) []Destination {
	var out []Destination
	for _, bd := range bds {
		d := Destination{URI: bd.URI, MaxSize: max(bd.MaxSize, 0)}
		switch d.Scheme() {
		case "mailto":
			addr, err := mailtoAddress(bd.URI)
			if err != nil {
				continue
			}
			d.Address = addr
		case "https":
			if kind != KindTLS {
				continue
			}
		default:
			continue
		}
		out = append(out, d)
	}
	return out
}

// StateEvent is one delivery state transition of a window or of one of its
// outbox items. Reporters publish them (Reporter.OnState) to a compacted
// topic that every reporter reads and applies (Store.ApplyState), so that a
// window one reporter built is not built again by the next owner of its
// partition, and a report one reporter sent is not sent again by another.
type StateEvent struct {
	Kind   Kind
	Window Window
	// Item is the outbox item id for item states, "" for window states.
	Item string
	// State is StateBuilt (window built into the outbox, or found to have
	// no destination), ItemSent, ItemFailed (failed for good) or
	// StatePruned (tombstone).
	State string
	// ReportIDs and Files name the built reports (window) or the item's
	// report.
	ReportIDs []string
	Files     []string
	// Items are the outbox item ids of a built window (none: no
	// destination, or the window is done at the reporter that published
	// the event), Dests the destinations they were built for. Another
	// reporter keeps the window's rows until every item is final, and
	// rebuilds it for these destinations if it takes the window over.
	Items []string
	Dests []BuiltDest
	// Dest is the item's destination URI.
	Dest string
	At   time.Time
}

type stateValue struct {
	State     string      `json:"state"`
	ReportIDs []string    `json:"report_ids,omitempty"`
	Files     []string    `json:"files,omitempty"`
	Items     []string    `json:"items,omitempty"`
	Dests     []BuiltDest `json:"dests,omitempty"`
	Dest      string      `json:"dest,omitempty"`
	At        time.Time   `json:"at"`
}

// Key is the record key of ev on the state topic: kind/domain/day for a
// window, kind/domain/day/item for an item. Compaction keeps the latest
// state of each.
func (ev *StateEvent) Key() []byte {
	k := ev.Kind.String() + "/" + ev.Window.Domain + "/" + DayString(ev.Window.Day)
	if ev.Item != "" {
		k += "/" + ev.Item
	}
	return []byte(k)
}

func validItemID(id string) bool {
	_, err := hex.DecodeString(id)
	return err == nil && len(id) == 32
}

// Value is the record value of ev: small JSON, or nil for StatePruned (a
// tombstone, so compaction eventually drops the key).
func (ev *StateEvent) Value() ([]byte, error) {
	if ev.State == StatePruned {
		return nil, nil
	}
	b, err := json.Marshal(stateValue{State: ev.State, ReportIDs: ev.ReportIDs, Files: ev.Files, Items: ev.Items, Dests: ev.Dests,
		Dest: ev.Dest, At: ev.At.UTC()})
	if err != nil {
		return nil, fmt.Errorf("reportgen: encode state event: %w", err)
	}
	return b, nil
}

// ParseStateEvent decodes a state topic record. A nil value (tombstone)
// gives a StatePruned event. Bad input gives an error, never a panic.
func ParseStateEvent(key, value []byte) (StateEvent, error) {
	var ev StateEvent
	parts := strings.Split(string(key), "/")
	if len(parts) != 3 && len(parts) != 4 {
		return ev, fmt.Errorf("reportgen: state key %q: want kind/domain/day[/item]", key)
	}
	switch parts[0] {
	case "dmarc":
		ev.Kind = KindDMARC
	case "tlsrpt":
		ev.Kind = KindTLS
	default:
		return ev, fmt.Errorf("reportgen: state key %q: kind %q", key, parts[0])
	}
	if parts[1] == "" || len(parts[1]) > 253 || strings.ToLower(parts[1]) != parts[1] {
		return ev, fmt.Errorf("reportgen: state key %q: bad domain", key)
	}
	day, err := ParseDay(parts[2])
	if err != nil {
		return ev, fmt.Errorf("reportgen: state key %q: %w", key, err)
	}
	ev.Window = Window{Domain: parts[1], Day: day}
	if len(parts) == 4 {
		if !validItemID(parts[3]) {
			return ev, fmt.Errorf("reportgen: state key %q: bad item id", key)
		}
		ev.Item = parts[3]
	}
	if value == nil {
		ev.State = StatePruned
		return ev, nil
	}
	if len(value) > MaxStateValueSize {
		return ev, fmt.Errorf("reportgen: state %q: %d octets over %d", key, len(value), MaxStateValueSize)
	}
	var v stateValue
	dec := json.NewDecoder(bytes.NewReader(value))
	if err := dec.Decode(&v); err != nil {
		return ev, fmt.Errorf("reportgen: state %q: %w", key, err)
	}
	if len(v.ReportIDs) > maxStateList || len(v.Files) > maxStateList || len(v.Items) > maxStateList || len(v.Dests) > maxStateList {
		return ev, fmt.Errorf("reportgen: state %q: too many reports", key)
	}
	ok := v.State == StateBuilt && ev.Item == "" || (v.State == ItemSent || v.State == ItemFailed) && ev.Item != "" && len(v.Items) == 0
	if !ok {
		return ev, fmt.Errorf("reportgen: state %q: state %q", key, v.State)
	}
	for _, id := range v.Items {
		if !validItemID(id) {
			return ev, fmt.Errorf("reportgen: state %q: bad item id %q", key, id)
		}
	}
	for _, d := range v.Dests {
		if len(d.URI) > maxDestURI || d.MaxSize < 0 || len(destinations(ev.Kind, []BuiltDest{d})) != 1 {
			return ev, fmt.Errorf("reportgen: state %q: bad destination %q", key, d.URI)
		}
	}
	ev.State, ev.ReportIDs, ev.Files, ev.Items, ev.Dests, ev.Dest, ev.At = v.State, v.ReportIDs, v.Files, v.Items, v.Dests, v.Dest, v.At
	return ev, nil
}

// ApplyState applies a state event published by a reporter (possibly this
// one: applying its own events is a no-op). It reports whether the store
// changed.
//
//   - A window built elsewhere with outbox items: a local open or closed
//     window (or an absent one) becomes built-remote. Its rows are kept
//     and partials are still merged into it, and the builder's item ids,
//     destinations and build time are recorded. Once every one of those
//     items is final (sent or failed, from the item events below, in
//     whatever order they arrive) the window becomes a done marker
//     (Remote) and its rows are dropped. Until then the owner of the
//     window may take it over (Reporter.TakeoverAfter) if the builder's
//     store was lost. A later built event (a takeover elsewhere) replaces
//     the record.
//   - A window built elsewhere without items (no destination, or done at
//     the publisher): a local open, closed or built-remote window, or an
//     absent one, becomes a done marker (Remote), so partials replayed or
//     arriving later count as late instead of re-opening it.
//   - A window this store built itself (or is done with) is left alone:
//     both outboxes hold the same files (same Report-IDs and names) and
//     the item states below deduplicate the sends.
//   - An item sent or failed elsewhere: the same item (same id: same kind,
//     file name and destination) still pending here is finished without
//     being sent; an item not in this outbox has its state recorded (for
//     the completion of a built-remote window, and so that a takeover
//     does not send it again).
//   - Tombstones change nothing (markers are pruned by age).
//
// Events for windows older than the marker TTL are ignored.
func (s *Store) ApplyState(ev StateEvent) (bool, error) {
	if ev.State == StatePruned {
		return false, nil
	}
	if s.ClosesAt(ev.Window.Day).Before(s.Now().Add(-s.markerTTL())) {
		return false, nil
	}
	changed := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		changed = false
		if ev.Item != "" {
			var err error
			changed, err = applyItemState(tx, ev)
			return err
		}
		if ev.State != StateBuilt {
			return fmt.Errorf("reportgen: window state %q", ev.State)
		}
		wi, err := getWindow(tx, ev.Kind, ev.Window)
		if err != nil {
			return err
		}
		switch {
		case wi == nil:
			wi = &WindowInfo{Window: ev.Window, Kind: ev.Kind}
		case wi.State == StateOpen || wi.State == StateClosed || wi.State == StateBuiltRemote:
		default:
			return nil
		}
		if len(ev.Items) == 0 {
			changed = true
			return markDone(tx, wi, true)
		}
		if wi.State == StateBuiltRemote && wi.BuiltAt.Equal(ev.At) && slices.Equal(wi.Reports, ev.Items) && slices.Equal(wi.Dests, ev.Dests) {
			return nil
		}
		changed = true
		wi.State, wi.Remote, wi.BuiltAt = StateBuiltRemote, true, ev.At
		wi.Reports, wi.Dests = slices.Clone(ev.Items), slices.Clone(ev.Dests)
		return finishRemote(tx, wi)
	})
	if err != nil {
		return false, fmt.Errorf("reportgen: apply state %s: %w", ev.Key(), err)
	}
	return changed, nil
}

// remoteItem is the final state of another reporter's outbox item.
type remoteItem struct {
	Kind   Kind      `json:"kind"`
	Domain string    `json:"domain"`
	Day    uint32    `json:"day"`
	State  string    `json:"state"`
	At     time.Time `json:"at"`
}

func getRemoteItem(tx *bolt.Tx, id string) (*remoteItem, error) {
	v := tx.Bucket(bucketRemote).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	var ri remoteItem
	if err := json.Unmarshal(v, &ri); err != nil {
		return nil, fmt.Errorf("remote item %s: %w", id, err)
	}
	return &ri, nil
}

// finishRemote stores a built-remote window, or makes it a done marker
// when every item of its build is final.
func finishRemote(tx *bolt.Tx, wi *WindowInfo) error {
	for _, id := range wi.Reports {
		ri, err := getRemoteItem(tx, id)
		if err != nil {
			return err
		}
		if ri == nil {
			return putWindow(tx, wi)
		}
	}
	return markDone(tx, wi, true)
}

func pruneRemoteItems(tx *bolt.Tx, old func(day uint32) bool) error {
	rb := tx.Bucket(bucketRemote)
	var del [][]byte
	err := rb.ForEach(func(k, v []byte) error {
		var ri remoteItem
		if err := json.Unmarshal(v, &ri); err != nil || old(ri.Day) {
			del = append(del, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range del {
		if err := rb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func applyItemState(tx *bolt.Tx, ev StateEvent) (bool, error) {
	if ev.State != ItemSent && ev.State != ItemFailed {
		return false, fmt.Errorf("reportgen: item state %q", ev.State)
	}
	ob := tx.Bucket(bucketOutbox)
	v := ob.Get([]byte(ev.Item))
	if v == nil {
		return recordRemoteItem(tx, ev)
	}
	var it OutboxItem
	if err := json.Unmarshal(v, &it); err != nil {
		return false, err
	}
	if it.State != ItemPending {
		return false, nil
	}
	finishRemotely(&it, ev.State, ev.At)
	b, err := json.Marshal(&it)
	if err != nil {
		return false, err
	}
	if err := ob.Put([]byte(it.ID), b); err != nil {
		return false, err
	}
	return true, finishIfDone(tx, it.Kind, it.Window)
}

// finishRemotely marks a local outbox item as sent or failed by another
// reporter.
func finishRemotely(it *OutboxItem, state string, at time.Time) {
	it.State, it.Remote = state, true
	if state == ItemSent {
		it.SentAt = at
		it.LastError = ""
	} else {
		it.LastError = "failed at another reporter"
	}
}

// recordRemoteItem keeps the final state of an item this outbox does not
// hold, unless its window is done here already.
func recordRemoteItem(tx *bolt.Tx, ev StateEvent) (bool, error) {
	wi, err := getWindow(tx, ev.Kind, ev.Window)
	if err != nil {
		return false, err
	}
	if wi != nil && wi.State == StateDone {
		return false, nil
	}
	b, err := json.Marshal(remoteItem{Kind: ev.Kind, Domain: ev.Window.Domain, Day: ev.Window.Day, State: ev.State, At: ev.At.UTC()})
	if err != nil {
		return false, err
	}
	rb := tx.Bucket(bucketRemote)
	if bytes.Equal(rb.Get([]byte(ev.Item)), b) {
		return false, nil
	}
	if err := rb.Put([]byte(ev.Item), b); err != nil {
		return false, err
	}
	if wi != nil && wi.State == StateBuiltRemote {
		return true, finishRemote(tx, wi)
	}
	return true, nil
}

// finishIfDone turns a built window into a done marker once none of its
// outbox items is pending.
func finishIfDone(tx *bolt.Tx, kind Kind, w Window) error {
	wi, err := getWindow(tx, kind, w)
	if err != nil || wi == nil || wi.State != StateBuilt {
		return err
	}
	ob := tx.Bucket(bucketOutbox)
	for _, id := range wi.Reports {
		v := ob.Get([]byte(id))
		if v == nil {
			continue
		}
		var it struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal(v, &it); err != nil {
			return err
		}
		if it.State == ItemPending {
			return nil
		}
	}
	return markDone(tx, wi, false)
}

// StateSnapshot returns the state events of what this store built and
// finished itself: built windows and local done markers, sent and failed
// outbox items. A reporter republishes them at start, so a transition whose
// event was lost in a crash (after the store transaction, before the
// produce) still reaches the state topic.
func (s *Store) StateSnapshot() ([]StateEvent, error) {
	var out []StateEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		items := map[string]*OutboxItem{}
		err := tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			var it OutboxItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("outbox %s: %w", k, err)
			}
			it.File = nil
			items[it.ID] = &it
			return nil
		})
		if err != nil {
			return err
		}
		for _, kind := range []Kind{KindDMARC, KindTLS} {
			all, err := listWindows(tx, kind)
			if err != nil {
				return err
			}
			for _, wi := range all {
				if wi.Remote || (wi.State != StateBuilt && wi.State != StateDone) {
					continue
				}
				out = append(out, windowEvent(&wi, items))
			}
		}
		ids := make([]string, 0, len(items))
		for id := range items {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			it := items[id]
			if it.Remote || (it.State != ItemSent && it.State != ItemFailed) {
				continue
			}
			out = append(out, itemEvent(it, it.State, it.SentAt))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reportgen: state snapshot: %w", err)
	}
	return out, nil
}

// windowEvent is the built event of a window this store built: with its
// items and destinations while built, without them once done (nothing is
// left to deliver, so a reporter that still waits for the items marks the
// window done).
func windowEvent(wi *WindowInfo, items map[string]*OutboxItem) StateEvent {
	ev := StateEvent{Kind: wi.Kind, Window: wi.Window, State: StateBuilt, At: wi.BuiltAt}
	if wi.State == StateBuilt {
		ev.Items, ev.Dests = slices.Clone(wi.Reports), slices.Clone(wi.Dests)
	}
	for _, id := range wi.Reports {
		it := items[id]
		if it == nil {
			continue
		}
		if !slices.Contains(ev.Files, it.Meta.FileName) {
			ev.Files = append(ev.Files, it.Meta.FileName)
			ev.ReportIDs = append(ev.ReportIDs, it.Meta.ReportID)
		}
		if wi.BuiltAt.IsZero() && (ev.At.IsZero() || it.Created.Before(ev.At)) {
			ev.At = it.Created
		}
	}
	return ev
}

func itemEvent(it *OutboxItem, state string, at time.Time) StateEvent {
	return StateEvent{Kind: it.Kind, Window: it.Window, Item: it.ID, State: state, ReportIDs: []string{it.Meta.ReportID},
		Files: []string{it.Meta.FileName}, Dest: it.Dest, At: at}
}

// LastSend returns when a report was last sent (or attempted) to dest, the
// zero time when never. Stored so the per-destination rate limit survives
// restarts.
func (s *Store) LastSend(dest string) (time.Time, error) {
	var t time.Time
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRate).Get([]byte(strings.ToLower(dest)))
		if v == nil {
			return nil
		}
		return t.UnmarshalBinary(v)
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("reportgen: last send to %s: %w", dest, err)
	}
	return t, nil
}

func (s *Store) recordSend(dest string, at time.Time) error {
	b, err := at.UTC().MarshalBinary()
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRate).Put([]byte(strings.ToLower(dest)), b)
	})
}

// pruneSends deletes rate limit entries older than before.
func (s *Store) pruneSends(before time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRate)
		var del [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var t time.Time
			if err := t.UnmarshalBinary(v); err != nil || t.Before(before) {
				del = append(del, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
