package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// Failure says what a consumer does with an event its handler keeps failing
// on (or that a handler would take but that cannot be decoded).
type Failure int

const (
	// Park publishes the event to the dead-letter stream, with the reason
	// and its original subject and position, and goes on (the default).
	Park Failure = iota
	// Stop makes Run return an error naming the event; the event is not
	// acknowledged and is delivered again when the consumer runs again.
	Stop
)

// Start is where a new durable consumer starts. It applies only when Run
// creates the consumer; an existing one resumes from its acknowledgement
// floor.
type Start struct {
	policy jetstream.DeliverPolicy
	seq    uint64
	time   time.Time
}

// FromBeginning delivers every stored event (the default).
func FromBeginning() Start { return Start{policy: jetstream.DeliverAllPolicy} }

// FromNow delivers only events appended after the consumer is created.
func FromNow() Start { return Start{policy: jetstream.DeliverNewPolicy} }

// FromSequence delivers events from stream sequence seq (inclusive).
func FromSequence(seq uint64) Start {
	return Start{policy: jetstream.DeliverByStartSequencePolicy, seq: seq}
}

// FromTime delivers events appended at or after t.
func FromTime(t time.Time) Start {
	return Start{policy: jetstream.DeliverByStartTimePolicy, time: t}
}

// Defaults applied to a zero Config.
const (
	DefaultBatchSize  = 100
	DefaultAckWait    = 30 * time.Second
	DefaultRetries    = 5
	DefaultBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	DefaultGroup      = "esnats"
	DefaultPinnedTTL  = 5 * time.Second
)

// Config configures a durable consumer. Name is required; the zero value of
// every other field means its documented default.
type Config struct {
	// Name is the durable consumer's name (letters, digits, '-', '_'). The
	// consumer, and so its position, outlives the process.
	Name string
	// AggregateTypes delivers only events of these aggregate types (the
	// server filters by subject). Empty: all.
	AggregateTypes []string
	// EventTypes delivers only events of these types to a batch handler
	// (the event type is a header, so the client filters; other events are
	// acknowledged without a call and without being decoded). With per-type
	// handlers, the types that have a handler are delivered and this field
	// is not used.
	EventTypes []string
	// Start is where a new consumer starts. Default FromBeginning().
	Start Start
	// BatchSize is the most events handled and acknowledged together.
	// Default 100.
	BatchSize int
	// AckWait is how long the server waits for an acknowledgement before it
	// delivers an event again. Default 30s. Retries extend it.
	AckWait time.Duration
	// Retries is how many times a failing handler is called for one event
	// (or batch) before OnFailure applies. Default 5.
	Retries int
	// Backoff is the wait before the first retry, doubling up to
	// MaxBackoff. Defaults 100ms and 5s.
	Backoff, MaxBackoff time.Duration
	// OnFailure is Park (default) or Stop.
	OnFailure Failure
	// DeadLetter is the stream that parked events go to, created when
	// missing. Default "<store>_dlq" with subjects "<store>_dlq.>".
	DeadLetter string
	// Group is the consumer's priority group: of all processes running the
	// consumer, one is pinned and gets the events; the others stand by and
	// take over PinnedTTL after it stops asking. Default "esnats".
	Group string
	// PinnedTTL is how long the server keeps a silent client pinned.
	// Default 5s, at least 2s; it bounds the fail-over time.
	PinnedTTL time.Duration
	// Logger gets what an operator needs: parked events (subject,
	// sequence, reason), fail-overs (this process took the consumer over,
	// resuming at a sequence; lost its pin), resets and errors. Default:
	// discard.
	Logger *slog.Logger
	// TracerProvider traces the delivery: one span per batch
	// (esnats.consumer.process), linked to the spans of the commands that
	// wrote its events, and one per event handled by a per-type handler
	// (esnats.consumer.handle), a child of the span that wrote the event
	// (its traceparent header); see docs/observability.md. Default: the
	// global provider (otel.GetTracerProvider), a no-op until the
	// application sets one.
	TracerProvider trace.TracerProvider
	// MeterProvider receives the consumer's metrics: events processed and
	// parked, retries, take-overs, batch duration, and the lag and active
	// gauges while Run runs (docs/observability.md). Default: the global
	// provider (otel.GetMeterProvider), a no-op until the application sets
	// one.
	MeterProvider metric.MeterProvider
	// TelemetryAttributes are added to the consumer's spans and metrics,
	// beside esnats.store and esnats.consumer (the projections runner adds
	// esnats.projection). Keep them few and of bounded cardinality.
	TelemetryAttributes []attribute.KeyValue
	// ResumeAt, if set, tells where a process that takes the consumer over
	// must resume: the stream sequence of the first event it still needs
	// (for a read model that keeps its own checkpoint: checkpoint + 1).
	// Default: the consumer's acknowledgement floor + 1. Needs a consumer
	// that starts from the beginning (the default Start) or before that
	// sequence; otherwise the floor is used and a warning logged.
	ResumeAt func(ctx context.Context) (uint64, error)
}

func (c Config) withDefaults(store *stream.Store) Config {
	if c.Start == (Start{}) {
		c.Start = FromBeginning()
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if c.Retries <= 0 {
		c.Retries = DefaultRetries
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.DeadLetter == "" {
		c.DeadLetter = store.Name() + "_dlq"
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.PinnedTTL <= 0 {
		c.PinnedTTL = DefaultPinnedTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a configuration error without I/O.
func (c Config) Validate() error {
	if err := stream.ValidateName("consumer name", c.Name); err != nil {
		return err
	}
	for _, t := range c.AggregateTypes {
		if err := stream.ValidateName("aggregate type", t); err != nil {
			return err
		}
	}
	for _, t := range c.EventTypes {
		if err := stream.ValidateName("event type", t); err != nil {
			return err
		}
	}
	if c.DeadLetter != "" {
		if err := stream.ValidateName("dead-letter stream", c.DeadLetter); err != nil {
			return err
		}
	}
	if c.Group != "" {
		if err := stream.ValidateName("priority group", c.Group); err != nil {
			return err
		}
	}
	if c.PinnedTTL != 0 && c.PinnedTTL < 2*time.Second {
		return fmt.Errorf("consumers: PinnedTTL %s is below 2s (pull requests last at least 1s and must renew the pin in time)", c.PinnedTTL)
	}
	if c.BatchSize > 10000 {
		return fmt.Errorf("consumers: BatchSize %d is larger than 10000", c.BatchSize)
	}
	return nil
}

// Handler handles one event. An error makes the consumer retry it, then
// apply the failure policy.
type Handler func(ctx context.Context, ev *stream.Event) error

// BatchHandler handles a batch of events in stream order. An error makes
// the consumer retry the batch, then handle its events one at a time to
// find the one that fails, and apply the failure policy to it.
type BatchHandler func(ctx context.Context, evs []*stream.Event) error

// Consumer delivers a store's events to handlers through a durable
// JetStream pull consumer: at least once, in stream order (so in order per
// aggregate), acknowledged by batch (the consumer's acknowledgement floor is
// its position). Configure handlers before Run; Run may be called again
// after it returns.
type Consumer struct {
	js    jetstream.JetStream
	store *stream.Store
	cfg   Config

	mu       sync.Mutex
	handlers map[string]Handler
	batch    BatchHandler
	stats    stats
	stopping <-chan struct{} // Run's ctx.Done, for retry waits
	// unconfirmed is the last message acknowledged without awaiting the
	// server's confirmation (see process), nil once a later
	// acknowledgement was confirmed. Run's goroutine only.
	unconfirmed jetstream.Msg
	active      atomic.Bool // a Run of this value holds the pin and receives
	tel         *consumerTelemetry
	lag         lagState

	stallEvery time.Duration // tests: how often the watchdog looks (0: stallCheck's default)
	onPull     func(*pull)   // tests: sees each new subscription
}

// Active reports whether a Run of this Consumer currently holds the pin of
// the consumer's group, so that this process is the one receiving and
// handling the events (the others stand by). It turns true when the first
// delivery reaches this process after it took the consumer over, and false
// when it loses the pin or Run returns: an idle consumer that has received
// nothing since it was taken over reports false.
func (c *Consumer) Active() bool { return c.active.Load() }

type stats struct {
	handled, parked atomic.Uint64
	lastErr         atomic.Pointer[string]
	rate            rateMeter
}

// New validates cfg and returns a consumer of store. The JetStream consumer
// itself is created (or updated) by Run.
func New(js jetstream.JetStream, store *stream.Store, cfg Config) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults(store)
	return &Consumer{js: js, store: store, cfg: cfg, handlers: map[string]Handler{}, tel: newConsumerTelemetry(cfg, store.Name())}, nil
}

// Handle sets the handler of one event type. Unless a batch handler is set
// (HandleBatch), events of types with no handler, of types the registry
// does not know, and messages with no event type are acknowledged without a
// call and without being decoded: never parked, never stopping Run.
func (c *Consumer) Handle(eventType string, h Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers[eventType] = h
}

// On sets a typed handler: T's registered name on the store's registry is
// the event type. It fails when T is not registered.
func On[T any](c *Consumer, h func(ctx context.Context, ev *stream.Event, data T) error) error {
	var zero T
	name, err := c.store.Registry().NameOf(zero)
	if err != nil {
		return err
	}
	c.Handle(name, func(ctx context.Context, ev *stream.Event) error {
		d, ok := ev.Data.(T)
		if !ok {
			return fmt.Errorf("%w: %s event holds %T, handler wants %T", stream.ErrDecode, ev.Type, ev.Data, zero)
		}
		return h(ctx, ev, d)
	})
	return nil
}

// HandleBatch sets one handler for batches of all delivered events (those
// of Config.EventTypes, if set). It replaces per-type handlers.
func (c *Consumer) HandleBatch(h BatchHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batch = h
}

// Name returns the durable consumer's name.
func (c *Consumer) Name() string { return c.cfg.Name }

// consumerConfig is the JetStream consumer configuration.
func (c *Consumer) consumerConfig() jetstream.ConsumerConfig {
	// All types: the stream's own subject, which the file store scans in
	// order (a narrower wildcard makes it match every message's subject,
	// measured 2.6-4x slower on small stores).
	filters := []string{c.store.Config().Subject + ".>"}
	if len(c.cfg.AggregateTypes) > 0 {
		filters = filters[:0]
		for _, t := range c.cfg.AggregateTypes {
			filters = append(filters, c.store.SubjectFilter(t))
		}
	}
	cc := jetstream.ConsumerConfig{
		Durable:        c.cfg.Name,
		Description:    "esnats consumer",
		DeliverPolicy:  c.cfg.Start.policy,
		AckPolicy:      jetstream.AckAllPolicy,
		AckWait:        c.cfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  max(1000, 4*c.cfg.BatchSize),
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{c.cfg.Group},
		PinnedTTL:      c.cfg.PinnedTTL,
	}
	if len(filters) == 1 {
		cc.FilterSubject = filters[0]
	} else {
		cc.FilterSubjects = filters
	}
	switch c.cfg.Start.policy {
	case jetstream.DeliverByStartSequencePolicy:
		cc.OptStartSeq = c.cfg.Start.seq
	case jetstream.DeliverByStartTimePolicy:
		t := c.cfg.Start.time
		cc.OptStartTime = &t
	}
	return cc
}

// ensure creates the durable consumer, or updates the settings of an
// existing one that may change (it keeps its position and start policy).
func (c *Consumer) ensure(ctx context.Context) (jetstream.Consumer, error) {
	want := c.consumerConfig()
	var cons jetstream.Consumer
	err := c.apiRetry(ctx, func(ctx context.Context) (err error) {
		cons, err = c.js.Consumer(ctx, c.store.Name(), c.cfg.Name)
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		err = c.apiRetry(ctx, func(ctx context.Context) (err error) {
			cons, err = c.js.CreateOrUpdateConsumer(ctx, c.store.Name(), want)
			return err
		})
	case err == nil:
		have := cons.CachedInfo().Config
		want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
		if have.AckPolicy != jetstream.AckAllPolicy || have.PriorityPolicy != jetstream.PriorityPolicyPinned {
			return nil, fmt.Errorf("consumers: durable consumer %q on stream %q exists with another ack or priority policy; delete it or choose another name", c.cfg.Name, c.store.Name())
		}
		err = c.apiRetry(ctx, func(ctx context.Context) (err error) {
			cons, err = c.js.CreateOrUpdateConsumer(ctx, c.store.Name(), want)
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("consumers: creating consumer %q on stream %q: %w", c.cfg.Name, c.store.Name(), err)
	}
	c.lag.fromInfo(cons.CachedInfo())
	if c.cfg.OnFailure == Park {
		if err := c.ensureDeadLetter(ctx); err != nil {
			return nil, err
		}
	}
	return cons, nil
}

// ensureDeadLetter creates the dead-letter stream if it does not exist, with
// the replicas the store's stream has on the server (not those of the
// stream.Config this process opened the store with, which may be a
// default). An existing dead-letter stream is left as it is: an operator
// may have changed its limits or replicas.
func (c *Consumer) ensureDeadLetter(ctx context.Context) error {
	_, err := c.js.Stream(ctx, c.cfg.DeadLetter)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("consumers: looking up dead-letter stream %q: %w", c.cfg.DeadLetter, err)
	}
	replicas := c.store.Config().Replicas
	if st, err := c.js.Stream(ctx, c.store.Name()); err == nil {
		replicas = st.CachedInfo().Config.Replicas
	}
	_, err = c.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        c.cfg.DeadLetter,
		Description: "esnats parked events of stream " + c.store.Name(),
		Subjects:    []string{c.cfg.DeadLetter + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Duplicates:  10 * time.Minute,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("consumers: creating dead-letter stream %q: %w", c.cfg.DeadLetter, err)
	}
	return nil
}

// Run delivers events to the handlers until ctx ends or, with the Stop
// policy, an event cannot be handled. When ctx ends it finishes the batch in
// hand, acknowledges it and returns nil: no event is lost, and none that was
// handled is delivered again.
//
// Order: events are handled in stream order. Whenever a process takes the
// consumer over (at start, after another process stopped or died), it first
// resets the consumer to its acknowledgement floor, so that events another
// process had received but not acknowledged are delivered again, in order,
// before newer ones; and a stopping process resets it for the same reason.
// This needs nats-server 2.14 or newer.
//
// Run waits as a standby while another process holds the consumer's pin.
// Errors: configuration and server errors, and with Stop a *stream.Error
// naming the subject and sequence of the event that failed.
func (c *Consumer) Run(ctx context.Context) error {
	cons, err := c.ensure(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	if c.cfg.ResumeAt != nil {
		if err := c.resumeBehind(ctx, cons); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	var (
		sub      *pull
		active   bool   // this run holds the pin and has resynchronised
		lastSeq  uint64 // stream sequence of the last event finished in this run
		nextDSeq uint64 // the consumer sequence the next delivery must have
		batch    = make([]jetstream.Msg, 0, c.cfg.BatchSize)
		seqs     = make([]uint64, 0, c.cfg.BatchSize)
		released bool
	)
	if sub, err = c.pull(cons); err != nil {
		return err
	}
	defer c.observe()()
	// leave gives the consumer back: stop pulling, forget what was
	// received and not finished, reset to the acknowledgement floor so the
	// next process gets those events in order, and unpin.
	leave := func() {
		if released {
			return
		}
		released = true
		sub.stop()
		if !active {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		// The server handles a consumer's acknowledgements in order: once
		// this one is confirmed, so are those sent before it, and the reset
		// below cannot undo them (a clean stop hands no event twice).
		if m := c.unconfirmed; m != nil {
			c.unconfirmed = nil
			if err := ackUpTo(uctx, m); err != nil {
				c.cfg.Logger.Warn("esnats: consumer's last acknowledgement not confirmed on stop; its events may be handled again", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq, "error", err)
			}
		}
		if _, err := c.js.ResetConsumer(uctx, c.store.Name(), c.cfg.Name); err != nil {
			c.cfg.Logger.Warn("esnats: consumer reset on stop failed; unacknowledged events come back after AckWait", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq, "error", err)
		} else {
			c.cfg.Logger.Debug("esnats: consumer reset and unpinned on stop", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq)
		}
		if st, err := c.js.Stream(uctx, c.store.Name()); err == nil {
			_ = st.UnpinConsumer(uctx, c.cfg.Name, c.cfg.Group)
		}
	}
	defer leave()
	defer c.active.Store(false)
	// The watchdog: a subscription that stopped pulling (seen once after
	// a cluster's servers were stopped and started in turn: no pull
	// request outstanding, events pending, nothing delivered) is replaced.
	watch := time.NewTicker(c.stallCheck())
	defer watch.Stop()
	lastDelivery := time.Now()
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case <-watch.C:
			if time.Since(lastDelivery) < c.stallCheck() || !c.pullStalled(ctx, cons) {
				continue
			}
			c.cfg.Logger.Warn("esnats: consumer had stopped pulling with events pending; pulling again", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq)
			sub.stop()
			next, err := c.pull(cons)
			if err != nil {
				released = true
				return err
			}
			sub = next
			// What the old subscription had received and not handled is
			// delivered again after a take-over's reset.
			active = false
			c.active.Store(false)
			lastDelivery = time.Now()
			continue
		case <-sub.lostPin:
			// Another process holds the pin now: what we hold is stale.
			// Take over again (with a reset) if the pin comes back.
			if active {
				c.cfg.Logger.Info("esnats: consumer lost its pin", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq)
			}
			active = false
			c.active.Store(false)
			continue
		case err := <-sub.gone:
			released = true // nothing to give back: the consumer is gone
			sub.stop()
			return fmt.Errorf("consumers: durable consumer %q of stream %q was deleted while running (a rebuild elsewhere, or an operator): %w", c.cfg.Name, c.store.Name(), err)
		case m := <-sub.msgs:
			batch = append(batch, m)
			lastDelivery = time.Now()
		}
		if !active {
			// Taking over: whatever was delivered before (to a process
			// that stopped or died, or to us) goes back to the ack
			// floor, and a fresh subscription receives from there.
			sub.stop()
			at, err := c.resume(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			c.tel.takeovers.Add(ctx, 1, c.tel.attrs.AddOpts...)
			c.cfg.Logger.Info("esnats: consumer active", "consumer", c.cfg.Name, "stream", c.store.Name(), "resume_at", at, "lag", c.lag.lag.Load())
			next, err := c.pull(cons)
			if err != nil {
				released = true // the old subscription is stopped; nothing to reset
				return err
			}
			sub = next
			active = true
			c.active.Store(true)
			nextDSeq = 1 // a reset numbers deliveries from 1 again
			continue
		}
	fill:
		for len(batch) < c.cfg.BatchSize {
			select {
			case m := <-sub.msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		// Every delivery since our reset is numbered 1, 2, 3...: a gap
		// means deliveries were lost (a broken connection, a dropped
		// slow consumer) or went to another process. Acknowledging past
		// them (AckAll) would acknowledge events never handled: take over
		// again instead, from the acknowledgement floor.
		//
		// A redelivery of an event already finished or already in hand
		// (its ack wait ran out) is skipped, keeping the order. Each
		// message's metadata is parsed once, here.
		gap := false
		fresh := batch[:0]
		seqs = seqs[:0]
		seen := lastSeq
		var pending uint64 // the server's count of messages after the last one
		for _, m := range batch {
			d, ok := parseDelivery(m.Reply())
			if !ok || d.consumer != nextDSeq {
				gap = true
				break
			}
			nextDSeq++
			pending = d.pending
			if d.stream <= seen {
				continue // also a second copy within this batch
			}
			seen = d.stream
			fresh = append(fresh, m)
			seqs = append(seqs, seen)
		}
		if gap {
			c.cfg.Logger.Info("esnats: consumer deliveries out of sequence; resynchronising", "consumer", c.cfg.Name, "stream", c.store.Name(), "position", lastSeq)
			active = false
			continue
		}
		if len(fresh) == 0 {
			// Only copies of finished events: acknowledge them, or a lost
			// acknowledgement of their batch would hold the floor back
			// (and bring them again) for ever.
			if err := ackUpTo(context.WithoutCancel(ctx), batch[len(batch)-1]); err != nil {
				c.setErr(err)
			}
			c.lag.set(pending, lastSeq)
			continue
		}
		c.lag.set(pending+uint64(len(fresh)), lastSeq)
		// The batch in hand is finished even if ctx ends meanwhile, but
		// retry waits end with ctx (see retry).
		c.stopping = ctx.Done()
		done, err := c.process(context.WithoutCancel(ctx), fresh, seqs, len(sub.msgs) > 0)
		if done >= 0 {
			lastSeq = seqs[done]
			c.lag.set(pending+uint64(len(fresh)-1-done), lastSeq)
		}
		if errors.Is(err, errStopping) {
			return nil // the rest is delivered again after the reset in leave
		}
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// errStopping ends a batch whose handler is failing when Run is asked to
// stop: what is finished is acknowledged, the rest delivered again later.
var errStopping = errors.New("consumers: stopping during retries")

// resume resets the consumer on take-over: to ResumeAt's sequence if set,
// else to the acknowledgement floor. It returns the stream sequence the
// consumer resumes at.
func (c *Consumer) resume(ctx context.Context) (uint64, error) {
	if c.cfg.ResumeAt != nil {
		seq, err := c.cfg.ResumeAt(ctx)
		if err != nil {
			return 0, fmt.Errorf("consumers: %q: where to resume: %w", c.cfg.Name, err)
		}
		var res *jetstream.ConsumerResetResponse
		err = c.apiRetry(ctx, func(ctx context.Context) (err error) {
			res, err = c.js.ResetConsumerToSequence(ctx, c.store.Name(), c.cfg.Name, max(seq, 1))
			return err
		})
		if err == nil {
			c.lag.fromInfo(res.ConsumerInfo)
			return res.ResetSeq, nil
		}
		var apiErr *jetstream.APIError
		if !errors.Is(err, jetstream.ErrConsumerInvalidReset) && !(errors.As(err, &apiErr) && apiErr.Code == 400) {
			return 0, fmt.Errorf("consumers: %q: resetting to sequence %d on take-over: %w", c.cfg.Name, seq, err)
		}
		// Refused (below the consumer's start): the floor it is.
		c.cfg.Logger.Warn("esnats: consumer cannot resume where asked; resuming at its acknowledgement floor", "consumer", c.cfg.Name, "stream", c.store.Name(), "sequence", seq, "error", err)
	}
	var res *jetstream.ConsumerResetResponse
	err := c.apiRetry(ctx, func(ctx context.Context) (err error) {
		res, err = c.js.ResetConsumer(ctx, c.store.Name(), c.cfg.Name)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("consumers: resetting %q to its acknowledgement floor on take-over: %w", c.cfg.Name, err)
	}
	c.lag.fromInfo(res.ConsumerInfo)
	return res.ResetSeq, nil
}

// resumeBehind moves the consumer back, at start, to where ResumeAt says
// when that is at or below its acknowledgement floor and no process holds
// its pin: the read model lost what the consumer acknowledged (an in-memory
// model in a new process, a database restored from a backup). A take-over
// does the same (see resume), but only once a delivery reaches this
// process, which on an idle store may not happen for a long time: the
// model would stay behind meanwhile, its status showing no lag. With a pin
// held, the active process is the one whose model counts, and this process
// waits as a standby.
func (c *Consumer) resumeBehind(ctx context.Context, cons jetstream.Consumer) error {
	var info *jetstream.ConsumerInfo
	err := c.apiRetry(ctx, func(ctx context.Context) (err error) {
		info, err = cons.Info(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("consumers: %q: reading its position: %w", c.cfg.Name, err)
	}
	for _, g := range info.PriorityGroups {
		if g.Group == c.cfg.Group && g.PinnedClientID != "" {
			return nil
		}
	}
	seq, err := c.cfg.ResumeAt(ctx)
	if err != nil {
		return fmt.Errorf("consumers: %q: where to resume: %w", c.cfg.Name, err)
	}
	seq = max(seq, 1)
	if seq > info.AckFloor.Stream {
		return nil // not behind
	}
	var res *jetstream.ConsumerResetResponse
	err = c.apiRetry(ctx, func(ctx context.Context) (err error) {
		res, err = c.js.ResetConsumerToSequence(ctx, c.store.Name(), c.cfg.Name, seq)
		return err
	})
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.Is(err, jetstream.ErrConsumerInvalidReset) || (errors.As(err, &apiErr) && apiErr.Code == 400) {
			c.cfg.Logger.Warn("esnats: consumer cannot move back to its read model's position", "consumer", c.cfg.Name, "stream", c.store.Name(), "sequence", seq, "ack_floor", info.AckFloor.Stream, "error", err)
			return nil
		}
		return fmt.Errorf("consumers: %q: moving back to sequence %d, its read model's position: %w", c.cfg.Name, seq, err)
	}
	c.lag.fromInfo(res.ConsumerInfo)
	// Debug: a model whose last events were of types it does not take has a
	// checkpoint below the floor at every start, harmlessly.
	c.cfg.Logger.Debug("esnats: consumer moved back to its read model's position", "consumer", c.cfg.Name, "stream", c.store.Name(), "resume_at", res.ResetSeq, "ack_floor_was", info.AckFloor.Stream)
	return nil
}

// stallCheck is how often Run checks, while nothing is delivered, that its
// subscription is still pulling: twice the pull expiry, at least 10s.
func (c *Consumer) stallCheck() time.Duration {
	if c.stallEvery > 0 {
		return c.stallEvery
	}
	return max(2*c.pullExpiry(), 10*time.Second)
}

// pullExpiry is how long each pull request of the subscription lasts.
func (c *Consumer) pullExpiry() time.Duration {
	return min(max(c.cfg.PinnedTTL/2, time.Second), 30*time.Second)
}

// pullStalled reports whether the server holds events for the consumer
// while no client has a pull request outstanding and none is pinned: then
// nobody is receiving, this process's subscription included, although it
// runs. An error reading the consumer is not a stall.
func (c *Consumer) pullStalled(ctx context.Context, cons jetstream.Consumer) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil || info.NumPending == 0 || info.NumWaiting > 0 || info.NumAckPending > 0 {
		return false
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID != "" {
			return false
		}
	}
	return true
}

// apiRetry runs an idempotent JetStream API request with a timeout of its
// own (the JetStream's DefaultTimeout) and sends it again when its answer
// was lost, a few times (internal/jsapi): Run's context usually has no
// deadline, or a far one, and nats.go then waits for the answer as long as
// the context lasts, so a reply lost while servers restart would hold a
// take-over for ever (seen in the fault tests: a projection that never
// became active again).
func (c *Consumer) apiRetry(ctx context.Context, call func(ctx context.Context) error) error {
	return jsapi.Retry(ctx, c.js.Options().DefaultTimeout, call)
}

// pull is one subscription of a consumer's messages.
type pull struct {
	cc      jetstream.ConsumeContext
	msgs    chan jetstream.Msg
	gone    chan error    // the durable consumer was deleted
	lostPin chan struct{} // the server says another process holds the pin
}

func (c *Consumer) pull(cons jetstream.Consumer) (*pull, error) {
	p := &pull{msgs: make(chan jetstream.Msg, 2*c.cfg.BatchSize), gone: make(chan error, 1), lostPin: make(chan struct{}, 1)}
	cc, err := cons.Consume(func(m jetstream.Msg) { p.msgs <- m },
		jetstream.PullMaxMessages(2*c.cfg.BatchSize),
		jetstream.PullPriorityGroup(c.cfg.Group),
		jetstream.PullExpiry(c.pullExpiry()),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			// Only the server's explicit notice: "not found" also shows up
			// for a moment while a replicated consumer changes leader.
			if errors.Is(err, jetstream.ErrConsumerDeleted) {
				select {
				case p.gone <- err:
				default:
				}
				return
			}
			if errors.Is(err, jetstream.ErrPinIDMismatch) {
				select {
				case p.lostPin <- struct{}{}:
				default:
				}
				return
			}
			if !errors.Is(err, nats.ErrTimeout) {
				c.cfg.Logger.Debug("esnats: consumer pull", "consumer", c.cfg.Name, "error", err)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("consumers: consuming %q: %w", c.cfg.Name, err)
	}
	p.cc = cc
	if c.onPull != nil {
		c.onPull(p)
	}
	return p, nil
}

// stop ends the subscription and drops what it received but was not taken
// (the callback may be blocked on the full channel until Stop completes).
func (p *pull) stop() {
	p.cc.Stop()
	closed := p.cc.Closed()
	for {
		select {
		case <-p.msgs:
		case <-closed:
			for {
				select {
				case <-p.msgs:
				default:
					return
				}
			}
		}
	}
}

// process handles a batch and acknowledges what was handled (or parked). It
// returns the index of the last message finished. seqs[i] is msgs[i]'s
// stream sequence. more says that further deliveries are already waiting:
// then a handled batch's acknowledgement is sent without awaiting the
// server's confirmation, the next batch's covering it (AckAll) if it is
// lost; the last batch before the consumer waits is confirmed, so that its
// position is exact once it has caught up.
func (c *Consumer) process(ctx context.Context, msgs []jetstream.Msg, seqs []uint64, more bool) (done int, err error) {
	start := time.Now()
	ctx, span := c.tel.startBatch(ctx, msgs)
	defer func() {
		c.tel.batchDur.Record(ctx, time.Since(start).Seconds(), c.tel.attrs.RecordOpts...)
		if span.IsRecording() && done >= 0 {
			span.SetAttributes(telemetry.KeySequence.Int64(int64(seqs[done])))
		}
		telemetry.End(span, err)
	}()
	events := make([]*stream.Event, 0, len(msgs))
	index := make([]int, 0, len(msgs)) // events[i] came from msgs[index[i]]
	c.mu.Lock()
	batchH, handlers := c.batch, c.handlers
	c.mu.Unlock()
	lastDone := -1 // msgs[..lastDone] are handled, parked or skipped
	flush := func() error {
		if lastDone < 0 {
			return nil
		}
		return ackUpTo(ctx, msgs[lastDone])
	}
	for i, m := range msgs {
		if typ, ok := c.wantedType(m.Headers(), batchH, handlers); !ok {
			// Not one of the types this consumer handles: acknowledged
			// with the others, without being decoded, so that an event
			// of a type this code does not know (or one that would not
			// decode) is not treated as a poison.
			if len(events) == 0 {
				lastDone = i
			}
			if !c.store.Registry().Has(typ) {
				c.cfg.Logger.Debug("esnats: consumer skipped an event of a type it has no handler for", "consumer", c.cfg.Name, "stream", c.store.Name(),
					"subject", m.Subject(), "sequence", seqs[i], "event_type", typ)
			}
			continue
		}
		ev, err := c.store.Decode(m.Subject(), seqs[i], m.Headers(), m.Data())
		if err != nil {
			// Poison: undecodable. Handle what came before it, then apply
			// the failure policy to it.
			if err := c.deliver(ctx, batchH, handlers, events, msgs, index, &lastDone); err != nil {
				_ = flush()
				return lastDone, err
			}
			events, index = events[:0], index[:0]
			if err := c.fail(ctx, m, seqs[i], 1, err); err != nil {
				_ = flush()
				return lastDone, err
			}
			lastDone = i
			continue
		}
		events = append(events, ev)
		index = append(index, i)
	}
	if err := c.deliver(ctx, batchH, handlers, events, msgs, index, &lastDone); err != nil {
		_ = flush()
		return lastDone, err
	}
	lastDone = len(msgs) - 1
	if more && c.ackAsync(msgs[lastDone]) == nil {
		c.unconfirmed = msgs[lastDone]
		return lastDone, nil
	}
	c.unconfirmed = nil
	if err := flush(); err != nil {
		// The batch is applied: a lost acknowledgement only means the next
		// batch's acknowledgement covers it, or that it is delivered again
		// and skipped. Not a reason to stop.
		c.setErr(err)
		c.cfg.Logger.Warn("esnats: acknowledgement failed; the next one covers it", "consumer", c.cfg.Name, "stream", c.store.Name(),
			"subject", msgs[lastDone].Subject(), "sequence", seqs[lastDone], "error", err)
	}
	return lastDone, nil
}

// wantedType reports whether the message, by its event type header (typ,
// "" when missing), is one the handlers take: with a batch handler every
// event, or those of Config.EventTypes; with per-type handlers those of a
// type that has a handler. What is not wanted is acknowledged without being
// decoded: with per-type handlers an event of an unregistered type, or with
// no type at all, cannot be one a handler takes.
func (c *Consumer) wantedType(h nats.Header, batchH BatchHandler, handlers map[string]Handler) (typ string, ok bool) {
	if v := h[stream.HeaderEventType]; len(v) > 0 {
		typ = v[0]
	}
	if batchH != nil {
		return typ, len(c.cfg.EventTypes) == 0 || slices.Contains(c.cfg.EventTypes, typ)
	}
	_, ok = handlers[typ]
	return typ, ok
}

// deliver hands events to the handlers with retries; an event that still
// fails gets the failure policy. lastDone advances over what is finished.
func (c *Consumer) deliver(ctx context.Context, batchH BatchHandler, handlers map[string]Handler, events []*stream.Event, msgs []jetstream.Msg, index []int, lastDone *int) error {
	if len(events) == 0 {
		return nil
	}
	if batchH != nil {
		err := c.retry(ctx, msgs, func() error { return batchH(ctx, events) })
		if errors.Is(err, errStopping) {
			return err
		}
		if err == nil {
			c.done(len(events))
			*lastDone = index[len(index)-1]
			return nil
		}
		if len(events) > 1 {
			// Find the failing event: one at a time.
			for i := range events {
				if err := c.deliver(ctx, batchH, handlers, events[i:i+1], msgs, index[i:i+1], lastDone); err != nil {
					return err
				}
			}
			return nil
		}
		if err := c.fail(ctx, msgs[index[0]], events[0].Sequence, c.cfg.Retries, err); err != nil {
			return err
		}
		*lastDone = index[0]
		return nil
	}
	for i, ev := range events {
		h := handlers[ev.Type]
		ectx, span := c.tel.startEvent(ctx, ev)
		err := c.retry(ectx, msgs, func() error { return h(ectx, ev) })
		telemetry.End(span, err)
		if err != nil {
			if errors.Is(err, errStopping) {
				return err
			}
			if err := c.fail(ctx, msgs[index[i]], ev.Sequence, c.cfg.Retries, err); err != nil {
				return err
			}
		} else {
			c.done(1)
		}
		*lastDone = index[i]
	}
	return nil
}

func (c *Consumer) done(n int) {
	c.stats.handled.Add(uint64(n))
	c.stats.rate.add(n)
	c.tel.processed.Add(context.Background(), int64(n), c.tel.attrs.AddOpts...)
}

// retry calls fn up to Retries times with doubling backoff, telling the
// server the batch is in progress so that it is not delivered again
// meanwhile.
func (c *Consumer) retry(ctx context.Context, msgs []jetstream.Msg, fn func() error) error {
	wait := c.cfg.Backoff
	var err error
	for attempt := 1; ; attempt++ {
		if err = fn(); err == nil {
			return nil
		}
		c.setErr(err)
		if attempt >= c.cfg.Retries {
			return err
		}
		c.tel.retries.Add(ctx, 1, c.tel.attrs.AddOpts...)
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			span.AddEvent(telemetry.EventRetry, trace.WithAttributes(telemetry.KeyAttempts.Int(attempt), attribute.String("error", err.Error())))
		}
		for _, m := range msgs {
			_ = m.InProgress()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-c.stopping:
			t.Stop()
			return errStopping
		case <-t.C:
		}
		wait = min(2*wait, c.cfg.MaxBackoff)
	}
}

func (c *Consumer) setErr(err error) {
	s := err.Error()
	c.stats.lastErr.Store(&s)
}

// Dead-letter headers, beside the original message's own headers.
const (
	HeaderParkedStream   = "Esnats-Parked-Stream"
	HeaderParkedSubject  = "Esnats-Parked-Subject"
	HeaderParkedSequence = "Esnats-Parked-Sequence"
	HeaderParkedConsumer = "Esnats-Parked-Consumer"
	HeaderParkedReason   = "Esnats-Parked-Reason"
	HeaderParkedAttempts = "Esnats-Parked-Attempts"
	HeaderParkedEventID  = "Esnats-Parked-Event-Id" // the event's Nats-Msg-Id
)

// fail applies the failure policy to the message m at stream sequence seq.
func (c *Consumer) fail(ctx context.Context, m jetstream.Msg, seq uint64, attempts int, cause error) error {
	c.setErr(cause)
	if c.cfg.OnFailure == Stop {
		c.cfg.Logger.Error("esnats: consumer stopped on an event it cannot handle", "consumer", c.cfg.Name, "stream", c.store.Name(),
			"subject", m.Subject(), "sequence", seq, "event_type", m.Headers().Get(stream.HeaderEventType), "attempts", attempts, "reason", cause.Error())
		return &stream.Error{Op: "consume " + c.cfg.Name, Subject: m.Subject(), Sequence: seq,
			Err: fmt.Errorf("handler failed %d times, stopping: %w", attempts, cause)}
	}
	park := nats.NewMsg(c.cfg.DeadLetter + "." + c.cfg.Name)
	for k, v := range m.Headers() {
		// The event's own headers; not the server's (Nats-*: a stored
		// expected-sequence header would be checked again on the
		// dead-letter stream).
		if !strings.HasPrefix(k, "Nats-") {
			park.Header[k] = v
		}
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
		park.Header.Set(HeaderParkedEventID, id)
	}
	park.Header.Set(jetstream.MsgIDHeader, c.cfg.Name+"-"+strconv.FormatUint(seq, 10))
	park.Header.Set(HeaderParkedStream, c.store.Name())
	park.Header.Set(HeaderParkedSubject, m.Subject())
	park.Header.Set(HeaderParkedSequence, strconv.FormatUint(seq, 10))
	park.Header.Set(HeaderParkedConsumer, c.cfg.Name)
	park.Header.Set(HeaderParkedReason, cause.Error())
	park.Header.Set(HeaderParkedAttempts, strconv.Itoa(attempts))
	park.Data = m.Data()
	if _, err := c.js.PublishMsg(ctx, park); err != nil {
		return &stream.Error{Op: "park " + c.cfg.Name, Subject: m.Subject(), Sequence: seq,
			Err: fmt.Errorf("could not park the event in %q after %v: %w", c.cfg.DeadLetter, cause, err)}
	}
	c.stats.parked.Add(1)
	c.tel.parked.Add(ctx, 1, c.tel.attrs.AddOpts...)
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(telemetry.EventParked, trace.WithAttributes(telemetry.KeyMessagingDestination.String(m.Subject()),
			telemetry.KeySequence.Int64(int64(seq)), telemetry.KeyAttempts.Int(attempts)))
	}
	c.cfg.Logger.Warn("esnats: parked event", "consumer", c.cfg.Name, "stream", c.store.Name(), "subject", m.Subject(), "sequence", seq,
		"event_type", m.Headers().Get(stream.HeaderEventType), "event_id", m.Headers().Get(jetstream.MsgIDHeader),
		"attempts", attempts, "dead_letter", c.cfg.DeadLetter, "reason", cause.Error())
	return nil
}

// ackAsync sends m's acknowledgement (AckAll: up to m) without awaiting the
// server's confirmation. It publishes what jetstream.Msg.Ack would, but
// leaves m unmarked, so that ackUpTo can still confirm it later.
func (c *Consumer) ackAsync(m jetstream.Msg) error {
	return c.js.Conn().Publish(m.Reply(), ackBody)
}

var ackBody = []byte("+ACK")

// ackUpTo acknowledges m and, with the AckAll policy, everything before it;
// synchronously, so that a clean stop never leaves handled events to be
// delivered again.
func ackUpTo(ctx context.Context, m jetstream.Msg) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := m.DoubleAck(ctx); err != nil {
		return fmt.Errorf("consumers: acknowledging up to %s: %w", m.Subject(), err)
	}
	return nil
}

// Status is where a consumer stands.
type Status struct {
	Name       string
	Position   uint64        // stream sequence of the last acknowledged event (the ack floor)
	Delivered  uint64        // stream sequence of the last delivered event
	Lag        uint64        // matching events stored after Delivered not yet delivered, plus those delivered and not acknowledged
	Pending    int           // delivered, not yet acknowledged
	Handled    uint64        // events handled by this process since it started
	Parked     uint64        // events this process parked
	Rate       float64       // events handled per second, over the last ~10s
	LastError  string        // the last handler error seen by this process
	Pinned     bool          // whether some client holds the pin of the consumer's group
	Active     bool          // whether this process holds it (see Consumer.Active)
	LastActive time.Time     // when the server last delivered to this consumer
	AckWait    time.Duration // the consumer's ack wait
}

// Status asks the server for the consumer's position and lag, and adds this
// process's counters. Errors: the consumer does not exist yet (Run creates
// it), or the server's.
func (c *Consumer) Status(ctx context.Context) (Status, error) {
	cons, err := c.js.Consumer(ctx, c.store.Name(), c.cfg.Name) // one consumer info request
	if err != nil {
		return Status{}, fmt.Errorf("consumers: status of %q: %w", c.cfg.Name, err)
	}
	info := cons.CachedInfo()
	c.lag.fromInfo(info)
	st := Status{
		Active:    c.active.Load(),
		Name:      c.cfg.Name,
		Position:  info.AckFloor.Stream,
		Delivered: info.Delivered.Stream,
		Lag:       info.NumPending + uint64(info.NumAckPending),
		Pending:   info.NumAckPending,
		Handled:   c.stats.handled.Load(),
		Parked:    c.stats.parked.Load(),
		Rate:      c.stats.rate.perSecond(),
		AckWait:   info.Config.AckWait,
	}
	if info.Delivered.Last != nil {
		st.LastActive = *info.Delivered.Last
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID != "" {
			st.Pinned = true
		}
	}
	if s := c.stats.lastErr.Load(); s != nil {
		st.LastError = *s
	}
	return st, nil
}

// rateMeter counts events in one-second buckets over the last 10 seconds.
type rateMeter struct {
	mu      sync.Mutex
	buckets [10]int
	stamp   [10]int64
}

func (r *rateMeter) add(n int) {
	now := time.Now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	i := now % 10
	if r.stamp[i] != now {
		r.stamp[i], r.buckets[i] = now, 0
	}
	r.buckets[i] += n
}

func (r *rateMeter) perSecond() float64 {
	now := time.Now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	total := 0
	for i := range r.buckets {
		if now-r.stamp[i] < 10 {
			total += r.buckets[i]
		}
	}
	return float64(total) / 10
}
