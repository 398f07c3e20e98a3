package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const eventsTable = `CREATE TABLE events (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0)`

func countRows(t *testing.T, p *Proxy, id string) int {
	t.Helper()
	var n int
	if err := p.QueryRowContext(tctx(id), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", id, err)
	}
	return n
}

// dbFiles lists the tenant database files in dir.
func dbFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	slices.Sort(m)
	return m
}

func TestRouting_ExecQueryIsolation(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	for i, id := range []string{"acme", "globex", "acme"} {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant, n) VALUES (?, ?)`, id, i); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]int{"acme": 2, "globex": 1} {
		rows, err := p.QueryContext(tctx(id), `SELECT tenant FROM events`)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var got string
			if err := rows.Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != id {
				t.Errorf("tenant %s sees a row of %s", id, got)
			}
			n++
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Errorf("tenant %s: %d rows, want %d", id, n, want)
		}
	}
	if got, want := dbFiles(t, dir), []string{"acme.db", "acme.db-shm", "acme.db-wal", "globex.db", "globex.db-shm", "globex.db-wal"}; !slices.Equal(got, want) {
		t.Errorf("files = %v, want %v", got, want)
	}
	ids, err := p.Tenants(context.Background())
	if err != nil || !slices.Equal(ids, []string{"acme", "globex"}) {
		t.Errorf("Tenants = %v, %v", ids, err)
	}
}

func TestRouting_PreparedWithoutTenant(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ins, err := p.PrepareContext(context.Background(), `INSERT INTO events (tenant) VALUES (?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	sel, err := p.PrepareContext(context.Background(), `SELECT count(*) FROM events WHERE tenant = ?`)
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	for _, id := range []string{"acme", "globex", "globex", "initech", "globex"} {
		if _, err := ins.ExecContext(tctx(id), id); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]int{"acme": 1, "globex": 3, "initech": 1} {
		var n int
		if err := sel.QueryRowContext(tctx(id), id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != want || countRows(t, p, id) != want {
			t.Errorf("%s: %d rows, want %d", id, n, want)
		}
	}
	if _, err := ins.ExecContext(context.Background(), "x"); !errors.Is(err, ErrNoTenant) {
		t.Errorf("stmt exec without tenant: %v, want ErrNoTenant", err)
	}
	if _, err := ins.ExecContext(tctx("acme")); err == nil || !strings.Contains(err.Error(), "expected 1 arguments, got 0") {
		t.Errorf("stmt exec with no args: %v", err)
	}
	// Prepared with a tenant: SQL is checked at once.
	if _, err := p.PrepareContext(tctx("acme"), `SELECT nope FROM events`); err == nil {
		t.Error("prepare of a bad column on a tenant succeeded")
	}
}

func TestRouting_TxAndConn(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	// A tenantless context inside the tx runs in the tx.
	if _, err := tx.ExecContext(context.Background(), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	// Another tenant's context is refused and writes nothing anywhere.
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO events (tenant) VALUES ('globex')`); !errors.Is(err, ErrTenantMismatch) {
		t.Fatalf("cross-tenant exec in tx: %v, want ErrTenantMismatch", err)
	}
	if err := tx.QueryRowContext(tctx("globex"), `SELECT 1`).Scan(new(int)); !errors.Is(err, ErrTenantMismatch) {
		t.Fatalf("cross-tenant query in tx: %v, want ErrTenantMismatch", err)
	}
	var inTx int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&inTx); err != nil || inTx != 2 {
		t.Fatalf("count in tx = %d, %v", inTx, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "acme"); n != 2 {
		t.Errorf("acme has %d rows, want 2", n)
	}
	if n := countRows(t, p, "globex"); n != 0 {
		t.Errorf("globex has %d rows, want 0", n)
	}

	// Rollback leaves nothing.
	tx, err = p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "acme"); n != 2 {
		t.Errorf("after rollback acme has %d rows, want 2", n)
	}

	// sql.Conn keeps its session: a TEMP table stays visible, reads included.
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, `CREATE TEMP TABLE scratch (v TEXT)`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, `INSERT INTO scratch VALUES ('kept')`); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := c.QueryRowContext(context.Background(), `SELECT v FROM scratch`).Scan(&v); err != nil || v != "kept" {
		t.Fatalf("temp table on sql.Conn: %q, %v", v, err)
	}
	if _, err := c.ExecContext(tctx("globex"), `SELECT 1`); !errors.Is(err, ErrTenantMismatch) {
		t.Errorf("sql.Conn used for another tenant: %v, want ErrTenantMismatch", err)
	}
}

func TestRouting_ReadOnlyTxOnReader(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	countRows(t, p, "acme") // migrate
	wtx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wtx.Rollback()
	if _, err := wtx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	// With the write transaction open, readers still answer (WAL snapshot).
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n := countRows(t, p, "acme"); n != 0 {
		t.Errorf("reader sees uncommitted row: %d", n)
	}
	rtx, err := p.BeginTx(qctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := rtx.QueryRowContext(qctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("read-only tx: %d, %v", n, err)
	}
	if _, err := rtx.ExecContext(qctx, `INSERT INTO events (tenant) VALUES ('x')`); err == nil {
		t.Error("write in a read-only tx succeeded")
	}
	rtx.Rollback()
}

func TestNoTenant(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	bg := context.Background()
	if err := p.PingContext(bg); err != nil {
		t.Errorf("Ping without tenant: %v", err)
	}
	var version string
	if err := p.QueryRowContext(bg, `select sqlite_version()`).Scan(&version); err != nil || version == "" {
		t.Errorf("sqlite_version without tenant: %q, %v", version, err)
	}
	var two int
	if err := p.QueryRowContext(bg, `SELECT 1 + ?`, 1).Scan(&two); err != nil || two != 2 {
		t.Errorf("SELECT 1+? without tenant: %d, %v", two, err)
	}
	for _, q := range []string{
		`SELECT * FROM events`,
		`INSERT INTO events (tenant) VALUES ('x')`,
		`CREATE TABLE t (a)`,
		`SELECT name FROM sqlite_master`,
		`PRAGMA table_info(events)`,
		`SELECT 1; SELECT 2`,
		`ATTACH 'x.db' AS x`,
		`SELECT load_extension('x')`,
	} {
		if _, err := p.ExecContext(bg, q); !errors.Is(err, ErrNoTenant) {
			t.Errorf("Exec(%q) without tenant: %v, want ErrNoTenant", q, err)
		}
		if _, err := p.QueryContext(bg, q); !errors.Is(err, ErrNoTenant) {
			t.Errorf("Query(%q) without tenant: %v, want ErrNoTenant", q, err)
		}
	}
	if _, err := p.BeginTx(bg, nil); !errors.Is(err, ErrNoTenant) {
		t.Errorf("BeginTx without tenant: %v, want ErrNoTenant", err)
	}
	if _, err := p.ExecContext(WithOrgID(bg, ""), `SELECT 1`); !errors.Is(err, ErrInvalidTenant) {
		t.Errorf("empty tenant: %v, want ErrInvalidTenant", err)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files created without a tenant: %v", files)
	}
}

func TestInvalidTenantIDs(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	bad := []string{
		"", "../x", "..", ".", "a/b", `a\b`, "a\x00b", ".hidden", "-flag", "_x", "%2e%2e", "a?b", "a#b", "a:b",
		"with space", " ", "ACME", "Acme", "acme.db", "a.b", "a;rm", "a$b", "a`b", "a*", "ａｃｍｅ", "аcme", // Cyrillic а
		strings.Repeat("a", MaxTenantIDLen+1), "con", "nul", "com1", "x\n",
	}
	for _, id := range bad {
		if err := ValidTenantID(id); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("ValidTenantID(%q) = %v, want ErrInvalidTenant", id, err)
		}
		if _, err := p.ExecContext(tctx(id), `CREATE TABLE t (a)`); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("Exec for %q: %v, want ErrInvalidTenant", id, err)
		}
		if _, err := p.QueryContext(tctx(id), `SELECT 1`); !errors.Is(err, ErrInvalidTenant) {
			t.Errorf("Query for %q: %v, want ErrInvalidTenant", id, err)
		}
	}
	if files := dbFiles(t, filepath.Dir(dir)); !slices.Equal(files, []string{filepath.Base(dir)}) {
		t.Errorf("files next to Dir: %v", files)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files created for invalid IDs: %v", files)
	}
	for _, id := range []string{"a", "0", "acme-corp", "org_42", strings.Repeat("z", MaxTenantIDLen), "9lives", "a-"} {
		if err := ValidTenantID(id); err != nil {
			t.Errorf("ValidTenantID(%q) = %v, want nil", id, err)
		}
	}
}

func FuzzTenantPath(f *testing.F) {
	for _, s := range []string{"acme", "../x", "a/b", "ACME", "a.db", "%2e", "-x", "a\x00", "con"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, id string) {
		if checkTenantID(id) != nil {
			return
		}
		p := filepath.Join(dir, id+tenantFileSuffix)
		if filepath.Dir(p) != dir || filepath.Base(p) != id+tenantFileSuffix {
			t.Fatalf("accepted ID %q maps to %q, outside %q", id, p, dir)
		}
		if got, ok := tenantIDFromFile(filepath.Base(p)); !ok || got != id {
			t.Fatalf("file of %q reads back as %q, %v", id, got, ok)
		}
		if strings.ToLower(id) != id {
			t.Fatalf("accepted ID %q has a case twin", id)
		}
	})
}

func TestExplicitCreate(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ExplicitCreate: true})
	if _, err := p.ExecContext(tctx("typo"), `CREATE TABLE t (a)`); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("unknown tenant with ExplicitCreate: %v, want ErrTenantNotFound", err)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files created: %v", files)
	}
}

func TestSymlinkTenantRefused(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside.db")
	if err := os.WriteFile(outside, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "evil.db")); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir})
	if _, err := p.ExecContext(tctx("evil"), `CREATE TABLE t (a)`); err == nil {
		t.Fatal("a tenant file that is a symlink was opened")
	}
	if fi, _ := os.Stat(outside); fi.Size() != 0 {
		t.Error("the symlink's target was written")
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	p := newTestProxy(t, Config{Dir: dir})
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700 | os.ModeDir, "acme.db": 0o600, "acme.db-wal": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%q mode %v, want %v", name, fi.Mode(), want)
		}
	}
}

func TestHardening(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `CREATE TABLE t (a); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	for _, q := range []string{
		`ATTACH '` + other + `' AS o`,
		`ATTACH 'file:` + other + `' AS o`,
		`VACUUM INTO '` + filepath.Join(dir, "copy.db") + `'`,
		`PRAGMA writable_schema = ON`,
		`PRAGMA journal_mode = DELETE`,
		`PRAGMA locking_mode = EXCLUSIVE`,
		`PRAGMA query_only = ON`,
		`SELECT load_extension('libevil')`,
		`DETACH main`,
	} {
		if _, err := p.ExecContext(ctx, q); err == nil {
			t.Errorf("%s: allowed", q)
		}
	}
	// Plain VACUUM and harmless pragmas still work.
	for _, q := range []string{`VACUUM`, `PRAGMA journal_mode`, `PRAGMA foreign_keys = ON`, `PRAGMA user_version = 3`} {
		if _, err := p.ExecContext(ctx, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	if files := dbFiles(t, dir); slices.Contains(files, "other.db") || slices.Contains(files, "copy.db") {
		t.Errorf("files created by denied statements: %v", files)
	}
}

func TestConcurrentWritersOneTenant(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable, `CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)`}})
	ctx := tctx("acme")
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if (w+i)%2 == 0 {
					if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', ?)`, i); err != nil {
						errs <- err
					}
					continue
				}
				// read-then-write transaction
				err := func() error {
					tx, err := p.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					defer tx.Rollback()
					var v int
					if err := tx.QueryRowContext(ctx, `SELECT v FROM counter WHERE id = 1`).Scan(&v); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `UPDATE counter SET v = ? WHERE id = 1`, v+1); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', ?)`, i); err != nil {
						return err
					}
					return tx.Commit()
				}()
				if err != nil {
					errs <- err
				}
			}
		})
		// concurrent readers
		wg.Go(func() {
			for range each {
				var n int
				if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("error under contention (want none, esp. no SQLITE_BUSY): %v", err)
	}
	if n := countRows(t, p, "acme"); n != workers*each {
		t.Errorf("rows = %d, want %d", n, workers*each)
	}
	var v int
	if err := p.QueryRowContext(ctx, `SELECT v FROM counter`).Scan(&v); err != nil || v != workers*each/2 {
		t.Errorf("counter = %d (%v), want %d: lost update", v, err, workers*each/2)
	}
}

func TestInsertReturning(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	countRows(t, p, "acme")
	for want := int64(1); want <= 3; want++ {
		var id int64
		if err := p.QueryRowContext(ctx, `INSERT INTO events (tenant) VALUES ('acme') RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		if id != want {
			t.Errorf("RETURNING id = %d, want %d", id, want)
		}
	}
	if n := countRows(t, p, "acme"); n != 3 {
		t.Errorf("rows = %d, want 3", n)
	}
}

func TestContextCancelInterruptsQuery(t *testing.T) {
	p := newTestProxy(t, Config{})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	slow := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c`
	for _, write := range []bool{false, true} {
		qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		start := time.Now()
		var err error
		if write {
			_, err = p.ExecContext(qctx, `INSERT INTO t `+slow[:len(slow)-len(" SELECT count(*) FROM c")]+` SELECT x FROM c`)
		} else {
			err = p.QueryRowContext(qctx, slow).Scan(new(int))
		}
		cancel()
		if err == nil {
			t.Fatalf("write=%v: endless statement returned no error", write)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("write=%v: cancel took %v", write, d)
		}
		// The tenant stays usable.
		if _, err := p.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
			t.Fatalf("after cancel: %v", err)
		}
	}
}

func TestCloseThenUse(t *testing.T) {
	dir := t.TempDir()
	p, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Conn(tctx("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("globex"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); !errors.Is(err, ErrClosed) {
		t.Errorf("sql.Conn after Close: %v, want ErrClosed", err)
	}
	c.Close()
	if _, err := p.Tenants(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Tenants after Close: %v, want ErrClosed", err)
	}
	if _, err := p.ExecContext(tctx("globex"), `SELECT 1`); err == nil {
		t.Error("Exec after Close succeeded")
	}
	if st := p.Stats(); st.OpenConnections != 0 {
		t.Errorf("open connections after Close: %d", st.OpenConnections)
	}
	assertNoOpenFiles(t, dir)
}

// TestPrepare_WriteWithReadersHeld: preparing a write does not need a
// reader. With every reader held by open Rows (the "iterate rows, write for
// each" loop, with a prepared INSERT as GORM's PrepareStmt makes), preparing
// on a reader would wait for one of those Rows; from several goroutines at
// once, each holding a reader, that waits forever.
func TestPrepare_WriteWithReadersHeld(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO items (v) VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	for range DefaultReadersPerTenant {
		rows, err := p.QueryContext(ctx, `SELECT id FROM items`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		rows.Next()
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.PrepareContext(wctx, `INSERT INTO items (v) VALUES (?)`)
	if err != nil {
		t.Fatalf("prepare with every reader held: %v", err)
	}
	defer st.Close()
	if _, err := st.ExecContext(wctx, 3); err != nil {
		t.Fatalf("exec: %v", err)
	}
}
