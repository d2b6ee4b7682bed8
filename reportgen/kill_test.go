//go:build unix

package reportgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// killChildEnv names the JSON file (killChildConfig) that makes
// TestOutboxKillChild run; without it the child test skips.
const killChildEnv = "AUTHPIPE_OUTBOX_KILL_CHILD"

// killChildConfig is what the parent test passes to the reporter child:
// where its loopback servers and store are, and the fixture's reporter
// configuration (so the child builds the same reports).
type killChildConfig struct {
	StoreDir string
	DNSAddr  string
	SMTPPort int
	CAFile   string
	Now      time.Time
	// Target is the destination after whose acceptance the child kills
	// itself.
	Target string

	DMARC        ReportConfig
	TLS          TLSReportConfig
	Mode         dmarc.Mode
	RequireTLS   bool
	RateInterval time.Duration
	From, HELO   string
	Timeout      time.Duration
	MaxHTTPSize  int64
}

const (
	killMarker     = "KILLING-AFTER-ACCEPT "
	acceptedMarker = "ACCEPTED "
)

// TestOutboxKillChild is the reporter process of
// TestOutboxKillBetweenAcceptAndMark (it runs only when re-executed with
// AUTHPIPE_OUTBOX_KILL_CHILD set): one Tick over the parent's store, whose
// AfterAccept hook SIGKILLs the process right after the server accepted
// the target item, before the item is marked sent.
func TestOutboxKillChild(t *testing.T) {
	path := os.Getenv(killChildEnv)
	if path == "" {
		t.Skip("reporter child process of TestOutboxKillBetweenAcceptAndMark")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg killChildConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return cfg.Now }
	st, err := OpenStore(cfg.StoreDir, now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	res, err := resolvercache.NewClient(resolvercache.WithUpstreams(cfg.DNSAddr), resolvercache.WithTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", cfg.CAFile)
	}
	rep := &Reporter{
		Store: st,
		Deliverer: &Deliverer{Resolver: res, From: cfg.From, HELO: cfg.HELO, SMTPPort: cfg.SMTPPort,
			TLSConfig: &tls.Config{RootCAs: pool}, Timeout: cfg.Timeout, MaxHTTPSize: cfg.MaxHTTPSize,
			Addresses: AddressPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, Now: now},
		DMARC: cfg.DMARC, TLS: cfg.TLS, Mode: cfg.Mode, RequireTLS: cfg.RequireTLS, RateInterval: cfg.RateInterval,
	}
	rep.AfterAccept = func(it OutboxItem) error {
		if it.Dest != cfg.Target {
			fmt.Printf("%s%s %s\n", acceptedMarker, it.ID, it.Dest)
			return nil
		}
		// os.Stdout is unbuffered: the line is in the pipe before the kill.
		fmt.Printf("%s%s %s\n", killMarker, it.ID, it.Dest)
		if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
			return fmt.Errorf("SIGKILL self: %w", err)
		}
		// SIGKILL is not caught; this only keeps the goroutine from marking
		// the item in the instant before the kernel ends the process.
		time.Sleep(time.Minute)
		return errors.New("still alive a minute after SIGKILL")
	}
	bs, ds, err := rep.Tick(context.Background())
	t.Fatalf("Tick returned without reaching the kill point (target %s): err=%v build=%+v deliver=%+v", cfg.Target, err, bs, ds)
}

// TestOutboxKillBetweenAcceptAndMark is TestOutboxCrashBetweenAcceptAndMark
// with a real crash: the reporter runs in a child process that SIGKILLs
// itself after the SMTP server accepted the mail to the target destination
// and before the outbox item is marked sent. The restarted reporter (the
// store reopened here) sends that item again, with the same Report-ID,
// file name and file, and every other item exactly once.
func TestOutboxKillBetweenAcceptAndMark(t *testing.T) {
	const target = "mailto:dmarc@example.com"
	f := newFixture(t)
	f.rep.Deliverer.DKIM = nil
	f.now = testDay.Add(26 * time.Hour)

	// The child opens the store: close the fixture's handle (bbolt holds
	// an exclusive file lock). The fixture's cleanup closes it again,
	// which bbolt allows.
	storeDir := filepath.Dir(f.store.db.Path())
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	caFile := filepath.Join(work, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	d := f.rep.Deliverer
	cfg := killChildConfig{StoreDir: storeDir, DNSAddr: f.dns.Addr, SMTPPort: f.sink.port, CAFile: caFile, Now: f.now, Target: target,
		DMARC: f.rep.DMARC, TLS: f.rep.TLS, Mode: f.rep.Mode, RequireTLS: f.rep.RequireTLS, RateInterval: f.rep.RateInterval,
		From: d.From, HELO: d.HELO, Timeout: d.Timeout, MaxHTTPSize: d.MaxHTTPSize}
	cb, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(work, "child.json")
	if err := os.WriteFile(cfgFile, cb, 0o600); err != nil {
		t.Fatal(err)
	}

	// Run the child and wait (bounded) for it to die.
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxKillChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+cfgFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	const childLimit = 2 * time.Minute
	select {
	case <-waited:
	case <-time.After(childLimit):
		_ = cmd.Process.Kill() // our own child, by pid
		<-waited
		t.Fatalf("reporter child still running after %v; output:\n%s", childLimit, out.String())
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("reporter child did not die by SIGKILL (%v); output:\n%s", cmd.ProcessState, out.String())
	}
	var targetID string
	var acceptedBefore []string
	for line := range strings.Lines(out.String()) {
		if rest, ok := strings.CutPrefix(line, killMarker); ok {
			id, dest, _ := strings.Cut(strings.TrimSpace(rest), " ")
			if dest != target || targetID != "" {
				t.Fatalf("unexpected kill line %q; output:\n%s", line, out.String())
			}
			targetID = id
		} else if rest, ok := strings.CutPrefix(line, acceptedMarker); ok {
			acceptedBefore = append(acceptedBefore, strings.TrimSpace(rest))
		}
	}
	if targetID == "" {
		t.Fatalf("child died by SIGKILL but not at the kill point; output:\n%s", out.String())
	}

	// Restart: reopen the store in-process (the kernel released the
	// child's file lock with the process).
	st, err := OpenStore(storeDir, func() time.Time { return f.now })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	items, err := st.OutboxItems(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 4 {
		t.Fatalf("outbox after the kill has %d items, want 4 (the build must be durable): %+v", len(items), items)
	}
	sentBefore := 0
	for _, it := range items {
		switch {
		case it.ID == targetID:
			if it.State != ItemPending || it.Attempts != 0 {
				t.Fatalf("target item after the kill: state %s attempts %d, want pending/0 (killed before marking)", it.State, it.Attempts)
			}
		case it.State == ItemSent:
			sentBefore++
		case it.State != ItemPending:
			t.Fatalf("item %s to %s in state %s after the kill", it.ID, it.Dest, it.State)
		}
	}
	if sentBefore != len(acceptedBefore) {
		t.Fatalf("%d items marked sent after the kill, child reported %d accepted before the target: %q", sentBefore, len(acceptedBefore), acceptedBefore)
	}
	if n := countTo(f.sink.messages(), "dmarc@example.com"); n != 1 {
		t.Fatalf("target received %d mails before the restart, want 1 (accepted, then killed)", n)
	}

	r2 := *f.rep
	r2.Store = st
	r2.AfterAccept = nil
	pending := func() (n int) {
		items, err := st.OutboxItems(false)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if it.State == ItemPending {
				n++
			}
		}
		return n
	}
	ticks := 0
	for ; pending() > 0; ticks++ {
		if ticks == 5 {
			t.Fatalf("%d items still pending after %d ticks of the restarted reporter", pending(), ticks)
		}
		if _, _, err := r2.Tick(context.Background()); err != nil {
			t.Fatalf("restarted reporter tick %d: %v", ticks+1, err)
		}
	}

	// At the servers: the target twice with the same Report-ID, file name
	// and file; every other destination once.
	items, err = st.OutboxItems(true)
	if err != nil {
		t.Fatal(err)
	}
	msgs := f.sink.messages()
	var targetFile []byte
	for _, it := range items {
		if it.State != ItemSent || it.Attempts != 1 || it.Remote {
			t.Errorf("item %s to %s: state %s attempts %d remote %v, want sent once", it.ID, it.Dest, it.State, it.Attempts, it.Remote)
		}
		if it.ID == targetID {
			targetFile = it.File
		}
		if strings.HasPrefix(it.Dest, "https:") {
			if n := f.posts.Load(); n != 1 {
				t.Errorf("%s received %d POSTs, want 1", it.Dest, n)
			}
			continue
		}
		want := 1
		if it.Dest == target {
			want = 2
		}
		if n := countTo(msgs, strings.TrimPrefix(it.Dest, "mailto:")); n != want {
			t.Errorf("%s received %d mails, want %d", it.Dest, n, want)
		}
	}
	if n := len(msgs); n != 4 {
		t.Errorf("sink received %d mails in all, want 4 (3 destinations + 1 re-send)", n)
	}
	var got []parsedMail
	for _, m := range msgs {
		if m.To == "dmarc@example.com" {
			got = append(got, f.parse(t, m))
		}
	}
	if t.Failed() || len(got) != 2 {
		t.FailNow()
	}
	if got[0].Subject != got[1].Subject || got[0].FileName != got[1].FileName || !bytes.Equal(got[0].File, got[1].File) {
		t.Fatalf("re-send differs: subjects %q / %q, files %q / %q, bytes equal %v",
			got[0].Subject, got[1].Subject, got[0].FileName, got[1].FileName, bytes.Equal(got[0].File, got[1].File))
	}
	if !bytes.Equal(got[0].File, targetFile) {
		t.Fatal("the mailed attachment is not the outbox item's file")
	}
	t.Logf("SIGKILL after acceptance (%d item(s) sent before it) → restart re-sent %s once, same Report-ID and file %s (%d bytes); %d tick(s) to drain",
		len(acceptedBefore), target, got[0].FileName, len(got[0].File), ticks)
}
