package securitytest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// TestAccountsIsolateStores: two services in two accounts (accounts.conf),
// each with a store of the same name. Neither sees nor writes the other's.
func TestAccountsIsolateStores(t *testing.T) {
	t.Parallel()
	srv := runServer(t, withVars(confFile(t, "accounts.conf"), map[string]string{
		"SALES_APP_PASSWORD":   "sales-secret",
		"SUPPORT_APP_PASSWORD": "support-secret",
	}))
	ctx := context.Background()
	ncSales, jsSales := embedded.MustJetStream(t, srv, nats.UserInfo("sales-app", "sales-secret"))
	ncSupport, jsSupport := embedded.MustJetStream(t, srv, nats.UserInfo("support-app", "support-secret"))

	// The sales service listens to everything it can.
	seen, err := ncSales.SubscribeSync(">")
	require.NoError(t, err)
	require.NoError(t, ncSales.Flush())

	open := func(js jetstream.JetStream) *stream.Store {
		s, err := stream.NewStore(ctx, js, stream.Config{Name: "orders", Registry: registry()})
		require.NoError(t, err)
		return s
	}
	sales, support := open(jsSales), open(jsSupport)
	alice := stream.Aggregate{Type: "cart", ID: "alice"}
	_, err = sales.Append(ctx, alice, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 1}}})
	require.NoError(t, err)
	res, err := support.Append(ctx, alice, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "ticket", Quantity: 7}}, {Data: CheckedOut{}}})
	require.NoError(t, err)
	assert.Equal(t, uint64(1), res.First.Sequence, "each account's store numbers its own events")

	load := func(s *stream.Store) []any {
		var out []any
		for ev, err := range s.Load(ctx, alice) {
			require.NoError(t, err)
			out = append(out, ev.Data)
		}
		return out
	}
	assert.Equal(t, []any{ItemAdded{SKU: "apple", Quantity: 1}}, load(sales))
	assert.Equal(t, []any{ItemAdded{SKU: "ticket", Quantity: 7}, CheckedOut{}}, load(support))

	// A raw publish on the same subject lands in the publisher's account.
	_, err = jsSupport.Publish(ctx, "orders.cart.alice", []byte("raw"))
	require.NoError(t, err)
	info, err := jsSales.Stream(ctx, "orders")
	require.NoError(t, err)
	assert.Equal(t, uint64(1), info.CachedInfo().State.Msgs)
	ai, err := jsSales.AccountInfo(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, ai.Streams)

	// Nothing of the support account's traffic reached the sales service:
	// only its own append and the JetStream API traffic of its connection.
	require.NoError(t, ncSupport.Flush())
	for {
		m, err := seen.NextMsg(100 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		require.NoError(t, err)
		if m.Subject == "orders.cart.alice" {
			assert.NotContains(t, string(m.Data), "ticket")
			assert.NotEqual(t, "raw", string(m.Data))
		}
	}
}

// TestReplicaAcrossAccounts: the BILLING account keeps a replica of SHOP's
// carts through the exports and imports of roles.conf; its user
// billing-app, with BILLING_APP's permissions, creates and reads it and can
// reach nothing else of SHOP.
func TestReplicaAcrossAccounts(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := context.Background()
	s.addItems(t, "alice@example.com", ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1})
	_, err := s.store.Append(ctx, stream.Aggregate{Type: "order", ID: "o-1"}, stream.ExpectNone(), []stream.EventData{{Data: CheckedOut{Lines: 2}}})
	require.NoError(t, err)

	b := connect(t, s.srv, billingUser, 5*time.Second)
	cfg := consumers.ReplicaConfig{
		Name:           "shop_carts",
		SourceStream:   storeName,
		SourceSubject:  storeName,
		AggregateTypes: []string{"cart"},
		SubjectPrefix:  storeName,
		External: &jetstream.ExternalStream{
			APIPrefix:     "ext.shop.api",
			DeliverPrefix: "ext.shop.deliver.billing",
		},
	}
	_, err = consumers.CreateReplica(ctx, b.js, cfg)
	require.NoError(t, err)
	cfg.Description = "carts of the shop" // a later start with another configuration: an update
	_, err = consumers.CreateReplica(ctx, b.js, cfg)
	require.NoError(t, err)
	replica, err := stream.OpenStore(ctx, b.js, stream.Config{Name: "shop_carts", Subject: storeName, Registry: registry()})
	require.NoError(t, err)
	s.addItems(t, "bob", ItemAdded{SKU: "fig", Quantity: 1})

	count := func() int {
		n := 0
		for ev, err := range replica.ReadAll(ctx) {
			require.NoError(t, err)
			assert.Equal(t, "cart", ev.Aggregate.Type, "only carts are exported")
			n++
		}
		return n
	}
	require.Eventually(t, func() bool { return count() == 3 }, 10*time.Second, 20*time.Millisecond)
	rev, err := replica.LastRevision(ctx, stream.Aggregate{Type: "cart", ID: "alice@example.com"})
	require.NoError(t, err)
	assert.Equal(t, uint64(2), rev.Version)
	b.noViolations(t)

	// Outside the export: no consumer on orders, no direct access.
	c := connect(t, s.srv, billingUser, 300*time.Millisecond)
	raw := c.nc
	_, err = raw.Request("ext.shop.api.CONSUMER.CREATE.shop.x.shop.order.*", []byte(`{"stream_name":"shop","config":{"name":"x","filter_subject":"shop.order.*"}}`), 300*time.Millisecond)
	require.Error(t, err)
	c.vio.waitFor(t, "ext.shop.api.CONSUMER.CREATE.shop.x.shop.order.*")
	octx, cancel := context.WithTimeout(ctx, time.Second) // see TestSetupWithoutPermission
	defer cancel()
	_, err = stream.OpenStore(octx, c.js, stream.Config{Name: storeName, Registry: registry()})
	require.Error(t, err)
	c.vio.waitFor(t, "$JS.API.STREAM.INFO.shop")
	c.cannotSubscribe(t, "_INBOX.>")
}

// TestWrongCredentials: wrong credentials are refused at connect, with
// nats.ErrAuthorization for a library user and exit code ExitConnect from
// the esnats command.
func TestWrongCredentials(t *testing.T) {
	t.Parallel()
	srv, ops := rolesServer(t)
	url := srv.ClientURL()

	// An NKey the server does not know.
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	stranger := user{nkeySeed: filepath.Join(t.TempDir(), "stranger.nk")}
	require.NoError(t, os.WriteFile(stranger.nkeySeed, seed, 0o600))

	for _, tc := range []struct {
		name string
		u    *user // nil: no credentials
	}{
		{"wrong password", &user{name: appUser.name, password: "not-the-password"}},
		{"unknown user", &user{name: "mallory", password: "secret"}},
		{"unknown nkey", &stranger},
		{"no credentials", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []nats.Option
			args := []string{"--context", natsContext(t, "_INBOX"), "-s", url}
			if tc.u != nil {
				opts = append(opts, tc.u.login(t))
				args = append(args, tc.u.cliLogin()...)
			}
			_, err := nats.Connect(url, opts...)
			require.ErrorIs(t, err, nats.ErrAuthorization)
			assert.EqualError(t, err, "nats: Authorization Violation")

			r := runCLI(t, append(args, "stores")...)
			assert.Equal(t, cli.ExitConnect, r.code)
			assert.Equal(t, "esnats: the server at "+url+" (from --server) refused the credentials (check --user/--password, --creds, --nkey or the context): nats: Authorization Violation\n", r.stderr)
		})
	}

	t.Run("the operator's nkey", func(t *testing.T) {
		r := runCLI(t, append([]string{"--context", natsContext(t, ops.inbox), "-s", url, "stores"}, ops.cliLogin()...)...)
		assert.Equal(t, cli.ExitOK, r.code, r.stderr)
	})

	t.Run("an unreadable seed file", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.nk")
		require.NoError(t, os.WriteFile(bad, []byte("not a seed"), 0o600))
		r := runCLI(t, "--context", natsContext(t, "_INBOX"), "-s", url, "--nkey", bad, "stores")
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.Equal(t, "esnats: reading --nkey "+bad+": nkeys: no nkey seed found\n", r.stderr)
	})
}

// TestSetupWithoutPermission: a missing JetStream API permission, as seen
// by the set-up calls. The server drops the request, so no answer comes:
// the calls retry until their context ends.
func TestSetupWithoutPermission(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	ctx := context.Background()
	// shop-ops-control may look the store up but not the snapshot bucket,
	// nor read events.
	c := connect(t, s.srv, opsControlUser, 300*time.Millisecond)

	t.Run("kv.OpenStore gives up on an unanswered request", func(t *testing.T) {
		octx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		_, err := kv.OpenStore(octx, c.js, kv.Config{})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.GreaterOrEqual(t, time.Since(start), time.Second)
		assert.EqualError(t, err, "esnats: open bucket (bucket esnats_snapshots): context deadline exceeded")
		c.vio.waitFor(t, "$JS.API.STREAM.INFO.KV_esnats_snapshots")

		// Without a deadline it gives up after jsapi.MaxAttempts attempts
		// of the JetStream timeout (300ms here) each.
		c2 := connect(t, s.srv, opsControlUser, 300*time.Millisecond)
		done := make(chan error, 1)
		start = time.Now()
		go func() {
			_, err := kv.OpenStore(context.Background(), c2.js, kv.Config{})
			done <- err
		}()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.GreaterOrEqual(t, time.Since(start), 5*300*time.Millisecond)
		case <-time.After(10 * time.Second):
			t.Fatal("kv.OpenStore did not give up")
		}
	})

	t.Run("LastRevision without STREAM.MSG.GET is refused at once", func(t *testing.T) {
		// The leader reads (stream/leader.go, leaderGet) watch the
		// connection for the server's refusal of their API subject: a
		// missing $JS.API.STREAM.MSG.GET.<stream> ends at once, with
		// ErrPermissionDenied, not after the timeouts.
		store, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		bob := stream.Aggregate{Type: "cart", ID: "bob"}
		start := time.Now()
		_, err = store.LastRevision(ctx, bob)
		assert.Less(t, time.Since(start), time.Second, "no timeout waited")
		require.ErrorIs(t, err, stream.ErrPermissionDenied)
		require.ErrorIs(t, err, nats.ErrPermissionViolation)
		var se *stream.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "shop.cart.bob", se.Subject)
		c.vio.waitFor(t, "$JS.API.STREAM.MSG.GET.shop")

		c2 := connect(t, s.srv, opsControlUser, 300*time.Millisecond)
		store2, err := stream.OpenStore(ctx, c2.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		start = time.Now()
		_, err = store2.LastRevision(context.Background(), bob)
		assert.Less(t, time.Since(start), time.Second, "no timeout waited")
		require.ErrorIs(t, err, stream.ErrPermissionDenied)
	})

	t.Run("a load without DIRECT.GET is refused at once", func(t *testing.T) {
		store, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: registry()})
		require.NoError(t, err)
		start := time.Now()
		for _, err := range store.Load(ctx, stream.Aggregate{Type: "cart", ID: "bob"}) {
			require.Error(t, err)
			assert.ErrorIs(t, err, stream.ErrPermissionDenied)
			assert.ErrorIs(t, err, nats.ErrPermissionViolation)
			assert.EqualError(t, err, `esnats: read shop.cart.bob at sequence 1: permission denied: nats: permissions violation: Permissions Violation for Publish to "$JS.API.DIRECT.GET.shop"`)
			var se *stream.Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, "shop.cart.bob", se.Subject)
		}
		assert.Less(t, time.Since(start), time.Second, "no timeout waited")
		c.vio.waitFor(t, "$JS.API.DIRECT.GET.shop")
	})
}

// TestCommandsWithoutPermission: esnats commands run as a user whose
// permissions lack what they need (the service's shop-app: no consumers,
// no listings, no control plane) fail at once with exit code 1, naming the
// refused subject, instead of waiting for --timeout (10s here) or, for
// the key listing of "esnats snapshots", until interrupted.
func TestCommandsWithoutPermission(t *testing.T) {
	t.Parallel()
	s := newShop(t)
	s.addItems(t, "alice@example.com", ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1})
	s.carts.Flush()
	const id = `\w+`
	for _, tc := range []struct {
		args []string
		want string // regexp of stderr
	}{
		{[]string{"snapshots"}, `^esnats: listing bucket "esnats_snapshots": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.KV_esnats_snapshots\.` + id + `\.\$KV\.esnats_snapshots\.>" \(a key listing creates a consumer on the bucket's stream KV_esnats_snapshots\)\n$`},
		{[]string{"snapshots", "cart"}, `^esnats: listing bucket "esnats_snapshots": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.KV_esnats_snapshots\.` + id + `\.\$KV\.esnats_snapshots\.cart\.\*" `},
		{[]string{"events", "shop"}, `^esnats: reading store "shop": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.shop\.` + id + `\.shop\.>" \(reading events creates a consumer on the store and pulls from it\)\n$`},
		{[]string{"events", "shop", "-f"}, `^esnats: reading store "shop": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.shop\.` + id + `\.shop\.>" `},
		{[]string{"aggregate", "shop", "cart", "alice@example.com"}, `^esnats: reading store "shop": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.CREATE\.shop\.` + id + `\.shop\.cart\.alice=40example=2Ecom" `},
		{[]string{"consumers", "shop"}, `^esnats: listing the consumers of store "shop": permission denied: this user may not publish to "\$JS\.API\.CONSUMER\.LIST\.shop"\n$`},
		{[]string{"stores"}, `^esnats: listing streams: permission denied: this user may not publish to "\$JS\.API\.STREAM\.LIST"\n$`},
		{[]string{"projections", "status", "shop"}, `^esnats: projections: finding the workers of store "shop": permission denied: the server refused to let this connection publish to "\$SRV\.PING\.esnats-projections"; the request was dropped, nothing was done\n$`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"--context", natsContext(t, appUser.inbox), "-s", s.srv.ClientURL(), "--timeout", "10s"}, appUser.cliLogin()...)
			start := time.Now()
			r := runCLIWithin(t, 30*time.Second, append(args, tc.args...)...)
			took := time.Since(start)
			assert.Equal(t, cli.ExitError, r.code, r.stderr)
			assert.Regexp(t, tc.want, r.stderr)
			assert.Less(t, took, 3*time.Second, "refused at once, not after --timeout 10s")
		})
	}
}
