package stream

import "time"

// AppendOption changes one Append or AppendBatch call.
type AppendOption func(*appendOptions)

type appendOptions struct {
	correlationID string
	causationID   string
	metadata      map[string]string
	maxAttempts   int
	now           func() time.Time
}

// WithCorrelationID sets the correlation id of every appended event that has
// none of its own.
func WithCorrelationID(id string) AppendOption {
	return func(o *appendOptions) { o.correlationID = id }
}

// WithCausationID sets the causation id of every appended event that has
// none of its own.
func WithCausationID(id string) AppendOption {
	return func(o *appendOptions) { o.causationID = id }
}

// WithMetadata adds user metadata to every appended event; an event's own
// Metadata wins for the same key.
func WithMetadata(md map[string]string) AppendOption {
	return func(o *appendOptions) { o.metadata = md }
}

// WithMaxAttempts bounds how many times an append is sent when the server
// does not answer (timeouts, lost connections) and, with ExpectAny, when a
// concurrent writer gets in first. Default 5. While the stream cannot take
// the append at all (no responders or 503 while its leader is elected) the
// append keeps resending, with backoff, for as long as n unanswered attempts
// would take (n times the JetStream timeout, 25s by default) or until its
// context ends. A stream that is missing, or no longer covers the aggregate's
// subject, fails at once with ErrNotFound. Every resend carries the same
// event ids, so nothing is stored twice.
func WithMaxAttempts(n int) AppendOption {
	return func(o *appendOptions) {
		if n > 0 {
			o.maxAttempts = n
		}
	}
}

func buildAppendOptions(opts []AppendOption) appendOptions {
	o := appendOptions{maxAttempts: 5, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// ReadOption changes one Load or ReadAll call.
type ReadOption func(*readOptions)

type readOptions struct {
	fromSeq     uint64
	fromVersion uint64
	// after is set by AfterRevision: Load requires the first event read to
	// be after.Version+1.
	after      *Revision
	batch      int
	aggTypes   []string
	eventTypes []string
	skipBad    func(error) bool
	limit      int
}

// FromSequence starts reading at stream sequence seq (inclusive). For Load
// from a sequence above 1 the version of the first event is not checked
// (nothing says what it should be); to load the events after a snapshot,
// prefer AfterRevision, which checks it. It replaces an earlier
// AfterRevision.
func FromSequence(seq uint64) ReadOption {
	return func(o *readOptions) { o.fromSeq, o.after = seq, nil }
}

// AfterRevision makes Load read the aggregate's events after revision r:
// from stream sequence r.Sequence+1, requiring the first event read to be
// version r.Version+1 (then contiguous, as always). It is the tail after a
// snapshot taken at r. A first event of another version is ErrDecode,
// naming its subject and sequence: the aggregate is not where r says (a
// snapshot that lies, or events removed). AfterRevision(Revision{}) is a
// load from the beginning. It replaces an earlier FromSequence. ReadAll
// reads from r.Sequence+1 and checks nothing.
func AfterRevision(r Revision) ReadOption {
	return func(o *readOptions) { o.fromSeq, o.after = r.Sequence+1, &r }
}

// FromVersion makes Load skip the aggregate's events before version v. When
// the sequence of an earlier version is known, combine it with FromSequence
// to avoid reading the skipped events at all.
func FromVersion(v uint64) ReadOption {
	return func(o *readOptions) { o.fromVersion = v }
}

// WithBatchSize sets how many events one read round trip asks for. Default
// 1000 (the server also stops a batch at its max_pending bytes).
func WithBatchSize(n int) ReadOption {
	return func(o *readOptions) {
		if n > 0 {
			o.batch = n
		}
	}
}

// WithAggregateTypes makes ReadAll return only events of these aggregate
// types. With one type the server filters; with several, the client does.
func WithAggregateTypes(types ...string) ReadOption {
	return func(o *readOptions) { o.aggTypes = types }
}

// WithEventTypes makes ReadAll return only events of these types. The event
// type is a header, so the client filters (see docs/wire-format.md).
func WithEventTypes(types ...string) ReadOption {
	return func(o *readOptions) { o.eventTypes = types }
}

// WithLimit stops a read after n events. Default: no limit.
func WithLimit(n int) ReadOption {
	return func(o *readOptions) { o.limit = n }
}

// SkipUndecodable makes a read report an event that cannot be decoded to
// fn and go on, instead of ending the read with the error. fn returns false
// to end the read after all. For tools that must see past a broken event;
// aggregates should not skip events.
func SkipUndecodable(fn func(err error) bool) ReadOption {
	return func(o *readOptions) { o.skipBad = fn }
}

func buildReadOptions(opts []ReadOption) readOptions {
	o := readOptions{batch: 1000}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}
