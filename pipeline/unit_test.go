package pipeline

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
)

func TestDecode(t *testing.T) {
	msg := []byte("From: a@example.com\r\n\r\nbody\r\n")
	h := func(kv ...string) []kgo.RecordHeader {
		var hs []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	tests := []struct {
		name    string
		value   []byte
		headers []kgo.RecordHeader
		kind    string
		check   func(*Input) bool
	}{
		{"full", msg, h(HeaderClientIP, "::ffff:192.0.2.1", HeaderHELO, "mx.example.com", HeaderMailFrom, "<b@example.com>",
			HeaderRcptTo, "x@example.net", HeaderRcptTo, "y@example.net", HeaderReceivedAt, "2026-05-01T12:00:00.5+02:00", HeaderQueueID, "Q1"), "",
			func(in *Input) bool {
				e := in.Envelope
				return e.ClientIP == netip.MustParseAddr("192.0.2.1") && e.HELO == "mx.example.com" && e.MailFrom == "b@example.com" &&
					len(e.RcptTo) == 2 && e.RcptTo[1] == "y@example.net" && e.ReceivedAt.Equal(time.Date(2026, 5, 1, 10, 0, 0, 5e8, time.UTC)) && in.QueueID == "Q1"
			}},
		{"null sender", msg, h(HeaderMailFrom, ""), "", func(in *Input) bool { return in.Envelope.MailFrom == "" && !in.Envelope.ClientIP.IsValid() }},
		{"LF message", []byte("Subject: x\n\nbody\n"), h(HeaderHELO, "h"), "", nil},
		{"no headers", msg, nil, "no-envelope", nil},
		{"only queue id", msg, h(HeaderQueueID, "Q"), "no-envelope", nil},
		{"bad ip", msg, h(HeaderClientIP, "mx.example.com"), "bad-envelope", nil},
		{"bad time", msg, h(HeaderReceivedAt, "Mon, 1 May 2026 12:00:00 +0000"), "bad-envelope", nil},
		{"two ips", msg, h(HeaderClientIP, "192.0.2.1", HeaderClientIP, "192.0.2.2"), "bad-envelope", nil},
		{"empty", nil, h(HeaderHELO, "h"), "not-a-message", nil},
		{"binary", []byte{0, 1, 2, ':'}, h(HeaderHELO, "h"), "not-a-message", nil},
		{"space in name", []byte("Sub ject: x\r\n\r\n"), h(HeaderHELO, "h"), "not-a-message", nil},
		{"leading colon", []byte(": x\r\n\r\n"), h(HeaderHELO, "h"), "not-a-message", nil},
		{"too large", bytes.Repeat([]byte("X-A: b\r\n"), 20), h(HeaderHELO, "h"), "too-large", nil},
		{"headers too large", msg, append(h(HeaderHELO, "h"), manyRcpts(MaxHeaderBytes/64)...), "too-large", nil},
		{"headers at the cap", msg, manyRcpts(MaxHeaderBytes/64 - 1), "", func(in *Input) bool { return len(in.Envelope.RcptTo) == MaxHeaderBytes/64-1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in, err := Decode(&kgo.Record{Key: []byte("k"), Value: tc.value, Headers: tc.headers}, 100)
			if tc.kind != "" {
				var de *DecodeError
				if !errors.As(err, &de) || de.Kind != tc.kind {
					t.Fatalf("err %v, want kind %s", err, tc.kind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil && !tc.check(in) {
				t.Fatalf("decoded %+v", in)
			}
		})
	}
}

// manyRcpts is n smtp.rcpt-to headers of 64 bytes each, key and value.
func manyRcpts(n int) []kgo.RecordHeader {
	v := []byte(strings.Repeat("r", 64-len(HeaderRcptTo)-len("@example.net")) + "@example.net")
	hs := make([]kgo.RecordHeader, n)
	for i := range hs {
		hs[i] = kgo.RecordHeader{Key: HeaderRcptTo, Value: v}
	}
	return hs
}

// TestDecodeKeyBounded: a key over MaxKeyBytes is too-large.
func TestDecodeKeyBounded(t *testing.T) {
	hs := []kgo.RecordHeader{{Key: HeaderHELO, Value: []byte("h")}}
	msg := []byte("From: a@example.com\r\n\r\n")
	if _, err := Decode(&kgo.Record{Key: make([]byte, MaxKeyBytes), Value: msg, Headers: hs}, 0); err != nil {
		t.Fatalf("key at the cap: %v", err)
	}
	var de *DecodeError
	if _, err := Decode(&kgo.Record{Key: make([]byte, MaxKeyBytes+1), Value: msg, Headers: hs}, 0); !errors.As(err, &de) || de.Kind != "too-large" {
		t.Fatalf("key over the cap: %v", err)
	}
}

// TestDLQCopyFitsTheProducer: whatever the input topic let in, a record's
// DLQ copy stays within the producer's batch limit (MaxMessageBytes + 1
// MiB), or its batch would fail and be redone for ever; each cut is said
// in a header, and a record within the bounds is copied whole.
func TestDLQCopyFitsTheProducer(t *testing.T) {
	p, err := New(Config{Brokers: []string{"127.0.0.1:1"}, MaxMessageBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	limit := p.cfg.MaxMessageBytes + 1<<20
	wire := func(r *kgo.Record) int {
		n := len(r.Key) + len(r.Value) + 64
		for _, h := range r.Headers {
			n += len(h.Key) + len(h.Value) + headerOverhead
		}
		return n
	}
	huge := &kgo.Record{Key: make([]byte, 3<<20), Value: make([]byte, 5<<20), Headers: manyRcpts(100000)} // 6.4 MB of headers
	c := p.dlqRecord(huge, &DecodeError{"too-large", "x"})
	if n := wire(c); n > limit {
		t.Fatalf("DLQ copy of a huge record: %d bytes on the wire, over %d", n, limit)
	}
	got := map[string]string{}
	for _, h := range c.Headers {
		if strings.HasPrefix(h.Key, "authpipe.") {
			got[h.Key] = string(h.Value)
		}
	}
	kept := len(c.Headers) - len(got)
	if got[HeaderTruncated] != strconv.Itoa(5<<20) || got[HeaderKeyTruncated] != strconv.Itoa(3<<20) ||
		got[HeaderHeadersTruncated] != strconv.Itoa(100000-kept) || got[HeaderError] != "too-large: x" {
		t.Errorf("DLQ copy headers: %v (kept %d of the input's)", got, kept)
	}
	small := &kgo.Record{Key: []byte("k"), Value: []byte("v"), Headers: manyRcpts(3)}
	c = p.dlqRecord(small, &DecodeError{"not-a-message", "y"})
	if string(c.Key) != "k" || string(c.Value) != "v" || len(c.Headers) != 4 {
		t.Errorf("DLQ copy of a small record: %+v", c)
	}
}

func TestEnvelopeHeadersRoundTrip(t *testing.T) {
	env := stages.Envelope{ClientIP: netip.MustParseAddr("2001:db8::1"), HELO: "h.example", MailFrom: "",
		RcptTo: []string{"a@x.example", "b@x.example"}, ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	in, err := Decode(&kgo.Record{Value: []byte("A: b\r\n\r\n"), Headers: EnvelopeHeaders(env, "Q9")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if in.Envelope.ClientIP != env.ClientIP || in.Envelope.HELO != env.HELO || in.Envelope.MailFrom != "" ||
		strings.Join(in.Envelope.RcptTo, ",") != "a@x.example,b@x.example" || !in.Envelope.ReceivedAt.Equal(env.ReceivedAt) || in.QueueID != "Q9" {
		t.Fatalf("round trip: %+v", in)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("From: a@b\r\n\r\nx"), "192.0.2.1", "2026-05-01T12:00:00Z")
	f.Add([]byte(""), "::1", "x")
	f.Add([]byte("\x00:"), "", "")
	f.Fuzz(func(t *testing.T, v []byte, ip, at string) {
		r := &kgo.Record{Value: v, Headers: []kgo.RecordHeader{{Key: HeaderClientIP, Value: []byte(ip)}, {Key: HeaderReceivedAt, Value: []byte(at)}}}
		in, err := Decode(r, 1<<10)
		if (in == nil) == (err == nil) {
			t.Fatalf("in %v err %v", in, err)
		}
	})
}

// TestPoolBounds checks both bounds: count and bytes.
func TestPoolBounds(t *testing.T) {
	for _, tc := range []struct {
		maxN     int
		maxBytes int64
		size     int64
		want     int32
	}{{3, 1 << 20, 10, 3}, {100, 50, 10, 5}, {4, 5, 10, 1}} {
		p := NewPool(tc.maxN, tc.maxBytes)
		var cur, peak atomic.Int32
		release := make(chan struct{})
		var blockedAny bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 20 {
				b, err := p.Go(context.Background(), tc.size, func() {
					n := cur.Add(1)
					for {
						old := peak.Load()
						if n <= old || peak.CompareAndSwap(old, n) {
							break
						}
					}
					<-release
					cur.Add(-1)
				})
				if err != nil {
					t.Error(err)
				}
				blockedAny = blockedAny || b
			}
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, _ := p.InFlight()
			if int32(n) == tc.want || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
		if n, b := p.InFlight(); int32(n) != tc.want || b > max(tc.maxBytes, tc.size) {
			t.Errorf("bounds %d/%dB: %d in flight, %d bytes; want %d", tc.maxN, tc.maxBytes, n, b, tc.want)
		}
		close(release)
		<-done
		p.Wait()
		if peak.Load() > tc.want || !blockedAny {
			t.Errorf("bounds %d/%dB: peak %d (want ≤ %d), blocked %v", tc.maxN, tc.maxBytes, peak.Load(), tc.want, blockedAny)
		}
	}
}

func TestPoolGoCancelled(t *testing.T) {
	p := NewPool(1, 1<<20)
	release := make(chan struct{})
	if _, err := p.Go(context.Background(), 1, func() { <-release }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if blocked, err := p.Go(ctx, 1, func() { t.Error("ran") }); !blocked || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked %v err %v", blocked, err)
	}
	close(release)
	p.Wait()
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.InputTopic != "mail.raw" || c.VerdictTopic != "mail.verdicts" || c.DLQTopic != "mail.raw.dlq" || c.Group != "authpipe-verify" ||
		c.Delivery != ExactlyOnce || c.TransactionalID != "" || c.BatchMaxRecords != 16*c.MaxInFlight || c.MaxMessageBytes != 64<<20 || c.FetchMaxWait != 500*time.Millisecond {
		t.Fatalf("defaults: %+v", c)
	}
	// The slot files' directory follows TMPDIR, which is how instances
	// with private /tmp directories share one (docs/configuration.md).
	if runtime.GOOS != "windows" && runtime.GOOS != "plan9" {
		t.Setenv("TMPDIR", "/run/authpipe")
		if c, _ := (Config{}).withDefaults(); c.InstanceLockDir != "/run/authpipe" {
			t.Errorf("with TMPDIR=/run/authpipe: InstanceLockDir %q", c.InstanceLockDir)
		}
	}
	for _, bad := range []Config{{Delivery: "maybe"}, {MaxInFlight: -1}, {InputTopic: "x", VerdictTopic: "x"}, {RetryTemperror: -1}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestDNSQueriesInFlight: the resolver client gets DNSQueriesPerMessage
// slots for each message in flight, the retry stage's too, and never fewer
// than its default.
func TestDNSQueriesInFlight(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want int
	}{
		{Config{MaxInFlight: 512}, 2048},
		{Config{MaxInFlight: 512, RetryTopic: "mail.raw.retry"}, 4 * (512 + 128)},
		{Config{MaxInFlight: 64}, resolvercache.DefaultMaxInFlight},
		{Config{MaxInFlight: 32, RetryTopic: "r"}, resolvercache.DefaultMaxInFlight},
	} {
		if got := DNSQueriesInFlight(tc.c); got != tc.want {
			t.Errorf("%d in flight, retry topic %q: %d queries, want %d", tc.c.MaxInFlight, tc.c.RetryTopic, got, tc.want)
		}
	}
}

func TestMboxReader(t *testing.T) {
	in := "From alice@example.com Thu May  1 12:00:00 2026\n" +
		"Subject: one\n\nhello\n>From the start\n>>From deeper\n> From not quoted\n\n" +
		"From bob@example.com Thu May  1 12:00:01 2026\n" +
		"Subject: two\n\nbye\n"
	r := NewMboxReader(strings.NewReader(in), 0)
	var got []string
	var seps []string
	for {
		m, sep, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(m))
		seps = append(seps, sep)
	}
	want := []string{"Subject: one\n\nhello\nFrom the start\n>From deeper\n> From not quoted\n", "Subject: two\n\nbye\n"}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %q", got)
	}
	if seps[1] != "From bob@example.com Thu May  1 12:00:01 2026" {
		t.Fatalf("separator %q", seps[1])
	}
	if _, _, err := NewMboxReader(strings.NewReader("Subject: x\n"), 0).Next(); !errors.Is(err, ErrNotMbox) {
		t.Fatalf("not mbox: %v", err)
	}
	big := "From x\n" + strings.Repeat("a", 100) + "\n"
	if _, _, err := NewMboxReader(strings.NewReader(big), 50).Next(); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("over the bound: %v", err)
	}
	crlf := "From x\r\nA: b\r\n\r\nbody\r\n\r\nFrom y\r\nC: d\r\n\r\n"
	r = NewMboxReader(strings.NewReader(crlf), 0)
	m, _, _ := r.Next()
	if string(m) != "A: b\r\n\r\nbody\r\n" {
		t.Fatalf("CRLF message %q", m)
	}
}

// TestMboxReaderSkipsTooLarge: a message over the bound is reported with
// its separator and skipped, and the messages after it are still read; a
// separator or a line without an end longer than the reader's buffer is
// handled in bounded memory.
func TestMboxReaderSkipsTooLarge(t *testing.T) {
	long := strings.Repeat("x", 200<<10) // longer than the reader's 64 KiB buffer
	in := "From a\nSubject: one\n\nshort\n\n" +
		"From big " + long + "\nSubject: two\n\n" + long + "\n>From inside\n\n" +
		"From c\nSubject: three\n\n>From kept\n" + "From d\n"
	r := NewMboxReader(strings.NewReader(in), 1<<10)
	type got struct {
		msg, sep string
		tooLarge bool
	}
	var all []got
	for {
		m, sep, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, ErrMessageTooLarge) {
			t.Fatal(err)
		}
		all = append(all, got{string(m), sep, err != nil})
	}
	if len(all) != 4 {
		t.Fatalf("%d messages, want 4: %+v", len(all), all)
	}
	if all[0].msg != "Subject: one\n\nshort\n" || all[0].tooLarge {
		t.Errorf("first: %+v", all[0])
	}
	if !all[1].tooLarge || all[1].msg != "" || len(all[1].sep) != maxSeparatorBytes || !strings.HasPrefix(all[1].sep, "From big xxx") {
		t.Errorf("second: too large %v, %d bytes, separator %d bytes", all[1].tooLarge, len(all[1].msg), len(all[1].sep))
	}
	if all[2].msg != "Subject: three\n\nFrom kept\n" || all[2].sep != "From c" || all[2].tooLarge {
		t.Errorf("third: %+v", all[2])
	}
	if all[3].msg != "" || all[3].sep != "From d" {
		t.Errorf("fourth (empty, the separator ends the input): %+v", all[3])
	}

	// 64 MiB without a line end, the bound 1 MiB: memory stays near the
	// bound, not the line.
	const lineBytes = 64 << 20
	src := io.MultiReader(strings.NewReader("From x\n"), io.LimitReader(repeatReader('a'), lineBytes))
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	r = NewMboxReader(src, 1<<20)
	if _, _, err := r.Next(); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("endless line: %v", err)
	}
	runtime.ReadMemStats(&m1)
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > 8<<20 {
		t.Errorf("reading a %d-byte line under a 1 MiB bound allocated %d bytes", lineBytes, alloc)
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Errorf("after it: %v, want EOF", err)
	}
}

// repeatReader reads as an endless run of one byte.
type repeatReader byte

func (c repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

func FuzzMboxReader(f *testing.F) {
	f.Add([]byte("From a\nX: y\n\n>From b\n\nFrom c\nZ: w\n"))
	f.Add([]byte("From \r\n\r\n"))
	f.Add([]byte("nope"))
	f.Add([]byte("From a\n" + strings.Repeat("x", 5000) + "\nFrom b\nY: z\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewMboxReader(bytes.NewReader(b), 1<<12)
		total := 0
		for range len(b) + 2 {
			m, sep, err := r.Next()
			if errors.Is(err, ErrMessageTooLarge) {
				if len(sep) > maxSeparatorBytes {
					t.Fatalf("separator of %d bytes kept", len(sep))
				}
				continue // skipped; the reader goes on
			}
			if err != nil {
				return
			}
			if len(m) > 1<<12 {
				t.Fatalf("a message of %d bytes under a bound of %d", len(m), 1<<12)
			}
			total += len(m)
			if total > len(b) {
				t.Fatalf("read %d bytes of messages from %d bytes of input", total, len(b))
			}
		}
		t.Fatal("reader did not end")
	})
}
