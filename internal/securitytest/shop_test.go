package securitytest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// The store of docs/security.md: "shop" (subjects shop.>), its snapshots in
// the default bucket, a projection "items-per-product" into the KV bucket
// "items" (rebuilt into "items_v2").
const (
	storeName  = "shop"
	projection = "items-per-product"
	itemsKV    = "items"
	itemsKV2   = "items_v2"
)

// The users of roles.conf, with the inbox prefix each must connect with.
var (
	appUser        = user{name: "shop-app", password: "app-secret", inbox: "_INBOX_shop_app"}
	readerUser     = user{name: "shop-reader", password: "reader-secret", inbox: "_INBOX_shop_reader"}
	workerUser     = user{name: "shop-worker", password: "worker-secret", inbox: "_INBOX_shop_worker"}
	opsControlUser = user{name: "shop-ops-control", password: "control-secret", inbox: "_INBOX_shop_ops"}
	billingUser    = user{name: "billing-app", password: "billing-secret", inbox: "_INBOX_billing_app"}
)

// rolesServer runs a server configured by roles.conf of docs/security.md,
// the passwords and the public NKey it takes from the environment given as
// variables. It returns the operator's login: a new NKey.
func rolesServer(t testing.TB) (*embedded.Server, user) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	ops := user{name: "shop-ops", inbox: "_INBOX_shop_ops", nkeySeed: filepath.Join(t.TempDir(), "shop-ops.nk")}
	require.NoError(t, os.WriteFile(ops.nkeySeed, seed, 0o600))
	return runServer(t, withVars(confFile(t, "roles.conf"), map[string]string{
		"SHOP_OPS_NKEY":             pub,
		"SHOP_APP_PASSWORD":         appUser.password,
		"SHOP_READER_PASSWORD":      readerUser.password,
		"SHOP_WORKER_PASSWORD":      workerUser.password,
		"SHOP_OPS_CONTROL_PASSWORD": opsControlUser.password,
		"BILLING_APP_PASSWORD":      billingUser.password,
	})), ops
}

// Events and the aggregate of the tests.

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

type Cart struct {
	aggregate.Root
	Items map[string]int `json:"items"`
	Done  bool           `json:"done"`
}

func newCart(string) *Cart { return &Cart{Items: map[string]int{}} }

func (c *Cart) Apply(e any) {
	switch e := e.(type) {
	case ItemAdded:
		c.Items[e.SKU] += e.Quantity
	case CheckedOut:
		c.Done = true
	}
}

// shop is the service's view of the store, set up as shop-app.
type shop struct {
	srv   *embedded.Server
	ops   user // the operator's NKey login
	app   *client
	store *stream.Store
	snaps *kv.Store
	carts *aggregate.Repository[*Cart]
}

// newShop starts a roles.conf server and sets the store up as the service
// does at every start (stream.NewStore, kv.NewStore), with a repository
// that snapshots every 2 events.
func newShop(t testing.TB) *shop {
	t.Helper()
	srv, ops := rolesServer(t)
	app := connect(t, srv, appUser, 5*time.Second)
	ctx := context.Background()
	store, err := stream.NewStore(ctx, app.js, stream.Config{Name: storeName, Registry: registry()})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, app.js, kv.Config{})
	require.NoError(t, err)
	carts, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: store, Type: "cart", New: newCart, Snapshots: snaps, SnapshotEvery: 2})
	require.NoError(t, err)
	t.Cleanup(carts.Flush)
	return &shop{srv: srv, ops: ops, app: app, store: store, snaps: snaps, carts: carts}
}

// addItems runs a command adding items to a cart.
func (s *shop) addItems(t testing.TB, cart string, items ...ItemAdded) {
	t.Helper()
	require.NoError(t, s.carts.Update(context.Background(), cart, func(c *Cart) error {
		for _, it := range items {
			c.Record(it)
		}
		return nil
	}))
}
