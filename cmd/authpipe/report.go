package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/authpipe/authpipe/reportgen"
)

// reportFlags are shared by the report subcommands.
type reportFlags struct {
	config  string
	dataDir string
	grace   time.Duration
	domain  string
	day     string
	kind    string
	// url: list and show ask this running run instead (registerView).
	url string
}

func (rf *reportFlags) registerCommon(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.config, "config", "", "YAML configuration `file` of 'authpipe run' (its report and data-dir keys apply; the others are skipped; default: $AUTHPIPE_CONFIG)")
	cmd.Flags().StringVar(&rf.dataDir, "data-dir", "./authpipe-data", "data `directory` of 'authpipe run': the report store is DIR/reports/reports.db")
	cmd.Flags().DurationVar(&rf.grace, "report-grace", reportgen.DefaultGrace, "how long after a UTC day ends its window stays open (as run's --report-grace)")
}

// registerView adds --url to list and show, which can read a store a
// running run holds (reportView).
func (rf *reportFlags) registerView(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.url, "url", "", "read the report store through the running 'authpipe run' at this `URL` (http://its --http-addr) instead of --data-dir; "+
		"without it, a store a run on this machine holds is read through that run")
}

func (rf *reportFlags) registerWindow(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.domain, "domain", "", "policy `domain` of the window")
	cmd.Flags().StringVar(&rf.day, "day", "", "UTC `day` of the window (YYYY-MM-DD)")
	cmd.Flags().StringVar(&rf.kind, "kind", "dmarc", "window kind: dmarc or tlsrpt")
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

// reportStoreDir is where `run` keeps the report store in its data directory.
func reportStoreDir(dataDir string) string { return filepath.Join(dataDir, "reports") }

// open opens the report store of --data-dir; it must exist (a typo in the
// path is an error, not a new empty store).
func (rf *reportFlags) open(opts ...reportgen.StoreOption) (*reportgen.Store, error) {
	dir := reportStoreDir(rf.dataDir)
	if _, err := os.Stat(filepath.Join(dir, reportgen.StoreFile)); err != nil {
		return nil, fmt.Errorf("no report store under --data-dir %s (is it the data directory of 'authpipe run'?): %w", rf.dataDir, err)
	}
	if rf.grace <= 0 {
		return nil, usagef("--report-grace must be positive, got %s", rf.grace)
	}
	st, err := reportgen.OpenStore(dir, time.Now, opts...)
	if err != nil {
		return nil, err
	}
	st.Grace = rf.grace
	return st, nil
}

func newReportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Inspect and deliver DMARC aggregate (RFC 9990) and SMTP TLS (RFC 8460) reports",
		Long: `The report commands work on the report store under --data-dir: the
aggregated windows (policy domain, UTC day), their state (open, closed,
built) and the outbox. --data-dir is the data directory of 'authpipe run'
(the store is DIR/reports/reports.db); --config reads run's YAML file, and
AUTHPIPE_* environment variables apply as for run.

A running 'authpipe run' (role report or all) holds its store: list and show
then read it through that run's --http-addr (found in DIR/reports/run.json,
or given as --url), while close and send wait 5s and fail: the running
reporter closes, builds and sends itself. See docs/reports.md.`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyConfigShared(cmd.Flags(), os.Environ(), isRunOption, nil)
		},
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
			v, err := rf.view()
			if err != nil {
				return err
			}
			defer v.Close()
			l, err := v.list(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(l)
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tDOMAIN\tDAY\tSTATE\tMESSAGES\tROWS\tLATE\tCLOSES AT\tBUILD")
			for _, w := range l.Windows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", printable(w.Kind), printable(w.Domain), printable(w.Day), printable(w.State),
					w.Messages, w.Rows, w.Late, w.ClosesAt.Format(time.RFC3339), printable(buildColumn(w)))
			}
			if len(l.Outbox) > 0 {
				fmt.Fprintln(tw, "\nOUTBOX\tDEST\tFILE\tSTATE\tATTEMPTS\tNEXT\tERROR")
				for _, it := range l.Outbox {
					// The error is a remote server's reply as often as not.
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", printable(it.ID[:min(8, len(it.ID))]), printable(it.Dest), printable(it.File),
						printable(it.State), it.Attempts, it.NextAttempt.Format(time.RFC3339), printable(it.LastError))
				}
			}
			return tw.Flush()
		},
	}
	rf.registerCommon(cmd)
	rf.registerView(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// buildColumn is list's BUILD column: empty, or how many rounds failed to
// build the window and, while it is not built, the last error (its first
// line, at most 100 bytes; --json has it whole).
func buildColumn(w listedWindow) string {
	if w.BuildFailures == 0 {
		return ""
	}
	s := fmt.Sprintf("%d failed", w.BuildFailures)
	if w.BuildError == "" {
		return s
	}
	msg, _, cut := strings.Cut(w.BuildError, "\n")
	if len(msg) > 100 {
		msg, cut = strings.ToValidUTF8(msg[:100], ""), true
	}
	if cut {
		msg += "…"
	}
	return s + ", last: " + msg
}

func newReportShowCmd() *cobra.Command {
	var rf reportFlags
	var id reportIdentityFlags
	var from string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the report of one window (XML or TLSRPT JSON, uncompressed)",
		Long: `show prints the report of one window as its receiver would read it: the
XML (RFC 9990, or RFC 7489 with --rfc7489) or TLSRPT JSON, uncompressed, the
parts of a split report one after the other.

The reporting identity (--org, --email or --from, --receiver, --rfc7489)
comes from the flags, the environment or --config, as for run. Read through
a running run, an identity setting not given is run's own, so the report
shown is the one run would send.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kind, w, err := rf.window()
			if err != nil {
				return err
			}
			if id.email == "" {
				id.email = from
			}
			v, err := rf.view()
			if err != nil {
				return err
			}
			defer v.Close()
			return v.show(cmd.Context(), kind, w, id, cmd.Flags().Changed, cmd.OutOrStdout())
		},
	}
	rf.registerCommon(cmd)
	rf.registerWindow(cmd)
	rf.registerView(cmd)
	id.register(cmd.Flags())
	cmd.Flags().StringVar(&from, "from", "", "From `address` of report mail (run's --from): the reporting contact when --email is not given")
	return cmd
}

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
	var df deliveryFlags
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Close due windows, build their reports into the outbox and deliver due items",
		Long: `send runs one reporting round on the store: windows past their grace period
are closed, rua destinations are looked up now (DMARC record / _smtp._tls TXT),
reports are built into the durable outbox, and due items are delivered by SMTP
(mailto:, via --smarthost or the destination MX) or HTTPS POST (TLSRPT https:).

'authpipe run' (role report or all) does the same every --report-interval with
the same delivery flags; send is for stores no running reporter owns, or for a
round now. --receiver and --from are required. Report mail is DKIM-signed with
every --dkim-key: give an RSA and an Ed25519 key to add both signatures.

Exit status 0 when the round ran, whatever single deliveries did: a rua
address that refuses reports is common, and its outcome is in the counts
printed and in 'authpipe report list' (state failed, with the reply); 1 when
the round could not run (store, DNS set-up) or a window failed to build.`,
		Example: `  authpipe report send --data-dir /var/lib/authpipe --receiver mx.example.net \
      --from dmarc-reports@example.net --dkim-key rsa2026=/etc/authpipe/rsa.pem --dkim-key ed2026=/etc/authpipe/ed25519.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := dns.resolver(nil, 0)
			if err != nil {
				return err
			}
			r, err := df.reporter(res, time.Now)
			if err != nil {
				return err
			}
			s, err := rf.open()
			if err != nil {
				return err
			}
			defer s.Close()
			r.Store = s
			// A hand-run round has no partition ownership: windows another
			// reporter built are left to their owner's takeover (run).
			r.TakeoverAfter = -1
			bs, ds, err := r.Tick(cmd.Context())
			fmt.Fprintf(cmd.OutOrStdout(), "built: windows=%d files=%d items=%d no-rua=%d unverified=%d deferred=%d failed=%d\n",
				bs.Windows, bs.Files, bs.Items, bs.NoDestination, bs.Unverified, bs.Deferred, bs.Failed)
			fmt.Fprintf(cmd.OutOrStdout(), "delivered: sent=%d temp-failed=%d perm-failed=%d expired=%d suppressed=%d rate-limited=%d\n",
				ds.Sent, ds.TempFailed, ds.PermFailed, ds.Expired, ds.Suppressed, ds.RateLimited)
			return err
		},
	}
	rf.registerCommon(cmd)
	df.register(cmd.Flags())
	dns.register(cmd.Flags())
	return cmd
}
