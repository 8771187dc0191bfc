// Command shoppingcart shows an event-sourced shopping cart on esnats: a
// Cart aggregate whose commands check the cart's state and record events,
// run through an aggregate.Repository on a JetStream event store with
// snapshots in a JetStream KV bucket. It shows rejected commands, the stored
// events, two concurrent writers whose conflict is resolved by Update's
// retry, and a long history loaded from a snapshot plus the events after it.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/examples/internal/exampleenv"
	"github.com/esnats/esnats/kv"
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
	return d.longHistory(ctx)
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
		fmt.Fprintf(d.w, "   %s loads carol: read %3d events -> %d lines, %d units, version %d\n",
			how, d.loads.events.Load()-before, len(cart.Items), cart.Quantity(), cart.Version())
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
