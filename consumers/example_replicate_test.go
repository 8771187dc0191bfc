package consumers_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

type replExampleItemAdded struct {
	SKU string `json:"sku"`
}

type replExampleOrderPlaced struct {
	Total int `json:"total"`
}

// replExampleWait waits until the stream holds n messages: the server
// copies in the background.
func replExampleWait(ctx context.Context, js jetstream.JetStream, name string, n uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		st, err := js.Stream(ctx, name)
		if err == nil && st.CachedInfo().State.Msgs >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s: %w", name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A replica of the carts of a shop store, copied by the server under the
// subject prefix "carts" and opened as an esnats store of its own. Orders are
// not copied. Events keep their ids, versions and payloads; positions are
// the replica's.
func ExampleCreateReplica() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	reg := stream.NewRegistry()
	stream.MustRegister[replExampleItemAdded](reg, "ItemAdded")
	stream.MustRegister[replExampleOrderPlaced](reg, "OrderPlaced")
	shop, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: reg})
	if err != nil {
		panic(err)
	}
	cart := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	_, _ = shop.Append(ctx, stream.Aggregate{Type: "order", ID: "o-1"}, stream.ExpectNone(),
		[]stream.EventData{{Data: replExampleOrderPlaced{Total: 42}}})
	_, _ = shop.Append(ctx, cart, stream.ExpectNone(),
		[]stream.EventData{{Data: replExampleItemAdded{SKU: "apple"}}, {Data: replExampleItemAdded{SKU: "pear"}}})

	_, err = consumers.CreateReplica(ctx, js, consumers.ReplicaConfig{
		Name:           "carts",
		SourceStream:   "shop",
		AggregateTypes: []string{"cart"},
		SubjectPrefix:  "carts",
	})
	if err != nil {
		panic(err)
	}
	if err := replExampleWait(ctx, js, "carts", 2); err != nil {
		panic(err)
	}

	carts, err := stream.OpenStore(ctx, js, stream.Config{Name: "carts", Registry: reg})
	if err != nil {
		panic(err)
	}
	for ev, err := range carts.ReadAll(ctx) {
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.Sequence, ev.Subject, ev.Version, ev.Type, ev.Data)
	}
	// Output:
	// 1 carts.cart.alice=40example=2Ecom 1 ItemAdded {apple}
	// 2 carts.cart.alice=40example=2Ecom 2 ItemAdded {pear}
}
