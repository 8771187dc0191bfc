package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// How long a test waits for the server to copy events: generous, the copy
// normally takes milliseconds.
const replWait = 15 * time.Second

type replItemAdded struct {
	SKU  string `json:"sku"`
	Note string `json:"note,omitempty"`
}

type replOrderPlaced struct {
	Total int `json:"total"`
}

func replRegistry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[replItemAdded](reg, "ItemAdded")
	stream.MustRegister[replOrderPlaced](reg, "OrderPlaced")
	return reg
}

func replCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// replAppend appends n events to agg, ExpectAny, and returns them as stored.
func replAppend(t *testing.T, ctx context.Context, s *stream.Store, agg stream.Aggregate, n int) {
	t.Helper()
	evs := make([]stream.EventData, n)
	for i := range evs {
		if agg.Type == "order" {
			evs[i] = stream.EventData{Data: replOrderPlaced{Total: 10 * (i + 1)}}
		} else {
			evs[i] = stream.EventData{Data: replItemAdded{SKU: fmt.Sprintf("sku-%d", i)}, Metadata: map[string]string{"tenant": "t1"}}
		}
	}
	_, err := s.Append(ctx, agg, stream.ExpectAny(), evs, stream.WithCorrelationID("corr-"+agg.ID))
	require.NoError(t, err)
}

func replLoad(t *testing.T, ctx context.Context, s *stream.Store, agg stream.Aggregate) []*stream.Event {
	t.Helper()
	var out []*stream.Event
	for ev, err := range s.Load(ctx, agg) {
		require.NoError(t, err)
		out = append(out, ev)
	}
	return out
}

// replSameEvents asserts that the replica holds the same events as the
// store: ids, types, versions, times, metadata and payloads (positions are
// the replica's own when renumbered).
func replSameEvents(t *testing.T, want, got []*stream.Event, sameSeq bool) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		w, g := want[i], got[i]
		assert.Equal(t, w.ID, g.ID)
		assert.Equal(t, w.Type, g.Type)
		assert.Equal(t, w.Aggregate, g.Aggregate)
		assert.Equal(t, w.Version, g.Version)
		assert.True(t, w.Time.Equal(g.Time), "time %s vs %s", w.Time, g.Time)
		assert.Equal(t, w.CorrelationID, g.CorrelationID)
		assert.Equal(t, w.Metadata, g.Metadata)
		assert.Equal(t, w.Data, g.Data)
		if sameSeq {
			assert.Equal(t, w.Sequence, g.Sequence)
		}
	}
}

// replWaitMsgs waits until the stream holds n messages.
func replWaitMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream, name string, n uint64) {
	t.Helper()
	var last string
	ok := assert.Eventually(t, func() bool {
		st, err := js.Stream(ctx, name)
		if err != nil {
			last = err.Error()
			return false
		}
		info := st.CachedInfo()
		last = fmt.Sprintf("msgs=%d", info.State.Msgs)
		if info.Mirror != nil && info.Mirror.Error != nil {
			last += " mirror error: " + info.Mirror.Error.Error()
		}
		for _, s := range info.Sources {
			if s.Error != nil {
				last += " source error: " + s.Error.Error()
			}
		}
		return info.State.Msgs == n
	}, replWait, 10*time.Millisecond)
	require.True(t, ok, "stream %s: want %d messages, last seen %s", name, n, last)
}

func TestReplicaSameAccount(t *testing.T) {
	ctx := replCtx(t)
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	reg := replRegistry()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "SHOP", Subject: "shop", Registry: reg})
	require.NoError(t, err)

	alice := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	bob := stream.Aggregate{Type: "cart", ID: "bob"}
	order := stream.Aggregate{Type: "order", ID: "o-1"}
	replAppend(t, ctx, store, alice, 3)
	replAppend(t, ctx, store, order, 2)
	replAppend(t, ctx, store, bob, 1)

	cfg := consumers.ReplicaConfig{
		Name:           "MIRRORSHOP",
		SourceStream:   "SHOP",
		SourceSubject:  "shop",
		AggregateTypes: []string{"cart"},
		SubjectPrefix:  "mirrorshop",
		Duplicates:     100 * time.Millisecond, // short, so that a second copy would not be hidden by dedupe
	}
	start := time.Now()
	_, err = consumers.CreateReplica(ctx, js, cfg)
	require.NoError(t, err)
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 4)
	t.Logf("initial copy of 4 events: %s", time.Since(start))

	replica, err := stream.OpenStore(ctx, js, stream.Config{Name: "MIRRORSHOP", Subject: "mirrorshop", Registry: reg})
	require.NoError(t, err)
	for _, agg := range []stream.Aggregate{alice, bob} {
		got := replLoad(t, ctx, replica, agg)
		replSameEvents(t, replLoad(t, ctx, store, agg), got, false)
		require.NotEmpty(t, got)
		assert.True(t, strings.HasPrefix(got[0].Subject, "mirrorshop.cart."), got[0].Subject)
	}
	rev, err := replica.LastRevision(ctx, alice)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), rev.Version)
	// No orders in the replica.
	assert.Empty(t, replLoad(t, ctx, replica, order))
	n := 0
	for ev, err := range replica.ReadAll(ctx) {
		require.NoError(t, err)
		assert.Equal(t, "cart", ev.Aggregate.Type)
		n++
	}
	assert.Equal(t, 4, n)

	// Events appended later arrive.
	start = time.Now()
	replAppend(t, ctx, store, alice, 2)
	replAppend(t, ctx, store, order, 1)
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 6)
	t.Logf("live copy: %s", time.Since(start))
	replSameEvents(t, replLoad(t, ctx, store, alice), replLoad(t, ctx, replica, alice), false)

	// Idempotent: the same configuration changes nothing.
	before, err := js.Stream(ctx, "MIRRORSHOP")
	require.NoError(t, err)
	again, err := consumers.CreateReplica(ctx, js, cfg)
	require.NoError(t, err)
	assert.Equal(t, before.CachedInfo().Config, again.CachedInfo().Config)

	// Adding a type copies that type's history and nothing twice, after the
	// duplicate window is long gone.
	time.Sleep(3 * cfg.Duplicates)
	cfg.AggregateTypes = []string{"order", "cart"}
	_, err = consumers.CreateReplica(ctx, js, cfg)
	require.NoError(t, err)
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 9)
	replSameEvents(t, replLoad(t, ctx, store, order), replLoad(t, ctx, replica, order), false)
	time.Sleep(200 * time.Millisecond) // a second copy of the carts would show up by now
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 9)

	// Changes that would copy events again are refused.
	for name, mod := range map[string]func(*consumers.ReplicaConfig){
		"new prefix": func(c *consumers.ReplicaConfig) { c.SubjectPrefix = "othershop" },
		"all types":  func(c *consumers.ReplicaConfig) { c.AggregateTypes = nil },
		"source to mirror": func(c *consumers.ReplicaConfig) {
			c.Mirror, c.Duplicates, c.AggregateTypes, c.SubjectPrefix = true, 0, nil, ""
		},
		"memory":        func(c *consumers.ReplicaConfig) { c.Memory = true },
		"not a replica": func(c *consumers.ReplicaConfig) { c.Name, c.SourceStream = "SHOP", "MIRRORSHOP" },
	} {
		c := cfg
		mod(&c)
		_, err := consumers.CreateReplica(ctx, js, c)
		require.ErrorIs(t, err, consumers.ErrReplicaConfig, name)
		t.Logf("%s: %v", name, err)
	}
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 9)

	// A mirror of the whole store keeps its sequences.
	_, err = consumers.CreateReplica(ctx, js, consumers.ReplicaConfig{Name: "SHOP_MIRROR", SourceStream: "SHOP", SourceSubject: "shop", Mirror: true})
	require.NoError(t, err)
	replWaitMsgs(t, ctx, js, "SHOP_MIRROR", 9)
	origin, err := js.Stream(ctx, "SHOP")
	require.NoError(t, err)
	mirror, err := js.Stream(ctx, "SHOP_MIRROR")
	require.NoError(t, err)
	for seq := uint64(1); seq <= 9; seq++ {
		want, err := origin.GetMsg(ctx, seq)
		require.NoError(t, err)
		got, err := mirror.GetMsg(ctx, seq)
		require.NoError(t, err, "sequence %d", seq)
		assert.Equal(t, want.Subject, got.Subject)
		assert.Equal(t, want.Data, got.Data)
		assert.Equal(t, want.Header.Get("Nats-Msg-Id"), got.Header.Get("Nats-Msg-Id"))
		assert.Equal(t, want.Header.Get("Esnats-Version"), got.Header.Get("Esnats-Version"))
	}
	// A mirror cannot be opened as a store (no subjects, no atomic publish).
	_, err = stream.OpenStore(ctx, js, stream.Config{Name: "SHOP_MIRROR", Subject: "shop", Registry: reg})
	require.ErrorIs(t, err, stream.ErrStoreConfig)
	// In the same account the server makes the mirror answer the store's
	// direct gets as well (MirrorDirect): loads from the store stay complete
	// because the mirror is an exact copy (a filtered or renamed one is
	// refused by Validate for this reason).
	assert.True(t, mirror.CachedInfo().Config.MirrorDirect)
	want := replLoad(t, ctx, store, alice)
	for range 50 {
		require.Len(t, replLoad(t, ctx, store, alice), len(want))
	}
	_, err = consumers.CreateReplica(ctx, js, consumers.ReplicaConfig{Name: "SHOP_MIRROR", SourceStream: "SHOP", SourceSubject: "shop", Mirror: true, AggregateTypes: []string{"order"}})
	require.ErrorIs(t, err, consumers.ErrReplicaConfig)

	// After a server restart the copies resume where they stopped.
	require.NoError(t, srv.Restart())
	replAppend(t, ctx, store, bob, 2) // waits for the client to reconnect
	start = time.Now()
	replWaitMsgs(t, ctx, js, "MIRRORSHOP", 11)
	replWaitMsgs(t, ctx, js, "SHOP_MIRROR", 11)
	t.Logf("copy after restart: %s", time.Since(start))
	replSameEvents(t, replLoad(t, ctx, store, bob), replLoad(t, ctx, replica, bob), false)
}

// The cross-account configuration of docs/replication.md: account SHOP owns
// the store, account BILLING replicates its carts and nothing else.
const replAccountsConf = `
accounts {
  SHOP {
    jetstream: enabled
    users: [ { user: shop, password: shop-secret } ]
    exports: [
      # create the copying consumer on stream SHOP, filtered on carts only
      { service: "$JS.API.CONSUMER.CREATE.SHOP.*.shop.cart.*", accounts: [ BILLING ] }
      # flow-control replies from the replica to that consumer
      { service: "$JS.FC.SHOP.>", accounts: [ BILLING ] }
      # the consumer's deliveries
      { stream: "ext.shop.deliver.billing.>", accounts: [ BILLING ] }
    ]
  }
  BILLING {
    jetstream: enabled
    users: [ { user: billing, password: billing-secret } ]
    imports: [
      { service: { account: SHOP, subject: "$JS.API.CONSUMER.CREATE.SHOP.*.shop.cart.*" }, to: "ext.shop.api.CONSUMER.CREATE.SHOP.*.shop.cart.*" }
      { service: { account: SHOP, subject: "$JS.FC.SHOP.>" } }
      { stream: { account: SHOP, subject: "ext.shop.deliver.billing.>" } }
    ]
  }
}
`

func TestReplicaCrossAccount(t *testing.T) {
	ctx := replCtx(t)
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			require.NoError(t, so.ProcessConfigString(replAccountsConf))
		}
	})
	_, jsShop := embedded.MustJetStream(t, srv, nats.UserInfo("shop", "shop-secret"))
	ncBilling, jsBilling := embedded.MustJetStream(t, srv, nats.UserInfo("billing", "billing-secret"))
	reg := replRegistry()

	store, err := stream.NewStore(ctx, jsShop, stream.Config{Name: "SHOP", Subject: "shop", Registry: reg})
	require.NoError(t, err)
	alice := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	order := stream.Aggregate{Type: "order", ID: "o-1"}
	replAppend(t, ctx, store, alice, 2)
	replAppend(t, ctx, store, order, 2)

	start := time.Now()
	_, err = consumers.CreateReplica(ctx, jsBilling, consumers.ReplicaConfig{
		Name:           "SHOP_CARTS",
		SourceStream:   "SHOP",
		SourceSubject:  "shop",
		AggregateTypes: []string{"cart"},
		SubjectPrefix:  "shop", // keep the subjects, and open the replica as a store
		External:       &jetstream.ExternalStream{APIPrefix: "ext.shop.api", DeliverPrefix: "ext.shop.deliver.billing"},
	})
	require.NoError(t, err)
	replWaitMsgs(t, ctx, jsBilling, "SHOP_CARTS", 2)
	t.Logf("cross-account initial copy: %s", time.Since(start))

	// A mirror of the carts in BILLING keeps SHOP's sequences (with gaps
	// where the orders are). The same export serves it.
	mirrorCfg := consumers.ReplicaConfig{
		Name:           "SHOP_CARTS_MIRROR",
		SourceStream:   "SHOP",
		SourceSubject:  "shop",
		AggregateTypes: []string{"cart"},
		Mirror:         true,
		External:       &jetstream.ExternalStream{APIPrefix: "ext.shop.api", DeliverPrefix: "ext.shop.deliver.billing.mirror"},
	}
	_, err = consumers.CreateReplica(ctx, jsBilling, mirrorCfg)
	require.NoError(t, err)
	replWaitMsgs(t, ctx, jsBilling, "SHOP_CARTS_MIRROR", 2)
	mirror, err := jsBilling.Stream(ctx, "SHOP_CARTS_MIRROR")
	require.NoError(t, err)
	for ev, err := range store.Load(ctx, alice) {
		require.NoError(t, err)
		got, err := mirror.GetMsg(ctx, ev.Sequence)
		require.NoError(t, err)
		assert.Equal(t, ev.Subject, got.Subject)
		assert.Equal(t, ev.ID, got.Header.Get("Nats-Msg-Id"))
	}
	// A mirror's origin cannot change.
	mirrorCfg.External = &jetstream.ExternalStream{APIPrefix: "ext.other.api", DeliverPrefix: "ext.shop.deliver.billing.mirror"}
	_, err = consumers.CreateReplica(ctx, jsBilling, mirrorCfg)
	require.ErrorIs(t, err, consumers.ErrReplicaConfig)

	replica, err := stream.OpenStore(ctx, jsBilling, stream.Config{Name: "SHOP_CARTS", Subject: "shop", Registry: reg})
	require.NoError(t, err)
	replSameEvents(t, replLoad(t, ctx, store, alice), replLoad(t, ctx, replica, alice), false)
	assert.Empty(t, replLoad(t, ctx, replica, order))

	// Enough bytes for the server to use flow control across the accounts.
	big := strings.Repeat("x", 2000)
	for b := 0; b < 3; b++ {
		reqs := make([]stream.AppendRequest, 0, 500)
		for i := 0; i < 500; i++ {
			reqs = append(reqs, stream.AppendRequest{
				Aggregate: stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c-%d-%d", b, i)},
				Expect:    stream.ExpectNone(),
				Events:    []stream.EventData{{Data: replItemAdded{SKU: "bulk", Note: big}}},
			})
		}
		_, err := store.AppendBatch(ctx, reqs)
		require.NoError(t, err)
	}
	replAppend(t, ctx, store, order, 1)
	start = time.Now()
	replWaitMsgs(t, ctx, jsBilling, "SHOP_CARTS", 1502)
	t.Logf("cross-account copy of 1500 events of 2 KB: %s", time.Since(start))
	replWaitMsgs(t, ctx, jsBilling, "SHOP_CARTS_MIRROR", 1502)
	lastCart := stream.Aggregate{Type: "cart", ID: "c-2-499"}
	rev, err := store.LastRevision(ctx, lastCart)
	require.NoError(t, err)
	require.Greater(t, rev.Sequence, uint64(1502)) // after the orders' gap
	got, err := mirror.GetMsg(ctx, rev.Sequence)
	require.NoError(t, err)
	assert.Equal(t, "shop.cart.c-2-499", got.Subject)

	// BILLING cannot read SHOP's stream by itself: its own JetStream does
	// not know it, and through the import it may only create consumers on
	// carts.
	_, err = jsBilling.Stream(ctx, "SHOP")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	viaImport, err := jetstream.NewWithAPIPrefix(ncBilling, "ext.shop.api")
	require.NoError(t, err)
	_, err = viaImport.Stream(ctx, "SHOP")
	require.ErrorIs(t, err, nats.ErrNoResponders)
	t.Logf("stream info through the import: %v", err)
	_, err = viaImport.CreateConsumer(ctx, "SHOP", jetstream.ConsumerConfig{FilterSubject: "shop.order.*"})
	require.ErrorIs(t, err, nats.ErrNoResponders)
	_, err = viaImport.CreateConsumer(ctx, "SHOP", jetstream.ConsumerConfig{})
	require.ErrorIs(t, err, nats.ErrNoResponders)
	_, err = viaImport.CreateConsumer(ctx, "SHOP", jetstream.ConsumerConfig{FilterSubjects: []string{"shop.cart.*", "shop.order.*"}})
	require.ErrorIs(t, err, nats.ErrNoResponders)
	// What the export grants: consumers on carts (the server checks that the
	// filter in the subject is the consumer's).
	_, err = viaImport.CreateConsumer(ctx, "SHOP", jetstream.ConsumerConfig{FilterSubject: "shop.cart.*", InactiveThreshold: time.Second})
	require.NoError(t, err)
	assert.Empty(t, replLoad(t, ctx, replica, order))
	msg, err := ncBilling.Request("ext.shop.api.DIRECT.GET.SHOP", []byte(`{"seq":1}`), time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders, "direct get answered: %v", msg)
}

func TestReplicaConfigValidation(t *testing.T) {
	ok := consumers.ReplicaConfig{Name: "R", SourceStream: "SHOP"}
	ext := &jetstream.ExternalStream{APIPrefix: "ext.api", DeliverPrefix: "ext.deliver"}
	for name, tc := range map[string]struct {
		mod  func(*consumers.ReplicaConfig)
		name bool // also an ErrInvalidName
	}{
		"no name":              {mod: func(c *consumers.ReplicaConfig) { c.Name = "" }, name: true},
		"bad name":             {mod: func(c *consumers.ReplicaConfig) { c.Name = "a.b" }, name: true},
		"no source":            {mod: func(c *consumers.ReplicaConfig) { c.SourceStream = "" }, name: true},
		"bad source subject":   {mod: func(c *consumers.ReplicaConfig) { c.SourceSubject = "shop.*" }, name: true},
		"empty subject token":  {mod: func(c *consumers.ReplicaConfig) { c.SubjectPrefix = "a..b" }, name: true},
		"bad aggregate type":   {mod: func(c *consumers.ReplicaConfig) { c.AggregateTypes = []string{"cart", "or.der"} }, name: true},
		"empty aggregate type": {mod: func(c *consumers.ReplicaConfig) { c.AggregateTypes = []string{""} }, name: true},
		"duplicate type":       {mod: func(c *consumers.ReplicaConfig) { c.AggregateTypes = []string{"cart", "cart"} }},
		"copies itself":        {mod: func(c *consumers.ReplicaConfig) { c.Name = "SHOP" }},
		"prefix overlaps":      {mod: func(c *consumers.ReplicaConfig) { c.SubjectPrefix = "SHOP" }},
		"prefix inside store":  {mod: func(c *consumers.ReplicaConfig) { c.SubjectPrefix = "SHOP.copy" }},
		"store inside prefix":  {mod: func(c *consumers.ReplicaConfig) { c.SourceSubject, c.SubjectPrefix = "a.b", "a" }},
		"local mirror renamed": {mod: func(c *consumers.ReplicaConfig) { c.Mirror, c.SubjectPrefix = true, "copy" }},
		"local mirror of type": {mod: func(c *consumers.ReplicaConfig) { c.Mirror, c.AggregateTypes = true, []string{"cart"} }},
		"external and domain":  {mod: func(c *consumers.ReplicaConfig) { c.External, c.Domain = ext, "hub" }},
		"bad domain":           {mod: func(c *consumers.ReplicaConfig) { c.Domain = "a.b" }},
		"no api prefix":        {mod: func(c *consumers.ReplicaConfig) { c.External = &jetstream.ExternalStream{DeliverPrefix: "d"} }},
		"wildcard api prefix":  {mod: func(c *consumers.ReplicaConfig) { c.External = &jetstream.ExternalStream{APIPrefix: "ext.*"} }},
		"bad deliver prefix": {mod: func(c *consumers.ReplicaConfig) {
			c.External = &jetstream.ExternalStream{APIPrefix: "x", DeliverPrefix: "d.>"}
		}},
		"replicas":            {mod: func(c *consumers.ReplicaConfig) { c.Replicas = 7 }},
		"negative duplicates": {mod: func(c *consumers.ReplicaConfig) { c.Duplicates = -time.Second }},
		"tiny duplicates":     {mod: func(c *consumers.ReplicaConfig) { c.Duplicates = time.Millisecond }},
		"mirror duplicates":   {mod: func(c *consumers.ReplicaConfig) { c.Mirror, c.Duplicates = true, time.Minute }},
		"negative size":       {mod: func(c *consumers.ReplicaConfig) { c.MaxEventSize = -1 }},
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			require.ErrorIs(t, err, consumers.ErrReplicaConfig)
			if tc.name {
				require.ErrorIs(t, err, stream.ErrInvalidName)
			}
			_, err2 := c.StreamConfig()
			require.Equal(t, err, err2)
			_, err3 := consumers.CreateReplica(context.Background(), nil, c) // no I/O before validation
			require.ErrorIs(t, err3, consumers.ErrReplicaConfig)
		})
	}
}

func TestReplicaStreamConfig(t *testing.T) {
	t.Run("source of some types under another prefix", func(t *testing.T) {
		sc, err := consumers.ReplicaConfig{
			Name: "R", SourceStream: "SHOP", SourceSubject: "shop",
			AggregateTypes: []string{"cart", "order"}, SubjectPrefix: "copy",
		}.StreamConfig()
		require.NoError(t, err)
		assert.Equal(t, []string{"copy.>"}, sc.Subjects)
		assert.Equal(t, jetstream.FileStorage, sc.Storage)
		assert.Equal(t, jetstream.LimitsPolicy, sc.Retention)
		assert.Equal(t, jetstream.DiscardNew, sc.Discard)
		assert.True(t, sc.AllowDirect)
		assert.True(t, sc.AllowAtomicPublish)
		assert.Zero(t, sc.MaxAge)
		assert.Equal(t, int64(-1), sc.MaxBytes)
		assert.Equal(t, stream.DefaultDuplicates, sc.Duplicates)
		assert.Equal(t, int32(stream.DefaultMaxEventSize), sc.MaxMsgSize)
		assert.Equal(t, 1, sc.Replicas)
		assert.Nil(t, sc.Mirror)
		require.Len(t, sc.Sources, 2)
		assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "shop.cart.*", Destination: "copy.cart.{{wildcard(1)}}"}}, sc.Sources[0].SubjectTransforms)
		assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "shop.order.*", Destination: "copy.order.{{wildcard(1)}}"}}, sc.Sources[1].SubjectTransforms)
	})
	t.Run("whole store, subjects kept", func(t *testing.T) {
		sc, err := consumers.ReplicaConfig{Name: "R", SourceStream: "SHOP", Memory: true, Replicas: 3}.StreamConfig()
		require.NoError(t, err)
		assert.Empty(t, sc.Subjects)
		assert.False(t, sc.AllowAtomicPublish)
		assert.Equal(t, jetstream.MemoryStorage, sc.Storage)
		assert.Equal(t, 3, sc.Replicas)
		require.Len(t, sc.Sources, 1)
		assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "SHOP.>"}}, sc.Sources[0].SubjectTransforms)
	})
	t.Run("mirror in another domain", func(t *testing.T) {
		sc, err := consumers.ReplicaConfig{Name: "SHOP", SourceStream: "SHOP", Domain: "hub", Mirror: true, AggregateTypes: []string{"cart", "order"}}.StreamConfig()
		require.NoError(t, err)
		require.NotNil(t, sc.Mirror)
		assert.Empty(t, sc.Sources)
		assert.Empty(t, sc.Subjects)
		assert.False(t, sc.AllowAtomicPublish)
		assert.Zero(t, sc.Duplicates)
		assert.Equal(t, &jetstream.ExternalStream{APIPrefix: "$JS.hub.API"}, sc.Mirror.External)
		assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "SHOP.cart.*"}, {Source: "SHOP.order.*"}}, sc.Mirror.SubjectTransforms)
	})
	t.Run("same name and prefix in another account", func(t *testing.T) {
		sc, err := consumers.ReplicaConfig{
			Name: "SHOP", SourceStream: "SHOP", SubjectPrefix: "SHOP", AggregateTypes: []string{"cart"},
			External: &jetstream.ExternalStream{APIPrefix: "a.api", DeliverPrefix: "a.deliver"},
		}.StreamConfig()
		require.NoError(t, err)
		assert.Equal(t, []string{"SHOP.>"}, sc.Subjects)
		require.Len(t, sc.Sources, 1)
		assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "SHOP.cart.*"}}, sc.Sources[0].SubjectTransforms)
		assert.Equal(t, "a.api", sc.Sources[0].External.APIPrefix)
	})
}

// A replica whose MaxEventSize is below the store's is refused by the server,
// in a *stream.Error.
func TestReplicaServerRefusal(t *testing.T) {
	ctx := replCtx(t)
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	_, err := stream.NewStore(ctx, js, stream.Config{Name: "SHOP", Registry: replRegistry(), Memory: true})
	require.NoError(t, err)
	_, err = consumers.CreateReplica(ctx, js, consumers.ReplicaConfig{Name: "R", SourceStream: "SHOP", MaxEventSize: 1000, Memory: true})
	var se *stream.Error
	require.True(t, errors.As(err, &se), "%v", err)
	assert.Equal(t, "replicate", se.Op)
	var api *jetstream.APIError
	require.ErrorAs(t, err, &api)
	t.Logf("%v", err)
}
