// Package judgetime carries, in a message's context, the time the message
// is judged as of: DKIM and ARC signature expiry (RFC 6376 3.5 x=, RFC 8617
// 4.1.2) and SPF's %{t} macro (RFC 7208 7.3). The engine sets it from the
// envelope's arrival time when asked to (stages.WithJudgeAtArrival), so
// that mail re-scored from an archive through the pipeline is judged as of
// when it arrived; a checker's own Now is used otherwise.
package judgetime

import (
	"context"
	"time"
)

type key struct{}

// With returns ctx carrying t as the time to judge the message as of.
func With(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, key{}, t)
}

// From returns the time ctx carries, if any.
func From(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(key{}).(time.Time)
	return t, ok
}
