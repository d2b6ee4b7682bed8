package resolvercache

import (
	"errors"
	"testing"

	"github.com/miekg/dns"
)

// TestMalformedOnPanic: a panic while reading a reply (decodeReply and
// chain.absorb defer malformedOnPanic) becomes a KindMalformed error for
// the question, marked errReplyPanic, instead of ending the process.
func TestMalformedOnPanic(t *testing.T) {
	q := &question{orig: "x.example.com", otype: dns.TypeTXT}
	short := []byte{1, 2}
	read := func(i int) (err error) {
		defer malformedOnPanic(q, &err)
		_ = short[i] // an index bug, as a reader's could be
		return nil
	}
	err := read(5)
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindMalformed || e.Name != q.orig || !errors.Is(err, errReplyPanic) {
		t.Fatalf("got %v, want a KindMalformed *Error for %s wrapping errReplyPanic", err, q.orig)
	}
	if err := read(1); err != nil {
		t.Fatalf("no panic: %v", err)
	}
}
