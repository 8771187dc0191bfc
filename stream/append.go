package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/esnats/esnats/internal/natserr"
	"github.com/esnats/esnats/internal/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// settleTimeout bounds how long an append keeps trying to learn its outcome
// after the caller's context ended while the append was in flight.
const settleTimeout = 5 * time.Second

// prepared is one aggregate's part of an append, validated and with ids.
type prepared struct {
	agg    Aggregate
	token  string // EncodeID(agg.ID)
	filter string // the aggregate's subject
	expect Expectation
	rev    Revision // expected revision (resolved for ExpectAny)
	events []EventData
	ids    []string
	enc    []*nats.Msg
}

// Append stores events for one aggregate, atomically, if expect holds: one
// event is a publish with the subject-sequence check, several are one atomic
// batch (all or none). Events are numbered from the expected revision's
// version + 1.
//
// Errors: ErrInvalidID, ErrInvalidName, ErrInvalidEventID,
// ErrUnknownEventType, ErrEncode, ErrTooLarge, ErrTooManyEvents before any
// I/O (also with ExpectAny, which reads the last revision only after the
// events were encoded and checked); *ConflictError (ErrConflict)
// when another writer got in first; ErrNotFound when the stream does not
// exist; ErrPermissionDenied (also matching nats.ErrPermissionViolation)
// when the connection may not publish to the aggregate's subject: the
// server refused the events and nothing was stored, reported as soon as the
// server's notice arrives, without a resend; ErrIndeterminate when the
// server could not be asked what landed (the error says so when the reason
// is a refused subscription to the connection's reply inbox, which drops
// every acknowledgement).
//
// Retries: on a timeout or lost connection Append resends the same events
// with the same ids and expectation; the server's duplicate window and the
// sequence check make sure they are stored at most once, and a write that
// landed is reported as landed (Duplicate set when a resend found it
// stored). When ctx ends with an append in flight, Append takes up to 5s
// more to settle the outcome; an append still waiting to be sent returns
// ctx's error at once.
//
// Group commit (Config.GroupCommit, on by default): appends that arrive
// while another is in flight wait for it and then go out together in one
// atomic batch, each with its own expectation and its events together; a
// stale expectation fails only its own append (the others are sent again),
// and two appends to one aggregate are never in one batch. An append that
// arrives when nothing is in flight goes out at once. The default mode,
// GroupCommitAuto, pipelines single-event appends instead where it measures
// that to be faster. See docs/appends.md.
func (s *Store) Append(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) (AppendResult, error) {
	res, err := s.AppendBatch(ctx, []AppendRequest{{Aggregate: agg, Expect: expect, Events: events}}, opts...)
	if err != nil {
		return AppendResult{}, err
	}
	return res[0], nil
}

// AppendBatch stores the events of several aggregates in one atomic batch:
// all of them, or none when any expectation fails. Each aggregate may appear
// once. The total number of events is at most MaxBatch. Results are in the
// order of reqs. Errors, retries and group commit are those of Append (the
// whole call is one command, never split); a *ConflictError names the
// first aggregate found to have moved.
func (s *Store) AppendBatch(ctx context.Context, reqs []AppendRequest, opts ...AppendOption) (res []AppendResult, err error) {
	ctx, ps, o, op, err := s.begin(ctx, reqs, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		n := 0
		if err == nil {
			n = op.events
		}
		op.End(n, err)
	}()
	for attempt := 1; ; attempt++ {
		anyExpect := false
		for _, p := range ps {
			if p.expect.kind == expectAny {
				anyExpect = true
				if p.rev, err = s.lastRevision(ctx, p.filter); err != nil {
					return nil, err
				}
				if err := s.renumber(p); err != nil {
					return nil, err
				}
			}
		}
		var res []AppendResult
		if s.gc != nil {
			res, err = s.gc.submit(ctx, ps, o)
		} else {
			res, err = s.send(ctx, ps, o, false)
		}
		var ce *ConflictError
		if anyExpect && attempt < o.maxAttempts && errors.As(err, &ce) && expectsAny(ps, ce.Aggregate) {
			if err := backoff(ctx, attempt); err != nil {
				return nil, err
			}
			continue
		}
		return res, err
	}
}

// appendOp is an append's telemetry and its number of events.
type appendOp struct {
	telemetry.Op
	events int
}

// begin validates and encodes reqs (before any I/O: also with ExpectAny,
// whose events are numbered again from the revision read) and starts the
// append's span and metrics. On an error after the span started, begin
// ends it.
func (s *Store) begin(ctx context.Context, reqs []AppendRequest, opts []AppendOption) (context.Context, []*prepared, appendOptions, appendOp, error) {
	o := buildAppendOptions(opts)
	ps, err := s.prepare(reqs)
	if err != nil {
		return ctx, nil, o, appendOp{}, err
	}
	events := 0
	for _, p := range ps {
		events += len(p.events)
	}
	// The command's trace context (ContextWithTrace) goes into the events'
	// headers; without one, the append's own span (when tracing is on).
	tc, hasTrace := TraceFromContext(ctx)
	var op telemetry.Op
	if len(ps) == 1 {
		ctx, op = s.tel.StartAppend(ctx, ps[0].agg.Type, ps[0].agg.ID, ps[0].filter, events)
	} else {
		ctx, op = s.tel.StartAppend(ctx, "", "", "", events)
	}
	meta := eventMeta{correlationID: o.correlationID, causationID: o.causationID, metadata: o.metadata, now: o.now().UTC()}
	if hasTrace {
		meta.trace = tc
	} else if parent, state := telemetry.TraceHeaders(ctx); parent != "" {
		meta.trace = TraceContext{TraceParent: parent, TraceState: state}
	}
	for key := range o.metadata {
		if err := validateMetaKey(key); err != nil {
			op.End(0, err)
			return ctx, nil, o, appendOp{}, err
		}
	}
	for _, p := range ps {
		if err := s.encode(p, &meta); err != nil {
			op.End(0, err)
			return ctx, nil, o, appendOp{}, err
		}
	}
	return ctx, ps, o, appendOp{Op: op, events: events}, nil
}

func expectsAny(ps []*prepared, agg Aggregate) bool {
	for _, p := range ps {
		if p.agg == agg {
			return p.expect.kind == expectAny
		}
	}
	return false
}

// prepare validates requests before any I/O and assigns event ids.
func (s *Store) prepare(reqs []AppendRequest) ([]*prepared, error) {
	if len(reqs) == 0 {
		return nil, &Error{Op: "append", Err: errors.New("no aggregates to append to")}
	}
	total := 0
	seen := make(map[Aggregate]bool, len(reqs))
	seenID := make(map[string]bool)
	ps := make([]*prepared, len(reqs))
	for i, r := range reqs {
		if err := ValidateName("aggregate type", r.Aggregate.Type); err != nil {
			return nil, err
		}
		tok, err := EncodeID(r.Aggregate.ID)
		if err != nil {
			return nil, err
		}
		if len(r.Events) == 0 {
			return nil, &Error{Op: "append", Subject: s.subj.aggregate(r.Aggregate.Type, tok), Err: errors.New("no events to append")}
		}
		if seen[r.Aggregate] {
			return nil, &Error{Op: "append", Subject: s.subj.aggregate(r.Aggregate.Type, tok), Err: fmt.Errorf("aggregate %s appears twice in one batch", r.Aggregate)}
		}
		seen[r.Aggregate] = true
		total += len(r.Events)
		p := &prepared{agg: r.Aggregate, token: tok, filter: s.subj.aggregate(r.Aggregate.Type, tok),
			expect: r.Expect, rev: r.Expect.rev, events: r.Events, ids: make([]string, len(r.Events))}
		for j, ev := range r.Events {
			if ev.ID == "" {
				p.ids[j] = newEventID()
			} else {
				if err := validateEventID(ev.ID); err != nil {
					return nil, err
				}
				p.ids[j] = ev.ID
			}
		}
		for _, id := range p.ids {
			if seenID[id] {
				return nil, &Error{Op: "append", Subject: p.filter, Err: fmt.Errorf("%w: %q appears twice in one append", ErrInvalidEventID, id)}
			}
			seenID[id] = true
		}
		ps[i] = p
	}
	if total > MaxBatch {
		return nil, &Error{Op: "append", Err: fmt.Errorf("%w: %d events, an atomic append holds at most %d", ErrTooManyEvents, total, MaxBatch)}
	}
	return ps, nil
}

// encode builds p's messages numbered from p.rev; the first carries the
// expected-last-subject-sequence check on the aggregate's subject.
func (s *Store) encode(p *prepared, meta *eventMeta) error {
	p.enc = p.enc[:0]
	for j, ev := range p.events {
		ev.ID = p.ids[j]
		e, err := encodeEvent(s.reg, s.subj, p.agg, p.token, p.rev.Version+uint64(j)+1, ev, meta, s.cfg.MaxEventSize)
		if err != nil {
			return err
		}
		p.enc = append(p.enc, e.msg)
	}
	// Only the first event of an aggregate may carry the check in a batch.
	p.enc[0].Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(p.rev.Sequence, 10)}
	return nil
}

// renumber numbers p's encoded events again from p.rev (read for
// ExpectAny) and sets the expected sequence of the first. The events keep
// their ids, payloads and time. A version with more digits makes an event a
// few bytes larger: it is checked against MaxEventSize again.
func (s *Store) renumber(p *prepared) error {
	for j, m := range p.enc {
		m.Header[HeaderVersion] = []string{strconv.FormatUint(p.rev.Version+uint64(j)+1, 10)}
		if err := checkEventSize(m, s.cfg.MaxEventSize); err != nil {
			return err
		}
	}
	p.enc[0].Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(p.rev.Sequence, 10)}
	return nil
}

// errClass sorts publish errors by what they say about the outcome.
type errClass int

const (
	classOther       errClass = iota
	classConflict             // 10071, 10164, 10201: maybe ours, maybe another writer's
	classAmbiguous            // no answer: may or may not have landed
	classUnavailable          // not received by a stream: safe to resend
	classTooLarge
	classNoStream
	classDenied // refused for lack of permission: not stored
)

func classify(err error) errClass {
	var pd *publishDenied
	if errors.As(err, &pd) {
		return classDenied
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, 10164, 10201:
			return classConflict
		case jetstream.JSErrCodeStreamMessageExceedsMaximum:
			return classTooLarge
		case jetstream.JSErrCodeStreamNotFound:
			return classNoStream
		case 10163, 10210, 10211: // check temporarily unavailable, too many in flight
			return classUnavailable
		case codeBatchIncomplete:
			// Some of the batch's messages did not reach the stream (a
			// gap, as when its leader's interest had not reached every
			// server yet): the server dropped the whole batch.
			return classUnavailable
		case codeDuplicateInProcess:
			// An earlier send of ours with the same id is still being
			// replicated: it may yet land. Resend later and settle.
			return classAmbiguous
		}
		if apiErr.Code == 503 {
			return classUnavailable
		}
		return classOther
	}
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return classTooLarge
	case noResponders(err):
		return classUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, jetstream.ErrInvalidJSAck), errors.Is(err, jetstreamext.ErrInvalidBatchAck):
		return classAmbiguous
	}
	return classOther
}

// send publishes the prepared events of one append on its own (one
// publish, or one atomic batch) and settles the outcome. uncertain says that
// the same messages may already have landed (they were in a group-commit
// batch whose answer was lost): the outcome is then settled even when ctx
// has ended.
func (s *Store) send(ctx context.Context, ps []*prepared, o appendOptions, uncertain bool) ([]AppendResult, error) {
	msgs := make([]*nats.Msg, 0, len(ps))
	for _, p := range ps {
		msgs = append(msgs, p.enc...)
	}
	first := msgs[0].Subject
	var lastErr error
	pctx := ctx
	start := time.Now()
	var look *streamLookup // the stream looked up after no responders
	for attempt := 1; ; attempt++ {
		if !uncertain && ctx.Err() != nil {
			return nil, &Error{Op: "append", Subject: first, Err: ctx.Err()} // nothing in flight
		}
		if uncertain && pctx == ctx && ctx.Err() != nil {
			// The caller gave up while an attempt may be in flight: take
			// a little more time to settle its outcome.
			var cancel context.CancelFunc
			pctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
			defer cancel()
		}
		// Each attempt waits at most the JetStream default timeout, so a
		// lost answer leaves time to resend within the caller's deadline.
		elected := s.leader.next() // a new leader ends the backoff below
		actx, cancel := context.WithTimeout(pctx, s.js.Options().DefaultTimeout)
		firstSeq, dup, err := s.publish(actx, cancel, msgs)
		cancel()
		if err == nil {
			if dup {
				// The server dropped the events as already stored: report
				// where they are, which need not be where we expected.
				return s.landedAt(pctx, ps, firstSeq)
			}
			return results(ps, firstSeq, false), nil
		}
		lastErr = err
		class := classify(err)
		switch class {
		case classDenied:
			// A refused publish is never stored: whatever an earlier
			// attempt did, it was refused too.
			var pd *publishDenied
			errors.As(err, &pd)
			return nil, permissionDenied(pd.v)
		case classTooLarge:
			return nil, &Error{Op: "append", Subject: first, Err: fmt.Errorf("%w: %v", ErrTooLarge, err)}
		case classNoStream:
			return nil, s.noStream(first, err)
		case classConflict:
			landed, firstSeq, conflict, verr := s.verify(pctx, ps)
			switch {
			case verr != nil:
				return nil, s.indeterminate(first, uncertain, fmt.Errorf("%v; then reading what landed failed: %w", bare(err), bare(verr)))
			case landed:
				return results(ps, firstSeq, true), nil
			case conflict != nil:
				return nil, conflict
			}
			if apiCode(err) == codeBatchDuplicateID {
				// The server already holds our event ids, but not right
				// after the expected revision: an earlier append with the
				// same ids landed before it (a repeated ExpectAny append).
				return s.findLanded(pctx, ps)
			}
			// Nothing follows the expected revision: a competing write
			// was in flight (10164) or ours still is. Resend.
		case classAmbiguous:
			uncertain = true
		case classUnavailable:
			// Not received by the stream: resending is safe. No
			// responders means that nothing listened on the subject:
			// either the stream is gone (or no longer covers the
			// subject), which a look at it tells, or it is between
			// leaders, which the resends below ride out. The look runs
			// beside the resends, which it must not delay.
			if look == nil && noResponders(err) {
				look = s.lookUp(pctx, first)
			}
		default:
			return nil, &Error{Op: "append", Subject: first, Err: err}
		}
		if look != nil {
			select {
			case <-look.done:
				if look.missing {
					return nil, s.noStream(first, lastErr)
				}
				if !look.known {
					look = nil // no answer: look again at the next no responders
				}
			default:
			}
		}
		if attempt >= o.maxAttempts && !(class == classUnavailable && time.Since(start) < s.unavailableFor(o)) {
			break
		}
		if err := backoffUntil(pctx, attempt, elected); err != nil {
			if !uncertain {
				return nil, &Error{Op: "append", Subject: first, Err: fmt.Errorf("%w after %d attempts; the last: %v", err, attempt, bare(lastErr))}
			}
			if pctx != ctx {
				break // settle time used up
			}
		}
	}
	if classify(lastErr) == classUnavailable {
		if missing, _ := s.notListening(context.WithoutCancel(ctx), first); missing {
			return nil, s.noStream(first, lastErr)
		}
	}
	if uncertain {
		return nil, s.indeterminate(first, true, lastErr)
	}
	if classify(lastErr) == classConflict {
		// Competing writes kept the aggregate busy (10164) through every
		// attempt, and none of ours can be in flight: a conflict.
		last, err := s.lastRevision(context.WithoutCancel(ctx), ps[0].filter)
		ce := &ConflictError{Aggregate: ps[0].agg, Expected: ps[0].rev, Actual: last, ActualKnown: err == nil}
		return nil, ce
	}
	return nil, &Error{Op: "append", Subject: first, Err: lastErr}
}

const codeBatchDuplicateID = 10201

// codeBatchIncomplete: "atomic publish batch is incomplete". The server
// abandoned the batch (a message missing, the batch timed out): nothing of
// it was stored.
const codeBatchIncomplete = 10176

// codeDuplicateInProcess: "duplicate message id is in process" (nats-server
// 2.12+): a message with the same Nats-Msg-Id is proposed and not yet
// committed, typically our own earlier attempt on a stream without quorum.
const codeDuplicateInProcess = 10158

func apiCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}

// findLanded finds the events of an append whose ids the server reports as
// already stored: they are within the duplicate window, so it reads the
// first aggregate's events of that window and looks for the first id.
func (s *Store) findLanded(ctx context.Context, ps []*prepared) ([]AppendResult, error) {
	p := ps[0]
	since := time.Now().Add(-s.cfg.Duplicates - time.Minute)
	for attempt := 1; attempt <= 5; attempt++ {
		raws, err := s.getBatchSince(ctx, p.filter, since)
		if err != nil {
			return nil, &Error{Op: "append", Subject: p.filter, Err: fmt.Errorf("%w: the server holds these event ids, but reading where failed: %v", ErrIndeterminate, bare(err))}
		}
		for _, m := range raws {
			if m.Header.Get(HeaderEventID) == p.ids[0] {
				return s.landedAt(ctx, ps, m.Sequence)
			}
		}
		// A replica answering direct gets may not have them yet.
		if err := backoff(ctx, attempt); err != nil {
			break
		}
	}
	// The server holds our ids but we could not find where: never claim it
	// is someone else's (a caller retrying with new ids would store the
	// events twice).
	return nil, &Error{Op: "append", Subject: p.filter, Err: fmt.Errorf("%w: the server reports event id %q as already stored, but it was not found on this aggregate's recent events (another aggregate may hold it)", ErrIndeterminate, p.ids[0])}
}

// unavailableFor is how long an append keeps resending while the stream
// cannot take it (no leader, no responders): as long as o.maxAttempts
// attempts whose answers never come would take. A stream leader lost with its
// server is replaced by an election that takes seconds, far longer than
// o.maxAttempts quick refusals.
func (s *Store) unavailableFor(o appendOptions) time.Duration {
	return time.Duration(o.maxAttempts) * s.js.Options().DefaultTimeout
}

func noResponders(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// streamLookup is notListening's answer, once done is closed.
type streamLookup struct {
	done           chan struct{}
	missing, known bool
}

// lookUp runs notListening on its own goroutine.
func (s *Store) lookUp(ctx context.Context, subject string) *streamLookup {
	l := &streamLookup{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.missing, l.known = s.notListening(ctx, subject)
	}()
	return l
}

// notListening reports whether the store's stream is missing or no longer
// covers subject. known is false when the lookup got no answer: while the
// stream or the cluster's meta layer elects a leader, stream info goes
// unanswered, so the lookup waits at most lookupTimeout and the resends go on.
func (s *Store) notListening(ctx context.Context, subject string) (missing, known bool) {
	ctx, cancel := context.WithTimeout(ctx, min(lookupTimeout, s.js.Options().DefaultTimeout))
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg.Name)
	if err != nil {
		if isStreamNotFound(err) {
			return true, true
		}
		return false, false
	}
	for _, f := range st.CachedInfo().Config.Subjects {
		if subjectMatches(subject, f) {
			return false, true
		}
	}
	return true, true
}

// lookupTimeout bounds notListening's stream lookup.
const lookupTimeout = 500 * time.Millisecond

func (s *Store) noStream(subject string, err error) error {
	return &Error{Op: "append", Subject: subject, Err: fmt.Errorf("%w: stream %q does not exist or does not listen on this subject (create the store with NewStore): %v", ErrNotFound, s.cfg.Name, bare(err))}
}

// indeterminate is the error of an append whose outcome could not be
// learnt (when uncertain: it may have landed). When the server refused the
// connection's reply subscription, which makes every acknowledgement get
// lost, the error says so.
func (s *Store) indeterminate(subject string, uncertain bool, err error) error {
	note := s.replyViolation(err)
	if !uncertain {
		if note != "" {
			err = fmt.Errorf("%w%s", err, note)
		}
		return &Error{Op: "append", Subject: subject, Err: err}
	}
	return &Error{Op: "append", Subject: subject, Err: fmt.Errorf("%w: %v%s", ErrIndeterminate, bare(err), note)}
}

// publish sends msgs: one message as a plain JetStream publish, several as
// one atomic batch. It returns the sequence of the first message. cancel
// must end ctx: it is called when the server refuses the publish for lack
// of permission (see watchDenied), and the error is then a *publishDenied.
// A refused reply subscription makes the error a *replyDenied wrapping the
// request's own.
func (s *Store) publish(ctx context.Context, cancel context.CancelFunc, msgs []*nats.Msg) (uint64, bool, error) {
	d := s.watchDenied(ctx, cancel, msgs)
	seq, dup, err := s.publishMsgs(ctx, msgs)
	d.stop()
	if err != nil {
		if v, ok := d.denied(msgs, s.inbox); ok {
			if v.Op == natserr.Publish {
				return 0, false, &publishDenied{v: v, err: err}
			}
			return 0, false, &replyDenied{v: v, err: err}
		}
		if d.leaderMoved() {
			// Cancelled: classified as a lost answer, resent at once.
			err = fmt.Errorf("the stream's leader changed while the answer was awaited: %w", err)
		}
	}
	return seq, dup, err
}

func (s *Store) publishMsgs(ctx context.Context, msgs []*nats.Msg) (uint64, bool, error) {
	if len(msgs) == 1 {
		// A message sent before in a group-commit batch still carries
		// that batch's headers, which would make it a batch of its own.
		// Only a message that has them is written to: a resend of a
		// plain message must not write to a header nats.go may still be
		// reading (an earlier asynchronous publish of it, still pending).
		h := msgs[0].Header
		if _, ok := h[jetstreamext.BatchIDHeader]; ok {
			delete(h, jetstreamext.BatchIDHeader)
			delete(h, jetstreamext.BatchSeqHeader)
			delete(h, jetstreamext.BatchCommitHeader)
		}
		// No retries of nats.go's own on no responders: send resends,
		// and wakes up for a new leader (see leaderwatch.go).
		ack, err := s.js.PublishMsg(ctx, msgs[0], jetstream.WithRetryAttempts(0))
		if err != nil {
			return 0, false, err
		}
		return ack.Sequence, ack.Duplicate, nil
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, s.js, msgs, jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: s.js.Options().DefaultTimeout})
	if err != nil {
		return 0, false, err
	}
	if ack.BatchSize != uint64(len(msgs)) || ack.Sequence < uint64(len(msgs)) {
		return 0, false, fmt.Errorf("%w: batch ack for %d of %d events", jetstreamext.ErrInvalidBatchAck, ack.BatchSize, len(msgs))
	}
	return ack.Sequence - uint64(len(msgs)) + 1, false, nil
}

// verify asks the stream leader what follows each aggregate's expected
// revision. landed: the first aggregate's first event is there, so the
// whole atomic append landed at firstSeq. conflict: another writer's event
// follows an expected revision, or the aggregate is not where it was
// expected at all. Neither: nothing has been written after the expected
// revisions yet (a competing or our own write may be in flight).
func (s *Store) verify(ctx context.Context, ps []*prepared) (landed bool, firstSeq uint64, conflict error, err error) {
	for i, p := range ps {
		m, err := s.leaderGet(ctx, msgGetRequest{Seq: p.rev.Sequence + 1, NextBySubj: p.filter})
		if err != nil {
			return false, 0, nil, err
		}
		if m != nil && i == 0 && m.Header.Get(HeaderEventID) == p.ids[0] {
			return true, m.Sequence, nil, nil
		}
		last, err := s.lastRevision(ctx, p.filter)
		if err != nil {
			return false, 0, nil, err
		}
		if m != nil || last.Sequence != p.rev.Sequence {
			return false, 0, &ConflictError{Aggregate: p.agg, Expected: p.rev, Actual: last, ActualKnown: true}, nil
		}
	}
	return false, 0, nil, nil
}

// landedAt reports an append found already stored at firstSeq, reading the
// version it was stored with from the stream leader.
func (s *Store) landedAt(ctx context.Context, ps []*prepared, firstSeq uint64) ([]AppendResult, error) {
	m, err := s.leaderGet(ctx, msgGetRequest{Seq: firstSeq})
	if err == nil && m == nil {
		err = fmt.Errorf("%w: message at sequence %d", ErrNotFound, firstSeq)
	}
	if err != nil {
		return nil, &Error{Op: "append", Subject: ps[0].filter, Sequence: firstSeq, Err: fmt.Errorf("%w: stored as a duplicate, but reading it back failed: %v", ErrIndeterminate, bare(err))}
	}
	if m.Subject != ps[0].filter || m.Header.Get(HeaderEventID) != ps[0].ids[0] {
		return nil, &Error{Op: "append", Subject: ps[0].filter, Sequence: firstSeq,
			Err: fmt.Errorf("%w: %q is already stored on %s within the duplicate window", ErrInvalidEventID, ps[0].ids[0], m.Subject)}
	}
	out := results(ps, firstSeq, true)
	// Versions as stored: read the first event of each aggregate.
	for i := range ps {
		if i > 0 {
			if m, err = s.leaderGet(ctx, msgGetRequest{Seq: out[i].First.Sequence}); err != nil || m == nil {
				return nil, &Error{Op: "append", Subject: ps[i].filter, Sequence: out[i].First.Sequence, Err: fmt.Errorf("%w: stored as a duplicate, but reading it back failed: %v", ErrIndeterminate, bare(err))}
			}
		}
		rev, err := revisionOf(m)
		if err != nil {
			return nil, err
		}
		n := out[i].Last.Version - out[i].First.Version
		out[i].First.Version = rev.Version
		out[i].Last.Version = rev.Version + n
	}
	return out, nil
}

// results computes each aggregate's revisions: an atomic batch occupies
// consecutive sequences in request order.
func results(ps []*prepared, firstSeq uint64, dup bool) []AppendResult {
	out := make([]AppendResult, len(ps))
	seq := firstSeq
	for i, p := range ps {
		n := uint64(len(p.enc))
		out[i] = AppendResult{
			Aggregate: p.agg,
			First:     Revision{Version: p.rev.Version + 1, Sequence: seq},
			Last:      Revision{Version: p.rev.Version + n, Sequence: seq + n - 1},
			Duplicate: dup,
		}
		seq += n
	}
	return out
}

// backoff waits before attempt+1: 20ms doubling to 1s, with full jitter.
func backoff(ctx context.Context, attempt int) error {
	return backoffUntil(ctx, attempt, nil)
}

// backoffUntil is backoff, cut short when wake is closed (a new stream
// leader: the stream can take a resend now).
func backoffUntil(ctx context.Context, attempt int, wake <-chan struct{}) error {
	d := 20 * time.Millisecond << min(attempt-1, 6)
	d = min(d, time.Second)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	case <-wake:
		return nil
	}
}
