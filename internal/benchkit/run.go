package benchkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/stream"
)

// DefaultPrefix starts the names of the streams and KV buckets Run creates
// when Options.Prefix is empty.
const DefaultPrefix = "esnats_bench"

// ErrUnknownWorkload is returned by Run for a Workload that is not one of
// Workloads (the zero Workload, or one built by hand).
var ErrUnknownWorkload = errors.New("benchkit: unknown workload")

// Options configure one Run. The zero value of every field means its
// documented default.
type Options struct {
	// Prefix starts the name of every stream Run creates:
	// <Prefix>_<workload>_<8 random hex digits>, plus "_dlq" for the
	// dead-letter stream of projection-catchup and projection-kv; and of
	// every KV bucket: that name plus "_snapshots" (load-snapshotted) or,
	// one per catch-up, "_raw-kv-<n>" and "_esnats-kv-<n>" (projection-kv,
	// each deleted once checked). Letters, digits, '-' and '_'. Default
	// DefaultPrefix.
	Prefix string
	// Ops is the number of timed operations per side (Workload.Unit: appends,
	// batches, loads, commands, events). Default Workload.DefaultOps.
	// projection-catchup and projection-kv store ceil(Ops/Rounds) events
	// and consume all of them in each round, so they may run a few more
	// than Ops.
	Ops int
	// Duration, instead of Ops, runs rounds until each side has been timed
	// for at least Duration (and for at least 2 rounds); each round then
	// runs about Duration/Rounds of operations. projection-catchup and
	// projection-kv store DefaultCatchUpEvents events. Ops and Duration
	// cannot both be set.
	Duration time.Duration
	// Rounds is how many times the sides take turns: each round runs a
	// share of the operations on one side and then the same number on the
	// other, the first side alternating from round to round, so that
	// machine noise hits both. Default Workload.DefaultRounds; at most Ops.
	Rounds int
	// Concurrency is the number of writers of append-concurrent. Default
	// DefaultConcurrency (16). Other workloads run one operation at a time.
	Concurrency int
	// GroupCommit is the group-commit mode of the store Run creates (see
	// stream.Config.GroupCommit): how the esnats side of append-concurrent
	// sends its concurrent appends. Default stream.GroupCommitAuto, the
	// store's default.
	GroupCommit stream.GroupCommit
	// Replicas is the replication factor of the streams and KV buckets Run
	// creates: 1 to 5, at most the servers of the cluster. Default 1.
	Replicas int
	// Keep leaves the streams and KV buckets in place after the run, for
	// inspection, instead of deleting them (the buckets of projection-kv's
	// catch-ups are deleted as they are checked). Result.Stream names the
	// store's stream.
	Keep bool
	// Progress, if set, is told how far the timed rounds are: first with
	// done = 0 as the run starts (done stays 0 through the set-up and the
	// warm-up), then about every 100ms when done has moved, and once more
	// at the end of a successful run with done == total. done and total
	// count operations of both sides (total = 2 x the operations per side)
	// or, with Duration, milliseconds of both sides' timed work (total =
	// 2 x Duration in ms). done never decreases. Progress is called from
	// one goroutine at a time, never after Run returns, and must return
	// quickly.
	Progress func(done, total int)
}

// Validate reports an invalid option without doing any I/O.
func (o Options) Validate() error {
	switch {
	case o.Ops < 0:
		return fmt.Errorf("benchkit: Ops %d: must not be negative", o.Ops)
	case o.Duration < 0:
		return fmt.Errorf("benchkit: Duration %s: must not be negative", o.Duration)
	case o.Ops > 0 && o.Duration > 0:
		return errors.New("benchkit: set Ops or Duration, not both")
	case o.Rounds < 0:
		return fmt.Errorf("benchkit: Rounds %d: must not be negative", o.Rounds)
	case o.Concurrency < 0:
		return fmt.Errorf("benchkit: Concurrency %d: must not be negative", o.Concurrency)
	case o.Replicas < 0 || o.Replicas > 5:
		return fmt.Errorf("benchkit: Replicas %d: want 1 to 5", o.Replicas)
	case o.GroupCommit < stream.GroupCommitAuto || o.GroupCommit > stream.GroupCommitOff:
		return fmt.Errorf("benchkit: GroupCommit %d: unknown mode", int(o.GroupCommit))
	}
	if o.Prefix != "" {
		if err := stream.ValidateName("stream name prefix", o.Prefix); err != nil {
			return fmt.Errorf("benchkit: %w", err)
		}
		if len(o.Prefix) > 64 {
			return fmt.Errorf("benchkit: stream name prefix %q: longer than 64 bytes", o.Prefix)
		}
	}
	return nil
}

// withDefaults returns o with w's defaults applied.
func (o Options) withDefaults(w Workload) Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Ops == 0 && o.Duration == 0 {
		o.Ops = w.DefaultOps
	}
	if o.Rounds == 0 {
		o.Rounds = w.DefaultRounds
	}
	if o.Ops > 0 && !w.fixedChunk {
		o.Rounds = min(o.Rounds, o.Ops)
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	return o
}

// Run runs workload w against the server behind js: it creates a store
// (a stream of its own, uniquely named after Options.Prefix, never touching
// any other stream or KV bucket), sets the workload up (load,
// load-snapshotted, projection-catchup and projection-kv fill the store),
// runs each side once untimed (a full catch-up for projection-catchup and
// projection-kv), then the rounds (see Options.Rounds and Ops or Duration),
// checks that each side stored or read what it reported (event counts,
// aggregate versions, the read model's content), and deletes the streams
// and KV buckets it created (unless Options.Keep), also when it fails or
// ctx ends.
//
// Runs are independent: several may run at once, on one server or more,
// though they then disturb each other's timings.
//
// Errors: ErrUnknownWorkload; an invalid Options (see Validate) before any
// I/O; ctx.Err() itself when ctx ends first (Run returns promptly: an
// operation in flight is abandoned or, for an esnats append, settled within
// a few seconds); otherwise an error naming the side and round that failed,
// or the check that did not hold.
func Run(ctx context.Context, js jetstream.JetStream, w Workload, opts Options) (Result, error) {
	if w.setup == nil {
		return Result{}, fmt.Errorf("%w %q", ErrUnknownWorkload, w.Name)
	}
	if js == nil {
		return Result{}, errors.New("benchkit: nil JetStream")
	}
	if err := opts.Validate(); err != nil {
		return Result{}, err
	}
	o := opts.withDefaults(w)
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	reg, err := newRegistry()
	if err != nil {
		return Result{}, err
	}
	e := &env{js: js, reg: reg, name: o.Prefix + "_" + w.Name + "_" + randomHex(4), concurrency: o.Concurrency, replicas: o.Replicas}
	res, err := run(ctx, e, w, o)
	if !o.Keep {
		if cerr := e.cleanup(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return Result{}, cerr
		}
		return Result{}, fmt.Errorf("benchkit: %s: %w", w.Name, err)
	}
	return res, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return hex.EncodeToString(b)
}

// cleanup deletes the streams and KV buckets the run created, with a
// context of its own so that it also runs after ctx ended.
func (e *env) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	names := []string{e.name}
	if e.dlq {
		names = append(names, e.name+"_dlq")
	}
	var errs []error
	for _, n := range names {
		if err := e.js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, fmt.Errorf("deleting stream %s: %w", n, err))
		}
	}
	e.mu.Lock()
	buckets := slices.Clone(e.buckets)
	e.mu.Unlock()
	for _, b := range buckets {
		// Most are gone already: a catch-up deletes its bucket once checked.
		if err := e.js.DeleteKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			errs = append(errs, fmt.Errorf("deleting KV bucket %s: %w", b, err))
		}
	}
	return errors.Join(errs...)
}

// errCodeStreamCreate is the JetStream API error code of a stream the server
// failed to create (JSStreamCreateErrF).
const errCodeStreamCreate = 10049

// newStore is stream.NewStore, tried again a few times when the server fails
// to create the stream's storage directory: when an account's last stream
// is deleted, nats-server (2.15.2, stream.go, stream stop with delete)
// removes the account's then empty "streams" directory in a goroutine of
// its own, which can remove it from under a stream created an instant
// later, as a run right after another one does. The stream is then not
// created, so trying again is safe.
func newStore(ctx context.Context, js jetstream.JetStream, cfg stream.Config) (*stream.Store, error) {
	for attempt := 1; ; attempt++ {
		st, err := stream.NewStore(ctx, js, cfg)
		var apiErr *jetstream.APIError
		if err == nil || attempt == 5 || !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeStreamCreate {
			return st, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
}

// sideStats is what the rounds measured of one side.
type sideStats struct {
	hist            histogram
	ops             int
	elapsed         time.Duration
	bytes, objects  uint64
	warmup          int
	warmupPerOpTime time.Duration
}

func run(ctx context.Context, e *env, w Workload, o Options) (Result, error) {
	pl := newPlan(w, o)
	e.roundOps = pl.fixed
	prog := newProgress(o, pl)
	prog.start()
	defer prog.stop()

	store, err := newStore(ctx, e.js, stream.Config{
		Name:        e.name,
		Registry:    e.reg,
		Replicas:    o.Replicas,
		GroupCommit: o.GroupCommit,
		Description: "esnats bench " + w.Name + " (temporary)",
	})
	if err != nil {
		return Result{}, err
	}
	e.store = store
	if err := e.encodeOnce(); err != nil {
		return Result{}, err
	}
	p, err := w.setup(ctx, e)
	if err != nil {
		return Result{}, fmt.Errorf("set-up: %w", err)
	}
	sides := [2]sideFunc{p.raw, p.esnats}
	names := [2]string{"raw", "esnats"}
	var st [2]sideStats
	for k, side := range sides {
		if p.warmup == 0 {
			continue
		}
		d, err := side(ctx, p.warmup, &recorder{})
		if err != nil {
			return Result{}, fmt.Errorf("%s side, warm-up: %w", names[k], err)
		}
		st[k].warmup = p.warmup
		st[k].warmupPerOpTime = d / time.Duration(p.warmup)
	}

	var ratios []float64
	rounds := 0
	for round := 0; ; round++ {
		chunk := pl.next(round, &st)
		if chunk == 0 {
			break
		}
		order := [2]int{0, 1}
		if round%2 == 1 {
			order = [2]int{1, 0}
		}
		var took [2]time.Duration
		for _, k := range order {
			rec := &recorder{hist: &st[k].hist, count: &prog.ops[k]}
			b0, o0 := heapAllocs()
			prog.begin(k)
			d, err := sides[k](ctx, chunk, rec)
			prog.end(k, d)
			b1, o1 := heapAllocs()
			if err != nil {
				return Result{}, fmt.Errorf("%s side, round %d: %w", names[k], round+1, err)
			}
			st[k].ops += chunk
			st[k].elapsed += d
			st[k].bytes += b1 - b0
			st[k].objects += o1 - o0
			took[k] = d
		}
		rounds++
		if took[0] > 0 && took[1] > 0 {
			ratios = append(ratios, took[0].Seconds()/took[1].Seconds())
		}
	}
	prog.stop()

	if err := p.verify(ctx, st[0].ops+st[0].warmup); err != nil {
		return Result{}, fmt.Errorf("check after the run: %w", err)
	}
	prog.finish()

	res := Result{
		Workload:    w.Name,
		Unit:        w.Unit,
		EventsPerOp: w.EventsPerOp,
		Concurrency: 1,
		Replicas:    o.Replicas,
		Rounds:      rounds,
		Stream:      e.name,
		Raw:         st[0].side(w.Raw, w.EventsPerOp),
		Esnats:      st[1].side(w.Esnats, w.EventsPerOp),
		RatioMedian: median(ratios),
	}
	if w.concurrent {
		res.Concurrency = o.Concurrency
	}
	if w.groupCommit {
		res.GroupCommit = store.GroupCommitMode().String()
	}
	if res.Raw.OpsPerSec > 0 {
		res.Ratio = res.Esnats.OpsPerSec / res.Raw.OpsPerSec
	}
	return res, nil
}

func (s *sideStats) side(op string, eventsPerOp int) Side {
	out := Side{
		Op:        op,
		Ops:       s.ops,
		WarmupOps: s.warmup,
		Elapsed:   s.elapsed,
		Mean:      s.hist.mean(),
		P50:       s.hist.quantile(0.50),
		P99:       s.hist.quantile(0.99),
	}
	if s.elapsed > 0 {
		out.OpsPerSec = float64(s.ops) / s.elapsed.Seconds()
		out.EventsPerSec = out.OpsPerSec * float64(eventsPerOp)
	}
	if s.ops > 0 {
		out.BytesPerOp = int64(s.bytes / uint64(s.ops))
		out.AllocsPerOp = int64(s.objects / uint64(s.ops))
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 0 {
		return (s[m-1] + s[m]) / 2
	}
	return s[m]
}

var allocMetrics = []string{"/gc/heap/allocs:bytes", "/gc/heap/allocs:objects"}

// heapAllocs returns the bytes and objects the process has allocated on the
// heap so far (cheap: no stop of the world).
func heapAllocs() (bytes, objects uint64) {
	s := []metrics.Sample{{Name: allocMetrics[0]}, {Name: allocMetrics[1]}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		bytes = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		objects = s[1].Value.Uint64()
	}
	return bytes, objects
}

// plan decides how many operations each round runs.
type plan struct {
	chunks    []int         // Ops mode: per round
	duration  time.Duration // Duration mode
	rounds    int
	fixed     int // fixed-chunk workloads: operations of every round
	minChunk  int
	totalOps  int // Ops mode: per side
	minRounds int
}

func newPlan(w Workload, o Options) *plan {
	p := &plan{duration: o.Duration, rounds: o.Rounds, minChunk: 1, minRounds: 2}
	if w.concurrent {
		p.minChunk = o.Concurrency
	}
	if o.Duration > 0 {
		if w.fixedChunk {
			p.fixed = DefaultCatchUpEvents
		}
		return p
	}
	if w.fixedChunk {
		p.fixed = (o.Ops + o.Rounds - 1) / o.Rounds
		for range o.Rounds {
			p.chunks = append(p.chunks, p.fixed)
		}
	} else {
		for i := range o.Rounds {
			c := o.Ops / o.Rounds
			if i < o.Ops%o.Rounds {
				c++
			}
			p.chunks = append(p.chunks, c)
		}
	}
	for _, c := range p.chunks {
		p.totalOps += c
	}
	return p
}

// next returns the operations of round (0-based) given what the rounds so
// far measured, or 0 when the run is done.
func (p *plan) next(round int, st *[2]sideStats) int {
	if p.chunks != nil {
		if round < len(p.chunks) {
			return p.chunks[round]
		}
		return 0
	}
	done := min(st[0].elapsed, st[1].elapsed)
	if round >= p.minRounds && done >= p.duration {
		return 0
	}
	if p.fixed > 0 {
		return p.fixed
	}
	// Aim each side's turn at Duration/Rounds (less when little is left),
	// timed by the slower side's time per operation so far.
	perOp := max(st[0].warmupPerOpTime, st[1].warmupPerOpTime)
	if st[0].ops > 0 && st[1].ops > 0 {
		perOp = max(st[0].elapsed/time.Duration(st[0].ops), st[1].elapsed/time.Duration(st[1].ops))
	}
	target := p.duration / time.Duration(p.rounds)
	if left := p.duration - done; left > 0 && left < target {
		target = left
	}
	chunk := p.minChunk
	if perOp > 0 {
		chunk = int(min(int64(target/perOp), 10_000_000))
	}
	return max(chunk, p.minChunk)
}

// progress feeds Options.Progress from one goroutine.
type progress struct {
	fn       func(done, total int)
	total    int
	duration time.Duration // Duration mode
	ops      [2]atomic.Int64

	mu      sync.Mutex
	elapsed [2]time.Duration
	running int // side in its turn, -1 for none
	since   time.Time
	last    int

	stopOnce sync.Once
	quit     chan struct{}
	exited   chan struct{}
}

func newProgress(o Options, pl *plan) *progress {
	p := &progress{fn: o.Progress, running: -1, quit: make(chan struct{}), exited: make(chan struct{})}
	if o.Duration > 0 {
		p.duration = o.Duration
		p.total = int(max(2*o.Duration.Milliseconds(), 1))
	} else {
		p.total = 2 * pl.totalOps
	}
	return p
}

func (p *progress) begin(k int) {
	p.mu.Lock()
	p.running, p.since = k, time.Now()
	p.mu.Unlock()
}

func (p *progress) end(k int, d time.Duration) {
	p.mu.Lock()
	p.running = -1
	p.elapsed[k] += d
	p.mu.Unlock()
}

// done computes the progress so far; it never goes back.
func (p *progress) done() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int
	if p.duration > 0 {
		for k, el := range p.elapsed {
			if k == p.running {
				el += time.Since(p.since)
			}
			n += int(min(el, p.duration).Milliseconds())
		}
	} else {
		n = int(p.ops[0].Load() + p.ops[1].Load())
	}
	n = min(max(n, p.last), p.total)
	p.last = n
	return n
}

func (p *progress) start() {
	if p.fn == nil {
		close(p.exited)
		return
	}
	go func() {
		defer close(p.exited)
		p.fn(0, p.total)
		reported := 0
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				if n := p.done(); n != reported {
					reported = n
					p.fn(n, p.total)
				}
			}
		}
	}()
}

// stop stops the reporting goroutine and waits for it; it may be called more
// than once.
func (p *progress) stop() {
	p.stopOnce.Do(func() { close(p.quit) })
	<-p.exited
}

// finish reports the end of a successful run: done == total.
func (p *progress) finish() {
	if p.fn != nil {
		p.fn(p.total, p.total)
	}
}
