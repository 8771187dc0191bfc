package stream_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// One goroutine keeps appends to many aggregates in flight, one per
// aggregate at a time, each checked against the aggregate's last revision:
// an import of 100 rooms' lights, twice on and off.
func ExampleStore_AppendAsync() {
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
	// Pipeline mode sends each single event at once; the default (batch)
	// coalesces the appends in flight into atomic batches instead.
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "home", Registry: reg, GroupCommit: stream.GroupCommitPipeline})
	if err != nil {
		panic(err)
	}

	revs := make([]stream.Revision, 100)
	for round, ev := range []any{LightTurnedOn{}, LightTurnedOff{}, LightTurnedOn{}, LightTurnedOff{}} {
		pending := make([]*stream.PendingAppend, len(revs))
		for i := range revs {
			light := stream.Aggregate{Type: "switch", ID: fmt.Sprintf("room-%d", i)}
			pending[i] = store.AppendAsync(ctx, light, stream.ExpectRevision(revs[i]), []stream.EventData{{Data: ev}})
		}
		for i, p := range pending {
			res, err := p.Result()
			if err != nil {
				panic(err)
			}
			revs[i] = res.Last
		}
		fmt.Printf("round %d: room-0 at version %d, room-99 at version %d\n", round+1, revs[0].Version, revs[99].Version)
	}
	// Output:
	// round 1: room-0 at version 1, room-99 at version 1
	// round 2: room-0 at version 2, room-99 at version 2
	// round 3: room-0 at version 3, room-99 at version 3
	// round 4: room-0 at version 4, room-99 at version 4
}
