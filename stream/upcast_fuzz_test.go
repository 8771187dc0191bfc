package stream

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Schema versions of one event type for FuzzUpcast: v1 -> v2 -> v3 (the
// registered, current one), and a type whose chain starts at v2.

type fuzzRenamedV1 struct {
	Name string `json:"name"`
	Qty  int64  `json:"qty"`
}

type fuzzRenamedV2 struct {
	First string `json:"first"`
	Last  string `json:"last"`
	Qty   int64  `json:"qty"`
}

type fuzzRenamed struct { // v3
	First  string `json:"first"`
	Last   string `json:"last"`
	Qty    int64  `json:"qty"`
	Source string `json:"source"`
}

type fuzzPartial struct { // v3, upcast only from v2
	N int64 `json:"n"`
}

var errFuzzNegative = errors.New("negative quantity")

func fuzzUpV1(v fuzzRenamedV1) (fuzzRenamedV2, error) {
	first, last, _ := strings.Cut(v.Name, " ")
	return fuzzRenamedV2{First: first, Last: last, Qty: v.Qty}, nil
}

func fuzzUpV2(v fuzzRenamedV2) (fuzzRenamed, error) {
	if v.Qty < 0 {
		return fuzzRenamed{}, fmt.Errorf("%w: %d", errFuzzNegative, v.Qty)
	}
	return fuzzRenamed{First: v.First, Last: v.Last, Qty: v.Qty, Source: "upcast"}, nil
}

func fuzzUpcastRegistry(tb testing.TB) *Registry {
	tb.Helper()
	reg := NewRegistry()
	for _, err := range []error{
		Register[fuzzRenamed](reg, "renamed", SchemaVersion(3), Upcast(1, fuzzUpV1), Upcast(2, fuzzUpV2)),
		Register[fuzzPartial](reg, "partial", SchemaVersion(3), Upcast(2, func(v struct {
			N int64 `json:"n"`
		}) (fuzzPartial, error) {
			return fuzzPartial{N: v.N + 1}, nil
		})),
	} {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return reg
}

// FuzzUpcast feeds the registry's decoding, upcasters included, with
// arbitrary payloads, schema versions, content types and type names (what
// another client may have stored), and with valid payloads of every schema
// version built from arbitrary field values. It must never panic; its errors
// must be the documented sentinels; a payload it accepts must decode to the
// registered type; and a valid old payload must come out exactly as the
// upcasters make it from what the codec decodes.
func FuzzUpcast(f *testing.F) {
	reg := fuzzUpcastRegistry(f)
	f.Add([]byte{0x80}, 1, "", "renamed", true, "Ada Lovelace", int64(3))
	f.Add([]byte(`{"name":"Grace Hopper","qty":1}`), 1, ContentTypeJSON, "renamed", false, "", int64(0))
	f.Add([]byte(`{"first":"A","last":"B","qty":-1}`), 2, ContentTypeJSON, "renamed", false, "", int64(0))
	f.Add([]byte{0xc1}, 2, ContentTypeMsgpack, "renamed", true, "", int64(-5))
	f.Add([]byte{}, 3, "text/plain", "renamed", true, "x", int64(1))
	f.Add([]byte{0x81, 0xa1, 'n', 0x05}, 2, "", "partial", false, "", int64(0))
	f.Add([]byte{0x80}, 1, "", "partial", false, "", int64(0))
	f.Add([]byte{0x80}, 0, "application/json; charset=utf-8", "nope", false, "", int64(0))
	f.Add([]byte{0x80}, 99, "", "renamed", true, "\xff\xfe", int64(1<<62))
	f.Fuzz(func(t *testing.T, data []byte, schema int, contentType, name string, valid bool, person string, qty int64) {
		// Arbitrary input.
		v, err := reg.Decode(name, schema, contentType, data)
		checkDecode(t, reg, name, schema, contentType, v, err)

		if !valid {
			return
		}
		// Valid payloads of each schema version, in either codec.
		for _, c := range []Codec{Msgpack(), JSON()} {
			ct := c.ContentType()
			if contentType == "" {
				ct = "" // the registry's codec: msgpack
				c = Msgpack()
			}
			p1, err := c.Marshal(fuzzRenamedV1{Name: person, Qty: qty})
			if err != nil {
				t.Fatal(err)
			}
			// What the codec makes of the old payload (JSON replaces
			// invalid UTF-8), upcast by hand.
			var old fuzzRenamedV1
			if err := c.Unmarshal(p1, &old); err != nil {
				t.Fatalf("%s cannot decode what it encoded: %v", ct, err)
			}
			first, last, _ := strings.Cut(old.Name, " ")
			checkUpcast(t, reg, 1, ct, p1, fuzzRenamed{First: first, Last: last, Qty: old.Qty, Source: "upcast"}, old.Qty < 0)

			p2, err := c.Marshal(fuzzRenamedV2{First: person, Last: name, Qty: qty})
			if err != nil {
				t.Fatal(err)
			}
			var old2 fuzzRenamedV2
			if err := c.Unmarshal(p2, &old2); err != nil {
				t.Fatalf("%s cannot decode what it encoded: %v", ct, err)
			}
			checkUpcast(t, reg, 2, ct, p2, fuzzRenamed{First: old2.First, Last: old2.Last, Qty: old2.Qty, Source: "upcast"}, old2.Qty < 0)

			// The current version is decoded as it is, without upcasting.
			cur := fuzzRenamed{First: person, Last: name, Qty: qty, Source: "current"}
			p3, err := c.Marshal(cur)
			if err != nil {
				t.Fatal(err)
			}
			var want fuzzRenamed
			if err := c.Unmarshal(p3, &want); err != nil {
				t.Fatal(err)
			}
			checkUpcast(t, reg, 3, ct, p3, want, false)

			// A schema newer than the code's, or one below the oldest
			// upcaster, is ErrSchemaVersion whatever the payload.
			for _, s := range []int{4, 0, -1} {
				if _, err := reg.Decode("renamed", s, ct, p1); !errors.Is(err, ErrSchemaVersion) {
					t.Fatalf("schema %d: %v, want ErrSchemaVersion", s, err)
				}
			}
			if _, err := reg.Decode("partial", 1, ct, p1); !errors.Is(err, ErrSchemaVersion) {
				t.Fatalf("partial chain from schema 1: %v, want ErrSchemaVersion", err)
			}
			if contentType == "" {
				break
			}
		}
	})
}

// checkDecode checks one Decode of arbitrary input.
func checkDecode(t *testing.T, reg *Registry, name string, schema int, contentType string, v any, err error) {
	t.Helper()
	if err != nil {
		if v != nil {
			t.Fatalf("Decode returned %v and %v", v, err)
		}
		switch {
		case !reg.Has(name):
			if !errors.Is(err, ErrUnknownEventType) {
				t.Fatalf("unregistered %q: %v, want ErrUnknownEventType", name, err)
			}
		case errors.Is(err, ErrUnknownEventType):
			t.Fatalf("registered %q reported unknown: %v", name, err)
		case !errors.Is(err, ErrDecode) && !errors.Is(err, ErrSchemaVersion):
			t.Fatalf("%v is neither ErrDecode nor ErrSchemaVersion", err)
		case errors.Is(err, ErrDecode) && errors.Is(err, ErrSchemaVersion):
			t.Fatalf("%v is both ErrDecode and ErrSchemaVersion", err)
		}
		if _, ok := reg.CodecFor(contentType); !ok && reg.Has(name) && !errors.Is(err, ErrDecode) {
			t.Fatalf("unknown content type %q: %v, want ErrDecode", contentType, err)
		}
		if errors.Is(err, errFuzzNegative) && !errors.Is(err, ErrSchemaVersion) {
			t.Fatalf("an upcaster's error must come with ErrSchemaVersion: %v", err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) {
			t.Fatalf("%v does not name the event type %q", err, name)
		}
		return
	}
	if _, ok := reg.CodecFor(contentType); !ok {
		t.Fatalf("decoded with an unknown content type %q", contentType)
	}
	switch name {
	case "renamed":
		got, ok := v.(fuzzRenamed)
		if !ok {
			t.Fatalf("renamed decoded to %T", v)
		}
		if schema < 1 || schema > 3 {
			t.Fatalf("schema %d accepted", schema)
		}
		if schema < 3 && got.Source != "upcast" {
			t.Fatalf("schema %d not upcast: %+v", schema, got)
		}
	case "partial":
		if _, ok := v.(fuzzPartial); !ok {
			t.Fatalf("partial decoded to %T", v)
		}
		if schema < 2 || schema > 3 {
			t.Fatalf("partial: schema %d accepted", schema)
		}
	default:
		t.Fatalf("unregistered %q decoded", name)
	}
}

// checkUpcast decodes a valid payload of schema and wants exactly want, or
// the upcaster's refusal.
func checkUpcast(t *testing.T, reg *Registry, schema int, contentType string, payload []byte, want fuzzRenamed, refused bool) {
	t.Helper()
	v, err := reg.Decode("renamed", schema, contentType, payload)
	if refused {
		if !errors.Is(err, ErrSchemaVersion) || !errors.Is(err, errFuzzNegative) {
			t.Fatalf("schema %d, %s, negative quantity: %v, want ErrSchemaVersion wrapping the upcaster's error", schema, contentType, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("schema %d, %s: valid payload %q: %v", schema, contentType, payload, err)
	}
	if v != want {
		t.Fatalf("schema %d, %s: got %+v, want %+v", schema, contentType, v, want)
	}
}
