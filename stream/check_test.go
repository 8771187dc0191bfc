package stream_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// CheckEvent refuses what a read refuses before decoding the payload, with
// the same error (FuzzDecodeEvent checks that for arbitrary messages), and
// needs no registry.
func TestCheckEvent(t *testing.T) {
	valid := func() nats.Header {
		return nats.Header{
			stream.HeaderEventType:   {"Anything"}, // need not be registered
			stream.HeaderVersion:     {"3"},
			stream.HeaderTime:        {"2026-01-02T03:04:05.000000006Z"},
			stream.HeaderContentType: {"text/whatever"}, // nor known
			stream.HeaderSchema:      {"7"},
		}
	}
	with := func(k, v string) nats.Header {
		h := valid()
		if v == "" {
			delete(h, k)
		} else {
			h[k] = []string{v}
		}
		return h
	}
	for _, c := range []struct {
		name, subject string
		header        nats.Header
		want          string // "" = valid
	}{
		{"valid", "acme.orders.cart.alice=40example=2Ecom", valid(), ""},
		{"only the required headers", "acme.orders.cart.x", nats.Header{stream.HeaderEventType: {"T"}, stream.HeaderVersion: {"1"}}, ""},
		{"no headers", "acme.orders.cart.x", nil, "missing Esnats-Type header (not written by esnats?)"},
		{"no type", "acme.orders.cart.x", with(stream.HeaderEventType, ""), "missing Esnats-Type header (not written by esnats?)"},
		{"a type that is no name", "acme.orders.cart.x", with(stream.HeaderEventType, "Item Added"), `invalid Esnats-Type header: invalid name: event type "Item Added" holds ' ' at offset 4; only ASCII letters, digits, '-' and '_' are allowed`},
		{"no version", "acme.orders.cart.x", with(stream.HeaderVersion, ""), `missing or invalid Esnats-Version header ""`},
		{"version 0", "acme.orders.cart.x", with(stream.HeaderVersion, "0"), `missing or invalid Esnats-Version header "0"`},
		{"version -1", "acme.orders.cart.x", with(stream.HeaderVersion, "-1"), `missing or invalid Esnats-Version header "-1"`},
		{"schema 0", "acme.orders.cart.x", with(stream.HeaderSchema, "0"), `invalid Esnats-Schema header "0"`},
		{"schema x", "acme.orders.cart.x", with(stream.HeaderSchema, "x"), `invalid Esnats-Schema header "x"`},
		{"bad time", "acme.orders.cart.x", with(stream.HeaderTime, "yesterday"), `invalid Esnats-Time header "yesterday"`},
		{"another store", "other.cart.x", valid(), `subject is outside the store's subject space "acme.orders.>"`},
		{"two tokens", "acme.orders.cart", valid(), "subject does not have the form acme.orders.<aggregateType>.<aggregateID>"},
		{"four tokens", "acme.orders.cart.a.b", valid(), "subject does not have the form acme.orders.<aggregateType>.<aggregateID>"},
		{"bad type token", "acme.orders.c@rt.x", valid(), `invalid name: aggregate type "c@rt" holds '@' at offset 1; only ASCII letters, digits, '-' and '_' are allowed`},
		{"bad id token", "acme.orders.cart.a=ZZ", valid(), `invalid aggregate id: id token has an escape at offset 1 that is not '=' and two uppercase hex digits: "a=ZZ"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := stream.CheckEvent("acme.orders", c.subject, 42, c.header)
			if c.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, stream.ErrDecode)
			var se *stream.Error
			require.ErrorAs(t, err, &se)
			assert.Equal(t, "decode", se.Op)
			assert.Equal(t, c.subject, se.Subject)
			assert.Equal(t, uint64(42), se.Sequence)
			assert.EqualError(t, err, "esnats: decode "+c.subject+" at sequence 42: cannot decode event: "+c.want)

		})
	}
}
