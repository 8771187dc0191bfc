package projections_test

import (
	"context"
	"fmt"
	"time"

	"github.com/esnats/esnats/projections"
)

// A worker serves the control plane of its runner; a tool (usually another
// process, like `esnats projections status|rebuild|reset`) sees the
// projections through a ControlClient and has the worker rebuild one.
func ExampleRunner_Serve() {
	js, store, stop := exampleShop()
	defer stop()

	// The worker.
	runner := projections.NewRunner(js, store, nil)
	err := runner.Add(projections.Projection{
		Name:  "items-per-sku",
		Model: exampleItemsPerSKU(),
		// A rebuild requested from outside replays into a new, empty model.
		Fresh: func(context.Context) (projections.ReadModel, error) {
			return exampleItemsPerSKU(), nil
		},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	worker, stopWorker := context.WithCancel(ctx)
	control, err := runner.Serve(worker, js.Conn())
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- runner.Run(worker) }()
	exampleWaitCaughtUp(ctx, runner, "items-per-sku", 4)

	// The tool, with its own connection in real life.
	client, err := projections.NewControlClient(js.Conn(), "shop")
	if err != nil {
		panic(err)
	}
	workers, err := client.Status(ctx)
	if err != nil {
		// projections.ErrNoWorker if no worker serves the store;
		// projections.ErrPermissionDenied (at once) if the server refuses
		// this connection the request or its reply inbox.
		panic(err)
	}
	for _, w := range workers {
		for _, p := range w.Projections {
			fmt.Printf("%s: position %d, lag %d, %s, running %v\n", p.Name, p.Position, p.Lag, p.Mode, p.Running)
		}
	}
	err = client.Rebuild(ctx, "items-per-sku", func(p projections.Progress) {
		if p.Done {
			fmt.Printf("rebuilt: position %d of %d\n", p.Position, p.Target)
		}
	})
	if err != nil {
		panic(err)
	}

	// The worker's runner has switched over to the fresh model.
	model, _ := runner.Model("items-per-sku")
	fmt.Println(model.(*projections.Memory[int]).Snapshot())

	stopWorker()
	if err := <-done; err != nil {
		panic(err)
	}
	<-control.Done()
	// Output:
	// items-per-sku: position 4, lag 0, exactly-once, running true
	// rebuilt: position 4 of 4
	// map[apple:5 pear:1 plum:4]
}
