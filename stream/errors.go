package stream

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Every error returned by this package that stems from one of
// these conditions matches it with errors.Is; most are wrapped in an *Error
// that names the operation, subject and sequence involved.
var (
	// ErrConflict reports that an append's expectation did not hold: another
	// writer appended to the aggregate first. The error is a *ConflictError
	// carrying the aggregate and, where known, its actual revision. Reload and
	// retry the command.
	ErrConflict = errors.New("esnats: concurrency conflict")

	// ErrNotFound reports that something looked up does not exist (an
	// aggregate with no events when one was required, a stream, a message).
	ErrNotFound = errors.New("esnats: not found")

	// ErrUnknownEventType reports an event type name or Go type that is not
	// registered on the Registry in use.
	ErrUnknownEventType = errors.New("esnats: unknown event type")

	// ErrInvalidID reports an aggregate id that cannot be stored: empty,
	// invalid UTF-8, or longer than MaxIDLength bytes.
	ErrInvalidID = errors.New("esnats: invalid aggregate id")

	// ErrInvalidEventID reports an event id (EventData.ID, stored as
	// Nats-Msg-Id) that cannot be used: longer than MaxEventIDLength bytes,
	// not printable ASCII, repeated within one append, or already stored
	// on another aggregate within the duplicate window.
	ErrInvalidEventID = errors.New("esnats: invalid event id")

	// ErrInvalidName reports an invalid aggregate type, event type or store
	// name (see ValidateName).
	ErrInvalidName = errors.New("esnats: invalid name")

	// ErrDecode reports a stored payload or envelope that cannot be decoded:
	// garbage bytes, a missing or malformed header, a content type with no
	// codec. The wrapping *Error names the subject and sequence.
	ErrDecode = errors.New("esnats: cannot decode event")

	// ErrEncode reports an event payload that cannot be encoded.
	ErrEncode = errors.New("esnats: cannot encode event")

	// ErrSchemaVersion reports a stored event whose schema version cannot be
	// brought to the registered one: it is newer than the code knows, or an
	// upcaster for one of the steps is missing.
	ErrSchemaVersion = errors.New("esnats: unsupported event schema version")

	// ErrTooLarge reports an event larger than the store's MaxEventSize (or
	// the server's max payload).
	ErrTooLarge = errors.New("esnats: event too large")

	// ErrTooManyEvents reports an append of more events than one atomic batch
	// can hold (MaxBatch).
	ErrTooManyEvents = errors.New("esnats: too many events in one append")

	// ErrIndeterminate reports that an append's outcome could not be
	// determined (the server did not answer and could not be asked what
	// landed before the context ended). The events may or may not be stored;
	// retrying the same Append with the same event ids is safe: it never
	// stores them twice.
	ErrIndeterminate = errors.New("esnats: append outcome unknown")

	// ErrPermissionDenied reports that the server refused an append for
	// lack of permission to publish to one of its subjects (the
	// connection's user may not publish there). A refused publish is never
	// stored, so the outcome is known: nothing was written, and the error
	// is never ErrIndeterminate. The error also matches
	// nats.ErrPermissionViolation, and its text names the subject and the
	// server's notice. The server reports a refusal only asynchronously on
	// the connection (nc.LastError() and the nats.ErrorHandler); the store
	// watches for it while it waits for the acknowledgement and returns as
	// soon as it arrives, without resending.
	ErrPermissionDenied = errors.New("esnats: permission denied")

	// ErrStoreConfig reports a server or an existing stream that cannot host
	// the store (server older than 2.12, stream configured incompatibly).
	ErrStoreConfig = errors.New("esnats: incompatible store configuration")
)

// Error describes a failed operation on the event store. It wraps one of the
// sentinel errors above (or an underlying NATS error) and names where it
// happened. Use errors.As to get it and errors.Is to test the cause.
type Error struct {
	Op       string // operation: "append", "load", "read", "decode", "setup", ...
	Subject  string // subject involved, if any
	Sequence uint64 // stream sequence involved, 0 if none
	Err      error  // underlying cause
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("esnats: ")
	b.WriteString(e.Op)
	if e.Subject != "" {
		b.WriteString(" ")
		b.WriteString(e.Subject)
	}
	if e.Sequence != 0 {
		b.WriteString(" at sequence ")
		b.WriteString(strconv.FormatUint(e.Sequence, 10))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(errText(e.Err))
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// bare wraps err so that its text loses a leading "esnats: ", for an
// error quoted inside another esnats error (whose text has the prefix
// already): errors.Is and errors.As still see err.
func bare(err error) error {
	if err == nil {
		return nil
	}
	return bareError{err}
}

type bareError struct{ err error }

func (e bareError) Error() string { return errText(e.err) }
func (e bareError) Unwrap() error { return e.err }

// errText is err's text without a leading "esnats: ".
func errText(err error) string { return strings.TrimPrefix(err.Error(), "esnats: ") }

// ConflictError is the error returned when an append's expectation does not
// hold. It matches ErrConflict.
type ConflictError struct {
	Aggregate Aggregate // the aggregate appended to
	Expected  Revision  // what the writer expected
	// Actual is the aggregate's revision as seen by the server when it
	// rejected the append, if ActualKnown. Sequence may be known without the
	// version when the server reported the position but it could not be read.
	Actual      Revision
	ActualKnown bool
}

func (e *ConflictError) Error() string {
	s := fmt.Sprintf("esnats: concurrency conflict on %s: expected %s", e.Aggregate, e.Expected)
	if e.ActualKnown {
		s += ", actual " + e.Actual.String()
	}
	return s
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }
