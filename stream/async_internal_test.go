package stream

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// At most max appends run at once; a start beyond waits for a slot or its
// context.
func TestAsyncAppenderBound(t *testing.T) {
	a := newAsyncAppender(2)
	release := make(chan struct{})
	running := make(chan struct{}, 3)
	block := func() (AppendResult, error) {
		running <- struct{}{}
		<-release
		return AppendResult{First: Revision{Version: 1}}, nil
	}
	p1 := a.start(context.Background(), block)
	p2 := a.start(context.Background(), block)
	<-running
	<-running
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p3 := a.start(ctx, block)
	_, err := p3.Result()
	assert.ErrorIs(t, err, context.DeadlineExceeded, "no slot: waits for ctx")
	assert.Len(t, running, 0, "the third never ran")

	started := make(chan *PendingAppend)
	go func() { started <- a.start(context.Background(), block) }()
	select {
	case <-started:
		t.Fatal("started while two were in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	p4 := <-started
	for _, p := range []*PendingAppend{p1, p2, p4} {
		res, err := p.Result()
		require.NoError(t, err)
		assert.Equal(t, uint64(1), res.First.Version)
	}
	// A pending append that has not ended: Wait returns ctx's error.
	hold := make(chan struct{})
	p5 := a.start(context.Background(), func() (AppendResult, error) { <-hold; return AppendResult{}, nil })
	wctx, wcancel := context.WithCancel(context.Background())
	wcancel()
	_, err = p5.Wait(wctx)
	assert.ErrorIs(t, err, context.Canceled)
	close(hold)
	_, err = p5.Wait(context.Background())
	assert.NoError(t, err)
}
