package arc

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/message"
)

// DefaultSealHeaders is the h= list a Sealer signs when none is given: the
// fields RFC 6376 5.4.1 recommends, as they commonly appear.
var DefaultSealHeaders = []string{
	"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"in-reply-to", "references", "mime-version", "content-type",
	"content-transfer-encoding", "list-id", "dkim-signature",
}

// ErrNoSeal is returned by Sealer.Seal when RFC 8617 forbids adding a set:
// the newest ARC-Seal already says cv=fail (5.1.2), the chain is
// structurally broken so the new seal could not cover it, or the chain
// already has MaxSets sets (4.2.1).
var ErrNoSeal = errors.New("arc: no ARC set may be added to this message")

// Sealer adds ARC sets (RFC 8617 5.1). It signs with relaxed/relaxed
// canonicalisation and rsa-sha256 or ed25519-sha256, chosen by the key
// type, and writes the tags in the "standardized" form of the ValiMail
// suite (lower-case, alphabetical): AS a, b, cv, d, i, s, t and AMS a, b,
// bh, c, d, h, i, s, t. A Sealer is safe for concurrent use.
type Sealer struct {
	// Domain (d=) and Selector (s=) name the key record
	// Selector._domainkey.Domain publishing Key's public half.
	Domain, Selector string
	// Key signs; *rsa.PrivateKey and ed25519.PrivateKey are supported.
	Key crypto.Signer
	// AuthServID is the authserv-id recorded in the AAR (RFC 8601 2.5).
	AuthServID string
	// Headers is the AMS h= list, lower case; nil means
	// DefaultSealHeaders. ARC-Seal may not be listed (RFC 8617 4.1.2).
	Headers []string
	// MaxSets is the chain length limit (default DefaultMaxSets).
	MaxSets int
	// Now gives t=; nil means time.Now.
	Now func() time.Time
}

// SealedSet holds the three header fields of a new ARC set, each a whole
// field ("Name: value" folded, ending in CRLF), to be prepended to the
// message in the order AS, AMS, AAR (newest first, as Prepend does).
type SealedSet struct {
	Instance int
	AAR      string
	AMS      string
	AS       string
}

// Prepend returns raw with the set's header fields added at the top.
func (s *SealedSet) Prepend(raw []byte) []byte {
	out := make([]byte, 0, len(s.AS)+len(s.AMS)+len(s.AAR)+len(raw))
	out = append(out, s.AS...)
	out = append(out, s.AMS...)
	out = append(out, s.AAR...)
	return append(out, raw...)
}

// Seal computes a new ARC set for m. chain must be the result of
// validating m's existing chain (Validator.Validate): its status becomes
// the new seal's cv= (RFC 8617 5.1.1), and its instance count gives the new
// instance. results is the authres payload to record after the
// authserv-id, for example what CollectAuthResults returns; empty means
// "none"; line breaks in it must be folds (CRLF then white space).
//
// Seal returns ErrNoSeal (wrapped) when no set may be added: the newest
// seal already has cv=fail (RFC 8617 5.1.2), the existing chain is
// structurally broken (there is no well-defined instance to add), or it
// already has MaxSets sets. A chain that failed only temporarily
// (chain.Temporary) is an error too: validate again rather than seal a
// cv=fail. Sealing a failed chain signs only the new set (RFC 8617 5.1.2).
func (s *Sealer) Seal(m *message.Message, chain Result, results string) (*SealedSet, error) {
	maxSets := s.MaxSets
	if maxSets <= 0 {
		maxSets = DefaultMaxSets
	}
	var sets []arcSet
	switch chain.Result {
	case ResultNone:
	case ResultPass, ResultFail:
		var err error
		sets, err = collectSets(m, maxSets)
		if err != nil || len(sets) == 0 {
			return nil, fmt.Errorf("%w: existing chain is malformed", ErrNoSeal)
		}
		if sets[len(sets)-1].as.tags.is("cv", "fail") {
			return nil, fmt.Errorf("%w: newest ARC-Seal has cv=fail", ErrNoSeal)
		}
	default:
		return nil, fmt.Errorf("arc: seal: unknown chain result %q", chain.Result)
	}
	if chain.Temporary {
		return nil, errors.New("arc: seal: the chain failed for a temporary reason; validate again before sealing")
	}
	inst := len(sets) + 1
	if inst > maxSets {
		return nil, fmt.Errorf("%w: chain already has %d sets", ErrNoSeal, len(sets))
	}
	alg, err := signAlgorithm(s.Key)
	if err != nil {
		return nil, err
	}
	if !validDomain(s.Domain) || !validSelector(s.Selector) {
		return nil, fmt.Errorf("arc: seal: invalid domain %q or selector %q", s.Domain, s.Selector)
	}
	if s.AuthServID == "" || strings.ContainsAny(s.AuthServID, " \t\r\n;") {
		return nil, fmt.Errorf("arc: seal: invalid authserv-id %q", s.AuthServID)
	}
	if !validFolded(results) {
		return nil, errors.New("arc: seal: results contain a line break that is not folding white space")
	}
	names := s.Headers
	if names == nil {
		names = DefaultSealHeaders
	}
	for _, n := range names {
		if strings.EqualFold(n, keyAS) {
			return nil, errors.New("arc: seal: h= may not include ARC-Seal (RFC 8617 4.1.2)")
		}
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	ts := strconv.FormatInt(now().Unix(), 10)
	istr := strconv.Itoa(inst)

	// ARC-Authentication-Results (RFC 8617 4.1.1).
	if strings.TrimSpace(results) == "" {
		results = "none"
	}
	aar := "ARC-Authentication-Results: i=" + istr + "; " + s.AuthServID + ";\r\n    " + strings.TrimSpace(results) + "\r\n"

	// ARC-Message-Signature (RFC 8617 4.1.2): DKIM-style, over the
	// message as it will be with the new AAR on top.
	bh, _ := dkim.BodyHash(m.Body, dkim.Relaxed, crypto.SHA256, -1)
	amsTags := []tag{
		{"a", alg}, {"b", ""}, {"bh", base64.StdEncoding.EncodeToString(bh)},
		{"c", "relaxed/relaxed"}, {"d", s.Domain}, {"h", strings.ToLower(strings.Join(names, ":"))},
		{"i", istr}, {"s", s.Selector}, {"t", ts},
	}
	h := crypto.SHA256.New()
	var buf []byte
	fields := m.Fields
	used := make([]bool, len(fields))
	aarUsed := false
	for _, name := range names {
		name = strings.ToLower(trimFWS(name))
		if name == "" {
			continue
		}
		found := false
		for j := len(fields) - 1; j >= 0; j-- {
			if !used[j] && fields[j].Key == name {
				used[j], found = true, true
				buf = dkim.CanonicalizeHeader(buf[:0], fields[j].Raw, dkim.Relaxed)
				h.Write(buf)
				break
			}
		}
		if !found && name == keyAAR && !aarUsed {
			aarUsed = true
			buf = dkim.CanonicalizeHeader(buf[:0], []byte(aar), dkim.Relaxed)
			h.Write(buf)
		}
	}
	amsUnsigned := formatField("ARC-Message-Signature", amsTags)
	buf = dkim.CanonicalizeHeader(buf[:0], []byte(amsUnsigned), dkim.Relaxed)
	h.Write(trimCRLF(buf))
	sig, err := signDigest(s.Key, h.Sum(nil))
	if err != nil {
		return nil, err
	}
	amsTags[1].v = base64.StdEncoding.EncodeToString(sig)
	ams := formatField("ARC-Message-Signature", amsTags)

	// ARC-Seal (RFC 8617 4.1.3, 5.1.1): over every older set, then the
	// new AAR, AMS and the seal itself with b= empty. Sealing a failed
	// chain covers only the new set (RFC 8617 5.1.2).
	asTags := []tag{
		{"a", alg}, {"b", ""}, {"cv", chain.Result}, {"d", s.Domain},
		{"i", istr}, {"s", s.Selector}, {"t", ts},
	}
	h = crypto.SHA256.New()
	older := sets
	if chain.Result == ResultFail {
		older = nil
	}
	for j := range older {
		for _, hd := range [...]*header{older[j].aar, older[j].ams, older[j].as} {
			buf = dkim.CanonicalizeHeader(buf[:0], fields[hd.idx].Raw, dkim.Relaxed)
			h.Write(buf)
		}
	}
	for _, f := range []string{aar, ams} {
		buf = dkim.CanonicalizeHeader(buf[:0], []byte(f), dkim.Relaxed)
		h.Write(buf)
	}
	buf = dkim.CanonicalizeHeader(buf[:0], []byte(formatField("ARC-Seal", asTags)), dkim.Relaxed)
	h.Write(trimCRLF(buf))
	sig, err = signDigest(s.Key, h.Sum(nil))
	if err != nil {
		return nil, err
	}
	asTags[1].v = base64.StdEncoding.EncodeToString(sig)
	return &SealedSet{Instance: inst, AAR: aar, AMS: ams, AS: formatField("ARC-Seal", asTags)}, nil
}

type tag struct{ k, v string }

// validFolded reports whether every CR or LF in s is part of a CRLF
// followed by white space (RFC 5322 2.2.3 folding), so s can be placed in
// a header field without ending it.
func validFolded(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+2 >= len(s) || s[i+1] != '\n' || (s[i+2] != ' ' && s[i+2] != '\t') {
				return false
			}
			i++
		case '\n':
			return false
		}
	}
	return true
}

// formatField writes "Name: k=v; k=v..." folded before a tag when a line
// would pass 78 columns. Values are never broken inside: the canonical form
// of the field (which a later ARC-Seal signs) then has no white space
// within b=, like the suite's reference signer.
func formatField(name string, tags []tag) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte(':')
	col := len(name) + 1
	for i, t := range tags {
		item := t.k + "=" + t.v
		if i < len(tags)-1 {
			item += ";"
		}
		if col+1+len(item) > 78 && col > 4 {
			b.WriteString("\r\n    ")
			col = 4
		} else {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(item)
		col += len(item)
	}
	b.WriteString("\r\n")
	return b.String()
}

func signAlgorithm(k crypto.Signer) (string, error) {
	if k == nil {
		return "", errors.New("arc: seal: no key")
	}
	switch k.Public().(type) {
	case *rsa.PublicKey:
		return "rsa-sha256", nil
	case ed25519.PublicKey:
		return "ed25519-sha256", nil
	}
	return "", fmt.Errorf("arc: seal: unsupported key type %T", k.Public())
}

// signDigest signs a SHA-256 digest: PKCS #1 v1.5 for RSA (RFC 6376 3.3.1),
// Ed25519 over the digest for ed25519-sha256 (RFC 8463 3).
func signDigest(k crypto.Signer, digest []byte) ([]byte, error) {
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := k.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0)
	}
	sig, err := k.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("arc: seal: sign: %w", err)
	}
	return sig, nil
}

// CollectAuthResults gathers the results that the Authentication-Results
// fields of m carrying authservID (RFC 8601 2.2, compared without regard to
// case) record, in message order, joined one per line as an AAR payload
// (after the authserv-id). "none" results and empty entries are dropped.
// This is the consolidation the ValiMail signing suite expects.
func CollectAuthResults(m *message.Message, authservID string) string {
	var out []string
	for i := range m.Fields {
		f := &m.Fields[i]
		if f.Key != "authentication-results" {
			continue
		}
		parts := splitResinfo(string(f.Value))
		if len(parts) == 0 {
			continue
		}
		id := strings.Fields(parts[0])
		if len(id) == 0 || !strings.EqualFold(id[0], authservID) {
			continue
		}
		for _, p := range parts[1:] {
			p = strings.Join(strings.Fields(p), " ")
			if p == "" || strings.EqualFold(p, "none") {
				continue
			}
			out = append(out, p)
		}
	}
	return strings.Join(out, ";\r\n    ")
}

// splitResinfo splits an Authentication-Results value on the semicolons
// that separate its parts, ignoring those inside comments and quoted
// strings (RFC 8601 2.2).
func splitResinfo(v string) []string {
	var parts []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && (quoted || depth > 0):
			i++
		case quoted:
			if c == '"' {
				quoted = false
			}
		case c == '"' && depth == 0:
			quoted = true
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == ';' && depth == 0:
			parts = append(parts, v[start:i])
			start = i + 1
		}
	}
	return append(parts, v[start:])
}
