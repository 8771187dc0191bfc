package projections_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// controlWorker is one worker process: its own connection, runner, control
// service and Run.
type controlWorker struct {
	nc     *nats.Conn
	runner *projections.Runner
	svc    *projections.ControlService
	stop   context.CancelFunc // ends Serve and Run
	ran    chan error         // Run's result
}

// startWorker starts a worker of e's store with projs, serving its control
// plane (progress every 20 ms) and running them. It is stopped in
// t.Cleanup.
func startWorker(t *testing.T, e *runnerEnv, projs ...projections.Projection) *controlWorker {
	t.Helper()
	return startWorkerAs(t, e, nil, projs...)
}

// startWorkerAs is startWorker with a connection made with opts (a login).
func startWorkerAs(t *testing.T, e *runnerEnv, opts []nats.Option, projs ...projections.Projection) *controlWorker {
	t.Helper()
	nc, js := embedded.MustJetStream(t, e.srv, opts...)
	st, err := stream.OpenStore(context.Background(), js, stream.Config{Name: "shop", Registry: runnerRegistry()})
	require.NoError(t, err)
	r := projections.NewRunner(js, st, nil)
	for _, p := range projs {
		require.NoError(t, r.Add(p))
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := r.Serve(ctx, nc, projections.WithProgressInterval(20*time.Millisecond))
	require.NoError(t, err)
	w := &controlWorker{nc: nc, runner: r, svc: svc, stop: cancel, ran: make(chan error, 1)}
	go func() { w.ran <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-w.ran
		<-svc.Done()
	})
	return w
}

func newControlClient(t *testing.T, e *runnerEnv, store string, opts ...projections.ControlOption) *projections.ControlClient {
	t.Helper()
	nc := embedded.MustConnect(t, e.srv)
	opts = append([]projections.ControlOption{projections.WithGatherWindow(100 * time.Millisecond)}, opts...)
	c, err := projections.NewControlClient(nc, store, opts...)
	require.NoError(t, err)
	return c
}

// waitStatus polls the client's Status until ok accepts it.
func waitStatus(t *testing.T, c *projections.ControlClient, ok func([]projections.InstanceStatus) bool) []projections.InstanceStatus {
	t.Helper()
	var sts []projections.InstanceStatus
	require.Eventually(t, func() bool {
		var err error
		sts, err = c.Status(context.Background())
		return err == nil && ok(sts)
	}, 15*time.Second, 20*time.Millisecond, "last status: %+v", sts)
	return sts
}

// trickle appends an event every 20 ms, from index from, until the test
// ends.
func trickle(t *testing.T, e *runnerEnv, from int) {
	t.Helper()
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := from; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			_, _ = e.store.Append(context.Background(), stream.Aggregate{Type: "cart", ID: "trickle"}, stream.ExpectAny(),
				[]stream.EventData{{Data: ItemAdded{SKU: "s0", Qty: 1}}})
		}
	}()
	t.Cleanup(func() { close(stop); <-stopped })
}

func TestControlStatusOfTwoWorkers(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 200)
	proj := func() projections.Projection {
		return projections.Projection{Name: "per-sku", Model: perSKU(), Consumer: consumers.Config{PinnedTTL: 2 * time.Second}}
	}
	w1 := startWorker(t, e, proj())
	w2 := startWorker(t, e, proj())
	c := newControlClient(t, e, "shop")

	// Events keep coming: the active process learns its pin when they
	// reach it.
	trickle(t, e, 200)
	sts := waitStatus(t, c, func(sts []projections.InstanceStatus) bool {
		active := 0
		for _, st := range sts {
			if p, ok := st.Projection("per-sku"); ok && p.Active {
				active++
			}
		}
		if len(sts) != 2 || active != 1 {
			return false
		}
		for _, st := range sts { // the acknowledgements reached the server too
			if p, ok := st.Projection("per-sku"); !ok || p.Position < 200 {
				return false
			}
		}
		return true
	})
	ids := map[string]bool{w1.svc.ID(): true, w2.svc.ID(): true}
	for _, st := range sts {
		assert.True(t, ids[st.Instance], "instance %s is one of the workers", st.Instance)
		delete(ids, st.Instance)
		assert.Equal(t, "shop", st.Store)
		assert.Equal(t, os.Getpid(), st.PID)
		assert.True(t, st.Running)
		require.Len(t, st.Projections, 1)
		p := st.Projections[0]
		assert.Equal(t, "per-sku", p.Name)
		assert.Equal(t, "exactly-once", p.Mode)
		assert.True(t, p.Running)
		assert.True(t, p.Pinned)
		assert.False(t, p.Rebuildable)
		assert.Empty(t, p.Error)
		assert.GreaterOrEqual(t, p.Position, uint64(200))
	}
	assert.Empty(t, ids, "both workers answered")

	// The active one is the one whose model gets the events.
	for _, w := range []*controlWorker{w1, w2} {
		m, err := w.runner.Model("per-sku")
		require.NoError(t, err)
		cp, err := m.(projections.Checkpointed).Checkpoint(context.Background())
		require.NoError(t, err)
		for _, st := range sts {
			if st.Instance == w.svc.ID() {
				p, _ := st.Projection("per-sku")
				assert.Equal(t, p.Active, cp > 0, "instance %s: active %v, model checkpoint %d", st.Instance, p.Active, cp)
			}
		}
	}
}

func TestControlRemoteRebuild(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 3000)
	live := perSKU()
	var mu sync.Mutex
	var made []*projections.Memory[int]
	w := startWorker(t, e, projections.Projection{Name: "per-sku", Model: live,
		Fresh: func(context.Context) (projections.ReadModel, error) {
			m := perSKU()
			mu.Lock()
			made = append(made, m)
			mu.Unlock()
			return m, nil
		}})
	waitLag0(t, w.runner, "per-sku")
	c := newControlClient(t, e, "shop")

	var reports []projections.Progress
	start := time.Now()
	require.NoError(t, c.Rebuild(context.Background(), "per-sku", func(p projections.Progress) { reports = append(reports, p) }))
	t.Logf("remote rebuild of 3000 events: %s, %d progress reports", time.Since(start), len(reports))
	require.GreaterOrEqual(t, len(reports), 2, "progress while it runs, and the result")
	last := reports[len(reports)-1]
	assert.True(t, last.Done)
	assert.Equal(t, "per-sku", last.Name)
	assert.EqualValues(t, 3000, last.Target)
	assert.EqualValues(t, 3000, last.Position)
	for _, p := range reports[:len(reports)-1] {
		assert.False(t, p.Done)
		assert.LessOrEqual(t, p.Position, uint64(3000))
	}

	// Switched over: the runner feeds the fresh model, which has all events.
	mu.Lock()
	require.Len(t, made, 1)
	fresh := made[0]
	mu.Unlock()
	m, err := w.runner.Model("per-sku")
	require.NoError(t, err)
	assert.Same(t, fresh, m)
	assert.Equal(t, expected(3000), fresh.Snapshot())
	e.fill(t, 3000, 40)
	require.Eventually(t, func() bool { cp, _ := fresh.Checkpoint(context.Background()); return cp == 3040 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, expected(3040), fresh.Snapshot())
	cp, _ := live.Checkpoint(context.Background())
	assert.EqualValues(t, 3000, cp, "the old model is no longer fed")
}

func TestControlRebuildErrors(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 50)
	release := make(chan struct{})
	w := startWorker(t, e,
		projections.Projection{Name: "no-fresh", Model: perSKU()},
		projections.Projection{Name: "slow", Model: perSKU(), Fresh: func(ctx context.Context) (projections.ReadModel, error) {
			select { // e.g. creating a bucket or tables
			case <-release:
				return perSKU(), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}})
	waitLag0(t, w.runner, "no-fresh")
	c := newControlClient(t, e, "shop")
	ctx := context.Background()

	t.Run("without Fresh", func(t *testing.T) {
		err := c.Rebuild(ctx, "no-fresh", nil)
		require.ErrorIs(t, err, projections.ErrNoFresh)
		var ce *projections.ControlError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, projections.CodeNoFresh, ce.Code)
		assert.Equal(t, w.svc.ID(), ce.Instance)
		assert.Contains(t, err.Error(), `"no-fresh"`)
		assert.Contains(t, err.Error(), "Projection.Fresh")
	})
	t.Run("unknown projection", func(t *testing.T) {
		require.ErrorIs(t, c.Rebuild(ctx, "nope", nil), projections.ErrUnknownProjection)
		require.ErrorIs(t, c.Reset(ctx, "nope", 0), projections.ErrUnknownProjection)
	})
	t.Run("already rebuilding", func(t *testing.T) {
		first := make(chan error, 1)
		go func() { first <- c.Rebuild(ctx, "slow", nil) }()
		waitStatus(t, c, func(sts []projections.InstanceStatus) bool {
			p, _ := sts[0].Projection("slow")
			return p.Rebuilding
		})
		err := c.Rebuild(ctx, "slow", nil)
		require.ErrorIs(t, err, projections.ErrBusy)
		require.ErrorIs(t, c.Reset(ctx, "slow", 0), projections.ErrBusy)
		close(release)
		require.NoError(t, <-first)
	})
	t.Run("worker gone during a rebuild", func(t *testing.T) {
		hang := make(chan struct{})
		defer close(hang)
		nc, js := embedded.MustJetStream(t, e.srv)
		st, err := stream.OpenStore(ctx, js, stream.Config{Name: "shop", Registry: runnerRegistry()})
		require.NoError(t, err)
		r := projections.NewRunner(js, st, nil)
		require.NoError(t, r.Add(projections.Projection{Name: "hangs", Model: perSKU(), Fresh: func(context.Context) (projections.ReadModel, error) {
			<-hang
			return nil, errors.New("gone")
		}}))
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err = r.Serve(sctx, nc, projections.WithProgressInterval(20*time.Millisecond))
		require.NoError(t, err)
		quick := newControlClient(t, e, "shop", projections.WithProgressTimeout(300*time.Millisecond))
		done := make(chan error, 1)
		go func() { done <- quick.Rebuild(ctx, "hangs", nil) }()
		time.Sleep(300 * time.Millisecond) // heartbeats flow meanwhile
		nc.Close()                         // the worker dies
		select {
		case err := <-done:
			require.ErrorIs(t, err, projections.ErrNoWorker)
			assert.Contains(t, err.Error(), "no progress")
		case <-time.After(5 * time.Second):
			t.Fatal("Rebuild did not give up on a silent worker")
		}
	})
}

func TestControlNoWorker(t *testing.T) {
	e := newRunnerEnv(t)
	c := newControlClient(t, e, "shop")
	ctx := context.Background()
	start := time.Now()
	_, err := c.Status(ctx)
	require.ErrorIs(t, err, projections.ErrNoWorker)
	require.ErrorIs(t, c.Rebuild(ctx, "per-sku", nil), projections.ErrNoWorker)
	require.ErrorIs(t, c.Reset(ctx, "per-sku", 0), projections.ErrNoWorker)
	assert.Less(t, time.Since(start), time.Second, "no responders: at once")

	// Workers of another store only: after the discovery window.
	startWorker(t, e, projections.Projection{Name: "per-sku", Model: perSKU()})
	other := newControlClient(t, e, "other")
	start = time.Now()
	_, err = other.Status(ctx)
	require.ErrorIs(t, err, projections.ErrNoWorker)
	assert.Contains(t, err.Error(), `"other"`)
	assert.Less(t, time.Since(start), time.Second)
}

func TestControlRemoteReset(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 300)
	model := &lastSKU{m: map[string]string{}}
	w := startWorker(t, e,
		projections.Projection{Name: "last", Model: model},
		projections.Projection{Name: "counts", Model: perSKU()})
	waitLag0(t, w.runner, "last")
	waitLag0(t, w.runner, "counts")
	c := newControlClient(t, e, "shop")
	ctx := context.Background()

	// Ack-floor model: events from 251 on are delivered again, and the
	// worker goes on running it.
	require.NoError(t, c.Reset(ctx, "last", 251))
	require.Eventually(t, func() bool { model.mu.Lock(); defer model.mu.Unlock(); return model.n == 350 }, 10*time.Second, 10*time.Millisecond)
	e.fill(t, 300, 10)
	require.Eventually(t, func() bool { model.mu.Lock(); defer model.mu.Unlock(); return model.n == 360 }, 10*time.Second, 10*time.Millisecond)

	// Exactly-once model: only to the start; it is emptied and rebuilt.
	err := c.Reset(ctx, "counts", 100)
	require.ErrorIs(t, err, projections.ErrInvalidReset)
	var ce *projections.ControlError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, projections.CodeInvalidReset, ce.Code)
	counts, err := w.runner.Model("counts")
	require.NoError(t, err)
	require.NoError(t, c.Reset(ctx, "counts", 0))
	require.Eventually(t, func() bool {
		cp, _ := counts.(*projections.Memory[int]).Checkpoint(ctx)
		return cp == 310
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, expected(310), counts.(*projections.Memory[int]).Snapshot(), "emptied, then every event once")

	// A second worker running it: the reset is refused.
	startWorker(t, e, projections.Projection{Name: "last", Model: &lastSKU{m: map[string]string{}}})
	waitStatus(t, c, func(sts []projections.InstanceStatus) bool { return len(sts) == 2 })
	err = c.Reset(ctx, "last", 1)
	require.ErrorIs(t, err, projections.ErrBusy)
	assert.Contains(t, err.Error(), "stop it there")
}

func TestControlServeStopsWithContext(t *testing.T) {
	e := newRunnerEnv(t)
	nc, js := embedded.MustJetStream(t, e.srv)
	r := projections.NewRunner(js, e.store, nil)
	require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: perSKU()}))
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := r.Serve(ctx, nc)
	require.NoError(t, err)
	c := newControlClient(t, e, "shop")
	sts, err := c.Status(context.Background())
	require.NoError(t, err)
	require.Len(t, sts, 1)
	assert.Equal(t, svc.ID(), sts[0].Instance)
	assert.False(t, sts[0].Running, "Serve without Run")
	p, _ := sts[0].Projection("per-sku")
	assert.NotEmpty(t, p.Error, "no consumer yet")

	cancel()
	select {
	case <-svc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop")
	}
	_, err = c.Status(context.Background())
	require.ErrorIs(t, err, projections.ErrNoWorker)
	other := embedded.MustConnect(t, e.srv)
	_, err = other.Request("$SRV.PING."+projections.ControlServiceName, nil, time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders, "the micro service is gone")
	_, err = other.Request("$ESNATS.PROJ.shop.STATUS", nil, time.Second)
	require.ErrorIs(t, err, nats.ErrNoResponders)
}

// TestControlRefused: control requests that the server refuses the
// client's connection for lack of permission fail at once with
// ErrPermissionDenied (a *PermissionError naming the subject, matching
// nats.ErrPermissionViolation), instead of waiting for the control timeout
// (30s here) for a reply that cannot come.
func TestControlRefused(t *testing.T) {
	srv := embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{
				{Username: "worker", Password: "w"},
				// May look (STATUS), not act (REBUILD, RESET).
				{Username: "look", Password: "l", Permissions: &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: []string{"$SRV.PING.esnats-projections", "$ESNATS.PROJ.shop.STATUS"}},
					Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
				}},
				// May ask anything, but receive only on its own inbox prefix.
				{Username: "private", Password: "p", Permissions: &server.Permissions{
					Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_private.>"}},
				}},
			}
		}
	})
	worker := nats.UserInfo("worker", "w")
	_, js := embedded.MustJetStream(t, srv, worker)
	st, err := stream.NewStore(context.Background(), js, stream.Config{Name: "shop", Registry: runnerRegistry()})
	require.NoError(t, err)
	e := &runnerEnv{srv: srv, js: js, store: st}
	e.fill(t, 0, 20)
	live := perSKU()
	w := startWorkerAs(t, e, []nats.Option{worker}, projections.Projection{Name: "per-sku", Model: live,
		Fresh: func(context.Context) (projections.ReadModel, error) { return perSKU(), nil }})
	waitLag0(t, w.runner, "per-sku")
	ctx := context.Background()
	client := func(opts ...nats.Option) *projections.ControlClient {
		opts = append(opts, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		c, err := projections.NewControlClient(embedded.MustConnect(t, srv, opts...), "shop",
			projections.WithControlTimeout(30*time.Second), projections.WithGatherWindow(100*time.Millisecond))
		require.NoError(t, err)
		return c
	}

	look := client(nats.UserInfo("look", "l"))
	sts, err := look.Status(ctx)
	require.NoError(t, err)
	require.Len(t, sts, 1)
	id := w.svc.ID()
	for _, op := range []struct {
		name string
		call func() error
	}{
		{"rebuild", func() error { return look.Rebuild(ctx, "per-sku", nil) }},
		{"reset", func() error { return look.Reset(ctx, "per-sku", 0) }},
	} {
		start := time.Now()
		err := op.call()
		took := time.Since(start)
		require.ErrorIs(t, err, projections.ErrPermissionDenied, op.name)
		require.ErrorIs(t, err, nats.ErrPermissionViolation, op.name)
		var pe *projections.PermissionError
		require.ErrorAs(t, err, &pe)
		subject := "$ESNATS.PROJ.shop." + strings.ToUpper(op.name) + "." + id
		assert.Equal(t, []string{op.name, "shop", "per-sku", id, subject}, []string{pe.Op, pe.Store, pe.Projection, pe.Instance, pe.Subject})
		assert.False(t, pe.Reply)
		assert.EqualError(t, err, "projections: "+op.name+` "per-sku" on worker `+id+`: permission denied: the server refused to let this connection publish to "`+subject+`"; the request was dropped, nothing was done`)
		assert.Less(t, took, 3*time.Second, "%s: refused at once, not after the 30s control timeout", op.name)
	}
	m, err := w.runner.Model("per-sku")
	require.NoError(t, err)
	assert.Same(t, live, m, "nothing was rebuilt")

	// The reply inbox: the default one is refused to "private", whose
	// requests cannot be answered; with its own prefix it works.
	start := time.Now()
	_, err = client(nats.UserInfo("private", "p")).Status(ctx)
	took := time.Since(start)
	require.ErrorIs(t, err, projections.ErrPermissionDenied)
	var pe *projections.PermissionError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "discover", pe.Op)
	assert.True(t, pe.Reply)
	assert.True(t, strings.HasPrefix(pe.Subject, "_INBOX."), pe.Subject)
	assert.EqualError(t, err, `projections: finding the workers of store "shop": permission denied: the server refused the subscription to the reply inbox "`+pe.Subject+`", so the reply was dropped; connect with an inbox prefix the user may subscribe to (nats.CustomInboxPrefix, esnats --inbox-prefix)`)
	assert.Less(t, took, 3*time.Second, "refused at once, not after the 30s control timeout")
	sts, err = client(nats.UserInfo("private", "p"), nats.CustomInboxPrefix("_INBOX_private")).Status(ctx)
	require.NoError(t, err)
	assert.Len(t, sts, 1)
}
