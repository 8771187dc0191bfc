package telemetry

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Meter returns esnats's meter of mp, or of the global meter provider when
// mp is nil. Instruments of the global meter follow the provider the
// application sets later (otel.SetMeterProvider) and record nothing until
// then.
func Meter(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(ScopeName)
}

var noopMeter = noop.NewMeterProvider().Meter(ScopeName)

// Counter returns the Int64Counter name of m. If the provider refuses it
// (an invalid name or unit), the error goes to otel.Handle and a no-op
// counter is returned: telemetry never fails esnats's own work.
func Counter(m metric.Meter, name, unit, description string) metric.Int64Counter {
	c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(description))
	if err != nil {
		otel.Handle(err)
		c, _ = noopMeter.Int64Counter(name)
	}
	return c
}

// Histogram returns the Float64Histogram name of m with the bucket
// boundaries bounds (a hint the provider may override with a view). Errors
// as for Counter.
func Histogram(m metric.Meter, name, unit, description string, bounds []float64) metric.Float64Histogram {
	h, err := m.Float64Histogram(name, metric.WithUnit(unit), metric.WithDescription(description),
		metric.WithExplicitBucketBoundaries(bounds...))
	if err != nil {
		otel.Handle(err)
		h, _ = noopMeter.Float64Histogram(name)
	}
	return h
}

// Int64Gauge returns the Int64ObservableGauge name of m; values come from
// callbacks registered with m.RegisterCallback. Errors as for Counter.
func Int64Gauge(m metric.Meter, name, unit, description string) metric.Int64ObservableGauge {
	g, err := m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(description))
	if err != nil {
		otel.Handle(err)
		g, _ = noopMeter.Int64ObservableGauge(name)
	}
	return g
}

// Float64Gauge returns the Float64ObservableGauge name of m. Errors as for
// Counter.
func Float64Gauge(m metric.Meter, name, unit, description string) metric.Float64ObservableGauge {
	g, err := m.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(description))
	if err != nil {
		otel.Handle(err)
		g, _ = noopMeter.Float64ObservableGauge(name)
	}
	return g
}

func addOpts(o metric.MeasurementOption) []metric.AddOption { return []metric.AddOption{o} }

func recordOpts(o metric.MeasurementOption) []metric.RecordOption {
	return []metric.RecordOption{o}
}

func observeOpts(o metric.MeasurementOption) []metric.ObserveOption {
	return []metric.ObserveOption{o}
}

// Measure is a precomputed attribute set in the three option forms, so that
// a measurement passes an existing slice (no allocation):
//
//	counter.Add(ctx, 1, m.AddOpts...)
type Measure struct {
	AddOpts     []metric.AddOption
	RecordOpts  []metric.RecordOption
	ObserveOpts []metric.ObserveOption
	Set         attribute.Set
}

// NewMeasure precomputes kvs for measurements.
func NewMeasure(kvs ...attribute.KeyValue) Measure {
	set := attribute.NewSet(kvs...)
	o := metric.WithAttributeSet(set)
	return Measure{AddOpts: addOpts(o), RecordOpts: recordOpts(o), ObserveOpts: observeOpts(o), Set: set}
}

// With returns a Measure with kvs added to m's attributes.
func (m Measure) With(kvs ...attribute.KeyValue) Measure {
	return NewMeasure(append(m.Set.ToSlice(), kvs...)...)
}
