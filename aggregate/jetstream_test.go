package aggregate_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// The same guarantees on a real server: 8 writers x 100 Updates on one
// aggregate lose nothing, and loads use the KV snapshots.
func TestRepositoryOnJetStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	es, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	require.NoError(t, err)
	snaps, err := kv.NewStore(ctx, js, kv.Config{})
	require.NoError(t, err)
	st := &counting{EventStore: es}

	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		repo := snapshotRepo(t, st, snaps, 100, func(c *aggregate.Config[*Cart]) { c.MaxAttempts = 1000; c.CacheSize = 16 })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				err := repo.Update(ctx, "hot", func(c *Cart) error { return c.Add(fmt.Sprintf("w%d", w), 1) })
				if !assert.NoError(t, err, "writer %d update %d", w, i) {
					return
				}
			}
			repo.Flush()
		}()
	}
	wg.Wait()

	st.events.Store(0)
	c, err := snapshotRepo(t, st, snaps, 100).Load(ctx, "hot")
	require.NoError(t, err)
	assert.EqualValues(t, writers*each, c.Version())
	for w := range writers {
		assert.Equal(t, each, c.Items[fmt.Sprintf("w%d", w)])
	}
	assert.Less(t, st.events.Load(), int64(writers*each), "the load started from a snapshot")
	snap, ok, err := snaps.Get(ctx, stream.Aggregate{Type: "cart", ID: "hot"})
	require.NoError(t, err)
	require.True(t, ok)
	assert.GreaterOrEqual(t, snap.Version, uint64(100))
}
