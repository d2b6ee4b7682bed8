package message

import (
	"errors"
	"net/mail"
	"net/netip"
	"strings"
	"time"
)

// Received is what one Received trace field says about the hop that wrote
// it (RFC 5321 4.4 "Stamp", RFC 5322 3.6.7): who connected, to whom, with
// what, for whom, and when. Fields the field does not give are empty.
type Received struct {
	// HELO is the name the client gave in HELO or EHLO: the From-domain
	// (RFC 5321 4.4), or the helo= an Exim comment names when Exim put
	// the client's reverse DNS name or address there instead (qmail's
	// "(HELO name)" comment likewise).
	HELO string
	// ClientIP is the address of the client's connection (the TCP-info
	// of RFC 5321 4.4: "[192.0.2.1]", "[IPv6:2001:db8::1]", with or
	// without a port after it, or an unbracketed address in the
	// From-domain's comment as Microsoft and qmail write it); invalid when
	// the field records none.
	ClientIP netip.Addr
	// By is the receiving host's name (By-domain).
	By string
	// With is the protocol (ESMTP, ESMTPS, LMTP, ...).
	With string
	// ID is the receiver's identifier for the message (its queue id).
	ID string
	// For is the recipient of the For clause, without angle brackets.
	For string
	// EnvelopeFrom is the MAIL FROM an Exim "(envelope-from <...>)"
	// comment gives ("" also for the null sender: see HasEnvelopeFrom).
	EnvelopeFrom    string
	HasEnvelopeFrom bool
	// Date is the date-time after the last ';' (RFC 5322 3.3), UTC; zero
	// when absent or not a date.
	Date time.Time
}

// ErrNoFromClause is ParseReceived's error for a field without a From
// clause: it names no client (a hop a program made on the host itself,
// "from userid 1000 by ..." aside, which has one).
var ErrNoFromClause = errors.New("message: Received field has no from clause")

// maxReceivedTokens bounds the words and comments ParseReceived looks at
// in one field; a real Stamp has a dozen or two.
const maxReceivedTokens = 256

// ParseReceived reads the value of one Received field (unfolded, as in
// Field.Value). It is lenient where MTAs differ: clauses are recognised by
// their keywords (from, by, via, with, id, for) outside comments, in any
// order, and the client's address is looked for where Postfix, Sendmail,
// Exim, qmail, Gmail and Microsoft put it. It reads at most
// maxReceivedTokens words and comments.
func ParseReceived(v []byte) (Received, error) {
	var r Received
	s := string(v)
	if i := strings.LastIndexByte(s, ';'); i >= 0 {
		if t, err := mail.ParseDate(strings.TrimSpace(s[i+1:])); err == nil {
			r.Date = t.UTC()
		}
		s = s[:i]
	}
	var (
		clause   string   // the keyword whose clause is being read
		haveWord bool     // the clause has its word
		comments bool     // the clause has had a comment
		from     []string // the From clause's word, then its comments and other words
		sawFrom  bool
	)
	for n, rest := 0, s; n < maxReceivedTokens; n++ {
		tok, comment, next, ok := receivedToken(rest)
		if !ok {
			break
		}
		rest = next
		if comment {
			if a, ok := strings.CutPrefix(strings.ToLower(tok), "envelope-from"); ok && (a == "" || a[0] == ' ' || a[0] == '\t') {
				r.EnvelopeFrom, r.HasEnvelopeFrom = angleless(strings.TrimSpace(tok[len("envelope-from"):])), true
			}
			if clause == "from" {
				from = append(from, "("+tok)
			}
			comments = true
			continue
		}
		// A keyword starts a clause unless it stands where the clause's
		// word should ("from by"); a clause with a comment and no word
		// ("from (localhost[127.0.0.1]) by") has none to wait for.
		if kw := strings.ToLower(tok); isReceivedKeyword(kw) && (clause == "" || haveWord || comments) {
			clause, haveWord, comments = kw, false, false
			if kw == "from" {
				sawFrom = true
			}
			continue
		}
		if clause == "from" && haveWord {
			// RFC 4409's "from name [192.0.2.1]": TCP-info outside a
			// comment, read as one.
			from = append(from, "("+tok)
			continue
		}
		if clause == "" || haveWord || comments {
			continue // words beyond a clause's one (Additional-Registered-Clauses' values, junk)
		}
		haveWord = true
		switch clause {
		case "from":
			from = append(from, tok)
		case "by":
			r.By = tok
		case "with":
			r.With = tok
		case "id":
			r.ID = tok
		case "for":
			r.For = angleless(tok)
		}
	}
	if !sawFrom {
		return r, ErrNoFromClause
	}
	r.HELO, r.ClientIP = fromClause(from)
	return r, nil
}

func isReceivedKeyword(w string) bool {
	switch w {
	case "from", "by", "via", "with", "id", "for":
		return true
	}
	return false
}

// receivedToken returns the next word of s, or the text of its next
// comment (without the outer parentheses; nested comments kept), and the
// rest of s; ok is false at the end. An unterminated comment runs to the
// end of s.
func receivedToken(s string) (tok string, comment bool, rest string, ok bool) {
	s = strings.TrimLeft(s, " \t\r\n")
	if s == "" {
		return "", false, "", false
	}
	if s[0] == '(' {
		depth := 0
		for i := 0; i < len(s); i++ {
			switch s[i] {
			case '\\':
				i++ // quoted-pair (RFC 5322 3.2.1)
			case '(':
				depth++
			case ')':
				if depth--; depth == 0 {
					return s[1:i], true, s[i+1:], true
				}
			}
		}
		return s[1:], true, "", true
	}
	end := strings.IndexAny(s, " \t\r\n(")
	if end < 0 {
		end = len(s)
	}
	return s[:end], false, s[end:], true
}

// fromClause finds the HELO name and the client address in the From
// clause's word and comments (each comment given with its '(').
func fromClause(parts []string) (helo string, ip netip.Addr) {
	var loose netip.Addr // an unbracketed address in a comment
	for i, p := range parts {
		text, comment := strings.CutPrefix(p, "(")
		if !comment {
			if i == 0 { // the From-domain itself
				helo = p
				if a, ok := addressLiteral(p); ok {
					ip = a
				}
			}
			continue
		}
		words := strings.Fields(text)
		if len(words) == 2 && (strings.EqualFold(words[0], "helo") || strings.EqualFold(words[0], "ehlo")) {
			helo = words[1] // qmail: "(HELO name)"
			continue
		}
		for _, w := range words {
			switch {
			case len(w) > 5 && strings.EqualFold(w[:5], "helo="):
				helo = strings.TrimRight(w[5:], ")")
			case strings.Contains(w, "["): // "[192.0.2.1]", "localhost[127.0.0.1]"
				if a, ok := addressLiteral(w[strings.IndexByte(w, '['):]); ok && !ip.IsValid() {
					ip = a
				}
			default:
				if a, err := netip.ParseAddr(strings.TrimRight(w, ".,;)")); err == nil && a.Zone() == "" && !loose.IsValid() {
					loose = a.Unmap()
				}
			}
		}
	}
	if !ip.IsValid() {
		ip = loose
	}
	return helo, ip
}

// addressLiteral reads an RFC 5321 4.1.3 address literal at the start of w
// ("[192.0.2.1]", "[IPv6:2001:db8::1]"), ignoring what follows the ']'
// (Exim's ":port").
func addressLiteral(w string) (netip.Addr, bool) {
	body, ok := strings.CutPrefix(w, "[")
	if !ok {
		return netip.Addr{}, false
	}
	end := strings.IndexByte(body, ']')
	if end < 0 {
		return netip.Addr{}, false
	}
	body = body[:end]
	if len(body) > 5 && strings.EqualFold(body[:5], "ipv6:") {
		body = body[5:]
	}
	a, err := netip.ParseAddr(body)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// angleless returns an address without the angle brackets (and a
// trailing ';' or ',') around it.
func angleless(s string) string {
	s = strings.TrimRight(s, ";,")
	if strings.HasPrefix(s, "<") {
		s = s[1:]
		if i := strings.IndexByte(s, '>'); i >= 0 {
			s = s[:i]
		}
	}
	return s
}
