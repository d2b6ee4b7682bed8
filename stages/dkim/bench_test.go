package dkim

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/stages/message"
)

// message10KB is a realistic 10 KB message: trace fields, the usual
// headers and a text body.
func message10KB() string {
	var b strings.Builder
	b.WriteString("Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\tby mx.example.com with ESMTPS id abc123\r\n\tfor <bob@example.com>; Mon, 23 Nov 2026 10:00:00 +0000\r\n")
	b.WriteString("Received: from localhost by mail.example.org; Mon, 23 Nov 2026 09:59:59 +0000\r\n")
	b.WriteString("From: Alice Example <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: Quarterly report and some notes about the meeting\r\n")
	b.WriteString("Date: Mon, 23 Nov 2026 09:59:58 +0000\r\nMessage-ID: <20261123095958.12345@mail.example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := "The quick brown fox jumps over the lazy dog while the report is being written.\r\n"
	for b.Len() < 10*1024 {
		b.WriteString(line)
	}
	return b.String()
}

func benchVerify(b *testing.B, ed bool) {
	v, _ := testEnv(b)
	raw := goSign(b, message10KB(), ed, "relaxed", "relaxed")
	ctx := context.Background()
	check := func() {
		m, err := message.Parse(raw, message.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		res := v.Verify(ctx, m)
		if len(res) != 1 || res[0].Result != Pass {
			b.Fatalf("%+v", res)
		}
	}
	check() // warm the key cache
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		check()
	}
}

// BenchmarkVerifyRSA2048_10KB measures Parse + Verify of a 10 KB message
// with one rsa-sha256 relaxed/relaxed signature, key cached.
func BenchmarkVerifyRSA2048_10KB(b *testing.B) { benchVerify(b, false) }

// BenchmarkVerifyEd25519 is the same with an ed25519-sha256 signature.
func BenchmarkVerifyEd25519(b *testing.B) { benchVerify(b, true) }

// BenchmarkGoMsgauthVerify_10KB runs the oracle on the same message, with a
// LookupTXT that answers from memory.
func BenchmarkGoMsgauthVerify_10KB(b *testing.B) {
	testKeys(b)
	raw := goSign(b, message10KB(), false, "relaxed", "relaxed")
	opts := &msgauth.VerifyOptions{LookupTXT: func(string) ([]string, error) { return []string{rsaKeyText}, nil }}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(raw), opts)
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			b.Fatal(err, vs)
		}
	}
}

// BenchmarkBodyHashRelaxed10KB isolates relaxed body canonicalisation.
func BenchmarkBodyHashRelaxed10KB(b *testing.B) {
	m, _ := message.Parse([]byte(message10KB()), message.Limits{})
	b.ReportAllocs()
	b.SetBytes(int64(len(m.Body)))
	st := verifyState{m: m}
	for b.Loop() {
		st.nbody = 0
		st.bodyHash(Relaxed, 5 /* crypto.SHA256 */, -1)
	}
}

// BenchmarkVerifyOnlyRSA2048_10KB measures Verify alone on a message parsed
// once (the pipeline parses each message once for all stages).
func BenchmarkVerifyOnlyRSA2048_10KB(b *testing.B) {
	v, _ := testEnv(b)
	raw := goSign(b, message10KB(), false, "relaxed", "relaxed")
	m, err := message.Parse(raw, message.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	v.Verify(ctx, m)
	b.ReportAllocs()
	for b.Loop() {
		if res := v.Verify(ctx, m); res[0].Result != Pass {
			b.Fatal(res)
		}
	}
}

// BenchmarkKeyFetcherFull fetches a new key into a full cache of the
// default size, as a receiver does once it has seen DefaultKeyCacheEntries
// keys: go test -run '^$' -bench KeyFetcherFull -benchmem ./stages/dkim/.
// The keys are missing (NXDOMAIN, a cached permanent error) so that the
// figure is the cache's own cost, not the key parse.
func BenchmarkKeyFetcherFull(b *testing.B) {
	kf := &KeyFetcher{Resolver: newMapResolver()}
	ctx := context.Background()
	for i := range DefaultKeyCacheEntries {
		kf.Fetch(ctx, "example.org", "s"+strconv.Itoa(i))
	}
	i := DefaultKeyCacheEntries
	b.ReportAllocs()
	for b.Loop() {
		i++
		kf.Fetch(ctx, "example.org", "s"+strconv.Itoa(i))
	}
	if n := kf.Len(); n > DefaultKeyCacheEntries {
		b.Fatalf("%d entries", n)
	}
}
