package stream

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esnats/esnats/internal/jsapi"
)

// Load returns the aggregate's events in order, as an iterator of decoded
// events. It reads in batches (one direct-get round trip per batch of up to
// WithBatchSize events, default 1000) and never creates a consumer. An
// aggregate with no events yields nothing.
//
// Options: AfterRevision to read the tail after a snapshot, FromSequence,
// FromVersion to skip older versions, WithBatchSize, WithLimit,
// SkipUndecodable.
//
// Versions are checked: a load from the beginning must find version 1
// first, a load AfterRevision(r) version r.Version+1, and then each event
// the version after the previous one. (A load FromSequence a later sequence
// checks only the latter.) A store whose events expire (Config.MaxAge) can
// therefore not load an aggregate whose first events expired.
//
// Errors (yielded with a nil event, after which the iteration ends):
// ErrInvalidID / ErrInvalidName for a bad aggregate (before any I/O);
// ErrNotFound when the stream does not exist; ErrDecode, ErrUnknownEventType
// or ErrSchemaVersion, in an *Error naming subject and sequence, for an event
// that cannot be decoded, and ErrDecode for a history that does not start
// at the version expected or has a gap in the versions. Each read request
// waits at most the JetStream timeout and one that timed out is sent again
// (jsapi.MaxAttempts in all) while ctx lasts; one the server refused
// because the connection may not publish to the store's direct-get subject
// ends at once with ErrPermissionDenied (also nats.ErrPermissionViolation).
//
// Reads are served by any replica that is current (direct get), so on a
// replicated store a load may miss an append acknowledged an instant ago;
// appending with the loaded revision then fails with ErrConflict, never
// silently. Use LastRevision for a read from the stream leader.
func (s *Store) Load(ctx context.Context, agg Aggregate, opts ...ReadOption) iter.Seq2[*Event, error] {
	o := buildReadOptions(opts)
	filter, err := s.AggregateSubject(agg)
	if err != nil {
		return failed(err)
	}
	return func(yield func(*Event, error) bool) {
		// The span covers the iteration, also when the caller stops early.
		ctx, op := s.tel.StartLoad(ctx, agg.Type, agg.ID, filter)
		n := 0
		var lastErr error
		defer func() { op.End(n, lastErr) }()
		for ev, err := range loadEvents(agg, s.read(ctx, filter, o), o) {
			if err != nil {
				lastErr = err
			} else {
				n++
			}
			if !yield(ev, err) {
				return
			}
		}
	}
}

// ReadAll returns the store's events in stream order, from FromSequence
// (default 1), optionally filtered with WithAggregateTypes and
// WithEventTypes, in batches like Load. It reads what is stored when each
// batch is asked for and ends there; to follow new events use a consumer.
// Errors are those of Load.
func (s *Store) ReadAll(ctx context.Context, opts ...ReadOption) iter.Seq2[*Event, error] {
	o := buildReadOptions(opts)
	filter, err := readAllFilter(s.subj, o)
	if err != nil {
		return failed(err)
	}
	return filterEvents(s.read(ctx, filter, o), o)
}

// The parts of Load and ReadAll that the JetStream and memory stores share:
// they differ only in how they page through stored messages.

func failed(err error) iter.Seq2[*Event, error] {
	return func(yield func(*Event, error) bool) { yield(nil, err) }
}

// loadEvents checks that one aggregate's events have contiguous versions,
// starting at 1 for a load from the beginning and at the revision's next
// version for AfterRevision, and applies FromVersion and WithLimit.
func loadEvents(agg Aggregate, events iter.Seq2[*Event, error], o readOptions) iter.Seq2[*Event, error] {
	// The version the first event read must have; 0: unknown (a load from
	// a sequence that is not the first).
	var wantFirst uint64
	switch {
	case o.after != nil:
		wantFirst = o.after.Version + 1
	case o.fromSeq <= 1:
		wantFirst = 1
	}
	return func(yield func(*Event, error) bool) {
		var lastVersion uint64
		n := 0
		first := true
		for ev, err := range events {
			if err != nil {
				yield(nil, err)
				return
			}
			if first && wantFirst != 0 && ev.Version != wantFirst {
				var after string
				if o.after != nil && !o.after.IsZero() {
					after = fmt.Sprintf(" after version %d at sequence %d", o.after.Version, o.after.Sequence)
				}
				yield(nil, &Error{Op: "load", Subject: ev.Subject, Sequence: ev.Sequence,
					Err: fmt.Errorf("%w: version %d is the first event of %s%s (expected %d)", ErrDecode, ev.Version, agg, after, wantFirst)})
				return
			}
			first = false
			if lastVersion != 0 && ev.Version != lastVersion+1 {
				yield(nil, &Error{Op: "load", Subject: ev.Subject, Sequence: ev.Sequence,
					Err: fmt.Errorf("%w: version %d follows version %d (history of %s is not contiguous)", ErrDecode, ev.Version, lastVersion, agg)})
				return
			}
			lastVersion = ev.Version
			if ev.Version < o.fromVersion {
				continue
			}
			if !yield(ev, nil) {
				return
			}
			if n++; o.limit > 0 && n >= o.limit {
				return
			}
		}
	}
}

// readAllFilter validates ReadAll's type filters and returns the subject
// filter for the server: one aggregate type is a subject token; several, and
// event types (a header), are filtered by filterEvents.
func readAllFilter(subj subjects, o readOptions) (string, error) {
	for _, t := range o.aggTypes {
		if err := ValidateName("aggregate type", t); err != nil {
			return "", err
		}
	}
	for _, t := range o.eventTypes {
		if err := ValidateName("event type", t); err != nil {
			return "", err
		}
	}
	if len(o.aggTypes) == 1 {
		return subj.filter(o.aggTypes[0]), nil
	}
	return subj.all(), nil
}

// filterEvents applies ReadAll's client-side type filters and WithLimit.
func filterEvents(events iter.Seq2[*Event, error], o readOptions) iter.Seq2[*Event, error] {
	return func(yield func(*Event, error) bool) {
		n := 0
		for ev, err := range events {
			if err != nil {
				yield(nil, err)
				return
			}
			if len(o.aggTypes) > 1 && !slices.Contains(o.aggTypes, ev.Aggregate.Type) ||
				len(o.eventTypes) > 0 && !slices.Contains(o.eventTypes, ev.Type) {
				continue
			}
			if !yield(ev, nil) {
				return
			}
			if n++; o.limit > 0 && n >= o.limit {
				return
			}
		}
	}
}

// read pages through the messages matching filter with batched direct gets
// and decodes them.
func (s *Store) read(ctx context.Context, filter string, o readOptions) iter.Seq2[*Event, error] {
	return func(yield func(*Event, error) bool) {
		seq := max(o.fromSeq, 1)
		for {
			raws, more, err := s.getBatch(ctx, filter, seq, o.batch)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, m := range raws {
				ev, err := decodeEvent(s.reg, s.subj, m)
				if err != nil {
					if o.skipBad != nil && o.skipBad(err) {
						continue
					}
					yield(nil, err)
					return
				}
				if !yield(ev, nil) {
					return
				}
			}
			if !more {
				return
			}
			seq = raws[len(raws)-1].Sequence + 1
		}
	}
}

// getBatch fetches up to batch messages matching filter from seq in one
// round trip. more reports that further messages matched when the server
// answered. Each request waits at most the JetStream timeout, and one that
// timed out is sent again (a read changes nothing), at most
// jsapi.MaxAttempts times in all and while ctx lasts: a batched direct get
// whose reply was lost (a replica that stopped, a reply dropped under load)
// then costs one timeout instead of holding the load until the caller's
// deadline. A request the server refused for lack of permission ends at
// once (within about 50 ms) with ErrPermissionDenied, and is not sent again.
func (s *Store) getBatch(ctx context.Context, filter string, seq uint64, batch int) (raws []rawMessage, more bool, err error) {
	err = s.retryRead(ctx, func(ctx context.Context) error {
		var err error
		raws, more, err = s.getBatchOnce(ctx, filter, seq, batch)
		return err
	})
	return raws, more, err
}

// retryRead runs read, a direct get, with the JetStream timeout, again
// while it times out (see getBatch). It returns read's last error.
func (s *Store) retryRead(ctx context.Context, read func(ctx context.Context) error) error {
	subjects := []string{s.directGetSubject()}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, s.js.Options().DefaultTimeout)
		d := s.watchSubjects(actx, cancel, func() []string { return subjects })
		err := read(actx)
		d.stop()
		timedOut := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err != nil {
			if v, denied := d.deniedOn(subjects); denied {
				// Refused, at once: a resend would be refused too.
				return readDenied(err, v)
			}
		}
		if !timedOut || attempt >= jsapi.MaxAttempts {
			return err
		}
		if berr := backoff(ctx, 1); berr != nil {
			return err
		}
	}
}

// directGetSubject is the subject of the store's direct gets, as
// jetstreamext.GetBatch builds it.
func (s *Store) directGetSubject() string {
	o := s.js.Options()
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + ".DIRECT.GET." + s.cfg.Name
	case o.Domain != "":
		return "$JS." + o.Domain + ".DIRECT.GET." + s.cfg.Name
	default:
		return "$JS.API.DIRECT.GET." + s.cfg.Name
	}
}

// getBatchOnce is one request of getBatch; ctx bounds it.
func (s *Store) getBatchOnce(ctx context.Context, filter string, seq uint64, batch int) ([]rawMessage, bool, error) {
	it, err := jetstreamext.GetBatch(ctx, s.js, s.cfg.Name, batch, jetstreamext.GetBatchSubject(filter), jetstreamext.GetBatchSeq(seq), jetstreamext.GetBatchMaxBytes(readMaxBytes))
	if err != nil {
		return nil, false, s.readErr(ctx, filter, seq, err)
	}
	raws := make([]rawMessage, 0, min(batch, 64))
	pending := uint64(1)
	for m, err := range it {
		if err != nil {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				return raws, false, nil
			}
			return nil, false, s.readErr(ctx, filter, seq, err)
		}
		raws = append(raws, rawMessage{Subject: m.Subject, Sequence: m.Sequence, Header: m.Header, Data: m.Data})
		pending, err = strconv.ParseUint(m.Header.Get(headerNumPending), 10, 64)
		if err != nil {
			return nil, false, &Error{Op: "read", Subject: m.Subject, Sequence: m.Sequence, Err: fmt.Errorf("invalid %s header", headerNumPending)}
		}
	}
	if len(raws) == 0 {
		// The iterator ends without a message or error on a timeout.
		if err := ctx.Err(); err != nil {
			return nil, false, s.readErr(ctx, filter, seq, err)
		}
		return nil, false, &Error{Op: "read", Subject: filter, Sequence: seq, Err: fmt.Errorf("%w: no answer from the server", nats.ErrTimeout)}
	}
	// Messages and then a timeout (the rest of the answer lost): what came
	// is good, and more (pending > 0) makes the caller ask for the rest.
	return raws, pending > 0, nil
}

// getBatchSince reads the messages of filter stored since t (a few hundred
// at most: callers use it for the duplicate window of one aggregate), with
// getBatch's timeout and retries.
func (s *Store) getBatchSince(ctx context.Context, filter string, t time.Time) (raws []rawMessage, err error) {
	err = s.retryRead(ctx, func(ctx context.Context) error {
		var err error
		raws, err = s.getBatchSinceOnce(ctx, filter, t)
		return err
	})
	return raws, err
}

func (s *Store) getBatchSinceOnce(ctx context.Context, filter string, t time.Time) ([]rawMessage, error) {
	it, err := jetstreamext.GetBatch(ctx, s.js, s.cfg.Name, MaxBatch, jetstreamext.GetBatchSubject(filter), jetstreamext.GetBatchStartTime(t), jetstreamext.GetBatchMaxBytes(readMaxBytes))
	if err != nil {
		return nil, err
	}
	var raws []rawMessage
	for m, err := range it {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			return raws, nil
		}
		if err != nil {
			return nil, err
		}
		raws = append(raws, rawMessage{Subject: m.Subject, Sequence: m.Sequence, Header: m.Header, Data: m.Data})
	}
	if len(raws) == 0 && ctx.Err() != nil {
		// The iterator ends without a message or error on a timeout.
		return nil, ctx.Err()
	}
	return raws, nil
}

func (s *Store) readErr(ctx context.Context, filter string, seq uint64, err error) error {
	if errors.Is(err, jetstreamext.ErrBatchUnsupported) || errors.Is(err, nats.ErrNoResponders) {
		// A direct get to a stream that does not exist gets a no-responders
		// status, which the batch reader reports as unsupported.
		if _, serr := s.js.Stream(context.WithoutCancel(ctx), s.cfg.Name); errors.Is(serr, jetstream.ErrStreamNotFound) {
			err = fmt.Errorf("%w: stream %q does not exist", ErrNotFound, s.cfg.Name)
		}
	}
	return &Error{Op: "read", Subject: filter, Sequence: seq, Err: err}
}

// readMaxBytes bounds one batch's bytes, so that the server (which serves a
// batch under a lock that appends also need) answers in bounded time.
const readMaxBytes = 4 << 20

// headerNumPending is set by the server on each message of a batched direct
// get: how many matching messages follow it.
const headerNumPending = "Nats-Num-Pending"
