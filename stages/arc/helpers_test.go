package arc

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"sync"
	"testing"
	"time"

	"github.com/authpipe/authpipe/stages/dkim"
	"github.com/authpipe/authpipe/stages/message"
)

const baseMessage = "From: John Q Doe <jqd@d1.example.org>\r\n" +
	"To: arc@dmarc.org\r\n" +
	"Subject: Example 1\r\n" +
	"Date: Thu, 14 Jan 2015 15:00:01 -0800\r\n" +
	"Message-ID: <54B84785.1060301@d1.example.org>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"\r\n" +
	"Hey gang,\r\nThis is a test message.\r\n--J.\r\n"

// edKey is a fixed Ed25519 key so fuzz seeds are reproducible.
var edKey = ed25519.NewKeyFromSeed([]byte("authpipe arc test key seed 32 by"))

var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// keyRecord returns the DKIM key record publishing k's public half.
func keyRecord(k crypto.Signer) string {
	switch pub := k.Public().(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	case *rsa.PublicKey:
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
	panic("unsupported key")
}

// hopDomains are the sealers of the test chains, one per hop.
var hopDomains = []string{"list.example.org", "fwd.example.net", "mx.example.com"}

// testRecords publishes key under selector "s1" for every hop domain.
func testRecords(key crypto.Signer) map[string]string {
	recs := map[string]string{}
	for _, d := range hopDomains {
		recs["s1._domainkey."+d] = keyRecord(key)
	}
	return recs
}

// sealChain seals raw hops times (at most len(hopDomains)), validating the
// chain before each hop as a real sealer would, and returns the result.
func sealChain(t testing.TB, v *Validator, key crypto.Signer, raw []byte, hops int) []byte {
	t.Helper()
	for i := 0; i < hops; i++ {
		m, err := message.Parse(raw, message.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		chain := validateString(t, v, string(raw))
		s := &Sealer{Domain: hopDomains[i], Selector: "s1", Key: key, AuthServID: hopDomains[i],
			Headers: []string{"from", "to", "subject", "date", "message-id", "mime-version"},
			Now:     func() time.Time { return time.Unix(1700000000+int64(i), 0) }}
		set, err := s.Seal(m, chain, "spf=pass smtp.mailfrom=d1.example.org;\r\n    dkim=pass header.d=d1.example.org;\r\n    arc="+chain.Result)
		if err != nil {
			t.Fatalf("hop %d: %v", i+1, err)
		}
		raw = set.Prepend(m.Raw)
	}
	return raw
}

// newTestValidator validates against records served from memory.
func newTestValidator(t testing.TB, recs map[string]string) *Validator {
	res := newMapResolver(recs)
	return &Validator{Keys: &dkim.KeyFetcher{Resolver: res, Now: suiteClock}, Now: suiteClock}
}
