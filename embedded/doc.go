// Package embedded runs a NATS server with JetStream inside the current
// process: one server for programs (a demo, the esnats CLI's dev server) and
// tests, or a 3-node JetStream cluster on loopback for tests of replication
// and leader failover. Nothing but Go is needed: no Docker, no nats-server
// binary.
//
// # Programs
//
// A program chooses where its data lives; everything else has a default:
//
//	srv, err := embedded.Start(embedded.Options{Dir: "./data"})
//	if err != nil {
//		log.Fatal(err) // e.g. JetStream could not use ./data
//	}
//	defer srv.Shutdown()
//	nc, err := srv.Connect()
//
// Start returns only once the server accepts connections and JetStream is
// enabled. If JetStream does not start (an unusable store directory, say),
// Start shuts the server down and returns an error matching
// ErrJetStreamNotStarted that carries the server's reason, instead of leaving
// a server running without JetStream. The server never exits the process
// (nats-server's own logger would, on a fatal error) and never installs
// signal handlers.
//
// Defaults: listen on 127.0.0.1 on a random free port (see ClientURL), or on
// no port at all with InProcessOnly (clients then connect in-process);
// quiet logs (Options.Logging routes them to stderr); a generated server
// name; JetStream limits chosen by the server; and fsync of every write
// (SyncAlways). The fsync default is deliberate: nats-server's own default
// syncs in the background every 2 minutes, and Jepsen's analysis of
// JetStream showed that this can lose writes that were already
// acknowledged to the client when machines crash. An event store must not
// lose acknowledged events, so esnats trades throughput for durability
// unless told otherwise (SyncEvery, SyncServerDefault). Options.Configure
// reaches every other nats-server option (accounts, users, TLS, monitoring).
//
// Restart stops the server and starts it again on the same store directory,
// name and port: data survives and connected clients reconnect on their own.
//
// # Tests
//
// RunServer and RunCluster start a server or cluster in a t.TempDir(), stop
// it in t.Cleanup, and fail the test if it does not start; MustConnect and
// MustJetStream connect with cleanup:
//
//	func TestSomething(t *testing.T) {
//		srv := embedded.RunServer(t)
//		_, js := embedded.MustJetStream(t, srv)
//		// ... use js
//	}
//
// RunCluster (and StartCluster) wait for the JetStream meta leader before
// returning, so the first JetStream API call succeeds. Cluster.StreamLeader,
// WaitForStreamLeader, WaitForStreamCurrent, StopNode and RestartNode drive
// failover tests: a node keeps its name, store directory and ports across
// restarts. All waits poll with deadlines; none rely on sleeps.
//
// Timing facts (nats-server 2.15, loopback, -race on 2 cores): a server
// starts in tens of milliseconds; a new 3-node cluster elects its meta
// leader in about 0.3-1s (StartCluster restarts a brand-new cluster whose
// first election failed rather than wait for the raft election timeout of
// 4-9s, which cannot be set from outside nats-server); stopping a stream
// leader whose followers are current (WaitForStreamCurrent) hands leadership
// over in tens of milliseconds, otherwise it can take an election timeout;
// a restarted node catches up on its streams within a few seconds (raft
// heartbeats are 1s).
//
// A data race in nats-server 2.15.2 that tests run with -race can report
// (a server bug, harmless without -race): on a replicated stream, the
// leader's first publish carrying Nats-Expected-Last-Subject-Sequence (on a
// new stream, or after an election) creates a field under a lock that the
// goroutine applying earlier publishes reads without it
// (batchStagedDiff.commit against applyStreamMsgOp). On a new stream only
// publishes that carried no such header can be being applied then, so tests
// that write an R3 store's subjects with plain publishes before appending
// should send that header too, as docs/wire-format.md asks of other writers
// and as esnats' appends always do; stream/conformance_test.go's expectLast
// does. After an election the previous leader's entries can still be being
// applied whatever they carried; esnats' fault tests, which move leaders
// under load, have not reported it.
//
// # Concurrency
//
// Server and Cluster methods are safe for concurrent use. Restart and
// RestartNode replace the underlying *server.Server; code that keeps the
// result of NATS() across a restart holds the stopped server.
package embedded
