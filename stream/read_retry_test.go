package stream_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/jsapi"
	"github.com/esnats/esnats/stream"
)

// apiRelay forwards the JetStream API requests a client sends under the
// API prefix "relay.API" to the server's $JS.API, keeping their reply
// subject (the server answers the client directly), and drops the batched
// direct gets it is told to: a direct get whose reply was lost.
type apiRelay struct {
	drop atomic.Int64 // direct gets still to drop
	gets atomic.Int64 // direct gets seen
}

func newAPIRelay(t *testing.T, srv *embedded.Server) *apiRelay {
	t.Helper()
	r := &apiRelay{}
	nc := embedded.MustConnect(t, srv)
	_, err := nc.Subscribe("relay.API.>", func(m *nats.Msg) {
		rest := strings.TrimPrefix(m.Subject, "relay.API.")
		if strings.HasPrefix(rest, "DIRECT.GET.") {
			r.gets.Add(1)
			if r.drop.Add(-1) >= 0 {
				return
			}
			r.drop.Store(0)
		}
		_ = nc.PublishMsg(&nats.Msg{Subject: "$JS.API." + rest, Reply: m.Reply, Header: m.Header, Data: m.Data})
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return r
}

// A batched direct get whose reply is lost is sent again after the
// JetStream timeout, also when the caller's context has a far deadline
// (it used to wait for that deadline), and a load whose requests are never
// answered ends after jsapi.MaxAttempts of them, or at the caller's
// deadline if that comes first.
func TestLoadRetriesLostDirectGet(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	srv := embedded.RunServer(t)
	relay := newAPIRelay(t, srv)
	nc := embedded.MustConnect(t, srv)
	js, err := jetstream.NewWithAPIPrefix(nc, "relay.API", jetstream.WithDefaultTimeout(timeout))
	require.NoError(t, err)
	st := newJSStore(t, js)
	ctx := context.Background()
	agg := cart("lost-get")
	_, err = st.Append(ctx, agg, stream.ExpectNone(), items("a", 3))
	require.NoError(t, err)
	require.Len(t, loadAll(t, st, agg), 3)

	for _, c := range []struct {
		name     string
		deadline time.Duration // 0: none
	}{{"no deadline", 0}, {"a far deadline", time.Minute}} {
		t.Run("one reply lost, "+c.name, func(t *testing.T) {
			lctx := ctx
			if c.deadline > 0 {
				var cancel context.CancelFunc
				lctx, cancel = context.WithTimeout(ctx, c.deadline)
				defer cancel()
			}
			relay.gets.Store(0)
			relay.drop.Store(1)
			start := time.Now()
			var versions []uint64
			for ev, err := range st.Load(lctx, agg, stream.WithBatchSize(2)) {
				require.NoError(t, err)
				versions = append(versions, ev.Version)
			}
			took := time.Since(start)
			assert.Equal(t, []uint64{1, 2, 3}, versions)
			assert.EqualValues(t, 3, relay.gets.Load(), "the lost request and two batches")
			assert.GreaterOrEqual(t, took, timeout, "the lost reply is waited for once")
			assert.Less(t, took, 10*timeout, "and only once")
		})
	}

	t.Run("no reply ever, no deadline", func(t *testing.T) {
		relay.gets.Store(0)
		relay.drop.Store(1 << 40)
		defer relay.drop.Store(0)
		start := time.Now()
		var lerr error
		for _, err := range st.Load(ctx, agg) {
			lerr = err
		}
		took := time.Since(start)
		require.ErrorIs(t, lerr, context.DeadlineExceeded)
		var se *stream.Error
		require.ErrorAs(t, lerr, &se)
		assert.Equal(t, "read", se.Op)
		assert.Equal(t, "carts.cart.lost-get", se.Subject)
		assert.EqualValues(t, jsapi.MaxAttempts, relay.gets.Load())
		assert.GreaterOrEqual(t, took, jsapi.MaxAttempts*timeout)
	})

	t.Run("no reply ever, a near deadline", func(t *testing.T) {
		relay.gets.Store(0)
		relay.drop.Store(1 << 40)
		defer relay.drop.Store(0)
		lctx, cancel := context.WithTimeout(ctx, timeout+timeout/2)
		defer cancel()
		var lerr error
		for _, err := range st.Load(lctx, agg) {
			lerr = err
		}
		require.Error(t, lerr)
		assert.True(t, errors.Is(lerr, context.DeadlineExceeded), "%v", lerr)
		assert.LessOrEqual(t, relay.gets.Load(), int64(2), "no attempt after the caller's deadline")
	})
}
