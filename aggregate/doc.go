// Package aggregate keeps business objects as event-sourced aggregates on an
// esnats event store.
//
// An aggregate is a plain Go type that embeds Root and has an Apply method.
// Events are facts, named in the past tense (ItemAdded, not AddItem); only
// Apply changes state; a command is a method that checks the current state
// and then Records events, which are applied at once so that later checks in
// the same command see them. A command that returns an error records nothing.
// An aggregate that was never written starts from the state New returns for
// its id: entities are not created explicitly.
//
// The functional style (State, Functional, Decide) expresses the same thing
// as a state value, an evolve function and decide functions, on the same
// Root and Repository.
//
// A Repository loads aggregates (from a snapshot plus the events after it,
// or by replaying the history), saves their recorded events atomically with
// the store's concurrency check, and runs commands with Update: load, run,
// save, and on a conflict load again and rerun, a bounded number of times
// with jittered backoff. Create requires a new aggregate; Delete records a
// Terminal event, after which commands fail with ErrDeleted while reads
// still work. A bounded cache of recently used aggregates makes a hot
// aggregate cost no reload per command; a stale cached copy is caught by the
// concurrency check and reloaded.
//
// Snapshots (package kv) are taken every SnapshotEvery events (default 100)
// in the background: a snapshot write never delays or fails a command, never
// regresses, and a snapshot that is corrupt or of an older state schema
// (SnapshotSchema) is ignored and replaced. A snapshot is a cache: losing it
// loses nothing.
//
// A snapshot is used only if the stream still holds the event it was taken
// after: the load reads from that event on (in the same round trip as the
// events after it) and checks its sequence and version. A snapshot ahead of
// the stream fails the check: one left behind by stream.Store.Purge, which
// purges the events only (Repository.Purge deletes the snapshot too), or one
// from a bucket restored from a newer backup than the stream. It is logged,
// counted as ignored (reason "mismatch") and deleted, and the aggregate is
// loaded from its events; so Load and Update never work on a state the
// stream does not have. A cached aggregate is checked the same way by Load
// (Update relies on the append's concurrency check, then reloads). A
// snapshot naming an event the stream does hold, at its version, is
// believed.
//
// # Observability
//
// Commands, loads and saves are traced with OpenTelemetry (spans
// esnats.aggregate.update, .create, .delete, .load, .save) and measured
// (command duration by outcome, conflicts, retries, load duration and events
// read, snapshot writes and snapshots ignored), on Config.TracerProvider and
// Config.MeterProvider or, by default, the global providers: no-ops until the
// application sets them, and then free of allocations. A command's span is
// stored in the traceparent header of its events, so that consumers and
// projections elsewhere link to it. Config.Logger gets ignored snapshots,
// failed snapshot writes, commands that still conflict after MaxAttempts
// and appends of unknown outcome, with the aggregate's subject and position.
// docs/observability.md lists the spans, metrics and log records.
//
// Package aggregatetest tests aggregates without any server.
package aggregate
