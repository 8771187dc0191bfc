// Package cli is the esnats command-line tool as a library: cmd/esnats is
// cli.Main(cli.Options{}), and a worker binary built with this package gets
// every esnats command plus "projections run" with its own projections, and
// payloads decoded with its own registry:
//
//	func main() {
//		cli.Main(cli.Options{
//			Name:        "cart-worker",
//			Registry:    cart.Registry(),
//			Projections: cart.Projections, // func(ctx, js, store) ([]projections.Projection, error)
//		})
//	}
//
// The commands: dev (an embedded NATS server with JetStream for
// development), stores, events (show and follow, with filters), aggregate
// (history and snapshot), snapshots, consumers, projections
// status|rebuild|reset|run (through the workers' control plane, see
// projections.Runner.Serve) and bench (esnats beside raw JetStream).
// Connection flags follow the nats CLI (-s, --creds, --nkey, --user,
// --password, --tlscert, --tlskey, --tlsca, --inbox-prefix, --context).
// Tables are for people, --json for scripts. Exit codes are ExitOK,
// ExitError, ExitUsage, ExitConnect and ExitNotFound. docs/cli.md is the
// manual.
//
// What the NATS server reports on a connection asynchronously (permission
// violations, slow consumers) goes to Options.Stderr as "<name>: nats:
// <error>", each distinct message once per Run; a request the server
// refuses for lack of permission fails at once with an error naming the
// subject (it matches nats.ErrPermissionViolation), instead of waiting for
// --timeout.
//
// "projections run" and "dev" serve Prometheus metrics with --metrics-addr
// (off by default): the worker's projection and consumer metrics, or the
// embedded server's JetStream figures (docs/observability.md).
//
// Run executes one command line and returns its exit code, for tests and
// for programs that embed the tool; it stops long-running commands when its
// context ends.
package cli
