package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
)

// BenchmarkPipelineColdCache measures the full loop (embedded broker,
// exactly once, real client behind the cache) when every DNS answer takes
// 20 ms, as from a distant resolver. The first pass over a corpus of fresh
// domains waits for each domain's SPF, DKIM key and DMARC lookups; the
// second pass over the same corpus finds them cached. It reports both
// rates and cold/warm (target ≥ 0.5). DNS latency is hidden by keeping
// many messages in flight, not by more cores: AUTHPIPE_BENCH_INFLIGHT
// (default 1024) sets how many, AUTHPIPE_BENCH_BATCH the batch interval
// (default `authpipe run`'s, 250 ms; until session 7 it was the tests'
// 50 ms). The DNS client has `authpipe run`'s query slots for them
// (DNSQueriesInFlight: 4,096 for 1,024) and sockets (UDPSocketsFor: 32)
// unless AUTHPIPE_BENCH_DNS_INFLIGHT or AUTHPIPE_BENCH_DNS_SOCKETS sets
// another number.
//
// AUTHPIPE_BENCH_COLD_PER_DOMAIN (default 1) sets how many messages each
// fresh domain sends: 1 is the worst case (every message misses three
// times); real cold starts see many messages per domain, which share one
// lookup (singleflight, then the cache). AUTHPIPE_BENCH_COLD_ZIPF=s
// instead draws each message's domain from Zipf's law with exponent s
// (zipfDomains), the heavy-tailed mix of real inbound mail, so the
// figure is that of a restart with an empty cache under ordinary
// traffic; msgs/domain reports the mix. As in BenchmarkPipelineVsEngine
// the producer and verdict consumer run in another process. The DNS
// server runs in this process; with AUTHPIPE_BENCH_DNS=process it runs in
// one of its own (TestBenchDNS), as a resolver on another host would, and
// its CPU is reported as dns-server-µs/msg (per message of the cold phase)
// instead of being charged to the pipeline (measured in session 6: the
// pipeline's own cold CPU then rises by about what the server's share was,
// as every reply now wakes this process from outside, and the ratios do
// not improve). cold-µs/msg and warm-µs/msg are this process's CPU per
// message (pipeline, embedded broker and, in process, the DNS server),
// per-core-cold/warm their ratio (warm CPU a message over cold: messages
// per CPU-second of this process, cold over warm), cold-sys-µs/msg and
// warm-sys-µs/msg the kernel's share of that CPU, cold-faults/msg and
// warm-faults/msg the minor page faults a message, dns-queries/msg
// and warm-dns-queries/msg the queries the server saw in each phase (the
// second is 0 unless the DNS cache evicted entries); dns-floor-µs/msg is
// this process's CPU a cold message in a third phase that asks the cold
// pass's questions again, as cheaply as a process can (dnsFloor: packed
// queries, as many connected UDP sockets and outstanding queries as the
// cold pass's client, replies matched by ID, nothing parsed or cached;
// the in-process server's CPU included, as in the cold phase), and floor-per-core-cold/warm is warm/(warm + floor): the
// per-core cold/warm if the cold path cost nothing beyond those round
// trips. cold/warm is the
// wall-clock ratio, on the 2 cores everything here shares.
// Every phase runs under the collector settings `authpipe run` ships with
// (runGCSettings).
func BenchmarkPipelineColdCache(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_COLD_N", "")); err == nil {
		n = v
	}
	inflight := 1024
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_INFLIGHT", "")); err == nil {
		inflight = v
	}
	perDomain := 1
	if v, err := strconv.Atoi(envOr("AUTHPIPE_BENCH_COLD_PER_DOMAIN", "")); err == nil && v > 0 {
		perDomain = v
	}
	var domainOf func(i int) int // message i's sender domain, from 0
	if s, err := strconv.ParseFloat(envOr("AUTHPIPE_BENCH_COLD_ZIPF", ""), 64); err == nil && s > 0 {
		domainOf = zipfDomains(n, s)
	} else {
		domains := max(n/perDomain, 1)
		domainOf = func(i int) int { return i % domains }
	}
	br := benchBroker(b)
	var dns benchDNS
	if os.Getenv("AUTHPIPE_BENCH_DNS") == "process" {
		dns = startDNSProc(b)
	} else {
		srv, err := dnstest.Start()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Close)
		dns = localDNS{srv}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)

	e := cachedEngine(b, dns.Addr(), inflight)
	brokers := br.Addrs()
	createTopics(b, brokers, 4)
	ld := startLoader(b, brokers)
	dir := b.TempDir()
	cfg := testConfig(brokers, "bench-cold")
	cfg.MaxInFlight = inflight
	// `authpipe run`'s batch interval (250 ms), not the tests' 50 ms: a
	// batch drains before it commits, and on a cold cache its last
	// messages wait out their DNS round trip while nothing new starts.
	cfg.BatchInterval = benchDuration("AUTHPIPE_BENCH_BATCH", Defaults().BatchInterval)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, done := runPipeline(b, ctx, cfg, e)
	defer runGCSettings(p.Config())()

	// Join the group outside the measurement.
	ld.load(b, writeCorpusFile(b, dir, corpus(10, "w")))
	ld.run(b, 10)
	dns.SetDelay(b, 20*time.Millisecond)

	var cold, warm, coldCPU, warmCPU, floorCPU, dnsCPU, coldSys, warmSys time.Duration
	var coldFlt, warmFlt int64
	domains := 0 // that the corpus's messages come from
	var queries, warmQueries int64
	b.ResetTimer()
	for iter := range b.N {
		b.StopTimer()
		msgs, d := coldCorpus(b, dns, key, pub, iter, n, domainOf)
		domains = d
		dns.Sync(b)
		ld.load(b, writeCorpusFile(b, dir, msgs))
		q0, dcpu0 := dns.Queries(b), dns.CPU(b)
		b.StartTimer()
		stop := phaseProfile(b, "cold")
		u0 := usage()
		wall, _ := ld.run(b, n)
		cold += wall
		u1 := usage()
		coldCPU += u1.user + u1.sys - u0.user - u0.sys
		coldSys += u1.sys - u0.sys
		coldFlt += u1.minflt - u0.minflt
		stop()
		b.StopTimer()
		queries += dns.Queries(b) - q0
		dnsCPU += dns.CPU(b) - dcpu0
		q0 = dns.Queries(b)
		b.StartTimer()
		stop = phaseProfile(b, "warm")
		u0 = usage()
		wall, _ = ld.run(b, n)
		warm += wall
		u1 = usage()
		warmCPU += u1.user + u1.sys - u0.user - u0.sys
		warmSys += u1.sys - u0.sys
		warmFlt += u1.minflt - u0.minflt
		stop()
		b.StopTimer()
		warmQueries += dns.Queries(b) - q0
		questions := coldQuestions(msgs)
		slots, sockets := benchDNSClient(inflight)
		floor := newDNSFloor(b, dns.Addr(), questions, sockets)
		b.StartTimer()

		// The DNS floor: the cold pass's questions, asked as cheaply as a
		// process can (dnsFloor), on as many sockets as the client has and
		// with as many outstanding as the cold pass can have: a message's
		// questions are asked together (the engine's prefetch), within
		// the client's query slots.
		stop = phaseProfile(b, "dnsfloor")
		u0 = usage()
		if err := floor.run(min(slots, max(inflight, inflight*len(questions)/len(msgs))), time.Minute); err != nil {
			b.Fatal(err)
		}
		u1 = usage()
		floorCPU += u1.user + u1.sys - u0.user - u0.sys
		stop()
	}
	b.StopTimer()
	coldRate := float64(n*b.N) / cold.Seconds()
	warmRate := float64(n*b.N) / warm.Seconds()
	b.ReportMetric(coldRate, "cold-msgs/s")
	b.ReportMetric(warmRate, "warm-msgs/s")
	b.ReportMetric(coldRate/warmRate, "cold/warm")
	b.ReportMetric(float64(coldCPU.Microseconds())/float64(n*b.N), "cold-µs/msg")
	b.ReportMetric(float64(warmCPU.Microseconds())/float64(n*b.N), "warm-µs/msg")
	b.ReportMetric(warmCPU.Seconds()/coldCPU.Seconds(), "per-core-cold/warm")
	b.ReportMetric(float64(floorCPU.Microseconds())/float64(n*b.N), "dns-floor-µs/msg")
	b.ReportMetric(warmCPU.Seconds()/(warmCPU+floorCPU).Seconds(), "floor-per-core-cold/warm")
	b.ReportMetric(float64(coldSys.Microseconds())/float64(n*b.N), "cold-sys-µs/msg")
	b.ReportMetric(float64(warmSys.Microseconds())/float64(n*b.N), "warm-sys-µs/msg")
	b.ReportMetric(float64(coldFlt)/float64(n*b.N), "cold-faults/msg")
	b.ReportMetric(float64(warmFlt)/float64(n*b.N), "warm-faults/msg")
	if _, ok := dns.(*dnsProc); ok {
		b.ReportMetric(float64(dnsCPU.Microseconds())/float64(n*b.N), "dns-server-µs/msg")
	}
	b.ReportMetric(float64(queries)/float64(n*b.N), "dns-queries/msg")
	b.ReportMetric(float64(n)/float64(domains), "msgs/domain")
	b.ReportMetric(float64(warmQueries)/float64(n*b.N), "warm-dns-queries/msg")
	b.ReportMetric(0, "ns/op")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// coldCorpus publishes SPF, DKIM and DMARC records for fresh domains and
// returns n signed messages, message i from domain domainOf(i), and how
// many domains they come from.
func coldCorpus(b *testing.B, dns benchDNS, key *rsa.PrivateKey, pub []byte, iter, n int, domainOf func(int) int) ([]testMsg, int) {
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 64)
	msgs := make([]testMsg, n)
	published := make(map[int]bool)
	for i := range msgs {
		k := domainOf(i)
		d := fmt.Sprintf("c%d-d%d.example", iter, k)
		if !published[k] {
			published[k] = true
			dns.AddRR(dnstest.TXT(d, "v=spf1 ip4:192.0.2.0/24 -all", 300))
			dns.AddRR(dnstest.TXT("sel._domainkey."+d, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 300))
			dns.AddRR(dnstest.TXT("_dmarc."+d, "v=DMARC1; p=reject", 300))
		}
		raw := fmt.Sprintf("From: a@%s\r\nTo: b@rcpt.example\r\nSubject: m %d\r\nDate: Fri, 01 May 2026 12:00:00 +0000\r\nMessage-ID: <c%d@%s>\r\n\r\n%s", d, i, i, d, body)
		var buf bytes.Buffer
		if err := dkim.Sign(&buf, strings.NewReader(raw), &dkim.SignOptions{Domain: d, Selector: "sel", Signer: key}); err != nil {
			b.Fatal(err)
		}
		msgs[i] = testMsg{
			key: fmt.Sprintf("c%d-%d", iter, i),
			raw: buf.Bytes(),
			env: stages.Envelope{ClientIP: netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%200)}), HELO: "mta." + d, MailFrom: "bounce@" + d},
		}
	}
	return msgs, len(published)
}

// coldQuestions returns the names a cold pass over msgs asks about, each
// once, fully qualified: for every sender domain its SPF record, its DKIM
// key (selector "sel") and its DMARC record, as coldCorpus publishes them.
func coldQuestions(msgs []testMsg) []string {
	var names []string
	seen := make(map[string]bool)
	for i := range msgs {
		_, d, _ := strings.Cut(msgs[i].env.MailFrom, "@")
		if seen[d] {
			continue
		}
		seen[d] = true
		names = append(names, d+".", "sel._domainkey."+d+".", "_dmarc."+d+".")
	}
	return names
}

// zipfDomains draws the sender domains of n messages from n domains with
// Zipf's law (the k-th most frequent sends in proportion to 1/k^s), the
// heavy tail of real inbound mail: with s = 1 and n = 8,000 the largest
// sender has a tenth of the messages and about 2,300 domains send at
// least one. The draw is seeded, so every iteration and run gets the same
// mix.
func zipfDomains(n int, s float64) func(int) int {
	cum := make([]float64, n)
	total := 0.0
	for k := range cum {
		total += 1 / math.Pow(float64(k+1), s)
		cum[k] = total
	}
	r := mrand.New(mrand.NewPCG(1, 2))
	draws := make([]int, n)
	for i := range draws {
		draws[i] = sort.SearchFloat64s(cum, r.Float64()*total)
	}
	return func(i int) int { return draws[i] }
}
