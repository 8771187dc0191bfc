package kv

import (
	"errors"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors of this package. Errors that stem from an invalid
// aggregate match stream.ErrInvalidName or stream.ErrInvalidID, a snapshot
// too large for the bucket matches stream.ErrTooLarge, a missing bucket
// matches stream.ErrNotFound, and a lost compare-and-set race matches
// stream.ErrConflict. Most errors are an *Error naming the bucket and key.
var (
	// ErrCorruptSnapshot reports a stored snapshot value that cannot be
	// used: not a well-formed envelope, an unknown envelope format version,
	// a required field missing or out of range, or an aggregate that does
	// not match the key it is stored under. Snapshots are a cache: callers
	// log such an error and load the aggregate from its events instead. A
	// later Put replaces the corrupt value.
	ErrCorruptSnapshot = errors.New("esnats: corrupt snapshot")

	// ErrInvalidSnapshot reports a snapshot that Put refuses before any I/O
	// because one of its fields is out of range (see Snapshot).
	ErrInvalidSnapshot = errors.New("esnats: invalid snapshot")

	// ErrCorruptCheckpoint reports a stored checkpoint value that is not a
	// decimal position.
	ErrCorruptCheckpoint = errors.New("esnats: corrupt checkpoint")

	// ErrInvalidConfig reports a Config that Validate refuses.
	ErrInvalidConfig = errors.New("esnats: invalid kv config")
)

// Error describes a failed operation on a snapshot or checkpoint bucket. It
// wraps the cause (one of the sentinels above, a sentinel of package stream,
// or a NATS error) and names the bucket, the key and, when known, the KV
// revision involved. Use errors.As to get it and errors.Is to test the
// cause.
type Error struct {
	Op       string // operation: "get snapshot", "put snapshot", "open bucket", ...
	Bucket   string // KV bucket name ("memory" for a *Memory)
	Key      string // KV key, if any
	Revision uint64 // KV revision of the value involved, 0 if none
	Err      error  // underlying cause
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("esnats: ")
	b.WriteString(e.Op)
	sep := " ("
	field := func(name, value string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteString(" ")
		b.WriteString(value)
		sep = ", "
	}
	if e.Bucket != "" {
		field("bucket", e.Bucket)
	}
	if e.Key != "" {
		field("key", e.Key)
	}
	if e.Revision != 0 {
		field("revision", strconv.FormatUint(e.Revision, 10))
	}
	if sep == ", " {
		b.WriteString(")")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(strings.TrimPrefix(e.Err.Error(), "esnats: "))
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// isCASConflict reports whether err is a lost compare-and-set: the key
// changed (or appeared) since it was read. R1 streams report 10071, R3
// streams 10071 or 10164.
func isCASConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// isTooLarge reports whether err is the client or the server refusing a
// message for its size.
func isTooLarge(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}
