package spf

import (
	"testing"
	"time"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// suiteBackends lists the DNS backends the conformance suites run
// against: the in-memory mapResolver, and the real path (the dnstest
// authoritative server over UDP/TCP, queried by resolvercache.Client).
// Both are fed from the same parsed zone data.
func suiteBackends(t *testing.T) []suiteBackend {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(srv.Close)
	cl, err := resolvercache.NewClient(
		resolvercache.WithUpstreams(srv.Addr),
		resolvercache.WithTimeout(150*time.Millisecond),
		resolvercache.WithRetries(0),
	)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return []suiteBackend{mapBackend{}, &dnstestBackend{srv: srv, client: cl}}
}

// dnstestBackend serves each scenario's zone from a dnstest server (Reset
// between scenarios) through the real client.
type dnstestBackend struct {
	srv    *dnstest.Server
	client *resolvercache.Client
}

func (*dnstestBackend) name() string { return "dnstest" }

func (b *dnstestBackend) resolver(z zone) (resolvercache.Resolver, func(), error) {
	b.srv.Reset()
	if err := loadDNSTest(b.srv, z); err != nil {
		return nil, nil, err
	}
	return b.client, func() {}, nil
}
