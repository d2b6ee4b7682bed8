// Command authpipe verifies mail authentication (SPF, DKIM, ARC, DMARC) for
// single messages, archives and Kafka streams, and builds the reports that go
// back to domain owners. Each subcommand is a thin layer over the packages
// that do the work; run `authpipe --help` for the list.
//
// Exit codes: 0 success (for verify: a verdict was produced, whatever it
// says), 1 an I/O or runtime failure, 2 a usage error. A crash (a Go panic
// that nothing recovers, with its stack on standard error) also exits 2, as
// every Go program's does; `run` contains a panic met while verifying a
// message to that message (it goes to the DLQ as verify-panic).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error caused by how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the exit code. It is the
// whole program minus os.Exit, so tests can call it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	// An error can carry outside text (a remote server's reply, a name
	// from a message): each of its lines is made safe for a terminal.
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	fmt.Fprintf(stderr, "authpipe: %s\n", strings.Join(lines, "\n"))
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'authpipe --help' for usage.")
		return exitUsage
	}
	return exitFailure
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "authpipe",
		Short: "Mail authentication (SPF, DKIM, ARC, DMARC) at mailbox-provider scale",
		Long: `authpipe verifies the authentication of received mail: SPF (RFC 7208),
DKIM (RFC 6376, 8301, 8463), ARC (RFC 8617) and DMARC (RFC 9989, or RFC 7489
as a mode), through a caching DNS resolver, and emits one JSON verdict per
message.

Exit status: 0 on success, 1 on I/O or runtime failure, 2 on a usage error
(or a crash, whose stack goes to standard error).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       readBuildInfo().String(),
	}
	root.SetVersionTemplate("authpipe {{.Version}}\n")
	// Without this, cobra reports an unknown subcommand as a plain error.
	root.Args = func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q", args[0])
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newVerifyCmd())
	root.AddCommand(newRunCmd(), newProduceCmd(), newTailCmd(), newDemoCmd())
	root.AddCommand(newReportCmd())
	return root
}
