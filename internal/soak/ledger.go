package soak

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/esnats/esnats/stream"
)

// Outcome is an append's outcome as its caller saw it.
type Outcome int

// The outcomes of an append.
const (
	// Acked: the append returned without error; its events must be stored,
	// each exactly once.
	Acked Outcome = iota + 1
	// Failed: the append returned a definite error (a concurrency conflict,
	// or any other error that is not Indeterminate); none of its events may
	// be stored.
	Failed
	// Indeterminate: the append returned stream.ErrIndeterminate or ended
	// with its context; its events may be stored, all of them once or none.
	Indeterminate
)

// String returns "acked", "failed" or "indeterminate".
func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case Failed:
		return "failed"
	case Indeterminate:
		return "indeterminate"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Classify returns the outcome of an append that returned err: Acked for
// nil; Indeterminate for stream.ErrIndeterminate and for errors that stem
// from a context ending (the append may have been in flight); Failed for
// every other error. The esnats contract (docs/appends.md) is that only
// ErrIndeterminate leaves the outcome open; counting context errors as
// indeterminate is conservative: they are checked as "at most once" rather
// than "absent".
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return Acked
	case errors.Is(err, stream.ErrIndeterminate),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return Indeterminate
	}
	return Failed
}

// Kind is how an attempt appended.
type Kind string

// Kinds of attempts.
const (
	// KindUpdate is one attempt of aggregate.Repository.Update (a command
	// that conflicts runs again: one attempt per run).
	KindUpdate Kind = "update"
	// KindAppend is a stream Append with ExpectRevision.
	KindAppend Kind = "append"
	// KindBatch is a stream AppendBatch over two aggregates.
	KindBatch Kind = "batch"
)

// Write is one aggregate's part of an attempt.
type Write struct {
	Aggregate stream.Aggregate
	// Keys are the keys (Added.Key) of the events appended to it, in order.
	Keys []string
	// Result is where the store said the events landed, when it said so
	// (acknowledged raw appends; nil for repository commands, which do not
	// return it).
	Result *stream.AppendResult
	// IDs says that the events' ids (Nats-Msg-Id) were set to their keys.
	IDs bool
}

// Attempt is one append as its caller saw it: what it tried to write and
// its outcome. All of an attempt's events are appended atomically.
type Attempt struct {
	ID      string // unique: the Added.Attempt of its events
	Kind    Kind
	Writes  []Write
	Outcome Outcome
	Err     string // the error, for reports; "" when acked
	// Duplicate: the store reported the events as stored by an earlier
	// try with the same event ids (AppendResult.Duplicate).
	Duplicate bool
	// Retries: how many times the same events were sent again after an
	// indeterminate outcome (the outcome is that of the last send).
	Retries int
}

// Events returns the number of events the attempt tried to append.
func (a *Attempt) Events() int {
	n := 0
	for _, w := range a.Writes {
		n += len(w.Keys)
	}
	return n
}

// Ledger records every attempt's outcome, for the checker. It is safe for
// concurrent use.
type Ledger struct {
	prefix string
	next   atomic.Uint64

	mu       sync.Mutex
	attempts []*Attempt

	acked, ackedEvents, failed, indeterminate atomic.Int64
}

// NewLedger returns an empty ledger whose attempt ids start with prefix
// (letters, digits, '-' and '_'; it keeps ids unique across ledgers writing
// to the same store).
func NewLedger(prefix string) *Ledger { return &Ledger{prefix: prefix} }

// NewID returns a new, unique attempt id. Ids are short (they are part of
// event ids, at most 64 bytes).
func (l *Ledger) NewID() string {
	return fmt.Sprintf("%s%d", l.prefix, l.next.Add(1))
}

// Add records a settled attempt.
func (l *Ledger) Add(a Attempt) {
	a.Writes = slices.Clone(a.Writes)
	l.mu.Lock()
	l.attempts = append(l.attempts, &a)
	l.mu.Unlock()
	switch a.Outcome {
	case Acked:
		l.acked.Add(1)
		l.ackedEvents.Add(int64(a.Events()))
	case Failed:
		l.failed.Add(1)
	case Indeterminate:
		l.indeterminate.Add(1)
	}
}

// Attempts returns the recorded attempts, in the order they were added
// (the slice is the caller's; the attempts must not be modified).
func (l *Ledger) Attempts() []*Attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.attempts)
}

// Counts returns how many attempts were acknowledged (and their events),
// failed and indeterminate so far.
func (l *Ledger) Counts() (acked, ackedEvents, failed, indeterminate int64) {
	return l.acked.Load(), l.ackedEvents.Load(), l.failed.Load(), l.indeterminate.Load()
}
