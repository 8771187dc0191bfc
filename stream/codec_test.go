package stream

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

type codecTestAddress struct {
	Street string `json:"street"`
	City   string `json:"city"`
}

type codecTestEvent struct {
	ID       string             `json:"id"`
	Count    int                `json:"count"`
	Big      int64              `json:"big"`
	Price    float64            `json:"price"`
	OK       bool               `json:"ok"`
	At       time.Time          `json:"at"`
	Tags     []string           `json:"tags"`
	Attrs    map[string]string  `json:"attrs"`
	Scores   map[string]int     `json:"scores,omitempty"`
	Address  codecTestAddress   `json:"address"`
	Previous *codecTestAddress  `json:"previous,omitempty"`
	Lines    []codecTestAddress `json:"lines"`
	Raw      []byte             `json:"raw"`
	Secret   string             `json:"-"`
	Untagged string
}

func codecTestValue() codecTestEvent {
	return codecTestEvent{
		ID:       "ev-1",
		Count:    -7,
		Big:      1 << 40,
		Price:    9.95,
		OK:       true,
		At:       time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
		Tags:     []string{"a", "b"},
		Attrs:    map[string]string{"k": "v", "ü": "東京"},
		Scores:   map[string]int{"x": 1},
		Address:  codecTestAddress{Street: "Main St 1", City: "Zürich"},
		Previous: &codecTestAddress{City: "Bern"},
		Lines:    []codecTestAddress{{City: "a"}, {City: "b"}},
		Raw:      []byte{0, 1, 2, 255},
		Untagged: "u",
	}
}

// requireCodecEventEqual compares two events, times by Equal (msgpack decodes
// them in the local zone).
func requireCodecEventEqual(t *testing.T, want, got codecTestEvent) {
	t.Helper()
	require.True(t, want.At.Equal(got.At), "time %v != %v", want.At, got.At)
	want.At, got.At = time.Time{}, time.Time{}
	require.Equal(t, want, got)
}

func TestCodecRoundTrip(t *testing.T) {
	tests := []struct {
		codec       Codec
		contentType string
	}{
		{Msgpack(), "application/msgpack"},
		{JSON(), "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.contentType, func(t *testing.T) {
			c := tt.codec
			assert.Equal(t, tt.contentType, c.ContentType())
			in := codecTestValue()
			in.Secret = "not stored"
			data, err := c.Marshal(in)
			require.NoError(t, err)
			require.NotEmpty(t, data)

			var out codecTestEvent
			require.NoError(t, c.Unmarshal(data, &out))
			want := codecTestValue()
			requireCodecEventEqual(t, want, out)

			// Pointers encode like values (bytes may differ: map order).
			viaPtr, err := c.Marshal(&in)
			require.NoError(t, err)
			var out2 codecTestEvent
			require.NoError(t, c.Unmarshal(viaPtr, &out2))
			requireCodecEventEqual(t, want, out2)

			// Zero value round trips too.
			data, err = c.Marshal(codecTestEvent{})
			require.NoError(t, err)
			var zero codecTestEvent
			require.NoError(t, c.Unmarshal(data, &zero))
			requireCodecEventEqual(t, codecTestEvent{}, zero)
		})
	}
}

func TestCodecMsgpackUsesJSONTags(t *testing.T) {
	data, err := Msgpack().Marshal(codecTestAddress{Street: "s", City: "c"})
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, msgpack.Unmarshal(data, &m))
	assert.Equal(t, map[string]any{"street": "s", "city": "c"}, m)

	// A payload written by another msgpack client with the json names.
	other, err := msgpack.Marshal(map[string]any{"city": "Genève", "street": "Rue 1", "extra": 1})
	require.NoError(t, err)
	var a codecTestAddress
	require.NoError(t, Msgpack().Unmarshal(other, &a))
	assert.Equal(t, codecTestAddress{Street: "Rue 1", City: "Genève"}, a)

	// JSON and msgpack agree on field names.
	j, err := JSON().Marshal(codecTestAddress{Street: "s", City: "c"})
	require.NoError(t, err)
	var jm map[string]any
	require.NoError(t, json.Unmarshal(j, &jm))
	assert.Equal(t, map[string]any{"street": "s", "city": "c"}, jm)
}

func TestCodecMsgpackCompactInts(t *testing.T) {
	data, err := Msgpack().Marshal(struct {
		N int64 `json:"n"`
	}{N: 1})
	require.NoError(t, err)
	assert.Equal(t, []byte{0x81, 0xa1, 'n', 0x01}, data)
}

func TestCodecMarshalOwnsBytes(t *testing.T) {
	c := Msgpack()
	a, err := c.Marshal(codecTestAddress{City: "first"})
	require.NoError(t, err)
	saved := append([]byte(nil), a...)
	_, err = c.Marshal(codecTestAddress{City: "second, longer value"})
	require.NoError(t, err)
	assert.Equal(t, saved, a, "a later Marshal must not reuse the returned slice")
}

func TestCodecDecodedBytesDoNotAliasInput(t *testing.T) {
	for _, c := range []Codec{Msgpack(), JSON()} {
		data, err := c.Marshal(codecTestEvent{Raw: []byte("abcdef"), ID: "id"})
		require.NoError(t, err)
		var out codecTestEvent
		require.NoError(t, c.Unmarshal(data, &out))
		for i := range data {
			data[i] = 0
		}
		assert.Equal(t, []byte("abcdef"), out.Raw, c.ContentType())
		assert.Equal(t, "id", out.ID, c.ContentType())
	}
}

func TestCodecUnmarshalErrors(t *testing.T) {
	valid, err := Msgpack().Marshal(codecTestAddress{City: "c"})
	require.NoError(t, err)
	tests := []struct {
		name  string
		codec Codec
		data  []byte
	}{
		{"msgpack empty", Msgpack(), nil},
		{"msgpack truncated", Msgpack(), valid[:len(valid)-1]},
		{"msgpack trailing bytes", Msgpack(), append(append([]byte(nil), valid...), 0xc0)},
		{"msgpack wrong type", Msgpack(), []byte{0xa3, 'a', 'b', 'c'}},
		{"msgpack reserved code", Msgpack(), []byte{0xc1}},
		{"msgpack huge length", Msgpack(), []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"msgpack json bytes", Msgpack(), []byte(`{"city":"c"}`)},
		{"json empty", JSON(), nil},
		{"json garbage", JSON(), []byte{0xc1, 0x00}},
		{"json trailing", JSON(), []byte(`{"city":"c"} x`)},
		{"json wrong type", JSON(), []byte(`{"city":1}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a codecTestAddress
			assert.Error(t, tt.codec.Unmarshal(tt.data, &a))
		})
	}
}

// TestCodecMsgpackHostileLengths feeds payloads whose declared lengths are
// far beyond their size. msgpack v5.4.1 alone preallocates by the declared
// length and dies of "fatal error: out of memory" (vmihailenco/msgpack#401).
func TestCodecMsgpackHostileLengths(t *testing.T) {
	lines := []byte{0x81, 0xa5, 'l', 'i', 'n', 'e', 's'}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"array32 top level", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, "truncated"},
		{"array32 in struct", append(slices.Clone(lines), 0xdd, 0x7f, 0xff, 0xff, 0xff), "truncated"},
		{"array32 some bytes", append([]byte{0xdd, 0x00, 0x00, 0x00, 0x05}, 1, 2, 3), "declares more elements"},
		{"array16", []byte{0xdc, 0xff, 0xff, 0x01}, "truncated"},
		{"map32", []byte{0xdf, 0x7f, 0xff, 0xff, 0xff}, "truncated"},
		{"map16 odd bytes", []byte{0xde, 0x00, 0x02, 0xa1, 'a', 0x01}, "declares more elements"},
		{"fixarray short", []byte{0x93, 0x01, 0x02}, "declares more elements"},
		{"fixarray nested short", []byte{0x92, 0x91, 0x01}, "unexpected end"},
		{"str32", []byte{0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'}, "truncated"},
		{"bin32", []byte{0xc6, 0x7f, 0xff, 0xff, 0xff, 'a'}, "truncated"},
		{"ext32", []byte{0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01}, "truncated"},
		{"float64 short", []byte{0xcb, 0x01}, "truncated"},
		{"never used code", []byte{0x91, 0xc1}, "invalid code 0xc1 at offset 1"},
		{"deep nesting", bytes.Repeat([]byte{0x91}, 20000), "nesting deeper than 10000"},
		{"trailing", []byte{0x01, 0x02}, "1 trailing bytes"},
		{"empty", nil, "unexpected end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev codecTestEvent
			err := Msgpack().Unmarshal(tt.data, &ev)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			var v any
			assert.Error(t, Msgpack().Unmarshal(tt.data, &v))
			var m map[string]any
			assert.Error(t, Msgpack().Unmarshal(tt.data, &m))
		})
	}
}

// TestCodecMsgpackCheckAcceptsValid checks that the pre-decode check accepts
// what msgpack encodes: every type code, nested and at the length limits.
func TestCodecMsgpackCheckAcceptsValid(t *testing.T) {
	values := []any{
		nil, true, false, 0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 1 << 32, -1 << 40,
		uint64(1 << 63), float32(1.5), 2.5, "", "abc", strings.Repeat("x", 31), strings.Repeat("x", 32),
		strings.Repeat("x", 256), strings.Repeat("x", 70000), []byte{}, []byte{1, 2}, bytes.Repeat([]byte{1}, 300),
		bytes.Repeat([]byte{1}, 70000), []int{}, make([]int, 15), make([]int, 16), make([]int, 70000),
		map[string]int{}, map[string]int{"a": 1}, codecTestValue(), []any{map[string]any{"x": []any{nil}}},
		time.Unix(1, 0), time.Unix(1<<40, 1), time.Unix(1<<35, 1),
	}
	big := map[string]int{}
	for i := range 70000 {
		big[strconv.Itoa(i)] = i
	}
	values = append(values, big)
	for i, v := range values {
		data, err := Msgpack().Marshal(v)
		require.NoError(t, err)
		assert.NoError(t, codecMsgpackCheck(data), "value %d (%T)", i, v)
		var back any
		assert.NoError(t, Msgpack().Unmarshal(data, &back), "value %d (%T)", i, v)
	}
	// Extensions of every size.
	for _, data := range [][]byte{
		{0xd4, 0x01, 0x00}, {0xd5, 0x01, 0, 0}, {0xd6, 0x01, 0, 0, 0, 0}, {0xd7, 0x01, 0, 0, 0, 0, 0, 0, 0, 0},
		append([]byte{0xd8, 0x01}, make([]byte, 16)...), {0xc7, 0x01, 0x05, 0xaa}, {0xc8, 0x00, 0x01, 0x05, 0xaa},
		{0xc9, 0x00, 0x00, 0x00, 0x01, 0x05, 0xaa},
	} {
		assert.NoError(t, codecMsgpackCheck(data), "% x", data)
	}
}

func TestCodecUnmarshalNonPointer(t *testing.T) {
	for _, c := range []Codec{Msgpack(), JSON()} {
		var a codecTestAddress
		data, err := c.Marshal(a)
		require.NoError(t, err)
		assert.Error(t, c.Unmarshal(data, a), c.ContentType())
		assert.Error(t, c.Unmarshal(data, nil), c.ContentType())
	}
}

func TestCodecConcurrent(t *testing.T) {
	for _, c := range []Codec{Msgpack(), JSON()} {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 200 {
					in := codecTestAddress{Street: "s", City: string(rune('a' + g))}
					if i%2 == 0 {
						in.Street = "a somewhat longer street name to vary sizes"
					}
					data, err := c.Marshal(in)
					if !assert.NoError(t, err) {
						return
					}
					var out codecTestAddress
					if !assert.NoError(t, c.Unmarshal(data, &out)) || !assert.Equal(t, in, out) {
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

func FuzzCodecUnmarshal(f *testing.F) {
	seed := func(c Codec, v any) {
		data, err := c.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	seed(Msgpack(), codecTestValue())
	seed(JSON(), codecTestValue())
	seed(Msgpack(), codecTestEvent{})
	seed(Msgpack(), map[string]any{"a": []any{1, "x", nil, 2.5, map[string]any{}}})
	for _, s := range [][]byte{nil, {0xc0}, {0xc1}, {0xdf, 0xff, 0xff, 0xff, 0xff}, {0xdd, 0x7f, 0xff, 0xff, 0xff}, {0xc7, 0xff, 0xff}, {0xd6, 0xff, 0, 0, 0, 1}, []byte(`{"id":`), []byte("null")} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []Codec{Msgpack(), JSON()} {
			var ev codecTestEvent
			_ = c.Unmarshal(data, &ev)
			var m map[string]any
			_ = c.Unmarshal(data, &m)
			var v any
			_ = c.Unmarshal(data, &v)
		}
	})
}

func BenchmarkCodecMsgpack(b *testing.B) {
	c := Msgpack()
	in := codecTestAddress{Street: "Main St 1", City: "Zürich"}
	data, err := c.Marshal(in)
	require.NoError(b, err)
	b.Run("Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Marshal(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var out codecTestAddress
			if err := c.Unmarshal(data, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
