package stream_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/faultproxy"
	"github.com/esnats/esnats/stream"
)

// Group commit (Config.GroupCommit): the behaviours every store shows run in
// the conformance suite with group commit on (conformance_test.go); these
// tests put appends into one batch on purpose (stream.HoldGroup, see
// export_test.go, holds them in the queue as a batch in flight would) and
// check what becomes of each.

// newBatchStore is newJSStore with GroupCommitBatch: these tests are about
// batches, which GroupCommitAuto, the default, could stop sending for a
// moment to time pipelining.
func newBatchStore(t *testing.T, js jetstream.JetStream, mod ...func(*stream.Config)) *stream.Store {
	t.Helper()
	return newJSStore(t, js, append([]func(*stream.Config){func(c *stream.Config) { c.GroupCommit = stream.GroupCommitBatch }}, mod...)...)
}

// pending is an append running on a goroutine of its own.
type pending struct {
	res  stream.AppendResult
	err  error
	done chan struct{}
}

func goAppend(ctx context.Context, st stream.EventStore, agg stream.Aggregate, expect stream.Expectation, events ...stream.EventData) *pending {
	p := &pending{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.res, p.err = st.Append(ctx, agg, expect, events)
	}()
	return p
}

func goAppendBatch(ctx context.Context, st stream.EventStore, reqs ...stream.AppendRequest) *pending {
	p := &pending{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		res, err := st.AppendBatch(ctx, reqs)
		if err == nil {
			p.res = res[0]
		}
		p.err = err
	}()
	return p
}

// wait waits for p and returns its result.
func (p *pending) wait(t *testing.T) (stream.AppendResult, error) {
	t.Helper()
	select {
	case <-p.done:
		return p.res, p.err
	case <-time.After(30 * time.Second):
		t.Fatal("append did not return within 30s")
		return stream.AppendResult{}, nil
	}
}

// waitQueued waits until n appends wait in st's queue.
func waitQueued(t *testing.T, st *stream.Store, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return stream.QueuedAppends(st) == n }, 10*time.Second, time.Millisecond,
		"want %d appends queued", n)
}

func items(prefix string, n int) []stream.EventData {
	out := make([]stream.EventData, n)
	for i := range out {
		out[i] = stream.EventData{Data: itemAdded{SKU: fmt.Sprintf("%s-%d", prefix, i+1), Qty: i + 1}}
	}
	return out
}

func cart(id string) stream.Aggregate { return stream.Aggregate{Type: "cart", ID: id} }

// streamMsgs returns how many messages the store's stream holds.
func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

// requireAt checks that agg holds exactly versions 1..n and that the
// events res reported are stored where it says, contiguous.
func requireAt(t *testing.T, st stream.EventStore, agg stream.Aggregate, n int, res stream.AppendResult, k int) {
	t.Helper()
	evs := loadAll(t, st, agg)
	require.Len(t, evs, n, "%s: events", agg)
	for i, ev := range evs {
		require.EqualValues(t, i+1, ev.Version, "%s: versions", agg)
	}
	require.Equal(t, uint64(k-1), res.Last.Sequence-res.First.Sequence, "%s: %d events at consecutive sequences", agg, k)
	require.Equal(t, uint64(k-1), res.Last.Version-res.First.Version)
	first := evs[res.First.Version-1]
	require.Equal(t, res.First, first.Revision(), "%s: first event where reported", agg)
	for i := range k {
		require.Equal(t, res.First.Sequence+uint64(i), evs[int(res.First.Version)-1+i].Sequence, "%s: contiguous", agg)
	}
	rev, err := st.LastRevision(context.Background(), agg)
	require.NoError(t, err)
	require.Equal(t, evs[n-1].Revision(), rev)
}

func TestGroupCommitModes(t *testing.T) {
	for _, m := range []stream.GroupCommit{stream.GroupCommitAuto, stream.GroupCommitBatch, stream.GroupCommitPipeline, stream.GroupCommitOff} {
		got, err := stream.ParseGroupCommit(strings.ToUpper(m.String()))
		require.NoError(t, err)
		assert.Equal(t, m, got)
	}
	got, err := stream.ParseGroupCommit("")
	require.NoError(t, err)
	assert.Equal(t, stream.GroupCommitAuto, got)
	_, err = stream.ParseGroupCommit("fast")
	require.ErrorIs(t, err, stream.ErrStoreConfig)
	assert.Equal(t, "GroupCommit(9)", stream.GroupCommit(9).String())
	cfg := stream.Config{Name: "x", Registry: stream.NewRegistry(), GroupCommit: stream.GroupCommit(9)}
	require.ErrorIs(t, cfg.Validate(), stream.ErrStoreConfig)
	cfg.GroupCommit = stream.GroupCommitOff
	require.NoError(t, cfg.Validate())
}

// Appends that arrive while a batch is in flight go out together in one
// atomic batch, each command's events contiguous, each aggregate numbered
// from its own expectation; a command of several aggregates (AppendBatch)
// joins as one.
func TestGroupCommitCoalesces(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	a, err := st.Append(ctx, cart("a"), stream.ExpectNone(), items("a", 2))
	require.NoError(t, err)

	release := stream.HoldGroup(st)
	pa := goAppend(ctx, st, cart("a"), stream.ExpectRevision(a.Last), items("a2", 1)...)
	waitQueued(t, st, 1)
	pb := goAppend(ctx, st, cart("b"), stream.ExpectNone(), items("b", 3)...)
	waitQueued(t, st, 2)
	pc := goAppend(ctx, st, cart("c"), stream.ExpectAny(), items("c", 1)...)
	waitQueued(t, st, 3)
	pdx := goAppendBatch(ctx, st,
		stream.AppendRequest{Aggregate: cart("d"), Expect: stream.ExpectNone(), Events: items("d", 2)},
		stream.AppendRequest{Aggregate: cart("x"), Expect: stream.ExpectNone(), Events: items("x", 1)})
	waitQueued(t, st, 4)
	stream.GroupStats(st)
	release()

	ra, err := pa.wait(t)
	require.NoError(t, err)
	rb, err := pb.wait(t)
	require.NoError(t, err)
	rc, err := pc.wait(t)
	require.NoError(t, err)
	rd, err := pdx.wait(t)
	require.NoError(t, err)
	batches, appends := stream.GroupStats(st)
	assert.EqualValues(t, 1, batches, "one atomic batch")
	assert.EqualValues(t, 4, appends)

	assert.Equal(t, stream.Revision{Version: 3, Sequence: 3}, ra.First)
	requireAt(t, st, cart("a"), 3, ra, 1)
	requireAt(t, st, cart("b"), 3, rb, 3)
	requireAt(t, st, cart("c"), 1, rc, 1)
	requireAt(t, st, cart("d"), 2, rd, 2)
	x := loadAll(t, st, cart("x"))
	require.Len(t, x, 1)
	assert.Equal(t, rd.Last.Sequence+1, x[0].Sequence, "an AppendBatch command stays contiguous")
	// One batch: the four commands' events fill sequences 3..10 in order.
	assert.Equal(t, []uint64{3, 4, 7, 8}, []uint64{ra.First.Sequence, rb.First.Sequence, rc.First.Sequence, rd.First.Sequence})
	assert.EqualValues(t, 10, streamMsgs(t, js, "carts"))
}

// A stale expectation in a batch fails only its own command, with the
// actual revision; the others are sent again and stored, wherever the stale
// one stood in the batch, and whether the stale one had one event or
// several (none of which is stored).
func TestGroupCommitConflictFailsOnlyItsAppend(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	for _, c := range []struct {
		name   string
		stale  int // position of the stale command among four
		events int // events of the stale command
	}{
		{"first", 0, 1}, {"middle", 2, 3}, {"last", 3, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := "conflict" + c.name
			st := newBatchStore(t, js, func(cfg *stream.Config) { cfg.Name = name })
			ctx := context.Background()
			moved, err := st.Append(ctx, cart("moved"), stream.ExpectNone(), items("m", 1))
			require.NoError(t, err)

			release := stream.HoldGroup(st)
			var ps []*pending
			for i := range 4 {
				if i == c.stale {
					// Expects no events: the aggregate has one.
					ps = append(ps, goAppend(ctx, st, cart("moved"), stream.ExpectNone(), items("stale", c.events)...))
				} else {
					ps = append(ps, goAppend(ctx, st, cart(fmt.Sprint("ok", i)), stream.ExpectNone(), items("ok", i+1)...))
				}
				waitQueued(t, st, i+1)
			}
			stream.GroupStats(st)
			release()
			for i, p := range ps {
				res, err := p.wait(t)
				if i == c.stale {
					var ce *stream.ConflictError
					require.ErrorAs(t, err, &ce)
					assert.Equal(t, cart("moved"), ce.Aggregate)
					assert.Equal(t, stream.Revision{}, ce.Expected)
					assert.True(t, ce.ActualKnown)
					assert.Equal(t, moved.Last, ce.Actual)
					continue
				}
				require.NoError(t, err, "append %d", i)
				requireAt(t, st, cart(fmt.Sprint("ok", i)), i+1, res, i+1)
			}
			batches, appends := stream.GroupStats(st)
			assert.EqualValues(t, 2, batches, "the failed batch, then the others again")
			assert.EqualValues(t, 7, appends)
			assert.Len(t, loadAll(t, st, cart("moved")), 1, "nothing of the stale command is stored")
			assert.EqualValues(t, 1+(1+2+3+4-(c.stale+1)), streamMsgs(t, js, name))
		})
	}
}

// A stale expectation the server cannot name (ahead of an aggregate with no
// events: "wrong last sequence: 0"), and a multi-aggregate command with one
// stale aggregate: each command is settled on its own.
func TestGroupCommitConflictsSettledOneByOne(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	moved, err := st.Append(ctx, cart("moved"), stream.ExpectNone(), items("m", 1))
	require.NoError(t, err)

	release := stream.HoldGroup(st)
	ahead := stream.Revision{Version: 3, Sequence: 999}
	pAhead := goAppend(ctx, st, cart("empty"), stream.ExpectRevision(ahead), items("e", 1)...)
	waitQueued(t, st, 1)
	pOK := goAppend(ctx, st, cart("ok"), stream.ExpectNone(), items("ok", 2)...)
	waitQueued(t, st, 2)
	pMulti := goAppendBatch(ctx, st,
		stream.AppendRequest{Aggregate: cart("fresh"), Expect: stream.ExpectNone(), Events: items("f", 1)},
		stream.AppendRequest{Aggregate: cart("moved"), Expect: stream.ExpectNone(), Events: items("s", 1)})
	waitQueued(t, st, 3)
	release()

	_, err = pAhead.wait(t)
	var ce *stream.ConflictError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, cart("empty"), ce.Aggregate)
	assert.Equal(t, ahead, ce.Expected)
	assert.True(t, ce.ActualKnown)
	assert.Equal(t, stream.Revision{}, ce.Actual)

	res, err := pOK.wait(t)
	require.NoError(t, err)
	requireAt(t, st, cart("ok"), 2, res, 2)

	_, err = pMulti.wait(t)
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, cart("moved"), ce.Aggregate)
	assert.Equal(t, moved.Last, ce.Actual)
	assert.Empty(t, loadAll(t, st, cart("fresh")), "a multi-aggregate command is all or none")
	assert.Empty(t, loadAll(t, st, cart("empty")))
	assert.EqualValues(t, 3, streamMsgs(t, js, "carts"))
}

// Two commands on one aggregate that arrive together are never in one
// batch: the later waits for the earlier. One that expected the same
// revision is then a conflict with the revision the earlier left (it is
// answered without being sent); a resend of the earlier one (same event
// ids) is a duplicate, not a conflict; one that expects what the earlier
// left succeeds.
func TestGroupCommitSameAggregate(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()

	release := stream.HoldGroup(st)
	first := withIDs("first", items("a", 2))
	p1 := goAppend(ctx, st, cart("one"), stream.ExpectNone(), first...)
	waitQueued(t, st, 1)
	p2 := goAppend(ctx, st, cart("one"), stream.ExpectNone(), items("b", 1)...)
	waitQueued(t, st, 2)
	pRetry := goAppend(ctx, st, cart("one"), stream.ExpectNone(), first...)
	waitQueued(t, st, 3)
	pOther := goAppend(ctx, st, cart("two"), stream.ExpectNone(), items("c", 1)...)
	waitQueued(t, st, 4)
	stream.GroupStats(st)
	release()

	r1, err := p1.wait(t)
	require.NoError(t, err)
	assert.False(t, r1.Duplicate)
	_, err = p2.wait(t)
	var ce *stream.ConflictError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, r1.Last, ce.Actual)
	assert.True(t, ce.ActualKnown)
	rr, err := pRetry.wait(t)
	require.NoError(t, err, "a resend of an append that landed is not a conflict")
	assert.True(t, rr.Duplicate)
	assert.Equal(t, r1.First, rr.First)
	assert.Equal(t, r1.Last, rr.Last)
	_, err = pOther.wait(t)
	require.NoError(t, err)
	batches, appends := stream.GroupStats(st)
	assert.EqualValues(t, 1, batches, "one batch: the first append with the other aggregate's")
	assert.EqualValues(t, 2, appends)
	requireAt(t, st, cart("one"), 2, r1, 2)
	assert.EqualValues(t, 3, streamMsgs(t, js, "carts"))

	// Chained: the second expects what the first will leave.
	release = stream.HoldGroup(st)
	pa := goAppend(ctx, st, cart("one"), stream.ExpectRevision(r1.Last), items("d", 1)...)
	waitQueued(t, st, 1)
	pb := goAppend(ctx, st, cart("one"), stream.ExpectRevision(stream.Revision{Version: 3, Sequence: 4}), items("e", 1)...)
	waitQueued(t, st, 2)
	release()
	ra, err := pa.wait(t)
	require.NoError(t, err)
	assert.Equal(t, stream.Revision{Version: 3, Sequence: 4}, ra.Last)
	rb, err := pb.wait(t)
	require.NoError(t, err)
	assert.Equal(t, stream.Revision{Version: 4, Sequence: 5}, rb.Last)
	requireAt(t, st, cart("one"), 4, rb, 1)
}

// An append in a batch whose event ids are already stored (a retry of an
// append that landed) makes the server refuse the whole batch (10201,
// without saying which): every command is settled on its own, the retry as
// a duplicate at its original position, the others stored.
func TestGroupCommitDuplicateInBatch(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	evs := withIDs("once", items("a", 2))
	orig, err := st.Append(ctx, cart("a"), stream.ExpectNone(), evs)
	require.NoError(t, err)

	release := stream.HoldGroup(st)
	pb := goAppend(ctx, st, cart("b"), stream.ExpectNone(), items("b", 1)...)
	waitQueued(t, st, 1)
	pRetry := goAppend(ctx, st, cart("a"), stream.ExpectNone(), evs...)
	waitQueued(t, st, 2)
	pc := goAppend(ctx, st, cart("c"), stream.ExpectNone(), items("c", 2)...)
	waitQueued(t, st, 3)
	release()

	rr, err := pRetry.wait(t)
	require.NoError(t, err)
	assert.True(t, rr.Duplicate)
	assert.Equal(t, orig.First, rr.First)
	assert.Equal(t, orig.Last, rr.Last)
	rb, err := pb.wait(t)
	require.NoError(t, err)
	requireAt(t, st, cart("b"), 1, rb, 1)
	rc, err := pc.wait(t)
	require.NoError(t, err)
	requireAt(t, st, cart("c"), 2, rc, 2)
	assert.EqualValues(t, 5, streamMsgs(t, js, "carts"))
}

// An append whose context ends while it waits in the queue returns at once
// with the context's error and stores nothing; the appends queued with it
// are not affected.
func TestGroupCommitCancelWhileQueued(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	release := stream.HoldGroup(st)
	pa := goAppend(ctx, st, cart("a"), stream.ExpectNone(), items("a", 1)...)
	waitQueued(t, st, 1)
	cctx, cancel := context.WithCancel(ctx)
	pCancel := goAppend(cctx, st, cart("x"), stream.ExpectNone(), items("x", 2)...)
	waitQueued(t, st, 2)
	pb := goAppend(ctx, st, cart("b"), stream.ExpectNone(), items("b", 1)...)
	waitQueued(t, st, 3)
	cancel()
	_, err := pCancel.wait(t)
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, stream.ErrIndeterminate, "nothing was sent")
	waitQueued(t, st, 2)
	release()
	_, err = pa.wait(t)
	require.NoError(t, err)
	_, err = pb.wait(t)
	require.NoError(t, err)
	assert.Empty(t, loadAll(t, st, cart("x")))
	assert.EqualValues(t, 2, streamMsgs(t, js, "carts"))
}

// A batch whose answer is lost (the server stored it; the connection that
// would carry the ack drops) is settled command by command with the same
// event ids: each is reported as stored (a duplicate), nothing is stored
// twice, and an append whose caller gave up after it was sent is reported
// as stored, not as failed. On one server and on a 3-node cluster.
func TestGroupCommitLostReply(t *testing.T) {
	t.Run("R1", func(t *testing.T) {
		srv := embedded.RunServer(t)
		testGroupLostReply(t, srv.ClientURL(), 1)
	})
	t.Run("R3", func(t *testing.T) {
		if testing.Short() {
			t.Skip("3-node cluster: skipped with -short")
		}
		c := embedded.RunCluster(t)
		testGroupLostReply(t, c.ClientURLs()[1], 3)
	})
}

func testGroupLostReply(t *testing.T, url string, replicas int) {
	ctx := context.Background()
	px, err := faultproxy.New(strings.TrimPrefix(url, "nats://"))
	require.NoError(t, err)
	t.Cleanup(px.Close)
	nc, err := nats.Connect(px.URL(), nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1), nats.IgnoreDiscoveredServers())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	setupJS, err := jetstream.New(nc)
	require.NoError(t, err)
	newBatchStore(t, setupJS, func(c *stream.Config) { c.Replicas = replicas; c.Name = "lost" })
	// Short attempts, so that the appends resend while replies are lost.
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(500*time.Millisecond))
	require.NoError(t, err)
	st, err := stream.OpenStore(ctx, js, stream.Config{Name: "lost", Registry: testRegistry(t), GroupCommit: stream.GroupCommitBatch})
	require.NoError(t, err)
	before, err := st.Append(ctx, cart("a"), stream.ExpectNone(), items("before", 1))
	require.NoError(t, err)

	obs, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(obs.Close)
	ojs, err := jetstream.New(obs)
	require.NoError(t, err)

	release := stream.HoldGroup(st)
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pa := goAppend(actx, st, cart("a"), stream.ExpectRevision(before.Last), items("a", 1)...)
	waitQueued(t, st, 1)
	pb := goAppend(actx, st, cart("b"), stream.ExpectNone(), items("b", 3)...)
	waitQueued(t, st, 2)
	gctx, giveUp := context.WithCancel(ctx)
	pc := goAppend(gctx, st, cart("c"), stream.ExpectNone(), items("c", 1)...)
	waitQueued(t, st, 3)
	stream.GroupStats(st)
	px.SwallowReplies(true)
	release()
	// The server stores the batch; its answer is swallowed.
	require.Eventually(t, func() bool { return streamMsgs(t, ojs, "lost") == 6 }, 10*time.Second, 5*time.Millisecond)
	giveUp()                           // c's caller gives up with its append in flight
	time.Sleep(600 * time.Millisecond) // the batch's attempt times out
	px.SwallowReplies(false)
	px.Cut()

	ra, err := pa.wait(t)
	require.NoError(t, err)
	rb, err := pb.wait(t)
	require.NoError(t, err)
	rc, err := pc.wait(t)
	require.NoError(t, err, "an append that landed is reported as landed, even after its caller gave up")
	batches, _ := stream.GroupStats(st)
	assert.EqualValues(t, 1, batches)
	for _, r := range []stream.AppendResult{ra, rb, rc} {
		assert.True(t, r.Duplicate, "%s: found stored by a resend", r.Aggregate)
	}
	assert.Equal(t, stream.Revision{Version: 2, Sequence: 2}, ra.First)
	assert.Equal(t, stream.Revision{Version: 3, Sequence: 5}, rb.Last)
	assert.Equal(t, stream.Revision{Version: 1, Sequence: 6}, rc.Last)
	assert.EqualValues(t, 6, streamMsgs(t, ojs, "lost"), "stored once")
	requireAt(t, st, cart("b"), 3, rb, 3)
}

// A server whose max_batch_size is below MaxBatch refuses a larger group
// batch (10199, naming its limit): the store learns the limit and sends
// smaller batches, losing nothing. A single append larger than the limit
// gets the server's error.
func TestGroupCommitServerBatchLimit(t *testing.T) {
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) { so.JetStreamLimits.MaxBatchSize = 4 }
	})
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	release := stream.HoldGroup(st)
	var ps []*pending
	for i := range 10 {
		ps = append(ps, goAppend(ctx, st, cart(fmt.Sprint(i)), stream.ExpectNone(), items("x", 1)...))
		waitQueued(t, st, i+1)
	}
	release()
	for i, p := range ps {
		res, err := p.wait(t)
		require.NoError(t, err, "append %d", i)
		requireAt(t, st, cart(fmt.Sprint(i)), 1, res, 1)
	}
	assert.Equal(t, 4, stream.GroupMaxEvents(st))
	assert.EqualValues(t, 10, streamMsgs(t, js, "carts"))
	_, err := st.Append(ctx, cart("big"), stream.ExpectNone(), items("big", 5))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "too large")
}

// An event above the server's max_payload in a batch (the store's
// MaxEventSize being larger) would leave the batch half sent: the batch's
// commands are sent on their own, the large one failing with ErrTooLarge
// and the others stored.
func TestGroupCommitEventAboveMaxPayload(t *testing.T) {
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) { so.MaxPayload = 32 << 10 }
	})
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	release := stream.HoldGroup(st)
	pa := goAppend(ctx, st, cart("a"), stream.ExpectNone(), items("a", 1)...)
	waitQueued(t, st, 1)
	pBig := goAppend(ctx, st, cart("big"), stream.ExpectNone(), stream.EventData{Data: itemAdded{SKU: strings.Repeat("x", 40<<10)}})
	waitQueued(t, st, 2)
	pb := goAppend(ctx, st, cart("b"), stream.ExpectNone(), items("b", 2)...)
	waitQueued(t, st, 3)
	release()
	_, err := pBig.wait(t)
	require.ErrorIs(t, err, stream.ErrTooLarge)
	_, err = pa.wait(t)
	require.NoError(t, err)
	rb, err := pb.wait(t)
	require.NoError(t, err)
	requireAt(t, st, cart("b"), 2, rb, 2)
	assert.Empty(t, loadAll(t, st, cart("big")))
	assert.EqualValues(t, 3, streamMsgs(t, js, "carts"))
}

// The store runs no goroutine of its own once its appends have returned:
// nothing to close, nothing leaked.
func TestGroupCommitLeavesNoGoroutine(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newBatchStore(t, js)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			var rev stream.Revision
			for i := range 10 {
				res, err := st.Append(ctx, cart(fmt.Sprint(w)), stream.ExpectRevision(rev), items(fmt.Sprint(i), 1+i%3))
				if !assert.NoError(t, err) {
					return
				}
				rev = res.Last
			}
		})
	}
	wg.Wait()
	batches, appends := stream.GroupStats(st)
	t.Logf("%d group batches carried %d of 160 appends", batches, appends)
	assert.Positive(t, batches, "16 writers under fsync always: some appends went together")
	require.Eventually(t, func() bool { return committerGoroutines() == 0 }, 5*time.Second, 10*time.Millisecond,
		"goroutines of the store's committer still running")
}

// committerGoroutines counts goroutines running group-commit code.
func committerGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "stream.(*committer)") {
			n++
		}
	}
	return n
}

// withIDs sets event ids prefix-1..prefix-n.
func withIDs(prefix string, evs []stream.EventData) []stream.EventData {
	for i := range evs {
		evs[i].ID = fmt.Sprintf("%s-%d", prefix, i+1)
	}
	return evs
}
