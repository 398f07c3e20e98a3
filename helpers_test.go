package sqliteproxy

// The helpers that this package's tests share. They are the in-package
// twins of package sqliteproxytest (New, Context, WaitFor), which these
// tests cannot import: it imports this package. Both are built on
// internal/testkit.

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/internal/fdcount"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// newTestProxy opens a Proxy on a fresh directory (unless cfg.Dir is set)
// and closes it when the test ends, failing the test if New or Close fail.
func newTestProxy(tb testing.TB, cfg Config) *Proxy {
	tb.Helper()
	if cfg.Dir == "" {
		cfg.Dir = tb.TempDir()
	}
	if keepWALSweep {
		cfg.KeepWAL = true
	}
	return testkit.Open(tb, "New", func() (*Proxy, error) { return New(cfg) })
}

// keepWALSweep: newTestProxy sets Config.KeepWAL (testkit.KeepWAL).
var keepWALSweep = testkit.KeepWAL

// keptSide reports whether the file at path is one KeepWAL leaves beside
// a closed tenant (testkit.KeptSide).
func keptSide(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && testkit.KeptSide(path, fi.Size())
}

// tctx returns a context routed to tenant id, without a deadline.
func tctx(id string) context.Context { return WithOrgID(context.Background(), id) }

// waitFor polls cond every millisecond until it holds and fails the test,
// naming what it waited for, once timeout has passed.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	testkit.WaitFor(tb, timeout, what, cond)
}

const eventsTable = `CREATE TABLE events (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0)`

// countRows counts the rows of tenant id's events table.
func countRows(t *testing.T, p *Proxy, id string) int {
	t.Helper()
	var n int
	if err := p.QueryRowContext(tctx(id), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", id, err)
	}
	return n
}

// queryInt runs q, which returns one integer, on db with ctx.
func queryInt(t *testing.T, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, ctx context.Context, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// direct opens a tenant file with plain mattn, as an operator would.
func direct(t *testing.T, dir, id string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", filepath.Join(dir, id+".db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// dbFiles lists the names of the files in dir, sorted, but for the lock
// files of proxies (presence, replication).
func dbFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	m = slices.DeleteFunc(m, func(n string) bool { return n == replicatingLock || n == presenceFile })
	slices.Sort(m)
	return m
}

// realDir is dir with symbolic links resolved, as /proc/self/fd shows it.
func realDir(t *testing.T, dir string) string {
	t.Helper()
	d, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// assertNoOpenFiles fails the test if this process has a tenant file in
// dir open. It counts the descriptors of dir's files only, so tests that
// run in parallel on other directories do not disturb it.
func assertNoOpenFiles(t *testing.T, dir string) {
	t.Helper()
	if !fdcount.Supported() {
		return
	}
	dir = realDir(t, dir)
	for range 2 { // a second sample rules out a reused descriptor number
		if fdcount.Count(dir, ".db") == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d tenant files still open", fdcount.Count(dir, ".db"))
}

// fleet makes n tenants in dir, migrated with migs and then given the
// statements of seed, and returns their IDs: t000, t001, ... (with more
// digits from 1000 tenants on). The tenants are copies of one tenant file
// made through a Proxy, closed: far quicker than creating each through
// SQLite, and what a fleet that nobody has open looks like.
func fleet(tb testing.TB, dir string, n int, migs []string, seed ...string) []string {
	tb.Helper()
	src := templateTenant(tb, migs, seed...)
	width := max(3, len(strconv.Itoa(n-1)))
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%0*d", width, i)
		if err := os.WriteFile(filepath.Join(dir, ids[i]+".db"), src, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return ids
}

// startChild runs the test named name of this test binary as another
// process, with env (KEY=VALUE) added to its environment, and returns once
// it has printed "ready". stop closes its stdin, the child's signal to end,
// and waits for it; it is also called when the test ends.
func startChild(t *testing.T, name string, env ...string) (stop func() error) {
	t.Helper()
	_, stop = testkit.StartChild(t, name, env...)
	return stop
}

// fileCount runs the count query q on the database file p, read-only with
// mattn directly (not through a proxy).
func fileCount(t *testing.T, p, q string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", p+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s on %s: %v", q, p, err)
	}
	return n
}

// writeLock takes tenant id's write lock (BEGIN IMMEDIATE) on a connection
// of its own, as another process would, and returns it; it is rolled back
// and closed at the end of the test, if not before.
func writeLock(t *testing.T, dir, id string) *sql.Conn {
	t.Helper()
	lock, err := direct(t, dir, id).Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lock.ExecContext(context.Background(), `ROLLBACK`)
		lock.Close()
	})
	if _, err := lock.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	return lock
}

// restoredTenant opens a proxy with cfg (on a fresh directory unless
// cfg.Dir is set), gives tenant acme one row, backs it up and restores it
// from that backup: its file is left closed and in rollback-journal mode
// (a backup's), until its first open switches it to WAL. It returns the
// proxy and the backup's path.
func restoredTenant(t *testing.T, cfg Config) (p *Proxy, backup string) {
	t.Helper()
	p = newTestProxy(t, cfg)
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	backup = filepath.Join(t.TempDir(), "acme.bak")
	if err := p.BackupTenant(ctx, "acme", backup); err != nil {
		t.Fatal(err)
	}
	if err := p.RestoreTenant(ctx, "acme", backup); err != nil {
		t.Fatal(err)
	}
	return p, backup
}
