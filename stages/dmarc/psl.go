package dmarc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// PublicSuffixList answers the public suffix of a domain, for the RFC 7489
// Organizational Domain (RFC 7489 section 3.2). golang.org/x/net/publicsuffix.List
// (the compiled-in list, the default) and *SuffixList (parsed from a
// public_suffix_list.dat file) implement it. Domains are given in A-label
// (ASCII) form, lower case, without a trailing dot.
type PublicSuffixList interface {
	PublicSuffix(domain string) string
}

// DefaultPSL returns the list ModeRFC7489 uses when Evaluator.PSL is nil:
// golang.org/x/net/publicsuffix's compiled-in list.
func DefaultPSL() PublicSuffixList { return publicsuffix.List }

// RegistrableDomain returns the domain one label below the public suffix of
// domain (the PSL "registrable domain"), in the form given (U-labels in, U-
// labels out), lower-cased. It fails for an empty name, an empty label or a
// name that is itself a public suffix.
func RegistrableDomain(list PublicSuffixList, domain string) (string, error) {
	if domain == "" {
		return "", errors.New("dmarc: empty domain")
	}
	labels := strings.Split(strings.ToLower(domain), ".")
	for _, l := range labels {
		if l == "" {
			return "", fmt.Errorf("dmarc: domain %q has an empty label", domain)
		}
	}
	ascii := labels
	if !isASCII(domain) {
		ascii = make([]string, len(labels))
		for i, l := range labels {
			a, err := idna.Lookup.ToASCII(l)
			if err != nil {
				return "", fmt.Errorf("dmarc: domain %q: %w", domain, err)
			}
			ascii[i] = a
		}
	}
	suffix := list.PublicSuffix(strings.Join(ascii, "."))
	n := strings.Count(suffix, ".") + 1
	if n >= len(labels) {
		return "", fmt.Errorf("dmarc: %q is a public suffix", domain)
	}
	return strings.Join(labels[len(labels)-n-1:], "."), nil
}

// OrgDomainPSL is the RFC 7489 section 3.2 Organizational Domain: the
// registrable domain, or the domain itself when it is a public suffix (as
// mox and OpenDMARC do) or cannot be looked up.
func OrgDomainPSL(list PublicSuffixList, domain string) string {
	if org, err := RegistrableDomain(list, domain); err == nil {
		return org
	}
	return domain
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// SuffixList is a public suffix list parsed from the publicsuffix.org .dat
// format (ICANN and PRIVATE sections, wildcard "*." and exception "!"
// rules, U-label rules converted to A-labels with IDNA). Use it to pin the
// list version (tests, reproducible runs) instead of the compiled-in one.
type SuffixList struct {
	rules      map[string]bool // exact rules, A-label form
	wildcards  map[string]bool // "*.x" stored as "x"
	exceptions map[string]bool // "!x" stored as "x"
}

// MaxPSLRules bounds the rules ParsePSL accepts (the real list has ~10k).
const MaxPSLRules = 1 << 20

// ParsePSL reads a public_suffix_list.dat. Each rule is the first
// whitespace-delimited word of a non-comment line.
func ParsePSL(r io.Reader) (*SuffixList, error) {
	l := &SuffixList{rules: map[string]bool{}, wildcards: map[string]bool{}, exceptions: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	n := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "//") {
			continue
		}
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			line = line[:i]
		}
		n++
		if n > MaxPSLRules {
			return nil, fmt.Errorf("dmarc: public suffix list over %d rules", MaxPSLRules)
		}
		target := l.rules
		switch {
		case strings.HasPrefix(line, "!"):
			target, line = l.exceptions, line[1:]
		case strings.HasPrefix(line, "*."):
			target, line = l.wildcards, line[2:]
		}
		a, err := idna.Lookup.ToASCII(line)
		if err != nil {
			// Some rules do not pass the lookup profile; fall back to a
			// plain punycode conversion.
			if a, err = idna.Punycode.ToASCII(line); err != nil {
				return nil, fmt.Errorf("dmarc: public suffix rule %q: %w", line, err)
			}
		}
		target[strings.ToLower(a)] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dmarc: reading public suffix list: %w", err)
	}
	return l, nil
}

// PublicSuffix implements PublicSuffixList with the publicsuffix.org
// algorithm: an exception rule wins, else the longest matching rule, else
// the default rule "*" (the last label).
func (l *SuffixList) PublicSuffix(domain string) string {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	rest := domain
	for {
		if l.exceptions[rest] {
			if i := strings.IndexByte(rest, '.'); i >= 0 {
				return rest[i+1:]
			}
			return rest
		}
		if l.rules[rest] {
			return rest
		}
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			return rest // default rule "*"
		}
		if l.wildcards[rest[i+1:]] {
			return rest
		}
		rest = rest[i+1:]
	}
}
