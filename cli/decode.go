package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

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
// what cannot be decoded is reported in DecodeError.
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
	var problems []string
	rest, ok := strings.CutPrefix(subject, prefix+".")
	typ, token, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		problems = append(problems, fmt.Sprintf("subject %q is not <prefix>.<aggregate type>.<id>", subject))
	} else {
		rec.AggregateType = typ
		if id, err := stream.DecodeID(token); err != nil {
			rec.AggregateID = token
			problems = append(problems, err.Error())
		} else {
			rec.AggregateID = id
		}
	}
	if v := hdr.Get(stream.HeaderVersion); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %q: not a number", stream.HeaderVersion, v))
		}
		rec.Version = n
	}
	if v := hdr.Get(stream.HeaderSchema); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %q: not a number", stream.HeaderSchema, v))
		}
		rec.Schema = n
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
	payload, err := a.payloadJSON(rec.Type, rec.Schema, rec.ContentType, data)
	if err != nil {
		problems = append(problems, err.Error())
	}
	rec.Data = payload
	rec.DecodeError = strings.Join(problems, "; ")
	return rec
}

// payloadJSON renders a payload as JSON: with the application's registry
// when it knows the type, else generically by content type.
func (a *app) payloadJSON(typ string, schema int, contentType string, data []byte) (json.RawMessage, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if reg := a.opts.Registry; reg != nil && reg.Has(typ) {
		if schema == 0 {
			schema = 1
		}
		v, err := reg.Decode(typ, schema, contentType, data)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("rendering %s as JSON: %w", typ, err)
		}
		return b, nil
	}
	switch contentType {
	case stream.ContentTypeJSON:
		if !json.Valid(data) {
			return quoted(data), fmt.Errorf("payload is not valid JSON")
		}
		return append(json.RawMessage(nil), data...), nil
	case stream.ContentTypeMsgpack, "":
		var v any
		if err := msgpack.Unmarshal(data, &v); err != nil {
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
