// Package soak checks that esnats keeps its promises under faults: it runs
// writers, loaders and projection workers against an event store on a
// 3-node embedded cluster while nodes stop and restart, records every
// append's outcome as its caller saw it, and then reads the whole store back
// and checks it.
//
// # What is recorded
//
// Writers (Writers) run repository commands (aggregate.Repository.Update,
// which reruns a command on a concurrency conflict) and raw appends
// (stream.Store.Append and AppendBatch with ExpectRevision, after a load
// from a snapshot) on counters (Counter). Every event (Added) carries its
// key (the attempt that wrote it and its index) and what its writer saw when
// it decided: the version it expected the event to get and the counter's
// total before it. Each attempt goes to a Ledger with its outcome:
//
//   - acknowledged: the append returned nil (with where the store said the
//     events landed, for raw appends);
//   - failed: a definite error (a conflict, or any error other than those
//     below);
//   - indeterminate: stream.ErrIndeterminate, or an error from the caller's
//     context ending.
//
// # The invariants (Checker)
//
//  1. Every event of an acknowledged append is in the store, exactly once,
//     at the sequence and version the append reported, with the event id it
//     was given.
//  2. No event of a failed append is in the store.
//  3. An indeterminate append is in the store at most once: all of its
//     events or none.
//  4. Every append is atomic: all of its events are stored (consecutively,
//     for one aggregate) or none, also across aggregates (AppendBatch).
//  5. Each aggregate's versions run 1, 2, 3, ... n in stream order, with no
//     gap and no repeat; Load returns the same history as ReadAll.
//  6. No lost update: each stored event has the version its writer expected
//     and follows the total its writer saw (an append decided on stale state
//     is refused, never stored).
//  7. Nothing else is in the store: every event was written by an attempt
//     of the ledger, and no event key or event id is stored twice.
//  8. Loading an aggregate from its snapshot and the events after it gives
//     the same state as replaying its whole history.
//  9. A projection's read model, once it has caught up, equals a replay of
//     the store computed by the checker: exactly-once models (in memory, in
//     a KV bucket) count each event once; an ack-floor model has seen every
//     event.
//  10. All of this still holds after the whole cluster is stopped and
//     started again on the same store directories.
//
// # Tests and the soak run
//
// TestFaults (part of make test, about 30 s under -race) runs 8 writers over
// 4 hot and 200 cold counters and a projection worker on an R3 store while
// the stream leader is stopped and restarted three times, checks, restarts
// the whole cluster, checks again, writes more and checks a last time.
// TestCheckerFindsViolations shows that the checker detects each kind of
// violation. TestAppendWithoutQuorum reproduces a violation TestFaults found
// (an append reported failed that lands); it is skipped until the bug is
// fixed (ESNATS_KNOWN_BUGS=1 runs it).
//
// The soak run (Soak) is the same for minutes, with a mixed workload (hot
// and cold counters, snapshots every 10 events, loads from snapshots, an
// in-memory and a KV exactly-once read model and an ack-floor one) and
// faults every 20 s (the stream leader stopped and restarted, or the
// projection worker restarted), and prints a summary. It is not part of
// make test:
//
//	make soak              # 5 minutes; make soak SOAK=30m for longer
//	go test -race -run TestSoak -count=1 -timeout 30m -v ./internal/soak/ -args -soak=2m
package soak
