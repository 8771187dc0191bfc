package embedded_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
)

// publishEventually publishes until the cluster accepts the message or the
// deadline passes: right after a failover the new stream leader may still
// refuse or time out.
func publishEventually(t *testing.T, ctx context.Context, js jetstream.JetStream, subject, body string) *jetstream.PubAck {
	t.Helper()
	var lastErr error
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		ack, err := js.Publish(pctx, subject, []byte(body), jetstream.WithMsgID(body))
		cancel()
		if err == nil {
			return ack
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("publish %q: %v (last error: %v)", body, ctx.Err(), lastErr)
	return nil
}

// localMsgs returns how many messages node's local replica of stream holds.
func localMsgs(t *testing.T, n *embedded.Server, stream string) uint64 {
	t.Helper()
	info, err := n.NATS().Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	require.NoError(t, err)
	for _, acc := range info.AccountDetails {
		for _, sd := range acc.Streams {
			if sd.Name == stream {
				return sd.State.Msgs
			}
		}
	}
	return 0
}

func TestClusterFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := embedded.RunCluster(t)
	t.Logf("cluster up with meta leader after %s", time.Since(start))

	nodes := c.Nodes()
	require.Len(t, nodes, 3)
	names := map[string]bool{}
	for i, n := range nodes {
		require.Equal(t, fmt.Sprintf("esnats-n%d", i), n.Name())
		require.True(t, n.NATS().JetStreamEnabled())
		require.True(t, n.NATS().JetStreamIsClustered())
		require.True(t, n.NATS().JetStreamConfig().SyncAlways)
		require.NotEmpty(t, n.ClientURL())
		names[n.Name()] = true
	}
	require.Len(t, names, 3)
	require.Len(t, c.ClientURLs(), 3)
	_, err := c.MetaLeader()
	require.NoError(t, err)

	// No such stream: no leader, and waiting for one ends with the context.
	_, err = c.StreamLeader("", "NOPE")
	require.ErrorIs(t, err, embedded.ErrNoLeader)
	shortCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = c.WaitForStreamLeader(shortCtx, "", "NOPE")
	require.ErrorIs(t, err, embedded.ErrNoLeader)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	_, js := embedded.MustJetStream(t, c, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	ctx := testContext(t, 60*time.Second)
	createFileStream(t, ctx, js, 3)
	for i := range 3 {
		ack := publishEventually(t, ctx, js, "orders.1", fmt.Sprintf("m%d", i))
		require.Equal(t, uint64(i+1), ack.Sequence)
	}

	// Let the followers catch up, so the leader can hand over at shutdown.
	require.NoError(t, c.WaitForStreamCurrent(ctx, "", "ORDERS"))
	leader, err := c.StreamLeader("", "ORDERS")
	require.NoError(t, err)
	idx := -1
	for i, n := range nodes {
		if n == leader {
			idx = i
		}
	}
	require.GreaterOrEqual(t, idx, 0)
	leaderURL := leader.ClientURL()

	stopAt := time.Now()
	c.StopNode(idx)
	require.False(t, leader.Running())

	newLeader, err := c.WaitForStreamLeader(ctx, "", "ORDERS")
	require.NoError(t, err)
	require.NotSame(t, leader, newLeader)
	t.Logf("new stream leader %s after %s", newLeader.Name(), time.Since(stopAt))

	ack := publishEventually(t, ctx, js, "orders.1", "m3")
	require.Equal(t, uint64(4), ack.Sequence)
	t.Logf("publish accepted %s after stopping the leader", time.Since(stopAt))

	restartAt := time.Now()
	require.NoError(t, c.RestartNode(idx))
	require.True(t, leader.Running())
	require.Equal(t, leaderURL, leader.ClientURL(), "same client port after restart")
	t.Logf("node rejoined after %s", time.Since(restartAt))

	catchAt := time.Now()
	// The restarted node catches up on the stream, including the message
	// published while it was down.
	// (It waits for the stream leader's next raft heartbeat, about 1s, so
	// this takes a few seconds.)
	require.Eventually(t, func() bool {
		return localMsgs(t, leader, "ORDERS") == 4 &&
			leader.NATS().JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, "ORDERS")
	}, 30*time.Second, 20*time.Millisecond)
	t.Logf("restarted node caught up on the stream after %s", time.Since(catchAt))

	st, err := js.Stream(ctx, "ORDERS")
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(4), info.State.Msgs)
	require.Len(t, info.Cluster.Replicas, 2)
}

func TestClusterOptionsValidation(t *testing.T) {
	_, err := embedded.StartCluster(embedded.ClusterOptions{Dir: t.TempDir(), Size: 1})
	require.ErrorContains(t, err, "at least 2")
}

// TestClusterRestartFromDisk stops a whole cluster and starts a new one on
// the same directory: the data must survive (StartCluster only ever resets
// node directories it created itself during a bootstrap retry).
func TestClusterRestartFromDisk(t *testing.T) {
	t.Parallel() // mostly idle: waits for the raft election timeout
	dir := t.TempDir()
	c := embedded.RunCluster(t, func(o *embedded.ClusterOptions) { o.Dir = dir })
	nc, js := embedded.MustJetStream(t, c)
	ctx := testContext(t, 60*time.Second)
	createFileStream(t, ctx, js, 3)
	for i := range 3 {
		publishEventually(t, ctx, js, "orders.1", fmt.Sprintf("m%d", i))
	}
	nc.Close()
	c.Shutdown()

	start := time.Now()
	c2 := embedded.RunCluster(t, func(o *embedded.ClusterOptions) { o.Dir = dir })
	// Nodes with existing state do not campaign early: the first election
	// waits for the raft election timeout (4-9s in nats-server 2.15).
	t.Logf("restarted cluster has a meta leader after %s", time.Since(start))
	_, js2 := embedded.MustJetStream(t, c2)
	_, err := c2.WaitForStreamLeader(ctx, "", "ORDERS")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := js2.Stream(ctx, "ORDERS")
		if err != nil {
			return false
		}
		msg, err := st.GetMsg(ctx, 3)
		return err == nil && string(msg.Data) == "m2"
	}, 30*time.Second, 50*time.Millisecond)
}
