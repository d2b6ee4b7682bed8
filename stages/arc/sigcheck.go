package arc

import (
	"errors"
	"fmt"
	"strings"

	"github.com/authpipe/authpipe/stages/dkim"
)

// checkSignature applies the key policy of RFC 6376 3.6.1 and RFC 8301 3.2
// (revoked key, s= service types, h= hash algorithms, key type matching
// a=, RSA modulus between minBits and maxBits) and then verifies sig over
// digest with dkim.VerifySignature.
func checkSignature(key *dkim.PublicKey, alg string, digest, sig []byte, minBits, maxBits int) error {
	if key.Revoked {
		return errors.New("key revoked")
	}
	if !key.AllowsEmail() {
		return errors.New("key s= does not allow email")
	}
	keyType, hashName, _ := strings.Cut(alg, "-")
	if !key.AllowsHash(hashName) {
		return fmt.Errorf("key h= does not allow %s", hashName)
	}
	if keyType != key.Algorithm {
		return fmt.Errorf("%s key for a=%s", key.Algorithm, alg)
	}
	if keyType == "rsa" && (key.Bits < minBits || key.Bits > maxBits) {
		return fmt.Errorf("RSA key of %d bits, outside %d-%d (RFC 8301 3.2)", key.Bits, minBits, maxBits)
	}
	if err := dkim.VerifySignature(key, alg, digest, sig); err != nil {
		return fmt.Errorf("signature did not verify: %w", err)
	}
	return nil
}
