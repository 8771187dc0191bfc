package soak

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
)

// SoakConfig configures Soak. The zero value of each field but Duration is
// its documented default.
type SoakConfig struct {
	// Duration is how long the workload runs before it is stopped and
	// checked. Required.
	Duration time.Duration
	// Env configures the store, snapshots and connections (snapshots every
	// 10 events, R3, 2s per append attempt by default).
	Env Config
	// Writers is the number of writer goroutines. Default 6.
	Writers int
	// Counters are the counters written to. Default 8 hot ones getting
	// half of the commands and 2000 cold ones.
	Counters Counters
	// Loaders is the number of goroutines loading counters from their
	// snapshots (and the events after them) while the writers run. Default 2.
	Loaders int
	// FaultEvery is the time between faults, which alternate: the store's
	// stream leader is stopped (and restarted FaultEvery/2 later), then the
	// projection worker is restarted. Default 20s.
	FaultEvery time.Duration
	// Logf receives progress lines. Default: none.
	Logf func(format string, args ...any)
}

// Summary is what a soak run did and found.
type Summary struct {
	Duration time.Duration // the workload's
	Report   *Report       // the final check of the store

	Operations int64             // writer operations
	Retried    int64             // indeterminate raw appends sent again with the same ids
	Errors     map[string]int    // writers' errors by class
	Examples   map[string]string // one error per class

	Loads, LoadErrors, BadLoads int64 // counter loads while writing; BadLoads: state inconsistent with its version

	Mismatches map[string]int // read model -> counters (or sequences) differing from the store

	LeaderFailovers, WorkerRestarts int   // faults injected
	RunnerFailures                  int64 // runner Run errors (restarted by the worker)
	LastRunnerError                 string
}

// Faults returns the number of faults injected.
func (s *Summary) Faults() int { return s.LeaderFailovers + s.WorkerRestarts }

// ReadModelMismatches returns the differences of all read models.
func (s *Summary) ReadModelMismatches() int {
	n := 0
	for _, v := range s.Mismatches {
		n += v
	}
	return n
}

// Err returns nil when the run found nothing wrong: no invariant violation,
// no read model mismatch, no inconsistent load.
func (s *Summary) Err() error {
	var errs []error
	if s.Report != nil {
		errs = append(errs, s.Report.Err())
	}
	if n := s.ReadModelMismatches(); n > 0 {
		errs = append(errs, fmt.Errorf("soak: read models differ from the store: %v", s.Mismatches))
	}
	if s.BadLoads > 0 {
		errs = append(errs, fmt.Errorf("soak: %d loads gave a counter whose state does not match its version", s.BadLoads))
	}
	return errors.Join(errs...)
}

// String formats the summary, one figure per line.
func (s *Summary) String() string {
	var b strings.Builder
	r := s.Report
	if r == nil {
		r = &Report{}
	}
	fmt.Fprintf(&b, "soak summary (%s of workload)\n", s.Duration.Round(time.Second))
	line := func(name string, v any) { fmt.Fprintf(&b, "  %-36s %v\n", name, v) }
	line("operations", s.Operations)
	line("appends acknowledged", r.Acked)
	line("events written (acknowledged)", r.AckedEvents)
	line("appends failed (definite)", r.Failed)
	line("appends indeterminate", fmt.Sprintf("%d (%d stored, %d not)", r.Indeterminate, r.IndeterminateStored, r.IndeterminateAbsent))
	line("resends after indeterminate", s.Retried)
	line("events checked", fmt.Sprintf("%d in %d counters", r.Events, r.Aggregates))
	line("lost", r.Lost)
	line("duplicates", r.Duplicates)
	line("version gaps", r.VersionGaps)
	line("failed but stored", r.FailedStored)
	line("torn (partly stored)", r.Torn)
	line("unknown events", r.Unknown)
	line("stale decisions (lost updates)", r.Stale)
	line("misplaced acknowledgements", r.Misplaced)
	line("load mismatches", r.Mismatches)
	line("loads while writing", fmt.Sprintf("%d (%d errors, %d inconsistent)", s.Loads, s.LoadErrors, s.BadLoads))
	line("read model mismatches", fmt.Sprintf("%d %v", s.ReadModelMismatches(), s.Mismatches))
	line("faults injected", fmt.Sprintf("%d (%d leader failovers, %d worker restarts)", s.Faults(), s.LeaderFailovers, s.WorkerRestarts))
	line("runner failures (restarted)", s.RunnerFailures)
	for _, k := range slices.Sorted(maps.Keys(s.Errors)) {
		line("writer errors: "+k, fmt.Sprintf("%d, e.g. %s", s.Errors[k], s.Examples[k]))
	}
	if len(r.Problems) > 0 {
		b.WriteString("  problems:\n    " + strings.Join(r.Problems, "\n    ") + "\n")
	}
	return b.String()
}

// Soak runs the mixed workload on cluster c for cfg.Duration: writers
// (repository commands with retries and raw appends with ExpectRevision on
// hot and cold counters, through a repository that snapshots every few
// events), loaders (loads from snapshots), and a projection worker with two
// exactly-once read models (in memory and in a KV bucket) and one ack-floor
// model, while faults alternate (the stream leader stopped and restarted,
// the worker restarted). Then it stops the writers, checks the store
// against the ledger and compares the read models, once caught up, with a
// replay of the store. The error is for a run that could not be carried
// out (setup, a fault that did not heal, reads that failed); what the run
// found is in the Summary (see Summary.Err).
func Soak(ctx context.Context, c *embedded.Cluster, cfg SoakConfig) (*Summary, error) {
	if cfg.Duration <= 0 {
		return nil, errors.New("soak: SoakConfig.Duration is required")
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 6
	}
	if cfg.Counters.Hot+cfg.Counters.Cold == 0 {
		cfg.Counters = Counters{Hot: 8, Cold: 2000, HotShare: 0.5}
	}
	if cfg.Loaders <= 0 {
		cfg.Loaders = 2
	}
	if cfg.FaultEvery <= 0 {
		cfg.FaultEvery = 20 * time.Second
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	env, err := Open(ctx, c, cfg.Env)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	const tallyBucket = "soak_tally"
	streams := []string{env.Cfg.Store, "KV_" + env.Cfg.SnapshotBucket, "KV_" + tallyBucket}

	mem := NewMemoryTally()
	kvm, err := NewKVTally(ctx, env.WorkerJS, projections.KVConfig{Bucket: tallyBucket, Replicas: env.Cfg.Replicas})
	if err != nil {
		return nil, err
	}
	seen := NewSeen()
	worker := &Worker{JS: env.WorkerJS, Store: env.WorkerStore, Logger: env.Cfg.Logger, Projections: []projections.Projection{
		{Name: "tally-memory", Model: mem, Consumer: ConsumerConfig()},
		{Name: "tally-kv", Model: kvm, Consumer: ConsumerConfig()},
		{Name: "seen", Model: seen, Consumer: ConsumerConfig()},
	}}
	if err := worker.Start(ctx); err != nil {
		return nil, err
	}
	defer worker.Stop()

	ledger := NewLedger("s")
	writers := &Writers{
		Store: env.Store, Repository: env.Commands, LoadRepository: env.Loads, Ledger: ledger,
		Counters: cfg.Counters, Goroutines: cfg.Writers, OpTimeout: 10 * time.Second,
		Seed: uint64(time.Now().UnixNano()),
	}
	sum := &Summary{}
	var loads, loadErrs, badLoads atomic.Int64
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var work sync.WaitGroup
	work.Go(func() { _ = writers.Run(wctx) })
	for i := range cfg.Loaders {
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
		work.Go(func() {
			for wctx.Err() == nil {
				lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				cn, err := env.Loads.Load(lctx, cfg.Counters.Pick(r))
				cancel()
				loads.Add(1)
				switch {
				case err != nil:
					loadErrs.Add(1)
				case cn.Events != cn.Version():
					badLoads.Add(1)
					logf("inconsistent load: %s has %d events at version %d", cn.ID(), cn.Events, cn.Version())
				}
			}
		})
	}

	began := time.Now()
	end := began.Add(cfg.Duration)
	progress := func() {
		acked, events, failed, indet := ledger.Counts()
		logf("%s: %d appends acked (%d events), %d failed, %d indeterminate; %d loads; %d leader failovers, %d worker restarts",
			time.Since(began).Round(time.Second), acked, events, failed, indet, loads.Load(), sum.LeaderFailovers, sum.WorkerRestarts)
	}
	sleep := func(d time.Duration) error {
		d = min(d, time.Until(end))
		if d <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	faultErr := func() error {
		for n := 0; time.Until(end) > 0; n++ {
			if err := sleep(cfg.FaultEvery / 2); err != nil {
				return err
			}
			if time.Until(end) <= 0 {
				return nil
			}
			if n%2 == 1 {
				if err := worker.Restart(ctx); err != nil {
					return fmt.Errorf("soak: restarting the worker: %w", err)
				}
				sum.WorkerRestarts++
				logf("fault %d: projection worker restarted", n+1)
				progress()
				if err := sleep(cfg.FaultEvery / 2); err != nil {
					return err
				}
				continue
			}
			fctx, cancel := context.WithTimeout(ctx, time.Minute)
			victim, err := StopStreamLeader(fctx, c, env.Cfg.Store)
			cancel()
			if err != nil {
				return fmt.Errorf("soak: leader failover: %w", err)
			}
			sum.LeaderFailovers++
			logf("fault %d: stopped node %d, the stream leader", n+1, victim)
			progress()
			// The node stays down for half the period, at least a moment.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(max(cfg.FaultEvery/2, time.Second)):
			}
			fctx, cancel = context.WithTimeout(ctx, time.Minute)
			err = RestartNode(fctx, c, victim, streams...)
			cancel()
			if err != nil {
				return fmt.Errorf("soak: restarting node %d: %w", victim, err)
			}
			logf("fault %d: node %d back and current", n+1, victim)
		}
		return nil
	}()
	stopWork()
	work.Wait()
	sum.Duration = time.Since(began)
	progress()
	if faultErr != nil {
		return sum, faultErr
	}

	sum.Operations = writers.Stats().Ops.Load()
	sum.Retried = writers.Stats().Retried.Load()
	sum.Errors, sum.Examples = writers.Stats().Errors()
	sum.Loads, sum.LoadErrors, sum.BadLoads = loads.Load(), loadErrs.Load(), badLoads.Load()

	logf("checking the store")
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if sum.Report, err = env.Check(cctx, ledger); err != nil {
		return sum, err
	}
	logf("%s", sum.Report)
	logf("waiting for the projections")
	if err := worker.WaitCaughtUp(cctx, sum.Report.LastSequence); err != nil {
		return sum, err
	}
	got, err := KVTally(cctx, kvm)
	if err != nil {
		return sum, err
	}
	sum.Mismatches = map[string]int{}
	for name, lines := range map[string][]string{
		"tally-memory": Diff(sum.Report.Replay, MemoryTally(mem)),
		"tally-kv":     Diff(sum.Report.Replay, got),
		"seen":         DiffKeys(sum.Report.Keys, seen.Keys()),
	} {
		sum.Mismatches[name] = len(lines)
		for _, l := range lines[:min(len(lines), 5)] {
			logf("read model %s: %s", name, l)
		}
	}
	sum.RunnerFailures, sum.LastRunnerError = worker.Failures()
	return sum, nil
}
