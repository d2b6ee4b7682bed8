// Package dkim verifies DKIM signatures (RFC 6376) with the algorithm
// updates of RFC 8301 (rsa-sha1 refused, RSA keys of at least 1024 bits)
// and RFC 8463 (ed25519-sha256), and exports the building blocks ARC
// (RFC 8617) reuses: canonicalisation (RFC 6376 3.4), body hashing (3.7),
// tag-list parsing (3.2), b= stripping (3.7), key records and a caching key
// fetcher (3.6), and signature checking.
//
// The verifier works on a [message.Message] parsed once by the pipeline and
// does all DNS through [resolvercache.Resolver]. It hashes the body in
// place, parses each key once per DNS TTL, and allocates little per
// message.
package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/authpipe/authpipe/stages/internal/judgetime"
	"github.com/authpipe/authpipe/stages/message"
)

// Status is the outcome of one signature, as named by RFC 8601 2.7.1.
type Status string

// Signature outcomes (RFC 8601 2.7.1, RFC 6376 6.1 SUCCESS/PERMFAIL/TEMPFAIL).
const (
	// Pass: the signature verified.
	Pass Status = "pass"
	// Fail: the signature was evaluated and did not verify (body hash or
	// signature mismatch).
	Fail Status = "fail"
	// Neutral: reserved; this verifier does not produce it today.
	Neutral Status = "neutral"
	// Policy: the signature verified (or would have been evaluated) but
	// local policy does not accept it: unsigned header stack, l= under the
	// "reject" setting, or a signature beyond MaxSignatures (not evaluated).
	Policy Status = "policy"
	// TempError: a key could not be fetched for a temporary reason.
	TempError Status = "temperror"
	// PermError: the signature or its key is unusable (syntax, missing
	// key, revoked key, refused algorithm, expired, ...).
	PermError Status = "permerror"
)

// StackFinding reports a header field name that occurs in the message more
// often than the signature's h= covers it, so some instances (the top ones,
// as h= selects from the bottom, RFC 6376 5.4.2) are unsigned.
type StackFinding struct {
	Field   string `json:"field"`   // lower-case name
	Present int    `json:"present"` // instances in the message
	Signed  int    `json:"signed"`  // instances covered by h=
}

// Result is the verification result of one DKIM-Signature field.
type Result struct {
	// Result is the outcome.
	Result Status `json:"result"`
	// Reason explains a result other than pass (and notes on a pass).
	Reason string `json:"reason,omitempty"`
	// Index is the position of the signature among the DKIM-Signature
	// fields, 0 for the topmost.
	Index int `json:"index"`
	// Domain is the d= tag, lower case (the SDID, RFC 6376 3.5).
	Domain string `json:"domain"`
	// Selector is the s= tag.
	Selector string `json:"selector"`
	// Algorithm is the a= tag ("rsa-sha256", "ed25519-sha256", ...).
	Algorithm string `json:"algorithm"`
	// KeyBits is the size of the key used: the RSA modulus in bits, 256 for
	// Ed25519; 0 when no key was obtained.
	KeyBits int `json:"key_bits,omitempty"`
	// Identity is the i= tag (the AUID), quoted-printable decoded
	// (RFC 6376 2.11); empty when absent, in which case the AUID is "@"
	// followed by Domain (RFC 6376 3.5).
	Identity string `json:"identity,omitempty"`
	// BHeader is the shortest prefix of the b= value, at least 8
	// characters, that tells this signature from the others in the message
	// (RFC 6008 header.b).
	BHeader string `json:"b_header,omitempty"`
	// Canonicalization is the c= tag as header/body ("relaxed/simple").
	Canonicalization string `json:"canonicalization,omitempty"`
	// SignedHeaders is the h= tag as written.
	SignedHeaders string `json:"signed_headers,omitempty"`
	// BodyLength is the l= tag, -1 when absent.
	BodyLength int64 `json:"body_length"`
	// PartialBody is true when l= covers less than the canonical body.
	PartialBody bool `json:"partial_body,omitempty"`
	// Timestamp and Expiration are the t= and x= tags in Unix seconds, 0
	// when absent.
	Timestamp  int64 `json:"timestamp,omitempty"`
	Expiration int64 `json:"expiration,omitempty"`
	// Testing is true when the key record has t=y (RFC 6376 3.6.1: the
	// domain is testing DKIM; the result is reported as computed).
	Testing bool `json:"testing,omitempty"`
	// UnsignedStack lists names signed in h= that occur in the message
	// more often than h= covers them.
	UnsignedStack []StackFinding `json:"unsigned_stack,omitempty"`
	// Oversigned lists names that h= lists more often than they occur
	// (good practice: it prevents adding such fields later).
	Oversigned []string `json:"oversigned,omitempty"`
	// Skipped is true for signatures beyond MaxSignatures, which are not
	// evaluated (Result is policy).
	Skipped bool `json:"skipped,omitempty"`
}

// MaxSignedHeaders bounds the entries of one h= tag (real signatures,
// oversigning included, list a few dozen); more is a permerror, which keeps
// header selection (quadratic in the list) cheap.
const MaxSignedHeaders = 512

// Default verifier bounds.
const (
	DefaultMaxSignatures = 5
	DefaultMinRSABits    = 1024
	DefaultMaxRSABits    = 8192
	DefaultClockSkew     = 5 * time.Minute
)

// Verifier checks DKIM signatures (RFC 6376 6.1). The zero value with Keys
// set is ready to use; other fields take the defaults documented on them.
// A Verifier is safe for concurrent use.
type Verifier struct {
	// Keys fetches and caches public keys.
	Keys *KeyFetcher
	// MaxSignatures bounds the signatures evaluated per message, topmost
	// first (default 5). Further signatures are reported with Skipped set
	// and result policy, and are never verified (no DNS, no crypto).
	MaxSignatures int
	// AllowSHA1 accepts rsa-sha1 signatures. RFC 8301 3.1 forbids that;
	// default false gives permerror.
	AllowSHA1 bool
	// MinRSABits and MaxRSABits bound RSA key sizes (defaults 1024 per
	// RFC 8301 3.2, and 8192); keys outside give permerror.
	MinRSABits int
	MaxRSABits int
	// BodyLength says what to do with the l= tag (RFC 6376 8.2): "reject"
	// (default) turns a signature that verifies into policy; "honour"
	// accepts it, reporting PartialBody when content follows the signed
	// part.
	BodyLength string
	// HeaderStack lists header names (lower case) for which unsigned
	// instances turn a passing signature into policy (see StackFinding).
	// nil means {"from": true}; an empty non-nil map disables the check.
	// Findings are reported in any case.
	HeaderStack map[string]bool
	// Now is the verification time for x= and t= (default time.Now); set
	// it to the arrival time to verify archived mail as of then.
	Now func() time.Time
	// ClockSkew is the allowance for t= in the future (default 5 minutes;
	// negative means none).
	ClockSkew time.Duration
	// Prefetch, when set, is called once a message, as soon as one key
	// has to come from DNS and before it is asked for, with the DNS names
	// (selector._domainkey.domain) of the keys of the later signatures
	// (those KeyQueries names after the current one) that Keys does not
	// hold, in the order Verify will need them. It should start those
	// lookups without waiting for them, so a message signed by two domains
	// seen for the first time waits one DNS round trip for its keys, not
	// two. A message whose first key is cached costs nothing more.
	Prefetch func(ctx context.Context, names []string)
}

var defaultStack = map[string]bool{"from": true}

// Verify evaluates the DKIM-Signature fields of m, topmost first, and
// returns one Result per field (nil when there is none or m is nil). At
// most MaxSignatures are verified (each costing at most one key lookup);
// the others are only described. The number of fields is bounded by the
// message parser's limits.
func (v *Verifier) Verify(ctx context.Context, m *message.Message) []Result {
	if m == nil {
		return nil
	}
	n := 0
	for i := range m.Fields {
		if m.Fields[i].Key == "dkim-signature" {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	st := statePool.Get().(*verifyState)
	defer st.release()
	st.v, st.m, st.now = v, m, time.Now
	if v.Now != nil {
		st.now = v.Now
	}
	st.at, _ = judgetime.From(ctx)
	maxSigs := v.MaxSignatures
	if maxSigs <= 0 {
		maxSigs = DefaultMaxSignatures
	}
	results := make([]Result, n)
	bvals := st.bvals[:0]
	if n > len(st.bvals) {
		bvals = make([]string, 0, n)
	}
	bvals = bvals[:n]
	k := 0
	for i := range m.Fields {
		f := &m.Fields[i]
		if f.Key != "dkim-signature" {
			continue
		}
		r := &results[k]
		r.Index = k
		r.BodyLength = -1
		if k >= maxSigs {
			r.Result = Policy
			r.Skipped = true
			r.Reason = fmt.Sprintf("not evaluated: signature %d is over the limit of %d per message", k+1, maxSigs)
			bvals[k] = st.describe(r, f)
		} else {
			st.sigsLeft = maxSigs - k - 1
			bvals[k] = st.verifyOne(ctx, r, i)
		}
		k++
	}
	setBHeaders(results, bvals)
	return results
}

// prefetchRest offers Prefetch the keys of the signatures after field fi
// that Verify will evaluate and Keys does not hold, but for the key about
// to be fetched (domain, selector). A method of its own so that verifyOne's
// tags do not escape into the closure.
func (st *verifyState) prefetchRest(ctx context.Context, fi int, domain, selector string) {
	st.prefetched = true
	v := st.v
	current := KeyName(domain, selector)
	var names []string
	v.keyQueries(st.m, fi+1, st.sigsLeft, func(d, s string) {
		name := KeyName(d, s)
		if name != current && !slices.Contains(names, name) && !v.Keys.Cached(d, s) {
			names = append(names, name)
		}
	})
	if len(names) > 0 {
		v.Prefetch(ctx, names)
	}
}

// KeyQueries calls fn with the domain and selector of each key [Verifier.Verify]
// would fetch for m, in the order it would fetch them: for each signature
// within MaxSignatures whose tags pass the checks made before a key is
// needed (RFC 6376 6.1.1), none of which involve DNS. Nothing is fetched.
// It is what Verify offers Prefetch, from the signature after the first
// key it has to look up.
func (v *Verifier) KeyQueries(m *message.Message, fn func(domain, selector string)) {
	if m == nil {
		return
	}
	maxSigs := v.MaxSignatures
	if maxSigs <= 0 {
		maxSigs = DefaultMaxSignatures
	}
	v.keyQueries(m, 0, maxSigs, fn)
}

// keyQueries is KeyQueries over at most n signatures in the fields from
// index from on.
func (v *Verifier) keyQueries(m *message.Message, from, n int, fn func(domain, selector string)) {
	if n <= 0 {
		return
	}
	st := statePool.Get().(*verifyState)
	defer st.release()
	st.v, st.m, st.now, st.keyQuery = v, m, time.Now, fn
	if v.Now != nil {
		st.now = v.Now
	}
	var r Result
	for i := from; i < len(m.Fields) && n > 0; i++ {
		if m.Fields[i].Key != "dkim-signature" {
			continue
		}
		r = Result{BodyLength: -1}
		st.verifyOne(context.Background(), &r, i)
		n--
	}
}

// describe fills the descriptive fields of a skipped signature and returns
// its b= value.
func (st *verifyState) describe(r *Result, f *message.Field) string {
	var sig sigTags
	if err := sig.parse(string(f.Value)); err != nil {
		return ""
	}
	r.Domain = lowerASCII(sig.d)
	r.Selector = sig.s
	r.Algorithm = sig.a
	r.SignedHeaders = sig.h
	return sig.b
}

// statePool recycles verifyState values (hashers and buffers): measured,
// it saves about 3 allocations and 2 KB per message.
var statePool = sync.Pool{New: func() any { return new(verifyState) }}

// release clears references to the message and returns st to the pool.
func (st *verifyState) release() {
	st.v, st.m, st.now, st.keyQuery, st.prefetched, st.at = nil, nil, nil, nil, false, time.Time{}
	st.nbody = 0
	st.bvals = [len(st.bvals)]string{}
	if cap(st.buf) > 64<<10 {
		st.buf = nil
	}
	statePool.Put(st)
}

// verifyState holds per-message scratch state shared by the signatures of
// one message.
type verifyState struct {
	v   *Verifier
	m   *message.Message
	now func() time.Time
	// at, when set, is the time to judge x= and t= as of instead of now
	// (judgetime: the message's arrival, for re-scoring).
	at time.Time
	// keyQuery, when set (keyQueries), is told the key a signature needs
	// instead of the key being fetched, and the signature goes no further.
	keyQuery func(domain, selector string)
	// prefetched: Prefetch has been offered the later signatures' keys.
	prefetched bool
	// sigsLeft is how many signatures after the current one Verify
	// evaluates (MaxSignatures less those before and the current one).
	sigsLeft int
	sha256   hash.Hash
	sha1     hash.Hash
	buf      []byte
	bodies   [DefaultMaxSignatures]bodyHashEntry
	nbody    int
	// Fixed buffers so that a typical message needs no further allocation.
	bvals  [8]string
	bh     [64]byte
	sig    [1024]byte // an 8192-bit RSA signature
	digest [64]byte
	hdrBuf [1024]byte
}

type bodyHashEntry struct {
	canon    Canonicalization
	h        crypto.Hash
	limit    int64
	sum      [sha256.Size]byte
	canonLen int64
}

// sigTags holds the tags of a DKIM-Signature (RFC 6376 3.5). Fields are
// substrings of one string.
type sigTags struct {
	v, a, b, bh, c, d, h, i, l, q, s, t, x string
	has                                    uint16
}

const (
	hasV = 1 << iota
	hasA
	hasB
	hasBH
	hasC
	hasD
	hasH
	hasI
	hasL
	hasQ
	hasS
	hasT
	hasX
)

func (sig *sigTags) parse(val string) error {
	var seen [maxTags]string
	it := tagIter{s: val}
	for n := 0; ; n++ {
		name, value, ok, err := it.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		if n >= maxTags {
			return errors.New("too many tags")
		}
		for _, prev := range seen[:n] {
			if prev == name {
				return fmt.Errorf("duplicate tag %q", name)
			}
		}
		seen[n] = name
		var dst *string
		var bit uint16
		switch name {
		case "v":
			dst, bit = &sig.v, hasV
		case "a":
			dst, bit = &sig.a, hasA
		case "b":
			dst, bit = &sig.b, hasB
		case "bh":
			dst, bit = &sig.bh, hasBH
		case "c":
			dst, bit = &sig.c, hasC
		case "d":
			dst, bit = &sig.d, hasD
		case "h":
			dst, bit = &sig.h, hasH
		case "i":
			dst, bit = &sig.i, hasI
		case "l":
			dst, bit = &sig.l, hasL
		case "q":
			dst, bit = &sig.q, hasQ
		case "s":
			dst, bit = &sig.s, hasS
		case "t":
			dst, bit = &sig.t, hasT
		case "x":
			dst, bit = &sig.x, hasX
		default:
			continue
		}
		*dst = value
		sig.has |= bit
	}
}

func permErr(r *Result, format string, args ...any) {
	r.Result = PermError
	r.Reason = fmt.Sprintf(format, args...)
}

// verifyOne verifies the signature in field fi and returns its b= value
// (FWS included) for header.b computation.
func (st *verifyState) verifyOne(ctx context.Context, r *Result, fi int) string {
	v := st.v
	f := &st.m.Fields[fi]
	var sig sigTags
	if err := sig.parse(string(f.Value)); err != nil {
		permErr(r, "malformed signature: %v", err)
		return ""
	}
	r.Domain = lowerASCII(sig.d)
	r.Selector = sig.s
	r.Algorithm = sig.a
	r.SignedHeaders = sig.h
	for _, req := range [...]struct {
		bit  uint16
		name string
	}{{hasV, "v"}, {hasA, "a"}, {hasB, "b"}, {hasBH, "bh"}, {hasD, "d"}, {hasH, "h"}, {hasS, "s"}} {
		if sig.has&req.bit == 0 {
			permErr(r, "signature missing required tag %s=", req.name)
			return sig.b
		}
	}
	if sig.v != "1" {
		permErr(r, "incompatible signature version v=%s", sig.v)
		return sig.b
	}
	// Algorithm (RFC 6376 3.3, RFC 8301, RFC 8463).
	var hashAlg crypto.Hash
	var keyType, hashName string
	switch sig.a {
	case "rsa-sha256":
		hashAlg, keyType, hashName = crypto.SHA256, "rsa", "sha256"
	case "ed25519-sha256":
		hashAlg, keyType, hashName = crypto.SHA256, "ed25519", "sha256"
	case "rsa-sha1":
		if !v.AllowSHA1 {
			permErr(r, "rsa-sha1 is not accepted (RFC 8301 3.1)")
			return sig.b
		}
		hashAlg, keyType, hashName = crypto.SHA1, "rsa", "sha1"
	default:
		permErr(r, "unsupported algorithm a=%s", sig.a)
		return sig.b
	}
	// Canonicalization (RFC 6376 3.5 c=).
	hc, bc := Simple, Simple
	if sig.has&hasC != 0 {
		hs, bs, two := strings.Cut(sig.c, "/")
		var ok1, ok2 bool
		hc, ok1 = parseCanon(hs)
		bc, ok2 = Simple, true
		if two {
			bc, ok2 = parseCanon(bs)
		}
		if !ok1 || !ok2 {
			permErr(r, "unsupported canonicalization c=%s", sig.c)
			return sig.b
		}
		r.Canonicalization = sig.c
	} else {
		r.Canonicalization = "simple/simple"
	}
	if two := strings.IndexByte(r.Canonicalization, '/'); two < 0 {
		r.Canonicalization = string(hc) + "/" + string(bc)
	}
	if !validDomain(r.Domain) {
		permErr(r, "invalid d=%q", sig.d)
		return sig.b
	}
	if !validDomain(sig.s) {
		permErr(r, "invalid s=%q", sig.s)
		return sig.b
	}
	if n := strings.Count(sig.h, ":") + 1; n > MaxSignedHeaders {
		permErr(r, "h= lists %d fields, over the limit of %d", n, MaxSignedHeaders)
		return sig.b
	}
	if !listHas(sig.h, "from") {
		permErr(r, "From field not signed (h= lacks from)")
		return sig.b
	}
	// AUID (i=) must be d= or a subdomain of it (RFC 6376 3.5).
	auidDomain := r.Domain
	if sig.has&hasI != 0 {
		auid, ok := decodeQP(sig.i)
		at := strings.LastIndexByte(auid, '@')
		if !ok || at < 0 {
			permErr(r, "malformed i=%q", sig.i)
			return sig.b
		}
		r.Identity = auid
		auidDomain = lowerASCII(auid[at+1:])
		if auidDomain != r.Domain && !strings.HasSuffix(auidDomain, "."+r.Domain) {
			permErr(r, "i= domain %q is not within d=%s", auidDomain, r.Domain)
			return sig.b
		}
	}
	// Query method (3.5 q=): only dns/txt.
	if sig.has&hasQ != 0 && !queryDNSTXT(sig.q) {
		permErr(r, "unsupported query method q=%s", sig.q)
		return sig.b
	}
	// Body length (3.5 l=).
	if sig.has&hasL != 0 {
		l, ok := parseDecimal(sig.l)
		if !ok {
			permErr(r, "malformed l=%q", sig.l)
			return sig.b
		}
		r.BodyLength = l
	}
	// Timestamps.
	if sig.has&hasT != 0 {
		t, ok := parseDecimal(sig.t)
		if !ok {
			permErr(r, "malformed t=%q", sig.t)
			return sig.b
		}
		r.Timestamp = t
	}
	if sig.has&hasX != 0 {
		x, ok := parseDecimal(sig.x)
		if !ok {
			permErr(r, "malformed x=%q", sig.x)
			return sig.b
		}
		r.Expiration = x
		if sig.has&hasT != 0 && x < r.Timestamp {
			permErr(r, "x= is before t=")
			return sig.b
		}
	}
	now := st.at
	if now.IsZero() {
		now = st.now()
	}
	if r.Expiration != 0 && now.Unix() > r.Expiration {
		permErr(r, "signature expired at %s", time.Unix(r.Expiration, 0).UTC().Format(time.RFC3339))
		return sig.b
	}
	if r.Timestamp != 0 {
		skew := v.ClockSkew
		if skew == 0 {
			skew = DefaultClockSkew
		} else if skew < 0 {
			skew = 0
		}
		if time.Unix(r.Timestamp, 0).After(now.Add(skew)) {
			permErr(r, "signature timestamp %s is in the future", time.Unix(r.Timestamp, 0).UTC().Format(time.RFC3339))
			return sig.b
		}
	}
	bh, err := appendBase64(st.bh[:0], sig.bh)
	if err != nil || len(bh) != hashAlg.Size() {
		permErr(r, "malformed bh=")
		return sig.b
	}
	sigBytes, err := appendBase64(st.sig[:0], sig.b)
	if err != nil || len(sigBytes) == 0 {
		permErr(r, "malformed b=")
		return sig.b
	}
	st.stackCheck(r, sig.h)

	// Key (RFC 6376 6.1.2).
	if st.keyQuery != nil {
		st.keyQuery(r.Domain, sig.s)
		return sig.b
	}
	if v.Keys == nil {
		r.Result, r.Reason = TempError, "no key fetcher configured"
		return sig.b
	}
	var onMiss func()
	if v.Prefetch != nil && !st.prefetched {
		domain, selector := r.Domain, sig.s // not sig: the closure would move it to the heap
		onMiss = func() { st.prefetchRest(ctx, fi, domain, selector) }
	}
	key, err := v.Keys.FetchOnMiss(ctx, r.Domain, sig.s, onMiss)
	if err != nil {
		var ke *KeyError
		if errors.As(err, &ke) && ke.Temp {
			r.Result = TempError
		} else {
			r.Result = PermError
		}
		r.Reason = err.Error()
		return sig.b
	}
	if key.Revoked {
		permErr(r, "key revoked (empty p=)")
		return sig.b
	}
	r.KeyBits = key.Bits
	r.Testing = key.HasFlag("y")
	if key.Algorithm != keyType {
		permErr(r, "key type k=%s does not match a=%s", key.Algorithm, sig.a)
		return sig.b
	}
	if !key.AllowsHash(hashName) {
		permErr(r, "key h= does not allow %s", hashName)
		return sig.b
	}
	if !key.AllowsEmail() {
		permErr(r, "key s= does not allow email")
		return sig.b
	}
	if key.HasFlag("s") && auidDomain != r.Domain {
		permErr(r, "key t=s requires i= domain %q to equal d=%s", auidDomain, r.Domain)
		return sig.b
	}
	if key.Algorithm == "rsa" {
		minBits, maxBits := v.MinRSABits, v.MaxRSABits
		if minBits <= 0 {
			minBits = DefaultMinRSABits
		}
		if maxBits <= 0 {
			maxBits = DefaultMaxRSABits
		}
		if key.Bits < minBits {
			permErr(r, "RSA key of %d bits is under %d (RFC 8301 3.2)", key.Bits, minBits)
			return sig.b
		}
		if key.Bits > maxBits {
			permErr(r, "RSA key of %d bits is over %d", key.Bits, maxBits)
			return sig.b
		}
	}

	// Body hash (RFC 6376 3.7, 6.1.3).
	sum, canonLen := st.bodyHash(bc, hashAlg, r.BodyLength)
	if r.BodyLength >= 0 {
		if r.BodyLength > canonLen {
			r.Result, r.Reason = Fail, fmt.Sprintf("l=%d exceeds the canonical body length %d", r.BodyLength, canonLen)
			return sig.b
		}
		r.PartialBody = r.BodyLength < canonLen
	}
	if subtle.ConstantTimeCompare(sum, bh) != 1 {
		r.Result, r.Reason = Fail, "body hash did not verify"
		return sig.b
	}

	// Header hash (RFC 6376 3.7, 5.4.2).
	hh := st.hasher(hashAlg)
	st.hashHeaders(hh, fi, sig.h, hc)
	digest := hh.Sum(st.digest[:0])
	if err := VerifySignature(key, sig.a, digest, sigBytes); err != nil {
		r.Result, r.Reason = Fail, "signature did not verify"
		if !errors.Is(err, rsa.ErrVerification) && !errors.Is(err, errEd25519) {
			r.Reason += ": " + err.Error()
		}
		return sig.b
	}
	r.Result = Pass
	if r.BodyLength >= 0 && v.BodyLength != "honour" {
		r.Result = Policy
		r.Reason = fmt.Sprintf("signature verified but l=%d is refused by local policy", r.BodyLength)
		return sig.b
	}
	stack := v.HeaderStack
	if stack == nil {
		stack = defaultStack
	}
	for _, sf := range r.UnsignedStack {
		if stack[sf.Field] {
			r.Result = Policy
			r.Reason = fmt.Sprintf("signature verified but %d %s fields are present and h= signs %d", sf.Present, sf.Field, sf.Signed)
			return sig.b
		}
	}
	if r.Testing {
		r.Reason = "key in testing mode (t=y)"
	}
	return sig.b
}

var errEd25519 = errors.New("dkim: ed25519 signature did not verify")

// decodeQP decodes dkim-quoted-printable (RFC 6376 2.11), used by i=:
// "=XX" is the octet with hex value XX; FWS is removed. The input is
// returned as is (no allocation) when it has neither.
func decodeQP(s string) (string, bool) {
	if !strings.ContainsAny(s, "= \t\r\n") {
		return s, true
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isFWSByte(c):
		case c == '=':
			if i+2 >= len(s) || unhex(s[i+1]) < 0 || unhex(s[i+2]) < 0 {
				return "", false
			}
			out = append(out, byte(unhex(s[i+1])<<4|unhex(s[i+2])))
			i += 2
		default:
			out = append(out, c)
		}
	}
	return string(out), true
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	}
	return -1
}

func parseCanon(s string) (Canonicalization, bool) {
	switch s {
	case "simple":
		return Simple, true
	case "relaxed":
		return Relaxed, true
	}
	return "", false
}

func queryDNSTXT(q string) bool {
	for q != "" {
		el, rest, _ := strings.Cut(q, ":")
		el = trimFWS(el)
		if el == "dns/txt" || el == "dns" {
			return true
		}
		q = rest
	}
	return false
}

// parseDecimal parses 1*76DIGIT (RFC 6376 3.5 l=, t=, x=), clamping values
// beyond int64 to the maximum.
func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 76 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 1<<63 - 1, true
	}
	return n, true
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// validDomain checks the shape of d= and s= values: non-empty dot-separated
// labels of letters, digits, "-" and "_" (or UTF-8, RFC 8616), no FWS.
func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case isAlpha(c) || isDigit(c) || c == '-' || c == '_' || c >= 0x80:
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// listHas reports whether the colon-separated list has name
// (case-insensitively).
func listHas(list, name string) bool {
	for list != "" {
		el, rest, _ := strings.Cut(list, ":")
		if asciiEqualFold(trimFWS(el), name) {
			return true
		}
		list = rest
	}
	return false
}

// stackCheck compares, for each distinct name in h=, how often it occurs
// in the message and how often h= lists it.
func (st *verifyState) stackCheck(r *Result, h string) {
	for pos := 0; pos <= len(h); {
		end := strings.IndexByte(h[pos:], ':')
		if end < 0 {
			end = len(h)
		} else {
			end += pos
		}
		name := trimFWS(h[pos:end])
		prior := h[:pos]
		pos = end + 1
		if name == "" || countList(prior, name) > 0 {
			continue
		}
		signed := countList(h, name)
		present := 0
		for i := range st.m.Fields {
			if asciiEqualFold(st.m.Fields[i].Key, name) {
				present++
			}
		}
		// Lower-cased only for a finding: signers list names as the
		// message spells them ("From:To:Subject"), and most messages
		// have no finding.
		switch {
		case present > signed:
			r.UnsignedStack = append(r.UnsignedStack, StackFinding{Field: lowerASCII(name), Present: present, Signed: signed})
		case signed > present:
			r.Oversigned = append(r.Oversigned, lowerASCII(name))
		}
	}
}

// countList counts the elements of the colon-separated list equal to name
// (case-insensitively).
func countList(list, name string) int {
	n := 0
	for list != "" {
		el, rest, _ := strings.Cut(list, ":")
		if asciiEqualFold(trimFWS(el), name) {
			n++
		}
		list = rest
	}
	return n
}

// bodyHash returns the body hash for the parameters, computing it once per
// message.
func (st *verifyState) bodyHash(c Canonicalization, h crypto.Hash, limit int64) ([]byte, int64) {
	for i := 0; i < st.nbody; i++ {
		e := &st.bodies[i]
		if e.canon == c && e.h == h && e.limit == limit {
			return e.sum[:h.Size()], e.canonLen
		}
	}
	hh := st.hasher(h)
	canonLen := hashBody(hh, st.m.Body, c, limit)
	slot := st.nbody
	if slot >= len(st.bodies) {
		slot = len(st.bodies) - 1 // cannot happen with MaxSignatures <= 5 distinct
	} else {
		st.nbody++
	}
	e := &st.bodies[slot]
	e.canon, e.h, e.limit, e.canonLen = c, h, limit, canonLen
	hh.Sum(e.sum[:0])
	return e.sum[:h.Size()], canonLen
}

func (st *verifyState) hasher(h crypto.Hash) hash.Hash {
	if h == crypto.SHA1 {
		if st.sha1 == nil {
			st.sha1 = sha1.New()
		} else {
			st.sha1.Reset()
		}
		return st.sha1
	}
	if st.sha256 == nil {
		st.sha256 = sha256.New()
	} else {
		st.sha256.Reset()
	}
	return st.sha256
}

// hashHeaders hashes the header part of the signature in field sigField
// (see HashHeaders), reusing the state's buffer.
func (st *verifyState) hashHeaders(hh hash.Hash, sigField int, h string, c Canonicalization) {
	buf := st.buf
	if buf == nil {
		buf = st.hdrBuf[:0]
	}
	st.buf = appendHeaderHash(hh, buf, st.m.Fields, h, c, st.m.Fields[sigField].Raw)
}

// HashHeaders writes to hh the header input of a DKIM-style signature
// (RFC 6376 3.7): the fields named by the colon-separated list h, each
// name taking the bottom-most instance not yet used (5.4.2; names with no
// instance left contribute nothing), canonicalised with c, followed by the
// signature field sigRaw (a raw field ending in CRLF) with its b= value
// emptied and without its final CRLF. ARC-Message-Signature (RFC 8617
// 4.1.2) uses the same procedure.
func HashHeaders(hh hash.Hash, fields []message.Field, h string, c Canonicalization, sigRaw []byte) {
	var buf [1024]byte
	appendHeaderHash(hh, buf[:0], fields, h, c, sigRaw)
}

// appendHeaderHash implements HashHeaders with buf as scratch space and
// returns the (possibly grown) buffer for reuse.
func appendHeaderHash(hh hash.Hash, buf []byte, fields []message.Field, h string, c Canonicalization, sigRaw []byte) []byte {
	buf = buf[:0]
	for pos := 0; pos <= len(h); {
		end := strings.IndexByte(h[pos:], ':')
		if end < 0 {
			end = len(h)
		} else {
			end += pos
		}
		name := trimFWS(h[pos:end])
		used := 0
		if name != "" {
			used = countList(h[:pos], name) // instances taken by earlier entries
		}
		pos = end + 1
		if name == "" {
			continue
		}
		for i := len(fields) - 1; i >= 0; i-- {
			if !asciiEqualFold(fields[i].Key, name) {
				continue
			}
			if used > 0 {
				used--
				continue
			}
			if c == Simple {
				hh.Write(fields[i].Raw)
			} else {
				buf = CanonicalizeHeader(buf[:0], fields[i].Raw, c)
				hh.Write(buf)
			}
			break
		}
	}
	buf = appendStripped(buf[:0], sigRaw)
	n := len(buf)
	buf = CanonicalizeHeader(buf, buf[:n], c)
	out := buf[n:]
	if len(out) >= 2 {
		out = out[:len(out)-2]
	}
	hh.Write(out)
	return buf
}

// VerifySignature checks sig over digest (the header hash of RFC 6376 3.7)
// with key for the signing algorithm ("rsa-sha256", "rsa-sha1",
// "ed25519-sha256"). For RSA it is RSASSA-PKCS1-v1_5 (RFC 8017 8.2.2); for
// Ed25519 PureEdDSA over the SHA-256 digest (RFC 8463 3). It does not apply
// policy (key sizes, sha1); the Verifier does.
func VerifySignature(key *PublicKey, algorithm string, digest []byte, sig []byte) error {
	if key == nil {
		return errors.New("dkim: no key")
	}
	switch algorithm {
	case "rsa-sha256", "rsa-sha1":
		if key.Algorithm != "rsa" || key.RSA == nil {
			return fmt.Errorf("dkim: %s signature with a %s key", algorithm, key.Algorithm)
		}
		h := crypto.SHA256
		if algorithm == "rsa-sha1" {
			h = crypto.SHA1
		}
		c := key.rsaCtx
		if c == nil || c.n != key.RSA.N || c.e != key.RSA.E {
			if key.RSA.N.Sign() <= 0 || key.RSA.N.BitLen() > 16384 {
				return errors.New("dkim: unusable RSA modulus")
			}
			c = newRSACtx(key.RSA)
		}
		return c.verifyPKCS1v15(h, digest, sig)
	case "ed25519-sha256":
		if key.Algorithm != "ed25519" || len(key.Ed25519) != ed25519.PublicKeySize {
			return fmt.Errorf("dkim: %s signature with a %s key", algorithm, key.Algorithm)
		}
		if !ed25519.Verify(key.Ed25519, digest, sig) {
			return errEd25519
		}
		return nil
	}
	return fmt.Errorf("dkim: unsupported algorithm %q", algorithm)
}

// maxBHeaderPeers bounds how many other signatures each header.b prefix
// is made unique against.
const maxBHeaderPeers = 64

// setBHeaders fills BHeader: the shortest prefix (at least 8 characters)
// of each b= value, FWS removed, that no other signature shares (RFC 6008).
func setBHeaders(results []Result, bvals []string) {
	for i := range results {
		b := bvals[i]
		total := fwsFreeLen(b)
		if total == 0 {
			continue
		}
		n := min(8, total)
		for j := range bvals {
			if j >= maxBHeaderPeers {
				break // bound the O(n²) comparison for messages with many signatures
			}
			if j == i || bvals[j] == "" {
				continue
			}
			if c := commonFWSFreePrefix(b, bvals[j]); c >= n {
				n = min(c+1, total)
			}
		}
		results[i].BHeader = fwsFreePrefix(b, n)
	}
}

func fwsFreeLen(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if !isFWSByte(s[i]) {
			n++
		}
	}
	return n
}

// commonFWSFreePrefix returns how many leading non-FWS characters a and b
// share.
func commonFWSFreePrefix(a, b string) int {
	i, j, n := 0, 0, 0
	for {
		for i < len(a) && isFWSByte(a[i]) {
			i++
		}
		for j < len(b) && isFWSByte(b[j]) {
			j++
		}
		if i == len(a) || j == len(b) || a[i] != b[j] {
			return n
		}
		i++
		j++
		n++
	}
}

// fwsFreePrefix returns the first n non-FWS characters of s, as a
// substring when they are contiguous.
func fwsFreePrefix(s string, n int) string {
	i := 0
	for i < len(s) && isFWSByte(s[i]) {
		i++
	}
	j, k := i, 0
	for j < len(s) && k < n && !isFWSByte(s[j]) {
		j++
		k++
	}
	if k == n {
		return s[i:j]
	}
	out := make([]byte, 0, n)
	for ; i < len(s) && len(out) < n; i++ {
		if !isFWSByte(s[i]) {
			out = append(out, s[i])
		}
	}
	return string(out)
}
