package projections_test

// BenchmarkCatchUp measures how fast a projection catches up with a store
// of ESNATS_BENCH_EVENTS events (default 1,000,000; 100,000 with -short),
// from the start, beside the raw JetStream consumer it is built on, in the
// same process, against the same embedded server (fsync: server default)
// and store, in the same b.Loop (the order of the kinds rotates).
//
// The store is filled once per run (see catchUpFill): atomic AppendBatch
// calls of up to 1000 events, one each for 1000 carts, 4 in flight; n/10
// carts of 10 events, event i in cart i mod carts, SKU s<i mod 7>, quantity
// 1 + i mod 3 (the events of runner_test.go's expected).
//
// Kinds, every one reading all n events through a new durable pull consumer
// with the settings esnats uses (MaxAckPending 1000, 200 messages per pull,
// pull requests of 2.5s):
//
//   - raw: AckAll, no decoding, acknowledges every 100th message (and the
//     last, synchronously); filter: the stream's subjects ("shop.>").
//   - raw-pinned: raw on a pinned-client priority group, as esnats'
//     consumers are (ack-floor mode): the server then adds the pin id to
//     every delivery, which costs by itself; esnats/raw-pinned is what
//     esnats adds on top of that.
//   - raw-ack1: raw with AckExplicit, acknowledging every message
//     (consumer mode).
//   - raw-filter: raw with esnats' filter, SubjectFilter("") = "shop.*.*"
//     (consumer mode).
//   - raw-kv: raw, plus decoding and, every 100 messages, a KV put of each
//     key the batch changed (16 in flight) and of a checkpoint key, before
//     the acknowledgement: the KV writes a hand-written projector makes.
//   - raw-sql: raw, plus decoding and the same upserts as the SQL read model
//     in one transaction per 100 messages (no checkpoint row).
//   - esnats: the projection (or consumer) under test, default batch size
//     100: a Runner until the model holds the store's last event.
//
// Modes (sub-benchmarks): ack-floor (an idempotent in-memory model, last
// SKU per cart, not Checkpointed), kv-sku-memory and kv-sku-file (KV read
// model, items per SKU: 7 keys, bucket in memory or in files),
// kv-cart-memory (one key per cart: n/10 keys), sql (SQLite file, WAL,
// synchronous NORMAL, one upsert per event, statement prepared once per
// batch), consumer (consumers.Consumer with a batch handler that counts).
//
// Metrics: <kind>-events/s (n ÷ median time of the kind, from creating its
// consumer to its last event applied and acknowledged) and
// esnats/<kind> = esnats events/s ÷ <kind> events/s; fill-s is the fill's
// time; esnats-events/batch the mean batch the model received;
// esnats-apply-share the share of the esnats kind's time spent in the
// model's Apply (the rest: the consumer and the runner); for the KV modes,
// <kind>-kv-writes/event the bucket's writes per event. kv-cart-memory is
// the longest mode (its raw-kv kind writes 100 keys per batch, 16 at a
// time). Every kind is checked: the model equals the expected one, the
// consumer's acknowledgement floor is the store's last sequence. Unlike the
// stream benchmarks there is no untimed run of each kind and no minimum of
// 5 samples (a sample is a full catch-up); one untimed raw catch-up after
// the fill warms the server.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// catchUpEvents is the default size of BenchmarkCatchUp's store.
const catchUpEvents = 1_000_000

const (
	catchUpFillBatch   = 1000 // events per AppendBatch of the fill
	catchUpFillWriters = 4    // AppendBatch calls in flight
	catchUpAckEvery    = 100  // raw kinds acknowledge every 100th message
	catchUpTimeout     = 15 * time.Minute
)

// catchUp is BenchmarkCatchUp's store and what its models must hold.
type catchUp struct {
	js       jetstream.JetStream
	st       *stream.Store
	n        int
	carts    []string          // cart ids
	lastSeq  uint64            // the store's last sequence
	subjects string            // the stream's subjects
	took     time.Duration     // the fill's time
	wantSKU  map[string]int    // items per SKU
	wantCart map[string]int    // items per cart
	wantLast map[string]string // last SKU per cart
	seq      atomic.Int64      // for unique names
	// batchSize is the mean events per batch (x1000) of the last esnats
	// run.
	batchSize atomic.Int64
	// applyShare is the share (x1000) of the last esnats run's time spent
	// in the model's Apply.
	applyShare atomic.Int64
}

func catchUpSize(b *testing.B) int {
	n := catchUpEvents
	if testing.Short() {
		n = 100_000
	}
	if s := os.Getenv("ESNATS_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 10 {
			b.Fatalf("ESNATS_BENCH_EVENTS=%q: want a number of events >= 10", s)
		}
		n = v
	}
	return n / 10 * 10
}

func catchUpItem(i int) ItemAdded { return ItemAdded{SKU: fmt.Sprintf("s%d", i%7), Qty: 1 + i%3} }

// catchUpFill starts a server (fsync: server default) and fills a store
// for the life of b, round after round over all carts (event i goes to
// cart i mod carts), each round in atomic batches of one event per cart
// with the expected-revision check; it checks the stream's message count.
func catchUpFill(b *testing.B) *catchUp {
	b.Helper()
	n := catchUpSize(b)
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = embedded.SyncServerDefault })
	_, js := embedded.MustJetStream(b, srv)
	ctx := context.Background()
	st, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: runnerRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	f := &catchUp{js: js, st: st, n: n, carts: make([]string, n/10), wantSKU: expected(n),
		wantCart: map[string]int{}, wantLast: map[string]string{}}
	for c := range f.carts {
		f.carts[c] = fmt.Sprintf("c%07d", c)
	}
	carts := len(f.carts)
	per := min(catchUpFillBatch, carts) // a divisor of carts: no cart twice in a batch
	for carts%per != 0 {
		per--
	}
	for i := range n {
		c, it := f.carts[i%carts], catchUpItem(i)
		f.wantCart[c] += it.Qty
		f.wantLast[c] = it.SKU
	}

	revs := make([]stream.Revision, carts)
	start := time.Now()
	for round := range n / carts {
		jobs := make(chan int)
		errs := make(chan error, catchUpFillWriters)
		var wg sync.WaitGroup
		for range catchUpFillWriters {
			wg.Go(func() {
				reqs := make([]stream.AppendRequest, per)
				for first := range jobs {
					for j := range reqs {
						c := first + j
						reqs[j] = stream.AppendRequest{
							Aggregate: stream.Aggregate{Type: "cart", ID: f.carts[c]},
							Expect:    stream.ExpectRevision(revs[c]),
							Events:    []stream.EventData{{Data: catchUpItem(round*carts + c)}},
						}
					}
					res, err := st.AppendBatch(ctx, reqs)
					if err != nil {
						errs <- fmt.Errorf("fill: round %d, carts %d-%d: %w", round, first, first+per-1, err)
						for range jobs { // drain
						}
						return
					}
					for j, r := range res {
						revs[first+j] = r.Last
					}
				}
			})
		}
		for first := 0; first < carts; first += per {
			jobs <- first
		}
		close(jobs)
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	f.took = time.Since(start)
	s, err := js.Stream(ctx, st.Name())
	if err != nil {
		b.Fatal(err)
	}
	state := s.CachedInfo().State
	if state.Msgs != uint64(n) || state.NumSubjects != uint64(carts) {
		b.Fatalf("fill: stream holds %d events on %d subjects, want %d on %d", state.Msgs, state.NumSubjects, n, carts)
	}
	f.lastSeq = state.LastSeq
	f.subjects = s.CachedInfo().Config.Subjects[0]
	b.Logf("fill: %d events over %d carts, AppendBatch of %d, %d in flight, in %s: %.0f events/s, %d MiB stored",
		n, carts, per, catchUpFillWriters, f.took.Round(time.Millisecond), float64(n)/f.took.Seconds(), state.Bytes>>20)
	d := f.raw(b, rawOpts{}, nil) // warm-up, untimed
	b.Logf("warm-up raw catch-up: %.0f events/s", float64(n)/d.Seconds())
	return f
}

func (f *catchUp) name(kind string) string {
	return fmt.Sprintf("%s-%d", kind, f.seq.Add(1))
}

// rawOpts are the variants of the raw consumer.
type rawOpts struct {
	ackEach bool // AckExplicit and an acknowledgement of every message
	// esnatsFilter filters on the store's SubjectFilter("") ("shop.*.*"),
	// as esnats' consumers do, rather than on the stream's own subjects
	// ("shop.>").
	esnatsFilter bool
	// pinned makes the consumer a pinned-client priority group, as
	// esnats' consumers are (one active process, fail-over): the server
	// then adds the pin id to every delivery's headers.
	pinned bool
}

// raw consumes every event through a new durable pull consumer: AckAll and
// an acknowledgement of every 100th message, or AckExplicit and an
// acknowledgement of each (o.ackEach). handle, if set, sees each message
// before it is acknowledged, flush set on each message that is
// acknowledged. It returns the time from creating the consumer to the last
// message's acknowledgement confirmed, and checks the consumer's final
// state.
func (f *catchUp) raw(b *testing.B, o rawOpts, handle func(m jetstream.Msg, flush bool) error) time.Duration {
	b.Helper()
	ctx := context.Background()
	name := f.name("raw")
	policy := jetstream.AckAllPolicy
	if o.ackEach {
		policy = jetstream.AckExplicitPolicy
	}
	filter := f.subjects
	if o.esnatsFilter {
		filter = f.st.SubjectFilter("")
	}
	start := time.Now()
	cfg := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     policy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: filter,
		AckWait:       consumers.DefaultAckWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
	}
	pull := []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(2 * consumers.DefaultBatchSize), jetstream.PullExpiry(consumers.DefaultPinnedTTL / 2)}
	if o.pinned {
		cfg.PriorityPolicy = jetstream.PriorityPolicyPinned
		cfg.PriorityGroups = []string{"raw"}
		cfg.PinnedTTL = consumers.DefaultPinnedTTL
		pull = append(pull, jetstream.PullPriorityGroup("raw"))
	}
	cons, err := f.js.CreateConsumer(ctx, f.st.Name(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	last := make(chan jetstream.Msg, 1)
	failed := make(chan error, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		n++
		isLast := n == f.n
		flush := isLast || n%catchUpAckEvery == 0
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
		case o.ackEach || flush:
			_ = m.Ack()
		}
	}, pull...)
	if err != nil {
		b.Fatal(err)
	}
	select {
	case m := <-last:
		if err := m.DoubleAck(ctx); err != nil {
			b.Fatalf("%s: last acknowledgement: %v", name, err)
		}
	case err := <-failed:
		b.Fatalf("%s: %v", name, err)
	case <-time.After(catchUpTimeout):
		b.Fatalf("%s: not caught up after %s", name, catchUpTimeout)
	}
	d := time.Since(start)
	cc.Stop()
	info, err := cons.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if info.AckFloor.Stream != f.lastSeq || info.NumPending != 0 || info.NumRedelivered != 0 {
		b.Fatalf("%s: ack floor %d (want %d), %d pending, %d redelivered", name, info.AckFloor.Stream, f.lastSeq, info.NumPending, info.NumRedelivered)
	}
	if err := f.js.DeleteConsumer(ctx, f.st.Name(), name); err != nil {
		b.Fatal(err)
	}
	return d
}

// decode decodes a raw message's payload with the store's registry.
func (f *catchUp) decode(m jetstream.Msg) (ItemAdded, error) {
	h := m.Headers()
	schema, err := strconv.Atoi(h.Get(stream.HeaderSchema))
	if err != nil {
		return ItemAdded{}, err
	}
	v, err := f.st.Registry().Decode(h.Get(stream.HeaderEventType), schema, h.Get(stream.HeaderContentType), m.Data())
	if err != nil {
		return ItemAdded{}, err
	}
	it, ok := v.(ItemAdded)
	if !ok {
		return ItemAdded{}, fmt.Errorf("decoded %T", v)
	}
	return it, nil
}

// caughtUp wraps a read model and closes done once it has applied the
// event at sequence target; it counts the batches.
type caughtUp struct {
	projections.ReadModel
	target  uint64
	batches atomic.Int64
	events  atomic.Int64
	applied atomic.Int64 // nanoseconds in the model's Apply
	once    sync.Once
	done    chan struct{}
}

func (w *caughtUp) Apply(ctx context.Context, evs []*stream.Event) error {
	start := time.Now()
	err := w.ReadModel.Apply(ctx, evs)
	w.applied.Add(int64(time.Since(start)))
	if err != nil {
		return err
	}
	w.batches.Add(1)
	w.events.Add(int64(len(evs)))
	if len(evs) > 0 && evs[len(evs)-1].Sequence >= w.target {
		w.once.Do(func() { close(w.done) })
	}
	return nil
}

// caughtUpCP is caughtUp for a Checkpointed model (the runner sees the
// interface, so exactly-once mode).
type caughtUpCP struct{ *caughtUp }

func (w caughtUpCP) Checkpoint(ctx context.Context) (uint64, error) {
	return w.ReadModel.(projections.Checkpointed).Checkpoint(ctx)
}

// project runs model in a Runner (a new projection, so a new durable
// consumer) until it has applied the store's last event, and returns the
// time from starting the runner. Then (untimed) it waits for the position
// to be the last sequence with no lag, stops the runner and deletes the
// consumer.
func (f *catchUp) project(b *testing.B, model projections.ReadModel) time.Duration {
	b.Helper()
	ctx := context.Background()
	name := f.name("esnats")
	w := &caughtUp{ReadModel: model, target: f.lastSeq, done: make(chan struct{})}
	var m projections.ReadModel = w
	if _, ok := model.(projections.Checkpointed); ok {
		m = caughtUpCP{w}
	}
	r := projections.NewRunner(f.js, f.st, nil)
	if err := r.Add(projections.Projection{Name: name, Model: m}); err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	start := time.Now()
	go func() { runErr <- r.Run(rctx) }()
	select {
	case <-w.done:
	case err := <-runErr:
		b.Fatalf("%s: runner stopped: %v", name, err)
	case <-time.After(catchUpTimeout):
		b.Fatalf("%s: not caught up after %s", name, catchUpTimeout)
	}
	d := time.Since(start)
	var st projections.Status
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		st, err = r.StatusOf(ctx, name)
		if err == nil && st.Lag == 0 && st.Position == f.lastSeq {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: status %+v (%v), want position %d and no lag", name, st, err, f.lastSeq)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-runErr; err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	if err := f.js.DeleteConsumer(ctx, f.st.Name(), name); err != nil {
		b.Fatal(err)
	}
	if ev := w.events.Load(); ev < int64(f.n) {
		b.Fatalf("%s: %d events applied, want %d", name, ev, f.n)
	}
	f.batchSize.Store(w.events.Load() * 1000 / max(w.batches.Load(), 1))
	f.applyShare.Store(w.applied.Load() * 1000 / int64(d))
	return d
}

// catchUpKinds times kinds of catch-up side by side (see BenchmarkCatchUp).
type catchUpKinds struct {
	names []string
	d     [][]time.Duration
	n     int
}

// loop runs each op once per b.Loop iteration, starting with a different
// one each time (offset rotates the first iteration's order too).
func (k *catchUpKinds) loop(b *testing.B, offset int, ops ...func() time.Duration) {
	k.d = make([][]time.Duration, len(ops))
	for b.Loop() {
		for i := range ops {
			j := (k.n + offset + i) % len(ops)
			k.d[j] = append(k.d[j], ops[j]())
		}
		k.n++
	}
}

// report reports each kind's events/s and esnats' ratio to the others; the
// last kind is esnats.
func (k *catchUpKinds) report(b *testing.B, f *catchUp) {
	b.ReportMetric(0, "ns/op")
	rates := make([]float64, len(k.d))
	for i, d := range k.d {
		s := slices.Clone(d)
		slices.Sort(s)
		rates[i] = float64(f.n) / s[len(s)/2].Seconds()
		b.ReportMetric(rates[i], k.names[i]+"-events/s")
	}
	es := rates[len(rates)-1]
	for i := range len(rates) - 1 {
		b.ReportMetric(es/rates[i], "esnats/"+k.names[i])
	}
	b.ReportMetric(f.took.Seconds(), "fill-s")
	if bs := f.batchSize.Load(); bs > 0 {
		b.ReportMetric(float64(bs)/1000, "esnats-events/batch")
	}
	if as := f.applyShare.Swap(0); as > 0 {
		b.ReportMetric(float64(as)/1000, "esnats-apply-share")
	}
}

func BenchmarkCatchUp(b *testing.B) {
	f := catchUpFill(b)
	ctx := context.Background()
	raw := func() time.Duration { return f.raw(b, rawOpts{}, nil) }

	b.Run("ack-floor", func(b *testing.B) {
		esnats := func() time.Duration {
			m := &lastSKU{m: map[string]string{}}
			d := f.project(b, m)
			if !maps.Equal(m.m, f.wantLast) {
				b.Fatalf("ack-floor: model holds %d carts, want %d, or a wrong last SKU", len(m.m), len(f.wantLast))
			}
			if m.n != f.n {
				b.Logf("ack-floor: %d events applied for %d (delivered again)", m.n, f.n)
			}
			return d
		}
		// raw-pinned: what the server's pinned-client delivery costs by
		// itself, the part of the gap to raw that is not esnats' own.
		rawPinned := func() time.Duration { return f.raw(b, rawOpts{pinned: true}, nil) }
		k := catchUpKinds{names: []string{"raw", "raw-pinned", "esnats"}}
		k.loop(b, 0, raw, rawPinned, esnats)
		k.report(b, f)
	})

	for _, c := range []struct {
		name    string
		memory  bool
		perCart bool
	}{
		{"kv-sku-memory", true, false},
		{"kv-sku-file", false, false},
		{"kv-cart-memory", true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			want := f.wantSKU
			if c.perCart {
				want = f.wantCart
			}
			bucket := func() jetstream.KeyValue {
				storage := jetstream.FileStorage
				if c.memory {
					storage = jetstream.MemoryStorage
				}
				kv, err := f.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: f.name("raw"), Storage: storage})
				if err != nil {
					b.Fatal(err)
				}
				return kv
			}
			// check compares a bucket's values (decimal; the raw kind's
			// checkpoint key left out) with want, and deletes the bucket;
			// it returns the number of writes to the bucket.
			check := func(kind, name string, values map[string][]byte) uint64 {
				got := make(map[string]int, len(values))
				for k, v := range values {
					if k != "checkpoint" {
						got[k], _ = strconv.Atoi(string(v))
					}
				}
				if !maps.Equal(got, want) {
					b.Fatalf("%s: bucket holds %d keys, want %d, or a wrong count", kind, len(got), len(want))
				}
				s, err := f.js.Stream(ctx, "KV_"+name)
				if err != nil {
					b.Fatal(err)
				}
				writes := s.CachedInfo().State.LastSeq
				if err := f.js.DeleteKeyValue(ctx, name); err != nil {
					b.Fatal(err)
				}
				return writes
			}
			var rawWrites, esWrites uint64
			rawKV := func() time.Duration {
				kv := bucket()
				tally := map[string]int{}
				touched := map[string]bool{}
				put := func(key string, value []byte) error {
					_, err := kv.Put(ctx, key, value)
					return err
				}
				d := f.raw(b, rawOpts{}, func(m jetstream.Msg, flush bool) error {
					it, err := f.decode(m)
					if err != nil {
						return err
					}
					key := it.SKU
					if c.perCart {
						key = m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
					}
					tally[key] += it.Qty
					touched[key] = true
					if !flush {
						return nil
					}
					md, err := m.Metadata()
					if err != nil {
						return err
					}
					if err := putAll(touched, func(key string) error { return put(key, []byte(strconv.Itoa(tally[key]))) }); err != nil {
						return err
					}
					clear(touched)
					return put("checkpoint", []byte(strconv.FormatUint(md.Sequence.Stream, 10)))
				})
				rawWrites = check("raw-kv", kv.Bucket(), readBucket(b, kv))
				return d
			}
			esnats := func() time.Duration {
				name := f.name("esnats")
				m, err := projections.NewKV(ctx, f.js, projections.KVConfig{Bucket: name, Memory: c.memory},
					func(ctx context.Context, tx *projections.KVBatch, ev *stream.Event) error {
						it := ev.Data.(ItemAdded)
						key := it.SKU
						if c.perCart {
							key = ev.Aggregate.ID
						}
						old, _, err := tx.Get(key)
						if err != nil {
							return err
						}
						n, _ := strconv.Atoi(string(old))
						tx.Put(key, []byte(strconv.Itoa(n+it.Qty)))
						return nil
					})
				if err != nil {
					b.Fatal(err)
				}
				d := f.project(b, m)
				all, err := m.All(ctx)
				if err != nil {
					b.Fatal(err)
				}
				esWrites = check("esnats", name, all)
				return d
			}
			k := catchUpKinds{names: []string{"raw", "raw-kv", "esnats"}}
			k.loop(b, 1, raw, rawKV, esnats)
			k.report(b, f)
			b.ReportMetric(float64(rawWrites)/float64(f.n), "raw-kv-writes/event")
			b.ReportMetric(float64(esWrites)/float64(f.n), "esnats-kv-writes/event")
		})
	}

	b.Run("sql", func(b *testing.B) {
		const upsert = "INSERT INTO items (sku, qty) VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET qty = qty + excluded.qty"
		dir := b.TempDir()
		openDB := func(name string) *sql.DB {
			db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, name+".db")+
				"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_txlock=immediate")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := db.Exec("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)"); err != nil {
				b.Fatal(err)
			}
			return db
		}
		check := func(kind string, db *sql.DB) {
			defer db.Close()
			rows, err := db.Query("SELECT sku, qty FROM items")
			if err != nil {
				b.Fatal(err)
			}
			got := map[string]int{}
			for rows.Next() {
				var sku string
				var qty int
				if err := rows.Scan(&sku, &qty); err != nil {
					b.Fatal(err)
				}
				got[sku] = qty
			}
			if err := rows.Err(); err != nil {
				b.Fatal(err)
			}
			if !maps.Equal(got, f.wantSKU) {
				b.Fatalf("%s: table holds %v, want %v", kind, got, f.wantSKU)
			}
		}
		rawSQL := func() time.Duration {
			db := openDB(f.name("raw"))
			var (
				tx   *sql.Tx
				stmt *sql.Stmt
			)
			d := f.raw(b, rawOpts{}, func(m jetstream.Msg, flush bool) error {
				it, err := f.decode(m)
				if err != nil {
					return err
				}
				if tx == nil {
					if tx, err = db.BeginTx(ctx, nil); err != nil {
						return err
					}
					if stmt, err = tx.PrepareContext(ctx, upsert); err != nil {
						return err
					}
				}
				if _, err := stmt.ExecContext(ctx, it.SKU, it.Qty); err != nil {
					return err
				}
				if !flush {
					return nil
				}
				err = tx.Commit()
				tx = nil
				return err
			})
			check("raw-sql", db)
			return d
		}
		esnats := func() time.Duration {
			name := f.name("esnats")
			db := openDB(name)
			var (
				curTx *sql.Tx
				stmt  *sql.Stmt
			)
			m, err := projections.NewSQL(ctx, db, name, func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
				if tx != curTx { // the batch's first event: prepare once per transaction
					st, err := tx.PrepareContext(ctx, upsert)
					if err != nil {
						return err
					}
					curTx, stmt = tx, st // closed with the transaction
				}
				it := ev.Data.(ItemAdded)
				_, err := stmt.ExecContext(ctx, it.SKU, it.Qty)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			d := f.project(b, m)
			check("esnats", db)
			return d
		}
		k := catchUpKinds{names: []string{"raw", "raw-sql", "esnats"}}
		k.loop(b, 2, raw, rawSQL, esnats)
		k.report(b, f)
	})

	b.Run("consumer", func(b *testing.B) {
		rawAck1 := func() time.Duration { return f.raw(b, rawOpts{ackEach: true}, nil) }
		rawFilter := func() time.Duration { return f.raw(b, rawOpts{esnatsFilter: true}, nil) }
		esnats := func() time.Duration {
			name := f.name("esnats")
			c, err := consumers.New(f.js, f.st, consumers.Config{Name: name})
			if err != nil {
				b.Fatal(err)
			}
			var events, batches atomic.Int64
			done := make(chan struct{})
			var once sync.Once
			c.HandleBatch(func(_ context.Context, evs []*stream.Event) error {
				batches.Add(1)
				if events.Add(int64(len(evs))) >= int64(f.n) && evs[len(evs)-1].Sequence == f.lastSeq {
					once.Do(func() { close(done) })
				}
				return nil
			})
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			runErr := make(chan error, 1)
			start := time.Now()
			go func() { runErr <- c.Run(cctx) }()
			select {
			case <-done:
			case err := <-runErr:
				b.Fatalf("consumer stopped: %v", err)
			case <-time.After(catchUpTimeout):
				b.Fatalf("consumer: not caught up after %s", catchUpTimeout)
			}
			d := time.Since(start)
			cancel()
			if err := <-runErr; err != nil {
				b.Fatal(err)
			}
			st, err := c.Status(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if st.Position != f.lastSeq || st.Lag != 0 || events.Load() != int64(f.n) {
				b.Fatalf("consumer: %+v after %d events, want position %d, no lag, %d events", st, events.Load(), f.lastSeq, f.n)
			}
			if err := f.js.DeleteConsumer(ctx, f.st.Name(), name); err != nil {
				b.Fatal(err)
			}
			f.batchSize.Store(events.Load() * 1000 / max(batches.Load(), 1))
			return d
		}
		k := catchUpKinds{names: []string{"raw-ack1", "raw", "raw-filter", "esnats"}}
		k.loop(b, 0, rawAck1, raw, rawFilter, esnats)
		k.report(b, f)
	})
}

// BenchmarkKVApply measures the KV read model's own writes, without a
// consumer: 20,000 events in batches of 100 (items per key, the apply
// function of BenchmarkCatchUp's KV modes) applied to a new in-memory
// bucket, beside the writes a hand-written projector makes for the same
// batches, in the same process, against the same embedded server, in the
// same b.Loop (the order of the kinds rotates).
//
// Kinds: raw (per batch, a KV put of each key the batch changed, 16 in
// flight, then of a checkpoint key: BenchmarkCatchUp's raw-kv), esnats (the
// default cache), esnats-nocache (KVConfig.CacheBytes -1: every batch reads
// the keys it touches). Sub-benchmarks: 7 keys (7 writes per batch) and 100
// keys (every event of a batch on its own key). Metrics: <kind>-events/s
// (20,000 ÷ the median time) and <kind>/raw.
func BenchmarkKVApply(b *testing.B) {
	const events, batch = 20_000, 100
	ctx := context.Background()
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = embedded.SyncServerDefault })
	_, js := embedded.MustJetStream(b, srv)
	var seq atomic.Int64
	bucket := func() string { return fmt.Sprint("kvapply-", seq.Add(1)) }
	apply := func(ctx context.Context, tx *projections.KVBatch, ev *stream.Event) error {
		it := ev.Data.(ItemAdded)
		old, _, err := tx.Get(it.SKU)
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(string(old))
		tx.Put(it.SKU, []byte(strconv.Itoa(n+it.Qty)))
		return nil
	}
	for _, keys := range []int{7, 100} {
		b.Run(fmt.Sprint(keys, "-keys"), func(b *testing.B) {
			evs := make([]*stream.Event, events)
			want := map[string]int{}
			for i := range evs {
				it := ItemAdded{SKU: fmt.Sprintf("s%d", i%keys), Qty: 1 + i%3}
				evs[i] = &stream.Event{Type: "item-added", Sequence: uint64(i + 1), Data: it}
				want[it.SKU] += it.Qty
			}
			check := func(kind string, got map[string][]byte) {
				counts := map[string]int{}
				for k, v := range got {
					if k != "checkpoint" {
						counts[k], _ = strconv.Atoi(string(v))
					}
				}
				if !maps.Equal(counts, want) {
					b.Fatalf("%s: bucket holds %d keys, want %d, or a wrong count", kind, len(counts), len(want))
				}
			}
			raw := func() time.Duration {
				kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket(), Storage: jetstream.MemoryStorage})
				if err != nil {
					b.Fatal(err)
				}
				tally := map[string]int{}
				touched := map[string]bool{}
				start := time.Now()
				for i, ev := range evs {
					it := ev.Data.(ItemAdded)
					tally[it.SKU] += it.Qty
					touched[it.SKU] = true
					if (i+1)%batch != 0 {
						continue
					}
					if err := putAll(touched, func(key string) error {
						_, err := kv.Put(ctx, key, []byte(strconv.Itoa(tally[key])))
						return err
					}); err != nil {
						b.Fatal(err)
					}
					clear(touched)
					if _, err := kv.Put(ctx, "checkpoint", []byte(strconv.FormatUint(ev.Sequence, 10))); err != nil {
						b.Fatal(err)
					}
				}
				d := time.Since(start)
				check("raw", readBucket(b, kv))
				if err := js.DeleteKeyValue(ctx, kv.Bucket()); err != nil {
					b.Fatal(err)
				}
				return d
			}
			model := func(cacheBytes int64) func() time.Duration {
				return func() time.Duration {
					name := bucket()
					m, err := projections.NewKV(ctx, js, projections.KVConfig{Bucket: name, Memory: true, CacheBytes: cacheBytes}, apply)
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					for i := 0; i < len(evs); i += batch {
						if err := m.Apply(ctx, evs[i:i+batch]); err != nil {
							b.Fatal(err)
						}
					}
					d := time.Since(start)
					all, err := m.All(ctx)
					if err != nil {
						b.Fatal(err)
					}
					check("esnats", all)
					if err := js.DeleteKeyValue(ctx, name); err != nil {
						b.Fatal(err)
					}
					return d
				}
			}
			names := []string{"raw", "esnats", "esnats-nocache"}
			ops := []func() time.Duration{raw, model(0), model(-1)}
			d := make([][]time.Duration, len(ops))
			n := 0
			for b.Loop() {
				for i := range ops {
					j := (n + i) % len(ops)
					d[j] = append(d[j], ops[j]())
				}
				n++
			}
			b.ReportMetric(0, "ns/op")
			rates := make([]float64, len(ops))
			for i := range ops {
				s := slices.Clone(d[i])
				slices.Sort(s)
				rates[i] = float64(events) / s[len(s)/2].Seconds()
				b.ReportMetric(rates[i], names[i]+"-events/s")
				if i > 0 {
					b.ReportMetric(rates[i]/rates[0], names[i]+"/raw")
				}
			}
		})
	}
}

// putAll calls put for every key, 16 at a time (as the KV read model
// writes), and returns the first error.
func putAll(keys map[string]bool, put func(key string) error) error {
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 16)
		mu    sync.Mutex
		first error
	)
	for key := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := put(key); err != nil {
				mu.Lock()
				first = errors.Join(first, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// readBucket returns every value of kv, read with one watcher.
func readBucket(b *testing.B, kv jetstream.KeyValue) map[string][]byte {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			b.Fatalf("reading bucket %s: %v", kv.Bucket(), ctx.Err())
		case e := <-w.Updates():
			if e == nil {
				return out
			}
			out[e.Key()] = e.Value()
		}
	}
}
