// Package telemetry holds what esnats's packages share to trace and measure
// their work with OpenTelemetry: the instrumentation scope, the names of
// spans, metrics and attributes (docs/observability.md lists them), a Tracer
// that costs nothing while tracing is off, constructors of instruments that
// never fail, the W3C trace context carried in event headers (TraceHeaders,
// ContextFromHeaders, SpanContextFromHeaders), and Store, the spans and
// latency histograms of an event store's appends and loads.
//
// Library code depends on the OpenTelemetry API only. Every constructor takes
// a trace.TracerProvider and a metric.MeterProvider that may be nil: nil
// means the global providers (otel.GetTracerProvider, otel.GetMeterProvider),
// which are no-ops until the application sets them. While no provider is set
// a Tracer starts no span and allocates nothing, and instruments of the
// global meter cost an atomic load per measurement.
package telemetry
