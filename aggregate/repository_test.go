package aggregate_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// A small cart aggregate for the tests.

type ItemAdded struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}
type ItemRemoved struct {
	SKU string `json:"sku"`
}
type CartDiscarded struct{}

func (CartDiscarded) TerminatesAggregate() {}

type Cart struct {
	aggregate.Root
	Items map[string]int `json:"items"`
	Adds  int            `json:"adds"`
}

func NewCart(id string) *Cart { return &Cart{Items: map[string]int{}} }

func (c *Cart) Apply(event any) {
	switch e := event.(type) {
	case ItemAdded:
		c.Items[e.SKU] += e.Qty
		c.Adds++
	case ItemRemoved:
		delete(c.Items, e.SKU)
	}
}

var errQty = errors.New("quantity must be positive")

func (c *Cart) Add(sku string, qty int) error {
	if qty <= 0 {
		return errQty
	}
	c.Record(ItemAdded{SKU: sku, Qty: qty})
	return nil
}

func (c *Cart) Remove(sku string) error {
	if _, ok := c.Items[sku]; !ok {
		return fmt.Errorf("no %s in the cart", sku)
	}
	c.Record(ItemRemoved{SKU: sku})
	return nil
}

func registry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	stream.MustRegister[ItemRemoved](reg, "ItemRemoved")
	stream.MustRegister[CartDiscarded](reg, "CartDiscarded")
	return reg
}

// counting wraps a store and counts the events loads read.
type counting struct {
	stream.EventStore
	loads  atomic.Int64
	events atomic.Int64
}

func (c *counting) Load(ctx context.Context, agg stream.Aggregate, opts ...stream.ReadOption) iter.Seq2[*stream.Event, error] {
	c.loads.Add(1)
	return func(yield func(*stream.Event, error) bool) {
		for ev, err := range c.EventStore.Load(ctx, agg, opts...) {
			if err == nil {
				c.events.Add(1)
			}
			if !yield(ev, err) {
				return
			}
		}
	}
}

func (c *counting) Purge(ctx context.Context, agg stream.Aggregate) error {
	return c.EventStore.(interface {
		Purge(context.Context, stream.Aggregate) error
	}).Purge(ctx, agg)
}

func memStore(t testing.TB) *counting {
	t.Helper()
	st, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	return &counting{EventStore: st}
}

func newRepo(t testing.TB, st stream.EventStore, mod ...func(*aggregate.Config[*Cart])) *aggregate.Repository[*Cart] {
	t.Helper()
	cfg := aggregate.Config[*Cart]{Store: st, Type: "cart", New: NewCart}
	for _, m := range mod {
		m(&cfg)
	}
	repo, err := aggregate.NewRepository(cfg)
	require.NoError(t, err)
	t.Cleanup(repo.Flush)
	return repo
}

func TestRepositoryUpdateAndLoad(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t, memStore(t))
	require.NoError(t, repo.Update(ctx, "c1", func(c *Cart) error { return c.Add("apple", 2) }))
	require.NoError(t, repo.Update(ctx, "c1", func(c *Cart) error {
		if err := c.Add("pear", 1); err != nil {
			return err
		}
		return c.Add("apple", 1) // later checks see earlier events of the same command
	}))
	c, err := repo.Load(ctx, "c1")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 3, "pear": 1}, c.Items)
	assert.EqualValues(t, 3, c.Version())
	assert.Equal(t, stream.Revision{Version: 3, Sequence: 3}, c.Revision())
	assert.Empty(t, c.Uncommitted())

	// Never written: initial state, version 0.
	fresh, err := repo.Load(ctx, "nobody")
	require.NoError(t, err)
	assert.Empty(t, fresh.Items)
	assert.Zero(t, fresh.Version())
}

func TestRepositoryRejectedCommandRecordsNothing(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	repo := newRepo(t, st)
	require.NoError(t, repo.Update(ctx, "c1", func(c *Cart) error { return c.Add("apple", 1) }))
	err := repo.Update(ctx, "c1", func(c *Cart) error {
		_ = c.Add("pear", 1)
		return c.Add("plum", 0)
	})
	require.ErrorIs(t, err, errQty)
	c, err := repo.Load(ctx, "c1")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 1}, c.Items, "the rejected command's events were neither saved nor kept in the cache")
}

func TestRepositoryConcurrentUpdatesLoseNothing(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		// Each writer has its own repository (as separate processes would),
		// so their caches go stale and conflicts happen.
		repo := newRepo(t, st, func(c *aggregate.Config[*Cart]) { c.MaxAttempts = 1000 })
		go func() {
			defer wg.Done()
			for i := range each {
				err := repo.Update(ctx, "hot", func(c *Cart) error { return c.Add(fmt.Sprintf("w%d", w), 1) })
				if !assert.NoError(t, err, "writer %d update %d", w, i) {
					return
				}
			}
		}()
	}
	wg.Wait()
	c, err := newRepo(t, st).Load(ctx, "hot")
	require.NoError(t, err)
	assert.EqualValues(t, writers*each, c.Version())
	assert.Equal(t, writers*each, c.Adds)
	for w := range writers {
		assert.Equal(t, each, c.Items[fmt.Sprintf("w%d", w)])
	}
}

func TestRepositoryConflictAfterMaxAttempts(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	repo := newRepo(t, st, func(c *aggregate.Config[*Cart]) { c.MaxAttempts = 3 })
	other := newRepo(t, st)
	require.NoError(t, repo.Update(ctx, "c", func(c *Cart) error { return c.Add("a", 1) }))
	calls := 0
	err := repo.Update(ctx, "c", func(c *Cart) error {
		calls++
		// Another writer gets in before every save.
		require.NoError(t, other.Update(ctx, "c", func(o *Cart) error { return o.Add("b", 1) }))
		return c.Add("a", 1)
	})
	require.ErrorIs(t, err, stream.ErrConflict)
	assert.Contains(t, err.Error(), "after 3 attempts")
	assert.Equal(t, 3, calls)
}

func TestRepositoryCacheAvoidsReloads(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	repo := newRepo(t, st)
	for range 50 {
		require.NoError(t, repo.Update(ctx, "hot", func(c *Cart) error { return c.Add("a", 1) }))
	}
	assert.EqualValues(t, 1, st.loads.Load(), "a hot aggregate is loaded once, then served from the cache")

	// Another writer makes the cached copy stale: the next command
	// conflicts, reloads and succeeds.
	require.NoError(t, newRepo(t, st).Update(ctx, "hot", func(c *Cart) error { return c.Add("b", 1) }))
	require.NoError(t, repo.Update(ctx, "hot", func(c *Cart) error { return c.Add("a", 1) }))
	c, err := newRepo(t, st).Load(ctx, "hot")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"a": 51, "b": 1}, c.Items)

	// Without a cache every command loads.
	st2 := memStore(t)
	nocache := newRepo(t, st2, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 })
	for range 5 {
		require.NoError(t, nocache.Update(ctx, "x", func(c *Cart) error { return c.Add("a", 1) }))
	}
	assert.EqualValues(t, 5, st2.loads.Load())
}

func TestRepositoryCreateAndDelete(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t, memStore(t))
	require.NoError(t, repo.Create(ctx, "c", func(c *Cart) error { return c.Add("a", 1) }))
	err := repo.Create(ctx, "c", func(c *Cart) error { return c.Add("a", 1) })
	require.ErrorIs(t, err, aggregate.ErrExists)

	require.ErrorIs(t, repo.Delete(ctx, "c", ItemRemoved{SKU: "a"}), aggregate.ErrNotTerminal)
	require.NoError(t, repo.Delete(ctx, "c", CartDiscarded{}))
	err = repo.Update(ctx, "c", func(c *Cart) error { return c.Add("b", 1) })
	require.ErrorIs(t, err, aggregate.ErrDeleted)
	c, err := repo.Load(ctx, "c")
	require.NoError(t, err, "a deleted aggregate can still be read")
	assert.True(t, c.Deleted())
	assert.EqualValues(t, 2, c.Version())
	// Events recorded after the terminal event are refused by Save too.
	c.Record(ItemAdded{SKU: "z", Qty: 1})
	require.ErrorIs(t, repo.Save(ctx, c), aggregate.ErrDeleted)
}

func TestRepositoryInvalidID(t *testing.T) {
	repo := newRepo(t, memStore(t))
	err := repo.Update(context.Background(), "", func(c *Cart) error { return c.Add("a", 1) })
	require.ErrorIs(t, err, stream.ErrInvalidID)
}

// snapshotRepo returns a repository with in-memory snapshots every n events.
func snapshotRepo(t testing.TB, st stream.EventStore, snaps kv.Snapshots, n int, mod ...func(*aggregate.Config[*Cart])) *aggregate.Repository[*Cart] {
	return newRepo(t, st, append([]func(*aggregate.Config[*Cart]){func(c *aggregate.Config[*Cart]) {
		c.Snapshots = snaps
		c.SnapshotEvery = n
		c.CacheSize = -1
	}}, mod...)...)
}

func TestRepositoryLongHistoryLoadsFromSnapshot(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	snaps := kv.NewMemory()
	repo := snapshotRepo(t, st, snaps, 100)
	// 10,000 events in commands of 10.
	for i := range 1000 {
		require.NoError(t, repo.Update(ctx, "long", func(c *Cart) error {
			for j := range 10 {
				if err := c.Add(fmt.Sprintf("sku%d", (i*10+j)%37), 1); err != nil {
					return err
				}
			}
			return nil
		}))
		if i%100 == 0 {
			repo.Flush()
		}
	}
	repo.Flush()
	st.events.Store(0)
	c, err := repo.Load(ctx, "long")
	require.NoError(t, err)
	assert.EqualValues(t, 10000, c.Version())
	assert.Equal(t, 10000, c.Adds)
	assert.LessOrEqual(t, st.events.Load(), int64(100), "loading reads only the events after the last snapshot")
	snap, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "long"})
	require.NoError(t, err)
	require.True(t, ok)
	assert.EqualValues(t, 10000, snap.Version)
}

// Snapshot plus tail equals a full replay, for many random histories and
// snapshot intervals.
func TestRepositorySnapshotPlusTailEqualsReplay(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for h := range 40 {
		st := memStore(t)
		every := 1 + rng.IntN(12)
		snaps := kv.NewMemory()
		repo := snapshotRepo(t, st, snaps, every)
		id := fmt.Sprintf("h%d", h)
		for range rng.IntN(60) {
			require.NoError(t, repo.Update(ctx, id, func(c *Cart) error {
				for range 1 + rng.IntN(4) {
					sku := fmt.Sprintf("s%d", rng.IntN(5))
					if _, ok := c.Items[sku]; ok && rng.IntN(3) == 0 {
						if err := c.Remove(sku); err != nil {
							return err
						}
					} else if err := c.Add(sku, 1+rng.IntN(3)); err != nil {
						return err
					}
				}
				return nil
			}))
		}
		repo.Flush()
		withSnap, err := repo.Load(ctx, id)
		require.NoError(t, err)
		replay, err := newRepo(t, st, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 }).Load(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, replay.Items, withSnap.Items, "history %d (snapshot every %d)", h, every)
		assert.Equal(t, replay.Adds, withSnap.Adds)
		assert.Equal(t, replay.Revision(), withSnap.Revision())
	}
}

func TestRepositoryIgnoresBadSnapshots(t *testing.T) {
	ctx := context.Background()
	ref := stream.Aggregate{Type: "cart", ID: "c"}
	cases := []struct {
		name string
		snap kv.Snapshot
	}{
		{"undecodable state", kv.Snapshot{Aggregate: ref, Version: 5, Sequence: 5, StateType: "cart", SchemaVersion: 1, ContentType: "application/msgpack", State: []byte{0xc1, 0xff}}},
		{"older schema", kv.Snapshot{Aggregate: ref, Version: 5, Sequence: 5, StateType: "cart", SchemaVersion: 0 + 1, ContentType: "application/msgpack", State: []byte{0x80}}},
		{"other state type", kv.Snapshot{Aggregate: ref, Version: 5, Sequence: 5, StateType: "order", SchemaVersion: 2, ContentType: "application/msgpack", State: []byte{0x80}}},
		{"unknown content type", kv.Snapshot{Aggregate: ref, Version: 5, Sequence: 5, StateType: "cart", SchemaVersion: 2, ContentType: "application/x-unknown", State: []byte{0x80}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := memStore(t)
			snaps := kv.NewMemory()
			// The code's state schema is 2; the bad snapshots claim version 5
			// of a history that really has 120 events.
			repo := snapshotRepo(t, st, snaps, 100, func(cfg *aggregate.Config[*Cart]) { cfg.SnapshotSchema = 2 })
			plain := newRepo(t, st)
			for range 12 {
				require.NoError(t, plain.Update(ctx, "c", func(c *Cart) error {
					for range 10 {
						_ = c.Add("a", 1)
					}
					return nil
				}))
			}
			require.NoError(t, snaps.Put(ctx, c.snap))
			got, err := repo.Load(ctx, "c")
			require.NoError(t, err, "a bad snapshot is ignored, never fatal")
			assert.Equal(t, 120, got.Items["a"])
			assert.EqualValues(t, 120, got.Version())
			repo.Flush()
			// ... and replaced by a good one.
			snap, ok, err := snaps.Get(ctx, ref)
			require.NoError(t, err)
			require.True(t, ok)
			assert.EqualValues(t, 120, snap.Version)
			assert.Equal(t, 2, snap.SchemaVersion)
		})
	}
}

// The functional style runs on the same repository.
type switchState struct{ On bool }
type TurnedOn struct{}
type TurnedOff struct{}
type turnOn struct{}

var errAlreadyOn = errors.New("already on")

func decideSwitch(s switchState, _ turnOn) ([]any, error) {
	if s.On {
		return nil, errAlreadyOn
	}
	return []any{TurnedOn{}}, nil
}

func evolveSwitch(s switchState, e any) switchState {
	switch e.(type) {
	case TurnedOn:
		s.On = true
	case TurnedOff:
		s.On = false
	}
	return s
}

func TestRepositoryFunctionalStyle(t *testing.T) {
	ctx := context.Background()
	reg := stream.NewRegistry()
	stream.MustRegister[TurnedOn](reg, "TurnedOn")
	stream.MustRegister[TurnedOff](reg, "TurnedOff")
	st, err := stream.NewMemoryStore(stream.Config{Name: "home", Registry: reg})
	require.NoError(t, err)
	repo, err := aggregate.NewRepository(aggregate.Config[*aggregate.State[switchState]]{
		Store: st, Type: "switch",
		New: aggregate.Functional(func(string) switchState { return switchState{} }, evolveSwitch),
	})
	require.NoError(t, err)
	require.NoError(t, repo.Update(ctx, "hall", aggregate.Decide(decideSwitch, turnOn{})))
	require.ErrorIs(t, repo.Update(ctx, "hall", aggregate.Decide(decideSwitch, turnOn{})), errAlreadyOn)
	s, err := repo.Load(ctx, "hall")
	require.NoError(t, err)
	assert.True(t, s.State.On)
	assert.EqualValues(t, 1, s.Version())
}

func TestRepositoryPurgeAfterRetention(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	snaps := kv.NewMemory()
	repo := snapshotRepo(t, st, snaps, 2)
	require.NoError(t, repo.Update(ctx, "gone", func(c *Cart) error { _ = c.Add("a", 1); return c.Add("b", 1) }))
	require.NoError(t, repo.Update(ctx, "kept", func(c *Cart) error { return c.Add("a", 1) }))
	repo.Flush()
	require.ErrorIs(t, repo.Purge(ctx, "gone", 0), aggregate.ErrNotDeleted, "not deleted yet")
	require.NoError(t, repo.Delete(ctx, "gone", CartDiscarded{}))
	require.ErrorIs(t, repo.Purge(ctx, "gone", time.Hour), aggregate.ErrNotDeleted, "within the retention period")
	require.NoError(t, repo.Purge(ctx, "gone", 0))

	rev, err := st.LastRevision(ctx, stream.Aggregate{Type: "cart", ID: "gone"})
	require.NoError(t, err)
	assert.True(t, rev.IsZero(), "history purged")
	_, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "gone"})
	require.NoError(t, err)
	assert.False(t, ok, "snapshot purged")
	kept, err := repo.Load(ctx, "kept")
	require.NoError(t, err)
	assert.Equal(t, 1, kept.Items["a"], "other aggregates untouched")
}

// Load brings a cached aggregate up to date with what other writers stored.
func TestRepositoryLoadIsFresh(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	a, b := newRepo(t, st), newRepo(t, st)
	require.NoError(t, a.Update(ctx, "c", func(c *Cart) error { return c.Add("x", 1) }))
	require.NoError(t, b.Update(ctx, "c", func(c *Cart) error { return c.Add("y", 1) }))
	c, err := a.Load(ctx, "c")
	require.NoError(t, err)
	assert.EqualValues(t, 2, c.Version())
	assert.Equal(t, map[string]int{"x": 1, "y": 1}, c.Items)
}
