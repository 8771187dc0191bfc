package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

type decodeTestItem struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// decodeTestMsg is a valid stored event on shop.cart.alice=40example=2Ecom,
// changed by edit.
func decodeTestMsg(t *testing.T, edit func(subject *string, h nats.Header, data *[]byte)) (string, nats.Header, []byte) {
	t.Helper()
	subject := "shop.cart.alice=40example=2Ecom"
	h := nats.Header{
		stream.HeaderEventID:               {"ev-1"},
		stream.HeaderEventType:             {"ItemAdded"},
		stream.HeaderVersion:               {"2"},
		stream.HeaderTime:                  {"2026-01-02T03:04:05.000000006Z"},
		stream.HeaderContentType:           {stream.ContentTypeMsgpack},
		stream.HeaderSchema:                {"1"},
		stream.HeaderMetaPrefix + "tenant": {"acme"},
	}
	data, err := stream.Msgpack().Marshal(decodeTestItem{SKU: "apple", Quantity: 2})
	require.NoError(t, err)
	if edit != nil {
		edit(&subject, h, &data)
	}
	return subject, h, data
}

func decodeSet(k, v string) func(*string, nats.Header, *[]byte) {
	return func(_ *string, h nats.Header, _ *[]byte) {
		if v == "" {
			delete(h, k)
		} else {
			h[k] = []string{v}
		}
	}
}

func decodeSubject(s string) func(*string, nats.Header, *[]byte) {
	return func(subject *string, _ nats.Header, _ *[]byte) { *subject = s }
}

func decodeBody(b []byte) func(*string, nats.Header, *[]byte) {
	return func(_ *string, _ nats.Header, data *[]byte) { *data = b }
}

// The generic decoder of "esnats events" gives the reason a read of the
// store would refuse a message (the store's own checks, stream.CheckEvent,
// then the registry's when it has one) and still shows the message.
func TestDecodeEventReasons(t *testing.T) {
	reg := stream.NewRegistry()
	stream.MustRegister[decodeTestItem](reg, "ItemAdded")
	withReg := &app{opts: Options{Registry: reg}}
	without := &app{}
	stored := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	const (
		envelope  = "cannot decode event: "
		noType    = envelope + "missing Esnats-Type header (not written by esnats?)"
		unknown   = `unknown event type: "NoSuchEvent" is not registered`
		typeSpace = envelope + `invalid Esnats-Type header: invalid name: event type "Item Added" holds ' ' at offset 4; only ASCII letters, digits, '-' and '_' are allowed`
	)
	for _, c := range []struct {
		name string
		mod  func(*string, nats.Header, *[]byte)
		// want is the reason with the registry, wantGeneric without it
		// ("" = none).
		want, wantGeneric string
		data              string // the JSON shown, with the registry ("" = not checked)
	}{
		{name: "valid", data: `{"sku":"apple","quantity":2}`},
		{name: "no headers", mod: func(_ *string, h nats.Header, _ *[]byte) { clear(h) }, want: noType, wantGeneric: noType, data: `{"quantity":2,"sku":"apple"}`},
		{name: "no type", mod: decodeSet(stream.HeaderEventType, ""), want: noType, wantGeneric: noType},
		{name: "no version", mod: decodeSet(stream.HeaderVersion, ""), want: envelope + `missing or invalid Esnats-Version header ""`, wantGeneric: envelope + `missing or invalid Esnats-Version header ""`},
		{name: "version one", mod: decodeSet(stream.HeaderVersion, "one"), want: envelope + `missing or invalid Esnats-Version header "one"`, wantGeneric: envelope + `missing or invalid Esnats-Version header "one"`},
		{name: "version 0", mod: decodeSet(stream.HeaderVersion, "0"), want: envelope + `missing or invalid Esnats-Version header "0"`, wantGeneric: envelope + `missing or invalid Esnats-Version header "0"`},
		{name: "version -1", mod: decodeSet(stream.HeaderVersion, "-1"), want: envelope + `missing or invalid Esnats-Version header "-1"`, wantGeneric: envelope + `missing or invalid Esnats-Version header "-1"`},
		{name: "schema 0", mod: decodeSet(stream.HeaderSchema, "0"), want: envelope + `invalid Esnats-Schema header "0"`, wantGeneric: envelope + `invalid Esnats-Schema header "0"`},
		{name: "schema x", mod: decodeSet(stream.HeaderSchema, "x"), want: envelope + `invalid Esnats-Schema header "x"`, wantGeneric: envelope + `invalid Esnats-Schema header "x"`},
		{name: "schema 99", mod: decodeSet(stream.HeaderSchema, "99"), want: `unsupported event schema version: event type "ItemAdded" has schema version 99, newer than the registered version 1 (written by newer code?)`},
		{name: "bad time", mod: decodeSet(stream.HeaderTime, "yesterday"), want: envelope + `invalid Esnats-Time header "yesterday"`, wantGeneric: envelope + `invalid Esnats-Time header "yesterday"`},
		{name: "unregistered type", mod: decodeSet(stream.HeaderEventType, "NoSuchEvent"), want: unknown, data: `{"quantity":2,"sku":"apple"}`},
		{name: "type that is no name", mod: decodeSet(stream.HeaderEventType, "Item Added"), want: typeSpace, wantGeneric: typeSpace},
		{name: "empty body", mod: decodeBody(nil), want: envelope + `event type "ItemAdded" (schema version 1, application/msgpack): msgpack: unexpected end of data`, wantGeneric: "payload is not valid msgpack: msgpack: unexpected end of data"},
		{name: "garbage body", mod: decodeBody([]byte("\xc1garbage")), want: envelope + `event type "ItemAdded" (schema version 1, application/msgpack): msgpack: invalid code 0xc1 at offset 0`, wantGeneric: "payload is not valid msgpack: msgpack: invalid code 0xc1 at offset 0"},
		{name: "trailing bytes", mod: func(_ *string, _ nats.Header, d *[]byte) { *d = append(*d, 0xc0, 0xc0) }, want: envelope + `event type "ItemAdded" (schema version 1, application/msgpack): msgpack: 2 trailing bytes after the value`, wantGeneric: "payload is not valid msgpack: msgpack: 2 trailing bytes after the value"},
		// A payload that declares 4 billion elements in 5 bytes is refused
		// before anything is allocated, also without a registry.
		{name: "huge declared array", mod: decodeBody([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}), want: envelope + `event type "ItemAdded" (schema version 1, application/msgpack): msgpack: value at offset 0 is truncated`, wantGeneric: "payload is not valid msgpack: msgpack: value at offset 0 is truncated"},
		{name: "huge declared map", mod: decodeBody([]byte{0xdf, 0xff, 0xff, 0xff, 0xff}), want: envelope + `event type "ItemAdded" (schema version 1, application/msgpack): msgpack: value at offset 0 is truncated`, wantGeneric: "payload is not valid msgpack: msgpack: value at offset 0 is truncated"},
		{name: "text/plain", mod: decodeSet(stream.HeaderContentType, "text/plain"), want: envelope + `event type "ItemAdded": no codec for content type "text/plain"`, wantGeneric: `content type "text/plain" is not known to this command (shown as a string)`},
		{name: "JSON with parameters", mod: func(s *string, h nats.Header, d *[]byte) {
			h.Set(stream.HeaderContentType, "application/json; charset=utf-8")
			*d = []byte(`{"sku":"pear","quantity":1}`)
		}, data: `{"sku":"pear","quantity":1}`},
		{name: "another store's subject", mod: decodeSubject("other.cart.x"), want: envelope + `subject is outside the store's subject space "shop.>"`, wantGeneric: envelope + `subject is outside the store's subject space "shop.>"`},
		{name: "two tokens", mod: decodeSubject("shop.cart"), want: envelope + "subject does not have the form shop.<aggregateType>.<aggregateID>", wantGeneric: envelope + "subject does not have the form shop.<aggregateType>.<aggregateID>"},
		{name: "four tokens", mod: decodeSubject("shop.cart.a.b"), want: envelope + "subject does not have the form shop.<aggregateType>.<aggregateID>", wantGeneric: envelope + "subject does not have the form shop.<aggregateType>.<aggregateID>"},
		{name: "bad aggregate type", mod: decodeSubject("shop.c@rt.x"), want: envelope + `invalid name: aggregate type "c@rt" holds '@' at offset 1; only ASCII letters, digits, '-' and '_' are allowed`, wantGeneric: envelope + `invalid name: aggregate type "c@rt" holds '@' at offset 1; only ASCII letters, digits, '-' and '_' are allowed`},
		{name: "bad id escape", mod: decodeSubject("shop.cart.a=ZZ"), want: envelope + `invalid aggregate id: id token has an escape at offset 1 that is not '=' and two uppercase hex digits: "a=ZZ"`, wantGeneric: envelope + `invalid aggregate id: id token has an escape at offset 1 that is not '=' and two uppercase hex digits: "a=ZZ"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			subject, h, data := decodeTestMsg(t, c.mod)
			rec := withReg.decodeEvent("shop", subject, 7, stored, h, data)
			assert.Equal(t, c.want, rec.DecodeError, "with the registry")
			assert.Equal(t, uint64(7), rec.Sequence, "shown")
			assert.Equal(t, subject, rec.Subject)
			assert.Equal(t, len(data), rec.Size)
			if c.data != "" {
				assert.JSONEq(t, c.data, string(rec.Data))
			}
			gen := without.decodeEvent("shop", subject, 7, stored, h, data)
			assert.Equal(t, c.wantGeneric, gen.DecodeError, "without a registry")
			assert.False(t, strings.HasPrefix(rec.DecodeError, "esnats: "), "no prefix")
			for _, r := range []eventRecord{rec, gen} {
				if len(r.Data) > 0 {
					assert.True(t, json.Valid(r.Data), "shown as JSON: %s", r.Data)
				}
			}
		})
	}

	// What can be read is shown, also for a message that is refused.
	subject, h, data := decodeTestMsg(t, decodeSet(stream.HeaderSchema, "x"))
	rec := withReg.decodeEvent("shop", subject, 7, stored, h, data)
	assert.Equal(t, "cart", rec.AggregateType)
	assert.Equal(t, "alice@example.com", rec.AggregateID)
	assert.Equal(t, uint64(2), rec.Version)
	assert.Equal(t, "ItemAdded", rec.Type)
	assert.Equal(t, "ev-1", rec.ID)
	assert.Equal(t, map[string]string{"tenant": "acme"}, rec.Metadata)
	assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), rec.Time)
	assert.JSONEq(t, `{"quantity":2,"sku":"apple"}`, string(rec.Data))
	subject, h, data = decodeTestMsg(t, decodeSubject("shop.cart.a=ZZ"))
	rec = without.decodeEvent("shop", subject, 7, stored, h, data)
	assert.Equal(t, "a=ZZ", rec.AggregateID, "the token when it does not decode")
	subject, h, data = decodeTestMsg(t, decodeSet(stream.HeaderTime, ""))
	rec = without.decodeEvent("shop", subject, 7, stored, h, data)
	assert.Empty(t, rec.DecodeError, "Esnats-Time is optional")
	assert.Equal(t, stored, rec.Time, "the time the server stored it")
}
