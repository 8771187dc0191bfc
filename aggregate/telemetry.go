package aggregate

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// command is the kind of a repository command, for spans and metrics.
type command int

const (
	cmdUpdate command = iota
	cmdCreate
	cmdDelete
	numCommands
)

var commandNames = [numCommands]string{"update", "create", "delete"}
var commandSpans = [numCommands]string{telemetry.SpanUpdate, telemetry.SpanCreate, telemetry.SpanDelete}

// outcome indexes the precomputed attribute sets of a command's end.
type outcome int

const (
	outOK outcome = iota
	outRejected
	outConflict
	outError
	numOutcomes
)

var outcomeNames = [numOutcomes]string{telemetry.OutcomeOK, telemetry.OutcomeRejected, telemetry.OutcomeConflict, telemetry.OutcomeError}

// loadSource says where a load found the aggregate.
type loadSource int

const (
	fromCache loadSource = iota
	fromSnapshot
	fromEvents
	numSources
)

var sourceNames = [numSources]string{"cache", "snapshot", "events"}

// ignoreReason indexes esnats.snapshot.ignored's reasons.
type ignoreReason int

const (
	ignoredCorrupt ignoreReason = iota
	ignoredSchema
	ignoredContentType
	ignoredUnreadable
	ignoredMismatch
	numReasons
)

var reasonNames = [numReasons]string{telemetry.ReasonCorrupt, telemetry.ReasonSchema, telemetry.ReasonContentType, telemetry.ReasonUnreadable, telemetry.ReasonMismatch}

// repoTelemetry traces and measures one repository. Attribute sets are
// built once, in newRepoTelemetry: measuring allocates nothing, and with
// tracing off no span is started.
type repoTelemetry struct {
	tracer    *telemetry.Tracer
	spanAttrs []attribute.KeyValue // messaging.system, esnats.store, esnats.aggregate.type

	cmdDur      metric.Float64Histogram
	conflicts   metric.Int64Counter
	retries     metric.Int64Counter
	loadDur     metric.Float64Histogram
	loadEvents  metric.Float64Histogram
	snapWrites  metric.Int64Counter
	snapIgnored metric.Int64Counter

	cmdEnd  [numCommands][numOutcomes]telemetry.Measure
	cmd     [numCommands]telemetry.Measure
	load    [numSources]telemetry.Measure
	snapOK  telemetry.Measure
	snapErr telemetry.Measure
	ignored [numReasons]telemetry.Measure
}

func newRepoTelemetry(tp trace.TracerProvider, mp metric.MeterProvider, store, aggType string) *repoTelemetry {
	m := telemetry.Meter(mp)
	base := []attribute.KeyValue{telemetry.KeyStore.String(store), telemetry.KeyAggregateType.String(aggType)}
	with := func(kvs ...attribute.KeyValue) telemetry.Measure {
		return telemetry.NewMeasure(append(kvs, base...)...)
	}
	t := &repoTelemetry{
		tracer:      telemetry.NewTracer(tp),
		spanAttrs:   append([]attribute.KeyValue{telemetry.SystemNATS}, base...),
		cmdDur:      telemetry.Histogram(m, telemetry.MetricCommandDuration, "s", "Duration of repository commands (Update, Create, Delete): loads, the command, the save and retries.", telemetry.DurationBuckets),
		conflicts:   telemetry.Counter(m, telemetry.MetricCommandConflicts, "{conflict}", "Saves of a command refused by the concurrency check (another writer got in first)."),
		retries:     telemetry.Counter(m, telemetry.MetricCommandRetries, "{retry}", "Commands run again after a concurrency conflict."),
		loadDur:     telemetry.Histogram(m, telemetry.MetricLoadDuration, "s", "Duration of aggregate loads that read the stores (a snapshot, events).", telemetry.DurationBuckets),
		loadEvents:  telemetry.Histogram(m, telemetry.MetricLoadEvents, "{event}", "Events read by one aggregate load (after the snapshot, if any).", telemetry.CountBuckets),
		snapWrites:  telemetry.Counter(m, telemetry.MetricSnapshotWrites, "{snapshot}", "Snapshot writes, by outcome (ok, error)."),
		snapIgnored: telemetry.Counter(m, telemetry.MetricSnapshotIgnored, "{snapshot}", "Snapshots found and not used, by reason (corrupt, schema, content_type, unreadable, mismatch)."),
		snapOK:      with(telemetry.KeyOutcome.String(telemetry.OutcomeOK)),
		snapErr:     with(telemetry.KeyOutcome.String(telemetry.OutcomeError)),
	}
	for c := range numCommands {
		cmd := telemetry.KeyCommand.String(commandNames[c])
		t.cmd[c] = with(cmd)
		for o := range numOutcomes {
			t.cmdEnd[c][o] = with(cmd, telemetry.KeyOutcome.String(outcomeNames[o]))
		}
	}
	for s := range numSources {
		t.load[s] = with(telemetry.KeyLoadSource.String(sourceNames[s]))
	}
	for r := range numReasons {
		t.ignored[r] = with(telemetry.KeyReason.String(reasonNames[r]))
	}
	return t
}

// start starts a span of the repository. With tracing on and no span in
// ctx, a W3C trace context set with stream.ContextWithTrace (a caller that
// received one from outside) is the span's parent.
func (t *repoTelemetry) start(ctx context.Context, name, id string) (context.Context, trace.Span) {
	if t.tracer.On() && !trace.SpanContextFromContext(ctx).IsValid() {
		if tc, ok := stream.TraceFromContext(ctx); ok {
			ctx = telemetry.ContextFromHeaders(ctx, tc.TraceParent, tc.TraceState)
		}
	}
	ctx, span := t.tracer.Start(ctx, name, trace.SpanKindInternal)
	if span.IsRecording() {
		span.SetAttributes(t.spanAttrs...)
		span.SetAttributes(telemetry.KeyAggregateID.String(id))
	}
	return ctx, span
}

// carryTrace puts ctx's span context (the current span, or a remote one)
// into ctx as the stream.TraceContext that appends store in the events'
// traceparent and tracestate headers. Without a valid span context ctx is
// returned as it is (an explicit stream.ContextWithTrace stays).
func carryTrace(ctx context.Context) context.Context {
	tp, ts := telemetry.TraceHeaders(ctx)
	if tp == "" {
		return ctx
	}
	return stream.ContextWithTrace(ctx, stream.TraceContext{TraceParent: tp, TraceState: ts})
}

// endCommand records a command's duration and outcome and ends its span.
// a is the aggregate at the end, if any.
func (t *repoTelemetry) endCommand(ctx context.Context, span trace.Span, c command, start time.Time, attempts int, a Aggregate, o outcome, err error) {
	t.cmdDur.Record(ctx, time.Since(start).Seconds(), t.cmdEnd[c][o].RecordOpts...)
	if !span.IsRecording() {
		span.End()
		return
	}
	span.SetAttributes(telemetry.KeyAttempts.Int(attempts), telemetry.KeyOutcome.String(outcomeNames[o]))
	if a != nil {
		span.SetAttributes(telemetry.KeyVersion.Int64(int64(a.root().version)), telemetry.KeySequence.Int64(int64(a.root().sequence)))
	}
	if o == outRejected {
		// The command said no (like an HTTP 4xx): recorded, not a span
		// error.
		span.RecordError(err)
		span.End()
		return
	}
	telemetry.End(span, err)
}

// outcomeOf classifies a command's error that did not come from the
// command function.
func outcomeOf(err error) outcome {
	switch {
	case err == nil:
		return outOK
	case errors.Is(err, stream.ErrConflict):
		return outConflict
	case errors.Is(err, ErrExists), errors.Is(err, ErrDeleted):
		return outRejected
	}
	return outError
}

// conflict records a conflicting save of attempt on the command's span and
// counters; retry says whether the command runs again.
func (t *repoTelemetry) conflict(ctx context.Context, span trace.Span, c command, attempt int, err error, retry bool) {
	t.conflicts.Add(ctx, 1, t.cmd[c].AddOpts...)
	if retry {
		t.retries.Add(ctx, 1, t.cmd[c].AddOpts...)
	}
	if span.IsRecording() {
		attrs := []attribute.KeyValue{telemetry.KeyAttempts.Int(attempt)}
		var ce *stream.ConflictError
		if errors.As(err, &ce) {
			attrs = append(attrs, telemetry.KeyVersion.Int64(int64(ce.Expected.Version)), telemetry.KeySequence.Int64(int64(ce.Expected.Sequence)))
			if ce.ActualKnown {
				attrs = append(attrs, telemetry.KeyActualSequence.Int64(int64(ce.Actual.Sequence)))
			}
		}
		span.AddEvent(telemetry.EventConflict, trace.WithAttributes(attrs...))
	}
}

// endLoad records a load that read the stores.
func (t *repoTelemetry) endLoad(ctx context.Context, span trace.Span, src loadSource, start time.Time, events int, a Aggregate, err error) {
	if err == nil {
		t.loadDur.Record(ctx, time.Since(start).Seconds(), t.load[src].RecordOpts...)
		t.loadEvents.Record(ctx, float64(events), t.load[src].RecordOpts...)
	}
	if span.IsRecording() {
		span.SetAttributes(telemetry.KeyLoadSource.String(sourceNames[src]), telemetry.KeyEvents.Int(events))
		if a != nil && err == nil {
			span.SetAttributes(telemetry.KeyVersion.Int64(int64(a.root().version)), telemetry.KeySequence.Int64(int64(a.root().sequence)))
		}
	}
	telemetry.End(span, err)
}
