package reportgen

import (
	"fmt"
	"runtime/debug"
)

// PanicError is a panic recovered while building, sending or reading one
// report's data: a bug that this report's data meets. It is contained to
// that report, so that a reporter keeps building and sending the others
// and the process it runs in (with the embedded broker, `authpipe run`'s
// whole service) does not end; a restart would only meet the same data
// again at the next round and end again.
type PanicError struct {
	Value any    // what was passed to panic
	Stack []byte // the panicking goroutine's stack
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Contain runs fn and returns its error, or a *PanicError if fn panics.
func Contain(fn func() error) (err error) {
	defer func() {
		if x := recover(); x != nil {
			err = &PanicError{Value: x, Stack: debug.Stack()}
		}
	}()
	return fn()
}
