package projections

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// RunnerOption configures a Runner (NewRunner).
type RunnerOption func(*Runner)

// WithTracerProvider traces the runner's projections: a span per batch
// applied to a read model (esnats.projection.apply), linked to the spans of
// the commands that wrote its events, and a span per rebuild
// (esnats.projection.rebuild); it is also the default TracerProvider of
// the projections' consumers (docs/observability.md). Default: the global
// provider (otel.GetTracerProvider), a no-op until the application sets
// one.
func WithTracerProvider(tp trace.TracerProvider) RunnerOption {
	return func(r *Runner) { r.tp = tp }
}

// WithMeterProvider receives the runner's metrics: events applied and
// skipped, the lag and position of each projection while Run runs, a
// rebuild's progress; it is also the default MeterProvider of the
// projections' consumers (docs/observability.md). Default: the global
// provider (otel.GetMeterProvider), a no-op until the application sets
// one.
func WithMeterProvider(mp metric.MeterProvider) RunnerOption {
	return func(r *Runner) { r.mp = mp }
}

// gaugeMaxAge is how old a projection's lag may be before a collection of
// the lag gauge asks the server (see consumers.Consumer.Lag).
const gaugeMaxAge = 15 * time.Second

// runnerTelemetry holds the runner's instruments.
type runnerTelemetry struct {
	tracer   *telemetry.Tracer
	meter    metric.Meter
	store    attribute.KeyValue
	applied  metric.Int64Counter
	skipped  metric.Int64Counter
	lag      metric.Int64ObservableGauge
	position metric.Int64ObservableGauge
	progress metric.Float64ObservableGauge
}

func newRunnerTelemetry(tp trace.TracerProvider, mp metric.MeterProvider, store string) *runnerTelemetry {
	m := telemetry.Meter(mp)
	return &runnerTelemetry{
		tracer:   telemetry.NewTracer(tp),
		meter:    m,
		store:    telemetry.KeyStore.String(store),
		applied:  telemetry.Counter(m, telemetry.MetricProjectionApplied, "{event}", "Events applied to the projection's read model by this process."),
		skipped:  telemetry.Counter(m, telemetry.MetricProjectionSkipped, "{event}", "Events delivered again that the exactly-once read model already held (skipped)."),
		lag:      telemetry.Int64Gauge(m, telemetry.MetricProjectionLag, "{event}", "Matching events not yet applied to the projection's read model."),
		position: telemetry.Int64Gauge(m, telemetry.MetricProjectionPosition, "{sequence}", "Stream sequence of the last event applied to the projection's read model."),
		progress: telemetry.Float64Gauge(m, telemetry.MetricRebuildProgress, "1", "Share of a rebuild done in this process, 0 to 1: position over the store's last sequence when it started."),
	}
}

// projTelemetry is one projection's precomputed attributes.
type projTelemetry struct {
	attrs     telemetry.Measure
	spanAttrs []attribute.KeyValue
	progress  atomic.Uint64 // rebuild progress (float64 bits) while rebuilding here
}

func (t *runnerTelemetry) forProjection(name string, cp bool) *projTelemetry {
	mode := "ack-floor"
	if cp {
		mode = "exactly-once"
	}
	proj := telemetry.KeyProjection.String(name)
	return &projTelemetry{
		attrs:     telemetry.NewMeasure(t.store, proj),
		spanAttrs: []attribute.KeyValue{telemetry.SystemNATS, t.store, proj, telemetry.KeyProjectionMode.String(mode)},
	}
}

// startApply starts the span of one batch applied to a read model, a child
// of the consumer's batch span, linked to the spans of the commands that
// wrote the events.
func (t *runnerTelemetry) startApply(ctx context.Context, pt *projTelemetry, evs []*stream.Event, skipped int) (context.Context, trace.Span) {
	if !t.tracer.On() {
		return t.tracer.Start(ctx, telemetry.SpanProjectionApply, trace.SpanKindInternal) // off: no span
	}
	var links []trace.Link
	for _, ev := range evs {
		if l, ok := telemetry.LinkFromHeaders(ev.TraceParent, ev.TraceState); ok {
			links = append(links, l)
		}
	}
	ctx, span := t.tracer.StartLinked(ctx, telemetry.SpanProjectionApply, trace.SpanKindInternal, links)
	if span.IsRecording() {
		span.SetAttributes(pt.spanAttrs...)
		span.SetAttributes(telemetry.KeyEvents.Int(len(evs)), telemetry.KeySkipped.Int(skipped))
		if len(evs) > 0 {
			span.SetAttributes(telemetry.KeySequence.Int64(int64(evs[len(evs)-1].Sequence)))
		}
	}
	return ctx, span
}

// observe registers the lag and position gauges of the runner's
// projections while Run runs. The lag comes from what the consumers know
// (consumers.Consumer.Lag): no server request per collection while a
// projection is busy; one per 15s when it is idle or on a standby.
func (r *Runner) observe() (unregister func()) {
	t := r.tel
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		r.mu.Lock()
		projs := make([]*running, 0, len(r.projs))
		for _, rp := range r.projs {
			projs = append(projs, rp)
		}
		r.mu.Unlock()
		for _, rp := range projs {
			li, ok := rp.consumer().Lag(ctx, gaugeMaxAge)
			if !ok {
				continue // unknown (the consumer is being set up): not observed
			}
			pos := li.Position
			if rp.cp {
				pos = max(pos, rp.skip.Load())
			}
			o.ObserveInt64(t.lag, int64(li.Lag), rp.tel.attrs.ObserveOpts...)
			o.ObserveInt64(t.position, int64(pos), rp.tel.attrs.ObserveOpts...)
		}
		return nil
	}, t.lag, t.position)
	if err != nil {
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}

// observeRebuild registers the progress gauge of a rebuild of pt while it
// runs.
func (r *Runner) observeRebuild(pt *projTelemetry) (unregister func()) {
	t := r.tel
	reg, err := t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveFloat64(t.progress, math.Float64frombits(pt.progress.Load()), pt.attrs.ObserveOpts...)
		return nil
	}, t.progress)
	if err != nil {
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
