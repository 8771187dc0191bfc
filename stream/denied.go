package stream

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/esnats/esnats/internal/natserr"
)

// A publish the server refuses for lack of permission gets no answer: the
// server only tells the connection, asynchronously (nc.LastError(), the
// ErrorHandler). An append would take that for a lost acknowledgement,
// resend it until its attempts ran out and report an unknown outcome,
// although a refused publish is never stored. So while an append waits for
// its acknowledgement the store watches the connection (internal/natserr):
// a violation for publishing to one of the append's subjects, reported after
// it was sent, ends the wait at once with ErrPermissionDenied.
//
// The watch costs nothing while acknowledgements come quickly: it is a
// timer that fires only if none came within deniedFirstCheck (50 ms: long
// enough that appends queued behind thousands of others, with AppendAsync or
// group commit under load, rarely start a poller; short enough that a
// refusal is reported well within a second), and then
// polls the connection's last error every deniedInterval on a goroutine
// that ends with the request.

const (
	deniedFirstCheck = 50 * time.Millisecond
	deniedInterval   = 25 * time.Millisecond
)

// deniedWatch watches a connection for a publish violation on the subjects
// of one request in flight.
type deniedWatch struct {
	w     natserr.Watch
	timer *time.Timer
	found atomic.Pointer[natserr.Violation]
	moved atomic.Bool // the stream's leader changed during the request: cancelled
}

// watchDenied starts watching s's connection for a violation refusing a
// publish to one of msgs' subjects: when one is reported, cancel is called
// (it must end the request made with ctx). Call stop when the request
// returned, and denied after that.
func (s *Store) watchDenied(ctx context.Context, cancel context.CancelFunc, msgs []*nats.Msg) *deniedWatch {
	return s.watchSubjects(ctx, cancel, func() []string { return uniqueSubjects(msgs) })
}

// watchSubjects is watchDenied for the subjects subjects returns (called
// only once the first check is due).
func (s *Store) watchSubjects(ctx context.Context, cancel context.CancelFunc, subjectsOf func() []string) *deniedWatch {
	d := &deniedWatch{w: natserr.NewWatch(s.nc)}
	// The same poller ends a request still waiting when the stream's
	// leader changes (see leaderwatch.go): its answer may never come.
	elected := s.leader.next()
	d.timer = time.AfterFunc(deniedFirstCheck, func() {
		subjects := subjectsOf()
		tick := time.NewTicker(deniedInterval)
		defer tick.Stop()
		for {
			if v, ok := d.w.Denied(subjects); ok {
				d.found.Store(&v)
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-elected:
				d.moved.Store(true)
				cancel()
				return
			case <-tick.C:
			}
		}
	})
	return d
}

// stop stops the watch (a poll under way ends with the request's context).
func (d *deniedWatch) stop() { d.timer.Stop() }

// leaderMoved reports whether the watch cancelled the request because the
// stream's leader changed while it waited.
func (d *deniedWatch) leaderMoved() bool { return d.moved.Load() }

// denied returns the violation that refused the request, if there was one:
// a publish to one of msgs' subjects, or a subscription to a reply inbox
// (a subject under one of replyPrefixes).
func (d *deniedWatch) denied(msgs []*nats.Msg, replyPrefixes ...string) (natserr.Violation, bool) {
	return d.deniedOn(uniqueSubjects(msgs), replyPrefixes...)
}

// deniedOn is denied for a request on subjects.
func (d *deniedWatch) deniedOn(subjects []string, replyPrefixes ...string) (natserr.Violation, bool) {
	if v, ok := d.w.Denied(subjects, replyPrefixes...); ok {
		return v, true
	}
	if v := d.found.Load(); v != nil {
		return *v, true
	}
	return natserr.Violation{}, false
}

// readDenied turns the error of a read the server refused for lack of
// permission (a *Error naming the subject and sequence read) into one that
// says so and matches ErrPermissionDenied and nats.ErrPermissionViolation.
func readDenied(err error, v natserr.Violation) error {
	var se *Error
	if errors.As(err, &se) {
		out := *se
		out.Err = fmt.Errorf("%w: %w", ErrPermissionDenied, v.Err)
		return &out
	}
	return fmt.Errorf("%w: %w", ErrPermissionDenied, v.Err)
}

// uniqueSubjects returns the subjects of msgs, each once, in order.
func uniqueSubjects(msgs []*nats.Msg) []string {
	out := make([]string, 0, 1)
	for _, m := range msgs {
		seen := false
		for _, s := range out {
			if s == m.Subject {
				seen = true
				break
			}
		}
		if !seen {
			out = append(out, m.Subject)
		}
	}
	return out
}

// publishDenied is the error of a publish the server refused for lack of
// permission (Violation.Op is Publish): nothing of it was stored.
type publishDenied struct {
	v   natserr.Violation
	err error // what the request itself returned
}

func (e *publishDenied) Error() string { return e.v.Err.Error() }
func (e *publishDenied) Unwrap() error { return e.v.Err }

// replyDenied is the error of a request whose reply the server could not
// deliver because the connection may not subscribe to its inbox: the
// request may have been handled. It wraps the request's own error (a
// timeout), so that it is classified as that error is.
type replyDenied struct {
	v   natserr.Violation
	err error
}

func (e *replyDenied) Error() string { return e.err.Error() }
func (e *replyDenied) Unwrap() error { return e.err }

// permissionDenied is the error an append refused for lack of permission
// returns.
func permissionDenied(v natserr.Violation) error {
	return &Error{Op: "append", Subject: v.Subject, Err: fmt.Errorf("%w: %w", ErrPermissionDenied, v.Err)}
}

// inboxPrefix returns the prefix of the connection's reply inboxes (for
// a violation refusing the subscription to them).
func inboxPrefix(nc *nats.Conn) string {
	if nc == nil {
		return ""
	}
	if p := nc.Opts.InboxPrefix; p != "" {
		return p + "."
	}
	return nats.InboxPrefix
}

// replyViolation returns a note on the violation that refused the
// connection's reply subscription, if err carries one or the connection's
// last error is one: the reason acknowledgements did not arrive. "" if
// neither.
func (s *Store) replyViolation(err error) string {
	var rd *replyDenied
	if errors.As(err, &rd) {
		return replyNote(rd.v)
	}
	if s.nc == nil {
		return ""
	}
	if v, ok := natserr.Parse(s.nc.LastError()); ok && v.Op == natserr.Subscribe && hasPrefix(v.Subject, s.inbox) {
		return replyNote(v)
	}
	return ""
}

func replyNote(v natserr.Violation) string {
	return fmt.Sprintf(" (the server refused this connection's reply subscription, so no acknowledgement can arrive: %v)", v.Err)
}

func hasPrefix(s, prefix string) bool {
	return prefix != "" && len(s) >= len(prefix) && s[:len(prefix)] == prefix
}
