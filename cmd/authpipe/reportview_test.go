package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authpipe/authpipe/reportgen"
)

// TestReportViewsWhileHeld: while another process holds the report store
// (here a second handle: bbolt's lock is per open file), `report list`
// and `report show` read it through the HTTP views that run serves
// (reportViewHandler, on a real loopback listener), found by run.json
// beside the store or given as --url; without run.json they fail saying
// how to get through. A stale run.json does not matter once the store is
// free. TestRunReportsEndToEnd does the same against a running `run`.
func TestReportViewsWhileHeld(t *testing.T) {
	t.Parallel() // 5 s of it waits for the lock
	dir := t.TempDir()
	fillReportStore(t, dir)
	storeDir := reportStoreDir(dir)
	held, err := reportgen.OpenStore(storeDir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var views atomic.Pointer[reportgen.Store]
	building := make(chan struct{}, 1)
	// run's own reporting identity, which show gets for what it does not set.
	runID := reportIdentityFlags{org: "Run Org", email: "dmarc@run.example", receiver: "run.example"}
	srv := httptest.NewServer(reportViewHandler(&views, building, runID))
	defer srv.Close()

	// The views answer 503 until the store is set, and 400 for a
	// request that names no window.
	for path, want := range map[string]int{"/reports": 503, "/reports/show?domain=example.com&day=2026-11-20": 503} {
		if resp, err := http.Get(srv.URL + path); err != nil || resp.StatusCode != want {
			t.Fatalf("%s before the store is open: %v %v", path, resp, err)
		}
	}
	views.Store(held)
	for path, want := range map[string]int{"/reports/show?day=2026-11-20": 400, "/reports/show?domain=example.com&day=2026-11-20&kind=x": 400,
		"/reports/show?domain=example.com&day=2026-11-20&rfc7489=maybe": 400, "/reports/show?domain=example.com&day=2026-11-21": 404} {
		if resp, err := http.Get(srv.URL + path); err != nil || resp.StatusCode != want {
			t.Fatalf("%s: %v %v, want %d", path, resp.Status, err, want)
		}
	}

	// One report built at a time: while another build holds the turn, a
	// show waits, and gives up with its context.
	building <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/reports/show?domain=example.com&day=2026-11-20", nil)
	if resp, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("show while another build runs: %v %v, want it waiting", resp, err)
	}
	cancel()
	<-building

	// No run.json: list fails after the lock wait, naming --url.
	if out, code := runCmd(t, "report", "list", "--data-dir", dir); code != exitFailure || !strings.Contains(out, "--url") || !strings.Contains(out, "locked") {
		t.Fatalf("list of a held store without run.json (%d): %s", code, out)
	}

	addr := strings.TrimPrefix(srv.URL, "http://")
	removeInfo, err := writeRunInfo(storeDir, addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, where := range [][]string{{"--data-dir", dir}, {"--url", srv.URL}, {"--url", srv.URL + "/"}} {
		start := time.Now()
		out, code := runCmd(t, append([]string{"report", "list", "--json"}, where...)...)
		var l reportList
		if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Windows) != 1 || l.Windows[0].Messages != 10 || l.Windows[0].State != "open" {
			t.Fatalf("list %v (%d): %s", where, code, out)
		}
		t.Logf("list %v through the views: %v", where, time.Since(start).Round(time.Millisecond))
		// The identity: run's own but for what show sets.
		for _, tc := range []struct {
			flags      []string
			org, email string
		}{
			{nil, "Run Org", "dmarc@run.example"},
			{[]string{"--receiver", "r.example", "--org", "R Org"}, "R Org", "dmarc@run.example"},
			{[]string{"--from", "me@r.example"}, "Run Org", "me@r.example"},
			{[]string{"--from", "me@r.example", "--email", "postmaster@r.example"}, "Run Org", "postmaster@r.example"},
		} {
			args := append(append([]string{"report", "show", "--domain", "example.com", "--day", "2026-11-20"}, tc.flags...), where...)
			out, code = runCmd(t, args...)
			var fb struct {
				Org   string `xml:"report_metadata>org_name"`
				Email string `xml:"report_metadata>email"`
				Count int    `xml:"record>row>count"`
			}
			if code != 0 || xml.Unmarshal([]byte(out), &fb) != nil || fb.Count != 10 || fb.Org != tc.org || fb.Email != tc.email {
				t.Fatalf("show %v %v (%d): %+v, want org %q, email %q\n%s", where, tc.flags, code, fb, tc.org, tc.email, out)
			}
		}
		out, code = runCmd(t, append([]string{"report", "show", "--domain", "example.com", "--day", "2026-11-21"}, where...)...)
		if code != exitFailure || !strings.Contains(out, "404") || !strings.Contains(out, "no such window") {
			t.Fatalf("show of a missing window %v (%d): %s", where, code, out)
		}
	}
	// The table, as read from the store itself below.
	viaRun, code := runCmd(t, "report", "list", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("list: %s", viaRun)
	}
	if out, code := runCmd(t, "report", "list", "--url", "ftp://x"); code != exitUsage {
		t.Fatalf("--url ftp (%d): %s", code, out)
	}

	// The store freed, run.json left behind (a run killed) and pointing
	// at a listener that is gone: the store is read, the file is not.
	views.Store(nil)
	held.Close()
	srv.Close()
	if out, code := runCmd(t, "report", "list", "--data-dir", dir); code != 0 || out != viaRun {
		t.Fatalf("list with a stale run.json (%d):\n%s\nwant\n%s", code, out, viaRun)
	}
	removeInfo()
	if _, err := os.Stat(filepath.Join(storeDir, runInfoFile)); !os.IsNotExist(err) {
		t.Fatalf("run.json after remove: %v", err)
	}
}

// TestWriteRunInfo: an unspecified listener host is reached on loopback.
func TestWriteRunInfo(t *testing.T) {
	dir := t.TempDir()
	for addr, want := range map[string]string{"0.0.0.0:9464": "http://127.0.0.1:9464", "[::]:9464": "http://[::1]:9464",
		"127.0.0.1:80": "http://127.0.0.1:80", "[::1]:9464": "http://[::1]:9464", ":9464": "http://127.0.0.1:9464"} {
		if _, err := writeRunInfo(dir, addr); err != nil {
			t.Fatal(err)
		}
		ri, err := readRunInfo(dir)
		if err != nil || ri.URL != want {
			t.Fatalf("%s: %+v %v, want %s", addr, ri, err, want)
		}
	}
	if _, err := writeRunInfo(dir, "no-port"); err == nil {
		t.Fatal("no error for an address without a port")
	}
}

// TestBuildColumn: list's BUILD column says how many rounds failed to
// build a window and the last error's first line, cut to 100 bytes.
func TestBuildColumn(t *testing.T) {
	long := strings.Repeat("ü", 60) // 120 bytes
	for _, c := range []struct {
		w    listedWindow
		want string
	}{
		{listedWindow{}, ""},
		{listedWindow{BuildFailures: 2}, "2 failed"},
		{listedWindow{BuildFailures: 1, BuildError: "reportgen: build dmarc report x/2026-11-20: panic: bug"}, "1 failed, last: reportgen: build dmarc report x/2026-11-20: panic: bug"},
		{listedWindow{BuildFailures: 3, BuildError: "line one\nline two"}, "3 failed, last: line one…"},
		{listedWindow{BuildFailures: 3, BuildError: long}, "3 failed, last: " + strings.Repeat("ü", 50) + "…"},
	} {
		if got := buildColumn(c.w); got != c.want {
			t.Errorf("%+v: %q, want %q", c.w, got, c.want)
		}
	}
}

// TestRunWarnsOfExposedReportViews: run says so in its log when the
// report views are served on an address beyond this host, and not on
// loopback.
func TestRunWarnsOfExposedReportViews(t *testing.T) {
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	for addr, warn := range map[string]bool{"127.0.0.1:" + port: false, "0.0.0.0:" + port: true} {
		stop, logs := startRunWith(t, "127.0.0.1:"+port, func(ctx context.Context, args []string, stderr io.Writer) int {
			args[2] = addr // --http-addr's value
			return run(ctx, args, strings.NewReader(""), io.Discard, stderr)
		}, "--data-dir", t.TempDir(), "--listen", freeAddr(t), "--zone", "../../examples/example.zone")
		if code := stop(); code != 0 {
			t.Fatalf("run on %s: exit %d\n%s", addr, code, logs)
		}
		if got := strings.Contains(logs.String(), "report views (/reports) are served beyond this host"); got != warn {
			t.Fatalf("run on %s: warning %v, want %v\n%s", addr, got, warn, logs)
		}
	}
}

// TestListReportsEmptyIsArrays: an empty store lists as [] windows and []
// outbox items in JSON (/reports, report list --json), not null.
func TestListReportsEmptyIsArrays(t *testing.T) {
	st, err := reportgen.OpenStore(t.TempDir(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := listReports(st)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if string(js) != `{"windows":[],"outbox":[]}` {
		t.Errorf("empty list: %s", js)
	}
}
