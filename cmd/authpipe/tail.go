package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages/verdict"
)

type tailFlags struct {
	kafka  kafkaFlags
	topic  string
	format string
	start  bool
	count  int
}

func newTailCmd() *cobra.Command {
	tf := &tailFlags{}
	cmd := &cobra.Command{
		Use:   "tail [flags]",
		Short: "Follow mail.verdicts and print verdicts as they commit",
		Long: `tail follows the verdict topic (read_committed: only verdicts of committed
transactions) and prints each verdict: one summary line per message (--format
pretty: the time its checks were judged as of, key, client, From domain and
results) or the JSON verdict as published (--format json, one per line).
Pointed at the dead-letter topic (--topic mail.raw.dlq), it prints each
record's key, error, size and envelope instead (as {"dlq": {...}} in JSON).
It reads new verdicts only, unless --from-beginning; it stops after --count
verdicts, or on SIGINT/SIGTERM.

--config (or AUTHPIPE_CONFIG) reads run's YAML file: its brokers (or, for the
embedded broker, its listen address), TLS and SASL settings and its
verdict-topic apply; its other keys are skipped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyTailConfig(cmd.Flags(), os.Environ()); err != nil {
				return err
			}
			if tf.format != "pretty" && tf.format != "json" {
				return usagef("--format %q: want pretty or json", tf.format)
			}
			return tail(cmd.Context(), tf, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	tf.kafka.register(f, "Kafka seed `brokers` host:port,... (default 127.0.0.1:9092, the embedded broker)")
	f.StringVar(&tf.topic, "topic", "mail.verdicts", "verdict `topic` to follow (default: --config's verdict-topic, else mail.verdicts)")
	f.String("config", "", "YAML configuration `file` of 'authpipe run': its Kafka keys apply (brokers, or listen for the embedded broker; TLS; SASL), verdict-topic as --topic; the others are skipped (default: $AUTHPIPE_CONFIG)")
	f.StringVar(&tf.format, "format", "pretty", "output `format`: pretty or json")
	f.BoolVar(&tf.start, "from-beginning", false, "start at the oldest verdict instead of the newest")
	f.IntVar(&tf.count, "count", 0, "exit after this many verdicts (0: follow until interrupted)")
	return cmd
}

// applyTailConfig fills tail's flags from run's configuration file and the
// environment (applyConfigShared): run's listen address (its embedded
// broker) stands for --brokers when the file names no brokers, and its
// verdict-topic for --topic.
func applyTailConfig(fs *pflag.FlagSet, environ []string) error {
	return applyConfigShared(fs, environ, isRunOption, map[string]string{"listen": "brokers", "verdict-topic": "topic"})
}

func tail(ctx context.Context, tf *tailFlags, out, stderr io.Writer) error {
	kopts, err := tf.kafka.opts()
	if err != nil {
		return err
	}
	offset := kgo.NewOffset().AtEnd()
	if tf.start {
		offset = kgo.NewOffset().AtStart()
	}
	brokers := tf.kafka.seeds("127.0.0.1:9092")
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(brokers...), kgo.MetadataMinAge(pipeline.MetadataMinAge),
		kgo.ConsumeTopics(tf.topic), kgo.ConsumeResetOffset(offset),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	tf.kafka.waiting = progressWriter(stderr)
	if err := tf.kafka.check(ctx, cl, brokers); err != nil {
		return err
	}
	// A topic that does not exist is waited for (run creates its topics
	// when it starts, maybe after tail), but not without a word: a
	// mistyped --topic would otherwise look like a quiet stream.
	if tds, err := kadm.NewClient(cl).ListTopics(ctx, tf.topic); err == nil {
		if td, ok := tds[tf.topic]; !ok || td.Err != nil {
			fmt.Fprintf(stderr, "authpipe tail: topic %s does not exist yet; waiting for it (check --topic)\n", tf.topic)
		}
	}
	n := 0
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return nil
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			ferr = fmt.Errorf("fetch %s/%d: %w", t, p, err)
		})
		if ferr != nil {
			return ferr
		}
		for _, r := range fs.Records() {
			_, dlq := recordHeader(r, pipeline.HeaderError)
			switch {
			case dlq && tf.format == "json":
				fmt.Fprintf(out, "%s\n", dlqJSON(r))
			case dlq:
				fmt.Fprintln(out, prettyDLQ(r))
			case tf.format == "json":
				fmt.Fprintf(out, "%s\n", r.Value)
			default:
				fmt.Fprintln(out, prettyVerdict(r))
			}
			n++
			if tf.count > 0 && n >= tf.count {
				return nil
			}
		}
	}
}

// prettyVerdict renders one line: the time the checks were judged as of
// (evaluated_at: when the verdict was made, or the message's arrival under
// run --judge-at arrival, which the record's own time would hide for
// re-scored mail), key, client IP, From domain and the result of every
// check.
func prettyVerdict(r *kgo.Record) string {
	var v verdict.Verdict
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return fmt.Sprintf("%s key=%q undecodable verdict: %v", r.Timestamp.UTC().Format("15:04:05"), r.Key, err)
	}
	at := v.EvaluatedAt
	if at.IsZero() {
		at = r.Timestamp
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-16s ip=%-15s from=%s", at.UTC().Format("2006-01-02T15:04:05Z"), string(r.Key),
		orDash(v.Envelope.ClientIP), orDash(strings.Join(v.HeaderFrom, ",")))
	if v.SPF != nil {
		fmt.Fprintf(&b, " spf=%s", v.SPF.Result)
	}
	for _, d := range v.DKIM {
		fmt.Fprintf(&b, " dkim=%s(%s)", d.Result, d.Domain)
	}
	if v.ARC != nil {
		fmt.Fprintf(&b, " arc=%s", v.ARC.Result)
	}
	if v.DMARC != nil {
		fmt.Fprintf(&b, " dmarc=%s disposition=%s", v.DMARC.Result, v.DMARC.Disposition)
		for i, r := range v.DMARC.Reasons { // local policy overrides
			sep := ","
			if i == 0 {
				sep = " reasons="
			}
			b.WriteString(sep + r.Type)
		}
	}
	if v.Message != nil {
		fmt.Fprintf(&b, " message-problem=%s", v.Message.Kind)
	}
	// Keys, domains and the rest come from outside (a DKIM d= tag of a
	// received message can hold an escape sequence): the line is made safe
	// for a terminal as a whole.
	return printable(b.String())
}

// recordHeader returns the value of r's first header named key.
func recordHeader(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// prettyDLQ renders a dead-letter record (one with an authpipe.error
// header, as run writes them to the DLQ topic) on one line: time, key, the
// error, the message's size and its envelope; the message itself is left
// out (a Kafka client reads it whole).
func prettyDLQ(r *kgo.Record) string {
	var b strings.Builder
	msg, _ := recordHeader(r, pipeline.HeaderError)
	fmt.Fprintf(&b, "%s %-16s DLQ error=%q bytes=%d", r.Timestamp.UTC().Format("2006-01-02T15:04:05Z"), string(r.Key), msg, len(r.Value))
	if n, ok := recordHeader(r, pipeline.HeaderTruncated); ok {
		fmt.Fprintf(&b, " (cut from %s)", n)
	}
	for _, h := range []struct{ name, key string }{{"ip", pipeline.HeaderClientIP}, {"mail-from", pipeline.HeaderMailFrom}, {"queue-id", pipeline.HeaderQueueID}} {
		if v, ok := recordHeader(r, h.key); ok {
			fmt.Fprintf(&b, " %s=%s", h.name, orDash(v))
		}
	}
	return printable(b.String())
}

// dlqJSON is a dead-letter record for --format json: its key, error, size
// and headers (the message left out), so that a DLQ reads as JSON lines too.
func dlqJSON(r *kgo.Record) []byte {
	d := struct {
		DLQ struct {
			Key     string              `json:"key"`
			Error   string              `json:"error"`
			Bytes   int                 `json:"bytes"`
			Time    time.Time           `json:"time"`
			Headers map[string][]string `json:"headers"`
		} `json:"dlq"`
	}{}
	d.DLQ.Key, d.DLQ.Bytes, d.DLQ.Time, d.DLQ.Headers = string(r.Key), len(r.Value), r.Timestamp.UTC(), map[string][]string{}
	d.DLQ.Error, _ = recordHeader(r, pipeline.HeaderError)
	for _, h := range r.Headers {
		d.DLQ.Headers[h.Key] = append(d.DLQ.Headers[h.Key], string(h.Value))
	}
	b, _ := json.Marshal(d)
	return b
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
