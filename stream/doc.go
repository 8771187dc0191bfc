// Package stream is the esnats event store: append-only streams of events,
// one per aggregate instance, kept in one NATS JetStream stream.
//
// # Layout
//
// A store is one JetStream stream (file storage, direct get, atomic publish,
// a two-minute duplicate window). Each aggregate instance owns one subject,
// <store>.<aggregateType>.<escaped id>; each event is one message whose body
// is the payload (msgpack by default) and whose headers carry the event id
// (Nats-Msg-Id), type, the aggregate version, time, schema version,
// correlation and causation ids, user metadata and the W3C trace context.
// docs/wire-format.md is the full, versioned contract.
//
// # Writing
//
// Append stores a command's events for one aggregate if an Expectation holds
// (ExpectNone, ExpectRevision, ExpectAny): the server checks the aggregate's
// last stream sequence atomically with the write, so two writers that loaded
// the same revision cannot both succeed; the loser gets a *ConflictError
// (errors.Is(err, ErrConflict)). Several events go in one atomic batch: all
// or none. AppendBatch does the same across aggregates.
//
// Concurrent appends are coalesced (group commit, Config.GroupCommit): while
// one append or batch is in flight, the appends that arrive gather and then
// go out together in one atomic batch, each keeping its own expectation and
// its events together. Under fsync "always" the server then syncs once per
// batch instead of once per event. A conflict fails only the append whose
// expectation did not hold. Where batches are slower (a single-replica file
// stream under the server's default fsync), the default mode measures it
// and sends single-event appends on their own instead. docs/appends.md and docs/performance.md say
// what each mode guarantees and costs.
//
// Every event has an id (generated, or set by the caller). When an append's
// outcome is unknown (a timeout, a lost connection), Append resends the same
// events with the same ids and expectation and then asks the stream leader
// what landed: an append is never stored twice, never reported failed when it
// landed and never reported done when it did not. If the server cannot be
// asked, the error is ErrIndeterminate, and retrying the same append is safe.
//
// # Reading
//
// Load returns one aggregate's events as a Go iterator, read with batched
// direct gets (one round trip per batch, no consumer is created), and checks
// that its versions start at 1 (or after the revision given to
// AfterRevision, the tail after a snapshot) with no gap. ReadAll
// reads the whole store from a position, optionally by aggregate and event
// type. LastRevision asks the stream leader for an aggregate's revision.
//
// # Types
//
// A Registry maps explicit, stable event type names to Go types; there is no
// global registry and no name derived by reflection. Types carry a schema
// version; Upcast steps turn payloads stored by older code into the current
// type on read.
//
// # Errors
//
// Errors match the sentinels (ErrConflict, ErrNotFound, ErrUnknownEventType,
// ErrInvalidID, ErrDecode, ErrTooLarge, ...) with errors.Is, and most are an
// *Error naming the operation, subject and stream sequence. Bad input is
// refused before any I/O; an undecodable event written by another client is
// reported with its subject and sequence, and nothing stored is changed
// (CheckEvent applies the same checks of a message's subject and headers
// without a registry). An append the server refuses for lack of permission
// fails at once with ErrPermissionDenied: nothing was stored.
//
// # Testing
//
// MemoryStore implements the same EventStore interface in process, and the
// streamtest package is a conformance suite that runs the same behaviours
// against it, an embedded server and a 3-node cluster.
package stream
