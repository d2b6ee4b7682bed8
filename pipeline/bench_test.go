package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
)

// signedCorpus returns n messages of about 4 KiB, each DKIM-signed with
// RSA-2048 by its sender domain, and publishes SPF, DKIM and DMARC records
// for the domains on dns: the work of typical inbound mail.
func signedCorpus(tb testing.TB, dns *dnstest.Server, n int) []testMsg {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	for i := range testDomains {
		d := fmt.Sprintf("sender%d.example", i)
		dns.AddRR(dnstest.TXT("sel._domainkey."+d, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 300))
		dns.AddRR(dnstest.TXT("_dmarc."+d, "v=DMARC1; p=reject; rua=mailto:dmarc@"+d, 300))
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 64)
	msgs := corpus(n, "b")
	for i := range msgs {
		d := fmt.Sprintf("sender%d.example", i%testDomains)
		raw := fmt.Sprintf("From: a@%s\r\nTo: b@rcpt.example\r\nSubject: m %d\r\nDate: Fri, 01 May 2026 12:00:00 +0000\r\nMessage-ID: <b%d@%s>\r\n\r\n%s", d, i, i, d, body)
		var buf bytes.Buffer
		if err := dkim.Sign(&buf, strings.NewReader(raw), &dkim.SignOptions{Domain: d, Selector: "sel", Signer: key}); err != nil {
			tb.Fatal(err)
		}
		msgs[i].raw = buf.Bytes()
	}
	return msgs
}

// BenchmarkPipelineVsEngine runs the full loop (embedded broker over TCP,
// exactly once, real DNS client behind the cache, in-process DNS server)
// on a corpus of signed messages, and the engine alone on the same corpus
// with the same concurrency, in the same run. It reports both rates and
// their ratio.
func BenchmarkPipelineVsEngine(b *testing.B) {
	const n = 20000
	const conc = 256
	br := startTestBroker(b)
	dns := startTestDNS(b)
	msgs := signedCorpus(b, dns, n)
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	res, err := resolvercache.NewCache(c)
	if err != nil {
		b.Fatal(err)
	}
	e := stages.New(res) // real clock: the signatures carry t= of now
	brokers := br.Addrs()
	createTopics(b, brokers, 4)
	out := collect(b, brokers, "mail.verdicts")
	cfg := testConfig(brokers, "bench")
	cfg.MaxInFlight = conc
	cfg.BatchInterval = benchDuration("AUTHPIPE_BENCH_BATCH", 250*time.Millisecond)
	cfg.Delivery = Delivery(envOr("AUTHPIPE_BENCH_DELIVERY", string(ExactlyOnce)))
	if n, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_BATCH_RECORDS", "")); err == nil {
		cfg.BatchMaxRecords = n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, done := runPipeline(b, ctx, cfg, e)

	// Warm the DNS cache and the group join outside the measurement.
	produceCorpus(b, brokers, "mail.raw", msgs[:100])
	out.waitCount(b, 100, 30*time.Second)
	if v := decodeVerdict(b, out.snapshot()[0]); v.DMARC == nil || len(v.DKIM) != 1 || v.DKIM[0].Result != "pass" {
		b.Fatalf("warm-up verdict: %+v %+v %s", v.DMARC, v.DKIM, out.snapshot()[0].Value)
	}

	var pipeDur, engDur, pipeCPU, engCPU time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		// The clock runs from the first record produced to the last verdict
		// committed: producing is part of the loop.
		base := out.count()
		start := time.Now()
		cpu0 := cpuTime()
		perr := make(chan error, 1)
		go func() { perr <- produceErr(brokers, "mail.raw", msgs) }()
		for out.count() < base+n {
			time.Sleep(time.Millisecond)
		}
		if err := <-perr; err != nil {
			b.Fatal(err)
		}
		pipeDur += time.Since(start)
		pipeCPU += cpuTime() - cpu0

		start = time.Now()
		cpu0 = cpuTime()
		var wg sync.WaitGroup
		work := make(chan *testMsg)
		for range conc {
			wg.Go(func() {
				for m := range work {
					_ = e.Verify(context.Background(), m.raw, m.env)
				}
			})
		}
		for i := range msgs {
			work <- &msgs[i]
		}
		close(work)
		wg.Wait()
		engDur += time.Since(start)
		engCPU += cpuTime() - cpu0
	}
	b.StopTimer()
	pipeRate := float64(n*b.N) / pipeDur.Seconds()
	engRate := float64(n*b.N) / engDur.Seconds()
	b.ReportMetric(pipeRate, "pipeline-msgs/s")
	b.ReportMetric(engRate, "engine-msgs/s")
	b.ReportMetric(pipeRate/engRate, "ratio")
	b.ReportMetric(pipeCPU.Seconds()/pipeDur.Seconds(), "pipeline-cpus")
	b.ReportMetric(engCPU.Seconds()/engDur.Seconds(), "engine-cpus")
	b.ReportMetric(0, "ns/op")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// cpuTime is the CPU time (user + system) used by this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchDuration(env string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(envOr(env, "")); err == nil {
		return d
	}
	return def
}
