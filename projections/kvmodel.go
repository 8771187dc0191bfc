package projections

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// Errors of the KV read model.
var (
	// ErrInvalidKey reports a key a KV read model refuses before any I/O:
	// empty, longer than MaxKVKeyLength bytes, holding a character other
	// than ASCII letters, digits and "-/_=.", starting or ending with '.',
	// holding "..", or starting with the reserved prefix "_esnats".
	ErrInvalidKey = errors.New("esnats: invalid read model key")

	// ErrCorruptValue reports a value in a KV read model's bucket that is
	// not an envelope written by this package (see KV), or a checkpoint
	// that is not a decimal position.
	ErrCorruptValue = errors.New("esnats: corrupt read model value")
)

const (
	// MaxKVKeyLength is the longest key a KV read model accepts, in bytes.
	MaxKVKeyLength = 1024

	// KVCheckpointKey is the key under which a KV read model keeps its
	// checkpoint: the stream sequence of the last applied event in decimal
	// ASCII. User keys cannot start with its prefix, "_esnats".
	KVCheckpointKey = "_esnats.checkpoint"

	// KVEnvelopeVersion is the format version of the values a KV read model
	// writes (the first byte of each value; see KV).
	KVEnvelopeVersion = 1

	kvReservedPrefix = "_esnats"
	kvHeaderLen      = 10 // version, flags, 8-byte sequence
	kvFlagDeleted    = 1  // flags bit 0: tombstone
	kvWriters        = 16 // concurrent key writes per batch
)

// KVConfig describes the JetStream KV bucket of a KV read model. Bucket is
// required; the zero value of every other field means its documented
// default. A KVConfig is a plain value, safe to copy.
type KVConfig struct {
	// Bucket is the KV bucket name: 1 to 128 ASCII letters, digits, '-' and
	// '_'. Required. Give each read model its own bucket: Reset purges it.
	Bucket string

	// Replicas is the number of copies of the bucket in a cluster, 1 to 5.
	// Default 1; use 3 in production.
	Replicas int

	// History is the number of revisions kept per key, 1 to 64. Default 1.
	History int

	// Memory keeps the bucket in memory rather than in files (for tests:
	// its content is lost when the server stops). Default false.
	Memory bool

	// Description is the bucket's description, shown by the nats CLI.
	// Optional.
	Description string
}

// Validate reports whether c describes a bucket NewKV can create. The error
// wraps kv.ErrInvalidConfig. Validate does no I/O.
func (c KVConfig) Validate() error {
	if c.Bucket == "" {
		return fmt.Errorf("%w: Bucket is required", kv.ErrInvalidConfig)
	}
	return kv.Config{Bucket: c.Bucket, Replicas: c.Replicas, History: c.History}.Validate()
}

// KV is a read model kept in a JetStream KV bucket, one value per key, for
// readers in any process or language (nats kv get, a KV watcher).
//
// # Exactly-once without transactions
//
// A KV bucket has no multi-key transaction, so a batch's key writes and its
// checkpoint cannot be stored atomically. KV gets the same result with a
// sequence stored in every value:
//
//  1. Each value is an envelope that records the sequence of the last event
//     applied to that key (see Value format).
//  2. The apply function reads and writes keys through a KVBatch, which
//     buffers the writes: reads see the batch's earlier writes. A write by
//     the event at sequence s to a key whose stored envelope already records
//     a sequence >= s is dropped: the stored value already includes that
//     event.
//  3. At the end of the batch each written key is stored with a
//     compare-and-set on the KV revision it was read at, its envelope
//     recording the sequence of the last event that wrote it; then the
//     checkpoint key is advanced to the batch's last sequence, also with a
//     compare-and-set.
//
// If the process stops (or a write fails) after some keys were written and
// before the checkpoint was, the batch is delivered again: the events above
// the checkpoint run again, and the writes to keys already stored by the
// first attempt are dropped by rule 2, while the keys it did not store are
// written now. Each key ends with every event applied exactly once, also
// when the second delivery's batch is shorter or longer than the first.
//
// The argument holds for an apply function that is deterministic and in
// which each key's new value depends on the event and on that key's own
// value (counters, per-entity views: the usual read model). A value
// computed from another key's value may, during such a replay, see that key
// already at a later event; derive such values from the events instead.
//
// Deletes are stored as tombstones (an envelope with the deleted flag and
// its sequence, so that rule 2 holds for deleted keys) until the checkpoint
// passes them; then the tombstones of the batch are turned into KV deletes
// (best effort: a tombstone left behind is read as absent and is removed the
// next time the key is written). Readers never see a tombstone.
//
// A compare-and-set that fails means another writer changed the bucket: two
// workers are applying the same projection, which the runner prevents. Apply
// then returns an error matching stream.ErrConflict and writes nothing more.
//
// # Value format (version 1)
//
// Every value under a user key is a 10-byte header followed by the data:
//
//	offset  size  meaning
//	0       1     format version: 1 (KVEnvelopeVersion)
//	1       1     flags: bit 0 = deleted (a tombstone, no data); other bits 0
//	2       8     stream sequence of the last event applied to the key, big-endian
//	10      n     the data written by Put (opaque bytes)
//
// A fixed binary header rather than MessagePack (used for snapshots) because
// the data is opaque bytes, the header never grows, and any language reads
// it without a library (`nats kv get <bucket> <key> --raw | tail -c +11`).
// The checkpoint key KVCheckpointKey holds the position in decimal ASCII
// ("1234"), like kv.Checkpoints. Readers ignore nothing: another version or
// unknown flags are ErrCorruptValue.
//
// # Keys
//
// User keys are KV keys: ASCII letters, digits and "-/_=.", not starting or
// ending with '.', no "..", at most MaxKVKeyLength bytes, and not starting
// with "_esnats" (reserved). stream.EncodeID turns any id into such a key.
//
// # Cost
//
// A batch reads each key it touches once (one round trip, on the first
// KVBatch.Get, or before writing a key it did not read), writes each key it
// changed once (16 writes in flight at a time) and writes the checkpoint:
// larger batches over fewer keys cost less per event.
//
// # Concurrency
//
// Get, Keys, All and Checkpoint may be called from any goroutine (and any
// process) while Apply runs; they read committed key values, which during a
// batch may be a mix of keys before and after it (a KV bucket has no
// snapshot reads). Apply and Reset are serialized with each other.
type KV struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	bucket string
	apply  func(ctx context.Context, tx *KVBatch, ev *stream.Event) error

	mu       sync.Mutex // serializes Apply and Reset; guards the fields below
	cpKnown  bool       // cpPos and cpRev are the stored checkpoint
	cpPos    uint64
	cpRev    uint64
	hookSave func(key string) error // tests: called before each write
}

var (
	_ Checkpointed = (*KV)(nil)
	_ Resetter     = (*KV)(nil)
)

// NewKV creates the bucket described by cfg (or updates an existing one to
// cfg, idempotently) and returns a read model on it that applies each event
// with apply. apply reads and writes keys only through tx (see KVBatch); an
// error from it fails the whole batch.
//
// Errors: an invalid cfg (kv.ErrInvalidConfig) or a nil apply, before any
// I/O; otherwise the server's or the connection's.
func NewKV(ctx context.Context, js jetstream.JetStream, cfg KVConfig, apply func(ctx context.Context, tx *KVBatch, ev *stream.Event) error) (*KV, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if apply == nil {
		return nil, errors.New("projections: NewKV with a nil apply function")
	}
	storage := jetstream.FileStorage
	if cfg.Memory {
		storage = jetstream.MemoryStorage
	}
	// Idempotent: an attempt whose reply was lost (a meta leader change,
	// a cluster restarting) is retried instead of holding the caller until
	// ctx ends.
	var bucket jetstream.KeyValue
	err := jsapi.Retry(ctx, js.Options().DefaultTimeout, func(ctx context.Context) (err error) {
		bucket, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      cfg.Bucket,
			Description: cfg.Description,
			History:     uint8(max(cfg.History, 1)),
			Storage:     storage,
			Replicas:    max(cfg.Replicas, 1),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("projections: create read model bucket %s: %w", cfg.Bucket, err)
	}
	return &KV{js: js, kv: bucket, bucket: cfg.Bucket, apply: apply}, nil
}

// Bucket returns the name of the read model's bucket.
func (m *KV) Bucket() string { return m.bucket }

// ValidateKVKey reports whether key can be a key of a KV read model. The
// error wraps ErrInvalidKey. It does no I/O.
func ValidateKVKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	case len(key) > MaxKVKeyLength:
		return fmt.Errorf("%w: key of %d bytes is longer than %d bytes", ErrInvalidKey, len(key), MaxKVKeyLength)
	case strings.HasPrefix(key, kvReservedPrefix):
		return fmt.Errorf("%w: key %q starts with the reserved prefix %q", ErrInvalidKey, key, kvReservedPrefix)
	case key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, ".."):
		return fmt.Errorf("%w: key %q has an empty token (starts or ends with '.', or holds \"..\")", ErrInvalidKey, key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-/_=.", c) >= 0) {
			return fmt.Errorf("%w: key %.64q holds %q at offset %d; use stream.EncodeID to escape ids", ErrInvalidKey, key, c, i)
		}
	}
	return nil
}

// kvStored is a key's stored envelope, decoded.
type kvStored struct {
	rev     uint64 // KV revision, 0 = no value (never written, or a KV delete)
	seq     uint64 // sequence recorded in the envelope, 0 if none
	deleted bool   // a tombstone (or no value)
	data    []byte
}

// encodeKVEnvelope returns the stored form of data written by the event at
// seq (a tombstone when deleted).
func encodeKVEnvelope(seq uint64, deleted bool, data []byte) []byte {
	buf := make([]byte, kvHeaderLen, kvHeaderLen+len(data))
	buf[0] = KVEnvelopeVersion
	if deleted {
		buf[1] = kvFlagDeleted
	}
	binary.BigEndian.PutUint64(buf[2:], seq)
	return append(buf, data...)
}

// decodeKVEnvelope decodes a stored value; data aliases value.
func decodeKVEnvelope(value []byte) (seq uint64, deleted bool, data []byte, err error) {
	switch {
	case len(value) < kvHeaderLen:
		return 0, false, nil, fmt.Errorf("%w: value of %d bytes is shorter than the %d-byte envelope header", ErrCorruptValue, len(value), kvHeaderLen)
	case value[0] != KVEnvelopeVersion:
		return 0, false, nil, fmt.Errorf("%w: envelope format version %d, want %d", ErrCorruptValue, value[0], KVEnvelopeVersion)
	case value[1]&^kvFlagDeleted != 0:
		return 0, false, nil, fmt.Errorf("%w: unknown envelope flags %#02x", ErrCorruptValue, value[1])
	}
	seq = binary.BigEndian.Uint64(value[2:])
	deleted = value[1]&kvFlagDeleted != 0
	if deleted && len(value) > kvHeaderLen {
		return 0, false, nil, fmt.Errorf("%w: tombstone with %d bytes of data", ErrCorruptValue, len(value)-kvHeaderLen)
	}
	return seq, deleted, value[kvHeaderLen:], nil
}

// kvError names the bucket and key of a failed operation.
func (m *KV) kvError(op, key string, err error) error {
	if key == "" {
		return fmt.Errorf("projections: %s (bucket %s): %w", op, m.bucket, err)
	}
	return fmt.Errorf("projections: %s (bucket %s, key %s): %w", op, m.bucket, key, err)
}

// load reads key's stored envelope.
func (m *KV) load(ctx context.Context, key string) (kvStored, error) {
	entry, err := m.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return kvStored{deleted: true}, nil
	}
	if err != nil {
		return kvStored{}, m.kvError("get", key, err)
	}
	seq, deleted, data, err := decodeKVEnvelope(entry.Value())
	if err != nil {
		return kvStored{}, m.kvError("get", key, fmt.Errorf("revision %d: %w", entry.Revision(), err))
	}
	return kvStored{rev: entry.Revision(), seq: seq, deleted: deleted, data: data}, nil
}

// Get returns the data stored under key and whether it is present (a key
// never written, deleted, or tombstoned is absent). The data is the reader's
// own copy.
//
// Errors: an invalid key (ErrInvalidKey) before any I/O; a value that is not
// an envelope (ErrCorruptValue); otherwise the server's or the
// connection's. Safe for concurrent use.
func (m *KV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if err := ValidateKVKey(key); err != nil {
		return nil, false, err
	}
	st, err := m.load(ctx, key)
	if err != nil || st.deleted {
		return nil, false, err
	}
	return st.data, true, nil
}

// Keys returns the present keys of the read model, sorted (the checkpoint
// key is not one of them). It reads every value of the bucket (to leave out
// tombstones): it is meant for small models, tools and tests.
//
// Errors: a value that is not an envelope (ErrCorruptValue), the end of ctx,
// the server's or the connection's.
func (m *KV) Keys(ctx context.Context) ([]string, error) {
	all, err := m.All(ctx)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// All returns every present key with its data (not a consistent snapshot
// if a batch is being written meanwhile). It reads the whole bucket with one
// KV watcher: it is meant for small models, tools and tests. Errors are
// those of Keys.
func (m *KV) All(ctx context.Context) (map[string][]byte, error) {
	w, err := m.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, m.kvError("list", "", err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil, m.kvError("list", "", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, m.kvError("list", "", errors.New("watcher stopped"))
			}
			if e == nil { // all current values delivered
				return out, nil
			}
			if strings.HasPrefix(e.Key(), kvReservedPrefix) {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				delete(out, e.Key())
				continue
			}
			_, deleted, data, err := decodeKVEnvelope(e.Value())
			if err != nil {
				return nil, m.kvError("list", e.Key(), fmt.Errorf("revision %d: %w", e.Revision(), err))
			}
			if deleted {
				delete(out, e.Key())
			} else {
				out[e.Key()] = data
			}
		}
	}
}

// loadCheckpoint reads the stored checkpoint and its KV revision (0, 0 when
// none).
func (m *KV) loadCheckpoint(ctx context.Context) (pos, rev uint64, err error) {
	entry, err := m.kv.Get(ctx, KVCheckpointKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, m.kvError("get checkpoint", KVCheckpointKey, err)
	}
	pos, err = strconv.ParseUint(string(entry.Value()), 10, 64)
	if err != nil {
		return 0, 0, m.kvError("get checkpoint", KVCheckpointKey,
			fmt.Errorf("%w: revision %d: value %.32q is not a decimal position", ErrCorruptValue, entry.Revision(), entry.Value()))
	}
	return pos, entry.Revision(), nil
}

// Checkpoint returns the stream sequence of the last applied event, 0 if
// none, as stored in the bucket. Errors: a stored value that is not a
// decimal position (ErrCorruptValue), the server's or the connection's.
// Safe for concurrent use.
func (m *KV) Checkpoint(ctx context.Context) (uint64, error) {
	pos, _, err := m.loadCheckpoint(ctx)
	return pos, err
}

// Apply applies the events with a sequence above the checkpoint, in order,
// through a KVBatch, then stores the written keys and advances the
// checkpoint to the last event's sequence (see KV for why this is
// exactly-once). Events at or below the checkpoint, or at or below an
// earlier event of the batch, are skipped; a batch with nothing to apply
// does no write.
//
// Errors: a nil event or sequence 0 before any I/O; an error of apply or an
// invalid key given to Put or Delete (ErrInvalidKey), wrapped in a
// *stream.Error naming the event, before any write; a stored value that is
// not an envelope (ErrCorruptValue); a lost compare-and-set
// (stream.ErrConflict: another writer); otherwise the server's or the
// connection's. After an error the batch may be partly stored, which is
// safe: delivering it again completes it exactly once.
func (m *KV) Apply(ctx context.Context, events []*stream.Event) error {
	if err := checkBatch(events); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.cpKnown {
		pos, rev, err := m.loadCheckpoint(ctx)
		if err != nil {
			return err
		}
		m.cpPos, m.cpRev, m.cpKnown = pos, rev, true
	}
	tx := &KVBatch{ctx: ctx, m: m, keys: map[string]*kvKey{}}
	pos := m.cpPos
	for _, ev := range events {
		if ev.Sequence <= pos {
			continue
		}
		tx.seq = ev.Sequence
		err := m.apply(ctx, tx, ev)
		if err == nil {
			err = tx.err
		}
		if err != nil {
			return applyError(ev, err)
		}
		pos = ev.Sequence
	}
	if pos == m.cpPos {
		return nil
	}
	// From here on, the cached checkpoint is unknown until it is written.
	m.cpKnown = false
	tombstones, err := m.store(ctx, tx)
	if err != nil {
		return err
	}
	if err := m.beforeWrite(KVCheckpointKey); err != nil {
		return err
	}
	value := []byte(strconv.FormatUint(pos, 10))
	var rev uint64
	if m.cpRev == 0 {
		rev, err = m.kv.Create(ctx, KVCheckpointKey, value)
	} else {
		rev, err = m.kv.Update(ctx, KVCheckpointKey, value, m.cpRev)
	}
	if err != nil {
		return m.casError("set checkpoint", KVCheckpointKey, m.cpRev, err)
	}
	m.cpPos, m.cpRev, m.cpKnown = pos, rev, true
	// The checkpoint is past the tombstones: their sequences are no longer
	// needed, turn them into KV deletes. Best effort (see KV).
	for key, rev := range tombstones {
		_ = m.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	}
	return nil
}

// beforeWrite calls the test hook, if any.
func (m *KV) beforeWrite(key string) error {
	if m.hookSave != nil {
		return m.hookSave(key)
	}
	return nil
}

// casError wraps a failed compare-and-set write.
func (m *KV) casError(op, key string, rev uint64, err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return m.kvError(op, key, fmt.Errorf("%w: the key changed since revision %d (another writer?): %w", stream.ErrConflict, rev, err))
	}
	return m.kvError(op, key, err)
}

// store writes the batch's keys, a few at a time, and returns the
// tombstones written (key -> revision).
func (m *KV) store(ctx context.Context, tx *KVBatch) (map[string]uint64, error) {
	type result struct {
		key       string
		rev       uint64
		tombstone bool
		err       error
	}
	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, kvWriters)
		results = make(chan result, len(tx.keys))
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for key, k := range tx.keys {
		if !k.written {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rev, tomb, err := m.storeKey(ctx, tx, key, k)
			if err != nil {
				cancel()
			}
			results <- result{key, rev, tomb, err}
		}()
	}
	wg.Wait()
	close(results)
	var (
		errs       []error
		tombstones = map[string]uint64{}
	)
	for r := range results {
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case r.tombstone:
			tombstones[r.key] = r.rev
		}
	}
	if len(errs) > 0 {
		// Prefer the cause over the cancellations it caused.
		slices.SortStableFunc(errs, func(a, b error) int {
			ca, cb := errors.Is(a, context.Canceled), errors.Is(b, context.Canceled)
			switch {
			case ca == cb:
				return 0
			case cb:
				return -1
			default:
				return 1
			}
		})
		return nil, errs[0]
	}
	return tombstones, nil
}

// storeKey writes one key's final value with a compare-and-set, unless the
// stored envelope already includes the event that wrote it last. It returns
// the new revision and whether it wrote a tombstone.
func (m *KV) storeKey(ctx context.Context, tx *KVBatch, key string, k *kvKey) (uint64, bool, error) {
	if err := tx.loadKey(ctx, key, k); err != nil {
		return 0, false, err
	}
	if !k.written { // dropped by loadKey: already stored
		return 0, false, nil
	}
	if k.deleted && k.stored.rev == 0 {
		return 0, false, nil // deleting a key that holds nothing
	}
	if err := m.beforeWrite(key); err != nil {
		return 0, false, err
	}
	value := encodeKVEnvelope(k.seq, k.deleted, k.value)
	var (
		rev uint64
		err error
	)
	if k.stored.rev == 0 {
		rev, err = m.kv.Create(ctx, key, value)
	} else {
		rev, err = m.kv.Update(ctx, key, value, k.stored.rev)
	}
	if err != nil {
		return 0, false, m.casError("put", key, k.stored.rev, err)
	}
	return rev, k.deleted, nil
}

// Reset deletes every key of the read model, the checkpoint included, by
// purging the bucket's stream. Readers see the keys disappear; the next
// Apply starts from checkpoint 0. Errors are the server's or the
// connection's.
func (m *KV) Reset(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cpKnown = false
	status, err := m.kv.Status(ctx)
	if err != nil {
		return m.kvError("reset", "", err)
	}
	name := "KV_" + m.bucket
	if bs, ok := status.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		name = bs.StreamInfo().Config.Name
	}
	s, err := m.js.Stream(ctx, name)
	if err != nil {
		return m.kvError("reset", "", err)
	}
	if err := s.Purge(ctx); err != nil {
		return m.kvError("reset", "", err)
	}
	return nil
}

// KVBatch is the view of a KV read model that its apply function reads and
// changes while a batch is applied. Writes are buffered until the end of
// the batch and reads see them; a write to a key whose stored value already
// includes the current event is dropped (see KV). A KVBatch is valid only
// during the Apply call that made it and is not safe for concurrent use.
type KVBatch struct {
	ctx  context.Context
	m    *KV
	seq  uint64 // sequence of the event being applied
	keys map[string]*kvKey
	err  error // first invalid key given to Put or Delete
}

// kvKey is one key's state in a batch.
type kvKey struct {
	loaded  bool
	stored  kvStored
	written bool   // the batch wrote the key (after the stored value)
	deleted bool   // the last write is a delete
	value   []byte // the last write's data
	seq     uint64 // sequence of the event of the last write
}

// loadKey reads key's stored envelope once, and drops the buffered write if
// the stored value already includes it.
func (tx *KVBatch) loadKey(ctx context.Context, key string, k *kvKey) error {
	if k.loaded {
		return nil
	}
	st, err := tx.m.load(ctx, key)
	if err != nil {
		return err
	}
	k.loaded, k.stored = true, st
	if k.written && k.seq <= st.seq {
		k.written, k.deleted, k.value = false, false, nil
	}
	return nil
}

// Seq returns the stream sequence of the event being applied.
func (tx *KVBatch) Seq() uint64 { return tx.seq }

// Get returns the data of key as of the events applied so far (the
// batch's own writes included) and whether it is present. The data is the
// caller's own copy.
//
// Errors: an invalid key (ErrInvalidKey) before any I/O; a stored value
// that is not an envelope (ErrCorruptValue); otherwise the server's or the
// connection's. Returning the error from apply fails the batch.
func (tx *KVBatch) Get(key string) ([]byte, bool, error) {
	if err := ValidateKVKey(key); err != nil {
		return nil, false, err
	}
	k := tx.keys[key]
	if k == nil {
		k = &kvKey{}
		tx.keys[key] = k
	}
	if err := tx.loadKey(tx.ctx, key, k); err != nil {
		return nil, false, err
	}
	switch {
	case k.written && k.deleted:
		return nil, false, nil
	case k.written:
		return slices.Clone(k.value), true, nil
	case k.stored.deleted:
		return nil, false, nil
	default:
		return slices.Clone(k.stored.data), true, nil
	}
}

// Put sets key to value (copied) as of the current event. It does no I/O.
// An invalid key fails the batch with ErrInvalidKey when apply returns.
func (tx *KVBatch) Put(key string, value []byte) {
	tx.write(key, false, value)
}

// Delete removes key as of the current event. It does no I/O. An invalid
// key fails the batch with ErrInvalidKey when apply returns.
func (tx *KVBatch) Delete(key string) {
	tx.write(key, true, nil)
}

func (tx *KVBatch) write(key string, deleted bool, value []byte) {
	if err := ValidateKVKey(key); err != nil {
		if tx.err == nil {
			tx.err = err
		}
		return
	}
	k := tx.keys[key]
	if k == nil {
		k = &kvKey{}
		tx.keys[key] = k
	}
	if k.loaded && tx.seq <= k.stored.seq {
		return // the stored value already includes this event
	}
	// Without the stored value, keep the write: loadKey drops it later if
	// the stored value includes it (then it includes every earlier write
	// too).
	k.written, k.deleted, k.seq = true, deleted, tx.seq
	k.value = nil
	if !deleted {
		k.value = slices.Clone(value)
		if k.value == nil {
			k.value = []byte{}
		}
	}
}
