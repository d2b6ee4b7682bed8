package dkim

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/message"
)

// keyLog records the names a KeyFetcher asks for and answers each with an
// empty TXT set (no key). It is the instrument of the test below, which is
// about which names are asked, not about DNS.
type keyLog struct {
	mu    sync.Mutex
	names []string
}

func (l *keyLog) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	l.mu.Lock()
	l.names = append(l.names, name)
	l.mu.Unlock()
	return &resolvercache.Answer{Name: name, Type: qtype, Rcode: dns.RcodeSuccess, TTL: 60, Received: time.Now()}, nil
}

// FuzzKeyQueries: KeyQueries names exactly the keys Verify fetches, in the
// same order, for any header block, counting repeats (the key cache is
// off, so every signature's key is fetched). The engine starts lookups for
// these names early; a name Verify never asks for would be a wasted query.
// The seeds run in go test.
func FuzzKeyQueries(f *testing.F) {
	sig := func(tags string) string { return "DKIM-Signature: " + tags + "\r\n" }
	good := "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel; h=from:to; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA=="
	for _, h := range []string{
		sig(good),
		sig(good) + sig(strings.Replace(good, "d=example.com", "d=Other.Example", 1)),
		sig(good) + sig(strings.Replace(good, "s=sel", "s=sel2", 1)) + sig(good),
		sig(strings.Replace(good, "a=rsa-sha256", "a=rsa-sha1", 1)) + sig(good),
		sig(strings.Replace(good, "h=from:to", "h=to", 1)) + sig(good),
		sig(good+"; x=1") + sig(good),
		sig(good+"; t=99999999999") + sig(good),
		sig(strings.Replace(good, "v=1", "v=2", 1)) + sig(good),
		sig(strings.Replace(good, "; b=dGVzdA==", "", 1)) + sig(good),
		sig(strings.Replace(good, "b=dGVzdA==", "b=!!", 1)) + sig(good),
		sig(good+"; i=@sub.example.com") + sig(good+"; i=@elsewhere.example"),
		sig(good+"; q=dns/txt") + sig(good+"; q=http"),
		sig(strings.Replace(good, "s=sel", "s=a..b", 1)) + sig(good),
		strings.Repeat(sig(good), 7),
		"DKIM-Signature: garbage\r\n" + sig(good),
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, hdrs string) {
		raw := []byte("From: a@example.com\r\nTo: b@example.net\r\n" + hdrs + "\r\nbody\r\n")
		m, err := message.Parse(raw, message.Limits{})
		if err != nil {
			return
		}
		now := func() time.Time { return time.Unix(1_800_000_000, 0) }
		log := &keyLog{}
		v := &Verifier{Keys: &KeyFetcher{Resolver: log, MaxEntries: -1, Now: now}, Now: now}
		v.Verify(context.Background(), m)
		var want []string
		v.KeyQueries(m, func(domain, selector string) {
			name := selector + "._domainkey." + domain
			if resolvercache.ValidateName(name) == nil { // as KeyFetcher.lookup
				want = append(want, name)
			}
		})
		if fmt.Sprint(want) != fmt.Sprint(log.names) {
			t.Fatalf("KeyQueries %q, Verify fetched %q", want, log.names)
		}
	})
}

// TestPrefetchOnlyWhenAKeyIsMissing: Verify offers Prefetch the later
// signatures' keys once, when the first key it needs is not held, and not
// at all when it is (a warm message pays nothing). Keys beyond
// MaxSignatures are never offered.
func TestPrefetchOnlyWhenAKeyIsMissing(t *testing.T) {
	sig := func(d, s string) string {
		return "DKIM-Signature: v=1; a=rsa-sha256; d=" + d + "; s=" + s +
			"; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA==\r\n"
	}
	raw := "From: a@example.com\r\n" + sig("a.example", "s1") + sig("b.example", "s2") + sig("a.example", "s1") + sig("c.example", "s3") + "\r\nbody\r\n"
	m, err := message.Parse([]byte(raw), message.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	log := &keyLog{}
	var offered []string
	v := &Verifier{
		Keys:          &KeyFetcher{Resolver: log},
		MaxSignatures: 3,
		Prefetch:      func(_ context.Context, names []string) { offered = append(offered, names...) },
	}
	v.Verify(context.Background(), m)
	// The third signature's key is the first's, asked for next anyway; the
	// fourth is over the limit.
	if want := "[s2._domainkey.b.example]"; fmt.Sprint(offered) != want {
		t.Errorf("offered %v, want %s", offered, want)
	}
	// Every key is now held (as a cached "no key" answer).
	offered = nil
	v.Verify(context.Background(), m)
	if offered != nil {
		t.Errorf("warm message offered %v", offered)
	}
}
