package stream_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// With a TracerProvider, an append and a load are spans, and an append
// without a command's trace context puts its own span into the events'
// traceparent; a command's trace context (ContextWithTrace) wins.
func TestStoreSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	_, js := embedded.MustJetStream(t, embedded.RunServer(t))
	st := newJSStore(t, js, func(c *stream.Config) { c.TracerProvider = tp })
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "alice"}

	_, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
	require.NoError(t, err)
	command := stream.TraceContext{TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	_, err = st.Append(stream.ContextWithTrace(ctx, command), agg, stream.ExpectAny(), []stream.EventData{{Data: itemAdded{SKU: "b", Qty: 2}}})
	require.NoError(t, err)
	evs := loadAll(t, st, agg)
	require.Len(t, evs, 2)

	spans := exp.GetSpans()
	require.Len(t, spans, 3)
	assert.Equal(t, "esnats.stream.append", spans[0].Name)
	assert.Equal(t, "esnats.stream.append", spans[1].Name)
	assert.Equal(t, "esnats.stream.load", spans[2].Name)
	sc := spans[0].SpanContext
	assert.Equal(t, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01", evs[0].TraceParent, "the append's own span")
	assert.Equal(t, command.TraceParent, evs[1].TraceParent, "the command's trace context")
	attrs := map[string]string{}
	for _, kv := range spans[2].Attributes {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	assert.Equal(t, "carts", attrs["esnats.store"])
	assert.Equal(t, "cart", attrs["esnats.aggregate.type"])
	assert.Equal(t, "alice", attrs["esnats.aggregate.id"])
}
