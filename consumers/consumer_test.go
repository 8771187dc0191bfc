package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/faultproxy"
	"github.com/esnats/esnats/stream"
)

type ItemAdded struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

type OrderPlaced struct {
	ID string `json:"id"`
}

func registry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	stream.MustRegister[OrderPlaced](reg, "OrderPlaced")
	return reg
}

type env struct {
	srv   *embedded.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	store *stream.Store
}

func setup(t *testing.T) *env {
	t.Helper()
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	st, err := stream.NewStore(context.Background(), js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	return &env{srv: srv, nc: nc, js: js, store: st}
}

// appendItems appends n ItemAdded events spread over carts c0..c9.
func (e *env) appendItems(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		_, err := e.store.Append(ctx, stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%d", i%10)}, stream.ExpectAny(),
			[]stream.EventData{{Data: ItemAdded{SKU: fmt.Sprintf("s%d", i), Qty: 1}}})
		require.NoError(t, err)
	}
}

// recorder counts deliveries per stream sequence.
type recorder struct {
	mu   sync.Mutex
	seen map[uint64]int
	seqs []uint64
}

func newRecorder() *recorder { return &recorder{seen: map[uint64]int{}} }

func (r *recorder) add(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[seq]++
	r.seqs = append(r.seqs, seq)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := 0
	for _, n := range r.seen {
		d += n - 1
	}
	return d
}

func runAsync(ctx context.Context, c *consumers.Consumer) chan error {
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return done
}

func TestConsumerDeliversInOrderAndTracksPosition(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 50)
	_, err := e.store.Append(context.Background(), stream.Aggregate{Type: "order", ID: "o1"}, stream.ExpectNone(), []stream.EventData{{Data: OrderPlaced{ID: "o1"}}})
	require.NoError(t, err)

	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "items", AggregateTypes: []string{"cart"}, BatchSize: 7})
	require.NoError(t, err)
	rec := newRecorder()
	require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, d ItemAdded) error {
		rec.add(ev.Sequence)
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	require.Eventually(t, func() bool { return rec.count() == 50 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		st, err := c.Status(context.Background())
		return err == nil && st.Position == 50 && st.Lag == 0
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	for i, s := range rec.seqs {
		assert.EqualValues(t, i+1, s, "stream order")
	}
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 50, st.Handled)
	assert.Zero(t, rec.duplicates())
}

// A worker stopped in the middle and started again handles every event
// exactly once: the clean stop finishes and acknowledges its batch.
func TestConsumerCleanStopResumes(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 300)
	rec := newRecorder()
	mk := func() *consumers.Consumer {
		c, err := consumers.New(e.js, e.store, consumers.Config{Name: "resume", BatchSize: 10})
		require.NoError(t, err)
		require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error {
			rec.add(ev.Sequence)
			time.Sleep(200 * time.Microsecond)
			return nil
		}))
		return c
	}
	for rec.count() < 300 {
		ctx, cancel := context.WithCancel(context.Background())
		done := runAsync(ctx, mk())
		before := rec.count()
		require.Eventually(t, func() bool { return rec.count() >= min(before+60, 300) }, 10*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, <-done)
	}
	assert.Equal(t, 300, rec.count())
	assert.Zero(t, rec.duplicates(), "a clean stop never hands an event twice")
}

func TestConsumerParksPoisonEvent(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 20)
	// A message written by another client that claims to be an ItemAdded
	// (a type the consumer handles) and cannot be decoded.
	bad := nats.NewMsg("shop.cart.zz")
	bad.Header.Set(stream.HeaderEventType, "ItemAdded")
	bad.Data = []byte("garbage")
	_, err := e.js.PublishMsg(context.Background(), bad)
	require.NoError(t, err)
	e.appendItems(t, 5)

	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "poison", Retries: 3, Backoff: time.Millisecond})
	require.NoError(t, err)
	rec := newRecorder()
	var calls atomic.Int32
	require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, d ItemAdded) error {
		if d.SKU == "s7" {
			calls.Add(1)
			return errors.New("cannot handle s7")
		}
		rec.add(ev.Sequence)
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	require.Eventually(t, func() bool { return rec.count() == 24 }, 10*time.Second, 10*time.Millisecond, "the rest go on")
	require.Eventually(t, func() bool {
		st, err := c.Status(context.Background())
		return err == nil && st.Position == 26
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.EqualValues(t, 3, calls.Load(), "retried, then parked")

	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 2, st.Parked)
	assert.Contains(t, st.LastError, "Esnats-Version", "the last failure seen: the undecodable event")

	dlq, err := e.js.Stream(context.Background(), "shop_dlq")
	require.NoError(t, err)
	m1, err := dlq.GetMsg(context.Background(), 1)
	require.NoError(t, err)
	assert.Equal(t, "8", m1.Header.Get(consumers.HeaderParkedSequence))
	assert.Equal(t, "shop.cart.c7", m1.Header.Get(consumers.HeaderParkedSubject))
	assert.Contains(t, m1.Header.Get(consumers.HeaderParkedReason), "cannot handle s7")
	assert.Equal(t, "3", m1.Header.Get(consumers.HeaderParkedAttempts))
	m2, err := dlq.GetMsg(context.Background(), 2)
	require.NoError(t, err)
	assert.Equal(t, "21", m2.Header.Get(consumers.HeaderParkedSequence))
	assert.Equal(t, "shop.cart.zz", m2.Header.Get(consumers.HeaderParkedSubject))
	assert.Equal(t, []byte("garbage"), m2.Data)
	assert.Contains(t, m2.Header.Get(consumers.HeaderParkedReason), "Esnats-Version")
}

func TestConsumerStopPolicy(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 10)
	var broken atomic.Bool
	broken.Store(true)
	rec := newRecorder()
	mk := func() *consumers.Consumer {
		c, err := consumers.New(e.js, e.store, consumers.Config{Name: "strict", OnFailure: consumers.Stop, Retries: 2, Backoff: time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, d ItemAdded) error {
			if d.SKU == "s4" && broken.Load() {
				return errors.New("downstream is down")
			}
			rec.add(ev.Sequence)
			return nil
		}))
		return c
	}
	err := mk().Run(context.Background())
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	assert.EqualValues(t, 5, se.Sequence)
	assert.Equal(t, "shop.cart.c4", se.Subject)
	assert.Contains(t, err.Error(), "downstream is down")
	assert.Equal(t, 4, rec.count())

	// Fixed: the next run starts at the failed event.
	broken.Store(false)
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, mk())
	require.Eventually(t, func() bool { return rec.count() == 10 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.Zero(t, rec.duplicates())
}

func TestConsumerStartPositions(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 10)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	e.appendItems(t, 5)
	cases := []struct {
		name  string
		start consumers.Start
		first uint64
		n     int
	}{
		{"beginning", consumers.FromBeginning(), 1, 15},
		{"sequence", consumers.FromSequence(12), 12, 4},
		{"time", consumers.FromTime(mid), 11, 5},
		{"now", consumers.FromNow(), 16, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := consumers.New(e.js, e.store, consumers.Config{Name: "start-" + tc.name, Start: tc.start})
			require.NoError(t, err)
			rec := newRecorder()
			require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error { rec.add(ev.Sequence); return nil }))
			ctx, cancel := context.WithCancel(context.Background())
			done := runAsync(ctx, c)
			if tc.name == "now" {
				require.Eventually(t, func() bool { _, err := c.Status(ctx); return err == nil }, 5*time.Second, 5*time.Millisecond)
				// Appends after the consumer exists, then count what arrives.
				before := e.lastSeq(t)
				e.appendItems(t, 3)
				tc.first = before + 1
			}
			require.Eventually(t, func() bool { return rec.count() == tc.n }, 10*time.Second, 10*time.Millisecond)
			cancel()
			require.NoError(t, <-done)
			assert.Equal(t, tc.first, rec.seqs[0])
		})
	}
}

func (e *env) lastSeq(t *testing.T) uint64 {
	s, err := e.js.Stream(context.Background(), "shop")
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.LastSeq
}

// A batch handler that fails on one event is retried, then fed one event at
// a time, and only the poison event is parked.
func TestConsumerBatchHandlerIsolatesPoison(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 40)
	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "batch", BatchSize: 20, Retries: 2, Backoff: time.Millisecond, EventTypes: []string{"ItemAdded"}})
	require.NoError(t, err)
	rec := newRecorder()
	var sizes []int
	c.HandleBatch(func(_ context.Context, evs []*stream.Event) error {
		for _, ev := range evs {
			if ev.Data.(ItemAdded).SKU == "s13" {
				return errors.New("poison")
			}
		}
		sizes = append(sizes, len(evs))
		for _, ev := range evs {
			rec.add(ev.Sequence)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	require.Eventually(t, func() bool { return rec.count() == 39 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.Zero(t, rec.duplicates(), "events of a failed batch are applied once, after isolation")
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.Parked)
	assert.Contains(t, sizes, 1, "the failing batch was split")
}

// Two workers for one consumer: only one is active; when it dies (its
// connection drops without a clean stop), the standby takes over and the
// events it had not acknowledged are delivered again.
func TestConsumerFailover(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 20)
	type worker struct {
		rec  *recorder
		c    *consumers.Consumer
		nc   *nats.Conn
		done chan error
		stop context.CancelFunc
	}
	start := func() *worker {
		nc, js := embedded.MustJetStream(t, e.srv)
		st, err := stream.OpenStore(context.Background(), js, stream.Config{Name: "shop", Registry: registry()})
		require.NoError(t, err)
		c, err := consumers.New(js, st, consumers.Config{Name: "single", PinnedTTL: 2 * time.Second, AckWait: 3 * time.Second})
		require.NoError(t, err)
		w := &worker{rec: newRecorder(), c: c, nc: nc}
		require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error {
			w.rec.add(ev.Sequence)
			time.Sleep(time.Millisecond)
			return nil
		}))
		ctx, cancel := context.WithCancel(context.Background())
		w.stop = cancel
		w.done = runAsync(ctx, c)
		return w
	}
	a := start()
	require.Eventually(t, func() bool { return a.rec.count() == 20 }, 10*time.Second, 10*time.Millisecond)
	b := start()
	e.appendItems(t, 20)
	require.Eventually(t, func() bool { return a.rec.count() == 40 }, 10*time.Second, 10*time.Millisecond, "a %d b %d", a.rec.count(), b.rec.count())
	time.Sleep(300 * time.Millisecond)
	assert.Zero(t, b.rec.count(), "the standby gets nothing while the active worker runs")
	assert.True(t, a.c.Active(), "the worker receiving the events is the active one")
	assert.False(t, b.c.Active(), "the standby is not")
	st, err := b.c.Status(context.Background())
	require.NoError(t, err)
	assert.True(t, st.Pinned)
	assert.False(t, st.Active)

	// The active worker dies in the middle of a stream of events.
	e.appendItems(t, 200)
	require.Eventually(t, func() bool { return a.rec.count() >= 60 }, 10*time.Second, time.Millisecond)
	a.nc.Close()
	died := time.Now()
	require.Eventually(t, func() bool { return b.rec.count() >= 1 }, 15*time.Second, 10*time.Millisecond)
	t.Logf("fail-over: the standby handled its first event %s after the active worker died (PinnedTTL 2s)", time.Since(died).Round(10*time.Millisecond))
	require.Eventually(t, func() bool {
		total := map[uint64]bool{}
		for _, r := range []*recorder{a.rec, b.rec} {
			r.mu.Lock()
			for s := range r.seen {
				total[s] = true
			}
			r.mu.Unlock()
		}
		return len(total) == 240
	}, 15*time.Second, 10*time.Millisecond, "every event handled by one of them")
	assert.True(t, b.c.Active(), "the standby took over")
	b.stop()
	require.NoError(t, <-b.done)
	assert.False(t, b.c.Active(), "a stopped run holds nothing")
	a.stop()
	<-a.done
	// The standby took over at the acknowledgement floor: in stream order,
	// starting at or before the first event the dead worker had not
	// finished (at-least-once), never skipping one.
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	for i := 1; i < len(b.rec.seqs); i++ {
		require.Greater(t, b.rec.seqs[i], b.rec.seqs[i-1], "in order")
	}
	a.rec.mu.Lock()
	defer a.rec.mu.Unlock()
	assert.LessOrEqual(t, b.rec.seqs[0], uint64(len(a.rec.seen)+1))
	total := map[uint64]bool{}
	for s := range a.rec.seen {
		total[s] = true
	}
	for s := range b.rec.seen {
		total[s] = true
	}
	assert.Len(t, total, 240)
}

// A worker whose connection breaks and comes back loses the deliveries that
// were in flight; it must notice the gap (or the lost pin) and take over
// again from the acknowledgement floor instead of acknowledging past them.
func TestConsumerConnectionBlipLosesNothing(t *testing.T) {
	e := setup(t)
	px, err := faultproxy.New(strings.TrimPrefix(e.srv.ClientURL(), "nats://"))
	require.NoError(t, err)
	t.Cleanup(px.Close)
	nc, err := nats.Connect(px.URL(), nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	st, err := stream.OpenStore(context.Background(), js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	c, err := consumers.New(js, st, consumers.Config{Name: "blip", BatchSize: 20, PinnedTTL: 2 * time.Second, AckWait: 3 * time.Second})
	require.NoError(t, err)
	rec := newRecorder()
	require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error {
		rec.add(ev.Sequence)
		time.Sleep(500 * time.Microsecond)
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	e.appendItems(t, 600)
	for range 3 {
		before := rec.count()
		require.Eventually(t, func() bool { return rec.count() >= before+60 || rec.count() == 600 }, 20*time.Second, time.Millisecond)
		px.Cut() // the connection drops with deliveries in flight, and comes back
	}
	require.Eventually(t, func() bool { return rec.count() == 600 }, 30*time.Second, 10*time.Millisecond, "handled %d of 600", rec.count())
	require.Eventually(t, func() bool {
		s, err := c.Status(context.Background())
		return err == nil && s.Position == 600
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := 1; i < len(rec.seqs); i++ {
		// Order: a resynchronisation may deliver again from the floor,
		// never skip ahead of an event not yet handled.
		if rec.seqs[i] <= rec.seqs[i-1] {
			continue
		}
		require.LessOrEqual(t, rec.seqs[i], maxSeen(rec.seqs[:i])+1, "skipped ahead at delivery %d", i)
	}
}

func maxSeen(s []uint64) uint64 {
	var m uint64
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

// Stopping while a handler keeps failing does not wait for the retries to
// run out, and parks nothing: the event is delivered again next time.
func TestConsumerStopDuringRetries(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 3)
	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "stuck", Retries: 100, Backoff: time.Second, MaxBackoff: time.Second})
	require.NoError(t, err)
	var calls atomic.Int32
	require.NoError(t, consumers.On(c, func(context.Context, *stream.Event, ItemAdded) error {
		calls.Add(1)
		return errors.New("down")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, c)
	require.Eventually(t, func() bool { return calls.Load() >= 1 }, 10*time.Second, time.Millisecond)
	cancel()
	stopped := time.Now()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop during retries")
	}
	assert.Less(t, time.Since(stopped), 5*time.Second)
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.Zero(t, st.Parked)
	assert.Zero(t, st.Position, "nothing acknowledged: delivered again next time")
}

// An existing dead-letter stream is left as the operator configured it: a
// worker's start does not reset its limits.
func TestConsumerKeepsAnOperatorsDeadLetterStream(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	_, err := e.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "shop_dlq", Subjects: []string{"shop_dlq.>"}, Storage: jetstream.FileStorage, MaxAge: time.Hour,
	})
	require.NoError(t, err)
	e.appendItems(t, 3)
	c, err := consumers.New(e.js, e.store, consumers.Config{Name: "keeps-dlq"})
	require.NoError(t, err)
	rec := newRecorder()
	require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error {
		rec.add(ev.Sequence)
		return nil
	}))
	rctx, cancel := context.WithCancel(ctx)
	done := runAsync(rctx, c)
	require.Eventually(t, func() bool { return rec.count() == 3 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	dlq, err := e.js.Stream(ctx, "shop_dlq")
	require.NoError(t, err)
	assert.Equal(t, time.Hour, dlq.CachedInfo().Config.MaxAge)
}

// publishRaw publishes a message as another client would: the headers
// given (none: a plain publish) and body.
func (e *env) publishRaw(t *testing.T, subject string, body []byte, headers ...string) uint64 {
	t.Helper()
	m := nats.NewMsg(subject)
	for i := 0; i+1 < len(headers); i += 2 {
		m.Header.Set(headers[i], headers[i+1])
	}
	m.Data = body
	ack, err := e.js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
	return ack.Sequence
}

// With per-type handlers, events no handler can take (a type the registry
// does not know, no type at all, a registered type without a handler, even
// undecodable) are acknowledged and skipped: never parked, never stopping
// Run. A batch handler takes every event, so for it they stay poison.
func TestConsumerSkipsTypesItHasNoHandlerFor(t *testing.T) {
	e := setup(t)
	e.appendItems(t, 5)
	payload, err := stream.Msgpack().Marshal(ItemAdded{SKU: "x", Qty: 1})
	require.NoError(t, err)
	unknown := e.publishRaw(t, "shop.cart.u1", payload, stream.HeaderEventType, "NoSuchEvent", stream.HeaderVersion, "1",
		stream.HeaderContentType, stream.ContentTypeMsgpack)
	e.publishRaw(t, "shop.cart.u2", []byte("garbage")) // no headers at all
	e.publishRaw(t, "shop.cart.u3", []byte("\xc1garbage"), stream.HeaderEventType, "OrderPlaced", stream.HeaderVersion, "1")
	_, err = e.store.Append(context.Background(), stream.Aggregate{Type: "order", ID: "o1"}, stream.ExpectNone(), []stream.EventData{{Data: OrderPlaced{ID: "o1"}}})
	require.NoError(t, err)
	e.appendItems(t, 5)
	last := e.lastSeq(t)

	for _, policy := range []consumers.Failure{consumers.Park, consumers.Stop} {
		name := map[consumers.Failure]string{consumers.Park: "typed-park", consumers.Stop: "typed-stop"}[policy]
		t.Run(name, func(t *testing.T) {
			c, err := consumers.New(e.js, e.store, consumers.Config{Name: name, OnFailure: policy, Retries: 1, BatchSize: 3})
			require.NoError(t, err)
			rec := newRecorder()
			require.NoError(t, consumers.On(c, func(_ context.Context, ev *stream.Event, _ ItemAdded) error { rec.add(ev.Sequence); return nil }))
			ctx, cancel := context.WithCancel(context.Background())
			done := runAsync(ctx, c)
			require.Eventually(t, func() bool {
				st, err := c.Status(context.Background())
				return err == nil && st.Position == last
			}, 10*time.Second, 10*time.Millisecond, "acknowledged up to the last event")
			select {
			case err := <-done:
				t.Fatalf("Run returned: %v", err)
			default:
			}
			cancel()
			require.NoError(t, <-done)
			assert.Equal(t, 10, rec.count(), "every ItemAdded handled")
			assert.Zero(t, rec.duplicates())
			st, err := c.Status(context.Background())
			require.NoError(t, err)
			assert.Zero(t, st.Parked)
			assert.Empty(t, st.LastError)
		})
	}
	dlq, err := e.js.Stream(context.Background(), "shop_dlq")
	require.NoError(t, err)
	info, err := dlq.Info(context.Background())
	require.NoError(t, err)
	assert.Zero(t, info.State.Msgs, "nothing parked")

	t.Run("batch", func(t *testing.T) {
		// Every event: the unknown type stops it.
		c, err := consumers.New(e.js, e.store, consumers.Config{Name: "batch-all", OnFailure: consumers.Stop, Retries: 1})
		require.NoError(t, err)
		c.HandleBatch(func(context.Context, []*stream.Event) error { return nil })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = c.Run(ctx)
		require.ErrorIs(t, err, stream.ErrUnknownEventType)
		var se *stream.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, unknown, se.Sequence)
		assert.Equal(t, "shop.cart.u1", se.Subject)

		// Only ItemAdded: the others are skipped.
		c, err = consumers.New(e.js, e.store, consumers.Config{Name: "batch-items", OnFailure: consumers.Stop, Retries: 1, EventTypes: []string{"ItemAdded"}})
		require.NoError(t, err)
		rec := newRecorder()
		c.HandleBatch(func(_ context.Context, evs []*stream.Event) error {
			for _, ev := range evs {
				rec.add(ev.Sequence)
			}
			return nil
		})
		done := runAsync(ctx, c)
		require.Eventually(t, func() bool { return rec.count() == 10 }, 10*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool {
			st, err := c.Status(context.Background())
			return err == nil && st.Position == last
		}, 10*time.Second, 10*time.Millisecond)
		cancel()
		require.NoError(t, <-done)
	})
}
