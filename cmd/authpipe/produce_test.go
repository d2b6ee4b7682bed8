package main

import (
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages"
)

// produceTarget starts an embedded broker with a one-partition mail.raw
// for produce to write to, and returns its address, a client reading
// mail.raw from the start, and a context that ends 20 s later.
func produceTarget(t *testing.T) (broker string, cl *kgo.Client, ctx context.Context) {
	t.Helper()
	b, err := pipeline.StartBroker(pipeline.BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cl, err = kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ConsumeTopics("mail.raw"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	if err := pipeline.EnsureTopics(ctx, cl, 1, -1, nil, "mail.raw"); err != nil {
		t.Fatal(err)
	}
	return strings.Join(b.Addrs(), ","), cl, ctx
}

// writeTree writes files (path under dir → content), making the folders.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestProduceDirectory: a directory is walked for messages, a Maildir's
// cur and new included and mbox files split; dot files, dot directories
// and a Maildir's tmp (deliveries in progress) are skipped. Keys are the
// paths from the directory's name down; each record carries the envelope
// headers.
func TestProduceDirectory(t *testing.T) {
	broker, cl, ctx := produceTarget(t)
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
	writeTree(t, dir, files)
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

// TestProduceStopsAtBadLine: a bad line of an --envelopes file stops
// produce with the file, the line and the reason (exit 1); the messages of
// the lines before it are produced, as the error says, and none after it.
func TestProduceStopsAtBadLine(t *testing.T) {
	broker, cl, ctx := produceTarget(t)
	jsonl := filepath.Join(t.TempDir(), "env.jsonl")
	lines := `{"raw":"Subject: one\r\n\r\nx","client_ip":"192.0.2.1","mail_from":"a@example.com","key":"one"}
# a comment
{"raw":"Subject: two\r\n\r\nx","client_ip":"192.0.2.2","mail_from":"a@example.com","key":"two"}
{"raw":"Subject: three\r\n\r\nx","client_ip":"192.0.2.300","mail_from":"a@example.com","key":"three"}
{"raw":"Subject: four\r\n\r\nx","client_ip":"192.0.2.4","mail_from":"a@example.com","key":"four"}
`
	if err := os.WriteFile(jsonl, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", broker, "--envelopes", jsonl)
	if code != 1 || !strings.Contains(stderr, "env.jsonl:4: client_ip:") || !strings.Contains(stderr, "produced 2 messages before it, none after") {
		t.Fatalf("produce: exit %d, %s", code, stderr)
	}
	var keys []string
	for ctx.Err() == nil {
		fctx, fcancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(fctx)
		fcancel()
		if fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) { keys = append(keys, string(r.Key)) })
	}
	if !slices.Equal(keys, []string{"one", "two"}) {
		t.Errorf("records %q, want one and two", keys)
	}
}

// TestProduceSkipsTooLarge: a message over --max-message-bytes, whether a
// file, one message of an mbox or an --envelopes line, is named on stderr
// and not sent; every other message is sent, the rest of that mbox
// included, and produce exits 1 saying how many were skipped.
func TestProduceSkipsTooLarge(t *testing.T) {
	broker, cl, ctx := produceTarget(t)
	small := "Subject: small\n\nbody\n"
	big := "Subject: big\n\n" + strings.Repeat("x", 5000) + "\n"
	dir := t.TempDir()
	files := map[string]string{
		"in/a.eml":  small,
		"in/b.eml":  big,
		"in/c.mbox": "From one\n" + small + "\nFrom two\n" + big + "\nFrom three\n" + small,
		"env.jsonl": `{"raw":` + strconv.Quote(big) + `,"key":"e1"}` + "\n" + `{"raw":` + strconv.Quote(small) + `,"key":"e2"}` + "\n" + `{"path":"in/b.eml","key":"e3"}` + "\n",
	}
	writeTree(t, dir, files)
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", broker, "--max-message-bytes", "1000",
		"--envelopes", filepath.Join(dir, "env.jsonl"), filepath.Join(dir, "in"))
	if code != 1 || !strings.Contains(stderr, "produced 4 messages") || !strings.Contains(stderr, "4 messages not sent (named above)") {
		t.Fatalf("produce: exit %d, %s", code, stderr)
	}
	for _, skipped := range []string{"in/b.eml: the file", `in/c.mbox#2: the message after "From two"`, "env.jsonl:1: the message", "env.jsonl:3: the message"} {
		if !strings.Contains(stderr, skipped) {
			t.Errorf("stderr does not name %q:\n%s", skipped, stderr)
		}
	}
	var keys []string
	for len(keys) < 4 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			keys = append(keys, string(r.Key))
			if string(r.Value) != small {
				t.Errorf("record %s: %q", r.Key, r.Value)
			}
		})
	}
	slices.Sort(keys)
	if want := []string{"e2", "in/a.eml", "in/c.mbox#1", "in/c.mbox#3"}; !slices.Equal(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
}

// TestProduceReceivedAtMessage: --received-at message gives each message
// its own arrival time, for re-scoring an archive: its topmost Received
// field's date, else its mbox From line's, else now.
func TestProduceReceivedAtMessage(t *testing.T) {
	broker, cl, ctx := produceTarget(t)
	dir := t.TempDir()
	rcvd := "Received: from relay.example by mx.example.net; Tue, 3 Mar 2026 10:00:00 +0100\n" +
		"Received: from origin.example by relay.example; Tue, 3 Mar 2026 08:00:00 +0000\nSubject: a\n\nbody\n"
	files := map[string]string{
		"in/a.eml":  rcvd,
		"in/b.mbox": "From alice@example.com Sun Feb  1 12:00:00 2026\nSubject: b1\n\nbody\n\nFrom bob@example.com Mon Feb  2 13:30:00 2026\n" + rcvd,
		"in/c.eml":  "Subject: c\n\nno date to go by\n",
	}
	writeTree(t, dir, files)
	before := time.Now().Add(-time.Second)
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", broker, "--received-at", "message", filepath.Join(dir, "in"))
	if code != 0 || !strings.Contains(stderr, "produced 4 messages") {
		t.Fatalf("produce: exit %d, %s", code, stderr)
	}
	envs := consumeEnvelopes(t, ctx, cl, 4)
	got := map[string]time.Time{}
	for k, env := range envs {
		got[k] = env.ReceivedAt
	}
	topmost := time.Date(2026, 3, 3, 9, 0, 0, 0, time.UTC) // the first Received field's, in UTC
	for key, want := range map[string]time.Time{"in/a.eml": topmost, "in/b.mbox#1": time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC), "in/b.mbox#2": topmost} {
		if !got[key].Equal(want) {
			t.Errorf("%s: received at %v, want %v", key, got[key], want)
		}
	}
	if c := got["in/c.eml"]; c.Before(before) || c.After(time.Now()) {
		t.Errorf("in/c.eml (no date): received at %v, want now", c)
	}
	if code, _, stderr := cli(t, 5*time.Second, "produce", "--brokers", broker, "--received-at", "yesterday", filepath.Join(dir, "in")); code != exitUsage || !strings.Contains(stderr, "RFC 3339 or message") {
		t.Errorf("--received-at yesterday: exit %d, %s", code, stderr)
	}
}

// FuzzParseEnvelopeLine: a line of an --envelopes file either fails with
// an error or gives a message by exactly one of path and raw, and an
// envelope that the pipeline decodes from the record headers produce
// writes without a bad-envelope DLQ record, back to the same values (but
// for the angle brackets Decode takes off the addresses).
func FuzzParseEnvelopeLine(f *testing.F) {
	for _, s := range []string{
		`{"raw":"Subject: x\r\n\r\nbody","client_ip":"192.0.2.1","helo":"mta.example","mail_from":"a@example.com","rcpt_to":["b@example.net","c@example.net"],"received_at":"2026-11-24T10:00:00+01:00","queue_id":"Q1","key":"k"}`,
		`{"path":"m.eml","client_ip":"2001:db8::1","mail_from":""}`,
		`{"path":"m.eml","client_ip":"::ffff:192.0.2.7","mail_from":"<a@b>","rcpt_to":["<c@d>"]}`,
		`{"path":"m.eml","raw":"x"}`, `{}`, `{"raw":"x","extra":1}`, `{"raw":"x"} {"raw":"y"}`,
		`{"raw":"x","client_ip":"fe80::1%eth0"}`, `{"raw":"x","received_at":"yesterday"}`, `[`, `null`,
		`{"raw":"x","rcpt_to":[""]}`, `{"raw":"x","helo":"a\nb"}`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, line []byte) {
		e, env, err := parseEnvelopeLine(line, now)
		if err != nil {
			return
		}
		if (e.Path == "") == (e.Raw == "") {
			t.Fatalf("accepted %q with path %q and raw %q", line, e.Path, e.Raw)
		}
		if (e.ClientIP != "") != env.ClientIP.IsValid() || env.ClientIP.Is4In6() {
			t.Fatalf("client_ip %q became %v", e.ClientIP, env.ClientIP)
		}
		if e.ReceivedAt == "" && !env.ReceivedAt.Equal(now) {
			t.Fatalf("no received_at, but %v", env.ReceivedAt)
		}
		rec := &kgo.Record{Value: []byte("Subject: x\r\n\r\n"), Headers: pipeline.EnvelopeHeaders(env, e.QueueID)}
		in, err := pipeline.Decode(rec, 0)
		if err != nil {
			t.Fatalf("line %q: the pipeline rejects the record produce writes: %v", line, err)
		}
		unbracket := func(s string) string { return strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">") }
		want := env
		want.MailFrom = unbracket(env.MailFrom)
		want.RcptTo = nil
		for _, r := range env.RcptTo {
			want.RcptTo = append(want.RcptTo, unbracket(r))
		}
		got := in.Envelope
		if got.ClientIP != want.ClientIP || got.HELO != want.HELO || got.MailFrom != want.MailFrom ||
			!slices.Equal(got.RcptTo, want.RcptTo) || !got.ReceivedAt.Equal(want.ReceivedAt) || in.QueueID != e.QueueID {
			t.Fatalf("line %q: envelope %+v (queue %q) came back as %+v (queue %q)", line, want, e.QueueID, got, in.QueueID)
		}
	})
}

// TestProduceMissingInputFailsAtOnce: a PATH or --envelopes file that is
// not there is an error before any broker is reached (none listens here;
// the broker check would take 15 s), and nothing is sent.
func TestProduceMissingInputFailsAtOnce(t *testing.T) {
	dead := freeAddrs(t, 1)[0]
	for _, args := range [][]string{{"../../examples/message.eml", "/nonexistent.eml"}, {"--envelopes", "/nonexistent.jsonl"}} {
		start := time.Now()
		code, _, stderr := cli(t, 20*time.Second, append([]string{"produce", "--brokers", dead}, args...)...)
		if code != 1 || !strings.Contains(stderr, "/nonexistent.") || !strings.Contains(stderr, "nothing sent") || time.Since(start) > 5*time.Second {
			t.Errorf("produce %v: exit %d after %v: %s", args, code, time.Since(start), stderr)
		}
	}
}

// FuzzMessageArrival: produce --received-at message reads a date out of the
// message (its topmost Received field) or its mbox From line; whatever they
// hold, it returns a UTC time or nothing, and never panics.
func FuzzMessageArrival(f *testing.F) {
	f.Add([]byte("Received: from a by b; Tue, 3 Mar 2026 10:00:00 +0100\r\nSubject: x\r\n\r\nbody\r\n"), "")
	f.Add([]byte("Subject: x\n\nbody\n"), "From alice@example.com Sun Feb  1 12:00:00 2026")
	f.Add([]byte("Received: no date here\n\n"), "From x Mon Feb 2 13:30:00 +0000 2026")
	f.Add([]byte("Received: ;\n\n"), "From x y z")
	f.Add([]byte(""), "From ")
	f.Fuzz(func(t *testing.T, raw []byte, from string) {
		at, ok := messageArrival(raw, from)
		if ok && at.Location() != time.UTC {
			t.Fatalf("arrival %v not in UTC", at)
		}
		if !ok && !at.IsZero() {
			t.Fatalf("no arrival, but %v", at)
		}
	})
}

// TestProduceProgress: on a terminal, produce says every interval how many
// messages are sent, only when that changed, and nothing once stopped.
func TestProduceProgress(t *testing.T) {
	var out syncBuffer
	p := &producer{}
	stop := p.startProgress(&out, 10*time.Millisecond)
	p.n.Store(5)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), "produce: 5 messages sent so far"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no progress line in 5 s: %q", out.String())
		}
	}
	time.Sleep(50 * time.Millisecond) // no change: no new line
	if got := strings.Count(out.String(), "\n"); got != 1 {
		t.Errorf("%d lines for one change:\n%s", got, out.String())
	}
	stop()
	p.n.Store(6)
	time.Sleep(50 * time.Millisecond)
	if strings.Contains(out.String(), "6 messages") {
		t.Errorf("a line after stop:\n%s", out.String())
	}
	stop()                                          // again: no panic
	p.startProgress(io.Discard, time.Millisecond)() // not a terminal: nothing started
}

// TestBrokerWaitIsSaid: while the broker check waits for brokers that do
// not answer yet, it says so once (produce and tail give it their standard
// error on a terminal), then fails naming the brokers.
func TestBrokerWaitIsSaid(t *testing.T) {
	dead := freeAddrs(t, 1)[0]
	cl, err := kgo.NewClient(kgo.SeedBrokers(dead))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var said syncBuffer
	k := &kafkaFlags{waiting: &said}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err = k.check(ctx, cl, []string{dead})
	if err == nil || !strings.Contains(err.Error(), "brokers "+dead) {
		t.Fatalf("check: %v", err)
	}
	if got := said.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "waiting up to ") || !strings.Contains(got, dead) {
		t.Errorf("said %q", got)
	}
}

// TestProduceEnvelopeMessage: re-scoring an archive needs each message's
// own envelope, which the flags cannot give a folder of mixed mail. With
// --envelope message, produce reads it from the trace fields: the client
// and HELO of the topmost Received field written for an outside client
// (the provider's own hops, private or --internal-net, passed over), its
// "for" recipient and date, and the Return-Path. A message naming no
// outside client is named and not sent (exit 1); one without a
// Return-Path is sent with --mail-from's sender and counted.
func TestProduceEnvelopeMessage(t *testing.T) {
	broker, cl, ctx := produceTarget(t)
	dir := t.TempDir()
	const (
		lmtp = "Received: from mx1.example.net by store.example.net with LMTP id x1 for <bob@example.net>; Tue, 24 Nov 2026 10:15:02 +0000\n"
		// The provider's MX handed it to a filter on a public address.
		filter  = "Received: from mx1.example.net (mx1.example.net [198.51.100.25]) by filter.example.net with ESMTP id f1; Tue, 24 Nov 2026 10:15:01 +0000\n"
		postfix = "Received: from mail.sender.example (mail.sender.example [192.0.2.1]) by mx1.example.net (Postfix) with ESMTPS id 4Xyz for <bob@example.net>; Tue, 24 Nov 2026 10:15:00 +0000\n"
		outside = "Received: from relay.elsewhere.example (relay.elsewhere.example [203.0.113.50]) by mail.sender.example; Tue, 24 Nov 2026 10:14:00 +0000\n"
		exim    = "Received: from [203.0.113.9] (helo=list.example.org) by mx1.example.net with esmtp (Exim 4.96) (envelope-from <bounces@list.example.org>) id 1pQ for carol@example.net; Wed, 25 Nov 2026 08:00:00 +0000\n"
	)
	writeTree(t, dir, map[string]string{
		"Maildir/cur/1.eml:2,S": "Return-Path: <alice@sender.example>\n" + "Delivered-To: bob@example.net\n" + lmtp + filter + postfix + outside + "From: alice@sender.example\nSubject: a\n\nbody\n",
		"Maildir/new/2.eml":     lmtp + exim + "From: x@list.example.org\nSubject: b\n\nbody\n",
		"Maildir/new/3.eml":     lmtp + "From: local@example.net\nSubject: internal only\n\nbody\n",
		"Maildir/tmp/4.eml":     "Subject: being delivered\n\n",
	})
	code, _, stderr := cli(t, 20*time.Second, "produce", "--brokers", broker, "--envelope", "message", "--internal-net", "198.51.100.0/24", filepath.Join(dir, "Maildir"))
	if code != exitFailure || !strings.Contains(stderr, "produced 2 messages") ||
		!strings.Contains(stderr, "Maildir/new/3.eml: no Received field names a client outside the provider (see --internal-net): not sent") ||
		!strings.Contains(stderr, "1 message not sent") {
		t.Fatalf("produce: exit %d, %s", code, stderr)
	}
	got := consumeEnvelopes(t, ctx, cl, 2)
	want := map[string]stages.Envelope{
		"Maildir/cur/1.eml:2,S": {ClientIP: netip.MustParseAddr("192.0.2.1"), HELO: "mail.sender.example", MailFrom: "alice@sender.example",
			RcptTo: []string{"bob@example.net"}, ReceivedAt: time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)},
		"Maildir/new/2.eml": {ClientIP: netip.MustParseAddr("203.0.113.9"), HELO: "list.example.org", MailFrom: "bounces@list.example.org",
			RcptTo: []string{"carol@example.net"}, ReceivedAt: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)},
	}
	for key, w := range want {
		if g := got[key]; !reflect.DeepEqual(g, w) {
			t.Errorf("%s:\n got %+v\nwant %+v", key, g, w)
		}
	}

	// Without --internal-net the filter's hop, on a public address, is
	// taken for the client; without a Return-Path the sender is
	// --mail-from's, and produce says how many that was.
	writeTree(t, dir, map[string]string{"one/m.eml": filter + postfix + "Subject: c\n\nbody\n"})
	code, _, stderr = cli(t, 20*time.Second, "produce", "--brokers", broker, "--envelope", "message", "--mail-from", "fallback@example.org", filepath.Join(dir, "one"))
	if code != 0 || !strings.Contains(stderr, "1 message without a Return-Path field: MAIL FROM fallback@example.org (--mail-from)") {
		t.Fatalf("produce: exit %d, %s", code, stderr)
	}
	if env := consumeEnvelopes(t, ctx, cl, 1)["one/m.eml"]; env.ClientIP != netip.MustParseAddr("198.51.100.25") || env.MailFrom != "fallback@example.org" {
		t.Errorf("one/m.eml: %+v", env)
	}
	for _, args := range [][]string{{"--envelope", "headers"}, {"--internal-net", "10.0.0.0/8"}, {"--envelope", "message", "--internal-net", "nonsense"}} {
		if code, _, stderr := cli(t, 5*time.Second, append([]string{"produce", "--brokers", broker}, append(args, filepath.Join(dir, "one"))...)...); code != exitUsage {
			t.Errorf("%q: exit %d, %s", args, code, stderr)
		}
	}
}

// FuzzMessageEnvelope: produce --envelope message reads an envelope out of
// an archived message's Received and Return-Path fields. Whatever they
// hold, it either names no outside client, or gives one that is not
// internal, and an envelope the pipeline decodes from the record headers
// produce writes (no bad-envelope DLQ record), back to the same values.
func FuzzMessageEnvelope(f *testing.F) {
	for _, tc := range []string{
		"Return-Path: <a@sender.example>\r\nReceived: from m.sender.example (m.sender.example [192.0.2.1]) by mx.example.net with ESMTP id 1 for <b@example.net>; Tue, 24 Nov 2026 10:15:00 +0000\r\nSubject: x\r\n\r\nbody\r\n",
		"Received: from [203.0.113.9] (helo=h\x01.example) by mx with esmtp (envelope-from <x y@z>) for <\"q\"@d>; junk\n\nb\n",
		"Received: from a (b [10.0.0.1]) by c\nReceived: from d (e [::ffff:198.51.100.2]) by f for ,;\nReturn-Path: <\r\n\r\n",
		"Subject: no trace\n\n",
	} {
		f.Add([]byte(tc))
	}
	internal := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	fallback := stages.Envelope{MailFrom: "fallback@example.org", ReceivedAt: time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)}
	f.Fuzz(func(t *testing.T, raw []byte) {
		env, _, err := messageEnvelope(raw, fallback, internal)
		if err != nil {
			return
		}
		if !env.ClientIP.IsValid() || internalAddr(env.ClientIP, internal) || env.ClientIP.Is4In6() {
			t.Fatalf("client %v", env.ClientIP)
		}
		in, err := pipeline.Decode(&kgo.Record{Value: []byte("Subject: x\r\n\r\n"), Headers: pipeline.EnvelopeHeaders(env, "")}, 0)
		if err != nil {
			t.Fatalf("the pipeline rejects the record produce writes for %+v: %v", env, err)
		}
		got := in.Envelope
		if got.ClientIP != env.ClientIP || got.HELO != env.HELO || got.MailFrom != env.MailFrom ||
			!slices.Equal(got.RcptTo, env.RcptTo) || !got.ReceivedAt.Equal(env.ReceivedAt) {
			t.Fatalf("envelope %+v came back as %+v", env, got)
		}
	})
}

// consumeEnvelopes reads n records more from cl (produceTarget's consumer
// of mail.raw) and returns their envelopes by record key, as the pipeline
// decodes them.
func consumeEnvelopes(t *testing.T, ctx context.Context, cl *kgo.Client, n int) map[string]stages.Envelope {
	t.Helper()
	got := map[string]stages.Envelope{}
	for read := 0; read < n && ctx.Err() == nil; {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			in, err := pipeline.Decode(r, 0)
			if err != nil {
				t.Fatalf("record %s: %v", r.Key, err)
			}
			got[string(r.Key)] = in.Envelope
			read++
		})
	}
	return got
}
