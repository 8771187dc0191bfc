package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// testJS starts a server (fsync: server default, for speed) for the test.
func testJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := embedded.RunServer(t, func(o *embedded.Options) { o.Sync = embedded.SyncServerDefault })
	_, js := embedded.MustJetStream(t, srv)
	return js
}

// progressLog records the calls of Options.Progress.
type progressLog struct {
	mu    sync.Mutex
	calls [][2]int
}

func (p *progressLog) fn(done, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, [2]int{done, total})
}

// check checks that done never went back and ended at total == want.
func (p *progressLog) check(t *testing.T, want int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NotEmpty(t, p.calls)
	prev := 0
	for _, c := range p.calls {
		assert.Equal(t, want, c[1], "total")
		assert.GreaterOrEqual(t, c[0], prev, "done went back: %v", p.calls)
		prev = c[0]
	}
	assert.Equal(t, [2]int{want, want}, p.calls[len(p.calls)-1], "last call")
}

// streamNames returns the names of the server's streams starting with prefix.
func streamNames(t *testing.T, js jetstream.JetStream, prefix string) []string {
	t.Helper()
	var out []string
	names := js.StreamNames(context.Background())
	for n := range names.Name() {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	require.NoError(t, names.Err())
	return out
}

// typeCount returns the messages stored on aggregates of type typ.
func typeCount(t *testing.T, js jetstream.JetStream, name, typ string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	require.NoError(t, err)
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(name+"."+typ+".*"))
	require.NoError(t, err)
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// lastVersion returns the version header of subject's last message.
func lastVersion(t *testing.T, js jetstream.JetStream, name, typ, id string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(context.Background(), name+"."+typ+"."+id)
	require.NoError(t, err)
	v, err := strconv.ParseUint(m.Header.Get(stream.HeaderVersion), 10, 64)
	require.NoError(t, err)
	return v
}

func TestWorkloads(t *testing.T) {
	js := testJS(t)
	ctx := context.Background()
	cases := []struct {
		name string
		opts Options
		ops  int // per side
		// check inspects the kept stream.
		check func(t *testing.T, name string, r Result)
	}{
		{"append", Options{Ops: 12, Rounds: 3}, 12, func(t *testing.T, name string, r Result) {
			for _, typ := range []string{rawType, esnatsType} {
				assert.EqualValues(t, 13, typeCount(t, js, name, typ), typ)
				assert.EqualValues(t, 13, lastVersion(t, js, name, typ, "append"), typ)
			}
		}},
		{"append-batch", Options{Ops: 6, Rounds: 3}, 6, func(t *testing.T, name string, r Result) {
			for _, typ := range []string{rawType, esnatsType} {
				assert.EqualValues(t, 70, typeCount(t, js, name, typ), typ)
				assert.EqualValues(t, 70, lastVersion(t, js, name, typ, "batch"), typ)
			}
		}},
		{"append-concurrent", Options{Ops: 24, Rounds: 3, Concurrency: 4}, 24, func(t *testing.T, name string, r Result) {
			assert.Equal(t, 4, r.Concurrency)
			// Auto (the default) starts with batches, and 24 appends are
			// too few for it to time anything.
			assert.Equal(t, "batch", r.GroupCommit)
			for _, typ := range []string{rawType, esnatsType} {
				assert.EqualValues(t, 28, typeCount(t, js, name, typ), typ) // 4 warm-up appends
			}
			// Round robin over 10,000 aggregates: the raw side's first 28,
			// and writer w's first 7 (w, w+4, ...), one event each.
			for i := range 28 {
				assert.EqualValues(t, 1, lastVersion(t, js, name, rawType, fmt.Sprintf("g%05d", i)))
				assert.EqualValues(t, 1, lastVersion(t, js, name, esnatsType, fmt.Sprintf("g%05d", i)))
			}
		}},
		{"append-async", Options{Ops: 24, Rounds: 3, GroupCommit: stream.GroupCommitPipeline}, 24, func(t *testing.T, name string, r Result) {
			assert.Equal(t, "pipeline", r.GroupCommit)
			for _, typ := range []string{rawType, esnatsType} {
				assert.EqualValues(t, 25, typeCount(t, js, name, typ), typ) // 1 warm-up append
			}
			// Round robin over 10,000 aggregates from one goroutine: the
			// first 25 of each side, one event each.
			for i := range 25 {
				assert.EqualValues(t, 1, lastVersion(t, js, name, rawType, fmt.Sprintf("g%05d", i)))
				assert.EqualValues(t, 1, lastVersion(t, js, name, esnatsType, fmt.Sprintf("g%05d", i)))
			}
		}},
		{"load", Options{Ops: 6, Rounds: 3}, 6, func(t *testing.T, name string, r Result) {
			assert.Equal(t, 100, r.EventsPerOp)
			assert.InDelta(t, 100*r.Esnats.OpsPerSec, r.Esnats.EventsPerSec, 1e-6)
			s, err := js.Stream(ctx, name)
			require.NoError(t, err)
			assert.EqualValues(t, 1000, s.CachedInfo().State.Msgs) // the fill: loads write nothing
			assert.EqualValues(t, 100, lastVersion(t, js, name, "cart", "hundred"))
		}},
		{"load-snapshotted", Options{Ops: 6, Rounds: 3}, 6, func(t *testing.T, name string, r Result) {
			assert.Equal(t, 1, r.EventsPerOp) // the snapshot's last event
			s, err := js.Stream(ctx, name)
			require.NoError(t, err)
			assert.EqualValues(t, 10_100, s.CachedInfo().State.Msgs) // the fill: loads write nothing
			snaps, err := kv.OpenStore(ctx, js, kv.Config{Bucket: name + "_snapshots"})
			require.NoError(t, err)
			for id, n := range map[string]uint64{"ten-thousand": 10_000, "hundred": 100} {
				assert.Equal(t, n, lastVersion(t, js, name, "cart", id))
				snap, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: id})
				require.NoError(t, err)
				assert.True(t, ok, id)
				assert.Equal(t, n, snap.Version, id)
			}
		}},
		{"repository-update", Options{Ops: 12, Rounds: 3}, 12, func(t *testing.T, name string, r Result) {
			for _, typ := range []string{rawType, esnatsType} {
				assert.EqualValues(t, 13, typeCount(t, js, name, typ), typ)
				assert.EqualValues(t, 13, lastVersion(t, js, name, typ, "hot"), typ)
			}
		}},
		{"projection-catchup", Options{Ops: 500, Rounds: 2}, 500, func(t *testing.T, name string, r Result) {
			assert.Equal(t, 250, r.Raw.WarmupOps) // one whole catch-up
			s, err := js.Stream(ctx, name)
			require.NoError(t, err)
			st := s.CachedInfo().State
			assert.EqualValues(t, 250, st.Msgs)
			assert.Zero(t, st.Consumers, "consumers left behind")
			assert.Zero(t, r.Esnats.P50, "no per-event latency")
		}},
		{"projection-kv", Options{Ops: 500, Rounds: 2}, 500, func(t *testing.T, name string, r Result) {
			assert.Equal(t, 250, r.Raw.WarmupOps) // one whole catch-up
			s, err := js.Stream(ctx, name)
			require.NoError(t, err)
			st := s.CachedInfo().State
			assert.EqualValues(t, 250, st.Msgs)
			assert.Zero(t, st.Consumers, "consumers left behind")
			// Each catch-up checked its bucket's totals and checkpoint, then
			// deleted it, also under Keep.
			assert.Empty(t, streamNames(t, js, "KV_"+name), "KV buckets left behind")
			assert.Zero(t, r.Esnats.P50, "no per-event latency")
		}},
	}
	require.Len(t, cases, len(Workloads()), "a case per workload")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, ok := Lookup(c.name)
			require.True(t, ok)
			var p progressLog
			c.opts.Progress = p.fn
			c.opts.Keep = true
			c.opts.Prefix = "test"
			r, err := Run(ctx, js, w, c.opts)
			require.NoError(t, err)
			t.Cleanup(func() {
				for _, n := range append(streamNames(t, js, r.Stream), streamNames(t, js, "KV_"+r.Stream)...) {
					assert.NoError(t, js.DeleteStream(context.Background(), n))
				}
			})
			assert.Equal(t, c.name, r.Workload)
			assert.Equal(t, w.Unit, r.Unit)
			assert.True(t, strings.HasPrefix(r.Stream, "test_"+c.name+"_"), r.Stream)
			assert.Equal(t, c.opts.Rounds, r.Rounds)
			assert.Equal(t, 1, r.Replicas)
			for _, s := range []Side{r.Raw, r.Esnats} {
				assert.Equal(t, c.ops, s.Ops)
				assert.Positive(t, s.Elapsed)
				assert.Positive(t, s.OpsPerSec)
				assert.InDelta(t, float64(s.Ops)/s.Elapsed.Seconds(), s.OpsPerSec, 1e-6*s.OpsPerSec)
				if w.Unit != "event" { // the catch-ups' events are not timed one by one
					assert.Positive(t, s.P50)
					assert.LessOrEqual(t, s.P50, s.P99)
					assert.Positive(t, s.Mean)
				}
			}
			assert.Equal(t, w.Raw, r.Raw.Op)
			assert.Equal(t, w.Esnats, r.Esnats.Op)
			assert.Positive(t, r.Ratio)
			assert.Positive(t, r.RatioMedian)
			assert.InDelta(t, r.Esnats.OpsPerSec/r.Raw.OpsPerSec, r.Ratio, 1e-9)
			p.check(t, 2*c.ops)
			c.check(t, r.Stream, r)
			t.Logf("%v", r.Row())
		})
	}
}

func TestRunDeletesItsStreams(t *testing.T) {
	js := testJS(t)
	ctx := context.Background()
	// Another stream, whose subjects the runs' streams must not overlap.
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "other", Subjects: []string{"other.>"}})
	require.NoError(t, err)
	for _, name := range []string{"append", "projection-catchup", "projection-kv"} {
		w, _ := Lookup(name)
		r, err := Run(ctx, js, w, Options{Ops: 40, Rounds: 2, Prefix: "clean"})
		require.NoError(t, err, name)
		assert.Equal(t, 40, r.Esnats.Ops)
	}
	assert.Empty(t, streamNames(t, js, "clean"))
	assert.Equal(t, []string{"other"}, streamNames(t, js, ""))
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	js := testJS(t)
	for _, c := range []struct {
		workload string
		after    time.Duration
	}{
		{"append", 300 * time.Millisecond},             // in the rounds
		{"append-concurrent", 300 * time.Millisecond},  // in the rounds, 16 writers
		{"projection-catchup", 100 * time.Millisecond}, // filling 20,000 events
		{"load-snapshotted", 300 * time.Millisecond},   // filling 10,100 events, its snapshot bucket created
	} {
		t.Run(c.workload, func(t *testing.T) {
			w, _ := Lookup(c.workload)
			ctx, cancel := context.WithTimeout(context.Background(), c.after)
			defer cancel()
			start := time.Now()
			_, err := Run(ctx, js, w, Options{Duration: time.Hour, Prefix: "cancel"})
			took := time.Since(start)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Equal(t, ctx.Err(), err, "ctx.Err() itself")
			assert.Less(t, took, c.after+5*time.Second, "stopped promptly")
			assert.Empty(t, streamNames(t, js, "cancel"))
			assert.Empty(t, streamNames(t, js, "KV_cancel"), "KV buckets left behind")
		})
	}
	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Run(ctx, js, Workloads()[0], Options{})
		assert.Equal(t, context.Canceled, err)
	})
}

func TestDuration(t *testing.T) {
	js := testJS(t)
	var p progressLog
	const d = 150 * time.Millisecond
	w, _ := Lookup("append")
	r, err := Run(context.Background(), js, w, Options{Duration: d, Rounds: 3, Progress: p.fn})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, r.Rounds, 2)
	assert.Equal(t, r.Raw.Ops, r.Esnats.Ops)
	assert.GreaterOrEqual(t, r.Raw.Elapsed, d)
	assert.GreaterOrEqual(t, r.Esnats.Elapsed, d)
	p.check(t, int(2*d/time.Millisecond))
}

func TestRunRefuses(t *testing.T) {
	ctx := context.Background()
	w := Workloads()[0]
	for _, o := range []Options{
		{Ops: -1},
		{Duration: -time.Second},
		{Ops: 10, Duration: time.Second},
		{Rounds: -1},
		{Concurrency: -1},
		{Replicas: 6},
		{Prefix: "a.b"},
		{Prefix: strings.Repeat("p", 65)},
	} {
		assert.Error(t, o.Validate(), "%+v", o)
		_, err := Run(ctx, nil, w, o) // refused before any I/O
		assert.Error(t, err, "%+v", o)
	}
	assert.NoError(t, Options{}.Validate())
	_, err := Run(ctx, nil, Workload{Name: "mine"}, Options{})
	assert.ErrorIs(t, err, ErrUnknownWorkload)
	_, ok := Lookup("nope")
	assert.False(t, ok)
	assert.Equal(t, []string{"append", "append-batch", "append-concurrent", "append-async", "load", "load-snapshotted",
		"repository-update", "projection-catchup", "projection-kv"}, Names())
	for _, w := range Workloads() {
		assert.NotEmpty(t, w.Description, w.Name)
		assert.Positive(t, w.DefaultOps, w.Name)
	}
}

func TestResultJSONAndTable(t *testing.T) {
	r := Result{
		Workload: "append", Unit: "append", EventsPerOp: 1, Concurrency: 1, Replicas: 1, Rounds: 10,
		Raw:    Side{Op: "raw op", Ops: 100, Elapsed: time.Second, OpsPerSec: 100, P50: 9 * time.Millisecond, P99: 12345 * time.Microsecond},
		Esnats: Side{Op: "esnats op", Ops: 100, Elapsed: 1250 * time.Millisecond, OpsPerSec: 80, P50: 11 * time.Millisecond},
		Ratio:  0.8, RatioMedian: 0.81,
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	keys := func(m map[string]any) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return ks
	}
	assert.ElementsMatch(t, []string{"workload", "unit", "events_per_op", "concurrency", "replicas", "rounds", "stream",
		"raw", "esnats", "ratio", "ratio_median"}, keys(m))
	for _, side := range []string{"raw", "esnats"} {
		assert.ElementsMatch(t, []string{"op", "ops", "warmup_ops", "elapsed_ns", "ops_per_sec", "events_per_sec",
			"mean_ns", "p50_ns", "p99_ns", "bytes_per_op", "allocs_per_op"}, keys(m[side].(map[string]any)))
	}
	assert.EqualValues(t, 1e9, m["raw"].(map[string]any)["elapsed_ns"])

	assert.Equal(t, []string{"append", "append", "100", "80.0", "0.80", "9.00ms", "11.0ms", "12.3ms", "-"}, r.Row())
	assert.Len(t, r.Row(), len(Columns()))
	withGC := r
	withGC.Concurrency, withGC.GroupCommit = 64, "pipeline"
	assert.Equal(t, "append x64 (pipeline)", withGC.Row()[1])
	var sb strings.Builder
	require.NoError(t, WriteTable(&sb, r, r))
	lines := strings.Split(strings.TrimSuffix(sb.String(), "\n"), "\n")
	require.Len(t, lines, 3)
	// Aligned: every column starts where its heading does.
	col := strings.Index(lines[0], "esnats/raw")
	for _, l := range lines[1:] {
		assert.Equal(t, "0.80", strings.Fields(string([]rune(l)[len([]rune(lines[0][:col])):]))[0], l)
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	assert.Zero(t, h.quantile(0.5))
	assert.Zero(t, h.mean())
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}, {0.001, time.Microsecond}} {
		got := h.quantile(c.q)
		assert.InEpsilon(t, float64(c.want), float64(got), 1.0/64, "q=%v: %v", c.q, got)
	}
	assert.Equal(t, 500500*time.Nanosecond, h.mean())
	for _, ns := range []uint64{0, 1, 127, 128, 129, 255, 256, 1 << 40, 1<<63 + 12345} {
		i := histIndex(ns)
		require.Less(t, i, histSize, ns)
		mid := uint64(histMid(i))
		assert.InDelta(t, float64(ns), float64(mid), float64(ns)/64+1, ns)
	}
	var o histogram
	o.add(-time.Second) // counted as 0
	h.merge(&o)
	assert.Equal(t, time.Duration(0), h.quantile(0.0005))
}
