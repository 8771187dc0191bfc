package streamtest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

var (
	cart1 = stream.Aggregate{Type: "cart", ID: "c1"}
	cart2 = stream.Aggregate{Type: "cart", ID: "c2"}
	cart3 = stream.Aggregate{Type: "cart", ID: "c3"}
)

// testAppendAndLoadOne: one event round-trips with everything stored with it.
func testAppendAndLoadOne(e *env) {
	t := e.t
	tc := stream.TraceContext{
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		TraceState:  "vendor=abc",
	}
	ctx := stream.ContextWithTrace(e.ctx, tc)
	before := time.Now()
	res, err := e.st.Append(ctx, cart1, stream.ExpectNone(), []stream.EventData{{
		ID:       "event-1",
		Data:     ItemAdded{SKU: "apple", Quantity: 3},
		Metadata: map[string]string{"Tenant": "acme"},
	}}, stream.WithCorrelationID("corr-1"), stream.WithCausationID("cause-1"),
		stream.WithMetadata(map[string]string{"Source": "test", "Tenant": "overridden"}))
	after := time.Now()
	require.NoError(t, err)
	require.Equal(t, cart1, res.Aggregate)
	require.False(t, res.Duplicate)
	require.Equal(t, uint64(1), res.First.Version)
	require.NotZero(t, res.First.Sequence)
	require.Equal(t, res.First, res.Last)

	evs := e.load(cart1, 1)
	ev := evs[0]
	require.Equal(t, "event-1", ev.ID)
	require.Equal(t, TypeItemAdded, ev.Type)
	require.Equal(t, cart1, ev.Aggregate)
	require.Equal(t, uint64(1), ev.Version)
	require.Equal(t, res.First.Sequence, ev.Sequence)
	require.Equal(t, res.First, ev.Revision())
	require.Equal(t, e.subject(cart1), ev.Subject)
	require.False(t, ev.Time.Before(before.Truncate(time.Microsecond)), "event time %v before the append began at %v", ev.Time, before)
	require.False(t, ev.Time.After(after), "event time %v after the append ended at %v", ev.Time, after)
	require.Equal(t, 1, ev.SchemaVersion)
	require.Equal(t, e.reg.Codec().ContentType(), ev.ContentType)
	require.Equal(t, "corr-1", ev.CorrelationID)
	require.Equal(t, "cause-1", ev.CausationID)
	require.Equal(t, map[string]string{"Tenant": "acme", "Source": "test"}, ev.Metadata)
	require.Equal(t, tc.TraceParent, ev.TraceParent)
	require.Equal(t, tc.TraceState, ev.TraceState)
	require.Equal(t, ItemAdded{SKU: "apple", Quantity: 3}, ev.Data)

	require.Equal(t, res.Last, e.last(cart1))
	all := e.readAll(1)
	require.Equal(t, ev.ID, all[0].ID)
	require.Equal(t, ev.Sequence, all[0].Sequence)
}

// testAppendMetadata: per-event ids override the append's; empty ones are
// generated; no trace, no metadata.
func testAppendMetadata(e *env) {
	t := e.t
	res, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), []stream.EventData{
		{Data: ItemAdded{SKU: "a"}, CorrelationID: "own-corr", CausationID: "own-cause"},
		{Data: &ItemAdded{SKU: "b"}}, // a pointer to a registered type works too
		{Data: ItemRemoved{SKU: "a"}},
	}, stream.WithCorrelationID("corr"))
	require.NoError(t, err)
	require.Equal(t, stream.Revision{Version: 3, Sequence: res.First.Sequence + 2}, res.Last)

	evs := e.load(cart1, 3)
	require.Equal(t, "own-corr", evs[0].CorrelationID)
	require.Equal(t, "own-cause", evs[0].CausationID)
	require.Equal(t, "corr", evs[1].CorrelationID)
	require.Empty(t, evs[1].CausationID)
	require.Equal(t, ItemAdded{SKU: "b"}, evs[1].Data)
	require.Equal(t, TypeItemRemoved, evs[2].Type)
	require.Equal(t, ItemRemoved{SKU: "a"}, evs[2].Data)
	require.Equal(t, e.subject(cart1), evs[2].Subject)
	ids := map[string]bool{}
	for _, ev := range evs {
		require.NotEmpty(t, ev.ID, "a generated event id")
		ids[ev.ID] = true
		require.Nil(t, ev.Metadata)
		require.Empty(t, ev.TraceParent)
		require.Empty(t, ev.TraceState)
	}
	require.Len(t, ids, 3, "generated event ids are distinct")
}

// testAppendSeveralAtomically: one append of n events gets versions 1..n at
// consecutive sequences.
func testAppendSeveralAtomically(e *env) {
	t := e.t
	res := e.append(cart1, stream.ExpectNone(), added("a", 5)...)
	require.Equal(t, uint64(1), res.First.Version)
	require.Equal(t, uint64(5), res.Last.Version)
	require.Equal(t, res.First.Sequence+4, res.Last.Sequence)

	res2 := e.append(cart1, stream.ExpectRevision(res.Last), added("b", 3)...)
	require.Equal(t, stream.Revision{Version: 6, Sequence: res.Last.Sequence + 1}, res2.First)
	require.Equal(t, stream.Revision{Version: 8, Sequence: res.Last.Sequence + 3}, res2.Last)

	evs := e.load(cart1, 8)
	require.Equal(t, span(1, 8), versions(evs))
	require.Equal(t, span(res.First.Sequence, res.First.Sequence+7), sequences(evs))
	for i, ev := range evs[:5] {
		require.Equal(t, ItemAdded{SKU: fmt.Sprintf("a-%d", i+1), Quantity: i + 1}, ev.Data)
	}
	require.Equal(t, res2.Last, e.last(cart1))
	e.readAll(8)
}

// testExpectRevision: the right revision appends, a stale one conflicts and
// writes nothing.
func testExpectRevision(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectNone(), added("a", 2)...)
	e.append(cart2, stream.ExpectNone(), added("other", 1)...) // moves the stream, not cart1
	r2 := e.append(cart1, stream.ExpectRevision(r1.Last), added("b", 1)...)
	require.Equal(t, uint64(3), r2.Last.Version)

	_, err := e.st.Append(e.ctx, cart1, stream.ExpectRevision(r1.Last), added("stale", 1))
	requireConflict(t, err, cart1, r1.Last, r2.Last)

	// ExpectRevision of the zero revision is ExpectNone.
	_, err = e.st.Append(e.ctx, cart1, stream.ExpectRevision(stream.Revision{}), added("zero", 1))
	requireConflict(t, err, cart1, stream.Revision{}, r2.Last)

	require.Equal(t, r2.Last, e.last(cart1))
	evs := e.load(cart1, 3)
	require.Equal(t, span(1, 3), versions(evs))
	e.readAll(4)
}

// testExpectRevisionAhead: an expected revision the aggregate never reached
// (a revision of another aggregate, a made-up one) is a conflict too.
func testExpectRevisionAhead(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectNone(), added("a", 1)...)
	r2 := e.append(cart2, stream.ExpectNone(), added("b", 2)...)

	// cart2's revision is ahead of cart1's last event.
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectRevision(r2.Last), added("x", 1))
	requireConflict(t, err, cart1, r2.Last, r1.Last)

	ahead := stream.Revision{Version: 7, Sequence: r2.Last.Sequence + 100}
	_, err = e.st.Append(e.ctx, cart1, stream.ExpectRevision(ahead), added("y", 1))
	requireConflict(t, err, cart1, ahead, r1.Last)

	// An aggregate with no events at all.
	_, err = e.st.Append(e.ctx, cart3, stream.ExpectRevision(r1.Last), added("z", 1))
	requireConflict(t, err, cart3, r1.Last, stream.Revision{})

	require.Equal(t, r1.Last, e.last(cart1))
	require.Equal(t, stream.Revision{}, e.last(cart3))
	e.readAll(3)
}

// testExpectNone: ExpectNone appends to a new aggregate only.
func testExpectNone(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectNone(), added("a", 1)...)
	require.Equal(t, uint64(1), r1.First.Version)

	_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), added("b", 2))
	requireConflict(t, err, cart1, stream.Revision{}, r1.Last)
	require.Equal(t, r1.Last, e.last(cart1))

	// Another aggregate is unaffected, even one whose id shares a prefix.
	other := stream.Aggregate{Type: "cart", ID: "c"}
	e.append(other, stream.ExpectNone(), added("c", 1)...)
	e.load(cart1, 1)
	e.readAll(2)
}

// testExpectAny: ExpectAny appends after whatever is there.
func testExpectAny(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectAny(), added("a", 2)...)
	require.Equal(t, uint64(1), r1.First.Version)
	require.Equal(t, uint64(2), r1.Last.Version)
	e.append(cart2, stream.ExpectAny(), added("other", 1)...)
	r2 := e.append(cart1, stream.ExpectAny(), added("b", 3)...)
	require.Equal(t, uint64(3), r2.First.Version)
	require.Equal(t, uint64(5), r2.Last.Version)
	require.Equal(t, r2.First.Sequence+2, r2.Last.Sequence)
	require.Greater(t, r2.First.Sequence, r1.Last.Sequence)
	require.Equal(t, r2.Last, e.last(cart1))
	evs := e.load(cart1, 5)
	require.Equal(t, span(1, 5), versions(evs))
}

// testConcurrentAppends: Writers goroutines append AppendsPerWriter events
// each to one aggregate with ExpectRevision(LastRevision), retrying on
// conflicts: every event is stored exactly once, versions without gaps.
func testConcurrentAppends(e *env) {
	t := e.t
	agg := stream.Aggregate{Type: "counter", ID: "hot"}
	writers, each := e.h.Writers, e.h.AppendsPerWriter
	var conflicts, transient atomic.Int64
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for n := range each {
				for {
					rev, err := e.st.LastRevision(e.ctx, agg)
					if err != nil && e.h.Transient != nil && e.h.Transient(err) {
						transient.Add(1)
						continue
					}
					if err != nil {
						errs <- fmt.Errorf("writer %d: LastRevision: %w", w, err)
						return
					}
					// Let the other writers in between the read and the
					// write: an in-process store is otherwise too fast to
					// see contention.
					runtime.Gosched()
					res, err := e.st.Append(e.ctx, agg, stream.ExpectRevision(rev), []stream.EventData{{Data: Counted{Writer: w, N: n}}})
					if errors.Is(err, stream.ErrConflict) {
						conflicts.Add(1)
						continue
					}
					if err != nil && e.h.Transient != nil && e.h.Transient(err) {
						transient.Add(1)
						continue
					}
					if err != nil {
						errs <- fmt.Errorf("writer %d, event %d: Append at %s: %w", w, n, rev, err)
						return
					}
					if res.First.Version != rev.Version+1 {
						errs <- fmt.Errorf("writer %d: appended at %s, got version %d", w, rev, res.First.Version)
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	total := writers * each
	t.Logf("%d writers x %d appends: %d conflicts and %d transient errors retried", writers, each, conflicts.Load(), transient.Load())
	require.Equal(t, uint64(total), e.last(agg).Version)
	evs := e.load(agg, total)
	require.Equal(t, span(1, uint64(total)), versions(evs))
	seen := make(map[Counted]bool, total)
	ids := make(map[string]bool, total)
	for i, ev := range evs {
		if i > 0 {
			require.Greater(t, ev.Sequence, evs[i-1].Sequence)
		}
		c := ev.Data.(Counted)
		require.False(t, seen[c], "event %+v stored twice", c)
		seen[c] = true
		require.False(t, ids[ev.ID], "event id %s stored twice", ev.ID)
		ids[ev.ID] = true
	}
	require.Len(t, seen, total)
}

// testBatchAllOrNothing: a multi-aggregate append with one stale
// expectation writes nothing; with all expectations right, everything, at
// consecutive sequences in request order.
func testBatchAllOrNothing(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectNone(), added("a", 1)...)
	r2 := e.append(cart2, stream.ExpectNone(), added("b", 1)...)

	_, err := e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectRevision(r1.Last), Events: added("a2", 2)},
		{Aggregate: cart2, Expect: stream.ExpectNone(), Events: added("b2", 1)}, // stale
		{Aggregate: cart3, Expect: stream.ExpectNone(), Events: added("c2", 1)},
	})
	requireConflict(t, err, cart2, stream.Revision{}, r2.Last)
	require.Equal(t, r1.Last, e.last(cart1))
	require.Equal(t, r2.Last, e.last(cart2))
	require.Equal(t, stream.Revision{}, e.last(cart3))
	e.readAll(2)

	// The stale expectation on the last aggregate.
	_, err = e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart3, Expect: stream.ExpectNone(), Events: added("c2", 1)},
		{Aggregate: cart1, Expect: stream.ExpectNone(), Events: added("a2", 2)}, // stale
	})
	requireConflict(t, err, cart1, stream.Revision{}, r1.Last)
	require.Equal(t, stream.Revision{}, e.last(cart3))
	e.readAll(2)

	res, err := e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectRevision(r1.Last), Events: added("a3", 2)},
		{Aggregate: cart2, Expect: stream.ExpectRevision(r2.Last), Events: added("b3", 1)},
		{Aggregate: cart3, Expect: stream.ExpectNone(), Events: added("c3", 3)},
	})
	require.NoError(t, err)
	require.Len(t, res, 3)
	s := res[0].First.Sequence
	require.Greater(t, s, r2.Last.Sequence)
	require.Equal(t, stream.AppendResult{Aggregate: cart1,
		First: stream.Revision{Version: 2, Sequence: s}, Last: stream.Revision{Version: 3, Sequence: s + 1}}, res[0])
	require.Equal(t, stream.AppendResult{Aggregate: cart2,
		First: stream.Revision{Version: 2, Sequence: s + 2}, Last: stream.Revision{Version: 2, Sequence: s + 2}}, res[1])
	require.Equal(t, stream.AppendResult{Aggregate: cart3,
		First: stream.Revision{Version: 1, Sequence: s + 3}, Last: stream.Revision{Version: 3, Sequence: s + 5}}, res[2])
	for _, r := range res {
		require.Equal(t, r.Last, e.last(r.Aggregate))
	}
	all := e.readAll(8)
	got := make([]string, 0, 6)
	for _, ev := range all[2:] {
		got = append(got, fmt.Sprintf("%s v%d", ev.Aggregate, ev.Version))
	}
	require.Equal(t, []string{"cart/c1 v2", "cart/c1 v3", "cart/c2 v2", "cart/c3 v1", "cart/c3 v2", "cart/c3 v3"}, got)
	require.Equal(t, span(s, s+5), sequences(all[2:]))
}

// testMultiEventStaleWritesNothing: a multi-event append with a stale
// expectation writes none of its events.
func testMultiEventStaleWritesNothing(e *env) {
	t := e.t
	r1 := e.append(cart1, stream.ExpectNone(), added("a", 1)...)
	r2 := e.append(cart1, stream.ExpectRevision(r1.Last), added("b", 1)...)
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectRevision(r1.Last), added("stale", 3))
	requireConflict(t, err, cart1, r1.Last, r2.Last)
	require.Equal(t, r2.Last, e.last(cart1))
	evs := e.load(cart1, 2)
	require.Equal(t, span(1, 2), versions(evs))
	e.readAll(2)
}

// testRetryIsIdempotent: an append repeated with the same event ids and the
// same expectation (a retry after a lost answer) is stored once, and the
// repeat reports the original positions as a duplicate.
func testRetryIsIdempotent(e *env) {
	retry := func(e *env, reqs func() []stream.AppendRequest, wantTotal int) {
		t := e.t
		first, err := e.st.AppendBatch(e.ctx, reqs())
		require.NoError(t, err)
		for _, r := range first {
			require.False(t, r.Duplicate)
		}
		again, err := e.st.AppendBatch(e.ctx, reqs())
		require.NoError(t, err, "a retry of an append that landed must not fail")
		require.Len(t, again, len(first))
		for i := range first {
			want := first[i]
			want.Duplicate = true
			require.Equal(t, want, again[i], "retry result for %s", first[i].Aggregate)
			require.Equal(t, first[i].Last, e.last(first[i].Aggregate))
		}
		e.readAll(wantTotal)
	}
	e.run("one event", func(e *env) {
		retry(e, func() []stream.AppendRequest {
			return []stream.AppendRequest{{Aggregate: cart1, Expect: stream.ExpectNone(), Events: withIDs("one", added("a", 1))}}
		}, 1)
		e.load(cart1, 1)
	})
	e.run("three events", func(e *env) {
		r := e.append(cart1, stream.ExpectNone(), added("before", 1)...)
		retry(e, func() []stream.AppendRequest {
			return []stream.AppendRequest{{Aggregate: cart1, Expect: stream.ExpectRevision(r.Last), Events: withIDs("three", added("a", 3))}}
		}, 4)
		require.Equal(e.t, span(1, 4), versions(e.load(cart1, 4)))
	})
	e.run("batch of aggregates", func(e *env) {
		retry(e, func() []stream.AppendRequest {
			return []stream.AppendRequest{
				{Aggregate: cart1, Expect: stream.ExpectNone(), Events: withIDs("b1", added("a", 2))},
				{Aggregate: cart2, Expect: stream.ExpectNone(), Events: withIDs("b2", added("b", 1))},
			}
		}, 3)
	})
	e.run("after later writes", func(e *env) {
		t := e.t
		evs := func() []stream.EventData { return withIDs("late", added("a", 2)) }
		r1, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), evs())
		require.NoError(t, err)
		r2 := e.append(cart1, stream.ExpectRevision(r1.Last), added("other", 1)...)
		again, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), evs())
		require.NoError(t, err, "a retry of an append that landed must not fail after later writes")
		require.True(t, again.Duplicate)
		require.Equal(t, r1.First, again.First)
		require.Equal(t, r1.Last, again.Last)
		require.Equal(t, r2.Last, e.last(cart1))
		e.readAll(3)
	})
	e.run("other events conflict", func(e *env) {
		// Another writer's events after the expected revision are a
		// conflict, not a duplicate.
		t := e.t
		r1 := e.append(cart1, stream.ExpectNone(), withIDs("mine", added("a", 1))...)
		_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), withIDs("theirs", added("b", 1)))
		requireConflict(t, err, cart1, stream.Revision{}, r1.Last)
		e.readAll(1)
	})
}

// testRetryWithExpectAny: a retried one-event ExpectAny append with the
// same event id is stored once, and the retry reports the original
// positions (not versions after the re-read revision).
func testRetryWithExpectAny(e *env) {
	t := e.t
	e.append(cart1, stream.ExpectNone(), added("before", 1)...)
	r1, err := e.st.Append(e.ctx, cart1, stream.ExpectAny(), withIDs("any1", added("a", 1)))
	require.NoError(t, err)
	again, err := e.st.Append(e.ctx, cart1, stream.ExpectAny(), withIDs("any1", added("a", 1)))
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	require.Equal(t, r1.First, again.First)
	require.Equal(t, r1.Last, again.Last)
	require.Equal(t, r1.Last, e.last(cart1))
	e.readAll(2)
}

// testRetryBatchWithExpectAny: the same for a three-event append and for a
// batch of two aggregates.
func testRetryBatchWithExpectAny(e *env) {
	retry := func(e *env, reqs func() []stream.AppendRequest, total int) {
		t := e.t
		first, err := e.st.AppendBatch(e.ctx, reqs())
		require.NoError(t, err)
		again, err := e.st.AppendBatch(e.ctx, reqs(), stream.WithMaxAttempts(2))
		require.NoError(t, err, "a retry of an append that landed must not fail")
		require.Len(t, again, len(first))
		for i := range first {
			want := first[i]
			want.Duplicate = true
			require.Equal(t, want, again[i], "retry result for %s", first[i].Aggregate)
			require.Equal(t, first[i].Last, e.last(first[i].Aggregate))
		}
		e.readAll(total)
	}
	e.run("three events", func(e *env) {
		e.append(cart1, stream.ExpectNone(), added("before", 1)...)
		retry(e, func() []stream.AppendRequest {
			return []stream.AppendRequest{{Aggregate: cart1, Expect: stream.ExpectAny(), Events: withIDs("any3", added("a", 3))}}
		}, 4)
	})
	e.run("batch of aggregates", func(e *env) {
		retry(e, func() []stream.AppendRequest {
			return []stream.AppendRequest{
				{Aggregate: cart1, Expect: stream.ExpectAny(), Events: withIDs("b1", added("a", 1))},
				{Aggregate: cart2, Expect: stream.ExpectAny(), Events: withIDs("b2", added("b", 2))},
			}
		}, 3)
	})
}

// testTooManyEvents: more than MaxBatch events in one append are refused
// before anything is written.
func testTooManyEvents(e *env) {
	t := e.t
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), added("a", stream.MaxBatch+1))
	require.ErrorIs(t, err, stream.ErrTooManyEvents)
	_, err = e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectNone(), Events: added("a", stream.MaxBatch/2)},
		{Aggregate: cart2, Expect: stream.ExpectNone(), Events: added("b", stream.MaxBatch/2+1)},
	})
	require.ErrorIs(t, err, stream.ErrTooManyEvents)
	require.Equal(t, stream.Revision{}, e.last(cart1))
	require.Equal(t, stream.Revision{}, e.last(cart2))
	e.readAll(0)
}

// testTooLarge: an event larger than MaxEventSize (default 1 MiB) is refused
// with ErrTooLarge naming its subject; nothing of its append is written.
func testTooLarge(e *env) {
	t := e.t
	big := ItemAdded{SKU: strings.Repeat("x", stream.DefaultMaxEventSize)}
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), []stream.EventData{{Data: big}})
	require.ErrorIs(t, err, stream.ErrTooLarge)
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, e.subject(cart1), se.Subject)

	_, err = e.st.Append(e.ctx, cart1, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "small"}}, {Data: big}})
	require.ErrorIs(t, err, stream.ErrTooLarge)
	require.Equal(t, stream.Revision{}, e.last(cart1))
	e.readAll(0)

	// Just below the limit is fine.
	e.append(cart1, stream.ExpectNone(), stream.EventData{Data: ItemAdded{SKU: strings.Repeat("x", stream.DefaultMaxEventSize-1024)}})
	e.load(cart1, 1)
}

// unregistered is a type the suite never registers.
type unregistered struct{ X int }

// testUnknownEventType: an event of an unregistered type is refused.
func testUnknownEventType(e *env) {
	t := e.t
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "ok"}}, {Data: unregistered{X: 1}}})
	require.ErrorIs(t, err, stream.ErrUnknownEventType)
	_, err = e.st.Append(e.ctx, cart1, stream.ExpectAny(), []stream.EventData{{Data: nil}})
	require.ErrorIs(t, err, stream.ErrUnknownEventType)
	require.Equal(t, stream.Revision{}, e.last(cart1))
	e.readAll(0)
}

// testInvalidIDs: invalid aggregate ids, aggregate types, event ids and
// metadata keys are refused before any I/O (even with a cancelled context).
func testInvalidIDs(e *env) {
	t := e.t
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	for _, id := range []string{"", "\xff\xfe", "a\xc3", strings.Repeat("x", stream.MaxIDLength+1)} {
		agg := stream.Aggregate{Type: "cart", ID: id}
		for _, ctx := range []context.Context{e.ctx, cancelled} {
			_, err := e.st.Append(ctx, agg, stream.ExpectNone(), added("a", 1))
			assert.ErrorIs(t, err, stream.ErrInvalidID, "Append id %.20q", id)
			_, err = e.st.Append(ctx, agg, stream.ExpectAny(), added("a", 1))
			assert.ErrorIs(t, err, stream.ErrInvalidID, "Append ExpectAny id %.20q", id)
			_, err = e.st.LastRevision(ctx, agg)
			assert.ErrorIs(t, err, stream.ErrInvalidID, "LastRevision id %.20q", id)
			_, err = collect(e.st.Load(ctx, agg))
			assert.ErrorIs(t, err, stream.ErrInvalidID, "Load id %.20q", id)
		}
	}
	for _, typ := range []string{"", "a.b", "a b", "*", ">", "ü", strings.Repeat("t", 129)} {
		agg := stream.Aggregate{Type: typ, ID: "x"}
		_, err := e.st.Append(cancelled, agg, stream.ExpectNone(), added("a", 1))
		assert.ErrorIs(t, err, stream.ErrInvalidName, "Append type %q", typ)
		_, err = e.st.LastRevision(cancelled, agg)
		assert.ErrorIs(t, err, stream.ErrInvalidName, "LastRevision type %q", typ)
		_, err = collect(e.st.Load(cancelled, agg))
		assert.ErrorIs(t, err, stream.ErrInvalidName, "Load type %q", typ)
		if typ != "" {
			_, err = collect(e.st.ReadAll(cancelled, stream.WithAggregateTypes(typ)))
			assert.ErrorIs(t, err, stream.ErrInvalidName, "ReadAll aggregate type %q", typ)
			_, err = collect(e.st.ReadAll(cancelled, stream.WithEventTypes(typ)))
			assert.ErrorIs(t, err, stream.ErrInvalidName, "ReadAll event type %q", typ)
		}
	}
	for _, id := range []string{"has space", "tab\t", "ümlaut", strings.Repeat("e", stream.MaxEventIDLength+1)} {
		_, err := e.st.Append(cancelled, cart1, stream.ExpectNone(), []stream.EventData{{ID: id, Data: ItemAdded{}}})
		assert.ErrorIs(t, err, stream.ErrInvalidEventID, "event id %.20q", id)
		assert.NotErrorIs(t, err, stream.ErrInvalidID, "an event id is not an aggregate id")
		assert.Contains(t, err.Error(), "invalid event id", "event id %.20q", id)
		// Also with ExpectAny, which reads only after checking the events.
		_, err = e.st.Append(cancelled, cart1, stream.ExpectAny(), []stream.EventData{{ID: id, Data: ItemAdded{}}})
		assert.ErrorIs(t, err, stream.ErrInvalidEventID, "ExpectAny, event id %.20q", id)
	}
	_, err := e.st.Append(cancelled, cart1, stream.ExpectNone(), []stream.EventData{{ID: "twice", Data: ItemAdded{}}, {ID: "twice", Data: ItemAdded{}}})
	assert.ErrorIs(t, err, stream.ErrInvalidEventID, "an event id twice in one append")
	// Bad events are refused before the read ExpectAny makes (here it would
	// fail: the context is cancelled).
	_, err = e.st.Append(cancelled, cart1, stream.ExpectAny(), []stream.EventData{{Data: struct{ Unknown int }{}}})
	assert.ErrorIs(t, err, stream.ErrUnknownEventType, "ExpectAny with an unregistered type")
	_, err = e.st.AppendBatch(cancelled, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectAny(), Events: added("a", 1)},
		{Aggregate: cart2, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: struct{ Unknown int }{}}}},
	})
	assert.ErrorIs(t, err, stream.ErrUnknownEventType, "ExpectAny, an unregistered type in the second aggregate")
	_, err = e.st.Append(e.ctx, cart1, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{}, Metadata: map[string]string{"bad key": "v"}}})
	assert.ErrorIs(t, err, stream.ErrInvalidName, "metadata key")
	_, err = e.st.Append(e.ctx, cart1, stream.ExpectNone(), added("a", 1), stream.WithMetadata(map[string]string{"bad.key": "v"}))
	assert.ErrorIs(t, err, stream.ErrInvalidName, "metadata key of the append")
	// A valid id of exactly MaxIDLength bytes is fine.
	long := stream.Aggregate{Type: "cart", ID: strings.Repeat("é", stream.MaxIDLength/2)}
	e.append(long, stream.ExpectNone(), added("a", 1)...)
	require.Equal(t, long, e.load(long, 1)[0].Aggregate)
	e.readAll(1)
}

// testInvalidRequests: empty appends and an aggregate twice in one batch are
// refused and write nothing.
func testInvalidRequests(e *env) {
	t := e.t
	_, err := e.st.Append(e.ctx, cart1, stream.ExpectNone(), nil)
	require.Error(t, err, "no events")
	_, err = e.st.AppendBatch(e.ctx, nil)
	require.Error(t, err, "no requests")
	_, err = e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectNone(), Events: added("a", 1)},
		{Aggregate: cart2, Expect: stream.ExpectNone(), Events: nil},
	})
	require.Error(t, err, "no events for one aggregate")
	_, err = e.st.AppendBatch(e.ctx, []stream.AppendRequest{
		{Aggregate: cart1, Expect: stream.ExpectNone(), Events: added("a", 1)},
		{Aggregate: cart2, Expect: stream.ExpectNone(), Events: added("b", 1)},
		{Aggregate: cart1, Expect: stream.ExpectNone(), Events: added("c", 1)},
	})
	require.Error(t, err, "an aggregate twice in one batch")
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, stream.Revision{}, e.last(cart1))
	require.Equal(t, stream.Revision{}, e.last(cart2))
	e.readAll(0)
}
