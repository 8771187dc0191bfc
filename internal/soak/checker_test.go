package soak_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/internal/soak"
	"github.com/esnats/esnats/stream"
)

// memoryEnv is a store in process with the workload's repositories.
func memoryEnv(t *testing.T) (*stream.MemoryStore, *aggregate.Repository[*soak.Counter]) {
	t.Helper()
	st, err := stream.NewMemoryStore(stream.Config{Name: "soak", Registry: soak.NewRegistry()})
	require.NoError(t, err)
	repo, err := aggregate.NewRepository(aggregate.Config[*soak.Counter]{Store: st, Type: soak.AggregateType, New: soak.NewCounter, CacheSize: -1})
	require.NoError(t, err)
	return st, repo
}

// TestCheckerPassesCleanWorkload runs the writers against the in-memory
// store: every invariant holds and the counts add up.
func TestCheckerPassesCleanWorkload(t *testing.T) {
	t.Parallel()
	st, repo := memoryEnv(t)
	ledger := soak.NewLedger("m")
	w := &soak.Writers{Store: st, Repository: repo, Ledger: ledger, Counters: soak.Counters{Hot: 2, Cold: 20, HotShare: 0.5}, Goroutines: 4}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); assert.NoError(t, w.Run(ctx)) }()
	require.Eventually(t, func() bool { acked, _, _, _ := ledger.Counts(); return acked >= 300 }, 20*time.Second, 5*time.Millisecond)
	stop()
	<-done

	r, err := (&soak.Checker{Store: st, Ledger: ledger, Repository: repo}).Check(context.Background())
	require.NoError(t, err)
	require.NoError(t, r.Err())
	acked, ackedEvents, failed, indeterminate := ledger.Counts()
	assert.EqualValues(t, acked, r.Acked)
	assert.EqualValues(t, ackedEvents, r.AckedEvents)
	assert.EqualValues(t, failed, r.Failed)
	assert.EqualValues(t, indeterminate, r.Indeterminate)
	assert.Zero(t, r.Indeterminate, "the memory store always answers")
	assert.Equal(t, r.AckedEvents, r.Events, "every stored event was acknowledged")
	assert.Positive(t, r.Failed, "hot counters make commands conflict")
	assert.Len(t, r.Keys, r.Events)
	var events uint64
	for _, a := range r.Replay {
		events += a.Events
	}
	assert.EqualValues(t, r.Events, events)
	t.Log(r)
}

// TestCheckerFindsViolations writes histories that break each invariant
// and checks that the checker reports each one.
func TestCheckerFindsViolations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	added := func(attempt string, part int, version uint64, before, amount int64) stream.EventData {
		return stream.EventData{ID: soak.EventKey(attempt, part), Data: soak.Added{Attempt: attempt, Part: part, Version: version, Before: before, Amount: amount}}
	}
	write := func(id string, keys ...string) soak.Write {
		return soak.Write{Aggregate: soak.Ref(id), Keys: keys, IDs: true}
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger)
		check func(t *testing.T, r *soak.Report)
	}{
		{"lost", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x1#0")}})
		}, func(t *testing.T, r *soak.Report) { assert.Equal(t, 1, r.Lost) }},
		{"failed but stored", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Failed, Err: "conflict", Writes: []soak.Write{write("c", "x1#0")}})
		}, func(t *testing.T, r *soak.Report) { assert.Equal(t, 1, r.FailedStored) }},
		{"duplicate", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			ev := added("x1", 0, 1, 0, 5)
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{ev})
			require.NoError(t, err)
			ev.ID = "other-id" // the same event again, under another id
			_, err = st.Append(ctx, soak.Ref("d"), stream.ExpectNone(), []stream.EventData{ev})
			require.NoError(t, err)
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x1#0")}})
		}, func(t *testing.T, r *soak.Report) {
			assert.Equal(t, 1, r.Duplicates)
			assert.Zero(t, r.Misplaced, "the first copy is where it was written")
		}},
		{"torn", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Indeterminate, Writes: []soak.Write{write("c", "x1#0", "x1#1")}})
		}, func(t *testing.T, r *soak.Report) {
			assert.Equal(t, 1, r.Torn)
			assert.Equal(t, 1, r.IndeterminateStored)
		}},
		{"unknown", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
		}, func(t *testing.T, r *soak.Report) { assert.Equal(t, 1, r.Unknown) }},
		{"stale", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			// Two writers decided on the empty counter; both got in.
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectAny(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
			_, err = st.Append(ctx, soak.Ref("c"), stream.ExpectAny(), []stream.EventData{added("x2", 0, 1, 0, 7)})
			require.NoError(t, err)
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x1#0")}})
			l.Add(soak.Attempt{ID: "x2", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x2#0")}})
		}, func(t *testing.T, r *soak.Report) { assert.Equal(t, 1, r.Stale) }},
		{"misplaced", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			res, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
			res.First.Sequence++ // the caller was told another place
			w := write("c", "x1#0")
			w.Result = &res
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{w}})
		}, func(t *testing.T, r *soak.Report) { assert.Equal(t, 1, r.Misplaced) }},
		{"version gap", func(t *testing.T, st *stream.MemoryStore, l *soak.Ledger) {
			_, err := st.Append(ctx, soak.Ref("c"), stream.ExpectNone(), []stream.EventData{added("x1", 0, 1, 0, 5)})
			require.NoError(t, err)
			// Another client writes version 3 straight after version 1.
			reg := soak.NewRegistry()
			name, schema, data, err := reg.Encode(soak.Added{Attempt: "x2", Version: 3, Before: 5, Amount: 1})
			require.NoError(t, err)
			subject, err := st.AggregateSubject(soak.Ref("c"))
			require.NoError(t, err)
			st.PutRaw(subject, nats.Header{
				stream.HeaderEventID:     {"x2#0"},
				stream.HeaderEventType:   {name},
				stream.HeaderVersion:     {"3"},
				stream.HeaderTime:        {time.Now().UTC().Format(time.RFC3339Nano)},
				stream.HeaderContentType: {reg.Codec().ContentType()},
				stream.HeaderSchema:      {strconv.Itoa(schema)},
			}, data)
			l.Add(soak.Attempt{ID: "x1", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x1#0")}})
			l.Add(soak.Attempt{ID: "x2", Kind: soak.KindAppend, Outcome: soak.Acked, Writes: []soak.Write{write("c", "x2#0")}})
		}, func(t *testing.T, r *soak.Report) {
			assert.Equal(t, 1, r.VersionGaps)
			assert.Equal(t, 1, r.Mismatches, "Load refuses the history")
			assert.Zero(t, r.Stale, "the writer expected version 3")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, _ := memoryEnv(t)
			l := soak.NewLedger("x")
			tc.setup(t, st, l)
			r, err := (&soak.Checker{Store: st, Ledger: l}).Check(ctx)
			require.NoError(t, err)
			tc.check(t, r)
			require.Error(t, r.Err())
			assert.NotEmpty(t, r.Problems)
			t.Log(r.Err())
		})
	}
}

// TestDiff checks the read model comparisons.
func TestDiff(t *testing.T) {
	t.Parallel()
	want := soak.Tally{"a": {Events: 2, Total: 5, Version: 2, LastSeq: 9}, "b": {Events: 1, Total: 1, Version: 1, LastSeq: 3}}
	assert.Empty(t, soak.Diff(want, soak.Tally{"a": want["a"], "b": want["b"]}))
	got := soak.Tally{"a": {Events: 3, Total: 6, Version: 3, LastSeq: 10}, "c": {Events: 1}}
	assert.Len(t, soak.Diff(want, got), 3)
	assert.Empty(t, soak.DiffKeys(map[uint64]string{1: "x#0"}, map[uint64]string{1: "x#0"}))
	assert.Len(t, soak.DiffKeys(map[uint64]string{1: "x#0", 2: "y#0"}, map[uint64]string{1: "z#0", 3: "y#0"}), 3)
}
