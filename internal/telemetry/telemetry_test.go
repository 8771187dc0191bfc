package telemetry_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/internal/telemetry/telemetrytest"
)

// With no provider given and the global one unset, starting a span costs
// nothing: no span, no allocation, ctx unchanged.
func TestTracerOffAllocatesNothing(t *testing.T) {
	tr := telemetry.NewTracer(nil)
	require.False(t, tr.On(), "the global provider is not set in this test binary")
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		c, span := tr.Start(ctx, telemetry.SpanUpdate, trace.SpanKindInternal)
		if span.IsRecording() || c != ctx {
			t.Fatal("a span was started")
		}
		telemetry.End(span, nil)
		if tp, _ := telemetry.TraceHeaders(c); tp != "" {
			t.Fatal("a trace context appeared")
		}
	})
	assert.Zero(t, allocs)
	m := telemetry.NewMeasure(telemetry.KeyStore.String("shop"))
	counter := telemetry.Counter(telemetry.Meter(nil), telemetry.MetricCommandConflicts, "{conflict}", "test")
	allocs = testing.AllocsPerRun(100, func() { counter.Add(ctx, 1, m.AddOpts...) })
	assert.Zero(t, allocs, "a measurement on the unset global meter")
}

func TestTracerWithProvider(t *testing.T) {
	tracing := telemetrytest.NewTracing()
	tr := telemetry.NewTracer(tracing.Provider)
	require.True(t, tr.On())
	ctx, span := tr.Start(context.Background(), "parent", trace.SpanKindServer)
	_, child := tr.StartLinked(ctx, "child", trace.SpanKindConsumer, []trace.Link{{SpanContext: span.SpanContext()}})
	telemetry.End(child, errors.New("boom"))
	telemetry.End(span, nil)
	ended := tracing.Ended("")
	require.Len(t, ended, 2)
	assert.Equal(t, "child", ended[0].Name())
	assert.Equal(t, trace.SpanKindConsumer, ended[0].SpanKind())
	assert.Equal(t, span.SpanContext().SpanID(), ended[0].Parent().SpanID())
	assert.Len(t, ended[0].Links(), 1)
	assert.Equal(t, codes.Error, ended[0].Status().Code)
	assert.Equal(t, "boom", ended[0].Status().Description)
	assert.Equal(t, trace.SpanKindServer, ended[1].SpanKind())
	assert.Equal(t, codes.Unset, ended[1].Status().Code)
}

func TestTraceHeaders(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := telemetry.ContextFromHeaders(context.Background(), tp, "congo=t61rcWkgMzE")
	sc := trace.SpanContextFromContext(ctx)
	require.True(t, sc.IsValid())
	assert.True(t, sc.IsRemote())
	assert.True(t, sc.IsSampled())
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", sc.TraceID().String())
	gotTP, gotTS := telemetry.TraceHeaders(ctx)
	assert.Equal(t, tp, gotTP, "round trip")
	assert.Equal(t, "congo=t61rcWkgMzE", gotTS)

	l, ok := telemetry.LinkFromHeaders(tp, "")
	require.True(t, ok)
	assert.Equal(t, sc.SpanID(), l.SpanContext.SpanID())

	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"} {
		_, ok := telemetry.SpanContextFromHeaders(bad, "")
		assert.False(t, ok, bad)
		assert.Equal(t, context.Background(), telemetry.ContextFromHeaders(context.Background(), bad, ""), bad)
		_, ok = telemetry.LinkFromHeaders(bad, "")
		assert.False(t, ok, bad)
	}
	// An invalid tracestate is dropped, the traceparent kept.
	sc, ok = telemetry.SpanContextFromHeaders(tp, "not a=valid,,state")
	require.True(t, ok)
	assert.Empty(t, sc.TraceState().String())
}

// The event store's instrumentation, as stream.Store is to use it.
func TestStore(t *testing.T) {
	tracing := telemetrytest.NewTracing()
	metrics := telemetrytest.NewMetrics()
	errConflict := errors.New("conflict")
	s := telemetry.NewStore("shop", tracing.Provider, metrics.Provider, func(err error) bool { return errors.Is(err, errConflict) })

	parent, span := tracing.Provider.Tracer("test").Start(context.Background(), "command")
	ctx, op := s.StartAppend(parent, "cart", "alice", "shop.cart.alice", 2)
	tp, _ := telemetry.TraceHeaders(ctx)
	assert.Contains(t, tp, trace.SpanFromContext(ctx).SpanContext().SpanID().String(), "ctx carries the append span")
	op.End(2, nil)
	_, op = s.StartAppend(parent, "cart", "alice", "shop.cart.alice", 1)
	op.End(0, errConflict)
	_, op = s.StartAppend(parent, "", "", "", 3)
	op.End(0, errors.New("no stream"))
	_, op = s.StartLoad(parent, "cart", "alice", "shop.cart.alice")
	op.End(7, nil)
	span.End()
	var zero telemetry.Op
	zero.End(0, nil) // a zero Op is harmless

	appends := tracing.Ended(telemetry.SpanAppend)
	require.Len(t, appends, 3)
	for _, a := range appends {
		assert.Equal(t, span.SpanContext().SpanID(), a.Parent().SpanID())
		assert.Equal(t, trace.SpanKindProducer, a.SpanKind())
	}
	subj, _ := telemetrytest.Attr(appends[0], telemetry.KeyMessagingDestination)
	assert.Equal(t, "shop.cart.alice", subj.AsString())
	assert.Equal(t, codes.Unset, appends[1].Status().Code, "a conflict is the command's business")
	assert.Equal(t, codes.Error, appends[2].Status().Code)
	_, hasAgg := telemetrytest.Attr(appends[2], telemetry.KeyAggregateType)
	assert.False(t, hasAgg, "a batch over several aggregates names none")
	loads := tracing.Ended(telemetry.SpanStreamLoad)
	require.Len(t, loads, 1)
	n, _ := telemetrytest.Attr(loads[0], telemetry.KeyEvents)
	assert.EqualValues(t, 7, n.AsInt64())

	snap, err := metrics.Collect()
	require.NoError(t, err)
	store := telemetry.KeyStore.String("shop")
	for outcome, want := range map[string]uint64{"ok": 1, "conflict": 1, "error": 1} {
		got, _ := snap.Count(telemetry.MetricAppendDuration, store, telemetry.KeyOutcome.String(outcome))
		assert.Equal(t, want, got, outcome)
	}
	loaded, _ := snap.Count(telemetry.MetricStreamLoadDuration, store, telemetry.KeyOutcome.String("ok"))
	assert.EqualValues(t, 1, loaded)
	appended, _ := snap.Int64(telemetry.MetricAppendedEvents, store)
	assert.EqualValues(t, 2, appended)
}

// Off, the store's instrumentation allocates nothing either.
func TestStoreOffAllocatesNothing(t *testing.T) {
	s := telemetry.NewStore("shop", nil, nil, nil)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		c, op := s.StartAppend(ctx, "cart", "alice", "shop.cart.alice", 1)
		op.End(1, nil)
		c, op = s.StartLoad(c, "cart", "alice", "shop.cart.alice")
		op.End(1, nil)
	})
	assert.Zero(t, allocs)
}
