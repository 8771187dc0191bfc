package kv

import (
	"fmt"
	"strings"
	"time"

	"github.com/esnats/esnats/stream"
)

// FormatVersion is the version of the snapshot value envelope written by
// this package (the "v" field). Get refuses other versions as corrupt.
const FormatVersion = 1

// Snapshot is one aggregate's saved state: enough to rebuild the aggregate
// without reading the events it has applied, and to resume reading after
// them.
type Snapshot struct {
	// Aggregate is the aggregate the state belongs to (type and id). It
	// must be valid (stream.Aggregate.Validate).
	Aggregate stream.Aggregate
	// Version is the aggregate version of the last event applied to the
	// state; at least 1.
	Version uint64
	// Sequence is the stream sequence of that event; at least 1. Loading
	// resumes with the events after it.
	Sequence uint64
	// StateType names the state's type, e.g. "cart": a stable name
	// (stream.ValidateName). Code that finds another name ignores the
	// snapshot.
	StateType string
	// SchemaVersion is the schema version of the encoded state, at least 1.
	// Code whose state schema differs ignores the snapshot.
	SchemaVersion int
	// ContentType names the codec of State, e.g. "application/msgpack"
	// (stream.ContentTypeMsgpack). Must not be empty.
	ContentType string
	// State is the encoded state. Put and Get copy it: neither keeps nor
	// shares the caller's slice.
	State []byte
	// Time is when the snapshot was taken. Put stores it with nanosecond
	// precision and sets it to the current time when zero; Get returns it
	// in UTC (or zero, if another writer stored 0).
	Time time.Time
}

// envelope is the stored form of a Snapshot: a MessagePack map with these
// string keys, in this order. The names are the wire contract; see the
// package documentation.
type envelope struct {
	V         int    `msgpack:"v"`
	AggType   string `msgpack:"agg_type"`
	AggID     string `msgpack:"agg_id"`
	Version   uint64 `msgpack:"version"`
	Seq       uint64 `msgpack:"seq"`
	StateType string `msgpack:"state_type"`
	Schema    int    `msgpack:"schema"`
	CT        string `msgpack:"ct"`
	Time      int64  `msgpack:"time"`
	State     []byte `msgpack:"state"`
}

// Key returns the KV key of agg's snapshot: "<aggregateType>.<escaped id>",
// where the id is escaped by stream.EncodeID (so "alice@example.com" of type
// "user" is "user.alice=40example=2Ecom"). Keys are valid JetStream KV keys,
// ordinary ids stay readable, and distinct aggregates have distinct keys.
//
// The error wraps stream.ErrInvalidName for an invalid aggregate type and
// stream.ErrInvalidID for an invalid id. Key does no I/O and is safe for
// concurrent use.
func Key(agg stream.Aggregate) (string, error) {
	if err := stream.ValidateName("aggregate type", agg.Type); err != nil {
		return "", err
	}
	id, err := stream.EncodeID(agg.ID)
	if err != nil {
		return "", err
	}
	return agg.Type + "." + id, nil
}

// validateSnapshot checks s before any I/O and returns its key.
func validateSnapshot(s *Snapshot) (string, error) {
	key, err := Key(s.Aggregate)
	if err != nil {
		return "", err
	}
	var bad string
	switch {
	case s.Version == 0:
		bad = "Version is 0 (the first event is version 1)"
	case s.Sequence == 0:
		bad = "Sequence is 0 (stream sequences start at 1)"
	case s.SchemaVersion < 1:
		bad = fmt.Sprintf("SchemaVersion %d is below 1", s.SchemaVersion)
	case s.ContentType == "":
		bad = "ContentType is empty"
	}
	if bad == "" {
		if err := stream.ValidateName("state type", s.StateType); err != nil {
			return key, err
		}
		return key, nil
	}
	return key, fmt.Errorf("%w: %s", ErrInvalidSnapshot, bad)
}

// encodeSnapshot returns the envelope of s, which validateSnapshot accepted.
// A zero s.Time is taken as now.
func encodeSnapshot(s *Snapshot) ([]byte, error) {
	t := s.Time
	if t.IsZero() {
		t = time.Now()
	}
	state := s.State
	if state == nil {
		state = []byte{} // always a bin on the wire, never nil
	}
	return stream.Msgpack().Marshal(&envelope{
		V:         FormatVersion,
		AggType:   s.Aggregate.Type,
		AggID:     s.Aggregate.ID,
		Version:   s.Version,
		Seq:       s.Sequence,
		StateType: s.StateType,
		Schema:    s.SchemaVersion,
		CT:        s.ContentType,
		Time:      t.UnixNano(),
		State:     state,
	})
}

// decodeSnapshot decodes and checks the envelope stored for agg. The error
// wraps ErrCorruptSnapshot and says what is wrong. It never panics, and what
// it allocates is bounded by len(data).
func decodeSnapshot(data []byte, agg stream.Aggregate) (Snapshot, error) {
	var e envelope
	if err := stream.Msgpack().Unmarshal(data, &e); err != nil {
		return Snapshot{}, fmt.Errorf("%w: not a msgpack snapshot envelope: %v", ErrCorruptSnapshot, err)
	}
	var bad string
	switch {
	case e.V == 0:
		bad = "no envelope format version (\"v\")"
	case e.V != FormatVersion:
		bad = fmt.Sprintf("envelope format version %d is not %d", e.V, FormatVersion)
	case e.AggType != agg.Type || e.AggID != agg.ID:
		bad = fmt.Sprintf("it belongs to aggregate %s, not %s", stream.Aggregate{Type: e.AggType, ID: e.AggID}, agg)
	case e.Version == 0:
		bad = "aggregate version is 0"
	case e.Seq == 0:
		bad = "stream sequence is 0"
	case e.Schema < 1:
		bad = fmt.Sprintf("schema version %d is below 1", e.Schema)
	case e.StateType == "":
		bad = "state type is empty"
	case stream.ValidateName("state type", e.StateType) != nil:
		bad = fmt.Sprintf("state type %.64q is not a valid name", e.StateType)
	case e.CT == "":
		bad = "content type is empty"
	}
	if bad != "" {
		return Snapshot{}, fmt.Errorf("%w: %s", ErrCorruptSnapshot, bad)
	}
	var t time.Time
	if e.Time != 0 {
		t = time.Unix(0, e.Time).UTC()
	}
	return Snapshot{
		Aggregate:     agg,
		Version:       e.Version,
		Sequence:      e.Seq,
		StateType:     e.StateType,
		SchemaVersion: e.Schema,
		ContentType:   e.CT,
		State:         e.State,
		Time:          t,
	}, nil
}

// ParseKey is the inverse of Key: it returns the aggregate whose snapshot is
// stored under key. The error wraps stream.ErrInvalidName or
// stream.ErrInvalidID when key is not a snapshot key.
func ParseKey(key string) (stream.Aggregate, error) {
	typ, token, ok := strings.Cut(key, ".")
	if !ok {
		return stream.Aggregate{}, fmt.Errorf("%w: snapshot key %q is not <aggregate type>.<escaped id>", stream.ErrInvalidName, key)
	}
	if err := stream.ValidateName("aggregate type", typ); err != nil {
		return stream.Aggregate{}, err
	}
	id, err := stream.DecodeID(token)
	if err != nil {
		return stream.Aggregate{}, err
	}
	return stream.Aggregate{Type: typ, ID: id}, nil
}

// DecodeSnapshot decodes a value read from a snapshot bucket (for example
// by a tool that lists the bucket) as the snapshot of agg, with the same
// checks as Store.Get. The error wraps ErrCorruptSnapshot and says what is
// wrong. It never panics.
func DecodeSnapshot(data []byte, agg stream.Aggregate) (Snapshot, error) {
	return decodeSnapshot(data, agg)
}
