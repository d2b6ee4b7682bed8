package dkim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"math/big"
	"testing"
)

func TestRSAVerifyMatchesStdlib(t *testing.T) {
	testKeys(t)
	keys := []*rsa.PrivateKey{rsaKey}
	for _, bits := range []int{1024, 1025, 1536} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		c := newRSACtx(&k.PublicKey)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA1} {
			var d []byte
			if h == crypto.SHA256 {
				s := sha256.Sum256([]byte("msg"))
				d = s[:]
			} else {
				s := sha1.Sum([]byte("msg"))
				d = s[:]
			}
			sig, err := rsa.SignPKCS1v15(rand.Reader, k, h, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.verifyPKCS1v15(h, d, sig); err != nil {
				t.Errorf("%d bits %v: %v", k.N.BitLen(), h, err)
			}
			// Every single-bit flip fails, like the stdlib.
			for i := 0; i < len(sig)*8; i += 13 {
				bad := append([]byte(nil), sig...)
				bad[i/8] ^= 1 << (i % 8)
				ours := c.verifyPKCS1v15(h, d, bad)
				std := rsa.VerifyPKCS1v15(&k.PublicKey, h, d, bad)
				if (ours == nil) != (std == nil) || ours == nil {
					t.Fatalf("bit %d: ours %v std %v", i, ours, std)
				}
			}
			if err := c.verifyPKCS1v15(h, d[:len(d)-1], sig); err == nil {
				t.Error("short digest accepted")
			}
			if err := c.verifyPKCS1v15(h, d, sig[1:]); !errors.Is(err, rsa.ErrVerification) {
				t.Error("short signature accepted")
			}
			nb := k.N.FillBytes(make([]byte, len(sig)))
			if err := c.verifyPKCS1v15(h, d, nb); err == nil {
				t.Error("s = n accepted")
			}
		}
	}
}

// TestRSAPow checks the Barrett exponentiation against math/big for
// other public exponents (e=3 keys still exist in DNS).
func TestRSAPow(t *testing.T) {
	testKeys(t)
	for _, e := range []int{3, 17, 65537, 1<<31 - 1} {
		c := newRSACtx(&rsa.PublicKey{N: rsaKey.N, E: e})
		for i := 0; i < 20; i++ {
			s, _ := rand.Int(rand.Reader, rsaKey.N)
			var x, tt, u big.Int
			got := c.pow(s, &x, &tt, &u)
			want := new(big.Int).Exp(s, big.NewInt(int64(e)), rsaKey.N)
			if got.Cmp(want) != 0 {
				t.Fatalf("e=%d: mismatch", e)
			}
		}
	}
}

// FuzzRSAVerify compares the Barrett verifier with crypto/rsa on
// signatures derived from a valid one.
func FuzzRSAVerify(f *testing.F) {
	testKeys(f)
	d := sha256.Sum256([]byte("fuzz"))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, d[:])
	f.Add(sig, uint16(0), byte(0))
	f.Add(sig, uint16(5), byte(1))
	f.Add([]byte{1, 2, 3}, uint16(0), byte(0))
	c := newRSACtx(&rsaKey.PublicKey)
	f.Fuzz(func(t *testing.T, s []byte, pos uint16, x byte) {
		s = append([]byte(nil), s...)
		if len(s) > 0 {
			s[int(pos)%len(s)] ^= x
		}
		ours := c.verifyPKCS1v15(crypto.SHA256, d[:], s)
		std := rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, d[:], s)
		if (ours == nil) != (std == nil) {
			t.Fatalf("ours %v std %v", ours, std)
		}
	})
}

func BenchmarkRSAVerifyBarrett(b *testing.B) {
	testKeys(b)
	d := sha256.Sum256([]byte("x"))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, d[:])
	c := newRSACtx(&rsaKey.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		if c.verifyPKCS1v15(crypto.SHA256, d[:], sig) != nil {
			b.Fatal()
		}
	}
}

func BenchmarkRSAVerifyStdlib(b *testing.B) {
	testKeys(b)
	d := sha256.Sum256([]byte("x"))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, d[:])
	b.ReportAllocs()
	for b.Loop() {
		if rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, d[:], sig) != nil {
			b.Fatal()
		}
	}
}

// TestRSAPowKeySizes checks the exponentiation and a verification for
// moduli of 1024 to 4096 bits, including sizes that are not a multiple of
// the word size.
func TestRSAPowKeySizes(t *testing.T) {
	for _, bits := range []int{1024, 1536, 2000, 3072, 4096} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		c := newRSACtx(&k.PublicKey)
		for range 5 {
			s, _ := rand.Int(rand.Reader, k.N)
			var x, tt, u big.Int
			got := c.pow(s, &x, &tt, &u)
			if want := new(big.Int).Exp(s, big.NewInt(int64(k.E)), k.N); got.Cmp(want) != 0 {
				t.Fatalf("%d bits: mismatch", bits)
			}
		}
		d := sha256.Sum256([]byte("sizes"))
		sig, _ := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
		if err := c.verifyPKCS1v15(crypto.SHA256, d[:], sig); err != nil {
			t.Fatalf("%d bits: %v", bits, err)
		}
	}
}
