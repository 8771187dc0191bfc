package projections_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

func runnerRegistry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "item-added")
	return reg
}

type runnerEnv struct {
	srv   *embedded.Server
	js    jetstream.JetStream
	store *stream.Store
}

func newRunnerEnv(t *testing.T) *runnerEnv {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st, err := stream.NewStore(context.Background(), js, stream.Config{Name: "shop", Registry: runnerRegistry()})
	require.NoError(t, err)
	return &runnerEnv{srv: srv, js: js, store: st}
}

// fill appends n events in atomic batches of up to 100 over 50 carts; SKU
// i%7, quantity 1+i%3. It returns the expected items per SKU.
func (e *runnerEnv) fill(t *testing.T, from, n int) {
	t.Helper()
	ctx := context.Background()
	var reqs []stream.AppendRequest
	flush := func() {
		if len(reqs) == 0 {
			return
		}
		_, err := e.store.AppendBatch(ctx, reqs)
		require.NoError(t, err)
		reqs = reqs[:0]
	}
	for i := from; i < from+n; i++ {
		reqs = append(reqs, stream.AppendRequest{
			Aggregate: stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%d-%d", i%50, i)},
			Expect:    stream.ExpectNone(),
			Events:    []stream.EventData{{Data: ItemAdded{SKU: fmt.Sprintf("s%d", i%7), Qty: 1 + i%3}}},
		})
		if len(reqs) == 100 {
			flush()
		}
	}
	flush()
}

func expected(n int) map[string]int {
	want := map[string]int{}
	for i := range n {
		want[fmt.Sprintf("s%d", i%7)] += 1 + i%3
	}
	return want
}

func perSKU() *projections.Memory[int] {
	return projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		it := ev.Data.(ItemAdded)
		view[it.SKU] += it.Qty
		return nil
	})
}

func waitLag0(t *testing.T, r *projections.Runner, name string) projections.Status {
	t.Helper()
	var st projections.Status
	require.Eventually(t, func() bool {
		var err error
		st, err = r.StatusOf(context.Background(), name)
		return err == nil && st.Lag == 0 && st.Position > 0
	}, 20*time.Second, 10*time.Millisecond)
	return st
}

func TestRunnerExactlyOnceAcrossAbruptStops(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 3000)
	model := perSKU() // outlives the workers, as a database would
	// Workers die abruptly (their connection is cut) in the middle of the
	// stream, again and again; each new one resumes.
	for round := 0; ; round++ {
		nc, js := embedded.MustJetStream(t, e.srv)
		st, err := stream.OpenStore(context.Background(), js, stream.Config{Name: "shop", Registry: runnerRegistry()})
		require.NoError(t, err)
		r := projections.NewRunner(js, st, nil)
		require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: model,
			Consumer: consumers.Config{BatchSize: 50, PinnedTTL: 2 * time.Second, AckWait: 2 * time.Second}}))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		cp0, _ := model.Checkpoint(ctx)
		if cp0 == 3000 || round == 6 {
			st := waitLag0(t, r, "per-sku")
			assert.EqualValues(t, 3000, st.Position)
			cancel()
			require.NoError(t, <-done)
			nc.Close()
			break
		}
		require.Eventually(t, func() bool { cp, _ := model.Checkpoint(ctx); return cp >= cp0+400 || cp == 3000 }, 20*time.Second, time.Millisecond)
		nc.Close() // abrupt: no clean stop, unacknowledged batches in flight
		cancel()
		<-done
	}
	assert.Equal(t, expected(3000), model.Snapshot(), "read model equals a full replay, nothing counted twice")
}

// An idempotent model (not Checkpointed): the consumer's ack floor is the
// position.
type lastSKU struct {
	mu sync.Mutex
	m  map[string]string // cart -> last SKU added
	n  int
}

func (l *lastSKU) Apply(_ context.Context, evs []*stream.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		l.m[ev.Aggregate.ID] = ev.Data.(ItemAdded).SKU
		l.n++
	}
	return nil
}

func TestRunnerAckFloorModeAndStatus(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 500)
	model := &lastSKU{m: map[string]string{}}
	r := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "last-sku", Model: model}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	st := waitLag0(t, r, "last-sku")
	assert.Equal(t, "ack-floor", st.Mode)
	assert.EqualValues(t, 500, st.Position)
	e.fill(t, 500, 100)
	st = waitLag0(t, r, "last-sku")
	assert.EqualValues(t, 600, st.Position)
	cancel()
	require.NoError(t, <-done)
	model.mu.Lock()
	defer model.mu.Unlock()
	assert.Len(t, model.m, 600)
	assert.Equal(t, 600, model.n, "a clean run delivers each event once")
}

func TestRunnerRebuildGivesIdenticalModel(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 2000)
	live := perSKU()
	r := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: live}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitLag0(t, r, "per-sku")

	fresh := perSKU()
	var mu sync.Mutex
	var reports []projections.Progress
	require.NoError(t, r.Rebuild(ctx, "per-sku", fresh, func(p projections.Progress) {
		mu.Lock()
		reports = append(reports, p)
		mu.Unlock()
	}))
	assert.Equal(t, live.Snapshot(), fresh.Snapshot(), "a rebuild gives an identical read model")
	mu.Lock()
	last := reports[len(reports)-1]
	mu.Unlock()
	assert.True(t, last.Done)
	assert.EqualValues(t, 2000, last.Target)
	assert.EqualValues(t, 2000, last.Position)

	// After the switch the runner feeds the rebuilt model.
	e.fill(t, 2000, 70)
	require.Eventually(t, func() bool { cp, _ := fresh.Checkpoint(ctx); return cp == 2070 }, 20*time.Second, 10*time.Millisecond)
	assert.Equal(t, expected(2070), fresh.Snapshot())
	cpLive, _ := live.Checkpoint(ctx)
	assert.EqualValues(t, 2000, cpLive, "the old model is no longer fed")
	cancel()
	require.NoError(t, <-done)

	// A new process finds the rebuilt consumer, and resumes after the
	// model's checkpoint.
	r2 := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r2.Add(projections.Projection{Name: "per-sku", Model: fresh}))
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- r2.Run(ctx2) }()
	e.fill(t, 2070, 30)
	require.Eventually(t, func() bool { cp, _ := fresh.Checkpoint(ctx2); return cp == 2100 }, 20*time.Second, 10*time.Millisecond)
	cancel2()
	require.NoError(t, <-done2)
	assert.Equal(t, expected(2100), fresh.Snapshot())
	names := []string{}
	s, err := e.js.Stream(context.Background(), "shop")
	require.NoError(t, err)
	for n := range s.ConsumerNames(context.Background()).Name() {
		names = append(names, n)
	}
	assert.Len(t, names, 1, "the replaced consumer was deleted: %v", names)
}

func TestRunnerReset(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 300)
	ctx := context.Background()
	runOnce := func(r *projections.Runner, name string) {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		waitLag0(t, r, name)
		cancel()
		require.NoError(t, <-done)
	}
	// Ack-floor model: replays from the position given.
	model := &lastSKU{m: map[string]string{}}
	r := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "last", Model: model}))
	runOnce(r, "last")
	require.NoError(t, r.Reset(ctx, "last", 251))
	runOnce(r, "last")
	model.mu.Lock()
	assert.Equal(t, 350, model.n, "events 251..300 delivered again")
	model.mu.Unlock()

	// Exactly-once model: only to the start, dropping its data.
	counts := perSKU()
	r2 := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r2.Add(projections.Projection{Name: "counts", Model: counts}))
	runOnce(r2, "counts")
	require.Error(t, r2.Reset(ctx, "counts", 100))
	require.NoError(t, r2.Reset(ctx, "counts", 0))
	cp, _ := counts.Checkpoint(ctx)
	assert.Zero(t, cp)
	runOnce(r2, "counts")
	assert.Equal(t, expected(300), counts.Snapshot())
}

// A process whose exactly-once model is behind the consumer (a Memory model
// in a new process, a database restored from a backup) resumes after its
// own checkpoint, not at the consumer's position.
func TestRunnerModelBehindConsumer(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 200)
	ctx := context.Background()
	run := func(model *projections.Memory[int]) projections.Status {
		r := projections.NewRunner(e.js, e.store, nil)
		require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: model}))
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		st := waitLag0(t, r, "per-sku")
		cancel()
		require.NoError(t, <-done)
		return st
	}
	first := perSKU()
	run(first)
	assert.Equal(t, expected(200), first.Snapshot())
	e.fill(t, 200, 10)
	second := perSKU() // starts empty
	st := run(second)
	assert.EqualValues(t, 210, st.Position)
	assert.Equal(t, expected(210), second.Snapshot(), "the empty model got the whole history")
}

// Run ends with an error when its durable consumer is deleted under it.
func TestRunnerConsumerDeleted(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 20)
	r := projections.NewRunner(e.js, e.store, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: perSKU()}))
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	waitLag0(t, r, "per-sku")
	require.NoError(t, e.js.DeleteConsumer(context.Background(), "shop", "per-sku"))
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), "deleted")
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not notice its consumer was deleted")
	}
}
