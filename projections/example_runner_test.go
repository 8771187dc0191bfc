package projections_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// exampleShop starts an embedded server and a store "shop" holding four
// ItemAdded events in two carts.
func exampleShop() (js jetstream.JetStream, store *stream.Store, stop func()) {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		panic(err)
	}
	nc, _ := srv.Connect()
	stop = func() { nc.Close(); srv.Shutdown(); os.RemoveAll(dir) }
	js, _ = jetstream.New(nc)
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "item-added")
	store, err = stream.NewStore(context.Background(), js, stream.Config{Name: "shop", Registry: reg})
	if err != nil {
		panic(err)
	}
	for i, it := range []ItemAdded{{"apple", 2}, {"pear", 1}, {"apple", 3}, {"plum", 4}} {
		cart := stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%d", i%2)}
		if _, err := store.Append(context.Background(), cart, stream.ExpectAny(), []stream.EventData{{Data: it}}); err != nil {
			panic(err)
		}
	}
	return js, store, stop
}

// exampleItemsPerSKU is an exactly-once read model in memory: the
// quantity of each SKU across all carts.
func exampleItemsPerSKU() *projections.Memory[int] {
	return projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		item := ev.Data.(ItemAdded)
		view[item.SKU] += item.Qty
		return nil
	})
}

// exampleWaitCaughtUp polls the projection's status until it has applied
// every event up to position.
func exampleWaitCaughtUp(ctx context.Context, r *projections.Runner, name string, position uint64) projections.Status {
	for {
		// StatusOf fails until Run has created the projection's consumer.
		st, err := r.StatusOf(ctx, name)
		if err == nil && st.Lag == 0 && st.Position >= position {
			return st
		}
		select {
		case <-ctx.Done():
			panic(ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A worker runs a projection of the store's carts into an in-memory view,
// waits until it has caught up, and stops.
func ExampleRunner() {
	js, store, stop := exampleShop()
	defer stop()

	perSKU := exampleItemsPerSKU()
	runner := projections.NewRunner(js, store, nil)
	err := runner.Add(projections.Projection{
		Name:           "items-per-sku",
		AggregateTypes: []string{"cart"},
		Model:          perSKU,
	})
	if err != nil {
		panic(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	worker, stopWorker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runner.Run(worker) }()

	st := exampleWaitCaughtUp(ctx, runner, "items-per-sku", 4)
	fmt.Printf("%s: position %d, lag %d, %s\n", st.Name, st.Position, st.Lag, st.Mode)
	stopWorker()
	if err := <-done; err != nil {
		panic(err)
	}

	view := perSKU.Snapshot()
	for _, sku := range slices.Sorted(maps.Keys(view)) {
		fmt.Println(sku, view[sku])
	}
	// Output:
	// items-per-sku: position 4, lag 0, exactly-once
	// apple 5
	// pear 1
	// plum 4
}

// Rebuild replays the store into a fresh model while the projection keeps
// running, then switches the projection over to it.
func ExampleRunner_Rebuild() {
	js, store, stop := exampleShop()
	defer stop()

	live := exampleItemsPerSKU()
	runner := projections.NewRunner(js, store, nil)
	if err := runner.Add(projections.Projection{Name: "items-per-sku", Model: live}); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	worker, stopWorker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runner.Run(worker) }()
	exampleWaitCaughtUp(ctx, runner, "items-per-sku", 4)

	fresh := exampleItemsPerSKU() // e.g. after a change of the apply function
	err := runner.Rebuild(ctx, "items-per-sku", fresh, func(p projections.Progress) {
		if p.Done {
			fmt.Printf("rebuilt: position %d of %d\n", p.Position, p.Target)
		}
	})
	if err != nil {
		panic(err)
	}

	// The runner now feeds the fresh model.
	_, _ = store.Append(ctx, stream.Aggregate{Type: "cart", ID: "c2"}, stream.ExpectNone(),
		[]stream.EventData{{Data: ItemAdded{"pear", 5}}})
	exampleWaitCaughtUp(ctx, runner, "items-per-sku", 5)
	stopWorker()
	if err := <-done; err != nil {
		panic(err)
	}
	fmt.Println("fresh:", fresh.Snapshot())
	fmt.Println("old:  ", live.Snapshot())
	// Output:
	// rebuilt: position 4 of 4
	// fresh: map[apple:5 pear:6 plum:4]
	// old:   map[apple:5 pear:1 plum:4]
}
