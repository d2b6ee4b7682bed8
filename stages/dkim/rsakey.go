package dkim

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// parseRSAPublicKey parses the p= value of an RSA key record (RFC 6376
// 3.6.1): a DER SubjectPublicKeyInfo (RFC 5280 4.1.2.7, the form RFC 6376
// specifies) or, as many publishers write it, a bare PKCS #1 RSAPublicKey
// (RFC 8017 A.1.1).
//
// The common form, an rsaEncryption SubjectPublicKeyInfo with NULL
// parameters, is read directly with cryptobyte: x509.ParsePKIXPublicKey
// decodes the outer structure with reflection-driven encoding/asn1 (2048
// bits: 1.3–1.9 µs against 0.4–0.6 µs, BenchmarkParseKeyRecord/spki-*).
// Anything else, and anything the direct reader does not accept exactly,
// goes to the x509 parsers, so the accepted keys and the errors are the
// x509 ones (FuzzParseRSAPublicKey holds the direct reader to that).
func parseRSAPublicKey(der []byte) (*rsa.PublicKey, error) {
	if k := parseRSASPKI(der); k != nil {
		return k, nil
	}
	return parseRSAPublicKeyX509(der)
}

// parseRSAPublicKeyX509 is the general path: SubjectPublicKeyInfo of any
// form through x509, then PKCS #1.
func parseRSAPublicKeyX509(der []byte) (*rsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		pk, err2 := x509.ParsePKCS1PublicKey(der)
		if err2 != nil {
			return nil, err
		}
		return pk, nil
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("k=rsa but p= holds a %T", pub)
	}
	return rk, nil
}

// oidRSAEncryption is rsaEncryption (RFC 8017 A.1).
var oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}

// parseRSASPKI returns the key of an rsaEncryption SubjectPublicKeyInfo
// with NULL parameters and nothing after it, or nil for any other input.
// It accepts exactly what x509.ParsePKIXPublicKey accepts for such input,
// with the same N and E; it never rejects: callers fall back to x509.
func parseRSASPKI(der []byte) *rsa.PublicKey {
	in := cryptobyte.String(der)
	var spki, alg, params cryptobyte.String
	var oid asn1.ObjectIdentifier
	var bitString asn1.BitString
	if !in.ReadASN1(&spki, cbasn1.SEQUENCE) || !in.Empty() ||
		!spki.ReadASN1(&alg, cbasn1.SEQUENCE) ||
		!alg.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidRSAEncryption) ||
		!alg.ReadASN1(&params, cbasn1.NULL) || !params.Empty() || !alg.Empty() ||
		!spki.ReadASN1BitString(&bitString) || !spki.Empty() ||
		bitString.BitLength%8 != 0 {
		return nil
	}
	// As x509: the RSAPublicKey SEQUENCE, its modulus and exponent; bytes
	// after them are not examined.
	key := cryptobyte.String(bitString.Bytes)
	var seq cryptobyte.String
	n := new(big.Int)
	var e int
	if !key.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1Integer(n) || !seq.ReadASN1Integer(&e) ||
		n.Sign() <= 0 || e <= 0 {
		return nil
	}
	return &rsa.PublicKey{N: n, E: e}
}
