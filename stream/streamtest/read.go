package streamtest

import (
	"fmt"
	"strings"

	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// testIDsRoundTrip: ids that need escaping (dots, spaces, wildcards,
// unicode, emails) are stored and read back as they are, and ids that look
// alike do not collide.
func testIDsRoundTrip(e *env) {
	t := e.t
	ids := []string{
		"a.b", "a=2Eb", "a b", "a_b", "a-b", "a=b", "a==", "=", "=2E",
		"*", ">", "a.*", "a.>", "a*b", "a>b", ".", "..", " ", "\t",
		"user@example.com", "path/to/x", "C:\\dir", "Zürich", "日本語", "emoji 🎉",
		"quote\"s", "new\nline", "%2E", "null\x00byte", strings.Repeat(".", stream.MaxIDLength),
	}
	for i, id := range ids {
		agg := stream.Aggregate{Type: "cart", ID: id}
		res, err := e.st.Append(e.ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: id, Quantity: i}}})
		require.NoError(t, err, "append to id %q (a collision with another id?)", id)
		require.Equal(t, uint64(1), res.Last.Version, "id %q", id)
	}
	for i, id := range ids {
		agg := stream.Aggregate{Type: "cart", ID: id}
		evs := e.load(agg, 1)
		require.Equal(t, agg, evs[0].Aggregate, "id %q", id)
		require.Equal(t, ItemAdded{SKU: id, Quantity: i}, evs[0].Data, "id %q", id)
		require.Equal(t, uint64(1), e.last(agg).Version, "id %q", id)
		// Subjects hold no wildcard, whitespace or extra token.
		rest := strings.TrimPrefix(evs[0].Subject, e.fx.Subject+".")
		require.Len(t, strings.Split(rest, "."), 2, "subject %q", evs[0].Subject)
		require.NotContains(t, evs[0].Subject, "*")
		require.NotContains(t, evs[0].Subject, ">")
		require.NotContains(t, evs[0].Subject, " ")
	}
	all := e.readAll(len(ids))
	for i, ev := range all {
		require.Equal(t, ids[i], ev.Aggregate.ID)
	}
	// Same id, other aggregate type: another aggregate.
	e.append(stream.Aggregate{Type: "order", ID: "a.b"}, stream.ExpectNone(), added("o", 1)...)
	e.load(stream.Aggregate{Type: "cart", ID: "a.b"}, 1)
}

// loadFixture appends 10 events to cart1 interleaved with events of cart2,
// one per append, and returns cart1's revisions.
func loadFixture(e *env) []stream.Revision {
	var revs []stream.Revision
	var last, other stream.Revision
	for i := range 10 {
		r := e.append(cart1, stream.ExpectRevision(last), added(fmt.Sprintf("v%d", i+1), 1)...)
		last = r.Last
		revs = append(revs, r.Last)
		if i%3 == 0 {
			other = e.append(cart2, stream.ExpectRevision(other), added("o", 1)...).Last
		}
	}
	return revs
}

// testLoadOptions: FromSequence, FromVersion, WithLimit and WithBatchSize.
func testLoadOptions(e *env) {
	t := e.t
	revs := loadFixture(e)
	all := e.load(cart1, 10)
	require.Equal(t, span(1, 10), versions(all))
	for i, ev := range all {
		require.Equal(t, revs[i], ev.Revision())
		require.Equal(t, ItemAdded{SKU: fmt.Sprintf("v%d-1", i+1), Quantity: 1}, ev.Data)
	}
	cases := []struct {
		name string
		opts []stream.ReadOption
		want []uint64
	}{
		{"FromSequence of v5", []stream.ReadOption{stream.FromSequence(revs[4].Sequence)}, span(5, 10)},
		{"FromSequence after v5", []stream.ReadOption{stream.FromSequence(revs[4].Sequence + 1)}, span(6, 10)},
		{"FromSequence past the end", []stream.ReadOption{stream.FromSequence(revs[9].Sequence + 1)}, nil},
		{"FromSequence 0", []stream.ReadOption{stream.FromSequence(0)}, span(1, 10)},
		{"FromVersion 7", []stream.ReadOption{stream.FromVersion(7)}, span(7, 10)},
		{"FromVersion 1", []stream.ReadOption{stream.FromVersion(1)}, span(1, 10)},
		{"FromVersion past the end", []stream.ReadOption{stream.FromVersion(11)}, nil},
		{"FromSequence and FromVersion", []stream.ReadOption{stream.FromSequence(revs[2].Sequence), stream.FromVersion(5)}, span(5, 10)},
		{"WithLimit 3", []stream.ReadOption{stream.WithLimit(3)}, span(1, 3)},
		{"WithLimit 10", []stream.ReadOption{stream.WithLimit(10)}, span(1, 10)},
		{"WithLimit 50", []stream.ReadOption{stream.WithLimit(50)}, span(1, 10)},
		{"FromSequence and WithLimit", []stream.ReadOption{stream.FromSequence(revs[5].Sequence), stream.WithLimit(2)}, span(6, 7)},
		{"WithBatchSize 3", []stream.ReadOption{stream.WithBatchSize(3)}, span(1, 10)},
		{"WithBatchSize 1", []stream.ReadOption{stream.WithBatchSize(1)}, span(1, 10)},
		{"WithBatchSize 2 and WithLimit 5", []stream.ReadOption{stream.WithBatchSize(2), stream.WithLimit(5)}, span(1, 5)},
		{"WithBatchSize 3 and FromSequence", []stream.ReadOption{stream.WithBatchSize(3), stream.FromSequence(revs[3].Sequence)}, span(4, 10)},
	}
	for _, c := range cases {
		e.sub(c.name, func(e *env) {
			e.loadVersions(cart1, c.want, c.opts...)
		})
	}
	e.sub("break early", func(e *env) {
		n := 0
		for ev, err := range e.st.Load(e.ctx, cart1, stream.WithBatchSize(2)) {
			require.NoError(e.t, err)
			n++
			require.Equal(e.t, uint64(n), ev.Version)
			if n == 3 {
				break
			}
		}
		require.Equal(e.t, 3, n)
	})
	e.sub("append while iterating", func(e *env) {
		// The loop body may write to the store.
		attempt := 0
		var other stream.Aggregate
		evs, err := e.eventually(func() ([]*stream.Event, error) {
			attempt++
			other = stream.Aggregate{Type: "cart", ID: fmt.Sprintf("during-%d", attempt)}
			var out []*stream.Event
			var prev stream.Revision
			for ev, err := range e.st.Load(e.ctx, cart1, stream.WithBatchSize(4)) {
				if err != nil {
					return out, err
				}
				out = append(out, ev)
				res, err := e.st.Append(e.ctx, other, stream.ExpectRevision(prev), added("d", 1))
				if err != nil {
					return out, err
				}
				prev = res.Last
			}
			return out, nil
		}, func(evs []*stream.Event, err error) bool { return err == nil && len(evs) == 10 })
		require.NoError(e.t, err)
		require.Equal(e.t, span(1, 10), versions(evs))
		require.Equal(e.t, uint64(10), e.last(other).Version)
	})
	_ = t
}

func nilIfEmpty(v []uint64) []uint64 {
	if len(v) == 0 {
		return nil
	}
	return v
}

// testLoadFromVersionWithLimit: WithLimit counts the events returned, not
// those skipped by FromVersion.
func testLoadFromVersionWithLimit(e *env) {
	revs := loadFixture(e)
	e.load(cart1, 10)
	e.loadVersions(cart1, span(4, 6), stream.FromVersion(4), stream.WithLimit(3))
	e.loadVersions(cart1, span(9, 10), stream.FromSequence(revs[1].Sequence), stream.FromVersion(9), stream.WithLimit(5), stream.WithBatchSize(2))
}

// testLastRevisionUnknown: an aggregate without events has the zero
// revision and loads as nothing.
func testLastRevisionUnknown(e *env) {
	t := e.t
	require.Equal(t, stream.Revision{}, e.last(cart1))
	e.append(cart2, stream.ExpectNone(), added("a", 2)...)
	require.Equal(t, stream.Revision{}, e.last(cart1))
	require.True(t, e.last(cart1).IsZero())
	evs, err := collect(e.st.Load(e.ctx, cart1))
	require.NoError(t, err)
	require.Empty(t, evs)
	// Same id, other type.
	require.Equal(t, stream.Revision{}, e.last(stream.Aggregate{Type: "order", ID: cart2.ID}))
	e.load(cart2, 2)
}

// readAllFixture writes events of three aggregate types and three event
// types; it returns the ids of the aggregates of the events in stream
// order ("cart/c1 item-added", ...).
func readAllFixture(e *env) []string {
	order1 := stream.Aggregate{Type: "order", ID: "o1"}
	user1 := stream.Aggregate{Type: "user", ID: "u1"}
	var out []string
	add := func(agg stream.Aggregate, typ string, data any) {
		e.append(agg, stream.ExpectAny(), stream.EventData{Data: data})
		out = append(out, agg.String()+" "+typ)
	}
	add(cart1, TypeItemAdded, ItemAdded{SKU: "a"})
	add(order1, TypeOrderPlaced, OrderPlaced{Total: 1})
	add(cart2, TypeItemAdded, ItemAdded{SKU: "b"})
	add(user1, TypeItemRemoved, ItemRemoved{SKU: "u"})
	add(cart1, TypeItemRemoved, ItemRemoved{SKU: "a"})
	add(order1, TypeItemAdded, ItemAdded{SKU: "o"})
	add(cart2, TypeItemRemoved, ItemRemoved{SKU: "b"})
	add(user1, TypeOrderPlaced, OrderPlaced{Total: 2})
	add(cart1, TypeItemAdded, ItemAdded{SKU: "c"})
	return out
}

func describe(evs []*stream.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Aggregate.String() + " " + ev.Type
	}
	return out
}

func filter(all []string, keep func(aggType, evType string) bool) []string {
	var out []string
	for _, s := range all {
		agg, typ, _ := strings.Cut(s, " ")
		aggType, _, _ := strings.Cut(agg, "/")
		if keep(aggType, typ) {
			out = append(out, s)
		}
	}
	return out
}

func in(v string, set ...string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

// testReadAll: ReadAll returns the store's events in stream order, filtered
// by aggregate types and event types, from a sequence.
func testReadAll(e *env) {
	t := e.t
	want := readAllFixture(e)
	all := e.readAll(len(want))
	require.Equal(t, want, describe(all))
	for i := 1; i < len(all); i++ {
		require.Greater(t, all[i].Sequence, all[i-1].Sequence)
	}
	cases := []struct {
		name string
		opts []stream.ReadOption
		keep func(aggType, evType string) bool
	}{
		{"one aggregate type", []stream.ReadOption{stream.WithAggregateTypes("order")},
			func(a, _ string) bool { return a == "order" }},
		{"two aggregate types", []stream.ReadOption{stream.WithAggregateTypes("order", "user")},
			func(a, _ string) bool { return in(a, "order", "user") }},
		{"one event type", []stream.ReadOption{stream.WithEventTypes(TypeItemRemoved)},
			func(_, ev string) bool { return ev == TypeItemRemoved }},
		{"two event types", []stream.ReadOption{stream.WithEventTypes(TypeItemAdded, TypeOrderPlaced)},
			func(_, ev string) bool { return in(ev, TypeItemAdded, TypeOrderPlaced) }},
		{"aggregate type and event type", []stream.ReadOption{stream.WithAggregateTypes("cart"), stream.WithEventTypes(TypeItemAdded)},
			func(a, ev string) bool { return a == "cart" && ev == TypeItemAdded }},
		{"aggregate types and event types", []stream.ReadOption{stream.WithAggregateTypes("cart", "order"), stream.WithEventTypes(TypeItemAdded, TypeItemRemoved)},
			func(a, ev string) bool { return in(a, "cart", "order") && in(ev, TypeItemAdded, TypeItemRemoved) }},
		{"aggregate type without events", []stream.ReadOption{stream.WithAggregateTypes("nothing")},
			func(string, string) bool { return false }},
		{"event type without events", []stream.ReadOption{stream.WithEventTypes("nothing")},
			func(string, string) bool { return false }},
		{"small batches", []stream.ReadOption{stream.WithBatchSize(2)},
			func(string, string) bool { return true }},
		{"small batches filtered", []stream.ReadOption{stream.WithBatchSize(1), stream.WithAggregateTypes("user")},
			func(a, _ string) bool { return a == "user" }},
	}
	for _, c := range cases {
		e.sub(c.name, func(e *env) {
			e.readAllWant(filter(want, c.keep), c.opts...)
		})
	}
	e.sub("FromSequence", func(e *env) {
		from := all[4].Sequence
		e.readAllWant(want[4:], stream.FromSequence(from))
		e.readAllWant(filter(want[4:], func(a, _ string) bool { return a == "cart" }), stream.FromSequence(from), stream.WithAggregateTypes("cart"))
		e.readAllWant(nil, stream.FromSequence(all[len(all)-1].Sequence+1))
	})
	e.sub("WithLimit", func(e *env) {
		e.readAllWant(want[:2], stream.WithLimit(2))
		e.readAllWant(filter(want, func(a, _ string) bool { return a == "cart" })[:3], stream.WithLimit(3), stream.WithAggregateTypes("cart"), stream.WithBatchSize(2))
	})
	e.sub("break early", func(e *env) {
		n := 0
		for _, err := range e.st.ReadAll(e.ctx, stream.WithBatchSize(2)) {
			require.NoError(e.t, err)
			if n++; n == 3 {
				break
			}
		}
		require.Equal(e.t, 3, n)
	})
}

func nilIfEmptyS(v []string) []string {
	if len(v) == 0 {
		return nil
	}
	return v
}

// testReadAllFilteredWithLimit: WithLimit counts the events returned, not
// those filtered out on the client side (several types).
func testReadAllFilteredWithLimit(e *env) {
	want := readAllFixture(e)
	e.readAll(len(want))
	e.readAllWant(filter(want, func(a, _ string) bool { return in(a, "order", "user") })[:2],
		stream.WithLimit(2), stream.WithAggregateTypes("order", "user"))
	e.readAllWant(filter(want, func(_, ev string) bool { return in(ev, TypeOrderPlaced, TypeItemRemoved) })[:1],
		stream.WithLimit(1), stream.WithEventTypes(TypeOrderPlaced, TypeItemRemoved))
}
