package consumers

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

type stallItem struct {
	N int `json:"n"`
}

// A subscription that stops pulling while Run goes on (its consume context
// stopped underneath it, as a stalled one behaves) is found by the
// watchdog and replaced: the events appended after it are all handled,
// each once.
func TestConsumerReplacesStalledPull(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	reg := stream.NewRegistry()
	stream.MustRegister[stallItem](reg, "StallItem")
	ctx := context.Background()
	st, err := stream.NewStore(ctx, js, stream.Config{Name: "stall", Registry: reg})
	require.NoError(t, err)
	c, err := New(js, st, Config{Name: "stall", BatchSize: 10})
	require.NoError(t, err)
	c.stallEvery = 200 * time.Millisecond
	var mu sync.Mutex
	var pulls []*pull
	c.onPull = func(p *pull) { mu.Lock(); pulls = append(pulls, p); mu.Unlock() }
	var handled sync.Map
	var count atomic.Int64
	require.NoError(t, On(c, func(_ context.Context, ev *stream.Event, it stallItem) error {
		if _, dup := handled.LoadOrStore(it.N, true); !dup {
			count.Add(1)
		}
		return nil
	}))
	appendN := func(from, n int) {
		for i := from; i < from+n; i++ {
			_, err := st.Append(ctx, stream.Aggregate{Type: "x", ID: fmt.Sprint(i)}, stream.ExpectNone(), []stream.EventData{{Data: stallItem{N: i}}})
			require.NoError(t, err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	appendN(0, 20)
	require.Eventually(t, func() bool { return count.Load() == 20 }, 10*time.Second, 10*time.Millisecond)

	// Stall the current subscription.
	mu.Lock()
	before := len(pulls)
	pulls[before-1].cc.Stop()
	mu.Unlock()
	appendN(20, 20)
	require.Eventually(t, func() bool { return count.Load() == 40 }, 15*time.Second, 20*time.Millisecond, "events after the stall handled")
	mu.Lock()
	assert.Greater(t, len(pulls), before, "a new subscription")
	mu.Unlock()
	cancel()
	require.NoError(t, <-done)
}
