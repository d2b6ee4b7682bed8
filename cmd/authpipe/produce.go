package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages"
)

// envelopeLine is one line of a --envelopes JSON-lines file.
type envelopeLine struct {
	// Path names the message file, relative to the envelopes file; Raw
	// holds the message itself instead.
	Path       string   `json:"path,omitempty"`
	Raw        string   `json:"raw,omitempty"`
	ClientIP   string   `json:"client_ip,omitempty"`
	HELO       string   `json:"helo,omitempty"`
	MailFrom   string   `json:"mail_from,omitempty"`
	RcptTo     []string `json:"rcpt_to,omitempty"`
	ReceivedAt string   `json:"received_at,omitempty"`
	QueueID    string   `json:"queue_id,omitempty"`
	Key        string   `json:"key,omitempty"`
}

type produceFlags struct {
	kafka      kafkaFlags
	topic      string
	envelopes  string
	ip, helo   string
	mailFrom   string
	rcptTo     []string
	receivedAt string
	maxBytes   int
	// envelope: "flags", or "message" for each message's own, from its
	// trace fields (messageEnvelope); internalNets: the provider's own
	// addresses, whose hops it skips.
	envelope     string
	internalNets []string
}

func newProduceCmd() *cobra.Command {
	pf := &produceFlags{}
	cmd := &cobra.Command{
		Use:   "produce [flags] PATH...",
		Short: "Feed messages (.eml files, directories, mbox files) into mail.raw",
		Long: `produce writes messages to the raw-mail topic with the SMTP envelope in the
record headers (smtp.client-ip, smtp.helo, smtp.mail-from, smtp.rcpt-to,
smtp.received-at, mta.queue-id), as an MTA integration would.

Each PATH is a message file, a directory (read recursively, in name order,
through symbolic links; dot files are skipped, and so is a Maildir's tmp,
which holds deliveries in progress) or an mbox file (recognised by its first
line, "From "; mboxrd quoting is undone).
All of them get the envelope given by the flags, or, with --envelope message,
each its own, as the trace fields of an archived message record it:

  client IP, HELO  from the topmost Received field written for a client
                   outside the provider: the first, from the top, whose
                   client address is neither loopback, private nor
                   link-local (RFC 1918, RFC 4193) nor in an --internal-net
                   prefix (the provider's own public hops: MX to store)
  RCPT TO          that field's "for" clause
  arrival time     that field's date (unless --received-at gives one)
  MAIL FROM        the topmost Return-Path field (written at delivery,
                   RFC 5321 4.4), else Exim's "(envelope-from <...>)" there

A value the message does not give is the flag's; a message that names no
outside client is not sent but named on standard error (exit 1), and produce
says how many messages had no Return-Path (their MAIL FROM is --mail-from's,
the null sender by default).

With --envelopes, a JSON-lines file gives one message per line with its
own envelope:

  {"path": "msg1.eml", "client_ip": "192.0.2.10", "helo": "mail.example.com",
   "mail_from": "alice@example.com", "rcpt_to": ["bob@example.net"],
   "received_at": "2026-05-01T12:00:00Z", "queue_id": "4Xyz"}

("raw" may hold the message instead of "path"; paths are relative to the
envelopes file.) The record key is the queue id, else the file's path from
PATH's own name down (for a PATH that is a file, its name; name#n for the n-th
message of an mbox).

A message over --max-message-bytes is not sent: produce names it on standard
error (its key, or FILE:LINE of --envelopes), sends the others, and exits 1.
An input that cannot be read (a file gone, an mbox cut off, a bad --envelopes
line) stops produce there: the messages before it are sent, none after it.
When standard error is a terminal, produce says every 2 s how many it has sent.

--config (or AUTHPIPE_CONFIG) reads run's YAML file: its brokers (or, for the
embedded broker, its listen address), TLS and SASL settings, input-topic and
max-message-bytes apply; its other keys are skipped.`,
		Example: `  authpipe produce --ip 192.0.2.10 --helo mail.example.com \
      --mail-from alice@example.com examples/message.eml
  authpipe produce --envelopes corpus/envelopes.jsonl
  authpipe produce --envelope message --internal-net 198.51.100.0/24 archive/Maildir`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applyProduceConfig(cmd.Flags(), os.Environ()); err != nil {
				return err
			}
			if len(args) == 0 && pf.envelopes == "" {
				return usagef("produce needs a PATH or --envelopes")
			}
			return produce(cmd.Context(), pf, args, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	pf.kafka.register(f, "Kafka seed `brokers` host:port,... (default 127.0.0.1:9092, the embedded broker)")
	f.StringVar(&pf.topic, "topic", "mail.raw", "`topic` to write to (default: --config's input-topic, else mail.raw)")
	f.String("config", "", "YAML configuration `file` of 'authpipe run': its Kafka keys apply (brokers, or listen for the embedded broker; TLS; SASL), input-topic as --topic, max-message-bytes; the others are skipped (default: $AUTHPIPE_CONFIG)")
	f.StringVar(&pf.envelopes, "envelopes", "", "JSON-lines `file` of messages with their envelopes")
	f.StringVar(&pf.ip, "ip", "", "SMTP client `IP` for PATH messages")
	f.StringVar(&pf.helo, "helo", "", "HELO `name` for PATH messages")
	f.StringVar(&pf.mailFrom, "mail-from", "", "MAIL FROM `address` for PATH messages (empty: null sender)")
	f.StringSliceVar(&pf.rcptTo, "rcpt-to", nil, "RCPT TO `address`es for PATH messages")
	f.StringVar(&pf.receivedAt, "received-at", "", "arrival `time` of PATH messages, RFC 3339, or message: each message's own (its topmost Received field's date, else its mbox From line's, else now), for re-scoring an archive (default: now)")
	f.StringVar(&pf.envelope, "envelope", "flags", "envelope of PATH messages: flags (--ip, --helo, --mail-from, --rcpt-to, --received-at), or message: each message's own, from its Received and Return-Path fields, for re-scoring an archive (see above)")
	f.StringSliceVar(&pf.internalNets, "internal-net", nil, "with --envelope message: an `address` or prefix of the provider's own hosts, whose Received fields are passed over in looking for the outside client (repeatable; loopback, private and link-local addresses always are)")
	f.IntVar(&pf.maxBytes, "max-message-bytes", 64<<20, "largest message sent, in `bytes`; larger ones are named on stderr and skipped (exit 1)")
	return cmd
}

type producer struct {
	cl     *kgo.Client
	topic  string
	n      atomic.Int64
	mu     sync.Mutex
	errOne error
	// A message over --max-message-bytes is not sent: skip names it on
	// stderr, counts it here, and produce goes on with the next one and
	// exits 1 at the end (a message the topic could not take, where one
	// unreadable file stops produce: see produce).
	stderr   io.Writer
	maxBytes int
	skipped  int
	// rule gives PATH messages their envelopes; noReturnPath counts
	// those that, under --envelope message, had no Return-Path.
	rule         envelopeRule
	noReturnPath int
}

// progressInterval is how often produce says how far it is, on a terminal.
const progressInterval = 2 * time.Second

// startProgress writes to w, every interval, how many messages have been
// sent so far (when that changed), until the returned function is called;
// that function waits for the last line, so nothing follows produce's own.
func (p *producer) startProgress(w io.Writer, interval time.Duration) (stop func()) {
	return startProgress(w, interval, &p.n, "produce", "sent")
}

// startProgress writes "CMD: N messages DONE so far, R a second" to w every
// interval while n changes, until the returned function is called, which
// waits for the last line. With w io.Discard (not a terminal: see
// progressWriter) it starts nothing.
func startProgress(w io.Writer, interval time.Duration, n *atomic.Int64, cmd, done string) (stop func()) {
	if w == io.Discard {
		return func() {}
	}
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(interval)
		defer t.Stop()
		start, last := time.Now(), int64(0)
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			if c := n.Load(); c != last {
				last = c
				fmt.Fprintf(w, "%s: %s %s so far, %.0f a second\n", cmd, countMessages(c), done, float64(c)/time.Since(start).Seconds())
			}
		}
	}()
	return sync.OnceFunc(func() { close(quit); <-ended })
}

// skip reports a message over the size bound, named by key.
func (p *producer) skip(key string, size string) {
	p.skipped++
	fmt.Fprintf(p.stderr, "produce: %s: %s, over --max-message-bytes (%d): not sent\n", key, size, p.maxBytes)
}

// describeMailFrom says which MAIL FROM the flag gives.
func describeMailFrom(flag string) string {
	if flag == "" {
		return "the null sender (no --mail-from)"
	}
	return fmt.Sprintf("%s (--mail-from)", flag)
}

func (p *producer) send(ctx context.Context, key string, raw []byte, env stages.Envelope, queueID string) {
	r := &kgo.Record{Topic: p.topic, Key: []byte(key), Value: raw, Headers: pipeline.EnvelopeHeaders(env, queueID)}
	p.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
		if err != nil {
			p.mu.Lock()
			if p.errOne == nil {
				p.errOne = fmt.Errorf("produce %s to %s: %w", key, p.topic, err)
				if errors.Is(err, kerr.UnknownTopicOrPartition) {
					p.errOne = fmt.Errorf("%w (topic %s does not exist: 'authpipe run' creates its topics at start; check --topic)", p.errOne, p.topic)
				}
			}
			p.mu.Unlock()
			return
		}
		p.n.Add(1)
	})
}

func (p *producer) firstErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errOne
}

// applyProduceConfig fills produce's flags from run's configuration file
// and the environment (applyConfigShared): run's listen address (its
// embedded broker) stands for --brokers when the file names no brokers,
// and its input-topic for --topic.
func applyProduceConfig(fs *pflag.FlagSet, environ []string) error {
	return applyConfigShared(fs, environ, isRunOption, map[string]string{"listen": "brokers", "input-topic": "topic"})
}

func produce(ctx context.Context, pf *produceFlags, paths []string, stderr io.Writer) error {
	env := stages.Envelope{HELO: pf.helo, MailFrom: pf.mailFrom, RcptTo: pf.rcptTo, ReceivedAt: time.Now().UTC()}
	if pf.ip != "" {
		ip, err := stages.ParseClientIP(pf.ip)
		if err != nil {
			return usagef("--ip: %v", err)
		}
		env.ClientIP = ip
	}
	fromMessage := pf.receivedAt == "message"
	if pf.receivedAt != "" && !fromMessage {
		t, err := time.Parse(time.RFC3339, pf.receivedAt)
		if err != nil {
			return usagef("--received-at: want RFC 3339 or message: %v", err)
		}
		env.ReceivedAt = t
	}
	rule, err := newEnvelopeRule(env, pf.envelope, pf.internalNets, fromMessage, pf.receivedAt != "" && !fromMessage)
	if err != nil {
		return err
	}
	// Inputs that are not there fail at once, not after the broker check
	// (up to 15 s when the broker is down too); one that goes away or is
	// unreadable later stops produce where it is, as documented.
	for _, path := range append(slices.Clone(paths), pf.envelopes) {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("produce: %w (nothing sent)", err)
		}
	}
	kopts, err := pf.kafka.opts()
	if err != nil {
		return err
	}
	brokers := pf.kafka.seeds("127.0.0.1:9092")
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(brokers...),
		kgo.MetadataMinAge(pipeline.MetadataMinAge),
		kgo.ProducerBatchMaxBytes(int32(min(pf.maxBytes+1<<20, 1<<30))),
		kgo.MaxBufferedBytes(256<<20))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	pf.kafka.waiting = progressWriter(stderr)
	if err := pf.kafka.check(ctx, cl, brokers); err != nil {
		return err
	}
	p := &producer{cl: cl, topic: pf.topic, stderr: stderr, maxBytes: pf.maxBytes, rule: rule}
	// A large archive takes a while: who watches on a terminal sees it move.
	stopProgress := p.startProgress(progressWriter(stderr), progressInterval)
	defer stopProgress()

	// An input that cannot be read stops produce where it is. What was
	// queued before it is flushed, and the error says how much that was,
	// so a run that stops partway leaves a known outcome: the messages
	// before the bad one, in input order, and none after it.
	stopped := func(err error) error {
		defer stopProgress()
		ferr := cl.Flush(ctx)
		if ferr == nil {
			ferr = p.firstErr()
		}
		if ferr != nil {
			return fmt.Errorf("%w (and sending what came before it: %v)", err, ferr)
		}
		return fmt.Errorf("%w (produced %s before it, none after)", err, countMessages(p.n.Load()))
	}
	for _, path := range paths {
		if err := producePath(ctx, p, path, env, pf.maxBytes); err != nil {
			return stopped(err)
		}
	}
	if pf.envelopes != "" {
		if err := produceEnvelopes(ctx, p, pf.envelopes, pf.maxBytes); err != nil {
			return stopped(err)
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	stopProgress()
	if err := p.firstErr(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "produced %s to %s on %s\n", countMessages(p.n.Load()), pf.topic, strings.Join(brokers, ","))
	if p.noReturnPath > 0 {
		fmt.Fprintf(stderr, "produce: %s without a Return-Path field: MAIL FROM %s\n", countMessages(int64(p.noReturnPath)), describeMailFrom(pf.mailFrom))
	}
	if p.skipped > 0 {
		return fmt.Errorf("produce: %s not sent (named above); all others sent", countMessages(int64(p.skipped)))
	}
	return nil
}

func producePath(ctx context.Context, p *producer, path string, env stages.Envelope, maxBytes int) error {
	return walkArchive(path, maxBytes, func(m archiveMessage) error {
		if m.raw == nil {
			p.skip(m.key, m.tooLarge)
			return nil
		}
		if e, ok := p.envelope(m.key, m.raw, m.mboxFrom); ok {
			p.send(ctx, m.key, m.raw, e, "")
		}
		return nil
	})
}

// envelope is the envelope of the message raw (under key), as p.rule
// has it (envelopeRule.of). It reports false, having named the message on
// stderr, for a message whose trace fields name no outside client.
func (p *producer) envelope(key string, raw []byte, mboxFrom string) (stages.Envelope, bool) {
	env, hasReturnPath, err := p.rule.of(raw, mboxFrom)
	if err != nil {
		p.skipped++
		fmt.Fprintf(p.stderr, "produce: %s: %v: not sent\n", key, err)
		return env, false
	}
	if !hasReturnPath {
		p.noReturnPath++
	}
	return env, true
}

// readBounded reads file name, or reports that it holds more than
// maxBytes without reading further.
func readBounded(name string, maxBytes int) (raw []byte, tooLarge bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	raw, err = io.ReadAll(io.LimitReader(f, int64(maxBytes)+1))
	if err != nil {
		return nil, false, err
	}
	return raw, len(raw) > maxBytes, nil
}

// parseEnvelopeLine reads one line of an --envelopes file: a JSON object
// with the fields of envelopeLine and no others, giving the message by
// path or raw (one of them), the client IP as an address and received_at
// in RFC 3339 (now when absent).
func parseEnvelopeLine(line []byte, now time.Time) (envelopeLine, stages.Envelope, error) {
	var e envelopeLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, stages.Envelope{}, err
	}
	if dec.More() {
		return e, stages.Envelope{}, errors.New("more than one JSON value on the line")
	}
	env := stages.Envelope{HELO: e.HELO, MailFrom: e.MailFrom, RcptTo: e.RcptTo, ReceivedAt: now}
	if e.ClientIP != "" {
		ip, err := stages.ParseClientIP(e.ClientIP)
		if err != nil {
			return e, env, fmt.Errorf("client_ip: %w", err)
		}
		env.ClientIP = ip
	}
	if e.ReceivedAt != "" {
		t, err := time.Parse(time.RFC3339, e.ReceivedAt)
		if err != nil {
			return e, env, fmt.Errorf("received_at: %w", err)
		}
		env.ReceivedAt = t
	}
	switch {
	case e.Path != "" && e.Raw != "":
		return e, env, errors.New("give path or raw, not both")
	case e.Path == "" && e.Raw == "":
		return e, env, errors.New("no path and no raw message")
	}
	return e, env, nil
}

func produceEnvelopes(ctx context.Context, p *producer, name string, maxBytes int) error {
	return walkEnvelopes(name, maxBytes, func(m archiveMessage, env stages.Envelope, queueID string) error {
		if m.raw == nil {
			p.skip(m.key, m.tooLarge)
			return nil
		}
		p.send(ctx, m.key, m.raw, env, queueID)
		return nil
	})
}

// countMessages is "1 message" or "N messages".
func countMessages(n int64) string {
	if n == 1 {
		return "1 message"
	}
	return fmt.Sprintf("%d messages", n)
}
