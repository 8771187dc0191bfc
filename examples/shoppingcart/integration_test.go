package main

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// env is an event store and a snapshot store on an embedded server.
type env struct {
	store *stream.Store
	loads *countingStore
	snaps *kv.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	reg := stream.NewRegistry()
	Register(reg)
	store, err := stream.NewStore(t.Context(), js, stream.Config{Name: "shoppingcart", Registry: reg})
	require.NoError(t, err)
	snaps, err := kv.NewStore(t.Context(), js, kv.Config{Bucket: "shoppingcart_snapshots"})
	require.NoError(t, err)
	return &env{store: store, loads: &countingStore{EventStore: store}, snaps: snaps}
}

// repo returns a new repository (with its own cache, like another process)
// taking snapshots every 100 events.
func (e *env) repo(t *testing.T) *aggregate.Repository[*Cart] {
	t.Helper()
	repo, err := aggregate.NewRepository(aggregate.Config[*Cart]{
		Store: e.loads, Type: AggregateType, New: NewCart, Snapshots: e.snaps, SnapshotEvery: 100,
	})
	require.NoError(t, err)
	t.Cleanup(repo.Flush)
	return repo
}

// stored returns the aggregate's stored events' payloads and checks that
// their versions are 1, 2, 3, ...
func (e *env) stored(t *testing.T, id string) []any {
	t.Helper()
	var out []any
	for ev, err := range e.store.Load(t.Context(), stream.Aggregate{Type: AggregateType, ID: id}) {
		require.NoError(t, err)
		require.EqualValues(t, len(out)+1, ev.Version)
		name, err := e.store.Registry().NameOf(ev.Data)
		require.NoError(t, err)
		require.Equal(t, name, ev.Type)
		out = append(out, ev.Data)
	}
	return out
}

func TestCartOnJetStream(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	repo := e.repo(t)
	require.NoError(t, repo.Update(ctx, "alice", add("apple", 2)))
	require.NoError(t, repo.Update(ctx, "alice", func(c *Cart) error {
		// Several events in one command are appended atomically.
		if err := c.AddItem("pear", 1); err != nil {
			return err
		}
		return c.AddItem("apple", 3)
	}))
	require.ErrorIs(t, repo.Update(ctx, "alice", add("plum", 0)), ErrInvalidQuantity)
	require.ErrorIs(t, repo.Update(ctx, "alice", remove("kiwi")), ErrItemNotInCart)
	require.NoError(t, repo.Update(ctx, "alice", remove("pear")))
	require.NoError(t, repo.Update(ctx, "alice", checkout))
	require.ErrorIs(t, repo.Update(ctx, "alice", add("fig", 1)), ErrCheckedOut)
	require.ErrorIs(t, repo.Update(ctx, "bob", checkout), ErrEmptyCart)

	assert.Equal(t, []any{
		ItemAdded{SKU: "apple", Quantity: 2},
		ItemAdded{SKU: "pear", Quantity: 1},
		ItemAdded{SKU: "apple", Quantity: 3},
		ItemRemoved{SKU: "pear", Quantity: 1},
		CheckedOut{Lines: 1, Quantity: 5},
	}, e.stored(t, "alice"))
	assert.Empty(t, e.stored(t, "bob"), "a rejected command stores nothing")

	c, err := e.repo(t).Load(ctx, "alice")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 5}, c.Items)
	assert.True(t, c.CheckedOut)
	assert.Equal(t, stream.Revision{Version: 5, Sequence: 5}, c.Revision())
}

// Two writers load the same cart, then both save: one append conflicts and
// its Update reloads the cart and runs the command again. Nothing is lost.
func TestConcurrentWritersRetry(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	require.NoError(t, e.repo(t).Update(ctx, "bob", add("apple", 1)))

	repos := []*aggregate.Repository[*Cart]{e.repo(t), e.repo(t)}
	skus := []string{"pear", "plum"}
	bothLoaded := barrier(ctx, 2)
	calls := make([]int, 2)
	var wg sync.WaitGroup
	for i := range repos {
		wg.Go(func() {
			err := repos[i].Update(ctx, "bob", func(c *Cart) error {
				calls[i]++
				if calls[i] == 1 {
					if err := bothLoaded(); err != nil {
						return err
					}
				}
				assert.EqualValues(t, calls[i], c.Version(), "run %d sees the cart at version %d", calls[i], calls[i])
				return c.AddItem(skus[i], 1)
			})
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	assert.ElementsMatch(t, []int{1, 2}, calls, "one writer ran once, the other twice")

	events := e.stored(t, "bob")
	require.Len(t, events, 3)
	assert.ElementsMatch(t, []any{ItemAdded{SKU: "pear", Quantity: 1}, ItemAdded{SKU: "plum", Quantity: 1}}, events[1:])
	c, err := e.repo(t).Load(ctx, "bob")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 1, "pear": 1, "plum": 1}, c.Items)
}

// A cart with 250 events is loaded from its snapshot at version 200 and the
// 50 events after it, to the same state as a full replay.
func TestLongCartLoadsFromSnapshot(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	repo := e.repo(t)
	for i := range 25 {
		require.NoError(t, repo.Update(ctx, "carol", func(c *Cart) error {
			for j := range 10 {
				if err := c.AddItem(fmt.Sprintf("sku-%d", (i+j)%7), 1+j%3); err != nil {
					return err
				}
			}
			return nil
		}))
		repo.Flush() // snapshots are written in the background
	}
	snap, ok, err := e.snaps.Get(ctx, stream.Aggregate{Type: AggregateType, ID: "carol"})
	require.NoError(t, err)
	require.True(t, ok)
	assert.EqualValues(t, 200, snap.Version)

	before := e.loads.events.Load()
	fromSnap, err := e.repo(t).Load(ctx, "carol")
	require.NoError(t, err)
	assert.EqualValues(t, 51, e.loads.events.Load()-before, "only the snapshot's last event (the check) and the 50 after it are read")

	noSnaps, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: e.store, Type: AggregateType, New: NewCart})
	require.NoError(t, err)
	replayed, err := noSnaps.Load(ctx, "carol")
	require.NoError(t, err)
	assert.Equal(t, replayed.Items, fromSnap.Items)
	assert.Equal(t, replayed.Revision(), fromSnap.Revision())
	assert.EqualValues(t, 250, fromSnap.Version())
}

// The demo runs and shows what it promises.
func TestDemo(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), &out, js, ""))
	t.Log("\n" + out.String())
	for _, want := range []string{
		"remove kiwi  rejected: item not in cart: kiwi",
		"v5 seq 5   cart-checked-out  {Lines:1 Quantity:5}",
		"state: items {apple: 5}, checked out, version 5",
		"command ran once",
		"command ran 2 times",
		"state: items {apple: 1, pear: 1, plum: 2}, version 3",
		"snapshot in KV: version 200",
		"read 250 events",
		"read  51 events",
		"and the 50 after it",
	} {
		assert.Contains(t, out.String(), want)
	}
}
