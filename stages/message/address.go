package message

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// maxAddresses bounds the mailboxes taken from one address field.
const maxAddresses = 100

// parseFrom fills From, FromFields and FromErr from the From fields.
func (m *Message) parseFrom() {
	for i := range m.Fields {
		if m.Fields[i].Key != "from" {
			continue
		}
		m.FromFields++
		addrs, err := ParseAddressList(m.Fields[i].Value)
		if err != nil {
			if m.FromErr == nil {
				m.FromErr = fmt.Errorf("message: From field %d: %w", m.FromFields, err)
			}
			continue
		}
		if len(addrs) == 0 && m.FromErr == nil {
			m.FromErr = fmt.Errorf("message: From field %d has no mailbox", m.FromFields)
		}
		if m.From == nil {
			m.From = addrs
		} else {
			m.From = append(m.From, addrs...)
		}
	}
}

// ParseAddressList parses an RFC 5322 3.4 address-list (mailboxes and
// groups, RFC 6854 allows groups in From), returning the mailboxes in order.
// Comments and folding whitespace are skipped, display names ignored,
// obsolete routes (RFC 5322 4.4) dropped. UTF-8 is accepted in atoms and
// quoted strings (RFC 6532). Domains are lower-cased and converted to IDNA
// A-labels. At most 100 mailboxes are accepted.
func ParseAddressList(v []byte) ([]Address, error) {
	p := addrParser{s: v}
	var out []Address
	for {
		p.skipCFWS()
		if p.err != nil {
			return nil, p.err
		}
		if p.eof() {
			break
		}
		if p.peek() == ',' { // obs-mbox-list allows empty elements
			p.i++
			continue
		}
		var err error
		out, err = p.address(out)
		if err != nil {
			return nil, err
		}
		if len(out) > maxAddresses {
			return nil, fmt.Errorf("more than %d mailboxes", maxAddresses)
		}
		p.skipCFWS()
		if p.err != nil {
			return nil, p.err
		}
		if p.eof() {
			break
		}
		if p.peek() != ',' {
			return nil, fmt.Errorf("unexpected %q at offset %d", p.peek(), p.i)
		}
		p.i++
	}
	return out, nil
}

type addrParser struct {
	s   []byte
	i   int
	err error
}

func (p *addrParser) eof() bool  { return p.i >= len(p.s) }
func (p *addrParser) peek() byte { return p.s[p.i] }

// skipCFWS skips whitespace, CR/LF and (nested) comments.
func (p *addrParser) skipCFWS() {
	for p.i < len(p.s) {
		switch c := p.s[p.i]; c {
		case ' ', '\t', '\r', '\n':
			p.i++
		case '(':
			depth := 0
			for p.i < len(p.s) {
				c := p.s[p.i]
				switch c {
				case '\\':
					p.i++
				case '(':
					depth++
				case ')':
					depth--
				}
				p.i++
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				p.err = errors.New("unterminated comment")
				return
			}
		default:
			return
		}
	}
}

func isAtext(c byte) bool {
	if c >= 0x80 {
		return true // RFC 6532 UTF8-non-ascii
	}
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// word reads an atom or quoted string, appending its text to dst; quoted
// reports which it was.
func (p *addrParser) word(dst []byte) (_ []byte, quoted bool, err error) {
	p.skipCFWS()
	if p.err != nil {
		return dst, false, p.err
	}
	if p.eof() {
		return dst, false, errors.New("unexpected end")
	}
	if p.peek() == '"' {
		p.i++
		for {
			if p.eof() {
				return dst, true, errors.New("unterminated quoted string")
			}
			c := p.peek()
			p.i++
			switch c {
			case '"':
				return dst, true, nil
			case '\\':
				if p.eof() {
					return dst, true, errors.New("unterminated quoted-pair")
				}
				dst = append(dst, p.peek())
				p.i++
			case '\r', '\n':
				// folding inside a quoted string: drop the line break
			default:
				dst = append(dst, c)
			}
		}
	}
	start := p.i
	for !p.eof() && isAtext(p.peek()) {
		p.i++
	}
	if p.i == start {
		return dst, false, fmt.Errorf("unexpected %q at offset %d", p.peek(), p.i)
	}
	return append(dst, p.s[start:p.i]...), false, nil
}

// address parses one mailbox or group and appends its mailboxes to out.
func (p *addrParser) address(out []Address) ([]Address, error) {
	start := p.i
	// Scan a phrase (display name or local part) up to a special.
	words := 0
	for {
		p.skipCFWS()
		if p.err != nil {
			return nil, p.err
		}
		if p.eof() {
			return nil, errors.New("address without @")
		}
		c := p.peek()
		switch {
		case c == '<':
			p.i++
			a, err := p.angleAddr()
			if err != nil {
				return nil, err
			}
			return append(out, a), nil
		case c == ':':
			if words == 0 {
				return nil, errors.New("group without display name")
			}
			p.i++
			return p.groupList(out)
		case c == '@':
			if words == 0 {
				return nil, errors.New("empty local part")
			}
			p.i = start
			a, err := p.addrSpec()
			if err != nil {
				return nil, err
			}
			return append(out, a), nil
		case c == '.':
			p.i++
			words++
		case c == '"' || isAtext(c):
			var scratch [64]byte
			if _, _, err := p.word(scratch[:0]); err != nil {
				return nil, err
			}
			words++
		default:
			return nil, fmt.Errorf("unexpected %q at offset %d", c, p.i)
		}
	}
}

func (p *addrParser) groupList(out []Address) ([]Address, error) {
	for {
		p.skipCFWS()
		if p.err != nil {
			return nil, p.err
		}
		if p.eof() {
			return nil, errors.New("group without ';'")
		}
		switch p.peek() {
		case ';':
			p.i++
			return out, nil
		case ',':
			p.i++
			continue
		}
		var err error
		out, err = p.address(out)
		if err != nil {
			return nil, err
		}
		if len(out) > maxAddresses {
			return nil, fmt.Errorf("more than %d mailboxes", maxAddresses)
		}
	}
}

// angleAddr parses the rest of "<" [obs-route] addr-spec ">".
func (p *addrParser) angleAddr() (Address, error) {
	p.skipCFWS()
	if !p.eof() && p.peek() == '@' { // obs-route: skip up to ':'
		for !p.eof() && p.peek() != ':' && p.peek() != '>' {
			p.i++
		}
		if p.eof() || p.peek() != ':' {
			return Address{}, errors.New("bad route in angle address")
		}
		p.i++
	}
	p.skipCFWS()
	if !p.eof() && p.peek() == '>' {
		return Address{}, errors.New("empty angle address")
	}
	a, err := p.addrSpec()
	if err != nil {
		return Address{}, err
	}
	p.skipCFWS()
	if p.err != nil {
		return Address{}, p.err
	}
	if p.eof() || p.peek() != '>' {
		return Address{}, errors.New("angle address without '>'")
	}
	p.i++
	return a, nil
}

// addrSpec parses local-part "@" domain.
func (p *addrParser) addrSpec() (Address, error) {
	var lbuf [64]byte
	local := lbuf[:0]
	needQuote := false
	for {
		var quoted bool
		var err error
		local, quoted, err = p.word(local)
		if err != nil {
			return Address{}, fmt.Errorf("local part: %w", err)
		}
		if quoted {
			needQuote = true
		}
		p.skipCFWS()
		if p.err != nil {
			return Address{}, p.err
		}
		if p.eof() {
			return Address{}, errors.New("address without @")
		}
		if p.peek() == '.' {
			p.i++
			local = append(local, '.')
			continue
		}
		if p.peek() == '@' {
			p.i++
			break
		}
		return Address{}, fmt.Errorf("unexpected %q in local part", p.peek())
	}
	var dbuf [128]byte
	dom, err := p.domain(dbuf[:0])
	if err != nil {
		return Address{}, err
	}
	if !utf8.Valid(local) {
		return Address{}, errors.New("local part is not valid UTF-8")
	}
	if needQuote && !isDotAtom(local) {
		l := string(local)
		q := quoteLocal(l)
		return Address{Addr: q + "@" + dom, Local: l, Domain: dom}, nil
	}
	addr := string(append(append(local, '@'), dom...))
	return Address{Addr: addr, Local: addr[:len(local)], Domain: addr[len(local)+1:]}, nil
}

// domain parses dot-atom or domain-literal and returns the canonical form.
func (p *addrParser) domain(b []byte) (string, error) {
	p.skipCFWS()
	if p.err != nil {
		return "", p.err
	}
	if p.eof() {
		return "", errors.New("empty domain")
	}
	if p.peek() == '[' {
		start := p.i
		for !p.eof() && p.peek() != ']' {
			if p.peek() == '\\' {
				p.i++
			}
			p.i++
		}
		if p.eof() {
			return "", errors.New("unterminated domain literal")
		}
		p.i++
		return strings.ToLower(string(p.s[start:p.i])), nil
	}
	ascii := true
	for {
		p.skipCFWS()
		if p.err != nil {
			return "", p.err
		}
		start := p.i
		for !p.eof() && isAtext(p.peek()) {
			c := p.peek()
			if c >= 0x80 {
				ascii = false
			} else if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b = append(b, c)
			p.i++
		}
		if p.i == start {
			return "", errors.New("empty domain label")
		}
		p.skipCFWS()
		if p.err != nil {
			return "", p.err
		}
		if !p.eof() && p.peek() == '.' {
			p.i++
			b = append(b, '.')
			continue
		}
		break
	}
	if ascii {
		return string(b), nil
	}
	return CanonicalDomain(string(b))
}

// CanonicalDomain returns d in lower-case ASCII, converting U-labels to
// IDNA A-labels (RFC 5891) when d is not ASCII. A trailing dot is removed.
func CanonicalDomain(d string) (string, error) {
	d = strings.TrimSuffix(d, ".")
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return lowerASCII(d), nil
	}
	if !utf8.ValidString(d) {
		return "", errors.New("domain is not valid UTF-8")
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return lowerASCII(a), nil
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

func isDotAtom(s []byte) bool {
	if len(s) == 0 || s[0] == '.' || s[len(s)-1] == '.' || bytes.Contains(s, []byte("..")) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i]) {
			return false
		}
	}
	return true
}

func quoteLocal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
