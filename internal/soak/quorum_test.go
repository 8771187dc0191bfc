package soak_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/soak"
	"github.com/esnats/esnats/stream"
)

// TestAppendWithoutQuorum appends to an R3 store whose stream leader has
// lost both followers: the append cannot commit and times out, and its
// resend (same event id) is refused by the leader with 10158 ("duplicate
// message id is in process") because the first send is still pending in
// its raft log. Then the followers come back, and the first send commits.
// The append must not have been reported as definitely failed (the
// invariant "no append reported failed is present"): it must end
// indeterminate, or acknowledged.
//
// Found by TestFaults: stream's append took 10158 (duplicate message id is
// in process) for a definite error, so the caller was told "failed" for an
// event that landed. It is now ambiguous: resent, then settled.
func TestAppendWithoutQuorum(t *testing.T) {
	c := embedded.RunCluster(t)
	ctx := ctxTimeout(t, time.Minute)
	nc := embedded.MustConnect(t, c, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(time.Second))
	require.NoError(t, err)
	st, err := stream.NewStore(ctx, js, stream.Config{Name: "soak", Registry: soak.NewRegistry(), Replicas: 3})
	require.NoError(t, err)
	ledger := soak.NewLedger("q")
	appendOne := func(actx context.Context, version uint64, before int64) soak.Outcome {
		id := ledger.NewID()
		ev := soak.Added{Attempt: id, Version: version, Before: before, Amount: 1}
		res, err := st.Append(actx, soak.Ref("a"), stream.ExpectRevision(stream.Revision{Version: version - 1, Sequence: version - 1}),
			[]stream.EventData{{ID: ev.Key(), Data: ev}})
		at := soak.Attempt{ID: id, Kind: soak.KindAppend, Outcome: soak.Classify(err), Writes: []soak.Write{{Aggregate: soak.Ref("a"), Keys: []string{ev.Key()}, IDs: true}}}
		if err != nil {
			at.Err = err.Error()
		} else {
			at.Writes[0].Result = &res
		}
		t.Logf("append of version %d: %s %s", version, at.Outcome, at.Err)
		ledger.Add(at)
		return at.Outcome
	}
	require.Equal(t, soak.Acked, appendOne(ctx, 1, 0))
	require.NoError(t, c.WaitForStreamCurrent(ctx, "", "soak"))
	leader, err := c.StreamLeader("", "soak")
	require.NoError(t, err)
	var stopped []int
	for i, n := range c.Nodes() {
		if n != leader {
			c.StopNode(i)
			stopped = append(stopped, i)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	appendOne(actx, 2, 1) // no quorum
	cancel()
	for _, i := range stopped {
		go func() { _ = c.RestartNode(i) }()
	}
	require.NoError(t, c.WaitForMetaLeader(ctx))
	require.NoError(t, c.WaitForStreamCurrent(ctx, "", "soak"))
	// The pending append is settled when version 2 is stored: by it, or,
	// if it was dropped, by another append of version 2 (which conflicts
	// while the pending one is in flight).
	for {
		rev, err := st.LastRevision(ctx, soak.Ref("a"))
		require.NoError(t, err)
		if rev.Version >= 2 {
			break
		}
		if appendOne(ctx, 2, 1) == soak.Acked {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("version 2 never stored")
		case <-time.After(100 * time.Millisecond):
		}
	}
	r, err := (&soak.Checker{Store: st, Ledger: ledger}).Check(ctx)
	require.NoError(t, err)
	t.Log(r)
	require.NoError(t, r.Err())
}
