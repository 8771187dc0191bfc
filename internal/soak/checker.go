package soak

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// Checker reads a whole store back and checks it against a Ledger of what
// its writers were told (see the package documentation for the
// invariants). Run it when nothing writes to the store any more, and on a
// replicated store once every replica is current (reads are served by any
// replica).
type Checker struct {
	// Store is the store to read. Required.
	Store stream.EventStore
	// Ledger holds every attempt that wrote to the store. Required.
	Ledger *Ledger
	// LastSequence, if not zero, is the store's last stream sequence as the
	// server reports it (stream info): reading must reach it, so that a
	// replica that serves reads while lagging cannot hide lost events.
	LastSequence uint64
	// Repository, if set, is used to load every counter (from its snapshot
	// and the events after it) and compare it with the replay of the
	// store. It should not cache aggregates (aggregate.Config.CacheSize
	// -1): a cached one is only caught up, never loaded.
	Repository *aggregate.Repository[*Counter]
	// MaxProblems bounds the problems listed in the report. Default 20.
	MaxProblems int
}

// Report is what a Checker found. The counters after Indeterminate are
// violations of the invariants: all must be 0.
type Report struct {
	Events     int // events read from the store (checked)
	Aggregates int // counters in the store

	Attempts            int // attempts in the ledger
	Acked               int // attempts acknowledged
	AckedEvents         int // events of acknowledged attempts (written)
	Failed              int // attempts that failed definitely
	Indeterminate       int // attempts with an open outcome
	IndeterminateStored int // ... of which the events are stored
	IndeterminateAbsent int // ... of which the events are not stored

	Lost         int // events of acknowledged attempts missing from the store
	Duplicates   int // extra copies of events (same key or same event id)
	VersionGaps  int // events whose version is not the previous one's + 1 (gaps, repeats, a first version other than 1)
	FailedStored int // events of failed attempts found in the store
	Torn         int // attempts of which some events are stored and others not
	Unknown      int // stored events no attempt of the ledger wrote
	Stale        int // events whose writer decided on other state than the history before them (a lost update)
	Misplaced    int // acknowledged events not at the sequence, version or event id the append reported
	Mismatches   int // counters whose Load (stream or repository) differs from the store's history

	// Problems describes the first violations found (MaxProblems).
	Problems []string

	// Replay is the store's content replayed independently of any read
	// model: what an exactly-once read model of all events must equal.
	Replay Tally
	// Keys maps each stored event's sequence to its key: what a read
	// model that records every event it saw must equal.
	Keys map[uint64]string
	// LastSequence is the sequence of the last event read.
	LastSequence uint64
}

// Violations returns the number of invariant violations found.
func (r *Report) Violations() int {
	return r.Lost + r.Duplicates + r.VersionGaps + r.FailedStored + r.Torn + r.Unknown + r.Stale + r.Misplaced + r.Mismatches
}

// Err returns nil when no invariant is violated, else an error listing the
// counts and the problems found.
func (r *Report) Err() error {
	if r.Violations() == 0 {
		return nil
	}
	return fmt.Errorf("soak: %d invariant violations: %s\n  %s", r.Violations(), r.violationCounts(), strings.Join(r.Problems, "\n  "))
}

func (r *Report) violationCounts() string {
	return fmt.Sprintf("lost %d, duplicates %d, version gaps %d, failed but stored %d, torn %d, unknown %d, stale %d, misplaced %d, load mismatches %d",
		r.Lost, r.Duplicates, r.VersionGaps, r.FailedStored, r.Torn, r.Unknown, r.Stale, r.Misplaced, r.Mismatches)
}

// String summarises the report on one line.
func (r *Report) String() string {
	return fmt.Sprintf("%d events in %d counters checked; %d attempts: %d acked (%d events), %d failed, %d indeterminate (%d stored, %d not); %s",
		r.Events, r.Aggregates, r.Attempts, r.Acked, r.AckedEvents, r.Failed, r.Indeterminate, r.IndeterminateStored, r.IndeterminateAbsent, r.violationCounts())
}

func (r *Report) problem(max int, format string, args ...any) {
	if len(r.Problems) < max {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// stored is one event as read back.
type stored struct {
	seq     uint64
	version uint64
	id      string
	agg     string
}

// Check reads the store (ReadAll once, then Load per counter, and the
// Repository's load per counter if set) and checks the invariants. The
// error is for reads that failed (after a few tries), not for violations:
// those are counted in the report (see Report.Err).
func (c *Checker) Check(ctx context.Context) (*Report, error) {
	if c.Store == nil || c.Ledger == nil {
		return nil, errors.New("soak: Checker needs a Store and a Ledger")
	}
	max := c.MaxProblems
	if max <= 0 {
		max = 20
	}
	r := &Report{Replay: Tally{}, Keys: map[uint64]string{}}
	var events []*stream.Event
	err := retry(ctx, func() error {
		events = events[:0]
		for ev, err := range c.Store.ReadAll(ctx) {
			if err != nil {
				return err
			}
			events = append(events, ev)
		}
		if n := len(events); c.LastSequence > 0 && (n == 0 || events[n-1].Sequence < c.LastSequence) {
			last := uint64(0)
			if n > 0 {
				last = events[n-1].Sequence
			}
			return fmt.Errorf("soak: reading the store ended at sequence %d, the server reports %d", last, c.LastSequence)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("soak: reading the store: %w", err)
	}

	byKey := map[string][]stored{}
	byID := map[string]int{}
	perAgg := map[string][]uint64{} // counter id -> sequences in order
	for _, ev := range events {
		r.Events++
		r.LastSequence = ev.Sequence
		id := ev.Aggregate.ID
		a, ok := ev.Data.(Added)
		if !ok || ev.Aggregate.Type != AggregateType {
			r.Unknown++
			r.problem(max, "unknown event at sequence %d on %s: type %s (%T)", ev.Sequence, ev.Aggregate, ev.Type, ev.Data)
			continue
		}
		key := a.Key()
		r.Keys[ev.Sequence] = key
		byKey[key] = append(byKey[key], stored{seq: ev.Sequence, version: ev.Version, id: ev.ID, agg: id})
		if n := len(byKey[key]); n > 1 {
			r.Duplicates++
			r.problem(max, "duplicate: event %s stored again at sequence %d (first at %d) on %s", key, ev.Sequence, byKey[key][0].seq, ev.Aggregate)
		}
		if byID[ev.ID]++; byID[ev.ID] == 2 && len(byKey[key]) == 1 {
			r.Duplicates++
			r.problem(max, "duplicate: event id %s stored twice (second at sequence %d, key %s)", ev.ID, ev.Sequence, key)
		}
		prev := r.Replay[id]
		if ev.Version != prev.Version+1 {
			r.VersionGaps++
			r.problem(max, "version gap: %s has version %d at sequence %d after version %d (sequence %d)", ev.Aggregate, ev.Version, ev.Sequence, prev.Version, prev.LastSeq)
		}
		if a.Version != ev.Version || a.Before != prev.Total {
			r.Stale++
			r.problem(max, "stale decision: event %s at sequence %d on %s was decided at version %d with total %d, but is stored as version %d after total %d",
				key, ev.Sequence, ev.Aggregate, a.Version, a.Before, ev.Version, prev.Total)
		}
		r.Replay.add(ev, a.Amount)
		perAgg[id] = append(perAgg[id], ev.Sequence)
	}
	r.Aggregates = len(r.Replay)

	// Every attempt against what is stored.
	written := map[string]bool{}
	for _, at := range c.Ledger.Attempts() {
		r.Attempts++
		total, present := 0, 0
		for _, w := range at.Writes {
			for j, key := range w.Keys {
				written[key] = true
				total++
				copies := byKey[key]
				if len(copies) == 0 {
					if at.Outcome == Acked {
						r.Lost++
						r.problem(max, "lost: event %s of acknowledged %s attempt %s on %s is not in the store", key, at.Kind, at.ID, w.Aggregate)
					}
					continue
				}
				present++
				s := copies[0]
				if s.agg != w.Aggregate.ID {
					r.Misplaced++
					r.problem(max, "misplaced: event %s of attempt %s is stored on %s, written to %s", key, at.ID, s.agg, w.Aggregate.ID)
				}
				if w.IDs && s.id != key {
					r.Misplaced++
					r.problem(max, "misplaced: event %s at sequence %d has event id %q", key, s.seq, s.id)
				}
				if at.Outcome == Acked && w.Result != nil {
					wantSeq, wantVer := w.Result.First.Sequence+uint64(j), w.Result.First.Version+uint64(j)
					if s.seq != wantSeq || s.version != wantVer {
						r.Misplaced++
						r.problem(max, "misplaced: acknowledged event %s is at sequence %d version %d, the append reported sequence %d version %d (result %+v)",
							key, s.seq, s.version, wantSeq, wantVer, *w.Result)
					}
				}
				if at.Outcome == Failed {
					r.FailedStored++
					r.problem(max, "failed but stored: event %s of %s attempt %s is at sequence %d on %s; the caller got: %s", key, at.Kind, at.ID, s.seq, w.Aggregate, at.Err)
				}
			}
		}
		if present > 0 && present < total {
			r.Torn++
			r.problem(max, "torn: %d of the %d events of %s attempt %s (%s) are stored", present, total, at.Kind, at.ID, at.Outcome)
		}
		switch at.Outcome {
		case Acked:
			r.Acked++
			r.AckedEvents += total
		case Failed:
			r.Failed++
		case Indeterminate:
			r.Indeterminate++
			if present > 0 {
				r.IndeterminateStored++
			} else {
				r.IndeterminateAbsent++
			}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		if !written[key] {
			r.Unknown++
			r.problem(max, "unknown: event %s at sequence %d on %s was written by no attempt of the ledger", key, byKey[key][0].seq, Ref(byKey[key][0].agg))
		}
	}

	// Loads must give each counter's history as ReadAll did.
	ids := slices.Sorted(maps.Keys(perAgg))
	for _, id := range ids {
		var seqs []uint64
		err := retry(ctx, func() error {
			seqs = seqs[:0]
			for ev, err := range c.Store.Load(ctx, Ref(id)) {
				if err != nil {
					return err
				}
				seqs = append(seqs, ev.Sequence)
			}
			return nil
		})
		switch {
		case err != nil && errors.Is(err, stream.ErrDecode):
			r.Mismatches++
			r.problem(max, "load: %s: %v", id, err)
		case err != nil:
			return nil, fmt.Errorf("soak: loading %s: %w", id, err)
		case !slices.Equal(seqs, perAgg[id]):
			r.Mismatches++
			r.problem(max, "load: %s loads sequences %s, the store holds %s", id, short(seqs), short(perAgg[id]))
		}
	}
	if c.Repository != nil {
		for _, id := range ids {
			var cn *Counter
			err := retry(ctx, func() (err error) {
				cn, err = c.Repository.Load(ctx, id)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("soak: loading %s through the repository: %w", id, err)
			}
			want := r.Replay[id]
			got := AggregateTally{Events: cn.Events, Total: cn.Total, Version: cn.Version(), LastSeq: cn.Revision().Sequence}
			if got != want {
				r.Mismatches++
				r.problem(max, "repository load: %s loads as %+v, the store's history gives %+v", id, got, want)
			}
		}
	}
	return r, nil
}

// short formats a list of sequences, eliding the middle of long ones.
func short(seqs []uint64) string {
	if len(seqs) <= 12 {
		return fmt.Sprint(seqs)
	}
	return fmt.Sprintf("%v ... %v (%d)", seqs[:6], seqs[len(seqs)-6:], len(seqs))
}

// retry runs fn up to 5 times, 200ms apart, while it fails and ctx lasts:
// reads right after a failover may find no replica answering yet.
func retry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if err = fn(); err == nil || errors.Is(err, stream.ErrDecode) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}
