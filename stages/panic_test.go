package stages_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/authpipe/authpipe/internal/panictest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/spf"
	"github.com/authpipe/authpipe/stages/verdict"
)

// TestVerifyPanicReachesCaller: a check that panics, on a helper goroutine
// (SPF) or on Verify's own (DKIM), panics out of Verify on the caller's
// goroutine, where the caller can recover it, instead of ending the
// process. The engine then goes on verifying other messages, on the same
// helpers.
func TestVerifyPanicReachesCaller(t *testing.T) {
	w := newWorld(t)
	msg := sign(t, newMessage("alice@example.com", 2000), "rsa", w.rsaKey)
	env := stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "alice@example.com"}
	verify := func(e *stages.Engine) (v *verdict.Verdict, recovered any) {
		defer func() { recovered = recover() }()
		return e.Verify(context.Background(), msg, env), nil
	}

	// SPF runs on a helper: the resolver is not a cache that can say the
	// record is held, so SPF does not run on Verify's goroutine.
	e := newEngine(&world{res: panictest.Resolver{Resolver: w.res, Name: "_spf.example.com"}})
	_, got := verify(e)
	var pe *stages.PanicError
	if err, _ := got.(error); !errors.As(err, &pe) || pe.Check != "spf" {
		t.Fatalf("SPF panic: recovered %v (%T), want a *stages.PanicError for spf", got, got)
	}
	if !strings.Contains(pe.Error(), "injected bug") || !strings.Contains(string(pe.Stack), "panictest.Resolver") {
		t.Errorf("PanicError %q lacks the panic value or the helper's stack:\n%s", pe.Error(), pe.Stack)
	}

	// DKIM runs on Verify's goroutine: its panic arrives as it is.
	e2 := newEngine(&world{res: panictest.Resolver{Resolver: w.res, Name: "rsa._domainkey.example.com"}})
	if _, got := verify(e2); got == nil || strings.Contains(fmt.Sprint(got), "stages:") || !strings.Contains(fmt.Sprint(got), "injected bug") {
		t.Fatalf("DKIM panic: recovered %v", got)
	}

	// Both engines keep working for messages that do not hit the bug;
	// the first reuses the helper that panicked.
	other := newMessage("bob@bank.example", 500)
	otherEnv := stages.Envelope{ClientIP: goodIP, HELO: "mail.bank.example", MailFrom: "bob@bank.example"}
	for _, eng := range []*stages.Engine{e, e2} {
		v := eng.Verify(context.Background(), other, otherEnv)
		if v.SPF == nil || v.SPF.Result != string(spf.None) || v.DMARC == nil || v.DMARC.Result != "fail" {
			t.Fatalf("after the panic: SPF %+v, DMARC %+v; want SPF none, DMARC fail", v.SPF, v.DMARC)
		}
	}
}
