package projections_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// ItemAdded is the event of the examples: a quantity of a SKU was added
// to some cart.
type ItemAdded struct {
	SKU string
	Qty int
}

// exampleEvents returns events as a runner delivers them: decoded, with
// their stream sequences.
func exampleEvents(from uint64, items ...ItemAdded) []*stream.Event {
	evs := make([]*stream.Event, len(items))
	for i, it := range items {
		evs[i] = &stream.Event{
			Type:      "item-added",
			Sequence:  from + uint64(i),
			Aggregate: stream.Aggregate{Type: "cart", ID: "c1"},
			Data:      it,
		}
	}
	return evs
}

// A small in-process view: items per SKU. Redelivered events are skipped,
// and a failed batch leaves nothing behind.
func ExampleMemory() {
	ctx := context.Background()
	perSKU := projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
		item := ev.Data.(ItemAdded)
		if item.Qty <= 0 {
			return fmt.Errorf("bad quantity %d", item.Qty)
		}
		view[item.SKU] += item.Qty
		return nil
	})

	batch := exampleEvents(1, ItemAdded{"apple", 2}, ItemAdded{"pear", 1}, ItemAdded{"apple", 3})
	_ = perSKU.Apply(ctx, batch)
	_ = perSKU.Apply(ctx, batch) // delivered again: skipped
	apples, _ := perSKU.Get("apple")
	pos, _ := perSKU.Checkpoint(ctx)
	fmt.Println("apples:", apples, "checkpoint:", pos)

	err := perSKU.Apply(ctx, exampleEvents(4, ItemAdded{"apple", 10}, ItemAdded{"pear", -1}))
	fmt.Println(err)
	apples, _ = perSKU.Get("apple")
	pos, _ = perSKU.Checkpoint(ctx)
	fmt.Println("apples:", apples, "checkpoint:", pos, "keys:", perSKU.Len())
	// Output:
	// apples: 5 checkpoint: 3
	// esnats: apply item-added event at sequence 5: bad quantity -1
	// apples: 5 checkpoint: 3 keys: 2
}

// A read model in SQLite: each batch is one transaction that also stores
// the checkpoint, so every event is counted exactly once.
func ExampleSQL() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	// WAL: readers do not block the writer; busy_timeout: wait for a lock
	// rather than fail.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "views.db")+
		"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)"); err != nil {
		panic(err)
	}

	items, err := projections.NewSQL(ctx, db, "items",
		func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
			item := ev.Data.(ItemAdded)
			_, err := tx.ExecContext(ctx, `INSERT INTO items (sku, qty) VALUES (?, ?)
				ON CONFLICT (sku) DO UPDATE SET qty = qty + excluded.qty`, item.SKU, item.Qty)
			return err
		},
		projections.WithSQLReset(func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "DELETE FROM items")
			return err
		}))
	if err != nil {
		panic(err)
	}

	_ = items.Apply(ctx, exampleEvents(1, ItemAdded{"apple", 2}, ItemAdded{"pear", 1}))
	// Events 2 and 3: 2 was applied already and is skipped.
	_ = items.Apply(ctx, exampleEvents(2, ItemAdded{"pear", 1}, ItemAdded{"apple", 3}))

	var apples, pears int
	_ = db.QueryRow("SELECT (SELECT qty FROM items WHERE sku = 'apple'), (SELECT qty FROM items WHERE sku = 'pear')").Scan(&apples, &pears)
	pos, _ := items.Checkpoint(ctx)
	fmt.Println("apples:", apples, "pears:", pears, "checkpoint:", pos)

	_ = items.Reset(ctx) // for a rebuild
	pos, _ = items.Checkpoint(ctx)
	fmt.Println("after reset, checkpoint:", pos)
	// Output:
	// apples: 5 pears: 1 checkpoint: 3
	// after reset, checkpoint: 0
}

// A read model in a JetStream KV bucket, readable by any NATS client. The
// counts are exactly-once even though a bucket has no transactions.
func ExampleKV() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	items, err := projections.NewKV(ctx, js, projections.KVConfig{Bucket: "items_per_sku"},
		func(ctx context.Context, tx *projections.KVBatch, ev *stream.Event) error {
			item := ev.Data.(ItemAdded)
			old, _, err := tx.Get(item.SKU) // sees this batch's own writes
			if err != nil {
				return err
			}
			n, _ := strconv.Atoi(string(old))
			tx.Put(item.SKU, []byte(strconv.Itoa(n+item.Qty)))
			return nil
		})
	if err != nil {
		panic(err)
	}

	batch := exampleEvents(1, ItemAdded{"apple", 2}, ItemAdded{"pear", 1}, ItemAdded{"apple", 3})
	if err := items.Apply(ctx, batch); err != nil {
		panic(err)
	}
	_ = items.Apply(ctx, batch) // delivered again: skipped

	apples, _, _ := items.Get(ctx, "apple")
	keys, _ := items.Keys(ctx)
	pos, _ := items.Checkpoint(ctx)
	fmt.Println("apples:", string(apples), "keys:", keys, "checkpoint:", pos)

	// Keys follow the KV rules; escape ids with stream.EncodeID.
	_, _, err = items.Get(ctx, "red apple")
	fmt.Println(err)
	key, _ := stream.EncodeID("red apple")
	fmt.Println("escaped:", key)
	// Output:
	// apples: 5 keys: [apple pear] checkpoint: 3
	// esnats: invalid read model key: key "red apple" holds ' ' at offset 3; use stream.EncodeID to escape ids
	// escaped: red=20apple
}
