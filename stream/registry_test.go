package stream

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type regTestItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

type regTestItemRemoved struct {
	SKU string `json:"sku"`
}

// Customer renamed: three schema versions.
type regTestRenamedV1 struct {
	Name string `json:"name"`
}

type regTestRenamedV2 struct {
	First string `json:"first"`
	Last  string `json:"last"`
}

type regTestRenamed struct { // v3, the current one
	First  string `json:"first"`
	Last   string `json:"last"`
	Source string `json:"source"`
}

func regTestUpV1(v regTestRenamedV1) (regTestRenamedV2, error) {
	first, last, _ := strings.Cut(v.Name, " ")
	return regTestRenamedV2{First: first, Last: last}, nil
}

func regTestUpV2(v regTestRenamedV2) (regTestRenamed, error) {
	return regTestRenamed{First: v.First, Last: v.Last, Source: "upcast"}, nil
}

// newRegTestRegistry returns a registry with the test types registered.
func newRegTestRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	r := NewRegistry(opts...)
	require.NoError(t, Register[regTestItemAdded](r, "item-added"))
	require.NoError(t, Register[regTestItemRemoved](r, "item-removed"))
	require.NoError(t, Register[regTestRenamed](r, "customer-renamed",
		SchemaVersion(3),
		Upcast(2, regTestUpV2), // order does not matter
		Upcast(1, regTestUpV1),
	))
	return r
}

func TestRegistryLookup(t *testing.T) {
	r := newRegTestRegistry(t)
	assert.Equal(t, []string{"customer-renamed", "item-added", "item-removed"}, r.Names())
	assert.True(t, r.Has("item-added"))
	assert.False(t, r.Has("item-changed"))

	v, ok := r.SchemaVersionOf("item-added")
	assert.True(t, ok)
	assert.Equal(t, 1, v)
	v, ok = r.SchemaVersionOf("customer-renamed")
	assert.True(t, ok)
	assert.Equal(t, 3, v)
	_, ok = r.SchemaVersionOf("nope")
	assert.False(t, ok)

	tests := []struct {
		name  string
		value any
		want  string
	}{
		{"value", regTestItemAdded{}, "item-added"},
		{"pointer", &regTestItemAdded{}, "item-added"},
		{"nil pointer", (*regTestItemRemoved)(nil), "item-removed"},
		{"other value", regTestRenamed{}, "customer-renamed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.NameOf(tt.value)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}

	for _, v := range []any{nil, regTestRenamedV1{}, "string", new(*regTestItemAdded)} {
		_, err := r.NameOf(v)
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrUnknownEventType)
		assert.Contains(t, err.Error(), fmt.Sprintf("%T", v))
	}
}

func TestRegistryZeroValue(t *testing.T) {
	var r Registry
	assert.Equal(t, "application/msgpack", r.Codec().ContentType())
	assert.Empty(t, r.Names())
	require.NoError(t, Register[regTestItemAdded](&r, "item-added"))
	name, ver, data, err := r.Encode(regTestItemAdded{SKU: "x"})
	require.NoError(t, err)
	got, err := r.Decode(name, ver, "", data)
	require.NoError(t, err)
	assert.Equal(t, regTestItemAdded{SKU: "x"}, got)
}

func TestRegistryRegisterErrors(t *testing.T) {
	tests := []struct {
		name     string
		register func(r *Registry) error
		want     string
		is       error
	}{
		{
			name:     "invalid name",
			register: func(r *Registry) error { return Register[regTestItemRemoved](r, "item.removed") },
			want:     `event type "item.removed"`,
			is:       ErrInvalidName,
		},
		{
			name:     "empty name",
			register: func(r *Registry) error { return Register[regTestItemRemoved](r, "") },
			want:     "event type is empty",
			is:       ErrInvalidName,
		},
		{
			name:     "duplicate name",
			register: func(r *Registry) error { return Register[regTestItemRemoved](r, "item-added") },
			want:     "name already registered",
		},
		{
			name:     "duplicate type",
			register: func(r *Registry) error { return Register[regTestItemAdded](r, "item-added-again") },
			want:     `already registered as "item-added"`,
		},
		{
			name:     "pointer type",
			register: func(r *Registry) error { return Register[*regTestItemRemoved](r, "item-removed") },
			want:     "is a ptr",
		},
		{
			name:     "interface type",
			register: func(r *Registry) error { return Register[any](r, "anything") },
			want:     "is a interface",
		},
		{
			name:     "func type",
			register: func(r *Registry) error { return Register[func()](r, "func") },
			want:     "is a func",
		},
		{
			name:     "schema version zero",
			register: func(r *Registry) error { return Register[regTestItemRemoved](r, "item-removed", SchemaVersion(0)) },
			want:     "schema version 0 is not >= 1",
		},
		{
			name: "missing upcaster step",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(3), Upcast(1, regTestUpV1))
			},
			want: "no upcaster from version 2 to 3",
		},
		{
			name: "gap in chain",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(4),
					Upcast(1, regTestUpV1),
					Upcast(3, func(v regTestRenamed) (regTestRenamed, error) { return v, nil }))
			},
			want: "no upcaster from version 2 to 3",
		},
		{
			name: "upcaster to wrong type",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(2), Upcast(1, regTestUpV1))
			},
			want: "yields stream.regTestRenamedV2 but the registered type is stream.regTestRenamed",
		},
		{
			name: "chain types do not match",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(3),
					Upcast(1, func(v regTestRenamedV1) (regTestRenamedV1, error) { return v, nil }),
					Upcast(2, regTestUpV2))
			},
			want: "upcaster from version 1 yields stream.regTestRenamedV1 but the upcaster from version 2 takes stream.regTestRenamedV2",
		},
		{
			name: "duplicate upcaster",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(2),
					Upcast(1, func(v regTestRenamedV1) (regTestRenamed, error) { return regTestRenamed{}, nil }),
					Upcast(1, func(v regTestRenamedV1) (regTestRenamed, error) { return regTestRenamed{}, nil }))
			},
			want: "two upcasters from version 1",
		},
		{
			name: "upcaster from current version",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed",
					Upcast(1, func(v regTestRenamedV1) (regTestRenamed, error) { return regTestRenamed{}, nil }))
			},
			want: "upcaster from version 1 is outside 1..0",
		},
		{
			name: "upcaster from version zero",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(2),
					Upcast(0, func(v regTestRenamedV1) (regTestRenamedV1, error) { return v, nil }),
					Upcast(1, func(v regTestRenamedV1) (regTestRenamed, error) { return regTestRenamed{}, nil }))
			},
			want: "upcaster from version 0 is outside 1..1",
		},
		{
			name: "nil upcaster",
			register: func(r *Registry) error {
				return Register[regTestRenamed](r, "customer-renamed", SchemaVersion(2),
					Upcast[regTestRenamedV1, regTestRenamed](1, nil))
			},
			want: "upcaster from version 1 is nil",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry()
			require.NoError(t, Register[regTestItemAdded](r, "item-added"))
			err := tt.register(r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			assert.Equal(t, []string{"item-added"}, r.Names(), "a failed Register leaves the registry unchanged")
		})
	}
}

func TestRegistryMustRegister(t *testing.T) {
	r := NewRegistry()
	assert.NotPanics(t, func() { MustRegister[regTestItemAdded](r, "item-added") })
	assert.PanicsWithError(t, `esnats: register event type "item-added": name already registered`, func() {
		MustRegister[regTestItemRemoved](r, "item-added")
	})
}

func TestRegistryEncodeDecode(t *testing.T) {
	for _, codec := range []Codec{Msgpack(), JSON()} {
		t.Run(codec.ContentType(), func(t *testing.T) {
			r := newRegTestRegistry(t, WithCodec(codec))
			assert.Equal(t, codec.ContentType(), r.Codec().ContentType())
			in := regTestItemAdded{SKU: "sku-1", Quantity: 3}
			for _, v := range []any{in, &in} {
				name, ver, data, err := r.Encode(v)
				require.NoError(t, err)
				assert.Equal(t, "item-added", name)
				assert.Equal(t, 1, ver)
				for _, ct := range []string{"", codec.ContentType()} {
					got, err := r.Decode(name, ver, ct, data)
					require.NoError(t, err)
					assert.Equal(t, in, got) // a value, not a pointer
				}
			}

			// The current version of an upcast type decodes directly.
			cur := regTestRenamed{First: "Ada", Last: "Lovelace", Source: "new"}
			name, ver, data, err := r.Encode(cur)
			require.NoError(t, err)
			assert.Equal(t, 3, ver)
			got, err := r.Decode(name, ver, "", data)
			require.NoError(t, err)
			assert.Equal(t, cur, got)
		})
	}
}

func TestRegistryEncodeErrors(t *testing.T) {
	r := newRegTestRegistry(t)

	_, _, _, err := r.Encode(regTestRenamedV1{})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrUnknownEventType)
	assert.Contains(t, err.Error(), "stream.regTestRenamedV1")

	_, _, _, err = r.Encode((*regTestItemAdded)(nil))
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrEncode)
	assert.Contains(t, err.Error(), `"item-added"`)
	assert.Contains(t, err.Error(), "nil")

	type unencodable struct {
		C chan int `json:"c"`
	}
	jr := NewRegistry(WithCodec(JSON()))
	require.NoError(t, Register[unencodable](jr, "unencodable"))
	_, _, _, err = jr.Encode(unencodable{C: make(chan int)})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrEncode)
	assert.Contains(t, err.Error(), `"unencodable"`)
}

func TestRegistryDecodeErrors(t *testing.T) {
	r := newRegTestRegistry(t)
	_, _, good, err := r.Encode(regTestItemAdded{SKU: "a"})
	require.NoError(t, err)

	tests := []struct {
		name        string
		typ         string
		version     int
		contentType string
		data        []byte
		is          error
		want        string
	}{
		{"unknown name", "item-changed", 1, "", good, ErrUnknownEventType, `"item-changed"`},
		{"garbage", "item-added", 1, "", []byte{0xc1, 0x02}, ErrDecode, `event type "item-added"`},
		{"empty payload", "item-added", 1, "", nil, ErrDecode, "application/msgpack"},
		{"json garbage", "item-added", 1, "application/json", []byte("{"), ErrDecode, "application/json"},
		{"unknown content type", "item-added", 1, "application/protobuf", good, ErrDecode, `no codec for content type "application/protobuf"`},
		{"malformed content type", "item-added", 1, ";;", good, ErrDecode, "no codec"},
		{"newer version", "item-added", 2, "", good, ErrSchemaVersion, "schema version 2, newer than the registered version 1"},
		{"version zero", "item-added", 0, "", good, ErrSchemaVersion, "schema version 0 is not >= 1"},
		{"negative version", "customer-renamed", -1, "", good, ErrSchemaVersion, "schema version -1 is not >= 1"},
		{"newer upcast type", "customer-renamed", 4, "", good, ErrSchemaVersion, "newer than the registered version 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := r.Decode(tt.typ, tt.version, tt.contentType, tt.data)
			require.Error(t, err)
			assert.Nil(t, v)
			assert.ErrorIs(t, err, tt.is)
			assert.Contains(t, err.Error(), tt.want)
		})
	}

	// The codec's own error is wrapped.
	_, err = r.Decode("item-added", 1, "application/json", []byte("{"))
	var syntax *json.SyntaxError
	require.ErrorAs(t, err, &syntax)
	assert.Contains(t, err.Error(), "unexpected end of JSON input")
}

func TestRegistryDecodeByContentType(t *testing.T) {
	in := regTestItemAdded{SKU: "sku-1", Quantity: 2}
	jsonData, err := JSON().Marshal(in)
	require.NoError(t, err)
	msgpackData, err := Msgpack().Marshal(in)
	require.NoError(t, err)

	tests := []struct {
		name        string
		opts        []RegistryOption
		contentType string
		data        []byte
	}{
		{"json on msgpack registry", nil, "application/json", jsonData},
		{"json with charset", nil, "application/json; charset=utf-8", jsonData},
		{"json upper case", nil, "Application/JSON", jsonData},
		{"msgpack on json registry", []RegistryOption{WithCodec(JSON())}, "application/msgpack", msgpackData},
		{"default on json registry", []RegistryOption{WithCodec(JSON())}, "", jsonData},
		{"nil codec keeps msgpack", []RegistryOption{WithCodec(nil)}, "", msgpackData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegTestRegistry(t, tt.opts...)
			got, err := r.Decode("item-added", 1, tt.contentType, tt.data)
			require.NoError(t, err)
			assert.Equal(t, in, got)
		})
	}
}

// regTestCodec is a custom codec: JSON under another content type.
type regTestCodec struct{}

func (regTestCodec) ContentType() string                { return "application/x-test" }
func (regTestCodec) Marshal(v any) ([]byte, error)      { return JSON().Marshal(v) }
func (regTestCodec) Unmarshal(data []byte, v any) error { return JSON().Unmarshal(data, v) }

func TestRegistryCodecFor(t *testing.T) {
	r := NewRegistry(WithCodec(regTestCodec{}))
	tests := []struct {
		contentType string
		want        string // content type of the codec found; "" = none
	}{
		{"", "application/x-test"},
		{"application/x-test", "application/x-test"},
		{"application/X-Test; v=1", "application/x-test"},
		{"application/msgpack", "application/msgpack"},
		{"application/json", "application/json"},
		{"text/plain", ""},
		{"garbage;", ""},
	}
	for _, tt := range tests {
		t.Run(tt.contentType, func(t *testing.T) {
			c, ok := r.CodecFor(tt.contentType)
			if tt.want == "" {
				assert.False(t, ok)
				assert.Nil(t, c)
				return
			}
			require.True(t, ok)
			assert.Equal(t, tt.want, c.ContentType())
		})
	}

	require.NoError(t, Register[regTestItemAdded](r, "item-added"))
	in := regTestItemAdded{SKU: "x", Quantity: 1}
	_, _, data, err := r.Encode(in)
	require.NoError(t, err)
	assert.JSONEq(t, `{"sku":"x","quantity":1}`, string(data))
	got, err := r.Decode("item-added", 1, "application/x-test", data)
	require.NoError(t, err)
	assert.Equal(t, in, got)
}

func TestRegistryUpcast(t *testing.T) {
	for _, codec := range []Codec{Msgpack(), JSON()} {
		t.Run(codec.ContentType(), func(t *testing.T) {
			r := newRegTestRegistry(t)
			v1, err := codec.Marshal(regTestRenamedV1{Name: "Ada Lovelace"})
			require.NoError(t, err)
			v2, err := codec.Marshal(regTestRenamedV2{First: "Grace", Last: "Hopper"})
			require.NoError(t, err)

			got, err := r.Decode("customer-renamed", 1, codec.ContentType(), v1)
			require.NoError(t, err)
			assert.Equal(t, regTestRenamed{First: "Ada", Last: "Lovelace", Source: "upcast"}, got)

			got, err = r.Decode("customer-renamed", 2, codec.ContentType(), v2)
			require.NoError(t, err)
			assert.Equal(t, regTestRenamed{First: "Grace", Last: "Hopper", Source: "upcast"}, got)

			_, err = r.Decode("customer-renamed", 1, codec.ContentType(), []byte{0xc1})
			require.ErrorIs(t, err, ErrDecode)
			assert.Contains(t, err.Error(), "schema version 1")
		})
	}
}

func TestRegistryUpcastPartialChain(t *testing.T) {
	// Only versions 2.. can be upcast; version 1 is too old.
	r := NewRegistry()
	require.NoError(t, Register[regTestRenamed](r, "customer-renamed", SchemaVersion(3), Upcast(2, regTestUpV2)))
	data, err := Msgpack().Marshal(regTestRenamedV2{First: "a", Last: "b"})
	require.NoError(t, err)
	got, err := r.Decode("customer-renamed", 2, "", data)
	require.NoError(t, err)
	assert.Equal(t, regTestRenamed{First: "a", Last: "b", Source: "upcast"}, got)

	_, err = r.Decode("customer-renamed", 1, "", data)
	require.ErrorIs(t, err, ErrSchemaVersion)
	assert.Contains(t, err.Error(), "no upcaster from schema version 1")

	// No upcasters at all: older versions are an error.
	r = NewRegistry()
	require.NoError(t, Register[regTestItemAdded](r, "item-added", SchemaVersion(2)))
	_, err = r.Decode("item-added", 1, "", data)
	require.ErrorIs(t, err, ErrSchemaVersion)
	assert.Contains(t, err.Error(), "no upcaster from schema version 1 (registered version 2)")
}

func TestRegistryUpcastError(t *testing.T) {
	errBad := errors.New("name has no last name")
	r := NewRegistry()
	require.NoError(t, Register[regTestRenamed](r, "customer-renamed", SchemaVersion(3),
		Upcast(1, func(v regTestRenamedV1) (regTestRenamedV2, error) {
			first, last, ok := strings.Cut(v.Name, " ")
			if !ok {
				return regTestRenamedV2{}, errBad
			}
			return regTestRenamedV2{First: first, Last: last}, nil
		}),
		Upcast(2, regTestUpV2),
	))
	data, err := Msgpack().Marshal(regTestRenamedV1{Name: "Plato"})
	require.NoError(t, err)
	_, err = r.Decode("customer-renamed", 1, "", data)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrSchemaVersion)
	assert.ErrorIs(t, err, errBad)
	assert.Contains(t, err.Error(), "upcast from schema version 1 to 2")
}

func TestRegistryConcurrent(t *testing.T) {
	r := newRegTestRegistry(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			if g == 0 {
				// Registering while others encode and decode.
				for i := range 50 {
					type late struct {
						N int `json:"n"`
					}
					err := Register[late](r, fmt.Sprintf("late-%d", i))
					if i == 0 {
						assert.NoError(t, err)
					} else {
						assert.Error(t, err) // same Go type
					}
				}
				return
			}
			for i := range 200 {
				in := regTestItemAdded{SKU: fmt.Sprint(g), Quantity: i}
				name, ver, data, err := r.Encode(&in)
				if !assert.NoError(t, err) {
					return
				}
				got, err := r.Decode(name, ver, "", data)
				if !assert.NoError(t, err) || !assert.Equal(t, in, got) {
					return
				}
				_ = r.Names()
			}
		})
	}
	wg.Wait()
	assert.True(t, r.Has("late-0"))
}

func BenchmarkRegistryDecode(b *testing.B) {
	r := newRegTestRegistry(b)
	name, ver, data, err := r.Encode(regTestItemAdded{SKU: "sku-12345", Quantity: 3})
	require.NoError(b, err)
	b.Run("current", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Decode(name, ver, "application/msgpack", data); err != nil {
				b.Fatal(err)
			}
		}
	})
	v1, err := Msgpack().Marshal(regTestRenamedV1{Name: "Ada Lovelace"})
	require.NoError(b, err)
	b.Run("upcast-v1-v3", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Decode("customer-renamed", 1, "application/msgpack", v1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-msgpack-unmarshal", func(b *testing.B) {
		// The codec alone, for comparison.
		c := Msgpack()
		b.ReportAllocs()
		for b.Loop() {
			var v regTestItemAdded
			if err := c.Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRegistryEncode(b *testing.B) {
	r := newRegTestRegistry(b)
	in := regTestItemAdded{SKU: "sku-12345", Quantity: 3}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := r.Encode(&in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeEvent decodes a whole event message (subject, headers as a
// consumer receives them, payload), beside the registry's decode of the
// payload alone.
func BenchmarkDecodeEvent(b *testing.B) {
	reg := newRegTestRegistry(b)
	subj := subjects{prefix: "shop"}
	enc, err := encodeEvent(reg, subj, Aggregate{Type: "cart", ID: "c-1"}, "c-1", 7,
		EventData{Data: regTestItemAdded{SKU: "sku-12345", Quantity: 3}},
		&eventMeta{correlationID: "corr-1"}, 0)
	require.NoError(b, err)
	enc.msg.Header.Set("Nats-Expected-Last-Subject-Sequence", "6")
	m := rawMessage{Subject: enc.msg.Subject, Sequence: 42, Header: enc.msg.Header, Data: enc.msg.Data}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEvent(reg, subj, m); err != nil {
			b.Fatal(err)
		}
	}
}
