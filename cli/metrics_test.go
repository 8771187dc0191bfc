package cli_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/stream"
)

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// scrape GETs a Prometheus endpoint; "" while it does not answer.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(body)
}

// sample returns the value of the first sample of metric whose labels
// contain every label of want ("name" → value), as text; "" if none.
func sample(body, metric string, want map[string]string) string {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(metric) + `\{([^}]*)\} (\S+)$`)
	for _, line := range strings.Split(body, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ok := true
		for k, v := range want {
			if !strings.Contains(m[1], k+`="`+v+`"`) {
				ok = false
			}
		}
		if ok {
			return m[2]
		}
	}
	return ""
}

// The worker's --metrics-addr serves its projections' metrics to Prometheus.
func TestProjectionsRunMetrics(t *testing.T) {
	f := newFixture(t)
	addr := freeAddr(t)
	models := make(chan *itemsModel, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wout, werr syncBuffer
	done := make(chan int, 1)
	go func() {
		opts := workerOptions(models)
		opts.Stdout, opts.Stderr = &wout, &werr
		done <- cli.Run(ctx, opts, []string{"-s", f.url, "projections", "run", "shop", "--metrics-addr", addr})
	}()
	model := <-models
	require.Eventually(t, func() bool { return model.Len() == 3 }, 10*time.Second, 10*time.Millisecond, werr.String())

	url := "http://" + addr + "/metrics"
	items := map[string]string{"esnats_projection": "items", "esnats_store": "shop"}
	var body string
	require.Eventually(t, func() bool {
		body = scrape(t, url)
		return sample(body, "esnats_projection_events_applied_total", items) == "4" &&
			sample(body, "esnats_projection_lag", items) == "0"
	}, 10*time.Second, 50*time.Millisecond, "%s\nworker: %s", body, werr.String())
	assert.Equal(t, "4", sample(body, "esnats_projection_position", items))
	assert.Equal(t, "4", sample(body, "esnats_consumer_events_processed_total", map[string]string{"esnats_consumer": "items", "esnats_projection": "items"}))
	assert.Equal(t, "1", sample(body, "esnats_consumer_active", map[string]string{"esnats_consumer": "items"}))
	assert.NotEmpty(t, sample(body, "esnats_consumer_batch_duration_seconds_count", map[string]string{"esnats_consumer": "items"}))
	assert.Contains(t, body, "# TYPE esnats_consumer_lag gauge")
	assert.Contains(t, body, `target_info{`, "the resource, with service.name")
	assert.Contains(t, body, `service_name="shop-worker"`)
	assert.Contains(t, body, "go_goroutines", "the Go runtime's metrics")
	assert.Contains(t, werr.String(), "metrics=http://"+addr+"/metrics", "the worker says where")

	// A new event: the counters follow.
	_, err := f.store.Append(ctx, stream.Aggregate{Type: "cart", ID: "erin"}, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "kiwi", Quantity: 1}}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		body = scrape(t, url)
		return sample(body, "esnats_projection_events_applied_total", items) == "5" && sample(body, "esnats_projection_lag", items) == "0"
	}, 10*time.Second, 50*time.Millisecond, body)

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, cli.ExitOK, code, werr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("the worker did not stop")
	}
	assert.Empty(t, scrape(t, url), "the endpoint stops with the worker")

	// An address that cannot be listened on is a usage error.
	r := run(t, workerOptions(models), "-s", f.url, "projections", "run", "shop", "--metrics-addr", "256.0.0.1:1")
	assert.Equal(t, cli.ExitUsage, r.code, r.stderr)
	assert.Contains(t, r.stderr, "--metrics-addr")
}

// esnats dev --metrics-addr serves the embedded server's JetStream figures.
func TestDevMetrics(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, cli.Options{Stdout: &out, Stderr: &errOut}, []string{"dev", "--port", "-1", "--dir", t.TempDir(), "--metrics-addr", addr})
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "use it: export NATS_URL=") }, 10*time.Second, 10*time.Millisecond, errOut.String())
	assert.Contains(t, out.String(), "metrics: http://"+addr+"/metrics")
	var url string
	for _, line := range strings.Split(out.String(), "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "use it: export NATS_URL="); ok {
			url = u
		}
	}
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	for i, id := range []string{"alice", "bob", "alice", "bob"} {
		_, err := store.Append(ctx, stream.Aggregate{Type: "cart", ID: id}, stream.ExpectAny(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: i + 1}}})
		require.NoError(t, err)
	}
	body := ""
	require.Eventually(t, func() bool {
		body = scrape(t, "http://"+addr+"/metrics")
		return sample(body, "nats_jetstream_stream_messages", map[string]string{"nats_stream": "shop"}) == "4"
	}, 10*time.Second, 50*time.Millisecond, body)
	assert.Equal(t, "2", sample(body, "nats_jetstream_stream_subjects", map[string]string{"nats_stream": "shop"}), "two aggregates")
	assert.Regexp(t, `(?m)^nats_jetstream_streams\{[^}]*\} [1-9]`, body)
	assert.Regexp(t, `(?m)^nats_server_connections\{[^}]*\} [0-9]`, body)
	cancel()
	select {
	case code := <-done:
		require.Equal(t, cli.ExitOK, code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("dev did not stop")
	}
}
