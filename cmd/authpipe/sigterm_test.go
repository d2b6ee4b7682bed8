package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

	child := startRunProcess(t, addrs[1], runArgs...)
	if code, _, stderr := cli(t, 30*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", streamMbox(t, n)); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	if err := child.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-child.exited:
		if err != nil {
			t.Fatalf("run after SIGTERM: %v (want exit status 0)\n%s", err, child.logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("run still running 60s after SIGTERM:\n%s", child.logs)
	}
	if !strings.Contains(child.logs.String(), "pipeline stopped") {
		t.Errorf("no \"pipeline stopped\" in the log:\n%s", child.logs)
	}

	stop, rlogs := startRun(t, addrs[2], runArgs...)
	defer func() {
		if code := stop(); code != 0 {
			t.Errorf("restarted run exit %d:\n%s", code, rlogs)
		}
	}()
	checkVerdictsOnce(t, addr, n)
	// How far the first run got (the SIGTERM came mid-stream if the
	// restart had messages left to verify).
	t.Logf("verified after the restart:\n%s", grepLines(metricsText(t, addrs[2]), `authpipe_pipeline_messages_total{check="dmarc"`))
}

// TestRunSIGKILL: `authpipe run` with the embedded broker, the default a
// newcomer starts, is killed with SIGKILL in the middle of a stream: the
// broker dies with the pipeline, a transaction open and its files as the
// kill left them (written, never synced or closed). Restarted on the same
// data directory, the broker recovers topics, committed offsets and
// transactions from those files and the pipeline verifies what is left.
// A read_committed consumer that followed the stream across the kill, and
// one reading from the start afterwards, each see exactly one verdict per
// message: nothing lost, nothing doubled, nothing seen once and then
// taken back.
func TestRunSIGKILL(t *testing.T) {
	const n, minBefore = 4000, 300
	addrs, dataDir := freeAddrs(t, 3), t.TempDir()
	addr := addrs[0]
	runArgs := []string{"--listen", addr, "--data-dir", dataDir, "--zone", "../../examples/example.zone", "--batch-interval", "50ms"}

	child := startRunProcess(t, addrs[1], runArgs...)
	// One broker at a time on a data directory.
	if code, _, stderr := cli(t, 10*time.Second, "run", "--listen", freeAddr(t), "--http-addr", "", "--data-dir", dataDir,
		"--zone", "../../examples/example.zone"); code != exitFailure || !strings.Contains(stderr, "in use by another process") {
		t.Errorf("a second run on the data directory: exit %d, want %d saying it is in use:\n%s", code, exitFailure, stderr)
	}
	follower := newVerdictReader(t, addr, kgo.ReadCommitted())
	// All records, those of open and aborted transactions included.
	everything := newVerdictReader(t, addr, kgo.ReadUncommitted())
	if code, _, stderr := cli(t, 30*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", streamMbox(t, n)); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	// Kill once some verdicts are committed and a transaction still open
	// has written records, while messages are left.
	for deadline := time.Now().Add(30 * time.Second); follower.total < minBefore || everything.total <= follower.total; {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s, %d verdicts committed of %d written:\n%s", follower.total, everything.total, child.logs)
		}
		follower.poll(5 * time.Millisecond)
		everything.poll(5 * time.Millisecond)
	}
	if err := child.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-child.exited
	before, open := follower.total, everything.total-follower.total

	stop, rlogs := startRun(t, addrs[2], runArgs...)
	defer func() {
		if code := stop(); code != 0 {
			t.Errorf("restarted run exit %d:\n%s", code, rlogs)
		}
	}()
	if !strings.Contains(rlogs.String(), "did not stop cleanly") {
		t.Errorf("the restart does not say that the last run did not stop cleanly:\n%s", rlogs)
	}
	follower.check(t, n)
	checkVerdictsOnce(t, addr, n)
	after := messagesVerified(t, addrs[2])
	t.Logf("%d verdicts committed before the kill, at least %d more written in a transaction still open; the restart verified %d of %d messages",
		before, open, after, n)
	if after == 0 || after > n-before {
		t.Errorf("the restart verified %d messages, want 1 to %d (what was not committed before the kill)", after, n-before)
	}
}

// runProcess is `authpipe run` in a process of its own (this test binary
// as the program, TestMain).
type runProcess struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

// startRunProcess starts `authpipe run --http-addr httpAddr args...` as a
// process and waits until it is ready; the test's end kills it if it is
// still running.
func startRunProcess(t *testing.T, httpAddr string, args ...string) *runProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"run", "--http-addr", httpAddr, "--log-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "AUTHPIPE_TEST_MAIN=1")
	p := &runProcess{cmd: cmd, logs: &syncBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitReady(t, httpAddr, p.logs, p.exited, nil)
	return p
}

// streamMbox writes an mbox of n copies of the example message and returns
// its path.
func streamMbox(t *testing.T, n int) string {
	t.Helper()
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
	return path
}

// checkVerdictsOnce reads mail.verdicts from the start as a read_committed
// consumer and fails the test unless it holds exactly n verdicts with n
// distinct keys.
func checkVerdictsOnce(t *testing.T, broker string, n int) {
	t.Helper()
	newVerdictReader(t, broker, kgo.ReadCommitted()).check(t, n)
}

// verdictReader reads mail.verdicts from the start, counting verdicts by
// key.
type verdictReader struct {
	cl    *kgo.Client
	seen  map[string]int
	total int
}

func newVerdictReader(t *testing.T, broker string, isolation kgo.IsolationLevel) *verdictReader {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics("mail.verdicts"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(isolation))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &verdictReader{cl: cl, seen: map[string]int{}}
}

// poll reads what arrives within d.
func (r *verdictReader) poll(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r.cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
		r.seen[string(rec.Key)]++
		r.total++
	})
}

// check reads for up to 60 s until n verdicts have arrived, then a second
// more (anything beyond n would be a duplicate: it is given time to show),
// and fails the test unless there are exactly n verdicts with n distinct
// keys.
func (r *verdictReader) check(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); r.total < n && time.Now().Before(deadline); {
		r.poll(time.Second)
	}
	r.poll(time.Second)
	if r.total != n || len(r.seen) != n {
		t.Fatalf("%d verdicts for %d distinct keys, want %d of each", r.total, len(r.seen), n)
	}
}

// metricsText is the text of /metrics on httpAddr.
func metricsText(t *testing.T, httpAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// messagesVerified is how many messages the run serving httpAddr has
// verified (its DMARC results, summed from /metrics).
func messagesVerified(t *testing.T, httpAddr string) int {
	t.Helper()
	total := 0
	for _, l := range strings.Split(metricsText(t, httpAddr), "\n") {
		if !strings.HasPrefix(l, `authpipe_pipeline_messages_total{check="dmarc"`) {
			continue
		}
		if v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64); err == nil {
			total += int(v)
		}
	}
	return total
}
