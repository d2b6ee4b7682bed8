package reportgen

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// Destination is one reporting URI, discovered at send time.
type Destination struct {
	// URI is "mailto:addr" or "https://…" without any size suffix.
	URI string
	// Address is the mail address of a mailto: URI.
	Address string
	// MaxSize is the RFC 7489 "!size" limit in octets (0: none).
	MaxSize int64
}

// Scheme returns "mailto" or "https".
func (d Destination) Scheme() string {
	s, _, _ := strings.Cut(d.URI, ":")
	return strings.ToLower(s)
}

// MaxDestinations bounds the URIs used from one record (RFC 9990: "up to
// the Receiver's limits on supported URIs").
const MaxDestinations = 8

// ErrNoPolicyRecord means the domain publishes no usable record: there is
// nowhere to send the report.
var ErrNoPolicyRecord = errors.New("reportgen: no reporting record")

func sizeUnit(u string) int64 {
	switch u {
	case "k":
		return 1 << 10
	case "m":
		return 1 << 20
	case "g":
		return 1 << 30
	case "t":
		return 1 << 40
	}
	return 1
}

func mailtoAddress(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || !strings.EqualFold(u.Scheme, "mailto") {
		return "", fmt.Errorf("bad mailto URI %q", uri)
	}
	addr := u.Opaque
	if addr == "" {
		addr = u.Path
	}
	addr, err = url.PathUnescape(addr)
	if err != nil || strings.Count(addr, "@") != 1 || strings.HasPrefix(addr, "@") || strings.HasSuffix(addr, "@") || strings.ContainsAny(addr, " <>,\r\n") {
		return "", fmt.Errorf("bad mailto address in %q", uri)
	}
	return addr, nil
}

// DiscoverDMARC looks up the DMARC record of policyDomain (the domain the
// record was found at) and returns its rua mailto: destinations, in order
// (RFC 9990 "Report Delivery"; other schemes and malformed URIs are
// skipped). One DNS query.
func DiscoverDMARC(ctx context.Context, r resolvercache.Resolver, policyDomain string, mode dmarc.Mode) ([]Destination, error) {
	name := "_dmarc." + policyDomain
	ans, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, fmt.Errorf("reportgen: rua lookup %s: %w", name, err)
	}
	var recs []*dmarc.Record
	for _, txt := range ans.TXT {
		rec, err := dmarc.ParseRecord(txt, mode)
		if errors.Is(err, dmarc.ErrNotDMARC) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNoPolicyRecord, name, err)
		}
		recs = append(recs, rec)
	}
	if len(recs) != 1 {
		return nil, fmt.Errorf("%w: %d DMARC records at %s", ErrNoPolicyRecord, len(recs), name)
	}
	var out []Destination
	for _, u := range recs[0].RUA {
		if u.Scheme() != "mailto" || len(out) == MaxDestinations {
			continue
		}
		addr, err := mailtoAddress(u.Address)
		if err != nil {
			continue
		}
		out = append(out, Destination{URI: u.Address, Address: addr, MaxSize: int64(u.MaxSize) * sizeUnit(u.Unit)})
	}
	return out, nil
}

// ParseTLSRPTRecord parses an SMTP TLS Reporting record (RFC 8460 3):
// "v=TLSRPTv1; rua=URI[,URI]" with mailto: and https: URIs. Unknown tags
// are ignored; a record without a usable rua is an error.
func ParseTLSRPTRecord(txt string) ([]Destination, error) {
	if len(txt) > 4096 {
		return nil, errors.New("reportgen: tlsrpt record too long")
	}
	parts := strings.Split(txt, ";")
	if strings.TrimSpace(parts[0]) != "v=TLSRPTv1" {
		return nil, fmt.Errorf("reportgen: not a TLSRPT record: %q", txt)
	}
	var out []Destination
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || strings.TrimSpace(k) != "rua" {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			if len(out) == MaxDestinations {
				break
			}
			switch {
			case len(u) > 7 && strings.EqualFold(u[:7], "mailto:"):
				if addr, err := mailtoAddress(u); err == nil {
					out = append(out, Destination{URI: u, Address: addr})
				}
			case len(u) > 8 && strings.EqualFold(u[:8], "https://"):
				if pu, err := url.Parse(u); err == nil && pu.Host != "" {
					out = append(out, Destination{URI: u})
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reportgen: TLSRPT record without a usable rua: %q", txt)
	}
	return out, nil
}

// DiscoverTLSRPT looks up _smtp._tls.<domain> (RFC 8460 3). Exactly one
// record starting with v=TLSRPTv1 must exist. One DNS query.
func DiscoverTLSRPT(ctx context.Context, r resolvercache.Resolver, domain string) ([]Destination, error) {
	name := "_smtp._tls." + domain
	ans, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, fmt.Errorf("reportgen: tlsrpt lookup %s: %w", name, err)
	}
	var recs []string
	for _, txt := range ans.TXT {
		if strings.HasPrefix(txt, "v=TLSRPTv1") {
			recs = append(recs, txt)
		}
	}
	if len(recs) != 1 {
		return nil, fmt.Errorf("%w: %d TLSRPT records at %s", ErrNoPolicyRecord, len(recs), name)
	}
	d, err := ParseTLSRPTRecord(recs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoPolicyRecord, err)
	}
	return d, nil
}

// needsExternalCheck reports whether a mailto destination lies outside the
// policy domain's organisation (RFC 9990 "Verifying External
// Destinations"): different registrable domains.
func needsExternalCheck(policyDomain, addr string) (string, bool) {
	dest := strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
	po, err1 := dmarc.RegistrableDomain(dmarc.DefaultPSL(), policyDomain)
	do, err2 := dmarc.RegistrableDomain(dmarc.DefaultPSL(), dest)
	if err1 != nil || err2 != nil {
		return dest, dest != policyDomain && !strings.HasSuffix(dest, "."+policyDomain)
	}
	return dest, po != do
}
