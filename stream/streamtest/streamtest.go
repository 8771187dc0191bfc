// Package streamtest is the conformance suite of stream.EventStore: the
// behaviours every event store must show, run against the in-memory store,
// the JetStream store on one embedded server and on a 3-node cluster, so
// that the fake cannot drift from the real thing. Another implementation of
// stream.EventStore can run it too:
//
//	func TestConformance(t *testing.T) {
//		streamtest.Run(t, streamtest.Harness{
//			New: func(t *testing.T, reg *stream.Registry) streamtest.Fixture {
//				st, err := stream.NewMemoryStore(stream.Config{Name: "conf", Registry: reg})
//				if err != nil {
//					t.Fatal(err)
//				}
//				return streamtest.Fixture{Store: st, Subject: "conf", PutRaw: st.PutRaw}
//			},
//		})
//	}
//
// Every behaviour is a subtest of Run (named as in Behaviours), with a store
// of its own; subtests run in parallel.
package streamtest

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// Harness tells Run how to get stores to test.
type Harness struct {
	// New returns a fresh, empty store whose registry is reg, and how to
	// write raw messages into it. It is called once per subtest, from the
	// subtest's goroutine, and concurrently for parallel subtests. It should
	// fail t (t.Fatal) when it cannot make a store and release what it made
	// in t.Cleanup. Required.
	New func(t *testing.T, reg *stream.Registry) Fixture

	// Replicated says that the store reads from replicas that may lag behind
	// the writes it acknowledged (a JetStream store with Replicas 3: direct
	// gets are served by any current replica). Reads that follow a write
	// are then retried for up to 20 seconds until they see it. LastRevision
	// and appends are always checked without retries: they must be
	// consistent with the writes at once.
	Replicated bool

	// Writers and AppendsPerWriter size the ConcurrentAppends behaviour:
	// Writers goroutines each append AppendsPerWriter events, one at a
	// time, to the same aggregate, retrying on conflicts. Defaults 8 and
	// 200. ConcurrentAggregates runs 2 x Writers goroutines, each running
	// AppendsPerWriter/5 commands (at least 4) of 1 to 4 events on
	// aggregates picked at random among 48.
	Writers, AppendsPerWriter int

	// Transient, if set, reports errors that the writers of
	// ConcurrentAppends and ConcurrentAggregates retry like a conflict: a replicated store may be
	// briefly unavailable under load (a stream leader moving). Every other
	// error fails the behaviour; the retried ones are counted in the log.
	// Whatever is retried, the events must be stored exactly once.
	Transient func(error) bool

	// MaxParallel bounds how many behaviours run at once (each makes its
	// own store); 0 = no bound. A 3-node cluster on 2 cores under -race
	// needs one.
	MaxParallel int
	// Skip lists behaviours (subtest names, see Behaviours) to skip, each
	// with the reason reported by t.Skip: for a known bug of the store
	// under test, with a reference to its issue.
	Skip map[string]string
}

// Fixture is one store under test.
type Fixture struct {
	// Store is the store, empty, using the registry given to Harness.New.
	Store stream.EventStore
	// Subject is the store's subject prefix (stream.Config.Subject): its
	// events are stored on <Subject>.<aggregateType>.<EncodeID(id)>.
	Subject string
	// PutRaw stores a message on subject as another client writing
	// straight into the store's stream would (nats publish), bypassing the
	// store, and returns its sequence. Used for bad input and for events
	// written by other programs. It fails the test if the message is not
	// stored. Required.
	PutRaw func(subject string, header nats.Header, data []byte) uint64
}

// Behaviours returns the names of Run's subtests, in the order Run runs
// them.
func Behaviours() []string {
	names := make([]string, len(behaviours))
	for i, b := range behaviours {
		names[i] = b.name
	}
	return names
}

type behaviour struct {
	name string
	fn   func(e *env)
	reg  func() *stream.Registry // nil = newRegistry
}

// behaviours is filled in by the files of the suite.
var behaviours = []behaviour{
	{"AppendAndLoadOne", testAppendAndLoadOne, nil},
	{"AppendMetadata", testAppendMetadata, nil},
	{"AppendSeveralAtomically", testAppendSeveralAtomically, nil},
	{"ExpectRevision", testExpectRevision, nil},
	{"ExpectRevisionAhead", testExpectRevisionAhead, nil},
	{"ExpectNone", testExpectNone, nil},
	{"ExpectAny", testExpectAny, nil},
	{"ConcurrentAppends", testConcurrentAppends, nil},
	{"ConcurrentAggregates", testConcurrentAggregates, nil},
	{"BatchAllOrNothing", testBatchAllOrNothing, nil},
	{"MultiEventStaleWritesNothing", testMultiEventStaleWritesNothing, nil},
	{"RetryIsIdempotent", testRetryIsIdempotent, nil},
	{"RetryWithExpectAny", testRetryWithExpectAny, nil},
	{"RetryBatchWithExpectAny", testRetryBatchWithExpectAny, nil},
	{"TooManyEvents", testTooManyEvents, nil},
	{"TooLarge", testTooLarge, nil},
	{"UnknownEventType", testUnknownEventType, nil},
	{"InvalidIDs", testInvalidIDs, nil},
	{"InvalidRequests", testInvalidRequests, nil},
	{"IDsRoundTrip", testIDsRoundTrip, nil},
	{"LoadOptions", testLoadOptions, nil},
	{"LoadFromVersionWithLimit", testLoadFromVersionWithLimit, nil},
	{"LastRevisionUnknown", testLastRevisionUnknown, nil},
	{"ReadAll", testReadAll, nil},
	{"ReadAllFilteredWithLimit", testReadAllFilteredWithLimit, nil},
	{"BadInput", testBadInput, nil},
	{"VersionGap", testVersionGap, nil},
	{"FirstVersion", testFirstVersion, nil},
	{"PurgeStartsAgain", testPurgeStartsAgain, nil},
	{"ForeignWriter", testForeignWriter, nil},
	{"Upcast", testUpcast, upcastRegistry},
	{"CancelledContext", testCancelledContext, nil},
}

// Run runs the conformance suite against the stores made by h.New, one
// subtest per behaviour (see Behaviours), in parallel.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("streamtest: Harness.New is required")
	}
	if h.Writers <= 0 {
		h.Writers = 8
	}
	if h.AppendsPerWriter <= 0 {
		h.AppendsPerWriter = 200
	}
	var sem chan struct{}
	if h.MaxParallel > 0 {
		sem = make(chan struct{}, h.MaxParallel)
	}
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			if reason, ok := h.Skip[b.name]; ok {
				t.Skip(reason)
			}
			t.Parallel()
			if sem != nil {
				sem <- struct{}{}
				defer func() { <-sem }()
			}
			var reg *stream.Registry
			if b.reg != nil {
				reg = b.reg()
			}
			b.fn(newEnv(t, &h, reg))
		})
	}
}

// env is one subtest's store and helpers.
type env struct {
	t   *testing.T
	h   *Harness
	reg *stream.Registry
	fx  Fixture
	st  stream.EventStore
	ctx context.Context
}

// newEnv makes a store with reg (nil = the suite's registry).
func newEnv(t *testing.T, h *Harness, reg *stream.Registry) *env {
	t.Helper()
	if reg == nil {
		reg = newRegistry()
	}
	fx := h.New(t, reg)
	require.NotNil(t, fx.Store, "Harness.New returned no store")
	require.NotNil(t, fx.PutRaw, "Harness.New returned no PutRaw")
	require.NotEmpty(t, fx.Subject, "Harness.New returned no Subject")
	require.Same(t, reg, fx.Store.Registry(), "the store must use the registry given to Harness.New")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return &env{t: t, h: h, reg: reg, fx: fx, st: fx.Store, ctx: ctx}
}

// run runs a nested subtest with its own env sharing nothing with e's store.
func (e *env) run(name string, fn func(e *env)) {
	e.t.Run(name, func(t *testing.T) {
		fn(newEnv(t, e.h, nil))
	})
}

// sub runs a nested subtest on the same store.
func (e *env) sub(name string, fn func(e *env)) {
	e.t.Run(name, func(t *testing.T) {
		c := *e
		c.t = t
		fn(&c)
	})
}

// subject returns the subject of agg's events (wire format v1:
// <prefix>.<aggregateType>.<EncodeID(id)>; the event type is a header).
func (e *env) subject(agg stream.Aggregate) string {
	tok, err := stream.EncodeID(agg.ID)
	require.NoError(e.t, err)
	return e.fx.Subject + "." + agg.Type + "." + tok
}

// append appends and requires success.
func (e *env) append(agg stream.Aggregate, expect stream.Expectation, events ...stream.EventData) stream.AppendResult {
	e.t.Helper()
	res, err := e.st.Append(e.ctx, agg, expect, events)
	require.NoError(e.t, err, "append to %s", agg)
	return res
}

// last returns the aggregate's LastRevision and requires success.
func (e *env) last(agg stream.Aggregate) stream.Revision {
	e.t.Helper()
	rev, err := e.st.LastRevision(e.ctx, agg)
	require.NoError(e.t, err, "LastRevision of %s", agg)
	return rev
}

// collect drains an event iterator: the events before the first error, and
// that error.
func collect(it iter.Seq2[*stream.Event, error]) ([]*stream.Event, error) {
	var out []*stream.Event
	for ev, err := range it {
		if err != nil {
			return out, err
		}
		if ev == nil {
			return out, errors.New("streamtest: iterator yielded a nil event without an error")
		}
		out = append(out, ev)
	}
	return out, nil
}

// settleTimeout bounds how long a read on a replicated store is retried.
const settleTimeout = 20 * time.Second

// eventually runs read once, or on a replicated store until done accepts
// its result or settleTimeout passes, and returns the last result.
func (e *env) eventually(read func() ([]*stream.Event, error), done func([]*stream.Event, error) bool) ([]*stream.Event, error) {
	evs, err := read()
	if !e.h.Replicated {
		return evs, err
	}
	deadline := time.Now().Add(settleTimeout)
	for !done(evs, err) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		evs, err = read()
	}
	return evs, err
}

// load reads the aggregate's events and requires n of them without error.
func (e *env) load(agg stream.Aggregate, n int, opts ...stream.ReadOption) []*stream.Event {
	e.t.Helper()
	evs, err := e.eventually(func() ([]*stream.Event, error) {
		return collect(e.st.Load(e.ctx, agg, opts...))
	}, func(evs []*stream.Event, err error) bool { return err == nil && len(evs) >= n })
	require.NoError(e.t, err, "load %s", agg)
	require.Len(e.t, evs, n, "load %s: events", agg)
	return evs
}

// readAll reads the store's events and requires n of them without error.
func (e *env) readAll(n int, opts ...stream.ReadOption) []*stream.Event {
	e.t.Helper()
	evs, err := e.eventually(func() ([]*stream.Event, error) {
		return collect(e.st.ReadAll(e.ctx, opts...))
	}, func(evs []*stream.Event, err error) bool { return err == nil && len(evs) >= n })
	require.NoError(e.t, err, "read all")
	require.Len(e.t, evs, n, "read all: events")
	return evs
}

// requireConflict checks that err is a conflict on agg with the given
// expected and actual revisions.
func requireConflict(t *testing.T, err error, agg stream.Aggregate, expected, actual stream.Revision) {
	t.Helper()
	require.Error(t, err, "want a conflict on %s", agg)
	require.ErrorIs(t, err, stream.ErrConflict)
	var ce *stream.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, agg, ce.Aggregate, "ConflictError.Aggregate")
	require.Equal(t, expected, ce.Expected, "ConflictError.Expected")
	require.True(t, ce.ActualKnown, "ConflictError.ActualKnown")
	require.Equal(t, actual, ce.Actual, "ConflictError.Actual")
}

// versions returns the events' versions.
func versions(evs []*stream.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Version
	}
	return out
}

// span returns the numbers from..to.
func span(from, to uint64) []uint64 {
	var out []uint64
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

// sequences returns the events' sequences.
func sequences(evs []*stream.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Sequence
	}
	return out
}

// added returns n item-added events with SKUs prefix-1..prefix-n.
func added(prefix string, n int) []stream.EventData {
	out := make([]stream.EventData, n)
	for i := range out {
		out[i] = stream.EventData{Data: ItemAdded{SKU: fmt.Sprintf("%s-%d", prefix, i+1), Quantity: i + 1}}
	}
	return out
}

// withIDs sets event ids prefix-1..prefix-n.
func withIDs(prefix string, evs []stream.EventData) []stream.EventData {
	for i := range evs {
		evs[i].ID = fmt.Sprintf("%s-%d", prefix, i+1)
	}
	return evs
}

// loadVersions loads the aggregate with opts and requires exactly the
// versions want (nil = no events), without error.
func (e *env) loadVersions(agg stream.Aggregate, want []uint64, opts ...stream.ReadOption) []*stream.Event {
	e.t.Helper()
	evs, err := e.eventually(func() ([]*stream.Event, error) {
		return collect(e.st.Load(e.ctx, agg, opts...))
	}, func(evs []*stream.Event, err error) bool { return err == nil && slices.Equal(want, versions(evs)) })
	require.NoError(e.t, err, "load %s", agg)
	require.Equal(e.t, want, nilIfEmpty(versions(evs)), "load %s: versions", agg)
	return evs
}

// readAllWant reads the store with opts and requires exactly the events
// described by want (see describe), without error.
func (e *env) readAllWant(want []string, opts ...stream.ReadOption) []*stream.Event {
	e.t.Helper()
	evs, err := e.eventually(func() ([]*stream.Event, error) {
		return collect(e.st.ReadAll(e.ctx, opts...))
	}, func(evs []*stream.Event, err error) bool { return err == nil && slices.Equal(want, describe(evs)) })
	require.NoError(e.t, err, "read all")
	require.Equal(e.t, want, nilIfEmptyS(describe(evs)), "read all: events")
	return evs
}
