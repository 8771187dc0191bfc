package aggregate_test

// Benchmarks of the repository beside the raw JetStream operations it is
// built on, with the conventions of stream/bench_test.go: one b.Loop, each
// iteration runs one operation of each kind (the order rotates, see step)
// against the same embedded server and times each on its own; times are
// medians over the timed iterations; each benchmark runs every kind once
// untimed first and takes at least 5 timed iterations. A ratio metric
// <esnats kind>/<raw kind> is esnats ops/s ÷ raw ops/s: 1.0 means as fast as
// raw JetStream, higher is better. The built-in ns/op is suppressed (it
// would be the sum of all kinds).
//
// The raw operations write and read the same wire format as esnats (the
// headers of docs/wire-format.md, the payload encoded once with the
// registry), so the difference is the repository's and the store's own work.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// aggBenchTimes times several kinds of operation run side by side (as
// benchTimes in stream/bench_test.go).
type aggBenchTimes struct {
	names []string
	d     [][]time.Duration // per kind, one sample per timed iteration
	n     int               // timed iterations
	warm  int               // untimed iterations
}

func newAggBenchTimes(names ...string) *aggBenchTimes {
	return &aggBenchTimes{names: names, d: make([][]time.Duration, len(names))}
}

// step runs each op once and times each. Which goes first rotates, and the
// direction alternates (k, k+1, ... then k, k-1, ...), so that over 2n
// iterations each kind runs right after each of its neighbours equally
// often: with 3 kinds, the raw kinds and the cached one follow the slow
// cache-off command (and the garbage it leaves) equally often.
func (t *aggBenchTimes) step(ops ...func()) {
	start, dir := (t.n/2)%len(ops), 1
	if t.n%2 == 1 {
		dir = len(ops) - 1
	}
	for i := range ops {
		k := (start + i*dir) % len(ops)
		start := time.Now()
		ops[k]()
		t.d[k] = append(t.d[k], time.Since(start))
	}
	t.n++
}

// loop runs each op once untimed, then b.Loop, then more iterations up to 5.
func (t *aggBenchTimes) loop(b *testing.B, ops ...func()) {
	for _, op := range ops {
		op()
	}
	t.warm++
	for b.Loop() {
		t.step(ops...)
	}
	for t.n < 5 {
		t.step(ops...)
	}
}

// total is the number of iterations run, timed or not.
func (t *aggBenchTimes) total() int { return t.n + t.warm }

// median returns kind k's median time per iteration in nanoseconds.
func (t *aggBenchTimes) median(k int) float64 {
	s := slices.Clone(t.d[k])
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return float64(m.Nanoseconds())
}

// report reports each kind's median time in unit (scale ns per unit) and,
// for each pair {esnats kind, raw kind}, the ratio esnats ops/s ÷ raw ops/s.
func (t *aggBenchTimes) report(b *testing.B, unit string, scale float64, pairs ...[2]int) {
	b.ReportMetric(0, "ns/op")
	for k, name := range t.names {
		b.ReportMetric(t.median(k)/scale, name+"-"+unit)
	}
	for _, p := range pairs {
		b.ReportMetric(t.median(p[1])/t.median(p[0]), t.names[p[0]]+"/"+t.names[p[1]])
	}
}

var benchSyncs = []embedded.SyncPolicy{embedded.SyncAlways, embedded.SyncServerDefault}

func benchStore(b *testing.B, mode embedded.SyncPolicy) (jetstream.JetStream, *stream.Store) {
	b.Helper()
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = mode })
	_, js := embedded.MustJetStream(b, srv)
	st, err := stream.NewStore(context.Background(), js, stream.Config{Name: "shop", Registry: registry()})
	if err != nil {
		b.Fatal(err)
	}
	return js, st
}

// benchWire is what the raw side needs to write an ItemAdded as esnats does.
type benchWire struct {
	typ, schema, ct string
	payload         []byte
}

func newBenchWire(b *testing.B, ev any) benchWire {
	b.Helper()
	reg := registry()
	typ, schema, payload, err := reg.Encode(ev)
	if err != nil {
		b.Fatal(err)
	}
	return benchWire{typ: typ, schema: strconv.Itoa(schema), ct: reg.Codec().ContentType(), payload: payload}
}

// msg builds one event message with exactly the headers esnats writes
// (docs/wire-format.md, without the optional ones) and the
// expected-last-subject-sequence check.
func (w benchWire) msg(subject string, version, expectSeq uint64) *nats.Msg {
	m := nats.NewMsg(subject)
	h := m.Header
	h[stream.HeaderEventID] = []string{nuid.Next()}
	h[stream.HeaderEventType] = []string{w.typ}
	h[stream.HeaderVersion] = []string{strconv.FormatUint(version, 10)}
	h[stream.HeaderTime] = []string{time.Now().UTC().Format(time.RFC3339Nano)}
	h[stream.HeaderContentType] = []string{w.ct}
	h[stream.HeaderSchema] = []string{w.schema}
	h[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(expectSeq, 10)}
	m.Data = w.payload
	return m
}

// hotNoCacheRun is how many commands the cache-off kind runs on one
// aggregate before it moves to a fresh one, so that its loads (a replay of
// the whole history, there being no cache) read 0 to 99 events however long
// the benchmark runs, instead of a history that grows with the iterations.
const hotNoCacheRun = 100

// BenchmarkHotAggregate runs sequential commands on one hot aggregate:
// Repository.Update adding one item with the cache on (cache: the default,
// no load per command after the first) and off (nocache: CacheSize -1, a
// load per command), beside raw js.PublishMsg of the same event with
// Nats-Msg-Id and Nats-Expected-Last-Subject-Sequence of the previous ack.
func BenchmarkHotAggregate(b *testing.B) {
	for _, mode := range benchSyncs {
		b.Run("sync="+mode.String(), func(b *testing.B) {
			js, es := benchStore(b, mode)
			ctx := context.Background()
			w := newBenchWire(b, ItemAdded{SKU: "a", Qty: 1})
			rawSubj, err := es.AggregateSubject(stream.Aggregate{Type: "cart", ID: "raw"})
			if err != nil {
				b.Fatal(err)
			}
			cacheSt, nocacheSt := &counting{EventStore: es}, &counting{EventStore: es}
			cacheRepo := newRepo(b, cacheSt)
			nocacheRepo := newRepo(b, nocacheSt, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 })
			add := func(c *Cart) error { return c.Add("a", 1) }

			var rawSeq, rawVer uint64
			raw := func() {
				ack, err := js.PublishMsg(ctx, w.msg(rawSubj, rawVer+1, rawSeq))
				if err != nil {
					b.Fatal(err)
				}
				rawSeq, rawVer = ack.Sequence, rawVer+1
			}
			cached := func() {
				if err := cacheRepo.Update(ctx, "cached", add); err != nil {
					b.Fatal(err)
				}
			}
			nocacheN := 0
			nocacheID := func(i int) string { return fmt.Sprintf("nocache-%d", i/hotNoCacheRun) }
			nocache := func() {
				if err := nocacheRepo.Update(ctx, nocacheID(nocacheN), add); err != nil {
					b.Fatal(err)
				}
				nocacheN++
			}

			t := newAggBenchTimes("raw", "cache", "nocache")
			t.loop(b, raw, cached, nocache)
			t.report(b, "µs/op", 1e3, [2]int{1, 0}, [2]int{2, 0})
			total := t.total()
			b.ReportMetric(float64(nocacheSt.events.Load())/float64(total), "nocache-events-read/op")

			// Every command landed once, in order; the raw events decode as
			// the repository's.
			if n := cacheSt.loads.Load(); n != 1 {
				b.Fatalf("cache: %d loads for %d commands, want 1", n, total)
			}
			if n := nocacheSt.loads.Load(); n != int64(total) {
				b.Fatalf("nocache: %d loads for %d commands, want %d", n, total, total)
			}
			check := newRepo(b, es, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 })
			for id, want := range map[string]int{"raw": total, "cached": total, nocacheID(total - 1): (total-1)%hotNoCacheRun + 1} {
				c, err := check.Load(ctx, id)
				if err != nil {
					b.Fatal(err)
				}
				if c.Version() != uint64(want) || c.Items["a"] != want {
					b.Fatalf("%s: version %d with %d items, want %d", id, c.Version(), c.Items["a"], want)
				}
			}
		})
	}
}

// loadSizes are the histories BenchmarkLoad loads.
var loadSizes = []int{10, 1000, 10_000}

// BenchmarkLoad loads aggregates of 10, 1,000 and 10,000 events with
// Repository.Load (CacheSize -1, so every load reads): without snapshots
// (esnats, beside raw: jetstreamext.GetBatch over the aggregate's subject
// until Nats-Num-Pending is 0, no decoding) and with KV snapshots every 100
// events (esnats-snap, beside raw-snap: a KV get of the snapshot, decoding
// its sequence, plus the batched get of the events after it). The snapshot
// of each aggregate is at its latest multiple of 100 before timing (the
// 10-event aggregate has none). events-read is per load, counted by a
// wrapper of the event store.
func BenchmarkLoad(b *testing.B) {
	js, es := benchStore(b, embedded.SyncServerDefault)
	ctx := context.Background()
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	if err != nil {
		b.Fatal(err)
	}
	bucket, err := js.KeyValue(ctx, snaps.Bucket())
	if err != nil {
		b.Fatal(err)
	}
	id := func(n int) string { return fmt.Sprintf("load-%d", n) }

	// Fill: commands of up to 100 events, the aggregates interleaved, with
	// snapshots on.
	fill := newRepo(b, es, func(c *aggregate.Config[*Cart]) { c.Snapshots = snaps; c.SnapshotEvery = 100 })
	start := time.Now()
	for done := 0; done < slices.Max(loadSizes); done += 100 {
		for _, n := range loadSizes {
			if done >= n {
				continue
			}
			err := fill.Update(ctx, id(n), func(c *Cart) error {
				for j := done; j < min(done+100, n); j++ {
					if err := c.Add(fmt.Sprintf("sku%d", j%37), 1); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	fill.Flush()
	b.Logf("fill: %d events in %s", 11_010, time.Since(start).Round(time.Millisecond))
	for _, n := range loadSizes {
		snap, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: id(n)})
		if err != nil {
			b.Fatal(err)
		}
		if want := uint64(n / 100 * 100); want == 0 && ok || want > 0 && (!ok || snap.Version != want) {
			b.Fatalf("%s: snapshot at version %d (stored: %v), want %d", id(n), snap.Version, ok, want)
		}
	}

	for _, n := range loadSizes {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			agg := stream.Aggregate{Type: "cart", ID: id(n)}
			subj, err := es.AggregateSubject(agg)
			if err != nil {
				b.Fatal(err)
			}
			key, err := kv.Key(agg)
			if err != nil {
				b.Fatal(err)
			}
			plainSt, snapSt := &counting{EventStore: es}, &counting{EventStore: es}
			plain := newRepo(b, plainSt, func(c *aggregate.Config[*Cart]) { c.CacheSize = -1 })
			withSnap := snapshotRepo(b, snapSt, snaps, 100) // CacheSize -1

			checkLoad := func(kind string, got, want int, err error) {
				if err != nil {
					b.Fatalf("%s %s: %v", kind, agg, err)
				}
				if got != want {
					b.Fatalf("%s %s: read %d events, want %d", kind, agg, got, want)
				}
			}
			raw := func() {
				got, err := benchGetBatch(ctx, js, es.Name(), subj, 1)
				checkLoad("raw", got, n, err)
			}
			rawSnap := func() {
				from := uint64(1)
				tail := n
				e, err := bucket.Get(ctx, key)
				switch {
				case errors.Is(err, jetstream.ErrKeyNotFound):
				case err != nil:
					b.Fatal(err)
				default:
					var env struct {
						Version uint64 `msgpack:"version"`
						Seq     uint64 `msgpack:"seq"`
					}
					if err := msgpack.Unmarshal(e.Value(), &env); err != nil {
						b.Fatal(err)
					}
					from, tail = env.Seq+1, n-int(env.Version)
				}
				got, err := benchGetBatch(ctx, js, es.Name(), subj, from)
				checkLoad("raw-snap", got, tail, err)
			}
			load := func(kind string, repo *aggregate.Repository[*Cart]) func() {
				return func() {
					c, err := repo.Load(ctx, agg.ID)
					if err != nil {
						b.Fatalf("%s %s: %v", kind, agg, err)
					}
					if c.Version() != uint64(n) || c.Adds != n {
						b.Fatalf("%s %s: version %d with %d adds, want %d", kind, agg, c.Version(), c.Adds, n)
					}
				}
			}
			t := newAggBenchTimes("raw", "esnats", "raw-snap", "esnats-snap")
			t.loop(b, raw, load("esnats", plain), rawSnap, load("esnats-snap", withSnap))
			t.report(b, "ms/load", 1e6, [2]int{1, 0}, [2]int{3, 2}, [2]int{3, 0})
			loads := float64(t.total())
			plainRead := float64(plainSt.events.Load()) / loads
			snapRead := float64(snapSt.events.Load()) / loads
			b.ReportMetric(plainRead, "esnats-events-read/load")
			b.ReportMetric(snapRead, "esnats-snap-events-read/load")
			if plainRead != float64(n) {
				b.Fatalf("esnats: read %.1f events per load, want %d", plainRead, n)
			}
			wantSnap := n // no snapshot below 100 events
			if n >= 100 {
				wantSnap = n % 100 // the events after the snapshot
			}
			if snapRead != float64(wantSnap) {
				b.Fatalf("esnats-snap: read %.1f events per load, want %d", snapRead, wantSnap)
			}
			if n == 10_000 && snapRead > 100 {
				b.Fatalf("esnats-snap: read %.1f events per load of 10,000, want <= 100", snapRead)
			}
		})
	}
}

// benchGetBatch reads subject's messages from seq with batched direct gets
// (1000 per round trip, as Store.Load) until Nats-Num-Pending is 0, and
// returns how many it read. No decoding.
func benchGetBatch(ctx context.Context, js jetstream.JetStream, streamName, subject string, seq uint64) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n := 0
	for {
		it, err := jetstreamext.GetBatch(ctx, js, streamName, 1000,
			jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(seq), jetstreamext.GetBatchMaxBytes(4<<20))
		if err != nil {
			return n, err
		}
		got := 0
		pending := uint64(0)
		for m, err := range it {
			if err != nil {
				if errors.Is(err, jetstreamext.ErrNoMessages) && n == 0 {
					return 0, nil
				}
				return n, err
			}
			got++
			seq = m.Sequence + 1
			if pending, err = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64); err != nil {
				return n, fmt.Errorf("sequence %d: bad Nats-Num-Pending: %w", m.Sequence, err)
			}
		}
		n += got
		if got == 0 {
			return n, fmt.Errorf("no answer from the server: %w", ctx.Err())
		}
		if pending == 0 {
			return n, nil
		}
	}
}
