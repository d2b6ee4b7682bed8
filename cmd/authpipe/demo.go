package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/arc"
	"github.com/authpipe/authpipe/stages/dmarc"
	"github.com/authpipe/authpipe/stages/message"
	"github.com/authpipe/authpipe/stages/verdict"
)

func newDemoCmd() *cobra.Command {
	var (
		n, domains, inflight int
		delivery, reportsDir string
	)
	cmd := &cobra.Command{
		Use:   "demo [flags]",
		Short: "Run the whole pipeline on a generated corpus and print a summary",
		Long: `demo runs everything in one process with no network beyond loopback: the
embedded Kafka broker (in memory), an authoritative DNS server on 127.0.0.1
serving a generated zone (SPF, DKIM and DMARC records for --domains domains),
a generated corpus of --messages DKIM-signed and unsigned messages (legitimate
mail, forwarded mail, spoofs, messages altered in transit), and the pipeline
itself. It then prints what the verdicts said and how fast they came.

Then it plays the report side: it merges the partial DMARC aggregates the
pipeline wrote, closes the demo's day at once (a real reporter waits for
the UTC day to end plus a grace period), builds one RFC 9990 report per
domain, writes the .xml.gz files to --reports-dir and delivers them,
DKIM-signed with an RSA and an Ed25519 key, to an SMTP server on loopback
standing in for the rua domains' MX. It prints one line per report.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n <= 0 || domains <= 0 {
				return usagef("--messages and --domains must be positive")
			}
			return demo(cmd.Context(), cmd.OutOrStdout(), progressWriter(cmd.ErrOrStderr()), demoOptions{
				messages: n, domains: domains, inflight: inflight, delivery: pipeline.Delivery(delivery), reportsDir: reportsDir})
		},
	}
	f := cmd.Flags()
	f.IntVar(&n, "messages", 5000, "messages in the generated corpus")
	f.IntVar(&domains, "domains", 20, "sender domains in the generated zone")
	f.IntVar(&inflight, "max-in-flight", 256*runtime.GOMAXPROCS(0), "messages verified at once")
	f.StringVar(&delivery, "delivery", string(pipeline.ExactlyOnce), "exactly-once or at-least-once")
	f.StringVar(&reportsDir, "reports-dir", "", "`directory` for the report files (created if missing; default: a new directory under the system temp dir, printed)")
	return cmd
}

// demoKinds are the kinds of generated message, in rotation:
//   - legit: aligned SPF and DKIM;
//   - spf-only: no signature, SPF aligned;
//   - forwarded: relayed unchanged from another address (SPF fails, DKIM holds);
//   - forwarded-arc: a mailing list rewrote the subject (DKIM breaks) and
//     ARC-sealed what it saw; the list is a trusted sealer (trusted_forwarder);
//   - spoof: unsigned, from a foreign address;
//   - altered: a footer appended in transit breaks the signature, SPF still aligns;
//   - null-sender: bounce with MAIL FROM <>;
//   - dns-failure: the author domain's DNS answers SERVFAIL (temperror).
var demoKinds = []string{"legit", "legit", "legit", "legit", "spf-only", "forwarded", "forwarded-arc", "spoof",
	"altered", "null-sender", "dns-failure"}

// demoSealer is the mailing list whose ARC seals the demo trusts.
const demoSealer = "lists.example"

// dnsServFail is RCODE 2, SERVFAIL (RFC 1035 4.1.1), for the demo's broken domain.
const dnsServFail = 2

// demoOptions are the demo's flags.
type demoOptions struct {
	messages, domains, inflight int
	delivery                    pipeline.Delivery
	reportsDir                  string
}

func demo(ctx context.Context, out, progress io.Writer, o demoOptions) error {
	n, domains, inflight, delivery := o.messages, o.domains, o.inflight, o.delivery
	reportsDir := o.reportsDir
	if reportsDir == "" {
		d, err := os.MkdirTemp("", "authpipe-demo-reports-")
		if err != nil {
			return fmt.Errorf("demo: reports dir: %w", err)
		}
		reportsDir = d
	} else if err := os.MkdirAll(reportsDir, 0o755); err != nil {
		return fmt.Errorf("demo: --reports-dir: %w", err)
	}
	fmt.Fprintf(progress, "generating zone (%d domains) and corpus (%d messages)...\n", domains, n)
	dns, err := dnstest.Start()
	if err != nil {
		return err
	}
	defer dns.Close()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("demo: key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("demo: key: %w", err)
	}
	policies := []string{"reject", "quarantine", "none"}
	for i := range domains {
		d := fmt.Sprintf("sender%d.example", i)
		dns.AddRR(dnstest.TXT(d, "v=spf1 ip4:192.0.2.0/24 -all", 3600))
		dns.AddRR(dnstest.TXT("mta."+d, "v=spf1 a ip4:192.0.2.0/24 -all", 3600))
		dns.AddRR(dnstest.TXT("sel._domainkey."+d, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 3600))
		dns.AddRR(dnstest.TXT("_dmarc."+d, "v=DMARC1; p="+policies[i%len(policies)]+"; rua=mailto:dmarc@"+d, 3600))
	}
	dns.AddRR(dnstest.TXT("arc._domainkey."+demoSealer, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 3600))
	dns.AddRR(dnstest.TXT(demoSealer, "v=spf1 ip4:198.51.100.0/24 -all", 3600))
	for _, name := range []string{"broken.example", "_dmarc.broken.example", "sel._domainkey.broken.example"} {
		dns.SetRcode(name, 0, dnsServFail)
	}
	recs, err := demoCorpus(n, domains, key)
	if err != nil {
		return err
	}

	b, err := pipeline.StartBroker(pipeline.BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer b.Close()
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(time.Second),
		resolvercache.WithMaxInFlight(pipeline.DNSQueriesInFlight(pipeline.Config{MaxInFlight: inflight})))
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	metrics, err := resolvercache.NewMetrics(reg)
	if err != nil {
		return err
	}
	res, err := resolvercache.NewCache(c, resolvercache.WithCacheMetrics(metrics))
	if err != nil {
		return err
	}
	engine := stages.New(res, stages.WithDMARC(dmarc.ModeRFC9989,
		dmarc.Overrides{TrustedARCSealers: []string{demoSealer}}, nil))
	cfg := pipeline.Config{Brokers: b.Addrs(), Partitions: 4, MaxInFlight: inflight, Delivery: delivery, TransactionalID: "authpipe-demo"}
	p, err := pipeline.New(cfg, engine)
	if err != nil {
		return usageError{err}
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()

	for !p.Ready() {
		select {
		case err := <-done:
			return fmt.Errorf("demo: pipeline: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ConsumeTopics(p.Config().VerdictTopic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.ProducerBatchMaxBytes(4<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	fmt.Fprintf(progress, "embedded broker on %s, DNS on %s; producing...\n", strings.Join(b.Addrs(), ","), dns.Addr)
	start := time.Now()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("demo: produce: %w", err)
	}
	produced := time.Since(start)

	counts := map[string]map[string]int{}
	add := func(table, k string) {
		if counts[table] == nil {
			counts[table] = map[string]int{}
		}
		counts[table][k]++
	}
	got := 0
	var reportable uint64 // verdicts with a DMARC policy: the aggregates must count them all
	agg := reportgen.NewAggregator()
	for got < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, r := range fs.Records() {
			var v verdict.Verdict
			if err := json.Unmarshal(r.Value, &v); err != nil {
				return fmt.Errorf("demo: verdict: %w", err)
			}
			got++
			if agg.Add(&v) == nil {
				reportable++
			}
			var idx int
			_, _ = fmt.Sscanf(string(r.Key), "demo-%d", &idx)
			kind := demoKinds[idx%len(demoKinds)]
			if v.SPF != nil {
				add("spf", v.SPF.Result)
			}
			for _, d := range v.DKIM {
				add("dkim", d.Result)
			}
			if len(v.DKIM) == 0 {
				add("dkim", "(unsigned)")
			}
			if v.DMARC != nil {
				add("dmarc", v.DMARC.Result)
				add("disposition", v.DMARC.Disposition)
				outcome := kind + " → " + v.DMARC.Result + "/" + v.DMARC.Disposition
				for _, r := range v.DMARC.Reasons {
					outcome += " (" + r.Type + ")"
				}
				add("kind → dmarc/disposition", outcome)
			}
		}
	}
	elapsed := time.Since(start)
	stop()
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintf(progress, "verdicts done; merging aggregates, closing the day, building and delivering reports...\n")
	reports, err := demoReports(ctx, demoReportsConfig{brokers: b.Addrs(), aggregateTopic: p.Config().AggregateTopic, messages: reportable,
		res: res, dns: dns, rsaKey: key, dir: reportsDir})
	if err != nil {
		return err
	}

	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nmessages\t%d\n", n)
	fmt.Fprintf(tw, "produce time\t%s\n", produced.Round(time.Millisecond))
	fmt.Fprintf(tw, "first record to last verdict\t%s\t(%.0f msgs/s, %s, %d in flight)\n", elapsed.Round(time.Millisecond),
		float64(n)/elapsed.Seconds(), delivery, inflight)
	fmt.Fprintf(tw, "DNS queries answered\t%d\n", dns.Queries.Load())
	hits, misses := counterValue(reg, "authpipe_dns_cache_hits_total"), counterValue(reg, "authpipe_dns_cache_misses_total")
	if hits+misses > 0 {
		fmt.Fprintf(tw, "DNS cache hit rate\t%.1f%%\t(%.0f hits, %.0f misses)\n", 100*hits/(hits+misses), hits, misses)
	}
	headings := map[string]string{"spf": "SPF", "dkim": "DKIM (per signature)", "dmarc": "DMARC", "disposition": "Disposition",
		"kind → dmarc/disposition": "Message kind → DMARC result/disposition (reasons)"}
	for _, table := range []string{"spf", "dkim", "dmarc", "disposition", "kind → dmarc/disposition"} {
		fmt.Fprintf(tw, "\n%s\t\n", headings[table])
		keys := make([]string, 0, len(counts[table]))
		for k := range counts[table] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%d\n", k, counts[table][k])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return reports.print(out, reportsDir)
}

// demoCorpus builds n mail.raw records keyed demo-NNNNNN; message i is of
// kind demoKinds[i%len(demoKinds)], also given in header demo.kind.
func demoCorpus(n, domains int, key *rsa.PrivateKey) ([]*kgo.Record, error) {
	recs := make([]*kgo.Record, n)
	body := strings.Repeat("The quick brown fox jumps over the lazy dog.\r\n", 60)
	at := time.Now().UTC().Truncate(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, runtime.GOMAXPROCS(0))
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				kind := demoKinds[i%len(demoKinds)]
				d := fmt.Sprintf("sender%d.example", (i/len(demoKinds)+i)%domains)
				env := stages.Envelope{
					ClientIP: netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%200)}), HELO: "mta." + d,
					MailFrom: "bounce@" + d, RcptTo: []string{"user@rcpt.example"}, ReceivedAt: at,
				}
				raw := fmt.Sprintf("From: Sender <news@%s>\r\nTo: user@rcpt.example\r\nSubject: demo %d (%s)\r\nDate: %s\r\nMessage-ID: <demo%d@%s>\r\n\r\n%s",
					d, i, kind, at.Format(time.RFC1123Z), i, d, body)
				sign := true
				switch kind {
				case "spf-only":
					sign = false
				case "forwarded":
					env.ClientIP = netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i%200)})
					env.MailFrom = "fwd@forwarder.example"
				case "forwarded-arc":
					env.ClientIP = netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%200)})
					env.MailFrom = "list-bounces@" + demoSealer
				case "dns-failure":
					d = "broken.example"
					raw = fmt.Sprintf("From: Sender <news@%s>\r\nTo: user@rcpt.example\r\nSubject: demo %d (%s)\r\nDate: %s\r\nMessage-ID: <demo%d@%s>\r\n\r\n%s",
						d, i, kind, at.Format(time.RFC1123Z), i, d, body)
					env.MailFrom = "bounce@" + d
				case "spoof":
					env.ClientIP = netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i%200)})
					env.MailFrom = "x@spoof.example"
					env.HELO = "spoof.example"
					sign = false
				case "null-sender":
					env.MailFrom = ""
				}
				msg := []byte(raw)
				if sign {
					var buf bytes.Buffer
					if err := dkim.Sign(&buf, strings.NewReader(raw), &dkim.SignOptions{Domain: d, Selector: "sel", Signer: key}); err != nil {
						errs <- fmt.Errorf("demo: sign: %w", err)
						return
					}
					msg = buf.Bytes()
				}
				switch kind {
				case "altered":
					msg = append(msg, "-- \r\nAdded by a mailing list footer\r\n"...)
				case "forwarded-arc":
					var err error
					if msg, err = demoListForward(msg, key, at); err != nil {
						errs <- err
						return
					}
				}
				hs := append([]kgo.RecordHeader{{Key: "demo.kind", Value: []byte(kind)}}, pipeline.EnvelopeHeaders(env, "")...)
				recs[i] = &kgo.Record{Topic: "mail.raw", Key: fmt.Appendf(nil, "demo-%06d", i), Value: msg, Headers: hs}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			wg.Wait()
			return nil, err
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return recs, nil
}

// demoListForward rewrites the subject as a mailing list would (breaking the
// author's DKIM signature) and adds the list's ARC set recording that the
// original passed.
func demoListForward(msg []byte, key *rsa.PrivateKey, at time.Time) ([]byte, error) {
	msg = bytes.Replace(msg, []byte("Subject: demo"), []byte("Subject: [list] demo"), 1)
	m, err := message.Parse(msg, message.Limits{})
	if err != nil {
		return nil, fmt.Errorf("demo: forward: %w", err)
	}
	s := &arc.Sealer{Domain: demoSealer, Selector: "arc", Key: key, AuthServID: demoSealer, Now: func() time.Time { return at }}
	from := m.From[0].Domain
	set, err := s.Seal(m, arc.Result{Result: arc.ResultNone},
		"spf=pass smtp.mailfrom="+from+"; dkim=pass header.d="+from+"; dmarc=pass header.from="+from)
	if err != nil {
		return nil, fmt.Errorf("demo: seal: %w", err)
	}
	return set.Prepend(msg), nil
}

// counterValue sums a counter family in reg (0 when absent).
func counterValue(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// progressWriter returns w when it is a terminal and io.Discard otherwise:
// progress is for people watching, not for logs or pipes.
func progressWriter(w io.Writer) io.Writer {
	if isTerminal(w) {
		return w
	}
	return io.Discard
}

// isTerminal reports whether w is a character device, as a terminal is (a
// file or pipe is not; /dev/null passes too, harmlessly).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
