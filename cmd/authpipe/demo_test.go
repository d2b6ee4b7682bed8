package main

import (
	"strings"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	code, out, stderr := cli(t, 60*time.Second, "demo", "--messages", "200", "--domains", "6", "--max-in-flight", "32")
	if code != 0 {
		t.Fatalf("demo: %d %s", code, stderr)
	}
	for _, want := range []string{"messages                      200", "legit → pass/none", "spoof → fail/reject", "altered → pass/none"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
