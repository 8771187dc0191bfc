package stream

import (
	"sync"
	"sync/atomic"
	"time"
)

// autoMode is what GroupCommitAuto adds to a committer: it chooses between
// coalescing concurrent single-event appends into atomic batches
// (GroupCommitBatch) and pipelining them (GroupCommitPipeline) from the
// latencies it measures, because which is faster depends on what the
// client cannot see: the server's fsync policy (under fsync "always" a
// batch is synced once and pipelined publishes once each, so batches win
// 2.5-7x; under the default policy a single-replica file stream stages
// every atomic batch in a new synced file, about 4ms, so pipelining wins
// 3-8x), the stream's replicas and the network.
//
// It starts with batches. While appends are concurrent (a mode changes
// nothing for a lone writer) it measures the mean latency of the current
// mode for a window, then of the other mode for a window (the probe), and
// keeps the other mode only when it was clearly faster (by probeGain). A
// probe that cannot win any more (its appends, those in flight included,
// have already taken too long on average) ends at once, so probing the
// slower mode costs a few of its latencies, not a window.
// Mean latency is the right figure whether the load is a fixed number of
// writers (their rate is writers/latency) or a fixed rate (where fewer
// appends in flight means a lower latency at the same rate). It probes
// again after a hold that starts at minHold and doubles, up to maxHold,
// each time the probe confirms the current mode, so that a steady load
// spends a small share of its time on probes, while a change (a server
// reconfigured, a leader moved) is seen within maxHold.
//
// Switching is safe at any moment: both modes keep every guarantee of an
// append, and they already run side by side in GroupCommitPipeline
// (multi-event commands are batched there): the server's check orders
// appends whichever way they were sent. It needs no goroutine: phases
// advance when appends begin and end.
type autoMode struct {
	pipeline atomic.Bool  // the current choice
	inflight atomic.Int64 // single-event appends in flight
	next     atomic.Int64 // unix nanoseconds when an idle phase ends

	// Tunables, fixed at creation (tests shorten them).
	window     time.Duration // a measurement counts the appends that begin in this window
	maxWindow  time.Duration // one without minSamples by then is dropped; its stragglers are awaited this long
	minSamples int
	minHold    time.Duration
	maxHold    time.Duration
	gain       float64 // probeGain
	now        func() time.Time

	mu       sync.Mutex
	state    autoState
	phase    uint64 // changes with every state change; samples count only in their own phase
	since    time.Time
	draining bool          // a measurement's window is over; its appends in flight are awaited
	drained  time.Time     // when the window was over
	begun    int           // appends counted in the measurement
	pending  int           // of those, the ones in flight
	started  time.Duration // the sum of their starts, from since
	n        int           // of those, the ones ended
	sum      time.Duration
	base     time.Duration // the current mode's mean latency, from its last measurement
	hold     time.Duration

	// For tests and the benchmarks: probes run and mode switches made.
	probes, switches atomic.Int64
}

type autoState int

const (
	autoIdle    autoState = iota // running the current mode, measuring nothing
	autoMeasure                  // measuring the current mode
	autoProbe                    // measuring the other mode
)

// Defaults of autoMode's tunables.
const (
	autoWindow     = 150 * time.Millisecond
	autoMaxWindow  = 2 * time.Second
	autoMinSamples = 64
	autoMinHold    = time.Second
	autoMaxHold    = 32 * time.Second
	// probeGain is how much lower the other mode's mean latency must be
	// for a switch: measurements on a busy machine vary by some 10-20%,
	// the modes differ by 2.5x or more where the choice matters.
	probeGain = 1.25
	// minVerdict is how many appends a probe needs before it may be
	// called lost early.
	minVerdict = 16
)

func newAutoMode() *autoMode {
	return &autoMode{
		window:     autoWindow,
		maxWindow:  autoMaxWindow,
		minSamples: autoMinSamples,
		minHold:    autoMinHold,
		maxHold:    autoMaxHold,
		hold:       autoMinHold,
		gain:       probeGain,
		now:        time.Now,
	}
}

// autoSample is one single-event append being timed.
type autoSample struct {
	phase   uint64
	start   time.Time
	counted bool // concurrent with another, and in a measuring phase
}

// begin notes that a single-event append starts; end or drop must follow.
// The append is then sent the way pipelined() says at this moment.
func (a *autoMode) begin() autoSample {
	concurrent := a.inflight.Add(1) > 1
	now := a.now()
	if now.UnixNano() < a.next.Load() {
		return autoSample{} // idle: nothing to measure or decide
	}
	a.mu.Lock()
	a.stepLocked(now)
	s := autoSample{phase: a.phase, start: now, counted: concurrent && a.state != autoIdle && !a.draining}
	if s.counted {
		a.begun++
		a.pending++
		a.started += now.Sub(a.since)
	}
	a.mu.Unlock()
	return s
}

// end notes that the append s began has ended (however it ended: a failure
// costs the caller its latency too).
func (a *autoMode) end(s autoSample) {
	a.inflight.Add(-1)
	if !s.counted {
		return
	}
	now := a.now()
	a.mu.Lock()
	if s.phase == a.phase {
		a.pending--
		a.started -= s.start.Sub(a.since)
		a.n++
		a.sum += now.Sub(s.start)
	}
	a.stepLocked(now)
	a.mu.Unlock()
}

// drop ends s without counting it: an append that did not go out the way
// begin timed it.
func (a *autoMode) drop(s autoSample) {
	a.inflight.Add(-1)
	if !s.counted {
		return
	}
	a.mu.Lock()
	if s.phase == a.phase {
		a.begun--
		a.pending--
		a.started -= s.start.Sub(a.since)
	}
	a.mu.Unlock()
}

// pipelined reports whether single-event appends are pipelined now.
func (a *autoMode) pipelined() bool { return a.pipeline.Load() }

// stepLocked moves to the next phase when the current one is over.
//
// A measurement counts the concurrent appends that begin in its window
// (at least window long, and minSamples appends), then waits for those
// still in flight (at most maxWindow more), so that its mean is that of
// every append it began, slow ones included: a window that counted only
// the appends ending in it would favour a mode whose latencies have a long
// tail.
func (a *autoMode) stepLocked(now time.Time) {
	elapsed := now.Sub(a.since)
	switch a.state {
	case autoIdle:
		if elapsed < a.hold {
			a.next.Store(a.since.Add(a.hold).UnixNano())
			return
		}
		a.enterLocked(autoMeasure, now)
		return
	}
	if a.state == autoProbe && a.begun >= minVerdict {
		// The probe's mean is at least what its appends have taken so
		// far, those in flight included: once that is too slow to win,
		// the probe is lost, and ends now rather than after its window
		// (probing the slower mode is what Auto's choice costs).
		atLeast := a.sum + time.Duration(a.pending)*elapsed - a.started
		if float64(atLeast)/float64(a.begun)*a.gain >= float64(a.base) {
			a.lostLocked(now)
			return
		}
	}
	if !a.draining {
		switch {
		case a.begun >= a.minSamples && elapsed >= a.window:
			a.draining, a.drained = true, now
		case elapsed >= a.maxWindow:
			// Too few concurrent appends to tell: no verdict.
			if a.state == autoProbe {
				a.pipeline.Store(!a.pipeline.Load())
			}
			a.enterLocked(autoIdle, now)
			return
		}
	}
	if !a.draining {
		return
	}
	if a.pending > 0 {
		late := now.Sub(a.drained)
		if late < a.maxWindow {
			return
		}
		// Still in flight after maxWindow: each has taken at least that.
		a.n += a.pending
		a.sum += time.Duration(a.pending) * late
		a.pending, a.started = 0, 0
	}
	mean := a.sum / time.Duration(max(a.n, 1))
	if a.state == autoMeasure {
		a.base = mean
		a.probes.Add(1)
		a.pipeline.Store(!a.pipeline.Load())
		a.enterLocked(autoProbe, now)
		return
	}
	if float64(mean)*a.gain < float64(a.base) {
		a.switches.Add(1) // keep the probed mode
		a.hold = a.minHold
		a.enterLocked(autoIdle, now)
		return
	}
	a.lostLocked(now)
}

// lostLocked ends a probe that did not beat the current mode: back to it,
// and a longer hold before the next.
func (a *autoMode) lostLocked(now time.Time) {
	a.pipeline.Store(!a.pipeline.Load())
	a.hold = min(2*a.hold, a.maxHold)
	a.enterLocked(autoIdle, now)
}

func (a *autoMode) enterLocked(s autoState, now time.Time) {
	a.state, a.since, a.draining = s, now, false
	a.begun, a.pending, a.started, a.n, a.sum = 0, 0, 0, 0, 0
	a.phase++
	if s == autoIdle {
		a.next.Store(now.Add(a.hold).UnixNano())
	} else {
		a.next.Store(0) // measuring: every append steps
	}
}
