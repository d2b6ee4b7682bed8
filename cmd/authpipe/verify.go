package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/authpipe/authpipe/pipeline"
	"github.com/authpipe/authpipe/stages"
)

// maxInputBytes bounds what verify reads; the engine's own message-size
// bound (and permerror) applies below it.
const maxInputBytes = 256 << 20

func newVerifyCmd() *cobra.Command {
	var (
		ip, helo, mailFrom, at string
		envelope               string
		rcptTo, internalNets   []string
		dns                    dnsFlags
		eng                    engineFlags
	)
	cmd := &cobra.Command{
		Use:   "verify [flags] FILE|-",
		Short: "Verify one message and print its JSON verdict",
		Long: `verify reads one RFC 5322 message (CRLF or LF line endings) from FILE, or
from standard input when FILE is "-", checks it against the SMTP envelope given
by the flags, and prints one JSON verdict on standard output (schema:
docs/verdict.schema.json). A message saved with an mbox "From " line before
it (an mbox of one message) is read without that line.

With --envelope message the envelope is the message's own, as its trace
fields record it (the client, HELO, recipient and date of the topmost
Received field written for an outside client, MAIL FROM from Return-Path;
see 'authpipe produce --help'); the flags give what it does not. Add --at
with its arrival time to judge an archived message as it was then.

DNS goes to the system resolvers (/etc/resolv.conf), to the servers named by
--resolver, or, with --zone, to a zone file and no network at all.

--config (or AUTHPIPE_CONFIG) reads run's YAML file, and AUTHPIPE_* variables
apply as for run: its DNS and verification settings (dmarc-mode, the trusted
ARC sealers and the other local policy overrides, authserv-id) judge the
message as the pipeline would; run's other keys are skipped.

Exit status: 0 whenever a verdict is printed, whatever it says; 1 when the
message cannot be read; 2 on a usage error.`,
		Example: `  authpipe verify --zone examples/example.zone --ip 192.0.2.10 \
      --helo mail.example.com --mail-from alice@example.com examples/message.eml`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("verify takes exactly one FILE (or - for standard input), got %d", len(args))
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
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usagef("--at: want RFC 3339 time such as 2026-05-01T12:00:00Z: %v", err)
				}
				now = func() time.Time { return t }
				env.ReceivedAt = t
			}
			if envelope != "flags" && envelope != "message" {
				return usagef("--envelope: want flags or message, got %q", envelope)
			}
			if len(internalNets) > 0 && envelope != "message" {
				return usagef("--internal-net needs --envelope message")
			}
			internal, err := prefixList("internal-net", internalNets)
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
			raw, err := readMessage(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			if envelope == "message" {
				if env, _, err = messageEnvelope(raw, env, internal); err != nil {
					return fmt.Errorf("--envelope message: %w", err)
				}
				if at != "" {
					env.ReceivedAt = now()
				}
			}
			engine := stages.New(res, append(opts, stages.WithClock(now), stages.WithDNSBudget(dns.budget))...)
			v := engine.Verify(cmd.Context(), raw, env)
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
	f.StringVar(&at, "at", "", "judge the message as of this RFC 3339 `time` (signature expiry, SPF %{t}); default now")
	f.StringVar(&envelope, "envelope", "flags", "the SMTP envelope: flags (--ip, --helo, --mail-from, --rcpt-to), or message: the message's own, from its Received and Return-Path fields")
	f.StringSliceVar(&internalNets, "internal-net", nil, "with --envelope message: an `address` or prefix of the provider's own hosts, whose Received fields are passed over (repeatable)")
	eng.register(f)
	f.String("config", "", "YAML configuration `file` of 'authpipe run': its DNS and verification keys apply (resolver or zone, DNS timeouts, dmarc-mode, the trusted ARC sealers and other overrides, authserv-id), so a message is judged as the pipeline judges it; the others are skipped (default: $AUTHPIPE_CONFIG)")
	dns.register(f)
	return cmd
}

func readMessage(stdin io.Reader, name string) ([]byte, error) {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("read message: %w", err)
		}
		defer f.Close()
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read message %s: %w", name, err)
	}
	if len(raw) > maxInputBytes {
		return nil, fmt.Errorf("read message %s: larger than %d bytes", name, maxInputBytes)
	}
	if pipeline.LooksLikeMbox(raw[:min(len(raw), 64)]) {
		// A message saved with its mbox "From " line, as mail clients and
		// archives keep it: the message is what follows the line.
		mr := pipeline.NewMboxReader(bytes.NewReader(raw), 0)
		msg, _, err := mr.Next()
		if err != nil {
			return nil, fmt.Errorf("read message %s: %w", name, err)
		}
		if _, _, err := mr.Next(); !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read message %s: an mbox of more than one message; verify takes one ('authpipe produce' feeds a whole mbox to the pipeline)", name)
		}
		return msg, nil
	}
	return raw, nil
}
