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
	if !strings.Contains(out, "200") {
		t.Errorf("demo output lacks the message count:\n%s", out)
	}
	for _, want := range []string{"messages ", "DNS cache hit rate", "legit → pass/none", "spf-only → pass/none",
		"forwarded → pass/none", "forwarded-arc → fail/none (trusted_forwarder)", "spoof → fail/",
		"altered → pass/none", "null-sender → pass/none", "dns-failure → temperror/none"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
