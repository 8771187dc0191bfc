package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/esnats/esnats/stream"
)

// openSQLite opens a SQLite database file in a temporary directory, in WAL
// mode (readers do not block the writer) with a busy timeout (a locked
// database is waited for) and immediate transactions (a writer takes the
// write lock at BEGIN, so two writers queue instead of failing on upgrading
// a read lock), and creates the items table of the tests.
func openSQLite(tb testing.TB) *sql.DB {
	return openSQLiteSync(tb, "NORMAL")
}

// openSQLiteSync is openSQLite with the given synchronous pragma: NORMAL
// (in WAL mode a commit is durable once a checkpoint syncs the WAL; the
// database never corrupts) or FULL (each commit is synced).
func openSQLiteSync(tb testing.TB, synchronous string) *sql.DB {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "views.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous("+synchronous+")&_txlock=immediate")
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec("CREATE TABLE items (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
	require.NoError(tb, err)
	return db
}

// sqlCountApply counts items per SKU in the items table.
func sqlCountApply(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
	item := ev.Data.(rmItem)
	var err error
	switch ev.Type {
	case "item-added":
		_, err = tx.ExecContext(ctx, "INSERT INTO items (sku, qty) VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET qty = qty + excluded.qty", item.SKU, item.Qty)
	case "item-dropped":
		_, err = tx.ExecContext(ctx, "DELETE FROM items WHERE sku = ?", item.SKU)
	case "poison":
		err = errRMPoison
	}
	return err
}

func sqlResetItems(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, "DELETE FROM items")
	return err
}

func newTestSQL(t *testing.T, db *sql.DB, opts ...SQLOption) *SQL {
	t.Helper()
	m, err := NewSQL(context.Background(), db, "items", sqlCountApply, append([]SQLOption{WithSQLReset(sqlResetItems)}, opts...)...)
	require.NoError(t, err)
	return m
}

func sqlCounts(t *testing.T, db *sql.DB) map[string]int {
	t.Helper()
	rows, err := db.Query("SELECT sku, qty FROM items")
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var sku string
		var qty int
		require.NoError(t, rows.Scan(&sku, &qty))
		out[sku] = qty
	}
	require.NoError(t, rows.Err())
	return out
}

func sqlCheckpoint(t *testing.T, m *SQL) uint64 {
	t.Helper()
	pos, err := m.Checkpoint(context.Background())
	require.NoError(t, err)
	return pos
}

func TestSQLApply(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	m := newTestSQL(t, db)
	assert.Equal(t, "items", m.Name())
	assert.Equal(t, uint64(0), sqlCheckpoint(t, m))

	require.NoError(t, m.Apply(ctx, rmBatch(1, 20, 4)))
	assert.Equal(t, rmExpected(20, 4), sqlCounts(t, db))
	assert.Equal(t, uint64(20), sqlCheckpoint(t, m))

	var pos int64
	require.NoError(t, db.QueryRow("SELECT position FROM esnats_checkpoints WHERE projection = 'items'").Scan(&pos))
	assert.Equal(t, int64(20), pos)

	require.NoError(t, m.Apply(ctx, []*stream.Event{rmDropped(21, "sku1")}))
	want := rmExpected(20, 4)
	delete(want, "sku1")
	assert.Equal(t, want, sqlCounts(t, db))
	assert.Equal(t, uint64(21), sqlCheckpoint(t, m))

	// Two read models share the checkpoint table, one row each; NewSQL on
	// an existing table is fine.
	other, err := NewSQL(ctx, db, "other", func(context.Context, *sql.Tx, *stream.Event) error { return nil })
	require.NoError(t, err)
	require.NoError(t, other.Apply(ctx, rmBatch(1, 3, 1)))
	assert.Equal(t, uint64(3), sqlCheckpoint(t, other))
	assert.Equal(t, uint64(21), sqlCheckpoint(t, m))
}

func TestSQLRedeliverySkipped(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		again []*stream.Event
		to    uint64
	}{
		{"same batch", rmBatch(1, 10, 4), 10},
		{"part of the batch", rmBatch(4, 7, 4), 10},
		{"overlapping the checkpoint", rmBatch(6, 15, 4), 15},
		{"out of order within the batch", append(rmBatch(11, 12, 4), rmBatch(5, 12, 4)...), 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openSQLite(t)
			m := newTestSQL(t, db)
			require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 4)))
			require.NoError(t, m.Apply(ctx, tt.again))
			assert.Equal(t, rmExpected(tt.to, 4), sqlCounts(t, db))
			assert.Equal(t, tt.to, sqlCheckpoint(t, m))
			// A new model on the same database (a restarted worker) agrees.
			fresh := newTestSQL(t, db)
			require.NoError(t, fresh.Apply(ctx, tt.again))
			assert.Equal(t, rmExpected(tt.to, 4), sqlCounts(t, db))
		})
	}
}

func TestSQLFailedBatchAppliesNothing(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	m := newTestSQL(t, db)
	require.NoError(t, m.Apply(ctx, rmBatch(1, 5, 2)))

	err := m.Apply(ctx, append(rmBatch(6, 8, 2), rmPoison(9), rmAdded(10, "sku9", 1)))
	require.ErrorIs(t, err, errRMPoison)
	var se *stream.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, uint64(9), se.Sequence)
	assert.Equal(t, rmExpected(5, 2), sqlCounts(t, db), "the batch is rolled back")
	assert.Equal(t, uint64(5), sqlCheckpoint(t, m))

	// A SQL error in the middle of a batch rolls it back too.
	bad, err := NewSQL(ctx, db, "items", func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
		if err := sqlCountApply(ctx, tx, ev); err != nil {
			return err
		}
		if ev.Sequence == 8 {
			_, err := tx.ExecContext(ctx, "INSERT INTO no_such_table VALUES (1)")
			return err
		}
		return nil
	})
	require.NoError(t, err)
	require.Error(t, bad.Apply(ctx, rmBatch(6, 10, 2)))
	assert.Equal(t, rmExpected(5, 2), sqlCounts(t, db))
	assert.Equal(t, uint64(5), sqlCheckpoint(t, m))

	// A cancelled context applies nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.Error(t, m.Apply(cctx, rmBatch(6, 10, 2)))
	assert.Equal(t, uint64(5), sqlCheckpoint(t, m))

	require.NoError(t, m.Apply(ctx, rmBatch(6, 10, 2)))
	assert.Equal(t, rmExpected(10, 2), sqlCounts(t, db))
	assert.Equal(t, uint64(10), sqlCheckpoint(t, m))
}

// Another writer that moves the checkpoint while a batch is applied (two
// workers on one projection) makes Apply fail with ErrConflict and roll
// back.
func TestSQLConflict(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	m := newTestSQL(t, db)
	require.NoError(t, m.Apply(ctx, rmBatch(1, 2, 1)))

	// The "other writer" works inside the transaction: SQLite serializes
	// writers, so this is the only way to interleave them here.
	racing, err := NewSQL(ctx, db, "items", func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
		_, err := tx.ExecContext(ctx, "UPDATE esnats_checkpoints SET position = position + 1 WHERE projection = 'items'")
		return err
	})
	require.NoError(t, err)
	err = racing.Apply(ctx, rmBatch(3, 4, 1))
	require.ErrorIs(t, err, stream.ErrConflict)
	assert.Equal(t, uint64(2), sqlCheckpoint(t, m))

	// With no row yet, a concurrent insert makes the insert fail.
	racing2, err := NewSQL(ctx, db, "fresh", func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO esnats_checkpoints VALUES ('fresh', 99)")
		return err
	})
	require.NoError(t, err)
	require.Error(t, racing2.Apply(ctx, rmBatch(1, 1, 1)))
	assert.Equal(t, uint64(0), sqlCheckpoint(t, racing2))
}

func TestSQLReset(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	m := newTestSQL(t, db)
	require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 3)))
	require.NoError(t, m.Reset(ctx))
	assert.Empty(t, sqlCounts(t, db))
	assert.Equal(t, uint64(0), sqlCheckpoint(t, m))
	require.NoError(t, m.Apply(ctx, rmBatch(1, 10, 3)))
	assert.Equal(t, rmExpected(10, 3), sqlCounts(t, db))

	// A failing reset function changes nothing.
	failing, err := NewSQL(ctx, db, "items", sqlCountApply, WithSQLReset(func(ctx context.Context, tx *sql.Tx) error {
		if err := sqlResetItems(ctx, tx); err != nil {
			return err
		}
		return errRMPoison
	}))
	require.NoError(t, err)
	require.ErrorIs(t, failing.Reset(ctx), errRMPoison)
	assert.Equal(t, rmExpected(10, 3), sqlCounts(t, db))
	assert.Equal(t, uint64(10), sqlCheckpoint(t, m))

	// Without a reset function, Reset says so and changes nothing.
	noReset, err := NewSQL(ctx, db, "items", sqlCountApply)
	require.NoError(t, err)
	err = noReset.Reset(ctx)
	require.ErrorIs(t, err, errors.ErrUnsupported)
	assert.Contains(t, err.Error(), "WithSQLReset")
	assert.Equal(t, uint64(10), sqlCheckpoint(t, m))
}

func TestSQLOptionsAndErrors(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	apply := func(context.Context, *sql.Tx, *stream.Event) error { return nil }
	_, err := NewSQL(ctx, nil, "x", apply)
	assert.Error(t, err)
	_, err = NewSQL(ctx, db, "", apply)
	assert.Error(t, err)
	_, err = NewSQL(ctx, db, "x", nil)
	assert.Error(t, err)
	for _, table := range []string{"", "1abc", ".a", "a;DROP TABLE items", "a b", "a\"b"} {
		_, err = NewSQL(ctx, db, "x", apply, WithSQLCheckpointTable(table))
		assert.Error(t, err, "%q", table)
	}

	m, err := NewSQL(ctx, db, "x", apply, WithSQLCheckpointTable("main.my_positions"), WithSQLTxOptions(&sql.TxOptions{}))
	require.NoError(t, err)
	require.NoError(t, m.Apply(ctx, rmBatch(1, 7, 1)))
	var pos int64
	require.NoError(t, db.QueryRow("SELECT position FROM my_positions WHERE projection = 'x'").Scan(&pos))
	assert.Equal(t, int64(7), pos)

	assert.ErrorIs(t, m.Apply(ctx, []*stream.Event{nil}), errNilEvent)
	assert.ErrorIs(t, m.Apply(ctx, []*stream.Event{rmAdded(0, "a", 1)}), errNoSequence)
	assert.Error(t, m.Apply(ctx, []*stream.Event{rmAdded(1<<63, "a", 1)}))
	assert.Equal(t, uint64(7), sqlCheckpoint(t, m))

	// A closed database reports its errors.
	require.NoError(t, db.Close())
	_, err = m.Checkpoint(ctx)
	assert.Error(t, err)
	assert.Error(t, m.Apply(ctx, rmBatch(8, 9, 1)))
}

// Readers query the tables while a worker applies: they see whole batches
// (every event adds the same quantity to "a" and to "b").
func TestSQLConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	m, err := NewSQL(ctx, db, "pairs", func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
		for _, sku := range []string{"a", "b"} {
			if err := sqlCountApply(ctx, tx, rmAdded(ev.Sequence, sku, int(ev.Sequence))); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				var a, b sql.NullInt64
				err := db.QueryRowContext(ctx, "SELECT (SELECT qty FROM items WHERE sku = 'a'), (SELECT qty FROM items WHERE sku = 'b')").Scan(&a, &b)
				if !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, a, b)
				_, err = m.Checkpoint(ctx)
				assert.NoError(t, err)
			}
		}()
	}
	for s := uint64(1); s <= 200; s += 10 {
		require.NoError(t, m.Apply(ctx, rmBatch(s, s+9, 1)))
	}
	done.Store(true)
	wg.Wait()
	assert.Equal(t, map[string]int{"a": 200 * 201 / 2, "b": 200 * 201 / 2}, sqlCounts(t, db))
}

// BenchmarkSQLApply measures the SQL read model on SQLite (modernc.org/sqlite,
// WAL; synchronous=NORMAL, and FULL where every commit is synced) applying batches of events that each upsert one
// row (a per-SKU counter over 1000 SKUs), against the raw operation it is
// built on: the same upserts in one plain transaction per batch, without the
// checkpoint. Each iteration times one batch of each kind (alternating
// order); the metrics are events/s from the median batch time and the ratio
// esnats/raw (1.0 = as fast as raw).
//
// Kinds: stmt=exec runs tx.ExecContext with the SQL text for each event (the
// driver prepares it each time); stmt=prepared prepares the upsert once per
// batch (tx.PrepareContext), as the SQL documentation advises.
func BenchmarkSQLApply(b *testing.B) {
	const upsert = "INSERT INTO items (sku, qty) VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET qty = qty + excluded.qty"
	for _, synchronous := range []string{"NORMAL", "FULL"} {
		for _, prepared := range []bool{false, true} {
			for _, size := range []int{100, 1000} {
				stmt := "exec"
				if prepared {
					stmt = "prepared"
				}
				b.Run(fmt.Sprintf("sync=%s/stmt=%s/batch=%d", synchronous, stmt, size), func(b *testing.B) {
					ctx := context.Background()
					db := openSQLiteSync(b, synchronous)
					skus := make([]string, 1000)
					for i := range skus {
						skus[i] = fmt.Sprintf("SKU-%05d", i)
					}
					// upserts applies events to tx: one upsert each.
					upserts := func(ctx context.Context, tx *sql.Tx, evs []*stream.Event) error {
						if !prepared {
							for _, ev := range evs {
								item := ev.Data.(rmItem)
								if _, err := tx.ExecContext(ctx, upsert, item.SKU, item.Qty); err != nil {
									return err
								}
							}
							return nil
						}
						st, err := tx.PrepareContext(ctx, upsert)
						if err != nil {
							return err
						}
						defer st.Close()
						for _, ev := range evs {
							item := ev.Data.(rmItem)
							if _, err := st.ExecContext(ctx, item.SKU, item.Qty); err != nil {
								return err
							}
						}
						return nil
					}
					// The model's apply sees one event at a time; with prepared
					// statements it prepares on the batch's first event.
					var (
						curTx   *sql.Tx
						curStmt *sql.Stmt
					)
					m, err := NewSQL(ctx, db, "bench", func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error {
						item := ev.Data.(rmItem)
						if !prepared {
							_, err := tx.ExecContext(ctx, upsert, item.SKU, item.Qty)
							return err
						}
						if tx != curTx {
							st, err := tx.PrepareContext(ctx, upsert)
							if err != nil {
								return err
							}
							curTx, curStmt = tx, st // closed with the transaction
						}
						_, err := curStmt.ExecContext(ctx, item.SKU, item.Qty)
						return err
					})
					require.NoError(b, err)

					seq := uint64(0)
					batch := func() []*stream.Event {
						evs := make([]*stream.Event, size)
						for i := range evs {
							seq++
							evs[i] = &stream.Event{Type: "item-added", Sequence: seq, Data: rmItem{SKU: skus[seq%uint64(len(skus))], Qty: 1}}
						}
						return evs
					}
					runModel := func() time.Duration {
						evs := batch()
						start := time.Now()
						require.NoError(b, m.Apply(ctx, evs))
						return time.Since(start)
					}
					runRaw := func() time.Duration {
						evs := batch()
						start := time.Now()
						tx, err := db.BeginTx(ctx, nil)
						require.NoError(b, err)
						require.NoError(b, upserts(ctx, tx, evs))
						require.NoError(b, tx.Commit())
						return time.Since(start)
					}
					runModel() // warm up
					runRaw()
					var model, raw []time.Duration
					step := func() {
						if len(model)%2 == 0 {
							model = append(model, runModel())
							raw = append(raw, runRaw())
						} else {
							raw = append(raw, runRaw())
							model = append(model, runModel())
						}
					}
					for b.Loop() {
						step()
					}
					for len(model) < 5 { // a median needs a few samples
						step()
					}
					median := func(d []time.Duration) float64 {
						slices.Sort(d)
						return d[len(d)/2].Seconds()
					}
					modelRate := float64(size) / median(model)
					rawRate := float64(size) / median(raw)
					b.ReportMetric(0, "ns/op")
					b.ReportMetric(modelRate, "esnats-events/s")
					b.ReportMetric(rawRate, "raw-events/s")
					b.ReportMetric(modelRate/rawRate, "esnats/raw")
				})
			}
		}
	}
}
