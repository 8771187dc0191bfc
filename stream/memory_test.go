package stream_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// The conformance suite (conformance_test.go) checks the MemoryStore
// against the JetStream store; these tests cover what only the MemoryStore
// has: its constructor, clock, duplicate window and PutRaw.

type memItem struct {
	SKU string `json:"sku"`
}

func memRegistry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[memItem](reg, "item")
	return reg
}

// memClock is a clock tests move by hand.
type memClock struct{ ns atomic.Int64 }

func newMemClock() *memClock {
	c := &memClock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano())
	return c
}

func (c *memClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *memClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newMem(t *testing.T, opts ...stream.MemoryOption) *stream.MemoryStore {
	t.Helper()
	st, err := stream.NewMemoryStore(stream.Config{Name: "mem", Registry: memRegistry()}, opts...)
	require.NoError(t, err)
	return st
}

func TestNewMemoryStoreConfig(t *testing.T) {
	reg := memRegistry()
	for _, c := range []struct {
		name string
		cfg  stream.Config
		want error
	}{
		{"no name", stream.Config{Registry: reg}, stream.ErrInvalidName},
		{"invalid name", stream.Config{Name: "a.b", Registry: reg}, stream.ErrInvalidName},
		{"no registry", stream.Config{Name: "x"}, stream.ErrStoreConfig},
		{"invalid subject", stream.Config{Name: "x", Subject: "a..b", Registry: reg}, stream.ErrInvalidName},
		{"wildcard subject", stream.Config{Name: "x", Subject: "a.*", Registry: reg}, stream.ErrInvalidName},
		{"negative duplicates", stream.Config{Name: "x", Registry: reg, Duplicates: -1}, stream.ErrStoreConfig},
		{"negative max event size", stream.Config{Name: "x", Registry: reg, MaxEventSize: -1}, stream.ErrStoreConfig},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := stream.NewMemoryStore(c.cfg)
			require.ErrorIs(t, err, c.want)
			require.Nil(t, st)
		})
	}

	st, err := stream.NewMemoryStore(stream.Config{Name: "orders", Registry: reg})
	require.NoError(t, err)
	cfg := st.Config()
	assert.Equal(t, "orders", st.Name())
	assert.Equal(t, "orders", cfg.Subject)
	assert.Equal(t, stream.DefaultDuplicates, cfg.Duplicates)
	assert.Equal(t, stream.DefaultMaxEventSize, cfg.MaxEventSize)
	assert.Same(t, reg, st.Registry())
	assert.Equal(t, "orders.cart.*", st.SubjectFilter("cart"))
	assert.Equal(t, "orders.*.*", st.SubjectFilter(""))
	subj, err := st.AggregateSubject(stream.Aggregate{Type: "cart", ID: "a.b"})
	require.NoError(t, err)
	assert.Equal(t, "orders.cart.a=2Eb", subj)
	_, err = st.AggregateSubject(stream.Aggregate{Type: "cart"})
	assert.ErrorIs(t, err, stream.ErrInvalidID)
	assert.Zero(t, st.LastSequence())
}

func TestMemoryStoreSubjectAndLimits(t *testing.T) {
	ctx := context.Background()
	st, err := stream.NewMemoryStore(stream.Config{Name: "orders", Subject: "acme.orders", Registry: memRegistry(), MaxEventSize: 300})
	require.NoError(t, err)
	agg := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	res, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: memItem{SKU: "a"}}})
	require.NoError(t, err)
	require.Equal(t, uint64(1), st.LastSequence())
	for ev, err := range st.Load(ctx, agg) {
		require.NoError(t, err)
		assert.Equal(t, "acme.orders.cart.alice=40example=2Ecom", ev.Subject)
	}
	_, err = st.Append(ctx, agg, stream.ExpectRevision(res.Last), []stream.EventData{{Data: memItem{SKU: string(make([]byte, 300))}}})
	require.ErrorIs(t, err, stream.ErrTooLarge)
	require.Equal(t, uint64(1), st.LastSequence())
}

func TestMemoryStoreClock(t *testing.T) {
	ctx := context.Background()
	clock := newMemClock()
	st := newMem(t, stream.WithMemoryClock(clock.Now), nil)
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	_, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: memItem{}}})
	require.NoError(t, err)
	clock.Advance(time.Hour)
	_, err = st.Append(ctx, agg, stream.ExpectAny(), []stream.EventData{{Data: memItem{}}})
	require.NoError(t, err)
	var times []time.Time
	for ev, err := range st.Load(ctx, agg) {
		require.NoError(t, err)
		times = append(times, ev.Time)
	}
	require.Len(t, times, 2)
	assert.True(t, times[0].Equal(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)), "%v", times[0])
	assert.Equal(t, time.Hour, times[1].Sub(times[0]))
}

// TestMemoryStoreDuplicateWindow: an event id is remembered for
// Config.Duplicates, as the server does.
func TestMemoryStoreDuplicateWindow(t *testing.T) {
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	events := func() []stream.EventData {
		return []stream.EventData{{ID: "e-1", Data: memItem{SKU: "a"}}, {ID: "e-2", Data: memItem{SKU: "b"}}}
	}
	count := func(st *stream.MemoryStore) int {
		n := 0
		for _, err := range st.ReadAll(ctx) {
			require.NoError(t, err)
			n++
		}
		return n
	}

	t.Run("ExpectAny within the window", func(t *testing.T) {
		clock := newMemClock()
		st := newMem(t, stream.WithMemoryClock(clock.Now))
		r1, err := st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		clock.Advance(stream.DefaultDuplicates - time.Second)
		r2, err := st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		assert.True(t, r2.Duplicate)
		assert.Equal(t, r1.First, r2.First)
		assert.Equal(t, r1.Last, r2.Last)
		assert.Equal(t, 2, count(st))
	})

	t.Run("ExpectAny after the window", func(t *testing.T) {
		// The server forgets the ids: the events are stored again.
		clock := newMemClock()
		st := newMem(t, stream.WithMemoryClock(clock.Now))
		_, err := st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		clock.Advance(stream.DefaultDuplicates)
		r2, err := st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		assert.False(t, r2.Duplicate)
		assert.Equal(t, stream.Revision{Version: 3, Sequence: 3}, r2.First)
		assert.Equal(t, 4, count(st))
	})

	t.Run("ExpectNone after the window", func(t *testing.T) {
		// The expectation fails, and the events that follow the expected
		// revision are the retried ones: reported as landed.
		clock := newMemClock()
		st := newMem(t, stream.WithMemoryClock(clock.Now))
		r1, err := st.Append(ctx, agg, stream.ExpectNone(), events())
		require.NoError(t, err)
		clock.Advance(time.Hour)
		r2, err := st.Append(ctx, agg, stream.ExpectNone(), events())
		require.NoError(t, err)
		assert.True(t, r2.Duplicate)
		assert.Equal(t, r1.Last, r2.Last)
		assert.Equal(t, 2, count(st))
	})

	t.Run("custom window", func(t *testing.T) {
		clock := newMemClock()
		st, err := stream.NewMemoryStore(stream.Config{Name: "mem", Registry: memRegistry(), Duplicates: time.Second},
			stream.WithMemoryClock(clock.Now))
		require.NoError(t, err)
		_, err = st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		clock.Advance(2 * time.Second)
		r2, err := st.Append(ctx, agg, stream.ExpectAny(), events())
		require.NoError(t, err)
		assert.False(t, r2.Duplicate)
	})

	t.Run("id reused for another aggregate", func(t *testing.T) {
		st := newMem(t)
		_, err := st.Append(ctx, agg, stream.ExpectNone(), events())
		require.NoError(t, err)
		other := stream.Aggregate{Type: "cart", ID: "2"}
		_, err = st.Append(ctx, other, stream.ExpectNone(), events())
		var se *stream.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, uint64(1), se.Sequence)
		assert.Equal(t, 2, count(st))
		rev, err := st.LastRevision(ctx, other)
		require.NoError(t, err)
		assert.True(t, rev.IsZero())
	})

	t.Run("a later id reused", func(t *testing.T) {
		st := newMem(t)
		_, err := st.Append(ctx, agg, stream.ExpectNone(), events())
		require.NoError(t, err)
		rev, err := st.LastRevision(ctx, agg)
		require.NoError(t, err)
		_, err = st.Append(ctx, agg, stream.ExpectRevision(rev), []stream.EventData{{ID: "new", Data: memItem{}}, {ID: "e-2", Data: memItem{}}})
		require.Error(t, err)
		assert.Equal(t, 2, count(st))
	})
}

func TestMemoryStorePutRaw(t *testing.T) {
	ctx := context.Background()
	st := newMem(t)
	h := nats.Header{
		stream.HeaderEventID:   {"raw-1"},
		stream.HeaderEventType: {"item"},
		stream.HeaderVersion:   {"1"},
	}
	data := []byte{0x81, 0xa3, 's', 'k', 'u', 0xa1, 'x'} // msgpack {"sku": "x"}
	seq := st.PutRaw("mem.cart.1", h, data)
	require.Equal(t, uint64(1), seq)

	// The store keeps its own copies.
	h[stream.HeaderVersion] = []string{"7"}
	data[6] = 'y'
	var got []*stream.Event
	for ev, err := range st.Load(ctx, stream.Aggregate{Type: "cart", ID: "1"}) {
		require.NoError(t, err)
		got = append(got, ev)
	}
	require.Len(t, got, 1)
	assert.Equal(t, memItem{SKU: "x"}, got[0].Data)
	assert.Equal(t, uint64(1), got[0].Version)
	assert.Equal(t, "raw-1", got[0].ID)

	// A repeated Nats-Msg-Id is dropped, as the server does.
	assert.Equal(t, uint64(1), st.PutRaw("mem.cart.2", nats.Header{stream.HeaderEventID: {"raw-1"}}, nil))
	assert.Equal(t, uint64(1), st.LastSequence())
	// An append with that id too.
	res, err := st.Append(ctx, stream.Aggregate{Type: "cart", ID: "1"}, stream.ExpectAny(), []stream.EventData{{ID: "raw-1", Data: memItem{}}})
	require.NoError(t, err)
	assert.True(t, res.Duplicate)
	assert.Equal(t, stream.Revision{Version: 1, Sequence: 1}, res.First)

	// Messages without headers, or on subjects of another form, are stored.
	assert.Equal(t, uint64(2), st.PutRaw("mem.x", nil, nil))
	assert.Equal(t, uint64(3), st.PutRaw("mem.a.b.c", nil, []byte("z")))

	for _, subj := range []string{"other.cart.1", "mem", "mem.", "mem..x", "mem.*.x", "mem.>", "mem.a b.c", ""} {
		assert.Panics(t, func() { st.PutRaw(subj, nil, nil) }, "subject %q", subj)
	}
	assert.Equal(t, uint64(3), st.LastSequence())
}

func TestMemoryStoreReadCancelled(t *testing.T) {
	st := newMem(t)
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	for i := range 5 {
		_, err := st.Append(context.Background(), agg, stream.ExpectAny(), []stream.EventData{{Data: memItem{SKU: fmt.Sprint(i)}}})
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	var last error
	for ev, err := range st.Load(ctx, agg, stream.WithBatchSize(2)) {
		if err != nil {
			last = err
			break
		}
		n++
		require.Equal(t, uint64(n), ev.Version)
		cancel() // the next batch is not read
	}
	assert.Equal(t, 2, n)
	assert.ErrorIs(t, last, context.Canceled)
}

// TestMemoryStoreConcurrent runs appends to several aggregates, loads and
// reads at once (for the race detector) and checks every event is stored
// once.
func TestMemoryStoreConcurrent(t *testing.T) {
	ctx := context.Background()
	st := newMem(t)
	const writers, each = 8, 100
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			agg := stream.Aggregate{Type: "cart", ID: fmt.Sprint(w % 3)}
			for i := range each {
				_, err := st.Append(ctx, agg, stream.ExpectAny(), []stream.EventData{{Data: memItem{SKU: fmt.Sprintf("%d-%d", w, i)}}})
				assert.NoError(t, err)
			}
		})
	}
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var it func(func(*stream.Event, error) bool)
				if r == 0 {
					it = st.ReadAll(ctx, stream.WithBatchSize(7))
				} else {
					it = st.Load(ctx, stream.Aggregate{Type: "cart", ID: "1"}, stream.WithBatchSize(5))
				}
				prev := uint64(0)
				for ev, err := range it {
					if !assert.NoError(t, err) {
						return
					}
					assert.Greater(t, ev.Sequence, prev)
					prev = ev.Sequence
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	seen := map[string]bool{}
	for ev, err := range st.ReadAll(ctx) {
		require.NoError(t, err)
		sku := ev.Data.(memItem).SKU
		require.False(t, seen[sku], "%s stored twice", sku)
		seen[sku] = true
	}
	require.Len(t, seen, writers*each)
	total := uint64(0)
	for i := range 3 {
		rev, err := st.LastRevision(ctx, stream.Aggregate{Type: "cart", ID: fmt.Sprint(i)})
		require.NoError(t, err)
		total += rev.Version
	}
	require.Equal(t, uint64(writers*each), total)
}
