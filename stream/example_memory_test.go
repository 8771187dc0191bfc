package stream_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/esnats/esnats/stream"
)

// memExampleItemAdded is an event payload.
type memExampleItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// memExampleItemRemoved is another.
type memExampleItemRemoved struct {
	SKU string `json:"sku"`
}

func ExampleMemoryStore() {
	reg := stream.NewRegistry()
	stream.MustRegister[memExampleItemAdded](reg, "item-added")
	stream.MustRegister[memExampleItemRemoved](reg, "item-removed")

	// The same semantics as NewStore on a NATS server, in memory: for tests.
	st, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: reg})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	cart := stream.Aggregate{Type: "cart", ID: "alice@example.com"}

	// A command that emits two events appends them atomically.
	res, err := st.Append(ctx, cart, stream.ExpectNone(), []stream.EventData{
		{Data: memExampleItemAdded{SKU: "apple", Quantity: 3}},
		{Data: memExampleItemAdded{SKU: "pear", Quantity: 1}},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("appended", res.First, "to", res.Last)

	// The next command expects the cart where the first one left it.
	if _, err := st.Append(ctx, cart, stream.ExpectRevision(res.Last), []stream.EventData{
		{Data: memExampleItemRemoved{SKU: "pear"}},
	}); err != nil {
		panic(err)
	}

	// A writer that loaded the cart before that append is refused.
	_, err = st.Append(ctx, cart, stream.ExpectRevision(res.Last), []stream.EventData{
		{Data: memExampleItemAdded{SKU: "plum", Quantity: 2}},
	})
	var conflict *stream.ConflictError
	if errors.As(err, &conflict) {
		fmt.Println("conflict: the cart is at", conflict.Actual)
	}

	for ev, err := range st.Load(ctx, cart) {
		if err != nil {
			panic(err)
		}
		fmt.Printf("%d %s %s %+v\n", ev.Version, ev.Subject, ev.Type, ev.Data)
	}
	// Output:
	// appended version 1 (sequence 1) to version 2 (sequence 2)
	// conflict: the cart is at version 3 (sequence 3)
	// 1 shop.cart.alice=40example=2Ecom item-added {SKU:apple Quantity:3}
	// 2 shop.cart.alice=40example=2Ecom item-added {SKU:pear Quantity:1}
	// 3 shop.cart.alice=40example=2Ecom item-removed {SKU:pear}
}
