package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/esnats/esnats/stream"
)

// DefaultSQLCheckpointTable is the table in which SQL read models keep their
// checkpoints, one row per read model, unless WithSQLCheckpointTable names
// another.
const DefaultSQLCheckpointTable = "esnats_checkpoints"

// SQL is a read model kept in a SQL database through database/sql: the
// apply function writes the read model's tables, and the model keeps its
// checkpoint in a table of the same database (by default
// esnats_checkpoints(projection TEXT PRIMARY KEY, position BIGINT NOT NULL),
// one row per read model name, created if it does not exist).
//
// # Exactly-once
//
// Apply runs a whole batch in one database transaction: it reads the
// checkpoint row, calls apply for each event above it, then advances the
// checkpoint row to the last event's sequence and commits. The read model's
// changes and its position are committed together or not at all, so an
// event is applied once even when the consumer delivers it again: after a
// crash or a failed batch, the events at or below the committed checkpoint
// are skipped. The checkpoint row is advanced with a compare-and-set on the
// position read in the same transaction: if another writer advanced it
// meanwhile (two workers on one projection, which the runner prevents), the
// transaction is rolled back and Apply returns an error matching
// stream.ErrConflict.
//
// # Databases
//
// SQL works with any database/sql driver whose placeholders are '?'
// (SQLite, MySQL, ...). With SQLite, open the database in WAL mode with a
// busy timeout so that readers do not block the writer and a brief lock
// waits instead of failing, e.g. with modernc.org/sqlite:
//
//	sql.Open("sqlite", "file:views.db?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate")
//
// (_txlock=immediate takes the write lock when the transaction begins, so
// that two writers wait for each other rather than fail on upgrading a read
// lock). The checkpoint table must exist or be creatable with the statement
// above; create it yourself on a database where that statement does not
// work (MySQL wants VARCHAR(255) for a primary key).
//
// Throughput is that of the database with one transaction per batch:
// batches of 100 to 1000 events amortize the commit (see
// BenchmarkSQLApply). Prepare the apply function's statements once per
// transaction (tx.StmtContext or tx.PrepareContext) rather than per event
// when it matters.
//
// # Concurrency
//
// Apply, Reset and Checkpoint may be called from several goroutines: Apply
// and Reset are serialized with each other in this process, and across
// processes by the database's own transactions and the checkpoint's
// compare-and-set. Readers query the read model's tables directly and see
// whole batches only (the database's isolation).
type SQL struct {
	db      *sql.DB
	name    string
	apply   func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error
	reset   func(ctx context.Context, tx *sql.Tx) error
	txOpts  *sql.TxOptions
	table   string
	qSelect string
	qUpdate string
	qInsert string
	qDelete string

	mu sync.Mutex // serializes Apply and Reset in this process
}

var (
	_ Checkpointed = (*SQL)(nil)
	_ Resetter     = (*SQL)(nil)
)

// SQLOption configures NewSQL.
type SQLOption func(*SQL)

// WithSQLReset sets how Reset empties the read model: reset runs in the
// same transaction that deletes the checkpoint row, e.g.
//
//	func(ctx context.Context, tx *sql.Tx) error {
//		_, err := tx.ExecContext(ctx, "DELETE FROM items")
//		return err
//	}
//
// Without it, Reset returns an error matching errors.ErrUnsupported.
func WithSQLReset(reset func(ctx context.Context, tx *sql.Tx) error) SQLOption {
	return func(m *SQL) { m.reset = reset }
}

// WithSQLCheckpointTable keeps the checkpoint in table rather than
// DefaultSQLCheckpointTable. table is used as it is in SQL statements: 1 to
// 128 ASCII letters, digits, '_' and '.', not starting with a digit or '.'.
func WithSQLCheckpointTable(table string) SQLOption {
	return func(m *SQL) { m.table = table }
}

// WithSQLTxOptions sets the options of the transactions of Apply and Reset
// (isolation level). Default nil: the driver's default.
func WithSQLTxOptions(opts *sql.TxOptions) SQLOption {
	return func(m *SQL) { m.txOpts = opts }
}

// validSQLTable reports whether table is a plain (optionally
// schema-qualified) SQL identifier that needs no quoting.
func validSQLTable(table string) bool {
	if table == "" || len(table) > 128 || table[0] == '.' || ('0' <= table[0] && table[0] <= '9') {
		return false
	}
	for i := 0; i < len(table); i++ {
		c := table[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// NewSQL returns a SQL read model named name (its row in the checkpoint
// table: give each read model its own name) on db, applying each event with
// apply, and creates the checkpoint table if it does not exist. apply
// changes the read model's tables only through tx (the batch's
// transaction), and must not commit or roll it back; an error from it rolls
// back the whole batch.
//
// Errors: an empty name, a nil db or apply, an invalid table name, before
// any I/O; otherwise the database's (creating the table).
func NewSQL(ctx context.Context, db *sql.DB, name string, apply func(ctx context.Context, tx *sql.Tx, ev *stream.Event) error, opts ...SQLOption) (*SQL, error) {
	switch {
	case db == nil:
		return nil, errors.New("projections: NewSQL with a nil *sql.DB")
	case name == "":
		return nil, errors.New("projections: NewSQL with an empty read model name")
	case apply == nil:
		return nil, errors.New("projections: NewSQL with a nil apply function")
	}
	m := &SQL{db: db, name: name, apply: apply, table: DefaultSQLCheckpointTable}
	for _, o := range opts {
		o(m)
	}
	if !validSQLTable(m.table) {
		return nil, fmt.Errorf("projections: invalid checkpoint table name %q: use 1 to 128 ASCII letters, digits, '_' and '.'", m.table)
	}
	m.qSelect = "SELECT position FROM " + m.table + " WHERE projection = ?"
	m.qUpdate = "UPDATE " + m.table + " SET position = ? WHERE projection = ? AND position = ?"
	m.qInsert = "INSERT INTO " + m.table + " (projection, position) VALUES (?, ?)"
	m.qDelete = "DELETE FROM " + m.table + " WHERE projection = ?"
	create := "CREATE TABLE IF NOT EXISTS " + m.table + " (projection TEXT PRIMARY KEY, position BIGINT NOT NULL)"
	if _, err := db.ExecContext(ctx, create); err != nil {
		return nil, m.sqlError("create checkpoint table", err)
	}
	return m, nil
}

// Name returns the read model's name: its row in the checkpoint table.
func (m *SQL) Name() string { return m.name }

func (m *SQL) sqlError(op string, err error) error {
	return fmt.Errorf("projections: %s (sql read model %q, table %s): %w", op, m.name, m.table, err)
}

// position reads the checkpoint row in q (a transaction or the database).
func (m *SQL) position(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}) (pos uint64, found bool, err error) {
	var p int64
	err = q.QueryRowContext(ctx, m.qSelect, m.name).Scan(&p)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, false, nil
	case err != nil:
		return 0, false, m.sqlError("read checkpoint", err)
	case p < 0:
		return 0, false, m.sqlError("read checkpoint", fmt.Errorf("negative position %d", p))
	}
	return uint64(p), true, nil
}

// Checkpoint returns the committed position of the read model (the stream
// sequence of the last applied event), 0 if none. Errors are the
// database's.
func (m *SQL) Checkpoint(ctx context.Context) (uint64, error) {
	pos, _, err := m.position(ctx, m.db)
	return pos, err
}

// Apply applies the events with a sequence above the checkpoint, in order,
// and advances the checkpoint to the last one, in one transaction. Events at
// or below the checkpoint, or at or below an earlier event of the batch, are
// skipped; a batch with nothing to apply is rolled back and returns nil.
//
// Errors: a nil event or sequence 0, before any I/O; an error of apply,
// wrapped in a *stream.Error naming the event; a checkpoint advanced by
// another writer meanwhile (stream.ErrConflict); otherwise the database's.
// On error the transaction is rolled back: nothing of the batch is applied
// and the checkpoint is unchanged.
func (m *SQL) Apply(ctx context.Context, events []*stream.Event) (err error) {
	if err := checkBatch(events); err != nil {
		return err
	}
	for _, ev := range events {
		if ev.Sequence > math.MaxInt64 {
			return fmt.Errorf("projections: sequence %d does not fit a SQL BIGINT", ev.Sequence)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	tx, err := m.db.BeginTx(ctx, m.txOpts)
	if err != nil {
		return m.sqlError("begin", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	start, found, err := m.position(ctx, tx)
	if err != nil {
		return err
	}
	pos := start
	for _, ev := range events {
		if ev.Sequence <= pos {
			continue
		}
		if err := m.apply(ctx, tx, ev); err != nil {
			return applyError(ev, err)
		}
		pos = ev.Sequence
	}
	if pos == start {
		_ = tx.Rollback()
		return nil
	}
	if found {
		res, err := tx.ExecContext(ctx, m.qUpdate, int64(pos), m.name, int64(start))
		if err != nil {
			return m.sqlError("advance checkpoint", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return m.sqlError("advance checkpoint", err)
		}
		if n != 1 {
			return m.sqlError("advance checkpoint", fmt.Errorf("%w: the checkpoint moved from %d (another writer?)", stream.ErrConflict, start))
		}
	} else if _, err := tx.ExecContext(ctx, m.qInsert, m.name, int64(pos)); err != nil {
		// Most likely a concurrent insert of the same row (a primary key
		// violation); drivers report it in their own terms.
		return m.sqlError("insert checkpoint", err)
	}
	if err := tx.Commit(); err != nil {
		return m.sqlError("commit", err)
	}
	return nil
}

// Reset empties the read model with the function given to WithSQLReset and
// deletes its checkpoint row, in one transaction: the next Apply starts
// from checkpoint 0.
//
// Errors: no WithSQLReset (errors.ErrUnsupported), before any I/O; an error
// of the reset function (the transaction is rolled back); otherwise the
// database's.
func (m *SQL) Reset(ctx context.Context) (err error) {
	if m.reset == nil {
		return fmt.Errorf("projections: sql read model %q cannot be reset: no reset function (use WithSQLReset): %w", m.name, errors.ErrUnsupported)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	tx, err := m.db.BeginTx(ctx, m.txOpts)
	if err != nil {
		return m.sqlError("begin", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if err := m.reset(ctx, tx); err != nil {
		return m.sqlError("reset", err)
	}
	if _, err := tx.ExecContext(ctx, m.qDelete, m.name); err != nil {
		return m.sqlError("delete checkpoint", err)
	}
	if err := tx.Commit(); err != nil {
		return m.sqlError("commit", err)
	}
	return nil
}
