package stream

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Purge deletes every event of one aggregate from the store (a JetStream
// purge of its subject). It is for data that must go (retention rules, the
// right to be forgotten), not for ordinary deletes: those are events too.
// Sequences of other aggregates are unchanged; the aggregate starts again
// from no events. Errors: ErrInvalidID / ErrInvalidName before any I/O;
// ErrNotFound when the stream does not exist.
func (s *Store) Purge(ctx context.Context, agg Aggregate) error {
	subject, err := s.AggregateSubject(agg)
	if err != nil {
		return err
	}
	st, err := s.js.Stream(ctx, s.cfg.Name)
	if err != nil {
		if isStreamNotFound(err) {
			err = fmt.Errorf("%w: stream %q does not exist", ErrNotFound, s.cfg.Name)
		}
		return &Error{Op: "purge", Subject: subject, Err: err}
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		return &Error{Op: "purge", Subject: subject, Err: err}
	}
	return nil
}

func isStreamNotFound(err error) bool {
	return apiCode(err) == jetstream.JSErrCodeStreamNotFound || errors.Is(err, jetstream.ErrStreamNotFound)
}

// Purge deletes every event of one aggregate, as Store.Purge does.
func (m *MemoryStore) Purge(ctx context.Context, agg Aggregate) error {
	subject, err := m.AggregateSubject(agg)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: "purge", Subject: subject, Err: err}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, i := range m.byAgg[subject] {
		m.msgs[i] = memMsg{} // no subject: matches no filter
	}
	delete(m.byAgg, subject)
	return nil
}
