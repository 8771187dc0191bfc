package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/esnats/esnats/internal/natserr"
)

// A NATS server tells a client some things only asynchronously: a publish
// it refuses for lack of permission (a JetStream API request, say) gets no
// answer, only a "-ERR Permissions Violation" that nats.go hands to the
// connection's error handler; a subscription it refuses (a reply inbox the
// user may not use) likewise. So a refused request looks like a lost reply.
// The command's connections route these errors to the command's stderr
// (asyncErrors), and each request watches them (connection.do) so that a
// refusal fails at once, saying which permission is missing, instead of
// waiting for a timeout.

// syncWriter serialises writes to the command's stderr: nats.go calls the
// error handler on its own goroutine while the command writes progress and
// logs.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// asyncErrors is the error handler of the command's connections: it prints
// each distinct error once per run as "<name>: nats: <error>", except the
// permission violations a request in progress claims (see claim): those
// the request reports itself, in its error.
type asyncErrors struct {
	name string
	w    io.Writer

	mu      sync.Mutex
	printed map[string]bool
	claims  map[*claim]struct{}
	closed  bool
}

func newAsyncErrors(name string, w io.Writer) *asyncErrors {
	return &asyncErrors{name: name, w: w, printed: map[string]bool{}, claims: map[*claim]struct{}{}}
}

// handler is the connections' nats.ErrorHandler.
func (e *asyncErrors) handler(_ *nats.Conn, sub *nats.Subscription, err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "nats: ") {
		msg = "nats: " + msg
	}
	line := e.name + ": " + msg
	if sub != nil && sub.Subject != "" {
		line += fmt.Sprintf(" (subscription on %q)", sub.Subject)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := natserr.Parse(err); ok {
		held := false
		for c := range e.claims {
			if c.match(v) {
				if c.first == nil {
					c.first = &v
					c.hit <- v // buffered: the first one only
				}
				c.held = append(c.held, line)
				held = true
			}
		}
		if held {
			return
		}
	}
	e.printLocked(line)
}

func (e *asyncErrors) printLocked(line string) {
	if e.closed || e.printed[line] {
		return
	}
	e.printed[line] = true
	fmt.Fprintln(e.w, line)
}

// close stops printing: the command has returned, and what it writes to
// stderr now belongs to its caller.
func (e *asyncErrors) close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
}

// claim is a request watching for the server refusing it.
type claim struct {
	match func(natserr.Violation) bool
	hit   chan natserr.Violation
	first *natserr.Violation // under asyncErrors.mu
	held  []string           // lines not printed (yet)
}

// claim starts watching for violations that match: they are not printed
// while the claim holds, and the first one is sent on the claim's hit
// channel.
func (e *asyncErrors) claim(match func(natserr.Violation) bool) *claim {
	c := &claim{match: match, hit: make(chan natserr.Violation, 1)}
	e.mu.Lock()
	e.claims[c] = struct{}{}
	e.mu.Unlock()
	return c
}

// violation returns the first violation the claim saw, if any.
func (e *asyncErrors) violation(c *claim) (natserr.Violation, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.first == nil {
		return natserr.Violation{}, false
	}
	return *c.first, true
}

// release ends a claim. Unless the request reported what it saw, the lines
// it held are printed now.
func (e *asyncErrors) release(c *claim, reported bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.claims, c)
	if !reported {
		for _, l := range c.held {
			e.printLocked(l)
		}
	}
}

// call describes a request (or a short series of them) for connection.do.
type call struct {
	// subjects it publishes to; one ending in ".>" stands for every
	// subject below it (a consumer's name is chosen by nats.go).
	subjects []string
	// why, if set, says what the permission is for, in the error.
	why string
}

// matcher returns the test of a violation for cl: a publish to one of its
// subjects, or a subscription to one of this connection's reply inboxes.
func (c *connection) matcher(cl call) func(natserr.Violation) bool {
	return func(v natserr.Violation) bool {
		if v.Op == natserr.Subscribe {
			return c.inbox != "" && strings.HasPrefix(v.Subject, c.inbox)
		}
		for _, s := range cl.subjects {
			if v.Subject == s {
				return true
			}
			if p, ok := strings.CutSuffix(s, ">"); ok && strings.HasSuffix(p, ".") && strings.HasPrefix(v.Subject, p) {
				return true
			}
		}
		return false
	}
}

// refusedError is a request the server refused for lack of permission. It
// unwraps to the error nats.go reported, which matches
// nats.ErrPermissionViolation.
type refusedError struct {
	v   natserr.Violation
	why string
}

func (e *refusedError) Error() string {
	if e.v.Op == natserr.Subscribe {
		return fmt.Sprintf("permission denied: this user may not subscribe to its reply inbox %q, so the server's answer was dropped; connect with the inbox prefix its permissions allow (--inbox-prefix, or inbox_prefix in the nats context)", e.v.Subject)
	}
	msg := fmt.Sprintf("permission denied: this user may not publish to %q", e.v.Subject)
	if e.why != "" {
		msg += " (" + e.why + ")"
	}
	return msg
}

func (e *refusedError) Unwrap() error { return e.v.Err }

// noAnswerError is a request that got no answer within --timeout.
type noAnswerError struct {
	timeout  time.Duration
	subjects []string
	err      error
}

func (e *noAnswerError) Error() string {
	msg := fmt.Sprintf("no answer from the server within %s (--timeout): %v", e.timeout, e.err)
	if len(e.subjects) > 0 {
		msg += fmt.Sprintf("; a request refused by the server's permissions gets no answer either: check that this user may publish to %s", strings.Join(e.subjects, ", "))
	}
	return msg
}

func (e *noAnswerError) Unwrap() error { return e.err }

var errTimedOut = errors.New("esnats: --timeout expired")

// do runs op with a context that ends after the connection's timeout, or
// at once when the server refuses this connection a publish to one of cl's
// subjects or a subscription to its reply inbox. When op fails because of
// that, the error says so: a *refusedError, or a *noAnswerError after the
// timeout; any other error of op comes back as it is.
func (c *connection) do(ctx context.Context, cl call, op func(context.Context) error) error {
	return c.watch(ctx, cl, c.timeout, op)
}

// watch is do with a timeout of its own; 0: none (op ends by itself).
func (c *connection) watch(ctx context.Context, cl call, timeout time.Duration, op func(context.Context) error) error {
	claim := c.errs.claim(c.matcher(cl))
	tctx, cancelT := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		tctx, cancelT = context.WithTimeoutCause(ctx, timeout, errTimedOut)
	}
	defer cancelT()
	gctx, cancelG := context.WithCancelCause(tctx)
	defer cancelG(nil)
	go func() {
		select {
		case v := <-claim.hit:
			cancelG(&refusedError{v: v, why: cl.why})
		case <-gctx.Done():
		}
	}()
	err := op(gctx)
	if err == nil || !isWaitError(err) {
		c.errs.release(claim, false)
		return err
	}
	var re *refusedError
	if errors.As(context.Cause(gctx), &re) {
		c.errs.release(claim, true)
		return re
	}
	if v, ok := c.errs.violation(claim); ok {
		c.errs.release(claim, true)
		return &refusedError{v: v, why: cl.why}
	}
	c.errs.release(claim, false)
	if ctx.Err() == nil && errors.Is(context.Cause(tctx), errTimedOut) {
		return &noAnswerError{timeout: timeout, subjects: cl.subjects, err: err}
	}
	return err
}

// isWaitError tells the errors of a request that ended without an answer.
func isWaitError(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrTimeout)
}

// quietly runs op, which reports permission violations itself (a
// projections.ControlClient), without printing those that match cl's
// subjects twice: they are printed only if op's error does not wrap
// nats.ErrPermissionViolation.
func (c *connection) quietly(cl call, op func() error) error {
	claim := c.errs.claim(c.matcher(cl))
	err := op()
	c.errs.release(claim, errors.Is(err, nats.ErrPermissionViolation))
	return err
}

// explained is an error with a message of its own that still matches what
// it wraps (errors.Is, errors.As).
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// explain returns err with the message format gives.
func explain(err error, format string, args ...any) error {
	return &explained{msg: fmt.Sprintf(format, args...), err: err}
}
