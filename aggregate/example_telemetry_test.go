package aggregate_test

import (
	"context"
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// Tracing commands with OpenTelemetry. A real service sets an SDK tracer
// provider with an exporter (OTLP to a collector, say) once in main, with
// otel.SetTracerProvider, and leaves Config.TracerProvider nil; here an
// in-memory exporter shows the spans. The command's span is recorded in
// the traceparent header of the events it stores, so that projections and
// consumers, in other processes, link their work to it.
func ExampleRepository_Update_tracing() {
	ctx := context.Background()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	defer func() { _ = tp.Shutdown(ctx) }()

	store, _ := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	repo, _ := aggregate.NewRepository(aggregate.Config[*Cart]{
		Store:          store,
		Type:           "cart",
		New:            NewCart,
		TracerProvider: tp, // nil: otel.GetTracerProvider(), a no-op until set
	})

	// The caller's span, e.g. an HTTP or NATS request handler's.
	ctx, request := tp.Tracer("shop-api").Start(ctx, "POST /carts/{id}/items")
	_ = repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("apple", 2) })
	request.End()

	for _, s := range spans.GetSpans() {
		fmt.Println(s.Name)
	}
	// The stored event carries the command span's W3C trace context.
	var traceparent string
	for ev := range store.Load(ctx, stream.Aggregate{Type: "cart", ID: "alice"}) {
		traceparent = ev.TraceParent
	}
	sc := spans.GetSpans()[2].SpanContext // esnats.aggregate.update
	fmt.Println(traceparent == fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID()))
	// Output:
	// esnats.aggregate.load
	// esnats.aggregate.save
	// esnats.aggregate.update
	// POST /carts/{id}/items
	// true
}
