package telemetry

import "go.opentelemetry.io/otel/attribute"

// ScopeName is the instrumentation scope of every esnats tracer and meter.
const ScopeName = "github.com/esnats/esnats"

// Span names. A span's attributes say which store, aggregate, consumer or
// projection it is about (docs/observability.md).
const (
	SpanUpdate          = "esnats.aggregate.update" // Repository.Update: load, command, save, retries
	SpanCreate          = "esnats.aggregate.create" // Repository.Create
	SpanDelete          = "esnats.aggregate.delete" // Repository.Delete
	SpanLoad            = "esnats.aggregate.load"   // Repository.Load, and each load of a command
	SpanSave            = "esnats.aggregate.save"   // Repository.Save, and the save of a command
	SpanSnapshotGet     = "esnats.snapshot.get"     // kv.Store.Get
	SpanSnapshotPut     = "esnats.snapshot.put"     // kv.Store.Put (a background snapshot write)
	SpanConsumerBatch   = "esnats.consumer.process" // one batch delivered to a consumer's handlers
	SpanConsumerEvent   = "esnats.consumer.handle"  // one event handled by a per-type handler
	SpanProjectionApply = "esnats.projection.apply" // one batch applied to a read model
	SpanRebuild         = "esnats.projection.rebuild"
	SpanAppend          = "esnats.stream.append" // stream.Store.Append/AppendBatch
	SpanStreamLoad      = "esnats.stream.load"   // stream.Store.Load
)

// Span event names.
const (
	EventConflict        = "esnats.conflict"         // a command's save hit a concurrency conflict
	EventSnapshotIgnored = "esnats.snapshot.ignored" // a load found a snapshot it cannot use
	EventRetry           = "esnats.retry"            // a consumer's handler failed and is called again
	EventParked          = "esnats.parked"           // a consumer parked an event in the dead-letter stream
)

// Metric names. Units follow UCUM ("s", "1") and OpenTelemetry's
// annotations ("{event}"); the Prometheus exporter turns
// esnats.command.duration (s) into esnats_command_duration_seconds and a
// counter such as esnats.command.conflicts into esnats_command_conflicts_total.
const (
	// Repository (package aggregate).
	MetricCommandDuration  = "esnats.command.duration"        // histogram, s: Update, Create, Delete
	MetricCommandConflicts = "esnats.command.conflicts"       // counter: saves refused by the concurrency check
	MetricCommandRetries   = "esnats.command.retries"         // counter: commands run again after a conflict
	MetricLoadDuration     = "esnats.aggregate.load.duration" // histogram, s: loads that read the store
	MetricLoadEvents       = "esnats.aggregate.load.events"   // histogram: events read by one load
	MetricSnapshotWrites   = "esnats.snapshot.writes"         // counter: snapshot writes by outcome
	MetricSnapshotIgnored  = "esnats.snapshot.ignored"        // counter: snapshots not used, by reason

	// Consumers (package consumers).
	MetricConsumerProcessed     = "esnats.consumer.events.processed" // counter: events handled
	MetricConsumerParked        = "esnats.consumer.events.parked"    // counter: events parked in the dead-letter stream
	MetricConsumerRetries       = "esnats.consumer.retries"          // counter: failed handler calls retried
	MetricConsumerBatchDuration = "esnats.consumer.batch.duration"   // histogram, s: one batch handled and acknowledged
	MetricConsumerLag           = "esnats.consumer.lag"              // gauge: events not yet handled
	MetricConsumerActive        = "esnats.consumer.active"           // gauge: 1 when this process holds the pin
	MetricConsumerTakeovers     = "esnats.consumer.takeovers"        // counter: times this process took the consumer over

	// Projections (package projections).
	MetricProjectionApplied  = "esnats.projection.events.applied"   // counter: events applied to the read model
	MetricProjectionSkipped  = "esnats.projection.events.skipped"   // counter: events an exactly-once model already held
	MetricProjectionLag      = "esnats.projection.lag"              // gauge: matching events not yet applied
	MetricProjectionPosition = "esnats.projection.position"         // gauge: stream sequence of the last event applied
	MetricRebuildProgress    = "esnats.projection.rebuild.progress" // gauge, 1: share of a rebuild done, 0 to 1

	// Event store (package stream).
	MetricAppendDuration     = "esnats.stream.append.duration" // histogram, s: one Append or AppendBatch
	MetricStreamLoadDuration = "esnats.stream.load.duration"   // histogram, s: one Load, until the last event is read
	MetricAppendedEvents     = "esnats.stream.events.appended" // counter: events appended
)

// Attribute keys. messaging.* follow OpenTelemetry's semantic conventions
// for messaging; esnats.* are esnats's own.
const (
	KeyMessagingSystem        = attribute.Key("messaging.system")              // always "nats"
	KeyMessagingDestination   = attribute.Key("messaging.destination.name")    // an event's subject
	KeyMessagingOperationType = attribute.Key("messaging.operation.type")      // "send", "receive", "process"
	KeyMessagingOperationName = attribute.Key("messaging.operation.name")      // "append", "load", "process", "handle"
	KeyMessagingConsumerGroup = attribute.Key("messaging.consumer.group.name") // the durable consumer
	KeyMessagingBatchCount    = attribute.Key("messaging.batch.message_count") // events in a batch
	KeyMessagingMessageID     = attribute.Key("messaging.message.id")          // an event's id (Nats-Msg-Id)

	KeyStore            = attribute.Key("esnats.store")             // event store (stream) name
	KeyAggregateType    = attribute.Key("esnats.aggregate.type")    // aggregate type
	KeyAggregateID      = attribute.Key("esnats.aggregate.id")      // aggregate id (spans only: unbounded)
	KeyEventType        = attribute.Key("esnats.event.type")        // event type name
	KeyVersion          = attribute.Key("esnats.version")           // aggregate version
	KeySequence         = attribute.Key("esnats.sequence")          // stream sequence (position)
	KeyConsumer         = attribute.Key("esnats.consumer")          // durable consumer name
	KeyProjection       = attribute.Key("esnats.projection")        // projection name
	KeyProjectionMode   = attribute.Key("esnats.projection.mode")   // "exactly-once" or "ack-floor"
	KeySkipped          = attribute.Key("esnats.skipped")           // events an exactly-once model already held
	KeyTarget           = attribute.Key("esnats.target")            // a rebuild's target sequence
	KeyCommand          = attribute.Key("esnats.command")           // "update", "create", "delete"
	KeyOutcome          = attribute.Key("esnats.outcome")           // see the Outcome constants
	KeyReason           = attribute.Key("esnats.reason")            // why a snapshot was ignored
	KeyAttempts         = attribute.Key("esnats.attempts")          // attempts a command or write took
	KeyEvents           = attribute.Key("esnats.events")            // events appended, read or recorded
	KeyLoadSource       = attribute.Key("esnats.load.source")       // "cache", "snapshot", "events"
	KeyBucket           = attribute.Key("esnats.bucket")            // KV bucket
	KeyKVKey            = attribute.Key("esnats.kv.key")            // KV key
	KeyKVRevision       = attribute.Key("esnats.kv.revision")       // KV revision of the value read
	KeyFound            = attribute.Key("esnats.found")             // a snapshot read found one
	KeyActualSequence   = attribute.Key("esnats.actual.sequence")   // a conflict: the aggregate's position on the server
	KeyExpectedVersion  = attribute.Key("esnats.expected.version")  // a save: the version it expects
	KeyExpectedSequence = attribute.Key("esnats.expected.sequence") // a save: the position it expects
)

// Values of esnats.outcome.
const (
	OutcomeOK       = "ok"       // done
	OutcomeRejected = "rejected" // the command refused (its error, ErrExists, ErrDeleted)
	OutcomeConflict = "conflict" // the concurrency check failed (after the last attempt)
	OutcomeError    = "error"    // anything else
	OutcomeSkipped  = "skipped"  // a snapshot write not needed: the stored one is as new
)

// Values of esnats.reason on esnats.snapshot.ignored.
const (
	ReasonCorrupt     = "corrupt"      // the stored value or the state does not decode
	ReasonSchema      = "schema"       // another state type or schema version
	ReasonContentType = "content_type" // a codec this process does not know
	ReasonUnreadable  = "unreadable"   // the read failed (server, connection)
	ReasonMismatch    = "mismatch"     // names an event the stream does not hold (ahead of it, purged)
)

// SystemNATS is messaging.system=nats, on every span.
var SystemNATS = KeyMessagingSystem.String("nats")

// DurationBuckets are the histogram bounds, in seconds, of esnats's
// durations: 100µs (an append without fsync) to 10s.
var DurationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// CountBuckets are the histogram bounds of event counts (events read by a
// load): 0 (a snapshot and nothing after it) to 10000.
var CountBuckets = []float64{0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000}
