package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDecompressPool: a buffer comes back for a batch of its class, holds
// a snappy batch's decoded length, and the pool keeps no more than its
// byte bound.
func TestDecompressPool(t *testing.T) {
	p := newDecompressPool(3 << 20)
	plain := make([]byte, 700<<10) // 700 KiB: class 2^20
	for i := range plain {
		plain[i] = byte(i % 251)
	}
	compressed := s2.EncodeSnappy(nil, plain)
	b := p.GetDecompressBytes(compressed, kgo.CodecSnappy)
	if len(b) != 0 || cap(b) < len(plain) {
		t.Fatalf("Get for %d decoded bytes: len %d cap %d", len(plain), len(b), cap(b))
	}
	out, err := s2.Decode(b, compressed) // as kgo does: into the capacity
	if err != nil {
		t.Fatal(err)
	}
	if &out[0] != &b[:1][0] {
		t.Fatal("the batch was decoded into a new buffer, not the pooled one")
	}
	p.PutDecompressBytes(b)
	if again := p.GetDecompressBytes(compressed, kgo.CodecSnappy); &again[:1][0] != &b[:1][0] {
		t.Error("the buffer put back was not handed out again")
	}

	// Other codecs: four times the compressed size.
	if b := p.GetDecompressBytes(make([]byte, 100<<10), kgo.CodecZstd); cap(b) < 400<<10 {
		t.Errorf("zstd, 100 KiB compressed: cap %d, want at least 400 KiB", cap(b))
	}
	// A snappy length that cannot be right (smaller than the input) is
	// not believed.
	if b := p.GetDecompressBytes(append([]byte{1}, make([]byte, 200<<10)...), kgo.CodecSnappy); cap(b) < 800<<10 {
		t.Errorf("implausible snappy length: cap %d, want at least 800 KiB", cap(b))
	}

	// The byte bound: three 1 MiB buffers fit, a fourth is dropped.
	for range 4 {
		p.PutDecompressBytes(make([]byte, 0, 1<<20))
	}
	if p.bytes != 3<<20 {
		t.Errorf("pool holds %d bytes, want %d", p.bytes, 3<<20)
	}
	// Buffers outside the classes are not kept.
	p = newDecompressPool(1 << 30)
	p.PutDecompressBytes(make([]byte, 0, 1000))
	if p.bytes != 0 {
		t.Errorf("a 1000-byte buffer was kept")
	}
}

// TestDecompressBuffersReused: messages arrive in waves, each fetched
// after the last wave's verdicts are out, so each wave's batches are
// decompressed into buffers the last wave's records gave back (handle
// recycles a record once its output is produced). Every verdict must still
// equal the engine's and every DLQ record its input byte for byte: a
// buffer given back while still read would be zeroed under them
// (kgo clears it) and then overwritten.
func TestDecompressBuffersReused(t *testing.T) {
	_, _, e, brokers := startTestStack(t)
	out := collect(t, brokers, "mail.verdicts")
	dlq := collect(t, brokers, "mail.raw.dlq")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, done := runPipeline(t, ctx, testConfig(brokers, "reuse"), e)

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const waves, perWave = 5, 200
	msgs := corpus(waves*perWave, "w")
	poison := map[string][]byte{}
	for w := range waves {
		produceCorpus(t, brokers, "mail.raw", msgs[w*perWave:(w+1)*perWave])
		bad := &kgo.Record{Topic: "mail.raw", Key: fmt.Appendf(nil, "bad-%d", w),
			Value: bytes.Repeat(fmt.Appendf(nil, "not a message %d ", w), 300), Headers: EnvelopeHeaders(msgs[0].env, "")}
		poison[string(bad.Key)] = bad.Value
		if err := cl.ProduceSync(ctx, bad).FirstErr(); err != nil {
			t.Fatal(err)
		}
		out.waitCount(t, (w+1)*perWave, 30*time.Second)
		dlq.waitCount(t, w+1, 10*time.Second)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkVerdicts(t, e, msgs, out.waitCount(t, len(msgs), time.Second))
	dead := dlq.waitCount(t, len(poison), time.Second)
	for _, r := range dead {
		if want, ok := poison[string(r.Key)]; !ok || !bytes.Equal(r.Value, want) {
			t.Errorf("DLQ record %s differs from its input", r.Key)
		}
	}
	n := p.decompress.reuses()
	if n == 0 {
		t.Fatal("no decompression buffer was used again")
	}
	t.Logf("decompression buffers used again %d times over %d waves", n, waves)
}
