package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// Exit codes of the esnats command, for scripts.
const (
	ExitOK       = 0 // success
	ExitError    = 1 // any other failure
	ExitUsage    = 2 // bad flags or arguments
	ExitConnect  = 3 // no server answered, credentials or TLS refused, JetStream off
	ExitNotFound = 4 // the store, aggregate, snapshot, consumer or projection does not exist
)

// Options configure the command tree. The zero value is the stock esnats
// command.
type Options struct {
	// Name is the command's name in help and messages. Default "esnats".
	Name string

	// Registry, if set, decodes payloads with the application's registered
	// types (upcast to their current schema) before printing them as JSON.
	// Without it, payloads are decoded by their content type (msgpack or
	// JSON) into plain JSON values. Every message is checked as the store
	// checks it (stream.CheckEvent: subject, headers, versions); with a
	// registry an unregistered event type is also a reason shown beside
	// the event (decode_error), without one the type is not checked.
	Registry *stream.Registry

	// Projections, if set, lists the application's projections of a store:
	// it enables "projections run", which runs them as a worker (with the
	// control service that "projections status|rebuild|reset" talk to).
	// The stock esnats binary has none: build your worker's own binary with
	// this package to get the whole command set plus "run".
	Projections func(ctx context.Context, js jetstream.JetStream, store *stream.Store) ([]projections.Projection, error)

	// Stdout and Stderr default to os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "esnats"
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	return o
}

// exitError carries an exit code with the error to print.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode attaches an exit code to err (nil stays nil).
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// ExitCode returns the exit code for an error returned by a command: ExitOK
// for nil, the code attached by the command, ExitNotFound for errors
// matching stream.ErrNotFound, else ExitError.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, stream.ErrNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, projections.ErrUnknownProjection) || errors.Is(err, projections.ErrNoWorker) {
		return ExitNotFound
	}
	return ExitError
}

// New returns the esnats command tree configured by opts.
func New(opts Options) *cobra.Command {
	return newApp(opts).root()
}

// newApp returns the app of opts: its stderr is safe for concurrent
// writes, and receives the connections' asynchronous errors.
func newApp(opts Options) *app {
	opts = opts.withDefaults()
	stderr := &syncWriter{w: opts.Stderr}
	a := &app{opts: opts, stderr: stderr, errs: newAsyncErrors(opts.Name, stderr)}
	a.conn.errs = a.errs
	return a
}

// root returns the command tree.
func (a *app) root() *cobra.Command {
	opts := a.opts
	root := &cobra.Command{
		Use:   opts.Name,
		Short: "Event sourcing on NATS JetStream: inspect stores, follow events, run and operate projections",
		Long: opts.Name + ` works with esnats event stores on a NATS server: it lists stores, shows and
follows events with their payloads as JSON, shows an aggregate's history and
snapshot, reports consumers and projections with their lag, rebuilds and resets
projections run by worker processes, and benchmarks esnats beside raw
JetStream. "` + opts.Name + ` dev" runs a NATS server with JetStream for development.

Connection flags follow the nats CLI: -s/--server (or NATS_URL), --creds,
--nkey, --user/--password, --tlscert/--tlskey/--tlsca, --inbox-prefix, and
--context for a saved nats CLI context. What the server reports on the
connection asynchronously (a permission violation, a slow consumer) is
printed on stderr as "` + opts.Name + `: nats: ...", once; a request the server
refuses for lack of permission fails at once, naming the subject.

Exit codes: 0 ok, 1 error, 2 usage, 3 cannot connect (no server, credentials,
TLS, no JetStream), 4 not found (store, aggregate, consumer, projection).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(opts.Stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(ExitUsage, fmt.Errorf("%w (see %s --help)", err, c.CommandPath()))
	})
	a.conn.flags(root)
	root.AddCommand(
		a.devCmd(),
		a.storesCmd(),
		a.eventsCmd(),
		a.aggregateCmd(),
		a.snapshotsCmd(),
		a.consumersCmd(),
		a.projectionsCmd(),
		a.benchCmd(),
	)
	return root
}

// Run runs the command line args (without the program name) and returns
// the exit code; errors are printed to opts.Stderr. ctx ending stops
// long-running commands (dev, follow, projection workers) cleanly.
func Run(ctx context.Context, opts Options, args []string) int {
	a := newApp(opts)
	opts = a.opts
	root := a.root()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	// Asynchronous errors still on their way concern a command that is
	// over; and opts.Stderr is the caller's again once Run returns.
	a.errs.close()
	if err != nil {
		code := ExitCode(err)
		if code == ExitError && isUsageError(err) {
			code = ExitUsage
		}
		fmt.Fprintf(a.stderr, "%s: %v\n", opts.Name, err)
		return code
	}
	return ExitOK
}

// Main runs the command with os.Args, stops on SIGINT or SIGTERM and exits
// with the command's exit code.
func Main(opts Options) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, opts, os.Args[1:])
	stop()
	os.Exit(code)
}

// app holds what every subcommand shares.
type app struct {
	opts   Options
	conn   connFlags
	stderr *syncWriter  // opts.Stderr, for concurrent writers
	errs   *asyncErrors // the connections' error handler
}

// usageError marks errors in the arguments.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return withCode(ExitUsage, usageError{msg: fmt.Sprintf(format, args...)})
}

// isUsageError recognises cobra's unknown-command error (argument and flag
// errors carry ExitUsage already: see args and SetFlagErrorFunc).
func isUsageError(err error) bool {
	var ue usageError
	return errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command ")
}

// args wraps a cobra argument check so that its error exits with ExitUsage.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return withCode(ExitUsage, fmt.Errorf("%s: %w (see %s --help)", cmd.CommandPath(), err, cmd.CommandPath()))
		}
		return nil
	}
}
