package kv

import (
	"errors"
	"testing"

	"github.com/esnats/esnats/stream"
)

// FuzzDecodeSnapshot checks that any stored value either decodes to a
// snapshot that passes Put's checks and re-encodes to an equal snapshot, or
// is reported as corrupt: never a panic, never another error.
func FuzzDecodeSnapshot(f *testing.F) {
	agg := stream.Aggregate{Type: "cart", ID: "a.b"}
	good := Snapshot{Aggregate: agg, Version: 3, Sequence: 30, StateType: "cart", SchemaVersion: 1,
		ContentType: stream.ContentTypeMsgpack, State: []byte{0x81, 0xa1, 'n', 0x01}}
	seed, err := encodeSnapshot(&good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Add(seed[:len(seed)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeSnapshot(data, agg)
		if err != nil {
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("error %v does not match ErrCorruptSnapshot", err)
			}
			return
		}
		if _, err := validateSnapshot(&s); err != nil {
			t.Fatalf("decoded snapshot fails Put's checks: %v", err)
		}
		again, err := encodeSnapshot(&s)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := decodeSnapshot(again, agg)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
		if s2.Version != s.Version || s2.Sequence != s.Sequence || string(s2.State) != string(s.State) ||
			s2.StateType != s.StateType || s2.ContentType != s.ContentType || s2.SchemaVersion != s.SchemaVersion {
			t.Fatalf("round trip changed the snapshot: %+v != %+v", s2, s)
		}
	})
}
