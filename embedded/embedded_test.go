package embedded_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
)

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func createFileStream(t *testing.T, ctx context.Context, js jetstream.JetStream, replicas int) jetstream.Stream {
	t.Helper()
	// Creating a stream is idempotent, so an attempt whose reply was lost
	// (seen once in CI on a freshly elected cluster: the call hung for the
	// whole test deadline) is retried.
	var st jetstream.Stream
	err := jsapi.Retry(ctx, 5*time.Second, func(ctx context.Context) (err error) {
		st, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:     "ORDERS",
			Subjects: []string{"orders.>"},
			Storage:  jetstream.FileStorage,
			Replicas: replicas,
		})
		return err
	})
	require.NoError(t, err)
	return st
}

func TestStartDefaults(t *testing.T) {
	s := embedded.RunServer(t)

	ns := s.NATS()
	require.True(t, ns.JetStreamEnabled())
	require.True(t, s.Running())
	cfg := ns.JetStreamConfig()
	require.NotNil(t, cfg)
	require.True(t, cfg.SyncAlways, "fsync on every write is the default")
	require.Equal(t, filepath.Join(s.Dir(), "jetstream"), cfg.StoreDir)
	require.True(t, strings.HasPrefix(s.Name(), "embedded-"), s.Name())
	require.Equal(t, s.Name(), ns.Name())
	require.True(t, strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:"), s.ClientURL())
	require.NotEqual(t, "nats://127.0.0.1:4222", s.ClientURL(), "port must be random")

	_, js := embedded.MustJetStream(t, s)
	ctx := testContext(t, 10*time.Second)
	createFileStream(t, ctx, js, 1)
	ack, err := js.Publish(ctx, "orders.1", []byte("hello"))
	require.NoError(t, err)
	require.Equal(t, uint64(1), ack.Sequence)
}

func TestSyncPolicy(t *testing.T) {
	tests := []struct {
		name       string
		policy     embedded.SyncPolicy
		wantAlways bool
		wantEvery  time.Duration
		wantString string
	}{
		{"zero value is always", embedded.SyncPolicy(0), true, 2 * time.Minute, "always"},
		{"always", embedded.SyncAlways, true, 2 * time.Minute, "always"},
		{"every", embedded.SyncEvery(5 * time.Second), false, 5 * time.Second, "every 5s"},
		{"every zero is always", embedded.SyncEvery(0), true, 2 * time.Minute, "always"},
		{"server default", embedded.SyncServerDefault, false, 2 * time.Minute, "server-default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.wantString, tt.policy.String())
			s := embedded.RunServer(t, func(o *embedded.Options) {
				o.Sync = tt.policy
				o.InProcessOnly = true
			})
			cfg := s.NATS().JetStreamConfig()
			require.Equal(t, tt.wantAlways, cfg.SyncAlways)
			require.Equal(t, tt.wantEvery, cfg.SyncInterval)
		})
	}
}

func TestOptionsPassThrough(t *testing.T) {
	var called bool
	s := embedded.RunServer(t, func(o *embedded.Options) {
		o.Name = "custom"
		o.MaxMemory = 64 << 20
		o.MaxStore = 256 << 20
		o.Configure = func(so *server.Options) {
			called = true
			require.True(t, so.JetStream)
			require.True(t, so.NoLog)
			require.True(t, so.NoSigs)
			so.MaxPayload = 2 << 20
		}
	})
	require.True(t, called)
	require.Equal(t, "custom", s.NATS().Name())
	cfg := s.NATS().JetStreamConfig()
	require.Equal(t, int64(64<<20), cfg.MaxMemory)
	require.Equal(t, int64(256<<20), cfg.MaxStore)
	nc := embedded.MustConnect(t, s)
	require.Equal(t, int64(2<<20), nc.MaxPayload())
}

func TestInProcessOnly(t *testing.T) {
	s := embedded.RunServer(t, func(o *embedded.Options) { o.InProcessOnly = true })
	require.Empty(t, s.ClientURL())
	require.Nil(t, s.NATS().Addr(), "no TCP listener")

	_, js := embedded.MustJetStream(t, s)
	ctx := testContext(t, 10*time.Second)
	createFileStream(t, ctx, js, 1)
	ack, err := js.Publish(ctx, "orders.1", []byte("x"))
	require.NoError(t, err)
	require.Equal(t, uint64(1), ack.Sequence)

	// nats.InProcessServer accepts the *Server directly.
	nc2, err := nats.Connect("", nats.InProcessServer(s))
	require.NoError(t, err)
	defer nc2.Close()
	require.NoError(t, nc2.Flush())
}

func TestRestartKeepsData(t *testing.T) {
	for _, inProcess := range []bool{false, true} {
		name := "tcp"
		if inProcess {
			name = "in-process"
		}
		t.Run(name, func(t *testing.T) {
			s := embedded.RunServer(t, func(o *embedded.Options) { o.InProcessOnly = inProcess })
			url := s.ClientURL()
			// A long-lived client that must survive the restart.
			_, js := embedded.MustJetStream(t, s,
				nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
			ctx := testContext(t, 20*time.Second)
			st := createFileStream(t, ctx, js, 1)
			for i, body := range []string{"a", "b", "c"} {
				ack, err := js.Publish(ctx, "orders.1", []byte(body))
				require.NoError(t, err)
				require.Equal(t, uint64(i+1), ack.Sequence)
			}
			first := s.NATS()

			require.NoError(t, s.Restart())
			require.True(t, s.Running())
			require.NotSame(t, first, s.NATS())
			require.Equal(t, url, s.ClientURL(), "same port after restart")
			require.True(t, s.NATS().JetStreamConfig().SyncAlways)

			// A fresh client sees the data with the same sequences.
			_, js2 := embedded.MustJetStream(t, s)
			st2, err := js2.Stream(ctx, "ORDERS")
			require.NoError(t, err)
			msg, err := st2.GetMsg(ctx, 2)
			require.NoError(t, err)
			require.Equal(t, "b", string(msg.Data))
			require.Equal(t, "orders.1", msg.Subject)

			// The old client reconnected to the new server and continues the sequence.
			require.Eventually(t, func() bool {
				pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				ack, err := js.Publish(pctx, "orders.2", []byte("d"))
				if err != nil {
					return false
				}
				require.Equal(t, uint64(4), ack.Sequence)
				return true
			}, 10*time.Second, 20*time.Millisecond)
			info, err := st.Info(ctx)
			require.NoError(t, err)
			require.Equal(t, uint64(4), info.State.Msgs)
		})
	}
}

func TestShutdownIdempotent(t *testing.T) {
	s := embedded.RunServer(t)
	nc := embedded.MustConnect(t, s)
	s.Shutdown()
	s.Shutdown()
	require.False(t, s.Running())
	require.False(t, s.NATS().Running())
	require.Eventually(t, func() bool { return !nc.IsConnected() }, 5*time.Second, 10*time.Millisecond)
	_, err := s.InProcessConn()
	require.Error(t, err)
	// Restart after Shutdown starts it again.
	require.NoError(t, s.Restart())
	require.True(t, s.NATS().JetStreamEnabled())
}

func TestStartMissingDir(t *testing.T) {
	s, err := embedded.Start(embedded.Options{})
	require.Nil(t, s)
	require.ErrorIs(t, err, embedded.ErrDirRequired)
	require.Contains(t, err.Error(), "embedded: Options.Dir is required")

	c, err := embedded.StartCluster(embedded.ClusterOptions{})
	require.Nil(t, c)
	require.ErrorIs(t, err, embedded.ErrDirRequired)
	require.Contains(t, err.Error(), "ClusterOptions.Dir is required")
}

func TestStartJetStreamFailure(t *testing.T) {
	// The store dir is a regular file: JetStream cannot create its directory.
	file := filepath.Join(t.TempDir(), "not-a-dir")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))

	start := time.Now()
	s, err := embedded.Start(embedded.Options{Dir: file})
	elapsed := time.Since(start)
	require.Nil(t, s)
	require.ErrorIs(t, err, embedded.ErrJetStreamNotStarted)
	msg := err.Error()
	t.Logf("error: %s (after %s)", msg, elapsed)
	require.Contains(t, msg, "JetStream")
	require.Contains(t, msg, file, "names the store dir")
	require.Less(t, elapsed, 5*time.Second, "fails fast, without waiting for the start timeout")
}

func TestStartConfigureDisablesJetStream(t *testing.T) {
	_, err := embedded.Start(embedded.Options{
		Dir:       t.TempDir(),
		Configure: func(o *server.Options) { o.JetStream = false },
	})
	require.ErrorIs(t, err, embedded.ErrJetStreamNotStarted)
}

func TestStartPortInUse(t *testing.T) {
	a := embedded.RunServer(t)
	start := time.Now()
	_, err := embedded.Start(embedded.Options{
		Dir:  t.TempDir(),
		Port: a.NATS().Addr().(*net.TCPAddr).Port,
	})
	require.ErrorIs(t, err, embedded.ErrNotReady)
	require.Contains(t, err.Error(), "address already in use")
	require.Less(t, time.Since(start), 5*time.Second, "fails fast, without waiting for the start timeout")
}

// Restart waits out a port that someone else holds for a moment (as the
// ephemeral port of an outgoing connection can), and fails with the
// server's own error when it stays taken.
func TestRestartWaitsForPortInUse(t *testing.T) {
	s := embedded.RunServer(t)
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	s.Shutdown()
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	released := make(chan struct{})
	time.AfterFunc(400*time.Millisecond, func() { l.Close(); close(released) })
	require.NoError(t, s.Restart())
	<-released
	require.True(t, s.Running())
	require.Equal(t, "nats://"+addr, s.ClientURL())

	s.Shutdown()
	l, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	defer l.Close()
	err = s.Restart()
	require.ErrorIs(t, err, embedded.ErrNotReady)
	require.ErrorContains(t, err, "address already in use")
}
