package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// unsetTracerProvider is the global tracer provider before the application
// sets one: it delegates to the provider set later, and until then records
// nothing. (Package initialisation runs before any code that could set it.)
var unsetTracerProvider = otel.GetTracerProvider()

// offSpan is the span returned while tracing is off: allocated once.
var offSpan trace.Span = noop.Span{}

// kindOptions holds one start option per span kind, so that starting a span
// does not allocate an option.
var kindOptions = [...][]trace.SpanStartOption{
	trace.SpanKindUnspecified: {trace.WithSpanKind(trace.SpanKindInternal)},
	trace.SpanKindInternal:    {trace.WithSpanKind(trace.SpanKindInternal)},
	trace.SpanKindServer:      {trace.WithSpanKind(trace.SpanKindServer)},
	trace.SpanKindClient:      {trace.WithSpanKind(trace.SpanKindClient)},
	trace.SpanKindProducer:    {trace.WithSpanKind(trace.SpanKindProducer)},
	trace.SpanKindConsumer:    {trace.WithSpanKind(trace.SpanKindConsumer)},
}

// Tracer starts esnats's spans on a tracer provider. It is safe for
// concurrent use.
type Tracer struct {
	tr       trace.Tracer
	explicit bool // a provider was given: always start spans
}

// NewTracer returns a Tracer on tp, or on the global tracer provider when tp
// is nil. A Tracer on the global provider starts no span while the
// application has not set one (otel.SetTracerProvider), and follows it once
// set, also when that happens after NewTracer.
func NewTracer(tp trace.TracerProvider) *Tracer {
	if tp == nil {
		return &Tracer{tr: otel.GetTracerProvider().Tracer(ScopeName)}
	}
	return &Tracer{tr: tp.Tracer(ScopeName), explicit: true}
}

// On reports whether Start starts spans: a provider was given, or the
// global provider has been set. Spans may still not be recorded (sampled
// out); check Span.IsRecording before computing attributes.
func (t *Tracer) On() bool {
	return t.explicit || otel.GetTracerProvider() != unsetTracerProvider
}

// Start starts a span of the given kind, a child of ctx's span (or of the
// remote span context ctx carries). While tracing is off it returns ctx as
// it is and a span that records nothing, without allocating. Set attributes
// after Start, only when span.IsRecording().
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if !t.On() {
		return ctx, offSpan
	}
	return t.tr.Start(ctx, name, kindOptions[kindIndex(kind)]...)
}

// StartLinked is Start with links to other spans: the spans of the commands
// that wrote a batch's events, for instance.
func (t *Tracer) StartLinked(ctx context.Context, name string, kind trace.SpanKind, links []trace.Link) (context.Context, trace.Span) {
	if !t.On() {
		return ctx, offSpan
	}
	if len(links) == 0 {
		return t.tr.Start(ctx, name, kindOptions[kindIndex(kind)]...)
	}
	return t.tr.Start(ctx, name, trace.WithSpanKind(kind), trace.WithLinks(links...))
}

func kindIndex(k trace.SpanKind) int {
	if k < 0 || int(k) >= len(kindOptions) {
		return int(trace.SpanKindInternal)
	}
	return int(k)
}

// End ends span. A non-nil err is recorded on it (an exception event) and
// sets its status to Error.
func End(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// w3c is the W3C trace context propagator: the wire format's traceparent
// and tracestate headers (docs/wire-format.md).
var w3c propagation.TraceContext

// headerPair is a propagation.TextMapCarrier over the two W3C headers.
type headerPair struct{ parent, state string }

func (h *headerPair) Get(key string) string {
	switch key {
	case "traceparent":
		return h.parent
	case "tracestate":
		return h.state
	}
	return ""
}

func (h *headerPair) Set(key, value string) {
	switch key {
	case "traceparent":
		h.parent = value
	case "tracestate":
		h.state = value
	}
}

func (h *headerPair) Keys() []string { return []string{"traceparent", "tracestate"} }

// TraceHeaders returns the W3C traceparent and tracestate header values of
// ctx's span context: the current span, or the remote span context ctx
// carries. Both are "" when ctx has no valid span context; tracestate is ""
// when the trace has no state. It does not allocate in that case.
func TraceHeaders(ctx context.Context) (traceparent, tracestate string) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return "", ""
	}
	var h headerPair
	w3c.Inject(ctx, &h)
	return h.parent, h.state
}

// SpanContextFromHeaders parses W3C traceparent and tracestate header
// values into a remote span context. ok is false when traceparent is empty
// or invalid (an invalid tracestate is dropped, as the W3C specification
// says).
func SpanContextFromHeaders(traceparent, tracestate string) (sc trace.SpanContext, ok bool) {
	if traceparent == "" {
		return trace.SpanContext{}, false
	}
	h := headerPair{parent: traceparent, state: tracestate}
	sc = trace.SpanContextFromContext(w3c.Extract(context.Background(), &h))
	return sc, sc.IsValid()
}

// ContextFromHeaders returns ctx carrying the remote span context of the
// W3C traceparent and tracestate header values, so that a span started with
// it is a child of the span that wrote them. It returns ctx as it is when
// traceparent is empty or invalid.
func ContextFromHeaders(ctx context.Context, traceparent, tracestate string) context.Context {
	sc, ok := SpanContextFromHeaders(traceparent, tracestate)
	if !ok {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// LinkFromHeaders returns a link to the span that wrote the W3C traceparent
// and tracestate header values; ok is false when there is none.
func LinkFromHeaders(traceparent, tracestate string) (trace.Link, bool) {
	sc, ok := SpanContextFromHeaders(traceparent, tracestate)
	if !ok {
		return trace.Link{}, false
	}
	return trace.Link{SpanContext: sc}, true
}
