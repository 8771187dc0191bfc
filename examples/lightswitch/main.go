// Command lightswitch shows the functional style of esnats aggregates: a
// light switch whose state is a plain value evolved by a pure function
// (Evolve) and whose commands are decided by a pure function (Decide), run
// by the same Repository as embedded-style aggregates through
// aggregate.Functional and aggregate.Decide. Turning on a lit switch or off
// a dark one is rejected and records nothing. It prints each command's
// outcome, the stored events and the state.
//
// It starts an embedded NATS server with JetStream in a temporary directory,
// or uses the server at $NATS_URL when set (then the switch id gets a
// per-run suffix, so the demo can run again on the same server):
//
//	go run ./examples/lightswitch
//	NATS_URL=nats://127.0.0.1:4222 go run ./examples/lightswitch
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
	js, suffix, cleanup, err := exampleenv.Connect(os.Stdout, "lightswitch")
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	if err := run(ctx, os.Stdout, js, suffix); err != nil {
		cleanup()
		log.Fatal(err)
	}
}

// newRepository creates the event store and snapshot bucket of switches on
// js and returns the store and a repository of switches on them.
func newRepository(ctx context.Context, js jetstream.JetStream) (*stream.Store, *aggregate.Repository[*aggregate.State[Switch]], error) {
	reg := stream.NewRegistry()
	Register(reg)
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "home", Registry: reg})
	if err != nil {
		return nil, nil, err
	}
	snaps, err := kv.NewStore(ctx, js, kv.Config{Bucket: "home_snapshots"})
	if err != nil {
		return nil, nil, err
	}
	repo, err := aggregate.NewRepository(aggregate.Config[*aggregate.State[Switch]]{
		Store:     store,
		Type:      AggregateType,
		New:       aggregate.Functional(Initial, Evolve),
		Snapshots: snaps,
	})
	return store, repo, err
}

// run plays the scenario on js, printing to w. The switch id gets suffix.
func run(ctx context.Context, w io.Writer, js jetstream.JetStream, suffix string) error {
	store, repo, err := newRepository(ctx, js)
	if err != nil {
		return err
	}
	defer repo.Flush()
	fmt.Fprintf(w, "event store %q (subjects %s)\n", store.Name(), store.SubjectFilter(""))

	hall := "hall" + suffix
	steps := []struct {
		say string
		cmd Command
	}{
		{"turn on", TurnOn{}},
		{"turn on", TurnOn{}},
		{"turn off", TurnOff{}},
		{"turn off", TurnOff{}},
		{"turn on", TurnOn{}},
	}
	fmt.Fprintf(w, "\nthe %s switch:\n", hall)
	for _, s := range steps {
		err := repo.Update(ctx, hall, aggregate.Decide(Decide, s.cmd))
		switch {
		case err == nil:
			fmt.Fprintf(w, "  %-8s ok\n", s.say)
		case errors.Is(err, ErrAlreadyOn), errors.Is(err, ErrAlreadyOff):
			fmt.Fprintf(w, "  %-8s rejected: %v\n", s.say, err)
		default:
			return fmt.Errorf("%s: %w", s.say, err)
		}
	}

	ref := stream.Aggregate{Type: AggregateType, ID: hall}
	fmt.Fprintf(w, "\nevents stored for %s:\n", ref)
	for e, err := range store.Load(ctx, ref) {
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  v%d seq %-3d %s\n", e.Version, e.Sequence, e.Type)
	}
	sw, err := repo.Load(ctx, hall)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "state: %v, version %d\n", sw.State, sw.Version())
	return nil
}
