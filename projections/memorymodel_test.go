package projections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/stream"
)

// The read models of these tests count items per SKU: "item-added" adds its
// quantity to the SKU's count (so applying an event twice shows as a wrong
// count), "item-dropped" removes the SKU. "poison" events fail.

// rmItem is the payload of the test events.
type rmItem struct {
	SKU string
	Qty int
}

var errRMPoison = errors.New("poison event")

// rmAdded returns an "item-added" event at sequence seq.
func rmAdded(seq uint64, sku string, qty int) *stream.Event {
	return &stream.Event{
		Type:      "item-added",
		Sequence:  seq,
		Aggregate: stream.Aggregate{Type: "cart", ID: fmt.Sprint("c", seq%3)},
		Subject:   "shop.cart.c" + fmt.Sprint(seq%3),
		Data:      rmItem{SKU: sku, Qty: qty},
	}
}

// rmDropped returns an "item-dropped" event at sequence seq.
func rmDropped(seq uint64, sku string) *stream.Event {
	return &stream.Event{Type: "item-dropped", Sequence: seq, Aggregate: stream.Aggregate{Type: "cart", ID: "c0"}, Data: rmItem{SKU: sku}}
}

// rmPoison returns an event that the test apply functions refuse.
func rmPoison(seq uint64) *stream.Event {
	return &stream.Event{Type: "poison", Sequence: seq, Aggregate: stream.Aggregate{Type: "cart", ID: "c0"}, Data: rmItem{}}
}

// rmBatch returns the events of seqs, "item-added" with SKU sku<seq%mod>
// and quantity seq.
func rmBatch(from, to uint64, mod uint64) []*stream.Event {
	var evs []*stream.Event
	for s := from; s <= to; s++ {
		evs = append(evs, rmAdded(s, fmt.Sprint("sku", s%mod), int(s)))
	}
	return evs
}

// rmExpected returns the counts the events of rmBatch(1, to, mod) give.
func rmExpected(to, mod uint64) map[string]int {
	want := map[string]int{}
	for s := uint64(1); s <= to; s++ {
		want[fmt.Sprint("sku", s%mod)] += int(s)
	}
	return want
}

func newTestMemory() *Memory[int] {
	return NewMemory(func(view map[string]int, ev *stream.Event) error {
		item := ev.Data.(rmItem)
		switch ev.Type {
		case "item-added":
			view[item.SKU] += item.Qty
		case "item-dropped":
			delete(view, item.SKU)
		case "poison":
			return errRMPoison
		}
		return nil
	})
}

func memoryCheckpoint[V any](t *testing.T, m *Memory[V]) uint64 {
	t.Helper()
	pos, err := m.Checkpoint(context.Background())
	require.NoError(t, err)
	return pos
}

func TestMemoryApply(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory()
	assert.Equal(t, uint64(0), memoryCheckpoint(t, m))
	assert.Equal(t, 0, m.Len())

	require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 3)))
	assert.Equal(t, uint64(10), memoryCheckpoint(t, m))
	assert.Equal(t, rmExpected(10, 3), m.Snapshot())
	assert.Equal(t, 3, m.Len())
	v, ok := m.Get("sku1")
	assert.True(t, ok)
	assert.Equal(t, 1+4+7+10, v)
	_, ok = m.Get("nope")
	assert.False(t, ok)

	require.NoError(t, m.Apply(ctx, []*stream.Event{rmDropped(11, "sku1")}))
	_, ok = m.Get("sku1")
	assert.False(t, ok)
	assert.Equal(t, uint64(11), memoryCheckpoint(t, m))

	// The snapshot is a copy.
	snap := m.Snapshot()
	snap["sku0"] = -1
	v, _ = m.Get("sku0")
	assert.Equal(t, 3+6+9, v)

	// An empty batch changes nothing.
	require.NoError(t, m.Apply(ctx, nil))
	assert.Equal(t, uint64(11), memoryCheckpoint(t, m))
}

func TestMemoryRedeliverySkipped(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		again []*stream.Event
		to    uint64 // events 1..to applied once each afterwards
	}{
		{"same batch", rmBatch(1, 10, 4), 10},
		{"part of the batch", rmBatch(4, 7, 4), 10},
		{"overlapping the checkpoint", rmBatch(6, 15, 4), 15},
		{"last event only", rmBatch(10, 10, 4), 10},
		{"out of order within the batch", append(rmBatch(11, 12, 4), rmBatch(5, 12, 4)...), 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMemory()
			require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 4)))
			require.NoError(t, m.Apply(ctx, tt.again))
			assert.Equal(t, rmExpected(tt.to, 4), m.Snapshot())
			assert.Equal(t, tt.to, memoryCheckpoint(t, m))
		})
	}
}

func TestMemoryFailedBatchAppliesNothing(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory()
	require.NoError(t, m.Apply(ctx, rmBatch(1, 5, 2)))
	before := m.Snapshot()

	batch := append(rmBatch(6, 8, 2), rmPoison(9), rmAdded(10, "sku0", 10))
	err := m.Apply(ctx, batch)
	require.ErrorIs(t, err, errRMPoison)
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, uint64(9), se.Sequence)
	assert.Contains(t, err.Error(), "apply poison event")

	assert.Equal(t, before, m.Snapshot(), "nothing of the failed batch is applied")
	assert.Equal(t, uint64(5), memoryCheckpoint(t, m))

	// Delivered again without the poison event (parked), it applies once.
	require.NoError(t, m.Apply(ctx, append(rmBatch(6, 8, 2), rmAdded(10, "sku0", 10))))
	want := rmExpected(8, 2)
	want["sku0"] += 10
	assert.Equal(t, want, m.Snapshot())
	assert.Equal(t, uint64(10), memoryCheckpoint(t, m))
}

func TestMemoryRefusesBadEvents(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory()
	assert.ErrorIs(t, m.Apply(ctx, []*stream.Event{rmAdded(1, "a", 1), nil}), errNilEvent)
	assert.ErrorIs(t, m.Apply(ctx, []*stream.Event{rmAdded(1, "a", 1), rmAdded(0, "a", 1)}), errNoSequence)
	assert.Equal(t, 0, m.Len())

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, m.Apply(cctx, rmBatch(1, 2, 1)), context.Canceled)
	assert.Equal(t, 0, m.Len())

	assert.Panics(t, func() { NewMemory[int](nil) })
}

func TestMemoryReset(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory()
	require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 3)))
	require.NoError(t, m.Reset(ctx))
	assert.Equal(t, 0, m.Len())
	assert.Empty(t, m.Snapshot())
	assert.Equal(t, uint64(0), memoryCheckpoint(t, m))

	// A rebuild replays from the start.
	require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 3)))
	assert.Equal(t, rmExpected(10, 3), m.Snapshot())
}

// Readers never see a half-applied batch: every event adds to "a" and then
// to "b", so a and b are always equal, and equal to the sum of the applied
// sequences, in any snapshot.
func TestMemoryConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(func(view map[string]uint64, ev *stream.Event) error {
		view["a"] += ev.Sequence
		view["b"] += ev.Sequence
		if ev.Type == "poison" {
			return errRMPoison
		}
		view["pos"] = ev.Sequence
		return nil
	})
	const batches, size = 200, 10
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				snap := m.Snapshot()
				pos := snap["pos"]
				if !assert.Equal(t, snap["a"], snap["b"]) || !assert.Equal(t, pos*(pos+1)/2, snap["a"]) {
					return
				}
				a, _ := m.Get("a")
				cp, _ := m.Checkpoint(ctx)
				assert.GreaterOrEqual(t, a, pos*(pos+1)/2)
				assert.GreaterOrEqual(t, cp, pos)
				assert.LessOrEqual(t, m.Len(), 3)
			}
		}()
	}
	seq := uint64(0)
	for i := 0; i < batches; i++ {
		var evs []*stream.Event
		for j := 0; j < size; j++ {
			seq++
			evs = append(evs, &stream.Event{Type: "n", Sequence: seq})
		}
		require.NoError(t, m.Apply(ctx, evs))
		// A failing batch in between leaves nothing behind.
		require.Error(t, m.Apply(ctx, []*stream.Event{{Type: "n", Sequence: seq + 1}, {Type: "poison", Sequence: seq + 2}}))
	}
	done.Store(true)
	wg.Wait()
	assert.Equal(t, seq, memoryCheckpoint(t, m))
	a, _ := m.Get("a")
	assert.Equal(t, seq*(seq+1)/2, a)
}
