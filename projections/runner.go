package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// Projection builds one read model from a store's events.
type Projection struct {
	// Name names the projection and its durable consumer (letters, digits,
	// '-', '_'). Required.
	Name string
	// AggregateTypes and EventTypes select the events (empty: all).
	AggregateTypes []string
	EventTypes     []string
	// Model receives the events. A Checkpointed model gets exactly-once
	// effects; any other model must apply events idempotently (the
	// consumer's acknowledgement floor is its position).
	Model ReadModel
	// Consumer tunes the delivery (batch size, retries, failure policy,
	// fail-over, start of a new consumer); Name, AggregateTypes, EventTypes
	// and (for Checkpointed models) ResumeAt are set by the runner.
	Consumer consumers.Config
	// Fresh, if set, returns a new, empty read model of this projection,
	// for a rebuild requested from outside the process (a ControlClient,
	// `esnats projections rebuild`; see Runner.Serve): a new Memory, a KV
	// model on a new bucket, an SQL model on new tables (another model
	// name). It must not return the current model or share its data: the
	// projection keeps running on Model during the rebuild, and switches
	// over to the fresh model when the rebuild has caught up (Runner.Model
	// then returns it; the old model is left as it is). ctx ends when the
	// worker's Serve context does.
	//
	// Without Fresh, a remote rebuild fails with ErrNoFresh. Runner.Rebuild,
	// called in the process itself, takes the fresh model as an argument and
	// does not use this field.
	Fresh func(ctx context.Context) (ReadModel, error)
}

// Runner runs projections of one store in one worker process. Many
// processes may run the same projections: for each one, one process is
// active and the others stand by (see consumers.Config.Group). Serve lets
// tools outside the process see, rebuild and reset its projections.
//
// Add projections before Run; the other methods may be called from any
// goroutine, while Run runs.
type Runner struct {
	js    jetstream.JetStream
	store *stream.Store
	log   *slog.Logger

	mu         sync.Mutex
	projs      map[string]*running
	runs       int            // Run calls in progress
	supervised map[string]int // projection -> Run calls running it

	tp  trace.TracerProvider
	mp  metric.MeterProvider
	tel *runnerTelemetry
}

type running struct {
	p          Projection
	cons       *consumers.Consumer
	skip       atomic.Uint64 // Checkpointed: events at or below are skipped
	cp         bool          // the model is Checkpointed
	mu         sync.Mutex
	cancel     context.CancelFunc // stops the consumer's Run in supervise
	runDone    chan struct{}      // closed when that Run has returned
	held       chan struct{}      // non-nil: supervise must not start the consumer until it is closed (see hold)
	rebuilding atomic.Bool
	tel        *projTelemetry
}

// NewRunner returns a runner for projections of store. logger may be nil
// (discard); it gets rebuilds, resets and, unless a projection's
// consumers.Config has its own, the consumers' logs (parked events,
// fail-overs). Options add tracing and metrics (WithTracerProvider,
// WithMeterProvider); by default they go to the global OpenTelemetry
// providers, no-ops until the application sets them.
func NewRunner(js jetstream.JetStream, store *stream.Store, logger *slog.Logger, opts ...RunnerOption) *Runner {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Runner{js: js, store: store, log: logger, projs: map[string]*running{}, supervised: map[string]int{}}
	for _, o := range opts {
		o(r)
	}
	r.tel = newRunnerTelemetry(r.tp, r.mp, store.Name())
	return r
}

// Add registers a projection. Errors: an invalid name or configuration, a
// name already added, a nil model.
func (r *Runner) Add(p Projection) error {
	if p.Model == nil {
		return fmt.Errorf("projections: %q has no Model", p.Name)
	}
	rp, err := r.prepare(p, p.Name)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.projs[p.Name]; dup {
		return fmt.Errorf("projections: %q added twice", p.Name)
	}
	r.projs[p.Name] = rp
	return nil
}

// prepare builds the running projection p with its consumer under the
// durable name consumer.
func (r *Runner) prepare(p Projection, consumer string) (*running, error) {
	rp := &running{p: p}
	_, rp.cp = p.Model.(Checkpointed)
	rp.tel = r.tel.forProjection(p.Name, rp.cp)
	cons, err := r.newConsumer(rp, p, consumer)
	if err != nil {
		return nil, err
	}
	rp.cons = cons
	return rp, nil
}

// newConsumer makes the consumer feeding rp under the durable name durable.
func (r *Runner) newConsumer(rp *running, p Projection, durable string) (*consumers.Consumer, error) {
	cfg := p.Consumer
	cfg.Name = durable
	cfg.AggregateTypes = p.AggregateTypes
	cfg.EventTypes = p.EventTypes
	if cp, ok := p.Model.(Checkpointed); ok {
		// A process taking over resumes after its model's checkpoint, not
		// at the consumer's floor: its model may be behind (a Memory model
		// of a fresh process, a database restored from a backup) or ahead
		// (applied, not yet acknowledged).
		cfg.ResumeAt = func(ctx context.Context) (uint64, error) {
			seq, err := cp.Checkpoint(ctx)
			if err != nil {
				return 0, err
			}
			rp.skip.Store(seq)
			return seq + 1, nil
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = r.log.With("projection", p.Name)
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = r.tp
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = r.mp
	}
	cfg.TelemetryAttributes = append(slices.Clip(cfg.TelemetryAttributes), telemetry.KeyProjection.String(p.Name))
	cons, err := consumers.New(r.js, r.store, cfg)
	if err != nil {
		return nil, fmt.Errorf("projections: %q: %w", p.Name, err)
	}
	cons.HandleBatch(r.batchHandler(rp))
	return cons, nil
}

func (rp *running) consumer() *consumers.Consumer {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.cons
}

// batchHandler applies batches to rp's model; for a Checkpointed model it
// skips what the model already holds (exactly-once).
func (r *Runner) batchHandler(rp *running) consumers.BatchHandler {
	return func(ctx context.Context, evs []*stream.Event) (err error) {
		skipped := 0
		if rp.cp {
			floor := rp.skip.Load()
			for skipped < len(evs) && evs[skipped].Sequence <= floor {
				skipped++
			}
			evs = evs[skipped:]
			if skipped > 0 {
				r.tel.skipped.Add(ctx, int64(skipped), rp.tel.attrs.AddOpts...)
			}
			if len(evs) == 0 {
				return nil
			}
		}
		ctx, span := r.tel.startApply(ctx, rp.tel, evs, skipped)
		defer func() { telemetry.End(span, err) }()
		if err := rp.p.Model.Apply(ctx, evs); err != nil {
			if rp.cp {
				// The batch may have committed before the error: retry
				// with the model's own checkpoint.
				if cp, cerr := rp.p.Model.(Checkpointed).Checkpoint(ctx); cerr == nil {
					rp.skip.Store(cp)
				}
			}
			return err
		}
		if rp.cp {
			rp.skip.Store(evs[len(evs)-1].Sequence)
		}
		r.tel.applied.Add(ctx, int64(len(evs)), rp.tel.attrs.AddOpts...)
		return nil
	}
}

// start reads a Checkpointed model's checkpoint (events at or below it are
// skipped; the consumer resumes after it, see newConsumer), and picks the
// durable consumer: the newest one a rebuild left (<name>-r<time>) if there
// is one.
func (r *Runner) start(ctx context.Context, rp *running) error {
	var cp uint64
	if rp.cp {
		var err error
		if cp, err = rp.p.Model.(Checkpointed).Checkpoint(ctx); err != nil {
			return fmt.Errorf("projections: %q: reading the model's checkpoint: %w", rp.p.Name, err)
		}
		rp.skip.Store(cp)
	}
	durable, err := r.durable(ctx, rp.p.Name, rp.consumer().Name())
	if err != nil {
		return err
	}
	if durable == rp.consumer().Name() {
		return nil
	}
	cons, err := r.newConsumer(rp, rp.p, durable)
	if err != nil {
		return err
	}
	rp.mu.Lock()
	rp.cons = cons
	rp.mu.Unlock()
	return nil
}

// durable returns the consumer a projection uses: current if it exists,
// else the newest consumer left by a rebuild, else current (to be created).
func (r *Runner) durable(ctx context.Context, name, current string) (durable string, err error) {
	// Each lookup has a timeout of its own and is sent again if its answer
	// was lost: Run's context has no deadline, or a far one, and a reply
	// lost while servers restart would otherwise hold the projection's
	// start for ever (seen in the fault tests).
	err = jsapi.Retry(ctx, r.js.Options().DefaultTimeout, func(ctx context.Context) (err error) {
		durable, err = r.durableOnce(ctx, name, current)
		return err
	})
	return durable, err
}

func (r *Runner) durableOnce(ctx context.Context, name, current string) (string, error) {
	st, err := r.js.Stream(ctx, r.store.Name())
	if err != nil {
		return "", fmt.Errorf("projections: %q: %w", name, err)
	}
	if _, err := st.Consumer(ctx, current); err == nil {
		return current, nil
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return "", fmt.Errorf("projections: %q: looking up consumer %q: %w", name, current, err)
	}
	best := current
	names := st.ConsumerNames(ctx)
	for n := range names.Name() {
		if len(n) > len(name)+2 && n[:len(name)+2] == name+"-r" && n > best {
			best = n
		}
	}
	if err := names.Err(); err != nil {
		return "", fmt.Errorf("projections: %q: listing consumers: %w", name, err)
	}
	return best, nil
}

// Run runs every added projection until ctx ends (then it returns nil after
// each has finished and acknowledged its batch in hand) or one of them fails
// with the Stop policy (then the others are stopped too and the error names
// the projection, subject and sequence). A projection switched over by
// Rebuild goes on with its new consumer and model.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	names := make([]string, 0, len(r.projs))
	for n := range r.projs {
		names = append(names, n)
	}
	if len(names) > 0 {
		r.runs++
		for _, n := range names {
			r.supervised[n]++
		}
	}
	r.mu.Unlock()
	if len(names) == 0 {
		return errors.New("projections: nothing to run")
	}
	defer func() {
		r.mu.Lock()
		r.runs--
		for _, n := range names {
			if r.supervised[n]--; r.supervised[n] == 0 {
				delete(r.supervised, n)
			}
		}
		r.mu.Unlock()
	}()
	defer r.observe()()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(names))
	for _, name := range names {
		go func() {
			err := r.supervise(ctx, name)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	for range names {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// supervise runs one projection, and its replacement after a rebuild.
func (r *Runner) supervise(ctx context.Context, name string) error {
	for {
		rp, err := r.get(name)
		if err != nil {
			return err
		}
		rp.mu.Lock()
		held := rp.held
		rp.mu.Unlock()
		if held != nil {
			// Stopped for a reset (see hold): wait until it is done.
			select {
			case <-held:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		if err := r.start(ctx, rp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		pctx, cancel := context.WithCancel(ctx)
		runDone := make(chan struct{})
		rp.mu.Lock()
		if rp.held != nil {
			rp.mu.Unlock()
			cancel()
			continue // held meanwhile
		}
		rp.cancel, rp.runDone = cancel, runDone
		rp.mu.Unlock()
		finished := func() {
			cancel()
			rp.mu.Lock()
			rp.cancel, rp.runDone = nil, nil
			rp.mu.Unlock()
			close(runDone)
		}
		if cur, err := r.get(name); err != nil || cur != rp {
			// Switched over by a rebuild between the lookup and now.
			finished()
			continue
		}
		err = rp.consumer().Run(pctx)
		finished()
		if err != nil {
			return fmt.Errorf("projections: %q: %w", name, err)
		}
		if ctx.Err() != nil {
			return nil
		}
		// Stopped by a switch-over: run the replacement.
	}
}

// stopRunning stops rp's consumer if Run is running it, and returns a
// channel closed when that Run has returned (nil if none runs).
func (rp *running) stopRunning() <-chan struct{} {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.cancel == nil {
		return nil
	}
	rp.cancel()
	return rp.runDone
}

// Status is where a projection stands. The JSON names are those of the
// control plane's STATUS replies (docs/projections.md).
type Status struct {
	Name string `json:"name"`
	// Position is the stream sequence of the last event applied: the
	// model's checkpoint (Checkpointed models) or the consumer's
	// acknowledgement floor.
	Position uint64 `json:"position"`
	// Lag is how many matching events are not yet applied.
	Lag uint64 `json:"lag"`
	// Rate is events applied per second over the last ~10 s, by this process.
	Rate float64 `json:"rate"`
	// Parked counts events this process parked; LastError is the last
	// failure it saw.
	Parked    uint64 `json:"parked"`
	LastError string `json:"last_error,omitempty"`
	// Mode is "exactly-once" (Checkpointed model) or "ack-floor".
	Mode string `json:"mode"`
}

// Status reports each projection's position, lag, rate and last error.
func (r *Runner) Status(ctx context.Context) ([]Status, error) {
	r.mu.Lock()
	names := make([]string, 0, len(r.projs))
	for n := range r.projs {
		names = append(names, n)
	}
	r.mu.Unlock()
	out := make([]Status, 0, len(names))
	slices.Sort(names)
	for _, n := range names {
		st, err := r.StatusOf(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// StatusOf reports one projection's status. Errors: ErrUnknownProjection,
// the projection's consumer does not exist yet (no Run created it), the
// server's or the model's.
func (r *Runner) StatusOf(ctx context.Context, name string) (Status, error) {
	st, _, err := r.statusOf(ctx, name)
	return st, err
}

// statusOf is StatusOf with the consumer's own status (pin, activity).
func (r *Runner) statusOf(ctx context.Context, name string) (Status, consumers.Status, error) {
	rp, err := r.get(name)
	if err != nil {
		return Status{}, consumers.Status{}, err
	}
	cs, err := rp.consumer().Status(ctx)
	if err != nil {
		return Status{}, cs, err
	}
	st := Status{Name: name, Position: cs.Position, Lag: cs.Lag, Rate: cs.Rate, Parked: cs.Parked, LastError: cs.LastError, Mode: "ack-floor"}
	if rp.cp {
		// The model may be ahead of the consumer's floor (applied, not yet
		// acknowledged). It is never behind it while a process runs the
		// projection: taking over resumes after the model's checkpoint.
		st.Mode = "exactly-once"
		cp, err := rp.p.Model.(Checkpointed).Checkpoint(ctx)
		if err != nil {
			return Status{}, cs, err
		}
		st.Position = max(st.Position, cp)
	}
	return st, cs, nil
}

func (r *Runner) get(name string) (*running, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rp, ok := r.projs[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownProjection, name)
	}
	return rp, nil
}

// Model returns the read model the projection feeds now: Projection.Model,
// or the fresh model after a rebuild has switched the projection over (a
// rebuild requested through the control plane, see Serve, changes it
// without the process's own code knowing). Readers that must follow
// rebuilds look the model up here rather than keep the one they added.
// Errors: ErrUnknownProjection.
func (r *Runner) Model(name string) (ReadModel, error) {
	rp, err := r.get(name)
	if err != nil {
		return nil, err
	}
	return rp.p.Model, nil
}

// hold stops the projection's consumer if Run runs it in this process,
// waits until it has stopped (its batch in hand applied and acknowledged),
// and keeps Run from starting it again until release is called. Errors:
// ErrUnknownProjection, ErrBusy (being rebuilt, or already held), ctx's.
func (r *Runner) hold(ctx context.Context, name string) (release func(), err error) {
	rp, err := r.get(name)
	if err != nil {
		return nil, err
	}
	rp.mu.Lock()
	switch {
	case rp.rebuilding.Load():
		rp.mu.Unlock()
		return nil, fmt.Errorf("%w: %q is being rebuilt", ErrBusy, name)
	case rp.held != nil:
		rp.mu.Unlock()
		return nil, fmt.Errorf("%w: %q is being reset", ErrBusy, name)
	}
	held := make(chan struct{})
	rp.held = held
	cancel, done := rp.cancel, rp.runDone
	rp.mu.Unlock()
	release = func() {
		rp.mu.Lock()
		rp.held = nil
		rp.mu.Unlock()
		close(held)
	}
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			release()
			return nil, fmt.Errorf("projections: %q: waiting for it to stop: %w", name, ctx.Err())
		}
	}
	return release, nil
}

// Progress reports a rebuild's advance, for a progress bar. The JSON names
// are those of the control plane's progress messages (docs/projections.md).
type Progress struct {
	Name     string `json:"name"`
	Position uint64 `json:"position"` // stream sequence applied so far
	Target   uint64 `json:"target"`   // the store's last sequence when the rebuild started
	Applied  uint64 `json:"applied"`  // events applied by the rebuild
	Done     bool   `json:"done"`     // switched over: the last report
}

// Rebuild replays the store from the start into fresh (an empty read model
// of the same projection) through a new durable consumer, reporting
// progress, until it has caught up with the events stored when the rebuild
// started. The projection then switches over: its consumer and model become
// the rebuild's, and the old consumer is deleted; the caller swaps what its
// readers use (the old model is left as it was). The projection keeps
// running meanwhile: when Rebuild is called while Run runs, Run goes on with
// the new consumer and model after the switch.
//
// Errors: ErrUnknownProjection, ErrBusy (a rebuild or a reset of the
// projection is in progress), a failure of the replay (the old projection
// is untouched then), ctx ending before the rebuild caught up.
func (r *Runner) Rebuild(ctx context.Context, name string, fresh ReadModel, progress func(Progress)) (err error) {
	old, err := r.get(name)
	if err != nil {
		return err
	}
	if fresh == nil {
		return fmt.Errorf("projections: rebuild %q: the fresh model is nil", name)
	}
	old.mu.Lock() // against hold: a rebuild and a reset exclude each other
	switch {
	case old.held != nil:
		old.mu.Unlock()
		return fmt.Errorf("%w: %q is being reset", ErrBusy, name)
	case !old.rebuilding.CompareAndSwap(false, true):
		old.mu.Unlock()
		return fmt.Errorf("%w: %q is already being rebuilt", ErrBusy, name)
	}
	old.mu.Unlock()
	defer old.rebuilding.Store(false)
	if progress == nil {
		progress = func(Progress) {}
	}
	p := old.p
	p.Model = fresh
	gen := fmt.Sprintf("%s-r%d", name, time.Now().UnixNano())
	nc := p.Consumer
	nc.Start = consumers.FromBeginning()
	p.Consumer = nc
	rp, err := r.prepare(p, gen)
	if err != nil {
		return err
	}
	if rp.cp {
		cp, err := fresh.(Checkpointed).Checkpoint(ctx)
		if err != nil {
			return fmt.Errorf("projections: rebuild %q: reading the fresh model's checkpoint: %w", name, err)
		}
		rp.skip.Store(cp)
	}
	info, err := r.js.Stream(ctx, r.store.Name())
	if err != nil {
		return fmt.Errorf("projections: rebuild %q: %w", name, err)
	}
	si, err := info.Info(ctx)
	if err != nil {
		return fmt.Errorf("projections: rebuild %q: %w", name, err)
	}
	target := si.State.LastSeq
	ctx, span := r.tel.tracer.Start(ctx, telemetry.SpanRebuild, trace.SpanKindInternal)
	if span.IsRecording() {
		span.SetAttributes(rp.tel.spanAttrs...)
		span.SetAttributes(telemetry.KeyConsumer.String(gen), telemetry.KeyTarget.Int64(int64(target)))
	}
	started := time.Now()
	var applied uint64
	defer func() {
		if span.IsRecording() {
			span.SetAttributes(telemetry.KeyEvents.Int64(int64(applied)))
		}
		telemetry.End(span, err)
		if err != nil {
			r.log.Warn("esnats: rebuild failed; the projection is untouched", "projection", name, "stream", r.store.Name(), "consumer", gen,
				"target", target, "applied", applied, "error", err)
		}
	}()
	defer r.observeRebuild(rp.tel)()
	r.log.Info("esnats: rebuild started", "projection", name, "stream", r.store.Name(), "consumer", gen, "replacing", old.consumer().Name(), "target", target)
	rctx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- rp.consumer().Run(rctx) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	cleanup := func() {
		stop()
		<-runErr
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = r.js.DeleteConsumer(dctx, r.store.Name(), gen)
	}
	for {
		select {
		case <-ctx.Done():
			cleanup()
			return fmt.Errorf("projections: rebuild %q stopped before catching up: %w", name, ctx.Err())
		case err := <-runErr:
			runErr <- err
			cleanup()
			return fmt.Errorf("projections: rebuild %q failed: %w", name, err)
		case <-tick.C:
		}
		st, err := rp.consumer().Status(ctx)
		if err != nil {
			continue // the consumer is being created
		}
		pos := st.Position
		if rp.cp {
			pos = max(pos, rp.skip.Load())
		}
		applied = st.Handled
		if target > 0 {
			rp.tel.progress.Store(math.Float64bits(float64(min(pos, target)) / float64(target)))
		}
		progress(Progress{Name: name, Position: min(pos, target), Target: target, Applied: st.Handled})
		if st.Lag == 0 || pos >= target {
			break // caught up with what was stored when the rebuild started
		}
	}
	// Switch over: the rebuilt consumer replaces the old one.
	stop()
	if err := <-runErr; err != nil {
		return fmt.Errorf("projections: rebuild %q: %w", name, err)
	}
	r.mu.Lock()
	rp.p.Name = name
	r.projs[name] = rp
	r.mu.Unlock()
	// Run goes on with the replacement. Delete the old consumer once its
	// Run has let it go: deleting it under that Run's final reset would
	// leave the reset request unanswered until its timeout.
	if stopped := old.stopRunning(); stopped != nil {
		select {
		case <-stopped:
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.js.DeleteConsumer(dctx, r.store.Name(), old.consumer().Name()); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		r.log.Warn("esnats: could not delete the replaced consumer", "projection", name, "consumer", old.consumer().Name(), "error", err)
	}
	st, _ := rp.consumer().Status(ctx)
	applied = st.Handled
	rp.tel.progress.Store(math.Float64bits(1))
	r.log.Info("esnats: rebuild switched over", "projection", name, "stream", r.store.Name(), "consumer", gen, "replaced", old.consumer().Name(),
		"position", target, "applied", st.Handled, "took", time.Since(started).Round(time.Millisecond))
	progress(Progress{Name: name, Position: target, Target: target, Applied: st.Handled, Done: true})
	return nil
}

// Reset moves a projection back to stream sequence seq (1 or 0: the start):
// events from seq on are delivered again. An exactly-once (Checkpointed)
// model can only be reset to the start, and must be a Resetter: its data
// and checkpoint are dropped first. Any other model keeps its data and must
// take the events again idempotently.
//
// Reset is an operator's action on a stopped projection: it fails (ErrBusy)
// while this runner runs the projection, and other processes running it
// must be stopped first (a standby that takes over meanwhile would race the
// reset). A reset requested through the control plane (see Serve) stops
// and restarts the projection in the worker itself. Errors:
// ErrUnknownProjection, ErrBusy, ErrInvalidReset (a sequence other than the
// start for an exactly-once model, or one that is not a Resetter), the
// model's and the server's.
func (r *Runner) Reset(ctx context.Context, name string, seq uint64) error {
	rp, err := r.get(name)
	if err != nil {
		return err
	}
	rp.mu.Lock()
	running := rp.cancel != nil
	rp.mu.Unlock()
	if running {
		return fmt.Errorf("%w: %q is running; stop it before a reset", ErrBusy, name)
	}
	seq = max(seq, 1)
	if rp.cp {
		if seq > 1 {
			return fmt.Errorf("%w: %q has an exactly-once model: it can only be reset to the start (its checkpoint would skip the events again)", ErrInvalidReset, name)
		}
		res, ok := rp.p.Model.(Resetter)
		if !ok {
			return fmt.Errorf("%w: %q: the model cannot be reset (it is not a Resetter)", ErrInvalidReset, name)
		}
		if err := res.Reset(ctx); err != nil {
			return fmt.Errorf("projections: %q: resetting the model: %w", name, err)
		}
		rp.skip.Store(0)
	}
	durable, err := r.durable(ctx, name, rp.consumer().Name())
	if err != nil {
		return err
	}
	if _, err := r.js.ResetConsumerToSequence(ctx, r.store.Name(), durable, seq); err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			r.log.Info("esnats: projection reset", "projection", name, "stream", r.store.Name(), "consumer", durable, "sequence", seq,
				"model_emptied", rp.cp, "note", "no consumer yet: it starts at its configured start")
			return nil // not created yet: it will start at its configured start
		}
		return fmt.Errorf("projections: %q: resetting consumer %q to sequence %d: %w", name, durable, seq, err)
	}
	r.log.Info("esnats: projection reset", "projection", name, "stream", r.store.Name(), "consumer", durable, "sequence", seq, "model_emptied", rp.cp)
	return nil
}
