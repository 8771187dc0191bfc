package stream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/natserr"
	"github.com/esnats/esnats/stream"
)

// deniedTimeout is the JetStream timeout of the stores of these tests: an
// append that waited for it would take at least this long.
const deniedTimeout = 3 * time.Second

// deniedServer runs a server whose user "app" may publish anywhere but to
// carts.secret.> and subscribe anywhere; "admin" may do everything.
func deniedServer(t *testing.T) *embedded.Server {
	t.Helper()
	return embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{
				{Username: "admin", Password: "admin"},
				{Username: "app", Password: "app", Permissions: &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"carts.secret.>"}},
					Subscribe: &server.SubjectPermission{Allow: []string{">"}},
				}},
			}
		}
	})
}

// deniedStores returns the store of "admin" (to check what was stored) and
// the store of "app" with group commit mode gc, and app's connection.
func deniedStores(t *testing.T, srv *embedded.Server, gc stream.GroupCommit) (admin, app *stream.Store, ajs jetstream.JetStream, appConn *nats.Conn) {
	t.Helper()
	_, ajs = embedded.MustJetStream(t, srv, nats.UserInfo("admin", "admin"))
	admin = newJSStore(t, ajs)
	nc := embedded.MustConnect(t, srv, nats.UserInfo("app", "app"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(deniedTimeout))
	require.NoError(t, err)
	app, err = stream.OpenStore(context.Background(), js, stream.Config{Name: "carts", Registry: testRegistry(t), GroupCommit: gc})
	require.NoError(t, err)
	return admin, app, ajs, nc
}

// requireDenied checks that err reports a refused publish to subject.
func requireDenied(t *testing.T, err error, subject string) {
	t.Helper()
	require.ErrorIs(t, err, stream.ErrPermissionDenied)
	require.ErrorIs(t, err, nats.ErrPermissionViolation)
	assert.NotErrorIs(t, err, stream.ErrIndeterminate, "a refused publish is never stored")
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "append", se.Op)
	assert.Equal(t, subject, se.Subject)
	assert.EqualError(t, err, `esnats: append `+subject+`: permission denied: nats: permissions violation: Permissions Violation for Publish to "`+subject+`"`)
}

// An append the server refuses for lack of permission fails at once with
// ErrPermissionDenied, in every mode and for one event, several events and
// several aggregates, and nothing is stored (nor sent again).
func TestAppendPermissionDenied(t *testing.T) {
	t.Parallel()
	srv := deniedServer(t)
	secret := stream.Aggregate{Type: "secret", ID: "x"}
	for _, gc := range []stream.GroupCommit{stream.GroupCommitOff, stream.GroupCommitBatch, stream.GroupCommitPipeline} {
		t.Run(gc.String(), func(t *testing.T) {
			admin, app, ajs, nc := deniedStores(t, srv, gc)
			ctx := context.Background()
			before := streamMsgs(t, ajs, "carts")
			for _, c := range []struct {
				name string
				run  func() error
			}{
				{"one event", func() error {
					_, err := app.Append(ctx, secret, stream.ExpectNone(), items("a", 1))
					return err
				}},
				{"three events", func() error {
					_, err := app.Append(ctx, secret, stream.ExpectNone(), items("b", 3))
					return err
				}},
				{"an allowed and a refused aggregate", func() error {
					_, err := app.AppendBatch(ctx, []stream.AppendRequest{
						{Aggregate: cart("ok-" + gc.String()), Expect: stream.ExpectNone(), Events: items("c", 2)},
						{Aggregate: secret, Expect: stream.ExpectNone(), Events: items("d", 1)},
					})
					return err
				}},
				{"ExpectAny", func() error {
					_, err := app.Append(ctx, secret, stream.ExpectAny(), items("e", 1))
					return err
				}},
			} {
				t.Run(c.name, func(t *testing.T) {
					start := time.Now()
					err := c.run()
					took := time.Since(start)
					requireDenied(t, err, "carts.secret.x")
					assert.Less(t, took, deniedTimeout/3, "waited for a timeout")
					v, ok := natserr.Parse(nc.LastError())
					require.True(t, ok)
					assert.Equal(t, "carts.secret.x", v.Subject)
				})
			}
			assert.Equal(t, before, streamMsgs(t, ajs, "carts"), "nothing was stored")
			rev, err := admin.LastRevision(ctx, secret)
			require.NoError(t, err)
			assert.Equal(t, stream.Revision{}, rev, "nothing was stored")
			rev, err = admin.LastRevision(ctx, cart("ok-"+gc.String()))
			require.NoError(t, err)
			assert.Equal(t, stream.Revision{}, rev, "nothing of the atomic batch was stored")
			// The store still works for what is allowed.
			res, err := app.Append(ctx, cart("fine-"+gc.String()), stream.ExpectNone(), items("f", 2))
			require.NoError(t, err)
			assert.False(t, res.Duplicate)
			requireAt(t, admin, cart("fine-"+gc.String()), 2, res, 2)
		})
	}
}

// A group-commit batch holding a command on a subject the connection may
// not publish to: the server drops those messages, so the atomic batch is
// incomplete and stores nothing; the refused command fails with
// ErrPermissionDenied at once, and the others are sent again without it and
// stored.
func TestGroupCommitPermissionDenied(t *testing.T) {
	t.Parallel()
	srv := deniedServer(t)
	admin, app, ajs, _ := deniedStores(t, srv, stream.GroupCommitBatch)
	ctx := context.Background()
	for _, refusedAt := range []int{0, 1, 2} {
		release := stream.HoldGroup(app)
		var ps []*pending
		for i := range 3 {
			agg := cart(fmt.Sprintf("r%d-%d", refusedAt, i))
			if i == refusedAt {
				agg = stream.Aggregate{Type: "secret", ID: fmt.Sprintf("r%d", refusedAt)}
			}
			ps = append(ps, goAppend(ctx, app, agg, stream.ExpectNone(), items("g", 2)...))
			waitQueued(t, app, i+1)
		}
		stream.GroupStats(app)
		start := time.Now()
		release()
		for i, p := range ps {
			res, err := p.wait(t)
			if i == refusedAt {
				requireDenied(t, err, fmt.Sprintf("carts.secret.r%d", refusedAt))
				assert.Less(t, time.Since(start), deniedTimeout/3, "waited for a timeout")
				continue
			}
			require.NoError(t, err, "append %d", i)
			requireAt(t, admin, cart(fmt.Sprintf("r%d-%d", refusedAt, i)), 2, res, 2)
		}
		batches, appends := stream.GroupStats(app)
		assert.GreaterOrEqual(t, batches, int64(1), "the three went out in one batch first")
		assert.GreaterOrEqual(t, appends, int64(3))
	}
	assert.Equal(t, uint64(12), streamMsgs(t, ajs, "carts"), "two events of each allowed command, once")
}

// A pipelined AppendAsync the server refuses gets no acknowledgement: the
// store's own publisher gives up on it after the JetStream timeout (so it
// does not stay pending for ever), and the synchronous path's resend then
// reports the refusal. Nothing is stored, and allowed appends go on
// meanwhile.
func TestAppendAsyncPermissionDenied(t *testing.T) {
	t.Parallel()
	srv := deniedServer(t)
	admin, app, ajs, _ := deniedStores(t, srv, stream.GroupCommitPipeline)
	ctx := context.Background()
	before := streamMsgs(t, ajs, "carts")
	refused := app.AppendAsync(ctx, stream.Aggregate{Type: "secret", ID: "x"}, stream.ExpectNone(), items("a", 1))
	allowed := app.AppendAsync(ctx, cart("fine"), stream.ExpectNone(), items("b", 1))
	res, err := allowed.Result()
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.Last.Version)
	start := time.Now()
	_, err = refused.Result()
	requireDenied(t, err, "carts.secret.x")
	assert.Less(t, time.Since(start), 2*deniedTimeout)
	assert.Equal(t, before+1, streamMsgs(t, ajs, "carts"))
	assert.Empty(t, loadAll(t, admin, stream.Aggregate{Type: "secret", ID: "x"}))
}
