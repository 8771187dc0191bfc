package securitytest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// TestServiceRole runs everything a service does with SHOP_APP's
// permissions: set-up, commands (one and several events), an atomic
// multi-aggregate append, loads with snapshots, last revisions, a conflict
// and its settlement, snapshot deletes. The server refuses none of it; what
// the role does not need it refuses.
func TestServiceRole(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := context.Background()

	s.addItems(t, "alice@example.com", ItemAdded{SKU: "apple", Quantity: 2})
	s.addItems(t, "alice@example.com", ItemAdded{SKU: "pear", Quantity: 1}, ItemAdded{SKU: "fig", Quantity: 3}) // an atomic batch
	s.carts.Flush()                                                                                             // the snapshot at version 2

	cart, err := s.carts.Load(ctx, "alice@example.com")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 2, "pear": 1, "fig": 3}, cart.Items)
	assert.Equal(t, uint64(3), cart.Version())

	// A fresh repository loads from the snapshot.
	fresh, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: s.store, Type: "cart", New: newCart, Snapshots: s.snaps, SnapshotEvery: 2})
	require.NoError(t, err)
	loaded, err := fresh.Load(ctx, "alice@example.com")
	require.NoError(t, err)
	assert.Equal(t, cart.Items, loaded.Items)
	snap, ok, err := s.snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "alice@example.com"})
	require.NoError(t, err)
	require.True(t, ok, "the snapshot was written")
	assert.GreaterOrEqual(t, snap.Version, uint64(2))

	// Several aggregates in one atomic append.
	res, err := s.store.AppendBatch(ctx, []stream.AppendRequest{
		{Aggregate: stream.Aggregate{Type: "cart", ID: "bob"}, Expect: stream.ExpectNone(), Events: []stream.EventData{{Data: ItemAdded{SKU: "kiwi", Quantity: 1}}}},
		{Aggregate: stream.Aggregate{Type: "cart", ID: "carol"}, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: CheckedOut{}}}},
	})
	require.NoError(t, err)
	require.Len(t, res, 2)

	// A stale revision: the conflict is settled by reading from the stream
	// leader (STREAM.MSG.GET).
	bob := stream.Aggregate{Type: "cart", ID: "bob"}
	rev, err := s.store.LastRevision(ctx, bob)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), rev.Version)
	_, err = s.store.Append(ctx, bob, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "kiwi", Quantity: 1}}})
	require.ErrorIs(t, err, stream.ErrConflict)
	var ce *stream.ConflictError
	require.True(t, errors.As(err, &ce))
	assert.True(t, ce.ActualKnown)
	assert.Equal(t, rev, ce.Actual)

	// A retried append (same event id) is recognised as landed.
	ev := []stream.EventData{{ID: "retry-1", Data: ItemAdded{SKU: "plum", Quantity: 1}}}
	first, err := s.store.Append(ctx, bob, stream.ExpectRevision(rev), ev)
	require.NoError(t, err)
	again, err := s.store.Append(ctx, bob, stream.ExpectRevision(rev), ev)
	require.NoError(t, err)
	assert.True(t, again.Duplicate)
	assert.Equal(t, first.Last, again.Last)

	// ReadAll, snapshot delete.
	n := 0
	for _, err := range s.store.ReadAll(ctx) {
		require.NoError(t, err)
		n++
	}
	assert.Equal(t, 6, n)
	require.NoError(t, s.snaps.Delete(ctx, stream.Aggregate{Type: "cart", ID: "alice@example.com"}))

	// Starting again (NewStore and kv.NewStore on existing assets) is
	// fine, also with a changed configuration (a stream update).
	_, err = stream.NewStore(ctx, s.app.js, stream.Config{Name: storeName, Registry: registry(), Description: "the shop's events"})
	require.NoError(t, err)
	_, err = kv.NewStore(ctx, s.app.js, kv.Config{History: 2})
	require.NoError(t, err)

	s.app.noViolations(t)

	t.Run("refused", func(t *testing.T) {
		c := connect(t, s.srv, appUser, 300*time.Millisecond)
		// Destructive operations are not the service's.
		err := c.js.DeleteStream(ctx, storeName)
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.STREAM.DELETE.shop")
		short, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		require.Error(t, short.Purge(ctx, bob))
		c.vio.waitFor(t, "$JS.API.STREAM.PURGE.shop")
		// Reading the store through a consumer is the workers' business.
		_, err = c.js.CreateOrUpdateConsumer(ctx, storeName, jetstream.ConsumerConfig{Durable: "sneaky"})
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.CONSUMER.CREATE.shop.sneaky")
		// Nor may it read or write the projection's read model.
		_, err = c.js.KeyValue(ctx, itemsKV)
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.STREAM.INFO.KV_items")
		require.NoError(t, c.nc.Publish("$KV.items.apple", []byte("999")))
		c.vio.waitFor(t, "$KV.items.apple")
		// Nor listen to other users' replies.
		c.cannotSubscribe(t, "_INBOX_shop_reader.>")

		// Without consumer rights on the snapshot bucket, "esnats
		// snapshots" fails at once, naming the refused subject (it used to
		// wait for its key listing until interrupted; see
		// TestCommandsWithoutPermission).
		start := time.Now()
		r := runCLIWithin(t, 3*time.Second, "--context", natsContext(t, appUser.inbox), "-s", s.srv.ClientURL(),
			"--user", appUser.name, "--password", appUser.password, "--timeout", "1s", "snapshots")
		assert.Equal(t, cli.ExitError, r.code)
		assert.Regexp(t, `^esnats: listing bucket "esnats_snapshots": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.KV_esnats_snapshots\.\w+\.\$KV\.esnats_snapshots\.>"`, r.stderr)
		assert.Less(t, time.Since(start), time.Second, "not after --timeout, nor when interrupted")
	})
}

// TestReaderRole: a reader loads aggregates and snapshots but cannot append.
func TestReaderRole(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := context.Background()
	s.addItems(t, "alice@example.com", ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1})
	s.carts.Flush()

	r := connect(t, s.srv, readerUser, 5*time.Second)
	store, err := stream.OpenStore(ctx, r.js, stream.Config{Name: storeName, Registry: registry()})
	require.NoError(t, err)
	snaps, err := kv.OpenStore(ctx, r.js, kv.Config{})
	require.NoError(t, err)
	// A repository that reads snapshots and never writes one: SnapshotWhen
	// says never (so saves take none), SnapshotEvery -1 keeps a long replay
	// from taking one.
	carts, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: store, Type: "cart", New: newCart, Snapshots: snaps,
		SnapshotEvery: -1, SnapshotWhen: func(*Cart, int) bool { return false }})
	require.NoError(t, err)
	cart, err := carts.Load(ctx, "alice@example.com")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"apple": 2, "pear": 1}, cart.Items)
	_, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "alice@example.com"})
	require.NoError(t, err)
	assert.True(t, ok)
	rev, err := store.LastRevision(ctx, stream.Aggregate{Type: "cart", ID: "alice@example.com"})
	require.NoError(t, err)
	assert.Equal(t, uint64(2), rev.Version)
	// A history of 150 events and no snapshot: the default repository
	// would write one after loading it.
	long := make([]stream.EventData, 150)
	for i := range long {
		long[i] = stream.EventData{Data: ItemAdded{SKU: "nut", Quantity: 1}}
	}
	_, err = s.store.Append(ctx, stream.Aggregate{Type: "cart", ID: "squirrel"}, stream.ExpectNone(), long)
	require.NoError(t, err)
	squirrel, err := carts.Load(ctx, "squirrel")
	require.NoError(t, err)
	assert.Equal(t, 150, squirrel.Items["nut"])
	carts.Flush()
	r.noViolations(t)

	// An append is refused: the server drops the publish and tells the
	// connection asynchronously (nats.ErrorHandler, nc.LastError()). The
	// store watches the connection while it waits for the acknowledgement,
	// so it returns as soon as the notice arrives, well within one
	// JetStream timeout, without resending, with ErrPermissionDenied (and
	// nats.ErrPermissionViolation), never ErrIndeterminate: a refused
	// publish is never stored. See docs/security.md ("What errors look
	// like").
	t.Run("append is refused at once with ErrPermissionDenied", func(t *testing.T) {
		const timeout = 200 * time.Millisecond
		c := connect(t, s.srv, readerUser, timeout)
		ro, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		alice := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
		for _, events := range [][]stream.EventData{
			{{Data: ItemAdded{SKU: "plum", Quantity: 1}}},                               // a publish
			{{Data: ItemAdded{SKU: "plum", Quantity: 1}}, {Data: CheckedOut{Lines: 2}}}, // an atomic batch
		} {
			start := time.Now()
			_, err = ro.Append(ctx, alice, stream.ExpectRevision(rev), events)
			took := time.Since(start)
			require.ErrorIs(t, err, stream.ErrPermissionDenied)
			require.ErrorIs(t, err, nats.ErrPermissionViolation)
			assert.NotErrorIs(t, err, stream.ErrIndeterminate)
			assert.EqualError(t, err, `esnats: append shop.cart.alice=40example=2Ecom: permission denied: nats: permissions violation: Permissions Violation for Publish to "shop.cart.alice=40example=2Ecom"`)
			var se *stream.Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, "append", se.Op)
			assert.Equal(t, "shop.cart.alice=40example=2Ecom", se.Subject)
			assert.Less(t, took, timeout*3/4, "no timeout waited")
			// The connection was told the same.
			assert.ErrorIs(t, c.nc.LastError(), nats.ErrPermissionViolation)
			assert.EqualError(t, c.nc.LastError(), `nats: permissions violation: Permissions Violation for Publish to "shop.cart.alice=40example=2Ecom"`)
			c.vio.waitFor(t, "shop.cart.alice=40example=2Ecom")
		}
		c.cannotSubscribe(t, "_INBOX_shop_app.>")
		// Nothing was written.
		last, err := s.store.LastRevision(ctx, alice)
		require.NoError(t, err)
		assert.Equal(t, rev, last)
	})
}
