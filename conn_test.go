package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// denyRollback makes every ROLLBACK prepared from now on, on the physical
// connection the checkout holds, fail as SQLite fails a statement its
// authorizer refuses: a real failed ROLLBACK that leaves the connection
// inside its transaction.
func denyRollback(t *testing.T, c *sql.Conn) {
	t.Helper()
	err := c.Raw(func(dc any) error {
		pc := dc.(*conn).pc
		if pc == nil {
			t.Fatal("the checkout holds no connection")
		}
		pc.c.RegisterAuthorizer(func(op int, a1, a2, a3 string) int {
			if op == sqlite3.SQLITE_TRANSACTION && strings.EqualFold(a1, "ROLLBACK") {
				return sqlite3.SQLITE_DENY
			}
			return tenantAuthorizer(op, a1, a2, a3)
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A ROLLBACK that fails when a checkout ends leaves its connection in an
// unknown state (still inside the transaction): the connection is closed,
// not handed to the next caller, and the next lease opens a fresh one
// (issue #13, item 4).
func TestConn_FailedRollbackAtCheckInClosesConnection(t *testing.T) {
	t.Run("Writer", func(t *testing.T) {
		t.Parallel()
		p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
		ctx := tctx("a")
		c, err := p.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, `BEGIN`); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('left in a transaction')`); err != nil {
			t.Fatal(err)
		}
		denyRollback(t, c)
		c.Close() // the checkout ends inside its transaction: ROLLBACK fails

		// The next write must commit on its own, not join the stale transaction.
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('next caller')`); err != nil {
			t.Fatal(err)
		}
		got := directRows(t, p, "a", `SELECT tenant FROM events ORDER BY id`)
		if len(got) != 1 || got[0] != "next caller" {
			t.Fatalf("a fresh connection sees %q, want only the next caller's committed row", got)
		}
		if st := p.Stats(); st.OpenConnections > p.Config().MaxConnections {
			t.Fatalf("stats: %+v", st)
		}
	})
	t.Run("Reader", func(t *testing.T) {
		t.Parallel()
		p := newTestProxy(t, Config{Migrations: []string{eventsTable}, ReadersPerTenant: 1})
		ctx := tctx("a")
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('before')`); err != nil {
			t.Fatal(err)
		}
		c, err := p.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := c.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		denyRollback(t, c)
		if err := tx.Rollback(); err == nil {
			t.Fatal("ROLLBACK succeeded: the fault was not injected")
		}
		c.Close()

		// The only reader must not serve the old snapshot of the failed transaction.
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
			t.Fatal(err)
		}
		if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("a read after the failed rollback sees %d rows, want 2 (a stale snapshot)", n)
		}
	})
}

// directRows runs query on tenant id's file through mattn directly and
// returns the first column of each row.
func directRows(t *testing.T, p *Proxy, id, query string) []string {
	t.Helper()
	return testkit.Strings(t, context.Background(), direct(t, p.Config().Dir, id), query)
}

// mattn's Stmt.Exec stops at the first row of a statement that returns rows
// and leaves it active; cached that way on the writer, it kept the implicit
// transaction open, and every later write on that writer stayed uncommitted.
//
// The scanner that tells such statements must read parameters as SQLite
// does: "$x(')" is one (a Tcl-style name), and a scanner that took its
// quote for a string's missed the RETURNING after it; "?1RETURNING" is ?1
// and RETURNING.
func TestConn_StmtExecOfRowReturningStatementCommits(t *testing.T) {
	for _, tt := range []struct {
		q    string
		args []any
	}{
		{`INSERT INTO events (tenant) VALUES ('r1'), ('r2') RETURNING id`, nil},
		{`INSERT INTO events (tenant) VALUES ($x(')), ('r2') RETURNING id`, []any{sql.Named("x(')", "r1")}},
		// ?1 and RETURNING with no blank between: two tokens for SQLite,
		// one word for a scanner that read ?'s digits as an identifier.
		{`INSERT INTO events (tenant) VALUES (?1), ('r2')RETURNING id`, []any{"r1"}},
		{`INSERT INTO events (tenant) SELECT 'r1' UNION ALL SELECT ?1RETURNING id`, []any{"r2"}},
		// A byte order mark before RETURNING is a blank to SQLite (adv49).
		{"INSERT INTO events (tenant) VALUES ('r1'), ('r2') \uFEFFRETURNING id", nil},
		{"INSERT INTO events (tenant) VALUES ('r1'), ('r2')\uFEFFRETURNING id", nil},
		{`SELECT tenant FROM events`, nil},
		{`WITH x AS (SELECT 1) SELECT * FROM x`, nil},
		{`VALUES (1), (2)`, nil},
		{`PRAGMA table_info(events)`, nil},
	} {
		q := tt.q
		t.Run(q, func(t *testing.T) {
			t.Parallel()
			p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
			ctx := tctx("a")
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('first')`); err != nil {
				t.Fatal(err)
			}
			st, err := p.PrepareContext(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.ExecContext(ctx, tt.args...); err != nil {
				t.Fatal(err)
			}
			// Another process writes: a statement left active on the
			// writer kept its snapshot, and every write of the writer
			// failed from then on ("database is locked").
			if _, err := direct(t, p.Config().Dir, "a").Exec(`INSERT INTO events (tenant) VALUES ('other')`); err != nil {
				t.Fatalf("another connection's write: %v", err)
			}
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
				t.Fatal(err)
			}
			got := directRows(t, p, "a", `SELECT tenant FROM events ORDER BY id`)
			want := []string{"first", "other", "after"}
			if strings.HasPrefix(q, "INSERT") {
				want = []string{"first", "r1", "r2", "other", "after"}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("a fresh connection sees %q, want %q (writes left uncommitted)", got, want)
			}
		})
	}
}

// TestPrepare_WriteWithReadersHeld: preparing a write does not need a
// reader. With every reader held by open Rows (the "iterate rows, write for
// each" loop, with a prepared INSERT as GORM's PrepareStmt makes), preparing
// on a reader would wait for one of those Rows; from several goroutines at
// once, each holding a reader, that waits forever.
func TestPrepare_WriteWithReadersHeld(t *testing.T) {
	t.Parallel()
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

// TestQuery_WriteWithReadersHeld: a write that returns rows, queried for
// the first time (its class not cached), goes to the writer without
// waiting for a reader to classify it on. Two goroutines each iterating
// rows (every reader held) and inserting with RETURNING for each row
// waited for each other's reader until BusyTimeout.
func TestQuery_WriteWithReadersHeld(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`},
		ReadersPerTenant: 2, BusyTimeout: 10 * time.Second})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO items (v) VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	held.Add(2)
	errs := make(chan error, 2)
	for g := range 2 {
		go func() {
			errs <- func() error {
				rows, err := p.QueryContext(ctx, `SELECT id FROM items WHERE id <= 2`)
				held.Done()
				if err != nil {
					return err
				}
				defer rows.Close()
				held.Wait() // both readers held
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				for rows.Next() {
					var id int64
					if err := p.QueryRowContext(wctx, `INSERT INTO items (v) VALUES (?) RETURNING id`, g).Scan(&id); err != nil {
						return fmt.Errorf("insert returning with every reader held: %w", err)
					}
				}
				return rows.Err()
			}()
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := queryInt(t, p, ctx, `SELECT count(*) FROM items`); got != 6 {
		t.Fatalf("%d rows, want 6", got)
	}
}

// TestPrepare_WriteWhileWriterHeld: preparing a write while another
// checkout holds the tenant's writer (a long transaction) does not wait for
// it. GORM's PrepareStmt prepares a text once for all tenants: a Prepare
// that waited made every tenant's first use of the text wait for one
// tenant's transaction, and fail with that tenant's timeout.
func TestPrepare_WriteWhileWriterHeld(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`}})
	ctx := tctx("acme")
	if got := queryInt(t, p, ctx, `SELECT count(*) FROM items`); got != 0 { // opens a reader
		t.Fatalf("%d rows, want 0", got)
	}
	long, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback()
	if _, err := long.ExecContext(ctx, `INSERT INTO items (v) VALUES ('long')`); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := p.PrepareContext(pctx, `INSERT INTO items (v) VALUES (?)`)
	if err != nil {
		t.Fatalf("prepare while the writer is held: %v", err)
	}
	defer st.Close()
	if err := long.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	if got := directRows(t, p, "acme", `SELECT v FROM items ORDER BY id`); !slices.Equal(got, []string{"long", "after"}) {
		t.Fatalf("rows %q, want long, after", got)
	}
}

// TestMayOpenTx: the texts that can leave a connection inside a
// transaction are recognised, however they are written; the usual
// one-statement texts are not (release skips SQLite's autocommit check
// for them).
func TestMayOpenTx(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want bool
	}{
		{`BEGIN`, true},
		{`begin immediate`, true},
		{"  \n\tBegin;", true},
		{`SAVEPOINT a`, true},
		{`savepoint "x y"`, true},
		{`-- comment
BEGIN`, true},
		{`/* c */ SAVEPOINT s`, true},
		{`SELECT 1; BEGIN`, true},
		{`INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)`, true},
		{`SELECT 1`, false},
		{`INSERT INTO t VALUES ('BEGIN')`, false},
		{`INSERT INTO t VALUES (';BEGIN')`, false},
		{`UPDATE t SET v = 1;`, false},
		{`SELECT 1;  -- trailing`, false},
		{`COMMIT`, false},
		{`ROLLBACK TO a`, false},
		{`RELEASE a`, false},
		{``, false},
		{`;`, false},
		{`-- only a comment`, false},
		{`(SELECT 1)`, false},
		{`BEGINNING`, false},
		// A byte order mark is a blank to SQLite where a token begins
		// (adv49: "\uFEFFBEGIN" went back to the pool inside its transaction).
		{"\uFEFFBEGIN", true},
		{" \uFEFFsavepoint s", true},
		{"SELECT 1;\uFEFFBEGIN", true},
		{"\uFEFFSELECT 1", false},
	} {
		if got := mayOpenTx(tc.q); got != tc.want {
			t.Errorf("mayOpenTx(%q) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

// TestConn_TextsLeavingATransactionAreRolledBack: every way a checkout can
// leave the writer inside a transaction, through the DB, a Conn or a Stmt,
// is rolled back at check-in, so the next caller's write commits on its
// own (release asks SQLite only after such texts).
func TestConn_TextsLeavingATransactionAreRolledBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, p *Proxy) error
	}{
		{"DB BEGIN", func(ctx context.Context, p *Proxy) error {
			_, err := p.ExecContext(ctx, `BEGIN; INSERT INTO events (tenant) VALUES ('uncommitted')`)
			return err
		}},
		{"DB SAVEPOINT", func(ctx context.Context, p *Proxy) error {
			_, err := p.ExecContext(ctx, `SAVEPOINT s; INSERT INTO events (tenant) VALUES ('uncommitted')`)
			return err
		}},
		{"DB byte order mark then BEGIN", func(ctx context.Context, p *Proxy) error {
			_, err := p.ExecContext(ctx, "\uFEFFBEGIN")
			return err
		}},
		{"DB query of byte order mark then SAVEPOINT", func(ctx context.Context, p *Proxy) error {
			rows, err := p.QueryContext(ctx, "\uFEFF\uFEFFSAVEPOINT s")
			if err != nil {
				return err
			}
			return rows.Close()
		}},
		{"DB comment then BEGIN", func(ctx context.Context, p *Proxy) error {
			_, err := p.ExecContext(ctx, "-- open it\nBEGIN IMMEDIATE; INSERT INTO events (tenant) VALUES ('uncommitted')")
			return err
		}},
		{"Conn BEGIN then insert", func(ctx context.Context, p *Proxy) error {
			c, err := p.Conn(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.ExecContext(ctx, `begin`); err != nil {
				return err
			}
			_, err = c.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('uncommitted')`)
			return err
		}},
		{"Conn query BEGIN", func(ctx context.Context, p *Proxy) error {
			c, err := p.Conn(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			rows, err := c.QueryContext(ctx, `SAVEPOINT q`)
			if err != nil {
				return err
			}
			rows.Close()
			_, err = c.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('uncommitted')`)
			return err
		}},
		{"Stmt BEGIN", func(ctx context.Context, p *Proxy) error {
			c, err := p.Conn(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := c.PrepareContext(ctx, `BEGIN`)
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.ExecContext(ctx); err != nil {
				return err
			}
			_, err = c.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('uncommitted')`)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
			ctx := tctx("a")
			if err := tc.run(ctx, p); err != nil {
				t.Fatal(err)
			}
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('next caller')`); err != nil {
				t.Fatal(err)
			}
			got := directRows(t, p, "a", `SELECT tenant FROM events ORDER BY id`)
			if len(got) != 1 || got[0] != "next caller" {
				t.Fatalf("the file holds %q, want only the next caller's committed row", got)
			}
		})
	}
}

// A Prepare with a tenant never waits on that tenant: GORM's PrepareStmt
// prepares each text once for every tenant and holds its statement cache
// locked meanwhile, so a Prepare that waited for acme's transaction (no
// reader of acme open, or none allowed) held up every tenant's queries and
// handed them acme's timeout; one that opened a tenant ran its first
// access (creation, migrations) under that lock. The statement is then
// compiled where it runs, and runs as it would have.
func TestPrepare_NeverWaitsOnTheTenant(t *testing.T) {
	t.Parallel()
	for _, readers := range []int{-1, 0} { // none allowed; the default, none open yet
		t.Run(fmt.Sprintf("readers=%d", readers), func(t *testing.T) {
			t.Parallel()
			p := newTestProxy(t, Config{ReadersPerTenant: readers, BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
			insertN(t, p, "globex", 1)
			tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`)
			defer tn.unpin()
			// Bounded: a Prepare that waits for the transaction, which
			// ends only after it, fails with the deadline.
			ctx, cancel := context.WithTimeout(tctx("acme"), 10*time.Second)
			defer cancel()
			ins, err := p.PrepareContext(ctx, `INSERT INTO events (tenant) VALUES (?)`)
			if err != nil {
				t.Fatalf("Prepare of a write while acme's writer is held: %v", err)
			}
			defer ins.Close()
			sel, err := p.PrepareContext(ctx, `SELECT count(*) FROM events WHERE tenant = ?`)
			if err != nil {
				t.Fatalf("Prepare of a read while acme's writer is held: %v", err)
			}
			defer sel.Close()
			// Another tenant runs them at once.
			if _, err := ins.ExecContext(tctx("globex"), "g"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := sel.QueryRowContext(tctx("globex"), "g").Scan(&n); err != nil || n != 1 {
				t.Fatalf("globex's count: %d, %v", n, err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if _, err := ins.ExecContext(tctx("acme"), "a"); err != nil {
				t.Fatal(err)
			}
			if err := sel.QueryRowContext(tctx("acme"), "a").Scan(&n); err != nil || n != 1 {
				t.Fatalf("acme's count: %d, %v", n, err)
			}
			// The argument count is still checked, at execution.
			if _, err := ins.ExecContext(tctx("acme"), "a", "b"); err == nil {
				t.Error("two arguments for one parameter: no error")
			}
		})
	}
}

// A Prepare for a tenant not yet open here does not open it (its first
// access may create it or run its migrations): the first execution does,
// with the errors of a first access.
func TestPrepare_DoesNotOpenTheTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ExplicitCreate: true, Migrations: []string{eventsTable}})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	st, err := p.PrepareContext(tctx("acme"), `INSERT INTO events (tenant) VALUES (?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n := p.Stats().OpenConnections; n != 0 {
		t.Fatalf("%d connections open after a Prepare", n)
	}
	if _, err := st.ExecContext(tctx("acme"), "a"); err != nil {
		t.Fatal(err)
	}
	nope, err := p.PrepareContext(tctx("nope"), `SELECT count(*) FROM events`)
	if err != nil {
		t.Fatalf("Prepare for a tenant that does not exist: %v", err)
	}
	defer nope.Close()
	if err := nope.QueryRowContext(tctx("nope")).Scan(new(int)); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("running it: %v, want ErrTenantNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nope.db")); !os.IsNotExist(err) {
		t.Fatalf("nope.db: %v", err)
	}
}

// A read that does not compile (a typo, a table not there) is answered
// with SQLite's error at once, as mattn does: it was retried on the writer
// (for TEMP objects of the writer's session), which waited behind another
// request's transaction for BusyTimeout and then said "database is
// locked"; on a sql.Conn the retry moved its lease to the writer and kept
// it, and the tenant's other writes waited for the idle Conn.
func TestRead_CompileErrorNeverWaitsForTheWriter(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	bounded := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(tctx("acme"), 10*time.Second) // a wait for the writer ends here
	}
	t.Run("writer held", func(t *testing.T) {
		tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`)
		defer tn.unpin()
		defer tx.Rollback()
		ctx, cancel := bounded()
		defer cancel()
		for _, q := range []string{`SELECT nosuchcol FROM events`, `SELECT * FROM nosuch`, `SELEC 1`} {
			err := p.QueryRowContext(ctx, q).Scan(new(int))
			if err == nil || errors.Is(err, context.DeadlineExceeded) || !compileErr(err) {
				t.Errorf("Query(%q): %v, want SQLite's compile error", q, err)
			}
			if _, err := p.PrepareContext(ctx, q); err == nil || !compileErr(err) {
				t.Errorf("Prepare(%q): %v, want SQLite's compile error", q, err)
			}
		}
	})
	for _, first := range []bool{true, false} {
		t.Run(fmt.Sprintf("sql.Conn, failing read first=%v", first), func(t *testing.T) {
			ctx, cancel := bounded()
			defer cancel()
			c, err := p.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !first {
				if err := c.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.QueryRowContext(ctx, `SELECT nosuchcol FROM events`).Scan(new(int)); err == nil || !compileErr(err) {
				t.Fatalf("the Conn's bad read: %v", err)
			}
			// Another request writes while the Conn sits idle.
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('other')`); err != nil {
				t.Fatalf("a write beside the idle Conn: %v", err)
			}
			if err := c.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
				t.Fatalf("the Conn afterwards: %v", err)
			}
		})
	}
	// A TEMP table of the writer's session is still found when the writer
	// is free.
	if _, err := p.ExecContext(tctx("acme"), `CREATE TEMP TABLE scratch (a)`); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM scratch`); n != 0 {
		t.Fatal(n)
	}
}

// PRAGMA optimize is read-only to SQLite but runs ANALYZE: through Query
// it went to a reader and failed "attempt to write a readonly database",
// for every tenant once the text was classified.
func TestQuery_PragmaOptimize(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable, `CREATE INDEX events_tenant ON events (tenant)`}})
	for _, id := range []string{"acme", "globex"} {
		insertN(t, p, id, 2)
		for _, q := range []string{`PRAGMA optimize`, `PRAGMA main.optimize`} {
			rows, err := p.QueryContext(tctx(id), q)
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			if err != nil {
				t.Errorf("%s: Query(%q): %v", id, q, err)
			}
		}
	}
}

// Once the writer's TEMP objects are dropped, a read that does not compile
// answers at once again: the flag that makes it wait for the writer stayed
// set (it was looked at only after a CREATE), and the query waited twice
// (classification, then execution) and said "database is locked".
func TestRead_CompileErrorAfterTempObjectsDropped(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	for _, q := range []string{`CREATE TEMP TABLE tt (a)`, `DROP TABLE temp.tt`} {
		if _, err := p.ExecContext(tctx("acme"), q); err != nil {
			t.Fatal(err)
		}
	}
	tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`)
	defer tn.unpin()
	defer tx.Rollback()
	if tn.writerTemp.Load() {
		t.Error("writerTemp set after the TEMP table was dropped")
	}
	ctx, cancel := context.WithTimeout(tctx("acme"), 10*time.Second)
	defer cancel()
	if err := p.QueryRowContext(ctx, `SELECT * FROM nosuch`).Scan(new(int)); err == nil || !compileErr(err) {
		t.Errorf("Query: %v, want SQLite's compile error", err)
	}
}

// A prepared statement of a text with no statement ("", a comment) runs as
// the conn's Exec and Query run it: mattn's Stmt crashed the process
// (SIGSEGV in sqlite3_reset).
func TestPrepare_EmptyText(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	for _, ctx := range []context.Context{tctx("acme"), context.Background()} {
		for _, q := range []string{"", "-- nightly", ";", " /* x */ ; "} {
			st, err := p.PrepareContext(ctx, q)
			if err != nil {
				t.Fatalf("Prepare(%q): %v", q, err)
			}
			if _, err := st.ExecContext(ctx); err != nil {
				t.Errorf("Exec of prepared %q: %v", q, err)
			}
			rows, err := st.QueryContext(ctx)
			if err != nil {
				t.Fatalf("Query of prepared %q: %v", q, err)
			}
			if rows.Next() {
				t.Errorf("prepared %q returned a row", q)
			}
			rows.Close()
			st.Close()
		}
	}
}
