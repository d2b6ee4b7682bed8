package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/stages/dmarc"
)

// reportFlags are shared by the report subcommands.
type reportFlags struct {
	dataDir  string
	domain   string
	day      string
	kind     string
	org      string
	email    string
	receiver string
	rfc7489  bool
}

func (rf *reportFlags) registerCommon(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.dataDir, "data-dir", "./authpipe-data", "`directory` holding the report store (reports.db)")
}

func (rf *reportFlags) registerWindow(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.domain, "domain", "", "policy `domain` of the window")
	cmd.Flags().StringVar(&rf.day, "day", "", "UTC `day` of the window (YYYY-MM-DD)")
	cmd.Flags().StringVar(&rf.kind, "kind", "dmarc", "window kind: dmarc or tlsrpt")
}

func (rf *reportFlags) registerOrg(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.org, "org", "authpipe", "reporting organisation name (org_name / organization-name)")
	cmd.Flags().StringVar(&rf.email, "email", "", "reporting contact `address` (email / contact-info)")
	cmd.Flags().StringVar(&rf.receiver, "receiver", "", "reporting `domain`: file names, Submitter, TLS-Report-Submitter")
	cmd.Flags().BoolVar(&rf.rfc7489, "rfc7489", false, "write RFC 7489 Appendix C XML (and read rua with RFC 7489 syntax, honouring !size)")
}

func (rf *reportFlags) kindValue() (reportgen.Kind, error) {
	switch rf.kind {
	case "dmarc":
		return reportgen.KindDMARC, nil
	case "tlsrpt":
		return reportgen.KindTLS, nil
	}
	return 0, usagef("--kind: want dmarc or tlsrpt, got %q", rf.kind)
}

func (rf *reportFlags) window() (reportgen.Kind, reportgen.Window, error) {
	kind, err := rf.kindValue()
	if err != nil {
		return 0, reportgen.Window{}, err
	}
	if rf.domain == "" || rf.day == "" {
		return 0, reportgen.Window{}, usagef("--domain and --day are required")
	}
	d, err := reportgen.ParseDay(rf.day)
	if err != nil {
		return 0, reportgen.Window{}, usageError{err}
	}
	return kind, reportgen.Window{Domain: rf.domain, Day: d}, nil
}

func (rf *reportFlags) open() (*reportgen.Store, error) {
	if _, err := os.Stat(rf.dataDir); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	return reportgen.OpenStore(rf.dataDir, time.Now)
}

func (rf *reportFlags) reportConfig() reportgen.ReportConfig {
	cfg := reportgen.ReportConfig{OrgName: rf.org, Email: rf.email, Receiver: rf.receiver, Generator: "authpipe", Format: reportgen.FormatRFC9990}
	if rf.rfc7489 {
		cfg.Format = reportgen.FormatRFC7489
	}
	return cfg
}

func newReportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Inspect and deliver DMARC aggregate (RFC 9990) and SMTP TLS (RFC 8460) reports",
		Long: `The report commands work on the report store under --data-dir: the
aggregated windows (policy domain, UTC day), their state (open, closed,
built) and the outbox. See docs/reports.md.`,
	}
	cmd.AddCommand(newReportListCmd(), newReportShowCmd(), newReportCloseCmd(), newReportSendCmd())
	return cmd
}

func newReportListCmd() *cobra.Command {
	var rf reportFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List report windows and outbox items",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := rf.open()
			if err != nil {
				return err
			}
			defer s.Close()
			var wins []reportgen.WindowInfo
			for _, k := range []reportgen.Kind{reportgen.KindDMARC, reportgen.KindTLS} {
				w, err := s.Windows(k)
				if err != nil {
					return err
				}
				wins = append(wins, w...)
			}
			items, err := s.OutboxItems(false)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type win struct {
					Kind, Domain, Day, State string
					Messages, Rows, Late     uint64
					ClosesAt                 time.Time
				}
				var ws []win
				for _, w := range wins {
					ws = append(ws, win{w.Kind.String(), w.Domain, reportgen.DayString(w.Day), w.State, w.Messages, w.Rows, w.Late, s.ClosesAt(w.Day)})
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"windows": ws, "outbox": items})
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tDOMAIN\tDAY\tSTATE\tMESSAGES\tROWS\tLATE\tCLOSES AT")
			for _, w := range wins {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", w.Kind, w.Domain, reportgen.DayString(w.Day), w.State, w.Messages, w.Rows, w.Late, s.ClosesAt(w.Day).Format(time.RFC3339))
			}
			if len(items) > 0 {
				fmt.Fprintln(tw, "\nOUTBOX\tDEST\tFILE\tSTATE\tATTEMPTS\tNEXT\tERROR")
				for _, it := range items {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", it.ID[:8], it.Dest, it.Meta.FileName, it.State, it.Attempts, it.NextAttempt.Format(time.RFC3339), it.LastError)
				}
			}
			return tw.Flush()
		},
	}
	rf.registerCommon(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newReportShowCmd() *cobra.Command {
	var rf reportFlags
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the report of one window (XML or TLSRPT JSON, uncompressed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kind, w, err := rf.window()
			if err != nil {
				return err
			}
			s, err := rf.open()
			if err != nil {
				return err
			}
			defer s.Close()
			wi, err := s.WindowInfo(kind, w)
			if err != nil {
				return err
			}
			if wi == nil {
				return fmt.Errorf("no %s window %s", kind, w)
			}
			if rf.receiver == "" {
				rf.receiver = "localhost"
			}
			if rf.email == "" {
				rf.email = "postmaster@" + rf.receiver
			}
			var gz [][]byte
			if kind == reportgen.KindTLS {
				var buf bytes.Buffer
				if _, err := reportgen.BuildTLSRPT(s, w, reportgen.TLSReportConfig{OrganizationName: rf.org, ContactInfo: rf.email, Sender: rf.receiver}, &buf); err != nil {
					return err
				}
				gz = append(gz, buf.Bytes())
			} else {
				_, err := reportgen.BuildDMARC(s, w, wi.Policy, rf.reportConfig(), func(reportgen.ReportFile) (io.Writer, error) {
					gz = append(gz, nil)
					return &sliceWriter{p: &gz[len(gz)-1]}, nil
				})
				if err != nil {
					return err
				}
			}
			for _, b := range gz {
				zr, err := gzip.NewReader(bytes.NewReader(b))
				if err != nil {
					return err
				}
				if _, err := io.Copy(cmd.OutOrStdout(), zr); err != nil {
					return err
				}
			}
			return nil
		},
	}
	rf.registerCommon(cmd)
	rf.registerWindow(cmd)
	rf.registerOrg(cmd)
	return cmd
}

type sliceWriter struct{ p *[]byte }

func (w *sliceWriter) Write(b []byte) (int, error) { *w.p = append(*w.p, b...); return len(b), nil }

func newReportCloseCmd() *cobra.Command {
	var rf reportFlags
	var due bool
	cmd := &cobra.Command{
		Use:   "close",
		Short: "Close one window now (--domain, --day), or every window past its grace period (--due)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := rf.open()
			if err != nil {
				return err
			}
			defer s.Close()
			if due {
				closed, err := s.CloseDue()
				if err != nil {
					return err
				}
				for _, w := range closed {
					fmt.Fprintf(cmd.OutOrStdout(), "closed %s %s\n", w.Kind, w.Window)
				}
				return nil
			}
			kind, w, err := rf.window()
			if err != nil {
				return err
			}
			if err := s.CloseWindow(kind, w); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "closed %s %s\n", kind, w)
			return nil
		},
	}
	rf.registerCommon(cmd)
	rf.registerWindow(cmd)
	cmd.Flags().BoolVar(&due, "due", false, "close every window whose UTC day ended more than the grace period ago")
	return cmd
}

func newReportSendCmd() *cobra.Command {
	var rf reportFlags
	var dns dnsFlags
	var from, helo, smarthost, keyFile, selector, signDomain string
	var allow []string
	var maxSize int64
	var requireTLS bool
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Close due windows, build their reports into the outbox and deliver due items",
		Long: `send runs one reporting round on the store: windows past their grace period
are closed, rua destinations are looked up now (DMARC record / _smtp._tls TXT),
reports are built into the durable outbox, and due items are delivered by SMTP
(mailto:, via --smarthost or the destination MX) or HTTPS POST (TLSRPT https:).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rf.receiver == "" || from == "" {
				return usagef("--receiver and --from are required")
			}
			if rf.email == "" {
				rf.email = from
			}
			res, err := dns.resolver()
			if err != nil {
				return err
			}
			d := &reportgen.Deliverer{Resolver: res, From: from, HELO: helo, Smarthost: smarthost, Now: time.Now}
			for _, a := range allow {
				p, err := netip.ParsePrefix(a)
				if err != nil {
					return usagef("--allow: %v", err)
				}
				d.Addresses.Allow = append(d.Addresses.Allow, p)
			}
			if keyFile != "" {
				pemBytes, err := os.ReadFile(keyFile)
				if err != nil {
					return err
				}
				k, err := reportgen.ParseDKIMKey(pemBytes)
				if err != nil {
					return err
				}
				if signDomain == "" {
					signDomain = rf.receiver
				}
				d.DKIM = reportgen.DKIMKey{Domain: signDomain, Selector: selector, Signer: k}
			}
			s, err := rf.open()
			if err != nil {
				return err
			}
			defer s.Close()
			r := &reportgen.Reporter{Store: s, Deliverer: d, DMARC: rf.reportConfig(), DefaultCap: maxSize, RequireTLS: requireTLS,
				TLS: reportgen.TLSReportConfig{OrganizationName: rf.org, ContactInfo: rf.email, Sender: rf.receiver}}
			if rf.rfc7489 {
				r.Mode = dmarc.ModeRFC7489
			}
			bs, ds, err := r.Tick(cmd.Context())
			fmt.Fprintf(cmd.OutOrStdout(), "built: windows=%d files=%d items=%d no-rua=%d unverified=%d deferred=%d\n",
				bs.Windows, bs.Files, bs.Items, bs.NoDestination, bs.Unverified, bs.Deferred)
			fmt.Fprintf(cmd.OutOrStdout(), "delivered: sent=%d temp-failed=%d perm-failed=%d expired=%d suppressed=%d rate-limited=%d\n",
				ds.Sent, ds.TempFailed, ds.PermFailed, ds.Expired, ds.Suppressed, ds.RateLimited)
			return err
		},
	}
	rf.registerCommon(cmd)
	rf.registerOrg(cmd)
	dns.register(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "From and MAIL FROM `address` of report mail (its domain must align with the DKIM domain)")
	f.StringVar(&helo, "helo", "", "EHLO `name`")
	f.StringVar(&smarthost, "smarthost", "", "relay all report mail through this `host:port` instead of the destination MX")
	f.StringVar(&keyFile, "dkim-key", "", "PEM private key `file` (RSA or Ed25519) to DKIM-sign report mail")
	f.StringVar(&selector, "dkim-selector", "reports", "DKIM `selector`")
	f.StringVar(&signDomain, "dkim-domain", "", "DKIM signing `domain` (default --receiver)")
	f.StringSliceVar(&allow, "allow", nil, "allow delivery to this otherwise refused `prefix` (e.g. 127.0.0.1/32)")
	f.Int64Var(&maxSize, "max-size", 10<<20, "cap on one report mail in `octets`; larger reports are split")
	f.BoolVar(&requireTLS, "require-tls", false, "require STARTTLS for DMARC report mail (TLS reports always fall back to plaintext)")
	return cmd
}
