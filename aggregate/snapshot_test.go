package aggregate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"iter"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/internal/telemetry/telemetrytest"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// renumbered is a store whose loads report every event's version shifted by
// shift, as a store with a broken history would (the store's own checks
// have run by then).
type renumbered struct {
	stream.EventStore
	shift uint64
}

func (r renumbered) Load(ctx context.Context, agg stream.Aggregate, opts ...stream.ReadOption) iter.Seq2[*stream.Event, error] {
	return func(yield func(*stream.Event, error) bool) {
		for ev, err := range r.EventStore.Load(ctx, agg, opts...) {
			if ev != nil {
				c := *ev
				c.Version += r.shift
				ev = &c
			}
			if !yield(ev, err) {
				return
			}
		}
	}
}

// A stored event whose version is not the next one fails the load with a
// *stream.Error naming it, like the store's own load errors.
func TestRepositoryVersionErrorIsStreamError(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	require.NoError(t, newRepo(t, st).Update(ctx, "other", func(c *Cart) error { return c.Add("x", 1) }))
	require.NoError(t, newRepo(t, st).Update(ctx, "c", func(c *Cart) error { return c.Add("a", 1) }))

	repo := newRepo(t, renumbered{EventStore: st, shift: 1}) // the first event claims version 2
	for name, call := range map[string]func() error{
		"Load":   func() error { _, err := repo.Load(ctx, "c"); return err },
		"Update": func() error { return repo.Update(ctx, "c", func(c *Cart) error { return c.Add("b", 1) }) },
	} {
		err := call()
		require.Error(t, err, name)
		require.ErrorIs(t, err, stream.ErrDecode, name)
		var se *stream.Error
		require.ErrorAs(t, err, &se, name)
		assert.Equal(t, "load", se.Op, name)
		assert.Equal(t, "shop.cart.c", se.Subject, name)
		assert.EqualValues(t, 2, se.Sequence, name, "the offending event's sequence")
		assert.Contains(t, err.Error(), "version 2 follows version 0", name)
	}
	rev, err := st.LastRevision(ctx, stream.Aggregate{Type: "cart", ID: "c"})
	require.NoError(t, err)
	assert.EqualValues(t, 1, rev.Version, "nothing written")
}

// addN is a command that adds n items "a".
func addN(n int) func(*Cart) error {
	return func(c *Cart) error {
		for range n {
			if err := c.Add("a", 1); err != nil {
				return err
			}
		}
		return nil
	}
}

// stream.Store.Purge removes the events and leaves the snapshot: the
// repository sees that the stream no longer holds the snapshot's event,
// ignores and deletes the snapshot, and commands work on the state the
// events give.
func TestRepositorySnapshotLeftByStorePurge(t *testing.T) {
	ctx := context.Background()
	mem, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	st := &counting{EventStore: mem}
	snaps := kv.NewMemory()
	ref := stream.Aggregate{Type: "cart", ID: "c"}
	// Cached and uncached repositories: both must notice.
	cached := newRepo(t, st, func(c *aggregate.Config[*Cart]) { c.Snapshots, c.SnapshotEvery = snaps, 4 })
	plain := snapshotRepo(t, st, snaps, 4)
	require.NoError(t, plain.Update(ctx, "other", addN(1)))
	require.NoError(t, cached.Update(ctx, "c", addN(4)))
	cached.Flush()
	snap, ok, err := snaps.Get(ctx, ref)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, stream.Revision{Version: 4, Sequence: 5}, stream.Revision{Version: snap.Version, Sequence: snap.Sequence})

	require.NoError(t, mem.Purge(ctx, ref))

	// A load returns the state the events give (none), not the snapshot's.
	c, err := plain.Load(ctx, "c")
	require.NoError(t, err)
	assert.EqualValues(t, 0, c.Version())
	assert.Empty(t, c.Items)
	_, ok, err = snaps.Get(ctx, ref)
	require.NoError(t, err)
	assert.False(t, ok, "the snapshot ahead of the stream is deleted")

	// The cached copy is caught too, by Load and by Update.
	c, err = cached.Load(ctx, "c")
	require.NoError(t, err)
	assert.EqualValues(t, 0, c.Version(), "a cached aggregate whose history was purged is loaded afresh")

	// Purge again with the snapshot in place and the aggregate cached, and
	// start it again with other events: Update works from the events.
	require.NoError(t, cached.Update(ctx, "c", addN(4)))
	cached.Flush()
	_, ok, err = snaps.Get(ctx, ref)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, mem.Purge(ctx, ref))
	require.NoError(t, newRepo(t, mem, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 }).Update(ctx, "c", addN(2)))
	require.NoError(t, cached.Update(ctx, "c", func(c *Cart) error { return c.Add("b", 1) }))
	for _, repo := range []*aggregate.Repository[*Cart]{cached, plain} {
		c, err = repo.Load(ctx, "c")
		require.NoError(t, err)
		assert.EqualValues(t, 3, c.Version())
		assert.Equal(t, map[string]int{"a": 2, "b": 1}, c.Items, "the state is the events'")
	}
	rev, err := mem.LastRevision(ctx, ref)
	require.NoError(t, err)
	assert.EqualValues(t, 3, rev.Version)
}

// A snapshot of a position the stream does not reach (a bucket restored
// from a newer backup than the stream) is ignored, counted and logged as
// such, deleted, and replaced in due course; Update works.
func TestRepositorySnapshotAheadOfStream(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		snap func(last stream.Revision) (version, sequence uint64)
	}{
		{"beyond the stream", func(last stream.Revision) (uint64, uint64) { return last.Version + 5, last.Sequence + 100 }},
		{"version of another event", func(last stream.Revision) (uint64, uint64) { return last.Version + 1, last.Sequence }},
		{"sequence of an earlier event", func(last stream.Revision) (uint64, uint64) { return last.Version, last.Sequence - 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
			require.NoError(t, err)
			ref := stream.Aggregate{Type: "cart", ID: "alice"}
			writer := newRepo(t, mem)
			require.NoError(t, writer.Update(ctx, "alice", addN(3)))
			require.NoError(t, writer.Update(ctx, "bob", addN(1)))
			require.NoError(t, writer.Update(ctx, "alice", addN(2)))
			last, err := mem.LastRevision(ctx, ref)
			require.NoError(t, err)

			snaps := kv.NewMemory()
			state, err := stream.Msgpack().Marshal(&Cart{Items: map[string]int{"a": 99}, Adds: 99})
			require.NoError(t, err)
			v, seq := tc.snap(last)
			require.NoError(t, snaps.Put(ctx, kv.Snapshot{Aggregate: ref, Version: v, Sequence: seq, StateType: "cart", SchemaVersion: 1,
				ContentType: stream.ContentTypeMsgpack, State: state}))

			var logs bytes.Buffer
			metrics := telemetrytest.NewMetrics()
			repo := snapshotRepo(t, mem, snaps, 4, func(c *aggregate.Config[*Cart]) {
				c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
				c.MeterProvider = metrics.Provider
			})
			c, err := repo.Load(ctx, "alice")
			require.NoError(t, err)
			assert.Equal(t, map[string]int{"a": 5}, c.Items, "the state is the events'")
			assert.Equal(t, last, c.Revision())

			require.NoError(t, repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("b", 1) }))
			c, err = repo.Load(ctx, "alice")
			require.NoError(t, err)
			assert.Equal(t, map[string]int{"a": 5, "b": 1}, c.Items)
			assert.EqualValues(t, 6, c.Version())
			repo.Flush()
			snap, ok, err := snaps.Get(ctx, ref)
			require.NoError(t, err)
			require.True(t, ok, "replaced by a snapshot of the real state")
			// Taken by the first load (version 5) or, when that write was
			// still in flight, by a later one: of an event the stream holds.
			assert.GreaterOrEqual(t, snap.Version, last.Version)
			held := false
			for ev, err := range mem.Load(ctx, ref) {
				require.NoError(t, err)
				held = held || ev.Sequence == snap.Sequence && ev.Version == snap.Version
			}
			assert.True(t, held, "the new snapshot is of an event the stream holds: %d@%d", snap.Version, snap.Sequence)

			m, err := metrics.Collect()
			require.NoError(t, err)
			n, _ := m.Int64(telemetry.MetricSnapshotIgnored, telemetry.KeyAggregateType.String("cart"), telemetry.KeyReason.String("mismatch"))
			assert.EqualValues(t, 1, n, "counted once: the snapshot was deleted")

			var recs []map[string]any
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var rec map[string]any
				require.NoError(t, json.Unmarshal([]byte(line), &rec))
				recs = append(recs, rec)
			}
			require.Len(t, recs, 1, logs.String())
			assert.Equal(t, "WARN", recs[0]["level"])
			assert.Equal(t, "esnats: ignoring snapshot of an event the stream does not hold", recs[0]["msg"])
			assert.Equal(t, "mismatch", recs[0]["reason"])
			assert.Equal(t, "cart/alice", recs[0]["aggregate"])
			assert.EqualValues(t, v, recs[0]["version"])
			assert.EqualValues(t, seq, recs[0]["sequence"])
		})
	}
}

// A good snapshot costs no second read: its event is read in the same
// round trip as the events after it, and not applied again.
func TestRepositorySnapshotCheckCostsNoRead(t *testing.T) {
	ctx := context.Background()
	st := memStore(t)
	snaps := kv.NewMemory()
	repo := snapshotRepo(t, st, snaps, 10)
	require.NoError(t, repo.Update(ctx, "c", addN(10)))
	require.NoError(t, repo.Update(ctx, "c", addN(3)))
	repo.Flush()
	st.loads.Store(0)
	st.events.Store(0)
	c, err := repo.Load(ctx, "c")
	require.NoError(t, err)
	assert.Equal(t, 13, c.Items["a"])
	assert.Equal(t, 13, c.Adds, "the snapshot's event is not applied twice")
	assert.EqualValues(t, 1, st.loads.Load(), "one read")
	assert.EqualValues(t, 4, st.events.Load(), "the snapshot's event and the 3 after it")
}

// On a real server: a snapshot whose event the loading code can no longer
// decode is still used (the event was decoded when the snapshot was taken),
// and a snapshot left behind by stream.Store.Purge is ignored.
func TestRepositorySnapshotCheckOnJetStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	es, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	require.NoError(t, err)
	repo := snapshotRepo(t, es, snaps, 2)
	require.NoError(t, repo.Update(ctx, "other", addN(1)))
	require.NoError(t, repo.Update(ctx, "c", func(c *Cart) error { _ = c.Add("a", 1); return c.Remove("a") }))
	repo.Flush()
	ref := stream.Aggregate{Type: "cart", ID: "c"}
	snap, ok, err := snaps.Get(ctx, ref)
	require.NoError(t, err)
	require.True(t, ok)
	require.EqualValues(t, 2, snap.Version)

	// Code that no longer knows ItemRemoved, the snapshot's event.
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	old, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: reg})
	require.NoError(t, err)
	_, err = newRepo(t, old, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 }).Load(ctx, "c")
	require.ErrorIs(t, err, stream.ErrUnknownEventType, "the replay meets the event")
	oldRepo := snapshotRepo(t, old, snaps, 2)
	c, err := oldRepo.Load(ctx, "c")
	require.NoError(t, err, "the snapshot covers it")
	assert.EqualValues(t, 2, c.Version())
	require.NoError(t, oldRepo.Update(ctx, "c", func(c *Cart) error { return c.Add("b", 1) }))
	oldRepo.Flush()

	// stream.Store.Purge leaves the snapshot (version 2): Update works, from
	// the events.
	require.NoError(t, es.Purge(ctx, ref))
	require.NoError(t, repo.Update(ctx, "c", func(c *Cart) error { return c.Add("x", 1) }))
	c, err = repo.Load(ctx, "c")
	require.NoError(t, err)
	assert.EqualValues(t, 1, c.Version())
	assert.Equal(t, map[string]int{"x": 1}, c.Items)
	rev, err := es.LastRevision(ctx, ref)
	require.NoError(t, err)
	assert.EqualValues(t, 1, rev.Version)
	_, ok, err = snaps.Get(ctx, ref)
	require.NoError(t, err)
	assert.False(t, ok, "the stale snapshot is deleted")
}

// On a store whose events expire (MaxAge), a snapshot outlives the events
// it was taken after: the oldest go first, the snapshot's own last event
// among them. A load then uses the snapshot and the events after it (the
// next version), and when none of the aggregate's events are left, the
// snapshot alone; it is never deleted for it. (Expiry is simulated by
// deleting the oldest messages.)
func TestRepositorySnapshotOutlivesExpiredEvents(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	es, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry(), MaxAge: 24 * time.Hour})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	require.NoError(t, err)
	repo := snapshotRepo(t, es, snaps, 3)
	require.NoError(t, repo.Update(ctx, "c", addN(3))) // seq 1-3, snapshot at version 3
	repo.Flush()
	require.NoError(t, repo.Update(ctx, "c", addN(1))) // seq 4
	ref := stream.Aggregate{Type: "cart", ID: "c"}
	snap, ok, err := snaps.Get(ctx, ref)
	require.NoError(t, err)
	require.True(t, ok)
	require.EqualValues(t, 3, snap.Version)
	st, err := js.Stream(ctx, "shop")
	require.NoError(t, err)
	for seq := uint64(1); seq <= 3; seq++ {
		require.NoError(t, st.DeleteMsg(ctx, seq))
	}
	fresh := snapshotRepo(t, es, snaps, 3)
	c, err := fresh.Load(ctx, "c")
	require.NoError(t, err, "the snapshot and the event after it")
	assert.EqualValues(t, 4, c.Version())
	assert.Equal(t, 4, c.Items["a"])
	_, ok, err = snaps.Get(ctx, ref)
	require.NoError(t, err)
	assert.True(t, ok, "kept")

	// All of the aggregate's events gone: the snapshot is what is left.
	require.NoError(t, st.DeleteMsg(ctx, 4))
	c, err = snapshotRepo(t, es, snaps, 3).Load(ctx, "c")
	require.NoError(t, err)
	assert.EqualValues(t, 3, c.Version())
	assert.Equal(t, 3, c.Items["a"])
	_, ok, err = snaps.Get(ctx, ref)
	require.NoError(t, err)
	assert.True(t, ok, "kept")
}
