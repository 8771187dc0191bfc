// Command esnats works with esnats event stores on a NATS server: it runs a
// development server (esnats dev), lists stores, shows and follows events,
// shows aggregates, snapshots, consumers and projections, rebuilds and
// resets projections, and benchmarks esnats beside raw JetStream.
//
// Run "esnats --help" for the commands; docs/cli.md has the manual.
package main

import "github.com/esnats/esnats/cli"

func main() { cli.Main(cli.Options{}) }
