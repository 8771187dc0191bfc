package projections

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// kvCountApply counts items per SKU: the value of a SKU is its count in
// decimal ASCII.
func kvCountApply(ctx context.Context, tx *KVBatch, ev *stream.Event) error {
	item := ev.Data.(rmItem)
	switch ev.Type {
	case "item-added":
		old, _, err := tx.Get(item.SKU)
		if err != nil {
			return err
		}
		n := 0
		if len(old) > 0 {
			if n, err = strconv.Atoi(string(old)); err != nil {
				return err
			}
		}
		tx.Put(item.SKU, []byte(strconv.Itoa(n+item.Qty)))
	case "item-dropped":
		tx.Delete(item.SKU)
	case "poison":
		return errRMPoison
	}
	return nil
}

type kvEnv struct {
	js  jetstream.JetStream
	raw jetstream.KeyValue // the bucket, without the read model
	m   *KV
}

var kvBucketN atomic.Int64

// newKVEnv starts a server (once per test) and makes a read model on a new
// in-memory bucket.
func newKVEnv(t *testing.T) *kvEnv {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	return newKVEnvOn(t, js, fmt.Sprint("rm_test_", kvBucketN.Add(1)))
}

func newKVEnvOn(t *testing.T, js jetstream.JetStream, bucket string) *kvEnv {
	t.Helper()
	ctx := context.Background()
	m, err := NewKV(ctx, js, KVConfig{Bucket: bucket, Memory: true}, kvCountApply)
	require.NoError(t, err)
	raw, err := js.KeyValue(ctx, bucket)
	require.NoError(t, err)
	return &kvEnv{js: js, raw: raw, m: m}
}

// counts returns the read model's content as counts.
func (e *kvEnv) counts(t *testing.T) map[string]int {
	t.Helper()
	all, err := e.m.All(context.Background())
	require.NoError(t, err)
	out := map[string]int{}
	for k, v := range all {
		n, err := strconv.Atoi(string(v))
		require.NoError(t, err, "key %s", k)
		out[k] = n
	}
	return out
}

func (e *kvEnv) checkpoint(t *testing.T) uint64 {
	t.Helper()
	pos, err := e.m.Checkpoint(context.Background())
	require.NoError(t, err)
	return pos
}

func TestKVApply(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	assert.Equal(t, uint64(0), e.checkpoint(t))
	keys, err := e.m.Keys(ctx)
	require.NoError(t, err)
	assert.Empty(t, keys)

	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 20, 4)))
	assert.Equal(t, uint64(20), e.checkpoint(t))
	assert.Equal(t, rmExpected(20, 4), e.counts(t))
	keys, err = e.m.Keys(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"sku0", "sku1", "sku2", "sku3"}, keys)
	v, ok, err := e.m.Get(ctx, "sku1")
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, strconv.Itoa(1+5+9+13+17), string(v))
	_, ok, err = e.m.Get(ctx, "nope")
	require.NoError(t, err)
	assert.False(t, ok)

	// The stored values are envelopes: version, flags, sequence of the
	// last event applied to the key, data.
	entry, err := e.raw.Get(ctx, "sku1")
	require.NoError(t, err)
	assert.Equal(t, encodeKVEnvelope(17, false, v), entry.Value())
	assert.Equal(t, []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 17}, entry.Value()[:kvHeaderLen])
	entry, err = e.raw.Get(ctx, KVCheckpointKey)
	require.NoError(t, err)
	assert.Equal(t, "20", string(entry.Value()))

	// A batch of events that touch no key still advances the checkpoint.
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{{Type: "other", Sequence: 21, Data: rmItem{}}}))
	assert.Equal(t, uint64(21), e.checkpoint(t))

	// Several writes to one key in a batch, and a read of the batch's own
	// writes.
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{rmAdded(22, "new", 1), rmAdded(23, "new", 2), rmAdded(24, "new", 3)}))
	assert.Equal(t, 6, e.counts(t)["new"])
}

func TestKVDelete(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 6, 3)))

	// Dropped, then added again in the same batch; dropped for good; a
	// key that never existed dropped.
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{
		rmDropped(7, "sku0"), rmAdded(8, "sku0", 100),
		rmDropped(9, "sku1"),
		rmDropped(10, "never"),
		rmAdded(11, "tmp", 1), rmDropped(12, "tmp"),
	}))
	want := rmExpected(6, 3)
	want["sku0"] = 100
	delete(want, "sku1")
	assert.Equal(t, want, e.counts(t))
	_, ok, err := e.m.Get(ctx, "sku1")
	require.NoError(t, err)
	assert.False(t, ok)

	// Once the checkpoint is past it, the tombstone is a KV delete.
	_, err = e.raw.Get(ctx, "sku1")
	assert.ErrorIs(t, err, jetstream.ErrKeyNotFound)
	_, err = e.raw.Get(ctx, "never")
	assert.ErrorIs(t, err, jetstream.ErrKeyNotFound)

	// A deleted key is written again (a KV Create over the delete marker).
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{rmAdded(13, "sku1", 5)}))
	assert.Equal(t, 5, e.counts(t)["sku1"])
	assert.Equal(t, uint64(13), e.checkpoint(t))
}

func TestKVRedeliverySkipped(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	tests := []struct {
		name  string
		again []*stream.Event
		to    uint64
	}{
		{"same batch", rmBatch(1, 10, 4), 10},
		{"part of the batch", rmBatch(4, 7, 4), 10},
		{"overlapping the checkpoint", rmBatch(6, 15, 4), 15},
		{"out of order within the batch", append(rmBatch(11, 12, 4), rmBatch(5, 12, 4)...), 12},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newKVEnvOn(t, js, fmt.Sprint("redeliver", i))
			require.NoError(t, e.m.Apply(ctx, rmBatch(1, 10, 4)))
			require.NoError(t, e.m.Apply(ctx, tt.again))
			assert.Equal(t, rmExpected(tt.to, 4), e.counts(t))
			assert.Equal(t, tt.to, e.checkpoint(t))
			// A fresh model on the same bucket (a restarted worker) agrees.
			fresh, err := NewKV(ctx, js, KVConfig{Bucket: e.m.Bucket(), Memory: true}, kvCountApply)
			require.NoError(t, err)
			require.NoError(t, fresh.Apply(ctx, tt.again))
			assert.Equal(t, rmExpected(tt.to, 4), e.counts(t))
		})
	}
}

func TestKVFailedBatchWritesNothing(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 5, 2)))
	st, err := e.raw.Status(ctx)
	require.NoError(t, err)
	values := st.Values()

	err = e.m.Apply(ctx, append(rmBatch(6, 8, 2), rmPoison(9), rmAdded(10, "sku9", 1)))
	require.ErrorIs(t, err, errRMPoison)
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, uint64(9), se.Sequence)

	st, err = e.raw.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, values, st.Values(), "no write at all")
	assert.Equal(t, rmExpected(5, 2), e.counts(t))
	assert.Equal(t, uint64(5), e.checkpoint(t))

	require.NoError(t, e.m.Apply(ctx, rmBatch(6, 10, 2)))
	assert.Equal(t, rmExpected(10, 2), e.counts(t))
}

// rmLog is the event log of the crash tests: event s adds s items of SKU
// sku<s%7>, except event 31, which drops sku3.
func rmLog(from, to uint64) []*stream.Event {
	var evs []*stream.Event
	for s := from; s <= to; s++ {
		if s == 31 {
			evs = append(evs, rmDropped(s, "sku3"))
		} else {
			evs = append(evs, rmAdded(s, fmt.Sprint("sku", s%7), int(s)))
		}
	}
	return evs
}

// rmFold is the reference result of applying events once each.
func rmFold(events []*stream.Event) map[string]int {
	out := map[string]int{}
	for _, ev := range events {
		item := ev.Data.(rmItem)
		switch ev.Type {
		case "item-added":
			out[item.SKU] += item.Qty
		case "item-dropped":
			delete(out, item.SKU)
		}
	}
	return out
}

// A crash (here: a failed write) after some keys of a batch are stored and
// before the checkpoint is: delivering the events again, in the same batch
// or in other batches, applies each exactly once.
func TestKVCrashBeforeCheckpoint(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	errCrash := errors.New("crash")

	crashes := []struct {
		name  string
		after int // key writes that succeed before the crash; -1: all of them
	}{
		{"before any key", 0},
		{"after one key", 1},
		{"after three keys", 3},
		{"before the checkpoint", -1},
	}
	replays := []struct {
		name    string
		batches [][2]uint64 // from, to
	}{
		{"same batch", [][2]uint64{{11, 31}}},
		{"shorter batches", [][2]uint64{{11, 14}, {15, 22}, {23, 31}}},
		{"longer batch", [][2]uint64{{11, 40}}},
		{"from the start", [][2]uint64{{1, 40}}},
		{"one by one", [][2]uint64{{11, 11}, {12, 12}, {13, 13}, {14, 40}}},
	}
	n := 0
	for _, cr := range crashes {
		for _, rp := range replays {
			n++
			t.Run(cr.name+"/"+rp.name, func(t *testing.T) {
				e := newKVEnvOn(t, js, fmt.Sprint("crash", n))
				require.NoError(t, e.m.Apply(ctx, rmLog(1, 10)))

				// Crash while storing events 11..31 (touching all 7 SKUs,
				// and dropping sku3 last).
				var mu sync.Mutex
				writes := 0
				e.m.hookSave = func(key string) error {
					mu.Lock()
					defer mu.Unlock()
					if key == KVCheckpointKey || (cr.after >= 0 && writes >= cr.after) {
						return errCrash
					}
					writes++
					return nil
				}
				require.ErrorIs(t, e.m.Apply(ctx, rmLog(11, 31)), errCrash)
				assert.Equal(t, uint64(10), e.checkpoint(t))
				if cr.after >= 0 {
					assert.Equal(t, cr.after, writes)
				} else {
					assert.Equal(t, 7, writes)
				}

				// A new worker takes over and gets the events again.
				m, err := NewKV(ctx, js, KVConfig{Bucket: e.m.Bucket(), Memory: true}, kvCountApply)
				require.NoError(t, err)
				e.m = m
				for _, b := range rp.batches {
					require.NoError(t, e.m.Apply(ctx, rmLog(b[0], b[1])))
				}
				last := rp.batches[len(rp.batches)-1][1]
				assert.Equal(t, rmFold(rmLog(1, last)), e.counts(t))
				assert.Equal(t, last, e.checkpoint(t))
			})
		}
	}
}

// The skip rule, shown with envelopes written directly: a key whose stored
// envelope records sequence s does not get the writes of events at or below
// s, and gets those above.
func TestKVEnvelopeSkip(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{rmAdded(1, "a", 1), rmAdded(2, "b", 2), rmAdded(3, "c", 7)}))

	// Events 4..8 are a+=4, b+=5, a+=6, drop c, b+=8. As if a crashed
	// attempt at them had stored "a" (1+4+6, last written by event 6) and
	// the tombstone of "c" (event 7), but neither "b" nor the checkpoint:
	_, err := e.raw.Put(ctx, "a", encodeKVEnvelope(6, false, []byte("11")))
	require.NoError(t, err)
	_, err = e.raw.Put(ctx, "c", encodeKVEnvelope(7, true, nil))
	require.NoError(t, err)
	_, ok, err := e.m.Get(ctx, "c")
	require.NoError(t, err)
	assert.False(t, ok, "a tombstone reads as absent")
	keys, err := e.m.Keys(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, keys)
	assert.Equal(t, uint64(3), e.checkpoint(t))

	// Delivered again, with two more events: a+=9, c+=10.
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{
		rmAdded(4, "a", 4), rmAdded(5, "b", 5), rmAdded(6, "a", 6), rmDropped(7, "c"), rmAdded(8, "b", 8),
		rmAdded(9, "a", 9), rmAdded(10, "c", 10),
	}))
	assert.Equal(t, map[string]int{"a": 1 + 4 + 6 + 9, "b": 2 + 5 + 8, "c": 10}, e.counts(t))
	assert.Equal(t, uint64(10), e.checkpoint(t))
}

func TestKVKeys(t *testing.T) {
	for _, key := range []string{"a", "sku-1", "user.alice=40example=2Ecom", "a/b_c=d", "_esnatsy"[1:], "x._esnats"} {
		assert.NoError(t, ValidateKVKey(key), key)
	}
	for _, key := range []string{"", ".a", "a.", "a..b", "a b", "a*", "a>", "é", "_esnats", "_esnats.checkpoint", "_esnats_x", strings.Repeat("k", MaxKVKeyLength+1)} {
		assert.ErrorIs(t, ValidateKVKey(key), ErrInvalidKey, "%q", key)
	}

	ctx := context.Background()
	e := newKVEnv(t)
	_, _, err := e.m.Get(ctx, KVCheckpointKey)
	assert.ErrorIs(t, err, ErrInvalidKey)
	_, _, err = e.m.Get(ctx, "a b")
	assert.ErrorIs(t, err, ErrInvalidKey)

	for _, key := range []string{"a b", KVCheckpointKey, ""} {
		err = e.m.Apply(ctx, []*stream.Event{rmAdded(1, "ok", 1), rmAdded(2, key, 1)})
		assert.ErrorIs(t, err, ErrInvalidKey, "%q", key)
		var se *stream.Error
		require.ErrorAs(t, err, &se)
		assert.Equal(t, uint64(2), se.Sequence)
		err = e.m.Apply(ctx, []*stream.Event{rmDropped(1, key)})
		assert.ErrorIs(t, err, ErrInvalidKey, "%q", key)
	}
	assert.Empty(t, e.counts(t))
	assert.Equal(t, uint64(0), e.checkpoint(t))
}

func TestKVCorruptValue(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	_, err := e.raw.Put(ctx, "bad", []byte("garbage"))
	require.NoError(t, err)
	_, err = e.raw.Put(ctx, "v2", append([]byte{2, 0}, make([]byte, 8)...))
	require.NoError(t, err)
	for _, key := range []string{"bad", "v2"} {
		_, _, err = e.m.Get(ctx, key)
		assert.ErrorIs(t, err, ErrCorruptValue)
		assert.Contains(t, err.Error(), "key "+key)
	}
	_, err = e.m.Keys(ctx)
	assert.ErrorIs(t, err, ErrCorruptValue)
	assert.ErrorIs(t, e.m.Apply(ctx, []*stream.Event{rmAdded(1, "bad", 1)}), ErrCorruptValue)

	_, err = e.raw.Put(ctx, KVCheckpointKey, []byte("x"))
	require.NoError(t, err)
	_, err = e.m.Checkpoint(ctx)
	assert.ErrorIs(t, err, ErrCorruptValue)

	for _, v := range [][]byte{nil, {1}, {1, 2, 0, 0, 0, 0, 0, 0, 0, 1}, {1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}} {
		_, _, _, err := decodeKVEnvelope(v)
		assert.ErrorIs(t, err, ErrCorruptValue, "%v", v)
	}
}

// Two workers on one projection, one after the other (a take-over, and
// back): the first one's memory of the bucket (cached keys, checkpoint) is
// stale when it applies again. If it read the checkpoint on taking over
// (as the runner does), it forgets what it remembered and reads the keys;
// if not, its compare-and-sets fail and it applies the batch again from the
// stored values. Either way, exactly once. Without a cache, a stale
// checkpoint alone does the same.
func TestKVConflict(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name       string
		cache      int64
		checkpoint bool  // read the checkpoint before applying
		writes     int   // key and checkpoint writes tried
		loads      int64 // key reads
	}{
		{"cache, checkpoint read", 0, true, 3, 2},
		{"cache", 0, false, 5, 2},     // the keys lost, then stored
		{"no cache", -1, false, 4, 4}, // the keys stored, then the checkpoint lost
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newKVEnv(t)
			if tt.cache < 0 {
				e.m.cache.limit = 0
			}
			require.NoError(t, e.m.Apply(ctx, rmBatch(1, 4, 2)))

			other, err := NewKV(ctx, e.js, KVConfig{Bucket: e.m.Bucket(), Memory: true}, kvCountApply)
			require.NoError(t, err)
			require.NoError(t, other.Apply(ctx, rmBatch(5, 6, 2)))

			if tt.checkpoint {
				assert.Equal(t, uint64(6), e.checkpoint(t))
			}
			loads := countLoads(e.m)
			writes := 0
			e.m.hookSave = func(string) error { writes++; return nil }
			require.NoError(t, e.m.Apply(ctx, rmBatch(5, 8, 2)))
			assert.Equal(t, tt.writes, writes)
			assert.Equal(t, tt.loads, loads.Load())
			assert.Equal(t, rmExpected(8, 2), e.counts(t))
			assert.Equal(t, uint64(8), e.checkpoint(t))
		})
	}
}

func TestKVReset(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 10, 3)))
	require.NoError(t, e.m.Reset(ctx))
	assert.Empty(t, e.counts(t))
	assert.Equal(t, uint64(0), e.checkpoint(t))

	// Rebuild from the start.
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 10, 3)))
	assert.Equal(t, rmExpected(10, 3), e.counts(t))
	assert.Equal(t, uint64(10), e.checkpoint(t))
}

// Readers (Get, All, Checkpoint) run while a worker applies.
func TestKVConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := uint64(0)
			for !done.Load() {
				cp, err := e.m.Checkpoint(ctx)
				if !assert.NoError(t, err) {
					return
				}
				assert.GreaterOrEqual(t, cp, prev, "the checkpoint never goes back")
				prev = cp
				_, _, err = e.m.Get(ctx, "sku1")
				assert.NoError(t, err)
				_, err = e.m.All(ctx)
				assert.NoError(t, err)
			}
		}()
	}
	for s := uint64(1); s <= 100; s += 10 {
		require.NoError(t, e.m.Apply(ctx, rmBatch(s, s+9, 5)))
	}
	done.Store(true)
	wg.Wait()
	assert.Equal(t, rmExpected(100, 5), e.counts(t))
}

func TestKVConfig(t *testing.T) {
	assert.ErrorIs(t, KVConfig{}.Validate(), kv.ErrInvalidConfig)
	assert.ErrorIs(t, KVConfig{Bucket: "a.b"}.Validate(), kv.ErrInvalidConfig)
	assert.ErrorIs(t, KVConfig{Bucket: "b", Replicas: 6}.Validate(), kv.ErrInvalidConfig)
	assert.ErrorIs(t, KVConfig{Bucket: "b", History: 65}.Validate(), kv.ErrInvalidConfig)
	assert.NoError(t, KVConfig{Bucket: "b", Replicas: 3, History: 5}.Validate())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	_, err := NewKV(ctx, js, KVConfig{}, kvCountApply)
	assert.ErrorIs(t, err, kv.ErrInvalidConfig)
	_, err = NewKV(ctx, js, KVConfig{Bucket: "b"}, nil)
	assert.Error(t, err)

	// File storage and history are as configured; NewKV is idempotent.
	m, err := NewKV(ctx, js, KVConfig{Bucket: "files", History: 3, Description: "items"}, kvCountApply)
	require.NoError(t, err)
	_, err = NewKV(ctx, js, KVConfig{Bucket: "files", History: 3, Description: "items"}, kvCountApply)
	require.NoError(t, err)
	assert.Equal(t, "files", m.Bucket())
	bucket, err := js.KeyValue(ctx, "files")
	require.NoError(t, err)
	st, err := bucket.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(3), st.History())
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	require.True(t, ok)
	assert.Equal(t, jetstream.FileStorage, bs.StreamInfo().Config.Storage)
	assert.Equal(t, "items", bs.StreamInfo().Config.Description)
}

// countLoads counts m's reads of keys from the bucket (the checkpoint's
// aside).
func countLoads(m *KV) *atomic.Int64 {
	var n atomic.Int64
	m.hookLoad = func(string) { n.Add(1) }
	return &n
}

// The cache hit path: a key this model stored is not read again by its
// later batches, also when they only write it; keys it never stored are
// read. Reset empties the cache.
func TestKVCacheHit(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	loads := countLoads(e.m)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 8, 4)))
	assert.Equal(t, int64(4), loads.Load(), "first batch: one read per key")
	assert.Equal(t, 4, e.m.cache.len())

	loads.Store(0)
	require.NoError(t, e.m.Apply(ctx, rmBatch(9, 40, 4)))
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{rmDropped(41, "sku0"), rmAdded(42, "sku0", 7)}))
	assert.Equal(t, int64(0), loads.Load(), "keys this model stored are not read again")
	want := rmExpected(40, 4)
	want["sku0"] = 7
	assert.Equal(t, want, e.counts(t))

	// A blind write (Delete without Get) to a key it never stored: read.
	require.NoError(t, e.m.Apply(ctx, []*stream.Event{rmDropped(43, "sku9")}))
	assert.Equal(t, int64(1), loads.Load())

	// What it remembers is what is stored.
	for _, key := range []string{"sku0", "sku1", "sku2", "sku3"} {
		st, ok := e.m.cache.get(key)
		require.True(t, ok, key)
		entry, err := e.raw.Get(ctx, key)
		require.NoError(t, err)
		assert.Equal(t, entry.Revision(), st.rev, key)
		assert.Equal(t, entry.Value(), encodeKVEnvelope(st.seq, st.deleted, st.data), key)
	}

	require.NoError(t, e.m.Reset(ctx))
	assert.Equal(t, 0, e.m.cache.len())
	loads.Store(0)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 8, 4)))
	assert.Equal(t, int64(4), loads.Load(), "after Reset: read again")
	assert.Equal(t, rmExpected(8, 4), e.counts(t))

	// Without a cache every batch reads its keys.
	m, err := NewKV(ctx, e.js, KVConfig{Bucket: e.m.Bucket(), Memory: true, CacheBytes: -1}, kvCountApply)
	require.NoError(t, err)
	loads = countLoads(m)
	require.NoError(t, m.Apply(ctx, rmBatch(9, 16, 4)))
	require.NoError(t, m.Apply(ctx, rmBatch(17, 24, 4)))
	assert.Equal(t, int64(8), loads.Load())
	assert.Equal(t, 0, m.cache.len())
	assert.Equal(t, rmExpected(24, 4), e.counts(t))
}

// A writer active at the same time (which the runner prevents) changes the
// keys while this model stores a batch. The first attempt relied on cached
// revisions: Apply starts again from the stored values (reading them).
// The second relied on revisions just read: ErrConflict. Applying the
// events again gives each one exactly once.
func TestKVConflictConcurrentWriter(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 4, 2)))
	other, err := NewKV(ctx, e.js, KVConfig{Bucket: e.m.Bucket(), Memory: true}, kvCountApply)
	require.NoError(t, err)

	loads := countLoads(e.m)
	var attempts []int64 // loads seen at each attempt's first write
	e.m.hookSave = func(key string) error {
		if key != "sku1" {
			return nil
		}
		attempts = append(attempts, loads.Load())
		switch len(attempts) {
		case 1:
			require.NoError(t, other.Apply(ctx, rmBatch(5, 6, 2)))
		case 2:
			require.NoError(t, other.Apply(ctx, rmBatch(7, 8, 2)))
		}
		return nil
	}
	err = e.m.Apply(ctx, rmBatch(5, 10, 2))
	require.ErrorIs(t, err, stream.ErrConflict)
	assert.Contains(t, err.Error(), "key sku")
	assert.Equal(t, []int64{0, 2}, attempts, "first attempt from the cache, the second from reads")
	assert.Equal(t, 0, e.m.cache.len(), "a lost compare-and-set empties the cache")
	assert.Equal(t, uint64(8), e.checkpoint(t))

	e.m.hookSave = nil
	require.NoError(t, e.m.Apply(ctx, rmBatch(5, 10, 2)))
	assert.Equal(t, rmExpected(10, 2), e.counts(t))
	assert.Equal(t, uint64(10), e.checkpoint(t))
}

// The cache stays within its limit, least recently used out first.
func TestKVCacheBounded(t *testing.T) {
	entry := func(rev uint64, size int) kvStored {
		return kvStored{rev: rev, seq: rev, data: make([]byte, size)}
	}
	cost := func(key string, size int) int64 { return int64(len(key)+kvHeaderLen+size) + kvCacheOverhead }
	check := func(t *testing.T, c *kvCache, keys ...string) {
		t.Helper()
		var got []string
		var size int64
		for e := c.root.next; e != &c.root; e = e.next {
			got = append(got, e.key)
			size += e.cost()
			assert.Same(t, e, e.next.prev)
		}
		assert.Equal(t, keys, got, "most recently used first")
		assert.Len(t, c.m, len(keys))
		assert.Equal(t, size, c.size)
		assert.LessOrEqual(t, c.size, c.limit)
	}

	c := &kvCache{limit: 3 * cost("k1", 10)}
	c.put("k1", entry(1, 10))
	c.put("k2", entry(2, 10))
	c.put("k3", entry(3, 10))
	check(t, c, "k3", "k2", "k1")
	_, ok := c.get("k1")
	assert.True(t, ok)
	check(t, c, "k1", "k3", "k2")
	c.put("k4", entry(4, 10)) // k2, least recently used, goes
	check(t, c, "k4", "k1", "k3")
	_, ok = c.get("k2")
	assert.False(t, ok)

	c.put("k3", entry(5, 10+int(cost("k1", 10)))) // grows to two entries' worth: k1 goes
	check(t, c, "k3", "k4")
	st, ok := c.get("k3")
	require.True(t, ok)
	assert.Equal(t, uint64(5), st.rev)
	c.put("big", entry(6, int(c.limit))) // larger than the limit: not kept
	check(t, c)
	c.put("k1", entry(7, 10))
	c.drop("k1")
	c.drop("nope")
	check(t, c)
	c.put("k1", entry(8, 10))
	c.clear()
	_, ok = c.get("k1")
	assert.False(t, ok)
	c.put("k2", entry(9, 10))
	check(t, c, "k2")

	off := &kvCache{}
	off.put("k1", entry(1, 1))
	_, ok = off.get("k1")
	assert.False(t, ok)
	assert.Equal(t, 0, off.len())

	// A model with room for 3 of its 12 keys: bounded, and right.
	ctx := context.Background()
	e := newKVEnv(t)
	limit := 3 * cost("sku10", 3)
	m, err := NewKV(ctx, e.js, KVConfig{Bucket: e.m.Bucket(), Memory: true, CacheBytes: limit}, kvCountApply)
	require.NoError(t, err)
	for s := uint64(1); s <= 120; s += 10 {
		require.NoError(t, m.Apply(ctx, rmBatch(s, s+9, 12)))
		assert.LessOrEqual(t, m.cache.size, limit)
		assert.LessOrEqual(t, m.cache.len(), 3)
	}
	assert.Equal(t, 3, m.cache.len())
	assert.Equal(t, rmExpected(120, 12), e.counts(t))
}

// kvPadApply is kvCountApply, with the values of the keys in pad padded
// with spaces to 300 bytes.
func kvPadApply(pad ...string) func(ctx context.Context, tx *KVBatch, ev *stream.Event) error {
	return func(ctx context.Context, tx *KVBatch, ev *stream.Event) error {
		item := ev.Data.(rmItem)
		if ev.Type != "item-added" || !slices.Contains(pad, item.SKU) {
			return kvCountApply(ctx, tx, ev)
		}
		old, _, err := tx.Get(item.SKU)
		if err != nil {
			return err
		}
		n := 0
		if s := strings.TrimSpace(string(old)); s != "" {
			if n, err = strconv.Atoi(s); err != nil {
				return err
			}
		}
		tx.Put(item.SKU, fmt.Appendf(nil, "%-300d", n+item.Qty))
		return nil
	}
}

// kvStoredValues returns every present value of a bucket, envelopes as
// stored; the checkpoint and tombstones (which a redelivery may leave
// behind, see KV) left out.
func kvStoredValues(t *testing.T, bucket jetstream.KeyValue) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := bucket.WatchAll(ctx, jetstream.IgnoreDeletes())
	require.NoError(t, err)
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for e := range w.Updates() {
		if e == nil {
			return out
		}
		if e.Key() != KVCheckpointKey && e.Value()[1]&kvFlagDeleted == 0 {
			out[e.Key()] = e.Value()
		}
	}
	t.Fatal("watcher stopped")
	return nil
}

// Pipelined writes: the server refuses one write of a batch (a value over
// the bucket's maximum message size) while the writes sent after it are
// stored, and the checkpoint stays. Delivering the events again, in any
// batches, to the same model (its cache holds what it stored) or to a new
// one gives exactly the bucket a full replay gives.
func TestKVPipelineFailureMidBatch(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	apply := kvPadApply("sku6")
	setMaxMsgSize := func(t *testing.T, bucket string, n int32) {
		t.Helper()
		s, err := js.Stream(ctx, "KV_"+bucket)
		require.NoError(t, err)
		cfg := s.CachedInfo().Config
		cfg.MaxMsgSize = n
		_, err = js.UpdateStream(ctx, cfg)
		require.NoError(t, err)
	}
	envSeq := func(t *testing.T, raw jetstream.KeyValue, key string) uint64 {
		t.Helper()
		entry, err := raw.Get(ctx, key)
		require.NoError(t, err, key)
		seq, _, _, err := decodeKVEnvelope(entry.Value())
		require.NoError(t, err, key)
		return seq
	}
	replays := []struct {
		name    string
		batches [][2]uint64
	}{
		{"same batch", [][2]uint64{{11, 31}}},
		{"shorter batches", [][2]uint64{{11, 13}, {14, 22}, {23, 31}}},
		{"longer batch", [][2]uint64{{11, 40}}},
		{"from the start", [][2]uint64{{1, 40}}},
	}
	n := 0
	for _, sameModel := range []bool{true, false} {
		for _, rp := range replays {
			n++
			t.Run(fmt.Sprintf("same model %v/%s", sameModel, rp.name), func(t *testing.T) {
				bucket := fmt.Sprint("pipefail", n)
				m, err := NewKV(ctx, js, KVConfig{Bucket: bucket, Memory: true}, apply)
				require.NoError(t, err)
				raw, err := js.KeyValue(ctx, bucket)
				require.NoError(t, err)
				require.NoError(t, m.Apply(ctx, rmLog(1, 10)))

				// Events 11..31 touch sku4, sku5, sku6, sku0, sku1, sku2,
				// sku3 in this order: the write of sku6 is the third.
				setMaxMsgSize(t, bucket, 200)
				err = m.Apply(ctx, rmLog(11, 31))
				require.Error(t, err)
				assert.NotErrorIs(t, err, stream.ErrConflict)
				assert.Contains(t, err.Error(), "key sku6")
				cp, err := m.Checkpoint(ctx)
				require.NoError(t, err)
				assert.Equal(t, uint64(10), cp)
				assert.Equal(t, uint64(6), envSeq(t, raw, "sku6"), "refused")
				for key, seq := range map[string]uint64{"sku4": 25, "sku5": 26, "sku0": 28, "sku1": 29, "sku2": 30, "sku3": 31} {
					assert.Equal(t, seq, envSeq(t, raw, key), "%s: stored, before and after the refused write", key)
				}
				setMaxMsgSize(t, bucket, -1)

				if !sameModel {
					m, err = NewKV(ctx, js, KVConfig{Bucket: bucket, Memory: true}, apply)
					require.NoError(t, err)
				}
				for _, b := range rp.batches {
					require.NoError(t, m.Apply(ctx, rmLog(b[0], b[1])))
				}
				last := rp.batches[len(rp.batches)-1][1]
				cp, err = m.Checkpoint(ctx)
				require.NoError(t, err)
				assert.Equal(t, last, cp)

				ref, err := NewKV(ctx, js, KVConfig{Bucket: bucket + "_ref", Memory: true}, apply)
				require.NoError(t, err)
				require.NoError(t, ref.Apply(ctx, rmLog(1, last)))
				refRaw, err := js.KeyValue(ctx, bucket+"_ref")
				require.NoError(t, err)
				assert.Equal(t, kvStoredValues(t, refRaw), kvStoredValues(t, raw))
				all, err := m.All(ctx)
				require.NoError(t, err)
				got := map[string]int{}
				for k, v := range all {
					got[k], err = strconv.Atoi(strings.TrimSpace(string(v)))
					require.NoError(t, err)
				}
				assert.Equal(t, rmFold(rmLog(1, last)), got)
			})
		}
	}
}

// kvRandomLog returns n events over 6 SKUs: additions, and some drops if
// drops is set.
func kvRandomLog(rng *rand.Rand, n int, drops bool) []*stream.Event {
	evs := make([]*stream.Event, n)
	for i := range evs {
		seq := uint64(i + 1)
		sku := fmt.Sprint("sku", rng.IntN(6))
		if drops && rng.IntN(8) == 0 {
			evs[i] = rmDropped(seq, sku)
		} else {
			evs[i] = rmAdded(seq, sku, 1+rng.IntN(9))
		}
	}
	return evs
}

// Two models share a bucket and take turns, as the projection moves
// between two processes (fail-over and back), each with its own cache;
// writes fail part way, and batches are delivered again. The model taking
// over reads the checkpoint first (as the runner does) or not: then its
// memory of the bucket is stale and its compare-and-sets fail, and it gets
// only events above the stored checkpoint (the runner skips the others).
// The bucket ends as a single full replay leaves it.
func TestKVTakeOver(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	errCrash := errors.New("crash")
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			log := kvRandomLog(rng, 300, true)
			bucket := fmt.Sprint("takeover", seed)
			var models [2]*KV
			var loads [2]*atomic.Int64
			for i := range models {
				cacheBytes := int64(0)
				if i == 1 {
					cacheBytes = 2 * (kvCacheOverhead + 20) // room for 2 of the 6 keys
				}
				m, err := NewKV(ctx, js, KVConfig{Bucket: bucket, Memory: true, CacheBytes: cacheBytes}, kvCountApply)
				require.NoError(t, err)
				models[i], loads[i] = m, countLoads(m)
			}
			raw, err := js.KeyValue(ctx, bucket)
			require.NoError(t, err)
			cp := uint64(0)
			turns, crashes, last := 0, 0, -1
			for cp < uint64(len(log)) {
				turns++
				i := rng.IntN(2)
				m := models[i]
				from := cp // the runner skips what is at or below the checkpoint
				if i == last || rng.IntN(2) == 0 {
					// Read the checkpoint on taking over (the runner's
					// ResumeAt), or still the active one: it may get
					// events again from before the checkpoint.
					got, err := m.Checkpoint(ctx)
					require.NoError(t, err)
					require.Equal(t, cp, got)
					from = cp - min(cp, uint64(rng.IntN(4)))
				}
				last = i
				m.hookSave = nil
				if rng.IntN(4) == 0 {
					crashes++
					after := rng.IntN(4) // writes before the crash
					m.hookSave = func(string) error {
						if after == 0 {
							return errCrash
						}
						after--
						return nil
					}
				}
				to := min(cp+1+uint64(rng.IntN(20)), uint64(len(log)))
				err := m.Apply(ctx, log[from:to])
				if err != nil {
					require.ErrorIs(t, err, errCrash)
				}
				cp, err = m.Checkpoint(ctx)
				require.NoError(t, err)
			}
			for _, m := range models {
				m.hookSave = nil
			}
			t.Logf("%d turns, %d with a crash, %d and %d reads", turns, crashes, loads[0].Load(), loads[1].Load())

			ref, err := NewKV(ctx, js, KVConfig{Bucket: bucket + "_ref", Memory: true}, kvCountApply)
			require.NoError(t, err)
			require.NoError(t, ref.Apply(ctx, log))
			refRaw, err := js.KeyValue(ctx, bucket+"_ref")
			require.NoError(t, err)
			assert.Equal(t, kvStoredValues(t, refRaw), kvStoredValues(t, raw))
			assert.Equal(t, rmFold(log), (&kvEnv{m: models[0]}).counts(t))
		})
	}
}

// Two models apply the same projection at the same time (a split brain,
// which the runner prevents), each resuming at the stored checkpoint and
// taking a batch again after an error: every event is applied exactly once.
func TestKVConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	// Additions only: a split brain may apply an event again to a key
	// deleted meanwhile (see KV).
	log := kvRandomLog(rand.New(rand.NewPCG(7, 7)), 400, false)
	var (
		wg        sync.WaitGroup
		conflicts atomic.Int64
	)
	for w := range 2 {
		m, err := NewKV(ctx, js, KVConfig{Bucket: "split", Memory: true, CacheBytes: int64(w*2-1) * DefaultKVCacheBytes}, kvCountApply)
		require.NoError(t, err)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				cp, err := m.Checkpoint(ctx)
				if !assert.NoError(t, err) || cp == uint64(len(log)) {
					return
				}
				to := min(cp+1+uint64(rng.IntN(15)), uint64(len(log)))
				if err := m.Apply(ctx, log[cp:to]); err != nil {
					if !assert.ErrorIs(t, err, stream.ErrConflict) {
						return
					}
					conflicts.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d conflicts", conflicts.Load())
	m, err := NewKV(ctx, js, KVConfig{Bucket: "split", Memory: true}, kvCountApply)
	require.NoError(t, err)
	assert.Equal(t, rmFold(log), (&kvEnv{m: m}).counts(t))
	cp, err := m.Checkpoint(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(len(log)), cp)
}
