package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
)

// TestProduceDirectory: a directory is walked for messages, a Maildir's
// cur and new included and mbox files split; dot files, dot directories
// and a Maildir's tmp (deliveries in progress) are skipped. Keys are the
// paths from the directory's name down; each record carries the envelope
// headers.
func TestProduceDirectory(t *testing.T) {
	b, err := pipeline.StartBroker(pipeline.BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	eml, err := os.ReadFile("../../examples/message.eml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"a.eml":             string(eml),
		"Maildir/cur/1:2,S": string(eml),
		"Maildir/new/2":     string(eml),
		"Maildir/tmp/4":     "From: partial",
		"old.mbox":          "From a@example.com Fri May  1 12:00:00 2026\n" + string(eml) + "\nFrom a@example.com Fri May  1 12:00:01 2026\n" + string(eml),
		".hidden.eml":       string(eml),
		".Trash/cur/3:2,T":  string(eml),
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ConsumeTopics("mail.raw"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := pipeline.EnsureTopics(ctx, cl, 1, -1, nil, "mail.raw"); err != nil {
		t.Fatal(err)
	}
	broker := strings.Join(b.Addrs(), ",")
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", broker, "--ip", "192.0.2.10", "--mail-from", "alice@example.com", dir)
	if code != 0 || !strings.Contains(stderr, "produced 5 messages") {
		t.Fatalf("produce: %d %s", code, stderr)
	}
	var keys []string
	for len(keys) < 5 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			keys = append(keys, string(r.Key))
			if env, err := pipeline.Decode(r, 0); err != nil || env.Envelope.MailFrom != "alice@example.com" {
				t.Errorf("record %s: envelope %+v, %v", r.Key, env, err)
			}
		})
	}
	slices.Sort(keys)
	top := filepath.Base(dir)
	want := []string{top + "/Maildir/cur/1:2,S", top + "/Maildir/new/2", top + "/a.eml", top + "/old.mbox#1", top + "/old.mbox#2"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
}
