package stream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// TestAppendAsync keeps appends to 300 aggregates in flight from one
// goroutine, 4 rounds, each aggregate's next append started from its
// previous result, in every group-commit mode: every event is stored once,
// at the version and sequence its result reports.
func TestAppendAsync(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	for _, gc := range []stream.GroupCommit{stream.GroupCommitBatch, stream.GroupCommitPipeline, stream.GroupCommitOff} {
		t.Run(gc.String(), func(t *testing.T) {
			st := newJSStore(t, js, func(c *stream.Config) { c.Name = "async_" + gc.String(); c.GroupCommit = gc; c.MaxPendingAppends = 64 })
			const aggs, rounds = 300, 4
			revs := make([]stream.Revision, aggs)
			for round := range rounds {
				pend := make([]*stream.PendingAppend, aggs)
				for i := range aggs {
					agg := stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%03d", i)}
					pend[i] = st.AppendAsync(ctx, agg, stream.ExpectRevision(revs[i]), []stream.EventData{{Data: itemAdded{SKU: fmt.Sprint(round), Qty: i}}})
				}
				for i, p := range pend {
					<-p.Done()
					res, err := p.Result()
					require.NoError(t, err)
					assert.Equal(t, uint64(round+1), res.Last.Version)
					revs[i] = res.Last
				}
			}
			for i := range aggs {
				evs := loadAll(t, st, stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%03d", i)})
				require.Len(t, evs, rounds)
				for r, ev := range evs {
					assert.Equal(t, itemAdded{SKU: fmt.Sprint(r), Qty: i}, ev.Data)
				}
				assert.Equal(t, revs[i].Sequence, evs[rounds-1].Sequence)
			}
		})
	}
}

// Two appends to one aggregate in flight together race: with the same
// expectation exactly one lands, the other is a conflict.
// In pipeline mode the second one's answer is the server's refusal, which
// the synchronous path turns into a *ConflictError with the actual revision.
func TestAppendAsyncSameAggregateRace(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	for _, gc := range []stream.GroupCommit{stream.GroupCommitBatch, stream.GroupCommitPipeline} {
		t.Run(gc.String(), func(t *testing.T) {
			st := newJSStore(t, js, func(c *stream.Config) { c.Name = "race_" + gc.String(); c.GroupCommit = gc })
			agg := stream.Aggregate{Type: "cart", ID: "race"}
			a := st.AppendAsync(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
			b := st.AppendAsync(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "b", Qty: 1}}})
			resA, errA := a.Result()
			resB, errB := b.Result()
			require.True(t, (errA == nil) != (errB == nil), "exactly one lands: %v / %v", errA, errB)
			var ce *stream.ConflictError
			require.ErrorAs(t, errors.Join(errA, errB), &ce)
			landed := resA
			if errA != nil {
				landed = resB
			}
			assert.True(t, ce.ActualKnown)
			assert.Equal(t, landed.Last, ce.Actual)
			assert.Len(t, loadAll(t, st, agg), 1)
		})
	}
}

// An event sent again with the same id (a caller's retry) is stored once,
// and the retry reports where it is, as Append does.
func TestAppendAsyncDuplicate(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js, func(c *stream.Config) { c.GroupCommit = stream.GroupCommitPipeline })
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "dup"}
	ev := []stream.EventData{{ID: "ev-1", Data: itemAdded{SKU: "a", Qty: 1}}}
	first, err := st.AppendAsync(ctx, agg, stream.ExpectNone(), ev).Result()
	require.NoError(t, err)
	again, err := st.AppendAsync(ctx, agg, stream.ExpectNone(), ev).Result()
	require.NoError(t, err)
	assert.True(t, again.Duplicate)
	assert.Equal(t, first.Last, again.Last)
	assert.Len(t, loadAll(t, st, agg), 1)
}

// Bad input ends the append at once, with Append's error and no I/O: the
// store's connection is closed.
func TestAppendAsyncBadInput(t *testing.T) {
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js)
	nc.Close()
	ctx := context.Background()
	p := st.AppendAsync(ctx, stream.Aggregate{Type: "cart", ID: ""}, stream.ExpectAny(), []stream.EventData{{Data: itemAdded{}}})
	select {
	case <-p.Done():
	case <-time.After(time.Second):
		t.Fatal("not ended at once")
	}
	_, err := p.Result()
	assert.ErrorIs(t, err, stream.ErrInvalidID)
	p = st.AppendAsync(ctx, stream.Aggregate{Type: "cart", ID: "x"}, stream.ExpectAny(), []stream.EventData{{Data: struct{ Unregistered int }{}}})
	_, err = p.Wait(ctx)
	assert.ErrorIs(t, err, stream.ErrUnknownEventType)
}

// The in-memory store has the same call.
func TestMemoryAppendAsync(t *testing.T) {
	st, err := stream.NewMemoryStore(stream.Config{Name: "mem", Registry: testRegistry(t)})
	require.NoError(t, err)
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "m"}
	res, err := st.AppendAsync(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}}).Result()
	require.NoError(t, err)
	res, err = st.AppendAsync(ctx, agg, stream.ExpectRevision(res.Last), []stream.EventData{{Data: itemAdded{SKU: "b", Qty: 2}}}).Result()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), res.Last.Version)
	_, err = st.AppendAsync(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{}}}).Result()
	assert.ErrorIs(t, err, stream.ErrConflict)
}
