// Command order shows an order aggregate on esnats: an order is created
// once (Repository.Create refuses a second create with aggregate.ErrExists),
// then its status moves forward one step at a time, new -> paid ->
// confirmed -> shipped; commands that skip or go back a step, name an
// unknown status, or target an order that was never created are rejected
// and record nothing. It prints each command's outcome, the stored events
// and the order's state.
//
// It starts an embedded NATS server with JetStream in a temporary directory,
// or uses the server at $NATS_URL when set (then order ids get a per-run
// suffix, so the demo can run again on the same server):
//
//	go run ./examples/order
//	NATS_URL=nats://127.0.0.1:4222 go run ./examples/order
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
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
	js, suffix, cleanup, err := exampleenv.Connect(os.Stdout, "order")
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	if err := run(ctx, os.Stdout, js, suffix); err != nil {
		cleanup()
		log.Fatal(err)
	}
}

// newRepository creates the event store and snapshot bucket of orders on js
// and returns the store and a repository of orders on them.
func newRepository(ctx context.Context, js jetstream.JetStream) (*stream.Store, *aggregate.Repository[*Order], error) {
	reg := stream.NewRegistry()
	Register(reg)
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "orders", Registry: reg})
	if err != nil {
		return nil, nil, err
	}
	snaps, err := kv.NewStore(ctx, js, kv.Config{Bucket: "orders_snapshots"})
	if err != nil {
		return nil, nil, err
	}
	repo, err := aggregate.NewRepository(aggregate.Config[*Order]{
		Store:     store,
		Type:      AggregateType,
		New:       NewOrder,
		Snapshots: snaps,
	})
	return store, repo, err
}

// run plays the scenario on js, printing to w. Order ids get suffix.
func run(ctx context.Context, w io.Writer, js jetstream.JetStream, suffix string) error {
	store, repo, err := newRepository(ctx, js)
	if err != nil {
		return err
	}
	defer repo.Flush()
	fmt.Fprintf(w, "event store %q (subjects %s)\n", store.Name(), store.SubjectFilter(""))

	order, ghost := "1001"+suffix, "404"+suffix
	lines := []Line{{SKU: "book", Quantity: 2}, {SKU: "pen", Quantity: 1}}
	steps := []struct {
		say    string
		id     string
		create bool // through Repository.Create, else Update
		fn     func(*Order) error
	}{
		{"create for alice: 2 x book, 1 x pen", order, true, func(o *Order) error { return o.Create("alice", lines...) }},
		{"create it again", order, true, func(o *Order) error { return o.Create("alice", lines...) }},
		{"ship", order, false, (*Order).Ship},
		{"pay", order, false, (*Order).Pay},
		{`change status to "lost"`, order, false, func(o *Order) error { return o.ChangeStatus("lost") }},
		{"confirm", order, false, (*Order).Confirm},
		{`change status back to "paid"`, order, false, func(o *Order) error { return o.ChangeStatus(StatusPaid) }},
		{"ship", order, false, (*Order).Ship},
		{"confirm", order, false, (*Order).Confirm},
		{"pay (never created)", ghost, false, (*Order).Pay},
	}
	for _, s := range steps {
		do := repo.Update
		if s.create {
			do = repo.Create
		}
		err := do(ctx, s.id, s.fn)
		switch {
		case err == nil:
			fmt.Fprintf(w, "  order %-*s %-36s ok\n", len(order), s.id, s.say)
		case rejected(err):
			fmt.Fprintf(w, "  order %-*s %-36s rejected: %v\n", len(order), s.id, s.say, err)
		default:
			return fmt.Errorf("order %s: %s: %w", s.id, s.say, err)
		}
	}

	for _, id := range []string{order, ghost} {
		ref := stream.Aggregate{Type: AggregateType, ID: id}
		fmt.Fprintf(w, "\nevents stored for %s:\n", ref)
		n := 0
		for e, err := range store.Load(ctx, ref) {
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "  v%d seq %-3d %-20s %+v\n", e.Version, e.Sequence, e.Type, e.Data)
			n++
		}
		if n == 0 {
			fmt.Fprintln(w, "  (none: rejected commands record nothing)")
		}
		o, err := repo.Load(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "state: %v\n", o)
	}
	return nil
}

// rejected reports whether err is a rule refusing a command.
func rejected(err error) bool {
	for _, e := range []error{aggregate.ErrExists, ErrNotCreated, ErrAlreadyCreated, ErrInvalidOrder, ErrInvalidStatus, ErrInvalidTransition} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
