package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/authpipe/authpipe/reportgen"
)

// A running `authpipe run` holds its report store (bbolt locks the file),
// so `report list` and `report show` could not read it while the service
// ran. The report role now serves the same views read-only on its HTTP
// listener (reportViewHandler, /reports and /reports/show), and writes
// where in runInfoFile beside the store; list and show read the store
// itself when they can open it, and ask the running instance when it
// holds the store (reportView).

// runInfoFile, in the report store's directory, says where the `run`
// holding the store serves its report views; written once the store is
// open, removed when run stops (a stale one is harmless: the store then
// opens, and the file is not read).
const runInfoFile = "run.json"

// runInfo is runInfoFile's content.
type runInfo struct {
	// URL is the base of the HTTP listener: http://host:port.
	URL string `json:"url"`
}

// runInfoLockWait is how long list and show wait for the store's lock
// when a runInfoFile says a run may hold it, before asking that run.
const runInfoLockWait = 200 * time.Millisecond

// writeRunInfo records in dir that the report views are served on addr
// (the listener's address; an unspecified host becomes loopback, where a
// command on this machine reaches it). The returned func removes it.
func writeRunInfo(dir, addr string) (remove func(), err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("report views: listener address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	b, err := json.Marshal(runInfo{URL: "http://" + net.JoinHostPort(host, port)})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, runInfoFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("report views: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("report views: %w", err)
	}
	return func() { _ = os.Remove(path) }, nil
}

// removeRunInfo removes a runInfoFile an earlier run left (killed before
// it could), so that it does not point commands at a listener that is gone
// or someone else's. Should that fail, the stale file is still read only
// while the store is locked.
func removeRunInfo(dir string) { _ = os.Remove(filepath.Join(dir, runInfoFile)) }

// reportList is what `report list` prints (as JSON with --json) and what
// /reports serves.
type reportList struct {
	Windows []listedWindow `json:"windows"`
	Outbox  []listedItem   `json:"outbox"`
}

// listedWindow is a window in reportList. Its field names are the JSON
// keys `report list --json` has always printed; BuildFailures and
// BuildError are reportgen.WindowInfo's (a window whose build fails).
type listedWindow struct {
	Kind, Domain, Day, State string
	Messages, Rows, Late     uint64
	ClosesAt                 time.Time
	BuildFailures            uint64 `json:",omitempty"`
	BuildError               string `json:",omitempty"`
}

// listedItem is an outbox item in reportList, in the words and key style
// of listedWindow: the kind as "dmarc" or "tlsrpt", the day as YYYY-MM-DD,
// the file by its name. Until session 23 the list served
// reportgen.OutboxItem as the store keeps it (kind 0 or 1, the day as a
// day number, a "file" that was always null).
type listedItem struct {
	ID, Kind, Domain, Day string
	Dest                  string
	File                  string // the report file's name
	ReportID              string
	Part, Parts           int
	State                 string
	Attempts              int
	Created, NextAttempt  time.Time
	SentAt                time.Time `json:",omitzero"`
	LastError             string    `json:",omitempty"`
	// Remote: another reporter sent (or failed) the item, and this one
	// learnt it from the state topic.
	Remote bool `json:",omitempty"`
}

// listReports reads the windows (DMARC, then TLS) and the outbox items
// (without their files) of s.
func listReports(s *reportgen.Store) (reportList, error) {
	// Empty lists are [] in the JSON, not null: a client can range over
	// them without a check.
	l := reportList{Windows: []listedWindow{}}
	for _, k := range []reportgen.Kind{reportgen.KindDMARC, reportgen.KindTLS} {
		ws, err := s.Windows(k)
		if err != nil {
			return l, err
		}
		for _, w := range ws {
			l.Windows = append(l.Windows, listedWindow{w.Kind.String(), w.Domain, reportgen.DayString(w.Day), w.State, w.Messages, w.Rows, w.Late,
				s.ClosesAt(w.Day), w.BuildFailures, w.BuildError})
		}
	}
	items, err := s.OutboxItems(false)
	if err != nil {
		return l, err
	}
	l.Outbox = make([]listedItem, 0, len(items))
	for _, it := range items {
		l.Outbox = append(l.Outbox, listedItem{
			ID: it.ID, Kind: it.Kind.String(), Domain: it.Window.Domain, Day: reportgen.DayString(it.Window.Day),
			Dest: it.Dest, File: it.Meta.FileName, ReportID: it.Meta.ReportID, Part: it.Meta.Part, Parts: it.Meta.Parts,
			State: it.State, Attempts: it.Attempts, Created: it.Created, NextAttempt: it.NextAttempt,
			SentAt: it.SentAt, LastError: it.LastError, Remote: it.Remote,
		})
	}
	return l, nil
}

// errNoWindow is showReport's error for a window the store does not have.
var errNoWindow = errors.New("no such window")

// showReport writes the report of kind's window w, as its receiver would
// read it (XML or TLSRPT JSON, uncompressed; the parts of a split DMARC
// report one after the other), written by id.
func showReport(s *reportgen.Store, kind reportgen.Kind, w reportgen.Window, id reportIdentityFlags, out io.Writer) error {
	parts, err := buildReport(s, kind, w, id)
	if err != nil {
		return err
	}
	return writeReport(parts, out)
}

// buildReport builds the report of kind's window w as its files would be
// sent: gzip-compressed, one per part.
func buildReport(s *reportgen.Store, kind reportgen.Kind, w reportgen.Window, id reportIdentityFlags) ([]*bytes.Buffer, error) {
	wi, err := s.WindowInfo(kind, w)
	if err != nil {
		return nil, err
	}
	if wi == nil {
		return nil, fmt.Errorf("%w: %s %s", errNoWindow, kind, w)
	}
	if id.receiver == "" {
		id.receiver = "localhost"
	}
	if id.email == "" {
		id.email = "postmaster@" + id.receiver
	}
	var gz []*bytes.Buffer // one per report part
	if kind == reportgen.KindTLS {
		gz = append(gz, new(bytes.Buffer))
		if _, err := reportgen.BuildTLSRPT(s, w, id.tlsConfig(), gz[0]); err != nil {
			return nil, err
		}
	} else {
		_, err := reportgen.BuildDMARC(s, w, wi.Policy, id.dmarcConfig(), func(reportgen.ReportFile) (io.Writer, error) {
			gz = append(gz, new(bytes.Buffer))
			return gz[len(gz)-1], nil
		})
		if err != nil {
			return nil, err
		}
	}
	return gz, nil
}

// writeReport writes the report files of buildReport uncompressed, one
// after the other.
func writeReport(gz []*bytes.Buffer, out io.Writer) error {
	for _, b := range gz {
		zr, err := gzip.NewReader(b)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, zr); err != nil {
			return err
		}
	}
	return nil
}

// reportViewHandler serves the report store of a running `run`
// read-only: GET /reports is reportList as JSON, GET /reports/show the
// report of one window (query: kind, domain, day, and the identity: org,
// email, receiver, rfc7489, each defaulting to run's own, id, so that the
// report shown is the one run would send). store is nil until the store is open and
// again once it is closing (503). building bounds the reports built at
// once (its capacity; run gives 1): a large domain's takes as long and as
// much memory as its daily build, and the views are not to load the
// service more than a reporter round does. A request waiting for its turn
// ends with its context.
func reportViewHandler(store *atomic.Pointer[reportgen.Store], building chan struct{}, id reportIdentityFlags) http.Handler {
	mux := http.NewServeMux()
	open := func(w http.ResponseWriter) *reportgen.Store {
		s := store.Load()
		if s == nil {
			http.Error(w, "report store not open", http.StatusServiceUnavailable)
		}
		return s
	}
	mux.HandleFunc("GET /reports", func(w http.ResponseWriter, r *http.Request) {
		s := open(w)
		if s == nil {
			return
		}
		l, err := listReports(s)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(l)
	})
	mux.HandleFunc("GET /reports/show", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		rf := reportFlags{kind: q.Get("kind"), domain: q.Get("domain"), day: q.Get("day")}
		if rf.kind == "" {
			rf.kind = "dmarc"
		}
		kind, win, err := rf.window()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := id
		for name, v := range map[string]*string{"org": &id.org, "email": &id.email, "receiver": &id.receiver} {
			if q.Has(name) {
				*v = q.Get(name)
			}
		}
		if id.org == "" {
			id.org = defaultReportOrg
		}
		if v := q.Get("rfc7489"); v != "" {
			if id.rfc7489, err = strconv.ParseBool(v); err != nil {
				http.Error(w, "rfc7489: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		select {
		case building <- struct{}{}:
			defer func() { <-building }()
		case <-r.Context().Done():
			return
		}
		s := open(w)
		if s == nil {
			return
		}
		// Built (compressed, as sent) before the first byte goes out, so
		// that an error can still set the status.
		parts, err := buildReport(s, kind, win, id)
		if errors.Is(err, errNoWindow) {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		} else if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if kind == reportgen.KindTLS {
			w.Header().Set("Content-Type", "application/tlsrpt+json")
		} else {
			w.Header().Set("Content-Type", "application/xml")
		}
		_ = writeReport(parts, w)
	})
	return mux
}

// reportView is where `report list` and `report show` read: the store,
// or (url set) the running `run` that holds it.
type reportView struct {
	store *reportgen.Store
	url   string
}

// Close closes the store, if the view has it open.
func (v *reportView) Close() {
	if v.store != nil {
		v.store.Close()
	}
}

// view opens the report store of --data-dir, or, with --url or when a run
// that says where it serves (runInfoFile) holds the store, returns a view
// of that run's.
func (rf *reportFlags) view() (*reportView, error) {
	if rf.url != "" {
		u, err := url.Parse(rf.url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("--url %q: want the http://host:port of a running 'authpipe run' (its --http-addr)", rf.url)
		}
		return &reportView{url: strings.TrimRight(rf.url, "/")}, nil
	}
	info, infoErr := readRunInfo(reportStoreDir(rf.dataDir))
	var opts []reportgen.StoreOption
	if infoErr == nil {
		opts = append(opts, reportgen.WithLockWait(runInfoLockWait))
	}
	s, err := rf.open(opts...)
	switch {
	case err == nil:
		return &reportView{store: s}, nil
	case !errors.Is(err, reportgen.ErrStoreLocked):
		return nil, err
	case infoErr == nil:
		return &reportView{url: info.URL}, nil
	}
	return nil, fmt.Errorf("%w; 'authpipe run' serves this store's reports on its --http-addr, unless that is empty: "+
		"the file %s saying where is missing (%v); pass that address as --url", err, filepath.Join(reportStoreDir(rf.dataDir), runInfoFile), infoErr)
}

func readRunInfo(dir string) (runInfo, error) {
	var ri runInfo
	b, err := os.ReadFile(filepath.Join(dir, runInfoFile))
	if err != nil {
		return ri, err
	}
	if err := json.Unmarshal(b, &ri); err != nil || ri.URL == "" {
		return ri, fmt.Errorf("%s: not a run address file (%v)", runInfoFile, err)
	}
	return ri, nil
}

// list returns the report list, from the store or the running run.
func (v *reportView) list(ctx context.Context) (reportList, error) {
	if v.store != nil {
		return listReports(v.store)
	}
	var l reportList
	body, err := v.get(ctx, "/reports", nil)
	if err != nil {
		return l, err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(&l); err != nil {
		return l, fmt.Errorf("report list from %s: %w", v.url, err)
	}
	return l, nil
}

// show writes the report of one window, from the store or the running run.
// Through a run, only the identity settings given (set reports which: a
// flag, the environment or --config) are sent; run fills the others with
// its own, so that the report shown is the one it would send.
func (v *reportView) show(ctx context.Context, kind reportgen.Kind, w reportgen.Window, id reportIdentityFlags, set func(name string) bool, out io.Writer) error {
	if v.store != nil {
		return showReport(v.store, kind, w, id, out)
	}
	q := url.Values{"kind": {kind.String()}, "domain": {w.Domain}, "day": {reportgen.DayString(w.Day)}}
	if set("org") {
		q.Set("org", id.org)
	}
	if set("email") || set("from") {
		q.Set("email", id.email)
	}
	if set("receiver") {
		q.Set("receiver", id.receiver)
	}
	if set("rfc7489") {
		q.Set("rfc7489", strconv.FormatBool(id.rfc7489))
	}
	body, err := v.get(ctx, "/reports/show", q)
	if err != nil {
		return err
	}
	defer body.Close()
	if _, err := io.Copy(out, body); err != nil {
		return fmt.Errorf("report show from %s: %w", v.url, err)
	}
	return nil
}

// viewTimeout bounds one request to a running run's report views.
const viewTimeout = 30 * time.Second

// get asks the running run for path; a status other than 200 is an error
// carrying the run's message.
func (v *reportView) get(ctx context.Context, path string, q url.Values) (io.ReadCloser, error) {
	ctx, cancel := context.WithTimeout(ctx, viewTimeout)
	u := v.url + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("asking the running 'authpipe run' (it holds the store): %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("the running 'authpipe run' at %s: %s: %s", v.url, resp.Status, bytes.TrimSpace(msg))
	}
	return cancelOnClose{resp.Body, cancel}, nil
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
