package aggregate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

var (
	// ErrDeleted is returned for a command on an aggregate whose last event
	// is Terminal. Its history can still be loaded.
	ErrDeleted = errors.New("esnats: aggregate deleted")

	// ErrExists is returned by Create when the aggregate already has events.
	ErrExists = errors.New("esnats: aggregate already exists")

	// ErrNotTerminal is returned by Delete when the event given is not
	// Terminal.
	ErrNotTerminal = errors.New("esnats: event does not implement aggregate.Terminal")

	// ErrNotDeleted is returned by Purge for an aggregate whose last event
	// is not Terminal, or whose Terminal event is younger than the
	// retention period.
	ErrNotDeleted = errors.New("esnats: aggregate not deleted long enough to purge")
)

// purger is implemented by stores that can delete an aggregate's events
// (stream.Store and stream.MemoryStore).
type purger interface {
	Purge(ctx context.Context, agg stream.Aggregate) error
}

// Defaults applied to a zero Config.
const (
	DefaultSnapshotEvery = 100
	DefaultCacheSize     = 1024
	DefaultMaxAttempts   = 10
)

// Config configures a Repository. Store, Type and New are required; the
// zero value of every other field means its documented default.
type Config[A Aggregate] struct {
	// Store is the event store (a *stream.Store or a *stream.MemoryStore).
	Store stream.EventStore
	// Type is the aggregate type name, e.g. "cart": the subject token of
	// its instances (stream.ValidateName rules).
	Type string
	// New returns a new, empty aggregate for id: its state before any
	// event. It must return a fresh instance on every call.
	New func(id string) A

	// Snapshots stores snapshots (kv.NewStore for a JetStream KV bucket,
	// kv.NewMemory in tests). Nil: no snapshots, every load replays the
	// whole history.
	Snapshots kv.Snapshots
	// SnapshotEvery takes a snapshot when a save crosses a multiple of this
	// many versions. Default 100; negative disables snapshots.
	SnapshotEvery int
	// SnapshotWhen, if set, decides instead of SnapshotEvery: it gets the
	// aggregate after a save and the number of events just saved.
	SnapshotWhen func(a A, saved int) bool
	// SnapshotSchema is the schema version of the aggregate's state. Raise
	// it when the state's shape changes: older snapshots are then ignored
	// (and replaced), never decoded into the new shape. Default 1.
	SnapshotSchema int
	// SnapshotCodec encodes the aggregate's exported fields. Default msgpack
	// (field names from json tags).
	SnapshotCodec stream.Codec

	// CacheSize bounds the number of recently used aggregates kept in memory,
	// so that a hot aggregate costs no reload per command; a stale cached
	// aggregate is caught by the concurrency check and reloaded. Default
	// 1024; negative disables the cache.
	CacheSize int
	// MaxAttempts bounds how often Update runs a command that hits a
	// concurrency conflict. Default 10.
	MaxAttempts int
	// Logger receives what an operator needs: snapshots ignored (corrupt,
	// another schema, ahead of the stream) or not written, commands that still conflict after
	// MaxAttempts, appends whose outcome is unknown; each with the
	// aggregate, its subject and position. Default: discard.
	Logger *slog.Logger
	// TracerProvider traces commands (esnats.aggregate.update, .create,
	// .delete), loads and saves; a command's span is the parent recorded in
	// its events' traceparent headers (docs/observability.md). Default: the
	// global provider (otel.GetTracerProvider), a no-op until the
	// application sets one.
	TracerProvider trace.TracerProvider
	// MeterProvider receives the repository's metrics: command duration,
	// conflicts and retries, load duration and events read, snapshot writes
	// and snapshots ignored (docs/observability.md). Default: the global
	// provider (otel.GetMeterProvider), a no-op until the application sets
	// one.
	MeterProvider metric.MeterProvider
}

// Repository loads and saves aggregates of one type. It is safe for
// concurrent use; each aggregate instance it returns belongs to the caller
// until it is saved.
type Repository[A Aggregate] struct {
	cfg    Config[A]
	store  stream.EventStore
	cache  *lru[A]
	log    *slog.Logger
	snapWG sync.WaitGroup
	snapMu sync.Mutex
	snapIn map[string]*pendingSnapshot // aggregates with a snapshot write in flight -> the next one to write, if any
	tel    *repoTelemetry
}

// pendingSnapshot is a snapshot to write in the background, with the span
// context of the command that took it (the parent of the write's span).
type pendingSnapshot struct {
	snap kv.Snapshot
	sc   trace.SpanContext
}

// NewRepository validates cfg and returns a repository.
func NewRepository[A Aggregate](cfg Config[A]) (*Repository[A], error) {
	if cfg.Store == nil || cfg.New == nil {
		return nil, errors.New("aggregate: Config.Store and Config.New are required")
	}
	if err := stream.ValidateName("aggregate type", cfg.Type); err != nil {
		return nil, err
	}
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = DefaultSnapshotEvery
	}
	if cfg.SnapshotSchema == 0 {
		cfg.SnapshotSchema = 1
	}
	if cfg.SnapshotCodec == nil {
		cfg.SnapshotCodec = stream.Msgpack()
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	var storeName string
	if n, ok := cfg.Store.(interface{ Name() string }); ok {
		storeName = n.Name()
	}
	r := &Repository[A]{cfg: cfg, store: cfg.Store, log: cfg.Logger, snapIn: map[string]*pendingSnapshot{},
		tel: newRepoTelemetry(cfg.TracerProvider, cfg.MeterProvider, storeName, cfg.Type)}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if cfg.CacheSize > 0 {
		r.cache = newLRU[A](cfg.CacheSize)
	}
	return r, nil
}

func (r *Repository[A]) ref(id string) stream.Aggregate {
	return stream.Aggregate{Type: r.cfg.Type, ID: id}
}

// Load returns the aggregate with every stored event applied: a cached
// instance brought up to date with the events stored after it (one batched
// read, usually empty), else the latest usable snapshot plus the events after
// it, else a replay of the whole history. An aggregate with no events is
// returned in its initial state (version 0). The instance belongs to the
// caller; Save it to record changes.
//
// A cached instance or a snapshot is used only if the stream still holds the
// event it was taken after, at the sequence and with the version it records:
// the read after it starts at that event, in the same round trip. A snapshot
// that fails this check (one left behind by stream.Store.Purge, or from a
// bucket restored from a newer backup than the stream) is logged, counted
// as ignored (reason "mismatch"), deleted, and the history is replayed
// instead, in a second read. A snapshot whose last event is gone but whose
// next version follows (events expired under the store's MaxAge) is used;
// when the read finds nothing of the aggregate at or after it, the stream
// leader decides (a replica behind the leader, or all the aggregate's
// events expired, keep the snapshot); a cached instance that fails it is dropped and
// the aggregate loaded afresh. A load never returns a state that is ahead of
// the stream's history.
//
// On a replicated store the events are read from any current replica, so a
// load an instant after another process's append may not see it yet; a
// command based on it then fails the concurrency check, never silently.
//
// Errors: stream.ErrInvalidID for a bad id (before I/O); the store's errors
// (stream.ErrNotFound for a missing stream, stream.ErrDecode and others for
// events that cannot be decoded, naming subject and sequence); a
// *stream.Error (Op "load", naming the event's subject and sequence)
// matching stream.ErrDecode when the versions of the stored events do not
// follow each other.
func (r *Repository[A]) Load(ctx context.Context, id string) (A, error) {
	if a, ok := r.cache.take(id); ok {
		start := time.Now()
		lctx, span := r.tel.start(ctx, telemetry.SpanLoad, id)
		n, ok, err := r.follow(lctx, a)
		switch {
		case err != nil:
			r.tel.endLoad(lctx, span, fromCache, start, n, nil, err)
			var zero A
			return zero, err
		case ok:
			r.tel.endLoad(lctx, span, fromCache, start, n, a, nil)
			return a, nil
		}
		// The stream no longer holds the cached instance's last event
		// (its history was purged): load it afresh (not measured as a
		// load from the cache).
		if span.IsRecording() {
			span.SetAttributes(telemetry.KeyLoadSource.String(sourceNames[fromCache]), telemetry.KeyEvents.Int(0))
		}
		span.End()
	}
	return r.load(ctx, id)
}

// follow applies to a the events stored after its revision, and returns
// how many there were. a must have been loaded or saved: its revision is
// checked against the stream first. The read starts at the sequence of a's
// last event (the anchor, read in the same round trip as the events after
// it, and not applied), and ok is false, with nothing applied, when the
// stream does not hold an event of a's version there: a is then ahead of the
// stream (a snapshot or a cached instance of a history since purged, or
// never stored), or its position is wrong.
//
// An anchor that cannot be decoded (its type since unregistered, say) is
// taken as present: it was decoded when a was built, and the next event, if
// any, must then have the next version.
func (r *Repository[A]) follow(ctx context.Context, a A) (n int, ok bool, err error) {
	n, ok, _, err = r.followAnchor(ctx, a)
	return n, ok, err
}

// followAnchor is follow; absent is true when, ok being false, the read
// found no event of the aggregate at or after the anchor at all (rather
// than one that contradicts a's revision): what a replica behind the
// leader also shows, so only the leader can tell.
func (r *Repository[A]) followAnchor(ctx context.Context, a A) (n int, ok, absent bool, err error) {
	root := a.root()
	ref := r.ref(root.id)
	if root.version == 0 {
		// Nothing to check: read from the start.
		for ev, err := range r.store.Load(ctx, ref) {
			if err == nil {
				err = applyStored(a, ev)
			}
			if err != nil {
				return n, true, false, err
			}
			n++
		}
		return n, true, false, nil
	}
	anchor, version := root.sequence, root.version
	if anchor == 0 {
		return 0, false, false, nil
	}
	found, undecodable := false, false
	skipAnchor := stream.SkipUndecodable(func(err error) bool {
		var se *stream.Error
		if !found && errors.As(err, &se) && se.Sequence == anchor {
			found, undecodable = true, true
			return true
		}
		return false
	})
	for ev, err := range r.store.Load(ctx, ref, stream.FromSequence(anchor), skipAnchor) {
		if err != nil {
			return n, true, false, err
		}
		if !found {
			switch {
			case ev.Sequence == anchor && ev.Version == version:
				found = true
				continue
			case ev.Sequence > anchor && ev.Version == version+1:
				// The anchor itself is gone (expired under the store's
				// MaxAge, or removed) and the history goes on from it.
				found = true
			default:
				return 0, false, false, nil
			}
		}
		if undecodable && n == 0 && ev.Version != version+1 {
			return 0, false, false, nil
		}
		if err := applyStored(a, ev); err != nil {
			return n, true, false, err
		}
		n++
	}
	return n, found, !found, nil
}

// load reads the aggregate from the snapshot store and the event store.
func (r *Repository[A]) load(ctx context.Context, id string) (A, error) {
	ref := r.ref(id)
	if err := ref.Validate(); err != nil {
		var zero A
		return zero, err
	}
	start := time.Now()
	ctx, span := r.tel.start(ctx, telemetry.SpanLoad, id)
	src := fromEvents
	a, fromSnap := r.fromSnapshot(ctx, ref)
	if fromSnap {
		src = fromSnapshot
		n, ok, absent, err := r.followAnchor(ctx, a)
		if err != nil {
			r.tel.endLoad(ctx, span, src, start, n, nil, err)
			var zero A
			return zero, err
		}
		if ok {
			r.tel.endLoad(ctx, span, src, start, n, a, nil)
			return a, nil
		}
		root := a.root()
		verdict := snapshotDelete // a stored event contradicts it
		if absent {
			verdict = r.snapshotMismatch(ctx, ref, root.Revision())
		}
		switch verdict {
		case snapshotKeep:
			r.tel.endLoad(ctx, span, src, start, 0, a, nil)
			return a, nil
		case snapshotDelete:
			r.ignoreSnapshot(ctx, ignoredMismatch, slog.LevelWarn, "esnats: ignoring snapshot of an event the stream does not hold", ref, root.version, root.sequence)
			if err := r.cfg.Snapshots.Delete(ctx, ref); err != nil {
				r.log.Warn("esnats: ignored snapshot not deleted", append(r.logAttrs(ref), "error", err)...)
			}
		default:
			r.ignoreSnapshot(ctx, ignoredMismatch, slog.LevelInfo, "esnats: snapshot not confirmed by the replica read; loading from the events", ref, root.version, root.sequence)
		}
		a, src = New(r.cfg.New(id), id), fromEvents
	}
	n, _, err := r.follow(ctx, a)
	if err != nil {
		r.tel.endLoad(ctx, span, src, start, n, nil, err)
		var zero A
		return zero, err
	}
	r.tel.endLoad(ctx, span, src, start, n, a, nil)
	if r.cfg.Snapshots != nil && r.cfg.SnapshotEvery > 0 && n >= r.cfg.SnapshotEvery {
		// No usable snapshot (none, ignored, or corrupt) and a long history:
		// take one now so the next load is short.
		r.snapshot(ctx, a)
	}
	return a, nil
}

// What to do with a snapshot whose last event a load did not find.
const (
	snapshotReplay = iota // load from the events this time, keep the snapshot
	snapshotKeep          // the snapshot is right: use it
	snapshotDelete        // ahead of the stream: delete it, load from the events
)

// snapshotMismatch asks the stream leader for the aggregate's last revision
// when a load found no event of the aggregate at or after the snapshot's
// last one (rev), to tell a snapshot ahead of the stream (left by
// stream.Store.Purge, or newer than a restored stream: deleted) from a
// replica that is behind (the leader holds rev: the snapshot is used) and
// from events that expired (the store has a MaxAge and holds nothing of the
// aggregate: the snapshot is all that is left of it, and is used). When the
// leader cannot be asked, or its history goes on past the snapshot (the
// replica read is behind), the load reads the events and the snapshot
// stays.
func (r *Repository[A]) snapshotMismatch(ctx context.Context, ref stream.Aggregate, rev stream.Revision) int {
	last, err := r.store.LastRevision(ctx, ref)
	switch {
	case err != nil:
		return snapshotReplay
	case last == rev:
		return snapshotKeep
	case last.Version > rev.Version && last.Sequence > rev.Sequence:
		return snapshotReplay
	case last.IsZero() && r.eventsExpire():
		return snapshotKeep
	}
	return snapshotDelete
}

// eventsExpire reports whether the store deletes old events (Config.MaxAge
// or MaxBytes).
func (r *Repository[A]) eventsExpire() bool {
	c, ok := r.store.(interface{ Config() stream.Config })
	return ok && (c.Config().MaxAge > 0 || c.Config().MaxBytes > 0)
}

// fromSnapshot returns a new aggregate restored from its snapshot, or a new
// empty one (false) when there is no usable snapshot.
func (r *Repository[A]) fromSnapshot(ctx context.Context, ref stream.Aggregate) (A, bool) {
	a := New(r.cfg.New(ref.ID), ref.ID)
	if r.cfg.Snapshots == nil || r.cfg.SnapshotEvery < 0 && r.cfg.SnapshotWhen == nil {
		return a, false
	}
	snap, ok, err := r.cfg.Snapshots.Get(ctx, ref)
	if err != nil {
		reason := ignoredUnreadable
		if errors.Is(err, kv.ErrCorruptSnapshot) {
			reason = ignoredCorrupt
		}
		r.ignoreSnapshot(ctx, reason, slog.LevelWarn, "esnats: ignoring snapshot", ref, 0, 0, "error", err)
		return a, false
	}
	if !ok {
		return a, false
	}
	if snap.StateType != r.cfg.Type || snap.SchemaVersion != r.cfg.SnapshotSchema || snap.Version == 0 {
		r.ignoreSnapshot(ctx, ignoredSchema, slog.LevelInfo, "esnats: ignoring snapshot of another state schema", ref, snap.Version, snap.Sequence,
			"state_type", snap.StateType, "schema", snap.SchemaVersion, "want_schema", r.cfg.SnapshotSchema)
		return a, false
	}
	codec, ok := r.codecFor(snap.ContentType)
	if !ok {
		r.ignoreSnapshot(ctx, ignoredContentType, slog.LevelWarn, "esnats: ignoring snapshot with unknown content type", ref, snap.Version, snap.Sequence,
			"content_type", snap.ContentType)
		return a, false
	}
	if err := codec.Unmarshal(snap.State, a); err != nil {
		r.ignoreSnapshot(ctx, ignoredCorrupt, slog.LevelWarn, "esnats: ignoring undecodable snapshot", ref, snap.Version, snap.Sequence, "error", err)
		return New(r.cfg.New(ref.ID), ref.ID), false
	}
	root := a.root()
	root.version, root.sequence = snap.Version, snap.Sequence
	return a, true
}

// ignoreSnapshot counts and logs a snapshot the load does not use; version
// and sequence are the snapshot's position (0 when unknown).
func (r *Repository[A]) ignoreSnapshot(ctx context.Context, reason ignoreReason, level slog.Level, msg string, ref stream.Aggregate, version, sequence uint64, args ...any) {
	r.tel.snapIgnored.Add(ctx, 1, r.tel.ignored[reason].AddOpts...)
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(telemetry.EventSnapshotIgnored, trace.WithAttributes(telemetry.KeyReason.String(reasonNames[reason])))
	}
	if !r.log.Enabled(ctx, level) {
		return
	}
	attrs := append(r.logAttrs(ref), "reason", reasonNames[reason])
	if version > 0 {
		attrs = append(attrs, "version", version, "sequence", sequence)
	}
	r.log.Log(ctx, level, msg, append(attrs, args...)...)
}

// logAttrs names an aggregate in logs: type/id, its subject, and the
// snapshot bucket when there is one.
func (r *Repository[A]) logAttrs(ref stream.Aggregate) []any {
	attrs := []any{"aggregate", ref.String()}
	if s, ok := r.store.(interface {
		AggregateSubject(stream.Aggregate) (string, error)
	}); ok {
		if subj, err := s.AggregateSubject(ref); err == nil {
			attrs = append(attrs, "subject", subj)
		}
	}
	if b, ok := r.cfg.Snapshots.(interface{ Bucket() string }); ok {
		attrs = append(attrs, "bucket", b.Bucket())
	}
	return attrs
}

func (r *Repository[A]) codecFor(ct string) (stream.Codec, bool) {
	if ct == "" || ct == r.cfg.SnapshotCodec.ContentType() {
		return r.cfg.SnapshotCodec, true
	}
	switch ct {
	case stream.Msgpack().ContentType():
		return stream.Msgpack(), true
	case stream.JSON().ContentType():
		return stream.JSON(), true
	}
	return nil, false
}

// Save appends the aggregate's recorded events atomically, expecting the
// revision it was loaded at: if another writer saved the aggregate since,
// nothing is written and the error matches stream.ErrConflict (load again
// and rerun the command). On success the aggregate is at its new revision
// and a snapshot is written in the background when the policy says so (its
// failure never fails the save). Saving an aggregate with no recorded events
// does nothing. The instance stays the caller's (it is not cached; Update
// caches the instances it saves).
func (r *Repository[A]) Save(ctx context.Context, a A, opts ...stream.AppendOption) error {
	return r.save(ctx, a, false, true, opts)
}

// save appends a's recorded events. cache puts a in the cache after a
// successful save; carry records the save span as the events' trace
// context (a command has put its own span there already).
func (r *Repository[A]) save(ctx context.Context, a A, cache, carry bool, opts []stream.AppendOption) (err error) {
	root := a.root()
	if root.deletedAt != 0 && root.deletedAt < root.version {
		return fmt.Errorf("%w: %s: events recorded after its terminal event (version %d)", ErrDeleted, r.ref(root.id), root.deletedAt)
	}
	if len(root.pending) == 0 {
		return nil
	}
	ctx, span := r.tel.start(ctx, telemetry.SpanSave, root.id)
	if span.IsRecording() {
		r.saveAttrs(span, root)
	}
	defer func() {
		switch {
		case !span.IsRecording():
			span.End()
		case err == nil:
			span.SetAttributes(telemetry.KeyVersion.Int64(int64(root.version)), telemetry.KeySequence.Int64(int64(root.sequence)))
			span.End()
		case errors.Is(err, stream.ErrConflict):
			// Another writer got in first: the command decides (it
			// retries), so not a span error.
			span.SetAttributes(telemetry.KeyOutcome.String(telemetry.OutcomeConflict))
			span.RecordError(err)
			span.End()
		default:
			telemetry.End(span, err)
		}
	}()
	if carry {
		ctx = carryTrace(ctx)
	}
	events := make([]stream.EventData, len(root.pending))
	for i, e := range root.pending {
		events[i] = stream.EventData{Data: e}
	}
	res, err := r.store.Append(ctx, r.ref(root.id), stream.ExpectRevision(root.Revision()), events, opts...)
	if err != nil {
		r.cache.drop(root.id)
		if errors.Is(err, stream.ErrIndeterminate) {
			r.log.Warn("esnats: append outcome unknown", append(r.logAttrs(r.ref(root.id)),
				"version", root.Revision().Version, "sequence", root.Revision().Sequence, "events", len(events), "error", err)...)
		}
		return err
	}
	n := len(root.pending)
	before := root.version - uint64(n)
	root.committed(res.Last.Sequence)
	if r.wantSnapshot(a, before, n) {
		r.snapshot(ctx, a)
	}
	if cache {
		r.cache.put(root.id, a)
	}
	return nil
}

// saveAttrs describes a save on its span: the events, the expected
// revision, the subject.
func (r *Repository[A]) saveAttrs(span trace.Span, root *Root) {
	rev := root.Revision()
	span.SetAttributes(telemetry.KeyEvents.Int(len(root.pending)),
		telemetry.KeyExpectedVersion.Int64(int64(rev.Version)),
		telemetry.KeyExpectedSequence.Int64(int64(rev.Sequence)))
	if len(root.pending) == 1 {
		if name, err := r.store.Registry().NameOf(root.pending[0]); err == nil {
			span.SetAttributes(telemetry.KeyEventType.String(name))
		}
	}
	if s, ok := r.store.(interface {
		AggregateSubject(stream.Aggregate) (string, error)
	}); ok {
		if subj, err := s.AggregateSubject(r.ref(root.id)); err == nil {
			span.SetAttributes(telemetry.KeyMessagingDestination.String(subj))
		}
	}
}

func (r *Repository[A]) wantSnapshot(a A, before uint64, saved int) bool {
	if r.cfg.Snapshots == nil {
		return false
	}
	if r.cfg.SnapshotWhen != nil {
		return r.cfg.SnapshotWhen(a, saved)
	}
	if r.cfg.SnapshotEvery <= 0 {
		return false
	}
	every := uint64(r.cfg.SnapshotEvery)
	return before/every != a.root().version/every
}

// snapshot encodes a's state now (the caller may change a afterwards) and
// writes it in the background. At most one write per aggregate is in
// flight; a newer snapshot taken meanwhile is written after it (only the
// newest waits). A snapshot that cannot be taken is logged and skipped.
// The write's span (kv) is a child of ctx's span.
func (r *Repository[A]) snapshot(ctx context.Context, a A) {
	root := a.root()
	if root.deletedAt != 0 {
		return // the Terminal event must be replayed to be seen
	}
	state, err := r.cfg.SnapshotCodec.Marshal(a)
	if err != nil {
		r.tel.snapWrites.Add(ctx, 1, r.tel.snapErr.AddOpts...)
		r.log.Warn("esnats: cannot encode snapshot", append(r.logAttrs(r.ref(root.id)), "version", root.version, "sequence", root.sequence, "error", err)...)
		return
	}
	p := &pendingSnapshot{snap: kv.Snapshot{
		Aggregate:     r.ref(root.id),
		Version:       root.version,
		Sequence:      root.sequence,
		StateType:     r.cfg.Type,
		SchemaVersion: r.cfg.SnapshotSchema,
		ContentType:   r.cfg.SnapshotCodec.ContentType(),
		State:         state,
		Time:          time.Now().UTC(),
	}, sc: trace.SpanContextFromContext(ctx)}
	id := root.id
	r.snapMu.Lock()
	if _, busy := r.snapIn[id]; busy {
		r.snapIn[id] = p // written when the one in flight is done
		r.snapMu.Unlock()
		return
	}
	r.snapIn[id] = nil
	r.snapMu.Unlock()
	r.snapWG.Add(1)
	go func() {
		defer r.snapWG.Done()
		for next := p; next != nil; {
			r.writeSnapshot(next)
			r.snapMu.Lock()
			next = r.snapIn[id]
			if next == nil {
				delete(r.snapIn, id)
			} else {
				r.snapIn[id] = nil
			}
			r.snapMu.Unlock()
		}
	}()
}

// writeSnapshot writes one snapshot, off the command's path: a failure is
// counted and logged, never returned.
func (r *Repository[A]) writeSnapshot(p *pendingSnapshot) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.sc.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, p.sc)
	}
	if err := r.cfg.Snapshots.Put(ctx, p.snap); err != nil {
		r.tel.snapWrites.Add(ctx, 1, r.tel.snapErr.AddOpts...)
		r.log.Warn("esnats: snapshot not written", append(r.logAttrs(p.snap.Aggregate),
			"version", p.snap.Version, "sequence", p.snap.Sequence, "error", err)...)
		return
	}
	r.tel.snapWrites.Add(ctx, 1, r.tel.snapOK.AddOpts...)
}

// Flush waits for background snapshot writes to finish.
func (r *Repository[A]) Flush() { r.snapWG.Wait() }

// Update loads the aggregate, runs the command fn on it and saves the events
// it recorded, atomically with the concurrency check. When another writer
// got in first, it loads the aggregate again and reruns fn, up to
// MaxAttempts times with jittered backoff; the error after the last attempt
// says so and matches stream.ErrConflict. fn must decide from the aggregate
// only (it may run more than once). An error from fn rejects the command:
// nothing is saved and the error is returned as is. A command on a deleted
// aggregate fails with ErrDeleted without running fn.
//
// opts are passed to the append (correlation id, metadata, ...).
//
// fn must not keep a after it returns: the saved instance is cached for the
// next command on the same aggregate.
func (r *Repository[A]) Update(ctx context.Context, id string, fn func(A) error, opts ...stream.AppendOption) error {
	return r.run(ctx, cmdUpdate, id, fn, opts)
}

// Create is Update for an aggregate that must be new: it fails with
// ErrExists when the aggregate already has events.
func (r *Repository[A]) Create(ctx context.Context, id string, fn func(A) error, opts ...stream.AppendOption) error {
	return r.run(ctx, cmdCreate, id, fn, opts)
}

// Delete records the Terminal event ev and saves it: later commands fail
// with ErrDeleted; Load still returns the aggregate and its history.
// Errors: ErrNotTerminal when ev does not implement Terminal; those of
// Update.
func (r *Repository[A]) Delete(ctx context.Context, id string, ev any, opts ...stream.AppendOption) error {
	if _, ok := deref(ev).(Terminal); !ok {
		return fmt.Errorf("%w: %T", ErrNotTerminal, ev)
	}
	return r.run(ctx, cmdDelete, id, func(a A) error { a.root().Record(ev); return nil }, opts)
}

// Purge deletes a deleted aggregate's history and snapshot once its
// Terminal event is older than retention, for data that must not be kept
// forever. Errors: ErrNotDeleted when the aggregate's last event is not
// Terminal or is younger than retention; an error when the store cannot
// purge; the store's errors.
func (r *Repository[A]) Purge(ctx context.Context, id string, retention time.Duration) error {
	p, ok := r.store.(purger)
	if !ok {
		return fmt.Errorf("aggregate: the store %T cannot purge", r.store)
	}
	ref := r.ref(id)
	rev, err := r.store.LastRevision(ctx, ref)
	if err != nil {
		return err
	}
	if rev.IsZero() {
		return fmt.Errorf("%w: %s has no events", ErrNotDeleted, ref)
	}
	var last *stream.Event
	for ev, err := range r.store.Load(ctx, ref, stream.FromSequence(rev.Sequence), stream.WithLimit(1)) {
		if err != nil {
			return err
		}
		last = ev
	}
	if last == nil {
		return fmt.Errorf("%w: %s: its last event could not be read", ErrNotDeleted, ref)
	}
	if _, ok := last.Data.(Terminal); !ok {
		return fmt.Errorf("%w: %s: its last event is %s", ErrNotDeleted, ref, last.Type)
	}
	if age := time.Since(last.Time); age < retention {
		return fmt.Errorf("%w: %s was deleted %s ago, retention is %s", ErrNotDeleted, ref, age.Round(time.Second), retention)
	}
	r.cache.drop(id)
	if r.cfg.Snapshots != nil {
		if err := r.cfg.Snapshots.Delete(ctx, ref); err != nil {
			return err
		}
	}
	return p.Purge(ctx, ref)
}

// run runs the command fn on the aggregate id: load, fn, save, and on a
// conflict again, up to MaxAttempts times. A Create (c) requires an
// aggregate with no events.
func (r *Repository[A]) run(ctx context.Context, c command, id string, fn func(A) error, opts []stream.AppendOption) (err error) {
	start := time.Now()
	ctx, span := r.tel.start(ctx, commandSpans[c], id)
	var (
		a        A
		attempts int
		out      = outError
	)
	defer func() {
		if out != outRejected {
			out = outcomeOf(err)
		}
		var at Aggregate
		if attempts > 0 && err == nil {
			at = a
		}
		r.tel.endCommand(ctx, span, c, start, attempts, at, out, err)
	}()
	// The events' traceparent: this command's span.
	ctx = carryTrace(ctx)
	for attempt := 1; ; attempt++ {
		attempts = attempt
		if cached, ok := r.cache.take(id); ok && attempt == 1 {
			// No catch-up read: if another writer moved the aggregate,
			// the save's concurrency check says so and we reload.
			a = cached
		} else {
			a, err = r.load(ctx, id)
		}
		if err != nil {
			return err
		}
		root := a.root()
		if c == cmdCreate && root.version > 0 {
			r.cache.put(id, a)
			return fmt.Errorf("%w: %s at %s", ErrExists, r.ref(id), root.Revision())
		}
		if root.deletedAt != 0 {
			r.cache.put(id, a)
			return fmt.Errorf("%w: %s", ErrDeleted, r.ref(id))
		}
		if err := fn(a); err != nil {
			if len(root.pending) == 0 {
				r.cache.put(id, a)
			} // else: events were applied; the instance is spoilt
			out = outRejected
			return err
		}
		err = r.save(ctx, a, true, false, opts)
		if err == nil {
			return nil
		}
		if !errors.Is(err, stream.ErrConflict) {
			return err
		}
		retry := attempt < r.cfg.MaxAttempts
		r.tel.conflict(ctx, span, c, attempt, err, retry)
		if !retry {
			r.log.Warn("esnats: command still conflicting", append(r.logAttrs(r.ref(id)),
				"command", commandNames[c], "attempts", attempt, "error", err)...)
			return fmt.Errorf("aggregate %s: command still conflicting after %d attempts: %w", r.ref(id), attempt, err)
		}
		if err := sleepJitter(ctx, attempt); err != nil {
			return err
		}
	}
}

// sleepJitter waits 1ms doubling to 100ms, with full jitter.
func sleepJitter(ctx context.Context, attempt int) error {
	d := min(time.Millisecond<<min(attempt-1, 7), 100*time.Millisecond)
	t := time.NewTimer(rand.N(d) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
