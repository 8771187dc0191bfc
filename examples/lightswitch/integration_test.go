package main

import (
	"bytes"
	"context"
	"errors"
	"iter"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

type switchRepo = aggregate.Repository[*aggregate.State[Switch]]

func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	return js
}

// repository returns the store and a new repository (with its own cache,
// like another process) of switches on js.
func repository(t *testing.T, js jetstream.JetStream) (*stream.Store, *switchRepo) {
	t.Helper()
	store, repo, err := newRepository(t.Context(), js)
	require.NoError(t, err)
	t.Cleanup(repo.Flush)
	return store, repo
}

// storedTypes returns the type names of the switch's stored events,
// checking that their versions are 1, 2, 3, ...
func storedTypes(t *testing.T, store *stream.Store, id string) []string {
	t.Helper()
	var out []string
	for ev, err := range store.Load(t.Context(), stream.Aggregate{Type: AggregateType, ID: id}) {
		require.NoError(t, err)
		require.EqualValues(t, len(out)+1, ev.Version)
		out = append(out, ev.Type)
	}
	return out
}

func TestSwitchOnJetStream(t *testing.T) {
	ctx := t.Context()
	js := jetStream(t)
	store, repo := repository(t, js)
	require.ErrorIs(t, repo.Update(ctx, "hall", do(TurnOff{})), ErrAlreadyOff)
	require.NoError(t, repo.Update(ctx, "hall", do(TurnOn{})))
	require.ErrorIs(t, repo.Update(ctx, "hall", do(TurnOn{})), ErrAlreadyOn)
	require.NoError(t, repo.Update(ctx, "hall", do(TurnOff{})))
	require.NoError(t, repo.Update(ctx, "hall", do(TurnOn{})))

	assert.Equal(t, []string{"switch-turned-on", "switch-turned-off", "switch-turned-on"}, storedTypes(t, store, "hall"))
	_, fresh := repository(t, js)
	s, err := fresh.Load(ctx, "hall")
	require.NoError(t, err)
	assert.Equal(t, Switch{On: true, Flips: 3}, s.State)
	assert.Equal(t, stream.Revision{Version: 3, Sequence: 3}, s.Revision())
}

// A functional aggregate's state is snapshotted like any other: a fresh
// repository restores it from the snapshot and the events after it.
func TestSwitchLoadsFromSnapshot(t *testing.T) {
	ctx := t.Context()
	js := jetStream(t)
	store, repo := repository(t, js)
	for i := range 130 {
		cmd := Command(TurnOn{})
		if i%2 == 1 {
			cmd = TurnOff{}
		}
		require.NoError(t, repo.Update(ctx, "porch", do(cmd)))
	}
	repo.Flush()
	snaps, err := kv.NewStore(ctx, js, kv.Config{Bucket: "home_snapshots"})
	require.NoError(t, err)
	snap, ok, err := snaps.Get(ctx, stream.Aggregate{Type: AggregateType, ID: "porch"})
	require.NoError(t, err)
	require.True(t, ok, "a snapshot was taken at version 100")
	assert.EqualValues(t, 100, snap.Version)

	counted := &countingStore{EventStore: store}
	fresh, err := aggregate.NewRepository(aggregate.Config[*aggregate.State[Switch]]{
		Store: counted, Type: AggregateType, New: aggregate.Functional(Initial, Evolve), Snapshots: snaps,
	})
	require.NoError(t, err)
	s, err := fresh.Load(ctx, "porch")
	require.NoError(t, err)
	assert.Equal(t, Switch{On: false, Flips: 130}, s.State)
	assert.EqualValues(t, 130, s.Version())
	assert.EqualValues(t, 31, counted.events.Load(), "only the snapshot's last event (read to check it) and the 30 after it are read")
	assert.Len(t, storedTypes(t, store, "porch"), 130)
}

// countingStore counts the events loads read.
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

// Two processes turn the same switch on at the same moment: both decide on
// the dark switch, one append wins, the other conflicts, and Update's retry
// decides again on the lit switch and refuses. The switch is turned on once.
func TestConcurrentTurnOnOnce(t *testing.T) {
	ctx := t.Context()
	js := jetStream(t)
	store, first := repository(t, js)
	_, second := repository(t, js)

	bothLoaded := barrier(2)
	calls := make([]int, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, repo := range []*switchRepo{first, second} {
		wg.Go(func() {
			errs[i] = repo.Update(ctx, "hall", func(s *aggregate.State[Switch]) error {
				calls[i]++
				if calls[i] == 1 {
					// Wait until the other writer has loaded the switch too.
					if err := bothLoaded(); err != nil {
						return err
					}
				}
				return do(TurnOn{})(s)
			})
		})
	}
	wg.Wait()

	assert.ElementsMatch(t, []int{1, 2}, calls, "the writer whose append conflicted ran the command again")
	loser := 0
	if calls[1] == 2 {
		loser = 1
	}
	require.NoError(t, errs[1-loser])
	require.ErrorIs(t, errs[loser], ErrAlreadyOn, "the retry saw the lit switch")
	assert.Equal(t, []string{"switch-turned-on"}, storedTypes(t, store, "hall"))
}

// barrier returns a func that returns once n goroutines have called it, or
// fails after 10 seconds.
func barrier(n int) func() error {
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
		case <-time.After(10 * time.Second):
			return errors.New("barrier: the other goroutines did not arrive")
		}
	}
}

// The demo runs and shows what it promises.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), &out, jetStream(t), ""))
	t.Log("\n" + out.String())
	for _, want := range []string{
		"turn on  rejected: switch is already on",
		"turn off rejected: switch is already off",
		"v3 seq 3   switch-turned-on",
		"state: on, flipped 3 times, version 3",
	} {
		assert.Contains(t, out.String(), want)
	}
}
