package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"github.com/twmb/franz-go/plugin/kslog"
	"golang.org/x/sync/errgroup"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/reportgen"
	"github.com/authpipe/authpipe/resolvercache"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/dkim"
)

// maxKeyCache bounds --dkim-key-cache: 10 million keys, about 33 GB.
const maxKeyCache = 10_000_000

// runFlags are the options of `authpipe run`; docs/configuration.md lists
// them all with their defaults.
type runFlags struct {
	config       string
	kafka        kafkaFlags
	dns          dnsFlags
	listen       string
	dataDir      string
	httpAddr     string
	httpReports  bool
	logLevel     string
	logFormat    string
	engine       engineFlags
	judgeAt      string
	keyCache     int
	perCore      int
	delivery     string
	kafkaLogLvl  string
	createTopics bool
	role         string
	memoryLimit  string
	gcPercent    int
	retention    time.Duration
	retentionB   int64
	segmentB     int64
	cfg          pipeline.Config
	// report: the report role's identity and delivery (shared with
	// `report send`), and how often it runs a reporting round.
	report         deliveryFlags
	reportInterval time.Duration
	reportGrace    time.Duration
	tlsTopic       string
	stateTopic     string
	reportGroup    string
	// now is the clock of the report role (window closing, outbox
	// schedule); tests inject one.
	now func() time.Time
}

func newRunCmd() *cobra.Command { return newRunCmdClock(time.Now) }

// newRunCmdClock is `authpipe run` with the report role on the given clock.
func newRunCmdClock(now func() time.Time) *cobra.Command {
	rf := &runFlags{now: now}
	cmd := &cobra.Command{
		Use:   "run [flags]",
		Short: "Run the service: mail.raw in, verdicts out; DMARC and TLS reports built and delivered",
		Long: `run consumes raw messages from Kafka (topic mail.raw, group authpipe-verify),
verifies each one and produces its JSON verdict to mail.verdicts; records that
cannot be decoded go to mail.raw.dlq with an authpipe.error header. By default
it does so exactly once, in Kafka transactions.

A message whose DNS does not answer would hold its batch, and the stream,
for seconds: once a batch's last messages stop finishing for
--straggler-wait (50ms), those left are written to --retry-topic
(mail.raw.retry) and a second stage in this process (group GROUP-retry)
gives them their verdicts, still exactly once.

Without --brokers it starts an embedded single-node broker on --listen
(127.0.0.1:9092), persisted under --data-dir, which any Kafka client can
produce to (see 'authpipe produce'). With --brokers it joins that cluster;
more instances with the same group share the partitions.

Options come from flags, then AUTHPIPE_* environment variables (AUTHPIPE_MAX_IN_FLIGHT
sets --max-in-flight), then the YAML --config file (or AUTHPIPE_CONFIG; keys are
flag names), then the defaults; docs/configuration.md lists them all. produce,
tail, verify and report read the same file.

The report role (--role report or all) merges the partial aggregates of
authpipe.aggregates and the TLS session results of mail.tls-results (group
--report-group) into the report store under --data-dir/reports. Every
--report-interval it closes the UTC days past their grace period
(--report-grace, 1h) of the domains whose partitions it owns and, when
--receiver and --from are set, builds their RFC 9990 DMARC and RFC 8460 TLS
reports into the durable outbox and delivers them to the rua addresses: SMTP
to the destination MX or
--smarthost, DKIM-signed with each --dkim-key, or HTTPS POST for TLS reports.
Without --receiver and --from it only merges and closes days, says so once
in the log, and keeps the closed days for 'authpipe report send'.

/metrics (Prometheus), /healthz and /readyz are served on --http-addr, and
with the report role /reports and /reports/show (--http-reports): the views
of 'authpipe report list' and 'show', which read them there while run holds
the store.
SIGTERM or SIGINT stops fetching, lets in-flight messages finish (up to
--shutdown-grace), commits, and exits 0.`,
		Example: `  authpipe run                                   # embedded broker, system DNS
  authpipe run --brokers kafka1:9092,kafka2:9092 --config /etc/authpipe.yaml
  authpipe run --role report --brokers kafka1:9092 --receiver mx.example.net \
      --from dmarc-reports@example.net --dkim-key rsa2026=rsa.pem --dkim-key ed2026=ed25519.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd.Flags(), os.Environ()); err != nil {
				return err
			}
			return runPipeline(cmd.Context(), rf, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	d := pipeline.Defaults()
	f.StringVar(&rf.config, "config", "", "YAML configuration `file` (keys are flag names; default: $AUTHPIPE_CONFIG)")
	rf.kafka.register(f, "Kafka seed `brokers` host:port,...; none starts the embedded broker")
	rf.dns.register(f)
	f.StringVar(&rf.listen, "listen", "127.0.0.1:9092", "embedded broker listen `address` (without --brokers)")
	f.StringVar(&rf.dataDir, "data-dir", "./authpipe-data", "`directory` where the embedded broker keeps topics and offsets")
	f.StringVar(&rf.httpAddr, "http-addr", "127.0.0.1:9464", "`address` for /metrics, /healthz, /readyz and the report views (empty: no HTTP server)")
	f.BoolVar(&rf.httpReports, "http-reports", true, "report role: serve the report store read-only on --http-addr (/reports, /reports/show), which 'authpipe report list' and 'show' read while run holds the store")
	f.StringVar(&rf.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	f.StringVar(&rf.logFormat, "log-format", "auto", "log `format`: json, text, or auto (text when standard error is a terminal, json otherwise)")
	f.StringVar(&rf.kafkaLogLvl, "kafka-log-level", "warn", "`level` of the Kafka client's own log lines")
	rf.engine.register(f)
	f.StringVar(&rf.judgeAt, "judge-at", "now", "`time` each message is judged as of (DKIM and ARC x= expiry, SPF %{t}): now, or arrival (its smtp.received-at, for re-scoring archived mail; now when a record has none)")
	f.IntVar(&rf.keyCache, "dkim-key-cache", dkim.DefaultKeyCacheEntries, "DKIM `keys` kept parsed for their TTL (about 3.4 KB each; part of the memory bound)")
	f.StringVar(&rf.cfg.InputTopic, "input-topic", d.InputTopic, "`topic` of raw messages")
	f.StringVar(&rf.cfg.VerdictTopic, "verdict-topic", d.VerdictTopic, "`topic` for JSON verdicts")
	f.StringVar(&rf.cfg.DLQTopic, "dlq-topic", d.DLQTopic, "dead-letter `topic` for undecodable records")
	f.StringVar(&rf.cfg.Group, "group", d.Group, "consumer `group`")
	f.StringVar(&rf.cfg.AggregateTopic, "aggregate-topic", d.AggregateTopic, "`topic` for partial DMARC aggregates (written with the verdicts)")
	f.StringVar(&rf.memoryLimit, "memory-limit", "auto", "Go memory `limit` (runtime/debug.SetMemoryLimit): auto (75% of the pipeline's memory bound computed from the in-flight, fetch, producer and DNS cache limits, logged at start), off, or a size such as 2g; GOMEMLIMIT in the environment wins")
	f.IntVar(&rf.gcPercent, "gc-percent", 400, "Go GC target `percent` (GOGC); the memory limit still holds memory under the bound, so collecting less often only saves CPU; GOGC in the environment wins")
	f.DurationVar(&rf.retention, "broker-retention", 7*24*time.Hour, "embedded broker: how long records are kept (log.retention.ms); must cover a report day plus its grace for replays")
	f.Int64Var(&rf.retentionB, "broker-retention-bytes", -1, "embedded broker: `bytes` kept per partition (log.retention.bytes; -1: no size limit)")
	f.Int64Var(&rf.segmentB, "broker-segment-bytes", pipeline.DefaultSegmentBytes, "embedded broker: `bytes` per log segment (log.segment.bytes); storage is freed a segment at a time")
	f.StringVar(&rf.role, "role", "all", "`role`: verify (mail.raw to verdicts and aggregates), report (aggregates into the report store under --data-dir/reports; reports built and delivered), or all")
	f.DurationVar(&rf.reportGrace, "report-grace", reportgen.DefaultGrace, "report role: how long after a UTC day ends late results are still merged before the day closes")
	f.DurationVar(&rf.reportInterval, "report-interval", time.Minute, "report role: how often to close due days, build their reports and deliver due outbox items")
	f.StringVar(&rf.tlsTopic, "tls-topic", "mail.tls-results", "report role: `topic` of JSON TLS session results (RFC 8460 reports); malformed ones go to TOPIC.dlq")
	f.StringVar(&rf.stateTopic, "report-state-topic", "authpipe.report-state", "report role: compacted `topic` of report delivery state shared by the reporters")
	f.StringVar(&rf.reportGroup, "report-group", "authpipe-report", "report role: consumer `group` of the reporters")
	rf.report.register(f)
	f.Int32Var(&rf.cfg.Partitions, "partitions", d.Partitions, "partition `count` for topics created at start")
	f.Int16Var(&rf.cfg.ReplicationFactor, "replication-factor", d.ReplicationFactor, "replication `factor` for created topics (-1: broker default)")
	f.BoolVar(&rf.createTopics, "create-topics", true, "create missing topics at start")
	f.StringVar(&rf.delivery, "delivery", string(d.Delivery), "`guarantee`: exactly-once (transactions) or at-least-once (faster, may duplicate after a crash)")
	f.StringVar(&rf.cfg.TransactionalID, "transactional-id", "", "transactional `id`, stable per instance and unique among instances (default GROUP-HOSTNAME, or GROUP-HOSTNAME-2, -3, … beside other instances of the group on this host)")
	f.IntVar(&rf.perCore, "max-in-flight-per-core", 256, "messages verified at once per CPU (DNS latency, not CPU, dominates)")
	f.IntVar(&rf.cfg.MaxInFlight, "max-in-flight", 0, "messages verified at once; overrides --max-in-flight-per-core when > 0")
	f.Int64Var(&rf.cfg.MaxInFlightBytes, "max-in-flight-bytes", d.MaxInFlightBytes, "`bytes` of messages verified at once")
	f.IntVar(&rf.cfg.MaxMessageBytes, "max-message-bytes", d.MaxMessageBytes, "largest message verified, in `bytes`; larger go to the DLQ")
	f.DurationVar(&rf.cfg.BatchInterval, "batch-interval", d.BatchInterval, "how long a batch (transaction) takes new records before it commits")
	f.IntVar(&rf.cfg.BatchMaxRecords, "batch-max-records", 0, "records after which a batch commits early (default 16 × max-in-flight)")
	f.DurationVar(&rf.cfg.ShutdownGrace, "shutdown-grace", d.ShutdownGrace, "time in-flight messages get to finish at shutdown")
	f.IntVar(&rf.cfg.RetryTemperror, "retry-temperror", 0, "re-verify a message with a temperror up to this many `times` before emitting its verdict")
	f.DurationVar(&rf.cfg.RetryDelay, "retry-delay", d.RetryDelay, "wait before such a retry")
	f.DurationVar(&rf.cfg.StragglerWait, "straggler-wait", 50*time.Millisecond, "when a batch that has stopped taking records sees none of its last messages finish for this long (at most ten times this in all), those still on DNS go to --retry-topic, where a second stage of this process gives them their verdicts, so one slow DNS answer does not hold the stream (0: wait for every message, no retry stage)")
	f.StringVar(&rf.cfg.RetryTopic, "retry-topic", "mail.raw.retry", "`topic` of the messages deferred by --straggler-wait")
	f.DurationVar(&rf.cfg.SessionTimeout, "session-timeout", d.SessionTimeout, "consumer group session timeout")
	f.DurationVar(&rf.cfg.RebalanceTimeout, "rebalance-timeout", d.RebalanceTimeout, "consumer group rebalance timeout")
	f.DurationVar(&rf.cfg.TransactionTimeout, "transaction-timeout", d.TransactionTimeout, "broker-side transaction timeout")
	f.DurationVar(&rf.cfg.FetchMaxWait, "fetch-max-wait", d.FetchMaxWait, "longest the broker holds a fetch with nothing to return; also how long a partition assigned at a start or rebalance can wait for its first fetch")
	return cmd
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("log level %q: want debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: lv}
	if format == "auto" {
		// People at a terminal read text; a service's logs go to a
		// collector, which reads JSON.
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, usagef("--log-format %q: want json, text or auto", format)
}

func runPipeline(ctx context.Context, rf *runFlags, stderr io.Writer) (err error) {
	log, err := newLogger(stderr, rf.logLevel, rf.logFormat)
	if err != nil {
		return err
	}
	// The last line of a clean stop, after every deferred close (the
	// embedded broker's included): a log that ends without it was cut
	// short (killed) or ended in the error standard error shows.
	defer func() {
		if err == nil {
			log.Info("run stopped: work committed, exit 0")
		}
	}()
	kLog, err := newLogger(stderr, rf.kafkaLogLvl, rf.logFormat)
	if err != nil {
		return err
	}
	for _, v := range unknownEnvOptions(os.Environ()) {
		attrs := []any{"variable", v[0]}
		if v[1] != "" {
			attrs = append(attrs, "did_you_mean", v[1])
		}
		log.Warn("environment variable names no option of any authpipe command; ignored", attrs...)
	}
	cfg := rf.cfg
	cfg.Delivery = pipeline.Delivery(rf.delivery)
	switch {
	case cfg.StragglerWait < 0:
		return usagef("--straggler-wait must not be negative, got %s", cfg.StragglerWait)
	case cfg.StragglerWait == 0:
		cfg.RetryTopic = "" // no deferral, no retry stage
	case cfg.RetryTopic == "":
		return usagef("--retry-topic is empty: set it, or --straggler-wait 0 to wait for every message")
	}
	cfg.SkipCreateTopics = !rf.createTopics
	if cfg.MaxInFlight == 0 {
		if rf.perCore <= 0 {
			return usagef("--max-in-flight-per-core must be positive")
		}
		cfg.MaxInFlight = rf.perCore * runtime.GOMAXPROCS(0)
	}
	switch rf.role {
	case "all", "verify", "report":
	default:
		return usagef("--role %q: want verify, report or all", rf.role)
	}
	if rf.reportGrace <= 0 {
		return usagef("--report-grace must be positive, got %s", rf.reportGrace)
	}
	if rf.reportInterval <= 0 {
		return usagef("--report-interval must be positive, got %s", rf.reportInterval)
	}
	if rf.judgeAt != "now" && rf.judgeAt != "arrival" {
		return usagef("--judge-at: want now or arrival, got %q", rf.judgeAt)
	}
	if rf.keyCache < 1 || rf.keyCache > maxKeyCache {
		return usagef("--dkim-key-cache must be between 1 and %d, got %d", maxKeyCache, rf.keyCache)
	}
	engineOpts, err := rf.engine.options()
	if err != nil {
		return err
	}
	rf.kafka.log = log
	kopts, err := rf.kafka.opts()
	if err != nil {
		return err
	}
	build := readBuildInfo()
	log.Info("authpipe", "version", build.version, "revision", build.revision, "modified", build.modified, "go", build.goVersion)
	if rf.role != "report" {
		log.Info("verification", "dmarc_mode", rf.engine.dmarcMode, "judge_at", rf.judgeAt, "overrides", rf.engine.describe())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(build.collector())
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dnsMetrics, err := resolvercache.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	rf.dns.log = log
	res, dnsClient, err := rf.dns.resolverClient(dnsMetrics, pipeline.DNSQueriesInFlight(cfg))
	if err != nil {
		return err
	}
	if dnsClient != nil {
		servers := dnsClient.Upstreams()
		log.Info("DNS", "servers", servers, "timeout", rf.dns.timeout.String(), "budget", rf.dns.budget.String(), "cache_bytes", rf.dns.cacheBytes)
		go probeDNS(ctx, res, servers, log)
	} else {
		log.Info("DNS from a zone file, no network", "zone", rf.dns.zone)
	}
	now := rf.now
	if now == nil {
		now = time.Now
	}
	// The report role's Reporter: nil when delivery is not configured.
	var rep *reportgen.Reporter
	if rf.role != "verify" {
		if on, err := rf.report.enabled(); err != nil {
			return err
		} else if on {
			if rep, err = rf.report.reporter(res, now); err != nil {
				return err
			}
		}
	}
	engine := stages.New(res, append(engineOpts, stages.WithDNSBudget(rf.dns.budget),
		stages.WithKeyCacheEntries(rf.keyCache), stages.WithJudgeAtArrival(rf.judgeAt == "arrival"))...)

	metrics, err := pipeline.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// The reporter's, the retry stage's and the broker check's clients get
	// no kprom hooks (they register once per registry).
	checkKopts := append(append([]kgo.Opt(nil), kopts...), kgo.WithLogger(kslog.New(kLog.With("component", "kafka-check"))))
	reportKopts := append(append([]kgo.Opt(nil), kopts...), kgo.WithLogger(kslog.New(kLog.With("component", "kafka-report"))))
	retryKopts := append(append([]kgo.Opt(nil), kopts...), kgo.WithLogger(kslog.New(kLog.With("component", "kafka-retry"))))
	kopts = append(kopts,
		kgo.WithHooks(kprom.NewMetrics("authpipe_kafka", kprom.Registerer(reg), kprom.Gatherer(reg))),
		kgo.WithLogger(kslog.New(kLog.With("component", "kafka"))))

	if len(rf.kafka.brokers) == 0 {
		if rf.retention <= 0 {
			return usagef("--broker-retention must be positive, got %s", rf.retention)
		}
		if rf.segmentB < 1<<20 {
			return usagef("--broker-segment-bytes must be at least 1 MiB (1048576), got %d", rf.segmentB)
		}
		b, err := pipeline.StartBroker(pipeline.BrokerConfig{
			Addr: rf.listen, DataDir: rf.dataDir, MaxMessageBytes: cfg.MaxMessageBytes + 1<<20,
			Retention: rf.retention, RetentionBytes: rf.retentionB, SegmentBytes: rf.segmentB,
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w (another 'authpipe run'? to add an instance, join its broker with --brokers %s, "+
				"with a --data-dir and an --http-addr of its own)", err, rf.listen)
		}
		if err != nil {
			return err
		}
		defer b.Close()
		if r := b.Recovery(); r.Unclean {
			log.Warn("the embedded broker's last run on the data directory did not stop cleanly (killed or crashed); "+
				"the transactions it left open are aborted", "data_dir", rf.dataDir, "transactional_producers", r.Producers, "abort_markers", r.Markers)
		}
		addr := strings.Join(b.Addrs(), ",")
		cfg.Brokers = b.Addrs()
		if cfg.ReplicationFactor > 1 {
			cfg.ReplicationFactor = -1
		}
		log.Info("embedded Kafka broker started; produce mail to it with: authpipe produce --brokers "+addr+" FILE.eml|DIR|MBOX "+
			"(or any Kafka client: topic "+cfg.InputTopic+", envelope in smtp.* record headers)",
			"addr", addr, "data_dir", rf.dataDir)
		if !loopbackAddr(rf.listen) {
			log.Warn("the embedded broker listens beyond this host, with no TLS and no authentication: whoever reaches it "+
				"can read the mail and verdicts in its topics and write to them; keep --listen on loopback, or run a Kafka cluster with --brokers", "addr", addr)
		}
	} else {
		cfg.Brokers = rf.kafka.brokers
		// A cluster that refuses the credentials or whose certificate
		// does not verify is an error now, not a pipeline retrying
		// for ever; one not reachable yet is only logged: franz-go
		// keeps trying, as a service that starts before its cluster
		// needs.
		if err := rf.kafka.checkCluster(ctx, checkKopts, cfg.Brokers); permanentConnError(err) {
			return err
		} else if err != nil {
			log.Warn("Kafka brokers not reachable yet; the pipeline keeps trying", "err", err)
		}
	}

	p, err := pipeline.New(cfg, engine, pipeline.WithLogger(log), pipeline.WithMetrics(metrics), pipeline.WithKafkaOpts(kopts...))
	if err != nil {
		return usageError{err}
	}
	// The retry stage: the messages the first stage deferred, waited for
	// to the end (pipeline.RetryStage).
	var retry *pipeline.Pipeline
	if p.Config().RetryTopic != "" {
		rm, err := pipeline.NewRetryMetrics(reg)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		retry, err = pipeline.New(pipeline.RetryStage(p.Config()), engine, pipeline.WithLogger(log.With("stage", "retry")),
			pipeline.WithMetrics(rm), pipeline.WithKafkaOpts(retryKopts...))
		if err != nil {
			return usageError{err}
		}
	}
	verify := func(ctx context.Context) error {
		if retry == nil {
			return p.Run(ctx)
		}
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return p.Run(gctx) })
		g.Go(func() error { return retry.Run(gctx) })
		return g.Wait()
	}
	restoreMemory, err := applyMemorySettings(rf, pipeline.MemoryBound(p.Config(), rf.dns.cacheBytes, engine.CacheBytes()), os.Getenv, log)
	if err != nil {
		return err
	}
	defer restoreMemory()
	ready := func() bool { return p.Ready() && (retry == nil || retry.Ready()) }
	var reportReady atomic.Bool
	if rf.role == "report" {
		ready = reportReady.Load
	}
	// The report views' store: set while the report role has it open.
	var views *atomic.Pointer[reportgen.Store]
	viewsAddr := ""
	if rf.httpAddr != "" {
		var reports http.Handler
		paths := "/metrics /healthz /readyz"
		if rf.role != "verify" && rf.httpReports {
			views = new(atomic.Pointer[reportgen.Store])
			id := rf.report.reportIdentityFlags
			if id.email == "" {
				id.email = rf.report.from
			}
			reports = reportViewHandler(views, make(chan struct{}, 1), id)
			paths += " /reports /reports/show"
		}
		srv, err := serveHTTP(rf.httpAddr, reg, ready, reports)
		if err != nil {
			return err
		}
		if views != nil {
			viewsAddr = srv.Addr
			if !loopbackAddr(srv.Addr) {
				log.Warn("the report views (/reports) are served beyond this host: whoever reaches --http-addr can read which sources send mail for which domains; "+
					"--http-reports=false turns them off", "addr", srv.Addr)
			}
		}
		log.Info("HTTP listening", "addr", srv.Addr, "paths", paths)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	if rf.role == "verify" {
		return verify(ctx)
	}
	g, gctx := errgroup.WithContext(ctx)
	closeStore, err := startReportRole(gctx, g, reportRole{
		cfg: pipeline.ReporterConfig{Brokers: cfg.Brokers, AggregateTopic: p.Config().AggregateTopic,
			AggregateDLQTopic: p.Config().AggregateTopic + ".dlq", TLSTopic: rf.tlsTopic, TLSDLQTopic: rf.tlsTopic + ".dlq",
			StateTopic: rf.stateTopic, Group: rf.reportGroup, TickInterval: rf.reportInterval, CreateTopics: rf.createTopics,
			Partitions: cfg.Partitions, ReplicationFactor: cfg.ReplicationFactor, Clock: now},
		dir: reportStoreDir(rf.dataDir), grace: rf.reportGrace, reporter: rep, delivery: &rf.report, reg: reg, log: log, kopts: reportKopts,
		views: views, viewsAddr: viewsAddr,
	})
	if err != nil {
		return err // nothing started
	}
	defer closeStore()
	reportReady.Store(true)
	if rf.role == "all" {
		g.Go(func() error { return verify(gctx) })
	}
	return g.Wait()
}

// reportRole is what the report role of `run` needs.
type reportRole struct {
	// cfg is the reporter's Kafka side (topics, group, interval, clock).
	cfg pipeline.ReporterConfig
	// dir holds the report store (reports.db).
	dir string
	// grace is how long after a UTC day ends its window stays open.
	grace time.Duration
	// reporter builds and delivers; nil when --receiver and --from are
	// not set (the role then merges and closes days only).
	reporter *reportgen.Reporter
	delivery *deliveryFlags
	reg      prometheus.Registerer
	log      *slog.Logger
	kopts    []kgo.Opt
	// views, when not nil, is the HTTP report views' store, set while
	// the store is open; viewsAddr is their listener's address, written
	// beside the store for the report commands (runInfoFile).
	views     *atomic.Pointer[reportgen.Store]
	viewsAddr string
}

// startReportRole opens the report store and starts the report role in g
// (pipeline.RunReporter: partial aggregates and TLS results merged into
// the store; every interval due days closed, their reports built into the
// outbox and delivered, for the domains this instance owns). The returned
// func closes the store; call it after g.Wait. All of the report role's
// wiring is here.
func startReportRole(ctx context.Context, g *errgroup.Group, rr reportRole) (func(), error) {
	m, err := pipeline.NewReporterMetrics(rr.reg)
	if err != nil {
		return nil, fmt.Errorf("reporter metrics: %w", err)
	}
	rr.cfg.Metrics = m
	st, err := reportgen.OpenStore(rr.dir, rr.cfg.Clock)
	if errors.Is(err, reportgen.ErrStoreLocked) {
		// Most likely a second instance started in the first one's
		// directory, as a newcomer scaling out on one host would.
		return nil, fmt.Errorf("%w; each instance needs a --data-dir of its own", err)
	}
	if err != nil {
		return nil, err
	}
	st.Grace = rr.grace
	log := rr.log.With("component", "report")
	removeRunInfo(rr.dir)
	removeInfo := func() {}
	if rr.views != nil {
		rr.views.Store(st)
		if removeInfo, err = writeRunInfo(rr.dir, rr.viewsAddr); err != nil {
			// The views still answer at the address; only the
			// report commands' way to it is missing.
			log.Warn("report views: the report commands will need --url", "err", err)
			removeInfo = func() {}
		}
	}
	rep := rr.reporter
	if rep != nil {
		rep.Store = st
		log.Info("report delivery on", "receiver", rr.delivery.receiver, "delivery", rr.delivery.describe(rep.Deliverer.DKIM), "interval", rr.cfg.TickInterval.String())
		if len(rep.Deliverer.DKIM) == 0 {
			log.Warn("report mail will not be DKIM-signed (no --dkim-key): receivers may discard it as failing DMARC")
		}
	} else {
		log.Warn("report delivery off: --receiver and --from are not set; aggregates are merged and due days closed, "+
			"and closed days stay in the store until 'authpipe report send' (or a run with --receiver and --from) builds and delivers them",
			"store", rr.dir)
	}
	g.Go(func() error { return pipeline.RunReporter(ctx, rr.cfg, st, rep, log, rr.kopts...) })
	return func() {
		removeInfo()
		if rr.views != nil {
			rr.views.Store(nil)
		}
		if err := st.Close(); err != nil {
			log.Warn("report store: close", "err", err)
		}
	}, nil
}

// loopbackAddr reports whether the listener address addr (host:port) is
// on a loopback address, reachable from this host only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serveHTTP serves /metrics from reg, /healthz (the process is up),
// /readyz (ready() is true) and, when reports is not nil, /reports and
// below it with reports on addr.
func serveHTTP(addr string, reg *prometheus.Registry, ready func() bool, reports http.Handler) (*http.Server, error) {
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("--http-addr: %w (another instance? each needs an --http-addr of its own, or \"\" for none)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	if reports != nil {
		mux.Handle("/reports", reports)
		mux.Handle("/reports/", reports)
	}
	srv := &http.Server{Addr: l.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "authpipe: http:", err)
		}
	}()
	return srv, nil
}

// applyMemorySettings sets the Go GC target and memory limit for run: the
// limit is 75% of the pipeline's memory bound (pipeline.MemoryBound,
// MemoryBudget.GoMemoryLimit) unless
// --memory-limit says otherwise, and GOGC/GOMEMLIMIT in the environment
// take precedence over both flags. The bound is what the pipeline's own
// limits allow to be live, with room for the collector; holding the heap
// there by the limit lets the GC target be generous (fewer collections,
// less CPU) without memory growing past it. It returns a function that
// puts the previous settings back (tests run the command in-process).
func applyMemorySettings(rf *runFlags, bound pipeline.MemoryBudget, getenv func(string) string, log *slog.Logger) (restore func(), err error) {
	var limit int64
	switch strings.ToLower(rf.memoryLimit) {
	case "auto":
		limit = bound.GoMemoryLimit()
	case "off", "0":
	default:
		n, err := parseSize(rf.memoryLimit)
		if err != nil || n <= 0 {
			return nil, usagef("--memory-limit %q: want auto, off or a size such as 2g", rf.memoryLimit)
		}
		limit = n
	}
	if rf.gcPercent < -1 || rf.gcPercent == 0 {
		return nil, usagef("--gc-percent %d: want a positive percent or -1 (off)", rf.gcPercent)
	}
	oldGC, oldLimit := -2, int64(-1)
	gc := "GOGC from the environment"
	if getenv("GOGC") == "" {
		oldGC = debug.SetGCPercent(rf.gcPercent)
		gc = strconv.Itoa(rf.gcPercent)
	}
	if getenv("GOMEMLIMIT") == "" && limit > 0 {
		oldLimit = debug.SetMemoryLimit(limit)
	}
	log.Info("memory: the pipeline's bound and the Go limits",
		"bound_bytes", bound.Total, "in_flight", bound.InFlight, "work", bound.Work, "fetch", bound.Fetch,
		"produce", bound.Produce, "dns_cache", bound.DNSCache, "engine_caches", bound.Engine, "aggregates", bound.Aggregates, "retry_stage", bound.Retry,
		"memory_limit", debug.SetMemoryLimit(-1), "gc_percent", gc)
	return func() {
		if oldGC != -2 {
			debug.SetGCPercent(oldGC)
		}
		if oldLimit >= 0 {
			debug.SetMemoryLimit(oldLimit)
		}
	}, nil
}
