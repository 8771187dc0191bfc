package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
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

// shop is an event store of carts on an embedded server, with the events
// appended to it and the read model they must give.
type shop struct {
	srv   *embedded.Server
	reg   *stream.Registry
	store *stream.Store

	rng      *rand.Rand
	carts    map[string]*shopCart
	appended int
	want     map[string]int // product -> sum of ItemAdded minus ItemRemoved quantities
}

type shopCart struct {
	items      map[string]int
	checkedOut bool
	rev        stream.Revision
}

func newShop(t *testing.T) *shop {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	reg := stream.NewRegistry()
	Register(reg)
	store, err := stream.NewStore(t.Context(), js, stream.Config{Name: "shoppingcart", Registry: reg})
	require.NoError(t, err)
	return &shop{srv: srv, reg: reg, store: store, rng: rand.New(rand.NewPCG(7, 11)),
		carts: map[string]*shopCart{}, want: map[string]int{}}
}

// SKUs are user input: some need escaping to be KV keys.
var testSKUs = []string{"apple", "pear", "plum", "fig", "kiwi", "red apple", "Zürich/cheese", "v1.2"}

// shopRounds appends rounds of one command per cart to ncarts carts, all
// the carts of a round in one atomic batch: mostly items added, some lines
// removed and a few checkouts, following the cart's rules. It records what
// the read model must hold, from the events appended.
func (s *shop) shopRounds(t *testing.T, ncarts, rounds int) {
	t.Helper()
	for range rounds {
		var reqs []stream.AppendRequest
		var ids []string
		for i := range ncarts {
			id := fmt.Sprintf("cart-%02d", i)
			c := s.carts[id]
			if c == nil {
				c = &shopCart{items: map[string]int{}}
				s.carts[id] = c
			}
			if c.checkedOut {
				continue
			}
			var ev any
			switch r := s.rng.IntN(20); {
			case r == 0 && len(c.items) > 0:
				ev = CheckedOut{Lines: len(c.items)}
				c.checkedOut = true
			case r < 5 && len(c.items) > 0:
				for sku, qty := range c.items { // any line
					ev = ItemRemoved{SKU: sku, Quantity: qty}
					delete(c.items, sku)
					s.want[sku] -= qty
					break
				}
			default:
				sku, qty := testSKUs[s.rng.IntN(len(testSKUs))], 1+s.rng.IntN(5)
				ev = ItemAdded{SKU: sku, Quantity: qty}
				c.items[sku] += qty
				s.want[sku] += qty
			}
			expect := stream.ExpectNone()
			if c.rev.Version > 0 {
				expect = stream.ExpectRevision(c.rev)
			}
			reqs = append(reqs, stream.AppendRequest{Aggregate: stream.Aggregate{Type: AggregateType, ID: id}, Expect: expect,
				Events: []stream.EventData{{Data: ev}}})
			ids = append(ids, id)
		}
		if len(reqs) == 0 {
			continue
		}
		res, err := s.store.AppendBatch(t.Context(), reqs)
		require.NoError(t, err)
		for i, r := range res {
			s.carts[ids[i]].rev = r.Last
		}
		s.appended += len(reqs)
	}
	for sku, n := range s.want {
		if n == 0 {
			delete(s.want, sku) // the read model deletes a product that comes back to 0
		}
	}
}

// expected returns the read model's rows the appended events must give.
func (s *shop) expected() map[string]int {
	out := map[string]int{}
	for sku, n := range s.want {
		out[sku] = n
	}
	return out
}

func (s *shop) lastSequence(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	seq, err := lastSequence(t.Context(), js, s.store)
	require.NoError(t, err)
	require.EqualValues(t, s.appended, seq)
	return seq
}

// rows reads the read model as a map.
func rows(t *testing.T, model *projections.KV) map[string]int {
	t.Helper()
	ps, err := Products(t.Context(), model)
	require.NoError(t, err)
	out := map[string]int{}
	for _, p := range ps {
		out[p.Product] = p.Quantity
	}
	return out
}

// crashAfter is the read model of a worker that dies (its connection is
// cut) right after applying its n-th batch, before the batch is
// acknowledged. It embeds the KV model, so the runner sees a Checkpointed
// model as usual.
type crashAfter struct {
	*projections.KV
	n     int
	crash func()
}

func (c *crashAfter) Apply(ctx context.Context, evs []*stream.Event) error {
	if err := c.KV.Apply(ctx, evs); err != nil {
		return err
	}
	if c.n--; c.n == 0 {
		c.crash()
	}
	return nil
}

// testConsumer makes the batches small (many acknowledgements) and the
// fail-over quick.
var testConsumer = consumers.Config{BatchSize: 25, PinnedTTL: 2 * time.Second}

// runWorker runs a worker with the items-per-product projection over its
// own connection until it has caught up with position; it returns the
// model and a func that stops the worker (cleanly).
func runWorker(t *testing.T, s *shop, position uint64) (*projections.KV, func()) {
	t.Helper()
	_, js := embedded.MustJetStream(t, s.srv)
	proj, model, err := NewItemsPerProduct(t.Context(), js, s.reg, projections.KVConfig{}, testConsumer)
	require.NoError(t, err)
	r := projections.NewRunner(js, s.store, nil)
	require.NoError(t, r.Add(proj))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	require.Eventually(t, func() bool {
		st, err := r.StatusOf(t.Context(), ItemsPerProduct)
		return err == nil && st.Lag == 0 && st.Position >= position
	}, 30*time.Second, 10*time.Millisecond, "the worker catches up with position %d", position)
	return model, func() {
		cancel()
		require.NoError(t, <-done)
	}
}

// The read model equals the sum of all ItemAdded minus ItemRemoved
// quantities per product, also after a worker died between applying a batch
// and acknowledging it, and after a clean restart with events appended
// meanwhile: nothing is counted twice, nothing is missed.
func TestItemsPerProductExactlyOnceAcrossRestarts(t *testing.T) {
	s := newShop(t)
	s.shopRounds(t, 30, 12)
	_, js := embedded.MustJetStream(t, s.srv)
	last := s.lastSequence(t, js)
	require.Greater(t, last, uint64(5*testConsumer.BatchSize), "enough events for the crash to happen mid-stream")

	// A worker that dies after its 3rd batch, before acknowledging it.
	nc1, js1 := embedded.MustJetStream(t, s.srv)
	proj, model1, err := NewItemsPerProduct(t.Context(), js1, s.reg, projections.KVConfig{}, testConsumer)
	require.NoError(t, err)
	proj.Model = &crashAfter{KV: model1, n: 3, crash: nc1.Close}
	r1 := projections.NewRunner(js1, s.store, nil)
	require.NoError(t, r1.Add(proj))
	err = r1.Run(t.Context())
	require.Error(t, err, "the worker dies when it cannot acknowledge")
	t.Logf("first worker: %v", err)

	model, err := projections.NewKV(t.Context(), js, projections.KVConfig{Bucket: ItemsPerProductBucket}, applyItemsPerProduct)
	require.NoError(t, err)
	cp, err := model.Checkpoint(t.Context())
	require.NoError(t, err)
	cons, err := js.Consumer(t.Context(), s.store.Name(), ItemsPerProduct)
	require.NoError(t, err)
	info, err := cons.Info(t.Context())
	require.NoError(t, err)
	require.Less(t, info.AckFloor.Stream, cp, "the last batch applied was not acknowledged: it will be delivered again")
	require.Less(t, cp, last)

	// A new worker takes over (after PinnedTTL) and gets that batch again.
	model2, stop2 := runWorker(t, s, last)
	assert.Equal(t, s.expected(), rows(t, model2), "the batch delivered again is not counted twice")
	stop2()

	// More shopping while no worker runs; a restarted worker resumes.
	s.shopRounds(t, 40, 6)
	last = s.lastSequence(t, js)
	model3, stop3 := runWorker(t, s, last)
	defer stop3()
	assert.Equal(t, s.expected(), rows(t, model3))
	cp, err = model3.Checkpoint(t.Context())
	require.NoError(t, err)
	assert.LessOrEqual(t, cp, last)
	key, err := stream.EncodeID("Zürich/cheese")
	require.NoError(t, err)
	assert.Equal(t, "Z=C3=BCrich=2Fcheese", key, "SKUs are escaped into keys and read back")
}

// Run twice on one server (as with NATS_URL), the demo's projection goes on
// from where the first run left it: the second run's worker catches up with
// the second run's events only, and the totals cover both runs.
func TestDemoProjectionOnARunServer(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	var first, second bytes.Buffer
	require.NoError(t, run(t.Context(), &first, js, ""))
	require.NoError(t, run(t.Context(), &second, js, "-again"))
	t.Log("\n" + first.String() + "\n" + second.String())
	for _, want := range []string{
		"before the worker runs: read model at position 0, the store's last event at 258",
		"position 258, lag 0 (exactly-once)",
		"apple           6",
		"sku-9          25",
		"worker stopped; dave adds 4 apple and 2 fig meanwhile: position 258, lag 2",
		"position 260, lag 0; apple 6 -> 10, fig 0 -> 2",
	} {
		assert.Contains(t, first.String(), want)
	}
	for _, want := range []string{
		"before the worker runs: position 260, lag 258",
		"position 518, lag 0 (exactly-once)",
		"apple          16",
		"sku-9          50",
		"position 520, lag 0; apple 16 -> 20, fig 2 -> 4",
	} {
		assert.Contains(t, second.String(), want)
	}
	assert.Less(t, strings.Count(first.String(), "\n"), 50, "the demo's output stays short")
}
