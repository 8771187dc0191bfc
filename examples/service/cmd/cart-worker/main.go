// Command cart-worker is the read side of the service example: it keeps a
// read model of all carts (a summary per cart, and the units sold per SKU)
// in a JetStream KV bucket, fed by a durable consumer on the carts' event
// store, exactly once and in order, and answers queries on it as the NATS
// micro service "cart-views" (see package app).
//
//	cart.summary   {"cart":"alice"}
//	cart.sales     {}
//
// Environment:
//
//	NATS_URL   server URL, or a comma-separated list (default nats://127.0.0.1:4222, as `esnats dev` prints)
//	REPLICAS   replicas of the event store and buckets: 1 on one server (default), 3 on a 3-node cluster
//	LOG_LEVEL  debug, info (default), warn or error
//
// Several workers may run: one applies events, the others stand by and
// take over when it stops. It keeps reconnecting while no server answers,
// and stops cleanly on SIGINT or SIGTERM (the batch in hand is applied and
// acknowledged first).
//
//	go run ./cmd/esnats dev                      # in another terminal
//	go run ./examples/service/cmd/cart-worker
package main

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/examples/service/app"
)

func main() {
	app.Main("cart-worker", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream, cfg app.Config) error {
		return app.RunWorker(ctx, js, cfg)
	})
}
