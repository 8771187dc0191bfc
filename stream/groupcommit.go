package stream

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// GroupCommit says how a Store sends appends that arrive concurrently
// (Config.GroupCommit). Every mode keeps every guarantee of an append (see
// docs/appends.md): a command's events are stored all or none at
// consecutive sequences, each aggregate's expectation is checked by the
// server, a retry never stores an event twice, an append is never reported
// failed when it landed, and a conflict fails only the command whose
// expectation did not hold. The modes differ in speed, which depends on the
// server's fsync policy and the stream's replicas (docs/performance.md).
type GroupCommit int

const (
	// GroupCommitAuto is the default: it sends single-event appends as
	// GroupCommitBatch or as GroupCommitPipeline, whichever it measures to
	// be faster, and appends of several events or aggregates as both do.
	// Which is faster depends on what the client cannot see: when the
	// server syncs every write to disk (fsync "always", what esnats'
	// embedded servers use and the recommended production setting)
	// batches of concurrent appends run 2.5-7x faster than one publish
	// each; under the server's default fsync (every 2 minutes) on a
	// single-replica file stream an atomic batch costs about 4ms and
	// pipelining is 3-8x faster. Auto starts with batches; while appends
	// are concurrent it times them for a moment (about 150ms), then times
	// the other mode, and keeps that one only when its appends were at
	// least 1.25x faster on average (a probe that cannot win any more
	// ends early, after a few of its latencies). It checks again after
	// 1s, then 2s, 4s, ... up to 32s while its choice holds, so that
	// probes cost a small share of the time and a change (a server
	// reconfigured, a leader moved) is followed within about half a
	// minute. A lone writer is never timed: its appends go out alone
	// either way. Store.GroupCommitMode says what it chose.
	GroupCommitAuto GroupCommit = iota
	// GroupCommitBatch coalesces concurrent appends to different aggregates
	// into atomic batches. An append that arrives when nothing is in flight
	// goes out at once, alone; appends that arrive while a batch is in
	// flight gather, with no added delay, and leave together when it is
	// answered (a second batch leaves early only when a full one waits), up
	// to 1000 events (the server's atomic batch limit, or its
	// max_batch_size when lower) and 8 MiB. Appends to one aggregate are
	// never in one batch: a later one waits for the earlier one's answer.
	// Under fsync "always" the server syncs a batch once instead of every
	// event.
	GroupCommitBatch
	// GroupCommitPipeline sends each single-event append at once, on its
	// own, as GroupCommitOff does (a publish with the
	// expected-last-subject-sequence check, as many in flight as there are
	// callers), and coalesces the appends of several events or aggregates,
	// which are atomic batches anyway, as GroupCommitBatch does. Best under
	// the server's default fsync on a single-replica file stream.
	GroupCommitPipeline
	// GroupCommitOff sends every append on its own: one publish, or one
	// atomic batch for several events, each waiting for its own answer.
	GroupCommitOff
)

var groupCommitNames = [...]string{"auto", "batch", "pipeline", "off"}

// String returns the mode's name: "auto", "batch", "pipeline" or "off".
func (g GroupCommit) String() string {
	if g >= 0 && int(g) < len(groupCommitNames) {
		return groupCommitNames[g]
	}
	return "GroupCommit(" + strconv.Itoa(int(g)) + ")"
}

// ParseGroupCommit returns the mode named s ("auto", "batch", "pipeline" or
// "off", case-insensitive; "" is "auto"). Errors: ErrStoreConfig for
// another name.
func ParseGroupCommit(s string) (GroupCommit, error) {
	if s == "" {
		return GroupCommitAuto, nil
	}
	for i, n := range groupCommitNames {
		if strings.EqualFold(s, n) {
			return GroupCommit(i), nil
		}
	}
	return 0, fmt.Errorf("%w: group commit mode %q: want one of %s", ErrStoreConfig, s, strings.Join(groupCommitNames[:], ", "))
}

func (g GroupCommit) valid() bool { return g >= GroupCommitAuto && g <= GroupCommitOff }

const (
	// groupMaxBytes bounds the bytes of one group-commit batch (a single
	// append may be larger: it is sent alone).
	groupMaxBytes = 8 << 20
	// groupInflight is how many group-commit batches of one store may be in
	// flight together; the second only when a full batch waits (a half-full
	// one costs the server about as much as a full one, measured in
	// docs/performance.md). The server allows 50 atomic batches in flight
	// per stream and 1000 per server (nats-server 2.15 stream.go,
	// max_batch_inflight_per_stream, max_batch_inflight_total).
	groupInflight = 2
)

// committer coalesces a Store's concurrent appends (Config.GroupCommit).
//
// It has no goroutine of its own when idle: an append that can go out at
// once (nothing in flight, or a single-event append in pipeline mode) is
// sent on its caller's goroutine; batches of waiting appends run on
// goroutines that live while there are batches to send and then end. So a
// Store needs no Close, and leaks nothing when dropped.
//
// Ordering: appends wait in a FIFO queue. An append whose aggregate is in
// flight (in a batch, or being settled on its own) stays queued until that
// is answered, so two appends to one aggregate are never in one batch, nor
// in flight together, and the later one is checked against what the earlier
// one left. (Single-event appends in pipeline mode do not queue: they go out
// at once, as without group commit, and the server's check orders them.)
type committer struct {
	s           *Store
	pipeline    bool      // GroupCommitPipeline: single-event appends go out at once, as without group commit
	auto        *autoMode // GroupCommitAuto: it chooses between pipeline and batch
	maxInflight int       // batches in flight, at most
	noYield     bool      // tests only: no yield to answered writers

	mu       sync.Mutex
	queue    []*command
	busy     map[string]struct{} // subjects of the aggregates in flight
	inflight int                 // batches in flight, lone appends included
	maxMsgs  int                 // events per batch: MaxBatch, or less if the server said so

	// Counters for tests: group batches sent (two or more appends) and
	// the appends they carried.
	groups, grouped atomic.Int64
}

func newCommitter(s *Store, mode GroupCommit) *committer {
	c := &committer{
		s:           s,
		pipeline:    mode == GroupCommitPipeline,
		maxInflight: groupInflight,
		busy:        make(map[string]struct{}),
		maxMsgs:     MaxBatch,
	}
	if mode == GroupCommitAuto {
		c.auto = newAutoMode()
	}
	return c
}

// pipelined reports whether single-event appends go out at once now.
func (c *committer) pipelined() bool {
	return c.pipeline || c.auto != nil && c.auto.pipelined()
}

// mode is the mode appends are sent in now: GroupCommitAuto's current
// choice, or the configured mode.
func (c *committer) mode() GroupCommit {
	if c.pipelined() {
		return GroupCommitPipeline
	}
	return GroupCommitBatch
}

// command is one append (an Append or AppendBatch call) waiting in the
// queue or in flight.
type command struct {
	ctx  context.Context // the caller's
	ps   []*prepared
	o    appendOptions
	n    int // messages
	size int // bytes, about
	done chan commandResult
	// wrote says what the command wrote once it succeeded: per aggregate
	// subject, what follows its expected revision. Set by record, read by
	// the goroutine that called it.
	wrote map[string]written
}

type commandResult struct {
	res []AppendResult
	err error
}

// written is what a successful command wrote after an expected revision.
type written struct {
	after   Revision // the expected revision
	firstID string   // the id of the event that follows it
	last    Revision // where the command left the aggregate
}

// measure counts the command's messages and bytes, for batching.
func (cmd *command) measure() {
	cmd.n, cmd.size = 0, 0
	for _, p := range cmd.ps {
		cmd.n += len(p.enc)
		for _, m := range p.enc {
			cmd.size += messageSize(m)
		}
	}
}

// record notes what a successful command wrote (not as a duplicate).
func (cmd *command) record(res []AppendResult, err error) {
	if err != nil || len(res) != len(cmd.ps) {
		return
	}
	for i, r := range res {
		if r.Duplicate {
			continue
		}
		if cmd.wrote == nil {
			cmd.wrote = make(map[string]written, len(res))
		}
		p := cmd.ps[i]
		cmd.wrote[p.filter] = written{after: p.rev, firstID: p.ids[0], last: r.Last}
	}
}

// deliver answers the command's caller.
func (cmd *command) deliver(res []AppendResult, err error) {
	cmd.record(res, err)
	cmd.done <- commandResult{res, err}
}

// first is the subject errors about the command name.
func (cmd *command) first() string { return cmd.ps[0].filter }

// publishesTo reports whether one of the command's events is on subject.
func (cmd *command) publishesTo(subject string) bool {
	for _, p := range cmd.ps {
		if p.filter == subject {
			return true
		}
	}
	return false
}

// batch is what one sender runs: several commands in one atomic batch, or
// one command on its own.
type batch struct {
	cmds []*command
	msgs int
	size int
}

// outcome is what became of a batch's commands after it was sent.
type outcome struct {
	answered []*command // delivered: their aggregates are free
	requeue  []*command // not stored; to be sent again, before newer commands
	handover []handover // settled on their own, on goroutines of their own
}

// handover is a command whose outcome a goroutine of its own settles; its
// aggregates stay busy until then.
type handover struct {
	cmd    *command
	settle func() ([]AppendResult, error)
}

// submit sends the append made of ps and returns its outcome, as
// Store.send does for an append on its own.
func (c *committer) submit(ctx context.Context, ps []*prepared, o appendOptions) ([]AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "append", Subject: ps[0].filter, Err: err} // nothing in flight
	}
	if single := len(ps) == 1 && len(ps[0].enc) == 1; single {
		if c.auto != nil {
			// Timed for GroupCommitAuto's choice, which only
			// single-event appends depend on.
			sample := c.auto.begin()
			defer c.auto.end(sample)
		}
		if c.pipelined() {
			// Pipeline mode: a single-event append goes out at once,
			// as without group commit.
			return c.s.send(ctx, ps, o, false)
		}
	}
	cmd := &command{ctx: ctx, ps: ps, o: o}
	c.mu.Lock()
	if c.inflight == 0 && len(c.queue) == 0 {
		// Nothing in flight, nothing waiting: send it now, alone, on the
		// caller's goroutine. What arrives meanwhile gathers for the
		// next batch.
		c.markLocked(cmd, true)
		c.inflight++
		c.mu.Unlock()
		res, err := c.s.send(ctx, ps, o, false)
		c.mu.Lock()
		c.markLocked(cmd, false)
		c.inflight--
		var starts []*batch
		if len(c.queue) > 0 {
			cmd.record(res, err)
			c.staleLocked(cmd)
			starts = c.dispatchLocked()
		}
		c.mu.Unlock()
		c.start(starts, false) // the caller returns: others run the batches
		return res, err
	}
	c.mu.Unlock()
	cmd.measure()
	cmd.done = make(chan commandResult, 1)
	c.mu.Lock()
	c.queue = append(c.queue, cmd)
	starts := c.dispatchLocked()
	c.mu.Unlock()
	c.start(starts, false)
	return c.wait(ctx, cmd)
}

// wait waits for cmd's outcome. When ctx ends first, a command still queued
// is withdrawn (nothing of it was sent); one in flight gets settleTimeout
// more to settle, as an append on its own does.
func (c *committer) wait(ctx context.Context, cmd *command) ([]AppendResult, error) {
	select {
	case r := <-cmd.done:
		return r.res, r.err
	case <-ctx.Done():
	}
	if c.withdraw(cmd) {
		return nil, &Error{Op: "append", Subject: cmd.first(), Err: ctx.Err()}
	}
	t := time.NewTimer(settleTimeout)
	defer t.Stop()
	select {
	case r := <-cmd.done:
		return r.res, r.err
	case <-t.C:
		return nil, &Error{Op: "append", Subject: cmd.first(), Err: fmt.Errorf("%w: %v, and the append in flight did not settle within %s", ErrIndeterminate, ctx.Err(), settleTimeout)}
	}
}

// withdraw removes cmd from the queue if it is still there.
func (c *committer) withdraw(cmd *command) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.queue {
		if q == cmd {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			return true
		}
	}
	return false
}

func (c *committer) busyLocked(cmd *command) bool {
	for _, p := range cmd.ps {
		if _, ok := c.busy[p.filter]; ok {
			return true
		}
	}
	return false
}

func (c *committer) markLocked(cmd *command, busy bool) {
	for _, p := range cmd.ps {
		if busy {
			c.busy[p.filter] = struct{}{}
		} else {
			delete(c.busy, p.filter)
		}
	}
}

// staleLocked answers the queued commands that answered commands have made
// stale: a queued command that expects the same revision of an aggregate
// as a command that has just written to it (not as a duplicate) can no
// longer succeed, and it did not land before either (the event after that
// revision is the other command's, with another id). It is a conflict, and
// is answered at once instead of being sent to fail: this is what writers
// of one aggregate that loaded the same revision get, one after the other.
// The actual revision is where the write left the aggregate.
func (c *committer) staleLocked(answered ...*command) {
	var wrote map[string]written
	for _, cmd := range answered {
		for subj, w := range cmd.wrote {
			if wrote == nil {
				wrote = make(map[string]written)
			}
			wrote[subj] = w
		}
	}
	if wrote == nil || len(c.queue) == 0 {
		return
	}
	kept := c.queue[:0]
	for _, cmd := range c.queue {
		var ce *ConflictError
		for _, p := range cmd.ps {
			if w, ok := wrote[p.filter]; ok && p.rev == w.after && p.ids[0] != w.firstID {
				ce = &ConflictError{Aggregate: p.agg, Expected: p.rev, Actual: w.last, ActualKnown: true}
				break
			}
		}
		if ce != nil {
			cmd.deliver(nil, ce)
			continue
		}
		kept = append(kept, cmd)
	}
	clear(c.queue[len(kept):])
	c.queue = kept
}

// dispatchLocked takes what can be sent now from the queue, in order, and
// returns it. A batch leaves when no other is in flight, or when it is full
// (MaxBatch events, or the bytes limit) while fewer than maxInflight are: a
// second half-full batch would cost the server as much as a full one, and
// split the writers into two groups that take turns. Commands whose context
// ended while queued are answered with its error (nothing of them was sent).
func (c *committer) dispatchLocked() []*batch {
	if len(c.queue) == 0 {
		return nil
	}
	room := c.maxInflight - c.inflight
	if room <= 0 {
		// Nothing can leave before a batch in flight is answered, which
		// dispatches again; commands whose context ended meanwhile are
		// withdrawn by their own wait. Scanning a long queue (thousands of
		// AppendAsync calls) on every submit would cost O(n^2).
		return nil
	}
	if c.inflight > 0 {
		msgs, size := 0, 0
		for _, cmd := range c.queue {
			if !c.busyLocked(cmd) {
				msgs += cmd.n
				size += cmd.size
			}
		}
		if msgs < c.maxMsgs && size < groupMaxBytes {
			room = 0
		}
	}
	var (
		starts []*batch
		cur    *batch
		kept   = c.queue[:0]
	)
	for _, cmd := range c.queue {
		if err := cmd.ctx.Err(); err != nil {
			cmd.deliver(nil, &Error{Op: "append", Subject: cmd.first(), Err: err})
			continue
		}
		if c.busyLocked(cmd) {
			kept = append(kept, cmd)
			continue
		}
		if cur != nil && (cur.msgs+cmd.n > c.maxMsgs || cur.size+cmd.size > groupMaxBytes) {
			starts = append(starts, cur)
			cur = nil
		}
		if cur == nil {
			if room <= 0 {
				kept = append(kept, cmd)
				continue
			}
			room--
			c.inflight++
			cur = &batch{}
		}
		c.markLocked(cmd, true)
		cur.cmds = append(cur.cmds, cmd)
		cur.msgs += cmd.n
		cur.size += cmd.size
	}
	if cur != nil {
		starts = append(starts, cur)
	}
	clear(c.queue[len(kept):])
	c.queue = kept
	return starts
}

// start runs batches on goroutines of their own; with keep, it returns the
// first instead, for the calling goroutine (one of the committer's) to run.
func (c *committer) start(starts []*batch, keep bool) *batch {
	var next *batch
	for _, b := range starts {
		if keep && next == nil {
			next = b
			continue
		}
		go c.run(b)
	}
	return next
}

// run sends b, then the next batch while there is one.
func (c *committer) run(b *batch) {
	for b != nil {
		var out outcome
		if len(b.cmds) == 1 {
			cmd := b.cmds[0]
			res, err := c.s.send(cmd.ctx, cmd.ps, cmd.o, false)
			cmd.deliver(res, err)
			out.answered = b.cmds
		} else {
			out = c.sendGroup(b)
		}
		if len(out.answered) > 1 && !c.noYield {
			c.yieldToAnswered()
		}
		c.mu.Lock()
		for _, cmd := range out.answered {
			c.markLocked(cmd, false)
		}
		for _, cmd := range out.requeue {
			c.markLocked(cmd, false)
		}
		if len(out.requeue) > 0 {
			c.queue = append(out.requeue, c.queue...)
		}
		c.inflight--
		c.staleLocked(out.answered...)
		starts := c.dispatchLocked()
		c.mu.Unlock()
		for _, h := range out.handover {
			go c.settle(h)
		}
		b = c.start(starts, true)
	}
}

// yieldToAnswered lets the goroutines of just answered appends run before
// the next batch leaves: a writer that sends its next append at once should
// find that batch gathering, not see it leave without it (the batches would
// otherwise alternate between two halves of the writers, each costing the
// server as much as a whole one). It yields the processor while the queue
// grows, and returns as soon as a few yields add nothing (no goroutine is
// on its way to append) or after at most maxYields: it never waits for time
// to pass, only for appends that runnable goroutines are making.
func (c *committer) yieldToAnswered() {
	const maxYields, idle = 256, 2
	c.mu.Lock()
	n := len(c.queue)
	c.mu.Unlock()
	quiet := 0
	for range maxYields {
		runtime.Gosched()
		c.mu.Lock()
		m := len(c.queue)
		c.mu.Unlock()
		if m == n {
			if quiet++; quiet >= idle {
				return
			}
			continue
		}
		n, quiet = m, 0
	}
}

// settle runs a handed-over command's settlement, answers it, frees its
// aggregates and goes on with what can be sent then.
func (c *committer) settle(h handover) {
	res, err := h.settle()
	h.cmd.deliver(res, err)
	c.mu.Lock()
	c.markLocked(h.cmd, false)
	c.staleLocked(h.cmd)
	starts := c.dispatchLocked()
	c.mu.Unlock()
	c.run(c.start(starts, true))
}

// sendGroup sends the commands of b as one atomic batch and sorts out what
// became of each.
//
// The server checks a batch's messages in order and rejects the whole batch
// at the first that fails, with the error a single publish would get and no
// word of which message it was (nats-server 2.15, processJetStreamBatchMsg
// and checkMsgHeadersPreClusteredProposal): a stale expectation is 10071
// "wrong last sequence: N", N being the failing subject's last sequence; a
// subject with a write in flight on a replicated stream is 10164; an event
// id already stored is 10201. Nothing of the batch is stored. So after a
// conflict the store finds the commands whose aggregates are not where
// they expected (suspects), settles each of those on its own (reading from
// the stream leader whether it conflicts or had landed earlier), and sends
// the others again in the next batch. When no command can be singled out,
// and after any other failure (a lost answer, no stream leader, an event
// too large), every command is settled on its own, sent alone as an append
// without group commit is, with the same event ids and expectations: so
// nothing is stored twice and each gets its own answer.
func (c *committer) sendGroup(b *batch) outcome {
	s := c.s
	msgs := make([]*nats.Msg, 0, b.msgs)
	oversize := false
	maxPayload := int(s.nc.MaxPayload())
	for _, cmd := range b.cmds {
		for _, p := range cmd.ps {
			msgs = append(msgs, p.enc...)
			for _, m := range p.enc {
				oversize = oversize || maxPayload > 0 && messageSize(m) > maxPayload
			}
		}
	}
	alone := func(uncertain bool) outcome {
		var out outcome
		for _, cmd := range b.cmds {
			out.handover = append(out.handover, handover{cmd: cmd, settle: func() ([]AppendResult, error) {
				return s.send(cmd.ctx, cmd.ps, cmd.o, uncertain)
			}})
		}
		return out
	}
	if oversize {
		// An event above the server's max_payload would leave the batch
		// half sent: let each command meet its own answer.
		return alone(false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.js.Options().DefaultTimeout)
	c.groups.Add(1)
	c.grouped.Add(int64(len(b.cmds)))
	firstSeq, _, err := s.publish(ctx, cancel, msgs)
	cancel()
	if err == nil {
		seq := firstSeq
		for _, cmd := range b.cmds {
			cmd.deliver(results(cmd.ps, seq, false), nil)
			seq += uint64(cmd.n)
		}
		return outcome{answered: b.cmds}
	}
	switch classify(err) {
	case classDenied:
		// The server dropped the messages on a subject this connection
		// may not publish to, so the batch was incomplete and nothing of
		// it was stored: the commands on that subject fail, the others go
		// again in the next batch, without them.
		var pd *publishDenied
		errors.As(err, &pd)
		var out outcome
		for _, cmd := range b.cmds {
			if cmd.publishesTo(pd.v.Subject) {
				cmd.deliver(nil, permissionDenied(pd.v))
				out.answered = append(out.answered, cmd)
			} else {
				out.requeue = append(out.requeue, cmd)
			}
		}
		if len(out.answered) == 0 {
			return alone(false) // unreachable: the subject is the batch's
		}
		return out
	case classConflict:
		suspects := c.suspects(err, b)
		if len(suspects) == 0 {
			return alone(false)
		}
		var out outcome
		for _, cmd := range b.cmds {
			if !suspects[cmd] {
				out.requeue = append(out.requeue, cmd)
				continue
			}
			out.handover = append(out.handover, handover{cmd: cmd, settle: func() ([]AppendResult, error) {
				return s.settleConflict(cmd)
			}})
		}
		return out
	case classAmbiguous:
		return alone(true)
	case classNoStream:
		for _, cmd := range b.cmds {
			cmd.deliver(nil, s.noStream(cmd.first(), err))
		}
		return outcome{answered: b.cmds}
	}
	if n, ok := batchLimit(err); ok && n < b.msgs {
		// The server's max_batch_size is below MaxBatch: smaller batches
		// from now on. Nothing was stored.
		c.mu.Lock()
		c.maxMsgs = max(1, min(c.maxMsgs, n))
		c.mu.Unlock()
		return outcome{requeue: b.cmds}
	}
	return alone(false)
}

// suspects returns the commands of b that may have failed it: those with
// an aggregate whose last event is not at the expected sequence, read for
// all of b's aggregates in one round trip (a batched direct get of the
// last message of each subject). A replica answering it may lag, so when
// that finds none, the message at the sequence a 10071 error names is read
// from the stream leader: its subject is the failing aggregate. Empty when
// neither tells.
func (c *committer) suspects(err error, b *batch) map[*command]bool {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), s.js.Options().DefaultTimeout)
	defer cancel()
	out := make(map[*command]bool)
	if last, lerr := s.lastSequences(ctx, b); lerr == nil {
		for _, cmd := range b.cmds {
			for _, p := range cmd.ps {
				if last[p.filter] != p.rev.Sequence {
					out[cmd] = true
				}
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		return out
	}
	n, ok := strings.CutPrefix(apiErr.Description, "wrong last sequence: ")
	if !ok {
		return out
	}
	seq, perr := strconv.ParseUint(n, 10, 64)
	if perr != nil || seq == 0 {
		return out
	}
	m, gerr := s.leaderGet(ctx, msgGetRequest{Seq: seq})
	if gerr != nil || m == nil {
		return out
	}
	for _, cmd := range b.cmds {
		for _, p := range cmd.ps {
			if p.filter == m.Subject && p.rev.Sequence != seq {
				out[cmd] = true
			}
		}
	}
	return out
}

// lastSequences returns the sequence of the last message of each aggregate
// of b that has one, in one batched direct get.
func (s *Store) lastSequences(ctx context.Context, b *batch) (map[string]uint64, error) {
	subjects := make([]string, 0, b.msgs)
	for _, cmd := range b.cmds {
		for _, p := range cmd.ps {
			subjects = append(subjects, p.filter)
		}
	}
	it, err := jetstreamext.GetLastMsgsFor(ctx, s.js, s.cfg.Name, subjects)
	if err != nil {
		return nil, err
	}
	last := make(map[string]uint64, len(subjects))
	for m, err := range it {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			break
		}
		if err != nil {
			return nil, err
		}
		last[m.Subject] = m.Sequence
	}
	return last, nil
}

// settleConflict settles a command that failed a group batch with a stale
// expectation: it reads from the stream leader what follows its expected
// revisions, as an append on its own does after a conflict, and sends it on
// its own when that does not settle it.
func (s *Store) settleConflict(cmd *command) ([]AppendResult, error) {
	landed, firstSeq, conflict, err := s.verify(cmd.ctx, cmd.ps)
	switch {
	case err != nil:
	case landed:
		return results(cmd.ps, firstSeq, true), nil
	case conflict != nil:
		return nil, conflict
	}
	return s.send(cmd.ctx, cmd.ps, cmd.o, false)
}

// batchLimit reads the server's batch size limit from its "atomic publish
// batch is too large: N" error (10199).
func batchLimit(err error) (int, bool) {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != codeBatchTooLarge {
		return 0, false
	}
	_, n, ok := strings.Cut(apiErr.Description, ": ")
	if !ok {
		return 0, false
	}
	v, perr := strconv.Atoi(strings.TrimSpace(n))
	return v, perr == nil && v > 0
}

const codeBatchTooLarge = 10199
