package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// fixture is one Snapshots implementation under test.
type fixture struct {
	snaps  kv.Snapshots
	bucket string // the name its errors use
	// raw stores value under key as another client would, bypassing every
	// check.
	raw func(t *testing.T, key string, value []byte)
	// keys returns the number of keys holding a value.
	keys func(t *testing.T) int
}

// implementations are the Snapshots implementations every shared behaviour
// runs against.
var implementations = []struct {
	name string
	new  func(t *testing.T, cfg kv.Config) fixture
}{
	{"store", newStoreFixture},
	{"memory", newMemoryFixture},
}

func newStoreFixture(t *testing.T, cfg kv.Config) fixture {
	t.Helper()
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st, err := kv.NewStore(t.Context(), js, cfg)
	require.NoError(t, err)
	bucket, err := js.KeyValue(t.Context(), st.Bucket())
	require.NoError(t, err)
	return fixture{
		snaps:  st,
		bucket: st.Bucket(),
		raw: func(t *testing.T, key string, value []byte) {
			t.Helper()
			_, err := bucket.Put(t.Context(), key, value)
			require.NoError(t, err)
		},
		keys: func(t *testing.T) int {
			t.Helper()
			lister, err := bucket.ListKeys(t.Context())
			require.NoError(t, err)
			n := 0
			for range lister.Keys() {
				n++
			}
			return n
		},
	}
}

func newMemoryFixture(t *testing.T, cfg kv.Config) fixture {
	t.Helper()
	var opts []kv.MemoryOption
	if cfg.MaxValueSize != 0 {
		opts = append(opts, kv.WithMemoryMaxValueSize(cfg.MaxValueSize))
	}
	m := kv.NewMemory(opts...)
	return fixture{
		snaps:  m,
		bucket: "memory",
		raw:    func(_ *testing.T, key string, value []byte) { m.SetRaw(key, value) },
		keys:   func(*testing.T) int { return m.Len() },
	}
}

// forEach runs f as a subtest against each implementation, configured by cfg.
func forEach(t *testing.T, cfg kv.Config, f func(t *testing.T, fx fixture)) {
	t.Helper()
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			t.Parallel()
			f(t, impl.new(t, cfg))
		})
	}
}

var (
	cart      = stream.Aggregate{Type: "cart", ID: "42"}
	snapTime  = time.Date(2025, 3, 4, 5, 6, 7, 89, time.UTC)
	validKeys = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)
)

// snap returns a valid snapshot of agg at version, whose state says so.
func snap(agg stream.Aggregate, version uint64) kv.Snapshot {
	return kv.Snapshot{
		Aggregate:     agg,
		Version:       version,
		Sequence:      version * 10,
		StateType:     "cart",
		SchemaVersion: 1,
		ContentType:   stream.ContentTypeMsgpack,
		State:         fmt.Appendf(nil, "state of %s at %d", agg, version),
		Time:          snapTime,
	}
}

// requireSnapshot gets agg's snapshot and requires it to be want.
func requireSnapshot(t *testing.T, snaps kv.Snapshots, want kv.Snapshot) {
	t.Helper()
	got, ok, err := snaps.Get(t.Context(), want.Aggregate)
	require.NoError(t, err)
	require.True(t, ok, "no snapshot of %s", want.Aggregate)
	require.Equal(t, want, got)
}

func TestRoundTrip(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		s := snap(cart, 7)
		s.SchemaVersion = 3
		s.ContentType = stream.ContentTypeJSON
		s.Time = time.Date(2025, 3, 4, 5, 6, 7, 89, time.FixedZone("X", 3600))
		require.NoError(t, fx.snaps.Put(ctx, s))

		got, ok, err := fx.snaps.Get(ctx, cart)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, s.Aggregate, got.Aggregate)
		assert.Equal(t, uint64(7), got.Version)
		assert.Equal(t, uint64(70), got.Sequence)
		assert.Equal(t, "cart", got.StateType)
		assert.Equal(t, 3, got.SchemaVersion)
		assert.Equal(t, stream.ContentTypeJSON, got.ContentType)
		assert.Equal(t, s.State, got.State)
		assert.True(t, s.Time.Equal(got.Time), "time %s, want %s", got.Time, s.Time)
		assert.Equal(t, time.UTC, got.Time.Location())

		// Byte slices are copied in and out.
		s.State[0] = 'X'
		got.State[1] = 'Y'
		again, _, err := fx.snaps.Get(ctx, cart)
		require.NoError(t, err)
		assert.Equal(t, snap(cart, 7).State, again.State)
	})
}

func TestRoundTripEdgeValues(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		before := time.Now()

		empty := snap(stream.Aggregate{Type: "a", ID: "empty"}, 1)
		empty.State = nil
		empty.Time = time.Time{} // taken as now
		require.NoError(t, fx.snaps.Put(ctx, empty))
		got, ok, err := fx.snaps.Get(ctx, empty.Aggregate)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Empty(t, got.State)
		assert.False(t, got.Time.Before(before.Truncate(time.Nanosecond)), "zero Time stored as now")
		assert.False(t, got.Time.After(time.Now()))

		huge := snap(stream.Aggregate{Type: "a", ID: "huge"}, 1<<63+5)
		huge.Sequence = ^uint64(0)
		huge.SchemaVersion = 1 << 40
		require.NoError(t, fx.snaps.Put(ctx, huge))
		requireSnapshot(t, fx.snaps, huge)
	})
}

func TestGetMissing(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		got, ok, err := fx.snaps.Get(t.Context(), cart)
		require.NoError(t, err)
		assert.False(t, ok)
		assert.Zero(t, got)
	})
}

func TestPutNeverRegresses(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		v10 := snap(cart, 10)
		require.NoError(t, fx.snaps.Put(ctx, v10))

		require.NoError(t, fx.snaps.Put(ctx, snap(cart, 5)), "an older snapshot is not an error")
		requireSnapshot(t, fx.snaps, v10)

		same := snap(cart, 10)
		same.State = []byte("another state at the same version")
		require.NoError(t, fx.snaps.Put(ctx, same))
		requireSnapshot(t, fx.snaps, v10)

		v11 := snap(cart, 11)
		require.NoError(t, fx.snaps.Put(ctx, v11))
		requireSnapshot(t, fx.snaps, v11)
	})
}

func TestConcurrentPutsKeepTheMaximum(t *testing.T) {
	const writers, puts = 8, 25
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			maxVer uint64
			errs   = make(chan error, writers*puts)
		)
		for w := range writers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 1))
				for range puts {
					v := 1 + r.Uint64N(10_000)
					mu.Lock()
					maxVer = max(maxVer, v)
					mu.Unlock()
					if err := fx.snaps.Put(ctx, snap(cart, v)); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		requireSnapshot(t, fx.snaps, snap(cart, maxVer))
	})
}

// envelope builds a snapshot value as another client would, from a map.
func envelope(t *testing.T, fields map[string]any, edit func(map[string]any)) []byte {
	t.Helper()
	m := make(map[string]any, len(fields))
	for k, v := range fields {
		m[k] = v
	}
	if edit != nil {
		edit(m)
	}
	b, err := msgpack.Marshal(m)
	require.NoError(t, err)
	return b
}

var cartFields = map[string]any{
	"v": 1, "agg_type": "cart", "agg_id": "42", "version": 3, "seq": 30,
	"state_type": "cart", "schema": 2, "ct": "application/json",
	"time": snapTime.UnixNano(), "state": []byte(`{"items":2}`),
}

// A value written by another client, with its keys in another order and a
// field this version does not know, is read.
func TestForeignWriter(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		fx.raw(t, "cart.42", envelope(t, cartFields, func(m map[string]any) { m["future_field"] = []int{1, 2} }))
		requireSnapshot(t, fx.snaps, kv.Snapshot{
			Aggregate: cart, Version: 3, Sequence: 30, StateType: "cart", SchemaVersion: 2,
			ContentType: "application/json", State: []byte(`{"items":2}`), Time: snapTime,
		})

		// A writer whose library has no bin type may send the state as a
		// str; no time means the zero Time.
		fx.raw(t, "cart.43", envelope(t, cartFields, func(m map[string]any) {
			m["agg_id"] = "43"
			m["state"] = `{"items":3}`
			delete(m, "time")
		}))
		requireSnapshot(t, fx.snaps, kv.Snapshot{
			Aggregate: stream.Aggregate{Type: "cart", ID: "43"}, Version: 3, Sequence: 30, StateType: "cart",
			SchemaVersion: 2, ContentType: "application/json", State: []byte(`{"items":3}`),
		})
	})
}

func TestCorruptSnapshot(t *testing.T) {
	valid := func(t *testing.T) []byte { return envelope(t, cartFields, nil) }
	edit := func(f func(map[string]any)) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return envelope(t, cartFields, f) }
	}
	cases := []struct {
		name  string
		value func(t *testing.T) []byte
		says  string
	}{
		{"garbage", func(*testing.T) []byte { return []byte("not a snapshot \xc1\xff") }, "not a msgpack snapshot envelope"},
		{"empty", func(*testing.T) []byte { return []byte{} }, "not a msgpack snapshot envelope"},
		{"truncated", func(t *testing.T) []byte { v := valid(t); return v[:len(v)-3] }, "not a msgpack snapshot envelope"},
		{"trailing bytes", func(t *testing.T) []byte { return append(valid(t), 0x01) }, "not a msgpack snapshot envelope"},
		{"not a map", func(t *testing.T) []byte { b, _ := msgpack.Marshal([]any{1, "cart"}); return b }, "not a msgpack snapshot envelope"},
		{"huge declared length", func(*testing.T) []byte { return []byte{0xdf, 0xff, 0xff, 0xff, 0xff} }, "not a msgpack snapshot envelope"},
		{"wrong field type", edit(func(m map[string]any) { m["version"] = "three" }), "not a msgpack snapshot envelope"},
		{"format version 2", edit(func(m map[string]any) { m["v"] = 2 }), "envelope format version 2 is not 1"},
		{"no format version", edit(func(m map[string]any) { delete(m, "v") }), "no envelope format version"},
		{"other aggregate id", edit(func(m map[string]any) { m["agg_id"] = "43" }), "belongs to aggregate cart/43, not cart/42"},
		{"other aggregate type", edit(func(m map[string]any) { m["agg_type"] = "order" }), "belongs to aggregate order/42"},
		{"version 0", edit(func(m map[string]any) { m["version"] = 0 }), "aggregate version is 0"},
		{"no sequence", edit(func(m map[string]any) { delete(m, "seq") }), "stream sequence is 0"},
		{"schema 0", edit(func(m map[string]any) { m["schema"] = 0 }), "schema version 0 is below 1"},
		{"no state type", edit(func(m map[string]any) { delete(m, "state_type") }), "state type is empty"},
		{"no content type", edit(func(m map[string]any) { m["ct"] = "" }), "content type is empty"},
		{"bad state type", edit(func(m map[string]any) { m["state_type"] = "a cart" }), "state type \"a cart\" is not a valid name"},
		{"state not bytes", edit(func(m map[string]any) { m["state"] = map[string]int{"a": 1} }), "not a msgpack snapshot envelope"},
	}
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				fx.raw(t, "cart.42", tc.value(t))

				got, ok, err := fx.snaps.Get(ctx, cart)
				require.ErrorIs(t, err, kv.ErrCorruptSnapshot)
				assert.False(t, ok)
				assert.Zero(t, got)
				var kerr *kv.Error
				require.ErrorAs(t, err, &kerr)
				assert.Equal(t, fx.bucket, kerr.Bucket)
				assert.Equal(t, "cart.42", kerr.Key)
				assert.Contains(t, err.Error(), fx.bucket)
				assert.Contains(t, err.Error(), "cart.42")
				assert.Contains(t, err.Error(), tc.says)

				// A valid snapshot replaces it, even of a low version.
				v1 := snap(cart, 1)
				require.NoError(t, fx.snaps.Put(ctx, v1))
				requireSnapshot(t, fx.snaps, v1)
			})
		}
	})
}

func TestTooLarge(t *testing.T) {
	const limit = 4096
	forEach(t, kv.Config{MaxValueSize: limit, Memory: true}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		big := snap(cart, 2)
		big.State = bytes.Repeat([]byte{'x'}, limit)
		err := fx.snaps.Put(ctx, big)
		require.ErrorIs(t, err, stream.ErrTooLarge)
		var kerr *kv.Error
		require.ErrorAs(t, err, &kerr)
		assert.Equal(t, "cart.42", kerr.Key)
		_, ok, err := fx.snaps.Get(ctx, cart)
		require.NoError(t, err)
		assert.False(t, ok, "nothing written")
		assert.Zero(t, fx.keys(t))

		// Over the boundary, every size is either stored or refused
		// before any I/O with ErrTooLarge: never refused by the server
		// with another error.
		accepted, refused := 0, 0
		var last kv.Snapshot
		for n := limit - 300; n <= limit; n++ {
			s := snap(cart, uint64(n))
			s.State = bytes.Repeat([]byte{'y'}, n)
			switch err := fx.snaps.Put(ctx, s); {
			case err == nil:
				accepted++
				last = s
			case errors.Is(err, stream.ErrTooLarge):
				refused++
			default:
				require.NoError(t, err, "state of %d bytes", n)
			}
		}
		assert.Positive(t, accepted)
		assert.Positive(t, refused)
		requireSnapshot(t, fx.snaps, last)

		// A refused snapshot leaves the stored one in place.
		big.Version = 1 << 20
		require.ErrorIs(t, fx.snaps.Put(ctx, big), stream.ErrTooLarge)
		requireSnapshot(t, fx.snaps, last)
	})
}

// The server's own refusal (the bucket shrunk under a running Store) is
// reported as ErrTooLarge too, and writes nothing.
func TestTooLargeForServer(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()
	st, err := kv.NewStore(ctx, js, kv.Config{Bucket: "shrinks", MaxValueSize: 64 << 10})
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, snap(cart, 1)))
	_, err = kv.NewStore(ctx, js, kv.Config{Bucket: "shrinks", MaxValueSize: 1024})
	require.NoError(t, err)

	s := snap(cart, 2)
	s.State = bytes.Repeat([]byte{'z'}, 4096)
	err = st.Put(ctx, s)
	require.ErrorIs(t, err, stream.ErrTooLarge)
	assert.Contains(t, err.Error(), "server refused")
	requireSnapshot(t, st, snap(cart, 1))
}

func TestIDsWithAnyCharacters(t *testing.T) {
	ids := []string{
		"42", "a.b", "a=2Eb", "a b", "a  b", " ", ".", "..", "a.", ".a", "*", ">", "a.*.>",
		"alice@example.com", "path/to/file", "Zürich", "日本語", "🙂", "tab\there", "new\nline",
		"a=", "=", "A", "a", strings.Repeat("é", stream.MaxIDLength/2),
	}
	types := []string{"cart", "cart_item", "Cart-2"}
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		keys := map[string]stream.Aggregate{}
		var all []kv.Snapshot
		for ti, typ := range types {
			for i, id := range ids {
				agg := stream.Aggregate{Type: typ, ID: id}
				key, err := kv.Key(agg)
				require.NoError(t, err, "id %q", id)
				require.Regexp(t, validKeys, key)
				assert.False(t, strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".") || strings.Contains(key, ".."), key)
				tok, found := strings.CutPrefix(key, typ+".")
				require.True(t, found, key)
				assert.NotContains(t, tok, ".", "the id is one token")
				decoded, err := stream.DecodeID(tok)
				require.NoError(t, err)
				assert.Equal(t, id, decoded)
				if prev, dup := keys[key]; dup {
					t.Fatalf("key %q of %s collides with %s", key, agg, prev)
				}
				keys[key] = agg

				s := snap(agg, uint64(ti*100+i+1))
				require.NoError(t, fx.snaps.Put(ctx, s))
				all = append(all, s)
			}
		}
		for _, s := range all {
			requireSnapshot(t, fx.snaps, s)
		}
		assert.Equal(t, len(all), fx.keys(t))
	})
}

func TestKey(t *testing.T) {
	cases := []struct {
		agg  stream.Aggregate
		key  string
		want error
	}{
		{stream.Aggregate{Type: "cart", ID: "42"}, "cart.42", nil},
		{stream.Aggregate{Type: "user", ID: "alice@example.com"}, "user.alice=40example=2Ecom", nil},
		{stream.Aggregate{Type: "city", ID: "Zürich"}, "city.Z=C3=BCrich", nil},
		{stream.Aggregate{Type: "doc", ID: "a.b c"}, "doc.a=2Eb=20c", nil},
		{stream.Aggregate{Type: "", ID: "42"}, "", stream.ErrInvalidName},
		{stream.Aggregate{Type: "a.b", ID: "42"}, "", stream.ErrInvalidName},
		{stream.Aggregate{Type: "cart", ID: ""}, "", stream.ErrInvalidID},
		{stream.Aggregate{Type: "cart", ID: "\xff"}, "", stream.ErrInvalidID},
		{stream.Aggregate{Type: "cart", ID: strings.Repeat("x", stream.MaxIDLength+1)}, "", stream.ErrInvalidID},
	}
	for _, tc := range cases {
		key, err := kv.Key(tc.agg)
		if tc.want != nil {
			require.ErrorIs(t, err, tc.want, "%q", tc.agg)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.key, key)
	}
}

// Invalid input is refused before any I/O: the Store's connection is closed,
// and yet the error is the validation error.
func TestInvalidInputBeforeIO(t *testing.T) {
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	st, err := kv.NewStore(t.Context(), js, kv.Config{})
	require.NoError(t, err)
	nc.Close()
	mem := kv.NewMemory()

	mod := func(f func(*kv.Snapshot)) kv.Snapshot { s := snap(cart, 3); f(&s); return s }
	badSnaps := []struct {
		name string
		s    kv.Snapshot
		want error
	}{
		{"bad type", mod(func(s *kv.Snapshot) { s.Aggregate.Type = "a b" }), stream.ErrInvalidName},
		{"empty id", mod(func(s *kv.Snapshot) { s.Aggregate.ID = "" }), stream.ErrInvalidID},
		{"version 0", mod(func(s *kv.Snapshot) { s.Version = 0 }), kv.ErrInvalidSnapshot},
		{"sequence 0", mod(func(s *kv.Snapshot) { s.Sequence = 0 }), kv.ErrInvalidSnapshot},
		{"schema 0", mod(func(s *kv.Snapshot) { s.SchemaVersion = 0 }), kv.ErrInvalidSnapshot},
		{"no content type", mod(func(s *kv.Snapshot) { s.ContentType = "" }), kv.ErrInvalidSnapshot},
		{"no state type", mod(func(s *kv.Snapshot) { s.StateType = "" }), stream.ErrInvalidName},
		{"bad state type", mod(func(s *kv.Snapshot) { s.StateType = "my.cart" }), stream.ErrInvalidName},
	}
	for _, snaps := range []kv.Snapshots{st, mem} {
		ctx := t.Context()
		for _, tc := range badSnaps {
			require.ErrorIs(t, snaps.Put(ctx, tc.s), tc.want, "%T %s", snaps, tc.name)
		}
		_, _, err := snaps.Get(ctx, stream.Aggregate{Type: "cart"})
		require.ErrorIs(t, err, stream.ErrInvalidID)
		require.ErrorIs(t, snaps.Delete(ctx, stream.Aggregate{Type: "", ID: "1"}), stream.ErrInvalidName)
	}
	assert.Zero(t, mem.Len())
}

func TestDelete(t *testing.T) {
	forEach(t, kv.Config{History: 5}, func(t *testing.T, fx fixture) {
		ctx := t.Context()
		require.NoError(t, fx.snaps.Delete(ctx, cart), "deleting nothing")
		require.NoError(t, fx.snaps.Put(ctx, snap(cart, 8)))
		require.NoError(t, fx.snaps.Put(ctx, snap(cart, 9)))
		require.NoError(t, fx.snaps.Delete(ctx, cart))
		_, ok, err := fx.snaps.Get(ctx, cart)
		require.NoError(t, err)
		assert.False(t, ok)
		assert.Zero(t, fx.keys(t))
		require.NoError(t, fx.snaps.Delete(ctx, cart), "deleting twice")

		// After a delete any version can be stored again.
		require.NoError(t, fx.snaps.Put(ctx, snap(cart, 2)))
		requireSnapshot(t, fx.snaps, snap(cart, 2))
	})
}

// The Store's bucket has the configured settings.
func TestBucketConfig(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	cases := []struct {
		name string
		cfg  kv.Config
		want jetstream.KeyValueConfig
	}{
		{"defaults", kv.Config{}, jetstream.KeyValueConfig{
			Bucket: "esnats_snapshots", Replicas: 1, History: 1, MaxValueSize: 1 << 20, Storage: jetstream.FileStorage,
		}},
		{"everything", kv.Config{
			Bucket: "snaps_all", Replicas: 1, Compression: true, History: 7, MaxValueSize: 64 << 10,
			TTL: time.Hour, Description: "cart snapshots",
		}, jetstream.KeyValueConfig{
			Bucket: "snaps_all", Replicas: 1, Compression: true, History: 7, MaxValueSize: 64 << 10,
			TTL: time.Hour, Description: "cart snapshots", Storage: jetstream.FileStorage,
		}},
		{"memory", kv.Config{Bucket: "snaps_mem", Memory: true, History: 64}, jetstream.KeyValueConfig{
			Bucket: "snaps_mem", Replicas: 1, History: 64, MaxValueSize: 1 << 20, Storage: jetstream.MemoryStorage,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := kv.NewStore(t.Context(), js, tc.cfg)
			require.NoError(t, err)
			assert.Equal(t, tc.want.Bucket, st.Bucket())
			requireBucket(t, js, tc.want)
		})
	}
}

// requireBucket requires the bucket to have want's settings.
func requireBucket(t *testing.T, js jetstream.JetStream, want jetstream.KeyValueConfig) {
	t.Helper()
	b, err := js.KeyValue(t.Context(), want.Bucket)
	require.NoError(t, err)
	status, err := b.Status(t.Context())
	require.NoError(t, err)
	got := status.Config()
	assert.Equal(t, want.Replicas, got.Replicas, "replicas")
	assert.Equal(t, want.History, got.History, "history")
	assert.Equal(t, want.Compression, got.Compression, "compression")
	assert.Equal(t, want.MaxValueSize, got.MaxValueSize, "max value size")
	assert.Equal(t, want.TTL, got.TTL, "ttl")
	assert.Equal(t, want.Storage, got.Storage, "storage")
	assert.Equal(t, want.Description, got.Description, "description")
}

func TestNewStoreIdempotent(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()
	cfg := kv.Config{Bucket: "snaps", History: 2}
	st, err := kv.NewStore(ctx, js, cfg)
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, snap(cart, 4)))

	again, err := kv.NewStore(ctx, js, cfg)
	require.NoError(t, err)
	requireSnapshot(t, again, snap(cart, 4))

	// A changed config updates the bucket and keeps its snapshots.
	cfg.History = 5
	cfg.Description = "updated"
	updated, err := kv.NewStore(ctx, js, cfg)
	require.NoError(t, err)
	requireSnapshot(t, updated, snap(cart, 4))
	requireBucket(t, js, jetstream.KeyValueConfig{
		Bucket: "snaps", Replicas: 1, History: 5, MaxValueSize: 1 << 20, Storage: jetstream.FileStorage, Description: "updated",
	})

	// A change the server cannot make is an error naming the bucket.
	cfg.Memory = true
	_, err = kv.NewStore(ctx, js, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "create bucket (bucket snaps)")
}

func TestOpenStore(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()

	_, err := kv.OpenStore(ctx, js, kv.Config{Bucket: "missing"})
	require.ErrorIs(t, err, stream.ErrNotFound)
	require.ErrorIs(t, err, jetstream.ErrBucketNotFound)
	assert.Contains(t, err.Error(), "missing")
	_, err = js.KeyValue(ctx, "missing")
	require.ErrorIs(t, err, jetstream.ErrBucketNotFound, "OpenStore created nothing")

	created, err := kv.NewStore(ctx, js, kv.Config{Bucket: "small", MaxValueSize: 2048})
	require.NoError(t, err)
	require.NoError(t, created.Put(ctx, snap(cart, 3)))

	// The bucket's own max value size applies when smaller than the
	// configured one, before any I/O.
	opened, err := kv.OpenStore(ctx, js, kv.Config{Bucket: "small"})
	require.NoError(t, err)
	requireSnapshot(t, opened, snap(cart, 3))
	big := snap(cart, 4)
	big.State = make([]byte, 4096)
	err = opened.Put(ctx, big)
	require.ErrorIs(t, err, stream.ErrTooLarge)
	assert.NotContains(t, err.Error(), "server refused")
	requireBucket(t, js, jetstream.KeyValueConfig{
		Bucket: "small", Replicas: 1, History: 1, MaxValueSize: 2048, Storage: jetstream.FileStorage,
	})

	_, err = kv.OpenStore(ctx, js, kv.Config{Bucket: "bad name"})
	require.ErrorIs(t, err, kv.ErrInvalidConfig)
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		cfg kv.Config
		ok  bool
	}{
		{kv.Config{}, true},
		{kv.Config{Bucket: "a-b_C9", Replicas: 5, History: 64, MaxValueSize: 129, TTL: time.Second}, true},
		{kv.Config{Bucket: "a.b"}, false},
		{kv.Config{Bucket: "a b"}, false},
		{kv.Config{Bucket: strings.Repeat("b", 129)}, false},
		{kv.Config{Replicas: -1}, false},
		{kv.Config{Replicas: 6}, false},
		{kv.Config{History: -1}, false},
		{kv.Config{History: 65}, false},
		{kv.Config{MaxValueSize: -1}, false},
		{kv.Config{MaxValueSize: 128}, false},
		{kv.Config{TTL: -time.Second}, false},
	}
	for _, tc := range cases {
		err := tc.cfg.Validate()
		if tc.ok {
			assert.NoError(t, err, "%+v", tc.cfg)
		} else {
			assert.ErrorIs(t, err, kv.ErrInvalidConfig, "%+v", tc.cfg)
		}
	}
	_, err := kv.NewStore(t.Context(), nil, kv.Config{History: 100})
	require.ErrorIs(t, err, kv.ErrInvalidConfig, "before any I/O")
}

func TestTTLExpires(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()
	st, err := kv.NewStore(ctx, js, kv.Config{TTL: 500 * time.Millisecond, Memory: true})
	require.NoError(t, err)
	require.NoError(t, st.Put(ctx, snap(cart, 1)))
	requireSnapshot(t, st, snap(cart, 1))
	require.Eventually(t, func() bool {
		_, ok, err := st.Get(ctx, cart)
		return err == nil && !ok
	}, 10*time.Second, 50*time.Millisecond)
}

// On a 3-node cluster the bucket has 3 replicas, and concurrent writers
// (whose lost compare-and-sets may come back as 10164 rather than 10071)
// still keep the highest version.
func TestClusterReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster; skipped with -short")
	}
	c := embedded.RunCluster(t)
	_, js := embedded.MustJetStream(t, c)
	ctx := t.Context()
	st, err := kv.NewStore(ctx, js, kv.Config{Replicas: 3})
	require.NoError(t, err)
	requireBucket(t, js, jetstream.KeyValueConfig{
		Bucket: kv.DefaultBucket, Replicas: 3, History: 1, MaxValueSize: 1 << 20, Storage: jetstream.FileStorage,
	})

	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for w := range 8 {
		wg.Go(func() {
			for i := range 10 {
				if err := st.Put(ctx, snap(cart, uint64(1+i*8+w))); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	requireSnapshot(t, st, snap(cart, 80))
}

func TestCheckpoints(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()
	cp, err := kv.NewCheckpoints(ctx, js, kv.Config{})
	require.NoError(t, err)
	assert.Equal(t, kv.DefaultCheckpointBucket, cp.Bucket())
	_, err = kv.NewCheckpoints(ctx, js, kv.Config{})
	require.NoError(t, err, "idempotent")

	pos, rev, err := cp.Get(ctx, "orders")
	require.NoError(t, err)
	assert.Zero(t, pos)
	assert.Zero(t, rev)

	rev1, err := cp.Set(ctx, "orders", 10, 0)
	require.NoError(t, err)
	_, err = cp.Set(ctx, "orders", 11, 0)
	require.ErrorIs(t, err, stream.ErrConflict, "created twice")

	rev2, err := cp.Set(ctx, "orders", 20, rev1)
	require.NoError(t, err)
	assert.Greater(t, rev2, rev1)
	_, err = cp.Set(ctx, "orders", 30, rev1)
	require.ErrorIs(t, err, stream.ErrConflict, "stale revision")
	var kerr *kv.Error
	require.ErrorAs(t, err, &kerr)
	assert.Equal(t, "orders", kerr.Key)

	pos, rev, err = cp.Get(ctx, "orders")
	require.NoError(t, err)
	assert.Equal(t, uint64(20), pos)
	assert.Equal(t, rev2, rev)

	// Positions may go back (a rebuild).
	_, err = cp.Set(ctx, "orders", 0, rev2)
	require.NoError(t, err)

	// Readable by other clients: decimal ASCII under the escaped name.
	raw, err := js.KeyValue(ctx, kv.DefaultCheckpointBucket)
	require.NoError(t, err)
	_, err = cp.Set(ctx, "orders.summary v2", 1234, 0)
	require.NoError(t, err)
	entry, err := raw.Get(ctx, "orders=2Esummary=20v2")
	require.NoError(t, err)
	assert.Equal(t, "1234", string(entry.Value()))

	// Delete, then start again from revision 0.
	require.NoError(t, cp.Delete(ctx, "orders"))
	require.NoError(t, cp.Delete(ctx, "orders"))
	pos, rev, err = cp.Get(ctx, "orders")
	require.NoError(t, err)
	assert.Zero(t, pos)
	assert.Zero(t, rev)
	_, err = cp.Set(ctx, "orders", 5, 0)
	require.NoError(t, err)

	// Corrupt values are reported, with the revision to overwrite them.
	badRev, err := raw.Put(ctx, "broken", []byte("twelve"))
	require.NoError(t, err)
	_, rev, err = cp.Get(ctx, "broken")
	require.ErrorIs(t, err, kv.ErrCorruptCheckpoint)
	assert.Contains(t, err.Error(), "broken")
	assert.Equal(t, badRev, rev)
	_, err = cp.Set(ctx, "broken", 12, rev)
	require.NoError(t, err)

	// Invalid names fail before any I/O.
	_, _, err = cp.Get(ctx, "")
	require.ErrorIs(t, err, stream.ErrInvalidID)
	_, err = cp.Set(ctx, "\xff", 1, 0)
	require.ErrorIs(t, err, stream.ErrInvalidID)
}

func TestCheckpointsConcurrentSetOneWins(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := t.Context()
	cp, err := kv.NewCheckpoints(ctx, js, kv.Config{Bucket: "cps", Memory: true})
	require.NoError(t, err)
	_, rev, err := cp.Get(ctx, "p")
	require.NoError(t, err)

	var wg sync.WaitGroup
	var mu sync.Mutex
	won, lost := 0, 0
	for i := range 8 {
		wg.Go(func() {
			_, err := cp.Set(ctx, "p", uint64(i+1), rev)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.Is(err, stream.ErrConflict):
				lost++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1, won)
	assert.Equal(t, 7, lost)
}

func TestContextCanceled(t *testing.T) {
	forEach(t, kv.Config{}, func(t *testing.T, fx fixture) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		require.ErrorIs(t, fx.snaps.Put(ctx, snap(cart, 1)), context.Canceled)
		_, _, err := fx.snaps.Get(ctx, cart)
		require.ErrorIs(t, err, context.Canceled)
	})
}
