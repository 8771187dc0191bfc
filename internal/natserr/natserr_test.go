package natserr_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/internal/natserr"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		err     error
		ok      bool
		op      natserr.Op
		subject string
	}{
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Publish to "shop.cart.a"`), true, natserr.Publish, "shop.cart.a"},
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, `Permissions Violation for Subscription to "_INBOX.x.*" using queue "q"`), true, natserr.Subscribe, "_INBOX.x.*"},
		{errors.New(`Permissions Violation for Publish to "a"`), false, "", ""}, // not from nats.go
		{fmt.Errorf("%w: %s", nats.ErrPermissionViolation, "something else"), false, "", ""},
		{nil, false, "", ""},
	} {
		v, ok := natserr.Parse(tc.err)
		assert.Equal(t, tc.ok, ok, "%v", tc.err)
		assert.Equal(t, tc.op, v.Op)
		assert.Equal(t, tc.subject, v.Subject)
	}
}

// TestWatch runs against a server whose user may publish only on "ok.>"
// and subscribe only to "_INBOX.>": a refused publish is seen by a Watch
// started before it, not by one started after it.
func TestWatch(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: "u", Password: "p", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"ok.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "ok.>"}},
		}}}}
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(srv.Shutdown)
	require.True(t, srv.ReadyForConnections(5*time.Second))
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("u", "p"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	require.NoError(t, err)
	t.Cleanup(nc.Close)

	w := natserr.NewWatch(nc)
	require.NoError(t, nc.Publish("denied.x", nil))
	require.NoError(t, nc.Flush())
	var v natserr.Violation
	require.Eventually(t, func() bool {
		var ok bool
		v, ok = w.Denied([]string{"other", "denied.x"})
		return ok
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, natserr.Publish, v.Op)
	assert.Equal(t, "denied.x", v.Subject)
	assert.ErrorIs(t, v.Err, nats.ErrPermissionViolation)
	_, ok := w.Denied([]string{"denied.y"})
	assert.False(t, ok, "another subject")

	// The same violation, seen by a Watch started after it, is old news.
	later := natserr.NewWatch(nc)
	_, ok = later.Denied([]string{"denied.x"})
	assert.False(t, ok)
	// An allowed publish reports nothing.
	require.NoError(t, nc.Publish("ok.x", nil))
	require.NoError(t, nc.Flush())
	_, ok = later.Denied([]string{"ok.x"})
	assert.False(t, ok)

	// A refused subscription is matched by prefix.
	sw := natserr.NewWatch(nc)
	_, err = nc.SubscribeSync("private.replies.>")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		v, ok = sw.Denied(nil, "private.")
		return ok
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, natserr.Subscribe, v.Op)
	assert.Equal(t, "private.replies.>", v.Subject)

	var zero natserr.Watch
	_, ok = zero.Denied([]string{"denied.x"})
	assert.False(t, ok)
	_, ok = natserr.NewWatch(nil).Denied([]string{"denied.x"})
	assert.False(t, ok)
}
