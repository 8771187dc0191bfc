package soak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// NewMemoryTally returns an exactly-once read model (projections.Memory)
// of every counter's tally: events, total, last version and sequence.
func NewMemoryTally() *projections.Memory[AggregateTally] {
	return projections.NewMemory(func(view map[string]AggregateTally, ev *stream.Event) error {
		a, ok := ev.Data.(Added)
		if !ok {
			return fmt.Errorf("soak: unexpected event %s (%T)", ev.Type, ev.Data)
		}
		t := view[ev.Aggregate.ID]
		t.Events++
		t.Total += a.Amount
		t.Version = ev.Version
		t.LastSeq = ev.Sequence
		view[ev.Aggregate.ID] = t
		return nil
	})
}

// MemoryTally returns the content of a NewMemoryTally model.
func MemoryTally(m *projections.Memory[AggregateTally]) Tally { return Tally(m.Snapshot()) }

// NewKVTally returns an exactly-once read model in a JetStream KV bucket
// (projections.NewKV) of every counter's tally, one key per counter.
func NewKVTally(ctx context.Context, js jetstream.JetStream, cfg projections.KVConfig) (*projections.KV, error) {
	return projections.NewKV(ctx, js, cfg, func(ctx context.Context, tx *projections.KVBatch, ev *stream.Event) error {
		a, ok := ev.Data.(Added)
		if !ok {
			return fmt.Errorf("soak: unexpected event %s (%T)", ev.Type, ev.Data)
		}
		key, err := stream.EncodeID(ev.Aggregate.ID)
		if err != nil {
			return err
		}
		var t AggregateTally
		old, ok, err := tx.Get(key)
		if err != nil {
			return err
		}
		if ok {
			if t, err = decodeTally(old); err != nil {
				return err
			}
		}
		t.Events++
		t.Total += a.Amount
		t.Version = ev.Version
		t.LastSeq = ev.Sequence
		tx.Put(key, t.encode())
		return nil
	})
}

// KVTally reads the content of a NewKVTally model.
func KVTally(ctx context.Context, m *projections.KV) (Tally, error) {
	all, err := m.All(ctx)
	if err != nil {
		return nil, err
	}
	out := make(Tally, len(all))
	for key, v := range all {
		id, err := stream.DecodeID(key)
		if err != nil {
			return nil, fmt.Errorf("soak: read model key %q: %w", key, err)
		}
		if out[id], err = decodeTally(v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Seen is an ack-floor read model (not Checkpointed): it records the key of
// every event it is given, by stream sequence. Recording is idempotent, so
// events delivered again after a restart change nothing. It is safe for
// concurrent use.
type Seen struct {
	mu   sync.Mutex
	keys map[uint64]string
}

var _ projections.ReadModel = (*Seen)(nil)

// NewSeen returns an empty Seen model.
func NewSeen() *Seen { return &Seen{keys: map[uint64]string{}} }

// Apply records each event's key. An event whose sequence was seen with
// another key fails the batch (it would mean two events at one sequence).
func (s *Seen) Apply(_ context.Context, events []*stream.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range events {
		a, ok := ev.Data.(Added)
		if !ok {
			return fmt.Errorf("soak: unexpected event %s (%T)", ev.Type, ev.Data)
		}
		if k, dup := s.keys[ev.Sequence]; dup && k != a.Key() {
			return fmt.Errorf("soak: sequence %d delivered as %s and as %s", ev.Sequence, k, a.Key())
		}
		s.keys[ev.Sequence] = a.Key()
	}
	return nil
}

// Keys returns a copy of what the model recorded: sequence -> event key.
func (s *Seen) Keys() map[uint64]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.keys)
}

// DiffKeys returns the differences between want (Report.Keys) and got (a
// Seen model's keys), one line per sequence, sorted.
func DiffKeys(want, got map[uint64]string) []string {
	seqs := map[uint64]bool{}
	for s := range want {
		seqs[s] = true
	}
	for s := range got {
		seqs[s] = true
	}
	var out []string
	for _, s := range slices.Sorted(maps.Keys(seqs)) {
		w, wok := want[s]
		g, gok := got[s]
		switch {
		case wok && !gok:
			out = append(out, fmt.Sprintf("sequence %d (%s): missing from the read model", s, w))
		case !wok && gok:
			out = append(out, fmt.Sprintf("sequence %d: %s in the read model, not in the store", s, g))
		case w != g:
			out = append(out, fmt.Sprintf("sequence %d: %s in the read model, %s in the store", s, g, w))
		}
	}
	return out
}

// ConsumerConfig is the delivery the workload's projections use: small
// batches, a short fail-over, and many retries before Stop (never Park: a
// parked event would be missing from the read model without a trace in
// it), so that a failover of the store or the model's bucket is ridden out.
func ConsumerConfig() consumers.Config {
	return consumers.Config{
		BatchSize:  100,
		AckWait:    10 * time.Second,
		PinnedTTL:  2 * time.Second,
		Retries:    12,
		Backoff:    100 * time.Millisecond,
		MaxBackoff: time.Second,
		OnFailure:  consumers.Stop,
	}
}

// Worker is a projection worker: a projections.Runner running Projections,
// supervised like a process manager would: when Run fails it is counted
// and a new runner starts a moment later. Restart stops the runner and
// starts a new one with the same models, as a worker process restarting
// with durable read models would.
type Worker struct {
	JS          jetstream.JetStream
	Store       *stream.Store
	Projections []projections.Projection
	Logger      *slog.Logger // default: discard

	mu     sync.Mutex
	runner *projections.Runner
	cancel context.CancelFunc
	done   chan struct{}

	restarts, failures atomic.Int64
	lastErr            atomic.Pointer[string]
}

// Start starts the worker; it runs until ctx ends or Stop.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	if w.done != nil {
		w.mu.Unlock()
		return errors.New("soak: worker already started")
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	w.cancel, w.done = cancel, done
	w.mu.Unlock()
	first := make(chan error, 1)
	go w.supervise(ctx, done, first)
	if err := <-first; err != nil {
		w.Stop()
		return err
	}
	return nil
}

func (w *Worker) supervise(ctx context.Context, done chan struct{}, first chan<- error) {
	defer close(done)
	for {
		r := projections.NewRunner(w.JS, w.Store, w.Logger)
		for _, p := range w.Projections {
			if err := r.Add(p); err != nil {
				if first != nil {
					first <- err
				}
				return
			}
		}
		w.mu.Lock()
		w.runner = r
		w.mu.Unlock()
		if first != nil {
			first <- nil
			first = nil
		}
		err := r.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		w.failures.Add(1)
		if err == nil {
			err = errors.New("Run returned before it was stopped")
		}
		msg := err.Error()
		w.lastErr.Store(&msg)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Stop stops the worker and waits until its runner has stopped (its
// batches in hand applied and acknowledged).
func (w *Worker) Stop() {
	w.mu.Lock()
	cancel, done := w.cancel, w.done
	w.cancel, w.done = nil, nil
	w.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// Restart stops the worker and starts it again with the same models.
func (w *Worker) Restart(ctx context.Context) error {
	w.Stop()
	w.restarts.Add(1)
	return w.Start(ctx)
}

// Restarts returns how many times Restart was called.
func (w *Worker) Restarts() int64 { return w.restarts.Load() }

// Failures returns how many times the runner's Run failed (and was started
// again), with the last error.
func (w *Worker) Failures() (int64, string) {
	n := w.failures.Load()
	if p := w.lastErr.Load(); p != nil {
		return n, *p
	}
	return n, ""
}

// WaitCaughtUp waits until every projection has applied the events up to
// stream sequence last (its position, the model's checkpoint or the
// consumer's acknowledgement floor, is at least last), or ctx ends.
func (w *Worker) WaitCaughtUp(ctx context.Context, last uint64) error {
	var status []string
	for {
		w.mu.Lock()
		r := w.runner
		w.mu.Unlock()
		status = status[:0]
		behind := r == nil
		if r != nil {
			for _, p := range w.Projections {
				// One status request lost in a failover must not use up
				// the whole wait.
				sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				st, err := r.StatusOf(sctx, p.Name)
				cancel()
				switch {
				case err != nil:
					behind = true
					status = append(status, fmt.Sprintf("%s: %v", p.Name, err))
				case st.Position < last:
					behind = true
					status = append(status, fmt.Sprintf("%s: position %d, lag %d", p.Name, st.Position, st.Lag))
				}
			}
		}
		if !behind {
			return nil
		}
		select {
		case <-ctx.Done():
			n, lastErr := w.Failures()
			return fmt.Errorf("soak: projections not caught up with sequence %d: %v (runner failures %d, last: %s); consumers: %s: %w",
				last, status, n, lastErr, w.describeConsumers(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// describeConsumers describes the server's view of every projection's
// consumer, for failure messages.
func (w *Worker) describeConsumers() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := w.JS.Stream(ctx, w.Store.Name())
	if err != nil {
		return err.Error()
	}
	var out []string
	names := st.ConsumerNames(ctx)
	for name := range names.Name() {
		c, err := st.Consumer(ctx, name)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		i := c.CachedInfo()
		leader := ""
		if i.Cluster != nil {
			leader = i.Cluster.Leader
		}
		out = append(out, fmt.Sprintf("%s: delivered %d, ack floor %d, pending %d, ack pending %d, redelivered %d, waiting %d, leader %s, groups %+v, paused %v",
			name, i.Delivered.Stream, i.AckFloor.Stream, i.NumPending, i.NumAckPending, i.NumRedelivered, i.NumWaiting, leader, i.PriorityGroups, i.Paused))
	}
	if err := names.Err(); err != nil {
		out = append(out, err.Error())
	}
	return strings.Join(out, "; ")
}
