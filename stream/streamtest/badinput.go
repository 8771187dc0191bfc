package streamtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

var rawIDs atomic.Uint64

// header returns the headers esnats writes for an event of type typ at
// version, schema version 1, msgpack, with a fresh event id.
func header(typ string, version uint64) nats.Header {
	return nats.Header{
		stream.HeaderEventID:     {fmt.Sprintf("raw-%d-%d", time.Now().UnixNano(), rawIDs.Add(1))},
		stream.HeaderEventType:   {typ},
		stream.HeaderVersion:     {strconv.FormatUint(version, 10)},
		stream.HeaderTime:        {time.Now().UTC().Format(time.RFC3339Nano)},
		stream.HeaderContentType: {stream.ContentTypeMsgpack},
		stream.HeaderSchema:      {"1"},
	}
}

// with returns h with key set to value ("" deletes it).
func with(h nats.Header, key, value string) nats.Header {
	if value == "" {
		delete(h, key)
	} else {
		h[key] = []string{value}
	}
	return h
}

func mustMsgpack(v any) []byte {
	b, err := stream.Msgpack().Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// badCase is a message another client wrote into the store that cannot be
// read as an event.
type badCase struct {
	name string
	// subject is relative to the store's prefix; "" = the bad aggregate's
	// subject.
	subject string
	header  func() nats.Header
	data    []byte
	want    error // the sentinel the read error matches
	// onAggregate: the subject is the bad aggregate's, so Load sees it.
	onAggregate bool
	// version: the message carries the valid version 3, which LastRevision
	// reports; otherwise LastRevision fails with ErrDecode.
	version bool
}

var (
	badAgg  = stream.Aggregate{Type: "cart", ID: "bad"}
	goodAgg = stream.Aggregate{Type: "cart", ID: "good"}
)

func badCases() []badCase {
	body := mustMsgpack(ItemAdded{SKU: "raw", Quantity: 1})
	return []badCase{
		{name: "missing headers", header: func() nats.Header { return nil }, data: body,
			want: stream.ErrDecode, onAggregate: true},
		{name: "garbage body", header: func() nats.Header { return header(TypeItemAdded, 3) }, data: []byte{0xc1, 0xff, 0x00, 0x13},
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "truncated body", header: func() nats.Header { return header(TypeItemAdded, 3) }, data: body[:len(body)-2],
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "body of another type", header: func() nats.Header { return header(TypeItemAdded, 3) }, data: mustMsgpack("just a string"),
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "unknown event type", header: func() nats.Header { return header("ghost-event", 3) }, data: body,
			want: stream.ErrUnknownEventType, onAggregate: true, version: true},
		{name: "missing type header", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderEventType, "") }, data: body,
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "missing version header", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderVersion, "") }, data: body,
			want: stream.ErrDecode, onAggregate: true},
		{name: "invalid version header", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderVersion, "three") }, data: body,
			want: stream.ErrDecode, onAggregate: true},
		{name: "version zero", header: func() nats.Header { return header(TypeItemAdded, 0) }, data: body,
			want: stream.ErrDecode, onAggregate: true},
		{name: "unknown content type", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderContentType, "text/plain") }, data: body,
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "newer schema version", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderSchema, "9") }, data: body,
			want: stream.ErrSchemaVersion, onAggregate: true, version: true},
		{name: "invalid schema header", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderSchema, "v1") }, data: body,
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "invalid time header", header: func() nats.Header { return with(header(TypeItemAdded, 3), stream.HeaderTime, "yesterday") }, data: body,
			want: stream.ErrDecode, onAggregate: true, version: true},
		{name: "invalid id token", subject: "cart.a=2e", header: func() nats.Header { return header(TypeItemAdded, 1) }, data: body,
			want: stream.ErrDecode},
		{name: "escaped plain byte in id token", subject: "cart.=41", header: func() nats.Header { return header(TypeItemAdded, 1) }, data: body,
			want: stream.ErrDecode},
		{name: "invalid aggregate type token", subject: "ca=rt.bad", header: func() nats.Header { return header(TypeItemAdded, 1) }, data: body,
			want: stream.ErrDecode},
		{name: "too many tokens", subject: "cart.bad.item-added", header: func() nats.Header { return header(TypeItemAdded, 3) }, data: body,
			want: stream.ErrDecode},
		{name: "too few tokens", subject: "cart", header: func() nats.Header { return header(TypeItemAdded, 3) }, data: body,
			want: stream.ErrDecode},
	}
}

// testBadInput: a message another client wrote that cannot be decoded makes
// reads fail with an error naming its subject and sequence, after the
// events before it; SkipUndecodable skips it; nothing stored changes.
func testBadInput(e *env) {
	for _, c := range badCases() {
		e.run(c.name, func(e *env) { badInput(e, c) })
	}
}

func badInput(e *env, c badCase) {
	t := e.t
	r := e.append(badAgg, stream.ExpectNone(), added("a", 2)...)
	subj := e.subject(badAgg)
	if c.subject != "" {
		subj = e.fx.Subject + "." + c.subject
	}
	seq := e.fx.PutRaw(subj, c.header(), c.data)
	require.Greater(t, seq, r.Last.Sequence)
	g := e.append(goodAgg, stream.ExpectNone(), added("g", 1)...)
	require.Greater(t, g.Last.Sequence, seq)

	requireBad := func(what string, evs []*stream.Event, err error, before int) {
		t.Helper()
		require.Error(t, err, "%s: want an error for the bad message", what)
		require.ErrorIs(t, err, c.want, "%s", what)
		var se *stream.Error
		require.ErrorAs(t, err, &se, "%s", what)
		require.Equal(t, subj, se.Subject, "%s: the error names the subject", what)
		require.Equal(t, seq, se.Sequence, "%s: the error names the sequence", what)
		require.Len(t, evs, before, "%s: the events before the bad one", what)
	}
	failed := func(_ []*stream.Event, err error) bool { return err != nil }
	skipping := func(read func(opt stream.ReadOption) ([]*stream.Event, error), n int) ([]*stream.Event, []error) {
		var skipped []error
		evs, err := e.eventually(func() ([]*stream.Event, error) {
			skipped = nil
			return read(stream.SkipUndecodable(func(err error) bool {
				skipped = append(skipped, err)
				return true
			}))
		}, func(evs []*stream.Event, err error) bool { return err == nil && len(evs) == n && len(skipped) == 1 })
		require.NoError(t, err, "skipping")
		require.Len(t, evs, n, "skipping: events")
		require.Len(t, skipped, 1, "skipping: skipped")
		require.ErrorIs(t, skipped[0], c.want, "skipping: the error passed to SkipUndecodable")
		return evs, skipped
	}

	// Twice: a read changes nothing, the second finds the same.
	for range 2 {
		if c.onAggregate {
			evs, err := e.eventually(func() ([]*stream.Event, error) { return collect(e.st.Load(e.ctx, badAgg)) }, failed)
			requireBad("Load", evs, err, 2)
			require.Equal(t, span(1, 2), versions(evs))

			evs, _ = skipping(func(opt stream.ReadOption) ([]*stream.Event, error) {
				return collect(e.st.Load(e.ctx, badAgg, opt))
			}, 2)
			require.Equal(t, span(1, 2), versions(evs))

			evs, err = collect(e.st.Load(e.ctx, badAgg, stream.SkipUndecodable(func(error) bool { return false })))
			requireBad("Load, not skipping", evs, err, 2)

			rev, err := e.st.LastRevision(e.ctx, badAgg)
			if c.version {
				require.NoError(t, err)
				require.Equal(t, stream.Revision{Version: 3, Sequence: seq}, rev)
			} else {
				require.ErrorIs(t, err, stream.ErrDecode, "LastRevision with a bad version header")
			}
		} else {
			e.loadVersions(badAgg, span(1, 2))
			require.Equal(t, r.Last, e.last(badAgg))
		}

		evs, err := e.eventually(func() ([]*stream.Event, error) { return collect(e.st.ReadAll(e.ctx)) }, failed)
		requireBad("ReadAll", evs, err, 2)
		require.Equal(t, []string{"cart/bad item-added", "cart/bad item-added"}, describe(evs))

		evs, _ = skipping(func(opt stream.ReadOption) ([]*stream.Event, error) {
			return collect(e.st.ReadAll(e.ctx, opt, stream.WithBatchSize(2)))
		}, 3)
		require.Equal(t, []uint64{r.First.Sequence, r.Last.Sequence, g.Last.Sequence}, sequences(evs))

		e.loadVersions(goodAgg, span(1, 1))
		require.Equal(t, g.Last, e.last(goodAgg))
	}
}

// testVersionGap: Load reports a gap or a repeat in an aggregate's versions
// (a message another client wrote) as ErrDecode naming the message.
func testVersionGap(e *env) {
	for _, c := range []struct {
		name    string
		version uint64
	}{{"gap", 4}, {"repeat", 2}, {"going back", 1}} {
		e.run(c.name, func(e *env) {
			t := e.t
			r := e.append(badAgg, stream.ExpectNone(), added("a", 2)...)
			subj := e.subject(badAgg)
			seq := e.fx.PutRaw(subj, header(TypeItemAdded, c.version), mustMsgpack(ItemAdded{SKU: "raw"}))

			evs, err := e.eventually(func() ([]*stream.Event, error) { return collect(e.st.Load(e.ctx, badAgg)) },
				func(_ []*stream.Event, err error) bool { return err != nil })
			require.ErrorIs(t, err, stream.ErrDecode)
			var se *stream.Error
			require.ErrorAs(t, err, &se)
			require.Equal(t, subj, se.Subject)
			require.Equal(t, seq, se.Sequence)
			require.Equal(t, span(1, 2), versions(evs))

			// Reading from the message on, there is nothing to compare it with.
			e.loadVersions(badAgg, []uint64{c.version}, stream.FromSequence(seq))
			// ReadAll does not check versions.
			all := e.readAll(3)
			require.Equal(t, []uint64{r.First.Sequence, r.Last.Sequence, seq}, sequences(all))
			require.Equal(t, stream.Revision{Version: c.version, Sequence: seq}, e.last(badAgg))
		})
	}
}

// testFirstVersion: a load from the beginning requires the aggregate's
// first event to be version 1, and a load AfterRevision(r) the version
// after r's; both report another as ErrDecode naming the message. A load
// from a later sequence has nothing to compare the first event with.
func testFirstVersion(e *env) {
	t := e.t
	// Another client wrote an aggregate whose first event is version 2.
	first := stream.Aggregate{Type: "cart", ID: "starts-at-2"}
	subj := e.subject(first)
	e.append(stream.Aggregate{Type: "cart", ID: "before"}, stream.ExpectNone(), added("x", 1)...)
	seq := e.fx.PutRaw(subj, header(TypeItemAdded, 2), mustMsgpack(ItemAdded{SKU: "raw"}))
	e.fx.PutRaw(subj, header(TypeItemAdded, 3), mustMsgpack(ItemAdded{SKU: "raw"}))
	requireFirst := func(what string, err error, seq uint64, text string) {
		t.Helper()
		require.ErrorIs(t, err, stream.ErrDecode, what)
		var se *stream.Error
		require.ErrorAs(t, err, &se, what)
		require.Equal(t, subj, se.Subject, "%s: the error names the subject", what)
		require.Equal(t, seq, se.Sequence, "%s: the error names the sequence", what)
		require.Contains(t, err.Error(), text, what)
	}
	failed := func(_ []*stream.Event, err error) bool { return err != nil }
	for _, opts := range [][]stream.ReadOption{nil, {stream.FromSequence(1)}, {stream.FromVersion(3)}, {stream.AfterRevision(stream.Revision{})}, {stream.WithBatchSize(1)}} {
		evs, err := e.eventually(func() ([]*stream.Event, error) { return collect(e.st.Load(e.ctx, first, opts...)) }, failed)
		requireFirst("Load from the beginning", err, seq, "version 2 is the first event of cart/starts-at-2 (expected 1)")
		require.Empty(t, evs)
	}
	// From its own sequence on, nothing says it should be version 1.
	e.loadVersions(first, span(2, 3), stream.FromSequence(seq))
	// ReadAll checks no versions; LastRevision reports what is there.
	e.readAll(3)
	require.Equal(t, uint64(3), e.last(first).Version)

	// AfterRevision: the tail after a snapshot at a revision.
	agg := stream.Aggregate{Type: "cart", ID: "tail"}
	r1 := e.append(agg, stream.ExpectNone(), added("a", 2)...)
	r2 := e.append(agg, stream.ExpectRevision(r1.Last), added("b", 3)...)
	e.loadVersions(agg, span(1, 5))
	e.loadVersions(agg, span(3, 5), stream.AfterRevision(r1.Last))
	e.loadVersions(agg, span(4, 5), stream.AfterRevision(stream.Revision{Version: 3, Sequence: r2.First.Sequence}))
	e.loadVersions(agg, nil, stream.AfterRevision(r2.Last))
	e.loadVersions(agg, span(4, 5), stream.AfterRevision(r1.Last), stream.FromVersion(4))
	// A revision that lies about the version: the first event read is not
	// the one after it.
	tail := e.subject(agg)
	evs, err := collect(e.st.Load(e.ctx, agg, stream.AfterRevision(stream.Revision{Version: 7, Sequence: r1.Last.Sequence})))
	require.ErrorIs(t, err, stream.ErrDecode)
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, tail, se.Subject)
	require.Equal(t, r2.First.Sequence, se.Sequence)
	require.Equal(t, fmt.Sprintf("esnats: load %s at sequence %d: cannot decode event: version 3 is the first event of cart/tail after version 7 at sequence %d (expected 8)", tail, r2.First.Sequence, r1.Last.Sequence), err.Error())
	require.Empty(t, evs)
	// FromSequence replaces AfterRevision (and the check), and the other
	// way round.
	e.loadVersions(agg, span(3, 5), stream.AfterRevision(stream.Revision{Version: 7, Sequence: r1.Last.Sequence}), stream.FromSequence(r2.First.Sequence))
	_, err = collect(e.st.Load(e.ctx, agg, stream.FromSequence(r2.First.Sequence), stream.AfterRevision(stream.Revision{Version: 1, Sequence: r1.Last.Sequence})))
	require.ErrorIs(t, err, stream.ErrDecode)
}

// purger is a store that can erase an aggregate (Store.Purge,
// MemoryStore.Purge).
type purger interface {
	Purge(ctx context.Context, agg stream.Aggregate) error
}

// testPurgeStartsAgain: a purged aggregate starts again from no events:
// its next append is version 1 and it loads from there.
func testPurgeStartsAgain(e *env) {
	p, ok := e.st.(purger)
	if !ok {
		e.t.Skip("the store has no Purge method")
	}
	t := e.t
	agg := stream.Aggregate{Type: "cart", ID: "purged"}
	other := stream.Aggregate{Type: "cart", ID: "kept"}
	r := e.append(agg, stream.ExpectNone(), added("a", 3)...)
	o := e.append(other, stream.ExpectNone(), added("o", 1)...)
	require.NoError(t, p.Purge(e.ctx, agg))
	require.Equal(t, stream.Revision{}, e.last(agg))
	e.loadVersions(agg, nil)
	again := e.append(agg, stream.ExpectNone(), added("b", 2)...)
	require.Equal(t, uint64(1), again.First.Version)
	require.Greater(t, again.First.Sequence, r.Last.Sequence, "sequences are never reused")
	evs := e.loadVersions(agg, span(1, 2))
	require.Equal(t, again.First, evs[0].Revision())
	// ExpectAny numbers from the purged state too.
	ra, err := e.st.Append(e.ctx, agg, stream.ExpectAny(), added("c", 1))
	require.NoError(t, err)
	require.Equal(t, uint64(3), ra.Last.Version)
	e.loadVersions(agg, span(1, 3))
	e.loadVersions(other, span(1, 1))
	require.Equal(t, o.Last, e.last(other))
}

// testForeignWriter: events written by another program (another language,
// the nats CLI) with only the required headers are read like the store's own.
func testForeignWriter(e *env) {
	t := e.t
	agg := stream.Aggregate{Type: "cart", ID: "foreign.1"}
	subj := e.subject(agg)
	require.Equal(t, e.fx.Subject+".cart.foreign=2E1", subj)
	minimal := func(version uint64, contentType string) nats.Header {
		h := nats.Header{
			stream.HeaderEventType: {TypeItemAdded},
			stream.HeaderVersion:   {strconv.FormatUint(version, 10)},
		}
		if contentType != "" {
			h[stream.HeaderContentType] = []string{contentType}
		}
		return h
	}
	s1 := e.fx.PutRaw(subj, minimal(1, "application/json"), []byte(`{"sku":"json","qty":2,"extra":true}`))
	s2 := e.fx.PutRaw(subj, minimal(2, ""), mustMsgpack(ItemAdded{SKU: "msgpack", Quantity: 3}))
	s3 := e.fx.PutRaw(subj, minimal(3, "Application/JSON; charset=utf-8"), mustJSON(ItemAdded{SKU: "json2"}))
	rev := e.last(agg)
	require.Equal(t, stream.Revision{Version: 3, Sequence: s3}, rev)
	r := e.append(agg, stream.ExpectRevision(rev), added("own", 1)...)
	require.Equal(t, uint64(4), r.Last.Version)

	evs := e.load(agg, 4)
	require.Equal(t, []uint64{s1, s2, s3, r.Last.Sequence}, sequences(evs))
	require.Equal(t, span(1, 4), versions(evs))
	require.Equal(t, ItemAdded{SKU: "json", Quantity: 2}, evs[0].Data)
	require.Equal(t, "application/json", evs[0].ContentType)
	require.Equal(t, ItemAdded{SKU: "msgpack", Quantity: 3}, evs[1].Data)
	require.Equal(t, "", evs[1].ContentType)
	require.Equal(t, ItemAdded{SKU: "json2"}, evs[2].Data)
	for _, ev := range evs[:3] {
		require.Equal(t, agg, ev.Aggregate)
		require.Empty(t, ev.ID)
		require.True(t, ev.Time.IsZero())
		require.Equal(t, 1, ev.SchemaVersion)
		require.Nil(t, ev.Metadata)
	}
	require.NotEmpty(t, evs[3].ID)
}

// upcastRegistry registers customer-renamed at schema version 2 with an
// upcaster from version 1.
func upcastRegistry() *stream.Registry {
	reg := newRegistry()
	stream.MustRegister[CustomerRenamed](reg, TypeCustomerRenamed,
		stream.SchemaVersion(2),
		stream.Upcast(1, func(v CustomerRenamedV1) (CustomerRenamed, error) {
			first, last, _ := strings.Cut(v.Name, " ")
			return CustomerRenamed{First: first, Last: last}, nil
		}))
	return reg
}

// testUpcast: events stored with an older schema version are read as the
// current type.
func testUpcast(e *env) {
	t := e.t
	agg := stream.Aggregate{Type: "customer", ID: "42"}
	subj := e.subject(agg)
	s1 := e.fx.PutRaw(subj, header(TypeCustomerRenamed, 1), mustMsgpack(CustomerRenamedV1{Name: "Ada Lovelace"}))
	s2 := e.fx.PutRaw(subj, with(header(TypeCustomerRenamed, 2), stream.HeaderContentType, stream.ContentTypeJSON),
		mustJSON(CustomerRenamedV1{Name: "Grace Hopper"}))
	rev := e.last(agg)
	require.Equal(t, stream.Revision{Version: 2, Sequence: s2}, rev)
	r := e.append(agg, stream.ExpectRevision(rev), stream.EventData{Data: CustomerRenamed{First: "Alan", Last: "Turing"}})

	evs := e.load(agg, 3)
	require.Equal(t, []uint64{s1, s2, r.Last.Sequence}, sequences(evs))
	require.Equal(t, CustomerRenamed{First: "Ada", Last: "Lovelace"}, evs[0].Data)
	require.Equal(t, 1, evs[0].SchemaVersion)
	require.Equal(t, CustomerRenamed{First: "Grace", Last: "Hopper"}, evs[1].Data)
	require.Equal(t, 1, evs[1].SchemaVersion)
	require.Equal(t, stream.ContentTypeJSON, evs[1].ContentType)
	require.Equal(t, CustomerRenamed{First: "Alan", Last: "Turing"}, evs[2].Data)
	require.Equal(t, 2, evs[2].SchemaVersion)
	all := e.readAll(3, stream.WithEventTypes(TypeCustomerRenamed))
	require.Equal(t, CustomerRenamed{First: "Ada", Last: "Lovelace"}, all[0].Data)
}

// testCancelledContext: with a context that has ended, appends fail with its
// error and write nothing; reads fail with its error.
func testCancelledContext(e *env) {
	r := e.append(cart1, stream.ExpectNone(), added("a", 1)...)
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	expired, cancel2 := context.WithDeadline(e.ctx, time.Now().Add(-time.Second))
	defer cancel2()
	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{{"cancelled", cancelled, context.Canceled}, {"deadline exceeded", expired, context.DeadlineExceeded}} {
		e.sub(c.name, func(e *env) {
			t := e.t
			_, err := e.st.Append(c.ctx, cart1, stream.ExpectRevision(r.Last), added("b", 1))
			require.ErrorIs(t, err, c.want, "Append ExpectRevision")
			_, err = e.st.Append(c.ctx, cart2, stream.ExpectNone(), added("b", 3))
			require.ErrorIs(t, err, c.want, "Append ExpectNone")
			_, err = e.st.Append(c.ctx, cart2, stream.ExpectAny(), added("b", 1))
			require.ErrorIs(t, err, c.want, "Append ExpectAny")
			_, err = e.st.AppendBatch(c.ctx, []stream.AppendRequest{
				{Aggregate: cart2, Expect: stream.ExpectNone(), Events: added("b", 1)},
				{Aggregate: cart3, Expect: stream.ExpectNone(), Events: added("c", 1)},
			})
			require.ErrorIs(t, err, c.want, "AppendBatch")
			_, err = e.st.LastRevision(c.ctx, cart1)
			require.ErrorIs(t, err, c.want, "LastRevision")
			_, err = collect(e.st.Load(c.ctx, cart1))
			require.ErrorIs(t, err, c.want, "Load")
			_, err = collect(e.st.ReadAll(c.ctx))
			require.ErrorIs(t, err, c.want, "ReadAll")

			require.Equal(t, r.Last, e.last(cart1))
			require.Equal(t, stream.Revision{}, e.last(cart2))
			require.Equal(t, stream.Revision{}, e.last(cart3))
			e.readAll(1)
		})
	}
}
