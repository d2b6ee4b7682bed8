package awscreds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// credential_process, as the SDKs and Tools Reference Guide's "Process
// credential provider" has it: a command that prints
// {"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
// "Expiration"} on its standard output and exits 0. IAM Roles Anywhere's
// aws_signing_helper credential-process and aws configure
// export-credentials --format process are such commands.

const (
	// processTimeout bounds a credential_process run (a shorter context
	// deadline wins).
	processTimeout = time.Minute
	// processWaitDelay: after the command exits or is killed, how long
	// its output pipes may stay open (held by a child it started)
	// before they are closed.
	processWaitDelay = 2 * time.Second
	// maxProcessOutput bounds the command's standard output;
	// maxProcessStderr is how much of its standard error an error
	// message keeps.
	maxProcessOutput = 64 << 10
	maxProcessStderr = 1 << 10
)

// errOutputTooLarge stops the copy of a command's output beyond its bound.
var errOutputTooLarge = errors.New("output too large")

// boundedBuffer keeps the first max octets written to it. Beyond them it
// fails the write when fail is set (so the command's output pipe closes
// and the command is stopped by SIGPIPE), else it drops them.
type boundedBuffer struct {
	max  int
	fail bool
	over bool
	b    []byte
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	room := w.max - len(w.b)
	if len(p) > room {
		w.over = true
		w.b = append(w.b, p[:max(room, 0)]...)
		if w.fail {
			return 0, errOutputTooLarge
		}
		return len(p), nil
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

// process runs a credential_process command and parses its output. The
// command line is split into words without a shell (splitCommand); the
// command gets the process's own environment, not WithEnv's.
func (p *Provider) process(ctx context.Context, command string) (Credentials, error) {
	argv, err := splitCommand(command)
	if err != nil {
		return Credentials{}, fmt.Errorf("credential_process: %w", err)
	}
	if len(argv) == 0 {
		return Credentials{}, errors.New("credential_process: empty command")
	}
	ctx, cancel := context.WithTimeout(ctx, processTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = processWaitDelay
	stdout := &boundedBuffer{max: maxProcessOutput, fail: true}
	stderr := &boundedBuffer{max: maxProcessStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	err = cmd.Run()
	var detail string
	if msg := excerpt(stderr.b); msg != "" {
		detail = ": " + msg
	}
	switch {
	case stdout.over:
		return Credentials{}, fmt.Errorf("credential_process %s: output larger than %d octets", argv[0], maxProcessOutput)
	case err != nil && ctx.Err() != nil:
		return Credentials{}, fmt.Errorf("credential_process %s: stopped after %s (limit %s): %w%s",
			argv[0], time.Since(start).Round(time.Millisecond), processTimeout, ctx.Err(), detail)
	case err != nil:
		return Credentials{}, fmt.Errorf("credential_process %s: %w%s", argv[0], err, detail)
	}
	c, err := parseProcess(stdout.b)
	if err != nil {
		return Credentials{}, fmt.Errorf("credential_process %s: %w", argv[0], err)
	}
	c.Source = "credential-process"
	return c, nil
}

// parseProcess parses a credential_process output: Version must be 1;
// Expiration (RFC 3339) is absent for credentials that do not expire.
func parseProcess(b []byte) (Credentials, error) {
	var d struct {
		Version         int
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string
		SessionToken    string
		Expiration      string
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return Credentials{}, fmt.Errorf("output: %w", err)
	}
	if d.Version != 1 {
		return Credentials{}, fmt.Errorf("output: Version %d, want 1", d.Version)
	}
	return complete(d.AccessKeyID, d.SecretAccessKey, d.SessionToken, d.Expiration)
}

// splitCommand splits a credential_process command line into words
// without a shell: words are separated by spaces and tabs; "…" quotes a
// word or part of one (\" and \\ inside stand for " and \), '…' too
// (literally); nothing else is special: no variables, ~, globs, pipes or
// redirections (put the command in a script, or write
// sh -c '…', for those). Python's shlex.split, which the AWS CLI uses,
// gives the same words for such lines (it also takes a \ outside quotes
// as an escape, which this does not).
func splitCommand(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\r':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case '"', '\'':
			inWord = true
			j := i + 1
			for ; j < len(s) && s[j] != c; j++ {
				if c == '"' && s[j] == '\\' && j+1 < len(s) && (s[j+1] == '"' || s[j+1] == '\\') {
					j++
				}
				w.WriteByte(s[j])
			}
			if j == len(s) {
				return nil, fmt.Errorf("unterminated %c quote", c)
			}
			i = j
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}
