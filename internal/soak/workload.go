package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// Counters picks the counters commands go to: Hot counters get HotShare of
// the commands (contended: concurrency conflicts, long histories, many
// snapshots), Cold ones the rest.
type Counters struct {
	Hot, Cold int     // how many of each; at least one in all
	HotShare  float64 // 0..1; ignored when there are no hot or no cold counters
}

// Pick returns a counter id.
func (c Counters) Pick(r *rand.Rand) string {
	hot := c.Hot > 0 && (c.Cold == 0 || r.Float64() < c.HotShare)
	if hot {
		return CounterID("hot", r.IntN(c.Hot))
	}
	return CounterID("cold", r.IntN(c.Cold))
}

// Writers runs the command workload: Goroutines writers that, until
// stopped, each pick a counter and either run a repository command on it
// (Update, retried on conflicts by the repository) or append to it directly
// with ExpectRevision (a single Append, or an atomic AppendBatch over two
// counters), after loading its state through LoadRepository. Every attempt
// and its outcome go to Ledger.
type Writers struct {
	Store          stream.EventStore               // required
	Repository     *aggregate.Repository[*Counter] // commands; required
	LoadRepository *aggregate.Repository[*Counter] // state for raw appends; default Repository
	Ledger         *Ledger                         // required
	Counters       Counters                        // required
	Goroutines     int                             // default 8
	AppendShare    float64                         // share of raw single appends; default 0.2
	BatchShare     float64                         // share of raw two-counter batches; default 0.05
	OpTimeout      time.Duration                   // per command or append; default 20s
	Pace           time.Duration                   // pause between a writer's operations; default none
	Seed           uint64                          // random seed (per goroutine: Seed+i); default 1

	stats WriterStats
}

// WriterStats counts what the writers did.
type WriterStats struct {
	Ops        atomic.Int64 // operations started
	LoadErrors atomic.Int64 // raw appends skipped because the state could not be loaded
	Retried    atomic.Int64 // indeterminate raw appends sent again with the same ids

	mu       sync.Mutex
	errs     map[string]int // error class -> count
	examples map[string]string
	slowest  time.Duration
	slowOp   string
}

func (s *WriterStats) took(d time.Duration, op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d > s.slowest {
		s.slowest, s.slowOp = d, op
	}
}

// Slowest returns the longest operation and what it was.
func (s *WriterStats) Slowest() (time.Duration, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slowest, s.slowOp
}

func (s *WriterStats) note(class string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errs == nil {
		s.errs, s.examples = map[string]int{}, map[string]string{}
	}
	s.errs[class]++
	if _, ok := s.examples[class]; !ok {
		s.examples[class] = err.Error()
	}
}

// Errors returns the errors the writers saw, by class ("update failed",
// "append indeterminate", ...), with one example each.
func (s *WriterStats) Errors() (counts map[string]int, examples map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	counts, examples = map[string]int{}, map[string]string{}
	for k, v := range s.errs {
		counts[k] = v
		examples[k] = s.examples[k]
	}
	return counts, examples
}

// Stats returns the writers' counters.
func (w *Writers) Stats() *WriterStats { return &w.stats }

// Run runs the writers until ctx ends, then waits for the operations in
// flight (they are not cancelled: each ends on its own OpTimeout, so that
// every outcome is a real one) and returns. Its error reports a missing
// field only.
func (w *Writers) Run(ctx context.Context) error {
	if w.Store == nil || w.Repository == nil || w.Ledger == nil || w.Counters.Hot+w.Counters.Cold == 0 {
		return errors.New("soak: Writers needs Store, Repository, Ledger and Counters")
	}
	n := w.Goroutines
	if n <= 0 {
		n = 8
	}
	var wg sync.WaitGroup
	for i := range n {
		seed := w.Seed
		if seed == 0 {
			seed = 1
		}
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() { w.loop(ctx, r) })
	}
	wg.Wait()
	return nil
}

func (w *Writers) loop(ctx context.Context, r *rand.Rand) {
	appendShare, batchShare := w.AppendShare, w.BatchShare
	if appendShare == 0 {
		appendShare = 0.2
	}
	if batchShare == 0 {
		batchShare = 0.05
	}
	timeout := w.OpTimeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	for ctx.Err() == nil {
		w.stats.Ops.Add(1)
		octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		t0 := time.Now()
		var what string
		switch x := r.Float64(); {
		case x < batchShare:
			a, b := w.Counters.Pick(r), w.Counters.Pick(r)
			if a != b {
				what = w.batch(octx, r, a, b)
			}
		case x < batchShare+appendShare:
			what = w.append(octx, r, w.Counters.Pick(r))
		default:
			what = w.update(octx, r, w.Counters.Pick(r))
		}
		cancel()
		w.stats.took(time.Since(t0), what)
		if w.Pace > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(w.Pace):
			}
		}
	}
}

// amounts returns 1 to 3 amounts (mostly 1: single events are the common
// case, several make atomic batches).
func amounts(r *rand.Rand) []int64 {
	n := 1
	if r.IntN(4) == 0 {
		n = 2 + r.IntN(2)
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = 1 + r.Int64N(100)
	}
	return out
}

// update runs one repository command: each run of the command function is
// an attempt; every run but the last one conflicted (the repository runs it
// again only then).
func (w *Writers) update(ctx context.Context, r *rand.Rand, id string) string {
	op := w.Ledger.NewID()
	amts := amounts(r)
	var attempts []Attempt
	err := w.Repository.Update(ctx, id, func(c *Counter) error {
		aid := fmt.Sprintf("%s.%d", op, len(attempts)+1)
		keys := c.Add(aid, 0, amts)
		attempts = append(attempts, Attempt{ID: aid, Kind: KindUpdate, Writes: []Write{{Aggregate: Ref(id), Keys: keys}}})
		return nil
	})
	for i := range attempts {
		at := attempts[i]
		if i < len(attempts)-1 {
			at.Outcome, at.Err = Failed, "concurrency conflict (the repository ran the command again)"
		} else {
			at.Outcome = Classify(err)
			if err != nil {
				at.Err = err.Error()
			}
		}
		w.Ledger.Add(at)
	}
	if err != nil {
		w.stats.note("update "+Classify(err).String(), err)
	}
	return fmt.Sprintf("update of %s, %d runs of the command: %v", id, len(attempts), errText(err))
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// load returns the counter's state through the load repository.
func (w *Writers) load(ctx context.Context, id string) (*Counter, bool) {
	repo := w.LoadRepository
	if repo == nil {
		repo = w.Repository
	}
	c, err := repo.Load(ctx, id)
	if err != nil {
		w.stats.LoadErrors.Add(1)
		w.stats.note("load", err)
		return nil, false
	}
	return c, true
}

// append loads a counter and appends to it with ExpectRevision, with event
// ids set to the events' keys. An indeterminate append is sent again (same
// ids, same expectation) up to twice: the attempt's outcome is the last
// send's.
func (w *Writers) append(ctx context.Context, r *rand.Rand, id string) string {
	t0 := time.Now()
	c, ok := w.load(ctx, id)
	if !ok {
		return fmt.Sprintf("append to %s: load failed after %s", id, time.Since(t0).Round(time.Millisecond))
	}
	loaded := time.Since(t0)
	aid := w.Ledger.NewID()
	rev := c.Revision()
	keys := c.Add(aid, 0, amounts(r))
	events := eventData(c.Uncommitted(), keys)
	at := Attempt{ID: aid, Kind: KindAppend, Writes: []Write{{Aggregate: Ref(id), Keys: keys, IDs: true}}}
	var (
		res stream.AppendResult
		err error
	)
	for {
		res, err = w.Store.Append(ctx, Ref(id), stream.ExpectRevision(rev), events)
		if Classify(err) != Indeterminate || at.Retries == 2 || ctx.Err() != nil {
			break
		}
		at.Retries++
		w.stats.Retried.Add(1)
	}
	w.settle(&at, err, []stream.AppendResult{res})
	return fmt.Sprintf("append to %s: load %s, %d sends: %v", id, loaded.Round(time.Millisecond), at.Retries+1, errText(err))
}

// batch loads two counters and appends to both in one atomic AppendBatch,
// each with ExpectRevision, retried like append.
func (w *Writers) batch(ctx context.Context, r *rand.Rand, a, b string) string {
	t0 := time.Now()
	ca, ok := w.load(ctx, a)
	if !ok {
		return fmt.Sprintf("batch to %s and %s: load failed after %s", a, b, time.Since(t0).Round(time.Millisecond))
	}
	cb, ok := w.load(ctx, b)
	if !ok {
		return fmt.Sprintf("batch to %s and %s: load failed after %s", a, b, time.Since(t0).Round(time.Millisecond))
	}
	loaded := time.Since(t0)
	aid := w.Ledger.NewID()
	ra, rb := ca.Revision(), cb.Revision()
	ka := ca.Add(aid, 0, amounts(r))
	kb := cb.Add(aid, len(ka), amounts(r))
	reqs := []stream.AppendRequest{
		{Aggregate: Ref(a), Expect: stream.ExpectRevision(ra), Events: eventData(ca.Uncommitted(), ka)},
		{Aggregate: Ref(b), Expect: stream.ExpectRevision(rb), Events: eventData(cb.Uncommitted(), kb)},
	}
	at := Attempt{ID: aid, Kind: KindBatch, Writes: []Write{
		{Aggregate: Ref(a), Keys: ka, IDs: true},
		{Aggregate: Ref(b), Keys: kb, IDs: true},
	}}
	var (
		res []stream.AppendResult
		err error
	)
	for {
		res, err = w.Store.AppendBatch(ctx, reqs)
		if Classify(err) != Indeterminate || at.Retries == 2 || ctx.Err() != nil {
			break
		}
		at.Retries++
		w.stats.Retried.Add(1)
	}
	w.settle(&at, err, res)
	return fmt.Sprintf("batch to %s and %s: loads %s, %d sends: %v", a, b, loaded.Round(time.Millisecond), at.Retries+1, errText(err))
}

// eventData turns recorded events into EventData with their keys as ids.
func eventData(recorded []any, keys []string) []stream.EventData {
	out := make([]stream.EventData, len(recorded))
	for i, e := range recorded {
		out[i] = stream.EventData{ID: keys[i], Data: e}
	}
	return out
}

// settle records a raw append's outcome, with where the store said its
// events landed.
func (w *Writers) settle(at *Attempt, err error, res []stream.AppendResult) {
	at.Outcome = Classify(err)
	if err != nil {
		at.Err = err.Error()
		w.stats.note(string(at.Kind)+" "+at.Outcome.String(), err)
	} else {
		for i := range at.Writes {
			if i < len(res) {
				rr := res[i]
				at.Writes[i].Result = &rr
				at.Duplicate = at.Duplicate || rr.Duplicate
			}
		}
	}
	w.Ledger.Add(*at)
}
