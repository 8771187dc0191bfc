package aggregate

import (
	"fmt"
	"reflect"

	"github.com/esnats/esnats/stream"
)

// Aggregate is implemented by a pointer to a type that embeds Root and has
// an Apply method:
//
//	type Cart struct {
//		aggregate.Root
//		Items map[string]int
//	}
//
//	func (c *Cart) Apply(event any) {
//		switch e := event.(type) {
//		case ItemAdded:
//			c.Items[e.SKU] += e.Quantity
//		}
//	}
type Aggregate interface {
	// Apply changes the state by one event. It is the only place where
	// state changes; it must not fail, do I/O or record events: events are
	// facts that already happened. Events arrive as values of their
	// registered types (ItemAdded, not *ItemAdded).
	Apply(event any)

	// The methods below come with the embedded Root.
	ID() string
	Version() uint64
	Revision() stream.Revision
	Uncommitted() []any
	Deleted() bool
	root() *Root
}

// Terminal is implemented by event types that end an aggregate's life (a
// cart deleted, an account closed). After such an event the repository
// rejects commands with ErrDeleted; its history can still be loaded.
type Terminal interface {
	TerminatesAggregate()
}

// Root tracks what every aggregate has: its id, the version and stream
// position of its last event, and the events recorded by the command being
// handled. Embed it (by value) in aggregate types. A Root is not safe for
// concurrent use, like the aggregate that embeds it: the repository hands
// each instance to one command at a time.
type Root struct {
	id        string
	version   uint64 // version of the last applied event, recorded ones included
	sequence  uint64 // stream sequence of the last stored event
	pending   []any
	deletedAt uint64 // version of the Terminal event, 0 = none
	self      Aggregate
}

func (r *Root) root() *Root { return r }

// ID returns the aggregate's id.
func (r *Root) ID() string { return r.id }

// Version returns the version of the last applied event, counting events
// recorded by the current command: 0 for an aggregate with no events.
func (r *Root) Version() uint64 { return r.version }

// Revision returns the stored revision the aggregate was loaded at or last
// saved at (recorded, unsaved events not counted).
func (r *Root) Revision() stream.Revision {
	return stream.Revision{Version: r.version - uint64(len(r.pending)), Sequence: r.sequence}
}

// Deleted reports whether a Terminal event has been applied.
func (r *Root) Deleted() bool { return r.deletedAt != 0 }

// Uncommitted returns the events recorded since the aggregate was loaded or
// last saved, oldest first. The slice must not be modified.
func (r *Root) Uncommitted() []any { return r.pending }

// Record records events: each is applied at once (so later checks in the
// same command see it) and kept until the repository saves it. Record events
// as values of registered types; a pointer is dereferenced so that Apply
// always sees values, as it does when events are loaded.
//
// Record panics when the aggregate was not created by a Repository,
// aggregate.New or the aggregatetest kit (it would not know the Apply to
// call).
func (r *Root) Record(events ...any) {
	if r.self == nil {
		panic("aggregate: Record on an aggregate not created by a Repository, aggregate.New or aggregatetest")
	}
	for _, e := range events {
		e = deref(e)
		r.self.Apply(e)
		r.version++
		r.pending = append(r.pending, e)
		if _, ok := e.(Terminal); ok && r.deletedAt == 0 {
			r.deletedAt = r.version
		}
	}
}

// deref turns a non-nil pointer into the value it points to.
func deref(e any) any {
	if v := reflect.ValueOf(e); v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface()
	}
	return e
}

// New binds a freshly constructed aggregate a to id, so that its Record
// calls its Apply. Repositories and the test kit call it; call it yourself
// only to use an aggregate without them.
func New[A Aggregate](a A, id string) A {
	r := a.root()
	*r = Root{id: id, self: a}
	return a
}

// applyStored applies a stored event during a load. An event whose version
// is not the next one is refused with a *stream.Error (Op "load", the
// event's subject and sequence) matching stream.ErrDecode, as the store
// reports a gap between two events it reads.
func applyStored(a Aggregate, ev *stream.Event) error {
	r := a.root()
	if ev.Version != r.version+1 {
		return &stream.Error{Op: "load", Subject: ev.Subject, Sequence: ev.Sequence,
			Err: fmt.Errorf("%w: version %d follows version %d (history of %s is not contiguous)", stream.ErrDecode, ev.Version, r.version, ev.Aggregate)}
	}
	a.Apply(ev.Data)
	r.version = ev.Version
	r.sequence = ev.Sequence
	if _, ok := ev.Data.(Terminal); ok && r.deletedAt == 0 {
		r.deletedAt = ev.Version
	}
	return nil
}

// committed marks the recorded events as stored, the last at seq.
func (r *Root) committed(seq uint64) {
	r.pending = nil
	r.sequence = seq
}

// discard drops recorded events; the aggregate's state is then invalid (the
// events were applied), so callers must throw the instance away.
func (r *Root) discard() { r.pending = nil }

// Replay applies events to a as if they had been loaded from the store:
// versions advance, nothing is recorded. For tests (the aggregatetest kit's
// Given) and tools that rebuild state from events they already hold.
func Replay[A Aggregate](a A, events ...any) A {
	r := a.root()
	for _, e := range events {
		e = deref(e)
		a.Apply(e)
		r.version++
		if _, ok := e.(Terminal); ok && r.deletedAt == 0 {
			r.deletedAt = r.version
		}
	}
	return a
}

// MarkSaved forgets a's recorded events as if they had been saved. For test
// kits that play commands one after another without a store.
func MarkSaved[A Aggregate](a A) {
	r := a.root()
	r.pending = nil
}
