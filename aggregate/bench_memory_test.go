package aggregate_test

import (
	"context"
	"fmt"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// BenchmarkRepositoryMemory measures the repository's own CPU and memory
// per command, on the in-memory store (no network, no server): Update on a
// hot, cached aggregate, and on one that is loaded for each command (cache
// off, a history of up to 100 events). With no tracer or meter provider
// set (the default), this is the cost of the repository with its
// instrumentation off. There is no raw JetStream operation beside it: no
// server is involved; BenchmarkHotAggregate is the same command against
// one.
func BenchmarkRepositoryMemory(b *testing.B) {
	for _, cacheSize := range []int{0, -1} {
		name := "cache"
		if cacheSize < 0 {
			name = "nocache"
		}
		b.Run(name, func(b *testing.B) {
			benchRepositoryMemory(b, func(c *aggregate.Config[*Cart]) { c.CacheSize = cacheSize })
		})
	}
}

// benchRepositoryMemory runs Update b.N times on a MemoryStore, moving to
// a fresh aggregate every hotNoCacheRun commands.
func benchRepositoryMemory(b *testing.B, mod func(*aggregate.Config[*Cart])) {
	st, err := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	if err != nil {
		b.Fatal(err)
	}
	repo := newRepo(b, st, mod)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("hot-%d", i/hotNoCacheRun)
		if err := repo.Update(ctx, id, func(c *Cart) error { return c.Add("apple", 1) }); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRepositoryTelemetry is BenchmarkRepositoryMemory with the
// OpenTelemetry SDK on: every span sampled (and dropped: no exporter) and
// every metric aggregated by a manual reader. Beside
// BenchmarkRepositoryMemory it shows what tracing and metrics cost when an
// application turns them on.
func BenchmarkRepositoryTelemetry(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	for _, cacheSize := range []int{0, -1} {
		name := "cache"
		if cacheSize < 0 {
			name = "nocache"
		}
		b.Run(name+"/traces+metrics", func(b *testing.B) {
			benchRepositoryMemory(b, func(c *aggregate.Config[*Cart]) {
				c.CacheSize, c.TracerProvider, c.MeterProvider = cacheSize, tp, mp
			})
		})
		b.Run(name+"/metrics", func(b *testing.B) {
			benchRepositoryMemory(b, func(c *aggregate.Config[*Cart]) { c.CacheSize, c.MeterProvider = cacheSize, mp })
		})
	}
}
