package stream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Header names of the wire format (docs/wire-format.md). Every event carries
// them; other languages and the nats CLI read and write them as they are.
const (
	HeaderEventID       = "Nats-Msg-Id"           // the event's unique id (JetStream dedupe)
	HeaderEventType     = "Esnats-Type"           // registered event type name
	HeaderVersion       = "Esnats-Version"        // the aggregate's version after this event, decimal
	HeaderTime          = "Esnats-Time"           // RFC 3339 with nanoseconds, UTC
	HeaderContentType   = "Content-Type"          // codec of the body, e.g. application/msgpack
	HeaderSchema        = "Esnats-Schema"         // schema version of the payload, decimal, >= 1
	HeaderCorrelationID = "Esnats-Correlation-Id" // optional
	HeaderCausationID   = "Esnats-Causation-Id"   // optional
	HeaderMetaPrefix    = "Esnats-Meta-"          // user metadata: one header per key
	HeaderTraceParent   = "traceparent"           // W3C trace context, optional
	HeaderTraceState    = "tracestate"            // W3C trace context, optional
)

// MaxEventIDLength is the longest event id (Nats-Msg-Id) accepted.
const MaxEventIDLength = 128

// TraceContext is a W3C trace context (https://www.w3.org/TR/trace-context/)
// carried in event headers so that consumers can link their work to the
// command that wrote the event.
type TraceContext struct {
	TraceParent string
	TraceState  string
}

type traceKey struct{}

// ContextWithTrace returns a context carrying tc; events appended with it
// store tc in their traceparent and tracestate headers. Tracing integrations
// (OpenTelemetry) set it; plain callers rarely need to.
func ContextWithTrace(ctx context.Context, tc TraceContext) context.Context {
	return context.WithValue(ctx, traceKey{}, tc)
}

// TraceFromContext returns the trace context set by ContextWithTrace.
func TraceFromContext(ctx context.Context) (TraceContext, bool) {
	tc, ok := ctx.Value(traceKey{}).(TraceContext)
	return tc, ok && tc.TraceParent != ""
}

// subjects derives subjects of one store. Layout (wire format v1): one
// literal subject per aggregate instance,
//
//	<prefix>.<aggregateType>.<EncodeID(aggregateID)>
//
// The event type is a header, not a subject token: measured on nats-server
// 2.15 with 1M events over 100k aggregates, loading an aggregate by a literal
// subject is 4-10x faster than by a wildcard (the file store can skip blocks
// for a wildcard only below 64k subjects), per-subject state is a third
// smaller, and on R3 the server's in-flight guard for the
// expected-last-subject-sequence check only matches literal subjects. See
// docs/wire-format.md.
type subjects struct {
	prefix string // e.g. "orders" or "acme.orders"
}

// aggregate returns the subject of one aggregate's events.
func (s subjects) aggregate(aggType, idToken string) string {
	var b strings.Builder
	b.Grow(len(s.prefix) + len(aggType) + len(idToken) + 2)
	b.WriteString(s.prefix)
	b.WriteByte('.')
	b.WriteString(aggType)
	b.WriteByte('.')
	b.WriteString(idToken)
	return b.String()
}

// all returns the subject filter of the whole store.
func (s subjects) all() string { return s.prefix + ".>" }

// filter returns the subject filter of one aggregate type ("" = all).
func (s subjects) filter(aggType string) string {
	if aggType == "" {
		return s.prefix + ".*.*"
	}
	return s.prefix + "." + aggType + ".*"
}

// parse splits an event subject into its aggregate.
func (s subjects) parse(subject string) (Aggregate, error) {
	rest, ok := strings.CutPrefix(subject, s.prefix)
	if !ok || !strings.HasPrefix(rest, ".") {
		return Aggregate{}, fmt.Errorf("subject is outside the store's subject space %q", s.all())
	}
	typ, tok, ok := strings.Cut(rest[1:], ".")
	if !ok || strings.Contains(tok, ".") {
		return Aggregate{}, fmt.Errorf("subject does not have the form %s.<aggregateType>.<aggregateID>", s.prefix)
	}
	if err := ValidateName("aggregate type", typ); err != nil {
		return Aggregate{}, err
	}
	id, err := DecodeID(tok)
	if err != nil {
		return Aggregate{}, err
	}
	return Aggregate{Type: typ, ID: id}, nil
}

// encodedEvent is one event ready to publish.
type encodedEvent struct {
	msg *nats.Msg
	id  string
}

// eventMeta is what an append adds to every event besides its payload.
type eventMeta struct {
	correlationID string
	causationID   string
	metadata      map[string]string
	trace         TraceContext
	now           time.Time
}

// encodeEvent builds the message for one event at version.
func encodeEvent(reg *Registry, subj subjects, agg Aggregate, idToken string, version uint64, ev EventData, m *eventMeta, maxSize int) (encodedEvent, error) {
	name, schema, data, err := reg.Encode(ev.Data)
	if err != nil {
		return encodedEvent{}, err
	}
	id := ev.ID
	if id == "" {
		id = newEventID()
	} else if err := validateEventID(id); err != nil {
		return encodedEvent{}, err
	}
	corr, caus := ev.CorrelationID, ev.CausationID
	if corr == "" {
		corr = m.correlationID
	}
	if caus == "" {
		caus = m.causationID
	}
	// One map sized for every header and one array holding all their
	// values: two allocations instead of one per header and the map's
	// growth. The send path adds the expected-sequence header, hence the
	// room for one more.
	n := 6 + len(m.metadata) + len(ev.Metadata)
	for _, v := range []string{corr, caus, m.trace.TraceParent, m.trace.TraceState} {
		if v != "" {
			n++
		}
	}
	vals := make([]string, 0, n)
	h := make(nats.Header, n+1)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(HeaderEventID, id)
	set(HeaderEventType, name)
	set(HeaderVersion, strconv.FormatUint(version, 10))
	set(HeaderTime, m.now.Format(time.RFC3339Nano))
	set(HeaderContentType, reg.Codec().ContentType())
	set(HeaderSchema, strconv.Itoa(schema))
	if corr != "" {
		set(HeaderCorrelationID, corr)
	}
	if caus != "" {
		set(HeaderCausationID, caus)
	}
	msg := &nats.Msg{Subject: subj.aggregate(agg.Type, idToken), Header: h}
	for k, v := range m.metadata {
		if _, own := ev.Metadata[k]; !own {
			set(HeaderMetaPrefix+k, v)
		}
	}
	for k, v := range ev.Metadata {
		if err := validateMetaKey(k); err != nil {
			return encodedEvent{}, err
		}
		set(HeaderMetaPrefix+k, v)
	}
	if m.trace.TraceParent != "" {
		set(HeaderTraceParent, m.trace.TraceParent)
		if m.trace.TraceState != "" {
			set(HeaderTraceState, m.trace.TraceState)
		}
	}
	msg.Data = data
	if err := checkEventSize(msg, maxSize); err != nil {
		return encodedEvent{}, err
	}
	return encodedEvent{msg: msg, id: id}, nil
}

// sendHeaders are the headers the store sets for the server when it sends
// an event, which checkEventSize does not count.
var sendHeaders = [...]string{jetstream.ExpectedLastSubjSeqHeader, jetstreamext.BatchIDHeader, jetstreamext.BatchSeqHeader, jetstreamext.BatchCommitHeader}

// checkEventSize refuses an event larger than maxSize (0: no limit) with
// ErrTooLarge. The headers the store adds for the server on the way out
// (the expected sequence, an atomic batch's) are not counted.
func checkEventSize(msg *nats.Msg, maxSize int) error {
	if maxSize <= 0 {
		return nil
	}
	size := messageSize(msg)
	for _, k := range sendHeaders {
		for _, v := range msg.Header[k] {
			size -= len(k) + len(v) + 4
		}
	}
	if size > maxSize {
		return &Error{Op: "append", Subject: msg.Subject,
			Err: fmt.Errorf("%w: %s event of %d bytes (payload %d) exceeds the store's MaxEventSize of %d bytes", ErrTooLarge, msg.Header.Get(HeaderEventType), size, len(msg.Data), maxSize)}
	}
	return nil
}

// messageSize approximates what the server counts against a stream's
// MaxMsgSize: subject, headers and payload.
func messageSize(m *nats.Msg) int {
	n := len(m.Subject) + len(m.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func validateEventID(id string) error {
	if len(id) > MaxEventIDLength {
		return fmt.Errorf("%w: %.40q... is longer than %d bytes", ErrInvalidEventID, id, MaxEventIDLength)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: %q must be printable ASCII without spaces", ErrInvalidEventID, id)
		}
	}
	return nil
}

func validateMetaKey(k string) error {
	if k == "" || len(k) > 64 {
		return fmt.Errorf("%w: metadata key %q must be 1 to 64 bytes", ErrInvalidName, k)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: metadata key %q may hold only letters, digits, '-' and '_'", ErrInvalidName, k)
		}
	}
	return nil
}

// envelope is what an event message says besides its payload: its subject
// and headers, checked.
type envelope struct {
	agg         Aggregate
	typ         string
	version     uint64
	schema      int
	time        time.Time // zero if absent
	contentType string    // "" if absent
}

// headerFields holds the first value of each header an event message may
// carry, taken in one pass over the header map: a consumer decodes every
// event, and one iteration costs less than a lookup per header name plus an
// iteration for the metadata.
type headerFields struct {
	typ, version, schema, time, contentType   string
	id, correlation, causation, parent, state string
	metadata                                  bool // some Esnats-Meta- header is present
}

func scanHeader(h nats.Header) (f headerFields) {
	for k, v := range h {
		if len(v) == 0 {
			continue
		}
		switch k {
		case HeaderEventType:
			f.typ = v[0]
		case HeaderVersion:
			f.version = v[0]
		case HeaderSchema:
			f.schema = v[0]
		case HeaderTime:
			f.time = v[0]
		case HeaderContentType:
			f.contentType = v[0]
		case HeaderEventID:
			f.id = v[0]
		case HeaderCorrelationID:
			f.correlation = v[0]
		case HeaderCausationID:
			f.causation = v[0]
		case HeaderTraceParent:
			f.parent = v[0]
		case HeaderTraceState:
			f.state = v[0]
		default:
			if strings.HasPrefix(k, HeaderMetaPrefix) {
				f.metadata = true
			}
		}
	}
	return f
}

// parseEnvelope checks an event message's subject and headers (everything
// but its payload and whether its type is registered). The error wraps
// ErrDecode.
func parseEnvelope(subj subjects, subject string, f *headerFields) (envelope, error) {
	agg, err := subj.parse(subject)
	if err != nil {
		return envelope{}, fmt.Errorf("%w: %s", ErrDecode, errText(err))
	}
	env := envelope{agg: agg, typ: f.typ, schema: 1, contentType: f.contentType}
	if env.typ == "" {
		return envelope{}, fmt.Errorf("%w: missing %s header (not written by esnats?)", ErrDecode, HeaderEventType)
	}
	if err := ValidateName("event type", env.typ); err != nil {
		return envelope{}, fmt.Errorf("%w: invalid %s header: %s", ErrDecode, HeaderEventType, errText(err))
	}
	env.version, err = strconv.ParseUint(f.version, 10, 64)
	if err != nil || env.version == 0 {
		return envelope{}, fmt.Errorf("%w: missing or invalid %s header %q", ErrDecode, HeaderVersion, f.version)
	}
	if s := f.schema; s != "" {
		env.schema, err = strconv.Atoi(s)
		if err != nil || env.schema < 1 {
			return envelope{}, fmt.Errorf("%w: invalid %s header %q", ErrDecode, HeaderSchema, s)
		}
	}
	if s := f.time; s != "" {
		env.time, err = time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return envelope{}, fmt.Errorf("%w: invalid %s header %q", ErrDecode, HeaderTime, s)
		}
	}
	return env, nil
}

// CheckEvent checks a message of an event store as Load, ReadAll,
// Store.Decode and consumers check it before they decode its payload, and
// needs no registry: prefix is the store's subject prefix (Config.Subject,
// by default the store name), subject the message's subject and sequence
// its stream sequence (0 if unknown; it is only named in the error). It
// checks that the subject is <prefix>.<aggregateType>.<aggregateID> with a
// valid type and id token, and the headers Esnats-Type (present, a valid
// name), Esnats-Version (a number >= 1), Esnats-Schema (absent, or a number
// >= 1) and Esnats-Time (absent, or RFC 3339). The error is an *Error
// (Op "decode") naming subject and sequence and wrapping ErrDecode, with the
// same text a read would give.
//
// A nil error does not say that the payload decodes, nor that the event
// type is registered: decoding needs the application's registry (a message
// that passes CheckEvent and that Registry.Decode decodes is what a read
// returns). Tools without the registry, such as the esnats command, use it
// to tell why a message is not an event while still showing its payload.
func CheckEvent(prefix, subject string, sequence uint64, header nats.Header) error {
	f := scanHeader(header)
	if _, err := parseEnvelope(subjects{prefix: prefix}, subject, &f); err != nil {
		return &Error{Op: "decode", Subject: subject, Sequence: sequence, Err: err}
	}
	return nil
}

// rawMessage is a stored message as read from the server or the memory store.
type rawMessage struct {
	Subject  string
	Sequence uint64
	Header   nats.Header
	Data     []byte
}

// decodeEvent turns a stored message into an Event. Errors are *Error values
// naming the subject and sequence, wrapping ErrDecode, ErrUnknownEventType or
// ErrSchemaVersion.
func decodeEvent(reg *Registry, subj subjects, m rawMessage) (*Event, error) {
	fail := func(err error) (*Event, error) {
		return nil, &Error{Op: "decode", Subject: m.Subject, Sequence: m.Sequence, Err: err}
	}
	f := scanHeader(m.Header)
	env, err := parseEnvelope(subj, m.Subject, &f)
	if err != nil {
		return fail(err)
	}
	data, err := reg.Decode(env.typ, env.schema, env.contentType, m.Data)
	if err != nil {
		return fail(err)
	}
	ev := &Event{
		ID:            f.id,
		Type:          env.typ,
		Aggregate:     env.agg,
		Version:       env.version,
		Sequence:      m.Sequence,
		Subject:       m.Subject,
		Time:          env.time,
		SchemaVersion: env.schema,
		ContentType:   env.contentType,
		CorrelationID: f.correlation,
		CausationID:   f.causation,
		TraceParent:   f.parent,
		TraceState:    f.state,
		Data:          data,
	}
	if f.metadata {
		for k, v := range m.Header {
			if name, ok := strings.CutPrefix(k, HeaderMetaPrefix); ok && len(v) > 0 {
				if ev.Metadata == nil {
					ev.Metadata = make(map[string]string)
				}
				ev.Metadata[name] = v[0]
			}
		}
	}
	return ev, nil
}
