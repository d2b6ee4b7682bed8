package spf

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// zoneRR is one test record, in a form both test backends (the in-memory
// mapResolver and the dnstest server) are fed from.
type zoneRR struct {
	typ  string   // A AAAA MX PTR CNAME TXT SPF TIMEOUT
	strs []string // TXT/SPF character-strings; the single value otherwise
	pref uint16   // MX
}

// zone maps raw owner names (canonical: lower case, no trailing dot) to
// their records in order.
type zone map[string][]zoneRR

func (z zone) add(owner string, rrs ...zoneRR) {
	owner = resolvercache.CanonicalName(owner)
	z[owner] = append(z[owner], rrs...)
}

// Record builders for hand-written unit-test zones.
func rrTXT(s ...string) zoneRR       { return zoneRR{typ: "TXT", strs: s} }
func rrA(ip string) zoneRR           { return zoneRR{typ: "A", strs: []string{ip}} }
func rrAAAA(ip string) zoneRR        { return zoneRR{typ: "AAAA", strs: []string{ip}} }
func rrPTR(n string) zoneRR          { return zoneRR{typ: "PTR", strs: []string{n}} }
func rrCNAME(n string) zoneRR        { return zoneRR{typ: "CNAME", strs: []string{n}} }
func rrMX(p uint16, h string) zoneRR { return zoneRR{typ: "MX", strs: []string{h}, pref: p} }
func rrTimeout() zoneRR              { return zoneRR{typ: "TIMEOUT"} }

var typeCodes = map[string]uint16{
	"A": dns.TypeA, "AAAA": dns.TypeAAAA, "MX": dns.TypeMX, "PTR": dns.TypePTR,
	"CNAME": dns.TypeCNAME, "TXT": dns.TypeTXT, "SPF": dns.TypeSPF,
}

// mapResolver answers from a zone in memory with the semantics of the
// dnstest server: TIMEOUT markers, CNAME chasing, NXDOMAIN versus NODATA
// (empty non-terminals exist).
type mapResolver struct {
	z       zone
	queries atomic.Int64
}

func (m *mapResolver) Lookup(ctx context.Context, name string, qtype uint16) (*resolvercache.Answer, error) {
	m.queries.Add(1)
	q := resolvercache.CanonicalName(name)
	if err := resolvercache.ValidateName(q); err != nil {
		return nil, &resolvercache.Error{Name: q, Type: qtype, Kind: resolvercache.KindBadName, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, &resolvercache.Error{Name: q, Type: qtype, Kind: resolvercache.KindCanceled, Err: err}
	}
	ans := &resolvercache.Answer{Name: q, Type: qtype, Received: time.Unix(0, 0), TTL: 300}
	cur := q
	for hop := 0; ; hop++ {
		if hop > 8 {
			return nil, &resolvercache.Error{Name: q, Type: qtype, Kind: resolvercache.KindCNAMELoop}
		}
		items, exists := m.z[cur]
		var found []zoneRR
		cname := ""
		for _, it := range items {
			if it.typ == "TIMEOUT" {
				if len(found) == 0 && cname == "" {
					return nil, &resolvercache.Error{Name: q, Type: qtype, Kind: resolvercache.KindTimeout}
				}
				break
			}
			if typeCodes[it.typ] == qtype {
				found = append(found, it)
			} else if it.typ == "CNAME" {
				cname = resolvercache.CanonicalName(it.strs[0])
			}
		}
		if len(found) == 0 && cname != "" {
			ans.CNAMEs = append(ans.CNAMEs, cname)
			cur = cname
			continue
		}
		for _, it := range found {
			switch it.typ {
			case "TXT", "SPF":
				ans.TXT = append(ans.TXT, strings.Join(it.strs, ""))
			case "A", "AAAA":
				ans.IPs = append(ans.IPs, netip.MustParseAddr(it.strs[0]))
			case "MX":
				ans.MX = append(ans.MX, resolvercache.MX{Preference: it.pref, Host: resolvercache.CanonicalName(it.strs[0])})
			case "PTR", "CNAME":
				ans.Names = append(ans.Names, resolvercache.CanonicalName(it.strs[0]))
			}
		}
		if len(found) == 0 && !exists && !m.hasDescendant(cur) {
			ans.Rcode = dns.RcodeNameError
		}
		return ans, nil
	}
}

func (m *mapResolver) hasDescendant(name string) bool {
	suffix := "." + name
	for owner := range m.z {
		if strings.HasSuffix(owner, suffix) {
			return true
		}
	}
	return false
}

// loadDNSTest adds a zone to a dnstest server, record by record.
func loadDNSTest(srv *dnstest.Server, z zone) error {
	const ttl = 300
	for owner, rrs := range z {
		for _, rr := range rrs {
			switch rr.typ {
			case "TIMEOUT":
				srv.AddTimeout(owner)
			case "TXT":
				srv.AddRR(dnstest.TXTStrings(owner, ttl, rr.strs...))
			case "SPF":
				parts := make([]string, len(rr.strs))
				for i, p := range rr.strs {
					parts[i] = resolvercache.EscapeTXT(p)
				}
				srv.AddRR(&dns.SPF{Hdr: dnstest.Header(owner, dns.TypeSPF, ttl), Txt: parts})
			case "A":
				ip, err := netip.ParseAddr(rr.strs[0])
				if err != nil || !ip.Is4() {
					return fmt.Errorf("A %s: bad address %q", owner, rr.strs[0])
				}
				srv.AddRR(&dns.A{Hdr: dnstest.Header(owner, dns.TypeA, ttl), A: ip.AsSlice()})
			case "AAAA":
				ip, err := netip.ParseAddr(rr.strs[0])
				if err != nil {
					return fmt.Errorf("AAAA %s: bad address %q", owner, rr.strs[0])
				}
				a16 := ip.As16()
				srv.AddRR(&dns.AAAA{Hdr: dnstest.Header(owner, dns.TypeAAAA, ttl), AAAA: a16[:]})
			case "MX":
				srv.AddRR(&dns.MX{Hdr: dnstest.Header(owner, dns.TypeMX, ttl), Preference: rr.pref, Mx: dnstest.Name(rr.strs[0])})
			case "PTR":
				srv.AddRR(&dns.PTR{Hdr: dnstest.Header(owner, dns.TypePTR, ttl), Ptr: dnstest.Name(rr.strs[0])})
			case "CNAME":
				srv.AddRR(&dns.CNAME{Hdr: dnstest.Header(owner, dns.TypeCNAME, ttl), Target: dnstest.Name(rr.strs[0])})
			default:
				return fmt.Errorf("%s: unsupported type %s", owner, rr.typ)
			}
		}
	}
	return nil
}
