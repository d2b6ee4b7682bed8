package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// TestWalkArchiveFollowsLinks: a PATH, or an entry under one, that is a
// symbolic link to a message or a folder is read through the link (until
// session 24 the walker skipped links without a word: `produce link.eml`
// sent nothing and exited 0); a link back up the tree is not walked twice,
// and a link to nothing stops the walk as any unreadable input does.
func TestWalkArchiveFollowsLinks(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"store/Maildir/cur/1.eml": "Subject: 1\n\nbody\n",
		"store/Maildir/new/2.eml": "Subject: 2\n\nbody\n",
		"store/Maildir/tmp/3.eml": "Subject: being delivered\n\n",
		"store/.hidden.eml":       "Subject: dot file\n\n",
		"other/4.eml":             "Subject: 4\n\nbody\n",
	})
	for link, target := range map[string]string{
		"store/linked-folder": "../other",       // a folder elsewhere
		"store/linked.eml":    "../other/4.eml", // a message elsewhere
		"store/Maildir/up":    "..",             // back up the tree: walked once
		"single.eml":          "other/4.eml",    // a PATH that is a link
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	walk := func(path string) ([]string, error) {
		var keys []string
		err := walkArchive(path, 1<<20, func(m archiveMessage) error {
			keys = append(keys, m.key)
			return nil
		})
		return keys, err
	}
	keys, err := walk(filepath.Join(dir, "store"))
	want := []string{"store/Maildir/cur/1.eml", "store/Maildir/new/2.eml", "store/linked-folder/4.eml", "store/linked.eml"}
	if err != nil || !slices.Equal(keys, want) {
		t.Errorf("store: %q, %v; want %q", keys, err, want)
	}
	if keys, err := walk(filepath.Join(dir, "single.eml")); err != nil || !slices.Equal(keys, []string{"single.eml"}) {
		t.Errorf("a PATH that is a link: %q, %v", keys, err)
	}
	if err := os.Symlink("nothing-there", filepath.Join(dir, "store/Maildir/cur/0-dangling.eml")); err != nil {
		t.Fatal(err)
	}
	if keys, err := walk(filepath.Join(dir, "store")); err == nil || !strings.Contains(err.Error(), "0-dangling.eml") || len(keys) != 0 {
		t.Errorf("a link to nothing: %q, %v; want the walk stopped there", keys, err)
	}
}

// TestVerifyArchiveBounded: verify's archive mode holds at most its byte
// budget of messages in verification at once (the budget being at least
// the largest message allowed), and --concurrency of them, whatever the
// archive; every message still gets its verdict.
func TestVerifyArchiveBounded(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for i := range 40 {
		files[fmt.Sprintf("a/%02d.eml", i)] = "Subject: x\n\n" + strings.Repeat("y", 1000*(1+i%5))
	}
	writeTree(t, dir, files)
	for _, tc := range []struct {
		conc   int
		budget int64
	}{{conc: 64, budget: 12000}, {conc: 3, budget: 1 << 20}, {conc: 64, budget: 1}} {
		var mu sync.Mutex
		var bytesNow, bytesPeak, nNow, nPeak int64
		verify := func(_ context.Context, raw []byte, _ stages.Envelope) *verdict.Verdict {
			mu.Lock()
			bytesNow += int64(len(raw))
			nNow++
			bytesPeak, nPeak = max(bytesPeak, bytesNow), max(nPeak, nNow)
			mu.Unlock()
			time.Sleep(time.Millisecond) // let others pile up if they may
			mu.Lock()
			bytesNow -= int64(len(raw))
			nNow--
			mu.Unlock()
			return &verdict.Verdict{}
		}
		const maxBytes = 6000 // the budget is at least this: the largest message allowed
		source := func(yield func(archiveMessage, stages.Envelope, error) error) error {
			return walkArchive(filepath.Join(dir, "a"), maxBytes, func(m archiveMessage) error { return yield(m, stages.Envelope{}, nil) })
		}
		var out, errs bytes.Buffer
		if err := verifyArchive(context.Background(), verify, source, tc.conc, maxBytes, tc.budget, &out, &errs); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(out.String(), "\n"); n != 40 {
			t.Errorf("%+v: %d verdicts, want 40", tc, n)
		}
		if limit := max(tc.budget, maxBytes); bytesPeak > limit || nPeak > int64(tc.conc) {
			t.Errorf("%+v: peak %d bytes in %d messages, want at most %d bytes and %d messages", tc, bytesPeak, nPeak, limit, tc.conc)
		}
	}
}
