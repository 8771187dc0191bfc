package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// The control plane: a worker process's Runner answers on NATS (a micro
// service, see Serve) so that a command-line tool, or any NATS client, can
// see, rebuild and reset the projections it runs. docs/projections.md,
// "Controlling workers from outside", describes the subjects and payloads.
const (
	// ControlServiceName is the micro service name every worker registers
	// (`nats micro ls esnats-projections`); the service's metadata holds
	// "store", "host" and "pid".
	ControlServiceName = "esnats-projections"
	// ControlVersion is the version of the control protocol, the service's
	// version.
	ControlVersion = "1.0.0"
	// ControlSubjectPrefix starts every control subject:
	// $ESNATS.PROJ.<store>.STATUS, $ESNATS.PROJ.<store>.REBUILD.<instance>
	// and $ESNATS.PROJ.<store>.RESET.<instance>.
	ControlSubjectPrefix = "$ESNATS.PROJ"
	// HeaderProgress names the inbox a REBUILD request wants its progress
	// and final result published to.
	HeaderProgress = "Esnats-Progress"
	// DefaultProgressInterval is how often a remote rebuild publishes its
	// progress (also a heartbeat: a client gives up when they stop).
	DefaultProgressInterval = 250 * time.Millisecond
)

// Error codes of the control plane's replies (micro's
// Nats-Service-Error-Code header), with the sentinel a ControlError unwraps
// to.
const (
	CodeBadRequest   = "400" // malformed request
	CodeNotFound     = "404" // ErrUnknownProjection
	CodeConflict     = "409" // ErrBusy
	CodeNoFresh      = "412" // ErrNoFresh
	CodeInvalidReset = "422" // ErrInvalidReset
	CodeInternal     = "500" // anything else: the description says what
	CodeUnavailable  = "503" // ErrNoWorker: the worker is stopping
)

func controlSubject(store, op string) string {
	return ControlSubjectPrefix + "." + store + "." + op
}

// InstanceStatus is one worker process's answer to STATUS: the projections
// its runner holds, and where each stands.
type InstanceStatus struct {
	// Instance is the control service's id (the micro service id, unique
	// per Serve call): REBUILD and RESET subjects end with it.
	Instance string `json:"instance"`
	Store    string `json:"store"`
	Host     string `json:"host"`
	PID      int    `json:"pid"`
	// Running: Runner.Run is running in the process.
	Running     bool               `json:"running"`
	Projections []ProjectionStatus `json:"projections"`
}

// Projection returns the status of the projection called name, if the
// instance has it.
func (s InstanceStatus) Projection(name string) (ProjectionStatus, bool) {
	for _, p := range s.Projections {
		if p.Name == name {
			return p, true
		}
	}
	return ProjectionStatus{}, false
}

// ProjectionStatus is a projection's Status as one worker process sees it,
// with its role there.
type ProjectionStatus struct {
	Status
	// Running: this process's Run runs the projection (it is active or a
	// standby). False in a process that added it without running it.
	Running bool `json:"running"`
	// Active: this process holds the pin of the projection's consumer
	// group, so it is the one receiving and applying the events; the
	// other running processes are standbys (consumers.Consumer.Active).
	// A process becomes active when events reach it after a take-over, so
	// an idle projection may show no active process until events come.
	Active bool `json:"active"`
	// Pinned: some process holds the pin (false: none receives events now,
	// for instance because none has arrived since the last take-over).
	Pinned bool `json:"pinned"`
	// Rebuilding and Resetting: an operation on it is in progress here.
	Rebuilding bool `json:"rebuilding"`
	Resetting  bool `json:"resetting"`
	// Rebuildable: the projection has a Projection.Fresh, so it can be
	// rebuilt remotely.
	Rebuildable bool `json:"rebuildable"`
	// Error says why the status could not be read (a consumer that no Run
	// has created yet, a server error); the Status fields are then zero
	// but for Name and Mode.
	Error string `json:"error,omitempty"`
}

// rebuildUpdate is one message on a remote rebuild's progress inbox.
type rebuildUpdate struct {
	Progress
	Instance string `json:"instance"`
	// Final marks the last message: the rebuild's result. Done (switched
	// over) when it succeeded, else Error and Code.
	Final bool   `json:"final,omitempty"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// controlRequest is the body of REBUILD and RESET requests.
type controlRequest struct {
	Name string `json:"name"`
	Seq  uint64 `json:"seq,omitempty"` // RESET: the first sequence to deliver again; 0 or 1: the start
}

// controlReply is the successful reply to REBUILD (accepted: the result
// comes on the progress inbox) and RESET (done).
type controlReply struct {
	Instance string `json:"instance"`
	Name     string `json:"name"`
	Accepted bool   `json:"accepted,omitempty"` // REBUILD
	Seq      uint64 `json:"seq,omitempty"`      // RESET: the sequence the projection was moved back to
}

// ServeOption tunes Serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	progressEvery time.Duration
}

// WithProgressInterval sets how often a remote rebuild publishes its
// progress. Default DefaultProgressInterval.
func WithProgressInterval(d time.Duration) ServeOption {
	return func(o *serveOptions) {
		if d > 0 {
			o.progressEvery = d
		}
	}
}

// ControlService is a runner's control plane, started by Serve.
type ControlService struct {
	r     *Runner
	nc    *nats.Conn
	svc   micro.Service
	id    string
	host  string
	pid   int
	every time.Duration
	ctx   context.Context

	mu     sync.Mutex
	busy   map[string]string // projection -> operation in progress
	closed bool
	ops    sync.WaitGroup
	done   chan struct{}
}

// Serve registers the runner's control plane on nc: a NATS micro service
// named ControlServiceName (version ControlVersion, metadata "store",
// "host", "pid") with three endpoints, so that a ControlClient (the
// `esnats projections status|rebuild|reset` commands) can see, rebuild and
// reset the projections of this process:
//
//   - STATUS, on $ESNATS.PROJ.<store>.STATUS, answered by every worker
//     process of the store (no queue group): an InstanceStatus.
//   - REBUILD, on $ESNATS.PROJ.<store>.REBUILD.<instance>: rebuilds a
//     projection into the model its Projection.Fresh returns, with
//     Runner.Rebuild. The reply accepts the request at once; progress, and
//     at the end the result, go to the inbox named by the request's
//     Esnats-Progress header.
//   - RESET, on $ESNATS.PROJ.<store>.RESET.<instance>: stops the projection
//     in this process, calls Runner.Reset, and starts it again.
//
// REBUILD and RESET are addressed to one process (its instance id,
// ControlService.ID) so that exactly one process acts: a ControlClient
// first asks STATUS and picks the process that is active for the
// projection. Errors travel as micro errors (Nats-Service-Error-Code:
// CodeBadRequest, CodeNotFound, ...).
//
// Serve returns once the service is registered; it runs until ctx ends,
// and operations it started (a rebuild) end with ctx too. It may be called
// before, after or without Run. Errors: the micro framework's (invalid
// names, the connection's).
func (r *Runner) Serve(ctx context.Context, nc *nats.Conn, opts ...ServeOption) (*ControlService, error) {
	o := serveOptions{progressEvery: DefaultProgressInterval}
	for _, opt := range opts {
		opt(&o)
	}
	host, _ := os.Hostname()
	store := r.store.Name()
	svc, err := micro.AddService(nc, micro.Config{
		Name:               ControlServiceName,
		Version:            ControlVersion,
		Description:        "esnats projection worker of store " + store,
		Metadata:           map[string]string{"store": store, "host": host, "pid": strconv.Itoa(os.Getpid())},
		QueueGroupDisabled: true,
	})
	if err != nil {
		return nil, fmt.Errorf("projections: control service of store %q: %w", store, err)
	}
	c := &ControlService{r: r, nc: nc, svc: svc, id: svc.Info().ID, host: host, pid: os.Getpid(),
		every: o.progressEvery, ctx: ctx, busy: map[string]string{}, done: make(chan struct{})}
	for _, ep := range []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{"status", controlSubject(store, "STATUS"), c.handleStatus},
		{"rebuild", controlSubject(store, "REBUILD."+c.id), c.handleRebuild},
		{"reset", controlSubject(store, "RESET."+c.id), c.handleReset},
	} {
		if err := svc.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(ep.subject)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("projections: control endpoint %s of store %q: %w", ep.name, store, err)
		}
	}
	r.log.Info("esnats: projection control service started", "store", store, "instance", c.id)
	go func() {
		<-ctx.Done()
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		if err := svc.Stop(); err != nil {
			r.log.Warn("esnats: stopping the projection control service", "store", store, "error", err)
		}
		_ = nc.FlushTimeout(time.Second) // the unsubscriptions reach the server
		c.ops.Wait()
		r.log.Info("esnats: projection control service stopped", "store", store, "instance", c.id)
		close(c.done)
	}()
	// The subscriptions reach the server before Serve returns, so that a
	// client on another connection finds the service at once.
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		r.log.Warn("esnats: flushing the projection control service's subscriptions", "store", store, "error", err)
	}
	return c, nil
}

// ID returns the service's instance id: the micro service id, in the
// REBUILD and RESET subjects and in InstanceStatus.Instance.
func (c *ControlService) ID() string { return c.id }

// Done is closed when the service has stopped after Serve's ctx ended: its
// subscriptions are gone and the operations it started have returned.
func (c *ControlService) Done() <-chan struct{} { return c.done }

// begin marks an operation on a projection; false when one is in progress
// or the service is stopping (code says which).
func (c *ControlService) begin(name, op string) (code, desc string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return CodeUnavailable, "the worker is stopping", false
	}
	if cur, busy := c.busy[name]; busy {
		return CodeConflict, fmt.Sprintf("projection %q: a %s is already in progress in this worker", name, cur), false
	}
	c.busy[name] = op
	c.ops.Add(1)
	return "", "", true
}

func (c *ControlService) end(name string) {
	c.mu.Lock()
	delete(c.busy, name)
	c.mu.Unlock()
	c.ops.Done()
}

// errorCode maps an error to the control plane's code.
func errorCode(err error) string {
	switch {
	case errors.Is(err, ErrUnknownProjection):
		return CodeNotFound
	case errors.Is(err, ErrBusy):
		return CodeConflict
	case errors.Is(err, ErrNoFresh):
		return CodeNoFresh
	case errors.Is(err, ErrInvalidReset):
		return CodeInvalidReset
	default:
		return CodeInternal
	}
}

func (c *ControlService) fail(req micro.Request, code, desc string) {
	if err := req.Error(code, desc, nil); err != nil {
		c.r.log.Debug("esnats: control reply failed", "error", err)
	}
}

func (c *ControlService) handleStatus(req micro.Request) {
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	if err := req.RespondJSON(c.status(ctx)); err != nil {
		c.r.log.Debug("esnats: control status reply failed", "error", err)
	}
}

// status is this process's InstanceStatus.
func (c *ControlService) status(ctx context.Context) InstanceStatus {
	r := c.r
	r.mu.Lock()
	names := make([]string, 0, len(r.projs))
	for n := range r.projs {
		names = append(names, n)
	}
	supervised := make(map[string]bool, len(r.supervised))
	for n, k := range r.supervised {
		supervised[n] = k > 0
	}
	running := r.runs > 0
	r.mu.Unlock()
	c.mu.Lock()
	busy := maps.Clone(c.busy)
	c.mu.Unlock()
	slices.Sort(names)
	st := InstanceStatus{Instance: c.id, Store: r.store.Name(), Host: c.host, PID: c.pid, Running: running,
		Projections: make([]ProjectionStatus, 0, len(names))}
	for _, n := range names {
		ps := r.projectionStatus(ctx, n, supervised[n])
		ps.Rebuilding = ps.Rebuilding || busy[n] == "rebuild"
		ps.Resetting = ps.Resetting || busy[n] == "reset"
		st.Projections = append(st.Projections, ps)
	}
	return st
}

// projectionStatus is one projection's status and role in this process.
func (r *Runner) projectionStatus(ctx context.Context, name string, supervised bool) ProjectionStatus {
	ps := ProjectionStatus{Status: Status{Name: name}, Running: supervised}
	rp, err := r.get(name)
	if err != nil {
		ps.Error = err.Error()
		return ps
	}
	ps.Mode = "ack-floor"
	if rp.cp {
		ps.Mode = "exactly-once"
	}
	ps.Rebuildable = rp.p.Fresh != nil
	ps.Rebuilding = rp.rebuilding.Load()
	rp.mu.Lock()
	consuming := rp.cancel != nil
	ps.Resetting = rp.held != nil
	rp.mu.Unlock()
	st, cs, err := r.statusOf(ctx, name)
	if err != nil {
		ps.Error = err.Error()
		return ps
	}
	ps.Status = st
	ps.Pinned = cs.Pinned
	ps.Active = supervised && consuming && cs.Active
	return ps
}

// handleRebuild accepts a rebuild and starts it in the background (see
// rebuild), or refuses it at once.
func (c *ControlService) handleRebuild(req micro.Request) {
	var body controlRequest
	if err := json.Unmarshal(req.Data(), &body); err != nil || body.Name == "" {
		c.fail(req, CodeBadRequest, `a REBUILD request is JSON {"name": "<projection>"}`)
		return
	}
	rp, err := c.r.get(body.Name)
	if err != nil {
		c.fail(req, CodeNotFound, fmt.Sprintf("no projection %q in this worker", body.Name))
		return
	}
	fresh := rp.p.Fresh
	if fresh == nil {
		c.fail(req, CodeNoFresh, fmt.Sprintf("projection %q has no Projection.Fresh: the worker cannot make the empty model to rebuild into; set Fresh in its Projection (or call Runner.Rebuild in the worker)", body.Name))
		return
	}
	if rp.rebuilding.Load() {
		c.fail(req, CodeConflict, fmt.Sprintf("projection %q is already being rebuilt", body.Name))
		return
	}
	if code, desc, ok := c.begin(body.Name, "rebuild"); !ok {
		c.fail(req, code, desc)
		return
	}
	inbox := req.Headers().Get(HeaderProgress)
	if err := req.RespondJSON(controlReply{Instance: c.id, Name: body.Name, Accepted: true}); err != nil {
		c.r.log.Debug("esnats: control rebuild reply failed", "error", err)
	}
	c.r.log.Info("esnats: remote rebuild started", "projection", body.Name, "instance", c.id)
	go c.rebuild(body.Name, fresh, inbox)
}

// rebuild runs a remote rebuild, publishing its progress to inbox (if any)
// every c.every, and its result last.
func (c *ControlService) rebuild(name string, fresh func(context.Context) (ReadModel, error), inbox string) {
	defer c.end(name)
	publish := func(u rebuildUpdate) {
		if inbox == "" {
			return
		}
		data, _ := json.Marshal(u)
		if err := c.nc.Publish(inbox, data); err != nil {
			c.r.log.Debug("esnats: rebuild progress not published", "projection", name, "error", err)
		}
	}
	var mu sync.Mutex
	last := Progress{Name: name}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // progress, throttled; also the client's heartbeat
		defer close(stopped)
		tick := time.NewTicker(c.every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				mu.Lock()
				p := last
				mu.Unlock()
				p.Done = false // only the final message says done
				publish(rebuildUpdate{Progress: p, Instance: c.id})
			}
		}
	}()
	err := func() error {
		model, err := fresh(c.ctx)
		if err != nil {
			return fmt.Errorf("projections: rebuild %q: Projection.Fresh: %w", name, err)
		}
		if model == nil {
			return fmt.Errorf("projections: rebuild %q: Projection.Fresh returned no model", name)
		}
		return c.r.Rebuild(c.ctx, name, model, func(p Progress) {
			mu.Lock()
			last = p
			mu.Unlock()
		})
	}()
	close(stop)
	<-stopped
	mu.Lock()
	final := rebuildUpdate{Progress: last, Instance: c.id, Final: true}
	mu.Unlock()
	if err != nil {
		final.Done = false
		final.Error, final.Code = err.Error(), errorCode(err)
		c.r.log.Warn("esnats: remote rebuild failed", "projection", name, "instance", c.id, "error", err)
	} else {
		c.r.log.Debug("esnats: remote rebuild switched over", "projection", name, "instance", c.id, "position", final.Position)
	}
	publish(final)
	_ = c.nc.FlushTimeout(time.Second)
}

// handleReset stops the projection here, resets it and lets Run start it
// again, then replies.
func (c *ControlService) handleReset(req micro.Request) {
	var body controlRequest
	if err := json.Unmarshal(req.Data(), &body); err != nil || body.Name == "" {
		c.fail(req, CodeBadRequest, `a RESET request is JSON {"name": "<projection>", "seq": <first sequence to deliver again, 0: the start>}`)
		return
	}
	if _, err := c.r.get(body.Name); err != nil {
		c.fail(req, CodeNotFound, fmt.Sprintf("no projection %q in this worker", body.Name))
		return
	}
	if code, desc, ok := c.begin(body.Name, "reset"); !ok {
		c.fail(req, code, desc)
		return
	}
	defer c.end(body.Name)
	c.r.log.Info("esnats: remote reset requested", "projection", body.Name, "instance", c.id, "sequence", max(body.Seq, 1))
	ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
	defer cancel()
	err := func() error {
		// Stop it here (its batch in hand acknowledged), reset, and let Run
		// start it again.
		release, err := c.r.hold(ctx, body.Name)
		if err != nil {
			return err
		}
		defer release()
		return c.r.Reset(ctx, body.Name, body.Seq)
	}()
	if err != nil {
		c.r.log.Warn("esnats: remote reset failed", "projection", body.Name, "instance", c.id, "error", err)
		c.fail(req, errorCode(err), err.Error())
		return
	}
	c.r.log.Debug("esnats: remote reset done", "projection", body.Name, "instance", c.id, "sequence", max(body.Seq, 1))
	if err := req.RespondJSON(controlReply{Instance: c.id, Name: body.Name, Seq: max(body.Seq, 1)}); err != nil {
		c.r.log.Debug("esnats: control reset reply failed", "error", err)
	}
}
