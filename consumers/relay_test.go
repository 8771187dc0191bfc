package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
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

// Two services in two accounts: SALES owns the store; ANALYTICS receives
// public integration events in its own stream. The relay holds a
// connection to each.
const relayAccountsConf = `
accounts {
  SALES { jetstream: enabled, users: [ { user: sales, password: s3cret } ] }
  ANALYTICS { jetstream: enabled, users: [ { user: analytics, password: an4lytics } ] }
}
`

// ProductDemanded is the public integration event: no cart ids, no customer.
type ProductDemanded struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

func TestRelayAcrossAccountsNoDuplicatesAfterCrash(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) { require.NoError(t, so.ProcessConfigString(relayAccountsConf)) }
	})
	_, salesJS := embedded.MustJetStream(t, srv, nats.UserInfo("sales", "s3cret"))
	_, analyticsJS := embedded.MustJetStream(t, srv, nats.UserInfo("analytics", "an4lytics"))
	store, err := stream.NewStore(ctx, salesJS, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	_, err = analyticsJS.CreateStream(ctx, jetstream.StreamConfig{Name: "DEMAND", Subjects: []string{"public.demand.>"}, Duplicates: 10 * time.Minute})
	require.NoError(t, err)

	// Private events: items added to carts, and orders (not relayed).
	e := &env{srv: srv, js: salesJS, store: store}
	e.appendItems(t, 300)
	_, err = store.Append(ctx, stream.Aggregate{Type: "order", ID: "o1"}, stream.ExpectNone(), []stream.EventData{{Data: OrderPlaced{ID: "o1"}}})
	require.NoError(t, err)

	transform := func(ev *stream.Event) ([]*nats.Msg, error) {
		it, ok := ev.Data.(ItemAdded)
		if !ok {
			return nil, errors.New("not an item")
		}
		body, err := json.Marshal(ProductDemanded{SKU: it.SKU, Qty: it.Qty})
		if err != nil {
			return nil, err
		}
		m := nats.NewMsg("public.demand." + it.SKU)
		m.Data = body
		return []*nats.Msg{m}, nil
	}
	run := func(nc *nats.Conn, until func() bool) {
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		st, err := stream.OpenStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
		require.NoError(t, err)
		relay, err := consumers.NewRelay(js, st, consumers.RelayConfig{
			Consumer:  consumers.Config{Name: "demand-relay", AggregateTypes: []string{"cart"}, BatchSize: 25, PinnedTTL: 2 * time.Second, AckWait: 2 * time.Second},
			Target:    analyticsJS,
			Transform: transform,
		})
		require.NoError(t, err)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- relay.Run(rctx) }()
		require.Eventually(t, until, 20*time.Second, time.Millisecond)
		nc.Close() // crash: the batch in hand may be published and not acknowledged
		cancel()
		<-done
	}
	demand, err := analyticsJS.Stream(ctx, "DEMAND")
	require.NoError(t, err)
	count := func() uint64 {
		info, err := demand.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	nc1 := embedded.MustConnect(t, srv, nats.UserInfo("sales", "s3cret"))
	run(nc1, func() bool { return count() >= 120 })
	nc2 := embedded.MustConnect(t, srv, nats.UserInfo("sales", "s3cret"))
	run(nc2, func() bool { return count() >= 300 })
	time.Sleep(200 * time.Millisecond)
	assert.EqualValues(t, 300, count(), "every item relayed once, none twice, the order not at all")

	// The receiving side reads its own stream: public events in order.
	m, err := demand.GetMsg(ctx, 1)
	require.NoError(t, err)
	var first ProductDemanded
	require.NoError(t, json.Unmarshal(m.Data, &first))
	assert.Equal(t, ProductDemanded{SKU: "s0", Qty: 1}, first)
	assert.Equal(t, "shop:1", m.Header.Get(consumers.HeaderRelaySource))
	assert.Equal(t, "demand-relay:shop:1:0", m.Header.Get(jetstream.MsgIDHeader))

	// ANALYTICS cannot read SALES's store.
	_, err = analyticsJS.Stream(ctx, "shop")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
}
