package stream

import (
	"context"
)

// DefaultMaxPendingAppends bounds the appends a Store keeps in flight for
// AppendAsync when Config.MaxPendingAppends is zero.
const DefaultMaxPendingAppends = 4096

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
// time.
type asyncAppender struct {
	slots chan struct{}
}

func newAsyncAppender(max int) *asyncAppender {
	if max <= 0 {
		max = DefaultMaxPendingAppends
	}
	return &asyncAppender{slots: make(chan struct{}, max)}
}

// start waits for a free slot (or ctx), then runs append in the background.
func (a *asyncAppender) start(ctx context.Context, append func() (AppendResult, error)) *PendingAppend {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return endedAppend(ctx.Err())
	}
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
func (s *Store) AppendAsync(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) *PendingAppend {
	return s.async.start(ctx, func() (AppendResult, error) { return s.Append(ctx, agg, expect, events, opts...) })
}

// AppendAsync is Store.AppendAsync on the in-memory store (at most
// DefaultMaxPendingAppends in flight).
func (m *MemoryStore) AppendAsync(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) *PendingAppend {
	return m.async.start(ctx, func() (AppendResult, error) { return m.Append(ctx, agg, expect, events, opts...) })
}
