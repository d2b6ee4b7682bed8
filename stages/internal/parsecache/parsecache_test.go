package parsecache

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestGetMemoises(t *testing.T) {
	c := New[int](0, 0, nil)
	calls := 0
	parse := func(s string) (int, error) {
		calls++
		if s == "bad" {
			return 0, errors.New("bad record")
		}
		return len(s), nil
	}
	for range 3 {
		if v, err := c.Get("v=spf1 -all", parse); v != 11 || err != nil {
			t.Fatalf("got %d, %v", v, err)
		}
		if _, err := c.Get("bad", parse); err == nil {
			t.Fatal("error not kept")
		}
	}
	if calls != 2 {
		t.Fatalf("parse called %d times, want 2", calls)
	}
}

// TestBounds: the entry bound holds and long texts are never stored.
func TestBounds(t *testing.T) {
	c := New[int](10, 16, nil)
	parse := func(s string) (int, error) { return len(s), nil }
	for i := range 100 {
		c.Get("rec"+strconv.Itoa(i), parse)
	}
	if c.Len() != 10 {
		t.Fatalf("len %d, want the bound 10", c.Len())
	}
	c = New[int](10, 16, nil)
	if v, _ := c.Get(strings.Repeat("x", 17), parse); v != 17 || c.Len() != 0 {
		t.Fatalf("long text: v %d len %d", v, c.Len())
	}
}

// TestByteBound: entries are charged their text, their parse result by the
// size function and their error text, and the total stays within entries ×
// maxText even when parse results dwarf their texts.
func TestByteBound(t *testing.T) {
	c := New[[]byte](10, 16, func(b []byte) int { return len(b) })
	big := func(s string) ([]byte, error) { return make([]byte, 50), nil }
	for i := range 100 {
		c.Get("rec"+strconv.Itoa(i), big)
		if c.Bytes() > 160 {
			t.Fatalf("%d bytes charged, over the bound 160", c.Bytes())
		}
	}
	if c.Len() != 160/(50+5) {
		t.Errorf("len %d, want %d entries of 55 bytes", c.Len(), 160/(50+5))
	}
	// An entry over the whole budget is returned but not kept; an error's
	// text is charged.
	if v, _ := c.Get("huge", func(string) ([]byte, error) { return make([]byte, 200), nil }); len(v) != 200 {
		t.Fatal("huge value not returned")
	}
	if c.Len() != 160/(50+5) {
		t.Errorf("huge value kept: len %d", c.Len())
	}
	c = New[[]byte](10, 16, nil)
	if _, err := c.Get("bad", func(string) ([]byte, error) { return nil, errors.New("syntax error") }); err == nil {
		t.Fatal("error lost")
	}
	if c.Bytes() != len("bad")+len("syntax error") {
		t.Errorf("charged %d bytes for a cached error", c.Bytes())
	}
}

func TestConcurrent(t *testing.T) {
	c := New[string](8, 0, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				s := strconv.Itoa((g * i) % 20)
				if v, _ := c.Get(s, func(s string) (string, error) { return s + "!", nil }); v != s+"!" {
					t.Errorf("got %q for %q", v, s)
					return
				}
			}
		})
	}
	wg.Wait()
	if c.Len() > 8 {
		t.Fatalf("len %d over bound", c.Len())
	}
}

// TestChurnKeepsMapSize: a full cache replacing its entries one at a time
// stays at its size (see compact; without it the map grew by 30% over
// 160000 replacements here and 90% over 800000, still growing).
func TestChurnKeepsMapSize(t *testing.T) {
	const n = DefaultEntries
	live := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	base := live()
	c := New[int](n, 0, nil)
	parse := func(s string) (int, error) { return 0, nil }
	text := func(i int) string { return "v=spf1 ip4:" + strconv.Itoa(i) }
	for i := range n {
		c.Get(text(i), parse)
	}
	full := live() - base
	for i := n; i < 200*n; i++ {
		c.Get(text(i), parse)
	}
	grown := live() - base - full
	t.Logf("%d entries: %d bytes; %d more after %d replacements", n, full, grown, 199*n)
	if grown > full/4 {
		t.Errorf("the cache grew from %d to %d bytes while replacing its entries", full, full+grown)
	}
	runtime.KeepAlive(c)
}
