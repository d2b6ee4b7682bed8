package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/net/publicsuffix"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// defaultReportOrg is --org's default.
const defaultReportOrg = "authpipe"

// reportIdentityFlags say who writes the reports. `report show` uses them
// alone; deliveryFlags (`run` and `report send`) include them.
type reportIdentityFlags struct {
	org      string
	email    string
	receiver string
	rfc7489  bool
}

func (r *reportIdentityFlags) register(f *pflag.FlagSet) {
	f.StringVar(&r.org, "org", defaultReportOrg, "reporting organisation `name` (DMARC org_name, TLSRPT organization-name)")
	f.StringVar(&r.email, "email", "", "reporting contact `address` (DMARC email, TLSRPT contact-info; default --from)")
	f.StringVar(&r.receiver, "receiver", "", "reporting `domain`: part of report file names, Submitter and TLS-Report-Submitter")
	f.BoolVar(&r.rfc7489, "rfc7489", false, "write DMARC reports as RFC 7489 Appendix C XML and read rua with RFC 7489 syntax (honouring !size); verification is unaffected")
}

func (r *reportIdentityFlags) dmarcConfig() reportgen.ReportConfig {
	cfg := reportgen.ReportConfig{OrgName: r.org, Email: r.email, Receiver: r.receiver, Generator: "authpipe", Format: reportgen.FormatRFC9990}
	if r.rfc7489 {
		cfg.Format = reportgen.FormatRFC7489
	}
	return cfg
}

func (r *reportIdentityFlags) tlsConfig() reportgen.TLSReportConfig {
	return reportgen.TLSReportConfig{OrganizationName: r.org, ContactInfo: r.email, Sender: r.receiver}
}

// deliveryFlags are the report identity and delivery options, one set
// registered on both `authpipe run` (report role) and `authpipe report send`.
type deliveryFlags struct {
	reportIdentityFlags
	from         string
	helo         string
	smarthost    string
	smtpPort     int
	dkimKeys     []string
	dkimSelector string
	dkimDomain   string
	allow        []string
	caFile       string
	maxSize      int64
	destMaxSize  []string
	suppress     []string
	requireTLS   bool
}

func (d *deliveryFlags) register(f *pflag.FlagSet) {
	d.reportIdentityFlags.register(f)
	f.StringVar(&d.from, "from", "", "From and MAIL FROM `address` of report mail; with --receiver it turns report delivery on")
	f.StringVar(&d.helo, "helo", "", "EHLO `name` of the report mail client (default localhost)")
	f.StringVar(&d.smarthost, "smarthost", "", "relay all report mail through this `host:port` instead of the destination MX")
	f.IntVar(&d.smtpPort, "smtp-port", 25, "`port` of destination MX hosts for report mail (not used with --smarthost)")
	f.StringSliceVar(&d.dkimKeys, "dkim-key", nil, "DKIM-sign report mail with the PEM private key (RSA or Ed25519) in `[SELECTOR=]FILE` "+
		"(selector default --dkim-selector); repeat it, e.g. for one RSA and one Ed25519 key: one signature per key")
	f.StringVar(&d.dkimSelector, "dkim-selector", "reports", "DKIM `selector` of a --dkim-key given without SELECTOR=")
	f.StringVar(&d.dkimDomain, "dkim-domain", "", "DKIM signing `domain` (d=); must be aligned with the --from domain (default: the --from domain)")
	f.StringSliceVar(&d.allow, "allow", nil, "let report delivery reach this otherwise refused address `prefix` (loopback, private; e.g. 127.0.0.1/32)")
	f.StringVar(&d.caFile, "report-ca", "", "PEM `file` of CAs trusted, besides the system roots, for STARTTLS and HTTPS report delivery")
	f.Int64Var(&d.maxSize, "max-size", 10<<20, "cap on one DMARC report mail in `octets`; larger reports are split into parts")
	f.StringSliceVar(&d.destMaxSize, "dest-max-size", nil, "cap report mail to one destination: `DEST=SIZE`, DEST a rua URI (mailto:a@b.example) or a mail domain, SIZE in octets or with k, m, g (repeatable)")
	f.StringSliceVar(&d.suppress, "suppress", nil, "never deliver to this rua `URI` (mailto:… or https://…; repeatable); destinations also enter the store's list after 3 permanent failures")
	f.BoolVar(&d.requireTLS, "require-tls", false, "send DMARC report mail only over STARTTLS (TLS reports always fall back to plaintext, RFC 8460)")
}

// enabled reports whether report delivery is configured: --receiver and
// --from together. One without the other is a usage error.
func (d *deliveryFlags) enabled() (bool, error) {
	switch {
	case d.receiver == "" && d.from == "":
		return false, nil
	case d.receiver == "" || d.from == "":
		return false, usagef("report delivery needs both --receiver and --from")
	}
	return true, nil
}

// reporter checks the flags and returns a Reporter for them, its Store not
// yet set. Its DNS goes through res; now is its clock.
func (d *deliveryFlags) reporter(res resolvercache.Resolver, now func() time.Time) (*reportgen.Reporter, error) {
	if ok, err := d.enabled(); err != nil {
		return nil, err
	} else if !ok {
		return nil, usagef("--receiver and --from are required")
	}
	at := strings.LastIndexByte(d.from, '@')
	if at <= 0 || at == len(d.from)-1 {
		return nil, usagef("--from %q: want an address local@domain", d.from)
	}
	fromDomain := strings.ToLower(strings.TrimSuffix(d.from[at+1:], "."))
	if d.maxSize < 0 {
		return nil, usagef("--max-size must not be negative")
	}
	if d.smtpPort <= 0 || d.smtpPort > 65535 {
		return nil, usagef("--smtp-port %d: want 1-65535", d.smtpPort)
	}
	if d.smarthost != "" {
		if _, _, err := net.SplitHostPort(d.smarthost); err != nil {
			return nil, usagef("--smarthost: want host:port: %v", err)
		}
	}
	if d.email == "" {
		d.email = d.from
	}
	dl := &reportgen.Deliverer{Resolver: res, From: d.from, HELO: d.helo, Smarthost: d.smarthost, SMTPPort: d.smtpPort, Now: now}
	for _, a := range d.allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, usagef("--allow: %v", err)
		}
		dl.Addresses.Allow = append(dl.Addresses.Allow, p)
	}
	if d.caFile != "" {
		pemBytes, err := os.ReadFile(d.caFile)
		if err != nil {
			return nil, fmt.Errorf("--report-ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, usagef("--report-ca %s: no PEM certificates", d.caFile)
		}
		dl.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	keys, err := d.dkim(fromDomain)
	if err != nil {
		return nil, err
	}
	dl.DKIM = keys
	r := &reportgen.Reporter{Deliverer: dl, DMARC: d.dmarcConfig(), TLS: d.tlsConfig(), DefaultCap: d.maxSize, RequireTLS: d.requireTLS}
	for _, kv := range d.destMaxSize {
		dest, size, ok := strings.Cut(kv, "=")
		n, err := parseSize(size)
		if !ok || dest == "" || err != nil || n <= 0 {
			return nil, usagef("--dest-max-size %q: want DEST=SIZE with a positive SIZE (octets, or with k, m, g)", kv)
		}
		if r.Caps == nil {
			r.Caps = map[string]int64{}
		}
		r.Caps[strings.ToLower(dest)] = n
	}
	for _, dest := range d.suppress {
		if !strings.HasPrefix(strings.ToLower(dest), "mailto:") && !strings.HasPrefix(strings.ToLower(dest), "https://") {
			return nil, usagef("--suppress %q: want a mailto: or https:// URI", dest)
		}
		if r.Suppressed == nil {
			r.Suppressed = map[string]bool{}
		}
		r.Suppressed[strings.ToLower(dest)] = true
	}
	if d.rfc7489 {
		r.Mode = dmarc.ModeRFC7489
	}
	return r, nil
}

// dkim loads the --dkim-key files. Each key is SELECTOR=FILE or FILE (with
// --dkim-selector); two keys may not share a selector.
func (d *deliveryFlags) dkim(fromDomain string) ([]reportgen.DKIMKey, error) {
	if len(d.dkimKeys) == 0 {
		return nil, nil
	}
	domain := strings.ToLower(strings.TrimSuffix(d.dkimDomain, "."))
	if domain == "" {
		domain = fromDomain
	}
	if !aligned(fromDomain, domain) {
		return nil, usagef("--dkim-domain %s is not aligned with the --from domain %s: report mail would fail DMARC at the receiver", domain, fromDomain)
	}
	var keys []reportgen.DKIMKey
	seen := map[string]bool{}
	for _, spec := range d.dkimKeys {
		sel, file := d.dkimSelector, spec
		if i := strings.IndexByte(spec, '='); i > 0 && validSelector(spec[:i]) {
			sel, file = spec[:i], spec[i+1:]
		}
		if !validSelector(sel) {
			return nil, usagef("--dkim-key %s: selector %q is not a DNS name", spec, sel)
		}
		if seen[strings.ToLower(sel)] {
			return nil, usagef("--dkim-key: two keys with selector %q; give each its own as SELECTOR=FILE", sel)
		}
		seen[strings.ToLower(sel)] = true
		pemBytes, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--dkim-key: %w", err)
		}
		k, err := reportgen.ParseDKIMKey(pemBytes)
		if err != nil {
			return nil, usagef("--dkim-key %s: %v", file, err)
		}
		keys = append(keys, reportgen.DKIMKey{Domain: domain, Selector: sel, Signer: k})
	}
	return keys, nil
}

// aligned reports whether a and b share an organisational domain (relaxed
// DMARC alignment, by the public suffix list).
func aligned(a, b string) bool {
	if a == b {
		return true
	}
	oa, err1 := publicsuffix.EffectiveTLDPlusOne(a)
	ob, err2 := publicsuffix.EffectiveTLDPlusOne(b)
	return err1 == nil && err2 == nil && oa == ob
}

// validSelector reports whether s is a DKIM selector: dot-separated labels
// of letters, digits and hyphens (RFC 6376 3.1).
func validSelector(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// describe is a one-line account of where report mail goes, for logs.
func (d *deliveryFlags) describe(keys []reportgen.DKIMKey) string {
	via := "destination MX (port " + strconv.Itoa(d.smtpPort) + ")"
	if d.smarthost != "" {
		via = "smarthost " + d.smarthost
	}
	sigs := "unsigned"
	if len(keys) > 0 {
		var s []string
		for _, k := range keys {
			s = append(s, k.Selector+"._domainkey."+k.Domain)
		}
		sigs = "DKIM " + strings.Join(s, ", ")
	}
	return "from " + d.from + " via " + via + ", " + sigs
}

// parseSize reads an octet count with an optional k, m or g suffix (powers
// of 1024, as in RFC 7489's "!size" limits).
func parseSize(s string) (int64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q", s)
	}
	return n * mult, nil
}
