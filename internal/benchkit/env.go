package benchkit

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/esnats/esnats/stream"
)

// item is the event every workload writes: about 100 bytes of msgpack, the
// payload of the repository's own benchmarks.
type item struct {
	Cart  string `json:"cart"`
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Price int64  `json:"price"`
	Note  string `json:"note"`
}

// itemType is item's registered event type name.
const itemType = "ItemAdded"

var benchItem = item{
	Cart:  "cart-0000042",
	SKU:   "SKU-12345-XL-BLUE",
	Qty:   3,
	Price: 129900,
	Note:  "gift wrap please, deliver after 6pm",
}

// Aggregate types of the two sides: every aggregate the raw side writes is of
// type rawType, every one the esnats side writes of type esnatsType, so that
// each side's events can be counted by subject after a run.
const (
	rawType    = "raw"
	esnatsType = "esnats"
)

// env is one run's store and what the raw side needs to write the same wire
// format as esnats (docs/wire-format.md).
type env struct {
	js          jetstream.JetStream
	store       *stream.Store
	reg         *stream.Registry
	name        string // stream name (and subject prefix)
	concurrency int
	replicas    int // of the store, and of the KV buckets the run creates
	roundOps    int // ops per round per side of a fixed-chunk workload
	dlq         bool

	mu      sync.Mutex
	buckets []string // KV buckets the run created (or tried to), for cleanup

	typ, schema, contentType string
	payload                  []byte // benchItem, encoded once
}

// bucket returns the name of a new KV bucket of the run, <stream>_<kind>,
// and records it before it exists, so that cleanup deletes it whatever
// happens: a catch-up deletes its bucket once checked, but not when it
// fails or ctx ends.
func (e *env) bucket(kind string) string {
	name := e.name + "_" + kind
	e.mu.Lock()
	defer e.mu.Unlock()
	e.buckets = append(e.buckets, name)
	return name
}

func newRegistry() (*stream.Registry, error) {
	reg := stream.NewRegistry()
	if err := stream.Register[item](reg, itemType); err != nil {
		return nil, err
	}
	return reg, nil
}

// encodeOnce fills in the raw side's wire fields.
func (e *env) encodeOnce() error {
	typ, schema, payload, err := e.reg.Encode(benchItem)
	if err != nil {
		return err
	}
	e.typ, e.schema, e.payload = typ, strconv.Itoa(schema), payload
	e.contentType = e.reg.Codec().ContentType()
	return nil
}

func (e *env) subject(agg stream.Aggregate) string {
	s, err := e.store.AggregateSubject(agg)
	if err != nil {
		// Aggregates are built by this package from valid names.
		panic(fmt.Sprintf("benchkit: %s: %v", agg, err))
	}
	return s
}

// msg builds one event message with the headers esnats writes (without the
// optional ones): the raw side's messages are read by esnats as its own.
func (e *env) msg(subject string, version uint64, now string) *nats.Msg {
	m := nats.NewMsg(subject)
	h := m.Header
	h[stream.HeaderEventID] = []string{nuid.Next()}
	h[stream.HeaderEventType] = []string{e.typ}
	h[stream.HeaderVersion] = []string{strconv.FormatUint(version, 10)}
	h[stream.HeaderTime] = []string{now}
	h[stream.HeaderContentType] = []string{e.contentType}
	h[stream.HeaderSchema] = []string{e.schema}
	m.Data = e.payload
	return m
}

// expect adds the optimistic concurrency check to m: the subject's last
// message must be at stream sequence seq (0: no message yet).
func expect(m *nats.Msg, seq uint64) {
	m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(seq, 10)}
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// counts returns the number of messages stored under each subject matching
// filter.
func (e *env) counts(ctx context.Context, filter string) (map[string]uint64, error) {
	s, err := e.js.Stream(ctx, e.name)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}

// checkSide checks that the aggregates of type typ hold want events in all.
func (e *env) checkSide(ctx context.Context, typ string, want uint64) error {
	c, err := e.counts(ctx, e.store.SubjectFilter(typ))
	if err != nil {
		return fmt.Errorf("counting %s events: %w", typ, err)
	}
	var got uint64
	for _, n := range c {
		got += n
	}
	if got != want {
		return fmt.Errorf("%s side: %d events stored, want %d", typ, got, want)
	}
	return nil
}

// checkTotal checks that the stream holds want messages.
func (e *env) checkTotal(ctx context.Context, want uint64) error {
	s, err := e.js.Stream(ctx, e.name)
	if err != nil {
		return err
	}
	if got := s.CachedInfo().State.Msgs; got != want {
		return fmt.Errorf("store holds %d events, want %d", got, want)
	}
	return nil
}

// checkVersion checks that agg's last event has version want.
func (e *env) checkVersion(ctx context.Context, agg stream.Aggregate, want uint64) error {
	rev, err := e.store.LastRevision(ctx, agg)
	if err != nil {
		return fmt.Errorf("%s: %w", agg, err)
	}
	if rev.Version != want {
		return fmt.Errorf("%s: last version %d, want %d", agg, rev.Version, want)
	}
	return nil
}

// recorder collects one side's operations: latencies (when hist is set) and
// a count for the progress callback (when count is set). op and add are safe
// for concurrent use.
type recorder struct {
	mu    sync.Mutex
	hist  *histogram
	count *atomic.Int64
}

// op records one operation that took d.
func (r *recorder) op(d time.Duration) {
	r.add(1)
	if r.hist != nil {
		r.mu.Lock()
		r.hist.add(d)
		r.mu.Unlock()
	}
}

// add counts n operations done, without a latency.
func (r *recorder) add(n int) {
	if r.count != nil {
		r.count.Add(int64(n))
	}
}

// sideFunc runs n operations of one side, recording them in rec, and returns
// the time they took (for most sides the wall time of the call; a side with
// untimed set-up or tear-down leaves those out).
type sideFunc func(ctx context.Context, n int, rec *recorder) (time.Duration, error)

// sequential makes a side that runs op n times, one after another.
func sequential(op func(ctx context.Context) error) sideFunc {
	return func(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
		start := time.Now()
		for range n {
			if err := ctx.Err(); err != nil {
				return time.Since(start), err
			}
			t := time.Now()
			if err := op(ctx); err != nil {
				return time.Since(start), err
			}
			rec.op(time.Since(t))
		}
		return time.Since(start), nil
	}
}

// parallel makes a side that runs n operations from workers goroutines:
// worker w runs op(ctx, w) n/workers times (the first n%workers workers once
// more), one after another. The first error stops the other workers and is
// returned.
func parallel(workers int, op func(ctx context.Context, w int) error) sideFunc {
	return func(ctx context.Context, n int, rec *recorder) (time.Duration, error) {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var (
			mu    sync.Mutex
			first error
			wg    sync.WaitGroup
		)
		start := time.Now()
		for w := range workers {
			share := n / workers
			if w < n%workers {
				share++
			}
			if share == 0 {
				continue
			}
			wg.Go(func() {
				for range share {
					if wctx.Err() != nil {
						return
					}
					t := time.Now()
					if err := op(wctx, w); err != nil {
						mu.Lock()
						if first == nil {
							first = fmt.Errorf("writer %d: %w", w, err)
						}
						mu.Unlock()
						cancel()
						return
					}
					rec.op(time.Since(t))
				}
			})
		}
		wg.Wait()
		d := time.Since(start)
		if err := ctx.Err(); err != nil {
			return d, err
		}
		return d, first
	}
}
