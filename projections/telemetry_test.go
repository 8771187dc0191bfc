package projections_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/internal/telemetry/telemetrytest"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// traceCart is the aggregate of the service process in the tracing test.
type traceCart struct {
	aggregate.Root
	Items map[string]int
}

func (c *traceCart) Apply(e any) {
	if it, ok := e.(ItemAdded); ok {
		c.Items[it.SKU] += it.Qty
	}
}

// The whole chain, across two connections standing for two processes, each
// with its own tracer provider: a command's span (Repository.Update) is the
// parent recorded in the stored event's traceparent; the worker's projection
// span links to it, and a per-event handler's span is its child.
func TestTraceFromCommandToProjection(t *testing.T) {
	srv := embedded.RunServer(t)
	ctx := context.Background()

	// The service: a request span, a command inside it.
	_, jsA := embedded.MustJetStream(t, srv)
	service := telemetrytest.NewTracing()
	storeA, err := stream.NewStore(ctx, jsA, stream.Config{Name: "shop", Registry: runnerRegistry()})
	require.NoError(t, err)
	carts, err := aggregate.NewRepository(aggregate.Config[*traceCart]{
		Store: storeA, Type: "cart", TracerProvider: service.Provider,
		New: func(string) *traceCart { return &traceCart{Items: map[string]int{}} },
	})
	require.NoError(t, err)
	rctx, request := service.Provider.Tracer("test").Start(ctx, "POST /carts/alice/items")
	require.NoError(t, carts.Update(rctx, "alice", func(c *traceCart) error {
		c.Record(ItemAdded{SKU: "apple", Qty: 2})
		return nil
	}))
	request.End()
	updates := service.Ended(telemetry.SpanUpdate)
	require.Len(t, updates, 1)
	command := updates[0].SpanContext()
	assert.Equal(t, request.SpanContext().SpanID(), updates[0].Parent().SpanID(), "the command runs in the request's trace")

	// The stored event carries the command's span context.
	var stored *stream.Event
	for ev, err := range storeA.Load(ctx, stream.Aggregate{Type: "cart", ID: "alice"}) {
		require.NoError(t, err)
		stored = ev
	}
	require.NotNil(t, stored)
	sc, ok := telemetry.SpanContextFromHeaders(stored.TraceParent, stored.TraceState)
	require.True(t, ok, "traceparent %q", stored.TraceParent)
	assert.Equal(t, command.TraceID(), sc.TraceID())
	assert.Equal(t, command.SpanID(), sc.SpanID())

	// The worker: another connection, another tracer provider.
	_, jsB := embedded.MustJetStream(t, srv)
	worker := telemetrytest.NewTracing()
	storeB, err := stream.OpenStore(ctx, jsB, stream.Config{Name: "shop", Registry: runnerRegistry()})
	require.NoError(t, err)
	model := perSKU()
	runner := projections.NewRunner(jsB, storeB, nil, projections.WithTracerProvider(worker.Provider))
	require.NoError(t, runner.Add(projections.Projection{Name: "items", Model: model}))
	mailer, err := consumers.New(jsB, storeB, consumers.Config{Name: "mailer", TracerProvider: worker.Provider})
	require.NoError(t, err)
	var handled sync.WaitGroup
	handled.Add(1)
	var handlerSpan trace.SpanContext
	mailer.Handle("item-added", func(ctx context.Context, ev *stream.Event) error {
		handlerSpan = trace.SpanContextFromContext(ctx)
		handled.Done()
		return nil
	})
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, 2)
	go func() { errs <- runner.Run(wctx) }()
	go func() { errs <- mailer.Run(wctx) }()
	require.Eventually(t, func() bool { v, _ := model.Get("apple"); return v == 2 }, 10*time.Second, 10*time.Millisecond)
	handled.Wait()
	stop()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)

	// The projection's span links to the command's.
	applies := worker.Ended(telemetry.SpanProjectionApply)
	require.Len(t, applies, 1)
	apply := applies[0]
	require.Len(t, apply.Links(), 1)
	assert.Equal(t, command.TraceID(), apply.Links()[0].SpanContext.TraceID())
	assert.Equal(t, command.SpanID(), apply.Links()[0].SpanContext.SpanID())
	name, _ := telemetrytest.Attr(apply, telemetry.KeyProjection)
	assert.Equal(t, "items", name.AsString())
	// ... and is a child of the consumer's batch span, itself linked.
	var batch trace.SpanContext
	for _, s := range worker.Ended(telemetry.SpanConsumerBatch) {
		if s.SpanContext().SpanID() == apply.Parent().SpanID() {
			batch = s.SpanContext()
			require.Len(t, s.Links(), 1)
			assert.Equal(t, command.SpanID(), s.Links()[0].SpanContext.SpanID())
		}
	}
	assert.True(t, batch.IsValid(), "the apply span's parent is the consumer's batch span")

	// The per-event handler's span is a child of the command's span: the
	// same trace as the request, across processes.
	handles := worker.Ended(telemetry.SpanConsumerEvent)
	require.Len(t, handles, 1)
	assert.Equal(t, command.TraceID(), handles[0].Parent().TraceID())
	assert.Equal(t, command.SpanID(), handles[0].Parent().SpanID())
	assert.True(t, handles[0].Parent().IsRemote())
	assert.Equal(t, handles[0].SpanContext(), handlerSpan, "the handler runs in that span")
	assert.Equal(t, request.SpanContext().TraceID(), handlerSpan.TraceID())
}

// slowModel applies batches slowly, so that the lag can be watched.
type slowModel struct {
	*projections.Memory[int]
	delay time.Duration
}

func (m slowModel) Apply(ctx context.Context, evs []*stream.Event) error {
	time.Sleep(m.delay)
	return m.Memory.Apply(ctx, evs)
}

// The projection's lag, read at each collection without asking the server
// while the projection is busy, falls to zero as it catches up; the
// counters count what was applied and processed.
func TestProjectionMetrics(t *testing.T) {
	e := newRunnerEnv(t)
	const n = 600
	e.fill(t, 0, n)
	metrics := telemetrytest.NewMetrics()
	model := slowModel{Memory: perSKU(), delay: 15 * time.Millisecond}
	runner := projections.NewRunner(e.js, e.store, nil, projections.WithMeterProvider(metrics.Provider))
	require.NoError(t, runner.Add(projections.Projection{Name: "items", Model: model, Consumer: consumers.Config{BatchSize: 50}}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx) }()

	items := telemetry.KeyProjection.String("items")
	var lags []int64
	var snap telemetrytest.Snapshot
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		snap, err = metrics.Collect()
		require.NoError(t, err)
		if lag, ok := snap.Int64(telemetry.MetricProjectionLag, items); ok {
			if len(lags) == 0 || lags[len(lags)-1] != lag {
				lags = append(lags, lag)
			}
			if applied, _ := snap.Int64(telemetry.MetricProjectionApplied, items); lag == 0 && applied == n {
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "lag never reached 0: %v", lags)
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("lag as collected: %v", lags)
	require.Greater(t, len(lags), 2, "the lag was seen falling: %v", lags)
	assert.Greater(t, lags[0], int64(0))
	for i := 1; i < len(lags); i++ {
		assert.Less(t, lags[i], lags[i-1], "the lag only falls: %v", lags)
	}
	assert.Equal(t, expected(n), model.Snapshot())
	position, _ := snap.Int64(telemetry.MetricProjectionPosition, items)
	assert.EqualValues(t, n, position)
	applied, _ := snap.Int64(telemetry.MetricProjectionApplied, items)
	assert.EqualValues(t, n, applied)
	processed, _ := snap.Int64(telemetry.MetricConsumerProcessed, items, telemetry.KeyConsumer.String("items"))
	assert.EqualValues(t, n, processed, "the consumer's counter carries the projection's name")
	lag, _ := snap.Int64(telemetry.MetricConsumerLag, items)
	assert.Zero(t, lag)

	// More events: the lag rises and falls back.
	e.fill(t, n, 100)
	require.Eventually(t, func() bool {
		snap, _ = metrics.Collect()
		applied, _ := snap.Int64(telemetry.MetricProjectionApplied, items)
		lag, _ := snap.Int64(telemetry.MetricProjectionLag, items)
		return applied == n+100 && lag == 0
	}, 10*time.Second, 10*time.Millisecond)

	// A rebuild reports its progress until it switches over.
	fresh := slowModel{Memory: perSKU(), delay: 5 * time.Millisecond}
	var progressSeen []float64
	require.NoError(t, runner.Rebuild(ctx, "items", fresh, func(projections.Progress) {
		if snap, err := metrics.Collect(); err == nil {
			if p, ok := snap.Float64(telemetry.MetricRebuildProgress, items); ok {
				progressSeen = append(progressSeen, p)
			}
		}
	}))
	require.NotEmpty(t, progressSeen)
	assert.Equal(t, 1.0, progressSeen[len(progressSeen)-1])
	for _, p := range progressSeen {
		assert.True(t, p >= 0 && p <= 1, fmt.Sprint(progressSeen))
	}
	cancel()
	require.NoError(t, <-done)
}
