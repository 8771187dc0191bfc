package kv

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/esnats/esnats/stream"
)

// memoryBucket is the bucket name a *Memory reports in its errors.
const memoryBucket = "memory"

// Memory is an in-process Snapshots for tests and for programs that run
// without NATS. It keeps the same envelope a *Store writes and has the same
// semantics: the stored version never goes back, corrupt values are
// reported with ErrCorruptSnapshot and replaced by the next Put, a snapshot
// larger than the max value size is refused with stream.ErrTooLarge, and the
// State bytes are copied in and out. Errors name the bucket "memory".
//
// The zero value is not usable; call NewMemory. A Memory is safe for
// concurrent use.
type Memory struct {
	mu       sync.Mutex
	values   map[string][]byte // key -> envelope
	maxValue int
}

// MemoryOption configures a Memory.
type MemoryOption func(*Memory)

// WithMemoryMaxValueSize makes the Memory refuse snapshots as a bucket with
// Config.MaxValueSize n would (envelopes larger than n minus 128 bytes).
// Default DefaultMaxValueSize. n <= 128 refuses every snapshot.
func WithMemoryMaxValueSize(n int32) MemoryOption {
	return func(m *Memory) { m.maxValue = max(int(n)-writeReserve, 0) }
}

// NewMemory returns an empty Memory.
func NewMemory(opts ...MemoryOption) *Memory {
	m := &Memory{values: make(map[string][]byte), maxValue: int(DefaultMaxValueSize) - writeReserve}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Get returns the aggregate's snapshot, with ok false when there is none. Its
// errors are those of Store.Get: ErrCorruptSnapshot for a value stored with
// SetRaw that is not a valid envelope for agg, stream.ErrInvalidName or
// stream.ErrInvalidID for an invalid agg.
func (m *Memory) Get(ctx context.Context, agg stream.Aggregate) (Snapshot, bool, error) {
	key, err := Key(agg)
	if err != nil {
		return Snapshot{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return Snapshot{}, false, &Error{Op: "get snapshot", Bucket: memoryBucket, Key: key, Err: err}
	}
	m.mu.Lock()
	value, found := m.values[key]
	m.mu.Unlock()
	if !found {
		return Snapshot{}, false, nil
	}
	snap, err := decodeSnapshot(value, agg) // allocates a new State
	if err != nil {
		return Snapshot{}, false, &Error{Op: "get snapshot", Bucket: memoryBucket, Key: key, Err: err}
	}
	return snap, true, nil
}

// Put stores snap unless the stored snapshot is at the same or a later
// Version (then it returns nil without writing). Its errors are those of
// Store.Put, except that it never conflicts.
func (m *Memory) Put(ctx context.Context, snap Snapshot) error {
	key, err := validateSnapshot(&snap)
	if err != nil {
		return err
	}
	value, err := encodeSnapshot(&snap) // copies State
	if err != nil {
		return &Error{Op: "put snapshot", Bucket: memoryBucket, Key: key, Err: fmt.Errorf("%w: encoding the envelope: %w", ErrInvalidSnapshot, err)}
	}
	if len(value) > m.maxValue {
		return &Error{Op: "put snapshot", Bucket: memoryBucket, Key: key, Err: tooLarge(len(value), m.maxValue)}
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: "put snapshot", Bucket: memoryBucket, Key: key, Err: err}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, found := m.values[key]; found {
		if stored, err := decodeSnapshot(cur, snap.Aggregate); err == nil && stored.Version >= snap.Version {
			return nil
		}
	}
	m.values[key] = value
	return nil
}

// Delete removes the aggregate's snapshot; no error when there is none.
func (m *Memory) Delete(ctx context.Context, agg stream.Aggregate) error {
	key, err := Key(agg)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: "delete snapshot", Bucket: memoryBucket, Key: key, Err: err}
	}
	m.mu.Lock()
	delete(m.values, key)
	m.mu.Unlock()
	return nil
}

// SetRaw stores value under key as it is, bypassing every check, as another
// client writing to the bucket could: tests use it to plant a corrupt or
// foreign snapshot. A nil value removes the key. The value is copied.
func (m *Memory) SetRaw(key string, value []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if value == nil {
		delete(m.values, key)
		return
	}
	m.values[key] = bytes.Clone(value)
}

// Len returns the number of keys stored.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.values)
}
