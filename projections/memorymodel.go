package projections

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/esnats/esnats/stream"
)

// Memory is a read model held in process: a map from string keys to values
// of type V, built by an apply function, with its checkpoint. It suits small
// views (a few thousand entries) that are rebuilt from the events when the
// process starts, such as a lookup table or a dashboard counter.
//
// # Exactly-once
//
// Apply gives each event above the checkpoint to the apply function, in
// order, on a private copy of the view (a shallow clone of the map), and
// then publishes the copy and the sequence of the batch's last event
// together, in one atomic pointer swap. A batch that fails publishes
// nothing: the view and the checkpoint stay as they were, and the runner can
// deliver the batch again. Events at or below the checkpoint (delivered
// again after a retry) are skipped, so no event is applied twice.
//
// Cloning costs O(len(view)) per batch that applies at least one event: use
// larger batches or another read model for large views.
//
// Because the clone is shallow, apply must treat the values already in the
// view as immutable: replace them (view[k] = newValue) rather than modify
// what they point to (slices, maps, pointers), or a failed batch could leave
// changes behind and readers could race with the writer. Plain values
// (numbers, strings, structs of them) need no care.
//
// # Concurrency
//
// Get, Snapshot, Len and Checkpoint never block and may be called from any
// number of goroutines while Apply runs; they see the state before or after
// a batch, never a half-applied one. Apply and Reset are serialized with
// each other (one runner worker per projection is the norm).
type Memory[V any] struct {
	apply func(view map[string]V, ev *stream.Event) error

	mu    sync.Mutex // serializes Apply and Reset
	state atomic.Pointer[memoryState[V]]
}

// memoryState is one published version of a Memory: never modified after
// it is stored.
type memoryState[V any] struct {
	view map[string]V
	pos  uint64
}

var (
	_ Checkpointed = (*Memory[int])(nil)
	_ Resetter     = (*Memory[int])(nil)
)

// NewMemory returns an empty Memory read model (checkpoint 0) that applies
// each event with apply. apply receives the view to change (a private copy
// while the batch is in progress; see Memory) and the event; it must not
// keep the map, and an error from it fails the whole batch. NewMemory panics
// if apply is nil.
func NewMemory[V any](apply func(view map[string]V, ev *stream.Event) error) *Memory[V] {
	if apply == nil {
		panic("projections: NewMemory with a nil apply function")
	}
	m := &Memory[V]{apply: apply}
	m.state.Store(&memoryState[V]{view: map[string]V{}})
	return m
}

// Apply applies the events with a sequence above the checkpoint, in order,
// and advances the checkpoint to the last one, all at once: readers see
// either none or all of the batch. An event at or below the checkpoint (or
// at or below an earlier event of the same batch) is skipped. A batch with
// nothing to apply changes nothing and returns nil.
//
// Errors: a nil event or an event with sequence 0 (not a stored event), and
// an error from apply, wrapped with the event's type and sequence (use
// errors.Is/As to test the cause). On error nothing of the batch is applied
// and the checkpoint is unchanged. Apply does no I/O; ctx is checked only
// before it starts.
func (m *Memory[V]) Apply(ctx context.Context, events []*stream.Event) error {
	if err := checkBatch(events); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.state.Load()
	var next map[string]V
	pos := cur.pos
	for _, ev := range events {
		if ev.Sequence <= pos {
			continue
		}
		if next == nil {
			next = maps.Clone(cur.view)
			if next == nil {
				next = map[string]V{}
			}
		}
		if err := m.apply(next, ev); err != nil {
			return applyError(ev, err)
		}
		pos = ev.Sequence
	}
	if next == nil {
		return nil // everything was at or below the checkpoint
	}
	m.state.Store(&memoryState[V]{view: next, pos: pos})
	return nil
}

// Checkpoint returns the sequence of the last applied event, 0 if none. It
// never fails.
func (m *Memory[V]) Checkpoint(context.Context) (uint64, error) {
	return m.state.Load().pos, nil
}

// Reset empties the view and sets the checkpoint to 0, at once. It never
// fails.
func (m *Memory[V]) Reset(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.Store(&memoryState[V]{view: map[string]V{}})
	return nil
}

// Get returns the value of key and whether it is present.
func (m *Memory[V]) Get(key string) (V, bool) {
	v, ok := m.state.Load().view[key]
	return v, ok
}

// Snapshot returns a copy of the whole view (shallow: values that hold
// pointers share them with the view, and must not be modified). The copy
// is consistent: it is the view after some batch, never during one.
func (m *Memory[V]) Snapshot() map[string]V {
	return maps.Clone(m.state.Load().view)
}

// Len returns the number of keys in the view.
func (m *Memory[V]) Len() int { return len(m.state.Load().view) }

// errNilEvent and errNoSequence describe batches that are not made of
// stored events; they are programming errors of the caller.
var (
	errNilEvent   = errors.New("projections: nil event in batch")
	errNoSequence = errors.New("projections: event without a stream sequence in batch")
)

// checkBatch reports an event that is not a stored event: nil, or sequence
// 0. The read models of this package refuse such a batch before applying
// anything.
func checkBatch(events []*stream.Event) error {
	for i, ev := range events {
		switch {
		case ev == nil:
			return fmt.Errorf("%w (index %d)", errNilEvent, i)
		case ev.Sequence == 0:
			return fmt.Errorf("%w (index %d, type %q, aggregate %s)", errNoSequence, i, ev.Type, ev.Aggregate)
		}
	}
	return nil
}

// applyError wraps the error of a read model's apply function with the
// event it failed on.
func applyError(ev *stream.Event, err error) error {
	return &stream.Error{Op: "apply " + ev.Type + " event", Subject: ev.Subject, Sequence: ev.Sequence, Err: err}
}
