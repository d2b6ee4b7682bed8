// Package panictest holds the one fake the panic-containment tests need: a
// DNS resolver that panics, standing for a bug, since no real part panics
// on demand.
package panictest

import (
	"context"
	"errors"
	"strings"

	"github.com/authpipe/authpipe/resolvercache"
)

// Resolver panics when asked for Name (any case, with or without the final
// dot) and asks the Resolver it wraps for every other name.
type Resolver struct {
	resolvercache.Resolver
	Name string
}

// Lookup implements resolvercache.Resolver.
func (r Resolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	if strings.EqualFold(strings.TrimSuffix(name, "."), r.Name) {
		panic(errors.New("injected bug looking up " + r.Name))
	}
	return r.Resolver.Lookup(ctx, name, qtype)
}
