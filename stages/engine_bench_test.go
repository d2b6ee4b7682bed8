package stages_test

import (
	"context"
	"crypto"
	"syscall"
	"testing"
	"time"

	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/message"
)

// benchEngine runs the whole engine on msg with a warm cache (DNS answers
// and parsed DKIM keys), reporting msgs/s per core.
func benchEngine(b *testing.B, msg []byte, env stages.Envelope, check func(b *testing.B, dkim []string, dmarc string)) {
	w := newWorld(b)
	e := newEngine(w)
	ctx := context.Background()
	v := e.Verify(ctx, msg, env) // warm the caches
	var dk []string
	for _, d := range v.DKIM {
		dk = append(dk, d.Result)
	}
	check(b, dk, v.DMARC.Result)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		e.Verify(ctx, msg, env)
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	// CPU time per message (every thread of the process: the SPF goroutine
	// and the garbage collector included) is the per-core cost, and unlike
	// ns/op it does not grow when other processes take the CPU.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// cpuTime is the CPU time (user + system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func wantAll(want string, n int) func(b *testing.B, dkim []string, dmarc string) {
	return func(b *testing.B, dkim []string, dmarc string) {
		if len(dkim) != n || dmarc != "pass" {
			b.Fatalf("warm-up verdict: dkim %v dmarc %s, want %d×%s and dmarc pass", dkim, dmarc, n, want)
		}
		for _, r := range dkim {
			if r != want {
				b.Fatalf("warm-up verdict: dkim %v", dkim)
			}
		}
	}
}

// BenchmarkEngineTypical: 10 KB body, one RSA-2048 signature, SPF with one
// include, DMARC record at the organizational domain.
func BenchmarkEngineTypical(b *testing.B) {
	msg := sign(b, newMessage("alice@example.com", 10<<10), "rsa", testRSAKey)
	benchEngine(b, msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}, wantAll("pass", 1))
}

// BenchmarkEngineRSAAndEd25519: the same with an Ed25519 signature added.
func BenchmarkEngineRSAAndEd25519(b *testing.B) {
	msg := sign(b, sign(b, newMessage("alice@example.com", 10<<10), "rsa", testRSAKey), "ed", testEdKey)
	benchEngine(b, msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}, wantAll("pass", 2))
}

// BenchmarkEngineARC3Hop: a DKIM-signed message forwarded through three
// ARC-sealing intermediaries.
func BenchmarkEngineARC3Hop(b *testing.B) {
	msg := sign(b, newMessage("alice@example.com", 10<<10), "rsa", testRSAKey)
	msg = arcSeal(b, msg, 3, testRSAKey)
	benchEngine(b, msg, stages.Envelope{ClientIP: goodIP, HELO: "mail.example.com", MailFrom: "bounce@example.com"}, wantAll("pass", 1))
}

// arcSeal adds hops ARC sets sealed by example.com's rsa key.
func arcSeal(t testing.TB, msg []byte, hops int, key crypto.Signer) []byte {
	t.Helper()
	chain := arc.Result{Result: arc.ResultNone}
	for i := 0; i < hops; i++ {
		m, err := message.Parse(msg, message.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		s := &arc.Sealer{Domain: "example.com", Selector: "rsa", Key: key, AuthServID: "hop.example.com",
			Now: func() time.Time { return now }}
		set, err := s.Seal(m, chain, "spf=pass smtp.mailfrom=example.com")
		if err != nil {
			t.Fatal(err)
		}
		msg = set.Prepend(msg)
		chain = arc.Result{Result: arc.ResultPass, Instances: i + 1}
	}
	return msg
}
