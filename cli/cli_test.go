package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/benchkit"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

type ItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

type CheckedOut struct {
	Lines int `json:"lines"`
}

func registry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	stream.MustRegister[CheckedOut](reg, "CheckedOut")
	return reg
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// result of one command run.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the CLI with args and no nats context configured.
func run(t *testing.T, opts cli.Options, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	opts.Stdout, opts.Stderr = &out, &errOut
	code := cli.Run(ctx, opts, args)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// fixture is a server with a store "shop" holding a few events and a snapshot.
type fixture struct {
	srv   *embedded.Server
	url   string
	js    jetstream.JetStream
	store *stream.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // no nats CLI context of the machine's user
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	alice := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	bob := stream.Aggregate{Type: "cart", ID: "bob"}
	_, err = store.Append(ctx, alice, stream.ExpectNone(), []stream.EventData{
		{Data: ItemAdded{SKU: "apple", Quantity: 2}},
		{Data: ItemAdded{SKU: "pear", Quantity: 1}},
	})
	require.NoError(t, err)
	_, err = store.Append(ctx, bob, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "fig", Quantity: 5}}})
	require.NoError(t, err)
	res, err := store.Append(ctx, alice, stream.ExpectAny(), []stream.EventData{{Data: CheckedOut{Lines: 2}}}, stream.WithCorrelationID("req-1"))
	require.NoError(t, err)
	require.Equal(t, uint64(4), res.Last.Sequence)
	return &fixture{srv: srv, url: srv.ClientURL(), js: js, store: store}
}

func TestStores(t *testing.T) {
	f := newFixture(t)
	r := run(t, cli.Options{}, "-s", f.url, "stores")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 2)
	assert.Equal(t, []string{"STORE", "SUBJECTS", "EVENTS", "AGGREGATES", "BYTES", "REPLICAS", "LAST", "EVENT", "CONSUMERS"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"shop", "shop.>", "4", "2"}, strings.Fields(lines[1])[:4])

	r = run(t, cli.Options{}, "-s", f.url, "stores", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rows))
	require.Len(t, rows, 1)
	assert.Equal(t, "shop", rows[0]["name"])
	assert.EqualValues(t, 4, rows[0]["events"])
	assert.EqualValues(t, 2, rows[0]["aggregates"])
	assert.EqualValues(t, 1, rows[0]["replicas"])

	// A stream that is not a store is not listed.
	_, err := f.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.>"}})
	require.NoError(t, err)
	r = run(t, cli.Options{}, "-s", f.url, "ls", "--json")
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rows))
	require.Len(t, rows, 1)
}

// jsonLines parses JSON Lines output into records.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		recs = append(recs, m)
	}
	return recs
}

func seqs(recs []map[string]any) []float64 {
	var out []float64
	for _, r := range recs {
		out = append(out, r["seq"].(float64))
	}
	return out
}

func TestEventsFilters(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		args []string
		want []float64
	}{
		{"all", nil, []float64{1, 2, 3, 4}},
		{"aggregate type", []string{"--type", "cart"}, []float64{1, 2, 3, 4}},
		{"other aggregate type", []string{"--type", "order"}, nil},
		{"one aggregate (id with @ and .)", []string{"--type", "cart", "--id", "alice@example.com"}, []float64{1, 2, 4}},
		{"event type", []string{"--event", "CheckedOut"}, []float64{4}},
		{"two event types", []string{"--event", "CheckedOut,ItemAdded", "--type", "cart", "--id", "bob"}, []float64{3}},
		{"from position", []string{"--from", "3"}, []float64{3, 4}},
		{"since a while ago", []string{"--since", "1h"}, []float64{1, 2, 3, 4}},
		{"since the future", []string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, nil},
		{"limit", []string{"-n", "2"}, []float64{1, 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-s", f.url, "events", "shop", "--json"}, tc.args...)
			r := run(t, cli.Options{}, args...)
			require.Equal(t, cli.ExitOK, r.code, r.stderr)
			assert.Equal(t, tc.want, seqs(jsonLines(t, r.stdout)))
		})
	}
}

func TestEventsDecodesPayloadsAndHeaders(t *testing.T) {
	f := newFixture(t)
	r := run(t, cli.Options{}, "-s", f.url, "events", "shop", "--json", "--from", "4")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	recs := jsonLines(t, r.stdout)
	require.Len(t, recs, 1)
	e := recs[0]
	assert.Equal(t, "cart", e["aggregate_type"])
	assert.Equal(t, "alice@example.com", e["aggregate_id"]) // unescaped
	assert.Equal(t, "CheckedOut", e["type"])
	assert.EqualValues(t, 3, e["version"])
	assert.Equal(t, "req-1", e["correlation_id"])
	assert.Equal(t, "application/msgpack", e["content_type"])
	assert.Equal(t, map[string]any{"lines": float64(2)}, e["data"]) // msgpack decoded without the Go types
	assert.NotContains(t, e, "decode_error")

	// With the application's registry the Go types decode the payload.
	r = run(t, cli.Options{Registry: registry()}, "-s", f.url, "events", "shop", "--json", "-n", "1")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Equal(t, map[string]any{"sku": "apple", "quantity": float64(2)}, jsonLines(t, r.stdout)[0]["data"])

	// The table shows the same, one row per event, and says what is left.
	r = run(t, cli.Options{}, "-s", f.url, "events", "shop", "-n", "3")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5, r.stdout)
	assert.Equal(t, []string{"SEQ", "TIME", "AGGREGATE", "VERSION", "EVENT", "DATA"}, strings.Fields(lines[0]))
	assert.Contains(t, lines[1], "cart/alice@example.com")
	assert.Contains(t, lines[1], `{"quantity":2,"sku":"apple"}`)
	assert.Contains(t, lines[4], "1 more")
}

func TestEventsShowsWhatItCannotDecode(t *testing.T) {
	f := newFixture(t)
	// An event written by another program, with a payload that is not msgpack.
	msg := nats.NewMsg("shop.cart.mallory")
	msg.Header.Set(stream.HeaderEventType, "ItemAdded")
	msg.Header.Set(stream.HeaderVersion, "1")
	msg.Header.Set(stream.HeaderContentType, stream.ContentTypeMsgpack)
	msg.Data = []byte{0xc1, 0xff} // 0xc1 is never valid msgpack
	_, err := f.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)

	for _, opts := range []cli.Options{{}, {Registry: registry()}} {
		r := run(t, opts, "-s", f.url, "events", "shop", "--json", "--from", "5")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		recs := jsonLines(t, r.stdout)
		require.Len(t, recs, 1, "the event is shown, not skipped")
		assert.Equal(t, "mallory", recs[0]["aggregate_id"])
		assert.Contains(t, recs[0]["decode_error"], "msgpack")
	}
	r := run(t, cli.Options{}, "-s", f.url, "events", "shop", "--from", "5")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "! payload is not valid msgpack")
}

func TestEventsFollow(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, cli.Options{Stdout: &out, Stderr: &errOut}, []string{"-s", f.url, "events", "shop", "-f", "--json", "--type", "cart", "--id", "bob"})
	}()
	require.Eventually(t, func() bool { return strings.Count(out.String(), "\n") == 1 }, 10*time.Second, 10*time.Millisecond)
	_, err := f.store.Append(ctx, stream.Aggregate{Type: "cart", ID: "bob"}, stream.ExpectAny(), []stream.EventData{{Data: CheckedOut{Lines: 1}}})
	require.NoError(t, err)
	_, err = f.store.Append(ctx, stream.Aggregate{Type: "cart", ID: "carol"}, stream.ExpectAny(), []stream.EventData{{Data: CheckedOut{Lines: 9}}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Count(out.String(), "\n") == 2 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case code := <-done:
		require.Equal(t, cli.ExitOK, code, errOut.String())
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not stop when its context ended")
	}
	recs := jsonLines(t, out.String())
	require.Len(t, recs, 2, "carol's event is filtered out")
	assert.Equal(t, []float64{3, 5}, seqs(recs))
}

func TestAggregateHistoryAndSnapshot(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r := run(t, cli.Options{}, "-s", f.url, "aggregate", "shop", "cart", "alice@example.com", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var agg struct {
		Version  uint64 `json:"version"`
		Sequence uint64 `json:"sequence"`
		Subject  string `json:"subject"`
		Events   []struct {
			Version uint64 `json:"version"`
			Type    string `json:"type"`
		} `json:"events"`
		Snapshot *struct {
			Version uint64 `json:"version"`
		} `json:"snapshot"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &agg))
	assert.Equal(t, uint64(3), agg.Version)
	assert.Equal(t, uint64(4), agg.Sequence)
	assert.Equal(t, "shop.cart.alice=40example=2Ecom", agg.Subject)
	require.Len(t, agg.Events, 3)
	assert.Equal(t, "CheckedOut", agg.Events[2].Type)
	assert.Nil(t, agg.Snapshot)

	snaps, err := kv.NewStore(ctx, f.js, kv.Config{})
	require.NoError(t, err)
	require.NoError(t, snaps.Put(ctx, kv.Snapshot{
		Aggregate: stream.Aggregate{Type: "cart", ID: "alice@example.com"}, Version: 2, Sequence: 2,
		StateType: "cart", SchemaVersion: 1, ContentType: stream.ContentTypeJSON, State: []byte(`{"items":{"apple":2,"pear":1}}`),
	}))
	r = run(t, cli.Options{}, "-s", f.url, "aggregate", "shop", "cart", "alice@example.com")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "version 3, last event at stream sequence 4, 3 events")
	assert.Contains(t, r.stdout, "snapshot: version 2 (sequence 2), state cart schema 1")
	assert.Contains(t, r.stdout, "a load reads 1 events after it")

	r = run(t, cli.Options{}, "-s", f.url, "aggregate", "shop", "cart", "nobody")
	assert.Equal(t, cli.ExitNotFound, r.code)
	assert.Contains(t, r.stderr, "aggregate cart/nobody has no events in store shop")
}

func TestSnapshots(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r := run(t, cli.Options{}, "-s", f.url, "snapshots")
	assert.Equal(t, cli.ExitNotFound, r.code)
	assert.Contains(t, r.stderr, `no snapshot bucket "esnats_snapshots"`)

	snaps, err := kv.NewStore(ctx, f.js, kv.Config{})
	require.NoError(t, err)
	for i, id := range []string{"alice@example.com", "bob"} {
		require.NoError(t, snaps.Put(ctx, kv.Snapshot{
			Aggregate: stream.Aggregate{Type: "cart", ID: id}, Version: uint64(i + 1), Sequence: uint64(i + 3),
			StateType: "cart", SchemaVersion: 1, ContentType: stream.ContentTypeMsgpack, State: []byte{0x80},
		}))
	}
	require.NoError(t, snaps.Put(ctx, kv.Snapshot{
		Aggregate: stream.Aggregate{Type: "order", ID: "o1"}, Version: 7, Sequence: 9,
		StateType: "order", SchemaVersion: 2, ContentType: stream.ContentTypeMsgpack, State: []byte{0x80},
	}))
	bucket, err := f.js.KeyValue(ctx, kv.DefaultBucket)
	require.NoError(t, err)
	_, err = bucket.Put(ctx, "cart.broken", []byte("not an envelope"))
	require.NoError(t, err)

	r = run(t, cli.Options{}, "-s", f.url, "snapshots", "cart", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rows))
	require.Len(t, rows, 3)
	assert.Equal(t, "alice@example.com", rows[0]["aggregate_id"])
	assert.EqualValues(t, 1, rows[0]["version"])
	assert.Equal(t, "bob", rows[1]["aggregate_id"])
	assert.EqualValues(t, 4, rows[1]["sequence"])
	assert.Equal(t, "broken", rows[2]["aggregate_id"])
	assert.Contains(t, rows[2]["error"], "corrupt")

	r = run(t, cli.Options{}, "-s", f.url, "snapshots")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "order/o1")
	assert.Len(t, strings.Split(strings.TrimSpace(r.stdout), "\n"), 5)
}

func TestConsumers(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cons, err := f.js.CreateOrUpdateConsumer(ctx, "shop", jetstream.ConsumerConfig{
		Durable: "reader", FilterSubject: "shop.cart.*", AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.NoError(t, err)
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(time.Second))
	require.NoError(t, err)
	for m := range batch.Messages() {
		require.NoError(t, m.DoubleAck(ctx))
	}
	require.NoError(t, batch.Error())

	r := run(t, cli.Options{}, "-s", f.url, "consumers", "shop", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rows))
	require.Len(t, rows, 1)
	assert.Equal(t, "reader", rows[0]["name"])
	assert.EqualValues(t, 2, rows[0]["position"])
	assert.EqualValues(t, 2, rows[0]["lag"])
	assert.Equal(t, "stalled", rows[0]["state"])

	r = run(t, cli.Options{}, "-s", f.url, "consumers", "shop")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Regexp(t, `reader\s+shop\.cart\.\*\s+2\s+2\s+2\s+0\s+0\s+stalled`, r.stdout)
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown store", []string{"-s", f.url, "events", "nope"}, cli.ExitNotFound, `no event store "nope"`},
		{"unknown store lists the stores", []string{"-s", f.url, "consumers", "nope"}, cli.ExitNotFound, "event stores there: shop"},
		{"invalid store name", []string{"-s", f.url, "events", "a.b"}, cli.ExitUsage, "store name"},
		{"not a store", []string{"-s", f.url, "events", "KV_x"}, cli.ExitNotFound, `no event store "KV_x"`},
		{"id without type", []string{"-s", f.url, "events", "shop", "--id", "x"}, cli.ExitUsage, "--id needs --type"},
		{"bad since", []string{"-s", f.url, "events", "shop", "--since", "yesterday"}, cli.ExitUsage, `--since "yesterday"`},
		{"unknown flag", []string{"-s", f.url, "events", "shop", "--nope"}, cli.ExitUsage, "unknown flag: --nope"},
		{"missing argument", []string{"-s", f.url, "events"}, cli.ExitUsage, "accepts 1 arg"},
		{"unknown command", []string{"frobnicate"}, cli.ExitUsage, `unknown command "frobnicate"`},
		{"unknown group-commit mode", []string{"bench", "append-async", "--group-commit", "sometimes"}, cli.ExitUsage, `--group-commit "sometimes": want auto, batch, pipeline or off`},
		{"no server", []string{"-s", "nats://127.0.0.1:1", "stores"}, cli.ExitConnect, "no NATS server answered at nats://127.0.0.1:1 (from --server)"},
		{"no server says how to start one", []string{"-s", "nats://127.0.0.1:1", "stores"}, cli.ExitConnect, "esnats dev"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, cli.Options{}, tc.args...)
			assert.Equal(t, tc.code, r.code, r.stderr)
			assert.Contains(t, r.stderr, tc.msg)
		})
	}

	t.Run("NATS_URL", func(t *testing.T) {
		t.Setenv("NATS_URL", "nats://127.0.0.1:1")
		r := run(t, cli.Options{}, "stores")
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.Contains(t, r.stderr, "(from NATS_URL)")
		t.Setenv("NATS_URL", f.url)
		r = run(t, cli.Options{}, "stores")
		assert.Equal(t, cli.ExitOK, r.code, r.stderr)
	})
}

func TestCredentials(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{{Username: "ops", Password: "s3cret"}}
		}
	})
	url := srv.ClientURL()
	r := run(t, cli.Options{}, "-s", url, "stores")
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Contains(t, r.stderr, "refused the credentials")

	r = run(t, cli.Options{}, "-s", url, "--user", "ops", "--password", "wrong", "stores")
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Contains(t, r.stderr, "refused the credentials")

	r = run(t, cli.Options{}, "-s", url, "--user", "ops", "--password", "s3cret", "stores")
	assert.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "no event stores")
}

func TestNoJetStream(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	ns.Start()
	t.Cleanup(ns.Shutdown)
	require.True(t, ns.ReadyForConnections(5*time.Second))
	r := run(t, cli.Options{}, "-s", ns.ClientURL(), "stores")
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Contains(t, r.stderr, "JetStream is not enabled")
}

func TestNatsContext(t *testing.T) {
	f := newFixture(t)
	home := os.Getenv("XDG_CONFIG_HOME") // set by newFixture
	dir := filepath.Join(home, "nats", "context")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "local.json"), []byte(fmt.Sprintf(`{"url": %q}`, f.url)), 0o600))

	r := run(t, cli.Options{}, "--context", "local", "stores", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"name": "shop"`)

	// The selected context is the default, as with the nats CLI.
	require.NoError(t, os.WriteFile(filepath.Join(home, "nats", "context.txt"), []byte("local"), 0o600))
	r = run(t, cli.Options{}, "stores", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"name": "shop"`)

	// --server overrides the context's URL.
	r = run(t, cli.Options{}, "--context", "local", "-s", "nats://127.0.0.1:1", "stores")
	assert.Equal(t, cli.ExitConnect, r.code)

	r = run(t, cli.Options{}, "--context", "missing", "stores")
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Contains(t, r.stderr, `nats context "missing"`)
}

func TestDev(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, cli.Options{Stdout: &out, Stderr: &errOut}, []string{"dev", "--port", "-1", "--dir", dir})
	}()
	var url string
	require.Eventually(t, func() bool {
		for _, line := range strings.Split(out.String(), "\n") {
			if u, ok := strings.CutPrefix(strings.TrimSpace(line), "use it: export NATS_URL="); ok {
				url = u
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "stderr: %s", errOut.String())
	assert.Contains(t, out.String(), "fsync always")

	nc, err := nats.Connect(url)
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = stream.NewStore(ctx, js, stream.Config{Name: "devstore", Registry: registry()})
	require.NoError(t, err)
	nc.Close()
	r := run(t, cli.Options{}, "-s", url, "stores", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"name": "devstore"`)

	cancel()
	select {
	case code := <-done:
		require.Equal(t, cli.ExitOK, code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("dev did not stop")
	}
	_, err = os.Stat(filepath.Join(dir, "jetstream"))
	require.NoError(t, err, "the data is in --dir")

	r = run(t, cli.Options{}, "dev", "--sync", "sometimes")
	assert.Equal(t, cli.ExitUsage, r.code)
	assert.Contains(t, r.stderr, `--sync "sometimes"`)
}

func TestBench(t *testing.T) {
	// On an embedded server of its own (the default), as JSON.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	r := run(t, cli.Options{}, "bench", "append", "--ops", "20", "--rounds", "2", "--json", "-q")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	var results []struct {
		Workload string  `json:"workload"`
		Ratio    float64 `json:"ratio"`
		Raw      struct {
			Ops int `json:"ops"`
		} `json:"raw"`
		Esnats struct {
			Ops int `json:"ops"`
		} `json:"esnats"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &results), r.stdout)
	require.Len(t, results, 1)
	assert.Equal(t, "append", results[0].Workload)
	assert.Equal(t, 20, results[0].Raw.Ops)
	assert.Equal(t, 20, results[0].Esnats.Ops)
	assert.Greater(t, results[0].Ratio, 0.0)

	// On a given server, as a table; its streams are gone afterwards.
	f := newFixture(t)
	r = run(t, cli.Options{}, "-s", f.url, "bench", "load", "--ops", "10", "--rounds", "2")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "benchmarks on server "+f.url)
	assert.Regexp(t, `(?m)^load\s+load\s+[\d.]+\s+[\d.]+\s+\d+\.\d\d\s`, r.stdout)
	names := f.js.StreamNames(context.Background())
	var left []string
	for n := range names.Name() {
		left = append(left, n)
	}
	assert.Equal(t, []string{"shop"}, left)

	// --list describes every workload, both sides, without a server.
	r = run(t, cli.Options{}, "bench", "--list")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	for _, w := range benchkit.Workloads() {
		assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(w.Name)+`\s`, r.stdout)
		assert.Contains(t, r.stdout, w.Raw, w.Name)
		assert.Contains(t, r.stdout, w.Esnats, w.Name)
	}
	assert.Contains(t, r.stdout, "the same Repository load of a 100-event aggregate")

	r = run(t, cli.Options{}, "bench", "nope")
	assert.Equal(t, cli.ExitUsage, r.code)
	assert.Contains(t, r.stderr, `unknown workload "nope"`)
}

// permsFixture is a server with JetStream and two users besides "admin"
// (no restrictions, which sets a store and a snapshot up): "ops", whose
// replies may only come to the inbox prefix _INBOX_ops, and "lister", who
// may not delete consumers.
func permsFixture(t *testing.T) (url string) {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // no nats CLI context of the machine's user
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{
				{Username: "admin", Password: "admin"},
				{Username: "ops", Password: "ops", Permissions: &server.Permissions{
					Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_ops.>"}},
				}},
				{Username: "lister", Password: "lister", Permissions: &server.Permissions{
					Publish: &server.SubjectPermission{Deny: []string{"$JS.API.CONSUMER.DELETE.>"}},
				}},
			}
		}
	})
	_, js := embedded.MustJetStream(t, srv, nats.UserInfo("admin", "admin"))
	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	_, err = store.Append(ctx, stream.Aggregate{Type: "cart", ID: "bob"}, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "fig", Quantity: 5}}})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	require.NoError(t, err)
	require.NoError(t, snaps.Put(ctx, kv.Snapshot{
		Aggregate: stream.Aggregate{Type: "cart", ID: "bob"}, Version: 1, Sequence: 1,
		StateType: "cart", SchemaVersion: 1, ContentType: stream.ContentTypeMsgpack, State: []byte{0x80},
	}))
	return srv.ClientURL()
}

// A user whose permissions allow only its own inbox prefix works with
// --inbox-prefix, and is told at once what is wrong without it.
func TestInboxPrefix(t *testing.T) {
	url := permsFixture(t)
	login := []string{"-s", url, "--user", "ops", "--password", "ops"}

	start := time.Now()
	r := run(t, cli.Options{}, append(login, "--timeout", "10s", "stores")...)
	took := time.Since(start)
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Regexp(t, `^esnats: connected to `+regexp.QuoteMeta(url)+`, but the server refuses this user a subscription to its reply inbox "_INBOX\.\w+\.\*" \(permission denied\), so no answer can reach it: pass the inbox prefix its permissions allow with --inbox-prefix \(or inbox_prefix in the nats context\)\n$`, r.stderr)
	assert.Less(t, took, 5*time.Second, "refused at once, not after --timeout")

	for _, args := range [][]string{
		{"stores"},
		{"events", "shop"},
		{"events", "shop", "--type", "cart", "--id", "bob"},
		{"aggregate", "shop", "cart", "bob"},
		{"snapshots"},
		{"consumers", "shop"},
		{"projections", "status", "shop"},
	} {
		r = run(t, cli.Options{}, append(append(login, "--inbox-prefix", "_INBOX_ops"), args...)...)
		assert.Equal(t, cli.ExitOK, r.code, "%v: %s", args, r.stderr)
		assert.Empty(t, r.stderr, "%v", args)
	}
	r = run(t, cli.Options{}, append(login, "--inbox-prefix", "_INBOX_ops", "events", "shop", "--json")...)
	assert.Contains(t, r.stdout, `"sku":"fig"`)

	// The flag overrides a context's inbox_prefix.
	ctxFile := filepath.Join(t.TempDir(), "ops.json")
	require.NoError(t, os.WriteFile(ctxFile, []byte(`{"inbox_prefix": "_INBOX_other"}`), 0o600))
	r = run(t, cli.Options{}, append(login, "--context", ctxFile, "stores")...)
	assert.Equal(t, cli.ExitConnect, r.code)
	assert.Contains(t, r.stderr, `reply inbox "_INBOX_other.`)
	r = run(t, cli.Options{}, append(login, "--context", ctxFile, "--inbox-prefix", "_INBOX_ops", "stores")...)
	assert.Equal(t, cli.ExitOK, r.code, r.stderr)

	for _, bad := range []string{"_INBOX.>", "a.", "a b", "*"} {
		r = run(t, cli.Options{}, append(login, "--inbox-prefix", bad, "stores")...)
		assert.Equal(t, cli.ExitUsage, r.code, bad)
		assert.Contains(t, r.stderr, "--inbox-prefix", bad)
	}
}

// What the server reports asynchronously goes to Options.Stderr, once: a
// user who may list snapshots but not delete the listing's consumer gets
// the listing, and the refused delete printed, without waiting for it.
func TestAsyncErrorsGoToStderr(t *testing.T) {
	url := permsFixture(t)
	start := time.Now()
	r := run(t, cli.Options{}, "-s", url, "--user", "lister", "--password", "lister", "--timeout", "10s", "snapshots")
	took := time.Since(start)
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "cart/bob")
	assert.Regexp(t, `^esnats: nats: permissions violation: Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.DELETE\.KV_esnats_snapshots\.\w+"\n$`, r.stderr)
	assert.Less(t, took, 5*time.Second, "not waiting --timeout for the refused delete")

	// The name in the messages is the command's.
	r = run(t, cli.Options{Name: "shop-tool"}, "-s", url, "--user", "lister", "--password", "lister", "snapshots")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.True(t, strings.HasPrefix(r.stderr, "shop-tool: nats: permissions violation: "), r.stderr)
}
