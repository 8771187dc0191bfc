package hostiletest

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// Unregistered is a Go type no registry knows.
type Unregistered struct{ X int }

// Odd is registered but cannot be encoded: msgpack has no encoding of a
// channel.
type Odd struct {
	C chan int `json:"c"`
}

// apiCase is one call with invalid input.
type apiCase struct {
	call, input string
	want        error // the sentinel it must match; nil: none
	run         func(*apiEnv) error
}

// apiEnv holds a store, snapshot store and repository whose connection is
// closed: a call that needed the server would fail with another error.
type apiEnv struct {
	store *stream.Store
	snaps *kv.Store
	repo  *aggregate.Repository[*Thing]
	js    jetstream.JetStream
}

var (
	cart    = stream.Aggregate{Type: "cart", ID: "alice"}
	oneItem = []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 1}}}
)

func appendTo(agg stream.Aggregate, events []stream.EventData, opts ...stream.AppendOption) func(*apiEnv) error {
	return func(e *apiEnv) error {
		_, err := e.store.Append(context.Background(), agg, stream.ExpectNone(), events, opts...)
		return err
	}
}

func items(n int) []stream.EventData {
	out := make([]stream.EventData, n)
	for i := range out {
		out[i] = stream.EventData{Data: ItemAdded{SKU: "apple", Quantity: 1}}
	}
	return out
}

func firstErr(seq func(func(*stream.Event, error) bool)) error {
	for _, err := range seq {
		if err != nil {
			return err
		}
	}
	return nil
}

func validSnapshot() kv.Snapshot {
	return kv.Snapshot{Aggregate: cart, Version: 1, Sequence: 1, StateType: "cart", SchemaVersion: 1, ContentType: stream.ContentTypeMsgpack, State: []byte{0x80}}
}

var apiCases = []apiCase{
	{"Store.Append", "aggregate id `\"\"`", stream.ErrInvalidID, appendTo(stream.Aggregate{Type: "cart", ID: ""}, oneItem)},
	{"Store.Append", "aggregate id `\"\\xff\\xfe\"` (invalid UTF-8)", stream.ErrInvalidID, appendTo(stream.Aggregate{Type: "cart", ID: "\xff\xfe"}, oneItem)},
	{"Store.Append", "aggregate id of 513 bytes", stream.ErrInvalidID, appendTo(stream.Aggregate{Type: "cart", ID: strings.Repeat("é", 256) + "x"}, oneItem)},
	{"Store.Append", "aggregate type `\"\"`", stream.ErrInvalidName, appendTo(stream.Aggregate{Type: "", ID: "alice"}, oneItem)},
	{"Store.Append", "aggregate type `cart.items`", stream.ErrInvalidName, appendTo(stream.Aggregate{Type: "cart.items", ID: "alice"}, oneItem)},
	{"Store.Append", "aggregate type `café`", stream.ErrInvalidName, appendTo(stream.Aggregate{Type: "café", ID: "alice"}, oneItem)},
	{"Store.Append", "aggregate type of 129 bytes", stream.ErrInvalidName, appendTo(stream.Aggregate{Type: strings.Repeat("t", 129), ID: "alice"}, oneItem)},
	{"Store.Append", "no events", nil, appendTo(cart, nil)},
	{"Store.Append", "1001 events", stream.ErrTooManyEvents, appendTo(cart, items(1001))},
	{"Store.AppendBatch", "600 + 401 events of two aggregates", stream.ErrTooManyEvents, func(e *apiEnv) error {
		_, err := e.store.AppendBatch(context.Background(), []stream.AppendRequest{
			{Aggregate: cart, Expect: stream.ExpectNone(), Events: items(600)},
			{Aggregate: stream.Aggregate{Type: "cart", ID: "bob"}, Expect: stream.ExpectNone(), Events: items(401)},
		})
		return err
	}},
	{"Store.AppendBatch", "the same aggregate twice", nil, func(e *apiEnv) error {
		_, err := e.store.AppendBatch(context.Background(), []stream.AppendRequest{
			{Aggregate: cart, Expect: stream.ExpectNone(), Events: oneItem},
			{Aggregate: cart, Expect: stream.ExpectNone(), Events: oneItem},
		})
		return err
	}},
	{"Store.AppendBatch", "no requests", nil, func(e *apiEnv) error {
		_, err := e.store.AppendBatch(context.Background(), nil)
		return err
	}},
	{"Store.Append", "an unregistered Go type", stream.ErrUnknownEventType, appendTo(cart, []stream.EventData{{Data: Unregistered{X: 1}}})},
	{"Store.Append", "`ExpectAny()` and an unregistered Go type (checked before the read of the last revision)", stream.ErrUnknownEventType, func(e *apiEnv) error {
		_, err := e.store.Append(context.Background(), cart, stream.ExpectAny(), []stream.EventData{{Data: Unregistered{X: 1}}})
		return err
	}},
	{"Store.Append", "`Data: nil`", stream.ErrUnknownEventType, appendTo(cart, []stream.EventData{{Data: nil}})},
	{"Store.Append", "a nil `*ItemAdded`", stream.ErrEncode, appendTo(cart, []stream.EventData{{Data: (*ItemAdded)(nil)}})},
	{"Store.Append", "a registered type msgpack cannot encode (a channel)", stream.ErrEncode, appendTo(cart, []stream.EventData{{Data: Odd{C: make(chan int)}}})},
	{"Store.Append", "an event of 40 KiB (MaxEventSize 32 KiB)", stream.ErrTooLarge, appendTo(cart, []stream.EventData{{Data: ItemAdded{SKU: strings.Repeat("x", 40<<10)}}})},
	{"Store.Append", "event id `a b` (a space)", stream.ErrInvalidEventID, appendTo(cart, []stream.EventData{{ID: "a b", Data: ItemAdded{}}})},
	{"Store.Append", "event id of 129 bytes", stream.ErrInvalidEventID, appendTo(cart, []stream.EventData{{ID: strings.Repeat("i", 129), Data: ItemAdded{}}})},
	{"Store.Append", "two events with the id `e1`", stream.ErrInvalidEventID, appendTo(cart, []stream.EventData{{ID: "e1", Data: ItemAdded{}}, {ID: "e1", Data: ItemAdded{}}})},
	{"Store.Append", "metadata key `bad key`", stream.ErrInvalidName, appendTo(cart, []stream.EventData{{Data: ItemAdded{}, Metadata: map[string]string{"bad key": "x"}}})},
	{"Store.Append", "`WithMetadata` key `a.b`", stream.ErrInvalidName, appendTo(cart, oneItem, stream.WithMetadata(map[string]string{"a.b": "x"}))},
	{"Store.Load", "aggregate id `\"\"`", stream.ErrInvalidID, func(e *apiEnv) error {
		return firstErr(e.store.Load(context.Background(), stream.Aggregate{Type: "cart"}))
	}},
	{"Store.Load", "aggregate type `a b`", stream.ErrInvalidName, func(e *apiEnv) error {
		return firstErr(e.store.Load(context.Background(), stream.Aggregate{Type: "a b", ID: "x"}))
	}},
	{"Store.ReadAll", "`WithAggregateTypes(\"a.b\")`", stream.ErrInvalidName, func(e *apiEnv) error {
		return firstErr(e.store.ReadAll(context.Background(), stream.WithAggregateTypes("a.b")))
	}},
	{"Store.ReadAll", "`WithEventTypes(\"\")`", stream.ErrInvalidName, func(e *apiEnv) error {
		return firstErr(e.store.ReadAll(context.Background(), stream.WithEventTypes("")))
	}},
	{"Store.LastRevision", "aggregate id `\"\"`", stream.ErrInvalidID, func(e *apiEnv) error {
		_, err := e.store.LastRevision(context.Background(), stream.Aggregate{Type: "cart"})
		return err
	}},
	{"Repository.Update", "aggregate id `\"\"`", stream.ErrInvalidID, func(e *apiEnv) error {
		return e.repo.Update(context.Background(), "", func(*Thing) error { return nil })
	}},
	{"Repository.Load", "aggregate id of 513 bytes", stream.ErrInvalidID, func(e *apiEnv) error {
		_, err := e.repo.Load(context.Background(), strings.Repeat("x", 513))
		return err
	}},
	{"Repository.Delete", "an event that is not `aggregate.Terminal`", aggregate.ErrNotTerminal, func(e *apiEnv) error {
		return e.repo.Delete(context.Background(), "alice", ItemAdded{})
	}},
	{"aggregate.NewRepository", "`Type: \"a.b\"`", stream.ErrInvalidName, func(e *apiEnv) error {
		_, err := aggregate.NewRepository(aggregate.Config[*Thing]{Store: e.store, Type: "a.b", New: newThing})
		return err
	}},
	{"stream.Register", "event type name `Item Added`", stream.ErrInvalidName, func(*apiEnv) error {
		return stream.Register[ItemAdded](stream.NewRegistry(), "Item Added")
	}},
	{"stream.Register", "a pointer type", nil, func(*apiEnv) error {
		return stream.Register[*ItemAdded](stream.NewRegistry(), "ItemAdded")
	}},
	{"stream.Register", "a name registered twice", nil, func(*apiEnv) error {
		reg := registry()
		return stream.Register[Unregistered](reg, "ItemAdded")
	}},
	{"stream.NewStore", "`Name: \"shop.events\"`", stream.ErrInvalidName, func(e *apiEnv) error {
		_, err := stream.NewStore(context.Background(), e.js, stream.Config{Name: "shop.events", Registry: registry()})
		return err
	}},
	{"stream.NewStore", "no `Registry`", stream.ErrStoreConfig, func(e *apiEnv) error {
		_, err := stream.NewStore(context.Background(), e.js, stream.Config{Name: "shop"})
		return err
	}},
	{"stream.NewStore", "`Replicas: 7`", stream.ErrStoreConfig, func(e *apiEnv) error {
		_, err := stream.NewStore(context.Background(), e.js, stream.Config{Name: "shop", Registry: registry(), Replicas: 7})
		return err
	}},
	{"stream.DecodeID", "token `a=ZZ` (from a subject or key written by others)", stream.ErrInvalidID, func(*apiEnv) error {
		_, err := stream.DecodeID("a=ZZ")
		return err
	}},
	{"kv.Store.Put", "`Version: 0`", kv.ErrInvalidSnapshot, func(e *apiEnv) error {
		s := validSnapshot()
		s.Version = 0
		return e.snaps.Put(context.Background(), s)
	}},
	{"kv.Store.Put", "`ContentType: \"\"`", kv.ErrInvalidSnapshot, func(e *apiEnv) error {
		s := validSnapshot()
		s.ContentType = ""
		return e.snaps.Put(context.Background(), s)
	}},
	{"kv.Store.Put", "`StateType: \"a b\"`", stream.ErrInvalidName, func(e *apiEnv) error {
		s := validSnapshot()
		s.StateType = "a b"
		return e.snaps.Put(context.Background(), s)
	}},
	{"kv.Store.Put", "a state of 2 MiB", stream.ErrTooLarge, func(e *apiEnv) error {
		s := validSnapshot()
		s.State = make([]byte, 2<<20)
		return e.snaps.Put(context.Background(), s)
	}},
	{"kv.Store.Get", "aggregate id `\"\"`", stream.ErrInvalidID, func(e *apiEnv) error {
		_, _, err := e.snaps.Get(context.Background(), stream.Aggregate{Type: "cart"})
		return err
	}},
	{"kv.NewStore", "`Bucket: \"a.b\"`", kv.ErrInvalidConfig, func(e *apiEnv) error {
		_, err := kv.NewStore(context.Background(), e.js, kv.Config{Bucket: "a.b"})
		return err
	}},
	{"consumers.New", "`Name: \"a b\"`", stream.ErrInvalidName, func(e *apiEnv) error {
		_, err := consumers.New(e.js, e.store, consumers.Config{Name: "a b"})
		return err
	}},
	{"consumers.New", "`AggregateTypes: [\"cart.*\"]`", stream.ErrInvalidName, func(e *apiEnv) error {
		_, err := consumers.New(e.js, e.store, consumers.Config{Name: "c", AggregateTypes: []string{"cart.*"}})
		return err
	}},
	{"Runner.Add", "`Name: \"items per product\"`", stream.ErrInvalidName, func(e *apiEnv) error {
		r := projections.NewRunner(e.js, e.store, nil)
		return r.Add(projections.Projection{Name: "items per product", Model: countModel(&seqSet{})})
	}},
}

// sizeRe matches the size of an encoded event in ErrTooLarge's message,
// which depends on the length of the Esnats-Time header (RFC 3339 drops
// trailing zeros of the nanoseconds).
var sizeRe = regexp.MustCompile(`event of \d+ bytes \(payload`)

// normalize replaces what changes from run to run in a message.
func normalize(msg string) string {
	return sizeRe.ReplaceAllString(msg, "event of <n> bytes (payload")
}

// TestExpectAnyValidatesFirst: with ExpectAny, Append reads the
// aggregate's last revision to number the events, but only after it has
// encoded and checked them: bad input is refused before any I/O, here on a
// store whose connection is closed (a read would fail with
// nats.ErrConnectionClosed), while valid input gets as far as the read.
func TestExpectAnyValidatesFirst(t *testing.T) {
	t.Parallel()
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	store, err := stream.NewStore(context.Background(), js, stream.Config{Name: storeName, Registry: registry(), MaxEventSize: maxEventSize})
	require.NoError(t, err)
	nc.Close()
	ctx := context.Background()
	bob := stream.Aggregate{Type: "cart", ID: "bob"}
	for _, c := range []struct {
		name string
		reqs []stream.AppendRequest
		want error
	}{
		{"an unregistered type", []stream.AppendRequest{{Aggregate: cart, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: Unregistered{}}}}}, stream.ErrUnknownEventType},
		{"a nil payload", []stream.AppendRequest{{Aggregate: cart, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: (*ItemAdded)(nil)}}}}, stream.ErrEncode},
		{"an event too large", []stream.AppendRequest{{Aggregate: cart, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: ItemAdded{SKU: strings.Repeat("x", 40<<10)}}}}}, stream.ErrTooLarge},
		{"a bad metadata key", []stream.AppendRequest{{Aggregate: cart, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: ItemAdded{}, Metadata: map[string]string{"a b": "x"}}}}}, stream.ErrInvalidName},
		{"a bad event id", []stream.AppendRequest{{Aggregate: cart, Expect: stream.ExpectAny(), Events: []stream.EventData{{ID: "a b", Data: ItemAdded{}}}}}, stream.ErrInvalidEventID},
		{"a bad event of the second aggregate", []stream.AppendRequest{
			{Aggregate: cart, Expect: stream.ExpectAny(), Events: oneItem},
			{Aggregate: bob, Expect: stream.ExpectAny(), Events: []stream.EventData{{Data: Unregistered{}}}},
		}, stream.ErrUnknownEventType},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := store.AppendBatch(ctx, c.reqs)
			require.ErrorIs(t, err, c.want)
			assert.NotErrorIs(t, err, nats.ErrConnectionClosed, "the append did I/O before it checked its events")
		})
	}
	_, err = store.Append(ctx, cart, stream.ExpectAny(), oneItem)
	require.ErrorIs(t, err, nats.ErrConnectionClosed, "valid events: the append reads the last revision")
	assert.EqualError(t, err, "esnats: read shop.cart.alice: nats: connection closed")
}

// TestInvalidAPIInput: invalid input is refused before any I/O with the
// documented sentinel.
func TestInvalidAPIInput(t *testing.T) {
	t.Parallel()
	apiTable.want = len(apiCases)
	reg := registry()
	stream.MustRegister[Odd](reg, "Odd")
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: storeName, Registry: reg, MaxEventSize: maxEventSize})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	require.NoError(t, err)
	repo, err := aggregate.NewRepository(aggregate.Config[*Thing]{Store: store, Type: "cart", New: newThing, Snapshots: snaps})
	require.NoError(t, err)
	nc.Close() // from here on, I/O fails
	env := &apiEnv{store: store, snaps: snaps, repo: repo, js: js}

	for i, c := range apiCases {
		t.Run(c.call+" "+c.input, func(t *testing.T) {
			err := c.run(env)
			require.Error(t, err)
			assert.NotErrorIs(t, err, nats.ErrConnectionClosed, "the call did I/O")
			if c.want != nil {
				require.ErrorIs(t, err, c.want)
			}
			apiTable.record(i, c.call, c.input, matches(err), code(normalize(err.Error())))
		})
	}
}
