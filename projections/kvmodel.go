package projections

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go"
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

	// DefaultKVCacheBytes is the default size of a KV read model's cache of
	// the values it wrote (KVConfig.CacheBytes).
	DefaultKVCacheBytes = 16 << 20

	kvReservedPrefix = "_esnats"
	kvHeaderLen      = 10  // version, flags, 8-byte sequence
	kvFlagDeleted    = 1   // flags bit 0: tombstone
	kvReaders        = 16  // concurrent key reads at the end of a batch
	kvPipeline       = 256 // key writes awaiting their acknowledgement
	// kvCacheOverhead is what a cache entry costs beside its key and value
	// (map slot, list links, revision and sequence), in bytes.
	kvCacheOverhead = 128
	// KV delete markers (ADR-8), as nats.go writes them.
	kvOperationHeader = "KV-Operation"
	kvOperationDelete = "DEL"
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

	// CacheBytes bounds the model's cache of the values it wrote itself
	// (see KV: Cost), counting each key, its stored value and about 128
	// bytes of bookkeeping; the least recently used keys leave it first.
	// Default (0) DefaultKVCacheBytes, 16 MiB; negative: no cache (every
	// batch reads the keys it touches). The cache is never needed for
	// correctness, only to skip reads.
	CacheBytes int64
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
//  3. At the end of the batch each written key is stored once, with a
//     compare-and-set on its KV revision (as read, or as this writer stored
//     it: see Cost), its envelope recording the sequence of the last event
//     that wrote it. The key writes are pipelined: all are sent, then every
//     acknowledgement is awaited. Only when every one of them is
//     acknowledged is the checkpoint key advanced to the batch's last
//     sequence, also with a compare-and-set.
//
// If the process stops (or a write fails) after some keys were written and
// before the checkpoint was, the batch is delivered again: the events above
// the checkpoint run again, and the writes to keys already stored by the
// first attempt are dropped by rule 2, while the keys it did not store are
// written now. The keys stored may be any of the batch's keys (a write that
// failed does not stop those sent after it). Each key ends with every event
// applied exactly once, also when the second delivery's batch is shorter or
// longer than the first.
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
// next time the key is written). Readers never see a tombstone. A KV delete
// drops the key's sequence with it: a worker applying events at or below
// the stored checkpoint (possible only while another worker runs the same
// projection, which the runner prevents) may apply them again to a key
// deleted meanwhile.
//
// A compare-and-set that fails means that the bucket changed under the
// writer. When the batch relied on a revision the writer remembered rather
// than read (its cache, or the checkpoint it wrote last), the memory may be
// stale: another process wrote the bucket meanwhile (a take-over, and back).
// Apply then forgets everything it remembers and applies the batch once
// more from the stored values, exactly as a redelivery would. A
// compare-and-set lost on revisions just read means two workers are applying
// the same projection at once, which the runner prevents: Apply returns an
// error matching stream.ErrConflict and writes nothing more.
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
// A batch writes each key it changed once, however many of its events
// changed it (the writes pipelined, up to 256 awaiting their
// acknowledgement), then the checkpoint: two round trips. It reads a key (one
// round trip, on the first KVBatch.Get, or before writing a key it did not
// read, 16 such reads at a time) only when the key is not in the model's
// cache. Larger batches over fewer keys cost less per event.
//
// The cache holds the values and KV revisions this model itself stored,
// bounded by KVConfig.CacheBytes (least recently used out first). It is
// never trusted blindly: each cached revision is checked by the write's
// compare-and-set, and a stale entry makes the batch start again from the
// stored values (see above). Reset empties it; a lost compare-and-set, a
// failed write and a write whose outcome is unknown drop the entries
// concerned. A rebuild fills a new model, with its own cache. Deleting and
// re-creating the bucket (rather than Reset) under a running model is not
// supported: the new bucket's revisions start again from 1 and may match
// remembered ones; restart the workers after doing so.
//
// # Concurrency
//
// Get, Keys, All and Checkpoint may be called from any goroutine (and any
// process) while Apply runs; they read committed key values, which during a
// batch may be a mix of keys before and after it (a KV bucket has no
// snapshot reads). Apply and Reset are serialized with each other.
type KV struct {
	js     jetstream.JetStream
	pub    jetstream.JetStream // the pipelined writes' publisher (see NewKV)
	kv     jetstream.KeyValue
	bucket string
	apply  func(ctx context.Context, tx *KVBatch, ev *stream.Event) error

	putPrefix string        // subject of key k: putPrefix + k
	timeout   time.Duration // for an acknowledgement, when ctx has no deadline

	// cpSeen is cpRev while cpKnown, else math.MaxUint64; stale is set
	// by Checkpoint when it reads a newer checkpoint than cpSeen (another
	// writer's): Apply then forgets what it remembers.
	cpSeen atomic.Uint64
	stale  atomic.Bool

	mu       sync.Mutex // serializes Apply and Reset; guards the fields below
	cpKnown  bool       // cpPos and cpRev are the stored checkpoint
	cpPos    uint64
	cpRev    uint64
	cache    kvCache
	hookSave func(key string) error // tests: called before each write
	hookLoad func(key string)       // tests: called before each read of a key
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
	timeout := js.Options().DefaultTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	limit := cfg.CacheBytes
	if limit == 0 {
		limit = DefaultKVCacheBytes
	}
	// The pipelined writes go through a publisher of their own: its
	// asynchronous acknowledgements time out (and leave nats.go's pending
	// set: an acknowledgement that never comes would otherwise stay there
	// for ever, until the application's JetStream stalls at its limit), and
	// they do not count against the application's own asynchronous
	// publishes.
	pub, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncTimeout(timeout), jetstream.WithPublishAsyncMaxPending(4*kvPipeline))
	if err != nil {
		return nil, fmt.Errorf("projections: read model bucket %s: %w", cfg.Bucket, err)
	}
	m := &KV{js: js, pub: pub, kv: bucket, bucket: cfg.Bucket, apply: apply,
		putPrefix: kvPutPrefix(js.Options(), cfg.Bucket), timeout: timeout,
		cache: kvCache{limit: max(limit, 0)}}
	m.cpSeen.Store(math.MaxUint64)
	return m, nil
}

// kvPutPrefix returns the subject prefix nats.go's KeyValue.Put uses for
// the keys of bucket (a bucket of the js's own account or domain, not a
// mirror: NewKV creates it).
func kvPutPrefix(o jetstream.JetStreamOptions, bucket string) string {
	api := ""
	switch {
	case o.Domain != "":
		api = "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		api = o.APIPrefix
		if !strings.HasSuffix(api, ".") {
			api += "."
		}
		if api == jetstream.DefaultAPIPrefix {
			api = ""
		}
	}
	return api + "$KV." + bucket + "."
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
	if m.hookLoad != nil {
		m.hookLoad(key)
	}
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
//
// A checkpoint written by another process since this model last wrote one
// (the runner reads it when this process takes the projection over) makes
// the next Apply forget what the model remembers of the bucket (see KV:
// Cost) and read what it needs.
func (m *KV) Checkpoint(ctx context.Context) (uint64, error) {
	pos, rev, err := m.loadCheckpoint(ctx)
	if err != nil {
		return 0, err
	}
	if seen := m.cpSeen.Load(); seen != math.MaxUint64 && (rev > seen || rev == 0 && seen != 0) {
		m.stale.Store(true)
	}
	return pos, nil
}

// setCheckpoint remembers the stored checkpoint.
func (m *KV) setCheckpoint(pos, rev uint64) {
	m.cpPos, m.cpRev, m.cpKnown = pos, rev, true
	m.cpSeen.Store(rev)
}

// unsetCheckpoint forgets the stored checkpoint.
func (m *KV) unsetCheckpoint() {
	m.cpKnown = false
	m.cpSeen.Store(math.MaxUint64)
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
// (stream.ErrConflict: another writer, see KV); otherwise the server's or
// the connection's. After an error the batch may be partly stored, which is
// safe: delivering it again completes it exactly once.
func (m *KV) Apply(ctx context.Context, events []*stream.Event) error {
	if err := checkBatch(events); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stale.Swap(false) {
		m.forget()
	}
	stale, err := m.applyOnce(ctx, events)
	if stale {
		// A revision this writer remembered was out of date: start again
		// from the stored values, as a redelivery would.
		m.forget()
		_, err = m.applyOnce(ctx, events)
	}
	return err
}

// forget drops everything the model remembers of the bucket.
func (m *KV) forget() {
	m.unsetCheckpoint()
	m.cache.clear()
}

// applyOnce applies events once. stale reports a lost compare-and-set on
// a revision the model remembered rather than read in this call.
func (m *KV) applyOnce(ctx context.Context, events []*stream.Event) (stale bool, err error) {
	cpRemembered := m.cpKnown
	if !m.cpKnown {
		pos, rev, err := m.loadCheckpoint(ctx)
		if err != nil {
			return false, err
		}
		m.setCheckpoint(pos, rev)
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
			return false, applyError(ev, err)
		}
		pos = ev.Sequence
	}
	if pos == m.cpPos {
		return false, nil
	}
	// From here on, the remembered checkpoint is unknown until it is
	// written.
	cpRev := m.cpRev
	m.unsetCheckpoint()
	tombstones, err := m.store(ctx, tx)
	if err != nil {
		return tx.cached && errors.Is(err, stream.ErrConflict), err
	}
	if err := m.beforeWrite(KVCheckpointKey); err != nil {
		return false, err
	}
	value := strconv.AppendUint(nil, pos, 10)
	var rev uint64
	if cpRev == 0 {
		rev, err = m.kv.Create(ctx, KVCheckpointKey, value)
	} else {
		rev, err = m.kv.Update(ctx, KVCheckpointKey, value, cpRev)
	}
	if err != nil {
		err = m.casError("set checkpoint", KVCheckpointKey, cpRev, err)
		return cpRemembered && errors.Is(err, stream.ErrConflict), err
	}
	m.setCheckpoint(pos, rev)
	// The checkpoint is past the tombstones: their sequences are no longer
	// needed, turn them into KV deletes. Best effort (see KV).
	if len(tombstones) > 0 {
		_ = m.pipeline(ctx, len(tombstones), func(i int) (*nats.Msg, error) {
			msg := nats.NewMsg(m.putPrefix + tombstones[i].key)
			msg.Header.Set(kvOperationHeader, kvOperationDelete)
			msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(tombstones[i].rev, 10))
			return msg, nil
		}, func(int, uint64, error) {})
	}
	return false, nil
}

// beforeWrite calls the test hook, if any.
func (m *KV) beforeWrite(key string) error {
	if m.hookSave != nil {
		return m.hookSave(key)
	}
	return nil
}

// isWrongLastSeq reports a lost compare-and-set: the server's "wrong last
// sequence" (10071, or 10164 on a replicated stream with a competing
// write in flight).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// casError wraps a failed compare-and-set write.
func (m *KV) casError(op, key string, rev uint64, err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSeq(err) {
		return m.kvError(op, key, fmt.Errorf("%w: the key changed since revision %d (another writer?): %w", stream.ErrConflict, rev, err))
	}
	return m.kvError(op, key, err)
}

// kvTombstone is a tombstone written at revision rev.
type kvTombstone struct {
	key string
	rev uint64
}

// store writes the batch's keys (pipelined), keeps the cache in step with
// what it stored, and returns the tombstones written. It reads first the
// written keys that the batch has not read and the cache does not hold.
func (m *KV) store(ctx context.Context, tx *KVBatch) ([]kvTombstone, error) {
	if err := m.loadUnread(ctx, tx); err != nil {
		return nil, err
	}
	var writes []*kvKey
	for _, k := range tx.order {
		if k.written && !(k.deleted && k.stored.rev == 0) { // deleting a key that holds nothing: no write
			writes = append(writes, k)
		}
	}
	var (
		errs       []error
		conflict   bool
		tombstones []kvTombstone
	)
	err := m.pipeline(ctx, len(writes), func(i int) (*nats.Msg, error) {
		k := writes[i]
		if err := m.beforeWrite(k.name); err != nil {
			return nil, err
		}
		k.seal()
		msg := &nats.Msg{Subject: m.putPrefix + k.name, Header: nats.Header{}, Data: k.env}
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(k.stored.rev, 10))
		return msg, nil
	}, func(i int, rev uint64, err error) {
		k := writes[i]
		if err != nil && k.stored.rev == 0 && isWrongLastSeq(err) {
			// The key holds a KV delete marker (the model's reads see
			// it as no value): Create writes over one.
			rev, err = m.kv.Create(ctx, k.name, k.env)
		}
		switch {
		case err != nil:
			err = m.casError("put", k.name, k.stored.rev, err)
			conflict = conflict || errors.Is(err, stream.ErrConflict)
			errs = append(errs, err)
			m.cache.drop(k.name) // unknown, or not what this writer stored
		case k.deleted:
			m.cache.drop(k.name) // deleted from the bucket after the checkpoint
			tombstones = append(tombstones, kvTombstone{k.name, rev})
		default:
			m.cache.put(k.name, kvStored{rev: rev, seq: k.seq, data: k.env[kvHeaderLen:]})
		}
	})
	if err != nil { // a write not sent: after those sent
		errs = append(errs, err)
	}
	if conflict {
		m.cache.clear() // another writer: any entry may be stale
	}
	if len(errs) > 0 {
		// Prefer the cause over the cancellations it caused.
		for _, err := range errs {
			if !errors.Is(err, context.Canceled) {
				return nil, err
			}
		}
		return nil, errs[0]
	}
	return tombstones, nil
}

// loadUnread reads the stored values of the keys the batch wrote without
// reading them, from the cache or from the bucket (kvReaders at a time),
// and drops the writes they already include.
func (m *KV) loadUnread(ctx context.Context, tx *KVBatch) error {
	var miss []*kvKey
	for _, k := range tx.order {
		if !k.written || k.loaded {
			continue
		}
		if st, ok := m.cache.get(k.name); ok {
			tx.setStored(k, st, true)
		} else {
			miss = append(miss, k)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, kvReaders)
		got  = make([]kvStored, len(miss))
		errs = make([]error, len(miss))
	)
	for i, k := range miss {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			got[i], errs[i] = m.load(ctx, k.name)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i, k := range miss {
		tx.setStored(k, got[i], false)
	}
	return nil
}

// pipeline publishes n messages, msg(i) in order, with at most kvPipeline
// of them awaiting their acknowledgement, and calls settled(i, revision,
// error) for each one sent, in order, once it is acknowledged or failed.
// It stops sending at the first error of msg or of the publish, returns it,
// and still settles the messages sent. The publishes go through the
// JetStream's asynchronous publisher; without a deadline in ctx each
// acknowledgement is awaited for the JetStream's DefaultTimeout at most.
func (m *KV) pipeline(ctx context.Context, n int, msg func(i int) (*nats.Msg, error), settled func(i int, rev uint64, err error)) error {
	var timer *time.Timer
	if _, ok := ctx.Deadline(); !ok {
		timer = time.NewTimer(m.timeout)
		defer timer.Stop()
	}
	type sent struct {
		f        jetstream.PubAckFuture
		deadline time.Time
	}
	futures := make([]sent, 0, min(n, kvPipeline))
	settle := func(i int, p sent) {
		f := p.f
		// An answer already in is taken before the deadline is looked at
		// (with both ready, select would pick one at random).
		select {
		case ack := <-f.Ok():
			settled(i, ack.Sequence, nil)
			return
		case err := <-f.Err():
			settled(i, 0, err)
			return
		default:
		}
		var timeout <-chan time.Time
		if timer != nil {
			// Each write's deadline counts from its own publish, so that
			// acknowledgements lost together are given up together, not
			// one timeout after another.
			timer.Reset(time.Until(p.deadline))
			timeout = timer.C
		}
		select {
		case ack := <-f.Ok():
			settled(i, ack.Sequence, nil)
		case err := <-f.Err():
			settled(i, 0, err)
		case <-ctx.Done():
			settled(i, 0, ctx.Err())
		case <-timeout:
			settled(i, 0, fmt.Errorf("%w: no acknowledgement after %s", context.DeadlineExceeded, m.timeout))
		}
	}
	var err error
	first := 0 // index of futures[0]
	for i := range n {
		var mm *nats.Msg
		if mm, err = msg(i); err != nil {
			break
		}
		var f jetstream.PubAckFuture
		if f, err = m.pub.PublishMsgAsync(mm); err != nil {
			err = m.kvError("put", strings.TrimPrefix(mm.Subject, m.putPrefix), err)
			break
		}
		// The publisher's own acknowledgement timeout (m.timeout) ends a
		// lost one first; this deadline is a backstop.
		futures = append(futures, sent{f, time.Now().Add(m.timeout + time.Second)})
		if len(futures) == kvPipeline {
			settle(first, futures[0])
			futures = futures[1:]
			first++
		}
	}
	for j, f := range futures {
		settle(first+j, f)
	}
	return err
}

// Reset deletes every key of the read model, the checkpoint included, by
// purging the bucket's stream, and empties the model's cache. Readers see
// the keys disappear; the next Apply starts from checkpoint 0. Errors are
// the server's or the connection's.
func (m *KV) Reset(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forget()
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
	ctx    context.Context
	m      *KV
	seq    uint64 // sequence of the event being applied
	keys   map[string]*kvKey
	order  []*kvKey // keys in the order the batch first touched them
	cached bool     // a stored value came from the cache
	err    error    // first invalid key given to Put or Delete
}

// kvKey is one key's state in a batch.
type kvKey struct {
	name    string
	loaded  bool
	stored  kvStored
	written bool // the batch wrote the key (after the stored value)
	deleted bool // the last write is a delete
	// env is the envelope of the last write: a header, filled by seal,
	// then the data.
	env []byte
	seq uint64 // sequence of the event of the last write
}

// seal fills k's envelope header for its last write.
func (k *kvKey) seal() {
	k.env[0] = KVEnvelopeVersion
	k.env[1] = 0
	if k.deleted {
		k.env[1] = kvFlagDeleted
	}
	binary.BigEndian.PutUint64(k.env[2:kvHeaderLen], k.seq)
}

// key returns key's state in the batch, created on first use.
func (tx *KVBatch) key(key string) *kvKey {
	k := tx.keys[key]
	if k == nil {
		k = &kvKey{name: key}
		tx.keys[key] = k
		tx.order = append(tx.order, k)
	}
	return k
}

// setStored records k's stored value, and drops the buffered write if the
// stored value already includes it (then it includes every earlier write
// too).
func (tx *KVBatch) setStored(k *kvKey, st kvStored, cached bool) {
	k.loaded, k.stored = true, st
	tx.cached = tx.cached || cached
	if k.written && k.seq <= st.seq {
		k.written, k.deleted = false, false
	}
}

// loadKey reads key's stored envelope once, from the cache or the bucket.
func (tx *KVBatch) loadKey(ctx context.Context, k *kvKey) error {
	if k.loaded {
		return nil
	}
	if st, ok := tx.m.cache.get(k.name); ok {
		tx.setStored(k, st, true)
		return nil
	}
	st, err := tx.m.load(ctx, k.name)
	if err != nil {
		return err
	}
	tx.setStored(k, st, false)
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
	k := tx.key(key)
	if err := tx.loadKey(tx.ctx, k); err != nil {
		return nil, false, err
	}
	switch {
	case k.written && k.deleted:
		return nil, false, nil
	case k.written:
		return slices.Clone(k.env[kvHeaderLen:]), true, nil
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
	k := tx.key(key)
	if k.loaded && tx.seq <= k.stored.seq {
		return // the stored value already includes this event
	}
	// Without the stored value, keep the write: setStored drops it later
	// if the stored value includes it. Later writes of the batch replace
	// earlier ones in place: one write per key at the end.
	k.written, k.deleted, k.seq = true, deleted, tx.seq
	n := kvHeaderLen + len(value)
	if cap(k.env) < n {
		k.env = make([]byte, n)
	}
	k.env = k.env[:n]
	copy(k.env[kvHeaderLen:], value)
}

// kvCache remembers, for a bounded number of bytes, the values and
// revisions a model stored, least recently used out first. Not safe for
// concurrent use (KV.mu guards it).
type kvCache struct {
	limit int64 // 0: disabled
	size  int64
	m     map[string]*kvCacheEntry
	root  kvCacheEntry // root.next is the most recently used
}

type kvCacheEntry struct {
	key        string
	st         kvStored
	prev, next *kvCacheEntry
}

func (e *kvCacheEntry) cost() int64 {
	return int64(len(e.key)+kvHeaderLen+len(e.st.data)) + kvCacheOverhead
}

func (c *kvCache) unlink(e *kvCacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
}

func (c *kvCache) pushFront(e *kvCacheEntry) {
	e.prev, e.next = &c.root, c.root.next
	c.root.next.prev = e
	c.root.next = e
}

// get returns key's entry and marks it used.
func (c *kvCache) get(key string) (kvStored, bool) {
	e := c.m[key]
	if e == nil {
		return kvStored{}, false
	}
	c.unlink(e)
	c.pushFront(e)
	return e.st, true
}

// put remembers st as key's stored value (st.data is kept, not copied),
// then drops the least recently used entries over the limit.
func (c *kvCache) put(key string, st kvStored) {
	if c.limit <= 0 {
		return
	}
	if c.m == nil {
		c.m = map[string]*kvCacheEntry{}
		c.root.prev, c.root.next = &c.root, &c.root
	}
	if e := c.m[key]; e != nil {
		c.size -= e.cost()
		e.st = st
		c.size += e.cost()
		c.unlink(e)
		c.pushFront(e)
	} else {
		e = &kvCacheEntry{key: key, st: st}
		c.m[key] = e
		c.size += e.cost()
		c.pushFront(e)
	}
	for c.size > c.limit {
		c.remove(c.root.prev)
	}
}

func (c *kvCache) remove(e *kvCacheEntry) {
	c.unlink(e)
	delete(c.m, e.key)
	c.size -= e.cost()
}

// drop forgets key.
func (c *kvCache) drop(key string) {
	if e := c.m[key]; e != nil {
		c.remove(e)
	}
}

// clear forgets every key.
func (c *kvCache) clear() {
	c.m, c.size = nil, 0
	c.root.prev, c.root.next = nil, nil
}

// len returns the number of keys remembered.
func (c *kvCache) len() int { return len(c.m) }
