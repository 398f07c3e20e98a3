package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

func TestRouting_ExecQueryIsolation(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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

// A sql.Conn stays bound to the tenant of its first statement while it
// holds no connection of it (adv34): after a write whose wait for the
// writer failed (it had given its reader back), after a first statement
// that failed so (adv35) or found no tenant (ExplicitCreate), and after a
// Prepare of a tenant not open yet (nothing leased); and, as ever, after a
// write. A statement with another tenant's context then fails with
// ErrTenantMismatch and runs nowhere (it read and wrote the other tenant);
// one without a tenant runs on the bound one.
func TestRouting_ConnStaysBound(t *testing.T) {
	t.Parallel()
	holdWriter := func(t *testing.T, p *Proxy) {
		t.Helper()
		tx, err := p.BeginTx(tctx("acme"), nil) // another request holds acme's writer
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tx.Rollback() })
	}
	writeBehind := func(t *testing.T, c *sql.Conn) {
		t.Helper()
		short, cancel := context.WithTimeout(tctx("acme"), 50*time.Millisecond)
		defer cancel()
		if _, err := c.ExecContext(short, `INSERT INTO events (tenant) VALUES ('acme')`); err == nil {
			t.Fatal("a write behind another transaction succeeded")
		}
	}
	cases := []struct {
		name     string
		explicit bool                                      // Config.ExplicitCreate: c's tenant does not exist
		first    func(t *testing.T, p *Proxy, c *sql.Conn) // a statement that binds c and leaves nothing leased
	}{
		{"failed-upgrade", false, func(t *testing.T, p *Proxy, c *sql.Conn) {
			if err := c.QueryRowContext(tctx("acme"), `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			holdWriter(t, p)
			writeBehind(t, c)
		}},
		{"failed-first", false, func(t *testing.T, p *Proxy, c *sql.Conn) {
			holdWriter(t, p)
			writeBehind(t, c)
		}},
		{"not-found-first", true, func(t *testing.T, p *Proxy, c *sql.Conn) {
			if _, err := c.ExecContext(tctx("initech"), `INSERT INTO events (tenant) VALUES ('initech')`); !errors.Is(err, ErrTenantNotFound) {
				t.Fatalf("first statement for a tenant never created: %v, want ErrTenantNotFound", err)
			}
		}},
		{"write", false, func(t *testing.T, p *Proxy, c *sql.Conn) {
			if _, err := c.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
				t.Fatal(err)
			}
		}},
		{"prepare-unopened", false, func(t *testing.T, p *Proxy, c *sql.Conn) {
			st, err := c.PrepareContext(tctx("initech"), `SELECT count(*) FROM events`) // never opened
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, Config{Migrations: []string{eventsTable}, ExplicitCreate: tc.explicit})
			for _, id := range []string{"acme", "globex"} {
				if tc.explicit {
					if err := p.CreateTenant(context.Background(), id); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
					t.Fatal(err)
				}
			}
			c, err := p.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc.first(t, p, c)
			var got string
			if err := c.QueryRowContext(tctx("globex"), `SELECT tenant FROM events`).Scan(&got); !errors.Is(err, ErrTenantMismatch) {
				t.Errorf("query under globex on acme's sql.Conn: %q, %v; want ErrTenantMismatch", got, err)
			}
			if _, err := c.ExecContext(tctx("globex"), `INSERT INTO events (tenant) VALUES ('wrong')`); !errors.Is(err, ErrTenantMismatch) {
				t.Errorf("exec under globex on acme's sql.Conn: %v; want ErrTenantMismatch", err)
			}
			if tx, err := c.BeginTx(tctx("globex"), nil); !errors.Is(err, ErrTenantMismatch) {
				if err == nil {
					tx.Rollback()
				}
				t.Errorf("BeginTx under globex on acme's sql.Conn: %v; want ErrTenantMismatch", err)
			}
			var n int
			if err := c.QueryRowContext(context.Background(), `SELECT count(*) FROM events WHERE tenant = 'globex'`).Scan(&n); !tc.explicit && (err != nil || n != 0) {
				t.Errorf("a tenantless query on acme's sql.Conn: %d globex rows, %v; want it on acme (0)", n, err)
			}
			if err := c.PingContext(context.Background()); err != nil {
				t.Errorf("a tenantless Ping on a bound sql.Conn: %v", err)
			}
			c.Close()
			if n := countRows(t, p, "globex"); n != 1 {
				t.Errorf("globex has %d rows, want 1", n)
			}
		})
	}
}

func TestRouting_ReadOnlyTxOnReader(t *testing.T) {
	t.Parallel()
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

func TestInsertReturning(t *testing.T) {
	t.Parallel()
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
	// Serial: it times the cancellation.
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

// TestSessionFunctions_NeverWait: a read of last_insert_rowid(), changes()
// or total_changes() takes the writer only when it is free: while another
// checkout (here the caller's own transaction) holds it, it answers on a
// reader at once, as a second mattn connection would, instead of waiting
// for that transaction (a deadlock in one goroutine until BusyTimeout). On
// a sql.Conn that has only read, it stays on that reader: it does not take
// the writer for the rest of the Conn, shutting out the tenant's writes.
func TestSessionFunctions_NeverWait(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, BusyTimeout: time.Minute})
	insertN(t, p, "acme", 1)
	bounded := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(tctx("acme"), 5*time.Second)
	}
	ctx, cancel := bounded()
	defer cancel()
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SELECT total_changes()`, `SELECT changes()`, `SELECT last_insert_rowid()`} {
		var n int64
		if err := p.QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Errorf("%s while a transaction holds the writer: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel = bounded()
	defer cancel()
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var n int64
	if err := c.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRowContext(ctx, `SELECT changes()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Errorf("insert while a sql.Conn that only read is open: %v", err)
	}
}

// A read classified once for the whole process (another tenant ran the
// text against a table of its own) that a reader cannot compile for this
// tenant, because it names a TEMP table of the writer's session, runs on
// the writer as it does when unclassified: acme's read of its TEMP table
// failed with "no such table" only when bob had run the same text first.
func TestRouting_ClassifiedReadOfATempTable(t *testing.T) {
	t.Parallel()
	for _, otherFirst := range []bool{false, true} {
		p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
		if _, err := p.ExecContext(tctx("bob"), `CREATE TABLE scratch (x)`); err != nil {
			t.Fatal(err)
		}
		if otherFirst {
			if n := queryInt(t, p, tctx("bob"), `SELECT count(*) FROM scratch`); n != 0 {
				t.Fatalf("bob's scratch: %d rows", n)
			}
		}
		for _, q := range []string{`CREATE TEMP TABLE scratch (x)`, `INSERT INTO scratch VALUES (1)`} {
			if _, err := p.ExecContext(tctx("acme"), q); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 { // the second run meets this conn's own memory of the text
			if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM scratch`); n != 1 {
				t.Errorf("bob ran the text first %v: acme's TEMP table holds %d rows, want 1", otherFirst, n)
			}
		}
	}
}

// A PRAGMA that sets a connection's state, sent through Query (SQLite
// calls it read-only), ran on a reader: read back it said it took, while
// the writer wrote without it (a row breaking a foreign key was stored,
// where mattn refuses it). Reads of such settings, and of the TEMP schema,
// described a reader's session, not the writer's.
func TestQuery_SessionPragmasAndTempSchemaReachTheWriter(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{
		`CREATE TABLE parent (id INTEGER PRIMARY KEY)`,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id))`,
	}})
	ctx := tctx("acme")
	queryInt := func(q string) int {
		t.Helper()
		var v int
		if err := p.QueryRowContext(ctx, q).Scan(&v); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return v
	}
	set, err := p.QueryContext(ctx, `PRAGMA foreign_keys = ON`) // as an ORM's raw query might
	if err != nil {
		t.Fatal(err)
	}
	set.Close()
	if v := queryInt(`PRAGMA foreign_keys`); v != 1 {
		t.Errorf("PRAGMA foreign_keys after setting it through Query: %d, want 1", v)
	}
	if _, err := p.ExecContext(ctx, `INSERT INTO child (pid) VALUES (42)`); err == nil || !strings.Contains(err.Error(), "FOREIGN KEY constraint failed") {
		t.Errorf("a row breaking a foreign key after PRAGMA foreign_keys = ON through Query: %v, want FOREIGN KEY constraint failed", err)
	}
	if _, err := p.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
		t.Fatal(err)
	}
	if v := queryInt(`PRAGMA foreign_keys`); v != 0 {
		t.Errorf("PRAGMA foreign_keys after setting it off through Exec: %d, want 0", v)
	}
	if _, err := p.ExecContext(ctx, `CREATE TEMP TABLE scratch (x)`); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]int{
		`SELECT count(*) FROM sqlite_temp_master WHERE name = 'scratch'`: 1,
		`SELECT count(*) FROM temp.sqlite_master WHERE name = 'scratch'`: 1,
		`SELECT count(*) FROM pragma_table_info('scratch')`:              1,
		`SELECT count(*) FROM temp.scratch`:                              0,
	} {
		if v := queryInt(q); v != want {
			t.Errorf("%s with a TEMP table on the writer: %d, want %d", q, v, want)
		}
	}
	rows, err := p.QueryContext(ctx, `PRAGMA table_info(scratch)`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	if n != 1 {
		t.Errorf("PRAGMA table_info(scratch) of a TEMP table on the writer: %d columns, want 1", n)
	}
}

// SQLite applies some PRAGMA setters when it compiles them, EXPLAIN
// included: a Prepare of one while the writer was busy (compiled on a
// reader, never run) or an EXPLAIN of one through Query changed every later
// answer on that reader ('a' LIKE 'A' became false); in a read-only
// transaction on the writer, an Exec of EXPLAIN PRAGMA
// ignore_check_constraints = ON passed the read check and switched CHECK
// constraints off for the tenant.
func TestPragmaSettersAppliedAtCompileStayOffReaders(t *testing.T) {
	p := newTestProxy(t, Config{ReadersPerTenant: 1, Migrations: []string{`CREATE TABLE pos (x INTEGER CHECK (x > 0))`}})
	ctx := tctx("acme")
	likeMatches := func() int {
		t.Helper()
		var v int
		if err := p.QueryRowContext(ctx, `SELECT 'a' LIKE 'A'`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := likeMatches(); v != 1 {
		t.Fatalf("'a' LIKE 'A' before: %d", v)
	}
	tx, err := p.BeginTx(ctx, nil) // holds the writer: the Prepare below compiles on the reader
	if err != nil {
		t.Fatal(err)
	}
	// Refused since (it corrupted LIKE partial indexes), at Prepare or where
	// it would run: either way never applied on the reader.
	if st, err := p.PrepareContext(ctx, `PRAGMA case_sensitive_like = ON`); err == nil {
		st.Close() // never run
	}
	if rows, err := p.QueryContext(ctx, `EXPLAIN PRAGMA case_sensitive_like = ON`); err == nil {
		rows.Close()
	}
	if v := likeMatches(); v != 1 {
		t.Errorf("'a' LIKE 'A' on the reader after a Prepare and an EXPLAIN of PRAGMA case_sensitive_like = ON: %d, want 1", v)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	c, rtx := readOnlyTxOnWriter(t, p, `INSERT INTO pos (x) VALUES (1)`)
	if _, err := rtx.ExecContext(ctx, `EXPLAIN PRAGMA ignore_check_constraints = ON`); err == nil {
		t.Errorf("EXPLAIN of a PRAGMA setter in a read-only transaction: ran")
	}
	ps, err := rtx.PrepareContext(ctx, `SELECT count(*) FROM pos`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps.ExecContext(ctx); err != nil {
		t.Errorf("a prepared read through Exec in a read-only transaction on the writer: %v", err)
	}
	ps.Close()
	if err := rtx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, `INSERT INTO pos (x) VALUES (-5)`); err == nil || !strings.Contains(err.Error(), "CHECK constraint failed") {
		t.Errorf("a row breaking a CHECK constraint afterwards: %v, want CHECK constraint failed", err)
	}
}

// A read-only transaction refuses PRAGMA setters and pragma_optimize (an
// ANALYZE SQLite calls read-only) the same way wherever it runs: on the
// writer, Exec of SELECT * FROM pragma_optimize(...) passed the read check
// and wrote sqlite_stat1; on a reader a setter failed with a bare "not
// authorized". A Prepare the authorizer refuses for another reason (ATTACH)
// still fails at Prepare.
func TestReadOnlyTx_RefusesSettersAndOptimizeAlike(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE t (a INTEGER)`, `CREATE INDEX ta ON t (a)`}})
	ctx := tctx("acme")
	readOnly := func(err error) bool {
		var se sqlite3.Error
		return errors.As(err, &se) && se.Code == sqlite3.ErrReadonly
	}
	// On a reader.
	tx, err := p.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `PRAGMA cache_size = 100`); !readOnly(err) {
		t.Errorf("a PRAGMA setter through Exec in a read-only transaction on a reader: %v, want SQLITE_READONLY", err)
	}
	if _, err := tx.QueryContext(ctx, `PRAGMA foreign_keys = ON`); !readOnly(err) {
		t.Errorf("a PRAGMA setter through Query in a read-only transaction on a reader: %v, want SQLITE_READONLY", err)
	}
	if _, err := tx.ExecContext(ctx, `/* a read */ SELECT a = 1 FROM t`); err != nil {
		t.Errorf("a read after a comment in a read-only transaction: %v", err)
	}
	if _, err := tx.PrepareContext(ctx, `ATTACH 'x.db' AS x`); err == nil {
		t.Errorf("Prepare of ATTACH in a read-only transaction: no error")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// On the writer.
	c, rtx := readOnlyTxOnWriter(t, p, `INSERT INTO t (a) VALUES (1), (2)`)
	if _, err := rtx.ExecContext(ctx, `SELECT * FROM pragma_optimize(0x10002)`); !readOnly(err) {
		t.Errorf("pragma_optimize through Exec in a read-only transaction on the writer: %v, want SQLITE_READONLY", err)
	}
	if _, err := rtx.ExecContext(ctx, `PRAGMA cache_size = 100`); !readOnly(err) {
		t.Errorf("a PRAGMA setter in a read-only transaction on the writer: %v, want SQLITE_READONLY", err)
	}
	if err := rtx.Commit(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := c.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("sqlite_stat1 after a read-only transaction: %d (%v), want none", n, err)
	}
}

// readOnlyTxOnWriter returns a sql.Conn of tenant acme that ran write (so
// holds the writer, closed at the test's end) and a read-only transaction
// begun on it, which runs on that writer.
func readOnlyTxOnWriter(t *testing.T, p *Proxy, write string) (*sql.Conn, *sql.Tx) {
	t.Helper()
	ctx := tctx("acme")
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.ExecContext(ctx, write); err != nil {
		t.Fatal(err)
	}
	tx, err := c.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return c, tx
}
