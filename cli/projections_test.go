package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// itemsModel counts units per SKU, and the events it applied.
type itemsModel struct {
	*projections.Memory[int]
	applied atomic.Int64
}

func newItemsModel() *itemsModel {
	return &itemsModel{Memory: projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		if e, ok := ev.Data.(ItemAdded); ok {
			view[e.SKU] += e.Quantity
		}
		return nil
	})}
}

func (m *itemsModel) Apply(ctx context.Context, evs []*stream.Event) error {
	m.applied.Add(int64(len(evs)))
	return m.Memory.Apply(ctx, evs)
}

// workerOptions are the options of a worker binary built with the cli
// package: the application's registry and projections.
func workerOptions(models chan<- *itemsModel) cli.Options {
	return cli.Options{
		Name:     "shop-worker",
		Registry: registry(),
		Projections: func(ctx context.Context, js jetstream.JetStream, store *stream.Store) ([]projections.Projection, error) {
			m := newItemsModel()
			models <- m
			return []projections.Projection{{
				Name:           "items",
				AggregateTypes: []string{"cart"},
				Model:          m,
				Fresh: func(context.Context) (projections.ReadModel, error) {
					fresh := newItemsModel()
					models <- fresh
					return fresh, nil
				},
			}}, nil
		},
	}
}

type statusOut struct {
	Workers     []projections.InstanceStatus `json:"workers"`
	Projections []struct {
		Projection string `json:"projection"`
		Role       string `json:"role"`
		Position   uint64 `json:"position"`
		Lag        uint64 `json:"lag"`
	} `json:"projections"`
	Consumers []struct {
		Name     string `json:"name"`
		Position uint64 `json:"position"`
	} `json:"consumers"`
}

func TestProjectionsRunStatusRebuildReset(t *testing.T) {
	f := newFixture(t)

	// Before any worker runs: nobody answers.
	r := run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "no worker process answers for store shop")
	r = run(t, cli.Options{}, "-s", f.url, "projections", "rebuild", "shop", "items")
	assert.Equal(t, cli.ExitNotFound, r.code)
	assert.Contains(t, r.stderr, "no worker process answers for store shop")

	// The stock binary cannot run projections it does not have.
	r = run(t, cli.Options{}, "-s", f.url, "projections", "run", "shop")
	assert.Equal(t, cli.ExitUsage, r.code)
	assert.Contains(t, r.stderr, "no projections compiled in")

	// A worker built with the cli package runs them.
	models := make(chan *itemsModel, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wout, werr syncBuffer
	done := make(chan int, 1)
	go func() {
		opts := workerOptions(models)
		opts.Stdout, opts.Stderr = &wout, &werr
		done <- cli.Run(ctx, opts, []string{"-s", f.url, "projections", "run", "shop"})
	}()
	model := <-models
	require.Eventually(t, func() bool { return model.Len() == 3 }, 10*time.Second, 10*time.Millisecond, werr.String())
	assert.Equal(t, map[string]int{"apple": 2, "pear": 1, "fig": 5}, model.Snapshot())

	var st statusOut
	require.Eventually(t, func() bool {
		r = run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop", "--json")
		if r.code != cli.ExitOK {
			return false
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &st), r.stdout)
		return len(st.Projections) == 1 && st.Projections[0].Position == 4
	}, 10*time.Second, 50*time.Millisecond, "%s %s", r.stdout, r.stderr)
	require.Len(t, st.Workers, 1)
	assert.Equal(t, "items", st.Projections[0].Projection)
	assert.Equal(t, uint64(0), st.Projections[0].Lag)
	assert.Equal(t, "active", st.Projections[0].Role, "the only worker, which received the events")

	r = run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "1 worker process(es) for store shop")
	assert.Regexp(t, `items\s+\S+/\d+ \(\S+\)\s+\w+\s+exactly-once\s+4\s+0\s`, r.stdout)

	// Rebuild: a fresh model gets every event, and the worker goes on with it.
	r = run(t, cli.Options{}, "-s", f.url, "projections", "rebuild", "shop", "items", "-q")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "projection items of store shop rebuilt")
	fresh := <-models
	assert.Equal(t, map[string]int{"apple": 2, "pear": 1, "fig": 5}, fresh.Snapshot())
	_, err := f.store.Append(ctx, stream.Aggregate{Type: "cart", ID: "dave"}, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "kiwi", Quantity: 7}}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, _ := fresh.Get("kiwi"); return v == 7 }, 10*time.Second, 10*time.Millisecond)
	_, inOld := model.Get("kiwi")
	assert.False(t, inOld, "the old model is not fed after the switch-over")

	// Reset to the start: the exactly-once model is emptied and refilled.
	// --wait returns once the replay has caught up: every event applied
	// again (an exactly-once model that was not reset would skip them).
	before := fresh.applied.Load()
	r = run(t, cli.Options{}, "-s", f.url, "projections", "reset", "shop", "items", "--to", "0", "--wait")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "reset to sequence 1")
	assert.Contains(t, r.stdout, "caught up: position 5, lag 0")
	assert.Equal(t, before+5, fresh.applied.Load(), "the 5 events were replayed")
	v, _ := fresh.Get("kiwi")
	assert.Equal(t, 7, v)
	assert.Equal(t, 4, fresh.Len())
	require.Eventually(t, func() bool {
		r = run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop", "--json")
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &st), r.stdout)
		return len(st.Projections) == 1 && st.Projections[0].Role == "active"
	}, 10*time.Second, 50*time.Millisecond, "after the reset the worker is the active one again: %s", r.stdout)

	// Errors name what was wrong.
	r = run(t, cli.Options{}, "-s", f.url, "projections", "rebuild", "shop", "nope")
	assert.Equal(t, cli.ExitNotFound, r.code)
	assert.Contains(t, r.stderr, "has a projection nope")
	r = run(t, cli.Options{}, "-s", f.url, "projections", "reset", "shop", "items", "--to", "3")
	assert.Equal(t, cli.ExitError, r.code)
	assert.Contains(t, r.stderr, "invalid reset")

	// A second worker: a rebuild would stop it, so the command asks for --force.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan int, 1)
	go func() {
		opts := workerOptions(models)
		opts.Stdout, opts.Stderr = io.Discard, io.Discard
		done2 <- cli.Run(ctx2, opts, []string{"-s", f.url, "projections", "run", "shop"})
	}()
	<-models
	require.Eventually(t, func() bool {
		r = run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop", "--json")
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &st), r.stdout)
		return len(st.Workers) == 2
	}, 10*time.Second, 50*time.Millisecond)
	r = run(t, cli.Options{}, "-s", f.url, "projections", "rebuild", "shop", "items", "-q")
	assert.Equal(t, cli.ExitUsage, r.code)
	assert.Contains(t, r.stderr, "runs in 2 worker processes")
	cancel2()
	assert.Equal(t, cli.ExitOK, <-done2)

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, cli.ExitOK, code, werr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("the worker did not stop")
	}
	assert.Contains(t, werr.String(), "worker started")

	// Without the worker, status falls back to the durable consumer.
	r = run(t, cli.Options{}, "-s", f.url, "projections", "status", "shop", "--json")
	require.Equal(t, cli.ExitOK, r.code, r.stderr)
	st = statusOut{}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Empty(t, st.Workers)
	require.Len(t, st.Consumers, 1, fmt.Sprint(st.Consumers))
	assert.True(t, strings.HasPrefix(st.Consumers[0].Name, "items"), st.Consumers[0].Name)
}
