package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestMain lets a test run this test binary as the authpipe program
// (AUTHPIPE_TEST_MAIN=1): main, its signal handling and its exit status
// included.
func TestMain(m *testing.M) {
	if os.Getenv("AUTHPIPE_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// TestRunSIGTERM: `authpipe run` as a process of its own, with the
// embedded broker, gets SIGTERM while it verifies a stream of messages: it
// stops fetching, finishes or aborts what is in flight, commits, and exits
// with status 0. Restarted on the same data directory it verifies the
// rest; a read_committed consumer then sees exactly one verdict per
// message.
func TestRunSIGTERM(t *testing.T) {
	const n = 2000
	addrs, dataDir := freeAddrs(t, 3), t.TempDir()
	addr := addrs[0]
	runArgs := []string{"--listen", addr, "--data-dir", dataDir, "--zone", "../../examples/example.zone", "--batch-interval", "50ms"}

	cmd := exec.Command(os.Args[0], append([]string{"run", "--http-addr", addrs[1], "--log-format", "json"}, runArgs...)...)
	cmd.Env = append(os.Environ(), "AUTHPIPE_TEST_MAIN=1")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	waitReady(t, addrs[1], logs, exited, nil)

	eml, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	var mbox strings.Builder
	for range n {
		mbox.WriteString("From alice@example.com Fri May  1 12:00:00 2026\n")
		mbox.Write(eml)
		mbox.WriteString("\n")
	}
	path := filepath.Join(t.TempDir(), "stream.mbox")
	if err := os.WriteFile(path, []byte(mbox.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cli(t, 30*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", path); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("run after SIGTERM: %v (want exit status 0)\n%s", err, logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("run still running 60s after SIGTERM:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "pipeline stopped") {
		t.Errorf("no \"pipeline stopped\" in the log:\n%s", logs)
	}

	stop, rlogs := startRun(t, addrs[2], runArgs...)
	defer func() {
		if code := stop(); code != 0 {
			t.Errorf("restarted run exit %d:\n%s", code, rlogs)
		}
	}()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("mail.verdicts"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seen := map[string]int{}
	total := 0
	deadline := time.Now().Add(60 * time.Second)
	for total < n && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			seen[string(r.Key)]++
			total++
		})
		cancel()
	}
	// Anything beyond n would be a duplicate: give it time to show.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
		seen[string(r.Key)]++
		total++
	})
	cancel()
	if total != n || len(seen) != n {
		t.Fatalf("%d verdicts for %d distinct keys, want %d of each", total, len(seen), n)
	}
	// How far the first run got (the SIGTERM came mid-stream if the
	// restart had messages left to verify).
	resp, err := http.Get("http://" + addrs[2] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("verified after the restart:\n%s", grepLines(string(metrics), `authpipe_pipeline_messages_total{check="dmarc"`))
}
