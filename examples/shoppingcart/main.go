// Command shoppingcart shows an event-sourced shopping cart on esnats: a
// Cart aggregate whose commands check the cart's state and record events,
// run through an aggregate.Repository on a JetStream event store with
// snapshots in a JetStream KV bucket. It shows rejected commands, the stored
// events, two concurrent writers whose conflict is resolved by Update's
// retry, a long history loaded from a snapshot plus the events after it, and
// a projection worker that keeps the units per product across all carts in a
// JetStream KV bucket, exactly once, resuming where it stopped.
//
// It starts an embedded NATS server with JetStream in a temporary directory,
// or uses the server at $NATS_URL when set (then cart ids get a per-run
// suffix, so the demo can run again on the same server):
//
//	go run ./examples/shoppingcart   (or: make demo)
//	NATS_URL=nats://127.0.0.1:4222 go run ./examples/shoppingcart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/examples/internal/exampleenv"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, suffix, cleanup, err := exampleenv.Connect(os.Stdout, "shoppingcart")
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	if err := run(ctx, os.Stdout, js, suffix); err != nil {
		cleanup()
		log.Fatal(err)
	}
	if os.Getenv("NATS_URL") == "" {
		fmt.Println("\nthe embedded server and its data go away now; to keep them and look around with the esnats command:")
		fmt.Println("   go run ./cmd/esnats dev                      # in another terminal")
		fmt.Println("   NATS_URL=nats://127.0.0.1:4222 make demo     # then follow what it prints")
		return
	}
	fmt.Println("\nlook at what the demo stored with the esnats command:")
	fmt.Println("   go run ./cmd/esnats events shoppingcart --type cart -n 20")
	fmt.Printf("   go run ./cmd/esnats aggregate shoppingcart cart carol%s --bucket shoppingcart_snapshots\n", suffix)
	fmt.Println("   go run ./cmd/esnats consumers shoppingcart")
}

// demo holds what the scenario's steps share.
type demo struct {
	w      io.Writer
	store  *stream.Store
	snaps  *kv.Store
	loads  *countingStore // the store as the repositories see it
	suffix string         // appended to cart ids
}

// run plays the scenario on js, printing to w. Cart ids get suffix.
func run(ctx context.Context, w io.Writer, js jetstream.JetStream, suffix string) error {
	reg := stream.NewRegistry()
	Register(reg)
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shoppingcart", Registry: reg})
	if err != nil {
		return err
	}
	snaps, err := kv.NewStore(ctx, js, kv.Config{Bucket: "shoppingcart_snapshots"})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "event store %q (subjects %s), snapshots in KV bucket %q\n",
		store.Name(), store.SubjectFilter(""), snaps.Bucket())
	d := &demo{w: w, store: store, snaps: snaps, loads: &countingStore{EventStore: store}, suffix: suffix}
	if err := d.shop(ctx); err != nil {
		return err
	}
	if err := d.concurrentWriters(ctx); err != nil {
		return err
	}
	if err := d.longHistory(ctx); err != nil {
		return err
	}
	return d.itemsPerProduct(ctx, js)
}

// repository returns a new repository of carts (with its own cache, as
// another process would have), snapshotting every 100 events; snapshotEvery
// < 0 disables snapshots.
func (d *demo) repository(snapshotEvery int) (*aggregate.Repository[*Cart], error) {
	cfg := aggregate.Config[*Cart]{
		Store:         d.loads,
		Type:          AggregateType,
		New:           NewCart,
		Snapshots:     d.snaps,
		SnapshotEvery: snapshotEvery,
	}
	if snapshotEvery < 0 {
		cfg.Snapshots = nil
	}
	return aggregate.NewRepository(cfg)
}

// shop runs commands on alice's cart, some rejected, then prints the stored
// events and the state.
func (d *demo) shop(ctx context.Context) error {
	repo, err := d.repository(100)
	if err != nil {
		return err
	}
	defer repo.Flush()
	alice := "alice" + d.suffix
	fmt.Fprintf(d.w, "\n1. alice shops: each command checks the cart, then appends its events\n")
	commands := []struct {
		say string
		fn  func(*Cart) error
	}{
		{"add 2 apple", func(c *Cart) error { return c.AddItem("apple", 2) }},
		{"add 1 pear", func(c *Cart) error { return c.AddItem("pear", 1) }},
		{"add 3 apple", func(c *Cart) error { return c.AddItem("apple", 3) }},
		{"remove pear", func(c *Cart) error { return c.RemoveItem("pear") }},
		{"remove kiwi", func(c *Cart) error { return c.RemoveItem("kiwi") }},
		{"add 0 plum", func(c *Cart) error { return c.AddItem("plum", 0) }},
		{"checkout", func(c *Cart) error { return c.Checkout() }},
		{"add 1 fig", func(c *Cart) error { return c.AddItem("fig", 1) }},
	}
	for _, cmd := range commands {
		err := repo.Update(ctx, alice, cmd.fn)
		switch {
		case err == nil:
			fmt.Fprintf(d.w, "   %-12s ok\n", cmd.say)
		case rejected(err):
			fmt.Fprintf(d.w, "   %-12s rejected: %v\n", cmd.say, err)
		default:
			return fmt.Errorf("%s: %w", cmd.say, err)
		}
	}
	return d.printCart(ctx, alice)
}

// rejected reports whether err is a cart rule refusing a command.
func rejected(err error) bool {
	for _, e := range []error{ErrCheckedOut, ErrInvalidQuantity, ErrItemNotInCart, ErrEmptyCart} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// concurrentWriters has two repositories (as two processes would) update
// bob's cart at the same moment: both load version 1 before either saves,
// so one append conflicts and its Update reloads the cart and runs the
// command again.
func (d *demo) concurrentWriters(ctx context.Context) error {
	bob := "bob" + d.suffix
	fmt.Fprintf(d.w, "\n2. two writers add to bob's cart at the same moment (two repositories, as two processes)\n")
	first, err := d.repository(100)
	if err != nil {
		return err
	}
	defer first.Flush()
	if err := first.Update(ctx, bob, func(c *Cart) error { return c.AddItem("apple", 1) }); err != nil {
		return err
	}
	second, err := d.repository(100)
	if err != nil {
		return err
	}
	defer second.Flush()

	writers := []struct {
		name string
		repo *aggregate.Repository[*Cart]
		sku  string
		qty  int
	}{{"A", first, "pear", 1}, {"B", second, "plum", 2}}
	bothLoaded := barrier(ctx, len(writers))
	calls := make([]int, len(writers))
	errs := make([]error, len(writers))
	var wg sync.WaitGroup
	for i, wr := range writers {
		wg.Go(func() {
			errs[i] = wr.repo.Update(ctx, bob, func(c *Cart) error {
				calls[i]++
				if calls[i] == 1 {
					// Wait until the other writer has loaded the cart too.
					if err := bothLoaded(); err != nil {
						return err
					}
				}
				return c.AddItem(wr.sku, wr.qty)
			})
		})
	}
	wg.Wait()
	for i, wr := range writers {
		if errs[i] != nil {
			return fmt.Errorf("writer %s: %w", wr.name, errs[i])
		}
		ran := "ran once"
		if calls[i] > 1 {
			ran = fmt.Sprintf("ran %d times (its append conflicted; Update reloaded and retried)", calls[i])
		}
		fmt.Fprintf(d.w, "   writer %s: add %d %-5s ok, command %s\n", wr.name, wr.qty, wr.sku, ran)
	}
	return d.printCart(ctx, bob)
}

// printCart prints the cart's stored events and its state as a fresh
// repository loads it.
func (d *demo) printCart(ctx context.Context, id string) error {
	ref := stream.Aggregate{Type: AggregateType, ID: id}
	fmt.Fprintf(d.w, "   events stored for %s:\n", ref)
	for e, err := range d.store.Load(ctx, ref) {
		if err != nil {
			return err
		}
		fmt.Fprintf(d.w, "     v%d seq %-3d %-17s %+v\n", e.Version, e.Sequence, e.Type, e.Data)
	}
	// A fresh repository, as a reader process would have. (Repository.Load
	// returns a cached instance without checking that it is current, so a
	// writer's own repository may still hold the cart as it saved it, before
	// the other writer's append.)
	repo, err := d.repository(100)
	if err != nil {
		return err
	}
	defer repo.Flush()
	cart, err := repo.Load(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.w, "   state: %v\n", cart)
	return nil
}

// barrier returns a func that blocks until n goroutines have called it, or
// ctx ends.
func barrier(ctx context.Context, n int) func() error {
	var mu sync.Mutex
	all := make(chan struct{})
	return func() error {
		mu.Lock()
		if n--; n == 0 {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// longHistory gives carol's cart 250 events, with a snapshot every 100, and
// shows that a fresh repository loads it from the snapshot at version 200
// plus the 50 events after it.
func (d *demo) longHistory(ctx context.Context) error {
	carol := "carol" + d.suffix
	ref := stream.Aggregate{Type: AggregateType, ID: carol}
	fmt.Fprintf(d.w, "\n3. carol adds 250 items in 25 commands; a snapshot is taken every 100 events\n")
	repo, err := d.repository(100)
	if err != nil {
		return err
	}
	for i := range 25 {
		err := repo.Update(ctx, carol, func(c *Cart) error {
			for j := range 10 {
				if err := c.AddItem(fmt.Sprintf("sku-%d", (i*10+j)%10), 1); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Snapshots are written in the background, at most one per cart at
		// a time; wait for each so that the output is the same every run.
		repo.Flush()
	}
	snap, ok, err := d.snaps.Get(ctx, ref)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no snapshot of carol's cart was written")
	}
	fmt.Fprintf(d.w, "   snapshot in KV: version %d, stream sequence %d, %d bytes of state\n", snap.Version, snap.Sequence, len(snap.State))

	for _, useSnapshots := range []bool{false, true} {
		every, how := -1, "a repository without snapshots"
		if useSnapshots {
			every, how = 100, "a repository with snapshots   "
		}
		fresh, err := d.repository(every)
		if err != nil {
			return err
		}
		before := d.loads.events.Load()
		cart, err := fresh.Load(ctx, carol)
		if err != nil {
			return err
		}
		read := d.loads.events.Load() - before
		fmt.Fprintf(d.w, "   %s loads carol: read %3d events -> %d lines, %d units, version %d\n",
			how, read, len(cart.Items), cart.Quantity(), cart.Version())
		if useSnapshots {
			fmt.Fprintf(d.w, "   (the snapshot's own last event, read to check the stream still holds it, and the %d after it)\n", read-1)
		}
		fresh.Flush()
	}
	return nil
}

// countingStore is the event store as the repositories see it, counting the
// events their loads read.
type countingStore struct {
	stream.EventStore
	events atomic.Int64
}

func (c *countingStore) Load(ctx context.Context, agg stream.Aggregate, opts ...stream.ReadOption) iter.Seq2[*stream.Event, error] {
	return func(yield func(*stream.Event, error) bool) {
		for e, err := range c.EventStore.Load(ctx, agg, opts...) {
			if err == nil {
				c.events.Add(1)
			}
			if !yield(e, err) {
				return
			}
		}
	}
}

// itemsPerProduct runs the items-per-product projection (projection.go) in
// a worker goroutine, as a projection worker process would: it shows the
// worker catching up with the events stored so far, the read model, and a
// second worker (as after a restart) resuming where the first stopped.
func (d *demo) itemsPerProduct(ctx context.Context, js jetstream.JetStream) error {
	fmt.Fprintf(d.w, "\n4. a projection worker keeps the units per product of all carts in KV bucket %q\n", ItemsPerProductBucket)
	first, err := d.newWorker(ctx, js)
	if err != nil {
		return err
	}
	defer first.stop()
	last, err := lastSequence(ctx, js, d.store)
	if err != nil {
		return err
	}
	if st, err := first.runner.StatusOf(ctx, ItemsPerProduct); err == nil {
		fmt.Fprintf(d.w, "   before the worker runs: position %d, lag %d\n", st.Position, st.Lag)
	} else {
		// The projection's durable consumer does not exist until a worker
		// has run it.
		cp, err := first.model.Checkpoint(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.w, "   before the worker runs: read model at position %d, the store's last event at %d\n", cp, last)
	}
	first.run(ctx)
	st, took, err := first.caughtUp(ctx, last)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.w, "   worker started, caught up in %s: position %d, lag %d (%s)\n", took, st.Position, st.Lag, st.Mode)
	if err := d.printProducts(ctx, first.model); err != nil {
		return err
	}

	if err := first.stop(); err != nil {
		return err
	}
	apple, _ := quantity(ctx, first.model, "apple")
	fig, _ := quantity(ctx, first.model, "fig")
	dave := "dave" + d.suffix
	repo, err := d.repository(100)
	if err != nil {
		return err
	}
	defer repo.Flush()
	if err := repo.Update(ctx, dave, func(c *Cart) error {
		if err := c.AddItem("apple", 4); err != nil {
			return err
		}
		return c.AddItem("fig", 2)
	}); err != nil {
		return err
	}
	if st, err = first.runner.StatusOf(ctx, ItemsPerProduct); err != nil {
		return err
	}
	fmt.Fprintf(d.w, "   worker stopped; dave adds 4 apple and 2 fig meanwhile: position %d, lag %d\n", st.Position, st.Lag)

	second, err := d.newWorker(ctx, js)
	if err != nil {
		return err
	}
	defer second.stop()
	second.run(ctx)
	if last, err = lastSequence(ctx, js, d.store); err != nil {
		return err
	}
	if st, took, err = second.caughtUp(ctx, last); err != nil {
		return err
	}
	apple2, err := quantity(ctx, second.model, "apple")
	if err != nil {
		return err
	}
	fig2, err := quantity(ctx, second.model, "fig")
	if err != nil {
		return err
	}
	fmt.Fprintf(d.w, "   a new worker resumes, caught up in %s: position %d, lag %d; apple %d -> %d, fig %d -> %d\n",
		took, st.Position, st.Lag, apple, apple2, fig, fig2)
	return second.stop()
}

// printProducts prints the read model as a table, in two columns of rows.
func (d *demo) printProducts(ctx context.Context, model *projections.KV) error {
	rows, err := Products(ctx, model)
	if err != nil {
		return err
	}
	half := (len(rows) + 1) / 2
	fmt.Fprintf(d.w, "   %-8s %8s    %-8s %8s\n", "product", "quantity", "product", "quantity")
	for i := range half {
		line := fmt.Sprintf("   %-8s %8d", rows[i].Product, rows[i].Quantity)
		if j := half + i; j < len(rows) {
			line += fmt.Sprintf("    %-8s %8d", rows[j].Product, rows[j].Quantity)
		}
		fmt.Fprintln(d.w, line)
	}
	return nil
}

// quantity reads one product's quantity from the read model (0 if absent).
func quantity(ctx context.Context, model *projections.KV, sku string) (int, error) {
	key, err := stream.EncodeID(sku)
	if err != nil {
		return 0, err
	}
	data, ok, err := model.Get(ctx, key)
	if err != nil || !ok {
		return 0, err
	}
	return strconv.Atoi(string(data))
}

// lastSequence returns the stream sequence of the store's last event.
func lastSequence(ctx context.Context, js jetstream.JetStream, store *stream.Store) (uint64, error) {
	s, err := js.Stream(ctx, store.Name())
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// worker is a projection worker: a Runner of the items-per-product
// projection, run in a goroutine.
type worker struct {
	runner *projections.Runner
	model  *projections.KV
	cancel context.CancelFunc
	done   chan error
}

// newWorker prepares a worker with its own read model handle, as another
// process would have; run starts it.
func (d *demo) newWorker(ctx context.Context, js jetstream.JetStream) (*worker, error) {
	proj, model, err := NewItemsPerProduct(ctx, js, d.store.Registry(), projections.KVConfig{}, consumers.Config{})
	if err != nil {
		return nil, err
	}
	runner := projections.NewRunner(js, d.store, nil)
	if err := runner.Add(proj); err != nil {
		return nil, err
	}
	return &worker{runner: runner, model: model}, nil
}

// run starts the worker's Runner in a goroutine.
func (w *worker) run(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan error, 1)
	go func() { w.done <- w.runner.Run(ctx) }()
}

// stop stops the worker and returns what Run returned. The worker finishes
// and acknowledges the batch in hand first. It may be called more than once.
func (w *worker) stop() error {
	if w.cancel == nil {
		return nil
	}
	w.cancel()
	w.cancel = nil
	return <-w.done
}

// caughtUp waits until the projection has applied the events up to
// position, and says how long that took.
func (w *worker) caughtUp(ctx context.Context, position uint64) (projections.Status, time.Duration, error) {
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		// StatusOf fails until Run has created the projection's consumer.
		st, err := w.runner.StatusOf(ctx, ItemsPerProduct)
		if err == nil && st.Lag == 0 && st.Position >= position {
			return st, time.Since(start).Round(time.Millisecond), nil
		}
		select {
		case <-ctx.Done():
			return projections.Status{}, 0, fmt.Errorf("projection %s did not catch up with position %d: %w", ItemsPerProduct, position, ctx.Err())
		case err := <-w.done:
			w.done <- err
			if err == nil {
				err = errors.New("it returned early")
			}
			return projections.Status{}, 0, fmt.Errorf("projection worker stopped: %w", err)
		case <-tick.C:
		}
	}
}
