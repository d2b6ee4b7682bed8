package arc

import (
	"context"
	"testing"

	"github.com/authpipe/authpipe/stages/message"
)

// BenchmarkValidate3Hop validates a message carrying a 3-hop chain sealed
// in-test with RSA-2048 (the common key size), keys already cached: 3 AS
// and 3 AMS verifications (oldest-pass on), one body hash.
func BenchmarkValidate3Hop(b *testing.B) {
	key := rsaKey()
	v := newTestValidator(b, testRecords(key))
	raw := sealChain(b, v, key, []byte(baseMessage), 3)
	m, err := message.Parse(raw, message.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if r := v.Validate(ctx, m); r.Result != ResultPass || r.Instances != 3 {
		b.Fatalf("chain: %+v", r)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		v.Validate(ctx, m)
	}
}
