package dkim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"testing"
)

// FuzzParseRSAPublicKey holds the direct SubjectPublicKeyInfo reader to
// x509: whatever it accepts, x509.ParsePKIXPublicKey accepts too, as an RSA
// key with the same modulus and exponent. Whatever it declines goes to
// that x509 path (parseRSAPublicKeyX509, the former code) unchanged.
func FuzzParseRSAPublicKey(f *testing.F) {
	for _, bits := range []int{1024, 2048} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			f.Fatal(err)
		}
		spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		f.Add(spki)
		f.Add(x509.MarshalPKCS1PublicKey(&k.PublicKey))
		f.Add(append(spki[:len(spki):len(spki)], 0))   // trailing byte
		f.Add(append([]byte{}, spki[:len(spki)-1]...)) // truncated
		withParams := append([]byte{}, spki...)        // parameters not NULL
		withParams[17] = 0x04
		f.Add(withParams)
	}
	for _, s := range []string{rsaKeyText, edKeyText} {
		k, err := ParseKeyRecord(s)
		if err == nil && k.RSA != nil {
			spki, _ := x509.MarshalPKIXPublicKey(k.RSA)
			f.Add(spki)
		}
	}
	ed, _ := base64.StdEncoding.DecodeString("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
	f.Add(ed) // an Ed25519 SubjectPublicKeyInfo: k=rsa with another key type
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		if k := parseRSASPKI(der); k != nil {
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatalf("direct reader accepts what x509 rejects (%v)", err)
			}
			rk, ok := pub.(*rsa.PublicKey)
			if !ok || rk.N.Cmp(k.N) != 0 || rk.E != k.E {
				t.Fatalf("direct reader: N=%x E=%d; x509: %#v", k.N, k.E, pub)
			}
		}
	})
}

// BenchmarkParseKeyRecord is the cost of a 2048-bit key fetched cold:
// "record" is the whole of ParseKeyRecord (tag list, base64, key, RSA
// set-up); "spki-direct" and "spki-x509" the SubjectPublicKeyInfo read
// directly and through x509; "rsa-setup" the Montgomery constants.
func BenchmarkParseKeyRecord(b *testing.B) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	rec := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(spki)
	for _, bc := range []struct {
		name string
		fn   func() error
	}{
		{"record", func() error { _, err := ParseKeyRecord(rec); return err }},
		{"spki-direct", func() error { _, err := parseRSAPublicKey(spki); return err }},
		{"spki-x509", func() error { _, err := parseRSAPublicKeyX509(spki); return err }},
		{"rsa-setup", func() error { newRSACtx(&k.PublicKey); return nil }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
