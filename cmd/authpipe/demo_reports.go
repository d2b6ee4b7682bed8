package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/resolvercache/dnstest"
)

// The demo reports as the receiving side of its corpus: rcpt.example.
const (
	demoReceiver   = "rcpt.example"
	demoReportFrom = "dmarc-reports@" + demoReceiver
)

// demoReportsConfig is what the demo's reporting step needs.
type demoReportsConfig struct {
	brokers        []string
	aggregateTopic string
	// messages is how many verdicts had a DMARC policy: the aggregates
	// must hold that many before the day is closed.
	messages uint64
	res      resolvercache.Resolver
	dns      *dnstest.Server
	rsaKey   *rsa.PrivateKey
	// dir receives the report files.
	dir string
}

// demoWindowReport is one line of the demo's report summary.
type demoWindowReport struct {
	window       reportgen.Window
	rows, msgs   uint64
	dispositions map[string]uint64
	file         string
	size         int
}

// demoReportResult is what the demo's reporting step did.
type demoReportResult struct {
	windows   []demoWindowReport
	built     reportgen.BuildStats
	delivered reportgen.DeliverStats
	mails     int
	// dkimVerified counts received mails whose every signature (RSA and
	// Ed25519) verified against the demo DNS.
	dkimVerified int
	sinkAddr     string
	took         time.Duration
}

// demoReports runs the report side on the demo's broker: it merges the
// partial aggregates into a store (pipeline.ConsumeAggregates, as `run`
// does), closes the demo's day(s) now instead of after midnight plus the
// grace period, builds the RFC 9990 reports into the outbox, writes the
// files to cfg.dir and delivers them, DKIM-signed with an RSA and an Ed25519
// key, through a loopback SMTP server standing in for the rua domains' MX.
func demoReports(ctx context.Context, cfg demoReportsConfig) (*demoReportResult, error) {
	start := time.Now()
	storeDir, err := os.MkdirTemp("", "authpipe-demo-store-")
	if err != nil {
		return nil, fmt.Errorf("demo: report store: %w", err)
	}
	defer os.RemoveAll(storeDir)
	st, err := reportgen.OpenStore(storeDir, time.Now)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := demoMerge(ctx, cfg, st); err != nil {
		return nil, err
	}
	wins, err := st.Windows(reportgen.KindDMARC)
	if err != nil {
		return nil, err
	}
	res := &demoReportResult{}
	for _, wi := range wins {
		if err := st.CloseWindow(reportgen.KindDMARC, wi.Window); err != nil {
			return nil, err
		}
		closed, err := st.WindowInfo(reportgen.KindDMARC, wi.Window)
		if err != nil || closed == nil {
			return nil, fmt.Errorf("demo: window %s: %v", wi.Window, err)
		}
		wr := demoWindowReport{window: wi.Window, rows: closed.Rows, msgs: closed.Messages, dispositions: map[string]uint64{}}
		if err := st.ForEachRow(wi.Window, func(r reportgen.Row) error { wr.dispositions[r.Disposition] += r.Count; return nil }); err != nil {
			return nil, err
		}
		res.windows = append(res.windows, wr)
	}

	sink, err := startMailSink("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	res.sinkAddr = sink.Addr()
	keys, err := demoReportKeys(cfg)
	if err != nil {
		return nil, err
	}
	rep := &reportgen.Reporter{
		Store: st,
		Deliverer: &reportgen.Deliverer{Resolver: cfg.res, From: demoReportFrom, HELO: "reports." + demoReceiver, DKIM: keys,
			Smarthost: sink.Addr(), Timeout: 10 * time.Second, Now: time.Now},
		DMARC: reportgen.ReportConfig{OrgName: "authpipe demo", Email: demoReportFrom, Receiver: demoReceiver, Generator: "authpipe demo",
			Format: reportgen.FormatRFC9990},
		RateInterval: -1,
	}
	if res.built, err = rep.BuildClosed(ctx); err != nil {
		return nil, fmt.Errorf("demo: build reports: %w", err)
	}
	items, err := rep.Store.OutboxItems(true)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if err := os.WriteFile(filepath.Join(cfg.dir, it.Meta.FileName), it.File, 0o644); err != nil {
			return nil, fmt.Errorf("demo: write report: %w", err)
		}
		for i := range res.windows {
			if res.windows[i].window == it.Window {
				res.windows[i].file, res.windows[i].size = it.Meta.FileName, len(it.File)
			}
		}
	}
	if res.delivered, err = rep.Deliver(ctx); err != nil {
		return nil, fmt.Errorf("demo: deliver reports: %w", err)
	}
	lookup := func(name string) ([]string, error) {
		ans, err := cfg.res.Lookup(ctx, name, dns.TypeTXT)
		if err != nil {
			return nil, err
		}
		return ans.TXT, nil
	}
	for _, m := range sink.Messages() {
		res.mails++
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: lookup})
		ok := err == nil && len(vs) == len(keys)
		for _, v := range vs {
			ok = ok && v.Err == nil
		}
		if ok {
			res.dkimVerified++
		}
	}
	res.took = time.Since(start)
	return res, nil
}

// demoMerge merges the partial aggregates on the demo's broker into st
// until they hold cfg.messages messages.
func demoMerge(ctx context.Context, cfg demoReportsConfig, st *reportgen.Store) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- pipeline.ConsumeAggregates(cctx, pipeline.ReportConsumerConfig{Brokers: cfg.brokers, Topic: cfg.aggregateTopic}, st, nil)
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		wins, err := st.Windows(reportgen.KindDMARC)
		if err != nil {
			return err
		}
		var n uint64
		for _, w := range wins {
			n += w.Messages
		}
		if n == cfg.messages {
			cancel()
			return <-done
		}
		select {
		case err := <-done:
			if err == nil {
				err = cctx.Err()
			}
			return fmt.Errorf("demo: aggregates hold %d of %d messages: %w", n, cfg.messages, err)
		case <-tick.C:
		}
	}
}

// demoReportKeys makes the report signer's keys (the demo's RSA key and a
// new Ed25519 key) and publishes them in the demo zone.
func demoReportKeys(cfg demoReportsConfig) ([]reportgen.DKIMKey, error) {
	pub, err := x509.MarshalPKIXPublicKey(&cfg.rsaKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("demo: key: %w", err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("demo: key: %w", err)
	}
	cfg.dns.AddRR(dnstest.TXT("reports-rsa._domainkey."+demoReceiver, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub), 3600))
	cfg.dns.AddRR(dnstest.TXT("reports-ed._domainkey."+demoReceiver, "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(edPub), 3600))
	return []reportgen.DKIMKey{
		{Domain: demoReceiver, Selector: "reports-rsa", Signer: cfg.rsaKey},
		{Domain: demoReceiver, Selector: "reports-ed", Signer: edKey},
	}, nil
}

// print writes the report summary.
func (r *demoReportResult) print(out io.Writer, dir string) error {
	fmt.Fprintf(out, "\nDMARC aggregate reports (RFC 9990), the demo's day closed at once\n")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  DOMAIN\tDAY\tROWS\tMESSAGES\tDISPOSITIONS\tFILE\tSIZE\n")
	var msgs uint64
	for _, w := range r.windows {
		var ds []string
		for d, n := range w.dispositions {
			ds = append(ds, fmt.Sprintf("%s=%d", d, n))
		}
		sort.Strings(ds)
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\t%s\t%d\n", w.window.Domain, reportgen.DayString(w.window.Day), w.rows, w.msgs,
			strings.Join(ds, " "), w.file, w.size)
		msgs += w.msgs
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "  %d reports, %d messages; files in %s\n", len(r.windows), msgs, dir)
	fmt.Fprintf(out, "  delivered %d of %d by SMTP to a loopback server (%s) standing in for the rua MX; %d mails with both DKIM signatures (rsa-sha256, ed25519-sha256) verified\n",
		r.delivered.Sent, r.built.Items, r.sinkAddr, r.dkimVerified)
	fmt.Fprintf(out, "  merge, close, build and deliver took %s\n", r.took.Round(time.Millisecond))
	if r.built.Files != len(r.windows) || r.delivered.Sent != r.built.Items || r.dkimVerified != r.mails {
		return errors.New("demo: not every report was built, delivered and verified (see the summary)")
	}
	return nil
}
