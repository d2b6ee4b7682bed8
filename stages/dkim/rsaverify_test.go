package dkim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"slices"
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

// rsaPaths runs f for the exponentiation used on this machine and, if
// that is the Montgomery one, for the Barrett fallback too (useMont is
// read by newRSACtx).
func rsaPaths(t *testing.T, f func(t *testing.T)) {
	t.Run(fmt.Sprintf("mont=%v", useMont), f)
	if useMont {
		useMont = false
		defer func() { useMont = true }()
		t.Run("mont=false", f)
	}
}

// TestRSAPow checks the exponentiation against math/big for other public
// exponents (e=3 keys still exist in DNS), even ones, and an even modulus.
func TestRSAPow(t *testing.T) {
	testKeys(t)
	rsaPaths(t, func(t *testing.T) {
		even := new(big.Int).Sub(rsaKey.N, big.NewInt(1))
		for _, n := range []*big.Int{rsaKey.N, even} {
			for _, e := range []int{2, 3, 17, 65537, 65538, 1<<31 - 1} {
				c := newRSACtx(&rsa.PublicKey{N: n, E: e})
				if (c.nw != nil) != (useMont && n.Bit(0) == 1) {
					t.Fatalf("Montgomery used: %v", c.nw != nil)
				}
				for i := 0; i < 20; i++ {
					s, _ := rand.Int(rand.Reader, n)
					switch i {
					case 0:
						s.SetInt64(0)
					case 1:
						s.SetInt64(1)
					case 2:
						s.Sub(n, big.NewInt(1))
					}
					got := c.pow(s, new(rsaScratch))
					want := new(big.Int).Exp(s, big.NewInt(int64(e)), n)
					if got.Cmp(want) != 0 {
						t.Fatalf("e=%d even=%v: mismatch", e, n == even)
					}
				}
			}
		}
	})
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

// BenchmarkRSAVerify measures verifyPKCS1v15 as used on this machine.
func BenchmarkRSAVerify(b *testing.B) {
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

// BenchmarkRSAVerifyBarrett measures the Barrett fallback.
func BenchmarkRSAVerifyBarrett(b *testing.B) {
	testKeys(b)
	saved := useMont
	useMont = false
	defer func() { useMont = saved }()
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
	var keys []*rsa.PrivateKey
	for _, bits := range []int{1024, 1536, 2000, 3072, 4096} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	rsaPaths(t, func(t *testing.T) {
		for _, k := range keys {
			bits := k.N.BitLen()
			c := newRSACtx(&k.PublicKey)
			sc := new(rsaScratch)
			for range 5 {
				s, _ := rand.Int(rand.Reader, k.N)
				got := c.pow(s, sc)
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
	})
}

// montRedcRef checks z against t·R⁻¹ mod n computed with math/big.
func montRedcRef(t *testing.T, what string, z, tw, nw []big.Word) {
	t.Helper()
	if len(nw) == 0 {
		return
	}
	n := new(big.Int).SetBits(slices.Clone(nw))
	tv := new(big.Int).SetBits(slices.Clone(tw))
	r := new(big.Int).Lsh(big.NewInt(1), uint(_W*len(nw)))
	want := tv.Mul(tv, r.ModInverse(r, n))
	want.Mod(want, n)
	if got := new(big.Int).SetBits(slices.Clone(z)); got.Cmp(want) != 0 {
		t.Fatalf("%s len %d: n=%x t=%x: got %x want %x", what, len(nw), n, tv, got, want)
	}
}

// TestMontRedc checks the Montgomery reduction, the one in use and the
// Go one, against math/big for moduli of 0 to 70 words, random and
// extreme (words of all ones, all zeros, top word 1), and inputs up to
// n·R-1.
func TestMontRedc(t *testing.T) {
	max := func(l int) *big.Int { // 2^(_W·l)
		return new(big.Int).Lsh(big.NewInt(1), uint(_W*l))
	}
	for l := 0; l <= 70; l++ {
		var mods []*big.Int
		if l > 0 {
			r := max(l)
			mods = append(mods,
				new(big.Int).Sub(r, big.NewInt(1)),                       // all ones
				new(big.Int).Add(max(l-1), big.NewInt(1)),                // 1 0…0 1
				new(big.Int).Sub(r, new(big.Int).Lsh(big.NewInt(1), 63)), // …f8000…
				new(big.Int).Add(new(big.Int).Rsh(r, 1), big.NewInt(1)),  // 10…01
			)
			for range 6 {
				n, _ := rand.Int(rand.Reader, r)
				mods = append(mods, n.SetBit(n, 0, 1))
			}
		} else {
			mods = append(mods, new(big.Int))
		}
		for _, n := range mods {
			if l > 0 {
				n.SetBit(n, 0, 1)
			}
			nw := make([]big.Word, l)
			copy(nw, n.Bits())
			var n0inv big.Word
			if l > 0 {
				n0inv = montNegInv(nw[0])
				if nw[0]*-n0inv != 1 {
					t.Fatalf("montNegInv(%x) = %x", nw[0], n0inv)
				}
			}
			nr := new(big.Int).Mul(n, max(l)) // t < n·R
			var ts []*big.Int
			ts = append(ts, new(big.Int), new(big.Int).Sub(nr, big.NewInt(1)))
			if nr.Sign() == 0 {
				ts = ts[:1]
			}
			for range 6 {
				if nr.Sign() > 0 {
					v, _ := rand.Int(rand.Reader, nr)
					ts = append(ts, v)
				}
			}
			if l > 0 {
				// all-ones low half, n-1 high half
				ts = append(ts, new(big.Int).Add(new(big.Int).Mul(new(big.Int).Sub(n, big.NewInt(1)), max(l)), new(big.Int).Sub(max(l), big.NewInt(1))))
			}
			for _, tv := range ts {
				tw := make([]big.Word, 2*l)
				copy(tw, tv.Bits())
				for _, f := range []struct {
					name string
					redc func(z, t, n []big.Word, n0inv big.Word)
				}{{"montRedc", montRedc}, {"montRedcGeneric", montRedcGeneric}} {
					if f.name == "montRedc" && !useMont {
						continue
					}
					z := make([]big.Word, l+1)
					z[l] = 0x5a5a // canary
					for i := range l {
						z[i] = ^big.Word(0)
					}
					t2 := slices.Clone(tw)
					f.redc(z[:l], t2, nw, n0inv)
					if z[l] != 0x5a5a {
						t.Fatalf("%s len %d wrote past z", f.name, l)
					}
					montRedcRef(t, f.name, z[:l], tw, nw)
				}
			}
		}
	}
}

// TestSqrWords checks the squaring kernel, the one in use and the Go one,
// against math/big for 0 to 70 words, random and extreme.
func TestSqrWords(t *testing.T) {
	for l := 0; l <= 70; l++ {
		var xs [][]big.Word
		ones, zeros, alt := make([]big.Word, l), make([]big.Word, l), make([]big.Word, l)
		for i := range l {
			ones[i] = ^big.Word(0)
			alt[i] = big.Word(i&1) * ^big.Word(0)
		}
		xs = append(xs, ones, zeros, alt)
		for range 8 {
			x := make([]big.Word, l)
			for i := range x {
				x[i] = big.Word(mrand.Uint64())
				if mrand.IntN(4) == 0 {
					x[i] = [...]big.Word{0, 1, ^big.Word(0), 1 << (_W - 1)}[mrand.IntN(4)]
				}
			}
			xs = append(xs, x)
		}
		for _, x := range xs {
			xv := new(big.Int).SetBits(slices.Clone(x))
			want := new(big.Int).Mul(xv, xv)
			for _, f := range []struct {
				name string
				sqr  func(z, x []big.Word)
			}{{"sqrWords", sqrWords}, {"sqrGeneric", sqrGeneric}} {
				if f.name == "sqrWords" && !useMont {
					continue
				}
				z := make([]big.Word, 2*l+1)
				for i := range z {
					z[i] = 0x5a5a // garbage and canary
				}
				f.sqr(z[:2*l], x)
				if z[2*l] != 0x5a5a {
					t.Fatalf("%s len %d wrote past z", f.name, l)
				}
				if got := new(big.Int).SetBits(z[:2*l]); got.Cmp(want) != 0 {
					t.Fatalf("%s len %d: x=%x: got %x want %x", f.name, l, xv, got, want)
				}
			}
		}
	}
}

// BenchmarkRSAKernels measures the word kernels for RSA-2048, and
// math/big's squaring for comparison.
func BenchmarkRSAKernels(b *testing.B) {
	testKeys(b)
	c := newRSACtx(&rsaKey.PublicKey)
	if c.nw == nil {
		b.Skip("no Montgomery kernels")
	}
	l := len(c.nw)
	x := make([]big.Word, l)
	copy(x, c.nw)
	x[l-1] /= 2
	t := make([]big.Word, 2*l)
	b.Run("sqr", func(b *testing.B) {
		for b.Loop() {
			sqrWords(t, x)
		}
	})
	b.Run("bigsqr", func(b *testing.B) {
		xv := new(big.Int).SetBits(x)
		u := new(big.Int).SetBits(t[:0])
		for b.Loop() {
			u.Mul(xv, xv)
		}
	})
	b.Run("redc", func(b *testing.B) {
		for b.Loop() {
			montRedc(x, t, c.nw, c.n0inv)
		}
	})
}
