package pipeline

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The pipeline benchmarks put the MTAs and the verdict consumer in a
// separate process (this test binary, run as TestBenchLoader), so that the
// benchmark process holds exactly what `authpipe run` holds: the pipeline
// and the embedded broker. Its CPU time (getrusage RUSAGE_SELF) is then the
// pipeline's cost, and the load driver's CPU is reported apart.
//
// Protocol on the child's stdin/stdout, one line each:
//
//	load <file>   → ok            read a corpus written by writeCorpusFile
//	run <count> [<early>]
//	              → done <cpu-ns> <early-ns>
//	                              produce the first count messages to
//	                              mail.raw, wait until count more verdicts
//	                              are visible read_committed on mail.verdicts;
//	                              early-ns is when early of them were (default
//	                              count)

// loaderRec is one mail.raw record in a corpus file.
type loaderRec struct {
	Key, Value []byte
	Headers    []kgo.RecordHeader
}

// writeCorpusFile writes msgs as mail.raw records into a file under dir.
func writeCorpusFile(tb testing.TB, dir string, msgs []testMsg) string {
	tb.Helper()
	f, err := os.CreateTemp(dir, "corpus-*.gob")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	// One gob value per record, so neither side holds the encoding of the
	// whole corpus at once.
	w := bufio.NewWriter(f)
	enc := gob.NewEncoder(w)
	for _, m := range msgs {
		if err := enc.Encode(loaderRec{Key: []byte(m.key), Value: m.raw, Headers: EnvelopeHeaders(m.env, m.key)}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	return f.Name()
}

// loader is the parent's handle on the load-driver process.
type loader struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startLoader(tb testing.TB, brokers []string) *loader {
	tb.Helper()
	return startHelperProc(tb, "TestBenchLoader", "AUTHPIPE_BENCH_LOADER="+strings.Join(brokers, ","))
}

// startHelperProc runs this test binary again as the test named test, with env
// (NAME=value each) added to the environment, and returns the handle on its stdin/stdout.
// The child is stopped (stdin closed, killed after 10s) at cleanup.
func startHelperProc(tb testing.TB, test string, env ...string) *loader {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v=false")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	l := &loader{cmd: cmd, in: in, out: bufio.NewReader(out)}
	tb.Cleanup(func() {
		_ = in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return l
}

// call sends one command and returns the reply's words after the status.
func (l *loader) call(tb testing.TB, want string, format string, args ...any) []string {
	tb.Helper()
	if _, err := fmt.Fprintf(l.in, format+"\n", args...); err != nil {
		tb.Fatal(err)
	}
	for {
		line, err := l.out.ReadString('\n')
		if err != nil {
			tb.Fatalf("load driver: %v", err)
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != want && f[0] != "error" {
			continue // test framework output
		}
		if f[0] == "error" {
			tb.Fatalf("load driver: %s", line)
		}
		return f[1:]
	}
}

func (l *loader) load(tb testing.TB, file string) { l.call(tb, "ok", "load %s", file) }

// topic makes later runs produce to topic instead of mail.raw (the
// verdicts they wait for are still those on mail.verdicts).
func (l *loader) topic(tb testing.TB, topic string) { l.call(tb, "ok", "topic %s", topic) }

// run produces the first n messages of the loaded corpus and waits for n
// verdicts. It returns the wall time and the load driver's CPU time.
func (l *loader) run(tb testing.TB, n int) (wall, cpu time.Duration) {
	tb.Helper()
	wall, cpu, _ = l.runEarly(tb, n, n)
	return wall, cpu
}

// runEarly is run that also returns how long the first early verdicts
// took to be visible (the loader's clock, from just before producing).
func (l *loader) runEarly(tb testing.TB, n, early int) (wall, cpu, earlyWall time.Duration) {
	tb.Helper()
	start := time.Now()
	f := l.call(tb, "done", "run %d %d", n, early)
	wall = time.Since(start)
	cpuNs, _ := strconv.ParseInt(f[0], 10, 64)
	earlyNs, _ := strconv.ParseInt(f[1], 10, 64)
	return wall, time.Duration(cpuNs), time.Duration(earlyNs)
}

// TestBenchLoader is the load-driver process; it does nothing unless
// started by startLoader.
func TestBenchLoader(t *testing.T) {
	brokers := os.Getenv("AUTHPIPE_BENCH_LOADER")
	if brokers == "" {
		t.Skip("load-driver process for the pipeline benchmarks")
	}
	if err := loaderMain(strings.Split(brokers, ","), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		t.Fatal(err)
	}
}

func loaderMain(brokers []string, stdin io.Reader, stdout io.Writer) error {
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(time.Millisecond), kgo.ProducerBatchCompression(benchCodec("AUTHPIPE_BENCH_LOADER_CODEC")...))
	if err != nil {
		return err
	}
	defer prod.Close()
	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("mail.verdicts"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(10*time.Millisecond), kgo.MetadataMinAge(50*time.Millisecond))
	if err != nil {
		return err
	}
	var seen atomic.Int64
	consDone := make(chan struct{})
	go func() {
		defer close(consDone)
		for {
			fs := cons.PollFetches(context.Background())
			if fs.IsClientClosed() {
				return
			}
			seen.Add(int64(fs.NumRecords()))
		}
	}()
	defer func() { cons.Close(); <-consDone }()

	var recs []loaderRec
	topic := "mail.raw" // that runs produce to
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "load":
			f, err := os.Open(filepath.Clean(arg))
			if err != nil {
				return err
			}
			recs = recs[:0]
			dec := gob.NewDecoder(bufio.NewReader(f))
			for {
				var r loaderRec
				if err = dec.Decode(&r); err != nil {
					break
				}
				recs = append(recs, r)
			}
			f.Close()
			if !errors.Is(err, io.EOF) {
				return fmt.Errorf("load %s: %w", arg, err)
			}
			fmt.Fprintln(stdout, "ok")
		case "topic":
			topic = arg
			fmt.Fprintln(stdout, "ok")
		case "run":
			count, earlyArg, _ := strings.Cut(arg, " ")
			n, err := strconv.Atoi(count)
			if err != nil || n > len(recs) {
				return fmt.Errorf("run %q: %d records loaded", arg, len(recs))
			}
			early := n
			if earlyArg != "" {
				if early, err = strconv.Atoi(earlyArg); err != nil || early > n {
					return fmt.Errorf("run %q: bad early count", arg)
				}
			}
			start := time.Now()
			var earlyWall time.Duration
			cpu0 := selfCPU()
			earlyTarget := seen.Load() + int64(early)
			target := seen.Load() + int64(n)
			krecs := make([]*kgo.Record, n)
			for i := range krecs {
				r := &recs[i]
				krecs[i] = &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: r.Headers}
			}
			if err := prod.ProduceSync(context.Background(), krecs...).FirstErr(); err != nil {
				return fmt.Errorf("produce: %w", err)
			}
			for seen.Load() < target {
				if earlyWall == 0 && seen.Load() >= earlyTarget {
					earlyWall = time.Since(start)
				}
				time.Sleep(time.Millisecond)
			}
			if earlyWall == 0 {
				earlyWall = time.Since(start)
			}
			fmt.Fprintf(stdout, "done %d %d\n", int64(selfCPU()-cpu0), int64(earlyWall))
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
	}
	return sc.Err()
}

// selfCPU is the CPU time (user + system) used by this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchCodec is the compression named by env (none, snappy, lz4, zstd;
// default snappy, franz-go's default).
func benchCodec(env string) []kgo.CompressionCodec {
	switch os.Getenv(env) {
	case "none":
		return []kgo.CompressionCodec{kgo.NoCompression()}
	case "lz4":
		return []kgo.CompressionCodec{kgo.Lz4Compression()}
	case "zstd":
		return []kgo.CompressionCodec{kgo.ZstdCompression()}
	}
	return []kgo.CompressionCodec{kgo.SnappyCompression()}
}

// brokerProc is the embedded broker run in a process of its own
// (TestBenchBroker), as a Kafka cluster reached with --brokers would be, so
// that a benchmark can charge the broker's CPU apart from the pipeline's,
// or a test can kill it (AUTHPIPE_BROKER_DATADIR then names its data
// directory).
//
// Protocol: the child prints "addr <host:port>" once started; on "cpu" it
// replies "cpu <ns>", its CPU time so far.
type brokerProc struct{ *loader }

func startBrokerProc(tb testing.TB, env ...string) (*brokerProc, []string) {
	tb.Helper()
	l := startHelperProc(tb, "TestBenchBroker", append([]string{"AUTHPIPE_BENCH_BROKER_CHILD=1"}, env...)...)
	return &brokerProc{l}, l.call(tb, "addr", "hello")
}

// cpu returns the broker process's CPU time so far.
func (b *brokerProc) cpu(tb testing.TB) time.Duration {
	f := b.call(tb, "cpu", "cpu")
	ns, _ := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns)
}

// TestBenchBroker is the broker process of startBrokerProc; it does nothing
// unless started by it.
func TestBenchBroker(t *testing.T) {
	if os.Getenv("AUTHPIPE_BENCH_BROKER_CHILD") != "1" {
		t.Skip("broker process for the pipeline benchmarks")
	}
	cfg := BrokerConfig{Addr: "127.0.0.1:0", MinSessionTimeout: 100 * time.Millisecond}
	if n, err := strconv.ParseInt(os.Getenv("AUTHPIPE_BENCH_SEGMENT"), 10, 64); err == nil {
		cfg.SegmentBytes = n
	}
	if os.Getenv("AUTHPIPE_BENCH_DATADIR") == "1" {
		cfg.DataDir = t.TempDir()
	}
	if dir := os.Getenv("AUTHPIPE_BROKER_DATADIR"); dir != "" {
		cfg.DataDir = dir
	}
	br, err := StartBroker(cfg)
	if err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		t.Fatal(err)
	}
	defer br.Close()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "hello":
			fmt.Fprintf(os.Stdout, "addr %s\n", strings.Join(br.Addrs(), " "))
		case "cpu":
			fmt.Fprintf(os.Stdout, "cpu %d\n", int64(selfCPU()))
		}
	}
}
