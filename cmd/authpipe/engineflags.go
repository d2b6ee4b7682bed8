package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/pflag"

	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// engineFlags are the verification settings `run` and `verify` share: the
// authserv-id, the DMARC rules (RFC 9989, or RFC 7489 as a mode) and the
// receiver's local policy overrides (dmarc.Overrides: trusted ARC sealers,
// allow and deny lists, senders that must align both ways).
type engineFlags struct {
	authservID         string
	dmarcMode          string
	trustedARCSealers  []string
	allowDomains       []string
	allowIPs           []string
	denyDomains        []string
	denyIPs            []string
	requireBothAligned []string
}

func (e *engineFlags) register(f *pflag.FlagSet) {
	f.StringVar(&e.authservID, "authserv-id", "authpipe", "authserv-id for the Authentication-Results header (RFC 8601)")
	f.StringVar(&e.dmarcMode, "dmarc-mode", string(dmarc.ModeRFC9989), "DMARC rules: rfc9989 (tree walk, np, psd) or rfc7489 (public suffix list, pct)")
	f.StringSliceVar(&e.trustedARCSealers, "trusted-arc-sealer", nil, "ARC sealer `domain` whose recorded results are trusted: a DMARC fail whose validated ARC chain, sealed by it, records a pass for the author domain gets disposition none, reason trusted_forwarder (repeatable)")
	f.StringSliceVar(&e.allowDomains, "dmarc-allow-domain", nil, "author `domain` whose failing mail gets disposition none, reason local_policy (repeatable)")
	f.StringSliceVar(&e.allowIPs, "dmarc-allow-ip", nil, "client `address` or prefix whose failing mail gets disposition none, reason local_policy (repeatable)")
	f.StringSliceVar(&e.denyDomains, "dmarc-deny-domain", nil, "author `domain` whose mail gets disposition reject, reason local_policy, whatever DMARC says; wins over every other override (repeatable)")
	f.StringSliceVar(&e.denyIPs, "dmarc-deny-ip", nil, "client `address` or prefix whose mail gets disposition reject, reason local_policy, whatever DMARC says (repeatable)")
	f.StringSliceVar(&e.requireBothAligned, "dmarc-require-both-aligned", nil, "author `domain` (on shared infrastructure, where any tenant passes SPF) whose DMARC pass needs both an aligned SPF pass and an aligned DKIM pass (repeatable)")
}

// options returns the engine options the flags say; a bad value is a usage
// error.
func (e *engineFlags) options() ([]stages.Option, error) {
	mode := dmarc.Mode(e.dmarcMode)
	if mode != dmarc.ModeRFC9989 && mode != dmarc.ModeRFC7489 {
		return nil, usagef("--dmarc-mode: want rfc9989 or rfc7489, got %q", e.dmarcMode)
	}
	var o dmarc.Overrides
	var err error
	for _, l := range []struct {
		flag string
		in   []string
		out  *[]string
	}{
		{"trusted-arc-sealer", e.trustedARCSealers, &o.TrustedARCSealers},
		{"dmarc-allow-domain", e.allowDomains, &o.AllowDomains},
		{"dmarc-deny-domain", e.denyDomains, &o.DenyDomains},
		{"dmarc-require-both-aligned", e.requireBothAligned, &o.RequireBothAligned},
	} {
		if *l.out, err = domainList(l.flag, l.in); err != nil {
			return nil, err
		}
	}
	if o.AllowIPs, err = prefixList("dmarc-allow-ip", e.allowIPs); err != nil {
		return nil, err
	}
	if o.DenyIPs, err = prefixList("dmarc-deny-ip", e.denyIPs); err != nil {
		return nil, err
	}
	return []stages.Option{stages.WithAuthServID(e.authservID), stages.WithDMARC(mode, o, nil)}, nil
}

// domainList normalises the domains of a list flag: lower case, no final
// dot, not empty.
func domainList(flag string, in []string) ([]string, error) {
	var out []string
	for _, d := range in {
		d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
		if d == "" || strings.ContainsAny(d, " @/") {
			return nil, usagef("--%s: %q is not a domain", flag, d)
		}
		out = append(out, d)
	}
	return out, nil
}

// prefixList reads the addresses and prefixes of a list flag; an address
// is its own prefix (/32, /128). Addresses are read as client IPs are
// (stages.ParseClientIP), so an IPv4-mapped one is the IPv4 address.
func prefixList(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		s = strings.TrimSpace(s)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, usagef("--%s: %v", flag, err)
			}
			if p.Addr().Is4In6() && p.Bits() < 96 {
				// dmarc compares an IPv4-mapped prefix as the IPv4 one it
				// maps; a shorter one maps nothing.
				return nil, usagef("--%s: %s: an IPv4-mapped prefix needs at least /96", flag, s)
			}
			out = append(out, p.Masked())
			continue
		}
		ip, err := stages.ParseClientIP(s)
		if err != nil {
			return nil, usagef("--%s: %v", flag, err)
		}
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out, nil
}

// describe is the overrides in a few words for run's start log line.
func (e *engineFlags) describe() string {
	var parts []string
	for _, l := range []struct {
		name string
		vals []string
	}{{"trusted ARC sealers", e.trustedARCSealers}, {"allowed domains", e.allowDomains}, {"allowed IPs", e.allowIPs},
		{"denied domains", e.denyDomains}, {"denied IPs", e.denyIPs}, {"both aligned", e.requireBothAligned}} {
		if len(l.vals) > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", l.name, len(l.vals)))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
