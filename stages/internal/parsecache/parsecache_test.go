package parsecache

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestGetMemoises(t *testing.T) {
	c := New[int](0, 0)
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
	c := New[int](10, 16)
	parse := func(s string) (int, error) { return len(s), nil }
	for i := range 100 {
		c.Get("rec"+strconv.Itoa(i), parse)
	}
	if c.Len() != 10 {
		t.Fatalf("len %d, want the bound 10", c.Len())
	}
	c = New[int](10, 16)
	if v, _ := c.Get(strings.Repeat("x", 17), parse); v != 17 || c.Len() != 0 {
		t.Fatalf("long text: v %d len %d", v, c.Len())
	}
}

func TestConcurrent(t *testing.T) {
	c := New[string](8, 0)
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
