package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/semaphore"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages"
	"github.com/authpipe/authpipe/stages/verdict"
)

// maxInputBytes bounds what verify reads; the engine's own message-size
// bound (and permerror) applies below it.
const maxInputBytes = 256 << 20

func newVerifyCmd() *cobra.Command {
	var (
		ip, helo, mailFrom, at string
		envelope, envelopes    string
		rcptTo, internalNets   []string
		concurrency, maxBytes  int
		dns                    dnsFlags
		eng                    engineFlags
	)
	cmd := &cobra.Command{
		Use:   "verify [flags] FILE|-|PATH... [--envelopes FILE]",
		Short: "Verify a message (or an archive) and print its JSON verdict (one a line)",
		Long: `verify reads one RFC 5322 message (CRLF or LF line endings) from FILE, or
from standard input when FILE is "-", checks it against the SMTP envelope given
by the flags, and prints one JSON verdict on standard output (schema:
docs/verdict.schema.json). A message saved with an mbox "From " line before
it (an mbox of one message) is read without that line.

Given more than one PATH, a directory (read recursively, through symbolic
links; dot files and a Maildir's tmp skipped), an mbox of several messages,
or a JSON-lines file of messages with their own envelopes (--envelopes, as
produce reads it; after the PATHs), verify re-scores them all, without
Kafka: one verdict a line (JSON lines), in input order, each with its "key"
(the file's path from PATH's own name down, FILE#n in an mbox; an
--envelopes line's queue id or key), --concurrency of them verified at once
so that DNS waits overlap, holding at most 256 MiB of messages (or one of
--max-message-bytes, if larger) at a time. A message over
--max-message-bytes, or one in which --envelope message finds no outside
client, is named on standard error and not verified; verify then exits 1
once the rest are printed. An input that cannot be read stops it there
(exit 1). It ends with a summary on standard error (messages, time, DMARC
results) and, when standard error is a terminal, says every 2 s how many it
has verified.

With --envelope message the envelope is the message's own, as its trace
fields record it (the client, HELO, recipient and date of the topmost
Received field written for an outside client, MAIL FROM from Return-Path;
see 'authpipe produce --help'); the flags give what it does not. --at arrival
judges each message as of its own arrival (that Received field's date with
--envelope message, else the topmost Received field's, else the mbox From
line's, else now): signature expiry and SPF's %{t} as they were then.

DNS goes to the system resolvers (/etc/resolv.conf), to the servers named by
--resolver, or, with --zone, to a zone file and no network at all.

--config (or AUTHPIPE_CONFIG) reads run's YAML file, and AUTHPIPE_* variables
apply as for run: its DNS and verification settings (dmarc-mode, the trusted
ARC sealers and the other local policy overrides, authserv-id) judge the
message as the pipeline would; run's other keys are skipped.

Exit status: 0 whenever every message got its verdict, whatever they say; 1
when a message cannot be read or was not verified; 2 on a usage error.`,
		Example: `  authpipe verify --zone examples/example.zone --ip 192.0.2.10 \
      --helo mail.example.com --mail-from alice@example.com examples/message.eml
  authpipe verify --envelope message --at arrival archive.mbox Maildir/ > verdicts.jsonl`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && cmd.Flags().Lookup("envelopes").Value.String() == "" {
				return usagef("verify needs a FILE (or - for standard input), PATHs or --envelopes")
			}
			if len(args) > 1 && slices.Contains(args, "-") {
				return usagef("verify reads standard input (-) only as its one FILE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applyConfigShared(cmd.Flags(), os.Environ(), isRunOption, nil); err != nil {
				return err
			}
			env := stages.Envelope{HELO: helo, MailFrom: mailFrom, RcptTo: rcptTo}
			if ip != "" {
				addr, err := stages.ParseClientIP(ip)
				if err != nil {
					return usagef("--ip: %v", err)
				}
				env.ClientIP = addr
			}
			now := time.Now
			atArrival := at == "arrival"
			if at != "" && !atArrival {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usagef("--at: want arrival or an RFC 3339 time such as 2026-05-01T12:00:00Z: %v", err)
				}
				now = func() time.Time { return t }
				env.ReceivedAt = t
			}
			if concurrency < 1 {
				return usagef("--concurrency must be at least 1, got %d", concurrency)
			}
			if atArrival {
				env.ReceivedAt = time.Now().UTC() // for a message that says nothing of its arrival
			}
			rule, err := newEnvelopeRule(env, envelope, internalNets, atArrival, at != "" && !atArrival)
			if err != nil {
				return err
			}
			opts, err := eng.options()
			if err != nil {
				return err
			}
			res, err := dns.resolver(nil, 0)
			if err != nil {
				return err
			}
			engine := stages.New(res, append(opts, stages.WithClock(now), stages.WithDNSBudget(dns.budget), stages.WithJudgeAtArrival(atArrival))...)
			envelopeOf := func(raw []byte, mboxFrom string) (stages.Envelope, error) {
				e, _, err := rule.of(raw, mboxFrom)
				if err != nil {
					return e, fmt.Errorf("--envelope message: %w", err)
				}
				return e, nil
			}
			batch := len(args) != 1 || envelopes != ""
			if !batch && args[0] != "-" {
				fi, err := os.Stat(args[0])
				if err != nil {
					return fmt.Errorf("read message: %w", err)
				}
				batch = fi.IsDir()
			}
			var raw []byte
			var mboxFrom string
			if !batch {
				raw, mboxFrom, err = readMessage(cmd.InOrStdin(), args[0])
				batch = errors.Is(err, errSeveralMessages) && args[0] != "-"
				if err != nil && !batch {
					return err
				}
			}
			if batch {
				// Inputs that are not there fail at once, before any
				// verdict is printed; one that goes away later stops
				// verify where it is.
				for _, path := range append(slices.Clone(args), envelopes) {
					if path == "" {
						continue
					}
					if _, err := os.Stat(path); err != nil {
						return fmt.Errorf("verify: %w (nothing verified)", err)
					}
				}
				// The PATHs' messages with the envelopes the flags (or their
				// trace fields) give, then --envelopes' with their own.
				source := func(yield func(archiveMessage, stages.Envelope, error) error) error {
					for _, path := range args {
						err := walkArchive(path, maxBytes, func(m archiveMessage) error {
							if m.raw == nil {
								return yield(m, stages.Envelope{}, nil)
							}
							env, err := envelopeOf(m.raw, m.mboxFrom)
							return yield(m, env, err)
						})
						if err != nil {
							return err
						}
					}
					if envelopes == "" {
						return nil
					}
					return walkEnvelopes(envelopes, maxBytes, func(m archiveMessage, env stages.Envelope, _ string) error {
						return yield(m, env, nil)
					})
				}
				return verifyArchive(cmd.Context(), engine.Verify, source, concurrency, maxBytes, archiveInFlightBytes, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			e, err := envelopeOf(raw, mboxFrom)
			if err != nil {
				return err
			}
			v := engine.Verify(cmd.Context(), raw, e)
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			enc.SetEscapeHTML(false) // Message-IDs and addresses keep their < and >
			if err := enc.Encode(v); err != nil {
				return fmt.Errorf("write verdict: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ip, "ip", "", "SMTP client `IP` address (IPv4 or IPv6); without it SPF is not evaluated")
	f.StringVar(&helo, "helo", "", "HELO/EHLO `name` the client gave")
	f.StringVar(&mailFrom, "mail-from", "", "SMTP MAIL FROM `address`; empty means the null sender <>")
	f.StringSliceVar(&rcptTo, "rcpt-to", nil, "SMTP RCPT TO `address`es (repeatable)")
	f.StringVar(&at, "at", "", "judge messages as of this RFC 3339 `time` (signature expiry, SPF %{t}), or arrival: each as of its own arrival (see above); default now")
	f.StringVar(&envelopes, "envelopes", "", "JSON-lines `file` of messages with their own envelopes, as produce reads it (see 'authpipe produce --help'), verified after the PATHs")
	f.IntVar(&concurrency, "concurrency", 64, "messages of an archive verified at once (DNS waits overlap); verdicts are printed in input order")
	f.IntVar(&maxBytes, "max-message-bytes", 64<<20, "largest message of an archive verified, in `bytes`; larger ones are named on stderr and skipped (exit 1)")
	f.StringVar(&envelope, "envelope", "flags", "the SMTP envelope: flags (--ip, --helo, --mail-from, --rcpt-to), or message: the message's own, from its Received and Return-Path fields")
	f.StringSliceVar(&internalNets, "internal-net", nil, "with --envelope message: an `address` or prefix of the provider's own hosts, whose Received fields are passed over (repeatable)")
	eng.register(f)
	f.String("config", "", "YAML configuration `file` of 'authpipe run': its DNS and verification keys apply (resolver or zone, DNS timeouts, dmarc-mode, the trusted ARC sealers and other overrides, authserv-id), so a message is judged as the pipeline judges it; the others are skipped (default: $AUTHPIPE_CONFIG)")
	dns.register(f)
	return cmd
}

// errSeveralMessages is readMessage's error for an mbox of more than one
// message, which verify then reads as an archive.
var errSeveralMessages = errors.New("an mbox of more than one message")

// readMessage reads the one message of file name (or stdin for "-"),
// without the mbox "From " line it may be saved with (returned as
// mboxFrom).
func readMessage(stdin io.Reader, name string) (raw []byte, mboxFrom string, err error) {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, "", fmt.Errorf("read message: %w", err)
		}
		defer f.Close()
		r = f
	}
	raw, err = io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err != nil {
		return nil, "", fmt.Errorf("read message %s: %w", name, err)
	}
	if len(raw) > maxInputBytes {
		return nil, "", fmt.Errorf("read message %s: larger than %d bytes", name, maxInputBytes)
	}
	if pipeline.LooksLikeMbox(raw[:min(len(raw), 64)]) {
		// A message saved with its mbox "From " line, as mail clients and
		// archives keep it: the message is what follows the line.
		mr := pipeline.NewMboxReader(bytes.NewReader(raw), 0)
		msg, sep, err := mr.Next()
		if err != nil {
			return nil, "", fmt.Errorf("read message %s: %w", name, err)
		}
		if _, _, err := mr.Next(); !errors.Is(err, io.EOF) {
			if name == "-" {
				return nil, "", fmt.Errorf("read message from standard input: %w; give the file's name to verify each", errSeveralMessages)
			}
			return nil, "", errSeveralMessages
		}
		return msg, sep, nil
	}
	return raw, "", nil
}

// archiveInFlightBytes bounds the bytes of the messages verifyArchive
// verifies at once (or maxBytes, when that is larger), as run's
// max-in-flight-bytes does: with --concurrency 64 and messages of up to
// 64 MiB, a count alone would allow 4 GiB.
const archiveInFlightBytes = 256 << 20

// verifyArchive verifies every message source yields (the PATHs' and
// --envelopes' messages, with their envelopes or why there is none) and
// writes their verdicts to stdout, one JSON object a line, in input order,
// each with its key; conc of them are verified at once, holding at most
// archiveInFlightBytes of messages (or one of maxBytes) and conc verdicts
// waiting to be printed. A message over maxBytes,
// or one whose envelope cannot be had (envelopeOf), is named on stderr and
// skipped: verifyArchive then returns an error once all the rest are
// printed. An input it cannot read stops it there.
func verifyArchive(ctx context.Context, verify func(context.Context, []byte, stages.Envelope) *verdict.Verdict,
	source func(yield func(m archiveMessage, env stages.Envelope, envErr error) error) error,
	conc, maxBytes int, inFlightBytes int64, stdout, stderr io.Writer) error {
	queue := make(chan chan *verdict.Verdict, conc) // each message's verdict to come, in input order
	slots := make(chan struct{}, conc)
	budget := max(inFlightBytes, int64(maxBytes))
	held := semaphore.NewWeighted(budget)
	var printed atomic.Int64
	var writeErr error
	results := map[string]int{} // DMARC result: verdicts; the printer's
	printerDone := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(printerDone)
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		for next := range queue {
			v := <-next
			if writeErr == nil {
				if writeErr = enc.Encode(v); writeErr == nil {
					printed.Add(1)
					if v.DMARC != nil {
						results[v.DMARC.Result]++
					} else {
						results["none"]++
					}
				}
			}
		}
	}()
	stopProgress := startProgress(progressWriter(stderr), progressInterval, &printed, "verify", "verified")
	skipped := 0
	walkErr := source(func(m archiveMessage, env stages.Envelope, err error) error {
		if m.raw == nil {
			skipped++
			fmt.Fprintf(stderr, "verify: %s: %s, over --max-message-bytes (%d): not verified\n", m.key, m.tooLarge, maxBytes)
			return nil
		}
		if err != nil {
			skipped++
			fmt.Fprintf(stderr, "verify: %s: %v: not verified\n", m.key, err)
			return nil
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		size := min(int64(len(m.raw)), budget)
		if err := held.Acquire(ctx, size); err != nil {
			<-slots
			return err
		}
		done := make(chan *verdict.Verdict, 1)
		queue <- done
		go func() {
			defer func() { held.Release(size); <-slots }()
			v := verify(ctx, m.raw, env)
			v.Key = m.key
			done <- v
		}()
		return nil
	})
	close(queue)
	<-printerDone
	stopProgress()
	if n := printed.Load(); n > 0 {
		// What re-scoring came to, beside the verdicts on stdout.
		var parts []string
		for _, r := range slices.Sorted(maps.Keys(results)) {
			parts = append(parts, fmt.Sprintf("%s %d", r, results[r]))
		}
		fmt.Fprintf(stderr, "verified %s in %.1fs; DMARC: %s\n", countMessages(n), time.Since(start).Seconds(), strings.Join(parts, ", "))
	}
	switch {
	case writeErr != nil:
		return fmt.Errorf("write verdicts: %w", writeErr)
	case walkErr != nil:
		return fmt.Errorf("%w (verified %s before it, none after)", walkErr, countMessages(printed.Load()))
	case skipped > 0:
		return fmt.Errorf("verify: %s not verified (named above); %s verified", countMessages(int64(skipped)), countMessages(printed.Load()))
	}
	return nil
}
