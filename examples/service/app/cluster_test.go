package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/examples/service/app"
)

// The service on a 3-node cluster with the compose cluster's settings
// (JetStream fsync always, everything R3): commands and queries over
// request/reply, errors, the read model catching up; then the node leading
// the event store's stream is stopped, with the API's and the worker's
// connections on it, and commands still succeed and the read model still
// follows.
func TestServiceOnAClusterSurvivesLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a 3-node cluster and stops a node (10-20 s)")
	}
	began := time.Now()
	c := embedded.RunCluster(t) // SyncAlways by default
	for _, n := range c.Nodes() {
		require.True(t, n.NATS().JetStreamConfig().SyncAlways, "node %s syncs every write", n.Name())
	}
	cfg := app.Config{
		Replicas: 3,
		// A quick fail-over of the projection's consumer (default 5s).
		Consumer: consumers.Config{PinnedTTL: 2 * time.Second},
	}

	// Create the store to learn which node leads it: the victim.
	_, js0 := embedded.MustJetStream(t, c)
	store, err := app.NewStore(t.Context(), js0, cfg)
	require.NoError(t, err)
	leader, err := c.WaitForStreamLeader(ctxTimeout(t, 10*time.Second), "", store.Name())
	require.NoError(t, err)
	victim := slices.Index(c.Nodes(), leader)
	require.GreaterOrEqual(t, victim, 0)
	t.Logf("cluster up and store created in %s; stream leader: node %d (%s)", since(began), victim, leader.Name())

	urls := c.ClientURLs()
	others := slices.Delete(slices.Clone(urls), victim, victim+1)
	// The API and the worker connect to the victim first, so that stopping
	// it cuts their connections too.
	victimFirst := strings.Join(append([]string{urls[victim]}, others...), ",")
	connect := func() (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(victimFirst, nats.DontRandomize(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		// An append in flight when its node stops is resent after this
		// timeout (default 5s).
		js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(2*time.Second))
		require.NoError(t, err)
		return nc, js
	}
	apiConn, workerConn := serve(t, connect, cfg)
	// The client talks to the other nodes: its requests and replies never
	// travel through the victim, so none is lost in flight.
	cnc, err := nats.Connect(strings.Join(others, ","), nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(cnc.Close)
	cl := newClient(t, cnc)

	st := ok[app.CartState](cl, "cart.add", app.AddItem{Cart: "alice", SKU: "apple", Quantity: 2})
	assert.EqualValues(t, 1, st.Version)
	ok[app.CartState](cl, "cart.add", app.AddItem{Cart: "alice", SKU: "pear", Quantity: 1})
	ok[app.CartState](cl, "cart.add", app.AddItem{Cart: "bob", SKU: "kiwi", Quantity: 3})
	st = ok[app.CartState](cl, "cart.remove", app.RemoveItem{Cart: "alice", SKU: "pear"})
	assert.Equal(t, app.CartState{Cart: "alice", Version: 3, Items: map[string]int{"apple": 2}, Quantity: 2}, st)
	st = ok[app.CartState](cl, "cart.checkout", app.CartRef{Cart: "bob"})
	assert.Equal(t, app.CartState{Cart: "bob", Version: 2, Items: map[string]int{"kiwi": 3}, Quantity: 3, CheckedOut: true}, st)
	cl.fails("cart.add", `{"cart":"alice","sku":"apple","quantity":2`, 400, "invalid JSON request", "unexpected EOF")
	cl.fails("cart.add", app.AddItem{Cart: "alice", SKU: "apple", Quantity: 0}, 400, "quantity must be positive")
	cl.fails("cart.get", app.CartRef{Cart: "nobody"}, 404, `unknown cart "nobody"`)
	cl.fails("cart.checkout", app.CartRef{Cart: "nobody"}, 404, `unknown cart "nobody"`)

	sum := cl.summaryAt("alice", 3, 15*time.Second)
	assert.Equal(t, map[string]int{"apple": 2}, sum.Items)
	assert.True(t, cl.summaryAt("bob", 2, 15*time.Second).CheckedOut)
	sales := cl.salesAt(5, 15*time.Second)
	assert.Equal(t, app.Sales{Units: map[string]int{"kiwi": 3}, Checkouts: 1, Position: 5}, sales)
	t.Logf("commands, errors and read model checked at %s", since(began))

	// A current follower takes over at once when the leader stops.
	require.NoError(t, c.WaitForStreamCurrent(ctxTimeout(t, 10*time.Second), "", store.Name()))
	c.StopNode(victim)
	stopped := time.Now()
	// A request sent in the instant the node dies can be lost (the other
	// nodes may still route it to the stopped node's subscription): a
	// client retries what is safe to retry, a ping, until both services
	// answer from their new nodes, and then sends its commands.
	cl.waitForService(app.APIService, 20*time.Second)
	cl.waitForService(app.ViewsService, 20*time.Second)
	t.Logf("services answer again %s after the stop", since(stopped))

	st = ok[app.CartState](cl, "cart.add", app.AddItem{Cart: "carol", SKU: "fig", Quantity: 4})
	assert.Equal(t, app.CartState{Cart: "carol", Version: 1, Items: map[string]int{"fig": 4}, Quantity: 4}, st)
	t.Logf("first command after the stop answered in %s", since(stopped))
	st = ok[app.CartState](cl, "cart.checkout", app.CartRef{Cart: "alice"})
	assert.Equal(t, app.CartState{Cart: "alice", Version: 4, Items: map[string]int{"apple": 2}, Quantity: 2, CheckedOut: true}, st)
	assert.Equal(t, st, ok[app.CartState](cl, "cart.get", app.CartRef{Cart: "alice"}))
	cl.fails("cart.add", app.AddItem{Cart: "alice", SKU: "fig", Quantity: 1}, 400, "cart is checked out")
	cl.fails("cart.get", app.CartRef{Cart: "nobody"}, 404, `unknown cart "nobody"`)
	newLeader, err := c.StreamLeader("", store.Name())
	require.NoError(t, err)
	assert.NotEqual(t, leader.Name(), newLeader.Name())

	// The read model follows: the worker reconnected to another node and
	// took its consumer back.
	assert.Equal(t, map[string]int{"fig": 4}, cl.summaryAt("carol", 1, 25*time.Second).Items)
	assert.True(t, cl.summaryAt("alice", 4, 25*time.Second).CheckedOut)
	sales = cl.salesAt(7, 25*time.Second)
	assert.Equal(t, app.Sales{Units: map[string]int{"kiwi": 3, "apple": 2}, Checkouts: 2, Position: 7}, sales)
	for name, nc := range map[string]*nats.Conn{"API": apiConn, "worker": workerConn} {
		assert.NotZero(t, nc.Stats().Reconnects, "the %s's connection was cut and reconnected", name)
		assert.NotEqual(t, leader.Name(), nc.ConnectedServerName(), "the %s is on another node", name)
	}
	t.Logf("after the stop: commands and read model checked in %s (total %s)", since(stopped), since(began))
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
