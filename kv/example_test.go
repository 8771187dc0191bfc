package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// A snapshot store on an embedded server: put a snapshot, get it back, and
// see that an older one never replaces it.
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

	snaps, err := kv.NewStore(ctx, js, kv.Config{}) // bucket "esnats_snapshots"
	if err != nil {
		panic(err)
	}
	user := stream.Aggregate{Type: "user", ID: "alice@example.com"}
	state, _ := stream.Msgpack().Marshal(map[string]any{"name": "Alice", "logins": 12})
	err = snaps.Put(ctx, kv.Snapshot{
		Aggregate:     user,
		Version:       12,  // the state has applied the user's events 1..12
		Sequence:      345, // the 12th is at stream sequence 345
		StateType:     "user",
		SchemaVersion: 1,
		ContentType:   stream.ContentTypeMsgpack,
		State:         state,
	})
	if err != nil {
		panic(err)
	}
	// An older snapshot (a slow writer) is not stored, and is not an error.
	_ = snaps.Put(ctx, kv.Snapshot{Aggregate: user, Version: 5, Sequence: 99, StateType: "user",
		SchemaVersion: 1, ContentType: stream.ContentTypeMsgpack, State: state})

	snap, ok, err := snaps.Get(ctx, user)
	if err != nil || !ok {
		// A snapshot is a cache: on an error, load from the events.
		panic(fmt.Sprint(ok, err))
	}
	var got map[string]any
	_ = stream.Msgpack().Unmarshal(snap.State, &got)
	key, _ := kv.Key(user)
	fmt.Println("key:", key)
	fmt.Println("version", snap.Version, "sequence", snap.Sequence, snap.StateType, snap.SchemaVersion)
	fmt.Println("state:", got["name"], got["logins"])
	// Output:
	// key: user.alice=40example=2Ecom
	// version 12 sequence 345 user 1
	// state: Alice 12
}

// Memory has the same semantics without NATS, for tests.
func ExampleMemory() {
	ctx := context.Background()
	snaps := kv.NewMemory()
	cart := stream.Aggregate{Type: "cart", ID: "42"}
	for _, v := range []uint64{3, 9, 4} {
		_ = snaps.Put(ctx, kv.Snapshot{Aggregate: cart, Version: v, Sequence: v, StateType: "cart",
			SchemaVersion: 1, ContentType: stream.ContentTypeJSON, State: []byte(`{}`)})
	}
	snap, ok, _ := snaps.Get(ctx, cart)
	fmt.Println(ok, snap.Version)

	// A corrupt value is reported, and ignored by the caller.
	snaps.SetRaw("cart.7", []byte("garbage"))
	_, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "7"})
	fmt.Println(ok, errors.Is(err, kv.ErrCorruptSnapshot))
	fmt.Println(err)
	// Output:
	// true 9
	// false true
	// esnats: get snapshot (bucket memory, key cart.7): corrupt snapshot: not a msgpack snapshot envelope: msgpack: 6 trailing bytes after the value
}

// Checkpoints with compare-and-set: two workers cannot both advance a
// projection from the same revision.
func ExampleCheckpoints() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, _ := embedded.Start(embedded.Options{Dir: dir})
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	cps, _ := kv.NewCheckpoints(ctx, js, kv.Config{}) // bucket "esnats_checkpoints"
	pos, rev, _ := cps.Get(ctx, "order-summary")
	fmt.Println("start at", pos)
	rev2, _ := cps.Set(ctx, "order-summary", 100, rev)
	_, err := cps.Set(ctx, "order-summary", 90, rev) // a second worker with the old revision
	fmt.Println("stale worker:", err != nil)
	pos, rev, _ = cps.Get(ctx, "order-summary")
	fmt.Println("now at", pos, rev == rev2)
	// Output:
	// start at 0
	// stale worker: true
	// now at 100 true
}
