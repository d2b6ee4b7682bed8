package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// TestMain lets the test binary re-execute itself as a pipeline process
// (AUTHPIPE_PIPELINE_CHILD=1), so tests can SIGKILL or SIGTERM a real
// process mid-stream.
func TestMain(m *testing.M) {
	if os.Getenv("AUTHPIPE_PIPELINE_CHILD") == "1" {
		os.Exit(childMain())
	}
	if dir := os.Getenv("AUTHPIPE_TEST_CLAIM"); dir != "" {
		os.Exit(claimChildMain(dir))
	}
	os.Exit(m.Run())
}

func childMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	brokers := strings.Split(os.Getenv("AUTHPIPE_TEST_BROKERS"), ",")
	delay, _ := time.ParseDuration(envOr("AUTHPIPE_TEST_DELAY", "2ms"))
	e := testEngineNoT(os.Getenv("AUTHPIPE_TEST_DNS"))
	cfg := testConfig(brokers, os.Getenv("AUTHPIPE_TEST_TXNID"))
	cfg.MaxInFlight = 8
	cfg.InstanceLockDir = os.Getenv("AUTHPIPE_TEST_LOCKDIR")
	cfg.Delivery = Delivery(envOr("AUTHPIPE_TEST_DELIVERY", string(ExactlyOnce)))
	var v Verifier = &slowVerifier{Verifier: e, delay: delay}
	if wait, err := time.ParseDuration(os.Getenv("AUTHPIPE_TEST_STRAGGLER")); err == nil {
		// Stragglers deferred to a retry stage in this process; one
		// message in ten takes 200ms more.
		cfg.RetryTopic, cfg.StragglerWait = "mail.raw.retry", wait
		v = &tailVerifier{Verifier: v, delay: 200 * time.Millisecond}
	}
	// The client ID names the process, so that a test can tell its group
	// membership from another's (childClientID).
	opts := []Option{WithKafkaOpts(testKafkaOpts()...), WithKafkaOpts(kgo.ClientID(childClientID(os.Getpid())))}
	if os.Getenv("AUTHPIPE_TEST_LOG") != "" {
		// The child's own log and its Kafka client's, on standard error
		// with the process ID, as testLog gives the test's.
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("pid", os.Getpid())
		opts = append(opts, WithLogger(log), WithKafkaOpts(kgo.WithLogger(kslog.New(log.With("kafka", true)))))
	}
	p, err := New(cfg, v, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	run := []*Pipeline{p}
	if cfg.RetryTopic != "" {
		r, err := New(RetryStage(p.Config()), v, opts...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		run = append(run, r)
	}
	errc := make(chan error, len(run))
	for _, p := range run {
		go func() { errc <- p.Run(ctx) }()
	}
	code := 0
	for range run {
		if err := <-errc; err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	return code
}

// tailVerifier delays the messages whose body ends in 7 (one in ten of
// corpus): the slow tail that straggler deferral is for.
type tailVerifier struct {
	Verifier
	delay time.Duration
}

func (s *tailVerifier) Verify(ctx context.Context, raw []byte, env stages.Envelope) *verdict.Verdict {
	if bytes.HasSuffix(raw, []byte("7\r\n")) {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
		}
	}
	return s.Verifier.Verify(ctx, raw, env)
}

// childClientID is the Kafka client ID of the child process with pid.
func childClientID(pid int) string { return fmt.Sprintf("authpipe-test-%d", pid) }

// startChild starts this test binary as a pipeline process.
func startChild(t *testing.T, brokers []string, dnsAddr, txnID string, extraEnv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		"AUTHPIPE_PIPELINE_CHILD=1",
		"AUTHPIPE_TEST_BROKERS="+strings.Join(brokers, ","),
		"AUTHPIPE_TEST_DNS="+dnsAddr,
		"AUTHPIPE_TEST_TXNID="+txnID,
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}
