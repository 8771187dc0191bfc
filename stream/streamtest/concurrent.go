package streamtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// Shape of ConcurrentAggregates: 2 x Harness.Writers writers, each running
// Harness.AppendsPerWriter/5 commands on aggregates picked at random among
// spreadAggregates (so that writers meet on the same aggregates, and
// several commands of one aggregate arrive together).
const (
	spreadAggregates = 48
	spreadMaxEvents  = 4  // events per command: 1 to 4
	spreadAttempts   = 50 // a command that conflicts this often fails the test
)

// spreadCommand is one successful command of ConcurrentAggregates.
type spreadCommand struct {
	agg    stream.Aggregate
	writer int
	n      int // the writer's command number
	events int
	res    stream.AppendResult
}

// testConcurrentAggregates: many writers run commands of 1 to 4 events on
// many aggregates at once, each with an expectation: the revision the
// writer last saw (its own last result, or the actual revision of a
// conflict), or ExpectAny for one command in five. A conflict is retried
// with the actual revision it reports, which must be right (a wrong one
// would conflict again and again). Afterwards every aggregate holds exactly
// the events of its successful commands, once each, versions 1..n without
// a gap, and every command's events lie at consecutive sequences in the
// order given, with the versions and positions its result reported: no lost
// update, nothing twice, every command atomic. A store that coalesces
// concurrent appends (group commit) must keep all of that.
func testConcurrentAggregates(e *env) {
	t := e.t
	writers, each := 2*e.h.Writers, max(e.h.AppendsPerWriter/5, 4)
	aggs := make([]stream.Aggregate, spreadAggregates)
	for i := range aggs {
		aggs[i] = stream.Aggregate{Type: "spread", ID: fmt.Sprintf("a%02d", i)}
	}
	var (
		mu        sync.Mutex
		done      []spreadCommand
		conflicts atomic.Int64
		transient atomic.Int64
		wg        sync.WaitGroup
	)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			known := map[stream.Aggregate]stream.Revision{} // what this writer last saw
			for n := range each {
				agg := aggs[rng.IntN(len(aggs))]
				k := 1 + rng.IntN(spreadMaxEvents)
				events := make([]stream.EventData, k)
				for i := range events {
					events[i] = stream.EventData{Data: Counted{Writer: w, N: n*16 + i}}
				}
				anyRev := n%5 == 4
				for attempt := 1; ; attempt++ {
					if attempt > spreadAttempts {
						errs <- fmt.Errorf("writer %d, command %d on %s: still conflicting after %d attempts", w, n, agg, spreadAttempts)
						return
					}
					expect := stream.ExpectRevision(known[agg])
					if anyRev {
						expect = stream.ExpectAny()
					}
					res, err := e.st.Append(e.ctx, agg, expect, events)
					var ce *stream.ConflictError
					if errors.As(err, &ce) {
						conflicts.Add(1)
						if !ce.ActualKnown || ce.Aggregate != agg {
							errs <- fmt.Errorf("writer %d: conflict on %s without the actual revision: %v", w, agg, err)
							return
						}
						known[agg] = ce.Actual
						continue
					}
					if err != nil && e.h.Transient != nil && e.h.Transient(err) {
						transient.Add(1)
						continue
					}
					if err != nil {
						errs <- fmt.Errorf("writer %d, command %d on %s (%s): %w", w, n, agg, expect, err)
						return
					}
					if !anyRev && res.First.Version != known[agg].Version+1 {
						errs <- fmt.Errorf("writer %d: appended at %s, got version %d", w, known[agg], res.First.Version)
						return
					}
					if res.Last.Version-res.First.Version != uint64(k-1) || res.Last.Sequence-res.First.Sequence != uint64(k-1) {
						errs <- fmt.Errorf("writer %d: %d events reported at %s .. %s", w, k, res.First, res.Last)
						return
					}
					known[agg] = res.Last
					mu.Lock()
					done = append(done, spreadCommand{agg: agg, writer: w, n: n, events: k, res: res})
					mu.Unlock()
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	t.Logf("%d writers x %d commands on %d aggregates: %d conflicts and %d transient errors retried",
		writers, each, len(aggs), conflicts.Load(), transient.Load())
	require.Len(t, done, writers*each)

	// Where each command's events must be, by aggregate.
	byAgg := map[stream.Aggregate][]spreadCommand{}
	total := 0
	for _, c := range done {
		byAgg[c.agg] = append(byAgg[c.agg], c)
		total += c.events
	}
	for _, agg := range aggs {
		cmds := byAgg[agg]
		want := 0
		for _, c := range cmds {
			want += c.events
		}
		var last stream.Revision
		if want > 0 {
			evs := e.load(agg, want)
			require.Equal(t, span(1, uint64(want)), versions(evs), "%s: versions", agg)
			bySeq := make(map[uint64]*stream.Event, len(evs))
			for _, ev := range evs {
				bySeq[ev.Sequence] = ev
			}
			for _, c := range cmds {
				for i := range c.events {
					ev := bySeq[c.res.First.Sequence+uint64(i)]
					require.NotNil(t, ev, "%s: command %d/%d reported at %s, nothing stored there", agg, c.writer, c.n, c.res.First)
					require.Equal(t, Counted{Writer: c.writer, N: c.n*16 + i}, ev.Data, "%s at sequence %d", agg, ev.Sequence)
					require.Equal(t, c.res.First.Version+uint64(i), ev.Version)
				}
			}
			last = evs[len(evs)-1].Revision()
		} else {
			e.load(agg, 0)
		}
		require.Equal(t, last, e.last(agg), "%s: last revision", agg)
	}
	all := e.readAll(total)
	seen := make(map[Counted]bool, total)
	for _, ev := range all {
		c := ev.Data.(Counted)
		require.False(t, seen[c], "event %+v stored twice", c)
		seen[c] = true
	}
}
