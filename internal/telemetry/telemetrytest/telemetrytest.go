// Package telemetrytest reads what esnats's instrumentation recorded, for
// tests: an OpenTelemetry SDK meter provider with a manual reader, a tracer
// provider with an in-memory span recorder, and lookups of metric values by
// name and attributes. Only tests import it (it links the SDK).
package telemetrytest

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// Metrics is a meter provider whose measurements a test reads on demand.
type Metrics struct {
	Provider *sdkmetric.MeterProvider
	reader   *sdkmetric.ManualReader
}

// NewMetrics returns a meter provider with a manual reader.
func NewMetrics() *Metrics {
	r := sdkmetric.NewManualReader()
	return &Metrics{Provider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)), reader: r}
}

// Collect reads every instrument now (observable gauges call their
// callbacks).
func (m *Metrics) Collect() (Snapshot, error) {
	var rm metricdata.ResourceMetrics
	err := m.reader.Collect(context.Background(), &rm)
	return Snapshot{rm: rm}, err
}

// Snapshot is one collection.
type Snapshot struct{ rm metricdata.ResourceMetrics }

// matches reports whether set holds every attribute of want.
func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

func (s Snapshot) find(name string) (metricdata.Aggregation, bool) {
	for _, sm := range s.rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data, true
			}
		}
	}
	return nil, false
}

// Int64 returns the sum of the int64 counter or gauge name over the data
// points that have the attributes want (all of them, when want is empty);
// ok is false when no data point matches.
func (s Snapshot) Int64(name string, want ...attribute.KeyValue) (int64, bool) {
	return sum[int64](s, name, want)
}

// Float64 is Int64 for float64 gauges and sums.
func (s Snapshot) Float64(name string, want ...attribute.KeyValue) (float64, bool) {
	return sum[float64](s, name, want)
}

// sum adds the matching data points of the sum or gauge name.
func sum[N int64 | float64](s Snapshot, name string, want []attribute.KeyValue) (v N, ok bool) {
	data, found := s.find(name)
	if !found {
		return 0, false
	}
	var points []metricdata.DataPoint[N]
	switch d := data.(type) {
	case metricdata.Sum[N]:
		points = d.DataPoints
	case metricdata.Gauge[N]:
		points = d.DataPoints
	}
	for _, p := range points {
		if matches(p.Attributes, want) {
			v, ok = v+p.Value, true
		}
	}
	return v, ok
}

// Count returns the number of measurements of the float64 histogram name
// with the attributes want.
func (s Snapshot) Count(name string, want ...attribute.KeyValue) (n uint64, ok bool) {
	data, found := s.find(name)
	if !found {
		return 0, false
	}
	if d, isHist := data.(metricdata.Histogram[float64]); isHist {
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n, ok = n+p.Count, true
			}
		}
	}
	return n, ok
}

// Tracing is a tracer provider that keeps every span in memory.
type Tracing struct {
	Provider *sdktrace.TracerProvider
	recorder *tracetest.SpanRecorder
}

// NewTracing returns a tracer provider that samples and records every span.
func NewTracing() *Tracing {
	rec := tracetest.NewSpanRecorder()
	return &Tracing{Provider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample())), recorder: rec}
}

// Ended returns the spans ended so far named name (all when name is "").
func (t *Tracing) Ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range t.recorder.Ended() {
		if name == "" || s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// Attr returns the value of the attribute key of span s.
func Attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}
