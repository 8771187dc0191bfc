// Package kv keeps aggregate snapshots, and projection checkpoints, in
// NATS JetStream key-value buckets.
//
// # Snapshots
//
// A snapshot is an aggregate's state after some event, so that loading the
// aggregate reads only the events after it. A snapshot is a cache: losing
// one never loses data, and a bad one is ignored, never fatal. Get reports a
// value it cannot use with an error matching ErrCorruptSnapshot, and callers
// (the aggregate repository) treat any Get error as "no snapshot", log it
// and replay the events; the next Put replaces the bad value.
//
// A well-formed snapshot can still be ahead of its stream (left behind by
// stream.Store.Purge, or from a bucket restored from a newer backup): kv
// cannot know, since it never reads the stream. The repository checks that
// the stream holds the event a snapshot names (Snapshot.Sequence, at
// Snapshot.Version), and deletes a snapshot that fails the check: Put alone
// would not replace it, since its Version is higher.
//
// Store keeps snapshots in a KV bucket (default "esnats_snapshots"), one key
// per aggregate. Memory keeps them in process, with the same semantics, for
// tests. Both implement Snapshots, the interface the repository uses.
//
// Snapshots never regress: Put reads the stored snapshot with its KV
// revision and writes with a compare-and-set on that revision, so that of
// several concurrent writers, whatever their order, the highest Version
// stays. A Put of a snapshot that is not newer than the stored one writes
// nothing and returns nil.
//
// # Keys
//
// The key of an aggregate is "<aggregate type>.<escaped id>" (see Key): the
// id is escaped as in event subjects (stream.EncodeID), so "cart.42",
// "user.alice=40example=2Ecom" and "city.Z=C3=BCrich" are keys of the
// aggregates cart/42, user/alice@example.com and city/Zürich.
//
// # Value format (version 1)
//
// A value is a MessagePack map with string keys (written in this order;
// readers must not depend on the order and must ignore keys they do not
// know, so that fields can be added without a new format version):
//
//	key         msgpack type   meaning
//	v           int            envelope format version: 1
//	agg_type    str            aggregate type, equal to the key's first token
//	agg_id      str            aggregate id, unescaped, equal to the key's decoded second token
//	version     uint           aggregate version of the last applied event, >= 1
//	seq         uint           stream sequence of that event, >= 1; loading resumes after it
//	state_type  str            name of the state's type, e.g. "cart": 1-128 bytes of [A-Za-z0-9_-]
//	schema      int            schema version of the encoded state, >= 1
//	ct          str            content type of state, e.g. "application/msgpack"
//	time        int            when the snapshot was taken, Unix nanoseconds (UTC); 0 = unknown
//	state       bin            the encoded state (readers also accept a str)
//
// Integers use the most compact MessagePack encoding. A value with another
// "v", a missing or out-of-range field, or an aggregate that does not match
// its key is corrupt. MessagePack rather than JSON because the state is
// bytes (usually itself MessagePack, the project's default codec): a
// MessagePack bin holds it as it is, where JSON would need base64 (a third
// larger, against the bucket's max value size) and a second decoding pass.
// The value is read with any MessagePack library, for example
// `nats kv get esnats_snapshots cart.42 --raw | msgpack2json`.
//
// # Bucket
//
// NewStore creates the bucket (file storage, 1 replica, history 1, no TTL,
// 1 MiB max value size, no compression by default; see Config) or updates it
// to the given Config, idempotently; OpenStore binds to an existing one. A
// snapshot whose envelope does not fit in the max value size is refused
// before any I/O with an error matching stream.ErrTooLarge; the repository
// then simply takes no snapshot.
//
// # Checkpoints
//
// Checkpoints keeps named positions (a projection's last handled stream
// sequence) in another bucket (default "esnats_checkpoints"), as decimal
// ASCII values, with compare-and-set writes: Set with a stale revision fails
// with an error matching stream.ErrConflict.
//
// # Tracing
//
// A Store traces its reads and writes of snapshots (spans esnats.snapshot.get
// and esnats.snapshot.put, children of the caller's span) on
// Config.TracerProvider, by default the global OpenTelemetry provider (a
// no-op until set). kv logs nothing: its errors name the bucket and key, and
// the repository logs and counts what it ignores (docs/observability.md).
//
// # Errors
//
// Errors match sentinels with errors.Is: ErrCorruptSnapshot,
// ErrInvalidSnapshot, ErrCorruptCheckpoint, ErrInvalidConfig, and
// stream.ErrInvalidName, stream.ErrInvalidID, stream.ErrTooLarge,
// stream.ErrNotFound and stream.ErrConflict. Errors that involve a bucket
// are an *Error naming the operation, bucket, key and revision. Bad input is
// refused before any I/O.
package kv
