package stream_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

type LightTurnedOn struct {
	Room string `json:"room"`
}

type LightTurnedOff struct {
	Room string `json:"room"`
}

// A store on an embedded server: append with concurrency checks, detect a
// conflict, load the aggregate back.
func ExampleStore() {
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
	stream.MustRegister[LightTurnedOn](reg, "LightTurnedOn")
	stream.MustRegister[LightTurnedOff](reg, "LightTurnedOff")
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "home", Registry: reg})
	if err != nil {
		panic(err)
	}

	light := stream.Aggregate{Type: "switch", ID: "kitchen.main"}
	res, _ := store.Append(ctx, light, stream.ExpectNone(), []stream.EventData{{Data: LightTurnedOn{Room: "kitchen"}}})
	_, _ = store.Append(ctx, light, stream.ExpectRevision(res.Last), []stream.EventData{{Data: LightTurnedOff{Room: "kitchen"}}})

	// A second writer still holding the first revision is refused.
	_, err = store.Append(ctx, light, stream.ExpectRevision(res.Last), []stream.EventData{{Data: LightTurnedOff{Room: "kitchen"}}})
	fmt.Println("stale writer refused:", errors.Is(err, stream.ErrConflict))

	for ev, err := range store.Load(ctx, light) {
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.Version, ev.Type, ev.Subject)
	}
	// Output:
	// stale writer refused: true
	// 1 LightTurnedOn home.switch.kitchen=2Emain
	// 2 LightTurnedOff home.switch.kitchen=2Emain
}

// Several aggregates in one atomic append: both or neither.
func ExampleStore_AppendBatch() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, _ := embedded.Start(embedded.Options{Dir: dir})
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	reg := stream.NewRegistry()
	stream.MustRegister[LightTurnedOn](reg, "LightTurnedOn")
	store, _ := stream.NewStore(ctx, js, stream.Config{Name: "home", Registry: reg})

	a := stream.Aggregate{Type: "switch", ID: "hall"}
	b := stream.Aggregate{Type: "switch", ID: "porch"}
	_, _ = store.Append(ctx, b, stream.ExpectNone(), []stream.EventData{{Data: LightTurnedOn{Room: "porch"}}})

	// b already has an event, so ExpectNone fails for it, and a is not written either.
	_, err := store.AppendBatch(ctx, []stream.AppendRequest{
		{Aggregate: a, Expect: stream.ExpectNone(), Events: []stream.EventData{{Data: LightTurnedOn{Room: "hall"}}}},
		{Aggregate: b, Expect: stream.ExpectNone(), Events: []stream.EventData{{Data: LightTurnedOn{Room: "porch"}}}},
	})
	var conflict *stream.ConflictError
	fmt.Println(errors.As(err, &conflict), conflict.Aggregate)
	rev, _ := store.LastRevision(ctx, a)
	fmt.Println("hall:", rev)
	// Output:
	// true switch/porch
	// hall: no events
}
