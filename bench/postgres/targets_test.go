package pgbench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/sqliteproxy/sqliteproxy"
)

// The two systems under one interface: the application's statements on
// one tenant, as the application would run them on each. The statements
// are the same text on both: SQLite reads $1 as a parameter bound by
// position.

// eventsSchema is the article's events table (README, "Use").
const eventsSchema = `CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP)`

const (
	insertSQL = `INSERT INTO events (name) VALUES ($1)`
	getSQL    = `SELECT name FROM events WHERE id = $1`
	list10SQL = `SELECT id, name FROM events WHERE id > $1 ORDER BY id LIMIT 10`
)

// pairing is a durability level, the same on both sides: sync=full is
// the proxy's synchronous=FULL against synchronous_commit=on (a commit
// is on disk when it returns); sync=normal is synchronous=NORMAL (the
// proxy's default) against synchronous_commit=off. They are alike, not
// equal: both can lose the last commits to a power loss, but only
// PostgreSQL also to a crash of its server (up to 3 × wal_writer_delay,
// 600 ms, of commits at off); SQLite at NORMAL has written each commit
// to its WAL file before it returns, so a process crash loses nothing.
type pairing struct{ name, sqlite, pg string }

var pairings = []pairing{{"full", "FULL", "on"}, {"normal", "NORMAL", "off"}}

// target is one system holding tenants, each with seeded rows whose ids
// seedID gives.
type target interface {
	impl() string
	// do runs one application operation on tenant i: fn's statements,
	// with the ctx and querier it is given. On PostgreSQL they always run
	// in one transaction (BEGIN; set_config; ...; COMMIT); with the proxy
	// as autocommit statements on the tenant's database, or in one
	// transaction when tx is set.
	do(i int, tx bool, fn func(ctx context.Context, q querier) error) error
	seedID(i, k int) int64 // id of tenant i's k-th seeded row (k from 0)
	prepareInsert(tb testing.TB) preparedInsert
	// close closes the connections (the cleanups of tb drop the data).
	close() error
}

// querier is a *sql.DB or a *sql.Tx.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// preparedInsert inserts a row named name into tenant i with a statement
// prepared once.
type preparedInsert func(i int, name string) error

// --- the proxy

type proxyTarget struct {
	name string
	p    *sqliteproxy.Proxy
	ids  []string
	ctxs []context.Context
}

func (t *proxyTarget) impl() string { return t.name }

func (t *proxyTarget) close() error { return t.p.Close() }

// do gives fn the tenant's context: the proxy routes each call by it.
func (t *proxyTarget) do(i int, tx bool, fn func(ctx context.Context, q querier) error) error {
	ctx := t.ctxs[i]
	if !tx {
		return fn(ctx, t.p.DB)
	}
	x, err := t.p.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer x.Rollback()
	if err := fn(ctx, x); err != nil {
		return err
	}
	return x.Commit()
}

func (t *proxyTarget) seedID(_, k int) int64 { return int64(k + 1) }

func (t *proxyTarget) prepareInsert(tb testing.TB) preparedInsert {
	st, err := t.p.PrepareContext(context.Background(), insertSQL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return func(i int, name string) error {
		_, err := st.ExecContext(t.ctxs[i], name)
		return err
	}
}

// newProxyTarget makes n tenants (t00000, ...) of rows rows each under a
// fresh directory, as copies of one tenant file (as a fleet made from a
// template is), flushed to disk, and opens the proxy on them with
// synchronous=sync and otherwise its defaults (MaxConnections 100, 4
// readers per tenant, group commit on).
func newProxyTarget(tb testing.TB, n, rows int, sync string) *proxyTarget {
	return newProxyTargetCap(tb, n, rows, sync, 0)
}

// newProxyTargetCap is newProxyTarget with MaxConnections maxConns
// (0: the default), named "proxy-max<maxConns>" when it is set.
func newProxyTargetCap(tb testing.TB, n, rows int, sync string, maxConns int) *proxyTarget {
	tb.Helper()
	dir := tb.TempDir()
	ids := tenantIDs(n)
	src := tenantFile(tb, rows)
	for _, id := range ids {
		if err := os.WriteFile(filepath.Join(dir, id+".db"), src, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	syscall.Sync()
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, Synchronous: sync, MaxConnections: maxConns, Migrations: []string{eventsSchema}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	t := &proxyTarget{name: "proxy", p: p, ids: ids}
	if maxConns != 0 {
		t.name = fmt.Sprintf("proxy-max%d", maxConns)
	}
	for _, id := range ids {
		t.ctxs = append(t.ctxs, sqliteproxy.WithOrgID(context.Background(), id))
	}
	var got string
	if err := p.QueryRowContext(t.ctxs[0], `PRAGMA synchronous`).Scan(&got); err != nil {
		tb.Fatal(err)
	}
	if want := map[string]string{"NORMAL": "1", "FULL": "2"}[sync]; got != want {
		tb.Fatalf("proxy: PRAGMA synchronous = %s, want %s (%s)", got, want, sync)
	}
	return t
}

// tenantFile returns the bytes of a closed tenant file with the events
// schema and rows rows (cached per process).
func tenantFile(tb testing.TB, rows int) []byte {
	tb.Helper()
	tenantFilesMu.Lock()
	defer tenantFilesMu.Unlock()
	if b, ok := tenantFiles[rows]; ok {
		return b
	}
	dir, err := os.MkdirTemp("", "sqliteproxy-tmpl-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, Migrations: []string{eventsSchema}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx := sqliteproxy.WithOrgID(context.Background(), "template")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for r := 1; r <= rows; r++ {
		if _, err := tx.ExecContext(ctx, insertSQL, fmt.Sprint("row", r)); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	if err := p.Close(); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "template.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tenantFiles[rows] = b
	return b
}

var (
	tenantFilesMu sync.Mutex // guards tenantFiles
	tenantFiles   = map[int][]byte{}
)

func tenantIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%05d", i)
	}
	return ids
}

// --- PostgreSQL

type pgTarget struct {
	d    *pgDatabase
	db   *sql.DB // role app
	ids  []string
	base []int64
}

func (t *pgTarget) impl() string { return "postgres" }

func (t *pgTarget) close() error { return t.db.Close() }

// do is what a pooled application does for each operation: take a
// connection, BEGIN, set the tenant for this transaction only
// (set_config(..., true): it cannot leak to the connection's next user),
// run the statements, COMMIT: two round trips more than the statements.
func (t *pgTarget) do(i int, _ bool, fn func(ctx context.Context, q querier) error) error {
	ctx := context.Background()
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT set_config('app.tenant', $1, true)`, t.ids[i]); err != nil {
		return err
	}
	if err := fn(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

func (t *pgTarget) seedID(i, k int) int64 { return t.base[i] + int64(k) }

func (t *pgTarget) prepareInsert(tb testing.TB) preparedInsert {
	st, err := t.db.PrepareContext(context.Background(), insertSQL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return func(i int, name string) error {
		return t.do(i, true, func(ctx context.Context, q querier) error {
			_, err := q.(*sql.Tx).StmtContext(ctx, st).ExecContext(ctx, name)
			return err
		})
	}
}

// newPGTarget makes n tenants (t00000, ...) of rows rows each in a fresh
// database and opens the application's pool with synchronous_commit set
// to syncCommit.
func newPGTarget(tb testing.TB, n, rows int, syncCommit string) *pgTarget {
	tb.Helper()
	d := newDatabase(tb)
	ids := tenantIDs(n)
	base := d.seed(tb, ids, rows)
	return &pgTarget{d: d, db: d.app(tb, syncCommit), ids: ids, base: base}
}

// newTargets returns both systems with n tenants of rows rows at pairing pr.
func newTargets(tb testing.TB, n, rows int, pr pairing) []target {
	return []target{newProxyTarget(tb, n, rows, pr.sqlite), newPGTarget(tb, n, rows, pr.pg)}
}
