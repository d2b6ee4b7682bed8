package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/authpipe/authpipe/internal/schematest"
	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeAddrs(t, 1)[0]
}

// freeAddrs returns n distinct free loopback addresses. All n listeners
// stay open until every port is chosen: picking them one by one, the
// kernel can hand out a just-closed port again, and a broker and an HTTP
// server given the same port fail at start.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

// startRun runs `authpipe run args...` in-process until the returned stop
// is called; stop returns the exit code. It waits for /readyz.
func startRun(t *testing.T, httpAddr string, args ...string) (stop func() int, logs *syncBuffer) {
	t.Helper()
	return startRunWith(t, httpAddr, func(ctx context.Context, args []string, stderr io.Writer) int {
		return run(ctx, args, strings.NewReader(""), io.Discard, stderr)
	}, args...)
}

// startRunWith is startRun with the command line executed by exec (args
// start with "run").
func startRunWith(t *testing.T, httpAddr string, exec func(ctx context.Context, args []string, stderr io.Writer) int, args ...string) (stop func() int, logs *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	done := make(chan int, 1)
	args = append([]string{"run", "--http-addr", httpAddr}, args...)
	go func() { done <- exec(ctx, args, logs) }()
	waitReady(t, httpAddr, logs, done, cancel)
	return func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			t.Fatalf("run did not stop within 30s:\n%s", logs)
			return -1
		}
	}, logs
}

// waitReady polls /readyz on httpAddr until it answers 200 OK, for up to
// 20 s; a value on done (an exit status or error) means run has ended. On
// failure it calls cleanup, if any, and fails the test with logs.
func waitReady[T any](t *testing.T, httpAddr string, logs *syncBuffer, done <-chan T, cleanup func()) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		how, ended := "", false
		select {
		case v := <-done:
			how, ended = fmt.Sprintf("ended (%v)", v), true
		default:
			if time.Now().After(deadline) {
				how, ended = "not ready after 20s", true
			}
		}
		if ended {
			if cleanup != nil {
				cleanup()
			}
			t.Fatalf("run: %s:\n%s", how, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cli(t *testing.T, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestRunEmbeddedProduceTail is the quick start end to end: `run` with the
// embedded broker, `produce` of a file, an mbox and a JSON-lines envelope
// file, `tail` of the verdicts; then a restart on the same data directory
// keeps the topics and committed offsets (nothing is verified twice).
func TestRunEmbeddedProduceTail(t *testing.T) {
	addrs, dataDir := freeAddrs(t, 2), t.TempDir()
	addr, httpAddr := addrs[0], addrs[1]
	zone := "../../examples/example.zone"
	runArgs := []string{"--listen", addr, "--data-dir", dataDir, "--zone", zone, "--batch-interval", "50ms"}
	stop, logs := startRun(t, httpAddr, runArgs...)
	if !strings.Contains(logs.String(), "authpipe produce --brokers "+addr) {
		t.Errorf("no how-to-produce log line:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "report delivery off: --receiver and --from are not set") {
		t.Errorf("no log line saying why reports are not delivered:\n%s", logs)
	}

	eml, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mbox := filepath.Join(dir, "archive.mbox")
	mboxBody := "From alice@example.com Fri May  1 12:00:00 2026\n" + string(eml) + "\nFrom alice@example.com Fri May  1 12:00:01 2026\n" + string(eml)
	if err := os.WriteFile(mbox, []byte(mboxBody), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(string(eml))
	jsonl := filepath.Join(dir, "env.jsonl")
	abs, err := filepath.Abs("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	lines := fmt.Sprintf(`{"path": %q, "client_ip": "192.0.2.10", "helo": "mail.example.com", "mail_from": "alice@example.com", "rcpt_to": ["bob@example.net"], "received_at": "2026-05-01T12:00:00Z", "queue_id": "Q1"}
{"raw": %s, "client_ip": "198.51.100.1", "mail_from": "alice@example.com", "key": "K2"}
`, abs, raw)
	if err := os.WriteFile(jsonl, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "--helo", "mail.example.com",
		"--mail-from", "alice@example.com", "--rcpt-to", "bob@example.net", "--received-at", "2026-05-01T12:00:00Z",
		"../../examples/message.eml", mbox, "--envelopes", jsonl)
	if code != 0 || !strings.Contains(stderr, "produced 5 messages") {
		t.Fatalf("produce: %d %s", code, stderr)
	}

	code, out, stderr := cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", "5", "--format", "json")
	if code != 0 {
		t.Fatalf("tail: %d %s", code, stderr)
	}
	schema := schematest.Compile(t, "verdict.schema.json")
	keys := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		schematest.Validate(t, schema, []byte(line))
		var v verdict.Verdict
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatal(err)
		}
		keys[v.Key] = v.SPF.Result + "/" + v.DMARC.Result
	}
	want := map[string]string{"message.eml": "pass/pass", "archive.mbox#1": "pass/pass", "archive.mbox#2": "pass/pass", "Q1": "pass/pass", "K2": "fail/pass"}
	for k, w := range want {
		if keys[k] != w {
			t.Errorf("verdict %s: spf/dmarc %q, want %q (all: %v)", k, keys[k], w, keys)
		}
	}
	code, out, _ = cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", "1")
	if code != 0 || !strings.Contains(out, "spf=pass") || !strings.Contains(out, "dmarc=pass") {
		t.Errorf("tail pretty: %d %q", code, out)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}

	// Restart on the same data directory.
	stop, logs = startRun(t, httpAddr, runArgs...)
	if code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", "../../examples/message.eml"); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	if code, out, _ := cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", "6", "--format", "json"); code != 0 || strings.Count(out, "\n") != 6 {
		t.Fatalf("tail after restart: %d, %d lines", code, strings.Count(out, "\n"))
	}
	time.Sleep(300 * time.Millisecond)
	metrics := metricsText(t, httpAddr)
	if !strings.Contains(metrics, `authpipe_pipeline_messages_total{check="spf",result="pass"} 1`) {
		t.Errorf("after restart the pipeline should verify only the new message; metrics:\n%s", grepLines(metrics, "authpipe_pipeline_messages_total"))
	}
	if !strings.Contains(metrics, "authpipe_kafka_") {
		t.Error("no kprom metrics")
	}
	// The DNS client and cache count into the same registry.
	for _, name := range []string{"authpipe_dns_cache_hits_total", "authpipe_dns_cache_misses_total", "authpipe_dns_queries_total", "authpipe_dns_lookups_total"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("no %s on /metrics", name)
		}
	}
	// The retry stage runs beside the first (--straggler-wait defaults on).
	if !strings.Contains(metrics, "authpipe_retry_batches_total") && !strings.Contains(metrics, "authpipe_retry_in_flight_messages") {
		t.Error("no retry-stage metrics (authpipe_retry_*)")
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestRunExternalBrokerDLQ joins a broker given by --brokers and checks an
// undecodable record reaches the DLQ.
func TestRunExternalBrokerDLQ(t *testing.T) {
	b, err := pipeline.StartBroker(pipeline.BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokers := strings.Join(b.Addrs(), ",")
	t.Setenv("AUTHPIPE_PARTITIONS", "3")
	httpAddr := freeAddr(t)
	stop, logs := startRun(t, httpAddr, "--brokers", brokers, "--data-dir", t.TempDir(), "--zone", "../../examples/example.zone", "--batch-interval", "50ms",
		"--delivery", "at-least-once", "--log-format", "json")
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ConsumeTopics("mail.raw.dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "mail.raw", Key: []byte("bad"), Value: []byte("hello")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Key) != "bad" || len(recs[0].Headers) != 1 || recs[0].Headers[0].Key != "authpipe.error" {
		t.Fatalf("DLQ: %v %v", recs, fs.Errors())
	}
	parts, err := kgoPartitions(b.Addrs(), "mail.verdicts")
	if err != nil || parts != 3 {
		t.Errorf("mail.verdicts partitions %d (%v), want 3 from AUTHPIPE_PARTITIONS", parts, err)
	}
	// The Kafka client's metrics are those of the pipeline's client (not
	// of the broker check's, which runs first).
	metrics := metricsText(t, httpAddr)
	if !strings.Contains(metrics, "authpipe_kafka_connects_total") {
		t.Errorf("no Kafka client metrics (authpipe_kafka_*):\n%s", grepLines(metrics, "authpipe_kafka"))
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

func kgoPartitions(brokers []string, topic string) (int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(context.Background(), cl)
	if err != nil {
		return 0, err
	}
	return len(resp.Topics[0].Partitions), nil
}

// TestMemorySettings: --memory-limit auto sets the Go memory limit to the
// pipeline's bound, GOGC/GOMEMLIMIT in the environment win over the flags,
// bad values are usage errors, and the previous settings come back.
func TestMemorySettings(t *testing.T) {
	d := pipeline.Defaults()
	d.MaxInFlight = 512
	bound := pipeline.MemoryBound(d, 64<<20, stages.CacheBytes)
	t.Logf("default bound (512 in flight, 64 MiB DNS cache): %d bytes (%.0f MiB): %+v", bound.Total, float64(bound.Total)/(1<<20), bound)
	log := slog.New(slog.DiscardHandler)
	noEnv := func(string) string { return "" }
	before := debug.SetMemoryLimit(-1)
	rf := &runFlags{memoryLimit: "auto", gcPercent: 400}
	restore, err := applyMemorySettings(rf, bound, noEnv, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != bound.GoMemoryLimit() {
		t.Errorf("limit %d, want 75%% of the bound %d", got, bound.Total)
	}
	restore()
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("limit not restored: %d, want %d", got, before)
	}
	rf.memoryLimit = "3g"
	env := map[string]string{"GOMEMLIMIT": "1GiB"}
	restore, err = applyMemorySettings(rf, bound, func(k string) string { return env[k] }, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("GOMEMLIMIT in the environment should win: limit changed to %d", got)
	}
	restore()
	for _, bad := range []runFlags{{memoryLimit: "lots", gcPercent: 100}, {memoryLimit: "auto", gcPercent: 0}, {memoryLimit: "auto", gcPercent: -5}} {
		if _, err := applyMemorySettings(&bad, bound, noEnv, log); !errors.As(err, new(usageError)) {
			t.Errorf("%+v: want a usage error, got %v", bad, err)
		}
	}
}

// TestRunBrokerFlagsChecked: embedded-broker sizes, straggler settings,
// the DKIM key cache size and the DNS queries in flight out of range are
// usage errors, reported before anything starts.
func TestRunBrokerFlagsChecked(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--broker-retention", "0s"},
		{"--broker-segment-bytes", "4096"},
		{"--straggler-wait", "-1s"},
		{"--retry-topic", ""},
		{"--retry-topic", "mail.raw"},
		{"--dkim-key-cache", "0"},
		{"--dkim-key-cache", "20000000"},
		{"--dns-max-in-flight", "-1"},
	} {
		code, _, stderr := authpipe(t, "", append([]string{"run", "--listen", "127.0.0.1:0", "--data-dir", dir}, args...)...)
		if code != exitUsage || !strings.Contains(stderr, strings.TrimPrefix(args[0], "--")) && !strings.Contains(stderr, "RetryTopic") {
			t.Errorf("%v: exit %d, want %d; stderr %q", args, code, exitUsage, stderr)
		}
	}
}

// TestLogFormat checks --log-format: auto writes JSON to what is not a
// terminal (a pipe, a file, a buffer) and text to a character device.
func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	for _, format := range []string{"auto", "json"} {
		buf.Reset()
		log, err := newLogger(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", "n", 1)
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "hello" {
			t.Errorf("%s: %q is not a JSON record (%v)", format, buf.String(), err)
		}
	}
	buf.Reset()
	log, err := newLogger(&buf, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello")
	if !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("text: %q", buf.String())
	}
	// A character device stands in for a terminal here (no pty in the
	// tests): auto chooses text for it.
	tty, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	if log, err := newLogger(tty, "info", "auto"); err != nil {
		t.Fatal(err)
	} else if _, ok := log.Handler().(*slog.TextHandler); !ok {
		t.Errorf("auto on a character device: %T, want text", log.Handler())
	}
	if _, err := newLogger(&buf, "info", "yaml"); err == nil {
		t.Error("--log-format yaml accepted")
	}
}

// TestRunProduceTailShareConfig: one YAML file serves run, produce and
// tail. run reads it through AUTHPIPE_CONFIG (documented, but until
// session 22 not read), produce through --config, tail through
// AUTHPIPE_CONFIG again; the file's listen address and topics, none of
// them the defaults, reach all three, and nothing is given on their
// command lines but the file and the message.
func TestRunProduceTailShareConfig(t *testing.T) {
	addrs, dataDir := freeAddrs(t, 2), t.TempDir()
	addr, httpAddr := addrs[0], addrs[1]
	cfg := filepath.Join(t.TempDir(), "authpipe.yaml")
	yaml := fmt.Sprintf("listen: %s\ndata-dir: %s\nzone: ../../examples/example.zone\nbatch-interval: 50ms\n"+
		"input-topic: raw.custom\nverdict-topic: verdicts.custom\n", addr, dataDir)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AUTHPIPE_CONFIG", cfg)
	t.Setenv("AUTHPIPE_MAX_INFLIGHT", "5") // a typo: warned about, not an error
	stop, logs := startRun(t, httpAddr)
	if !strings.Contains(logs.String(), `"input":"raw.custom"`) {
		t.Fatalf("run did not read AUTHPIPE_CONFIG:\n%s", logs)
	}
	if !strings.Contains(logs.String(), `names no option of any authpipe command; ignored","variable":"AUTHPIPE_MAX_INFLIGHT","did_you_mean":"AUTHPIPE_MAX_IN_FLIGHT"`) {
		t.Errorf("no warning about AUTHPIPE_MAX_INFLIGHT:\n%s", logs)
	}
	t.Setenv("AUTHPIPE_CONFIG", "")
	code, _, stderr := cli(t, 20*time.Second, "produce", "--config", cfg, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", "../../examples/message.eml")
	if code != 0 || !strings.Contains(stderr, "produced 1 message to raw.custom on "+addr) {
		t.Fatalf("produce: %d %s", code, stderr)
	}
	t.Setenv("AUTHPIPE_CONFIG", cfg)
	code, out, stderr := cli(t, 30*time.Second, "tail", "--from-beginning", "--count", "1")
	if code != 0 || !strings.Contains(out, "spf=pass") || !strings.Contains(out, "dmarc=pass") {
		t.Errorf("tail: %d %q %s", code, out, stderr)
	}
	if strings.Contains(stderr, "does not exist") {
		t.Errorf("tail of an existing topic: %s", stderr)
	}
	// produce to a topic that does not exist fails, naming it.
	code, _, stderr = cli(t, 20*time.Second, "produce", "--brokers", addr, "--topic", "raw.typo", "../../examples/message.eml")
	if code != 1 || !strings.Contains(stderr, "topic raw.typo does not exist") {
		t.Errorf("produce to a missing topic: %d %q", code, stderr)
	}
	// The metrics docs/configuration.md names are the ones served (a
	// record for the DLQ first: its counter appears with its first use).
	junk := filepath.Join(t.TempDir(), "junk.eml")
	if err := os.WriteFile(junk, []byte("not a message\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cli(t, 20*time.Second, "produce", "--config", cfg, "--ip", "192.0.2.10", junk); code != 0 {
		t.Fatalf("produce junk: %s", stderr)
	}
	checkDocumentedMetrics(t, httpAddr, `authpipe_pipeline_dlq_total{kind="not-a-message"} 1`)
	// tail reads the DLQ as such: the key, the error and the envelope.
	code, out, stderr = cli(t, 20*time.Second, "tail", "--topic", "mail.raw.dlq", "--from-beginning", "--count", "1", "--format", "json")
	var dead struct {
		DLQ struct {
			Key, Error string
			Bytes      int
			Headers    map[string][]string
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &dead) != nil || dead.DLQ.Key != "junk.eml" || !strings.HasPrefix(dead.DLQ.Error, "not-a-message: ") ||
		dead.DLQ.Bytes != len("not a message\x00") || dead.DLQ.Headers["smtp.client-ip"][0] != "192.0.2.10" {
		t.Errorf("tail of the DLQ: %d %q %s", code, out, stderr)
	}
	// A topic that does not exist is waited for, with a word on stderr.
	code, out, stderr = cli(t, 2*time.Second, "tail", "--topic", "verdicts.typo")
	if code != 0 || out != "" || !strings.Contains(stderr, "topic verdicts.typo does not exist yet; waiting for it") {
		t.Errorf("tail of a missing topic: %d %q %q", code, out, stderr)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "run stopped: work committed, exit 0") {
		t.Errorf("last log line of a clean stop: %s", last)
	}
}

// TestRunWarnsWhenDNSDoesNotAnswer: run names its DNS servers at start and
// warns when they do not answer a first query (every verdict would say
// temperror); with --zone there is no network to ask.
func TestRunWarnsWhenDNSDoesNotAnswer(t *testing.T) {
	addrs := freeAddrs(t, 3)
	addr, httpAddr, deadDNS := addrs[0], addrs[1], addrs[2] // nothing listens on deadDNS
	stop, logs := startRun(t, httpAddr, "--listen", addr, "--data-dir", t.TempDir(), "--resolver", deadDNS, "--dns-timeout", "200ms")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "DNS servers not answering"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the DNS server:\n%s", logs)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"DNS","servers":["`+deadDNS+`"]`) {
		t.Errorf("no DNS start line naming %s:\n%s", deadDNS, logs)
	}
	// Once its queries keep failing (the probe's two refused ones, then a
	// message's), the server itself is named as held down, in the log and
	// the metrics.
	if code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addr, "--ip", "192.0.2.10", "../../examples/message.eml"); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `"msg":"DNS server not answering`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming the server:\n%s", logs)
		}
	}
	if !strings.Contains(logs.String(), `"server":"`+deadDNS+`"`) {
		t.Errorf("the warning does not name %s:\n%s", deadDNS, logs)
	}
	if m := metricsText(t, httpAddr); !strings.Contains(m, `authpipe_dns_upstream_up{server="`+deadDNS+`"} 0`) {
		t.Errorf("metrics do not show %s down", deadDNS)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

// TestRunFirstResolverDead: with two resolvers and the first silent (a
// partial outage: one of resolv.conf's servers down), the stream's verdicts
// are the normal ones, not temperror, and the log names the dead server;
// after it is held down lookups no longer wait out its timeout first (see
// resolvercache's TestDeadUpstreamAskedLast, which counts the queries).
func TestRunFirstResolverDead(t *testing.T) {
	zone, err := os.ReadFile("../../examples/example.zone")
	if err != nil {
		t.Fatal(err)
	}
	good, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Close)
	if err := good.AddZone(string(zone)); err != nil {
		t.Fatal(err)
	}
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	addrs := freeAddrs(t, 2)
	stop, logs := startRun(t, addrs[1], "--listen", addrs[0], "--data-dir", t.TempDir(), "--batch-interval", "50ms",
		"--resolver", silent.LocalAddr().String(), "--resolver", good.Addr, "--dns-timeout", "300ms")
	dir := t.TempDir()
	files := map[string]string{}
	eml, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		files[fmt.Sprintf("in/%02d.eml", i)] = string(eml)
	}
	writeTree(t, dir, files)
	if code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addrs[0], "--ip", "192.0.2.10", "--mail-from", "alice@example.com", filepath.Join(dir, "in")); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	code, out, stderr := cli(t, 60*time.Second, "tail", "--brokers", addrs[0], "--from-beginning", "--count", strconv.Itoa(n), "--format", "json")
	if code != 0 {
		t.Fatalf("tail: %d %s", code, stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var v verdict.Verdict
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatal(err)
		}
		if v.SPF == nil || v.SPF.Result != "pass" || v.DMARC == nil || v.DMARC.Result != "pass" {
			t.Errorf("%s: spf %+v dmarc %+v, want pass with one resolver answering", v.Key, v.SPF, v.DMARC)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"DNS server not answering`) || !strings.Contains(logs.String(), `"server":"`+silent.LocalAddr().String()+`"`) {
		t.Errorf("no warning naming the silent server:\n%s", logs)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

// TestRunWarnsWhenDNSRefuses: a server that refuses recursion to this
// host (its access list) answers every query REFUSED; run says so at
// start, naming the rcode, instead of leaving every verdict's temperror
// to explain it.
func TestRunWarnsWhenDNSRefuses(t *testing.T) {
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	s.SetRcode("authpipe-start-probe.invalid.", dns.TypeTXT, dns.RcodeRefused)
	addrs := freeAddrs(t, 2)
	stop, logs := startRun(t, addrs[1], "--listen", addrs[0], "--data-dir", t.TempDir(), "--resolver", s.Addr)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `"rcode":"REFUSED"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the refusing server:\n%s", logs)
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

// TestRunWarnsOfExposedBroker: the embedded broker has no TLS and no
// authentication, so run warns when --listen is beyond loopback, and only
// then.
func TestRunWarnsOfExposedBroker(t *testing.T) {
	addrs := freeAddrs(t, 3)
	_, port, _ := net.SplitHostPort(addrs[0])
	const warning = "the embedded broker listens beyond this host"
	stop, logs := startRun(t, addrs[1], "--listen", "0.0.0.0:"+port, "--data-dir", t.TempDir(), "--zone", "../../examples/example.zone")
	if code := stop(); code != 0 || !strings.Contains(logs.String(), warning) {
		t.Errorf("--listen 0.0.0.0: exit %d, no warning:\n%s", code, logs)
	}
	stop, logs = startRun(t, addrs[2], "--listen", addrs[0], "--data-dir", t.TempDir(), "--zone", "../../examples/example.zone")
	if code := stop(); code != 0 || strings.Contains(logs.String(), warning) {
		t.Errorf("--listen %s: exit %d, warning:\n%s", addrs[0], code, logs)
	}
}

// checkDocumentedMetrics waits until the run serving httpAddr exposes
// until, then checks that every metric name (or name prefix, before a *)
// that README.md, docs/configuration.md or docs/reports.md mentions is
// among those served.
func checkDocumentedMetrics(t *testing.T, httpAddr, until string) {
	t.Helper()
	var text string
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(text, until); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s", until)
		}
		text = metricsText(t, httpAddr)
	}
	name := regexp.MustCompile(`\bauthpipe_[a-z_]+`)
	checked := 0
	for _, f := range []string{"../../README.md", "../../docs/configuration.md", "../../docs/reports.md"} {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllString(string(doc), -1) {
			checked++
			if !strings.Contains(text, "\n"+m) {
				t.Errorf("%s names %s, which /metrics does not serve", f, m)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d metric names found in the docs", checked)
	}
}

// TestRunVerificationOptions: run's engine takes the DMARC mode, the local
// policy overrides and --judge-at from its configuration, as verify's does:
// under rfc7489 the verdicts say so, a denied client's mail is rejected
// (local_policy) though it passes DMARC, and with --judge-at arrival an
// archived message is judged as of its smtp.received-at (SPF's %{t} in an
// exp= text is that time).
func TestRunVerificationOptions(t *testing.T) {
	addrs, dataDir := freeAddrs(t, 2), t.TempDir()
	addr, httpAddr := addrs[0], addrs[1]
	example, err := os.ReadFile("../../examples/example.zone")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	zone := filepath.Join(dir, "zone")
	extra := "\nold.example. 300 IN TXT \"v=spf1 -all exp=why.old.example\"\nwhy.old.example. 300 IN TXT \"refused at %{t}\"\n"
	if err := os.WriteFile(zone, append(example, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "authpipe.yaml")
	yaml := fmt.Sprintf("listen: %s\ndata-dir: %s\nzone: %s\nbatch-interval: 50ms\n"+
		"dmarc-mode: rfc7489\njudge-at: arrival\ndmarc-deny-ip: [198.51.100.99]\ntrusted-arc-sealer: [lists.example]\n", addr, dataDir, zone)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	stop, logs := startRun(t, httpAddr, "--config", cfg)
	if !strings.Contains(logs.String(), `"msg":"verification","dmarc_mode":"rfc7489","judge_at":"arrival","overrides":"trusted ARC sealers 1, denied IPs 1"`) {
		t.Errorf("no verification settings in the log:\n%s", logs)
	}
	if first, _, _ := strings.Cut(logs.String(), "\n"); !strings.Contains(first, `"msg":"authpipe","version"`) {
		t.Errorf("run's first log line should name the build, got %s", first)
	}
	msg, err := filepath.Abs("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	envelopes := filepath.Join(dir, "env.jsonl")
	lines := fmt.Sprintf(`{"path":%q,"client_ip":"192.0.2.10","mail_from":"alice@example.com","key":"ok"}
{"path":%q,"client_ip":"198.51.100.99","mail_from":"alice@example.com","key":"denied"}
{"raw":"From: a@old.example\r\nSubject: x\r\n\r\nbody\r\n","client_ip":"192.0.2.10","mail_from":"bob@old.example","received_at":"2020-01-01T00:00:00Z","key":"archived"}
`, msg, msg)
	if err := os.WriteFile(envelopes, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", addr, "--envelopes", envelopes); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	code, out, stderr := cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", "3", "--format", "json")
	if code != 0 {
		t.Fatalf("tail: %d %s", code, stderr)
	}
	verdicts := map[string]verdict.Verdict{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var v verdict.Verdict
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("verdict %q: %v", line, err)
		}
		verdicts[v.Envelope.ClientIP+" "+v.Envelope.MailFrom] = v
	}
	if v := verdicts["192.0.2.10 alice@example.com"]; v.DMARC == nil || v.DMARC.Mode != "rfc7489" || v.DMARC.Result != "pass" || v.DMARC.Disposition != "none" {
		t.Errorf("ok: dmarc %+v", v.DMARC)
	}
	if v := verdicts["198.51.100.99 alice@example.com"]; v.DMARC == nil || v.DMARC.Result != "pass" || v.DMARC.Disposition != "reject" ||
		len(v.DMARC.Reasons) != 1 || v.DMARC.Reasons[0].Type != "local_policy" {
		t.Errorf("denied: dmarc %+v", v.DMARC)
	}
	if v := verdicts["192.0.2.10 bob@old.example"]; v.SPF == nil || v.SPF.Result != "fail" || v.SPF.Explanation != "refused at 1577836800" {
		t.Errorf("archived: spf %+v", v.SPF)
	}
	// The pretty line shows the override.
	code, out, stderr = cli(t, 30*time.Second, "tail", "--brokers", addr, "--from-beginning", "--count", "3")
	if code != 0 || !strings.Contains(out, "dmarc=pass disposition=reject reasons=local_policy") {
		t.Errorf("tail pretty: %d %q %s", code, out, stderr)
	}
	if code := stop(); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, logs)
	}
}

// TestRunTwoInstancesOneHost: a second `authpipe run` of the same group on
// the same host, joining the first one's embedded broker, given no
// --transactional-id, takes an ID of its own (GROUP-HOSTNAME-2) instead of
// fencing the first: both verify, both stop with status 0, and each
// message has one verdict. The retry stages do the same. A third
// instance in the first one's data directory, or on its ports, is refused
// with what to do instead. Until session 25 the second took the first's ID,
// and the first exited 1 at its next commit.
func TestRunTwoInstancesOneHost(t *testing.T) {
	const n = 600
	addrs := freeAddrs(t, 3)
	common := []string{"--zone", "../../examples/example.zone", "--batch-interval", "50ms"}
	dirA := t.TempDir()
	stopA, logsA := startRun(t, addrs[1], append([]string{"--listen", addrs[0], "--data-dir", dirA}, common...)...)
	// A third started in the first one's data directory (the default
	// ./authpipe-data of the same working directory) cannot have its
	// report store and says what to do; it waits for the store's lock
	// meanwhile.
	third := make(chan string, 1)
	go func() {
		code, _, stderr := cli(t, 30*time.Second, append([]string{"run", "--brokers", addrs[0], "--data-dir", dirA, "--http-addr", ""}, common...)...)
		third <- fmt.Sprintf("exit %d: %s", code, stderr)
	}()
	// The second names the broker by another name: the cluster's ID, not
	// the address, tells them apart.
	_, port, _ := net.SplitHostPort(addrs[0])
	stopB, logsB := startRun(t, addrs[2], append([]string{"--brokers", "localhost:" + port, "--data-dir", t.TempDir()}, common...)...)
	// Both members must have partitions, so that both write verdicts in
	// transactions of their own. (A batch may still be aborted by the
	// second round of the cooperative rebalance and redone: the counts
	// below can add up to more than n.)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		g, err := kadm.NewClient(cl).DescribeGroups(context.Background(), "authpipe-verify")
		if err == nil && g["authpipe-verify"].State == "Stable" && len(g["authpipe-verify"].Members) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group did not settle with two members: %+v (%v)", g, err)
		}
	}
	if code, _, stderr := cli(t, 30*time.Second, "produce", "--brokers", addrs[0], "--ip", "192.0.2.10", "--mail-from", "alice@example.com", streamMbox(t, n)); code != 0 {
		t.Fatalf("produce: %s", stderr)
	}
	checkVerdictsOnce(t, addrs[0], n)
	a, b := messagesVerified(t, addrs[1]), messagesVerified(t, addrs[2])
	// Instances started as the first was, on its ports, say how to add one.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", addrs[0], "--http-addr", ""}, "join its broker with --brokers " + addrs[0]},
		{[]string{"--brokers", addrs[0], "--http-addr", addrs[1]}, "each needs an --http-addr of its own"},
	} {
		code, _, stderr := cli(t, 30*time.Second, append(append([]string{"run", "--data-dir", t.TempDir()}, c.args...), common...)...)
		if code != exitFailure || !strings.Contains(stderr, c.want) {
			t.Errorf("run %s: exit %d, want %d saying %q:\n%s", c.args, code, exitFailure, c.want, stderr)
		}
	}
	// (The first must still hold its store: the third waits 5 s for it.)
	if got := <-third; !strings.HasPrefix(got, fmt.Sprintf("exit %d:", exitFailure)) || !strings.Contains(got, "each instance needs a --data-dir of its own") {
		t.Errorf("an instance in another's data directory: %s; want exit %d saying each needs its own --data-dir", got, exitFailure)
	}
	if a == 0 || b == 0 {
		t.Errorf("an instance verified nothing: first %d, second %d", a, b)
	}
	if code := stopB(); code != 0 {
		t.Errorf("second instance exit %d:\n%s", code, logsB)
	}
	if code := stopA(); code != 0 {
		t.Errorf("first instance exit %d:\n%s", code, logsA)
	}
	t.Logf("verified: first instance %d, second %d", a, b)
	host, _ := os.Hostname()
	for _, c := range []struct {
		logs *syncBuffer
		id   string
	}{{logsA, "authpipe-verify-" + host}, {logsA, "authpipe-verify-retry-" + host},
		{logsB, "authpipe-verify-" + host + "-2"}, {logsB, "authpipe-verify-retry-" + host + "-2"}} {
		if !strings.Contains(c.logs.String(), `"transactional_id":"`+c.id+`"`) {
			t.Errorf("no %q in the log:\n%s", c.id, c.logs)
		}
	}
}
