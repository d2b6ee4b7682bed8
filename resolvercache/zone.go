package resolvercache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Zone is a static Resolver that answers from RFC 1035 section 5 zone-file
// data held in memory, with no network. It is what `authpipe verify --zone
// FILE` runs against, and it gives offline tests the same Answer semantics
// as the Client:
//
//   - A name that owns no records and has no descendants is NXDOMAIN; an
//     owner without records of the asked type, or an empty non-terminal
//     (a name with descendants but no records), is NODATA (RFC 8020, RFC
//     4592 2.2.2).
//   - A wildcard "*.parent" answers names below parent that do not exist
//     (RFC 4592 3.3.1, closest encloser only).
//   - CNAMEs are followed (RFC 1034 3.6.2), at most MaxCNAMEHops (default
//     8); loops and longer chains are KindCNAMELoop errors.
//   - TTL is the minimum over the records and aliases used; for NXDOMAIN
//     and NODATA it is min(SOA TTL, SOA MINIMUM) of the closest enclosing
//     SOA in the data (RFC 2308 5), else the default negative TTL (30s).
//   - Received comes from the zone's clock; Authenticated is false.
//
// Only class IN is served. $INCLUDE is refused. A Zone is immutable after
// loading and safe for concurrent use.
type Zone struct {
	owners  map[string][]dns.RR // canonical raw owner → records
	exists  map[string]bool     // owners and all their ancestors
	soas    map[string]*dns.SOA // canonical raw apex → SOA
	clock   func() time.Time
	maxHops int
	negTTL  uint32
	metrics *Metrics
}

// ZoneOption configures a Zone.
type ZoneOption func(*Zone) error

// WithZoneClock sets the clock that stamps Answer.Received (default
// time.Now).
func WithZoneClock(now func() time.Time) ZoneOption {
	return func(z *Zone) error {
		if now == nil {
			return errors.New("WithZoneClock: nil clock")
		}
		z.clock = now
		return nil
	}
}

// WithZoneMaxCNAMEHops sets how many aliases a lookup may follow (default 8).
func WithZoneMaxCNAMEHops(n int) ZoneOption {
	return func(z *Zone) error {
		if n < 0 || n > maxCNAMEHopsLimit {
			return fmt.Errorf("WithZoneMaxCNAMEHops: %d is outside [0, %d]", n, maxCNAMEHopsLimit)
		}
		z.maxHops = n
		return nil
	}
}

// WithZoneNegativeTTL sets the TTL of negative answers for names with no
// enclosing SOA in the data (default 30s).
func WithZoneNegativeTTL(d time.Duration) ZoneOption {
	return func(z *Zone) error {
		if d < 0 {
			return fmt.Errorf("WithZoneNegativeTTL: %v is negative", d)
		}
		z.negTTL = uint32(min(d/time.Second, math.MaxInt32))
		return nil
	}
}

// WithZoneMetrics makes the zone count lookups and errors.
func WithZoneMetrics(m *Metrics) ZoneOption {
	return func(z *Zone) error { z.metrics = m; return nil }
}

// LoadZoneFile reads a zone file. Relative names need a $ORIGIN line in the
// file.
func LoadZoneFile(path string, opts ...ZoneOption) (*Zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("resolvercache: zone: %w", err)
	}
	defer f.Close()
	z, err := parseZone(f, "", path, opts)
	if err != nil {
		return nil, fmt.Errorf("resolvercache: zone %s: %w", path, err)
	}
	return z, nil
}

// ParseZone reads zone-file text; origin (may be "") completes relative
// names until a $ORIGIN line.
func ParseZone(r io.Reader, origin string, opts ...ZoneOption) (*Zone, error) {
	z, err := parseZone(r, origin, "", opts)
	if err != nil {
		return nil, fmt.Errorf("resolvercache: zone: %w", err)
	}
	return z, nil
}

func parseZone(r io.Reader, origin, file string, opts []ZoneOption) (*Zone, error) {
	z := &Zone{
		owners:  map[string][]dns.RR{},
		exists:  map[string]bool{},
		soas:    map[string]*dns.SOA{},
		clock:   time.Now,
		maxHops: DefaultMaxCNAMEHops,
		negTTL:  uint32(DefaultNegativeTTL / time.Second),
	}
	for _, o := range opts {
		if err := o(z); err != nil {
			return nil, err
		}
	}
	if origin != "" {
		origin = dns.Fqdn(origin)
	}
	zp := dns.NewZoneParser(r, origin, file)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if err := checkZoneNames(rr); err != nil {
			return nil, err
		}
		z.add(rr)
	}
	if err := zp.Err(); err != nil {
		return nil, err
	}
	return z, nil
}

// checkZoneNames refuses a record whose owner, or a name it points to that
// lookups report or follow (CNAME, MX, NS, PTR), has a '.' octet inside a
// label (written "\." or "\046"). Such a name has no raw dotted form
// (UnescapeName would turn "a\.b" into "a.b", a different name of two
// labels), so a Zone cannot answer it faithfully; the Client refuses such
// names in replies for the same reason (errDotInLabel).
func checkZoneNames(rr dns.RR) error {
	names := []string{rr.Header().Name}
	switch r := rr.(type) {
	case *dns.CNAME:
		names = append(names, r.Target)
	case *dns.MX:
		names = append(names, r.Mx)
	case *dns.NS:
		names = append(names, r.Ns)
	case *dns.PTR:
		names = append(names, r.Ptr)
	}
	for _, n := range names {
		if presentationDotInLabel(n) {
			return fmt.Errorf("%s: name %q has a '.' inside a label: %w", rr.Header().String(), n, errDotInLabel)
		}
	}
	return nil
}

// presentationDotInLabel reports whether the presentation-form name s has
// a '.' octet inside one of its labels.
func presentationDotInLabel(s string) bool {
	if !strings.ContainsRune(s, '\\') {
		return false
	}
	var buf [256]byte
	n, err := dns.PackDomainName(dns.Fqdn(s), buf[:], 0, nil, false)
	if err != nil {
		return false // not a name the parser accepted; nothing to check
	}
	for i := 0; i < n && buf[i] != 0; i += int(buf[i]) + 1 {
		if strings.IndexByte(string(buf[i+1:i+1+int(buf[i])]), '.') >= 0 {
			return true
		}
	}
	return false
}

func (z *Zone) add(rr dns.RR) {
	h := rr.Header()
	if h.Class != dns.ClassINET {
		return
	}
	owner := UnescapeName(h.Name)
	z.owners[owner] = append(z.owners[owner], rr)
	if soa, ok := rr.(*dns.SOA); ok {
		z.soas[owner] = soa
	}
	for n := owner; ; {
		z.exists[n] = true
		i := strings.IndexByte(n, '.')
		if i < 0 {
			break
		}
		n = n[i+1:]
	}
}

// Lookup implements Resolver.
func (z *Zone) Lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	ans, err := z.lookup(ctx, name, qtype)
	z.metrics.lookup("zone", err)
	if err != nil {
		return nil, err
	}
	return ans, nil
}

func (z *Zone) lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	canon := CanonicalName(name)
	fail := func(kind ErrorKind, err error) *Error {
		return &Error{Name: canon, Type: qtype, Kind: kind, Err: err}
	}
	if err := ValidateName(canon); err != nil {
		return nil, fail(KindBadName, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(KindCanceled, err)
	}
	a := &Answer{Name: canon, Type: qtype, Received: z.clock()}
	ttl := uint32(math.MaxUint32)
	seen := []string{canon}
	cur := canon
	for {
		rrs := z.records(cur)
		var recs []dns.RR
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype {
				recs = append(recs, rr)
				ttl = min(ttl, rr.Header().Ttl)
			} else if c, ok := rr.(*dns.CNAME); ok && cname == nil {
				cname = c
			}
		}
		if len(recs) > 0 {
			addRecords(a, recs)
			break
		}
		if cname != nil {
			target := UnescapeName(cname.Target)
			for _, s := range seen {
				if s == target {
					return nil, fail(KindCNAMELoop, fmt.Errorf("CNAME loop at %s", target))
				}
			}
			if len(a.CNAMEs) >= z.maxHops {
				return nil, fail(KindCNAMELoop, fmt.Errorf("CNAME chain longer than %d", z.maxHops))
			}
			seen = append(seen, target)
			a.CNAMEs = append(a.CNAMEs, target)
			ttl = min(ttl, cname.Hdr.Ttl)
			cur = target
			continue
		}
		if len(rrs) == 0 && !z.exists[cur] {
			a.Rcode = dns.RcodeNameError
		}
		ttl = min(ttl, z.negativeTTL(cur))
		break
	}
	a.TTL = ttl
	return a, nil
}

// records returns the records owned by name, or those of the wildcard at its
// closest encloser if name does not exist (RFC 4592 3.3.1).
func (z *Zone) records(name string) []dns.RR {
	if rrs, ok := z.owners[name]; ok || z.exists[name] {
		return rrs
	}
	for n := name; ; {
		i := strings.IndexByte(n, '.')
		if i < 0 {
			return nil
		}
		n = n[i+1:]
		if z.exists[n] {
			return z.owners["*."+n]
		}
	}
}

// negativeTTL returns min(SOA TTL, SOA MINIMUM) of the closest SOA at or
// above name, or the default.
func (z *Zone) negativeTTL(name string) uint32 {
	for n := name; ; {
		if soa, ok := z.soas[n]; ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
		i := strings.IndexByte(n, '.')
		if i < 0 {
			return z.negTTL
		}
		n = n[i+1:]
	}
}

var _ Resolver = (*Zone)(nil)
