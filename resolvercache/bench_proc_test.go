package resolvercache_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// childEnv makes the test binary a dnstest server for
// BenchmarkClientColdOwnProcess instead of running tests.
const childEnv = "AUTHPIPE_DNSTEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		serveChild()
		return
	}
	os.Exit(m.Run())
}

// serveChild runs dnstest on loopback with answers held back 20 ms,
// prints its address and serves until its standard input closes.
func serveChild() {
	s, err := dnstest.Start()
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	s.SetDelay(20 * time.Millisecond)
	fmt.Println("ADDR", s.Addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Close()
}

// BenchmarkClientColdOwnProcess is BenchmarkClientColdConcurrent's
// steady/g=2048/rtt=20ms case with dnstest in a child process, so that
// cpu-ns/op is the client's own CPU per cold lookup (its goroutines, its
// system calls, its garbage collection) and none of the server's. On a
// machine shared with other work that is the steadier figure: the
// server's half no longer adds its own noise.
func BenchmarkClientColdOwnProcess(b *testing.B) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		b.Fatalf("dnstest child: %q, %v", line, err)
	}
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(addr), resolvercache.WithTimeout(5*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	coldLookups(b, func(i int64) error {
		_, err := c.Lookup(context.Background(), fmt.Sprintf("n%d.cold.example", i), dns.TypeTXT)
		return err
	})
}
