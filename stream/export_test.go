package stream

import "time"

// Hooks for the package's external tests and measurements of group commit.

// SetGroupInflight sets how many group-commit batches st may have in flight.
func SetGroupInflight(st *Store, n int) { st.gc.maxInflight = n }

// SetGroupYield turns the yield to answered writers on or off.
func SetGroupYield(st *Store, on bool) { st.gc.noYield = !on }

// GroupStats returns how many group batches (of two or more appends) st has
// sent, and how many appends they carried, and resets both.
func GroupStats(st *Store) (batches, appends int64) {
	return st.gc.groups.Swap(0), st.gc.grouped.Swap(0)
}

// HoldGroup makes st's committer behave as if a batch were in flight, so
// that appends queue up, until release is called: then they go out
// together.
func HoldGroup(st *Store) (release func()) {
	c := st.gc
	c.mu.Lock()
	c.inflight++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.inflight--
		starts := c.dispatchLocked()
		c.mu.Unlock()
		c.start(starts, false)
	}
}

// QueuedAppends returns how many appends wait in st's queue.
func QueuedAppends(st *Store) int {
	c := st.gc
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// GroupMaxEvents returns the most events st puts in one group batch.
func GroupMaxEvents(st *Store) int {
	c := st.gc
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxMsgs
}

// SetAutoFlapping makes st's GroupCommitAuto measure and switch modes
// every few milliseconds, whatever it measures: a test of every guarantee
// of an append while modes change under it.
func SetAutoFlapping(st *Store) {
	a := st.gc.auto
	a.mu.Lock()
	defer a.mu.Unlock()
	a.window, a.maxWindow, a.minSamples = time.Millisecond, 5*time.Millisecond, 2
	a.minHold, a.maxHold, a.hold = time.Millisecond, time.Millisecond, time.Millisecond
	a.gain = 0
}

// AutoSwitches returns how many times st's GroupCommitAuto switched modes.
func AutoSwitches(st *Store) int64 { return st.gc.auto.switches.Load() }
