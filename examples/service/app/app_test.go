package app_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/examples/service/app"
	"github.com/esnats/esnats/examples/service/cart"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// The API and the worker on one server (as on `esnats dev`): commands,
// their replies, every kind of error, and the read model catching up.
func TestServiceOnOneServer(t *testing.T) {
	srv := embedded.RunServer(t)
	connect := func() (*nats.Conn, jetstream.JetStream) { return embedded.MustJetStream(t, srv) }
	// One attempt per command, so that a conflict shows as 409 at once.
	serve(t, connect, app.Config{MaxAttempts: 1})
	nc, js := connect()
	c := newClient(t, nc)

	st := ok[app.CartState](c, "cart.add", `{"cart":"alice","sku":"apple","quantity":2}`)
	assert.Equal(t, app.CartState{Cart: "alice", Version: 1, Items: map[string]int{"apple": 2}, Quantity: 2}, st)
	st = ok[app.CartState](c, "cart.add", app.AddItem{Cart: "alice", SKU: "red pear", Quantity: 1})
	assert.Equal(t, map[string]int{"apple": 2, "red pear": 1}, st.Items)
	assert.EqualValues(t, 2, st.Version)
	st = ok[app.CartState](c, "cart.remove", app.RemoveItem{Cart: "alice", SKU: "red pear"})
	assert.Equal(t, app.CartState{Cart: "alice", Version: 3, Items: map[string]int{"apple": 2}, Quantity: 2}, st)
	assert.Equal(t, st, ok[app.CartState](c, "cart.get", app.CartRef{Cart: "alice"}))
	st = ok[app.CartState](c, "cart.checkout", app.CartRef{Cart: "alice"})
	assert.True(t, st.CheckedOut)
	assert.EqualValues(t, 4, st.Version)
	// Any UTF-8 id and SKU works.
	st = ok[app.CartState](c, "cart.add", app.AddItem{Cart: "bob@example.com", SKU: "Zürich/cheese", Quantity: 3})
	assert.Equal(t, map[string]int{"Zürich/cheese": 3}, st.Items)

	// erin's cart exists, but is empty.
	ok[app.CartState](c, "cart.add", app.AddItem{Cart: "erin", SKU: "apple", Quantity: 1})
	ok[app.CartState](c, "cart.remove", app.RemoveItem{Cart: "erin", SKU: "apple"})

	for _, tc := range []struct {
		name, subject string
		req           any
		code          int
		msgs          []string
	}{
		{"truncated JSON", "cart.add", `{"cart":"carol","sku":"apple"`, 400, []string{"cart.add: invalid JSON request", "unexpected EOF", `expected a JSON object like {"cart":"alice","sku":"apple","quantity":2}`}},
		{"not JSON", "cart.add", `add 2 apples`, 400, []string{"invalid JSON request: invalid character 'a'"}},
		{"empty body", "cart.checkout", ``, 400, []string{"cart.checkout: empty request"}},
		{"two JSON values", "cart.get", `{"cart":"alice"} {"cart":"bob"}`, 400, []string{"more than one JSON value"}},
		{"unknown field", "cart.add", `{"cart":"carol","sku":"apple","qty":2}`, 400, []string{`unknown field "qty"`}},
		{"quantity of the wrong type", "cart.add", `{"cart":"carol","sku":"apple","quantity":"2"}`, 400, []string{"cannot unmarshal string", "quantity"}},
		{"no cart", "cart.add", app.AddItem{SKU: "apple", Quantity: 1}, 400, []string{`"cart" is required`}},
		{"no sku to remove", "cart.remove", app.RemoveItem{Cart: "alice"}, 400, []string{`"sku" is required`}},
		{"id too long", "cart.add", app.AddItem{Cart: strings.Repeat("x", stream.MaxIDLength+1), SKU: "apple", Quantity: 1}, 400, []string{"invalid aggregate id"}},
		{"zero quantity", "cart.add", app.AddItem{Cart: "carol", SKU: "apple"}, 400, []string{`quantity must be positive: got 0 for "apple"`}},
		{"negative quantity", "cart.add", app.AddItem{Cart: "carol", SKU: "apple", Quantity: -1}, 400, []string{"quantity must be positive: got -1"}},
		{"line too large", "cart.add", app.AddItem{Cart: "carol", SKU: "apple", Quantity: cart.MaxLineQuantity + 1}, 400, []string{"a line holds at most 1000 units"}},
		{"empty sku", "cart.add", app.AddItem{Cart: "carol", Quantity: 1}, 400, []string{"invalid sku: empty"}},
		{"checked out", "cart.add", app.AddItem{Cart: "alice", SKU: "fig", Quantity: 1}, 400, []string{"cart is checked out"}},
		{"checkout twice", "cart.checkout", app.CartRef{Cart: "alice"}, 400, []string{"cart is checked out"}},
		{"item not in cart", "cart.remove", app.RemoveItem{Cart: "bob@example.com", SKU: "kiwi"}, 400, []string{`item not in cart: "kiwi"`}},
		{"checkout of an empty cart", "cart.checkout", app.CartRef{Cart: "erin"}, 400, []string{"cart is empty"}},
		{"get an unknown cart", "cart.get", app.CartRef{Cart: "nobody"}, 404, []string{`unknown cart "nobody": it has no events`}},
		{"remove from an unknown cart", "cart.remove", app.RemoveItem{Cart: "nobody", SKU: "apple"}, 404, []string{`unknown cart "nobody"`}},
		{"checkout of an unknown cart", "cart.checkout", app.CartRef{Cart: "nobody"}, 404, []string{`unknown cart "nobody"`}},
		{"summary of an unknown cart", "cart.summary", app.CartRef{Cart: "nobody"}, 404, []string{`unknown cart "nobody": not in the read model`}},
		{"sales with a parameter", "cart.sales", `{"sku":"apple"}`, 400, []string{`cart.sales: invalid JSON request: unknown field "sku"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, nc)
			c.fails(tc.subject, tc.req, tc.code, tc.msgs...)
		})
	}
	// The refused commands stored nothing.
	assert.Equal(t, app.CartState{Cart: "alice", Version: 4, Items: map[string]int{"apple": 2}, Quantity: 2, CheckedOut: true},
		ok[app.CartState](c, "cart.get", app.CartRef{Cart: "alice"}))
	c.fails("cart.get", app.CartRef{Cart: "carol"}, 404, `unknown cart "carol"`)

	// The read model catches up: the summary shows the version the
	// command returned.
	sum := c.summaryAt("alice", 4, 10*time.Second)
	assert.Equal(t, app.Summary{Cart: "alice", Version: 4, Position: sum.Position, Items: map[string]int{"apple": 2}, Lines: 1, Quantity: 2, CheckedOut: true}, sum)
	sum = c.summaryAt("bob@example.com", 1, 10*time.Second)
	assert.Equal(t, map[string]int{"Zürich/cheese": 3}, sum.Items)
	assert.False(t, sum.CheckedOut)
	ok[app.CartState](c, "cart.checkout", app.CartRef{Cart: "bob@example.com"})
	c.summaryAt("bob@example.com", 2, 10*time.Second)
	sales := c.salesAt(8, 10*time.Second) // eight events stored
	assert.Equal(t, map[string]int{"apple": 2, "Zürich/cheese": 3}, sales.Units)
	assert.Equal(t, 2, sales.Checkouts)
	assert.EqualValues(t, 8, sales.Position)
	assert.Equal(t, sales, ok[app.Sales](c, "cart.sales", `{}`), "{} is an empty request too")

	// The worker serves the projections control plane: `esnats projections
	// status shop` sees it and where its projection stands.
	ctl, err := projections.NewControlClient(nc, "shop")
	require.NoError(t, err)
	workers, err := ctl.Status(t.Context())
	require.NoError(t, err)
	require.Len(t, workers, 1)
	ps, found := workers[0].Projection(app.ViewsProjection)
	require.True(t, found)
	assert.EqualValues(t, 8, ps.Position)
	assert.Zero(t, ps.Lag)

	// A writer elsewhere changes dave's cart after the API cached it: the
	// API's next command conflicts, and with one attempt allowed the reply
	// is 409. The command after it reloads and succeeds.
	ok[app.CartState](c, "cart.add", app.AddItem{Cart: "dave", SKU: "apple", Quantity: 1})
	store, err := app.NewStore(t.Context(), js, app.Config{})
	require.NoError(t, err)
	other, err := aggregate.NewRepository(aggregate.Config[*cart.Cart]{Store: store, Type: cart.AggregateType, New: cart.New})
	require.NoError(t, err)
	require.NoError(t, other.Update(t.Context(), "dave", func(c *cart.Cart) error { return c.AddItem("kiwi", 1) }))
	c.fails("cart.add", app.AddItem{Cart: "dave", SKU: "fig", Quantity: 1}, 409, "still conflicting after 1 attempts", "concurrency conflict")
	st = ok[app.CartState](c, "cart.add", app.AddItem{Cart: "dave", SKU: "fig", Quantity: 1})
	assert.Equal(t, app.CartState{Cart: "dave", Version: 3, Items: map[string]int{"apple": 1, "kiwi": 1, "fig": 1}, Quantity: 3}, st)
}

func TestStatus(t *testing.T) {
	for err, want := range map[error]int{
		cart.ErrEmptyCart: 400,
		fmt.Errorf("x: %w", cart.ErrInvalidQuantity):       400,
		fmt.Errorf("x: %w", stream.ErrInvalidID):           400,
		fmt.Errorf("aggregate: %w", stream.ErrConflict):    409,
		&stream.ConflictError{}:                            409,
		fmt.Errorf("load: %w", stream.ErrDecode):           500,
		fmt.Errorf("append: %w", stream.ErrIndeterminate):  500,
		fmt.Errorf("append: %w", nats.ErrConnectionClosed): 500,
	} {
		assert.Equal(t, want, app.Status(err), "%v", err)
	}
}

func TestFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	url, cfg, err := app.FromEnv(env())
	require.NoError(t, err)
	assert.Equal(t, "nats://127.0.0.1:4222", url)
	assert.Equal(t, app.Config{Replicas: 1}, cfg)

	url, cfg, err = app.FromEnv(env("NATS_URL", " nats://n1:4222, nats://n2:4222 ,,nats://n3:4222 ", "REPLICAS", "3"))
	require.NoError(t, err)
	assert.Equal(t, "nats://n1:4222,nats://n2:4222,nats://n3:4222", url)
	assert.Equal(t, 3, cfg.Replicas)

	for _, bad := range []string{"0", "6", "three", "-1"} {
		_, _, err := app.FromEnv(env("REPLICAS", bad))
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), fmt.Sprintf("REPLICAS must be a number from 1 to 5, got %q", bad))
	}
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, app.Config{}.Validate())
	require.NoError(t, app.Config{Replicas: 3, Store: "carts", Prefix: "shop"}.Validate())
	for cfg, want := range map[*app.Config]string{
		{Replicas: 7}:       "Replicas must be 1 to 5, got 7",
		{Store: "my store"}: "Config.Store",
		{Prefix: "a.b"}:     "Config.Prefix",
		{MaxAttempts: -1}:   "MaxAttempts must not be negative",
		{Replicas: -2}:      "Replicas must be 1 to 5, got -2",
	} {
		err := cfg.Validate()
		require.Error(t, err, "%+v", *cfg)
		assert.Contains(t, err.Error(), want)
	}
}

// A replicated store on a server that is not clustered is a configuration
// error: Serve says so at once instead of waiting for ever.
func TestServeRefusesReplicasOnOneServer(t *testing.T) {
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	err := app.Serve(t.Context(), nc, js, app.Config{Replicas: 3})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "replicas > 1 not supported in non-clustered mode")
}

// An event the read model cannot take (here: a message another client put
// in the store, which does not decode) stops the projection rather than be
// skipped: the worker logs it, keeps answering queries, and starts the
// projection again and again. Once an operator removes the message, the
// read model goes on from where it stopped.
func TestPoisonEventBlocksTheReadModelLoudly(t *testing.T) {
	srv := embedded.RunServer(t)
	connect := func() (*nats.Conn, jetstream.JetStream) { return embedded.MustJetStream(t, srv) }
	var logs syncBuffer
	serve(t, connect, app.Config{
		Consumer: consumers.Config{Retries: 1, Backoff: time.Millisecond},
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	nc, js := connect()
	c := newClient(t, nc)

	ok[app.CartState](c, "cart.add", app.AddItem{Cart: "alice", SKU: "apple", Quantity: 1}) // sequence 1
	c.summaryAt("alice", 1, 10*time.Second)
	ack, err := js.Publish(t.Context(), "shop.cart.mallory", []byte("not an esnats event")) // sequence 2
	require.NoError(t, err)
	require.EqualValues(t, 2, ack.Sequence)
	ok[app.CartState](c, "cart.add", app.AddItem{Cart: "bob", SKU: "kiwi", Quantity: 2}) // sequence 3

	c.poll(10*time.Second, "the worker logs the failure and restarts the projection", func() (bool, string) {
		return strings.Count(logs.String(), "projection stopped; starting it again") >= 2, logs.String()
	})
	assert.Contains(t, logs.String(), "shop.cart.mallory at sequence 2", "the log names the subject and sequence")
	assert.EqualValues(t, 1, c.salesAt(1, time.Second).Position, "the read model stops before the poison event")
	c.fails("cart.summary", app.CartRef{Cart: "bob"}, 404, `unknown cart "bob": not in the read model`)

	s, err := js.Stream(t.Context(), "shop")
	require.NoError(t, err)
	require.NoError(t, s.DeleteMsg(t.Context(), 2))
	assert.Equal(t, map[string]int{"kiwi": 2}, c.summaryAt("bob", 1, 15*time.Second).Items)
	assert.EqualValues(t, 3, c.salesAt(3, 5*time.Second).Position)
}

// syncBuffer is a bytes.Buffer safe for concurrent use: a log sink.
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
