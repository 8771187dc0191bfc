package stream

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
)

type deniedEvent struct {
	N int `json:"n"`
}

// inboxOnlyServer runs a server whose user "app" (password "app") may
// publish anywhere and subscribe only under _INBOX_ok, and returns it with a
// registry of deniedEvent.
func inboxOnlyServer(t *testing.T) (*embedded.Server, *Registry) {
	t.Helper()
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{{Username: "app", Password: "app", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{">"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_ok.>"}},
			}}}
		}
	})
	reg := NewRegistry()
	MustRegister[deniedEvent](reg, "Denied")
	return srv, reg
}

// A connection that may publish to the store but not subscribe to its own
// reply inbox: the append lands, its acknowledgement is dropped. That is no
// refusal of the append: it stays an unknown outcome (ErrIndeterminate),
// and the error says why no acknowledgement came.
func TestAppendReplySubscriptionDenied(t *testing.T) {
	t.Parallel()
	srv, reg := inboxOnlyServer(t)
	ctx := context.Background()
	_, okJS := embedded.MustJetStream(t, srv, nats.UserInfo("app", "app"), nats.CustomInboxPrefix("_INBOX_ok"))
	good, err := NewStore(ctx, okJS, Config{Name: "carts", Registry: reg, GroupCommit: GroupCommitOff})
	require.NoError(t, err)

	// The same store on a connection whose inbox the server refuses (a
	// store cannot be opened there: the STREAM.INFO reply would be lost).
	nc := embedded.MustConnect(t, srv, nats.UserInfo("app", "app"), nats.CustomInboxPrefix("_INBOX_bad"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(200*time.Millisecond))
	require.NoError(t, err)
	bad := *good
	bad.js, bad.nc, bad.inbox, bad.gc = js, nc, inboxPrefix(nc), nil
	require.Equal(t, "_INBOX_bad.", bad.inbox)

	agg := Aggregate{Type: "cart", ID: "a"}
	_, err = bad.Append(ctx, agg, ExpectNone(), []EventData{{ID: "ev-1", Data: deniedEvent{N: 1}}}, WithMaxAttempts(2))
	require.ErrorIs(t, err, ErrIndeterminate, "the append may have landed")
	assert.NotErrorIs(t, err, ErrPermissionDenied)
	assert.Contains(t, err.Error(), "the server refused this connection's reply subscription, so no acknowledgement can arrive: nats: permissions violation: Permissions Violation for Subscription to \"_INBOX_bad.")
	assert.True(t, strings.HasPrefix(err.Error(), "esnats: append carts.cart.a: append outcome unknown: "), err.Error())
	// It did land, once.
	rev, err := good.LastRevision(ctx, agg)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), rev.Version)
	res, err := good.Append(ctx, agg, ExpectNone(), []EventData{{ID: "ev-1", Data: deniedEvent{N: 1}}})
	require.NoError(t, err)
	assert.True(t, res.Duplicate, "the same append again is found stored")
}

// BenchmarkWatchDenied measures what the permission watch adds to a
// publish answered at once (the fast path): the connection's last error
// read, a timer armed and stopped. "context" is the per-attempt context the
// append makes anyway, for comparison; a publish round trip takes tens of
// microseconds on loopback (BenchmarkAppend1).
func BenchmarkWatchDenied(b *testing.B) {
	srv := embedded.RunServer(b)
	nc := embedded.MustConnect(b, srv)
	s := &Store{nc: nc, inbox: inboxPrefix(nc)}
	msgs := []*nats.Msg{nats.NewMsg("carts.cart.a")}
	b.Run("context", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, cancel := context.WithTimeout(context.Background(), time.Second)
			cancel()
		}
	})
	b.Run("context+watch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			d := s.watchDenied(ctx, cancel, msgs)
			d.stop()
			cancel()
		}
	})
}

// A user who may not subscribe to the leader-elected advisory: the server
// refuses the leader watch's subscription, the connection is told once,
// and the store works as without the watch (the refusal is not taken for
// one of its own requests).
func TestLeaderWatchSubscriptionDenied(t *testing.T) {
	t.Parallel()
	srv, reg := inboxOnlyServer(t)
	ctx := context.Background()
	var violations atomic.Int32
	nc, js := embedded.MustJetStream(t, srv, nats.UserInfo("app", "app"), nats.CustomInboxPrefix("_INBOX_ok"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if strings.Contains(err.Error(), leaderElectedPrefix) {
				violations.Add(1)
			}
		}))
	st, err := NewStore(ctx, js, Config{Name: "carts", Registry: reg})
	require.NoError(t, err)
	st.leader = followLeader(nc, "carts") // as a store of a replicated stream would
	require.NotNil(t, st.leader, "nats.go subscribes; the server refuses asynchronously")
	require.Eventually(t, func() bool { return violations.Load() == 1 }, 5*time.Second, 5*time.Millisecond)

	agg := Aggregate{Type: "cart", ID: "a"}
	res, err := st.Append(ctx, agg, ExpectNone(), []EventData{{Data: deniedEvent{N: 1}}, {Data: deniedEvent{N: 2}}})
	require.NoError(t, err)
	_, err = st.Append(ctx, agg, ExpectRevision(res.Last), []EventData{{Data: deniedEvent{N: 3}}})
	require.NoError(t, err)
	rev, err := st.LastRevision(ctx, agg)
	require.NoError(t, err)
	require.Equal(t, uint64(3), rev.Version)
	n := 0
	for _, err := range st.Load(ctx, agg) {
		require.NoError(t, err)
		n++
	}
	require.Equal(t, 3, n)
	require.Equal(t, int32(1), violations.Load(), "told once")
}
