package stream

import (
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// When a replicated stream's leader changes (a rolling restart, a server
// lost, a step-down), a publish or a leader request that reached the old
// leader as it stepped down, or the new one before it took over, is dropped
// without an answer: nats-server ignores stream messages on a replica that
// is not the leader. The request would then wait for its whole timeout (5 s
// by default) before it is resent. So a store of a replicated stream
// follows the stream's leader elections (the server's
// $JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream> advisory): a request
// still waiting when a new leader is announced is resent at once (see
// watchSubjects, and the collector of AppendAsync), which is safe for every
// request the store resends (reads; appends carry their event ids and
// expectation).
//
// Without permission to subscribe to the advisory (or with a JetStream
// domain or API prefix, where the advisory is not on that subject in the
// caller's account) nothing is followed and the timeout applies.

const leaderElectedPrefix = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."

// leaderEpoch follows the leader elections of one stream seen on one
// connection: its channel is closed at the next election and replaced.
type leaderEpoch struct {
	ch atomic.Pointer[chan struct{}]
}

func newLeaderEpoch() *leaderEpoch {
	e := &leaderEpoch{}
	ch := make(chan struct{})
	e.ch.Store(&ch)
	return e
}

// next returns a channel closed at the next election. nil's channel is nil:
// it never fires.
func (e *leaderEpoch) next() <-chan struct{} {
	if e == nil {
		return nil
	}
	return *e.ch.Load()
}

// elected records an election (called by the subscription's handler, one
// message at a time).
func (e *leaderEpoch) elected() {
	ch := make(chan struct{})
	close(*e.ch.Swap(&ch))
}

var (
	leadersMu sync.Mutex
	// leaders holds one epoch per connection and stream, shared by the
	// stores of that stream on that connection. Entries of closed
	// connections are dropped on the next call to followLeader.
	leaders = map[*nats.Conn]map[string]*leaderEpoch{}
)

// followLeader returns the elections of stream on nc, subscribing to its
// advisory the first time. nil when the subscription cannot be made.
func followLeader(nc *nats.Conn, stream string) *leaderEpoch {
	if nc == nil {
		return nil
	}
	leadersMu.Lock()
	defer leadersMu.Unlock()
	for c := range leaders {
		if c.IsClosed() {
			delete(leaders, c)
		}
	}
	byStream := leaders[nc]
	if e := byStream[stream]; e != nil {
		return e
	}
	e := newLeaderEpoch()
	if _, err := nc.Subscribe(leaderElectedPrefix+stream, func(*nats.Msg) { e.elected() }); err != nil {
		return nil
	}
	if byStream == nil {
		byStream = map[string]*leaderEpoch{}
		leaders[nc] = byStream
	}
	byStream[stream] = e
	return e
}
