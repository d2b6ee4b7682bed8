package pipeline

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// benchDNS is the authoritative DNS server a benchmark's engine asks: the
// in-process dnstest server, or the same server in a process of its own
// (dnsProc), as a resolver on another host is in production, so that its
// CPU is not this process's and can be reported apart.
type benchDNS interface {
	Addr() string
	AddRR(rr dns.RR)
	// Sync makes the records added so far servable.
	Sync(tb testing.TB)
	SetDelay(tb testing.TB, d time.Duration)
	Queries(tb testing.TB) int64
	// CPU is the server process's CPU time so far; 0 in process.
	CPU(tb testing.TB) time.Duration
}

// localDNS is the in-process server.
type localDNS struct{ *dnstest.Server }

func (l localDNS) Addr() string                           { return l.Server.Addr }
func (l localDNS) Sync(testing.TB)                        {}
func (l localDNS) SetDelay(_ testing.TB, d time.Duration) { l.Server.SetDelay(d) }
func (l localDNS) Queries(testing.TB) int64               { return l.Server.Queries.Load() }
func (l localDNS) CPU(testing.TB) time.Duration           { return 0 }
func (l localDNS) AddRR(rr dns.RR)                        { l.Server.AddRR(rr) }

// dnsProc is a dnstest server in a child process (TestBenchDNS). Records
// are collected as zone-file lines and loaded by Sync through a file.
type dnsProc struct {
	*loader
	addr    string
	dir     string
	pending strings.Builder
	files   int
}

func startDNSProc(tb testing.TB) *dnsProc {
	tb.Helper()
	l := startHelperProc(tb, "TestBenchDNS", "AUTHPIPE_BENCH_DNS_CHILD=1")
	return &dnsProc{loader: l, addr: l.call(tb, "addr", "hello")[0], dir: tb.TempDir()}
}

func (p *dnsProc) Addr() string { return p.addr }

func (p *dnsProc) AddRR(rr dns.RR) {
	p.pending.WriteString(rr.String())
	p.pending.WriteByte('\n')
}

func (p *dnsProc) Sync(tb testing.TB) {
	tb.Helper()
	if p.pending.Len() == 0 {
		return
	}
	p.files++
	f := filepath.Join(p.dir, fmt.Sprintf("zone%d", p.files))
	if err := os.WriteFile(f, []byte(p.pending.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	p.pending.Reset()
	p.call(tb, "ok", "zone %s", f)
}

func (p *dnsProc) SetDelay(tb testing.TB, d time.Duration) { p.call(tb, "ok", "delay %s", d) }

func (p *dnsProc) Queries(tb testing.TB) int64 {
	n, _ := strconv.ParseInt(p.call(tb, "queries", "queries")[0], 10, 64)
	return n
}

func (p *dnsProc) CPU(tb testing.TB) time.Duration {
	ns, _ := strconv.ParseInt(p.call(tb, "cpu", "cpu")[0], 10, 64)
	return time.Duration(ns)
}

// TestBenchDNS is the DNS server process of startDNSProc; it does nothing
// unless started by it. Commands on stdin, one a line: hello (replies
// "addr host:port"), zone FILE (adds the zone-file text in FILE), delay
// DURATION, queries (replies "queries N"), cpu (replies "cpu NS").
func TestBenchDNS(t *testing.T) {
	if os.Getenv("AUTHPIPE_BENCH_DNS_CHILD") != "1" {
		t.Skip("DNS server process for the pipeline benchmarks")
	}
	s, err := dnstest.Start()
	if err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		t.Fatal(err)
	}
	defer s.Close()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "hello":
			fmt.Fprintf(os.Stdout, "addr %s\n", s.Addr)
		case "zone":
			text, err := os.ReadFile(arg)
			if err == nil {
				err = s.AddZone(string(text))
			}
			if err != nil {
				fmt.Fprintf(os.Stdout, "error zone: %v\n", err)
				continue
			}
			fmt.Fprintln(os.Stdout, "ok")
		case "delay":
			d, err := time.ParseDuration(arg)
			if err != nil {
				fmt.Fprintf(os.Stdout, "error delay: %v\n", err)
				continue
			}
			s.SetDelay(d)
			fmt.Fprintln(os.Stdout, "ok")
		case "queries":
			fmt.Fprintf(os.Stdout, "queries %d\n", s.Queries.Load())
		case "cpu":
			fmt.Fprintf(os.Stdout, "cpu %d\n", int64(selfCPU()))
		}
	}
}
