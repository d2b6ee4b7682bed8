package pipeline

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary re-execute itself as a pipeline process
// (AUTHPIPE_PIPELINE_CHILD=1), so tests can SIGKILL or SIGTERM a real
// process mid-stream.
func TestMain(m *testing.M) {
	if os.Getenv("AUTHPIPE_PIPELINE_CHILD") == "1" {
		os.Exit(childMain())
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
	cfg.Delivery = Delivery(envOr("AUTHPIPE_TEST_DELIVERY", string(ExactlyOnce)))
	p, err := New(cfg, &slowVerifier{Verifier: e, delay: delay}, WithKafkaOpts(testKafkaOpts()...))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := p.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

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
