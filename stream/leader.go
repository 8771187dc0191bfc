package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Consistent reads go to the stream leader through the JetStream API
// ($JS.API.STREAM.MSG.GET), never to a direct-get replica that may lag: the
// append path uses them to learn what landed after an ambiguous failure.

type msgGetRequest struct {
	Seq        uint64 `json:"seq,omitempty"`
	NextBySubj string `json:"next_by_subj,omitempty"`
	LastBySubj string `json:"last_by_subj,omitempty"`
}

type msgGetResponse struct {
	Type    string              `json:"type"`
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

const (
	codeMessageNotFound = 10037
	codeStreamNotFound  = 10059
)

// leaderGet fetches one message from the stream leader. It returns
// (nil, nil) when no message matches. A leader election in progress (no
// responders, 503) is waited out for a few attempts. Each request waits at
// most the JetStream default timeout and one that timed out is sent again
// (at most jsapi.MaxAttempts times in all) while ctx lasts: during a
// fail-over a node that sees a leader but is not it drops the request
// without an answer, while the new leader is usually up within a fraction
// of a second. A request never answered (a missing permission) ends after
// those attempts even without a deadline.
func (s *Store) leaderGet(ctx context.Context, req msgGetRequest) (*rawMessage, error) {
	timeouts := 0
	subjects := []string{s.apiPrefix + "STREAM.MSG.GET." + s.cfg.Name}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, s.js.Options().DefaultTimeout)
		d := s.watchSubjects(actx, cancel, func() []string { return subjects })
		m, err := s.leaderGetOnce(actx, req)
		d.stop()
		timedOut := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err != nil {
			if v, denied := d.deniedOn(subjects); denied {
				// Refused, at once: a resend would be refused too.
				return nil, readDenied(err, v)
			}
		}
		if timedOut {
			if timeouts++; timeouts >= jsapi.MaxAttempts {
				return m, err
			}
			if berr := backoff(ctx, 1); berr != nil {
				return m, err
			}
			continue
		}
		var apiErr *jetstream.APIError
		transient := errors.Is(err, nats.ErrNoResponders) || errors.As(err, &apiErr) && apiErr.Code == 503
		if !transient || attempt >= 4 {
			return m, err
		}
		if berr := backoff(ctx, attempt+2); berr != nil {
			return m, err
		}
	}
}

func (s *Store) leaderGetOnce(ctx context.Context, req msgGetRequest) (*rawMessage, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"STREAM.MSG.GET."+s.cfg.Name, body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("JetStream API did not answer (no responders): %w", err)
		}
		return nil, err
	}
	var r msgGetResponse
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("invalid JetStream API response: %w", err)
	}
	if r.Error != nil {
		switch r.Error.ErrorCode {
		case codeMessageNotFound:
			return nil, nil
		case codeStreamNotFound:
			return nil, fmt.Errorf("%w: stream %q does not exist", ErrNotFound, s.cfg.Name)
		}
		return nil, r.Error
	}
	if r.Message == nil {
		return nil, errors.New("invalid JetStream API response: no message")
	}
	m := &rawMessage{Subject: r.Message.Subject, Sequence: r.Message.Sequence, Data: r.Message.Data}
	if len(r.Message.Header) > 0 {
		m.Header, err = nats.DecodeHeadersMsg(r.Message.Header)
		if err != nil {
			return nil, &Error{Op: "read", Subject: m.Subject, Sequence: m.Sequence, Err: fmt.Errorf("%w: bad headers: %v", ErrDecode, err)}
		}
	}
	return m, nil
}

// revisionOf returns the aggregate revision recorded in a stored message.
func revisionOf(m *rawMessage) (Revision, error) {
	v, err := strconv.ParseUint(m.Header.Get(HeaderVersion), 10, 64)
	if err != nil || v == 0 {
		return Revision{}, &Error{Op: "read", Subject: m.Subject, Sequence: m.Sequence,
			Err: fmt.Errorf("%w: missing or invalid %s header %q", ErrDecode, HeaderVersion, m.Header.Get(HeaderVersion))}
	}
	return Revision{Version: v, Sequence: m.Sequence}, nil
}

// LastRevision returns the aggregate's current revision (the version and
// sequence of its last event), or the zero Revision when it has no events. It
// costs one round trip to the stream leader, so the answer is never stale.
// Errors: ErrInvalidID / ErrInvalidName for a bad aggregate; ErrNotFound
// when the stream does not exist; ErrDecode when the last message has no
// valid version header; ErrPermissionDenied (also
// nats.ErrPermissionViolation), at once, when the connection may not
// publish to the stream's STREAM.MSG.GET API subject.
func (s *Store) LastRevision(ctx context.Context, agg Aggregate) (Revision, error) {
	filter, err := s.AggregateSubject(agg)
	if err != nil {
		return Revision{}, err
	}
	return s.lastRevision(ctx, filter)
}

func (s *Store) lastRevision(ctx context.Context, filter string) (Revision, error) {
	m, err := s.leaderGet(ctx, msgGetRequest{LastBySubj: filter})
	if err != nil {
		return Revision{}, wrapOp("read", filter, err)
	}
	if m == nil {
		return Revision{}, nil
	}
	return revisionOf(m)
}

// wrapOp wraps err in *Error unless it already is one.
func wrapOp(op, subject string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Op: op, Subject: subject, Err: err}
}
