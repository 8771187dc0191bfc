package stream

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultMaxPendingAppends bounds the appends a Store keeps in flight for
// AppendAsync when Config.MaxPendingAppends is zero.
const DefaultMaxPendingAppends = 2048

// PendingAppend is an append started by AppendAsync.
type PendingAppend struct {
	done chan struct{}
	res  AppendResult
	err  error
}

// Done is closed when the append has ended (stored, refused or failed).
func (p *PendingAppend) Done() <-chan struct{} { return p.done }

// Result waits for the append to end and returns what Append would have
// returned.
func (p *PendingAppend) Result() (AppendResult, error) {
	<-p.done
	return p.res, p.err
}

// Wait waits for the append to end or ctx to be done; in the latter case it
// returns ctx's error and the append goes on (call Result or Wait again).
func (p *PendingAppend) Wait(ctx context.Context) (AppendResult, error) {
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		return AppendResult{}, ctx.Err()
	}
}

func endedAppend(err error) *PendingAppend {
	p := &PendingAppend{done: make(chan struct{}), err: err}
	close(p.done)
	return p
}

// asyncAppender runs appends in the background, at most cap(slots) at a
// time. Pipelined appends wait for their acknowledgements in one collector
// goroutine, in the order they were published (a stream acknowledges in
// that order), started when the first is queued and ended when none is left.
type asyncAppender struct {
	slots chan struct{}

	mu         sync.Mutex
	queue      []*inFlight
	collecting bool

	pubOnce sync.Once
	pub     jetstream.JetStream
	pubErr  error
}

// publisher returns the JetStream the pipelined appends are published
// through: one of the store's own, on the store's connection, whose
// asynchronous acknowledgements time out after the JetStream timeout. An
// acknowledgement that never comes (a refused publish, a reply lost in a
// leader change) then leaves nats.go's pending set instead of staying in
// it for ever, where such leftovers would at its limit stall every
// asynchronous publish of the application's JetStream; and the store's
// appends in flight do not count against the application's own.
func (a *asyncAppender) publisher(s *Store) (jetstream.JetStream, error) {
	a.pubOnce.Do(func() {
		a.pub, a.pubErr = jetstream.New(s.nc,
			jetstream.WithPublishAsyncTimeout(s.js.Options().DefaultTimeout),
			jetstream.WithPublishAsyncMaxPending(2*cap(a.slots)))
	})
	return a.pub, a.pubErr
}

func (a *asyncAppender) collect(s *Store, f *inFlight) {
	a.mu.Lock()
	a.queue = append(a.queue, f)
	start := !a.collecting
	a.collecting = true
	a.mu.Unlock()
	if start {
		go a.collector(s)
	}
}

func (a *asyncAppender) collector(s *Store) {
	var timer *time.Timer
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.collecting = false
			a.mu.Unlock()
			return
		}
		f := a.queue[0]
		a.queue[0] = nil
		a.queue = a.queue[1:]
		a.mu.Unlock()
		// An answer already in (the usual case when the queue is long) is
		// taken before the deadline is looked at.
		select {
		case ack := <-f.fut.Ok():
			a.answered(s, f, ack)
			continue
		case <-f.fut.Err():
			go s.settlePipelined(f, true)
			continue
		default:
		}
		wait := time.Until(f.deadline)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case ack := <-f.fut.Ok():
			a.answered(s, f, ack)
		case <-f.fut.Err():
			// A conflict, an unavailable stream, a lost connection: the
			// synchronous path knows what each means.
			go s.settlePipelined(f, true)
		case <-timer.C:
			go s.settlePipelined(f, true) // a lost answer, or a slow one
		case <-f.elected:
			// Unanswered when the stream's leader changed: the answer
			// may never come (see leaderwatch.go).
			go s.settlePipelined(f, true)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// answered ends a pipelined append with its acknowledgement; a duplicate
// (stored before, by another append with the same id) is settled by the
// synchronous path, which reports where it is.
func (a *asyncAppender) answered(s *Store, f *inFlight, ack *jetstream.PubAck) {
	if ack.Duplicate {
		go s.settlePipelined(f, true)
		return
	}
	a.finish(f, results(f.ps, ack.Sequence, false), nil)
}

// finish ends a pipelined append.
func (a *asyncAppender) finish(f *inFlight, res []AppendResult, err error) {
	n := 0
	if err == nil {
		n = f.op.events
		f.p.res = res[0]
	}
	f.op.End(n, err)
	if f.auto != nil {
		f.auto.end(f.sample)
	}
	f.p.err = err
	close(f.p.done)
	<-a.slots
}

func newAsyncAppender(max int) *asyncAppender {
	if max <= 0 {
		max = DefaultMaxPendingAppends
	}
	return &asyncAppender{slots: make(chan struct{}, max)}
}

// start waits for a free slot (or ctx), then runs append in the background.
func (a *asyncAppender) start(ctx context.Context, append func() (AppendResult, error)) *PendingAppend {
	if err := a.acquire(ctx); err != nil {
		return endedAppend(err)
	}
	return a.run(append)
}

// acquire waits for a free slot, or ctx.
func (a *asyncAppender) acquire(ctx context.Context) error {
	select {
	case a.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run runs append in the background, in a slot the caller acquired.
func (a *asyncAppender) run(append func() (AppendResult, error)) *PendingAppend {
	p := &PendingAppend{done: make(chan struct{})}
	go func() {
		defer func() { <-a.slots }()
		p.res, p.err = append()
		close(p.done)
	}()
	return p
}

// AppendAsync starts what Append does and returns at once, so that one
// goroutine can keep many appends in flight: a bulk import, a relay, a
// service that takes commands for many aggregates from one queue. Every
// guarantee of Append holds (the expectation is checked by the server, a
// command's events land atomically, a resend after a lost answer is stored
// at most once, an unknown outcome is ErrIndeterminate), and with group
// commit (the default) the appends in flight go out together in atomic
// batches of up to 1000 events, each with its own check.
//
// Appends in flight are independent: two appends to one aggregate started
// together race, and with ExpectRevision the second fails with a conflict.
// Start an aggregate's next append when its previous one has ended, from
// its result's revision (a common pattern: one append in flight per
// aggregate, many aggregates at once).
//
// At most Config.MaxPendingAppends (default DefaultMaxPendingAppends)
// appends of a store are in flight; AppendAsync waits for one to end when
// that many are, or for ctx. ctx is also the context of the append itself.
// Invalid input (ids, names, unknown types, sizes) ends the append at once
// with Append's error, before any I/O.
//
// A single event with ExpectNone or ExpectRevision, on a store whose group
// commit is GroupCommitPipeline or GroupCommitOff (or GroupCommitAuto when
// it has chosen pipelining), is published at once
// with an asynchronous JetStream publish; any answer but a plain
// acknowledgement (a timeout, a conflict, a duplicate) hands it to Append's
// own path, which resends it with the same id and settles it. Other
// appends run Append in the background, where group commit coalesces them.
func (s *Store) AppendAsync(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) *PendingAppend {
	appendSync := func() (AppendResult, error) { return s.Append(ctx, agg, expect, events, opts...) }
	if len(events) != 1 || expect.kind == expectAny || s.gc != nil && !s.gc.pipeline && s.gc.auto == nil {
		return s.async.start(ctx, appendSync)
	}
	// The slot first: waiting for one is not part of the append's own
	// latency, which GroupCommitAuto times.
	if err := s.async.acquire(ctx); err != nil {
		return endedAppend(err)
	}
	if s.gc != nil && s.gc.auto != nil {
		auto := s.gc.auto
		sample := auto.begin()
		if !auto.pipelined() {
			auto.drop(sample) // Append times it
			return s.async.run(appendSync)
		}
		return s.appendPipelined(ctx, agg, expect, events, opts, auto, sample)
	}
	return s.appendPipelined(ctx, agg, expect, events, opts, nil, autoSample{})
}

// inFlight is one pipelined append waiting for its acknowledgement.
type inFlight struct {
	p        *PendingAppend
	auto     *autoMode // GroupCommitAuto's, timing it; or nil
	sample   autoSample
	ctx      context.Context
	ps       []*prepared
	o        appendOptions
	op       appendOp
	fut      jetstream.PubAckFuture
	deadline time.Time
	elected  <-chan struct{} // closed at the first leader election after it was sent
}

// appendPipelined publishes one event with PublishMsgAsync and leaves its
// acknowledgement to the store's collector. The caller acquired its slot;
// with auto, the append is one of GroupCommitAuto's samples, begun by the
// caller.
func (s *Store) appendPipelined(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts []AppendOption, auto *autoMode, sample autoSample) *PendingAppend {
	p := &PendingAppend{done: make(chan struct{})}
	ctx, ps, o, op, err := s.begin(ctx, []AppendRequest{{Aggregate: agg, Expect: expect, Events: events}}, opts)
	if err != nil {
		if auto != nil {
			auto.drop(sample)
		}
		<-s.async.slots
		p.err = err
		close(p.done)
		return p
	}
	// The collector's own deadline is a backstop: the publisher's
	// acknowledgement timeout ends a lost one first.
	f := &inFlight{p: p, auto: auto, sample: sample, ctx: ctx, ps: ps, o: o, op: op, deadline: time.Now().Add(s.js.Options().DefaultTimeout + time.Second)}
	if err := ctx.Err(); err != nil {
		s.async.finish(f, nil, &Error{Op: "append", Subject: ps[0].filter, Err: err})
		return p
	}
	pub, err := s.async.publisher(s)
	if err != nil {
		s.async.finish(f, nil, &Error{Op: "append", Subject: ps[0].filter, Err: err})
		return p
	}
	f.elected = s.leader.next()
	// A publish that meets no responders fails at once (no retries of
	// nats.go's own, 2 x 250ms): settlePipelined resends it, woken up by
	// a new leader.
	f.fut, err = pub.PublishMsgAsync(ps[0].enc[0], jetstream.WithRetryAttempts(0))
	if err != nil {
		// Perhaps written to the connection: settle it with the same id.
		go s.settlePipelined(f, true)
		return p
	}
	s.async.collect(s, f)
	return p
}

// settlePipelined runs Append's own path for a pipelined append whose
// answer was not a plain acknowledgement: a resend with the same id and
// expectation, stored at most once, then the outcome.
func (s *Store) settlePipelined(f *inFlight, uncertain bool) {
	res, err := s.send(f.ctx, f.ps, f.o, uncertain)
	s.async.finish(f, res, err)
}

// AppendAsync is Store.AppendAsync on the in-memory store (at most
// DefaultMaxPendingAppends in flight).
func (m *MemoryStore) AppendAsync(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) *PendingAppend {
	return m.async.start(ctx, func() (AppendResult, error) { return m.Append(ctx, agg, expect, events, opts...) })
}
