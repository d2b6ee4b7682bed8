package reportgen

import (
	"context"
	"testing"
	"time"
)

// TestConfiguredSuppression: a destination on Reporter.Suppressed (the
// operator's configuration) is never contacted; its item ends suppressed
// and the other destinations of the same reports are delivered.
func TestConfiguredSuppression(t *testing.T) {
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.rep.Suppressed = map[string]bool{"mailto:dmarc@example.com": true}
	f.now = testDay.Add(26 * time.Hour)
	_, ds, err := f.rep.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ds.Suppressed != 1 || ds.Sent != 3 {
		t.Fatalf("deliver stats %+v, want 1 suppressed and 3 sent", ds)
	}
	for _, m := range f.sink.messages() {
		if m.To == "dmarc@example.com" {
			t.Fatal("suppressed destination received mail")
		}
	}
	items, err := f.store.OutboxItems(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.Dest == "mailto:dmarc@example.com" && it.State != ItemSuppressed {
			t.Fatalf("item %s: state %s", it.ID, it.State)
		}
	}
}
