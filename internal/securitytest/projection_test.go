package securitytest

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// applyItems counts items per product in a KV read model.
func applyItems(_ context.Context, tx *projections.KVBatch, ev *stream.Event) error {
	it, ok := ev.Data.(ItemAdded)
	if !ok {
		return nil
	}
	n := 0
	if v, found, err := tx.Get(it.SKU); err != nil {
		return err
	} else if found {
		n, _ = strconv.Atoi(string(v))
	}
	tx.Put(it.SKU, []byte(strconv.Itoa(n+it.Quantity)))
	return nil
}

// worker is a projection worker process running as shop-worker: the
// projection items-per-product into the KV bucket items (Fresh: items_v2),
// with its control plane.
type worker struct {
	c      *client
	store  *stream.Store
	runner *projections.Runner
}

func startWorker(t *testing.T, s *shop) *worker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := connect(t, s.srv, workerUser, 5*time.Second)
	store, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
	require.NoError(t, err)
	model, err := projections.NewKV(ctx, c.js, projections.KVConfig{Bucket: itemsKV}, applyItems)
	require.NoError(t, err)
	runner := projections.NewRunner(c.js, store, nil)
	require.NoError(t, runner.Add(projections.Projection{
		Name:           projection,
		AggregateTypes: []string{"cart"},
		Model:          model,
		Fresh: func(ctx context.Context) (projections.ReadModel, error) {
			return projections.NewKV(ctx, c.js, projections.KVConfig{Bucket: itemsKV2}, applyItems)
		},
		Consumer: consumers.Config{Retries: 1, Backoff: 10 * time.Millisecond, PinnedTTL: 2 * time.Second},
	}))
	_, err = runner.Serve(ctx, c.nc, projections.WithProgressInterval(50*time.Millisecond))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(15 * time.Second):
			t.Error("the worker did not stop")
		}
	})
	return &worker{c: c, store: store, runner: runner}
}

// count returns the read model's count of sku, -1 if absent.
func (w *worker) count(t testing.TB, sku string) int {
	t.Helper()
	m, err := w.runner.Model(projection)
	require.NoError(t, err)
	v, ok, err := m.(*projections.KV).Get(context.Background(), sku)
	require.NoError(t, err)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(string(v))
	require.NoError(t, err)
	return n
}

func (w *worker) waitCount(t testing.TB, sku string, want int) {
	t.Helper()
	require.Eventually(t, func() bool { return w.count(t, sku) == want }, 15*time.Second, 20*time.Millisecond,
		"read model count of %s: want %d", sku, want)
}

// cliArgs are the esnats command's connection flags for u: its password
// and its inbox prefix (from a nats context file).
func cliArgs(t testing.TB, s *shop, u user) []string {
	args := []string{"--context", natsContext(t, u.inbox), "-s", s.srv.ClientURL(), "--timeout", "2s"}
	return append(args, u.cliLogin()...)
}

// opsCLI runs the esnats command as u.
func opsCLI(t testing.TB, s *shop, u user, args ...string) cliResult {
	t.Helper()
	return runCLI(t, append(cliArgs(t, s, u), args...)...)
}

// TestProjectionRoles runs a projection worker, an operator with the esnats
// command and an operator who rebuilds and resets projections, each with
// its own permissions of roles.conf, against one service.
func TestProjectionRoles(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := context.Background()
	s.addItems(t, "alice@example.com", ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1})
	s.addItems(t, "bob", ItemAdded{SKU: "apple", Quantity: 1})
	s.carts.Flush()

	w := startWorker(t, s)
	w.waitCount(t, "apple", 3)

	t.Run("worker", func(t *testing.T) {
		// A poison event written by a client that may write the store's
		// subjects: the worker parks it in shop_dlq (which it creates) and
		// goes on.
		poison := nats.NewMsg("shop.cart.mallory")
		poison.Header.Set(stream.HeaderEventType, "NoSuchEvent")
		poison.Header.Set(stream.HeaderVersion, "1")
		poison.Data = []byte("garbage")
		_, err := s.app.js.PublishMsg(ctx, poison)
		require.NoError(t, err)
		s.addItems(t, "carol", ItemAdded{SKU: "fig", Quantity: 4})
		w.waitCount(t, "fig", 4)
		require.Eventually(t, func() bool {
			st, err := w.runner.StatusOf(ctx, projection)
			return err == nil && st.Parked == 1 && st.Lag == 0
		}, 10*time.Second, 20*time.Millisecond)
		dlq, err := w.c.js.Stream(ctx, "shop_dlq")
		require.NoError(t, err)
		assert.Equal(t, uint64(1), dlq.CachedInfo().State.Msgs)

		w.c.noViolations(t)

		// What the worker must not do.
		c := connect(t, s.srv, workerUser, 300*time.Millisecond)
		st, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		// ExpectAny reads the last revision first: refused already (and
		// retried until the context ends, see TestSetupWithoutPermission).
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = st.Append(actx, stream.Aggregate{Type: "cart", ID: "bob"}, stream.ExpectAny(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 100}}}, stream.WithMaxAttempts(1))
		cancel()
		require.Error(t, err, "the worker appended to the store")
		c.vio.waitFor(t, "$JS.API.STREAM.MSG.GET.shop")
		_, err = st.Append(ctx, stream.Aggregate{Type: "cart", ID: "bob"}, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 100}}}, stream.WithMaxAttempts(1))
		require.Error(t, err, "the worker appended to the store")
		c.vio.waitFor(t, "shop.cart.bob")
		// kv.OpenStore retries a lookup that gets no answer until its
		// context ends (see TestSetupWithoutPermission).
		octx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = kv.OpenStore(octx, c.js, kv.Config{})
		cancel()
		require.Error(t, err, "the worker opened the snapshot bucket")
		c.vio.waitFor(t, "$JS.API.STREAM.INFO.KV_esnats_snapshots")
		require.Error(t, c.js.DeleteStream(ctx, storeName))
		c.vio.waitFor(t, "$JS.API.STREAM.DELETE.shop")
		_, err = c.js.CreateStream(ctx, jetstream.StreamConfig{Name: "other", Subjects: []string{"shop_other.>"}})
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.STREAM.CREATE.other")
		c.cannotSubscribe(t, "_INBOX_shop_app.>")
		assert.Equal(t, 3, w.count(t, "apple"))
	})

	opsCLIRun := func(t *testing.T, args ...string) cliResult {
		t.Helper()
		r := opsCLI(t, s, s.ops, args...)
		require.Equal(t, cli.ExitOK, r.code, "esnats %s: %s", strings.Join(args, " "), r.stderr)
		// Nothing refused: the server's violations would be printed here.
		assert.Empty(t, r.stderr, "esnats %s", strings.Join(args, " "))
		return r
	}

	t.Run("operator", func(t *testing.T) {
		r := opsCLIRun(t, "stores")
		assert.Contains(t, r.stdout, "shop")
		r = opsCLIRun(t, "events", "shop", "--type", "cart")
		assert.Contains(t, r.stdout, "apple")
		// Following: until interrupted, with nothing refused either (the
		// ordered consumer is left to the server to remove).
		r = runCLIWithin(t, 2*time.Second, append(cliArgs(t, s, s.ops), "events", "shop", "-f")...)
		assert.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, "apple")
		assert.Empty(t, r.stderr)
		r = opsCLIRun(t, "aggregate", "shop", "cart", "alice@example.com")
		assert.Contains(t, r.stdout, "pear")
		r = opsCLIRun(t, "consumers", "shop")
		assert.Contains(t, r.stdout, projection)
		r = opsCLIRun(t, "projections", "status", "shop")
		assert.Contains(t, r.stdout, projection)
		start := time.Now()
		r = opsCLIRun(t, "snapshots")
		assert.Contains(t, r.stdout, "cart/alice@example.com")
		assert.Less(t, time.Since(start), 3*time.Second, "a refused delete of the listing's consumer waits for the JetStream timeout")

		// Without the inbox prefix no reply can reach the operator: the
		// server refuses the subscription to the default reply inbox, and
		// the command says so at once.
		noPrefix := user{inbox: "_INBOX", nkeySeed: s.ops.nkeySeed}
		start = time.Now()
		r = runCLI(t, append(cliArgs(t, s, noPrefix), "--timeout", "10s", "stores")...)
		took := time.Since(start)
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.Regexp(t, `^esnats: connected to `+regexp.QuoteMeta(s.srv.ClientURL())+`, but the server refuses this user a subscription to its reply inbox "_INBOX\.[^"]+" \(permission denied\), so no answer can reach it: pass the inbox prefix its permissions allow with --inbox-prefix \(or inbox_prefix in the nats context\)\n$`, r.stderr)
		assert.Less(t, took, 3*time.Second, "refused at once, not after --timeout 10s")
		// --inbox-prefix gives the prefix (over the context's).
		r = runCLI(t, append(cliArgs(t, s, noPrefix), "--inbox-prefix", s.ops.inbox, "stores")...)
		assert.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, "shop")
		assert.Empty(t, r.stderr)

		// Nothing can be written. The control requests are dropped by the
		// server, which tells the connection: the command fails at once,
		// naming the subject, instead of waiting for a reply that cannot
		// come (--timeout, 75s for a reset).
		start = time.Now()
		r = runCLI(t, append(cliArgs(t, s, s.ops), "--timeout", "10s", "projections", "rebuild", "shop", projection, "-q")...)
		took = time.Since(start)
		assert.Equal(t, cli.ExitError, r.code)
		assert.Regexp(t, `^esnats: projections: rebuild "items-per-product" on worker \w+: permission denied: the server refused to let this connection publish to "\$ESNATS\.PROJ\.shop\.REBUILD\.\w+"; the request was dropped, nothing was done\n$`, r.stderr)
		assert.Less(t, took, 3*time.Second, "refused at once, not after --timeout 10s")
		start = time.Now()
		r = runCLIWithin(t, 30*time.Second, append(cliArgs(t, s, s.ops), "projections", "reset", "shop", projection)...)
		took = time.Since(start)
		assert.Equal(t, cli.ExitError, r.code)
		assert.Regexp(t, `^esnats: projections: reset "items-per-product" on worker \w+: permission denied: the server refused to let this connection publish to "\$ESNATS\.PROJ\.shop\.RESET\.\w+"; the request was dropped, nothing was done\n$`, r.stderr)
		assert.Less(t, took, 3*time.Second, "refused at once, not after the reset's 75s")

		c := connect(t, s.srv, s.ops, 300*time.Millisecond)
		st, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		_, err = st.Append(ctx, stream.Aggregate{Type: "cart", ID: "bob"}, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 100}}}, stream.WithMaxAttempts(1))
		require.Error(t, err)
		c.vio.waitFor(t, "shop.cart.bob")
		require.NoError(t, c.nc.Publish("$KV.esnats_snapshots.cart.bob", []byte("x")))
		c.vio.waitFor(t, "$KV.esnats_snapshots.cart.bob")
		require.Error(t, c.js.DeleteConsumer(ctx, storeName, projection))
		c.vio.waitFor(t, "$JS.API.CONSUMER.DELETE.shop."+projection)
		require.Error(t, c.js.DeleteStream(ctx, storeName))
		c.vio.waitFor(t, "$JS.API.STREAM.DELETE.shop")
		_, err = c.js.Stream(ctx, storeName)
		require.NoError(t, err)
		err = func() error {
			s, err := c.js.Stream(ctx, storeName)
			if err != nil {
				return err
			}
			return s.Purge(ctx)
		}()
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.STREAM.PURGE.shop")
		c.cannotSubscribe(t, "_INBOX_shop_app.>")
		assert.Equal(t, 3, w.count(t, "apple"))
	})

	t.Run("control plane", func(t *testing.T) {
		// A reset of the exactly-once KV model purges its bucket and
		// replays the store into it.
		r := opsCLI(t, s, opsControlUser, "projections", "reset", "shop", projection, "--wait", "-q")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		w.waitCount(t, "apple", 3)

		// A rebuild into the fresh bucket items_v2, then a reset of that.
		r = opsCLI(t, s, opsControlUser, "projections", "rebuild", "shop", projection, "-q")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, "rebuilt")
		m, err := w.runner.Model(projection)
		require.NoError(t, err)
		assert.Equal(t, itemsKV2, m.(*projections.KV).Bucket())
		assert.Equal(t, 3, w.count(t, "apple"))
		r = opsCLI(t, s, opsControlUser, "projections", "reset", "shop", projection, "--wait", "-q")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		w.waitCount(t, "apple", 3)

		r = opsCLI(t, s, opsControlUser, "projections", "status", "shop")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, projection)
		w.c.noViolations(t)

		// The control plane operator reads nothing else.
		c := connect(t, s.srv, opsControlUser, 300*time.Millisecond)
		_, err = c.js.Stream(ctx, "shop_dlq")
		require.Error(t, err)
		c.vio.waitFor(t, "$JS.API.STREAM.INFO.shop_dlq")
		c.cannotSubscribe(t, "_INBOX_shop_app.>")
	})
}
