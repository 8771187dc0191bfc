package projections_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// TestRunnerSurvivesStreamLeaderLoss runs an exactly-once projection (a
// Memory model of items per SKU) on an R3 store of a 3-node cluster while
// events are appended continuously; in the middle the stream's leader node
// is stopped (the runner's connection is to that node, so it is cut too),
// appends go on, and the node is restarted later. At the end the
// projection has caught up and its model equals a full replay: no event
// lost, none counted twice.
func TestRunnerSurvivesStreamLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a 3-node cluster, stops and restarts a node (10-20 s)")
	}
	const (
		total = 4000 // events
		chunk = 50   // events per AppendBatch
	)
	began := time.Now()
	c := embedded.RunCluster(t)
	ctx := context.Background()
	reconnect := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}
	// The writer's connection. An append in flight when the leader stops
	// may get no answer: it is resent when the new leader is announced,
	// or else after the JetStream timeout (default 5s): 2s keeps the test
	// short.
	wjs, err := jetstream.New(embedded.MustConnect(t, c, reconnect...), jetstream.WithDefaultTimeout(2*time.Second))
	require.NoError(t, err)
	cfg := stream.Config{Name: "shop", Registry: runnerRegistry(), Replicas: 3}
	writer, err := stream.NewStore(ctx, wjs, cfg)
	require.NoError(t, err)
	leader, err := c.WaitForStreamLeader(ctxTimeout(t, 10*time.Second), "", "shop")
	require.NoError(t, err)
	victim := nodeIndex(t, c, leader)
	t.Logf("cluster up and store created in %s; stream leader: node %d", time.Since(began).Round(time.Millisecond), victim)

	// The worker connects to the stream leader first (and fails over to
	// the others), so that stopping the leader also cuts its connection.
	urls := c.ClientURLs()
	urls[0], urls[victim] = urls[victim], urls[0]
	wnc, err := nats.Connect(strings.Join(urls, ","), append(reconnect, nats.DontRandomize())...)
	require.NoError(t, err)
	t.Cleanup(wnc.Close)
	js, err := jetstream.New(wnc)
	require.NoError(t, err)
	st, err := stream.OpenStore(ctx, js, cfg)
	require.NoError(t, err)
	model := perSKU()
	r := projections.NewRunner(js, st, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: model,
		Consumer: consumers.Config{BatchSize: 50, PinnedTTL: 2 * time.Second, AckWait: 5 * time.Second}}))
	rctx, stopRunner := context.WithCancel(ctx)
	defer stopRunner()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(rctx) }()

	// The writer appends chunk after chunk, paced a little so that the
	// failover happens in the middle, retrying each chunk on errors until
	// it is stored. Each event has its own aggregate (ExpectNone), so a
	// retry of a chunk that did land fails with a conflict and is not
	// stored twice; a chunk is atomic, so the conflict means all of it
	// landed.
	var appended, retries, slowest atomic.Int64 // slowest: nanoseconds
	var firstErrs atomic.Value                  // []string: a few of the transient errors
	appendErr := make(chan error, 1)
	go func() {
		appendErr <- func() error {
			for from := 0; from < total; from += chunk {
				reqs := make([]stream.AppendRequest, 0, chunk)
				for i := from; i < from+chunk; i++ {
					reqs = append(reqs, stream.AppendRequest{
						Aggregate: stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%d-%d", i%50, i)},
						Expect:    stream.ExpectNone(),
						Events:    []stream.EventData{{Data: ItemAdded{SKU: fmt.Sprintf("s%d", i%7), Qty: 1 + i%3}}},
					})
				}
				deadline := time.Now().Add(20 * time.Second)
				for attempt := 1; ; attempt++ {
					actx, cancel := context.WithTimeout(ctx, 5*time.Second)
					t0 := time.Now()
					_, err := writer.AppendBatch(actx, reqs)
					cancel()
					if d := int64(time.Since(t0)); d > slowest.Load() {
						slowest.Store(d)
					}
					if err == nil {
						break
					}
					if errors.Is(err, stream.ErrConflict) && attempt > 1 {
						// An earlier attempt of this chunk landed.
						rev, lerr := writer.LastRevision(ctx, reqs[0].Aggregate)
						if lerr == nil && rev.Version == 1 {
							break
						}
					}
					if n := retries.Add(1); n <= 3 {
						prev, _ := firstErrs.Load().([]string)
						firstErrs.Store(append(prev, err.Error()))
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("events %d-%d: still failing after 20s: %w", from, from+chunk-1, err)
					}
					time.Sleep(50 * time.Millisecond)
				}
				appended.Add(chunk)
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		}()
	}()
	waitAppended := func(n int64) {
		t.Helper()
		require.Eventually(t, func() bool {
			select {
			case err := <-appendErr:
				appendErr <- err
				return true
			default:
				return appended.Load() >= n
			}
		}, 25*time.Second, 5*time.Millisecond, "appended %d of %d events", appended.Load(), n)
		select {
		case err := <-appendErr:
			appendErr <- err
			require.NoError(t, err)
		default:
		}
	}

	waitAppended(total / 4)
	// A current follower takes over at once when the leader stops.
	require.NoError(t, c.WaitForStreamCurrent(ctxTimeout(t, 10*time.Second), "", "shop"))
	leader, err = c.StreamLeader("", "shop")
	require.NoError(t, err)
	victim = nodeIndex(t, c, leader)
	stopAt := appended.Load()
	stopped := time.Now()
	c.StopNode(victim)
	newLeader, err := c.WaitForStreamLeader(ctxTimeout(t, 15*time.Second), "", "shop")
	require.NoError(t, err)
	t.Logf("stopped stream leader node %d at %d events appended; node %d leads after %s",
		victim, stopAt, nodeIndex(t, c, newLeader), time.Since(stopped).Round(time.Millisecond))

	waitAppended(stopAt + total/4) // appends go on without the node
	restarting := time.Now()
	require.NoError(t, c.RestartNode(victim))
	t.Logf("node %d down for %s (%d events appended meanwhile), rejoined in %s",
		victim, restarting.Sub(stopped).Round(time.Millisecond), appended.Load()-stopAt, time.Since(restarting).Round(time.Millisecond))

	waitAppended(total)
	require.NoError(t, <-appendErr)
	t.Logf("slowest AppendBatch call: %s", time.Duration(slowest.Load()).Round(time.Millisecond))
	if errs, _ := firstErrs.Load().([]string); len(errs) > 0 {
		t.Logf("%d append attempts failed and were retried, e.g. %q", retries.Load(), errs)
	}
	s, err := wjs.Stream(ctx, "shop")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, total, info.State.Msgs, "the store holds each event once")

	caughtUp := time.Now()
	var status projections.Status
	require.Eventually(t, func() bool {
		select {
		case err := <-runErr:
			runErr <- err
			return true // reported below
		default:
		}
		status, err = r.StatusOf(ctx, "per-sku")
		return err == nil && status.Lag == 0 && status.Position == info.State.LastSeq
	}, 20*time.Second, 20*time.Millisecond, "projection status %+v", status)
	select {
	case err := <-runErr:
		require.NoError(t, err, "the runner stopped before it was asked to")
		t.Fatal("the runner stopped before it was asked to")
	default:
	}
	t.Logf("projection caught up %s after the last append (%+v); whole test %s",
		time.Since(caughtUp).Round(time.Millisecond), status, time.Since(began).Round(time.Millisecond))
	cp, err := model.Checkpoint(ctx)
	require.NoError(t, err)
	assert.Equal(t, info.State.LastSeq, cp)
	assert.Equal(t, expected(total), model.Snapshot(), "every event counted exactly once")
	stopRunner()
	require.NoError(t, <-runErr)
}

// ctxTimeout returns a context that ends after d or with the test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// nodeIndex returns n's index in c.
func nodeIndex(t *testing.T, c *embedded.Cluster, n *embedded.Server) int {
	t.Helper()
	for i, m := range c.Nodes() {
		if m == n {
			return i
		}
	}
	t.Fatalf("%s is not a node of %s", n.Name(), c)
	return -1
}
