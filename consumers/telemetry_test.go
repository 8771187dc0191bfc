package consumers_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/internal/telemetry/telemetrytest"
	"github.com/esnats/esnats/stream"
)

// logBuffer collects JSON log lines; safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns the log records whose message is msg.
func (b *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), sc.Text())
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// A consumer's telemetry: each event's handling span is a child of the span
// that wrote the event (its traceparent header), batches link to those
// spans; processed, parked, retried events are counted; the lag gauge
// reaches 0; a parked event is logged with its subject and sequence.
func TestConsumerTelemetry(t *testing.T) {
	e := setup(t)
	// The events are written under a command's span in another process:
	// all that travels is the W3C trace context in their headers.
	writer := telemetrytest.NewTracing()
	wctx, wspan := writer.Provider.Tracer("test").Start(context.Background(), "command")
	wsc := wspan.SpanContext()
	tp, ts := telemetry.TraceHeaders(wctx)
	require.NotEmpty(t, tp)
	wctx = stream.ContextWithTrace(context.Background(), stream.TraceContext{TraceParent: tp, TraceState: ts})
	for i := range 10 {
		_, err := e.store.Append(wctx, stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%d", i)}, stream.ExpectAny(),
			[]stream.EventData{{Data: ItemAdded{SKU: fmt.Sprintf("s%d", i), Qty: 1}}})
		require.NoError(t, err)
	}
	wspan.End()

	var logs logBuffer
	tracing := telemetrytest.NewTracing()
	metrics := telemetrytest.NewMetrics()
	c, err := consumers.New(e.js, e.store, consumers.Config{
		Name: "mailer", Retries: 3, Backoff: time.Millisecond,
		Logger:              slog.New(slog.NewJSONHandler(&logs, nil)),
		TracerProvider:      tracing.Provider,
		MeterProvider:       metrics.Provider,
		TelemetryAttributes: []attribute.KeyValue{attribute.String("team", "checkout")},
	})
	require.NoError(t, err)
	var handled sync.Map
	require.NoError(t, consumers.On(c, func(ctx context.Context, ev *stream.Event, d ItemAdded) error {
		if d.SKU == "s7" {
			return errors.New("cannot mail s7")
		}
		// The handler's context carries its span: the writer's trace.
		assert.Equal(t, wsc.TraceID(), trace.SpanContextFromContext(ctx).TraceID())
		handled.Store(ev.Sequence, true)
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	consumer := []attribute.KeyValue{telemetry.KeyConsumer.String("mailer"), telemetry.KeyStore.String("shop"), attribute.String("team", "checkout")}
	var snap telemetrytest.Snapshot
	require.Eventually(t, func() bool {
		snap, err = metrics.Collect()
		require.NoError(t, err)
		processed, _ := snap.Int64(telemetry.MetricConsumerProcessed, consumer...)
		parked, _ := snap.Int64(telemetry.MetricConsumerParked, consumer...)
		lag, _ := snap.Int64(telemetry.MetricConsumerLag, consumer...)
		return processed == 9 && parked == 1 && lag == 0
	}, 10*time.Second, 20*time.Millisecond)
	retries, _ := snap.Int64(telemetry.MetricConsumerRetries, consumer...)
	assert.EqualValues(t, 2, retries, "3 attempts: 2 retries, then parked")
	active, ok := snap.Int64(telemetry.MetricConsumerActive, consumer...)
	assert.True(t, ok)
	assert.EqualValues(t, 1, active, "the only process holds the pin")
	takeovers, _ := snap.Int64(telemetry.MetricConsumerTakeovers, consumer...)
	assert.EqualValues(t, 1, takeovers)
	batches, ok := snap.Count(telemetry.MetricConsumerBatchDuration, consumer...)
	assert.True(t, ok)
	assert.NotZero(t, batches)
	li, ok := c.Lag(context.Background(), time.Minute)
	require.True(t, ok)
	assert.Equal(t, consumers.LagInfo{Lag: 0, Position: 10, At: li.At}, li, "known from the deliveries, without asking")
	cancel()
	require.NoError(t, <-done)

	// After Run: the gauges are gone.
	snap, err = metrics.Collect()
	require.NoError(t, err)
	_, ok = snap.Int64(telemetry.MetricConsumerLag, consumer...)
	assert.False(t, ok, "no lag reported by a process that does not run the consumer")

	// Spans: one per event handled, a child of the writer's span.
	handles := tracing.Ended(telemetry.SpanConsumerEvent)
	require.Len(t, handles, 10)
	for _, s := range handles {
		assert.Equal(t, wsc.TraceID(), s.Parent().TraceID())
		assert.Equal(t, wsc.SpanID(), s.Parent().SpanID(), "parent: the span that wrote the event")
		assert.True(t, s.Parent().IsRemote())
		assert.Equal(t, trace.SpanKindConsumer, s.SpanKind())
		require.Len(t, s.Links(), 1, "linked to its batch's span")
		subj, _ := telemetrytest.Attr(s, telemetry.KeyMessagingDestination)
		seq, _ := telemetrytest.Attr(s, telemetry.KeySequence)
		if seq.AsInt64() == 8 {
			assert.Equal(t, codes.Error, s.Status().Code, "the event that failed")
			assert.Equal(t, "shop.cart.c7", subj.AsString())
		} else {
			assert.Equal(t, codes.Unset, s.Status().Code)
		}
	}
	batchSpans := tracing.Ended(telemetry.SpanConsumerBatch)
	require.NotEmpty(t, batchSpans)
	linked := 0
	for _, s := range batchSpans {
		assert.False(t, s.Parent().IsValid(), "a batch starts its own trace")
		for _, l := range s.Links() {
			assert.Equal(t, wsc.SpanID(), l.SpanContext.SpanID())
			linked++
		}
		for _, ev := range s.Events() {
			if ev.Name == telemetry.EventParked {
				assert.Contains(t, ev.Attributes, telemetry.KeySequence.Int64(8))
			}
		}
	}
	assert.Equal(t, 10, linked, "each event's writer is linked from its batch")

	// Logs: the parked event with its subject and position.
	parked := logs.records(t, "esnats: parked event")
	require.Len(t, parked, 1)
	assert.Equal(t, "shop.cart.c7", parked[0]["subject"])
	assert.EqualValues(t, 8, parked[0]["sequence"])
	assert.Equal(t, "mailer", parked[0]["consumer"])
	assert.Equal(t, "shop", parked[0]["stream"])
	assert.Equal(t, "shop_dlq", parked[0]["dead_letter"])
	assert.Equal(t, "ItemAdded", parked[0]["event_type"])
	assert.EqualValues(t, 3, parked[0]["attempts"])
	assert.True(t, strings.Contains(parked[0]["reason"].(string), "cannot mail s7"))
	require.Len(t, logs.records(t, "esnats: consumer active"), 1, "the take-over is logged")
	assert.EqualValues(t, 1, logs.records(t, "esnats: consumer active")[0]["resume_at"])
}

// Without any provider (the default), a consumer records nothing and still
// works; the trace context of the events is carried all the same.
func TestConsumerTelemetryOff(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 3)
	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "quiet"})
	require.NoError(t, err)
	var n sync.WaitGroup
	n.Add(3)
	c.Handle("ItemAdded", func(ctx context.Context, ev *stream.Event) error {
		assert.False(t, trace.SpanFromContext(ctx).IsRecording())
		n.Done()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	n.Wait()
	cancel()
	require.NoError(t, <-done)
}
