package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/esnats/esnats/internal/natserr"
	"github.com/esnats/esnats/stream"
)

// Defaults of a ControlClient.
const (
	// DefaultControlTimeout bounds the wait for a worker's reply: the first
	// discovery answer, the STATUS answers of the workers found, a
	// REBUILD's acceptance, a RESET's result.
	DefaultControlTimeout = 10 * time.Second
	// DefaultGatherWindow is how long discovery waits for more workers
	// after the last one answered.
	DefaultGatherWindow = 250 * time.Millisecond
	// DefaultProgressTimeout is how long a remote rebuild may go without a
	// progress message before the client gives up on the worker.
	DefaultProgressTimeout = 15 * time.Second
)

// ControlClient talks to the control plane of the worker processes that run
// a store's projections (see Runner.Serve): it gathers their status, and
// has the right process rebuild or reset a projection. It holds no state
// but its settings; its methods may be called from any goroutine.
type ControlClient struct {
	nc       *nats.Conn
	store    string
	inbox    string // the connection's reply inbox prefix, "_INBOX."
	timeout  time.Duration
	window   time.Duration
	idle     time.Duration
	instance string
}

// ControlOption tunes a ControlClient.
type ControlOption func(*ControlClient)

// WithControlTimeout sets DefaultControlTimeout's value for this client.
func WithControlTimeout(d time.Duration) ControlOption {
	return func(c *ControlClient) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithGatherWindow sets how long discovery waits for more workers after the
// last answer. Default DefaultGatherWindow.
func WithGatherWindow(d time.Duration) ControlOption {
	return func(c *ControlClient) {
		if d > 0 {
			c.window = d
		}
	}
}

// WithProgressTimeout sets how long Rebuild waits without news from the
// worker before it gives up. Default DefaultProgressTimeout.
func WithProgressTimeout(d time.Duration) ControlOption {
	return func(c *ControlClient) {
		if d > 0 {
			c.idle = d
		}
	}
}

// WithInstance makes Rebuild and Reset address the worker process with this
// instance id (InstanceStatus.Instance) instead of choosing one.
func WithInstance(id string) ControlOption {
	return func(c *ControlClient) { c.instance = id }
}

// NewControlClient returns a client of the control plane of store's
// workers, on nc. Errors: an invalid store name.
func NewControlClient(nc *nats.Conn, store string, opts ...ControlOption) (*ControlClient, error) {
	if err := stream.ValidateName("store name", store); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("projections: NewControlClient: nil connection")
	}
	c := &ControlClient{nc: nc, store: store, timeout: DefaultControlTimeout, window: DefaultGatherWindow, idle: DefaultProgressTimeout}
	if in := nc.NewInbox(); strings.LastIndexByte(in, '.') > 0 {
		c.inbox = in[:strings.LastIndexByte(in, '.')+1]
	}
	for _, opt := range opts {
		opt(c)
	}
	return c, nil
}

// ControlError is an error reported by a worker process. It unwraps to the
// sentinel of its code: ErrUnknownProjection, ErrBusy, ErrNoFresh,
// ErrInvalidReset, ErrNoWorker (the worker is stopping), or nothing.
type ControlError struct {
	Op          string // "rebuild" or "reset"
	Projection  string
	Instance    string // the worker's instance id
	Code        string // CodeBadRequest, CodeNotFound, ...
	Description string // the worker's message
}

// Error says the operation, projection, worker, description and code.
func (e *ControlError) Error() string {
	return fmt.Sprintf("projections: %s %q on worker %s: %s (code %s)", e.Op, e.Projection, e.Instance, e.Description, e.Code)
}

// Unwrap returns the sentinel error of e.Code, nil if none.
func (e *ControlError) Unwrap() error {
	switch e.Code {
	case CodeNotFound:
		return ErrUnknownProjection
	case CodeConflict:
		return ErrBusy
	case CodeNoFresh:
		return ErrNoFresh
	case CodeInvalidReset:
		return ErrInvalidReset
	case CodeUnavailable:
		return ErrNoWorker
	}
	return nil
}

// isNoResponders tells the server's notice that nobody subscribes to a
// request's subject.
func isNoResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// ErrPermissionDenied: the NATS server refused the connection what a
// control request needs, for lack of permission: publishing the request,
// or subscribing to its reply inbox. The error is a *PermissionError, which
// also matches nats.ErrPermissionViolation.
var ErrPermissionDenied = errors.New("projections: permission denied")

// PermissionError is a control request that the NATS server refused the
// client's connection. A refused publish is dropped by the server, which
// tells the client only asynchronously (nats.ErrorHandler); the client
// watches for that (see internal/natserr) while it waits for the reply,
// and fails at once instead of waiting for its timeout. It unwraps to
// ErrPermissionDenied and to the error nats.go reported (which matches
// nats.ErrPermissionViolation).
type PermissionError struct {
	Op         string // "discover", "status", "rebuild" or "reset"
	Store      string
	Projection string // rebuild and reset
	Instance   string // rebuild and reset: the worker asked
	// Subject is the subject the server refused: the request's, or with
	// Reply the reply inbox's.
	Subject string
	// Reply: the subscription to the reply inbox was refused, so the reply
	// (or a rebuild's progress) was dropped. The request itself may have
	// been carried out. Otherwise the request was never delivered and
	// nothing was done.
	Reply bool
	Err   error // as nats.go reported it

	requested bool // a rebuild or reset request was sent
}

// Error says what was refused, and what it means for the request.
func (e *PermissionError) Error() string {
	var what string
	switch e.Op {
	case "discover":
		what = fmt.Sprintf("finding the workers of store %q", e.Store)
	case "status":
		what = fmt.Sprintf("status of store %q", e.Store)
	default:
		what = fmt.Sprintf("%s %q on worker %s", e.Op, e.Projection, e.Instance)
	}
	if e.Reply {
		done := "the reply was dropped"
		switch {
		case e.requested:
			done = "the reply was dropped, but the request may have been carried out (see the status)"
		case e.Op == "rebuild" || e.Op == "reset":
			done = "nothing was requested"
		}
		return fmt.Sprintf("projections: %s: permission denied: the server refused the subscription to the reply inbox %q, so %s; connect with an inbox prefix the user may subscribe to (nats.CustomInboxPrefix, esnats --inbox-prefix)", what, e.Subject, done)
	}
	return fmt.Sprintf("projections: %s: permission denied: the server refused to let this connection publish to %q; the request was dropped, nothing was done", what, e.Subject)
}

// Unwrap returns ErrPermissionDenied and the error nats.go reported.
func (e *PermissionError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrPermissionDenied}
	}
	return []error{ErrPermissionDenied, e.Err}
}

// refusalPoll is how often a waiting request looks at the connection's
// last error.
const refusalPoll = 10 * time.Millisecond

// refusal watches the connection for the server refusing a request: a
// publish to one of its subjects, or a subscription to a reply inbox of
// the connection, reported after the refusal was made.
type refusal struct {
	ctx      context.Context // ends, with a *PermissionError as cause, at a refusal
	w        natserr.Watch
	subjects []string
	inbox    string
	tmpl     PermissionError
	stop     func()
}

// watch starts watching for the refusal of a request (described by tmpl)
// that publishes to subjects; call it before the request is sent, and
// stop the result when done.
func (c *ControlClient) watch(ctx context.Context, tmpl PermissionError, subjects ...string) *refusal {
	tmpl.Store = c.store
	r := &refusal{w: natserr.NewWatch(c.nc), subjects: subjects, inbox: c.inbox, tmpl: tmpl}
	ctx, cancel := context.WithCancelCause(ctx)
	r.ctx = ctx
	done := make(chan struct{})
	r.stop = func() {
		close(done)
		cancel(nil)
	}
	go func() {
		t := time.NewTicker(refusalPoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if pe := r.check(); pe != nil {
					cancel(pe)
					return
				}
			}
		}
	}()
	return r
}

// check returns the refusal reported so far, nil if none.
func (r *refusal) check() *PermissionError {
	v, ok := r.w.Denied(r.subjects, r.inbox)
	if !ok {
		return nil
	}
	pe := r.tmpl
	pe.Subject, pe.Reply, pe.Err = v.Subject, v.Op == natserr.Subscribe, v.Err
	return &pe
}

// err returns the refusal that ended the watch, or one reported since:
// nil if none.
func (r *refusal) err() error {
	var pe *PermissionError
	if errors.As(context.Cause(r.ctx), &pe) {
		return pe
	}
	if pe := r.check(); pe != nil {
		return pe
	}
	return nil
}

// gather publishes data on subject with a new reply inbox and collects the
// answers: it waits up to first for the first one, then up to next for
// each following one, until enough says so or ctx ends. The server's
// no-responders notice ends it at once, and so does a refusal (a
// *PermissionError for op).
func (c *ControlClient) gather(ctx context.Context, op, subject string, data []byte, first, next time.Duration, enough func([]*nats.Msg) bool) ([]*nats.Msg, error) {
	r := c.watch(ctx, PermissionError{Op: op}, subject)
	defer r.stop()
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("projections: control of store %q: %w", c.store, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: inbox, Data: data}); err != nil {
		return nil, fmt.Errorf("projections: control of store %q: %w", c.store, err)
	}
	var out []*nats.Msg
	wait := first
	for {
		wctx, cancel := context.WithTimeout(r.ctx, wait)
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err != nil {
			if len(out) == 0 {
				if err := r.err(); err != nil {
					return nil, err
				}
				if ctx.Err() != nil {
					return nil, fmt.Errorf("projections: control of store %q: %w", c.store, ctx.Err())
				}
			}
			return out, nil // the wait is over
		}
		if isNoResponders(m) {
			return out, nil
		}
		out = append(out, m)
		if enough != nil && enough(out) {
			return out, nil
		}
		wait = next
	}
}

// discover returns the instance ids of the store's workers, from the micro
// framework's PING (answered at once by every service).
func (c *ControlClient) discover(ctx context.Context) (map[string]bool, error) {
	subject, err := micro.ControlSubject(micro.PingVerb, ControlServiceName, "")
	if err != nil {
		return nil, err
	}
	msgs, err := c.gather(ctx, "discover", subject, nil, c.timeout, c.window, nil)
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, m := range msgs {
		var ping micro.Ping
		if json.Unmarshal(m.Data, &ping) == nil && ping.Metadata["store"] == c.store {
			ids[ping.ID] = true
		}
	}
	if len(ids) == 0 {
		return nil, c.noWorker()
	}
	return ids, nil
}

func (c *ControlClient) noWorker() error {
	return fmt.Errorf("%w: no process serves the projections of store %q (Runner.Serve)", ErrNoWorker, c.store)
}

// Status gathers the status of every worker process of the store, sorted
// by host, process id and instance. Each worker reports the projections it
// holds; for the whole picture look for the process that is Active for a
// projection.
//
// Errors: ErrNoWorker when no worker process answers (at once when no
// control service is registered at all), ErrPermissionDenied (a
// *PermissionError, at once) when the server refuses the connection the
// discovery or STATUS request or their reply inbox, ctx's.
func (c *ControlClient) Status(ctx context.Context) ([]InstanceStatus, error) {
	ids, err := c.discover(ctx)
	if err != nil {
		return nil, err
	}
	answered := map[string]bool{}
	var out []InstanceStatus
	_, err = c.gather(ctx, "status", controlSubject(c.store, "STATUS"), nil, c.timeout, c.timeout, func(ms []*nats.Msg) bool {
		var st InstanceStatus
		if json.Unmarshal(ms[len(ms)-1].Data, &st) != nil || st.Instance == "" || answered[st.Instance] {
			return false
		}
		answered[st.Instance] = true
		out = append(out, st)
		for id := range ids {
			if !answered[id] {
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, c.noWorker()
	}
	slices.SortFunc(out, func(a, b InstanceStatus) int {
		if d := strings.Compare(a.Host, b.Host); d != 0 {
			return d
		}
		if a.PID != b.PID {
			return a.PID - b.PID
		}
		return strings.Compare(a.Instance, b.Instance)
	})
	return out, nil
}

// locate finds the worker to act on projection name: WithInstance's, else
// the one that is active for it, else one that runs it, else one that has
// it. It also returns every instance that has it.
func (c *ControlClient) locate(ctx context.Context, name string) (InstanceStatus, []InstanceStatus, error) {
	all, err := c.Status(ctx)
	if err != nil {
		return InstanceStatus{}, nil, err
	}
	var have []InstanceStatus
	for _, st := range all {
		if _, ok := st.Projection(name); ok {
			have = append(have, st)
		}
	}
	if c.instance != "" {
		i := slices.IndexFunc(all, func(st InstanceStatus) bool { return st.Instance == c.instance })
		if i < 0 {
			return InstanceStatus{}, nil, fmt.Errorf("%w: worker %s of store %q did not answer", ErrNoWorker, c.instance, c.store)
		}
		if _, ok := all[i].Projection(name); !ok {
			return InstanceStatus{}, nil, fmt.Errorf("%w %q in worker %s of store %q", ErrUnknownProjection, name, c.instance, c.store)
		}
		return all[i], have, nil
	}
	if len(have) == 0 {
		return InstanceStatus{}, nil, fmt.Errorf("%w %q: none of the %d worker processes of store %q has it", ErrUnknownProjection, name, len(all), c.store)
	}
	for _, pick := range []func(ProjectionStatus) bool{
		func(p ProjectionStatus) bool { return p.Active },
		func(p ProjectionStatus) bool { return p.Running },
		func(ProjectionStatus) bool { return true },
	} {
		for _, st := range have {
			if p, _ := st.Projection(name); pick(p) {
				return st, have, nil
			}
		}
	}
	panic("unreachable")
}

// request sends a REBUILD or RESET to one worker and decodes its reply.
func (c *ControlClient) request(ctx context.Context, op string, target InstanceStatus, body controlRequest, hdr nats.Header) (controlReply, error) {
	data, _ := json.Marshal(body)
	msg := &nats.Msg{Subject: controlSubject(c.store, strings.ToUpper(op)+"."+target.Instance), Data: data, Header: hdr}
	r := c.watch(ctx, PermissionError{Op: op, Projection: body.Name, Instance: target.Instance, requested: true}, msg.Subject)
	defer r.stop()
	rctx, cancel := context.WithTimeout(r.ctx, c.timeout)
	defer cancel()
	resp, err := c.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		if perr := r.err(); perr != nil {
			return controlReply{}, perr
		}
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return controlReply{}, fmt.Errorf("%w: worker %s of store %q is gone", ErrNoWorker, target.Instance, c.store)
	case err != nil:
		return controlReply{}, fmt.Errorf("projections: %s %q on worker %s: %w", op, body.Name, target.Instance, err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return controlReply{}, &ControlError{Op: op, Projection: body.Name, Instance: target.Instance, Code: code, Description: resp.Header.Get(micro.ErrorHeader)}
	}
	var reply controlReply
	if err := json.Unmarshal(resp.Data, &reply); err != nil {
		return controlReply{}, fmt.Errorf("projections: %s %q on worker %s: undecodable reply: %w", op, body.Name, target.Instance, err)
	}
	return reply, nil
}

// Rebuild has the worker process that is active for the projection (see
// locate's order; WithInstance picks another) rebuild it into the empty
// model its Projection.Fresh returns, with Runner.Rebuild, and waits until
// the projection has switched over. progress (may be nil) gets the
// worker's progress reports, about every 250 ms, and the final one (Done).
//
// The rebuild runs in the worker: if ctx ends first, Rebuild returns ctx's
// error and the rebuild goes on. Other processes running the projection
// stop with an error when it switches over (their consumer is replaced);
// restart them (see docs/projections.md).
//
// A request the server refuses for lack of permission (publishing to
// $ESNATS.PROJ.<store>.REBUILD.<instance>, or subscribing to the progress
// or reply inbox) fails at once with ErrPermissionDenied, instead of
// waiting for a reply that cannot come.
//
// Errors: ErrNoWorker (no worker answered, or the one rebuilding sent
// nothing for the progress timeout), ErrUnknownProjection, ErrNoFresh,
// ErrBusy (a rebuild or reset of it is in progress), ErrPermissionDenied
// (a *PermissionError), a *ControlError with the worker's failure, ctx's.
func (c *ControlClient) Rebuild(ctx context.Context, name string, progress func(Progress)) error {
	if progress == nil {
		progress = func(Progress) {}
	}
	target, _, err := c.locate(ctx, name)
	if err != nil {
		return err
	}
	// The progress inbox is subscribed to first, and the subscription
	// confirmed by a round trip (the server's refusal comes before its
	// answer): a user who may not receive the progress is told so before
	// anything is asked of the worker.
	r := c.watch(ctx, PermissionError{Op: "rebuild", Projection: name, Instance: target.Instance})
	defer r.stop()
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("projections: rebuild %q: %w", name, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	fctx, cancel := context.WithTimeout(ctx, c.timeout)
	err = c.nc.FlushWithContext(fctx)
	cancel()
	if perr := r.err(); perr != nil {
		return perr
	}
	if err != nil {
		return fmt.Errorf("projections: rebuild %q: %w", name, err)
	}
	hdr := nats.Header{}
	hdr.Set(HeaderProgress, inbox)
	if _, err := c.request(ctx, "rebuild", target, controlRequest{Name: name}, hdr); err != nil {
		return err
	}
	for {
		wctx, cancel := context.WithTimeout(r.ctx, c.idle)
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err != nil {
			if perr := r.err(); perr != nil {
				perr.(*PermissionError).requested = true
				return perr
			}
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("projections: rebuild %q on worker %s: stopped waiting (the rebuild goes on): %w", name, target.Instance, ctx.Err())
			case errors.Is(err, context.DeadlineExceeded):
				return fmt.Errorf("%w: rebuild %q on worker %s: no progress for %s (the worker may have stopped)", ErrNoWorker, name, target.Instance, c.idle)
			default: // the connection, not the worker
				return fmt.Errorf("projections: rebuild %q on worker %s: waiting for progress (the rebuild goes on): %w", name, target.Instance, err)
			}
		}
		var u rebuildUpdate
		if err := json.Unmarshal(m.Data, &u); err != nil {
			continue
		}
		if !u.Final {
			progress(u.Progress)
			continue
		}
		if u.Error != "" {
			return &ControlError{Op: "rebuild", Projection: name, Instance: target.Instance, Code: u.Code, Description: u.Error}
		}
		progress(u.Progress)
		return nil
	}
}

// Reset has a worker process reset the projection with Runner.Reset: the
// worker stops the projection (its batch in hand finished), moves it back
// to stream sequence seq (0 or 1: the start; an exactly-once model only
// there, emptied first), and runs it again.
//
// A reset is only safe while one process runs the projection: a standby
// taking over during the reset would race it. So Reset refuses (ErrBusy,
// naming the instances) when another worker process than the one chosen
// runs it: stop the others first. (A raw RESET request does not check
// this.)
//
// A RESET the server refuses for lack of permission fails at once with
// ErrPermissionDenied (a *PermissionError), instead of waiting for the
// control timeout.
//
// Errors: ErrNoWorker, ErrUnknownProjection, ErrBusy, ErrInvalidReset,
// ErrPermissionDenied, a *ControlError with the worker's failure, ctx's.
func (c *ControlClient) Reset(ctx context.Context, name string, seq uint64) error {
	target, have, err := c.locate(ctx, name)
	if err != nil {
		return err
	}
	var others []string // processes running it, besides the target
	for _, st := range have {
		if p, _ := st.Projection(name); p.Running && st.Instance != target.Instance {
			others = append(others, fmt.Sprintf("%s (%s pid %d)", st.Instance, st.Host, st.PID))
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("%w: projection %q of store %q also runs in %s; stop it there before a reset by worker %s", ErrBusy, name, c.store, strings.Join(others, ", "), target.Instance)
	}
	_, err = c.request(ctx, "reset", target, controlRequest{Name: name, Seq: seq}, nil)
	return err
}
