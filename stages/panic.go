package stages

import (
	"fmt"
	"runtime/debug"
)

// PanicError is what Verify panics with when a check it ran on a helper
// goroutine (SPF, ARC) panicked. A panic there would end the process, since
// no caller can recover on a goroutine it did not start; Verify carries it
// to its own goroutine instead, so that a caller serving many messages (the
// pipeline) can contain one message's panic. A panic on Verify's own
// goroutine (parsing, DKIM, DMARC) reaches the caller as it is.
//
// A panic is a bug in authpipe, not a property of the message: it has no
// place in a verdict.
type PanicError struct {
	Check string // "spf" or "arc"
	Value any    // what the check panicked with
	Stack []byte // the helper's stack at the panic
}

func (p *PanicError) Error() string {
	return fmt.Sprintf("stages: %s check panicked: %v", p.Check, p.Value)
}

// Unwrap returns the value panicked with when it is an error (a runtime
// error, for instance).
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// carryPanic, deferred on a helper goroutine, recovers a panic there into
// *dst for Verify to raise again on its own goroutine.
func carryPanic(dst **PanicError, check string) {
	if v := recover(); v != nil {
		*dst = &PanicError{Check: check, Value: v, Stack: debug.Stack()}
	}
}
