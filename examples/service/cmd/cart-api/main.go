// Command cart-api is the command side of the service example: a NATS
// micro service ("cart") that takes shopping-cart commands as JSON over
// request/reply and runs them on event-sourced carts (see package app).
//
//	cart.add       {"cart":"alice","sku":"apple","quantity":2}
//	cart.remove    {"cart":"alice","sku":"apple"}
//	cart.checkout  {"cart":"alice"}
//	cart.get       {"cart":"alice"}
//
// Environment:
//
//	NATS_URL   server URL, or a comma-separated list (default nats://127.0.0.1:4222, as `esnats dev` prints)
//	REPLICAS   replicas of the event store and buckets: 1 on one server (default), 3 on a 3-node cluster
//	LOG_LEVEL  debug, info (default), warn or error
//
// It keeps reconnecting while no server answers, and stops cleanly on
// SIGINT or SIGTERM (requests in hand are answered first).
//
//	go run ./cmd/esnats dev                      # in another terminal
//	go run ./examples/service/cmd/cart-api
package main

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/examples/service/app"
)

func main() {
	app.Main("cart-api", func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg app.Config) error {
		return app.Serve(ctx, nc, js, cfg)
	})
}
