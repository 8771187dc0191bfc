package stream

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

type fuzzEvent struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

// FuzzDecodeEvent feeds arbitrary subjects, header blocks and bodies (as
// another client could write them into a store's subjects) to the envelope
// decoder: it must never panic, and whatever it accepts must be consistent.
func FuzzDecodeEvent(f *testing.F) {
	reg := NewRegistry()
	MustRegister[fuzzEvent](reg, "Happened")
	subj := subjects{prefix: "store"}
	good, err := encodeEvent(reg, subj, Aggregate{Type: "thing", ID: "a.b c"}, "a=2Eb=20c", 3,
		EventData{ID: "e1", Data: fuzzEvent{Name: "x", N: 1}, Metadata: map[string]string{"k": "v"}},
		&eventMeta{correlationID: "c", trace: TraceContext{TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}, 0)
	if err != nil {
		f.Fatal(err)
	}
	hdr := func(h nats.Header) string {
		var b strings.Builder
		b.WriteString("NATS/1.0\r\n")
		for k, vs := range h {
			for _, v := range vs {
				b.WriteString(k + ": " + v + "\r\n")
			}
		}
		b.WriteString("\r\n")
		return b.String()
	}
	f.Add(good.msg.Subject, hdr(good.msg.Header), good.msg.Data)
	f.Add("store.thing.id", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 1\r\n\r\n", []byte("garbage"))
	f.Add("store.thing.id", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 0\r\n\r\n", []byte{0x80})
	f.Add("store.thing.a.b", "NATS/1.0\r\nEsnats-Type: Other\r\nEsnats-Version: 2\r\n\r\n", []byte{0x80})
	f.Add("store.thing.=zz", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 1\r\n\r\n", []byte{0x80})
	f.Add("store.thing.id", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 1\r\nContent-Type: application/json\r\nEsnats-Schema: 1\r\n\r\n", []byte(`{"name":"j","n":2}`))
	f.Add("store.thing.id", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 1\r\nEsnats-Schema: 9\r\n\r\n", []byte{0x80})
	f.Add("store.thing.id", "NATS/1.0\r\nEsnats-Type: Happened\r\nEsnats-Version: 1\r\nEsnats-Time: yesterday\r\n\r\n", []byte{0x80})
	f.Add("other.thing.id", "NATS/1.0\r\n\r\n", []byte{})
	f.Fuzz(func(t *testing.T, subject, header string, data []byte) {
		h, err := nats.DecodeHeadersMsg([]byte(header))
		if err != nil {
			return
		}
		ev, err := decodeEvent(reg, subj, rawMessage{Subject: subject, Sequence: 7, Header: h, Data: data})
		// CheckEvent applies the same checks but for the payload's.
		if cerr := CheckEvent("store", subject, 7, h); cerr != nil {
			if err == nil || err.Error() != cerr.Error() {
				t.Fatalf("CheckEvent: %v, but decoding: %v", cerr, err)
			}
		} else if err != nil && !errors.Is(err, ErrUnknownEventType) && !errors.Is(err, ErrSchemaVersion) && !strings.Contains(err.Error(), `event type "Happened"`) {
			t.Fatalf("CheckEvent passed a message whose envelope decoding refused: %v", err)
		}
		if err != nil {
			e, ok := err.(*Error)
			if !ok || e.Subject != subject || e.Sequence != 7 {
				t.Fatalf("error %v does not name subject and sequence", err)
			}
			return
		}
		if ev.Version == 0 || ev.Type != "Happened" || ev.Sequence != 7 {
			t.Fatalf("accepted inconsistent event %+v", ev)
		}
		if _, ok := ev.Data.(fuzzEvent); !ok {
			t.Fatalf("payload decoded to %T", ev.Data)
		}
		tok, err := EncodeID(ev.Aggregate.ID)
		if err != nil || subj.aggregate(ev.Aggregate.Type, tok) != subject {
			t.Fatalf("aggregate %v does not map back to subject %q", ev.Aggregate, subject)
		}
	})
}
