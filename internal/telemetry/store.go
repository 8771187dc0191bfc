package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Store instruments one event store's appends and loads: a span, a
// duration histogram and a count of events each. Make it once per store
// with NewStore; it is safe for concurrent use.
//
//	ctx, op := s.tel.StartAppend(ctx, agg.Type, agg.ID, subject, len(events))
//	res, err := ...
//	op.End(len(events), err) // 0 events on error
type Store struct {
	tracer     *Tracer
	name       attribute.KeyValue
	isConflict func(error) bool

	appendDur metric.Float64Histogram
	loadDur   metric.Float64Histogram
	appended  metric.Int64Counter

	appendOK, appendConflict, appendErr Measure
	loadOK, loadErr                     Measure
	counted                             Measure
}

// NewStore returns the instrumentation of the store name. tp and mp may be
// nil: the global providers. isConflict tells a concurrency conflict from
// other append errors (esnats.outcome "conflict" or "error"); nil: every
// error is "error".
func NewStore(name string, tp trace.TracerProvider, mp metric.MeterProvider, isConflict func(error) bool) *Store {
	m := Meter(mp)
	base := []attribute.KeyValue{KeyStore.String(name)}
	with := func(kvs ...attribute.KeyValue) Measure { return NewMeasure(append(kvs, base...)...) }
	if isConflict == nil {
		isConflict = func(error) bool { return false }
	}
	return &Store{
		tracer:         NewTracer(tp),
		name:           base[0],
		isConflict:     isConflict,
		appendDur:      Histogram(m, MetricAppendDuration, "s", "Duration of appends to the event store (Append, AppendBatch), retries included.", DurationBuckets),
		loadDur:        Histogram(m, MetricStreamLoadDuration, "s", "Duration of reads of one aggregate's events from the event store.", DurationBuckets),
		appended:       Counter(m, MetricAppendedEvents, "{event}", "Events appended to the event store."),
		appendOK:       with(KeyOutcome.String(OutcomeOK)),
		appendConflict: with(KeyOutcome.String(OutcomeConflict)),
		appendErr:      with(KeyOutcome.String(OutcomeError)),
		loadOK:         with(KeyOutcome.String(OutcomeOK)),
		loadErr:        with(KeyOutcome.String(OutcomeError)),
		counted:        with(),
	}
}

// Op is an append or a load in progress, from StartAppend or StartLoad.
// End it exactly once.
type Op struct {
	ctx   context.Context // the span's, for exemplars
	s     *Store
	span  trace.Span
	start time.Time
	load  bool
}

// StartAppend starts the span esnats.stream.append (kind producer) as a
// child of ctx's span, and the clock of esnats.stream.append.duration. For
// an append to one aggregate, give its type, id and subject; for a batch of
// several, "" (the span then says only how many events). ctx carries the new
// span: TraceHeaders(ctx) is then its W3C trace context, for the events'
// headers when the caller set none (stream.ContextWithTrace wins, so that a
// command's events point at the command's span).
func (s *Store) StartAppend(ctx context.Context, aggType, aggID, subject string, events int) (context.Context, Op) {
	ctx, span := s.tracer.Start(ctx, SpanAppend, trace.SpanKindProducer)
	if span.IsRecording() {
		span.SetAttributes(SystemNATS, KeyMessagingOperationType.String("send"), KeyMessagingOperationName.String("append"),
			s.name, KeyEvents.Int(events), KeyMessagingBatchCount.Int(events))
		setAggregate(span, aggType, aggID, subject)
	}
	return ctx, Op{ctx: ctx, s: s, span: span, start: time.Now()}
}

// StartLoad starts the span esnats.stream.load (kind client) and the clock
// of esnats.stream.load.duration for a read of one aggregate's events.
func (s *Store) StartLoad(ctx context.Context, aggType, aggID, subject string) (context.Context, Op) {
	ctx, span := s.tracer.Start(ctx, SpanStreamLoad, trace.SpanKindClient)
	if span.IsRecording() {
		span.SetAttributes(SystemNATS, KeyMessagingOperationType.String("receive"), KeyMessagingOperationName.String("load"), s.name)
		setAggregate(span, aggType, aggID, subject)
	}
	return ctx, Op{ctx: ctx, s: s, span: span, start: time.Now(), load: true}
}

func setAggregate(span trace.Span, aggType, aggID, subject string) {
	if aggType != "" {
		span.SetAttributes(KeyAggregateType.String(aggType))
	}
	if aggID != "" {
		span.SetAttributes(KeyAggregateID.String(aggID))
	}
	if subject != "" {
		span.SetAttributes(KeyMessagingDestination.String(subject))
	}
}

// End records the operation's duration with its outcome, the events
// appended (n, for a successful append), n as the span's esnats.events, err
// on the span, and ends the span. For a load, n is the events read.
func (o Op) End(n int, err error) {
	if o.s == nil {
		return
	}
	d := time.Since(o.start).Seconds()
	ctx := o.ctx
	if o.load {
		if err != nil {
			o.s.loadDur.Record(ctx, d, o.s.loadErr.RecordOpts...)
		} else {
			o.s.loadDur.Record(ctx, d, o.s.loadOK.RecordOpts...)
		}
	} else {
		switch {
		case err == nil:
			o.s.appendDur.Record(ctx, d, o.s.appendOK.RecordOpts...)
			if n > 0 {
				o.s.appended.Add(ctx, int64(n), o.s.counted.AddOpts...)
			}
		case o.s.isConflict(err):
			o.s.appendDur.Record(ctx, d, o.s.appendConflict.RecordOpts...)
		default:
			o.s.appendDur.Record(ctx, d, o.s.appendErr.RecordOpts...)
		}
	}
	if o.span.IsRecording() {
		o.span.SetAttributes(KeyEvents.Int(n))
		if !o.load && err != nil && o.s.isConflict(err) {
			// A refused append is the command's business (it retries):
			// recorded, not a span error.
			o.span.SetAttributes(KeyOutcome.String(OutcomeConflict))
			o.span.RecordError(err)
			o.span.End()
			return
		}
	}
	End(o.span, err)
}
