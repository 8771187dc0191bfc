package hostiletest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// rawTime is the Esnats-Time of the raw messages.
const rawTime = "2026-01-02T03:04:05.000000006Z"

// msgCase is one message another client writes into the store: a valid raw
// event on shop.<key>.x at version good+1, changed by edit.
type msgCase struct {
	key   string // the aggregate type of its subject; names the case
	input string // what the other client wrote, for the page
	good  int    // valid events esnats appends to the aggregate first
	edit  func(m *nats.Msg)
}

func setHeader(k, v string) func(*nats.Msg) { return func(m *nats.Msg) { m.Header.Set(k, v) } }
func delHeader(k string) func(*nats.Msg)    { return func(m *nats.Msg) { m.Header.Del(k) } }
func setBody(b []byte) func(*nats.Msg)      { return func(m *nats.Msg) { m.Data = b } }
func setSubject(s string) func(*nats.Msg)   { return func(m *nats.Msg) { m.Subject = s } }

// declared returns a msgpack head byte followed by a 4-byte length of
// 2^32-1: a value that claims 4 GiB in 5 bytes.
func declared(head byte) []byte { return []byte{head, 0xff, 0xff, 0xff, 0xff} }

// headerSize is what the server counts of m's headers against a stream's
// max message size (nats.go's encoding: NATS/1.0, one line per value, a
// blank line).
func headerSize(m *nats.Msg) int {
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// fill makes m a valid ItemAdded whose headers and body together are size
// bytes (plus extra bytes of garbage after the body).
func fill(size, extra int) func(*nats.Msg) {
	return func(m *nats.Msg) {
		want := size - headerSize(m)
		n := want
		for range 3 {
			b, err := stream.Msgpack().Marshal(ItemAdded{SKU: strings.Repeat("x", n), Quantity: 1})
			if err != nil {
				panic(err)
			}
			if len(b) == want {
				m.Data = append(b, bytes.Repeat([]byte{0}, extra)...)
				return
			}
			n += want - len(b)
		}
		panic("fill: no body of the size wanted")
	}
}

var msgCases = []msgCase{
	{key: "nohdr", input: "no headers at all (a plain `nats pub`)", edit: func(m *nats.Msg) { m.Header = nats.Header{} }},
	{key: "notype", input: "no `Esnats-Type`", edit: delHeader(stream.HeaderEventType)},
	{key: "noversion", input: "no `Esnats-Version`", edit: delHeader(stream.HeaderVersion)},
	{key: "vnan", input: "`Esnats-Version: one`", edit: setHeader(stream.HeaderVersion, "one")},
	{key: "vzero", input: "`Esnats-Version: 0`", edit: setHeader(stream.HeaderVersion, "0")},
	{key: "vneg", input: "`Esnats-Version: -1`", edit: setHeader(stream.HeaderVersion, "-1")},
	{key: "vgap", input: "version 3 after version 1 (a gap)", good: 1, edit: setHeader(stream.HeaderVersion, "3")},
	{key: "vback", input: "version 2 after version 3 (going backwards)", good: 3, edit: setHeader(stream.HeaderVersion, "2")},
	{key: "vdup", input: "version 1 after version 1 (a duplicate)", good: 1, edit: setHeader(stream.HeaderVersion, "1")},
	{key: "vfirst", input: "version 2 as an aggregate's first event", edit: setHeader(stream.HeaderVersion, "2")},
	{key: "unknowntype", input: "`Esnats-Type: NoSuchEvent` (not registered)", edit: setHeader(stream.HeaderEventType, "NoSuchEvent")},
	{key: "badtypename", input: "`Esnats-Type: Item Added` (not a valid name)", edit: setHeader(stream.HeaderEventType, "Item Added")},
	{key: "garbage", input: "a body that is not msgpack (`0xc1` and text)", edit: setBody([]byte("\xc1garbage"))},
	{key: "emptybody", input: "an empty body", edit: setBody(nil)},
	{key: "shape", input: "a msgpack string where the event is a map", edit: setBody([]byte("\xa5hello"))},
	{key: "trailing", input: "a valid body followed by two more bytes", edit: func(m *nats.Msg) { m.Data = append(m.Data, 0xc0, 0xc0) }},
	{key: "ctplain", input: "`Content-Type: text/plain`", edit: setHeader(stream.HeaderContentType, "text/plain")},
	{key: "ctjson", input: "`Content-Type: application/json` on a msgpack body", edit: setHeader(stream.HeaderContentType, stream.ContentTypeJSON)},
	{key: "jsonnoct", input: "a JSON body and no `Content-Type` (msgpack is assumed)", edit: func(m *nats.Msg) {
		m.Header.Del(stream.HeaderContentType)
		m.Data = []byte(`{"sku":"jsonnoct","quantity":1}`)
	}},
	{key: "jsonok", input: "a JSON body with `Content-Type: application/json; charset=utf-8` (valid)", edit: func(m *nats.Msg) {
		m.Header.Set(stream.HeaderContentType, "application/json; charset=utf-8")
		m.Data = []byte(`{"sku":"jsonok","quantity":1}`)
	}},
	{key: "hugearray", input: "msgpack declaring an array of 2³²−1 elements (5 bytes)", edit: setBody(declared(0xdd))},
	{key: "hugemap", input: "msgpack declaring a map of 2³²−1 entries (5 bytes)", edit: setBody(declared(0xdf))},
	{key: "hugestr", input: "msgpack declaring a string of 2³²−1 bytes (5 bytes)", edit: setBody(declared(0xdb))},
	{key: "hugebin", input: "msgpack declaring a binary of 2³²−1 bytes (5 bytes)", edit: setBody(declared(0xc6))},
	{key: "hugemapinmap", input: "a valid map whose `sku` declares a 2³²−1 entry map", edit: setBody(append([]byte("\x82\xa3sku"), append(declared(0xdf), "\xa8quantity\x01"...)...))},
	{key: "deep", input: "arrays nested 20000 deep (20 KB)", edit: setBody(append(bytes.Repeat([]byte{0x91}, 20000), 0xc0))},
	{key: "schemanew", input: "`Esnats-Schema: 99` (newer than the code)", edit: setHeader(stream.HeaderSchema, "99")},
	{key: "schemazero", input: "`Esnats-Schema: 0`", edit: setHeader(stream.HeaderSchema, "0")},
	{key: "schemanan", input: "`Esnats-Schema: x`", edit: setHeader(stream.HeaderSchema, "x")},
	{key: "badtime", input: "`Esnats-Time: yesterday`", edit: setHeader(stream.HeaderTime, "yesterday")},
	{key: "badesc", input: "subject `shop.badesc.a=ZZ` (an escape that is not hex)", edit: setSubject("shop.badesc.a=ZZ")},
	{key: "lowesc", input: "subject `shop.lowesc.a=2e` (a lower-case escape)", edit: setSubject("shop.lowesc.a=2e")},
	{key: "keptesc", input: "subject `shop.keptesc.=41` (an escaped `A`)", edit: setSubject("shop.keptesc.=41")},
	{key: "utf8esc", input: "subject `shop.utf8esc.=FF` (escapes to invalid UTF-8)", edit: setSubject("shop.utf8esc.=FF")},
	{key: "cutesc", input: "subject `shop.cutesc.a=4` (a truncated escape)", edit: setSubject("shop.cutesc.a=4")},
	{key: "longid", input: "subject with an id token of 1537 bytes", edit: setSubject("shop.longid." + strings.Repeat("a", 1537))},
	{key: "extratoken", input: "subject `shop.extratoken.a.b` (four tokens)", edit: setSubject("shop.extratoken.a.b")},
	{key: "shortsubj", input: "subject `shop.shortsubj` (two tokens)", edit: setSubject("shop.shortsubj")},
	{key: "badtype", input: "subject `shop.c@rt.x` (an invalid aggregate type)", edit: setSubject("shop.c@rt.x")},
	{key: "atlimit", input: "a valid event of exactly `MaxEventSize` bytes (headers and body)", edit: fill(maxEventSize, 0)},
	{key: "overlimit", input: "the same with one byte more", edit: fill(maxEventSize, 1)},
	{key: "overpayload", input: "a body of 2 MiB (over the server's 1 MiB max_payload)", edit: setBody(make([]byte, 2<<20))},
}

// validRaw is the valid raw event a case starts from.
func validRaw(c msgCase) *nats.Msg {
	m := nats.NewMsg(storeName + "." + c.key + ".x")
	m.Header.Set(stream.HeaderEventID, "hostile-"+c.key)
	m.Header.Set(stream.HeaderEventType, "ItemAdded")
	m.Header.Set(stream.HeaderVersion, strconv.Itoa(c.good+1))
	m.Header.Set(stream.HeaderTime, rawTime)
	m.Header.Set(stream.HeaderContentType, stream.ContentTypeMsgpack)
	m.Header.Set(stream.HeaderSchema, "1")
	data, err := stream.Msgpack().Marshal(ItemAdded{SKU: c.key, Quantity: 1})
	if err != nil {
		panic(err)
	}
	m.Data = data
	return m
}

// parked is a message of the dead-letter stream.
type parked struct {
	header nats.Header
	data   []byte
}

// deadLetters reads the dead-letter stream, by consumer and parked
// sequence.
func deadLetters(t testing.TB, ctx context.Context, js jetstream.JetStream) map[string]map[uint64]parked {
	t.Helper()
	st, err := js.Stream(ctx, storeName+"_dlq")
	require.NoError(t, err)
	out := map[string]map[uint64]parked{}
	for seq := uint64(1); seq <= st.CachedInfo().State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		require.NoError(t, err)
		cons := m.Header.Get(consumers.HeaderParkedConsumer)
		ps, err := strconv.ParseUint(m.Header.Get(consumers.HeaderParkedSequence), 10, 64)
		require.NoError(t, err)
		if out[cons] == nil {
			out[cons] = map[uint64]parked{}
		}
		_, dup := out[cons][ps]
		require.False(t, dup, "parked twice by %s: %d", cons, ps)
		out[cons][ps] = parked{header: m.Header, data: m.Data}
	}
	return out
}

// seqSet is a set of sequences shared with handlers.
type seqSet struct {
	mu sync.Mutex
	m  map[uint64]bool
}

func (s *seqSet) add(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[uint64]bool{}
	}
	s.m[seq] = true
}

func (s *seqSet) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[seq]
}

// runUntil runs run(ctx) until done() holds (then it cancels, expects nil
// and returns true) or run returns by itself (its error is returned).
func runUntil(t testing.TB, parent context.Context, run func(context.Context) error, done func() bool) (bool, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- run(ctx) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-res:
			return false, err
		case <-tick.C:
			if done() {
				cancel()
				select {
				case err := <-res:
					require.NoError(t, err, "Run after its context ended")
				case <-time.After(15 * time.Second):
					t.Fatal("Run did not return after its context ended")
				}
				return true, nil
			}
		case <-deadline:
			t.Fatal("neither done nor returned in 30s: a hang")
		}
	}
}

// handleAll sets handlers of both event types on c that note the sequences.
func handleAll(c *consumers.Consumer, seen *seqSet) {
	h := func(_ context.Context, ev *stream.Event) error { seen.add(ev.Sequence); return nil }
	c.Handle("ItemAdded", h)
	c.Handle("CheckedOut", h)
}

// countModel is a projection model that notes the sequences it applies.
func countModel(seen *seqSet) *projections.Memory[int] {
	return projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		view[ev.Aggregate.Type]++
		seen.add(ev.Sequence)
		return nil
	})
}

// TestHostileMessages writes each msgCase into a store between valid
// events and gives the store to every reader.
func TestHostileMessages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testCtx(t, 2*time.Minute)
	messagesTable.want = len(msgCases)
	wrappingTable.want = 5

	before := stream.Aggregate{Type: "good", ID: "before"}
	_, err := f.store.Append(ctx, before, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "before", Quantity: 1}}})
	require.NoError(t, err)

	type written struct {
		seq    uint64
		pubErr error
		msg    *nats.Msg
	}
	out := make([]written, len(msgCases))
	for i, c := range msgCases {
		if c.good > 0 {
			evs := make([]stream.EventData, c.good)
			for j := range evs {
				evs[j] = stream.EventData{Data: ItemAdded{SKU: c.key, Quantity: 1}}
			}
			_, err := f.store.Append(ctx, stream.Aggregate{Type: c.key, ID: "x"}, stream.ExpectNone(), evs)
			require.NoError(t, err)
		}
		m := validRaw(c)
		c.edit(m)
		ack, err := f.js.PublishMsg(ctx, m)
		out[i] = written{pubErr: err, msg: m}
		if err == nil {
			out[i].seq = ack.Sequence
		}
	}
	after := stream.Aggregate{Type: "good", ID: "after"}
	res, err := f.store.Append(ctx, after, stream.ExpectNone(), []stream.EventData{{Data: ItemAdded{SKU: "after", Quantity: 1}}})
	require.NoError(t, err)
	lastGood := res.Last.Sequence
	total := f.lastSeq(t)
	require.Equal(t, lastGood, total)
	require.Equal(t, uint64(2), out[0].seq, "the page says the first case is at sequence 2")

	// ReadAll of the whole store: it stops at the first undecodable
	// message; with SkipUndecodable every one is reported and the read
	// reaches the last valid event.
	var firstErr error
	n := 0
	for _, err := range f.store.ReadAll(ctx) {
		if err != nil {
			firstErr = err
			break
		}
		n++
	}
	assert.Equal(t, 1, n, "the valid event before the first bad message")
	var se *stream.Error
	require.ErrorAs(t, firstErr, &se)
	assert.Equal(t, out[0].seq, se.Sequence)
	skipped := map[uint64]error{}
	var readSeqs []uint64
	for ev, err := range f.store.ReadAll(ctx, stream.SkipUndecodable(func(err error) bool {
		var se *stream.Error
		require.ErrorAs(t, err, &se)
		skipped[se.Sequence] = err
		return true
	})) {
		require.NoError(t, err)
		readSeqs = append(readSeqs, ev.Sequence)
	}
	require.NotEmpty(t, readSeqs)
	assert.Equal(t, lastGood, readSeqs[len(readSeqs)-1], "ReadAll with SkipUndecodable reads on to the end")
	assert.Equal(t, int(total), len(readSeqs)+len(skipped), "every message is read or reported")

	// The esnats command shows every message, the undecodable ones with
	// the reason.
	ctxFile := filepath.Join(t.TempDir(), "ctx.json") // no nats context of the machine's user
	require.NoError(t, os.WriteFile(ctxFile, []byte(`{}`), 0o600))
	var cliOut, cliErr bytes.Buffer
	exit := cli.Run(ctx, cli.Options{Registry: registry(), Stdout: &cliOut, Stderr: &cliErr},
		[]string{"--context", ctxFile, "-s", f.srv.ClientURL(), "events", storeName, "--json", "-n", "0"})
	require.Equal(t, cli.ExitOK, exit, cliErr.String())
	shown := map[uint64]string{}
	for _, line := range strings.Split(strings.TrimSpace(cliOut.String()), "\n") {
		var rec struct {
			Seq         uint64 `json:"seq"`
			DecodeError string `json:"decode_error"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		shown[rec.Seq] = rec.DecodeError
	}
	assert.Len(t, shown, int(total), "esnats events skipped messages")

	// A consumer of the whole store with the Park policy: every valid event
	// is handled, every undecodable one parked, and it goes on to the end.
	parker, err := consumers.New(f.js, f.store, consumers.Config{Name: "parker", Retries: 1, Backoff: time.Millisecond})
	require.NoError(t, err)
	handled := &seqSet{}
	handleAll(parker, handled)
	done, err := runUntil(t, ctx, parker.Run, func() bool { return handled.has(lastGood) })
	require.NoError(t, err)
	require.True(t, done)
	pst, err := parker.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, lastGood, pst.Position, "the consumer acknowledged everything")

	// A projection of the whole store with the Park policy.
	runner := projections.NewRunner(f.js, f.store, nil)
	applied := &seqSet{}
	require.NoError(t, runner.Add(projections.Projection{Name: "proj-park", Model: countModel(applied), Consumer: consumers.Config{Retries: 1, Backoff: time.Millisecond}}))
	done, err = runUntil(t, ctx, runner.Run, func() bool { return applied.has(lastGood) })
	require.NoError(t, err)
	require.True(t, done)
	rst, err := runner.StatusOf(ctx, "proj-park")
	require.NoError(t, err)
	assert.Equal(t, lastGood, rst.Position)
	dlq := deadLetters(t, ctx, f.js)
	assert.Equal(t, uint64(len(dlq["parker"])), pst.Parked)
	assert.Equal(t, uint64(len(dlq["proj-park"])), rst.Parked)
	lastParked := func(who string) (last uint64) {
		for seq := range dlq[who] {
			last = max(last, seq)
		}
		return last
	}
	if lastParked("parker") == lastParked("proj-park") {
		assert.Equal(t, pst.LastError, rst.LastError, "the reason of the same message")
	}
	wrappingTable.record(4, "`Status()` of that consumer and of that projection (`StatusOf`) afterwards: every valid event handled, the position at the last event",
		fmt.Sprintf("`Parked`: %d and %d, `Lag`: %d, `LastError`: %s (the reason of the last one parked)", pst.Parked, rst.Parked, pst.Lag, code(pst.LastError)))
	// The table of how consumers report an undecodable message shows the
	// first message both the consumer and the projection park.
	var wrapSeq uint64
	for seq := range dlq["parker"] {
		if _, ok := dlq["proj-park"][seq]; ok && (wrapSeq == 0 || seq < wrapSeq) {
			wrapSeq = seq
		}
	}
	require.NotZero(t, wrapSeq, "no message parked by both")

	t.Run("cases", func(t *testing.T) {
		for i, c := range msgCases {
			w := out[i]
			t.Run(c.key, func(t *testing.T) {
				t.Parallel()
				if w.pubErr != nil {
					by := "the server"
					if errors.Is(w.pubErr, nats.ErrMaxPayload) {
						by = "the publisher's client (nats.go)"
					}
					messagesTable.record(i, c.input, "refused by "+by+": "+code(w.pubErr.Error())+"; nothing is stored", "—", matches(w.pubErr), "—", "—", "—")
					return
				}
				checkMessage(t, ctx, f, i, c, w.msg, w.seq, skipped, handled, applied, dlq, shown, wrapSeq)
			})
		}
	})

	// Nothing is lost: every message is still in the store as written.
	st, err := f.js.Stream(ctx, storeName)
	require.NoError(t, err)
	assert.Equal(t, total, st.CachedInfo().State.Msgs)
	for _, w := range out {
		if w.pubErr != nil {
			continue
		}
		m, err := st.GetMsg(ctx, w.seq)
		require.NoError(t, err)
		assert.Equal(t, w.msg.Subject, m.Subject)
		assert.True(t, bytes.Equal(w.msg.Data, m.Data), "message %d changed", w.seq)
	}
}

// checkMessage gives one written message to every reader, checks what they
// do and records the row of the page.
func checkMessage(t *testing.T, ctx context.Context, f *fixture, row int, c msgCase, m *nats.Msg, seq uint64,
	skipped map[uint64]error, handled, applied *seqSet, dlq map[string]map[uint64]parked, shown map[uint64]string, wrapSeq uint64) {
	named := func(err error) {
		t.Helper()
		var se *stream.Error
		require.ErrorAs(t, err, &se, "%v", err)
		assert.Equal(t, m.Subject, se.Subject, "the error names the subject")
		assert.Equal(t, seq, se.Sequence, "the error names the sequence")
	}

	// The aggregate the subject names, if it names one.
	var agg *stream.Aggregate
	if rest, ok := strings.CutPrefix(m.Subject, storeName+"."); ok {
		if typ, tok, ok := strings.Cut(rest, "."); ok && stream.ValidateName("t", typ) == nil {
			if id, err := stream.DecodeID(tok); err == nil {
				agg = &stream.Aggregate{Type: typ, ID: id}
			}
		}
	}

	var loadErr, repoErr error
	if agg != nil {
		for _, err := range f.store.Load(ctx, *agg) {
			if err != nil {
				loadErr = err
			}
		}
		before := f.subjectCount(t, m.Subject)
		repo := f.repo(t, agg.Type)
		_, repoErr = repo.Load(ctx, agg.ID)
		called := false
		updErr := repo.Update(ctx, agg.ID, func(a *Thing) error {
			called = true
			if loadErr != nil || repoErr != nil {
				a.Record(ItemAdded{SKU: "update", Quantity: 1})
			}
			return nil // on a good history: a command that records nothing
		})
		after := f.subjectCount(t, m.Subject)
		if loadErr != nil {
			named(loadErr)
			require.Error(t, repoErr)
			assert.Equal(t, loadErr.Error(), repoErr.Error(), "Repository.Load reports the store's error")
			require.Error(t, updErr)
			assert.Equal(t, loadErr.Error(), updErr.Error(), "Repository.Update reports the store's error")
			assert.False(t, called, "Update ran the command on a broken history")
			assert.Equal(t, before, after, "Update wrote")
		} else if repoErr != nil {
			// Store.Load checks the versions of a history (the first is
			// 1, then contiguous), so the repository never finds one it
			// refuses that the store loaded.
			t.Errorf("the repository refused a history Store.Load returns: %v", repoErr)
			require.Error(t, updErr)
			assert.False(t, called)
			assert.Equal(t, before, after, "Update wrote")
		} else {
			require.NoError(t, updErr)
			assert.True(t, called)
		}
	}

	// ReadAll from the message on.
	var readErr error
	var readEv *stream.Event
	for ev, err := range f.store.ReadAll(ctx, stream.FromSequence(seq), stream.WithLimit(1)) {
		readEv, readErr = ev, err
	}
	if readErr != nil {
		named(readErr)
		require.Contains(t, skipped, seq, "SkipUndecodable reported it")
		assert.Equal(t, readErr.Error(), skipped[seq].Error())
	} else {
		require.NotNil(t, readEv)
		assert.Equal(t, seq, readEv.Sequence)
		assert.NotContains(t, skipped, seq)
	}

	// The consumer and the projection with the Park policy: each parked
	// the message, handled it, or skipped it (acknowledged it without a
	// call: the consumer has a handler per event type, and none for the
	// message's type).
	typ := m.Header.Get(stream.HeaderEventType)
	hasHandler := typ == "ItemAdded" || typ == "CheckedOut" // handleAll
	parkOutcome := map[string]string{}
	for _, who := range []string{"parker", "proj-park"} {
		p, isParked := dlq[who][seq]
		seen := handled
		if who == "proj-park" {
			seen = applied
		}
		switch {
		case isParked:
			parkOutcome[who] = "parked"
			require.Error(t, readErr, "%s parked a decodable event", who)
			assert.False(t, seen.has(seq))
			assert.Equal(t, storeName, p.header.Get(consumers.HeaderParkedStream))
			assert.Equal(t, m.Subject, p.header.Get(consumers.HeaderParkedSubject))
			assert.Equal(t, strconv.FormatUint(seq, 10), p.header.Get(consumers.HeaderParkedSequence))
			assert.Equal(t, "1", p.header.Get(consumers.HeaderParkedAttempts))
			assert.Equal(t, readErr.Error(), p.header.Get(consumers.HeaderParkedReason))
			assert.Equal(t, m.Header.Get(stream.HeaderEventID), p.header.Get(consumers.HeaderParkedEventID))
			assert.True(t, bytes.Equal(m.Data, p.data), "the parked message keeps the payload")
		case seen.has(seq):
			parkOutcome[who] = "handled"
			require.NoError(t, readErr, "%s handled an event the store cannot read", who)
		default:
			parkOutcome[who] = "skipped"
			require.Error(t, readErr, "%s skipped a decodable event", who)
			if who == "parker" {
				assert.False(t, hasHandler, "the consumer skipped an event of a type it handles")
			}
		}
	}
	if readErr == nil {
		assert.Equal(t, "handled", parkOutcome["parker"])
		assert.Equal(t, "handled", parkOutcome["proj-park"])
	}

	// A consumer and a projection with the Stop policy, from the message on:
	// they stop where the Park policy parks, and do the same otherwise.
	var types []string // the aggregate's type only: later messages of other cases do not matter
	if agg != nil {
		types = []string{agg.Type}
	}
	stopOutcome, stopErr := runStopConsumer(t, ctx, f, "stop-"+c.key, seq, types)
	projOutcome, projErr := runStopProjection(t, ctx, f, "stop-p-"+c.key, seq, types)
	for _, o := range []struct {
		who, park, stop string
		err             error
		want            string
	}{
		{"consumer", parkOutcome["parker"], stopOutcome, stopErr,
			fmt.Sprintf("esnats: consume stop-%s %s at sequence %d: handler failed 1 times, stopping: %s", c.key, m.Subject, seq, readErr)},
		{"projection", parkOutcome["proj-park"], projOutcome, projErr,
			fmt.Sprintf("projections: %q: esnats: consume stop-p-%s %s at sequence %d: handler failed 1 times, stopping: %s", "stop-p-"+c.key, c.key, m.Subject, seq, readErr)},
	} {
		switch o.park {
		case "parked":
			assert.Equal(t, "stops", o.stop, "%s: Stop where Park parks", o.who)
			if o.err != nil {
				named(o.err)
				assert.Equal(t, o.want, o.err.Error())
			}
		default:
			require.NoError(t, o.err, o.who)
			assert.Equal(t, o.park, o.stop, "%s: the same with Stop as with Park", o.who)
		}
	}
	consCell := parkOutcome["parker"] + " / " + stopOutcome
	projCell := parkOutcome["proj-park"] + " / " + projOutcome
	if consCell == "handled / handled" {
		projCell = "applied / applied"
	}

	// The row of the page.
	loadCell := "— (the subject is no aggregate's)"
	switch {
	case agg == nil:
	case loadErr != nil:
		loadCell = code(loadErr.Error())
	case repoErr != nil:
		loadCell = "Load returns it; Repository: " + code(repoErr.Error())
	default:
		loadCell = "loads"
	}
	readCell := "returns it"
	if readErr != nil {
		readCell = "same error"
		if loadErr == nil || loadErr.Error() != readErr.Error() {
			readCell = code(readErr.Error())
		}
		readCell += "; skipped and reported with SkipUndecodable"
	}
	first := loadErr
	for _, e := range []error{readErr, repoErr} {
		if first == nil {
			first = e
		}
	}
	is := "—"
	if first != nil {
		is = matches(first)
	}
	long := strings.Repeat("a", 1537)
	reason, ok := shown[seq]
	require.True(t, ok, "esnats events did not show it")
	if readErr != nil {
		// esnats events (with the store's registry) gives the reason the
		// store refuses the message, in the store's words.
		require.NotEmpty(t, reason, "esnats events gives no reason")
		assert.Contains(t, readErr.Error(), reason, "esnats events gives another reason than the store")
	}
	cliCell := "shown"
	switch {
	case readErr != nil && reason != "":
		cliCell = "shown with a reason"
	case readErr != nil:
		cliCell = "shown, **no reason given**"
	case reason != "":
		cliCell = "shown with a reason: " + code(reason)
	}
	messagesTable.record(row, c.input, loadCell, strings.ReplaceAll(readCell, long, "aaa…(1537 bytes)"), is, consCell, projCell, cliCell)

	if seq == wrapSeq {
		wrappingTable.setIntro(fmt.Sprintf("Real messages for the first row above that the consumer and the projection park (%s), at sequence %d of the store. The `parker` consumer and the `proj-park` projection read the whole store with the Park policy.", c.input, seq))
		wrappingTable.record(0, "Store.Load, ReadAll, Repository.Load and Update", code(readErr.Error()))
		wrappingTable.record(1, fmt.Sprintf("consumer with `OnFailure: consumers.Stop` (`Run`'s error; the consumer is named `stop-%s`)", c.key), code(stopErr.Error()))
		wrappingTable.record(2, fmt.Sprintf("projection with `OnFailure: consumers.Stop` (`Runner.Run`'s error; the projection is named `stop-p-%s`)", c.key), code(projErr.Error()))
		wrappingTable.record(3, "consumer with `OnFailure: consumers.Park` (the default): the dead-letter message on `shop_dlq.parker`", headerList(dlq["parker"][seq].header))
	}
}

// headerList renders a message's headers, sorted.
func headerList(h nats.Header) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, code(k+": "+h.Get(k)))
	}
	return strings.Join(parts, "<br>")
}

// runStopConsumer runs a consumer with the Stop policy from seq until it
// stops ("stops" and Run's error), handles the event at seq ("handled") or
// acknowledges it without a call ("skipped").
func runStopConsumer(t *testing.T, ctx context.Context, f *fixture, name string, seq uint64, types []string) (string, error) {
	t.Helper()
	c, err := consumers.New(f.js, f.store, consumers.Config{Name: name, AggregateTypes: types, Start: consumers.FromSequence(seq), OnFailure: consumers.Stop, Retries: 1})
	require.NoError(t, err)
	seen := &seqSet{}
	handleAll(c, seen)
	acked := func() bool {
		st, err := c.Status(ctx)
		return err == nil && st.Position >= seq
	}
	return stopOutcome(t, ctx, c.Run, seen, seq, acked)
}

// runStopProjection runs a projection with the Stop policy from seq until
// it stops, applies the event at seq or skips it, as runStopConsumer.
func runStopProjection(t *testing.T, ctx context.Context, f *fixture, name string, seq uint64, types []string) (string, error) {
	t.Helper()
	r := projections.NewRunner(f.js, f.store, nil)
	seen := &seqSet{}
	require.NoError(t, r.Add(projections.Projection{Name: name, AggregateTypes: types, Model: countModel(seen),
		Consumer: consumers.Config{Start: consumers.FromSequence(seq), OnFailure: consumers.Stop, Retries: 1}}))
	acked := func() bool {
		st, err := r.StatusOf(ctx, name)
		return err == nil && st.Position >= seq
	}
	out, err := stopOutcome(t, ctx, r.Run, seen, seq, acked)
	if err != nil && errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	return out, err
}

// stopOutcome runs run until it returns or the event at seq is handled
// (seen) or acknowledged without being handled (acked).
func stopOutcome(t *testing.T, ctx context.Context, run func(context.Context) error, seen *seqSet, seq uint64, acked func() bool) (string, error) {
	t.Helper()
	done, err := runUntil(t, ctx, run, func() bool { return seen.has(seq) || acked() })
	switch {
	case err != nil:
		return "stops", err
	case seen.has(seq):
		return "handled", nil
	default:
		require.True(t, done)
		return "skipped", nil
	}
}
