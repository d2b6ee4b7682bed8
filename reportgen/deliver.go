package reportgen

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/resolvercache"
)

// DeliveryError is a failed delivery attempt. Permanent failures (SMTP 5xx,
// HTTP 4xx other than 408/429, refused destinations) are not retried.
type DeliveryError struct {
	Permanent bool
	Err       error
}

func (e *DeliveryError) Error() string {
	kind := "temporary"
	if e.Permanent {
		kind = "permanent"
	}
	return kind + ": " + e.Err.Error()
}

func (e *DeliveryError) Unwrap() error { return e.Err }

func permanent(err error) error { return &DeliveryError{Permanent: true, Err: err} }
func temporary(err error) error { return &DeliveryError{Err: err} }

// IsPermanent reports whether err is a permanent delivery failure.
func IsPermanent(err error) bool {
	var de *DeliveryError
	return errors.As(err, &de) && de.Permanent
}

// ErrRefusedAddress is wrapped when a destination resolves to an address
// that is not publicly routable and not allowlisted.
var ErrRefusedAddress = errors.New("destination address refused")

// specialPrefixes are the special-purpose ranges (RFC 6890 registries)
// refused as delivery destinations besides loopback, private, link-local,
// multicast and unspecified addresses.
var specialPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
		"198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
		"64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// AddressPolicy decides which resolved addresses reports may be sent to.
// Loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local,
// multicast, unspecified and other special-purpose addresses are refused
// unless inside an Allow prefix. The check runs on the resolved addresses
// before any connection, and the connection is made to the checked address.
type AddressPolicy struct {
	Allow []netip.Prefix
}

// Check returns an error wrapping ErrRefusedAddress when ip is refused.
func (p AddressPolicy) Check(ip netip.Addr) error {
	ip = ip.Unmap()
	for _, a := range p.Allow {
		if a.Contains(ip) {
			return nil
		}
	}
	bad := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsMulticast() || ip.IsUnspecified() || ip.IsInterfaceLocalMulticast() || !ip.IsValid()
	for _, pr := range specialPrefixes {
		if pr.Contains(ip) {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("%w: %s is not a public address", ErrRefusedAddress, ip)
	}
	return nil
}

// DKIMKey is a signing key for outgoing report mail.
type DKIMKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// ParseDKIMKey reads a PEM private key (PKCS#1 RSA, PKCS#8 RSA or Ed25519).
// RSA keys must have at least 1024 bits (RFC 8301).
func ParseDKIMKey(pemBytes []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("reportgen: dkim key: no PEM block")
	}
	var key any
	var err error
	if blk.Type == "RSA PRIVATE KEY" {
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("reportgen: dkim key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("reportgen: dkim key: RSA %d bits < 1024", k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("reportgen: dkim key: unsupported type %T", key)
}

// Deliverer sends report files by SMTP and HTTPS.
type Deliverer struct {
	Resolver resolvercache.Resolver
	// From is the header and envelope sender; its domain must be the DKIM
	// signing domain (or below it) so the report mail passes DMARC aligned
	// (RFC 9990 "Email").
	From string
	// HELO is the name the SMTP client introduces itself with.
	HELO string
	// DKIM lists the keys that sign every report mail, each adding its own
	// DKIM-Signature (for example one RSA and one Ed25519 key, RFC 8463 3:
	// receivers that do not know Ed25519 still verify the RSA signature).
	// Empty: report mail is not signed.
	DKIM []DKIMKey
	// Smarthost ("host:port") relays all mail; empty means the MX of the
	// recipient domain, resolved through Resolver. The smarthost is
	// operator configuration and is exempt from the AddressPolicy.
	Smarthost string
	// SMTPPort is the port used for MX delivery (25 when 0).
	SMTPPort int
	// TLSConfig is used for STARTTLS and HTTPS (nil: system roots).
	TLSConfig *tls.Config
	// Addresses decides which resolved addresses may be contacted.
	Addresses AddressPolicy
	// Timeout bounds one delivery attempt (default 2 minutes).
	Timeout time.Duration
	// MaxHTTPSize caps an HTTPS POST body (default 10 MiB); larger →
	// permanent failure.
	MaxHTTPSize int64
	// Now is the clock for the Date header.
	Now func() time.Time
}

func (d *Deliverer) timeout() time.Duration {
	if d.Timeout <= 0 {
		return 2 * time.Minute
	}
	return d.Timeout
}

// resolveAddrs resolves host (or takes an IP literal) and keeps the
// addresses the policy allows (all of them when trusted: the configured
// smarthost). All refused → permanent failure.
func (d *Deliverer) resolveAddrs(ctx context.Context, host string, trusted bool) ([]netip.Addr, error) {
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		if d.Resolver == nil {
			return nil, permanent(errors.New("no resolver"))
		}
		var tempErr error
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			ans, err := d.Resolver.Lookup(ctx, host, qt)
			if err != nil {
				tempErr = err
				continue
			}
			addrs = append(addrs, ans.IPs...)
		}
		if len(addrs) == 0 {
			if tempErr != nil && resolvercache.IsTemporary(tempErr) {
				return nil, temporary(fmt.Errorf("resolve %s: %w", host, tempErr))
			}
			return nil, permanent(fmt.Errorf("resolve %s: no address", host))
		}
	}
	var ok []netip.Addr
	var refused error
	for _, ip := range addrs {
		if trusted {
			ok = append(ok, ip.Unmap())
			continue
		}
		if err := d.Addresses.Check(ip); err != nil {
			refused = fmt.Errorf("%s: %w", host, err)
			continue
		}
		ok = append(ok, ip.Unmap())
	}
	if len(ok) == 0 {
		return nil, permanent(refused)
	}
	return ok, nil
}

// smtpTargets returns the hosts to try for a recipient domain, in order.
func (d *Deliverer) smtpTargets(ctx context.Context, domain string) ([]string, int, error) {
	port := d.SMTPPort
	if port == 0 {
		port = 25
	}
	if d.Smarthost != "" {
		host, p, err := net.SplitHostPort(d.Smarthost)
		if err != nil {
			return nil, 0, permanent(fmt.Errorf("smarthost: %w", err))
		}
		port, _ = strconv.Atoi(p)
		return []string{host}, port, nil
	}
	ans, err := d.Resolver.Lookup(ctx, domain, dns.TypeMX)
	if err != nil {
		if resolvercache.IsTemporary(err) {
			return nil, 0, temporary(fmt.Errorf("MX %s: %w", domain, err))
		}
		return nil, 0, permanent(fmt.Errorf("MX %s: %w", domain, err))
	}
	if ans.NXDomain() {
		return nil, 0, permanent(fmt.Errorf("MX %s: no such domain", domain))
	}
	mx := slices.Clone(ans.MX)
	slices.SortStableFunc(mx, func(a, b resolvercache.MX) int { return int(a.Preference) - int(b.Preference) })
	var hosts []string
	for _, m := range mx {
		if m.Host == "" {
			return nil, 0, permanent(fmt.Errorf("%s has a null MX (RFC 7505)", domain))
		}
		hosts = append(hosts, m.Host)
	}
	if len(hosts) == 0 {
		hosts = []string{domain} // implicit MX (RFC 5321 5.1)
	}
	return hosts, port, nil
}

// SendMail delivers msg to rcpt: STARTTLS when offered (opportunistic;
// with requireTLS a failed or missing STARTTLS is a temporary failure,
// otherwise delivery falls back to plaintext on a new connection, as RFC
// 8460 5.1 requires for TLS reports). The message is accepted when the
// server answers 250 to the end of DATA.
func (d *Deliverer) SendMail(ctx context.Context, rcpt string, msg []byte, requireTLS bool) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 {
		return permanent(fmt.Errorf("bad recipient %q", rcpt))
	}
	hosts, port, err := d.smtpTargets(ctx, strings.ToLower(rcpt[at+1:]))
	if err != nil {
		return err
	}
	var last error = temporary(errors.New("no MX host"))
	for _, h := range hosts {
		addrs, err := d.resolveAddrs(ctx, h, d.Smarthost != "")
		if err != nil {
			last = err
			continue
		}
		for _, ip := range addrs {
			err := d.sendTo(ctx, h, netip.AddrPortFrom(ip, uint16(port)).String(), rcpt, msg, requireTLS)
			if err == nil {
				return nil
			}
			last = err
			if IsPermanent(err) {
				return err
			}
		}
	}
	return last
}

// heloConn rewrites the "EHLO localhost" that go-smtp's
// NewClientStartTLS sends before STARTTLS into the configured name.
type heloConn struct {
	net.Conn
	helo string
	done bool
}

func (c *heloConn) Write(p []byte) (int, error) {
	if !c.done {
		for _, verb := range []string{"EHLO ", "HELO "} {
			if string(p) == verb+"localhost\r\n" {
				c.done = true
				if _, err := c.Conn.Write([]byte(verb + c.helo + "\r\n")); err != nil {
					return 0, err
				}
				return len(p), nil
			}
		}
	}
	return c.Conn.Write(p)
}

func (d *Deliverer) dial(ctx context.Context, addr string) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	return conn, nil
}

func (d *Deliverer) sendTo(ctx context.Context, host, addr, rcpt string, msg []byte, requireTLS bool) error {
	helo := d.HELO
	if helo == "" {
		helo = "localhost"
	}
	tlsCfg := &tls.Config{}
	if d.TLSConfig != nil {
		tlsCfg = d.TLSConfig.Clone()
	}
	tlsCfg.ServerName = host
	conn, err := d.dial(ctx, addr)
	if err != nil {
		return temporary(fmt.Errorf("connect %s (%s): %w", host, addr, err))
	}
	c, err := smtp.NewClientStartTLS(&heloConn{Conn: conn, helo: helo}, tlsCfg)
	if err == nil {
		// Hello runs the TLS handshake and EHLO again over TLS.
		err = c.Hello(helo)
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 && !strings.Contains(err.Error(), "STARTTLS") {
			return permanent(fmt.Errorf("%s: %w", host, err))
		}
		if requireTLS {
			return temporary(fmt.Errorf("%s: STARTTLS: %w", host, err))
		}
		// Opportunistic: a new plaintext session.
		conn, err = d.dial(ctx, addr)
		if err != nil {
			return temporary(fmt.Errorf("connect %s (%s): %w", host, addr, err))
		}
		c = smtp.NewClient(conn)
		if err := c.Hello(helo); err != nil {
			c.Close()
			return classifySMTP(host, err)
		}
	}
	defer c.Close()
	if err := c.Mail(d.From, nil); err != nil {
		return classifySMTP(host, err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return classifySMTP(host, err)
	}
	w, err := c.Data()
	if err != nil {
		return classifySMTP(host, err)
	}
	if _, err := w.Write(msg); err != nil {
		return classifySMTP(host, err)
	}
	if err := w.Close(); err != nil {
		return classifySMTP(host, err)
	}
	c.Quit()
	return nil
}

func classifySMTP(host string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 {
		return permanent(fmt.Errorf("%s: %w", host, err))
	}
	return temporary(fmt.Errorf("%s: %w", host, err))
}

// PostHTTPS delivers a TLSRPT report to an https: rua (RFC 8460 5.2):
// POST with Content-Type application/tlsrpt+gzip. The host is resolved
// through the Resolver, the addresses checked by the AddressPolicy before
// connecting, and the connection pinned to a checked address. Redirects are
// not followed. 2xx is success; 4xx (but 408, 429) permanent; else
// temporary.
func (d *Deliverer) PostHTTPS(ctx context.Context, uri string, body []byte) error {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return permanent(fmt.Errorf("bad https rua %q", uri))
	}
	maxSize := d.MaxHTTPSize
	if maxSize <= 0 {
		maxSize = 10 << 20
	}
	if int64(len(body)) > maxSize {
		return permanent(fmt.Errorf("report of %d octets over the %d octet cap", len(body), maxSize))
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "443"
	}
	addrs, err := d.resolveAddrs(ctx, host, false)
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{}
	if d.TLSConfig != nil {
		tlsCfg = d.TLSConfig.Clone()
	}
	tlsCfg.ServerName = host
	pinned := net.JoinHostPort(addrs[0].String(), port)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, network, pinned)
		},
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: d.timeout(),
		DisableKeepAlives:     true,
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: d.timeout(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return permanent(err)
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	resp, err := cl.Do(req)
	if err != nil {
		return temporary(fmt.Errorf("POST %s: %w", host, err))
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == 408 || resp.StatusCode == 429 || resp.StatusCode >= 500:
		return temporary(fmt.Errorf("POST %s: %s", host, resp.Status))
	default:
		return permanent(fmt.Errorf("POST %s: %s", host, resp.Status))
	}
}

// MailMeta describes a report mail.
type MailMeta struct {
	Kind         Kind
	PolicyDomain string
	// Submitter is the reporting domain (receiver / sender).
	Submitter string
	ReportID  string
	FileName  string
	Part      int
	Parts     int
	Day       uint32
}

// BuildMail builds the report mail: for DMARC, RFC 9990 "Email" (Subject
// "Report Domain: … Submitter: … Report-ID: <…>", a text part and the gzip
// file as application/gzip); for TLSRPT, RFC 8460 5.3 (multipart/report;
// report-type=tlsrpt, TLS-Report-Domain, TLS-Report-Submitter, the file as
// application/tlsrpt+gzip). The Message-ID and MIME boundary derive from the
// Report-ID, so a re-send differs only in Date and DKIM-Signature. The mail
// is DKIM-signed with every key in d.DKIM.
func (d *Deliverer) BuildMail(m MailMeta, to string, file []byte) ([]byte, error) {
	h := sha256.Sum256([]byte(m.ReportID + "\x00" + m.FileName))
	boundary := "authpipe-" + hex.EncodeToString(h[:12])
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	var b bytes.Buffer
	hdr := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	hdr("From", d.From)
	hdr("To", to)
	hdr("Date", now().UTC().Format(time.RFC1123Z))
	hdr("Message-ID", "<"+m.ReportID+"."+hex.EncodeToString(h[12:16])+"@"+m.Submitter+">")
	hdr("Subject", "Report Domain: "+m.PolicyDomain+"\r\n Submitter: "+m.Submitter+"\r\n Report-ID: <"+m.ReportID+">")
	hdr("MIME-Version", "1.0")
	var text, ctype string
	if m.Kind == KindTLS {
		hdr("TLS-Report-Domain", m.PolicyDomain)
		hdr("TLS-Report-Submitter", m.Submitter)
		hdr("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+boundary+`"`)
		text = "This is an aggregate TLS report from " + m.Submitter + " for " + m.PolicyDomain + ", " + DayString(m.Day) + " (UTC).\r\n"
		ctype = "application/tlsrpt+gzip"
	} else {
		hdr("Content-Type", `multipart/mixed; boundary="`+boundary+`"`)
		text = "This is a DMARC aggregate report from " + m.Submitter + " for " + m.PolicyDomain + ", " + DayString(m.Day) +
			" (UTC), part " + strconv.Itoa(m.Part) + " of " + strconv.Itoa(max(m.Parts, m.Part)) + ".\r\n"
		ctype = "application/gzip"
	}
	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
	b.WriteString(text)
	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: " + ctype + "; name=\"" + m.FileName + "\"\r\n")
	b.WriteString("Content-Transfer-Encoding: base64\r\n")
	b.WriteString("Content-Disposition: attachment; filename=\"" + m.FileName + "\"\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(file)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--" + boundary + "--\r\n")
	if len(d.DKIM) == 0 {
		return b.Bytes(), nil
	}
	keys := []string{"From", "To", "Date", "Subject", "Message-ID", "MIME-Version", "Content-Type"}
	if m.Kind == KindTLS {
		keys = append(keys, "TLS-Report-Domain", "TLS-Report-Submitter")
	}
	// Every signature covers the same unsigned message; none signs another.
	var sigs bytes.Buffer
	for _, k := range d.DKIM {
		if k.Signer == nil {
			return nil, fmt.Errorf("reportgen: dkim key %s._domainkey.%s has no signer", k.Selector, k.Domain)
		}
		s, err := dkim.NewSigner(&dkim.SignOptions{Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
			HeaderKeys: keys, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
		if err != nil {
			return nil, fmt.Errorf("reportgen: dkim sign (%s._domainkey.%s): %w", k.Selector, k.Domain, err)
		}
		_, err = s.Write(b.Bytes())
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("reportgen: dkim sign (%s._domainkey.%s): %w", k.Selector, k.Domain, err)
		}
		sigs.WriteString(s.Signature())
	}
	return append(sigs.Bytes(), b.Bytes()...), nil
}

// MailFileCap turns a mail size limit into the cap on the gzip file:
// base64 grows the file by 4/3 plus line breaks, and the header
// and text part take a few KiB.
func MailFileCap(limit int64) int64 {
	if limit <= 0 {
		return 0
	}
	c := (limit-4096)*57/78 - 64
	if c < 1024 {
		c = 1024
	}
	return c
}
