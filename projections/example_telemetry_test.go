package projections_test

import (
	"context"
	"fmt"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/esnats/esnats/projections"
)

// exampleInt64 returns the value of the int64 gauge or counter name.
func exampleInt64(rm metricdata.ResourceMetrics, name string) int64 {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				if m.Name == name && len(d.DataPoints) > 0 {
					return d.DataPoints[0].Value
				}
			case metricdata.Sum[int64]:
				if m.Name == name && len(d.DataPoints) > 0 {
					return d.DataPoints[0].Value
				}
			}
		}
	}
	return -1
}

// A worker's metrics. In production the meter provider's reader is the
// OpenTelemetry Prometheus exporter (go.opentelemetry.io/otel/exporters/prometheus)
// served over HTTP, as `esnats projections run --metrics-addr` does, or an
// OTLP exporter; set it globally with otel.SetMeterProvider, or give it to
// the runner as here. A manual reader shows the figures.
func ExampleWithMeterProvider() {
	js, store, stop := exampleShop()
	defer stop()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	runner := projections.NewRunner(js, store, nil, projections.WithMeterProvider(mp))
	if err := runner.Add(projections.Projection{Name: "items-per-sku", Model: exampleItemsPerSKU()}); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	worker, stopWorker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runner.Run(worker) }()
	exampleWaitCaughtUp(ctx, runner, "items-per-sku", 4)

	// The gauges are read while Run runs, from what the worker knows (no
	// request to the server while the projection is busy).
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		panic(err)
	}
	fmt.Println("lag:", exampleInt64(rm, "esnats.projection.lag"))
	fmt.Println("position:", exampleInt64(rm, "esnats.projection.position"))
	fmt.Println("applied:", exampleInt64(rm, "esnats.projection.events.applied"))
	stopWorker()
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
	// lag: 0
	// position: 4
	// applied: 4
}
