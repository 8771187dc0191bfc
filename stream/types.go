package stream

import (
	"context"
	"fmt"
	"iter"
	"time"
)

// Aggregate names one aggregate instance: its type (a stable name such as
// "cart", validated by ValidateName) and its id (any non-empty UTF-8 string up
// to MaxIDLength bytes; escaped on the wire by EncodeID).
type Aggregate struct {
	Type string
	ID   string
}

// String returns "type/id" for messages and logs.
func (a Aggregate) String() string { return a.Type + "/" + a.ID }

// Validate reports whether the aggregate can be stored: a valid type name and
// a valid id. It does no I/O.
func (a Aggregate) Validate() error {
	if err := ValidateName("aggregate type", a.Type); err != nil {
		return err
	}
	_, err := EncodeID(a.ID)
	return err
}

// Revision is where an aggregate stands: the version of its last event (1,
// 2, 3, ... with no gaps; 0 = no events) and that event's stream sequence
// (its global position in the store; 0 = no events).
type Revision struct {
	Version  uint64
	Sequence uint64
}

// IsZero reports whether the revision is that of an aggregate with no events.
func (r Revision) IsZero() bool { return r.Version == 0 && r.Sequence == 0 }

func (r Revision) String() string {
	if r.IsZero() {
		return "no events"
	}
	return fmt.Sprintf("version %d (sequence %d)", r.Version, r.Sequence)
}

// expectKind says how an Expectation is checked.
type expectKind uint8

const (
	expectAny expectKind = iota
	expectNone
	expectRevision
)

// Expectation is the condition an append must meet, checked by the server
// atomically with the write (Nats-Expected-Last-Subject-Sequence).
type Expectation struct {
	kind expectKind
	rev  Revision
}

// ExpectAny appends whatever the aggregate's current revision is. The store
// reads the last revision to number the new events, then appends with a check
// at that revision, retrying on a concurrent write. Use it for commands that
// do not depend on state.
func ExpectAny() Expectation { return Expectation{kind: expectAny} }

// ExpectNone appends only if the aggregate has no events yet.
func ExpectNone() Expectation { return Expectation{kind: expectNone} }

// ExpectRevision appends only if the aggregate's last event is still the one
// at r (its version and stream sequence, as returned by a load or an earlier
// append). ExpectRevision(Revision{}) is ExpectNone().
func ExpectRevision(r Revision) Expectation {
	if r.IsZero() {
		return ExpectNone()
	}
	return Expectation{kind: expectRevision, rev: r}
}

func (e Expectation) String() string {
	switch e.kind {
	case expectNone:
		return "no events"
	case expectRevision:
		return e.rev.String()
	default:
		return "any revision"
	}
}

// EventData is one event to append.
type EventData struct {
	// ID is the event's unique id, stored as Nats-Msg-Id and used by the
	// server to drop duplicates within the store's duplicate window. Empty =
	// a new unique id is generated. Set it yourself to make a retried command
	// idempotent across process restarts. At most MaxEventIDLength bytes of
	// printable ASCII without spaces, unique within one append; otherwise
	// the append fails with ErrInvalidEventID before any I/O.
	ID string
	// Data is the payload: a value (or pointer to a value) of a type
	// registered on the store's Registry.
	Data any
	// CorrelationID and CausationID link the event to the request or the
	// event that caused it. Empty values are taken from the append's options.
	CorrelationID string
	CausationID   string
	// Metadata is user metadata stored with the event. Keys must be valid
	// header names (ASCII letters, digits, '-' and '_').
	Metadata map[string]string
}

// Event is a stored event, decoded.
type Event struct {
	ID            string            // Nats-Msg-Id
	Type          string            // registered event type name
	Aggregate     Aggregate         // the aggregate it belongs to
	Version       uint64            // the aggregate's version after this event
	Sequence      uint64            // stream sequence: global position in the store
	Subject       string            // the NATS subject it is stored on
	Time          time.Time         // when it was appended (the writer's clock)
	SchemaVersion int               // schema version it was written with (before upcasting)
	ContentType   string            // codec content type of the stored payload
	CorrelationID string            // correlation id, if any
	CausationID   string            // causation id, if any
	Metadata      map[string]string // user metadata, nil if none
	TraceParent   string            // W3C traceparent of the writer, if any
	TraceState    string            // W3C tracestate of the writer, if any
	Data          any               // payload: a value of the registered Go type, upcast to the current schema
}

// Revision returns the aggregate revision this event brings it to.
func (e *Event) Revision() Revision { return Revision{Version: e.Version, Sequence: e.Sequence} }

// AppendRequest is one aggregate's part of an atomic multi-aggregate append.
type AppendRequest struct {
	Aggregate Aggregate
	Expect    Expectation
	Events    []EventData
}

// AppendResult tells where an append's events landed.
type AppendResult struct {
	Aggregate Aggregate
	// First and Last are the revisions of the first and last appended event.
	First, Last Revision
	// Duplicate is true when the events had already been stored by an
	// earlier attempt with the same event ids (nothing was written twice).
	Duplicate bool
}

// Store is the event store interface implemented by *Store (JetStream) and
// *MemoryStore (in process), and checked by the streamtest conformance suite.
//
// All methods are safe for concurrent use.
type EventStore interface {
	// Append stores events for one aggregate atomically if expect holds.
	Append(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) (AppendResult, error)
	// AppendBatch stores the events of several aggregates in one atomic
	// batch: all of them or none.
	AppendBatch(ctx context.Context, reqs []AppendRequest, opts ...AppendOption) ([]AppendResult, error)
	// Load returns the aggregate's events in order.
	Load(ctx context.Context, agg Aggregate, opts ...ReadOption) iter.Seq2[*Event, error]
	// ReadAll returns the store's events in stream order.
	ReadAll(ctx context.Context, opts ...ReadOption) iter.Seq2[*Event, error]
	// LastRevision returns the aggregate's revision; the zero Revision if it
	// has no events.
	LastRevision(ctx context.Context, agg Aggregate) (Revision, error)
	// Registry returns the registry used to encode and decode events.
	Registry() *Registry
}
