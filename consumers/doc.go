// Package consumers delivers an esnats store's events to handlers through
// durable JetStream consumers, and copies a store to other streams with the
// NATS server's own replication.
//
// It knows nothing of read models: package projections builds them on top
// of it.
//
// # Consumers
//
// A Consumer is one durable JetStream pull consumer on the store's stream,
// named by Config.Name. The server filters the events by aggregate type
// (Config.AggregateTypes become subject filters <prefix>.<type>.*); the
// client filters them by event type (the type is a header, not a subject
// token: see docs/wire-format.md). Handlers are set before Run:
//
//   - Handle sets the handler of one event type, and On a typed one
//     (func(ctx, ev, data T) error, T being a type registered on the store's
//     registry). Events of types without a handler are acknowledged without
//     a call and without being decoded: so are events of types the registry
//     does not know, and messages with no Esnats-Type header, since no
//     handler can be theirs. They are never parked and never stop Run.
//   - HandleBatch sets one handler for whole batches (of Config.EventTypes,
//     if set), for read models that write a batch at a time. Events of other
//     types than Config.EventTypes are acknowledged without being decoded;
//     without Config.EventTypes the batch handler takes every event, so an
//     event that cannot be decoded (an unknown type among them) gets the
//     failure policy.
//
// # Position and delivery guarantees
//
// The consumer's position is its acknowledgement floor, kept by the server:
// the stream sequence up to which every event has been handled. A consumer
// outlives the process; run again (in this process or another), it resumes
// after its position. Config.Start (FromBeginning, the default, FromNow,
// FromSequence, FromTime) says where a new consumer starts; it applies only
// when Run creates the consumer.
//
// Events are delivered at least once, in stream order (so in order within
// every aggregate). Run takes up to Config.BatchSize events that have
// arrived, hands them to the handlers in order, then acknowledges the batch
// with one acknowledgement of its last event (the AckAll policy). While
// more events are already waiting (catching up), it goes on without
// awaiting the server's confirmation, the next batch's acknowledgement
// covering a lost one; the last batch before it waits, and the last one
// before a stop, it confirms. So a clean stop (ctx ending: Run finishes and
// acknowledges the batch in hand, confirmed, then returns nil) delivers no
// handled event again, and a crash delivers again at most the batches
// handled and not yet acknowledged. Handlers must therefore be idempotent,
// or keep a checkpoint of their own and skip what is at or below it, as the
// exactly-once read models of package projections do.
//
// # Failures and the dead-letter stream
//
// A handler that returns an error is called again, up to Config.Retries
// times (default 5), after a backoff that doubles from Config.Backoff
// (100ms) up to Config.MaxBackoff (5s); meanwhile the server is told the
// batch is in progress. A failing batch handler is then called one event at
// a time, to find the event that fails. An event that still fails, or that
// a handler would take but that cannot be decoded (unknown event type for a
// batch handler, bad payload written by another client), gets the failure
// policy, Config.OnFailure:
//
//   - Park (the default) publishes the event to the dead-letter stream and
//     goes on with the next one. The stream is Config.DeadLetter, default
//     "<store>_dlq", created by Run when missing, with the subjects
//     "<store>_dlq.>"; the event is stored under "<dead letter>.<consumer>"
//     with its payload and its own headers (Esnats-Type, Esnats-Version, ...;
//     not the server's Nats-* headers), plus Esnats-Parked-Stream,
//     Esnats-Parked-Subject, Esnats-Parked-Sequence, Esnats-Parked-Consumer,
//     Esnats-Parked-Reason (the last error), Esnats-Parked-Attempts and
//     Esnats-Parked-Event-Id (its Nats-Msg-Id). The HeaderParked* constants
//     name them. Inspect it with `nats stream view <store>_dlq`.
//   - Stop makes Run return a *stream.Error naming the subject and sequence
//     of the event; it is not acknowledged, and comes first when the
//     consumer runs again.
//
// Either way a poison event never blocks a consumer silently: it is parked
// (and logged to Config.Logger) or it stops the worker with an error.
//
// # One active worker, fail-over
//
// Several processes may run the same consumer (same name), for
// availability. All of them pull in the priority group Config.Group with
// the pinned-client policy (nats-server 2.11+): the server delivers to one
// pinned client only, and the others wait as standbys. When the active
// process stops asking (it crashed or lost its connection), the server
// unpins it after Config.PinnedTTL (default 5s, at least 2s) and pins a
// standby: the fail-over time.
//
// Order survives the fail-over. Whenever a process takes the consumer over
// (on its first delivery) it resets the consumer to its acknowledgement
// floor (nats-server 2.14+), so that the events the previous process had
// received but not acknowledged are delivered again, in order, before newer
// ones. A process that stops cleanly resets it too and gives the pin up, so
// that a standby takes over with its next pull request, without waiting for
// PinnedTTL.
//
// # Status
//
// Consumer.Status asks the server where the consumer stands (Position: the
// acknowledgement floor, Delivered, Lag: matching events not yet handled,
// Pending, Pinned: whether some process is active, LastActive) and adds this
// process's counters (Handled, Parked, Rate over the last ten seconds,
// LastError). It fails until Run has created the consumer. The nats CLI
// shows the same: `nats consumer info <store> <name>`.
//
// # Replication
//
// Another service, maybe in another account or JetStream domain, can get a
// store's events in a stream of its own:
//
//   - Engine-native, with CreateReplica: the NATS server fills a replica
//     stream with a copy of the store, as a JetStream source (renumbered; with
//     a ReplicaConfig.SubjectPrefix it opens with stream.OpenStore as a store
//     of its own) or a mirror (the store's sequences). No client process
//     runs: the server resumes the copy after restarts and leader changes and
//     reports lag and errors in the replica's stream info. Events are copied
//     as they are (ids, headers, payloads), filtered by aggregate type
//     (ReplicaConfig.AggregateTypes) and renamed by subject transforms.
//     ReplicaConfig.External and Domain reach a store in another account or
//     domain; ReplicaConfig.StreamConfig shows what CreateReplica would
//     create. CreateReplica is idempotent and refuses changes that would copy
//     events twice (ErrReplicaConfig).
//   - Consumer-based, with a Relay: where events must be selected by event
//     type or transformed (private domain events into public integration
//     events), a durable consumer publishes them to the target stream, each
//     with a deterministic Nats-Msg-Id so that the target drops what a
//     restarted relay publishes again.
//
// docs/replication.md compares them and shows the server configuration for
// the cross-account case; docs/projections.md is the guide to consumers and
// projections.
//
// # Observability
//
// A consumer traces each batch (span esnats.consumer.process, linked to the
// spans of the commands that wrote its events, from their traceparent
// headers) and each event given to a per-type handler (esnats.consumer.handle,
// a child of the span that wrote it), and measures events processed and
// parked, retries, take-overs, batch durations, its lag and whether this
// process is the active one (Config.TracerProvider, Config.MeterProvider;
// default: the global providers, no-ops until set). The lag is known from
// each delivery's metadata, without a request to the server (Consumer.Lag).
// Config.Logger gets parked events with their subject and sequence,
// fail-overs and resets. See docs/observability.md.
//
// # Concurrency
//
// Set the handlers before Run. A Consumer runs one Run at a time (run more
// processes, or more Consumer values with the same name, for fail-over);
// Run may be called again after it returns. Status and Name may be called
// from any goroutine.
package consumers
