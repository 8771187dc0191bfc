package hostiletest

import (
	"bytes"
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// logRecorder is a slog handler that keeps the records.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	// The level and message only: the attributes (the error, the
	// aggregate, ...) are for operators and change more often.
	l.mu.Lock()
	l.recs = append(l.recs, r.Level.String()+" "+r.Message)
	l.mu.Unlock()
	return nil
}

func (l *logRecorder) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.recs
	l.recs = nil
	return out
}

// envelope is a snapshot value as a map, to be broken by a case.
type envelope map[string]any

// bytes encodes the envelope as a msgpack map with sorted keys, so that the
// offsets in decoding errors are the same from run to run.
func (e envelope) bytes(t testing.TB) []byte {
	t.Helper()
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	require.Less(t, len(keys), 16)
	out := []byte{0x80 | byte(len(keys))} // a fixmap
	for _, k := range keys {
		for _, v := range []any{k, e[k]} {
			b, err := stream.Msgpack().Marshal(v)
			require.NoError(t, err)
			out = append(out, b...)
		}
	}
	return out
}

// snapCase is one value another client stores under an aggregate's key.
type snapCase struct {
	id, input string
	value     func(t testing.TB, valid envelope) []byte
}

// without returns valid without the fields, changed by set.
func changed(set map[string]any, drop ...string) func(testing.TB, envelope) []byte {
	return func(t testing.TB, valid envelope) []byte {
		for _, k := range drop {
			delete(valid, k)
		}
		for k, v := range set {
			valid[k] = v
		}
		return valid.bytes(t)
	}
}

var snapCases = []snapCase{
	{"garbage", "not msgpack (`garbage`)", func(testing.TB, envelope) []byte { return []byte("garbage") }},
	{"empty", "an empty value", func(testing.TB, envelope) []byte { return []byte{} }},
	{"nov", "an envelope without `v`", changed(nil, "v")},
	{"v2", "`v: 2` (a future format)", changed(map[string]any{"v": 2})},
	{"other", "the envelope of another aggregate", changed(map[string]any{"agg_id": "somebody-else"})},
	{"version0", "`version: 0`", changed(map[string]any{"version": 0})},
	{"seq0", "`seq: 0`", changed(map[string]any{"seq": 0})},
	{"schema0", "`schema: 0`", changed(map[string]any{"schema": 0})},
	{"statetype", "`state_type: \"a b\"`", changed(map[string]any{"state_type": "a b"})},
	{"noct", "no `ct`", changed(nil, "ct")},
	{"hugestate", "a `state` declaring 2³²−1 bytes (bin 32)", func(t testing.TB, valid envelope) []byte {
		valid["state"] = []byte("MARKER!!")
		b := valid.bytes(t)
		i := bytes.Index(b, []byte("\xc4\x08MARKER!!"))
		require.GreaterOrEqual(t, i, 0)
		return append(append(b[:i:i], declared(0xc6)...), b[i+10:]...)
	}},
	{"badstate", "a valid envelope whose `state` does not decode", changed(map[string]any{"state": []byte("\xc1\xc1")})},
	{"othertype", "a valid envelope of `state_type: order`", changed(map[string]any{"state_type": "order"})},
	{"schema2", "a valid envelope of `schema: 2` (the repository's is 1)", changed(map[string]any{"schema": 2})},
	{"ctplain", "a valid envelope with `ct: text/plain`", changed(map[string]any{"ct": "text/plain"})},
	{"lie", "a valid envelope claiming version 50 at sequence 999 (items 50)", func(t testing.TB, valid envelope) []byte {
		state, err := stream.Msgpack().Marshal(&Thing{Items: 50})
		require.NoError(t, err)
		valid["version"], valid["seq"], valid["state"] = 50, 999, state
		return valid.bytes(t)
	}},
}

// TestCorruptSnapshots stores broken values in the snapshot bucket and
// loads the aggregates with a repository.
func TestCorruptSnapshots(t *testing.T) {
	t.Parallel()
	snapshotTable.want = len(snapCases)
	f := newFixture(t)
	ctx := testCtx(t, time.Minute)
	snaps, err := kv.NewStore(ctx, f.js, kv.Config{})
	require.NoError(t, err)
	bucket, err := f.js.KeyValue(ctx, kv.DefaultBucket)
	require.NoError(t, err)
	logs := &logRecorder{}
	repo, err := aggregate.NewRepository(aggregate.Config[*Thing]{Store: f.store, Type: "cart", New: newThing, Snapshots: snaps, CacheSize: -1, Logger: slog.New(logs)})
	require.NoError(t, err)
	state, err := stream.Msgpack().Marshal(&Thing{Items: 3})
	require.NoError(t, err)

	for i, c := range snapCases {
		agg := stream.Aggregate{Type: "cart", ID: c.id}
		res, err := f.store.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{
			{Data: ItemAdded{SKU: "a", Quantity: 1}}, {Data: ItemAdded{SKU: "b", Quantity: 1}}, {Data: ItemAdded{SKU: "c", Quantity: 1}},
		})
		require.NoError(t, err)
		valid := envelope{"v": 1, "agg_type": "cart", "agg_id": c.id, "version": 3, "seq": res.Last.Sequence,
			"state_type": "cart", "schema": 1, "ct": stream.ContentTypeMsgpack, "time": 0, "state": state}
		key, err := kv.Key(agg)
		require.NoError(t, err)
		rev, err := bucket.Put(ctx, key, c.value(t, valid))
		require.NoError(t, err)

		_, ok, getErr := snaps.Get(ctx, agg)
		getCell := "a snapshot (no error)"
		if getErr != nil {
			require.ErrorIs(t, getErr, kv.ErrCorruptSnapshot)
			assert.False(t, ok)
			var ke *kv.Error
			require.ErrorAs(t, getErr, &ke)
			assert.Equal(t, kv.DefaultBucket, ke.Bucket)
			assert.Equal(t, key, ke.Key)
			assert.Equal(t, rev, ke.Revision)
			getCell = code(strings.ReplaceAll(getErr.Error(), c.id, "<id>"))
		} else {
			require.True(t, ok)
		}

		logs.take()
		thing, err := repo.Load(ctx, c.id)
		require.NoError(t, err, "a broken snapshot must not keep an aggregate from loading")
		assert.Equal(t, 3, thing.Items, "loaded from the events")
		assert.Equal(t, uint64(3), thing.Version())
		recs := logs.take()
		require.Len(t, recs, 1, "one log record")
		repoCell := "loads from the events; logs " + code(recs[0])
		if c.id == "lie" {
			// The stream holds no event at the snapshot's sequence: the
			// snapshot is ahead of it, so it is ignored and deleted, and
			// commands work on the state the events give.
			_, ok, err := snaps.Get(ctx, agg)
			require.NoError(t, err)
			assert.False(t, ok, "the snapshot is deleted")
			require.NoError(t, repo.Update(ctx, c.id, func(a *Thing) error { a.Record(ItemAdded{SKU: "d", Quantity: 1}); return nil }))
			thing, err = repo.Load(ctx, c.id)
			require.NoError(t, err)
			assert.Equal(t, 4, thing.Items)
			assert.Equal(t, uint64(4), thing.Version())
			repoCell = "ignores it (the stream holds no event of version 50 at sequence 999): loads from the events and deletes the snapshot; logs " +
				code(recs[0]) + "; `Update` works"
		}
		snapshotTable.record(i, c.input, getCell, repoCell)
	}
}
