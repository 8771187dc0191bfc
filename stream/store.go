package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/esnats/esnats/internal/telemetry"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Defaults applied to a zero Config.
const (
	DefaultDuplicates   = 2 * time.Minute
	DefaultMaxEventSize = 1 << 20 // 1 MiB, the NATS server's default max_payload
	// MaxBatch is the most events one Append or AppendBatch may carry: the
	// server's atomic batch limit (1000 by default).
	MaxBatch = 1000
)

// Config configures an event store: one JetStream stream. The zero value of
// every field but Name and Registry means the documented default.
type Config struct {
	// Name is the JetStream stream name (letters, digits, '-' and '_').
	// Required.
	Name string
	// Subject is the subject prefix of the store's events, one or more
	// dot-separated tokens. Default: Name. Events are stored on
	// <Subject>.<aggregateType>.<aggregateID>, the event type in a header.
	Subject string
	// Registry maps event type names to Go types and holds the codec.
	// Required.
	Registry *Registry
	// Replicas is the stream's replication factor: 1 for development, 3 in
	// production. Default 1.
	Replicas int
	// Duplicates is the window in which the server drops a re-published
	// event id. Default 2 minutes.
	Duplicates time.Duration
	// MaxEventSize is the largest event (subject, headers and payload) the
	// store accepts, in bytes. Default 1 MiB. Larger events are refused with
	// ErrTooLarge before any I/O.
	MaxEventSize int
	// MaxAge deletes events older than this. Default 0: keep forever. An
	// event store normally keeps its whole history; set it only on purpose.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size; when reached, appends fail (the
	// store uses DiscardNew so that no history is dropped silently).
	// Default 0: unlimited.
	MaxBytes int64
	// Memory stores events in memory instead of files: for tests only, the
	// events are lost when the server stops. Default false (file storage).
	Memory bool
	// Description is stored on the stream for operators.
	Description string
	// Compression compresses stored events (s2). Default false.
	Compression bool
	// GroupCommit says how concurrent appends are sent: coalesced into
	// atomic batches (GroupCommitBatch), single-event appends pipelined and
	// only multi-event ones coalesced (GroupCommitPipeline), or each on its
	// own (GroupCommitOff). Default GroupCommitAuto, which chooses between
	// batch and pipeline from what it measures. Every mode keeps every
	// guarantee of an append; which is fastest depends on the server's
	// fsync policy and the stream's replicas (see GroupCommit and
	// docs/performance.md). The in-memory store ignores it.
	GroupCommit GroupCommit
	// MaxPendingAppends bounds the appends AppendAsync keeps in flight.
	// Default DefaultMaxPendingAppends (2048).
	MaxPendingAppends int

	// TracerProvider and MeterProvider receive the store's spans
	// (esnats.stream.append, esnats.stream.load) and metrics (append and
	// load durations, events appended; docs/observability.md). Default: the
	// global OpenTelemetry providers, which do nothing until the
	// application installs an SDK. Not part of the stream's configuration.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// withDefaults returns a copy with defaults applied.
func (c Config) withDefaults() Config {
	if c.Subject == "" {
		c.Subject = c.Name
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = DefaultDuplicates
	}
	if c.MaxEventSize == 0 {
		c.MaxEventSize = DefaultMaxEventSize
	}
	return c
}

// Validate reports a configuration error without doing any I/O.
func (c Config) Validate() error {
	if err := ValidateName("store name", c.Name); err != nil {
		return err
	}
	c = c.withDefaults()
	for _, tok := range strings.Split(c.Subject, ".") {
		if err := ValidateName("store subject token", tok); err != nil {
			return fmt.Errorf("store subject %q: %w", c.Subject, err)
		}
	}
	if c.Registry == nil {
		return fmt.Errorf("%w: Config.Registry is required", ErrStoreConfig)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("%w: Replicas must be 1 to 5, got %d", ErrStoreConfig, c.Replicas)
	}
	if c.Duplicates < 0 {
		return fmt.Errorf("%w: Duplicates must not be negative", ErrStoreConfig)
	}
	if c.MaxEventSize < 0 {
		return fmt.Errorf("%w: MaxEventSize must not be negative", ErrStoreConfig)
	}
	if c.MaxAge < 0 || c.MaxBytes < 0 {
		return fmt.Errorf("%w: MaxAge and MaxBytes must not be negative", ErrStoreConfig)
	}
	if !c.GroupCommit.valid() {
		return fmt.Errorf("%w: unknown GroupCommit mode %d", ErrStoreConfig, int(c.GroupCommit))
	}
	if c.MaxPendingAppends < 0 {
		return fmt.Errorf("%w: MaxPendingAppends must not be negative", ErrStoreConfig)
	}
	return nil
}

// StreamConfig returns the JetStream stream configuration the store uses.
func (c Config) StreamConfig() jetstream.StreamConfig {
	c = c.withDefaults()
	sc := jetstream.StreamConfig{
		Name:               c.Name,
		Description:        c.Description,
		Subjects:           []string{c.Subject + ".>"},
		Retention:          jetstream.LimitsPolicy,
		Storage:            jetstream.FileStorage,
		Replicas:           c.Replicas,
		Duplicates:         c.Duplicates,
		MaxMsgSize:         int32(c.MaxEventSize),
		MaxAge:             c.MaxAge,
		MaxBytes:           -1,
		MaxMsgs:            -1,
		MaxMsgsPerSubject:  -1,
		Discard:            jetstream.DiscardNew,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		DenyDelete:         false,
		DenyPurge:          false,
	}
	if c.MaxBytes > 0 {
		sc.MaxBytes = c.MaxBytes
	}
	if c.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	if c.Compression {
		sc.Compression = jetstream.S2Compression
	}
	return sc
}

// Store is the JetStream event store. Create it with NewStore or OpenStore.
// It is safe for concurrent use, and coalesces concurrent appends into
// atomic batches (group commit, Config.GroupCommit). It holds no connection
// of its own (the caller owns the jetstream.JetStream and its connection)
// and runs no goroutine of its own when no append is in flight, so there is
// nothing to close: drop it when done. A store of a replicated stream
// subscribes, on that connection, to the stream's leader-elected advisory
// (one subscription per connection and stream, shared by its stores, ended
// with the connection): a request dropped during a leader change is then
// resent at once instead of after the JetStream timeout.
type Store struct {
	js        jetstream.JetStream
	nc        *nats.Conn
	cfg       Config
	reg       *Registry
	subj      subjects
	apiPrefix string
	inbox     string     // prefix of the connection's reply inboxes
	gc        *committer // nil: GroupCommitOff
	async     *asyncAppender
	tel       *telemetry.Store
	leader    *leaderEpoch // the stream's leader elections; nil: not followed
}

var _ EventStore = (*Store)(nil)

// MinServerVersion is the oldest nats-server that can host a store (atomic
// batch publish arrived in 2.12).
const MinServerVersion = "2.12.0"

// NewStore creates the store's stream, or updates it to cfg if it exists,
// and returns the store. It is idempotent: many processes may call it at
// start. Errors: a cfg that does not validate; ErrStoreConfig when the server
// is older than MinServerVersion or the existing stream cannot be made
// compatible (other storage type, another retention policy, subjects that do
// not cover the store's); NATS errors (for example missing permissions)
// wrapped in *Error with Op "setup".
func NewStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	return openStore(ctx, js, cfg, true)
}

// OpenStore returns the store for an existing stream without creating or
// changing it: for processes that may only read or append. It fails with
// ErrNotFound if the stream does not exist and with ErrStoreConfig if it is
// configured incompatibly.
func OpenStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	return openStore(ctx, js, cfg, false)
}

func openStore(ctx context.Context, js jetstream.JetStream, cfg Config, create bool) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	setupErr := func(err error) error { return &Error{Op: "setup", Subject: cfg.Name, Err: err} }
	if v := js.Conn().ConnectedServerVersion(); v != "" && !serverAtLeast(v, MinServerVersion) {
		return nil, setupErr(fmt.Errorf("%w: nats-server %s is too old: an esnats store needs %s or newer (atomic batch publish)", ErrStoreConfig, v, MinServerVersion))
	}
	want := cfg.StreamConfig()
	// Every API call here is idempotent, so an attempt whose reply was lost
	// is retried (see jsapi.Retry) instead of holding the caller until ctx ends.
	attempt := js.Options().DefaultTimeout
	var st jetstream.Stream
	replicas := want.Replicas
	err := jsapi.Retry(ctx, attempt, func(ctx context.Context) (err error) {
		st, err = js.Stream(ctx, cfg.Name)
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if !create {
			return nil, setupErr(fmt.Errorf("%w: stream %q does not exist (create it with NewStore)", ErrNotFound, cfg.Name))
		}
		err = jsapi.Retry(ctx, attempt, func(ctx context.Context) error {
			for try := 1; ; try++ {
				_, err := js.CreateStream(ctx, want)
				// 10049: the server could not create the stream's directory.
				// nats-server 2.15 removes an account's empty streams
				// directory in the background after its last stream is
				// deleted; a create right after can lose that race. Nothing
				// was created, so trying again is safe.
				if apiCode(err) != codeStreamStoreCreate || try == 5 {
					return err
				}
				if berr := backoff(ctx, try); berr != nil {
					return err
				}
			}
		})
		if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, setupErr(fmt.Errorf("creating stream: %w", err))
		}
		if err != nil { // lost a creation race: check what the winner made
			return openStore(ctx, js, cfg, create)
		}
	case err != nil:
		return nil, setupErr(fmt.Errorf("looking up stream: %w", err))
	default:
		have := st.CachedInfo().Config
		replicas = max(replicas, have.Replicas)
		if err := compatible(have, want); err != nil {
			return nil, setupErr(err)
		}
		if create && needsUpdate(have, want) {
			upd := have
			upd.Description = want.Description
			upd.Replicas = want.Replicas
			upd.Duplicates = want.Duplicates
			upd.MaxMsgSize = want.MaxMsgSize
			upd.MaxAge = want.MaxAge
			upd.MaxBytes = want.MaxBytes
			upd.AllowDirect = true
			upd.AllowAtomicPublish = true
			upd.Discard = jetstream.DiscardNew
			if err := jsapi.Retry(ctx, attempt, func(ctx context.Context) error {
				_, err := js.UpdateStream(ctx, upd)
				return err
			}); err != nil {
				return nil, setupErr(fmt.Errorf("updating stream to the store's configuration: %w", err))
			}
		} else if !create && (!have.AllowAtomicPublish || !have.AllowDirect) {
			return nil, setupErr(fmt.Errorf("%w: stream %q must allow atomic publish and direct get", ErrStoreConfig, cfg.Name))
		}
	}
	store := &Store{
		js:        js,
		nc:        js.Conn(),
		cfg:       cfg,
		reg:       cfg.Registry,
		subj:      subjects{prefix: cfg.Subject},
		apiPrefix: apiPrefix(js.Options()),
		inbox:     inboxPrefix(js.Conn()),
		async:     newAsyncAppender(cfg.MaxPendingAppends),
		tel:       telemetry.NewStore(cfg.Name, cfg.TracerProvider, cfg.MeterProvider, func(err error) bool { return errors.Is(err, ErrConflict) }),
	}
	if replicas > 1 && store.apiPrefix == "$JS.API." {
		store.leader = followLeader(store.nc, cfg.Name)
	}
	if cfg.GroupCommit != GroupCommitOff {
		store.gc = newCommitter(store, cfg.GroupCommit)
	}
	return store, nil
}

// GroupCommitMode returns how the store sends concurrent single-event
// appends now: GroupCommitBatch, GroupCommitPipeline or GroupCommitOff as
// configured, and with GroupCommitAuto the one of the first two it has
// chosen from its measurements (it may choose again later).
func (s *Store) GroupCommitMode() GroupCommit {
	if s.gc == nil {
		return GroupCommitOff
	}
	return s.gc.mode()
}

// codeStreamStoreCreate is JetStream's "error creating store for stream".
const codeStreamStoreCreate = 10049

// compatible reports what in an existing stream cannot be changed to the
// store's configuration.
func compatible(have, want jetstream.StreamConfig) error {
	var probs []string
	if have.Storage != want.Storage {
		probs = append(probs, fmt.Sprintf("storage is %s, the store wants %s", have.Storage, want.Storage))
	}
	if have.Retention != jetstream.LimitsPolicy {
		probs = append(probs, fmt.Sprintf("retention is %s: events would be deleted once consumed; an event store needs limits retention", have.Retention))
	}
	covered := false
	for _, s := range have.Subjects {
		if s == want.Subjects[0] {
			covered = true
		}
	}
	if !covered {
		probs = append(probs, fmt.Sprintf("subjects are %v, the store needs %q", have.Subjects, want.Subjects[0]))
	}
	if have.MaxMsgsPerSubject > 0 {
		probs = append(probs, fmt.Sprintf("MaxMsgsPerSubject is %d: older events of an aggregate would be dropped", have.MaxMsgsPerSubject))
	}
	if have.MaxMsgs > 0 && have.Discard == jetstream.DiscardOld {
		probs = append(probs, fmt.Sprintf("MaxMsgs is %d with DiscardOld: old events would be dropped", have.MaxMsgs))
	}
	if have.Mirror != nil {
		probs = append(probs, "it is a mirror and cannot be appended to")
	}
	if len(probs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: stream %q: %s", ErrStoreConfig, have.Name, strings.Join(probs, "; "))
}

func needsUpdate(have, want jetstream.StreamConfig) bool {
	return have.Description != want.Description || have.Replicas != want.Replicas ||
		have.Duplicates != want.Duplicates || have.MaxMsgSize != want.MaxMsgSize ||
		have.MaxAge != want.MaxAge || have.MaxBytes != want.MaxBytes ||
		!have.AllowDirect || !have.AllowAtomicPublish || have.Discard != jetstream.DiscardNew
}

// serverAtLeast compares dotted versions such as "2.15.2" or "2.12.0-beta".
func serverAtLeast(have, min string) bool {
	parse := func(v string) [3]int {
		var out [3]int
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
		for i, p := range strings.SplitN(v, ".", 3) {
			out[i], _ = strconv.Atoi(p)
		}
		return out
	}
	h, m := parse(have), parse(min)
	for i := range h {
		if h[i] != m[i] {
			return h[i] > m[i]
		}
	}
	return true
}

func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	default:
		return "$JS.API."
	}
}

// Name returns the stream name.
func (s *Store) Name() string { return s.cfg.Name }

// Config returns the store's configuration with defaults applied.
func (s *Store) Config() Config { return s.cfg }

// Registry returns the store's registry.
func (s *Store) Registry() *Registry { return s.reg }

// SubjectFilter returns the subject filter matching the events of one
// aggregate type ("" = all types): for consumers and the nats CLI.
func (s *Store) SubjectFilter(aggregateType string) string {
	return s.subj.filter(aggregateType)
}

// AggregateSubject returns the subject holding one aggregate's events, or an
// error for an invalid aggregate.
func (s *Store) AggregateSubject(agg Aggregate) (string, error) {
	if err := ValidateName("aggregate type", agg.Type); err != nil {
		return "", err
	}
	tok, err := EncodeID(agg.ID)
	if err != nil {
		return "", err
	}
	return s.subj.aggregate(agg.Type, tok), nil
}

func newEventID() string { return nuid.Next() }
