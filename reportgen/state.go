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
	MaxStateValueSize = 64 << 10
	maxStateList      = 1024
)

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
	// Dest is the item's destination URI.
	Dest string
	At   time.Time
}

type stateValue struct {
	State     string    `json:"state"`
	ReportIDs []string  `json:"report_ids,omitempty"`
	Files     []string  `json:"files,omitempty"`
	Dest      string    `json:"dest,omitempty"`
	At        time.Time `json:"at"`
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

// Value is the record value of ev: small JSON, or nil for StatePruned (a
// tombstone, so compaction eventually drops the key).
func (ev *StateEvent) Value() ([]byte, error) {
	if ev.State == StatePruned {
		return nil, nil
	}
	b, err := json.Marshal(stateValue{State: ev.State, ReportIDs: ev.ReportIDs, Files: ev.Files, Dest: ev.Dest, At: ev.At.UTC()})
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
		if _, err := hex.DecodeString(parts[3]); err != nil || len(parts[3]) != 32 {
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
	if len(v.ReportIDs) > maxStateList || len(v.Files) > maxStateList {
		return ev, fmt.Errorf("reportgen: state %q: too many reports", key)
	}
	ok := v.State == StateBuilt && ev.Item == "" || (v.State == ItemSent || v.State == ItemFailed) && ev.Item != ""
	if !ok {
		return ev, fmt.Errorf("reportgen: state %q: state %q", key, v.State)
	}
	ev.State, ev.ReportIDs, ev.Files, ev.Dest, ev.At = v.State, v.ReportIDs, v.Files, v.Dest, v.At
	return ev, nil
}

// ApplyState applies a state event published by a reporter (possibly this
// one: applying its own events is a no-op). It reports whether the store
// changed.
//
//   - A window built elsewhere: a local open or closed window becomes a done
//     marker (Remote) and its rows are dropped, since the builder counted
//     them; an absent window gets a marker, so partials replayed or arriving
//     later count as late instead of re-opening it. A window this store built
//     itself is left alone: both outboxes hold the same files (same
//     Report-IDs and names) and the item states below deduplicate the sends.
//   - An item sent or failed elsewhere: the same item (same id: same kind,
//     file name and destination) still pending here is finished without
//     being sent.
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
		case wi.State == StateOpen || wi.State == StateClosed:
		default:
			return nil
		}
		changed = true
		return markDone(tx, wi, true)
	})
	if err != nil {
		return false, fmt.Errorf("reportgen: apply state %s: %w", ev.Key(), err)
	}
	return changed, nil
}

func applyItemState(tx *bolt.Tx, ev StateEvent) (bool, error) {
	if ev.State != ItemSent && ev.State != ItemFailed {
		return false, fmt.Errorf("reportgen: item state %q", ev.State)
	}
	ob := tx.Bucket(bucketOutbox)
	v := ob.Get([]byte(ev.Item))
	if v == nil {
		return false, nil
	}
	var it OutboxItem
	if err := json.Unmarshal(v, &it); err != nil {
		return false, err
	}
	if it.State != ItemPending {
		return false, nil
	}
	it.State, it.Remote = ev.State, true
	if ev.State == ItemSent {
		it.SentAt = ev.At
		it.LastError = ""
	} else {
		it.LastError = "failed at another reporter"
	}
	b, err := json.Marshal(&it)
	if err != nil {
		return false, err
	}
	if err := ob.Put([]byte(it.ID), b); err != nil {
		return false, err
	}
	return true, finishIfDone(tx, it.Kind, it.Window)
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

func windowEvent(wi *WindowInfo, items map[string]*OutboxItem) StateEvent {
	ev := StateEvent{Kind: wi.Kind, Window: wi.Window, State: StateBuilt}
	for _, id := range wi.Reports {
		it := items[id]
		if it == nil {
			continue
		}
		if !slices.Contains(ev.Files, it.Meta.FileName) {
			ev.Files = append(ev.Files, it.Meta.FileName)
			ev.ReportIDs = append(ev.ReportIDs, it.Meta.ReportID)
		}
		if ev.At.IsZero() || it.Created.Before(ev.At) {
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
