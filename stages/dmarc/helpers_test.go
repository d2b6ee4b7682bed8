package dmarc

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// mapResolver is a tiny in-memory Resolver for unit tests: TXT records by
// owner, A records (for existence), names that fail (SERVFAIL) and a log of
// the questions asked. Names absent from every map are NXDOMAIN.
type mapResolver struct {
	txt  map[string][]string
	a    map[string][]netip.Addr
	fail map[string]bool

	mu  sync.Mutex
	log []string
}

func (m *mapResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	name = resolvercache.CanonicalName(name)
	m.mu.Lock()
	m.log = append(m.log, dns.TypeToString[qtype]+" "+name)
	m.mu.Unlock()
	if m.fail[name] {
		return nil, &resolvercache.Error{Name: name, Type: qtype, Kind: resolvercache.KindServFail, Rcode: dns.RcodeServerFailure}
	}
	ans := &resolvercache.Answer{Name: name, Type: qtype, Rcode: dns.RcodeNameError, Received: time.Unix(0, 0)}
	_, hasTXT := m.txt[name]
	_, hasA := m.a[name]
	if hasTXT || hasA {
		ans.Rcode = dns.RcodeSuccess
	}
	switch qtype {
	case dns.TypeTXT:
		ans.TXT = m.txt[name]
	case dns.TypeA:
		ans.IPs = m.a[name]
	}
	return ans, nil
}

func (m *mapResolver) queries() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.log...)
}

// dnsZone starts a dnstest server holding zone (owner → TXT values, one RR
// each) with the owners in servfail answering SERVFAIL, and returns the real
// resolvercache client pointed at it.
func dnsZone(t testing.TB, zone map[string][]string, servfail []string) resolvercache.Resolver {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(srv.Close)
	for owner, vals := range zone {
		for _, v := range vals {
			srv.AddRR(dnstest.TXT(owner, v, 300))
		}
	}
	for _, owner := range servfail {
		srv.SetRcode(owner, 0, dns.RcodeServerFailure)
	}
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(500*time.Millisecond), resolvercache.WithRetries(0))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// quietResolver answers from prebuilt, shared Answers (as a warm cache
// does) without logging: TXT from the map, NXDOMAIN otherwise.
type quietResolver struct {
	txt map[string]*resolvercache.Answer
	nx  *resolvercache.Answer
}

func newQuietResolver(m *mapResolver) *quietResolver {
	q := &quietResolver{txt: map[string]*resolvercache.Answer{},
		nx: &resolvercache.Answer{Rcode: dns.RcodeNameError}}
	for name, v := range m.txt {
		q.txt[name] = &resolvercache.Answer{Name: name, Type: dns.TypeTXT, TXT: v}
	}
	return q
}

func (q *quietResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	if a, ok := q.txt[name]; ok && qtype == dns.TypeTXT {
		return a, nil
	}
	return q.nx, nil
}
