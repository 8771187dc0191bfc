// Package benchkit is the engine of `esnats bench`: it runs benchmark
// workloads against a NATS server, each an esnats operation beside the raw
// JetStream operation it is built on, and reports both with their ratio.
//
// # Workloads
//
// Workloads returns the standard ones (Lookup finds one by name):
//
//	append              js.PublishMsg with the expected-last-subject-sequence check
//	                    vs stream.Store.Append of one event
//	append-batch        jetstreamext.PublishMsgBatch of 10 messages
//	                    vs Store.Append of 10 events (one atomic batch)
//	append-concurrent   pipelined js.PublishMsgAsync (up to 1024 in flight) vs
//	                    Store.Append from Options.Concurrency goroutines, over
//	                    10,000 aggregates: group commit (Options.GroupCommit)
//	append-async        the same raw side vs Store.AppendAsync from one goroutine,
//	                    up to 1024 in flight (Options.GroupCommit)
//	load                jetstreamext.GetBatch of a 100-event aggregate's subject
//	                    vs Store.Load, iterating and decoding every event
//	load-snapshotted    aggregate.Repository.Load (KV snapshots every 100 events,
//	                    no cache) of a 100-event aggregate vs of a 10,000-event one
//	repository-update   js.PublishMsg with the check vs aggregate.Repository.Update
//	                    of a one-event command on a hot (cached) aggregate
//	projection-catchup  a durable pull consumer acknowledging every 100th event
//	                    vs a projections.Runner feeding an in-memory model, in events/s
//	projection-kv       the same consumer decoding, with a KV put of each key changed
//	                    (7 keys) and of a checkpoint every 100 events, vs a Runner
//	                    feeding a projections.KV read model, in events/s
//
// The raw side writes exactly esnats' wire format (docs/wire-format.md, the
// payload encoded once), so the difference is esnats' own work: validation,
// encoding, event ids, settling the outcome, decoding. One pair has esnats
// on both sides: load-snapshotted's "raw" side is the same load of a short
// history, against which a long one's is measured. These are the shapes of
// the repository's `make bench` benchmarks (stream, aggregate and
// projections bench_test.go), as a library for a command line.
//
// # Method
//
// Run creates a stream of its own, named <Options.Prefix>_<workload>_<random>
// (and KV buckets named after it), and never touches another; both sides
// run in the calling process against that stream. After an untimed warm-up
// of each side (one operation; one per writer for append-concurrent; a
// whole catch-up for projection-catchup and projection-kv),
// the sides take turns in rounds: each round runs the same number of operations on each
// side, back to back, the first side alternating from round to round, so that
// machine noise and the stream's growth hit both alike. The ratio
// (Result.Ratio) is esnats operations per second ÷ raw operations per
// second, 1.0 meaning as fast as raw JetStream; Result.RatioMedian is the
// median of the rounds' ratios. On a shared machine compare ratios, not
// absolute numbers.
//
// After the rounds Run checks that each side did what it reported (the
// events stored per side, the aggregates' versions, the events each load
// returned, the read model's content), then deletes its streams and KV
// buckets, also when it fails or its context ends.
//
// # Printing
//
// Result marshals to JSON with stable lower-case keys; Columns and Row give
// the cells of a table, and WriteTable writes an aligned one.
package benchkit
