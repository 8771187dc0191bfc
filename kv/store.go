package kv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/internal/telemetry"
	"github.com/esnats/esnats/stream"
)

// Snapshots stores one snapshot per aggregate. The aggregate repository uses
// it; *Store (a JetStream KV bucket) and *Memory (in process) implement it
// with the same semantics. Implementations are safe for concurrent use.
//
// A snapshot is a cache: losing one never loses data, since the aggregate
// can always be loaded from its events. Callers therefore treat any Get
// error as "no snapshot" (and log it), and a failed Put as "no snapshot
// taken".
type Snapshots interface {
	// Get returns the aggregate's snapshot, with ok false when there is
	// none. A stored value that cannot be used returns ok false and an
	// error matching ErrCorruptSnapshot that names the bucket and key.
	Get(ctx context.Context, agg stream.Aggregate) (s Snapshot, ok bool, err error)
	// Put stores s unless the stored snapshot is at the same or a later
	// Version: the stored version never goes back. It returns nil without
	// writing in that case.
	Put(ctx context.Context, s Snapshot) error
	// Delete removes the aggregate's snapshot; no error when there is none.
	Delete(ctx context.Context, agg stream.Aggregate) error
}

var (
	_ Snapshots = (*Store)(nil)
	_ Snapshots = (*Memory)(nil)
)

// putAttempts bounds the compare-and-set attempts of one Put. Each failed
// attempt means another writer stored a snapshot in between, and a Put stops
// as soon as it reads a snapshot at least as new as its own, so the bound is
// only reached under sustained contention on one aggregate.
const putAttempts = 16

// Store keeps snapshots in a JetStream KV bucket, one key per aggregate (see
// Key), each value a snapshot envelope (see the package documentation).
//
// All methods are safe for concurrent use, also by several processes
// sharing the bucket: writes are compare-and-set on the key's KV revision.
type Store struct {
	kv       jetstream.KeyValue
	bucket   string
	maxValue int // largest envelope Put sends
	tracer   *telemetry.Tracer
}

// NewStore creates the snapshot bucket described by cfg, or updates an
// existing bucket of that name to cfg, and returns a Store on it. It is
// idempotent: calling it again with the same cfg changes nothing, and
// snapshots already stored are kept. It returns once the bucket answers
// reads (a new replicated bucket takes a moment to elect a leader), waiting
// at most js's default API timeout (5s) or until ctx ends.
//
// The error wraps ErrInvalidConfig for an invalid cfg (before any I/O), and
// is otherwise an *Error naming the bucket that wraps the server's refusal
// (for example when the existing bucket's storage type differs from cfg's).
func NewStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	return newStore(ctx, js, cfg, true)
}

// OpenStore returns a Store on an existing snapshot bucket, without changing
// its configuration. Of cfg it uses Bucket (default DefaultBucket) and
// MaxValueSize; the bucket's own max value size, and the connection's max
// payload, apply too when smaller. Like NewStore it waits until the bucket
// answers reads.
//
// When the bucket does not exist, the error matches stream.ErrNotFound (and
// jetstream.ErrBucketNotFound) and names the bucket. An invalid cfg gives
// an error wrapping ErrInvalidConfig, before any I/O.
func OpenStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	return newStore(ctx, js, cfg, false)
}

func newStore(ctx context.Context, js jetstream.JetStream, cfg Config, create bool) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults(DefaultBucket)
	kv, maxValue, err := openBucket(ctx, js, cfg, create)
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv, bucket: cfg.Bucket, maxValue: maxValue, tracer: telemetry.NewTracer(cfg.TracerProvider)}, nil
}

// Bucket returns the name of the store's KV bucket.
func (s *Store) Bucket() string { return s.bucket }

// Get returns the aggregate's snapshot, with ok false when there is none
// (never stored, deleted, or expired by the bucket's TTL). It is one direct
// get from the bucket.
//
// A stored value that is not a valid envelope for agg returns ok false and
// an *Error matching ErrCorruptSnapshot that names the bucket, key and
// revision; callers log it and load from the events. An invalid agg gives an
// error matching stream.ErrInvalidName or stream.ErrInvalidID before any
// I/O. Any other error is the server's or the connection's, in an *Error.
func (s *Store) Get(ctx context.Context, agg stream.Aggregate) (snap Snapshot, ok bool, err error) {
	key, err := Key(agg)
	if err != nil {
		return Snapshot{}, false, err
	}
	ctx, span := s.startSpan(ctx, telemetry.SpanSnapshotGet, agg, key)
	snap, rev, ok, err := s.get(ctx, agg, key)
	if span.IsRecording() {
		span.SetAttributes(telemetry.KeyFound.Bool(ok), telemetry.KeyKVRevision.Int64(int64(rev)))
		if ok {
			span.SetAttributes(telemetry.KeyVersion.Int64(int64(snap.Version)), telemetry.KeySequence.Int64(int64(snap.Sequence)))
		}
	}
	telemetry.End(span, err)
	return snap, ok, err
}

// startSpan starts a span of the snapshot store (kind client) about agg's
// key. With tracing off it costs nothing.
func (s *Store) startSpan(ctx context.Context, name string, agg stream.Aggregate, key string) (context.Context, trace.Span) {
	ctx, span := s.tracer.Start(ctx, name, trace.SpanKindClient)
	if span.IsRecording() {
		span.SetAttributes(telemetry.SystemNATS, telemetry.KeyBucket.String(s.bucket), telemetry.KeyKVKey.String(key),
			telemetry.KeyAggregateType.String(agg.Type), telemetry.KeyAggregateID.String(agg.ID))
	}
	return ctx, span
}

// get reads and decodes the snapshot under key; rev is the entry's revision
// (also when the value is corrupt, with ok false).
func (s *Store) get(ctx context.Context, agg stream.Aggregate, key string) (snap Snapshot, rev uint64, ok bool, err error) {
	entry, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Snapshot{}, 0, false, nil
	}
	if err != nil {
		return Snapshot{}, 0, false, &Error{Op: "get snapshot", Bucket: s.bucket, Key: key, Err: err}
	}
	snap, err = decodeSnapshot(entry.Value(), agg)
	if err != nil {
		return Snapshot{}, entry.Revision(), false, &Error{Op: "get snapshot", Bucket: s.bucket, Key: key, Revision: entry.Revision(), Err: err}
	}
	return snap, entry.Revision(), true, nil
}

// Put stores snap unless the bucket holds a snapshot of the aggregate at the
// same or a later Version, in which case it returns nil without writing: the
// stored version never goes back, whatever the order in which concurrent
// writers arrive. It reads the stored snapshot and its KV revision, then
// writes with a compare-and-set on that revision (or a create when there is
// none); when another writer got in between, it pauses for a random moment
// (up to 1ms, then 2ms, ... 64ms) and starts over, up to 16 attempts. A
// stored value that is corrupt is replaced. Concurrent Puts, from this
// process or others, are safe: the highest Version stays.
//
// Errors, all before any I/O unless noted: snap's aggregate invalid
// (stream.ErrInvalidName, stream.ErrInvalidID); a field out of range
// (ErrInvalidSnapshot); an envelope larger than the bucket allows
// (stream.ErrTooLarge; nothing is written, also when it is the server that
// refuses); the compare-and-set lost 16 times in a row (stream.ErrConflict,
// after I/O). Other errors come from the server or the connection. All but
// the validation errors are an *Error naming the bucket and key.
func (s *Store) Put(ctx context.Context, snap Snapshot) (err error) {
	key, err := validateSnapshot(&snap)
	if err != nil {
		return err
	}
	ctx, span := s.startSpan(ctx, telemetry.SpanSnapshotPut, snap.Aggregate, key)
	attempts, outcome := 0, telemetry.OutcomeOK
	defer func() {
		if span.IsRecording() {
			if err != nil {
				outcome = telemetry.OutcomeError
			}
			span.SetAttributes(telemetry.KeyVersion.Int64(int64(snap.Version)), telemetry.KeySequence.Int64(int64(snap.Sequence)),
				telemetry.KeyAttempts.Int(attempts), telemetry.KeyOutcome.String(outcome))
		}
		telemetry.End(span, err)
	}()
	value, err := encodeSnapshot(&snap)
	if err != nil {
		return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Err: fmt.Errorf("%w: encoding the envelope: %w", ErrInvalidSnapshot, err)}
	}
	if len(value) > s.maxValue {
		return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Err: tooLarge(len(value), s.maxValue)}
	}
	for attempt := range putAttempts {
		attempts = attempt + 1
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Err: err}
			}
		}
		if err := ctx.Err(); err != nil {
			return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Err: err}
		}
		cur, rev, ok, err := s.get(ctx, snap.Aggregate, key)
		if err != nil && !errors.Is(err, ErrCorruptSnapshot) {
			var kerr *Error
			if errors.As(err, &kerr) {
				kerr.Op = "put snapshot"
			}
			return err
		}
		if ok && cur.Version >= snap.Version {
			outcome = telemetry.OutcomeSkipped
			return nil // the stored one is not older
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, value)
		} else {
			_, err = s.kv.Update(ctx, key, value, rev)
		}
		switch {
		case err == nil:
			return nil
		case isCASConflict(err):
			continue // someone else wrote: read again
		case isTooLarge(err):
			return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Revision: rev, Err: fmt.Errorf("%w: the server refused %d bytes: %w", stream.ErrTooLarge, len(value), err)}
		default:
			return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Revision: rev, Err: err}
		}
	}
	return &Error{Op: "put snapshot", Bucket: s.bucket, Key: key, Err: fmt.Errorf("%w: the snapshot changed under each of %d attempts", stream.ErrConflict, putAttempts)}
}

// tooLarge is the error of an envelope of n bytes over the limit.
func tooLarge(n, limit int) error {
	return fmt.Errorf("%w: snapshot envelope of %d bytes is larger than the %d bytes allowed", stream.ErrTooLarge, n, limit)
}

// Delete removes the aggregate's snapshot (with a KV purge, so that no
// earlier revision stays behind when History > 1). It returns nil when there
// is none, without writing. A Put that runs concurrently may land before or
// after it. An invalid agg gives an error matching stream.ErrInvalidName or
// stream.ErrInvalidID before any I/O.
func (s *Store) Delete(ctx context.Context, agg stream.Aggregate) error {
	key, err := Key(agg)
	if err != nil {
		return err
	}
	if _, err := s.kv.Get(ctx, key); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	} else if err != nil {
		return &Error{Op: "delete snapshot", Bucket: s.bucket, Key: key, Err: err}
	}
	if err := s.kv.Purge(ctx, key); err != nil {
		return &Error{Op: "delete snapshot", Bucket: s.bucket, Key: key, Err: err}
	}
	return nil
}

// backoff sleeps before compare-and-set attempt n (n >= 1): a random time
// up to 1ms, 2ms, 4ms, ... 64ms, so that writers that collided spread out.
// It returns ctx's error if ctx ends first.
func backoff(ctx context.Context, n int) error {
	limit := time.Millisecond << min(n-1, 6)
	t := time.NewTimer(rand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
