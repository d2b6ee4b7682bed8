package reportgen

import (
	"testing"
	"time"
)

// FuzzParseStateEvent feeds ParseStateEvent (records of the state topic,
// written by other reporters) arbitrary keys and values: it must return an
// event or an error, never panic, and an accepted event must encode again
// and parse back to the same key and state.
func FuzzParseStateEvent(f *testing.F) {
	at := time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)
	w := Window{Domain: "example.com", Day: DayOf(at)}
	for _, ev := range []StateEvent{
		{Kind: KindDMARC, Window: w, State: StateBuilt, ReportIDs: []string{"r1"}, Files: []string{"f1.xml.gz"}, At: at},
		{Kind: KindTLS, Window: w, State: StateBuilt, At: at},
		{Kind: KindDMARC, Window: w, Item: "0123456789abcdef", State: ItemSent, At: at},
	} {
		v, err := ev.Value()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ev.Key(), v)
	}
	f.Add([]byte("dmarc/example.com/2026-11-21"), []byte(nil))
	f.Add([]byte("tlsrpt/EXAMPLE.com/2026-13-40/x"), []byte(`{"state":`))
	f.Add([]byte("dmarc//"), []byte(`{"state":"built","items":["a"],"dests":[{}]}`))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		ev, err := ParseStateEvent(key, value)
		if err != nil {
			return
		}
		if ev.State == StatePruned {
			return
		}
		v, err := ev.Value()
		if err != nil {
			t.Fatalf("accepted event does not encode: %+v: %v", ev, err)
		}
		back, err := ParseStateEvent(ev.Key(), v)
		if err != nil || string(back.Key()) != string(ev.Key()) || back.State != ev.State {
			t.Fatalf("round trip %+v → %+v: %v", ev, back, err)
		}
	})
}
