package stream

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// MemoryStore is an event store held in process memory: for unit tests,
// examples and prototypes that need no NATS server. It implements EventStore
// with the semantics of the JetStream *Store, checked by the same conformance
// suite (package streamtest):
//
//   - one global sequence counter (1, 2, 3, ...), the "stream sequence";
//   - the same subjects (<Config.Subject>.<aggregateType>.<id>),
//     headers, event ids, size limits and encoding as the JetStream store, so
//     an event reads back exactly as it would from the server;
//   - expectations checked like the server checks
//     Nats-Expected-Last-Subject-Sequence: against the stream sequence of the
//     aggregate's last event, atomically with the write;
//   - AppendBatch is all or nothing, its events take consecutive sequences
//     in request order;
//   - event ids are deduplicated within Config.Duplicates (default 2
//     minutes): an append retried with the same event ids returns the
//     original positions with AppendResult.Duplicate set and stores nothing.
//
// Config fields that only make sense for a server (Replicas, MaxAge,
// MaxBytes, Memory, Compression, Description) are validated but otherwise
// ignored: a MemoryStore never deletes events and has no size bound. Its
// events are lost with the value.
//
// All methods are safe for concurrent use. Iterators returned by Load and
// ReadAll read the store in batches (WithBatchSize) and never hold a lock
// while yielding, so the loop body may append to the store.
type MemoryStore struct {
	cfg  Config
	reg  *Registry
	subj subjects
	now  func() time.Time
	// codec is a *Store without a connection, used only for its request
	// validation (prepare) and message building (encode), which use its
	// subj, reg and cfg fields and never the connection. Sharing them keeps
	// both stores byte-for-byte identical on the wire.
	codec *Store
	async *asyncAppender

	mu    sync.RWMutex
	msgs  []memMsg         // msgs[i] has sequence i+1 (a purged one is the zero memMsg)
	byAgg map[string][]int // aggregate subject -> indexes into msgs, ascending
	ids   map[string]memID // Nats-Msg-Id -> where and when it was stored, within the duplicate window
	idq   []memIDEntry     // ids in the order stored, to expire them from ids
}

var _ EventStore = (*MemoryStore)(nil)

// memMsg is one stored message.
type memMsg struct {
	raw rawMessage
	agg string // the aggregate subject it is stored on, "" if its subject has another form
}

// memID is a stored event id in the duplicate window.
type memID struct {
	seq uint64
	at  time.Time
}

type memIDEntry struct {
	id  string
	seq uint64
	at  time.Time
}

// MemoryOption configures a MemoryStore made by NewMemoryStore.
type MemoryOption func(*MemoryStore)

// WithMemoryClock sets the clock of a MemoryStore (default time.Now): it
// stamps appended events (Event.Time) and ages event ids out of the
// duplicate window (Config.Duplicates). Tests set it to move time forward
// without waiting. now must be safe for concurrent use. A nil now keeps the
// default.
func WithMemoryClock(now func() time.Time) MemoryOption {
	return func(m *MemoryStore) {
		if now != nil {
			m.now = now
		}
	}
}

// NewMemoryStore returns an empty in-memory store. cfg is validated as for
// NewStore (Config.Validate: Name and Registry are required, Subject
// defaults to Name) and its defaults apply (Duplicates 2 minutes,
// MaxEventSize 1 MiB). No I/O is done.
func NewMemoryStore(cfg Config, opts ...MemoryOption) (*MemoryStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	subj := subjects{prefix: cfg.Subject}
	m := &MemoryStore{
		cfg:   cfg,
		reg:   cfg.Registry,
		subj:  subj,
		now:   time.Now,
		codec: &Store{cfg: cfg, reg: cfg.Registry, subj: subj},
		async: newAsyncAppender(cfg.MaxPendingAppends),
		byAgg: make(map[string][]int),
		ids:   make(map[string]memID),
	}
	for _, o := range opts {
		if o != nil {
			o(m)
		}
	}
	return m, nil
}

// Name returns the store name (Config.Name).
func (m *MemoryStore) Name() string { return m.cfg.Name }

// Config returns the store's configuration with defaults applied.
func (m *MemoryStore) Config() Config { return m.cfg }

// Registry returns the store's registry.
func (m *MemoryStore) Registry() *Registry { return m.reg }

// SubjectFilter returns the subject filter matching the events of one
// aggregate type ("" = all), as Store.SubjectFilter does.
func (m *MemoryStore) SubjectFilter(aggregateType string) string {
	return m.subj.filter(aggregateType)
}

// AggregateSubject returns the subject holding one aggregate's
// events, or an error (ErrInvalidName, ErrInvalidID) for an invalid
// aggregate, as Store.AggregateSubject does.
func (m *MemoryStore) AggregateSubject(agg Aggregate) (string, error) {
	return m.codec.AggregateSubject(agg)
}

// LastSequence returns the sequence of the last stored message (0 when the
// store is empty).
func (m *MemoryStore) LastSequence() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return uint64(len(m.msgs))
}

// Append stores events for one aggregate atomically if expect holds. It
// behaves like Store.Append: events are numbered from the expected
// revision's version + 1; a retry with the same event ids within the
// duplicate window returns the original positions with Duplicate set.
//
// Errors: ErrInvalidID, ErrInvalidName, ErrInvalidEventID, ErrUnknownEventType, ErrEncode,
// ErrTooLarge, ErrTooManyEvents before anything is stored; *ConflictError
// (ErrConflict) when the expectation does not hold; the context's error,
// wrapped in *Error, when ctx is done before the events are stored.
func (m *MemoryStore) Append(ctx context.Context, agg Aggregate, expect Expectation, events []EventData, opts ...AppendOption) (AppendResult, error) {
	res, err := m.AppendBatch(ctx, []AppendRequest{{Aggregate: agg, Expect: expect, Events: events}}, opts...)
	if err != nil {
		return AppendResult{}, err
	}
	return res[0], nil
}

// AppendBatch stores the events of several aggregates atomically: all of
// them, or none when any expectation fails. Each aggregate may appear once;
// at most MaxBatch events in total. The events take consecutive sequences in
// the order of reqs, and results are in that order. Errors are those of
// Append; a *ConflictError names the first aggregate (in request order)
// found to have moved.
func (m *MemoryStore) AppendBatch(ctx context.Context, reqs []AppendRequest, opts ...AppendOption) ([]AppendResult, error) {
	o := buildAppendOptions(append([]AppendOption{func(o *appendOptions) { o.now = m.now }}, opts...))
	ps, err := m.codec.prepare(reqs)
	if err != nil {
		return nil, err
	}
	meta := eventMeta{correlationID: o.correlationID, causationID: o.causationID, metadata: o.metadata, now: o.now().UTC()}
	if tc, ok := TraceFromContext(ctx); ok {
		meta.trace = tc
	}
	for key := range o.metadata {
		if err := validateMetaKey(key); err != nil {
			return nil, err
		}
	}

	// Every event is encoded (and checked) first, as Store.AppendBatch
	// does before any I/O; ExpectAny's are numbered again from the revision
	// read.
	for _, p := range ps {
		if err := m.codec.encode(p, &meta); err != nil {
			return nil, err
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range ps {
		if p.expect.kind == expectAny {
			if err := ctx.Err(); err != nil {
				return nil, &Error{Op: "read", Subject: p.filter, Err: err}
			}
			if p.rev, err = m.lastRevisionLocked(p.filter); err != nil {
				return nil, err
			}
			if err := m.codec.renumber(p); err != nil {
				return nil, err
			}
		}
	}
	first := ps[0].enc[0].Subject
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "append", Subject: first, Err: err}
	}
	now := m.now()
	m.expireIDsLocked(now)

	// The server checks each aggregate's expected last sequence atomically
	// with the write.
	for _, p := range ps {
		if m.lastSeqLocked(p.filter) != p.rev.Sequence {
			return m.verifyLocked(ps)
		}
	}
	// Expectations hold. An event id stored within the duplicate window
	// makes the server drop the message (a duplicate).
	if res, dup, err := m.duplicateLocked(ps, first); dup {
		return res, err
	}

	firstSeq := uint64(len(m.msgs)) + 1
	for _, p := range ps {
		for _, msg := range p.enc {
			m.storeLocked(msg.Subject, msg.Header, msg.Data, now)
		}
	}
	return results(ps, firstSeq, false), nil
}

// verifyLocked settles an append whose expectation failed, as Store.verify
// does after the server's "wrong last sequence": if the event that follows
// the first aggregate's expected revision is the append's own first event,
// an earlier attempt with the same ids landed; otherwise another writer got
// in first.
func (m *MemoryStore) verifyLocked(ps []*prepared) ([]AppendResult, error) {
	for i, p := range ps {
		next := m.nextLocked(p.filter, p.rev.Sequence+1)
		if next == nil {
			if m.lastSeqLocked(p.filter) == p.rev.Sequence {
				continue // this aggregate's expectation holds
			}
			// The expected revision is ahead of the aggregate (it never
			// had an event at that sequence): a conflict all the same.
		} else if i == 0 && next.Header.Get(HeaderEventID) == p.ids[0] {
			return results(ps, next.Sequence, true), nil
		}
		ce := &ConflictError{Aggregate: p.agg, Expected: p.rev}
		if last, err := m.lastRevisionLocked(p.filter); err == nil {
			ce.Actual, ce.ActualKnown = last, true
		}
		return nil, ce
	}
	// Unreachable: verifyLocked is called when an expectation failed.
	return nil, &Error{Op: "append", Subject: ps[0].enc[0].Subject, Err: fmt.Errorf("%w: expectation failed", ErrConflict)}
}

// duplicateLocked reports whether the append repeats event ids stored within
// the duplicate window. If the append's events are exactly those stored by
// an earlier append (same ids, same aggregates, in the same order), it
// returns that append's positions with Duplicate set. If only some ids were
// stored, or for other aggregates, nothing is stored and an error says so.
func (m *MemoryStore) duplicateLocked(ps []*prepared, first string) ([]AppendResult, bool, error) {
	var dupID string
	var dupSeq uint64
	for _, p := range ps {
		for _, id := range p.ids {
			if e, ok := m.ids[id]; ok {
				dupID, dupSeq = id, e.seq
				break
			}
		}
		if dupID != "" {
			break
		}
	}
	if dupID == "" {
		return nil, false, nil
	}
	if dupID == ps[0].ids[0] {
		if res, ok := m.originalLocked(ps, dupSeq); ok {
			return res, true, nil
		}
	}
	return nil, true, &Error{Op: "append", Subject: first, Sequence: dupSeq,
		Err: fmt.Errorf("event id %q was stored at sequence %d within the duplicate window (%s) by an append with other events: reuse an event id only to retry the same append", dupID, dupSeq, m.cfg.Duplicates)}
}

// originalLocked returns the results of the earlier append whose first event
// is at seq, if it stored exactly ps's events.
func (m *MemoryStore) originalLocked(ps []*prepared, seq uint64) ([]AppendResult, bool) {
	out := make([]AppendResult, len(ps))
	for i, p := range ps {
		r := AppendResult{Aggregate: p.agg, Duplicate: true}
		for j, id := range p.ids {
			if seq == 0 || seq > uint64(len(m.msgs)) {
				return nil, false
			}
			mm := m.msgs[seq-1]
			if mm.agg != p.filter || mm.raw.Header.Get(HeaderEventID) != id {
				return nil, false
			}
			rev, err := revisionOf(&mm.raw)
			if err != nil {
				return nil, false
			}
			if j == 0 {
				r.First = rev
			}
			r.Last = rev
			seq++
		}
		out[i] = r
	}
	return out, true
}

// storeLocked appends one message and returns its sequence.
func (m *MemoryStore) storeLocked(subject string, h nats.Header, data []byte, now time.Time) uint64 {
	seq := uint64(len(m.msgs)) + 1
	mm := memMsg{raw: rawMessage{Subject: subject, Sequence: seq, Header: h, Data: data}, agg: m.aggregateOf(subject)}
	m.msgs = append(m.msgs, mm)
	if mm.agg != "" {
		m.byAgg[mm.agg] = append(m.byAgg[mm.agg], int(seq-1))
	}
	if id := h.Get(HeaderEventID); id != "" {
		m.ids[id] = memID{seq: seq, at: now}
		m.idq = append(m.idq, memIDEntry{id: id, seq: seq, at: now})
	}
	return seq
}

// expireIDsLocked forgets event ids older than the duplicate window.
func (m *MemoryStore) expireIDsLocked(now time.Time) {
	n := 0
	for _, e := range m.idq {
		if now.Sub(e.at) < m.cfg.Duplicates {
			break
		}
		if cur, ok := m.ids[e.id]; ok && cur.seq == e.seq {
			delete(m.ids, e.id)
		}
		n++
	}
	if n > 0 {
		m.idq = slices.Delete(m.idq, 0, n)
	}
}

// aggregateOf returns subject if it has the form of an aggregate's subject
// (<prefix>.<type>.<token>), or "" otherwise. Load reads the messages
// stored on exactly that subject, as the server's subject filter does.
func (m *MemoryStore) aggregateOf(subject string) string {
	rest, ok := strings.CutPrefix(subject, m.subj.prefix+".")
	if !ok {
		return ""
	}
	typ, tok, ok := strings.Cut(rest, ".")
	if !ok || typ == "" || tok == "" || strings.Contains(tok, ".") {
		return ""
	}
	return subject
}

// lastSeqLocked returns the sequence of the last message on the aggregate
// subject, 0 if none.
func (m *MemoryStore) lastSeqLocked(filter string) uint64 {
	idx := m.byAgg[filter]
	if len(idx) == 0 {
		return 0
	}
	return uint64(idx[len(idx)-1]) + 1
}

// nextLocked returns the first message on the aggregate subject
// filter at or after seq, or nil.
func (m *MemoryStore) nextLocked(filter string, seq uint64) *rawMessage {
	idx := m.byAgg[filter]
	i := sort.SearchInts(idx, int(seq)-1)
	if i == len(idx) {
		return nil
	}
	return &m.msgs[idx[i]].raw
}

func (m *MemoryStore) lastRevisionLocked(filter string) (Revision, error) {
	idx := m.byAgg[filter]
	if len(idx) == 0 {
		return Revision{}, nil
	}
	return revisionOf(&m.msgs[idx[len(idx)-1]].raw)
}

// LastRevision returns the aggregate's current revision (the version and
// sequence of its last event), or the zero Revision when it has no events.
// Errors: ErrInvalidID / ErrInvalidName for a bad aggregate; ErrDecode when
// the last message has no valid version header; the context's error when
// ctx is done.
func (m *MemoryStore) LastRevision(ctx context.Context, agg Aggregate) (Revision, error) {
	filter, err := m.AggregateSubject(agg)
	if err != nil {
		return Revision{}, err
	}
	if err := ctx.Err(); err != nil {
		return Revision{}, &Error{Op: "read", Subject: filter, Err: err}
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.lastRevisionLocked(filter)
}

// Load returns the aggregate's events in order, like Store.Load: options
// AfterRevision, FromSequence, FromVersion, WithBatchSize, WithLimit
// (counting the events yielded) and SkipUndecodable apply, and versions are
// checked as Store.Load checks them. An aggregate with no events yields
// nothing.
//
// Errors (yielded with a nil event, after which the iteration ends):
// ErrInvalidID / ErrInvalidName for a bad aggregate; ErrDecode,
// ErrUnknownEventType or ErrSchemaVersion, in an *Error naming subject and
// sequence, for an event that cannot be decoded, and ErrDecode for a
// history that does not start at the version expected or has a gap in the
// versions; the context's error when ctx is done.
func (m *MemoryStore) Load(ctx context.Context, agg Aggregate, opts ...ReadOption) iter.Seq2[*Event, error] {
	o := buildReadOptions(opts)
	filter, err := m.AggregateSubject(agg)
	if err != nil {
		return failed(err)
	}
	return loadEvents(agg, m.read(ctx, filter, true, o), o)
}

// ReadAll returns the store's events in sequence order, like Store.ReadAll:
// from FromSequence (default 1), optionally filtered with
// WithAggregateTypes and WithEventTypes, at most WithLimit events. It reads
// what is stored when each batch is asked for and ends there. Errors are
// those of Load.
func (m *MemoryStore) ReadAll(ctx context.Context, opts ...ReadOption) iter.Seq2[*Event, error] {
	o := buildReadOptions(opts)
	filter, err := readAllFilter(m.subj, o)
	if err != nil {
		return failed(err)
	}
	return filterEvents(m.read(ctx, filter, false, o), o)
}

// read pages through the messages matching filter (an aggregate's subject
// if agg) from o.fromSeq, o.batch at a time, and decodes them. It
// holds the read lock only while copying a page.
func (m *MemoryStore) read(ctx context.Context, filter string, agg bool, o readOptions) iter.Seq2[*Event, error] {
	return func(yield func(*Event, error) bool) {
		seq := max(o.fromSeq, 1)
		for {
			if err := ctx.Err(); err != nil {
				yield(nil, &Error{Op: "read", Subject: filter, Sequence: seq, Err: err})
				return
			}
			raws := m.page(filter, agg, seq, o.batch)
			for _, r := range raws {
				ev, err := decodeEvent(m.reg, m.subj, r)
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
			if len(raws) < o.batch {
				return
			}
			seq = raws[len(raws)-1].Sequence + 1
		}
	}
}

// page copies up to batch messages matching filter from seq on.
func (m *MemoryStore) page(filter string, agg bool, seq uint64, batch int) []rawMessage {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []rawMessage
	if agg {
		idx := m.byAgg[filter]
		for _, i := range idx[sort.SearchInts(idx, int(seq)-1):] {
			if len(out) == batch {
				break
			}
			out = append(out, m.msgs[i].raw)
		}
		return out
	}
	for i := int(seq) - 1; i < len(m.msgs) && len(out) < batch; i++ {
		if subjectMatches(m.msgs[i].raw.Subject, filter) {
			out = append(out, m.msgs[i].raw)
		}
	}
	return out
}

// subjectMatches reports whether the literal subject matches the filter,
// which may hold the wildcards '*' (one token) and '>' (one or more final
// tokens).
func subjectMatches(subject, filter string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subject, ".")
		switch {
		case ft == ">":
			return st != ""
		case ft != "*" && ft != st:
			return false
		case fmore != smore:
			return false
		case !fmore:
			return true
		}
		filter, subject = frest, srest
	}
}

// PutRaw stores a message as another client publishing straight to the
// store's stream would, bypassing all of the store's validation and
// encoding, and returns its sequence. It is meant for tests: writing events
// from another language, or bad input (missing headers, undecodable
// payloads, unknown types, invalid subjects) to check how reads report it.
//
// As the server does, it drops a message whose Nats-Msg-Id header repeats
// an id stored within the duplicate window and returns the sequence of the
// original. header and data are copied. PutRaw panics if subject is not a
// valid publish subject inside the store's subject space
// (<Config.Subject>.>): the server would not store it.
func (m *MemoryStore) PutRaw(subject string, header nats.Header, data []byte) uint64 {
	if !subjectMatches(subject, m.subj.all()) || !validPublishSubject(subject) {
		panic(fmt.Sprintf("esnats: MemoryStore.PutRaw: subject %q is not a valid subject in the store's subject space %q", subject, m.subj.all()))
	}
	var h nats.Header
	if header != nil {
		h = make(nats.Header, len(header))
		for k, vs := range header {
			h[k] = slices.Clone(vs)
		}
	}
	data = slices.Clone(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.expireIDsLocked(now)
	if id := h.Get(HeaderEventID); id != "" {
		if e, ok := m.ids[id]; ok {
			return e.seq
		}
	}
	return m.storeLocked(subject, h, data, now)
}

// validPublishSubject reports whether s can be published to: non-empty
// tokens, no wildcard tokens, no whitespace.
func validPublishSubject(s string) bool {
	if strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
	}
	return true
}
