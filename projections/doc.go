// Package projections builds read models from an esnats store's events and
// keeps them up to date in long-running workers: positions tracked,
// restarts resumed, lag visible, rebuilds possible.
//
// A Projection names a read model (a ReadModel), the events it wants
// (aggregate types, filtered by the server; event types, filtered by the
// client) and how they are delivered (a consumers.Config: batch size,
// retries, failure policy, fail-over). A Runner runs projections; each rides
// a durable JetStream consumer of its own, named after the projection (see
// package consumers), which delivers the events in stream order, in
// batches, at least once.
//
// # Two ways to keep the position
//
// Ack floor. A ReadModel that is not Checkpointed has the consumer's
// acknowledgement floor as its position: a batch is acknowledged after Apply
// returns. After a crash the batches applied and not yet acknowledged are
// delivered again, so Apply must be idempotent: set values (the last
// status of an order, a row keyed by the event's aggregate), never add to
// them. Use it for models that are naturally idempotent, and for models
// whose store cannot hold a checkpoint.
//
// Exactly-once. A Checkpointed model stores its own checkpoint (the stream
// sequence of the last event it applied) in the same transaction as the
// batch's effects, and the runner skips the events at or below it, also
// when the consumer delivers them again after a crash or a fail-over. Every
// event then changes the model exactly once, so Apply may count and sum.
// When the consumer must be created, the runner starts it after the
// checkpoint.
//
// # Read models
//
// Three Checkpointed read models come with the package:
//
//   - Memory: a map in the process, published by an atomic pointer swap per
//     batch; for small views rebuilt from the events when the process
//     starts (docs/projections.md says how, under Fail-over).
//   - KV: a JetStream KV bucket, readable by any NATS client. A bucket has no
//     transactions; every value records the sequence of the last event that
//     wrote it, which makes a replayed batch exactly-once per key.
//   - SQL: tables of a database/sql database (SQLite, MySQL, ...), each batch
//     one transaction that also advances a row of a checkpoint table.
//
// Implement ReadModel (and Checkpointed, and Resetter for Reset) for
// anything else.
//
// # Runner
//
// Runner.Add registers projections; Runner.Run runs them all until its
// context ends (each finishes and acknowledges its batch in hand; then Run
// returns nil) or one fails with the consumers.Stop policy. With the default
// policy, consumers.Park, an event that Apply keeps failing on is parked in
// the store's dead-letter stream ("<store>_dlq", see package consumers) and
// the projection goes on.
//
// Runner.Status and Runner.StatusOf report each projection's position (the
// model's checkpoint, or the acknowledgement floor), lag (matching events
// not yet applied), rate, parked events, last error and mode
// ("exactly-once" or "ack-floor"). The position and lag come from the
// server (and the model's checkpoint), not from a running worker: any
// process that has added the projection can read them. StatusOf fails
// while no Run has created the projection's consumer.
//
// Runner.Rebuild replays the store from the start into a fresh, empty model
// through a new durable consumer (named <name>-r<time>), reporting Progress
// (position, target, applied events) as it goes, while the projection keeps
// running on its current model. When the rebuild has caught up it switches
// over: the projection goes on with the new consumer and model, and the old
// consumer is deleted; the caller points its readers at the new model. A
// process started later finds the rebuilt consumer by its name. Runner.Reset
// moves a stopped projection back to a position (an exactly-once model only
// to the start, after dropping its data).
//
// # Control plane
//
// A read model lives in the worker's code, so a tool cannot rebuild it by
// itself: it asks the worker. Runner.Serve registers the runner's control
// plane on a *nats.Conn, a NATS micro service (ControlServiceName, metadata
// "store", "host", "pid") with three endpoints:
//
//   - $ESNATS.PROJ.<store>.STATUS, answered by every worker process of the
//     store: an InstanceStatus (each projection's Status, and whether this
//     process runs it, and is the active one or a standby).
//   - $ESNATS.PROJ.<store>.REBUILD.<instance>: rebuild a projection into
//     the empty model its Projection.Fresh returns. The reply accepts it;
//     progress (every 250 ms) and the result go to the inbox of the
//     request's Esnats-Progress header.
//   - $ESNATS.PROJ.<store>.RESET.<instance>: stop the projection in that
//     process, Runner.Reset it, start it again.
//
// REBUILD and RESET are addressed to one process (its ControlService.ID),
// so that exactly one acts. A ControlClient (used by `esnats projections
// status|rebuild|reset`) gathers STATUS from every process, then addresses
// the process that is active for the projection. Errors: ErrNoWorker (no
// process answered), ErrUnknownProjection, ErrNoFresh, ErrBusy,
// ErrInvalidReset, or a *ControlError carrying the worker's code and
// description. After a remote rebuild, Runner.Model returns the model the
// projection feeds.
//
// # Fail-over
//
// Several processes may run the same projections. For each projection one
// process is active and the others stand by; when the active one stops or
// dies, a standby takes over within consumers.Config.PinnedTTL (default
// 5s), at the acknowledgement floor, in order. The read model must then be
// shared by the processes (a database, a KV bucket) for the standby to
// continue it; a Memory model is the process's own, and a standby's is
// empty or behind when it takes over.
//
// # Observability
//
// WithTracerProvider and WithMeterProvider (default: the global OpenTelemetry
// providers, no-ops until set) give each projection a span per batch applied
// (esnats.projection.apply, linked to the commands that wrote the events), a
// span per rebuild, and the metrics esnats.projection.lag, .position,
// .events.applied, .events.skipped and .rebuild.progress; the projections'
// consumers add theirs, labelled with esnats.projection. The runner's logger
// gets rebuilds (start, switch-over, failure), resets and its consumers'
// parked events and fail-overs. See docs/observability.md.
//
// docs/projections.md is the guide: when to use which mode, the failure
// policy and the dead-letter stream, fail-over, rebuilds and status, and
// the control plane's subjects and payloads ("Controlling workers from
// outside").
package projections
