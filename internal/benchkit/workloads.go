package benchkit

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// Workload is one benchmark: an esnats operation and the raw JetStream
// operation it is built on, run side by side by Run. Get the standard ones
// from Workloads or Lookup; a Workload built by hand cannot be run.
type Workload struct {
	// Name is the workload's short name, e.g. "append", as given on the
	// command line.
	Name string
	// Description says in one sentence what both sides do.
	Description string
	// Unit names one operation, e.g. "append", "batch", "load", "event":
	// the throughput is Unit per second.
	Unit string
	// EventsPerOp is the number of events one operation writes or reads.
	EventsPerOp int
	// Raw and Esnats name the operation each side runs.
	Raw, Esnats string
	// DefaultOps is the number of operations per side when Options sets
	// neither Ops nor Duration.
	DefaultOps int
	// DefaultRounds is the number of rounds when Options.Rounds is 0.
	DefaultRounds int

	// fixedChunk: every round runs Options.roundOps operations per side
	// (a whole catch-up of the store), set up before the rounds.
	fixedChunk bool
	// concurrent: the sides run Options.Concurrency operations at a time.
	concurrent bool
	// groupCommit: the esnats side's speed depends on the store's group
	// commit mode, which the result reports.
	groupCommit bool
	setup       func(ctx context.Context, e *env) (*pair, error)
}

// pair is a workload set up on a store: its two sides and their check.
type pair struct {
	raw, esnats sideFunc
	// warmup is the number of untimed operations each side runs before the
	// rounds.
	warmup int
	// verify checks, after the rounds, that each side did what it reports:
	// ops operations each, warm-up included.
	verify func(ctx context.Context, ops int) error
}

// DefaultConcurrency is the number of writers of append-concurrent when
// Options.Concurrency is 0.
const DefaultConcurrency = 16

// Sizes of the workloads.
const (
	batchEvents = 10  // events per append-batch command
	loadEvents  = 100 // events of the aggregate load reads
	loadOthers  = 9   // other aggregates interleaved with it in the store
	// DefaultCatchUpEvents is how many events projection-catchup and
	// projection-kv store (and each side consumes per round) when
	// Options.Duration is set.
	DefaultCatchUpEvents = 20_000
	catchUpAckEvery      = 100 // the raw consumer acknowledges every 100th event
	catchUpFillBatch     = 1000
	catchUpTimeout       = 10 * time.Minute
)

// Workloads returns the standard workloads, in the order a full run shows
// them. Each call returns a new slice.
func Workloads() []Workload {
	return []Workload{
		{
			Name:          "append",
			Description:   "one event per append to one aggregate, each with the expected-last-sequence check",
			Unit:          "append",
			EventsPerOp:   1,
			Raw:           "js.PublishMsg with Nats-Msg-Id and Nats-Expected-Last-Subject-Sequence",
			Esnats:        "stream.Store.Append of 1 event with ExpectRevision",
			DefaultOps:    2000,
			DefaultRounds: 10,
			setup:         setupAppend,
		},
		{
			Name:          "append-batch",
			Description:   "a command of 10 events appended atomically to one aggregate",
			Unit:          "batch",
			EventsPerOp:   batchEvents,
			Raw:           "jetstreamext.PublishMsgBatch of 10 messages, check on the first",
			Esnats:        "stream.Store.Append of 10 events with ExpectRevision (atomic batch)",
			DefaultOps:    100,
			DefaultRounds: 10,
			setup:         setupAppendBatch,
		},
		{
			Name:          "append-concurrent",
			Description:   "one event per append to 10,000 aggregates, each with the expected-last-sequence check, many in flight",
			Unit:          "append",
			EventsPerOp:   1,
			Raw:           "js.PublishMsgAsync with the check, pipelined from one goroutine (up to 1024 in flight)",
			Esnats:        "stream.Store.Append of 1 event with ExpectRevision from Concurrency goroutines (group commit: Options.GroupCommit)",
			DefaultOps:    4000,
			DefaultRounds: 10,
			concurrent:    true,
			groupCommit:   true,
			setup:         setupAppendConcurrent,
		},
		{
			Name:          "append-async",
			Description:   "one event per append to 10,000 aggregates, each with the expected-last-sequence check, up to 1024 in flight from one goroutine",
			Unit:          "append",
			EventsPerOp:   1,
			Raw:           "js.PublishMsgAsync with the check, pipelined from one goroutine (up to 1024 in flight)",
			Esnats:        "stream.Store.AppendAsync of 1 event with ExpectRevision, from one goroutine (up to 1024 in flight; group commit: Options.GroupCommit)",
			DefaultOps:    4000,
			DefaultRounds: 10,
			groupCommit:   true,
			setup:         setupAppendAsync,
		},
		{
			Name:          "load",
			Description:   "load a 100-event aggregate stored among 9 others",
			Unit:          "load",
			EventsPerOp:   loadEvents,
			Raw:           "jetstreamext.GetBatch on the aggregate's subject (batched direct get, no decoding)",
			Esnats:        "stream.Store.Load, iterating and decoding every event",
			DefaultOps:    500,
			DefaultRounds: 10,
			setup:         setupLoad,
		},
		{
			Name:          "load-snapshotted",
			Description:   "load a 10,000-event aggregate from its snapshot, beside a 100-event one loaded the same way",
			Unit:          "load",
			EventsPerOp:   snapEventsRead,
			Raw:           "the same Repository load of a 100-event aggregate (target: the 10,000-event one takes at most 1.5x its time)",
			Esnats:        "aggregate.Repository.Load of a 10,000-event aggregate, KV snapshots every 100 events, no cache",
			DefaultOps:    1000,
			DefaultRounds: 10,
			setup:         setupLoadSnapshotted,
		},
		{
			Name:          "repository-update",
			Description:   "commands of one event on one hot aggregate",
			Unit:          "command",
			EventsPerOp:   1,
			Raw:           "js.PublishMsg with Nats-Msg-Id and Nats-Expected-Last-Subject-Sequence",
			Esnats:        "aggregate.Repository.Update (cached aggregate, command, append)",
			DefaultOps:    2000,
			DefaultRounds: 10,
			setup:         setupRepositoryUpdate,
		},
		{
			Name:          "projection-catchup",
			Description:   "a new projection consuming the whole store from the start, each round",
			Unit:          "event",
			EventsPerOp:   1,
			Raw:           "durable pull consumer, AckAll every 100th message, no decoding",
			Esnats:        "projections.Runner feeding an in-memory model (decoded, exactly-once)",
			DefaultOps:    3 * DefaultCatchUpEvents,
			DefaultRounds: 3,
			fixedChunk:    true,
			setup:         setupCatchUp,
		},
		{
			Name:          "projection-kv",
			Description:   "a new projection consuming the whole store from the start into a KV read model of 7 keys (items per SKU), each round",
			Unit:          "event",
			EventsPerOp:   1,
			Raw:           "projection-catchup's consumer, decoding; every 100 events a KV Put of each key changed, 16 at a time, then of a checkpoint",
			Esnats:        "projections.Runner feeding a projections.KV read model (file bucket, exactly-once)",
			DefaultOps:    3 * DefaultCatchUpEvents,
			DefaultRounds: 3,
			fixedChunk:    true,
			setup:         setupProjectionKV,
		},
	}
}

// Lookup returns the standard workload called name.
func Lookup(name string) (Workload, bool) {
	for _, w := range Workloads() {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// Names returns the names of the standard workloads, in the order of
// Workloads.
func Names() []string {
	ws := Workloads()
	names := make([]string, len(ws))
	for i, w := range ws {
		names[i] = w.Name
	}
	return names
}

// rawAppender returns a raw side appending one event at a time to agg with
// the concurrency check.
func rawAppender(e *env, agg stream.Aggregate) sideFunc {
	subj := e.subject(agg)
	var seq, ver uint64
	return sequential(func(ctx context.Context) error {
		m := e.msg(subj, ver+1, now())
		expect(m, seq)
		ack, err := e.js.PublishMsg(ctx, m)
		if err != nil {
			return err
		}
		seq, ver = ack.Sequence, ver+1
		return nil
	})
}

// appendVerify checks that each side stored want events, and that the
// aggregates aggs (type esnats or raw) are at version want.
func appendVerify(e *env, events int, aggs ...stream.Aggregate) func(ctx context.Context, ops int) error {
	return func(ctx context.Context, ops int) error {
		want := uint64(ops * events)
		errs := []error{e.checkSide(ctx, rawType, want), e.checkSide(ctx, esnatsType, want)}
		for _, a := range aggs {
			errs = append(errs, e.checkVersion(ctx, a, want))
		}
		return errors.Join(errs...)
	}
}

func setupAppend(_ context.Context, e *env) (*pair, error) {
	rawAgg := stream.Aggregate{Type: rawType, ID: "append"}
	esAgg := stream.Aggregate{Type: esnatsType, ID: "append"}
	raw := rawAppender(e, rawAgg)
	events := []stream.EventData{{Data: benchItem}}
	var rev stream.Revision
	return &pair{
		raw: raw,
		esnats: sequential(func(ctx context.Context) error {
			res, err := e.store.Append(ctx, esAgg, stream.ExpectRevision(rev), events)
			if err != nil {
				return err
			}
			rev = res.Last
			return nil
		}),
		warmup: 1,
		verify: appendVerify(e, 1, rawAgg, esAgg),
	}, nil
}

func setupAppendBatch(_ context.Context, e *env) (*pair, error) {
	rawAgg := stream.Aggregate{Type: rawType, ID: "batch"}
	esAgg := stream.Aggregate{Type: esnatsType, ID: "batch"}
	rawSubj := e.subject(rawAgg)
	events := make([]stream.EventData, batchEvents)
	for i := range events {
		events[i] = stream.EventData{Data: benchItem}
	}
	// The flow control esnats uses: no acknowledgement of the first message.
	fc := jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: e.js.Options().DefaultTimeout}
	msgs := make([]*nats.Msg, batchEvents)
	var seq, ver uint64
	var rev stream.Revision
	return &pair{
		raw: sequential(func(ctx context.Context) error {
			ts := now()
			for i := range msgs {
				msgs[i] = e.msg(rawSubj, ver+uint64(i)+1, ts)
			}
			expect(msgs[0], seq)
			ack, err := jetstreamext.PublishMsgBatch(ctx, e.js, msgs, fc)
			if err != nil {
				return err
			}
			seq, ver = ack.Sequence, ver+batchEvents
			return nil
		}),
		esnats: sequential(func(ctx context.Context) error {
			res, err := e.store.Append(ctx, esAgg, stream.ExpectRevision(rev), events)
			if err != nil {
				return err
			}
			rev = res.Last
			return nil
		}),
		warmup: 1,
		verify: appendVerify(e, batchEvents, rawAgg, esAgg),
	}, nil
}

// Shape of append-concurrent.
const (
	concurrentAggs   = 10_000 // aggregates per side, written round-robin
	concurrentWindow = 1024   // raw publishes in flight at most (< concurrentAggs)
)

// setupAppendConcurrent: the raw side publishes with PublishMsgAsync from
// one goroutine, keeping up to concurrentWindow publishes in flight, round
// robin over concurrentAggs aggregates (so no aggregate has two in flight):
// the fastest a client can append single events with the check, as issue 6
// measures it. The esnats side runs Concurrency writers, writer w appending
// round robin to aggregates w, w+Concurrency, ... of as many, each append
// waiting for its answer: what group commit turns into atomic batches
// (or, with GroupCommitPipeline, sends on its own).
// rawAgg is one aggregate of the raw side of append-concurrent and
// append-async.
type rawAgg struct {
	subj     string
	seq, ver uint64
}

// rawPipelined is the raw side of append-concurrent and append-async:
// pipelined js.PublishMsgAsync with the expected-last-subject-sequence
// check, round robin over raws, up to concurrentWindow in flight.
func rawPipelined(e *env, raws []rawAgg) sideFunc {
	next := 0
	return func(ctx context.Context, ops int, rec *recorder) (time.Duration, error) {
		type inflight struct {
			a    *rawAgg
			sent time.Time
			fut  jetstream.PubAckFuture
		}
		window := make([]inflight, 0, min(ops, concurrentWindow))
		settle := func(p inflight) error {
			select {
			case ack := <-p.fut.Ok():
				p.a.seq, p.a.ver = ack.Sequence, p.a.ver+1
				rec.op(time.Since(p.sent))
				return nil
			case err := <-p.fut.Err():
				return fmt.Errorf("%s: %w", p.a.subj, err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		start := time.Now()
		ts := now()
		for i := range ops {
			if len(window) == concurrentWindow {
				if err := settle(window[0]); err != nil {
					return time.Since(start), err
				}
				window = window[1:]
			}
			if i%concurrentWindow == 0 {
				ts = now()
			}
			a := &raws[next]
			next = (next + 1) % len(raws)
			m := e.msg(a.subj, a.ver+1, ts)
			expect(m, a.seq)
			f, err := e.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute))
			if err != nil {
				return time.Since(start), fmt.Errorf("%s: %w", a.subj, err)
			}
			window = append(window, inflight{a: a, sent: time.Now(), fut: f})
		}
		for _, p := range window {
			if err := settle(p); err != nil {
				return time.Since(start), err
			}
		}
		return time.Since(start), nil
	}
}

func setupAppendConcurrent(_ context.Context, e *env) (*pair, error) {
	n := e.concurrency
	raws := make([]rawAgg, concurrentAggs)
	esAggs := make([]stream.Aggregate, concurrentAggs)
	revs := make([]stream.Revision, concurrentAggs)
	for i := range concurrentAggs {
		id := fmt.Sprintf("g%05d", i)
		raws[i].subj = e.subject(stream.Aggregate{Type: rawType, ID: id})
		esAggs[i] = stream.Aggregate{Type: esnatsType, ID: id}
	}
	cur := make([]int, n) // writer w's next aggregate: w + cur[w]*n
	owned := func(w int) int { return (concurrentAggs - w + n - 1) / n }
	events := []stream.EventData{{Data: benchItem}}
	return &pair{
		raw: rawPipelined(e, raws),
		esnats: parallel(n, func(ctx context.Context, w int) error {
			i := w + cur[w]*n
			cur[w] = (cur[w] + 1) % owned(w)
			res, err := e.store.Append(ctx, esAggs[i], stream.ExpectRevision(revs[i]), events)
			if err != nil {
				return err
			}
			revs[i] = res.Last
			return nil
		}),
		warmup: n,
		verify: func(ctx context.Context, ops int) error {
			errs := []error{e.checkSide(ctx, rawType, uint64(ops)), e.checkSide(ctx, esnatsType, uint64(ops))}
			var rawSum, esSum uint64
			for i := range concurrentAggs {
				rawSum += raws[i].ver
				esSum += revs[i].Version
				if revs[i].IsZero() {
					continue
				}
				if rev, err := e.store.LastRevision(ctx, esAggs[i]); err != nil || rev != revs[i] {
					errs = append(errs, fmt.Errorf("%s: stored revision %s (%v), esnats reported %s", esAggs[i], rev, err, revs[i]))
				}
			}
			if rawSum != uint64(ops) || esSum != uint64(ops) {
				errs = append(errs, fmt.Errorf("appends acknowledged: raw %d, esnats %d, want %d", rawSum, esSum, ops))
			}
			return errors.Join(errs...)
		},
	}, nil
}

// setupAppendAsync: the raw side of append-concurrent against
// Store.AppendAsync from one goroutine, the same window in flight, each
// aggregate's next append from its previous result.
func setupAppendAsync(_ context.Context, e *env) (*pair, error) {
	raws := make([]rawAgg, concurrentAggs)
	esAggs := make([]stream.Aggregate, concurrentAggs)
	revs := make([]stream.Revision, concurrentAggs)
	for i := range concurrentAggs {
		id := fmt.Sprintf("g%05d", i)
		raws[i].subj = e.subject(stream.Aggregate{Type: rawType, ID: id})
		esAggs[i] = stream.Aggregate{Type: esnatsType, ID: id}
	}
	events := []stream.EventData{{Data: benchItem}}
	next := 0
	return &pair{
		raw: rawPipelined(e, raws),
		esnats: func(ctx context.Context, ops int, rec *recorder) (time.Duration, error) {
			type inflight struct {
				i    int
				sent time.Time
				p    *stream.PendingAppend
			}
			window := make([]inflight, 0, min(ops, concurrentWindow))
			settle := func(f inflight) error {
				res, err := f.p.Wait(ctx)
				if err != nil {
					return err
				}
				revs[f.i] = res.Last
				rec.op(time.Since(f.sent))
				return nil
			}
			start := time.Now()
			for range ops {
				if len(window) == concurrentWindow {
					if err := settle(window[0]); err != nil {
						return time.Since(start), err
					}
					window = window[1:]
				}
				i := next
				next = (next + 1) % concurrentAggs
				window = append(window, inflight{i: i, sent: time.Now(), p: e.store.AppendAsync(ctx, esAggs[i], stream.ExpectRevision(revs[i]), events)})
			}
			for _, f := range window {
				if err := settle(f); err != nil {
					return time.Since(start), err
				}
			}
			return time.Since(start), nil
		},
		warmup: 1,
		verify: func(ctx context.Context, ops int) error {
			errs := []error{e.checkSide(ctx, rawType, uint64(ops)), e.checkSide(ctx, esnatsType, uint64(ops))}
			var rawSum, esSum uint64
			for i := range concurrentAggs {
				rawSum += raws[i].ver
				esSum += revs[i].Version
			}
			if rawSum != uint64(ops) || esSum != uint64(ops) {
				errs = append(errs, fmt.Errorf("appends acknowledged: raw %d, esnats %d, want %d", rawSum, esSum, ops))
			}
			return errors.Join(errs...)
		},
	}, nil
}

// setupLoad stores, with pipelined raw publishes in esnats' wire format, one
// aggregate of loadEvents events interleaved with loadOthers others of as
// many: the aggregate's events lie loadOthers+1 messages apart, as in a busy
// store.
func setupLoad(ctx context.Context, e *env) (*pair, error) {
	target := stream.Aggregate{Type: "cart", ID: "hundred"}
	subjects := []string{e.subject(target)}
	for i := range loadOthers {
		subjects = append(subjects, e.subject(stream.Aggregate{Type: "cart", ID: fmt.Sprintf("other-%d", i)}))
	}
	futs := make([]jetstream.PubAckFuture, 0, loadEvents*len(subjects))
	for v := range loadEvents {
		ts := now()
		for _, s := range subjects {
			f, err := e.js.PublishMsgAsync(e.msg(s, uint64(v+1), ts), jetstream.WithStallWait(time.Minute))
			if err != nil {
				return nil, fmt.Errorf("filling the store: %w", err)
			}
			futs = append(futs, f)
		}
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return nil, fmt.Errorf("filling the store: %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	stored := uint64(len(futs))
	check := func(kind string, got int, last uint64) error {
		if got != loadEvents || last != loadEvents {
			return fmt.Errorf("%s load of %s: %d events up to version %d, want %d", kind, target, got, last, loadEvents)
		}
		return nil
	}
	return &pair{
		raw: sequential(func(ctx context.Context) error {
			got, last, err := getBatchAll(ctx, e.js, e.name, subjects[0])
			if err != nil {
				return err
			}
			return check("raw", got, last)
		}),
		esnats: sequential(func(ctx context.Context) error {
			got := 0
			var last uint64
			for ev, err := range e.store.Load(ctx, target) {
				if err != nil {
					return err
				}
				got++
				last = ev.Version
			}
			return check("esnats", got, last)
		}),
		warmup: 1,
		verify: func(ctx context.Context, _ int) error {
			return e.checkTotal(ctx, stored)
		},
	}, nil
}

// getBatchAll reads every message of subject with batched direct gets (1000
// per round trip, as Store.Load does) until the server reports none pending.
// It returns how many it read and the version header of the last one, which
// it parses; it decodes no payload.
func getBatchAll(ctx context.Context, js jetstream.JetStream, streamName, subject string) (int, uint64, error) {
	n := 0
	var last uint64
	seq := uint64(1)
	for {
		it, err := jetstreamext.GetBatch(ctx, js, streamName, stream.MaxBatch,
			jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(seq), jetstreamext.GetBatchMaxBytes(4<<20))
		if err != nil {
			return n, last, err
		}
		got := 0
		pending := uint64(0)
		for m, err := range it {
			if err != nil {
				if errors.Is(err, jetstreamext.ErrNoMessages) && n == 0 {
					return 0, 0, nil
				}
				return n, last, err
			}
			got++
			seq = m.Sequence + 1
			if pending, err = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64); err != nil {
				return n, last, fmt.Errorf("sequence %d: bad Nats-Num-Pending: %w", m.Sequence, err)
			}
			if last, err = strconv.ParseUint(m.Header.Get(stream.HeaderVersion), 10, 64); err != nil {
				return n, last, fmt.Errorf("sequence %d: bad %s: %w", m.Sequence, stream.HeaderVersion, err)
			}
		}
		n += got
		if got == 0 {
			if err := ctx.Err(); err != nil {
				return n, last, err
			}
			return n, last, errors.New("no answer from the server")
		}
		if pending == 0 {
			return n, last, nil
		}
	}
}

// cart is the aggregate of repository-update.
type cart struct {
	aggregate.Root
	Items map[string]int `json:"items"`
	Adds  int            `json:"adds"`
}

func newCart(string) *cart { return &cart{Items: map[string]int{}} }

func (c *cart) Apply(ev any) {
	if it, ok := ev.(item); ok {
		c.Items[it.SKU] += it.Qty
		c.Adds++
	}
}

func (c *cart) add(it item) error {
	if it.Qty <= 0 {
		return errors.New("quantity must be positive")
	}
	c.Record(it)
	return nil
}

func setupRepositoryUpdate(_ context.Context, e *env) (*pair, error) {
	const id = "hot"
	rawAgg := stream.Aggregate{Type: rawType, ID: id}
	raw := rawAppender(e, rawAgg)
	repo, err := aggregate.NewRepository(aggregate.Config[*cart]{Store: e.store, Type: esnatsType, New: newCart})
	if err != nil {
		return nil, err
	}
	cmd := func(c *cart) error { return c.add(benchItem) }
	return &pair{
		raw: raw,
		esnats: sequential(func(ctx context.Context) error {
			return repo.Update(ctx, id, cmd)
		}),
		warmup: 1,
		verify: func(ctx context.Context, ops int) error {
			if err := appendVerify(e, 1, rawAgg)(ctx, ops); err != nil {
				return err
			}
			check, err := aggregate.NewRepository(aggregate.Config[*cart]{Store: e.store, Type: esnatsType, New: newCart, CacheSize: -1})
			if err != nil {
				return err
			}
			c, err := check.Load(ctx, id)
			if err != nil {
				return err
			}
			if c.Version() != uint64(ops) || c.Adds != ops {
				return fmt.Errorf("%s/%s: version %d with %d items added, want %d", esnatsType, id, c.Version(), c.Adds, ops)
			}
			return nil
		},
	}, nil
}

// Shape of load-snapshotted.
const (
	snapLongEvents  = 10_000 // events of the cart the esnats side loads
	snapShortEvents = 100    // events of the cart the raw side loads
	snapEvery       = 100    // Config.SnapshotEvery; both histories end on a snapshot
)

// setupLoadSnapshotted stores two carts through a Repository with KV
// snapshots every 100 events (in a bucket of the run's own), in commands of
// 100 events: one of 10,000 events, then one of 100, each ending on a
// snapshot. Both sides load through a Repository of the same configuration
// without a cache (CacheSize -1: every load reads the stores, as a cold
// load in another process does), the esnats side the long cart, the raw
// side the short one: what the snapshots leave of the cost of a long
// history.
//
// The short cart comes last so that both histories end among the stream's
// last 200 events: a load reads the stream from the snapshot's last event
// on, and that read is slower the more messages of other aggregates follow
// the event (written first, under the long cart's 9,900 later events, the
// short cart loaded in about 0.85 ms against 0.25 ms, on a 2-core machine).
// Written this way the short cart has the edge: its last event is the
// stream's, the long cart's has 100 events after it.
func setupLoadSnapshotted(ctx context.Context, e *env) (*pair, error) {
	snaps, err := kv.NewStore(ctx, e.js, kv.Config{Bucket: e.bucket("snapshots"), Replicas: e.replicas})
	if err != nil {
		return nil, err
	}
	cfg := aggregate.Config[*cart]{Store: e.store, Type: "cart", New: newCart, Snapshots: snaps, SnapshotEvery: snapEvery}
	fill, err := aggregate.NewRepository(cfg)
	if err != nil {
		return nil, err
	}
	long := snapCart{id: "ten-thousand", events: snapLongEvents}
	short := snapCart{id: "hundred", events: snapShortEvents}
	for _, c := range []snapCart{long, short} {
		for done := 0; done < c.events; done += snapEvery {
			err := fill.Update(ctx, c.id, func(a *cart) error {
				for i := done; i < min(done+snapEvery, c.events); i++ {
					if err := a.add(catchUpItem(i)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("filling the store: cart/%s: %w", c.id, err)
			}
		}
	}
	fill.Flush() // the snapshots are written in the background
	checkSnapshots := func(ctx context.Context) error {
		for _, c := range []snapCart{long, short} {
			agg := stream.Aggregate{Type: "cart", ID: c.id}
			snap, ok, err := snaps.Get(ctx, agg)
			if err != nil {
				return err
			}
			if !ok || snap.Version != uint64(c.events) {
				return fmt.Errorf("%s: snapshot at version %d (stored: %v), want %d", agg, snap.Version, ok, c.events)
			}
		}
		return nil
	}
	if err := checkSnapshots(ctx); err != nil {
		return nil, fmt.Errorf("filling the store: %w", err)
	}
	cfg.CacheSize = -1
	repo, err := aggregate.NewRepository(cfg)
	if err != nil {
		return nil, err
	}
	load := func(c snapCart) sideFunc {
		return sequential(func(ctx context.Context) error {
			a, err := repo.Load(ctx, c.id)
			if err != nil {
				return err
			}
			return c.check(a)
		})
	}
	stored := uint64(snapLongEvents + snapShortEvents)
	return &pair{
		raw:    load(short),
		esnats: load(long),
		warmup: 1,
		verify: func(ctx context.Context, _ int) error {
			if err := e.checkTotal(ctx, stored); err != nil {
				return err
			}
			if err := checkSnapshots(ctx); err != nil {
				return err
			}
			// The timed loads read no more than this one, through a store
			// that counts: the snapshot's own last event, which confirms
			// the snapshot, and nothing before it.
			counter := &countingStore{EventStore: e.store}
			ccfg := cfg
			ccfg.Store = counter
			check, err := aggregate.NewRepository(ccfg)
			if err != nil {
				return err
			}
			for _, c := range []snapCart{long, short} {
				counter.events.Store(0)
				a, err := check.Load(ctx, c.id)
				if err != nil {
					return err
				}
				if err := c.check(a); err != nil {
					return err
				}
				if n := counter.events.Load(); n != snapEventsRead {
					return fmt.Errorf("cart/%s: a load read %d events, want %d (from the snapshot)", c.id, n, snapEventsRead)
				}
			}
			return nil
		},
	}, nil
}

// snapEventsRead is the number of events a load of load-snapshotted reads
// from the stream, of either cart: the snapshot's last event, which
// confirms the snapshot. It is the workload's EventsPerOp.
const snapEventsRead = 1

// snapCart is one cart of load-snapshotted.
type snapCart struct {
	id     string
	events int
}

// check checks a loaded cart: version and items added are its events.
func (c snapCart) check(a *cart) error {
	if a.Version() != uint64(c.events) || a.Adds != c.events {
		return fmt.Errorf("cart/%s: loaded at version %d with %d items added, want %d", c.id, a.Version(), a.Adds, c.events)
	}
	return nil
}

// countingStore counts the events its Load returns.
type countingStore struct {
	stream.EventStore
	events atomic.Int64
}

func (s *countingStore) Load(ctx context.Context, agg stream.Aggregate, opts ...stream.ReadOption) iter.Seq2[*stream.Event, error] {
	return func(yield func(*stream.Event, error) bool) {
		for ev, err := range s.EventStore.Load(ctx, agg, opts...) {
			if err == nil {
				s.events.Add(1)
			}
			if !yield(ev, err) {
				return
			}
		}
	}
}

// catchUpItem is the i-th event of the store of projection-catchup and
// projection-kv, and of the carts of load-snapshotted.
func catchUpItem(i int) item {
	it := benchItem
	it.SKU = "s" + strconv.Itoa(i%7)
	it.Qty = 1 + i%3
	return it
}

// fillCatchUp stores e.roundOps events over ceil(events/10) carts (event i
// in cart i mod carts) with atomic AppendBatch calls of up to 1000 events,
// one per cart, each with the concurrency check: the store of
// projection-catchup and projection-kv.
func fillCatchUp(ctx context.Context, e *env) (*catchUp, error) {
	n := e.roundOps
	carts := (n + 9) / 10
	per := min(catchUpFillBatch, carts) // consecutive events: distinct carts
	revs := make([]stream.Revision, carts)
	want := map[string]int{} // items per SKU
	for first := 0; first < n; first += per {
		reqs := make([]stream.AppendRequest, 0, per)
		for i := first; i < min(first+per, n); i++ {
			c, it := i%carts, catchUpItem(i)
			want[it.SKU] += it.Qty
			reqs = append(reqs, stream.AppendRequest{
				Aggregate: stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%07d", c)},
				Expect:    stream.ExpectRevision(revs[c]),
				Events:    []stream.EventData{{Data: it}},
			})
		}
		res, err := e.store.AppendBatch(ctx, reqs)
		if err != nil {
			return nil, fmt.Errorf("filling the store: %w", err)
		}
		for j, r := range res {
			revs[(first+j)%carts] = r.Last
		}
	}
	s, err := e.js.Stream(ctx, e.name)
	if err != nil {
		return nil, err
	}
	lastSeq := s.CachedInfo().State.LastSeq
	if got := s.CachedInfo().State.Msgs; got != uint64(n) {
		return nil, fmt.Errorf("filling the store: %d events stored, want %d", got, n)
	}
	e.dlq = true // the runner's consumer creates the dead-letter stream
	return &catchUp{e: e, n: n, lastSeq: lastSeq, want: want}, nil
}

func setupCatchUp(ctx context.Context, e *env) (*pair, error) {
	c, err := fillCatchUp(ctx, e)
	if err != nil {
		return nil, err
	}
	return &pair{raw: c.raw, esnats: c.project, warmup: c.n, verify: c.verify}, nil
}

// setupProjectionKV: projection-catchup's store, caught up with into KV
// buckets (file storage, as KVConfig and CreateKeyValue default to) holding
// the items per SKU, 7 keys, in decimal: the shape of the kv-sku modes of
// BenchmarkCatchUp in projections/bench_test.go. The raw side is that
// benchmark's raw-kv kind, a hand-written projector (see rawKV); the esnats
// side a projections.KV read model in a Runner (see projectKV). Each
// catch-up writes a new bucket, then checks and deletes it.
func setupProjectionKV(ctx context.Context, e *env) (*pair, error) {
	c, err := fillCatchUp(ctx, e)
	if err != nil {
		return nil, err
	}
	return &pair{raw: c.rawKV, esnats: c.projectKV, warmup: c.n, verify: c.verify}, nil
}

// catchUp is the store of projection-catchup and projection-kv, and what a
// model of it must hold.
type catchUp struct {
	e       *env
	n       int
	lastSeq uint64
	want    map[string]int // items per SKU
	mu      sync.Mutex
	seq     int // for consumer and bucket names
}

func (c *catchUp) name(kind string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	return kind + "-" + strconv.Itoa(c.seq)
}

// verify checks, after the rounds, that the store holds its events and no
// consumer: each catch-up deleted its own.
func (c *catchUp) verify(ctx context.Context, _ int) error {
	s, err := c.e.js.Stream(ctx, c.e.name)
	if err != nil {
		return err
	}
	st := s.CachedInfo().State
	if st.Msgs != uint64(c.n) || st.Consumers != 0 {
		return fmt.Errorf("store holds %d events and %d consumers, want %d and none", st.Msgs, st.Consumers, c.n)
	}
	return nil
}

// checkSize refuses a round of another size than the store: each round
// consumes the whole store.
func (c *catchUp) checkSize(n int) error {
	if n != c.n {
		return fmt.Errorf("catch-up: %d events asked for a store of %d", n, c.n)
	}
	return nil
}

// deleteConsumer deletes a consumer even when ctx has ended.
func (c *catchUp) deleteConsumer(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := c.e.js.DeleteConsumer(ctx, c.e.name, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		err = nil
	}
	return err
}

// raw consumes the whole store through a new durable pull consumer with
// esnats' settings (see consume), without decoding.
func (c *catchUp) raw(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
	if err := c.checkSize(n); err != nil {
		return 0, err
	}
	return c.consume(ctx, rec, nil)
}

// consume consumes the whole store through a new durable pull consumer with
// esnats' settings (MaxAckPending 1000, 200 messages per pull), AckAll,
// acknowledging every 100th message and the last (waiting for the server
// to confirm it). handle, if set, sees each message before it is
// acknowledged, flush set on each one that is (every 100th and the last);
// an error from it ends the catch-up. It returns the time from creating
// the consumer to that confirmation, checks the consumer's final state and
// deletes it.
func (c *catchUp) consume(ctx context.Context, rec *recorder, handle func(m jetstream.Msg, flush bool) error) (time.Duration, error) {
	name := c.name("raw")
	start := time.Now()
	cons, err := c.e.js.CreateConsumer(ctx, c.e.name, jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckAllPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: c.e.name + ".>",
		AckWait:       consumers.DefaultAckWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
	})
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.deleteConsumer(ctx, name) }()
	count := 0 // the handler is called by one goroutine at a time
	last := make(chan jetstream.Msg, 1)
	failed := make(chan error, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		count++
		rec.add(1)
		isLast := count == c.n
		flush := isLast || count%catchUpAckEvery == 0
		if handle != nil {
			if err := handle(m, flush); err != nil {
				select {
				case failed <- err:
				default:
				}
				return
			}
		}
		switch {
		case isLast:
			last <- m
		case flush:
			_ = m.Ack()
		}
	}, jetstream.PullMaxMessages(2*consumers.DefaultBatchSize), jetstream.PullExpiry(consumers.DefaultPinnedTTL/2))
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	timeout := time.NewTimer(catchUpTimeout)
	defer timeout.Stop()
	select {
	case m := <-last:
		if err := m.DoubleAck(ctx); err != nil {
			return 0, fmt.Errorf("raw consumer %s: last acknowledgement: %w", name, err)
		}
	case err := <-failed:
		if cerr := ctx.Err(); cerr != nil {
			return time.Since(start), cerr
		}
		return 0, fmt.Errorf("raw consumer %s: %w", name, err)
	case <-ctx.Done():
		return time.Since(start), ctx.Err()
	case <-timeout.C:
		return 0, fmt.Errorf("raw consumer %s: not caught up after %s", name, catchUpTimeout)
	}
	d := time.Since(start)
	cc.Stop()
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	if info.AckFloor.Stream != c.lastSeq || info.NumPending != 0 {
		return 0, fmt.Errorf("raw consumer %s: acknowledged up to %d with %d pending, want %d and none", name, info.AckFloor.Stream, info.NumPending, c.lastSeq)
	}
	return d, c.deleteConsumer(ctx, name)
}

// rawCheckpointKey is the key of the raw side's checkpoint in its KV
// bucket.
const rawCheckpointKey = "checkpoint"

// kvPutters is the number of KV puts the raw side of projection-kv runs at
// a time: 16, as the raw-kv kind of projections/bench_test.go does, so that
// the command line and `make bench` measure the same thing.
const kvPutters = 16

// rawKV is a hand-written projector, BenchmarkCatchUp's raw-kv kind: the
// raw consumer of consume, decoding each event and adding its quantity to
// its SKU's total; on each message it acknowledges (every 100th and the
// last), before the acknowledgement, it puts the total of each SKU changed
// since the previous one (kv.Put, 16 at a time), then the message's stream
// sequence under a checkpoint key: as many KV writes as the KV read model
// makes for batches of 100, of the same keys and decimal values. It
// returns consume's time; creating the bucket, checking its values and
// deleting it are not timed.
func (c *catchUp) rawKV(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
	if err := c.checkSize(n); err != nil {
		return 0, err
	}
	name := c.e.bucket(c.name("raw-kv"))
	bucket, err := c.e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, Replicas: c.e.replicas})
	if err != nil {
		return 0, fmt.Errorf("creating KV bucket %s: %w", name, err)
	}
	tally := map[string]int{}
	touched := map[string]bool{}
	d, err := c.consume(ctx, rec, func(m jetstream.Msg, flush bool) error {
		it, err := c.decode(m)
		if err != nil {
			return err
		}
		tally[it.SKU] += it.Qty
		touched[it.SKU] = true
		if !flush {
			return nil
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if err := putAll(touched, func(key string) error {
			_, err := bucket.Put(ctx, key, []byte(strconv.Itoa(tally[key])))
			return err
		}); err != nil {
			return err
		}
		clear(touched)
		_, err = bucket.Put(ctx, rawCheckpointKey, []byte(strconv.FormatUint(md.Sequence.Stream, 10)))
		return err
	})
	if err != nil {
		return d, err
	}
	values, err := readBucket(ctx, bucket)
	if err != nil {
		return 0, err
	}
	cp := string(values[rawCheckpointKey])
	delete(values, rawCheckpointKey)
	if err := c.checkTotals("raw KV bucket "+name, values); err != nil {
		return 0, err
	}
	if cp != strconv.FormatUint(c.lastSeq, 10) {
		return 0, fmt.Errorf("raw KV bucket %s: checkpoint %q, want %d", name, cp, c.lastSeq)
	}
	return d, c.e.js.DeleteKeyValue(ctx, name)
}

// decode decodes a raw message's payload with the store's registry, as a
// hand-written projector does.
func (c *catchUp) decode(m jetstream.Msg) (item, error) {
	h := m.Headers()
	schema, err := strconv.Atoi(h.Get(stream.HeaderSchema))
	if err != nil {
		return item{}, fmt.Errorf("%s: bad %s: %w", m.Subject(), stream.HeaderSchema, err)
	}
	v, err := c.e.reg.Decode(h.Get(stream.HeaderEventType), schema, h.Get(stream.HeaderContentType), m.Data())
	if err != nil {
		return item{}, err
	}
	it, ok := v.(item)
	if !ok {
		return item{}, fmt.Errorf("unexpected event data %T", v)
	}
	return it, nil
}

// checkTotals checks that values (decimal, by SKU) are the store's items
// per SKU.
func (c *catchUp) checkTotals(what string, values map[string][]byte) error {
	got := make(map[string]int, len(values))
	for k, v := range values {
		n, err := strconv.Atoi(string(v))
		if err != nil {
			return fmt.Errorf("%s: key %s holds %q, not a number", what, k, v)
		}
		got[k] = n
	}
	if !maps.Equal(got, c.want) {
		return fmt.Errorf("%s holds %v, want %v", what, got, c.want)
	}
	return nil
}

// putAll calls put for every key, kvPutters at a time, and returns the
// errors.
func putAll(keys map[string]bool, put func(key string) error) error {
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, kvPutters)
		mu   sync.Mutex
		errs []error
	)
	for key := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := put(key); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("put %s: %w", key, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readBucket returns every value of bucket, read with one watcher.
func readBucket(ctx context.Context, bucket jetstream.KeyValue) (map[string][]byte, error) {
	w, err := bucket.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("reading KV bucket %s: %w", bucket.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("reading KV bucket %s: watcher stopped", bucket.Bucket())
			}
			if e == nil { // every current value delivered
				return out, nil
			}
			out[e.Key()] = e.Value()
		}
	}
}

// project runs a new projection with an in-memory model (items per SKU) in a
// projections.Runner until the model has applied the store's last event. It
// returns the time from starting the runner to then, stops the runner,
// checks the model and deletes the projection's consumer.
func (c *catchUp) project(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
	if err := c.checkSize(n); err != nil {
		return 0, err
	}
	name := c.name("esnats")
	model := projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		it, ok := ev.Data.(item)
		if !ok {
			return fmt.Errorf("unexpected event data %T", ev.Data)
		}
		view[it.SKU] += it.Qty
		return nil
	})
	w := &memoryCaughtUp{Memory: model, caughtUp: newCaughtUp(c.lastSeq, rec)}
	defer func() { _ = c.deleteConsumer(ctx, name) }()
	d, err := c.runProjection(ctx, name, w, w.done)
	if err != nil {
		return d, err
	}
	if got := model.Snapshot(); !maps.Equal(got, c.want) {
		return 0, fmt.Errorf("projection %s: model holds %v, want %v", name, got, c.want)
	}
	return d, c.deleteConsumer(ctx, name)
}

// projectKV runs a new projection with a KV read model on a bucket of its
// own (items per SKU: each event reads its SKU's total and puts the new
// one, in decimal) in a projections.Runner until the model has applied the
// store's last event: its keys and its checkpoint are written. It returns
// the time from starting the runner to then; creating the bucket,
// checking its values and checkpoint, and deleting it and the projection's
// consumer are not timed.
func (c *catchUp) projectKV(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
	if err := c.checkSize(n); err != nil {
		return 0, err
	}
	name := c.name("esnats-kv")
	bucket := c.e.bucket(name)
	model, err := projections.NewKV(ctx, c.e.js, projections.KVConfig{Bucket: bucket, Replicas: c.e.replicas},
		func(_ context.Context, tx *projections.KVBatch, ev *stream.Event) error {
			it, ok := ev.Data.(item)
			if !ok {
				return fmt.Errorf("unexpected event data %T", ev.Data)
			}
			old, _, err := tx.Get(it.SKU)
			if err != nil {
				return err
			}
			total, _ := strconv.Atoi(string(old)) // absent: 0
			tx.Put(it.SKU, []byte(strconv.Itoa(total+it.Qty)))
			return nil
		})
	if err != nil {
		return 0, err
	}
	w := &kvCaughtUp{KV: model, caughtUp: newCaughtUp(c.lastSeq, rec)}
	defer func() { _ = c.deleteConsumer(ctx, name) }()
	d, err := c.runProjection(ctx, name, w, w.done)
	if err != nil {
		return d, err
	}
	values, err := model.All(ctx)
	if err != nil {
		return 0, err
	}
	if err := c.checkTotals("KV read model "+bucket, values); err != nil {
		return 0, err
	}
	if cp, err := model.Checkpoint(ctx); err != nil || cp != c.lastSeq {
		return 0, fmt.Errorf("KV read model %s: checkpoint %d (%v), want %d", bucket, cp, err, c.lastSeq)
	}
	if err := c.e.js.DeleteKeyValue(ctx, bucket); err != nil {
		return 0, err
	}
	return d, c.deleteConsumer(ctx, name)
}

// runProjection runs model as a new projection called name in a
// projections.Runner until done is closed (the model has applied the
// store's last event), and returns the time from starting the runner to
// then. It stops the runner before it returns.
func (c *catchUp) runProjection(ctx context.Context, name string, model projections.ReadModel, done <-chan struct{}) (time.Duration, error) {
	r := projections.NewRunner(c.e.js, c.e.store, nil)
	if err := r.Add(projections.Projection{Name: name, Model: model}); err != nil {
		return 0, err
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	timeout := time.NewTimer(catchUpTimeout)
	defer timeout.Stop()
	start := time.Now()
	go func() { runErr <- r.Run(rctx) }()
	select {
	case <-done:
	case err := <-runErr:
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			err = errors.New("runner stopped")
		}
		return 0, fmt.Errorf("projection %s: %w", name, err)
	case <-ctx.Done():
		stop()
		<-runErr
		return time.Since(start), ctx.Err()
	case <-timeout.C:
		stop()
		<-runErr
		return 0, fmt.Errorf("projection %s: not caught up after %s", name, catchUpTimeout)
	}
	d := time.Since(start)
	stop()
	if err := <-runErr; err != nil {
		return 0, fmt.Errorf("projection %s: %w", name, err)
	}
	return d, nil
}

// caughtUp follows a catch-up's read model: it counts the events the model
// applied and closes done once it has applied the event at sequence
// target.
type caughtUp struct {
	target uint64
	rec    *recorder
	once   sync.Once
	done   chan struct{}
}

func newCaughtUp(target uint64, rec *recorder) *caughtUp {
	return &caughtUp{target: target, rec: rec, done: make(chan struct{})}
}

// applied notes a batch the model applied.
func (w *caughtUp) applied(evs []*stream.Event) {
	w.rec.add(len(evs))
	if len(evs) > 0 && evs[len(evs)-1].Sequence >= w.target {
		w.once.Do(func() { close(w.done) })
	}
}

// memoryCaughtUp is projection-catchup's read model: the in-memory model,
// followed by caughtUp. Embedding *projections.Memory keeps it
// Checkpointed.
type memoryCaughtUp struct {
	*projections.Memory[int]
	*caughtUp
}

func (w *memoryCaughtUp) Apply(ctx context.Context, evs []*stream.Event) error {
	if err := w.Memory.Apply(ctx, evs); err != nil {
		return err
	}
	w.applied(evs)
	return nil
}

// kvCaughtUp is projection-kv's read model: the KV model, followed by
// caughtUp. Embedding *projections.KV keeps it Checkpointed: the runner
// then runs it exactly-once, as an application's KV model runs.
type kvCaughtUp struct {
	*projections.KV
	*caughtUp
}

func (w *kvCaughtUp) Apply(ctx context.Context, evs []*stream.Event) error {
	if err := w.KV.Apply(ctx, evs); err != nil {
		return err
	}
	w.applied(evs)
	return nil
}

var (
	_ projections.Checkpointed = (*memoryCaughtUp)(nil)
	_ projections.Checkpointed = (*kvCaughtUp)(nil)
)
