package projections

import (
	"context"
	"errors"
	"fmt"
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

// Two workers on one projection (which the runner prevents): the one with
// a stale view of the checkpoint gets ErrConflict, and the result is still
// exactly-once once it retries.
func TestKVConflict(t *testing.T) {
	ctx := context.Background()
	e := newKVEnv(t)
	require.NoError(t, e.m.Apply(ctx, rmBatch(1, 4, 2)))

	other, err := NewKV(ctx, e.js, KVConfig{Bucket: e.m.Bucket(), Memory: true}, kvCountApply)
	require.NoError(t, err)
	require.NoError(t, other.Apply(ctx, rmBatch(5, 6, 2)))

	err = e.m.Apply(ctx, rmBatch(5, 8, 2))
	require.ErrorIs(t, err, stream.ErrConflict)
	assert.Contains(t, err.Error(), KVCheckpointKey)

	require.NoError(t, e.m.Apply(ctx, rmBatch(5, 8, 2)))
	assert.Equal(t, rmExpected(8, 2), e.counts(t))
	assert.Equal(t, uint64(8), e.checkpoint(t))
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
