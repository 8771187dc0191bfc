package projections_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/projections"
)

// TestRunnerResumesBehindConsumer: an exactly-once Memory model in a fresh
// process, behind the projection's existing consumer (which has
// acknowledged all 200 events). The consumer is moved back to the model's
// checkpoint as the process starts (consumers.Config.ResumeAt, set by the
// runner for Checkpointed models), so the model gets the whole history at
// once, each event once, on an idle store; and the next event follows.
func TestRunnerResumesBehindConsumer(t *testing.T) {
	e := newRunnerEnv(t)
	e.fill(t, 0, 200)
	ctx := context.Background()
	start := func(model *projections.Memory[int]) (*projections.Runner, func()) {
		r := projections.NewRunner(e.js, e.store, nil)
		require.NoError(t, r.Add(projections.Projection{Name: "per-sku", Model: model}))
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		return r, func() { cancel(); require.NoError(t, <-done) }
	}
	first := perSKU()
	r, stop := start(first)
	waitLag0(t, r, "per-sku")
	stop()
	require.Equal(t, expected(200), first.Snapshot())

	second := perSKU() // a fresh process: empty, checkpoint 0
	r, stop = start(second)
	defer stop()

	// The idle store: the whole history comes anyway.
	require.Eventually(t, func() bool { cp, _ := second.Checkpoint(ctx); return cp == 200 }, 15*time.Second, 20*time.Millisecond)
	assert.Equal(t, expected(200), second.Snapshot(), "the whole history, each event once")
	st := waitLag0(t, r, "per-sku")
	assert.EqualValues(t, 200, st.Position)

	// One new event follows.
	e.fill(t, 200, 1)
	require.Eventually(t, func() bool { cp, _ := second.Checkpoint(ctx); return cp == 201 }, 15*time.Second, 20*time.Millisecond)
	assert.Equal(t, expected(201), second.Snapshot())
	st = waitLag0(t, r, "per-sku")
	assert.EqualValues(t, 201, st.Position)
}
