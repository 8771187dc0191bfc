package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/stream"
)

// eventRecord is one stored event as the CLI shows it (and prints with
// --json): the wire format's headers decoded, the payload as JSON.
type eventRecord struct {
	Sequence      uint64            `json:"seq"`
	Time          time.Time         `json:"time"`
	Subject       string            `json:"subject"`
	AggregateType string            `json:"aggregate_type"`
	AggregateID   string            `json:"aggregate_id"`
	Version       uint64            `json:"version"`
	Type          string            `json:"type"`
	ID            string            `json:"id"`
	Schema        int               `json:"schema,omitempty"`
	ContentType   string            `json:"content_type,omitempty"`
	CorrelationID string            `json:"correlation_id,omitempty"`
	CausationID   string            `json:"causation_id,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	TraceParent   string            `json:"traceparent,omitempty"`
	Size          int               `json:"size"`
	Data          json.RawMessage   `json:"data,omitempty"`
	// DecodeError says why the payload (or a header) could not be decoded;
	// the event is still shown, nothing is skipped.
	DecodeError string `json:"decode_error,omitempty"`
}

// storeInfo is what the CLI needs to know of a store's stream.
type storeInfo struct {
	info   *jetstream.StreamInfo
	prefix string // subject prefix: events are <prefix>.<type>.<id>
}

// isStore reports whether a stream looks like an esnats event store: one
// subject space "<prefix>.>", limits retention, atomic publish and direct
// get (what stream.NewStore creates).
func isStore(cfg jetstream.StreamConfig) (prefix string, ok bool) {
	if len(cfg.Subjects) != 1 || !strings.HasSuffix(cfg.Subjects[0], ".>") ||
		cfg.Retention != jetstream.LimitsPolicy || !cfg.AllowAtomicPublish || !cfg.AllowDirect {
		return "", false
	}
	return strings.TrimSuffix(cfg.Subjects[0], ".>"), true
}

// lookupStore finds the stream of store name, with errors that say what
// exists instead.
func lookupStore(ctx context.Context, c *connection, name string) (*storeInfo, error) {
	if err := stream.ValidateName("store name", name); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	st, err := c.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		names, _ := storeNames(ctx, c)
		hint := "there are no event stores"
		if len(names) > 0 {
			hint = "event stores there: " + strings.Join(names, ", ")
		}
		return nil, withCode(ExitNotFound, fmt.Errorf("no event store %q on %s (%s)", name, c.url, hint))
	}
	if err != nil {
		return nil, fmt.Errorf("looking up store %q: %w", name, err)
	}
	info := st.CachedInfo()
	prefix, ok := isStore(info.Config)
	if !ok {
		return nil, withCode(ExitNotFound, fmt.Errorf("stream %q on %s is not an esnats event store (subjects %v; a store has one subject space <prefix>.>, atomic publish and direct get)", name, c.url, info.Config.Subjects))
	}
	return &storeInfo{info: info, prefix: prefix}, nil
}

// storeNames lists the names of the streams that look like event stores.
func storeNames(ctx context.Context, c *connection) ([]string, error) {
	var names []string
	lister := c.js.ListStreams(ctx)
	for info := range lister.Info() {
		if _, ok := isStore(info.Config); ok {
			names = append(names, info.Config.Name)
		}
	}
	sort.Strings(names)
	return names, lister.Err()
}

// decodeEvent turns one message of a store into a record. It never fails:
// what cannot be decoded is reported in DecodeError and the message is
// still shown, with what could be read of it.
//
// DecodeError is the first reason a read of the store would refuse the
// message, in the store's words without the "esnats: " prefix: the subject
// and header checks of stream.CheckEvent (the store's own), then, with the
// application's registry (Options.Registry), an unregistered event type or
// a payload the registry cannot decode. Without a registry the payload is
// decoded generically by its content type (msgpack or JSON), and an event
// type is not checked against any registry: a payload that decodes so gets
// no reason, although a store whose registry lacks the type would refuse it.
func (a *app) decodeEvent(prefix, subject string, seq uint64, stored time.Time, hdr nats.Header, data []byte) eventRecord {
	rec := eventRecord{
		Sequence:      seq,
		Time:          stored,
		Subject:       subject,
		Type:          hdr.Get(stream.HeaderEventType),
		ID:            hdr.Get(stream.HeaderEventID),
		ContentType:   hdr.Get(stream.HeaderContentType),
		CorrelationID: hdr.Get(stream.HeaderCorrelationID),
		CausationID:   hdr.Get(stream.HeaderCausationID),
		TraceParent:   hdr.Get(stream.HeaderTraceParent),
		Size:          len(data),
	}
	// Show what can be read, leniently: the checks come after.
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if typ, token, ok2 := strings.Cut(rest, "."); ok && ok2 {
		rec.AggregateType = typ
		rec.AggregateID = token
		if id, err := stream.DecodeID(token); err == nil {
			rec.AggregateID = id
		}
	}
	if v := hdr.Get(stream.HeaderVersion); v != "" {
		rec.Version, _ = strconv.ParseUint(v, 10, 64)
	}
	if v := hdr.Get(stream.HeaderSchema); v != "" {
		rec.Schema, _ = strconv.Atoi(v)
	}
	if v := hdr.Get(stream.HeaderTime); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			rec.Time = t
		}
	}
	for k, vs := range hdr {
		if key, ok := strings.CutPrefix(k, stream.HeaderMetaPrefix); ok && len(vs) > 0 {
			if rec.Metadata == nil {
				rec.Metadata = map[string]string{}
			}
			rec.Metadata[key] = vs[0]
		}
	}

	envErr := stream.CheckEvent(prefix, subject, seq, hdr)
	payload, err := a.payloadJSON(rec.Type, rec.Schema, rec.ContentType, data, envErr == nil)
	rec.Data = payload
	switch {
	case envErr != nil:
		var se *stream.Error
		if errors.As(envErr, &se) {
			envErr = se.Err // the record names subject and sequence
		}
		rec.DecodeError = reason(envErr)
	case err != nil:
		rec.DecodeError = reason(err)
	}
	return rec
}

// reason is an error's text for DecodeError: without the "esnats: "
// prefix, which the command's own errors carry.
func reason(err error) string { return strings.TrimPrefix(err.Error(), "esnats: ") }

// payloadJSON renders a payload as JSON: with the application's registry
// when there is one and registered says the type may be looked up (the
// message passed stream.CheckEvent), else generically by content type. With
// a registry, a type it does not know is an error (the payload is still
// rendered generically).
func (a *app) payloadJSON(typ string, schema int, contentType string, data []byte, registered bool) (json.RawMessage, error) {
	if reg := a.opts.Registry; reg != nil && registered {
		if !reg.Has(typ) {
			payload, _ := genericJSON(contentType, data)
			return payload, fmt.Errorf("%w: %q is not registered", stream.ErrUnknownEventType, typ)
		}
		if schema == 0 {
			schema = 1
		}
		v, err := reg.Decode(typ, schema, contentType, data)
		if err != nil {
			payload, _ := genericJSON(contentType, data)
			return payload, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("rendering %s as JSON: %w", typ, err)
		}
		return b, nil
	}
	return genericJSON(contentType, data)
}

// genericJSON renders a payload as JSON by its content type alone.
func genericJSON(contentType string, data []byte) (json.RawMessage, error) {
	ct := contentType
	if mt, _, err := mime.ParseMediaType(contentType); err == nil {
		ct = mt
	}
	switch ct {
	case stream.ContentTypeJSON:
		if !json.Valid(data) {
			return quoted(data), fmt.Errorf("payload is not valid JSON")
		}
		return append(json.RawMessage(nil), data...), nil
	case stream.ContentTypeMsgpack, "":
		// The store's codec: it checks declared lengths before it
		// allocates (a 5-byte payload may declare 4 billion elements).
		var v any
		if err := stream.Msgpack().Unmarshal(data, &v); err != nil {
			return quoted(data), fmt.Errorf("payload is not valid msgpack: %w", err)
		}
		b, err := json.Marshal(jsonable(v))
		if err != nil {
			return quoted(data), fmt.Errorf("rendering msgpack payload as JSON: %w", err)
		}
		return b, nil
	default:
		return quoted(data), fmt.Errorf("content type %q is not known to this command (shown as a string)", contentType)
	}
}

// quoted returns data as a JSON string (bytes that are not UTF-8 become
// U+FFFD), so undecodable payloads are still shown.
func quoted(data []byte) json.RawMessage {
	b, _ := json.Marshal(string(data))
	return b
}

// jsonable converts what msgpack decodes into values encoding/json takes:
// maps with non-string keys get string keys.
func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = jsonable(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = jsonable(e)
		}
		return t
	default:
		return v
	}
}

// cell is the payload as a table shows it: the JSON, after the reason it
// could not be decoded if any, shortened unless wide.
func (r eventRecord) cell(wide bool) string {
	data := string(r.Data)
	if r.DecodeError != "" {
		data = "! " + r.DecodeError + " " + data
	}
	if !wide {
		data = truncate(data, 100)
	}
	return data
}
