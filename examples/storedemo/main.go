// Command storedemo shows the esnats event store on an embedded NATS server
// (or the server at $NATS_URL): appends with concurrency checks, an atomic
// multi-event append, a conflict, an idempotent retry, loading one aggregate
// and reading the whole store filtered by event type.
//
//	go run ./examples/storedemo   (or: make demo)
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/esnats/esnats/examples/internal/exampleenv"
	"github.com/esnats/esnats/stream"
)

// Events are facts, named in the past tense.
type ItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

type ItemRemoved struct {
	SKU string `json:"sku"`
}

type CheckedOut struct {
	Total int `json:"total"`
}

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	js, _, cleanup, err := exampleenv.Connect(os.Stdout, "storedemo")
	if err != nil {
		return err
	}
	defer cleanup()

	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	stream.MustRegister[ItemRemoved](reg, "ItemRemoved")
	stream.MustRegister[CheckedOut](reg, "CheckedOut")
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: reg})
	if err != nil {
		return err
	}
	fmt.Printf("store %q: one JetStream stream, subjects %s\n\n", store.Name(), store.SubjectFilter(""))

	cart := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	step("1. a new cart: append with ExpectNone")
	res, err := store.Append(ctx, cart, stream.ExpectNone(), []stream.EventData{
		{Data: ItemAdded{SKU: "apple", Quantity: 3}},
	}, stream.WithCorrelationID("req-1"))
	if err != nil {
		return err
	}
	fmt.Printf("   appended at %s\n", res.Last)

	step("2. two events in one atomic append, checked against the revision we know")
	res, err = store.Append(ctx, cart, stream.ExpectRevision(res.Last), []stream.EventData{
		{Data: ItemAdded{SKU: "pear", Quantity: 1}},
		{Data: ItemRemoved{SKU: "apple"}},
	})
	if err != nil {
		return err
	}
	fmt.Printf("   versions %d..%d at sequences %d..%d\n", res.First.Version, res.Last.Version, res.First.Sequence, res.Last.Sequence)

	step("3. a writer with a stale revision is refused: nothing is lost")
	_, err = store.Append(ctx, cart, stream.ExpectRevision(stream.Revision{Version: 1, Sequence: 1}), []stream.EventData{
		{Data: ItemAdded{SKU: "plum", Quantity: 9}},
	})
	var conflict *stream.ConflictError
	if !errors.As(err, &conflict) {
		return fmt.Errorf("expected a conflict, got %v", err)
	}
	fmt.Printf("   %v\n", err)

	step("4. a retry with the same event id is stored once")
	ev := stream.EventData{ID: "checkout-alice-1", Data: CheckedOut{Total: 42}}
	first, err := store.Append(ctx, cart, stream.ExpectRevision(res.Last), []stream.EventData{ev})
	if err != nil {
		return err
	}
	again, err := store.Append(ctx, cart, stream.ExpectRevision(res.Last), []stream.EventData{ev})
	if err != nil {
		return err
	}
	fmt.Printf("   first: %s, retry: %s (duplicate=%v)\n", first.Last, again.Last, again.Duplicate)

	step("5. other carts, two of them in one atomic multi-aggregate append")
	_, err = store.AppendBatch(ctx, []stream.AppendRequest{
		{Aggregate: stream.Aggregate{Type: "cart", ID: "bob"}, Expect: stream.ExpectNone(), Events: []stream.EventData{{Data: ItemAdded{SKU: "fig", Quantity: 2}}}},
		{Aggregate: stream.Aggregate{Type: "cart", ID: "carol/2"}, Expect: stream.ExpectNone(), Events: []stream.EventData{{Data: ItemAdded{SKU: "kiwi", Quantity: 5}}}},
	})
	if err != nil {
		return err
	}
	fmt.Println("   bob and carol/2 written together")

	step("6. load alice's cart: her events, in order")
	for e, err := range store.Load(ctx, cart) {
		if err != nil {
			return err
		}
		fmt.Printf("   v%d seq %-2d %-12s %+v  (subject %s, type in a header)\n", e.Version, e.Sequence, e.Type, e.Data, e.Subject)
	}

	step("7. the whole store, only ItemAdded events")
	for e, err := range store.ReadAll(ctx, stream.WithEventTypes("ItemAdded")) {
		if err != nil {
			return err
		}
		fmt.Printf("   seq %-2d %-18s %+v\n", e.Sequence, e.Aggregate.ID, e.Data)
	}
	fmt.Println("\nlook at it as an operator would: nats stream view shop (against $NATS_URL)")
	return nil
}

func step(s string) { fmt.Println(s) }
