package soak_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/soak"
	"github.com/esnats/esnats/projections"
)

// ctxTimeout returns a context that ends after d or with the test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// phase runs writers on env until stopped.
type phase struct {
	w    *soak.Writers
	stop context.CancelFunc
	done chan struct{}
}

func startWriters(t *testing.T, env *soak.Env, ledger *soak.Ledger, seed uint64) *phase {
	t.Helper()
	w := &soak.Writers{
		Store: env.Store, Repository: env.Commands, LoadRepository: env.Loads, Ledger: ledger,
		Counters:   soak.Counters{Hot: 4, Cold: 200, HotShare: 0.25},
		Goroutines: 8,
		// An append riding out a failover settles within about 10s (5
		// sends of 2s at most). A read from the stream leader in flight
		// when the leader stops is never answered, and the store's leader
		// reads wait for the caller's whole deadline: such an append
		// (after a 10071/10164 it reads what landed) ends indeterminate
		// when this runs out, so it bounds how long stopping the writers
		// takes.
		OpTimeout: 10 * time.Second,
		Seed:      seed,
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &phase{w: w, stop: stop, done: make(chan struct{})}
	go func() { defer close(p.done); _ = w.Run(ctx) }()
	t.Cleanup(p.halt)
	return p
}

// halt stops the writers and waits for their operations in flight.
func (p *phase) halt() {
	p.stop()
	<-p.done
}

// waitAcked waits until the ledger holds n more acknowledged attempts than
// when it was called: the writers make progress.
func waitAcked(t *testing.T, ledger *soak.Ledger, p *phase, n int64, what string) {
	t.Helper()
	start, _, _, _ := ledger.Counts()
	deadline := time.Now().Add(30 * time.Second)
	for {
		acked, _, _, _ := ledger.Counts()
		if acked >= start+n {
			return
		}
		if time.Now().After(deadline) {
			errs, examples := p.w.Stats().Errors()
			t.Fatalf("%s: only %d of %d appends acknowledged in 30s; writer errors %v, e.g. %v", what, acked-start, n, errs, examples)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// requireReport fails the test on any invariant violation.
func requireReport(t *testing.T, r *soak.Report, err error) *soak.Report {
	t.Helper()
	require.NoError(t, err)
	t.Log(r)
	require.NoError(t, r.Err())
	require.Positive(t, r.Events)
	return r
}

// requireModels waits until the worker's projections have caught up with
// the report's last event and compares their read models with the
// checker's own replay of the store.
func requireModels(t *testing.T, ctx context.Context, w *soak.Worker, r *soak.Report, kvModel *projections.KV, seen *soak.Seen) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	require.NoError(t, w.WaitCaughtUp(wctx, r.LastSequence))
	got, err := soak.KVTally(ctx, kvModel)
	require.NoError(t, err)
	require.Empty(t, soak.Diff(r.Replay, got), "exactly-once KV read model against a replay of the store")
	require.Empty(t, soak.DiffKeys(r.Keys, seen.Keys()), "ack-floor read model against the store")
	failures, last := w.Failures()
	t.Logf("read models equal a replay of %d events; runner failures (restarted): %d %s", r.Events, failures, last)
}

// TestFaults runs concurrent writers (repository commands and raw appends
// with ExpectRevision, over 4 hot and 200 cold counters) and a projection
// worker (an exactly-once KV read model and an ack-floor one) on an R3
// store of a 3-node cluster while the stream leader is stopped and
// restarted three times; then checks every invariant (see the package
// documentation) and that the read models equal a replay of the store;
// then stops the whole cluster, starts it again on the same store
// directories, checks again, writes more and checks a last time.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 3-node cluster, three leader failovers and a whole-cluster restart (about 40 s)")
	}
	began := time.Now()
	ctx := ctxTimeout(t, 4*time.Minute)
	dir := t.TempDir()
	c := embedded.RunCluster(t, func(o *embedded.ClusterOptions) { o.Dir = dir })
	env, err := soak.Open(ctx, c, soak.Config{})
	require.NoError(t, err)
	t.Cleanup(env.Close)
	const tallyBucket = "soak_tally"
	streams := []string{env.Cfg.Store, "KV_" + env.Cfg.SnapshotBucket, "KV_" + tallyBucket}

	// The projection worker, its models kept across restarts.
	kvModel, err := soak.NewKVTally(ctx, env.WorkerJS, projections.KVConfig{Bucket: tallyBucket, Replicas: 3})
	require.NoError(t, err)
	seen := soak.NewSeen()
	newWorker := func(env *soak.Env, kvModel *projections.KV) *soak.Worker {
		w := &soak.Worker{JS: env.WorkerJS, Store: env.WorkerStore, Projections: []projections.Projection{
			{Name: "tally", Model: kvModel, Consumer: soak.ConsumerConfig()},
			{Name: "seen", Model: seen, Consumer: soak.ConsumerConfig()},
		}}
		require.NoError(t, w.Start(ctx))
		t.Cleanup(w.Stop)
		return w
	}
	worker := newWorker(env, kvModel)
	t.Logf("cluster, store and worker up in %s", time.Since(began).Round(time.Millisecond))

	ledger := soak.NewLedger("a")
	writers := startWriters(t, env, ledger, 1)
	waitAcked(t, ledger, writers, 100, "before the faults")
	t.Logf("100 appends acknowledged after %s", time.Since(began).Round(time.Millisecond))
	for round := 1; round <= 3; round++ {
		t0 := time.Now()
		victim, err := soak.StopStreamLeader(ctx, c, env.Cfg.Store)
		require.NoError(t, err, "round %d", round)
		t1 := time.Now()
		waitAcked(t, ledger, writers, 50, fmt.Sprintf("round %d, node %d down", round, victim))
		t2 := time.Now()
		require.NoError(t, soak.RestartNode(ctx, c, victim, streams...), "round %d", round)
		t3 := time.Now()
		waitAcked(t, ledger, writers, 50, fmt.Sprintf("round %d, node %d back", round, victim))
		t.Logf("round %d: stopped leader node %d, new leader in %s, 50 appends in %s, node back and current in %s",
			round, victim, t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), t3.Sub(t2).Round(time.Millisecond))
	}
	t0 := time.Now()
	writers.halt()
	t.Logf("writers stopped in %s", time.Since(t0).Round(time.Millisecond))
	errs, examples := writers.w.Stats().Errors()
	slowest, slowOp := writers.w.Stats().Slowest()
	t.Logf("writers: %d operations, errors %v, e.g. %v; slowest operation %s: %s", writers.w.Stats().Ops.Load(), errs, examples, slowest.Round(time.Millisecond), slowOp)

	r, err := env.Check(ctx, ledger)
	r = requireReport(t, r, err)
	requireModels(t, ctx, worker, r, kvModel, seen)
	t.Logf("after the failovers: checked in %s", time.Since(began).Round(time.Millisecond))

	// The whole cluster stops and starts again on the same directories.
	worker.Stop()
	env.Close()
	c.Shutdown()
	t0 = time.Now()
	c = embedded.RunCluster(t, func(o *embedded.ClusterOptions) { o.Dir = dir })
	env, err = soak.Open(ctx, c, soak.Config{})
	require.NoError(t, err)
	t.Cleanup(env.Close)
	t.Logf("whole cluster restarted in %s", time.Since(t0).Round(time.Millisecond))
	r2, err := env.Check(ctx, ledger)
	r2 = requireReport(t, r2, err)
	require.Equal(t, r.Events, r2.Events, "every event is kept")
	require.Equal(t, r.LastSequence, r2.LastSequence)
	require.Equal(t, r.Replay, r2.Replay)
	require.Equal(t, r.Keys, r2.Keys)

	// The read model's bucket kept its data and checkpoint; the worker
	// resumes, and writers go on. (projections.NewKV does not retry an API
	// request left unanswered while the bucket has no leader yet, as
	// stream.NewStore and kv.NewStore do: wait for it.)
	require.NoError(t, c.WaitForStreamCurrent(ctx, "", "KV_"+tallyBucket))
	kvModel, err = soak.NewKVTally(ctx, env.WorkerJS, projections.KVConfig{Bucket: tallyBucket, Replicas: 3})
	require.NoError(t, err)
	got, err := soak.KVTally(ctx, kvModel)
	require.NoError(t, err)
	require.Empty(t, soak.Diff(r.Replay, got), "the KV read model survives the restart")
	worker = newWorker(env, kvModel)
	writers = startWriters(t, env, ledger, 2)
	waitAcked(t, ledger, writers, 100, "after the whole-cluster restart")
	writers.halt()
	r3, err := env.Check(ctx, ledger)
	r3 = requireReport(t, r3, err)
	require.Greater(t, r3.Events, r2.Events)
	requireModels(t, ctx, worker, r3, kvModel, seen)
	t.Logf("whole test %s", time.Since(began).Round(time.Millisecond))
}
