package stream

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// autoSim runs writers against an autoMode on a simulated clock: each
// writer begins an append, which ends after latency(pipelined, now), and
// begins the next at once (a fixed number of writers, as a service under
// load has).
type autoSim struct {
	a       *autoMode
	clock   time.Time
	latency func(pipelined bool, now time.Time) time.Duration
	// time spent in each mode, weighted by writers
	inPipeline, inBatch time.Duration
}

func newAutoSim(latency func(pipelined bool, now time.Time) time.Duration) *autoSim {
	s := &autoSim{clock: time.Unix(1_000_000, 0), latency: latency}
	s.a = newAutoMode()
	s.a.now = func() time.Time { return s.clock }
	return s
}

// run simulates writers for d.
func (s *autoSim) run(writers int, d time.Duration) {
	ws := make(simWriters, writers)
	for i := range ws {
		ws[i].sample = s.a.begin()
		ws[i].end = s.clock.Add(s.latency(s.a.pipelined(), s.clock))
	}
	heap.Init(&ws)
	stop := s.clock.Add(d)
	for ws[0].end.Before(stop) {
		step := ws[0].end.Sub(s.clock)
		if s.a.pipelined() {
			s.inPipeline += step
		} else {
			s.inBatch += step
		}
		s.clock = ws[0].end
		s.a.end(ws[0].sample)
		ws[0].sample = s.a.begin()
		ws[0].end = s.clock.Add(s.latency(s.a.pipelined(), s.clock))
		heap.Fix(&ws, 0)
	}
	for i := range ws {
		s.a.end(ws[i].sample)
	}
	s.clock = stop
}

// simWriters is a heap of writers by the end of their append in flight.
type simWriters []struct {
	sample autoSample
	end    time.Time
}

func (w simWriters) Len() int           { return len(w) }
func (w simWriters) Less(i, j int) bool { return w[i].end.Before(w[j].end) }
func (w simWriters) Swap(i, j int)      { w[i], w[j] = w[j], w[i] }
func (w *simWriters) Push(any)          { panic("fixed size") }
func (w *simWriters) Pop() any          { panic("fixed size") }

// jitter returns d varied by up to ±frac, at random.
func jitter(r *rand.Rand, d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*r.Float64()-1)))
}

func TestAutoModeSwitchesToPipelineWhenFaster(t *testing.T) {
	// The server's default fsync on a single-replica file stream: a batch
	// costs about 4ms, pipelined publishes far less.
	r := rand.New(rand.NewPCG(1, 2))
	s := newAutoSim(func(pipelined bool, _ time.Time) time.Duration {
		if pipelined {
			return jitter(r, 4*time.Millisecond, 0.3)
		}
		return jitter(r, 16*time.Millisecond, 0.3)
	})
	s.run(16, time.Second)
	require.True(t, s.a.pipelined(), "after 1s the faster mode (pipeline) is chosen")
	assert.Equal(t, int64(1), s.a.switches.Load())
	assert.Equal(t, GroupCommitPipeline, (&committer{auto: s.a}).mode())

	// Later probes of batches confirm it: no switch back.
	s.run(16, 2*time.Minute)
	assert.True(t, s.a.pipelined())
	assert.Equal(t, int64(1), s.a.switches.Load())
	assert.Greater(t, s.a.probes.Load(), int64(3))
	// The probes cost a small share of the time: a lost probe ends as
	// soon as it cannot win.
	assert.Less(t, float64(s.inBatch)/float64(s.inBatch+s.inPipeline), 0.004)
}

func TestAutoModeKeepsBatchesWhenFaster(t *testing.T) {
	// fsync "always": every pipelined publish is synced on its own.
	r := rand.New(rand.NewPCG(3, 4))
	s := newAutoSim(func(pipelined bool, _ time.Time) time.Duration {
		if pipelined {
			return jitter(r, 24*time.Millisecond, 0.3)
		}
		return jitter(r, 6*time.Millisecond, 0.3)
	})
	s.run(16, 2*time.Minute)
	assert.False(t, s.a.pipelined())
	assert.Zero(t, s.a.switches.Load())
	// The hold doubles from 1s to 32s: about 1+2+4+8+16+32+32 s of holds
	// in two minutes, so some 6-8 probes, not 100.
	assert.GreaterOrEqual(t, s.a.probes.Load(), int64(5))
	assert.LessOrEqual(t, s.a.probes.Load(), int64(9))
	assert.Less(t, float64(s.inPipeline)/float64(s.inBatch+s.inPipeline), 0.004)
}

func TestAutoModeDoesNotFlapOnNoise(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	s := newAutoSim(func(bool, time.Time) time.Duration {
		return jitter(r, 4*time.Millisecond, 0.4)
	})
	s.run(8, 3*time.Minute)
	assert.Zero(t, s.a.switches.Load(), "modes equally fast: no switch")
	assert.False(t, s.a.pipelined())
}

func TestAutoModeFollowsAChange(t *testing.T) {
	// Batches win for a minute (say fsync "always"), then pipelining does
	// (the server was reconfigured): the change is seen within the
	// longest hold and a measurement.
	r := rand.New(rand.NewPCG(7, 8))
	var changeAt time.Time
	s := newAutoSim(func(pipelined bool, now time.Time) time.Duration {
		batchFaster := now.Before(changeAt)
		if pipelined == batchFaster {
			return jitter(r, 10*time.Millisecond, 0.2)
		}
		return jitter(r, 2*time.Millisecond, 0.2)
	})
	changeAt = s.clock.Add(time.Minute)
	s.run(16, time.Minute)
	require.False(t, s.a.pipelined())
	s.run(16, autoMaxHold+2*autoMaxWindow)
	assert.True(t, s.a.pipelined())
	assert.Equal(t, int64(1), s.a.switches.Load())
}

func TestAutoModeLoneWriterIsNotMeasured(t *testing.T) {
	// One writer: both modes send its appends alone, nothing to choose.
	s := newAutoSim(func(pipelined bool, _ time.Time) time.Duration {
		if pipelined {
			return time.Millisecond
		}
		return 5 * time.Millisecond
	})
	s.run(1, time.Minute)
	assert.False(t, s.a.pipelined())
	assert.Zero(t, s.a.probes.Load())
	assert.Zero(t, s.a.inflight.Load())
}

func TestAutoModeSlowAppends(t *testing.T) {
	// A distant server: appends of 100-300ms, longer than a window.
	r := rand.New(rand.NewPCG(9, 10))
	s := newAutoSim(func(pipelined bool, _ time.Time) time.Duration {
		if pipelined {
			return jitter(r, 100*time.Millisecond, 0.2)
		}
		return jitter(r, 300*time.Millisecond, 0.2)
	})
	s.run(200, 20*time.Second)
	assert.True(t, s.a.pipelined())
	assert.Equal(t, int64(1), s.a.switches.Load())
}

func TestAutoModeCountsTheLongTail(t *testing.T) {
	// Pipelining answers half of its appends in 20ms and the other half
	// in 1s (mean 510ms); batches take 200ms. A measurement that counted
	// only the appends ending in its window would see 20ms and switch.
	r := rand.New(rand.NewPCG(11, 12))
	s := newAutoSim(func(pipelined bool, _ time.Time) time.Duration {
		if !pipelined {
			return jitter(r, 200*time.Millisecond, 0.1)
		}
		if r.IntN(2) == 0 {
			return jitter(r, 20*time.Millisecond, 0.1)
		}
		return jitter(r, time.Second, 0.1)
	})
	s.run(200, time.Minute)
	assert.False(t, s.a.pipelined())
	assert.Zero(t, s.a.switches.Load())
	assert.Positive(t, s.a.probes.Load())
}

func TestAutoModeDrop(t *testing.T) {
	// An append begun in a measurement but sent another way (AppendAsync
	// handing it to Append) is not counted, and leaves nothing pending.
	s := newAutoSim(func(bool, time.Time) time.Duration { return time.Millisecond })
	s.run(4, 10*time.Millisecond) // into the first measurement
	s.a.mu.Lock()
	state, pending, begun, n := s.a.state, s.a.pending, s.a.begun, s.a.n
	s.a.mu.Unlock()
	require.Equal(t, autoMeasure, state)
	require.Zero(t, pending)
	first := s.a.begin()
	second := s.a.begin()
	require.True(t, second.counted)
	s.a.drop(second)
	s.a.drop(first)
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	assert.Zero(t, s.a.pending)
	assert.Equal(t, begun, s.a.begun)
	assert.Equal(t, n, s.a.n)
	assert.Zero(t, s.a.inflight.Load())
}
