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
	"github.com/spf13/pflag"
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
	cmd, err := root.ExecuteContextC(ctx)
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
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
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
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(newVerifyCmd())
	root.AddCommand(newRunCmd(), newProduceCmd(), newTailCmd(), newDemoCmd())
	root.AddCommand(newReportCmd())
	commandGroups(root)
	return root
}

// commandGroups makes each command that only groups subcommands (authpipe,
// authpipe report) print its help when called alone and refuse an unknown
// subcommand as a usage error, with a suggestion. Left to cobra, the root
// reports one as a plain error (exit 1) and `authpipe report sned` printed
// the help and exited 0, so a typo in a cron job passed for success.
func commandGroups(c *cobra.Command) {
	if !c.HasSubCommands() {
		return
	}
	if c.Run == nil && c.RunE == nil {
		c.SuggestionsMinimumDistance = 2 // cobra's own default, set only on its error path
		c.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			hint := ""
			if sug := cmd.SuggestionsFor(args[0]); len(sug) > 0 {
				hint = fmt.Sprintf(" (did you mean %q?)", sug[0])
			}
			return usagef("unknown command %q for %q%s", args[0], cmd.CommandPath(), hint)
		}
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	for _, sub := range c.Commands() {
		commandGroups(sub)
	}
}

// flagError is the usage error for a command line flag pflag refused, in
// the words the config file's errors use: a suggestion for an unknown flag
// close to a real one, the type for a value that does not parse.
func flagError(cmd *cobra.Command, err error) error {
	var unknown *pflag.NotExistError
	if errors.As(err, &unknown) && unknown.GetSpecifiedShortnames() == "" {
		return usagef("%v%s", err, didYouMean(unknown.GetSpecifiedName(), flagNames(cmd.Flags())))
	}
	var invalid *pflag.InvalidValueError
	if errors.As(err, &invalid) {
		f := invalid.GetFlag()
		return usagef("--%s: %v", f.Name, valueError(f, invalid.GetValue(), invalid.Unwrap()))
	}
	return usageError{err}
}
