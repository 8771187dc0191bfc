package stream_test

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// Concurrent appends to different aggregates: the store sends those that
// arrive while one is in flight together, in one atomic batch, each with
// its own expectation (group commit, on by default). The default mode,
// GroupCommitAuto, times batches against single publishes while appends
// are concurrent and keeps the faster; a fixed mode skips that.
// GroupCommitMode says how the store sends them now.
func ExampleConfig_groupCommit() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{Dir: dir}) // fsync always
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
	store, err := stream.NewStore(ctx, js, stream.Config{
		Name:        "home",
		Registry:    reg,
		GroupCommit: stream.GroupCommitBatch, // fixed; the default is GroupCommitAuto
	})
	if err != nil {
		panic(err)
	}

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			light := stream.Aggregate{Type: "switch", ID: fmt.Sprintf("room-%d", i)}
			_, err := store.Append(ctx, light, stream.ExpectNone(), []stream.EventData{{Data: LightTurnedOn{Room: light.ID}}})
			if err != nil {
				panic(err)
			}
		})
	}
	wg.Wait()
	rev, _ := store.LastRevision(ctx, stream.Aggregate{Type: "switch", ID: "room-7"})
	fmt.Println("room-7 at version", rev.Version)
	fmt.Println("mode:", store.GroupCommitMode())
	// Output:
	// room-7 at version 1
	// mode: batch
}
