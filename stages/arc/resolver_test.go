package arc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// mapResolver answers TXT questions from a map; every other name is
// NXDOMAIN.
type mapResolver map[string]string

func (r mapResolver) Lookup(_ context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	name = resolvercache.CanonicalName(name)
	a := &resolvercache.Answer{Name: name, Type: qtype, Received: time.Now(), TTL: 300}
	v, ok := r[name]
	switch {
	case !ok:
		a.Rcode = dns.RcodeNameError
	case qtype == dns.TypeTXT:
		a.TXT = []string{v}
	}
	return a, nil
}

// newSuiteResolver serves records (owner -> TXT value) to the code under
// test through the real DNS client and an in-process authoritative server
// (resolvercache/dnstest): values over 255 octets are split into
// character-strings, other names are NXDOMAIN. With strip, all white space
// is removed from the values (the signing suite folds p= over several
// lines; its README says to strip it).
func newSuiteResolver(t testing.TB, records map[string]string, strip bool) resolvercache.Resolver {
	t.Helper()
	srv, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	for k, v := range records {
		if strip {
			v = cleanTXT(v)
		}
		srv.AddRR(dnstest.TXT(k, v, 300))
	}
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(srv.Addr), resolvercache.WithTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newMapResolver is the in-memory equivalent of newSuiteResolver, for
// fuzzing and benchmarks where sockets would only add noise.
func newMapResolver(records map[string]string) resolvercache.Resolver {
	m := mapResolver{}
	for k, v := range records {
		m[resolvercache.CanonicalName(k)] = v
	}
	return m
}

func cleanTXT(v string) string {
	return strings.Join(strings.Fields(v), "")
}
