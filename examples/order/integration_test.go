package main

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	return js
}

// repository returns the store and a new repository (with its own cache,
// like another process) of orders on js.
func repository(t *testing.T, js jetstream.JetStream) (*stream.Store, *aggregate.Repository[*Order]) {
	t.Helper()
	store, repo, err := newRepository(t.Context(), js)
	require.NoError(t, err)
	t.Cleanup(repo.Flush)
	return store, repo
}

// stored returns the payloads of the order's stored events, checking that
// their versions are 1, 2, 3, ...
func stored(t *testing.T, store *stream.Store, id string) []any {
	t.Helper()
	var out []any
	for ev, err := range store.Load(t.Context(), stream.Aggregate{Type: AggregateType, ID: id}) {
		require.NoError(t, err)
		require.EqualValues(t, len(out)+1, ev.Version)
		out = append(out, ev.Data)
	}
	return out
}

func TestOrderOnJetStream(t *testing.T) {
	ctx := t.Context()
	js := jetStream(t)
	store, repo := repository(t, js)

	require.NoError(t, repo.Create(ctx, "1001", create("alice", lines...)))
	require.ErrorIs(t, repo.Create(ctx, "1001", create("bob", lines...)), aggregate.ErrExists)
	require.ErrorIs(t, repo.Update(ctx, "1001", (*Order).Ship), ErrInvalidTransition)
	require.NoError(t, repo.Update(ctx, "1001", (*Order).Pay))
	require.ErrorIs(t, repo.Update(ctx, "1001", changeStatus("lost")), ErrInvalidStatus)
	require.NoError(t, repo.Update(ctx, "1001", (*Order).Confirm))
	require.NoError(t, repo.Update(ctx, "1001", (*Order).Ship))
	require.ErrorIs(t, repo.Update(ctx, "404", (*Order).Pay), ErrNotCreated)

	assert.Equal(t, []any{
		created,
		StatusChanged{From: StatusNew, To: StatusPaid},
		StatusChanged{From: StatusPaid, To: StatusConfirmed},
		StatusChanged{From: StatusConfirmed, To: StatusShipped},
	}, stored(t, store, "1001"))
	rev, err := store.LastRevision(ctx, stream.Aggregate{Type: AggregateType, ID: "404"})
	require.NoError(t, err)
	assert.True(t, rev.IsZero(), "a rejected command on an order never created stores nothing")

	_, fresh := repository(t, js)
	o, err := fresh.Load(ctx, "1001")
	require.NoError(t, err)
	assert.True(t, o.Created)
	assert.Equal(t, "alice", o.Customer)
	assert.Equal(t, lines, o.Lines)
	assert.Equal(t, StatusShipped, o.Status)
	assert.EqualValues(t, 4, o.Version())
}

// Two processes pay the same order at the same moment: both decide on the
// new order, one append wins, the other conflicts, and Update's retry runs
// the command again on the paid order, which now refuses it. The order is
// paid once.
func TestConcurrentPaymentsPayOnce(t *testing.T) {
	ctx := t.Context()
	js := jetStream(t)
	store, first := repository(t, js)
	require.NoError(t, first.Create(ctx, "1001", create("alice", lines...)))
	_, second := repository(t, js)

	bothLoaded := barrier(2)
	calls := make([]int, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, repo := range []*aggregate.Repository[*Order]{first, second} {
		wg.Go(func() {
			errs[i] = repo.Update(ctx, "1001", func(o *Order) error {
				calls[i]++
				if calls[i] == 1 {
					// Wait until the other writer has loaded the order too.
					if err := bothLoaded(); err != nil {
						return err
					}
				}
				return o.Pay()
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
	var te *TransitionError
	require.ErrorAs(t, errs[loser], &te, "the retry saw the paid order")
	assert.Equal(t, TransitionError{From: StatusPaid, To: StatusPaid}, *te)
	assert.False(t, errors.Is(errs[loser], stream.ErrConflict), "the conflict was resolved, not returned")
	assert.Equal(t, []any{created, StatusChanged{From: StatusNew, To: StatusPaid}}, stored(t, store, "1001"))
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
		"rejected: esnats: aggregate already exists: order/1001",
		"rejected: invalid status transition: new -> shipped",
		`rejected: invalid status: "lost"`,
		"rejected: order not created",
		"v4 seq 4   order-status-changed {From:confirmed To:shipped}",
		"status shipped, version 4",
		"state: not created, version 0",
	} {
		assert.Contains(t, out.String(), want)
	}
}
