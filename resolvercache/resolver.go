// Package resolvercache is authpipe's DNS layer: a miekg/dns client that
// reports what mail-authentication checks need (RCODE, NXDOMAIN versus NODATA,
// TTLs, the AD bit), a byte-bounded cache in front of it with negative caching
// per RFC 2308, a static backend that answers from RFC 1035 zone files, and
// Prometheus collectors for all of it.
//
// Every backend implements [Resolver]. Checks (SPF, DKIM, DMARC) are written
// against that one-method interface, so the same code runs against a live
// upstream, the cache, or a zone file with no network at all.
//
// The parts:
//
//   - [Client] (client.go, parse.go, wire.go) is a stub resolver asking recursive
//     upstreams (from /etc/resolv.conf or [WithUpstreams]). Queries carry RD,
//     AD (RFC 6840 5.7) and an EDNS0 OPT record advertising [UDPSize] octets
//     (RFC 6891 6.2.5); a truncated UDP reply (TC, RFC 1035 4.1.1) is asked
//     again over TCP with a two-octet length prefix (RFC 1035 4.2.2, RFC 7766
//     5, 8). Replies must match the query's ID, question and QR bit; RCODEs
//     other than NOERROR and NXDOMAIN are errors. CNAME chains are followed
//     (RFC 1034 3.6.2, 4.3.2), asking the target again when the server did
//     not, bounded by [WithMaxCNAMEHops]. TTLs are the minimum over the
//     records used; NXDOMAIN and NODATA get min(SOA TTL, SOA MINIMUM) from
//     the authority section (RFC 2308 3, 5). Bounds: per-query timeout,
//     retries, hops, UDPSize-octet UDP replies, 65535-octet TCP replies.
//     Alias targets are asked again exactly as they stand on the wire; a
//     reply that would hand the caller a name with a '.' octet inside a
//     label (an alias followed, an MX host, a PTR or other name-valued
//     target) is KindMalformed, since the raw form cannot tell that name
//     from one of more labels.
//   - [Cache] (cache.go) sits in front of any Resolver: ristretto with a
//     byte budget, TTLs clamped per kind of answer, negative caching (RFC
//     2308 5), short caching of failures (RFC 2308 7), and one upstream
//     lookup for identical concurrent misses. In front of a Client it can
//     also ask without waiting (Prefetch, cached.go): the query goes out
//     on the caller's goroutine and the socket's reader caches the reply.
//   - [Zone] (zone.go) answers from zone-file data (RFC 1035 5) with the
//     same Answer semantics, including empty non-terminals (RFC 8020) and
//     wildcards (RFC 4592), for offline verification.
//   - [Metrics] (metrics.go) are the Prometheus collectors, registered on a
//     caller-supplied registry.
//   - escape.go converts between raw names and TXT octets (what the checks
//     see) and miekg/dns presentation form (RFC 1035 5.1 escapes).
//   - Package dnstest is an in-process authoritative server for tests.
//
// Names given to Lookup are raw octets, dot-separated, in any case (RFC 4343:
// ASCII case-insensitive), with or without the trailing dot; they are checked
// against the RFC 1035 2.3.4 size limits before anything is sent.
//
// This package imports nothing else from authpipe.
package resolvercache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Resolver answers one DNS question. Implementations are safe for concurrent
// use.
//
// A name that does not exist (NXDOMAIN) or has no records of the asked type
// (NODATA) is not an error: the Answer says so through Rcode and empty record
// slices. An error means no usable answer could be had; it is an *Error whose
// Temporary method tells SERVFAIL, timeouts and network failures (worth
// retrying later) from permanent problems such as a malformed name.
//
// The returned Answer may be shared with other callers (it can come from a
// cache) and must not be modified.
type Resolver interface {
	Lookup(ctx context.Context, name string, qtype uint16) (*Answer, error)
}

// MX is one mail exchanger from an MX answer.
type MX struct {
	Preference uint16
	Host       string // lower case, no trailing dot; "" for the null MX "."
}

// Answer is the outcome of one question, reduced to what the checks use.
type Answer struct {
	// Name is the question name, lower case, without the trailing dot.
	Name string
	// Type is the question type (dns.TypeTXT and so on).
	Type uint16
	// Rcode is the response code of the final response in the CNAME chain:
	// dns.RcodeSuccess (records or NODATA) or dns.RcodeNameError (NXDOMAIN).
	// Other codes are reported as errors, not answers.
	Rcode int
	// CNAMEs lists the aliases followed from Name to the owner of the
	// records, in order, lower case, without trailing dots.
	CNAMEs []string
	// TXT holds one string per TXT record, its character-strings joined with
	// nothing between them (RFC 7208 3.3, RFC 6376 3.6.2.2). Bytes are kept
	// as received, including non-ASCII ones.
	TXT []string
	// IPs holds A or AAAA addresses.
	IPs []netip.Addr
	// MX holds MX records in the order received.
	MX []MX
	// Names holds PTR targets (or other name-valued records), lower case,
	// without trailing dots.
	Names []string
	// TTL is the time to live in seconds as received: the minimum over the
	// answer's records, or for NXDOMAIN and NODATA the negative TTL of
	// RFC 2308 section 5 (min of the SOA TTL and SOA MINIMUM). A cache may
	// clamp it.
	TTL uint32
	// Received is when the answer was obtained from upstream (or built by a
	// static backend). Remaining lifetime is TTL minus the time since
	// Received; see Remaining.
	Received time.Time
	// Authenticated reports the AD bit of the response.
	Authenticated bool
}

// NXDomain reports whether the name does not exist.
func (a *Answer) NXDomain() bool { return a.Rcode == dns.RcodeNameError }

// Empty reports whether the answer has no records of the asked type, which
// is the case for NXDOMAIN and NODATA alike (RFC 7208 4.6.4 calls both a
// "void lookup").
func (a *Answer) Empty() bool {
	return len(a.TXT) == 0 && len(a.IPs) == 0 && len(a.MX) == 0 && len(a.Names) == 0
}

// Remaining returns how long the answer stays valid as of now, never negative.
func (a *Answer) Remaining(now time.Time) time.Duration {
	left := time.Duration(a.TTL)*time.Second - now.Sub(a.Received)
	if left < 0 {
		return 0
	}
	return left
}

// ErrorKind classifies why a lookup produced no answer.
type ErrorKind int

const (
	// KindTimeout: no response within the per-query timeout from any upstream.
	KindTimeout ErrorKind = iota + 1
	// KindServFail: an upstream answered SERVFAIL (or another RCODE that is
	// neither NOERROR nor NXDOMAIN, such as REFUSED).
	KindServFail
	// KindNetwork: the query could not be sent or the reply not read.
	KindNetwork
	// KindMalformed: the reply could not be parsed, did not match the
	// question (ID, name, type), or was larger than allowed.
	KindMalformed
	// KindCNAMELoop: the CNAME chain loops or is longer than allowed.
	KindCNAMELoop
	// KindBadName: the question name is not a valid domain name (empty
	// label, label over 63 octets, name over 253 octets).
	KindBadName
	// KindCanceled: the caller's context ended first.
	KindCanceled
)

var kindNames = map[ErrorKind]string{
	KindTimeout:   "timeout",
	KindServFail:  "servfail",
	KindNetwork:   "network",
	KindMalformed: "malformed",
	KindCNAMELoop: "cname-loop",
	KindBadName:   "bad-name",
	KindCanceled:  "canceled",
}

// String returns a short label for the kind, used in metrics and logs.
func (k ErrorKind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind%d", int(k))
}

// Error is the error type returned by every Resolver in this package.
type Error struct {
	Name  string
	Type  uint16
	Kind  ErrorKind
	Rcode int   // set for KindServFail
	Err   error // underlying cause, may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dns: %s %s: %s", e.Name, dns.TypeToString[e.Type], e.Kind)
	if e.Kind == KindServFail {
		fmt.Fprintf(&b, " (%s)", dns.RcodeToString[e.Rcode])
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether asking again later may succeed. Malformed
// replies count as temporary: a resolver that sends garbage today may be
// fixed tomorrow, and RFC 7208 2.6.6 treats any failed query as temperror.
// Bad names and CNAME loops are permanent.
func (e *Error) Temporary() bool {
	switch e.Kind {
	case KindBadName, KindCNAMELoop:
		return false
	}
	return true
}

// Timeout reports whether the error is a timeout.
func (e *Error) Timeout() bool { return e.Kind == KindTimeout }

// IsTemporary reports whether err is (or wraps) a temporary *Error, or a
// context error.
func IsTemporary(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Temporary()
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// CanonicalName lower-cases the ASCII letters of name and strips one
// trailing dot. Other octets are kept as they are: DNS compares names
// case-insensitively for ASCII only (RFC 4343 3), and raw names may hold any
// octet, including invalid UTF-8. It does not validate; see ValidateName.
func CanonicalName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}

// ValidateName checks the RFC 1035 2.3.4 size limits on a name given in
// presentation form without the trailing dot: no empty label, labels of at
// most 63 octets, at most 253 octets in all. Any octet is allowed inside a
// label (TXT-bearing names such as "_spf" and "foo:bar" are legal DNS).
func ValidateName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return fmt.Errorf("name is %d octets, over 253", len(name))
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			switch n := i - start; {
			case n == 0:
				return errors.New("empty label")
			case n > 63:
				return fmt.Errorf("label of %d octets, over 63", n)
			}
			start = i + 1
		}
	}
	return nil
}
