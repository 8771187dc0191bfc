package consumers

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// gaugeMaxAge is how old the lag known from deliveries may be before the
// lag gauge asks the server (a standby, or an idle or stuck consumer).
const gaugeMaxAge = 15 * time.Second

// consumerTelemetry traces and measures one Consumer. Attribute sets are
// built once: measuring allocates nothing, and with tracing off no span is
// started and no link computed.
type consumerTelemetry struct {
	tracer    *telemetry.Tracer
	meter     metric.Meter
	spanAttrs []attribute.KeyValue

	processed metric.Int64Counter
	parked    metric.Int64Counter
	retries   metric.Int64Counter
	takeovers metric.Int64Counter
	batchDur  metric.Float64Histogram
	lag       metric.Int64ObservableGauge
	active    metric.Int64ObservableGauge

	attrs telemetry.Measure
}

func newConsumerTelemetry(cfg Config, store string) *consumerTelemetry {
	m := telemetry.Meter(cfg.MeterProvider)
	base := append([]attribute.KeyValue{telemetry.KeyStore.String(store), telemetry.KeyConsumer.String(cfg.Name)}, cfg.TelemetryAttributes...)
	return &consumerTelemetry{
		tracer: telemetry.NewTracer(cfg.TracerProvider),
		meter:  m,
		spanAttrs: append([]attribute.KeyValue{telemetry.SystemNATS, telemetry.KeyMessagingConsumerGroup.String(cfg.Name),
			telemetry.KeyMessagingOperationType.String("process")}, base...),
		processed: telemetry.Counter(m, telemetry.MetricConsumerProcessed, "{event}", "Events handled by the consumer's handlers in this process."),
		parked:    telemetry.Counter(m, telemetry.MetricConsumerParked, "{event}", "Events parked in the dead-letter stream by this process."),
		retries:   telemetry.Counter(m, telemetry.MetricConsumerRetries, "{retry}", "Failed handler calls that were retried."),
		takeovers: telemetry.Counter(m, telemetry.MetricConsumerTakeovers, "{takeover}", "Times this process took the consumer over (at start, or from another process)."),
		batchDur:  telemetry.Histogram(m, telemetry.MetricConsumerBatchDuration, "s", "Duration of one batch: handled (retries included) and acknowledged.", telemetry.DurationBuckets),
		lag:       telemetry.Int64Gauge(m, telemetry.MetricConsumerLag, "{event}", "Events of the consumer not yet handled: pending on the server plus delivered and not acknowledged, as this process knows it."),
		active:    telemetry.Int64Gauge(m, telemetry.MetricConsumerActive, "", "1 when this process holds the consumer's pin and handles its events, 0 on a standby."),
		attrs:     telemetry.NewMeasure(base...),
	}
}

// startBatch starts the span of one batch (kind consumer), linked to the
// spans that wrote its events (their traceparent headers).
func (t *consumerTelemetry) startBatch(ctx context.Context, msgs []jetstream.Msg) (context.Context, trace.Span) {
	if !t.tracer.On() {
		return t.tracer.Start(ctx, telemetry.SpanConsumerBatch, trace.SpanKindConsumer) // off: no span
	}
	var links []trace.Link
	for _, m := range msgs {
		h := m.Headers()
		if l, ok := telemetry.LinkFromHeaders(h.Get(stream.HeaderTraceParent), h.Get(stream.HeaderTraceState)); ok {
			links = append(links, l)
		}
	}
	ctx, span := t.tracer.StartLinked(ctx, telemetry.SpanConsumerBatch, trace.SpanKindConsumer, links)
	if span.IsRecording() {
		span.SetAttributes(t.spanAttrs...)
		span.SetAttributes(telemetry.KeyMessagingOperationName.String("process"), telemetry.KeyMessagingBatchCount.Int(len(msgs)))
	}
	return ctx, span
}

// startEvent starts the span of one event handled by a per-type handler: a
// child of the span that wrote it (its traceparent), linked to the batch's
// span; without a traceparent, a child of the batch's span.
func (t *consumerTelemetry) startEvent(ctx context.Context, ev *stream.Event) (context.Context, trace.Span) {
	if !t.tracer.On() {
		return t.tracer.Start(ctx, telemetry.SpanConsumerEvent, trace.SpanKindConsumer) // off: no span
	}
	var (
		links []trace.Link
		pctx  = ctx
	)
	if sc, ok := telemetry.SpanContextFromHeaders(ev.TraceParent, ev.TraceState); ok {
		if batch := trace.SpanContextFromContext(ctx); batch.IsValid() {
			links = append(links, trace.Link{SpanContext: batch})
		}
		pctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	ctx, span := t.tracer.StartLinked(pctx, telemetry.SpanConsumerEvent, trace.SpanKindConsumer, links)
	if span.IsRecording() {
		span.SetAttributes(t.spanAttrs...)
		span.SetAttributes(telemetry.KeyMessagingOperationName.String("handle"),
			telemetry.KeyMessagingDestination.String(ev.Subject), telemetry.KeyMessagingMessageID.String(ev.ID),
			telemetry.KeyEventType.String(ev.Type), telemetry.KeyAggregateType.String(ev.Aggregate.Type),
			telemetry.KeyAggregateID.String(ev.Aggregate.ID), telemetry.KeyVersion.Int64(int64(ev.Version)),
			telemetry.KeySequence.Int64(int64(ev.Sequence)))
	}
	return ctx, span
}

// lagState is the consumer's lag and position as this process knows them,
// from the metadata of deliveries (the server's count of pending messages
// in each) and from consumer info replies.
type lagState struct {
	lag      atomic.Uint64
	position atomic.Uint64
	at       atomic.Int64 // unix nanoseconds of the information; 0: none
	asking   atomic.Bool  // a refresh is in flight
}

func (l *lagState) set(lag, position uint64) {
	l.lag.Store(lag)
	if position > 0 {
		l.position.Store(position)
	}
	l.at.Store(time.Now().UnixNano())
}

// fromInfo takes the lag and position of a consumer info reply.
func (l *lagState) fromInfo(info *jetstream.ConsumerInfo) {
	if info != nil {
		l.set(info.NumPending+uint64(info.NumAckPending), info.AckFloor.Stream)
	}
}

// LagInfo is a consumer's lag and position as this process knows them (see
// Consumer.Lag).
type LagInfo struct {
	Lag      uint64    // events not yet handled: pending on the server plus delivered and not acknowledged
	Position uint64    // stream sequence of the last event acknowledged
	At       time.Time // when this was true
}

// KnownLag returns the consumer's lag and position as this process knows
// them, without any I/O: from the last delivery (the server tells the number
// of events still pending with every message, to which the process adds
// the events it holds unacknowledged), the last take-over or the last
// Status. ok is false when the process knows nothing yet (Run has not looked
// the consumer up, and Status was not called).
func (c *Consumer) KnownLag() (li LagInfo, ok bool) {
	at := c.lag.at.Load()
	if at == 0 {
		return LagInfo{}, false
	}
	return LagInfo{Lag: c.lag.lag.Load(), Position: c.lag.position.Load(), At: time.Unix(0, at)}, true
}

// Lag is KnownLag, refreshed when what the process knows is older than
// maxAge: then it asks the server once (a consumer info request, like
// Status; one at a time, bounded to 2s and by ctx). The active process of a
// busy consumer knows the lag from each delivery and asks nothing; a
// standby, or a consumer idle for longer than maxAge, asks. ok is false when
// the process knows nothing yet (Run has not looked the consumer up: asking
// then could race the consumer's creation and read no pending events) or
// the request failed. The metrics' lag gauges use it with 15s.
func (c *Consumer) Lag(ctx context.Context, maxAge time.Duration) (li LagInfo, ok bool) {
	li, ok = c.KnownLag()
	if !ok || time.Since(li.At) <= maxAge {
		return li, ok
	}
	if !c.lag.asking.CompareAndSwap(false, true) {
		return li, true // another caller is asking: the last known
	}
	defer c.lag.asking.Store(false)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.Status(ctx); err != nil {
		return LagInfo{}, false
	}
	return c.KnownLag()
}

// observe registers the lag and active gauges' callback while Run runs.
func (c *Consumer) observe() (unregister func()) {
	t := c.tel
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		active := int64(0)
		if c.active.Load() {
			active = 1
		}
		o.ObserveInt64(t.active, active, t.attrs.ObserveOpts...)
		if li, ok := c.Lag(ctx, gaugeMaxAge); ok {
			o.ObserveInt64(t.lag, int64(li.Lag), t.attrs.ObserveOpts...)
		}
		return nil
	}, t.lag, t.active)
	if err != nil {
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
