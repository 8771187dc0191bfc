package aggregate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/internal/telemetry/telemetrytest"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// lastEvent reads the aggregate's last stored event.
func lastEvent(t *testing.T, st stream.EventStore, id string) *stream.Event {
	t.Helper()
	var last *stream.Event
	for ev, err := range st.Load(context.Background(), stream.Aggregate{Type: "cart", ID: id}) {
		require.NoError(t, err)
		last = ev
	}
	require.NotNil(t, last)
	return last
}

// A command's span: attempts and conflicts on it, loads and saves as its
// children, and its context in the traceparent of the events it stored.
// The metrics count commands by outcome, conflicts and retries.
func TestRepositoryTelemetry(t *testing.T) {
	ctx := context.Background()
	store, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	tracing := telemetrytest.NewTracing()
	metrics := telemetrytest.NewMetrics()
	cfg := aggregate.Config[*Cart]{Store: store, Type: "cart", New: NewCart, TracerProvider: tracing.Provider, MeterProvider: metrics.Provider}
	a, err := aggregate.NewRepository(cfg)
	require.NoError(t, err)
	b, err := aggregate.NewRepository(cfg) // another process, same store
	require.NoError(t, err)

	require.NoError(t, a.Update(ctx, "alice", func(c *Cart) error { return c.Add("apple", 1) })) // a caches alice at v1
	require.NoError(t, b.Update(ctx, "alice", func(c *Cart) error { return c.Add("pear", 1) }))  // v2
	// a's cached copy is stale: the save conflicts, a reloads and runs again.
	require.NoError(t, a.Update(ctx, "alice", func(c *Cart) error { return c.Add("fig", 1) }))
	err = a.Update(ctx, "alice", func(c *Cart) error { return c.Add("fig", 0) })
	require.ErrorIs(t, err, errQty, "the command's own error, as it is")
	require.NoError(t, a.Create(ctx, "bob", func(c *Cart) error { return c.Add("kiwi", 1) }))
	require.ErrorIs(t, a.Create(ctx, "bob", func(c *Cart) error { return c.Add("kiwi", 1) }), aggregate.ErrExists)
	require.NoError(t, a.Delete(ctx, "bob", CartDiscarded{}))

	// The third command's span.
	updates := tracing.Ended(telemetry.SpanUpdate)
	require.Len(t, updates, 4)
	third := updates[2]
	attempts, _ := telemetrytest.Attr(third, telemetry.KeyAttempts)
	assert.EqualValues(t, 2, attempts.AsInt64())
	outcome, _ := telemetrytest.Attr(third, telemetry.KeyOutcome)
	assert.Equal(t, "ok", outcome.AsString())
	version, _ := telemetrytest.Attr(third, telemetry.KeyVersion)
	assert.EqualValues(t, 3, version.AsInt64())
	id, _ := telemetrytest.Attr(third, telemetry.KeyAggregateID)
	assert.Equal(t, "alice", id.AsString())
	var conflicts int
	for _, ev := range third.Events() {
		if ev.Name == telemetry.EventConflict {
			conflicts++
			assert.Contains(t, ev.Attributes, telemetry.KeyAttempts.Int(1))
		}
	}
	assert.Equal(t, 1, conflicts)
	assert.Equal(t, codes.Unset, third.Status().Code)
	// Its children: the stale save, the reload, the save that landed.
	var children []string
	for _, s := range tracing.Ended("") {
		if s.Parent().SpanID() == third.SpanContext().SpanID() {
			children = append(children, s.Name())
		}
	}
	assert.Equal(t, []string{telemetry.SpanSave, telemetry.SpanLoad, telemetry.SpanSave}, children)
	for _, s := range tracing.Ended(telemetry.SpanSave) {
		assert.Equal(t, codes.Unset, s.Status().Code, "a refused save is recorded, not an error: the command retries")
	}
	// The stored event points at the command's span.
	ev := lastEvent(t, store, "alice")
	sc, ok := telemetry.SpanContextFromHeaders(ev.TraceParent, ev.TraceState)
	require.True(t, ok, ev.TraceParent)
	assert.Equal(t, third.SpanContext().TraceID(), sc.TraceID())
	assert.Equal(t, third.SpanContext().SpanID(), sc.SpanID())

	// A rejected command: recorded, not an error.
	rejected := updates[3]
	outcome, _ = telemetrytest.Attr(rejected, telemetry.KeyOutcome)
	assert.Equal(t, "rejected", outcome.AsString())
	assert.Equal(t, codes.Unset, rejected.Status().Code)
	require.Len(t, tracing.Ended(telemetry.SpanCreate), 2)
	require.Len(t, tracing.Ended(telemetry.SpanDelete), 1)

	snap, err := metrics.Collect()
	require.NoError(t, err)
	cart := telemetry.KeyAggregateType.String("cart")
	update := telemetry.KeyCommand.String("update")
	n, _ := snap.Int64(telemetry.MetricCommandConflicts, cart, update)
	assert.EqualValues(t, 1, n)
	n, _ = snap.Int64(telemetry.MetricCommandRetries, cart, update)
	assert.EqualValues(t, 1, n)
	count := func(cmd, outcome string) uint64 {
		n, _ := snap.Count(telemetry.MetricCommandDuration, telemetry.KeyStore.String("shop"), cart,
			telemetry.KeyCommand.String(cmd), telemetry.KeyOutcome.String(outcome))
		return n
	}
	assert.EqualValues(t, 3, count("update", "ok"))
	assert.EqualValues(t, 1, count("update", "rejected"))
	assert.EqualValues(t, 1, count("create", "ok"))
	assert.EqualValues(t, 1, count("create", "rejected"))
	assert.EqualValues(t, 1, count("delete", "ok"))
	loads, _ := snap.Count(telemetry.MetricLoadDuration, cart)
	assert.EqualValues(t, 4, loads, "alice in a, alice in b, alice again in a, bob: the cache hits read nothing")

	// Conflicts that exhaust the attempts.
	one, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: store, Type: "cart", New: NewCart, MaxAttempts: 1, MeterProvider: metrics.Provider})
	require.NoError(t, err)
	require.NoError(t, one.Update(ctx, "carol", func(c *Cart) error { return c.Add("apple", 1) }))
	require.NoError(t, b.Update(ctx, "carol", func(c *Cart) error { return c.Add("apple", 1) }))
	require.ErrorIs(t, one.Update(ctx, "carol", func(c *Cart) error { return c.Add("apple", 1) }), stream.ErrConflict)
	snap, err = metrics.Collect()
	require.NoError(t, err)
	n, _ = snap.Int64(telemetry.MetricCommandConflicts, cart, update)
	assert.EqualValues(t, 2, n)
	n, _ = snap.Int64(telemetry.MetricCommandRetries, cart, update)
	assert.EqualValues(t, 1, n, "no retry after the last attempt")
	assert.EqualValues(t, 1, count("update", "conflict"))
}

// Without a tracer provider, a W3C trace context in ctx (a remote span, as a
// propagator extracts it from a request) still reaches the events.
func TestRepositoryCarriesTraceWithoutProvider(t *testing.T) {
	store, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	repo, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: store, Type: "cart", New: NewCart})
	require.NoError(t, err)
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := telemetry.ContextFromHeaders(context.Background(), tp, "vendor=1")
	require.True(t, trace.SpanContextFromContext(ctx).IsRemote())
	require.NoError(t, repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("apple", 1) }))
	ev := lastEvent(t, store, "alice")
	assert.Equal(t, tp, ev.TraceParent)
	assert.Equal(t, "vendor=1", ev.TraceState)

	// No trace context: no header.
	require.NoError(t, repo.Update(context.Background(), "bob", func(c *Cart) error { return c.Add("apple", 1) }))
	assert.Empty(t, lastEvent(t, store, "bob").TraceParent)

	// An explicit stream.ContextWithTrace is kept.
	ctx = stream.ContextWithTrace(context.Background(), stream.TraceContext{TraceParent: tp})
	require.NoError(t, repo.Update(ctx, "carol", func(c *Cart) error { return c.Add("apple", 1) }))
	assert.Equal(t, tp, lastEvent(t, store, "carol").TraceParent)
}

// An ignored snapshot is counted by reason and logged with the aggregate,
// its subject and the bucket.
func TestRepositoryIgnoredSnapshotTelemetry(t *testing.T) {
	ctx := context.Background()
	store, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	snaps := kv.NewMemory()
	var logs bytes.Buffer
	metrics := telemetrytest.NewMetrics()
	cfg := aggregate.Config[*Cart]{Store: store, Type: "cart", New: NewCart, Snapshots: snaps, SnapshotEvery: 2, CacheSize: -1,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)), MeterProvider: metrics.Provider}
	repo, err := aggregate.NewRepository(cfg)
	require.NoError(t, err)
	for range 2 {
		require.NoError(t, repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("apple", 1) }))
	}
	repo.Flush()
	require.Equal(t, 1, snaps.Len())
	_, err = repo.Load(ctx, "alice") // from the snapshot
	require.NoError(t, err)

	// Another state schema: ignored (and replaced by the next snapshot).
	cfg.SnapshotSchema = 2
	v2, err := aggregate.NewRepository(cfg)
	require.NoError(t, err)
	_, err = v2.Load(ctx, "alice")
	require.NoError(t, err)
	// A corrupt value: ignored.
	key, err := kv.Key(stream.Aggregate{Type: "cart", ID: "alice"})
	require.NoError(t, err)
	snaps.SetRaw(key, []byte("garbage"))
	_, err = repo.Load(ctx, "alice")
	require.NoError(t, err)
	repo.Flush()
	v2.Flush()

	snap, err := metrics.Collect()
	require.NoError(t, err)
	cart := telemetry.KeyAggregateType.String("cart")
	for reason, want := range map[string]int64{"schema": 1, "corrupt": 1} {
		n, _ := snap.Int64(telemetry.MetricSnapshotIgnored, cart, telemetry.KeyReason.String(reason))
		assert.Equal(t, want, n, reason)
	}
	n, _ := snap.Int64(telemetry.MetricSnapshotWrites, cart, telemetry.KeyOutcome.String("ok"))
	assert.EqualValues(t, 3, n, "at version 2, then to replace each ignored one")
	loads, _ := snap.Count(telemetry.MetricLoadDuration, cart, telemetry.KeyLoadSource.String("snapshot"))
	assert.EqualValues(t, 1, loads)

	var records []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec))
		records = append(records, rec)
	}
	require.Len(t, records, 2, logs.String())
	assert.Equal(t, "esnats: ignoring snapshot of another state schema", records[0]["msg"])
	assert.Equal(t, "schema", records[0]["reason"])
	assert.EqualValues(t, 2, records[0]["version"])
	assert.EqualValues(t, 1, records[0]["schema"])
	assert.Equal(t, "esnats: ignoring snapshot", records[1]["msg"])
	assert.Equal(t, "corrupt", records[1]["reason"])
	for _, rec := range records {
		assert.Equal(t, "cart/alice", rec["aggregate"])
		assert.Equal(t, "shop.cart.alice", rec["subject"])
	}
}
