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
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

func newDemoCmd() *cobra.Command {
	var (
		n, domains, inflight int
		delivery             string
	)
	cmd := &cobra.Command{
		Use:   "demo [flags]",
		Short: "Run the whole pipeline on a generated corpus and print a summary",
		Long: `demo runs everything in one process with no network beyond loopback: the
embedded Kafka broker (in memory), an authoritative DNS server on 127.0.0.1
serving a generated zone (SPF, DKIM and DMARC records for --domains domains),
a generated corpus of --messages DKIM-signed and unsigned messages (legitimate
mail, forwarded mail, spoofs, messages altered in transit), and the pipeline
itself. It then prints what the verdicts said and how fast they came.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n <= 0 || domains <= 0 {
				return usagef("--messages and --domains must be positive")
			}
			return demo(cmd.Context(), cmd.OutOrStdout(), n, domains, inflight, pipeline.Delivery(delivery))
		},
	}
	f := cmd.Flags()
	f.IntVar(&n, "messages", 5000, "messages in the generated corpus")
	f.IntVar(&domains, "domains", 20, "sender domains in the generated zone")
	f.IntVar(&inflight, "max-in-flight", 256*runtime.GOMAXPROCS(0), "messages verified at once")
	f.StringVar(&delivery, "delivery", string(pipeline.ExactlyOnce), "exactly-once or at-least-once")
	return cmd
}

// demoKinds are the kinds of generated message, in rotation.
var demoKinds = []string{"legit", "legit", "legit", "legit", "legit", "legit", "forwarded", "spoof", "altered", "null-sender"}

func demo(ctx context.Context, out io.Writer, n, domains, inflight int, delivery pipeline.Delivery) error {
	fmt.Fprintf(out, "generating zone (%d domains) and corpus (%d messages)...\n", domains, n)
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
	recs, err := demoCorpus(n, domains, key)
	if err != nil {
		return err
	}

	b, err := pipeline.StartBroker(pipeline.BrokerConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer b.Close()
	c, err := resolvercache.NewClient(resolvercache.WithUpstreams(dns.Addr), resolvercache.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	res, err := resolvercache.NewCache(c)
	if err != nil {
		return err
	}
	engine := stages.New(res)
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
	fmt.Fprintf(out, "embedded broker on %s, DNS on %s; producing...\n", strings.Join(b.Addrs(), ","), dns.Addr)
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
				add("kind → dmarc/disposition", kind+" → "+v.DMARC.Result+"/"+v.DMARC.Disposition)
			}
		}
	}
	elapsed := time.Since(start)
	stop()
	if err := <-done; err != nil {
		return err
	}

	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nmessages\t%d\n", n)
	fmt.Fprintf(tw, "produce time\t%s\n", produced.Round(time.Millisecond))
	fmt.Fprintf(tw, "first record to last verdict\t%s\t(%.0f msgs/s, %s, %d in flight)\n", elapsed.Round(time.Millisecond),
		float64(n)/elapsed.Seconds(), delivery, inflight)
	fmt.Fprintf(tw, "DNS queries answered\t%d\n", dns.Queries.Load())
	for _, table := range []string{"spf", "dkim", "dmarc", "disposition", "kind → dmarc/disposition"} {
		fmt.Fprintf(tw, "\n%s\t\n", strings.ToUpper(table[:1])+table[1:])
		keys := make([]string, 0, len(counts[table]))
		for k := range counts[table] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%d\n", k, counts[table][k])
		}
	}
	return tw.Flush()
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
				case "forwarded":
					env.ClientIP = netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%200)})
					env.MailFrom = "fwd@list.example"
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
				if kind == "altered" {
					msg = append(msg, "-- \r\nAdded by a mailing list footer\r\n"...)
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
