package stream_test

// Benchmarks of the JetStream event store (make bench). Each one runs the raw
// JetStream operation esnats is built on beside the esnats operation, in the
// same process, against the same embedded server and stream, in the same
// b.Loop: every iteration runs one operation of each kind (the order rotates
// from one iteration to the next) and times each on its own, so all kinds see
// the same machine load, stream size and server caches.
//
// The ratio metric, esnats/<baseline>, is
//
//	esnats ops/s ÷ baseline ops/s  (= baseline time per op ÷ esnats time per op)
//
// so 1.0 means as fast as raw JetStream, and higher is better.
//
// Metrics: <kind>-ns/op (or ms/batch, ms/load, events/s) for each kind and
// the ratios. Times are medians over the timed iterations (rates derive from
// them): the machine is shared, and a pause (another process, the garbage
// collector working through the in-process server's heap) lands on whichever
// operation happens to run, which makes means swing by 2x from run to run.
// Each benchmark runs every kind once untimed first, and takes at least 5
// timed iterations even past the bench time. The built-in ns/op is
// suppressed because it would be the sum of all kinds; B/op and allocs/op
// are per iteration and cover all kinds and the in-process server.
//
// The raw operations publish the same wire format as esnats (the headers of
// docs/wire-format.md, the payload encoded once with the registry), so the
// difference is esnats' own work: validation, encoding, ids, settling the
// outcome, decoding. Appends run under the server's default fsync
// (sync=server-default, every 2 minutes) and under fsync on every write
// (sync=always, what esnats' embedded server uses by default).
//
// BenchmarkLoad fills a store of ESNATS_BENCH_EVENTS events (default
// 1,000,000 over 100,000 aggregates; 100,000 with -short) once per run, see
// benchfill_test.go.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// benchEvent is the benchmark payload: about 100 bytes of msgpack.
type benchEvent struct {
	Cart  string `json:"cart"`
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Price int64  `json:"price"`
	Note  string `json:"note"`
}

var benchPayload = benchEvent{
	Cart:  "cart-0000042",
	SKU:   "SKU-12345-XL-BLUE",
	Qty:   3,
	Price: 129900,
	Note:  "gift wrap please, deliver after 6pm",
}

var benchSyncModes = []embedded.SyncPolicy{embedded.SyncServerDefault, embedded.SyncAlways}

// benchEnv is one store on one server, and what the raw side needs to write
// the same wire format.
type benchEnv struct {
	js      jetstream.JetStream
	st      *stream.Store
	reg     *stream.Registry
	typ     string // event type name of benchEvent
	schema  string
	payload []byte // benchPayload, encoded once
}

func benchServerJS(b *testing.B, mode embedded.SyncPolicy) jetstream.JetStream {
	b.Helper()
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = mode })
	_, js := embedded.MustJetStream(b, srv)
	return js
}

func benchClusterJS(b *testing.B, mode embedded.SyncPolicy) jetstream.JetStream {
	b.Helper()
	c := embedded.RunCluster(b, func(o *embedded.ClusterOptions) { o.Sync = mode })
	_, js := embedded.MustJetStream(b, c)
	return js
}

func newBenchEnv(b *testing.B, js jetstream.JetStream, mod func(*stream.Config)) *benchEnv {
	b.Helper()
	reg := stream.NewRegistry()
	if err := stream.Register[benchEvent](reg, "ItemAdded"); err != nil {
		b.Fatal(err)
	}
	cfg := stream.Config{Name: "bench", Registry: reg}
	if mod != nil {
		mod(&cfg)
	}
	st, err := stream.NewStore(context.Background(), js, cfg)
	if err != nil {
		b.Fatal(err)
	}
	typ, schema, payload, err := reg.Encode(benchPayload)
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{js: js, st: st, reg: reg, typ: typ, schema: strconv.Itoa(schema), payload: payload}
}

func (e *benchEnv) subject(b *testing.B, agg stream.Aggregate) string {
	b.Helper()
	s, err := e.st.AggregateSubject(agg)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// rawMsg builds one event message with exactly the headers esnats writes
// (wire.go encodeEvent, without the optional ones); now is the RFC 3339
// time stamp.
func (e *benchEnv) rawMsg(subject string, version uint64, now string) *nats.Msg {
	m := nats.NewMsg(subject)
	h := m.Header
	h[stream.HeaderEventID] = []string{nuid.Next()}
	h[stream.HeaderEventType] = []string{e.typ}
	h[stream.HeaderVersion] = []string{strconv.FormatUint(version, 10)}
	h[stream.HeaderTime] = []string{now}
	h[stream.HeaderContentType] = []string{stream.ContentTypeMsgpack}
	h[stream.HeaderSchema] = []string{e.schema}
	m.Data = e.payload
	return m
}

func benchNow() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// checkLast fails b unless the aggregate's last event has version want.
func (e *benchEnv) checkLast(b *testing.B, agg stream.Aggregate, want uint64) {
	b.Helper()
	rev, err := e.st.LastRevision(context.Background(), agg)
	if err != nil {
		b.Fatal(err)
	}
	if rev.Version != want {
		b.Fatalf("%s: last version %d, want %d", agg, rev.Version, want)
	}
}

// benchTimes times several kinds of operation run side by side.
type benchTimes struct {
	names []string
	d     [][]time.Duration // per kind, one sample per timed iteration
	n     int               // timed iterations
	warm  int               // untimed iterations
}

func newBenchTimes(names ...string) *benchTimes {
	return &benchTimes{names: names, d: make([][]time.Duration, len(names))}
}

// step runs each op once, rotating which goes first, and times each.
func (t *benchTimes) step(ops ...func()) {
	for i := range ops {
		k := (t.n + i) % len(ops)
		start := time.Now()
		ops[k]()
		t.d[k] = append(t.d[k], time.Since(start))
	}
	t.n++
}

// warmUp runs each op once, untimed: the first operation of a kind pays
// one-time costs (the connection's response subscription, server caches
// after a fill) that would otherwise land on whichever kind runs first.
func (t *benchTimes) warmUp(ops ...func()) {
	for _, op := range ops {
		op()
	}
	t.warm++
}

// benchMinSamples is the fewest timed iterations a benchmark takes, even
// past the bench time, so that a median means something for slow operations.
const benchMinSamples = 5

// loop runs b.Loop with ops, then more iterations up to benchMinSamples.
func (t *benchTimes) loop(b *testing.B, ops ...func()) {
	t.warmUp(ops...)
	for b.Loop() {
		t.step(ops...)
	}
	for t.n < benchMinSamples {
		t.step(ops...)
	}
}

// total is the number of iterations run, timed or not.
func (t *benchTimes) total() int { return t.n + t.warm }

// median returns kind k's median time per iteration in nanoseconds.
func (t *benchTimes) median(k int) float64 {
	s := slices.Clone(t.d[k])
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return float64(m.Nanoseconds())
}

// report reports each kind's median time per operation in unit (scale ns
// per unit, ops operations per iteration) and esnats' ratio to each other
// kind. The last kind is esnats.
func (t *benchTimes) report(b *testing.B, unit string, scale float64, ops int) {
	b.ReportMetric(0, "ns/op")
	if t.n == 0 {
		return
	}
	per := make([]float64, len(t.d))
	for k := range t.d {
		per[k] = t.median(k) / float64(ops)
		b.ReportMetric(per[k]/scale, t.names[k]+"-"+unit)
	}
	es := per[len(per)-1]
	for k := range len(per) - 1 {
		b.ReportMetric(per[k]/es, "esnats/"+t.names[k])
	}
}

// BenchmarkAppend1 appends one event at a time to one aggregate, each with
// the expected-revision check: raw js.PublishMsg with
// Nats-Expected-Last-Subject-Sequence against Store.Append with
// ExpectRevision of the previous result.
//
// On a single server (R1) and on a 3-node cluster (R3, the stream's leader
// on one of three in-process nodes), under the server's default fsync and
// fsync always: the cost of durability for one command at a time.
func BenchmarkAppend1(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		for _, mode := range benchSyncModes {
			b.Run(fmt.Sprintf("R%d/sync=%s", replicas, mode), func(b *testing.B) {
				benchAppend1(b, replicas, mode)
			})
		}
	}
}

// benchJS starts a single server (replicas 1) or a 3-node cluster and
// returns the mod that gives the store that many replicas, chained before
// mod.
func benchJS(b *testing.B, replicas int, mode embedded.SyncPolicy, mod func(*stream.Config)) (jetstream.JetStream, func(*stream.Config)) {
	b.Helper()
	if replicas == 1 {
		return benchServerJS(b, mode), mod
	}
	return benchClusterJS(b, mode), func(c *stream.Config) {
		c.Replicas = replicas
		if mod != nil {
			mod(c)
		}
	}
}

func benchAppend1(b *testing.B, replicas int, mode embedded.SyncPolicy) {
	js, mod := benchJS(b, replicas, mode, nil)
	e := newBenchEnv(b, js, mod)
	ctx := context.Background()
	rawAgg := stream.Aggregate{Type: "raw", ID: "one"}
	rawSubj := e.subject(b, rawAgg)
	esAgg := stream.Aggregate{Type: "esnats", ID: "one"}
	events := []stream.EventData{{Data: benchPayload}}
	var rawSeq, rawVer uint64
	var esRev stream.Revision
	raw := func() {
		m := e.rawMsg(rawSubj, rawVer+1, benchNow())
		m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(rawSeq, 10)}
		ack, err := e.js.PublishMsg(ctx, m)
		if err != nil {
			b.Fatal(err)
		}
		rawSeq, rawVer = ack.Sequence, rawVer+1
	}
	esnats := func() {
		res, err := e.st.Append(ctx, esAgg, stream.ExpectRevision(esRev), events)
		if err != nil {
			b.Fatal(err)
		}
		esRev = res.Last
	}
	t := newBenchTimes("raw", "esnats")
	t.loop(b, raw, esnats)
	t.report(b, "ns/op", 1, 1)
	e.checkLast(b, rawAgg, uint64(t.total()))
	e.checkLast(b, esAgg, uint64(t.total()))
}

// Shape of BenchmarkAppend1Spread.
const (
	spreadAggs    = 10_000
	spreadWorkers = 64
)

// spreadPerWorker is how many events each worker appends per iteration:
// 1024 events per kind per iteration under the server's default fsync, 256
// under fsync always (about 0.1-0.2s each), so that the kinds alternate
// several times within the bench time.
func spreadPerWorker(mode embedded.SyncPolicy) int {
	if mode == embedded.SyncAlways {
		return 4
	}
	return 16
}

// spreadAgg is one aggregate of BenchmarkAppend1Spread and where it stands.
type spreadAgg struct {
	agg  stream.Aggregate
	subj string
	rev  stream.Revision // esnats
	seq  uint64          // raw: stream sequence of the last event
	ver  uint64          // raw: version of the last event
}

// BenchmarkAppend1Spread appends one event each to 10,000 aggregates from 64
// goroutines (each owns its aggregates and appends to them round-robin with
// the expected-revision check): raw js.PublishMsg (raw-sync), raw pipelined
// js.PublishMsgAsync from one goroutine with the same check (raw-async), and
// Store.Append without group commit (esnats, GroupCommitOff: each append
// waits for its own answer, as raw-sync does; BenchmarkAppendGroupCommit
// has the same shape with group commit). Each iteration appends a chunk of
// events of each kind (see spreadPerWorker); ns/op and events/s are per
// event.
func BenchmarkAppend1Spread(b *testing.B) {
	for _, mode := range benchSyncModes {
		b.Run("sync="+mode.String(), func(b *testing.B) {
			e := newBenchEnv(b, benchServerJS(b, mode), func(c *stream.Config) { c.GroupCommit = stream.GroupCommitOff })
			ctx := context.Background()
			perWorker := spreadPerWorker(mode)
			chunk := spreadWorkers * perWorker // events per kind per iteration
			mk := func(typ string) []spreadAgg { return e.spreadAggs(b, typ, "s%05d", spreadAggs) }
			rawSync, rawAsync, es := mk("rawsync"), mk("rawasync"), mk("esnats")
			events := []stream.EventData{{Data: benchPayload}}

			// Worker w owns aggregates w, w+64, w+128, ...; cursors persist
			// across iterations.
			var syncCur, esCur [spreadWorkers]int
			owned := func(w int) int { return (spreadAggs - w + spreadWorkers - 1) / spreadWorkers }
			next := func(cur *[spreadWorkers]int, w int) int {
				i := w + cur[w]*spreadWorkers
				cur[w] = (cur[w] + 1) % owned(w)
				return i
			}
			parallel := func(fn func(w int) error) {
				var wg sync.WaitGroup
				errs := make([]error, spreadWorkers)
				for w := range spreadWorkers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs[w] = fn(w)
					}()
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					b.Fatal(err)
				}
			}

			rawSyncOp := func() {
				parallel(func(w int) error {
					for range perWorker {
						a := &rawSync[next(&syncCur, w)]
						m := e.rawMsg(a.subj, a.ver+1, benchNow())
						m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.seq, 10)}
						ack, err := e.js.PublishMsg(ctx, m)
						if err != nil {
							return fmt.Errorf("raw-sync %s: %w", a.subj, err)
						}
						a.seq, a.ver = ack.Sequence, a.ver+1
					}
					return nil
				})
			}

			rawAsyncOp := e.rawPipelined(b, rawAsync, chunk, 30*time.Second)

			esOp := func() {
				parallel(func(w int) error {
					for range perWorker {
						a := &es[next(&esCur, w)]
						res, err := e.st.Append(ctx, a.agg, stream.ExpectRevision(a.rev), events)
						if err != nil {
							return err
						}
						a.rev = res.Last
					}
					return nil
				})
			}

			t := newBenchTimes("raw-sync", "raw-async", "esnats")
			t.loop(b, rawSyncOp, rawAsyncOp, esOp)
			t.report(b, "ns/op", 1, chunk) // per event
			if t.n > 0 {
				for k, name := range t.names {
					b.ReportMetric(float64(chunk)/(t.median(k)/1e9), name+"-events/s")
				}
			}
			// Every event landed, each aggregate's versions without gaps.
			var sum [3]uint64
			for i := range spreadAggs {
				sum[0] += rawSync[i].ver
				sum[1] += rawAsync[i].ver
				sum[2] += es[i].rev.Version
			}
			for k, s := range sum {
				if want := uint64(chunk * t.total()); s != want {
					b.Fatalf("%s: %d events appended, want %d", t.names[k], s, want)
				}
			}
			e.checkLast(b, rawSync[0].agg, rawSync[0].ver)
			e.checkLast(b, rawAsync[0].agg, rawAsync[0].ver)
			e.checkLast(b, es[0].agg, es[0].rev.Version)
		})
	}
}

// BenchmarkAppendBatch10 appends 10 events atomically to one aggregate: raw
// jetstreamext.PublishMsgBatch (with the same flow control as esnats: no ack
// of the first message) of 10 messages with the expected-sequence check on
// the first, against Store.Append of 10 events with ExpectRevision. On R1
// file storage under both fsync policies, R1 memory storage, and R3 file
// storage (3-node cluster) under both fsync policies.
func BenchmarkAppendBatch10(b *testing.B) {
	const n = 10
	cases := []struct {
		name string
		js   func(b *testing.B) jetstream.JetStream
		mod  func(*stream.Config)
	}{
		{"R1-file-sync=server-default", func(b *testing.B) jetstream.JetStream { return benchServerJS(b, embedded.SyncServerDefault) }, nil},
		{"R1-file-sync=always", func(b *testing.B) jetstream.JetStream { return benchServerJS(b, embedded.SyncAlways) }, nil},
		{"R1-memory", func(b *testing.B) jetstream.JetStream { return benchServerJS(b, embedded.SyncAlways) }, func(c *stream.Config) { c.Memory = true }},
		{"R3-file-sync=server-default", func(b *testing.B) jetstream.JetStream { return benchClusterJS(b, embedded.SyncServerDefault) }, func(c *stream.Config) { c.Replicas = 3 }},
		{"R3-file-sync=always", func(b *testing.B) jetstream.JetStream { return benchClusterJS(b, embedded.SyncAlways) }, func(c *stream.Config) { c.Replicas = 3 }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := newBenchEnv(b, c.js(b), c.mod)
			ctx := context.Background()
			rawAgg := stream.Aggregate{Type: "raw", ID: "batch"}
			rawSubj := e.subject(b, rawAgg)
			esAgg := stream.Aggregate{Type: "esnats", ID: "batch"}
			events := make([]stream.EventData, n)
			for i := range events {
				events[i] = stream.EventData{Data: benchPayload}
			}
			fc := jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: e.js.Options().DefaultTimeout}
			msgs := make([]*nats.Msg, n)
			var rawSeq, rawVer uint64
			var esRev stream.Revision
			raw := func() {
				now := benchNow()
				for i := range msgs {
					msgs[i] = e.rawMsg(rawSubj, rawVer+uint64(i)+1, now)
				}
				msgs[0].Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(rawSeq, 10)}
				ack, err := jetstreamext.PublishMsgBatch(ctx, e.js, msgs, fc)
				if err != nil {
					b.Fatal(err)
				}
				rawSeq, rawVer = ack.Sequence, rawVer+n
			}
			esnats := func() {
				res, err := e.st.Append(ctx, esAgg, stream.ExpectRevision(esRev), events)
				if err != nil {
					b.Fatal(err)
				}
				esRev = res.Last
			}
			t := newBenchTimes("raw", "esnats")
			t.loop(b, raw, esnats)
			t.report(b, "ms/batch", 1e6, 1)
			if t.n > 0 {
				b.ReportMetric(n/(t.median(1)/1e9), "esnats-events/s")
			}
			e.checkLast(b, rawAgg, uint64(n*t.total()))
			e.checkLast(b, esAgg, uint64(n*t.total()))
		})
	}
}

// BenchmarkLoad loads aggregates of 10, 1,000 and 10,000 events from a store
// of ~1M events over 100k aggregates (see benchfill_test.go): raw batched
// direct gets (jetstreamext.GetBatch on the aggregate's subject, 1000 per
// round trip, until Nats-Num-Pending is 0; no decoding), the same plus
// decoding each payload with the registry (raw+decode), and Store.Load,
// iterating and decoding every event. events=10 loads one aggregate again and
// again; events=10-random loads a different random aggregate of the fill for
// each kind in each iteration, so its blocks are less likely to be cached.
func BenchmarkLoad(b *testing.B) {
	f := benchFillStore(b)
	ctx := context.Background()
	cases := []struct {
		name   string
		events int
		agg    func() stream.Aggregate
	}{
		{"events=10", 10, func() stream.Aggregate { return f.hot[0] }},
		{"events=10-random", 10, func() stream.Aggregate { return f.bulkAgg(rand.IntN(f.bulkAggs)) }},
		{"events=1000", 1000, func() stream.Aggregate { return f.hot[1] }},
		{"events=10000", 10000, func() stream.Aggregate { return f.hot[2] }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := f.env
			check := func(kind string, agg stream.Aggregate, got int, err error) {
				if err != nil {
					b.Fatalf("%s %s: %v", kind, agg, err)
				}
				if got != c.events {
					b.Fatalf("%s %s: loaded %d events, want %d", kind, agg, got, c.events)
				}
			}
			rawLoad := func(decode bool) func() {
				return func() {
					agg := c.agg()
					got, err := benchRawLoad(ctx, e, e.subject(b, agg), decode)
					kind := "raw"
					if decode {
						kind = "raw+decode"
					}
					check(kind, agg, got, err)
				}
			}
			esLoad := func() {
				agg := c.agg()
				got := 0
				var last uint64
				for ev, err := range e.st.Load(ctx, agg) {
					if err != nil {
						b.Fatalf("esnats %s: %v", agg, err)
					}
					got++
					last = ev.Version
				}
				check("esnats", agg, got, nil)
				if last != uint64(c.events) {
					b.Fatalf("esnats %s: last version %d, want %d", agg, last, c.events)
				}
			}
			t := newBenchTimes("raw", "raw+decode", "esnats")
			t.loop(b, rawLoad(false), rawLoad(true), esLoad)
			t.report(b, "ms/load", 1e6, 1)
			b.ReportMetric(f.took.Seconds(), "fill-s")
		})
	}
}

// benchRawLoad reads every message of subject with batched direct gets, as
// Store.Load does, and returns how many it read. With decode it also decodes
// each payload with the registry (no envelope, no Event).
func benchRawLoad(ctx context.Context, e *benchEnv, subject string, decode bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n := 0
	seq := uint64(1)
	for {
		it, err := jetstreamext.GetBatch(ctx, e.js, e.st.Name(), 1000,
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
			if decode {
				schema, err := strconv.Atoi(m.Header.Get(stream.HeaderSchema))
				if err != nil {
					return n, err
				}
				if _, err := e.reg.Decode(m.Header.Get(stream.HeaderEventType), schema, m.Header.Get(stream.HeaderContentType), m.Data); err != nil {
					return n, err
				}
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

// benchGroupWriters are the numbers of writers BenchmarkAppendGroupCommit
// runs with on R1: 64 and 256, or the comma-separated list in
// ESNATS_BENCH_WRITERS (R3 runs only with 64).
func benchGroupWriters(b *testing.B) []int {
	s := os.Getenv("ESNATS_BENCH_WRITERS")
	if s == "" {
		return []int{64, 256}
	}
	var ws []int
	for f := range strings.SplitSeq(s, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || w < 1 {
			b.Fatalf("ESNATS_BENCH_WRITERS=%q: want numbers of writers >= 1, separated by commas", s)
		}
		ws = append(ws, w)
	}
	return ws
}

// Shape of BenchmarkAppendGroupCommit.
const (
	groupAggs     = 10_000
	groupBatchRaw = 100 // events per raw atomic batch
)

// groupPerWriter is how many events each writer of
// BenchmarkAppendGroupCommit appends per iteration: enough that the start
// and the end of an iteration (fewer writers left) weigh little, few
// enough that an iteration of raw pipelined publishes under fsync always
// (about 2-4k events/s) stays within a second or two.
func groupPerWriter(mode embedded.SyncPolicy, writers int) int {
	if mode == embedded.SyncAlways {
		return max(4096/writers, 1)
	}
	return max(8192/writers, 1)
}

// BenchmarkAppendGroupCommit appends one event each to 10,000 aggregates
// from many goroutines (64 and 256, or ESNATS_BENCH_WRITERS; each owns its
// aggregates and appends to them round-robin with the expected-revision
// check) through a Store with group commit, beside the raw operations group
// commit is built on, all with the same check on every message:
//
//   - raw-async: pipelined js.PublishMsgAsync from one goroutine, the whole
//     chunk in flight (the fastest a client can publish single events);
//   - raw-sync: js.PublishMsg from the writers, each waiting for its ack
//     (as many in flight as writers: what a synchronous API allows);
//   - raw-batch100: jetstreamext.PublishMsgBatch of 100 messages to 100
//     aggregates, one batch after another (what one atomic batch costs);
//   - esnats: Store.Append of 1 event with ExpectRevision, from the
//     writers, with Config.GroupCommit = mode (batch: concurrent appends
//     coalesced into atomic batches; pipeline: each sent on its own at once;
//     auto: the default, which measures both and keeps the faster).
//
// Under fsync always and the server's default fsync. Each iteration appends
// a chunk of events of each kind (groupPerWriter per writer); ns/op and
// events/s are per event.
//
// R1 with 64 and 256 writers; R3 (a 3-node in-process cluster) with 64.
func BenchmarkAppendGroupCommit(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		for _, mode := range benchSyncModes {
			for _, writers := range benchGroupWriters(b) {
				if replicas == 3 && writers != 64 {
					continue
				}
				for _, gc := range []stream.GroupCommit{stream.GroupCommitBatch, stream.GroupCommitPipeline, stream.GroupCommitAuto} {
					b.Run(fmt.Sprintf("R%d/sync=%s/writers=%d/mode=%s", replicas, mode, writers, gc), func(b *testing.B) {
						benchGroupCommit(b, replicas, mode, writers, gc)
					})
				}
			}
		}
	}
}

func benchGroupCommit(b *testing.B, replicas int, mode embedded.SyncPolicy, writers int, gc stream.GroupCommit) {
	js, mod := benchJS(b, replicas, mode, func(c *stream.Config) { c.GroupCommit = gc })
	e := newBenchEnv(b, js, mod)
	ctx := context.Background()
	perWriter := groupPerWriter(mode, writers)
	chunk := writers * perWriter // events per kind per iteration
	mk := func(typ string) []spreadAgg { return e.spreadAggs(b, typ, "g%05d", groupAggs) }
	rawAsync, rawSync, rawBatch, es := mk("rawasync"), mk("rawsync"), mk("rawbatch"), mk("esnats")
	events := []stream.EventData{{Data: benchPayload}}

	// Writer w owns aggregates w, w+writers, ... of a kind's; cursors
	// persist across iterations.
	owned := func(w int) int { return (groupAggs - w + writers - 1) / writers }
	writersOp := func(aggs []spreadAgg, cur []int, fn func(a *spreadAgg) error) {
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for w := range writers {
			wg.Go(func() {
				for range perWriter {
					a := &aggs[w+cur[w]*writers]
					cur[w] = (cur[w] + 1) % owned(w)
					if err := fn(a); err != nil {
						errs[w] = err
						return
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
	}

	rawAsyncOp := e.rawPipelined(b, rawAsync, chunk, time.Minute)

	batchCur := 0
	fc := jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: e.js.Options().DefaultTimeout}
	msgs := make([]*nats.Msg, 0, groupBatchRaw)
	aggs := make([]*spreadAgg, 0, groupBatchRaw)
	rawBatchOp := func() {
		for left := chunk; left > 0; left -= len(msgs) {
			msgs, aggs = msgs[:0], aggs[:0]
			now := benchNow()
			for range min(groupBatchRaw, left) {
				a := &rawBatch[batchCur]
				batchCur = (batchCur + 1) % groupAggs
				m := e.rawMsg(a.subj, a.ver+1, now)
				m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.seq, 10)}
				msgs = append(msgs, m)
				aggs = append(aggs, a)
			}
			ack, err := jetstreamext.PublishMsgBatch(ctx, e.js, msgs, fc)
			if err != nil {
				b.Fatalf("raw-batch100: %v", err)
			}
			first := ack.Sequence - uint64(len(msgs)) + 1
			for i, a := range aggs {
				a.seq, a.ver = first+uint64(i), a.ver+1
			}
		}
	}

	syncCur, esCur := make([]int, writers), make([]int, writers)
	rawSyncOp := func() {
		writersOp(rawSync, syncCur, func(a *spreadAgg) error {
			m := e.rawMsg(a.subj, a.ver+1, benchNow())
			m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.seq, 10)}
			ack, err := e.js.PublishMsg(ctx, m)
			if err != nil {
				return fmt.Errorf("raw-sync %s: %w", a.subj, err)
			}
			a.seq, a.ver = ack.Sequence, a.ver+1
			return nil
		})
	}
	esOp := func() {
		writersOp(es, esCur, func(a *spreadAgg) error {
			res, err := e.st.Append(ctx, a.agg, stream.ExpectRevision(a.rev), events)
			if err != nil {
				return err
			}
			a.rev = res.Last
			return nil
		})
	}

	t := newBenchTimes("raw-async", "raw-sync", "raw-batch100", "esnats")
	t.loop(b, rawAsyncOp, rawSyncOp, rawBatchOp, esOp)
	t.report(b, "ns/op", 1, chunk) // per event
	if t.n > 0 {
		for k, name := range t.names {
			b.ReportMetric(float64(chunk)/(t.median(k)/1e9), name+"-events/s")
		}
	}
	// Every event landed, each aggregate's versions without gaps.
	var sum [4]uint64
	for i := range groupAggs {
		sum[0] += rawAsync[i].ver
		sum[1] += rawSync[i].ver
		sum[2] += rawBatch[i].ver
		sum[3] += es[i].rev.Version
	}
	for k, s := range sum {
		if want := uint64(chunk * t.total()); s != want {
			b.Fatalf("%s: %d events appended, want %d", t.names[k], s, want)
		}
	}
	if gc == stream.GroupCommitAuto {
		// What Auto chose, and how often it changed its mind.
		b.ReportMetric(float64(stream.AutoSwitches(e.st)), "switches")
		b.Logf("auto: %s at the end, %d switches", e.st.GroupCommitMode(), stream.AutoSwitches(e.st))
	}
	e.checkLast(b, rawAsync[0].agg, rawAsync[0].ver)
	e.checkLast(b, rawSync[0].agg, rawSync[0].ver)
	e.checkLast(b, rawBatch[0].agg, rawBatch[0].ver)
	e.checkLast(b, es[0].agg, es[0].rev.Version)
	if s, err := e.js.Stream(ctx, e.st.Name()); err != nil {
		b.Fatal(err)
	} else if got, want := s.CachedInfo().State.Msgs, uint64(4*chunk*t.total()); got != want {
		b.Fatalf("stream holds %d events, want %d", got, want)
	}
}

// BenchmarkAppendBatch10Concurrent runs commands of 10 events from 64
// goroutines, each on aggregates of its own (round-robin over 4 per
// writer) with the expected-revision check: raw, every writer sends its
// own jetstreamext.PublishMsgBatch of 10 messages (what appends without
// group commit do), against Store.Append of 10 events with group commit
// (esnats: the concurrent commands go out together, each atomic). On R1
// file storage and R3 file storage (3-node cluster) under both fsync
// policies. ms/cmd is the time per command at that concurrency (the
// inverse of the command rate), not a command's latency.
func BenchmarkAppendBatch10Concurrent(b *testing.B) {
	const (
		n       = 10
		writers = 64
		aggsPer = 4
		perIter = 4 // commands per writer per iteration
	)
	cases := []struct {
		name string
		js   func(b *testing.B) jetstream.JetStream
		mod  func(*stream.Config)
	}{
		{"R1-file-sync=server-default", func(b *testing.B) jetstream.JetStream { return benchServerJS(b, embedded.SyncServerDefault) }, nil},
		{"R1-file-sync=always", func(b *testing.B) jetstream.JetStream { return benchServerJS(b, embedded.SyncAlways) }, nil},
		{"R3-file-sync=server-default", func(b *testing.B) jetstream.JetStream { return benchClusterJS(b, embedded.SyncServerDefault) }, func(c *stream.Config) { c.Replicas = 3 }},
		{"R3-file-sync=always", func(b *testing.B) jetstream.JetStream { return benchClusterJS(b, embedded.SyncAlways) }, func(c *stream.Config) { c.Replicas = 3 }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := newBenchEnv(b, c.js(b), c.mod)
			ctx := context.Background()
			mk := func(typ string) []spreadAgg { return e.spreadAggs(b, typ, "w%03d", writers*aggsPer) }
			raws, es := mk("raw"), mk("esnats")
			events := make([]stream.EventData, n)
			for i := range events {
				events[i] = stream.EventData{Data: benchPayload}
			}
			fc := jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: e.js.Options().DefaultTimeout}
			var cur [2][writers]int
			parallel := func(fn func(w int) error) {
				var wg sync.WaitGroup
				errs := make([]error, writers)
				for w := range writers {
					wg.Go(func() { errs[w] = fn(w) })
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					b.Fatal(err)
				}
			}
			next := func(k, w int) int {
				i := w*aggsPer + cur[k][w]
				cur[k][w] = (cur[k][w] + 1) % aggsPer
				return i
			}
			raw := func() {
				parallel(func(w int) error {
					msgs := make([]*nats.Msg, n)
					for range perIter {
						a := &raws[next(0, w)]
						now := benchNow()
						for i := range msgs {
							msgs[i] = e.rawMsg(a.subj, a.ver+uint64(i)+1, now)
						}
						msgs[0].Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.seq, 10)}
						ack, err := jetstreamext.PublishMsgBatch(ctx, e.js, msgs, fc)
						if err != nil {
							return fmt.Errorf("raw %s: %w", a.subj, err)
						}
						a.seq, a.ver = ack.Sequence, a.ver+n
					}
					return nil
				})
			}
			esnats := func() {
				parallel(func(w int) error {
					for range perIter {
						a := &es[next(1, w)]
						res, err := e.st.Append(ctx, a.agg, stream.ExpectRevision(a.rev), events)
						if err != nil {
							return err
						}
						a.rev = res.Last
					}
					return nil
				})
			}
			t := newBenchTimes("raw", "esnats")
			t.loop(b, raw, esnats)
			t.report(b, "ms/cmd", 1e6, writers*perIter)
			if t.n > 0 {
				b.ReportMetric(float64(n*writers*perIter)/(t.median(1)/1e9), "esnats-events/s")
				b.ReportMetric(float64(n*writers*perIter)/(t.median(0)/1e9), "raw-events/s")
			}
			var sum [2]uint64
			for i := range raws {
				sum[0] += raws[i].ver
				sum[1] += es[i].rev.Version
			}
			for k, s := range sum {
				if want := uint64(n * writers * perIter * t.total()); s != want {
					b.Fatalf("%s: %d events appended, want %d", t.names[k], s, want)
				}
			}
			e.checkLast(b, raws[0].agg, raws[0].ver)
			e.checkLast(b, es[0].agg, es[0].rev.Version)
		})
	}
}

// rawPipelined returns the raw counterpart of group commit: chunk
// pipelined PublishMsgAsync, each with the expected-last-subject-sequence
// check, over aggs in turn (chunk < len(aggs): no aggregate is twice in
// flight), then waiting for every ack, at most wait.
// spreadAggs returns n aggregates of type typ, with ids idFormat of 0..n-1,
// and their subjects.
func (e *benchEnv) spreadAggs(b *testing.B, typ, idFormat string, n int) []spreadAgg {
	aggs := make([]spreadAgg, n)
	for i := range aggs {
		a := stream.Aggregate{Type: typ, ID: fmt.Sprintf(idFormat, i)}
		aggs[i] = spreadAgg{agg: a, subj: e.subject(b, a)}
	}
	return aggs
}

func (e *benchEnv) rawPipelined(b *testing.B, aggs []spreadAgg, chunk int, wait time.Duration) func() {
	type pending struct {
		a   *spreadAgg
		fut jetstream.PubAckFuture
	}
	cur := 0
	futs := make([]pending, 0, chunk)
	return func() {
		futs = futs[:0]
		now := benchNow()
		for range chunk {
			a := &aggs[cur]
			cur = (cur + 1) % len(aggs)
			m := e.rawMsg(a.subj, a.ver+1, now)
			m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.seq, 10)}
			f, err := e.js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second))
			if err != nil {
				b.Fatalf("raw-async %s: %v", a.subj, err)
			}
			futs = append(futs, pending{a, f})
		}
		timeout := time.NewTimer(wait)
		defer timeout.Stop()
		for _, p := range futs {
			select {
			case ack := <-p.fut.Ok():
				p.a.seq, p.a.ver = ack.Sequence, p.a.ver+1
			case err := <-p.fut.Err():
				b.Fatalf("raw-async %s: %v", p.a.subj, err)
			case <-timeout.C:
				b.Fatalf("raw-async: no ack within %s", wait)
			}
		}
	}
}

// BenchmarkAppendAsync keeps a chunk of single-event appends to 10,000
// aggregates in flight from one goroutine, each with the expected-revision
// check: raw pipelined js.PublishMsgAsync (raw-async, as in
// BenchmarkAppendGroupCommit) against Store.AppendAsync with each mode of
// group commit (auto: what GroupCommitAuto chooses from its measurements).
// On R1 and R3, under both fsync policies.
func BenchmarkAppendAsync(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		for _, mode := range benchSyncModes {
			b.Run(fmt.Sprintf("R%d/sync=%s", replicas, mode), func(b *testing.B) {
				benchAppendAsync(b, replicas, mode)
			})
		}
	}
}

func benchAppendAsync(b *testing.B, replicas int, mode embedded.SyncPolicy) {
	js, mod := benchJS(b, replicas, mode, nil)
	e := newBenchEnv(b, js, mod)
	ctx := context.Background()
	chunk := 2048
	if mode == embedded.SyncAlways && replicas == 1 {
		chunk = 512 // raw-async syncs every message: about 3k events/s
	}
	mk := func(typ string) []spreadAgg { return e.spreadAggs(b, typ, "a%05d", groupAggs) }
	rawAsync := e.rawPipelined(b, mk("rawasync"), chunk, time.Minute)
	events := []stream.EventData{{Data: benchPayload}}
	modes := []stream.GroupCommit{stream.GroupCommitBatch, stream.GroupCommitPipeline, stream.GroupCommitAuto}
	names := []string{"raw-async"}
	ops := []func(){rawAsync}
	esAggs := make([][]spreadAgg, len(modes))
	for k, gc := range modes {
		cfg := e.st.Config()
		cfg.GroupCommit = gc
		st, err := stream.OpenStore(ctx, e.js, cfg)
		if err != nil {
			b.Fatal(err)
		}
		aggs := mk("esnats" + gc.String())
		esAggs[k] = aggs
		if gc == stream.GroupCommitAuto {
			b.Cleanup(func() {
				b.Logf("auto: %s at the end, %d switches", st.GroupCommitMode(), stream.AutoSwitches(st))
			})
		}
		cur := 0
		pend := make([]*stream.PendingAppend, chunk)
		ops = append(ops, func() {
			first := cur
			for i := range chunk {
				a := &aggs[(first+i)%len(aggs)]
				pend[i] = st.AppendAsync(ctx, a.agg, stream.ExpectRevision(a.rev), events)
			}
			for i, p := range pend {
				res, err := p.Result()
				if err != nil {
					b.Fatalf("AppendAsync (%s): %v", gc, err)
				}
				aggs[(first+i)%len(aggs)].rev = res.Last
			}
			cur = (first + chunk) % len(aggs)
		})
		names = append(names, "esnats-"+gc.String())
	}
	t := newBenchTimes(names...)
	t.loop(b, ops...)
	// report per event, each esnats kind against raw-async
	if t.n > 0 {
		raw := t.median(0)
		for k, name := range t.names {
			b.ReportMetric(float64(chunk)/(t.median(k)/1e9), name+"-events/s")
			if k > 0 {
				b.ReportMetric(raw/t.median(k), name+"/raw-async")
			}
		}
	}
	for k, aggs := range esAggs {
		var sum uint64
		for _, a := range aggs {
			sum += a.rev.Version
		}
		if want := uint64(chunk * t.total()); sum != want {
			b.Fatalf("%s: %d events appended, want %d", names[k+1], sum, want)
		}
		e.checkLast(b, aggs[0].agg, aggs[0].rev.Version)
	}
}

// BenchmarkAppendMemory appends one event at a time to one aggregate of the
// in-memory store, which validates, numbers and encodes events exactly as
// the JetStream store does (the same code builds the message): the
// client-side cost of an append, without a server, and its allocations.
func BenchmarkAppendMemory(b *testing.B) {
	reg := stream.NewRegistry()
	if err := stream.Register[benchEvent](reg, "ItemAdded"); err != nil {
		b.Fatal(err)
	}
	st, err := stream.NewMemoryStore(stream.Config{Name: "bench", Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	events := []stream.EventData{{Data: benchPayload}}
	var rev stream.Revision
	b.ReportAllocs()
	for b.Loop() {
		res, err := st.Append(ctx, agg, stream.ExpectRevision(rev), events, stream.WithCorrelationID("corr-1"))
		if err != nil {
			b.Fatal(err)
		}
		rev = res.Last
	}
}
