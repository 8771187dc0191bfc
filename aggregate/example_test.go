package aggregate_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// Commands on a cart through a repository. The in-memory store stands in for
// stream.NewStore on a JetStream server; the code is the same.
func ExampleRepository_Update() {
	ctx := context.Background()
	store, _ := stream.NewMemoryStore(stream.Config{Name: "shop", Registry: registry()})
	repo, _ := aggregate.NewRepository(aggregate.Config[*Cart]{
		Store:     store,
		Type:      "cart",
		New:       NewCart,
		Snapshots: kv.NewMemory(), // kv.NewStore(ctx, js, kv.Config{}) on JetStream
	})

	_ = repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("apple", 2) })
	_ = repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("pear", 1) })
	err := repo.Update(ctx, "alice", func(c *Cart) error { return c.Add("plum", 0) })
	fmt.Println("rejected:", errors.Is(err, errQty))

	cart, _ := repo.Load(ctx, "alice")
	fmt.Println(cart.Items["apple"], cart.Items["pear"], "at version", cart.Version())
	// Output:
	// rejected: true
	// 2 1 at version 2
}
