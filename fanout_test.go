package sqliteproxy

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// seedTenants makes, in dir, a tenant per entry of counts with that many
// events (n = 1, 2, ...), through a Proxy that it closes: the tenants are
// closed afterwards, as in a fleet nobody has open.
func seedTenants(t *testing.T, dir string, migs []string, counts map[string]int) {
	t.Helper()
	p, err := New(Config{Dir: dir, Migrations: migs})
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range counts {
		if err := p.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant, n) VALUES (?, ?)`, id, i+1); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// fanRow is one row of "SELECT count(*) AS n FROM events" fanned out.
type fanRow struct {
	Tenant string
	N      int
}

// fanCounts runs the count query with ctx and returns its rows.
func fanCounts(t *testing.T, db interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, ctx context.Context) ([]fanRow, error) {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT count(*) AS n FROM events`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []fanRow
	for rows.Next() {
		var r fanRow
		if err := rows.Scan(&r.Tenant, &r.N); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// assertNoLeases fails unless no tenant connection is leased and only the
// tenants of want are open.
func assertNoLeases(t *testing.T, p *Proxy, want ...string) {
	t.Helper()
	st := p.Stats()
	var open []string
	for _, ts := range st.Tenants {
		open = append(open, ts.ID)
		if ts.InUse != 0 {
			t.Errorf("tenant %s: %d connections still leased", ts.ID, ts.InUse)
		}
	}
	if !slices.Equal(open, want) {
		t.Errorf("open tenants = %v, want %v", open, want)
	}
}

func TestFanOut_Count(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"globex": 2, "acme": 3, "empty": 0, "initech": 1})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	countRows(t, p, "initech") // open: read on its reader, the others on their own connections

	got, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	want := []fanRow{{"acme", 3}, {"empty", 0}, {"globex", 2}, {"initech", 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	assertNoLeases(t, p, "initech")

	t.Run("RowsTogetherTenantWithoutRows", func(t *testing.T) {
		rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{Concurrency: 2}), `SELECT n FROM events ORDER BY n`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var id string
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%s:%d", id, n))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		want := []string{"acme:1", "acme:2", "acme:3", "globex:1", "globex:2", "initech:1"}
		if !slices.Equal(got, want) {
			t.Errorf("rows = %v, want %v", got, want)
		}
	})

	t.Run("ColumnTypes", func(t *testing.T) {
		type col struct {
			Name, DB string
			Scan     string
			Nullable bool
			NullOK   bool
		}
		types := func(ctx context.Context) []col {
			t.Helper()
			rows, err := p.QueryContext(ctx, `SELECT id, tenant AS who, n, count(*) OVER () AS c, NULL AS x FROM events`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			cts, err := rows.ColumnTypes()
			if err != nil {
				t.Fatal(err)
			}
			var out []col
			for _, ct := range cts {
				n, ok := ct.Nullable()
				out = append(out, col{ct.Name(), ct.DatabaseTypeName(), ct.ScanType().String(), n, ok})
			}
			return out
		}
		single := types(tctx("acme"))
		fanned := types(WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"acme", "globex"}}))
		want := append([]col{{"tenant", "TEXT", "string", false, true}}, single...)
		if diff := cmp.Diff(want, fanned); diff != "" {
			t.Errorf("column types (-want +got):\n%s", diff)
		}
	})

	t.Run("QueryRow", func(t *testing.T) {
		var r fanRow
		if err := p.QueryRowContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT count(*) FROM events`).Scan(&r.Tenant, &r.N); err != nil {
			t.Fatal(err)
		}
		if r != (fanRow{"acme", 3}) {
			t.Errorf("first row = %+v", r)
		}
		assertNoLeases(t, p, "acme", "initech") // acme: opened by ColumnTypes
	})

	t.Run("Args", func(t *testing.T) {
		rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}),
			`SELECT count(*) FROM events WHERE n >= ? AND tenant <> :skip`, 2, sql.Named("skip", "globex"))
		if err != nil {
			t.Fatal(err)
		}
		var got []fanRow
		for rows.Next() {
			var r fanRow
			rows.Scan(&r.Tenant, &r.N)
			got = append(got, r)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]fanRow{{"acme", 2}, {"empty", 0}, {"globex", 0}, {"initech", 0}}, got); diff != "" {
			t.Errorf("rows (-want +got):\n%s", diff)
		}
	})
}

// A result with a column of its own named tenant (any case) is refused:
// scanned by name into a struct (sqlx), the tenant field took the later
// column, and a row of acme holding tenant = 'globex' came back as
// globex's. Aliased, it reads.
func TestFanOut_TenantColumnRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 1, "globex": 0})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	if _, err := p.ExecContext(tctx("acme"), `UPDATE events SET tenant = 'globex'`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SELECT tenant, n FROM events`, `SELECT * FROM events`, `SELECT n AS Tenant FROM events`} {
		for _, opts := range []FanOutOptions{{}, {SkipErrors: true}, {Tenants: []string{"globex"}}} {
			// globex alone has no rows: its columns still count.
			rows, err := p.QueryContext(WithFanOut(context.Background(), opts), q)
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			if err == nil || !strings.Contains(err.Error(), "alias it") {
				t.Errorf("%s %+v: err = %v, want a refusal of the tenant column", q, opts, err)
			}
		}
	}
	got, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]fanRow{{"acme", 1}, {"globex", 0}}, got); diff != "" {
		t.Errorf("count (-want +got):\n%s", diff)
	}
	var who, label string
	if err := p.QueryRowContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT tenant AS stored FROM events`).Scan(&label, &who); err != nil || label != "acme" || who != "globex" {
		t.Errorf("aliased: %q %q %v, want acme globex", label, who, err)
	}
}

func TestFanOut_Tenants(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"a1": 1, "b2": 2, "c3": 3})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})

	t.Run("SortedOnce", func(t *testing.T) {
		got, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"c3", "a1", "c3"}}))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]fanRow{{"a1", 1}, {"c3", 3}}, got); diff != "" {
			t.Errorf("rows (-want +got):\n%s", diff)
		}
	})
	t.Run("None", func(t *testing.T) {
		got, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{Tenants: []string{}}))
		if err != nil || len(got) != 0 {
			t.Errorf("rows = %v, %v; want none", got, err)
		}
	})
	t.Run("MissingFails", func(t *testing.T) {
		_, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"a1", "nope", "zz-invalid-\x00"}}))
		var fe *FanOutError
		if !errors.As(err, &fe) || fe.Tenant != "nope" || !errors.Is(err, ErrTenantNotFound) || !strings.Contains(err.Error(), `"nope"`) {
			t.Fatalf("err = %v, want a *FanOutError naming nope, ErrTenantNotFound", err)
		}
		if want := `sqliteproxy: fan-out: tenant "nope": tenant not found`; err.Error() != want {
			t.Errorf("err = %q, want %q (the operation and tenant said once)", err, want)
		}
		if _, err := os.Lstat(filepath.Join(dir, "nope.db")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("nope.db: %v; a fan-out must not create a tenant", err)
		}
	})
	t.Run("MissingSkipped", func(t *testing.T) {
		var skipped []string
		opts := FanOutOptions{Tenants: []string{"c3", "nope", "a1", "Bad"}, SkipErrors: true, OnSkip: func(id string, err error) {
			var fe *FanOutError
			if !errors.As(err, &fe) || fe.Tenant != id {
				t.Errorf("OnSkip(%s, %v): not a *FanOutError naming it", id, err)
			}
			skipped = append(skipped, id)
		}}
		got, err := fanCounts(t, p, WithFanOut(context.Background(), opts))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]fanRow{{"a1", 1}, {"c3", 3}}, got); diff != "" {
			t.Errorf("rows (-want +got):\n%s", diff)
		}
		if want := []string{"Bad", "nope"}; !slices.Equal(skipped, want) {
			t.Errorf("skipped %v, want %v", skipped, want)
		}
		if got := dbFiles(t, dir); !slices.Equal(got, []string{"a1.db", "b2.db", "c3.db"}) {
			t.Errorf("files = %v", got)
		}
	})
	t.Run("AllSkipped", func(t *testing.T) {
		rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{SkipErrors: true}), `SELECT * FROM no_such_table`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		if cols, err := rows.Columns(); err != nil || !slices.Equal(cols, []string{"tenant"}) {
			t.Errorf("columns = %v, %v", cols, err)
		}
		if rows.Next() {
			t.Error("a row from no tenant")
		}
		if err := rows.Err(); err != nil {
			t.Error(err)
		}
	})
	assertNoLeases(t, p)
}

// A tenant deleted after a fan-out over every tenant listed it, before its
// turn, is left out: it failed the query with ErrTenantNotFound (a
// fan-out during routine tenant deletion failed at random). A tenant named
// in Tenants still must exist (MissingFails).
func TestFanOut_TenantDeletedMeanwhile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"a1": 2, "b2": 2, "c3": 3})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprint("open=", open), func(t *testing.T) {
			if err := p.CreateTenant(context.Background(), "b2"); err != nil && !errors.Is(err, ErrTenantExists) {
				t.Fatal(err)
			}
			if open {
				if _, err := p.ExecContext(tctx("b2"), `INSERT INTO events (tenant, n) VALUES ('b2', 1)`); err != nil {
					t.Fatal(err)
				}
			}
			// One tenant at a time: b2 is not read before a1's rows are.
			rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{Concurrency: 1}), `SELECT n FROM events ORDER BY n`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var got []string
			for rows.Next() {
				var id string
				var n int
				if err := rows.Scan(&id, &n); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprint(id, ":", n))
				if len(got) == 1 {
					if err := p.DeleteTenant(context.Background(), "b2"); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("fan-out with a tenant deleted meanwhile: %v", err)
			}
			if want := []string{"a1:1", "a1:2", "c3:1", "c3:2", "c3:3"}; !slices.Equal(got, want) {
				t.Errorf("rows = %v, want %v", got, want)
			}
		})
	}
	assertNoLeases(t, p)
}

func TestFanOut_ReadOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 1, "globex": 1})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	countRows(t, p, "acme") // one open, one closed
	fan := WithFanOut(context.Background(), FanOutOptions{SkipErrors: true})

	for _, q := range []string{
		`INSERT INTO events (tenant) VALUES ('x') RETURNING id`,
		`WITH v(x) AS (SELECT 1) INSERT INTO events (tenant) SELECT 'x' FROM v RETURNING id`,
		`SELECT 1; DELETE FROM events`,
		`PRAGMA user_version = 7`,
		`PRAGMA journal_mode = DELETE`, // refused by each tenant's authorizer: SkipErrors skipped them all
		`BEGIN`,
		// Setters SQLite takes for read-only: they stayed on the open
		// tenant's reader.
		`PRAGMA case_sensitive_like = 1`,
		`PRAGMA cache_size(1)`,
		`PRAGMA main.foreign_keys = 0`,
		`PRAGMA busy_timeout = 0`,
		`PRAGMA optimize`,
		`PRAGMA shrink_memory`,
	} {
		rows, err := p.QueryContext(fan, q)
		if err == nil {
			rows.Close()
		}
		if !errors.Is(err, ErrFanOutWrite) {
			t.Errorf("Query(%q) = %v, want ErrFanOutWrite", q, err)
		}
	}
	// Pragmas that read still fan out.
	for _, q := range []string{`PRAGMA table_info(events)`, `PRAGMA user_version`, `SELECT * FROM pragma_table_info('events')`,
		`PRAGMA main.table_xinfo(events)`, `PRAGMA quick_check(1)`, `PRAGMA foreign_keys`} {
		rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), q)
		if err != nil {
			t.Errorf("Query(%q): %v", q, err)
			continue
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil || n == 0 {
			t.Errorf("Query(%q): %d rows, %v", q, n, err)
		}
		rows.Close()
	}
	// A text that does not parse gets SQLite's own error, not a refusal
	// for writing; nothing runs.
	for q, want := range map[string]string{
		`SELEC 1`:            "syntax error",
		`DELETE FROM`:        "incomplete input",
		``:                   "no statement",
		`  -- only a remark`: "no statement",
	} {
		rows, err := p.QueryContext(fan, q)
		if err == nil {
			rows.Close()
		}
		if err == nil || errors.Is(err, ErrFanOutWrite) || !strings.Contains(err.Error(), want) {
			t.Errorf("Query(%q) = %v, want an error saying %q", q, err, want)
		}
	}
	if _, err := p.ExecContext(fan, `DELETE FROM events`); !errors.Is(err, ErrFanOutWrite) {
		t.Errorf("Exec: %v, want ErrFanOutWrite", err)
	}
	if _, err := p.BeginTx(fan, &sql.TxOptions{ReadOnly: true}); !errors.Is(err, ErrFanOutWrite) {
		t.Errorf("BeginTx: %v, want ErrFanOutWrite", err)
	}
	st, err := p.PrepareContext(fan, `DELETE FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(fan); !errors.Is(err, ErrFanOutWrite) {
		t.Errorf("Stmt.Exec: %v, want ErrFanOutWrite", err)
	}
	st.Close()

	t.Run("InTx", func(t *testing.T) {
		tx, err := p.BeginTx(tctx("acme"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.QueryContext(fan, `SELECT count(*) FROM events`); !errors.Is(err, ErrTenantMismatch) {
			t.Errorf("fan-out in a Tx: %v, want ErrTenantMismatch", err)
		}
		if _, err := tx.ExecContext(fan, `DELETE FROM events`); !errors.Is(err, ErrTenantMismatch) {
			t.Errorf("fan-out Exec in a Tx: %v, want ErrTenantMismatch", err)
		}
	})
	t.Run("InConn", func(t *testing.T) {
		c, err := p.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		queryInt(t, c, tctx("globex"), `SELECT count(*) FROM events`)
		if _, err := c.QueryContext(fan, `SELECT count(*) FROM events`); !errors.Is(err, ErrTenantMismatch) {
			t.Errorf("fan-out on a sql.Conn bound to globex: %v, want ErrTenantMismatch", err)
		}
	})
	for _, id := range []string{"acme", "globex"} {
		if n := countRows(t, p, id); n != 1 {
			t.Errorf("%s has %d events, want 1: something ran", id, n)
		}
	}
	if v := queryInt(t, p, tctx("globex"), `PRAGMA user_version`); v != 0 {
		t.Errorf("user_version = %d", v)
	}
	// LIKE on the open tenant is as it was: case-insensitive.
	if v := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM events WHERE tenant LIKE 'ACME'`); v != 1 {
		t.Errorf("LIKE on acme after the fan-outs matches %d rows, want 1", v)
	}
}

func TestFanOut_Prepared(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 2, "globex": 1})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	fan := WithFanOut(context.Background(), FanOutOptions{})
	for _, prepCtx := range []context.Context{fan, tctx("acme"), context.Background()} {
		st, err := p.PrepareContext(prepCtx, `SELECT count(*) FROM events WHERE n >= ?`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fanCounts(t, stmtQueryer{st, 1}, fan)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]fanRow{{"acme", 2}, {"globex", 1}}, got); diff != "" {
			t.Errorf("rows (-want +got):\n%s", diff)
		}
		var r fanRow
		if err := st.QueryRowContext(fan, 2).Scan(&r.Tenant, &r.N); err != nil || r != (fanRow{"acme", 1}) {
			t.Errorf("QueryRow = %+v, %v", r, err)
		}
		if _, err := st.QueryContext(fan); err == nil || !strings.Contains(err.Error(), "expected 1 arguments, got 0") {
			t.Errorf("wrong argument count: %v", err)
		}
		// The same statement still serves single tenants.
		if n := queryInt(t, stmtQueryer{st, 1}, tctx("acme"), ``); n != 2 {
			t.Errorf("single-tenant count = %d", n)
		}
		st.Close()
	}
	assertNoLeases(t, p, "acme")
}

// stmtQueryer adapts a *sql.Stmt with fixed arguments to the helpers.
type stmtQueryer struct {
	st  *sql.Stmt
	arg any
}

func (s stmtQueryer) QueryContext(ctx context.Context, _ string, _ ...any) (*sql.Rows, error) {
	return s.st.QueryContext(ctx, s.arg)
}

func (s stmtQueryer) QueryRowContext(ctx context.Context, _ string, _ ...any) *sql.Row {
	return s.st.QueryRowContext(ctx, s.arg)
}

// fanOutDriverRows runs query as a fan-out on a routing conn of p
// directly, for tests that look inside the rows.
func fanOutDriverRows(t *testing.T, p *Proxy, opts FanOutOptions, query string) *fanOutRows {
	t.Helper()
	dc, err := p.c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	rs, err := dc.(*conn).QueryContext(WithFanOut(context.Background(), opts), query, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rs.(*fanOutRows)
}

// TestFanOut_Bounded: a consumer that stops reading stops the fan-out
// with Concurrency tenants read ahead and their buffers full, and closing
// the rows gives every connection back and closes the tenants the fan-out
// opened, whichever way it read them.
func TestFanOut_Bounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	counts := map[string]int{}
	for i := range 8 {
		counts[fmt.Sprintf("t%d", i)] = 3 * fanOutRowBuffer
	}
	seedTenants(t, dir, migs, counts)
	// t0 has a -wal file (another process might have it open): it is read
	// through its pool, opened for the fan-out, then closed, also when the
	// rows are closed while it is being read.
	other := direct(t, dir, "t0")
	if _, err := other.Exec(`SELECT count(*) FROM events`); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "t0.db-wal")); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, MaxConnections: 10})
	countRows(t, p, "t1") // open before: stays open

	for _, stopAt := range []int{0, 5 * 3 * fanOutRowBuffer / 2} {
		rs := fanOutDriverRows(t, p, FanOutOptions{Concurrency: 2}, `SELECT n FROM events`)
		dest := make([]driver.Value, 2)
		for range stopAt + 1 {
			if err := rs.Next(dest); err != nil {
				t.Fatal(err)
			}
		}
		run := rs.run
		waitFor(t, 10*time.Second, "both workers to fill their buffers", func() bool {
			run.mu.Lock()
			defer run.mu.Unlock()
			full := 0
			for _, s := range run.slots {
				if s != nil && len(s.rows) == cap(s.rows) {
					full++
				}
			}
			return full == 2
		})
		if st := p.Stats(); stopAt == 0 && (len(st.Tenants) != 2 || st.Tenants[0].InUse != 1 || st.Tenants[1].InUse != 1) {
			// t0, opened for the fan-out (its -wal file sends it
			// through its pool), and t1, open before, each with one
			// reader leased; no third tenant is read
			t.Errorf("while stalled: %+v", st)
		}
		if n := run.next.Load(); n != int64(rs.pos+2) {
			t.Errorf("tenants taken = %d with the reader at %d; want Concurrency (2) ahead", n, rs.pos)
		}
		if err := rs.Close(); err != nil {
			t.Fatal(err)
		}
		assertNoLeases(t, p, "t1")
	}
	// Read to the end: the same rows as one query per tenant.
	rs := fanOutDriverRows(t, p, FanOutOptions{Concurrency: 3}, `SELECT n FROM events`)
	var n int
	dest := make([]driver.Value, 2)
	for {
		err := rs.Next(dest)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("t%d", n/(3*fanOutRowBuffer)); dest[0] != want || dest[1] != int64(n%(3*fanOutRowBuffer)+1) {
			t.Fatalf("row %d = %v, want %s, %d", n, dest, want, n%(3*fanOutRowBuffer)+1)
		}
		n++
	}
	rs.Close()
	if n != 8*3*fanOutRowBuffer {
		t.Errorf("%d rows", n)
	}
	assertNoLeases(t, p, "t1")
}

func TestFanOut_Cancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	counts := map[string]int{}
	for i := range 6 {
		counts[fmt.Sprintf("t%d", i)] = 2 * fanOutRowBuffer
	}
	seedTenants(t, dir, migs, counts)
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	ctx, cancel := context.WithCancel(WithFanOut(context.Background(), FanOutOptions{Concurrency: 2}))
	rows, err := p.QueryContext(ctx, `SELECT n FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatal(rows.Err())
	}
	cancel()
	for rows.Next() {
	}
	if err := rows.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err = %v, want context.Canceled", err)
	}
	rows.Close()
	waitFor(t, 10*time.Second, "the fan-out to give its connections back", func() bool {
		return p.Stats().OpenConnections == 0
	})
	assertNoLeases(t, p)
}

// TestFanOut_Budget: with a small budget, a fan-out waits for slots or
// evicts idle tenants, never one in use, and never passes the cap.
func TestFanOut_Budget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	counts := map[string]int{"busy": 1}
	for i := range 12 {
		counts[fmt.Sprintf("t%02d", i)] = i
	}
	seedTenants(t, dir, migs, counts)
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, MaxConnections: 4})
	tx, err := p.BeginTx(tctx("busy"), nil) // holds busy's writer throughout
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatal(err)
	}
	countRows(t, p, "t03") // open and idle: may be evicted

	var maxOpen int
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{Concurrency: 10, Tenants: slices.DeleteFunc(slices.Collect(maps.Keys(counts)), func(s string) bool { return s == "busy" })}),
		`SELECT count(*) FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	var got []fanRow
	for rows.Next() {
		var r fanRow
		rows.Scan(&r.Tenant, &r.N)
		got = append(got, r)
		maxOpen = max(maxOpen, p.Stats().OpenConnections)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(got) != 12 || got[11] != (fanRow{"t11", 11}) {
		t.Errorf("rows = %v", got)
	}
	if maxOpen > 4 {
		t.Errorf("%d connections open, cap 4", maxOpen)
	}
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatalf("the busy tenant's transaction broke: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "busy"); n != 3 {
		t.Errorf("busy has %d events, want 3", n)
	}
}

// TestFanOut_Migrations: a closed tenant behind the configured migrations
// is migrated first in MigrateAuto (as any first access would) and is an
// error in MigrateCheck; a drifted one is an error.
func TestFanOut_Migrations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{eventsTable}
	v2 := []string{eventsTable, `ALTER TABLE events ADD COLUMN note TEXT NOT NULL DEFAULT 'v2'`}
	seedTenants(t, dir, v1, map[string]int{"old": 1})
	seedTenants(t, dir, v2, map[string]int{"new": 2})

	check := newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateCheck})
	_, err := fanCounts(t, check, WithFanOut(context.Background(), FanOutOptions{}))
	var fe *FanOutError
	if !errors.As(err, &fe) || fe.Tenant != "old" || !errors.Is(err, ErrPendingMigrations) {
		t.Errorf("MigrateCheck: %v, want old's ErrPendingMigrations", err)
	}
	drift := newTestProxy(t, Config{Dir: dir, Migrations: v1, MigrationMode: MigrateCheck})
	if _, err := fanCounts(t, drift, WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"new"}})); !errors.Is(err, ErrMigrationDrift) {
		t.Errorf("drift: %v, want ErrMigrationDrift", err)
	}

	// MigrateManual serves a tenant that is behind as it is, closed or open.
	manual := newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateManual})
	got, err := fanCounts(t, manual, WithFanOut(context.Background(), FanOutOptions{}))
	if want := []fanRow{{"new", 2}, {"old", 1}}; err != nil || !slices.Equal(got, want) {
		t.Errorf("MigrateManual: %v, %v; want %v", got, err, want)
	}
	manual.Close()

	auto := newTestProxy(t, Config{Dir: dir, Migrations: v2})
	rows, err := auto.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT note, count(*) FROM events GROUP BY note`)
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	for rows.Next() {
		var id, note string
		var n int
		rows.Scan(&id, &note, &n)
		notes = append(notes, fmt.Sprintf("%s:%s:%d", id, note, n))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if want := []string{"new:v2:2", "old:v2:1"}; !slices.Equal(notes, want) {
		t.Errorf("rows = %v, want %v", notes, want)
	}
	assertNoLeases(t, auto)
}

// TestFanOut_WhileWriting: fan-outs and writes to the same tenants, open
// and closed, at once: every fan-out sees each tenant's count at some
// moment, nothing fails, nothing stays leased.
func TestFanOut_WhileWriting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	counts := map[string]int{}
	for i := range 6 {
		counts[fmt.Sprintf("t%d", i)] = 1
	}
	seedTenants(t, dir, migs, counts)
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, MaxConnections: 8, IdleTimeout: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	const writes = 40
	for i := range 3 {
		id := fmt.Sprintf("t%d", i*2)
		wg.Go(func() {
			for range writes {
				if _, err := p.ExecContext(WithOrgID(ctx, id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 10 {
				got, err := fanCounts(t, p, WithFanOut(ctx, FanOutOptions{Concurrency: 3}))
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) != 6 {
					t.Errorf("rows = %v", got)
				}
				for _, r := range got {
					if r.N < 1 || r.N > writes+1 {
						t.Errorf("count %+v", r)
					}
				}
			}
		})
	}
	wg.Wait()
	for i := range 3 {
		if n := countRows(t, p, fmt.Sprintf("t%d", i*2)); n != writes+1 {
			t.Errorf("t%d: %d events", i*2, n)
		}
	}
	waitFor(t, 10*time.Second, "no leases", func() bool {
		for _, ts := range p.Stats().Tenants {
			if ts.InUse != 0 {
				return false
			}
		}
		return true
	})
}

func TestFanOut_Telemetry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 1, "globex": 2})
	spans := tracetest.NewSpanRecorder()
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	_, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"globex", "acme", "nope"}, SkipErrors: true}))
	if err != nil {
		t.Fatal(err)
	}
	var parent sdktrace.ReadOnlySpan
	children := map[string]string{} // tenant -> status
	for _, s := range spans.Ended() {
		if s.Name() == spanFanOut {
			if parent != nil {
				t.Error("two fan-out spans")
			}
			parent = s
		}
	}
	if parent == nil {
		t.Fatal("no fan-out span")
	}
	for _, s := range spans.Ended() {
		if s.Name() != spanFanOutTenant {
			continue
		}
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("tenant span %v is not a child of the fan-out span", s.Attributes())
		}
		for _, kv := range s.Attributes() {
			if kv.Key == attrTenant {
				children[kv.Value.AsString()] = s.Status().Code.String()
			}
		}
	}
	want := map[string]string{"acme": "Unset", "globex": "Unset", "nope": "Error"}
	if diff := cmp.Diff(want, children); diff != "" {
		t.Errorf("tenant spans (-want +got):\n%s", diff)
	}
}

func TestFanOut_OrgIDOverrides(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 1, "globex": 2})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	fan := WithFanOut(tctx("acme"), FanOutOptions{})
	if _, ok := OrgID(fan); ok {
		t.Error("OrgID found a tenant in a fan-out context")
	}
	if got, err := fanCounts(t, p, fan); err != nil || len(got) != 2 {
		t.Errorf("fan-out over WithOrgID: %v, %v", got, err)
	}
	if n := queryInt(t, p, WithOrgID(fan, "globex"), `SELECT count(*) FROM events`); n != 2 {
		t.Errorf("WithOrgID over a fan-out: %d", n)
	}
}

// Every tenant's rows go under one header. A tenant whose result has
// other columns (here one that rebuilt its own table with a forged tenant
// column) is that tenant's failure, skipped with SkipErrors: its values
// never appear under another tenant's names, and a shorter row never keeps
// the last values of the row before it (they were another tenant's).
func TestFanOut_SameColumnsFromEveryTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	for _, id := range []string{"a-victim", "b-attacker", "c-victim"} {
		schema := `CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)`
		if id == "b-attacker" {
			schema = `CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, tenant TEXT, approved TEXT)`
		}
		if _, err := p.ExecContext(tctx(id), schema); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			q, args := `INSERT INTO notes (body) VALUES (?)`, []any{fmt.Sprintf("%s-%d", id, i)}
			if id == "b-attacker" {
				q = `INSERT INTO notes (body, tenant, approved) VALUES (?, 'a-victim', 'FORGED')`
			}
			if _, err := p.ExecContext(tctx(id), q, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, conc := range []int{1, 3, 3, 3, 3, 3, 3, 3, 3, 3} {
		var skipped []string
		ctx := WithFanOut(context.Background(), FanOutOptions{Concurrency: conc, SkipErrors: true,
			OnSkip: func(id string, err error) { skipped = append(skipped, id+": "+err.Error()) }})
		rows, err := p.QueryContext(ctx, `SELECT * FROM notes`)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			n++
			if vals[0] == "b-attacker" {
				continue // its own values, under its own name
			}
			for _, v := range vals[1:] {
				if s, ok := v.(string); ok && !strings.HasPrefix(s, vals[0].(string)) {
					t.Errorf("concurrency %d: row of %v holds %q", conc, vals[0], s)
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		// The header is the first tenant's in ID order (a-victim), whichever
		// answered first: the attacker's table is the odd one, always.
		if n != 4 || len(skipped) != 1 || !strings.HasPrefix(skipped[0], "b-attacker: ") {
			t.Errorf("concurrency %d: %d rows, skipped %q", conc, n, skipped)
		}
		for _, s := range skipped {
			if !strings.Contains(s, `unlike those of tenant "a-victim", the first read`) {
				t.Errorf("skipped for another reason: %s", s)
			}
		}
	}
	// Without SkipErrors the query fails, naming the tenant.
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{Concurrency: 1}), `SELECT * FROM notes`)
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	var fe *FanOutError
	if !errors.As(err, &fe) || fe.Tenant != "b-attacker" {
		t.Errorf("without SkipErrors: %v, want b-attacker's FanOutError", err)
	}
}

// presenceEnv names the directory a child process (TestPresenceChild)
// opens a proxy on: another process present on the directory.
const presenceEnv = "SQLITEPROXY_TEST_PRESENCE_DIR"

// TestPresenceChild is not a test: the fan-out tests run the test binary
// with it as another process that has a proxy open on a directory, until
// its stdin closes.
func TestPresenceChild(t *testing.T) {
	dir := os.Getenv(presenceEnv)
	if dir == "" {
		t.Skip("child process only")
	}
	p, err := New(Config{Dir: dir})
	if err != nil {
		os.Exit(3)
	}
	if os.Getenv(presenceWriteEnv) != "" {
		// Write a tenant and close: the last connection checkpoints the
		// change into the file.
		if _, err := p.ExecContext(tctx("acme"), `UPDATE events SET n = n + 1000000`); err != nil {
			os.Exit(4)
		}
		if err := p.Close(); err != nil {
			os.Exit(5)
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	p.Close()
	os.Exit(0)
}

// presenceWriteEnv makes TestPresenceChild write acme and close first.
const presenceWriteEnv = "SQLITEPROXY_TEST_PRESENCE_WRITE"

// A fan-out read a closed tenant immutable because no other process had
// the directory open when the read began; a service or CLI started during
// the read, wrote the tenant and closed (checkpointing): the rows mixed two
// states (19 943 of 20 000 new in a helper's run), with no error. The read
// now sees the arrival and says so.
func TestFanOut_ProcessArrivingDuringAnImmutableRead(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("tells other processes apart with POSIX locks (F_GETLK) as tested on Linux")
	}
	// The one arriving: a process, or a second proxy of this process (which
	// the count missed: only a process's first proxy was counted).
	for _, where := range []string{"process", "here"} {
		t.Run(where, func(t *testing.T) { testArrivingDuringAnImmutableRead(t, where) })
	}
}

func testArrivingDuringAnImmutableRead(t *testing.T, where string) {
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"acme": 5000})
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT n FROM events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() {
		t.Fatalf("no first row: %v", rows.Err())
	}
	if _, err := os.Lstat(filepath.Join(dir, "acme.db-shm")); err == nil {
		t.Fatal("read with SQLite's locks: the test needs an immutable read")
	}
	if where == "process" {
		startChild(t, "TestPresenceChild", presenceEnv+"="+dir, presenceWriteEnv+"=1")
	} else {
		q, err := New(Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.ExecContext(tctx("acme"), `UPDATE events SET n = n + 1000000`); err != nil {
			t.Fatal(err)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
	old, updated := 1, 0
	for rows.Next() {
		var id string
		var v int
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		if v >= 1000000 {
			updated++
		} else {
			old++
		}
	}
	err = rows.Err()
	t.Logf("%d old rows, %d updated, err %v", old, updated, err)
	if err == nil && old != 0 && updated != 0 {
		t.Fatalf("the fan-out returned %d old and %d updated rows of one tenant, and no error", old, updated)
	}
	if err == nil || !strings.Contains(err.Error(), "may mix two states") {
		t.Errorf("err = %v, want the read's warning", err)
	}
}

// A tenant nobody has open here is read, by a fan-out, immutable (no
// locks, no side files) only while no other process has the directory
// open; with one, it is read with SQLite's locks, and a writer of another
// connection that writes and checkpoints during a long read cannot change
// what it returns (read immutable, it returned a mix of two states). The
// tenant's own reads and writes in this process are never held up by the
// read, however long its consumer pauses.
func TestFanOut_ClosedTenantReadConsistently(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("tells other processes apart with POSIX locks (F_GETLK) as tested on Linux")
	}
	// The other: none, another process's proxy, or another proxy of this
	// process (sql.Open twice on one directory), which POSIX locks cannot
	// show and was read immutable.
	for _, other := range []string{"none", "process", "proxy-here"} {
		others := other != "none"
		t.Run("other="+other, func(t *testing.T) {
			dir := t.TempDir()
			migs := []string{eventsTable}
			seedTenants(t, dir, migs, map[string]int{"acme": 2000})
			switch other {
			case "process":
				startChild(t, "TestPresenceChild", presenceEnv+"="+dir)
			case "proxy-here":
				newTestProxy(t, Config{Dir: dir, Migrations: migs})
			}
			p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
			rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT n FROM events ORDER BY id`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			if !rows.Next() { // the worker reads on, blocked with its buffer full
				t.Fatalf("no first row: %v", rows.Err())
			}
			_, err = os.Lstat(filepath.Join(dir, "acme.db-shm"))
			if locked := err == nil; locked != others {
				t.Fatalf("read with SQLite's locks: %v, want %v", locked, others)
			}
			// This process's reads of the tenant go on meanwhile; its
			// writes wait for the read (it holds the writer's semaphore)
			// until their deadline, not longer.
			ctx, cancel := context.WithTimeout(tctx("acme"), 2*time.Second)
			defer cancel()
			if n := queryInt(t, p, ctx, `SELECT count(*) FROM events`); n != 2000 {
				t.Fatalf("a read of the tenant during the fan-out: %d rows", n)
			}
			wctx, wcancel := context.WithTimeout(tctx("acme"), 200*time.Millisecond)
			defer wcancel()
			start := time.Now()
			if _, err := p.ExecContext(wctx, `INSERT INTO events (tenant, n) VALUES ('here', 0)`); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
				t.Fatalf("a write of the tenant during the fan-out: %v after %v, want its deadline", err, time.Since(start))
			}
			if !others {
				return
			}
			other, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, "acme.db")+"?_busy_timeout=0")
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			if _, err := other.Exec(`UPDATE events SET n = n + 1000000`); err != nil {
				t.Fatal(err)
			}
			other.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`) // as far as the fan-out's snapshot lets it
			n := 1
			for rows.Next() {
				var id string
				var v int
				if err := rows.Scan(&id, &v); err != nil {
					t.Fatal(err)
				}
				if v >= 1000000 {
					t.Fatalf("row %d of the fan-out has %d: a write made after its read began", n+1, v)
				}
				n++
			}
			if err := rows.Err(); err != nil || n != 2000 {
				t.Fatalf("read %d rows, %v; want 2000", n, err)
			}
		})
	}
}

// Close with a fan-out's rows still open: the fan-out went on reading the
// tenants open here after Close had returned (and let go of the
// directory's lock), while closed ones failed. Close now stops it and
// waits for its connections: the rows end with ErrClosed.
func TestFanOut_Close(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"a1": 3000, "b2": 3000})
	p, err := New(Config{Dir: dir, Migrations: migs})
	if err != nil {
		t.Fatal(err)
	}
	countRows(t, p, "a1") // open here: read on one of its readers
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{Concurrency: 1}), `SELECT n FROM events ORDER BY n`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() {
		t.Fatal(rows.Err())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoOpenFiles(t, dir)
	n := 1
	for rows.Next() {
		n++
	}
	if err := rows.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("fan-out rows after Close: %d rows, then %v; want ErrClosed", n, err)
	}
	if n >= 3000 {
		t.Errorf("fan-out rows after Close: all %d of the open tenant's rows", n)
	}
}

// Rows closed before the end (the caller read what it needed) end the
// tenants not yet read without an error on their spans: they were marked
// Error (context_canceled), which alerts on failing spans took for
// failures.
func TestFanOut_EarlyCloseIsNoTenantsError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	counts := map[string]int{}
	for i := range 8 {
		counts[fmt.Sprintf("t%d", i)] = 1
	}
	seedTenants(t, dir, migs, counts)
	spans := tracetest.NewSpanRecorder()
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}),
		`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x FROM c`)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatalf("no first row: %v", rows.Err())
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range spans.Ended() {
		if s.Name() != spanFanOutTenant && s.Name() != spanFanOut {
			continue
		}
		n++
		if s.Status().Code == codes.Error {
			t.Errorf("%s %v: status %v after the rows were closed early", s.Name(), s.Attributes(), s.Status())
		}
	}
	if n == 0 {
		t.Fatal("no fan-out spans")
	}
}

// A fan-out ended by the caller's context between rows: the fan-out span
// says so (it ended Unset, while rows.Err said context canceled).
func TestFanOut_CallerCancelMarksTheSpan(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{eventsTable}
	seedTenants(t, dir, migs, map[string]int{"a": 1, "b": 1})
	spans := tracetest.NewSpanRecorder()
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	ctx, cancel := context.WithCancel(WithFanOut(context.Background(), FanOutOptions{}))
	defer cancel()
	rows, err := p.QueryContext(ctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x FROM c`)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatalf("no first row: %v", rows.Err())
	}
	cancel()
	for rows.Next() {
	}
	if !errors.Is(rows.Err(), context.Canceled) {
		t.Errorf("rows.Err() %v, want context.Canceled", rows.Err())
	}
	rows.Close()
	found := false
	for _, s := range spans.Ended() {
		if s.Name() == spanFanOut {
			found = true
			if s.Status().Code != codes.Error {
				t.Errorf("the fan-out span ended by the caller's cancel: status %v, want Error", s.Status())
			}
		}
	}
	if !found {
		t.Fatal("no fan-out span")
	}
}

// hotJournal writes tenant id's file into dir as a process killed in the
// middle of a transaction in rollback-journal mode leaves it: 100 committed
// rows, and the pages of 3 000 uncommitted ones spilled into the file, with
// the hot journal that undoes them beside it.
func hotJournal(t *testing.T, dir, id string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src.db")
	db, err := sql.Open("sqlite3", src+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{
		`PRAGMA page_size = 1024`, eventsTable,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) INSERT INTO events (tenant) SELECT 'committed' FROM n`,
		`PRAGMA cache_size = 2`, `BEGIN`,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO events (tenant) SELECT 'uncommitted-' || printf('%040d', i) FROM n`,
	} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, s := range []string{"", "-journal"} {
		b, err := os.ReadFile(src + s)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id+".db"+s), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.ExecContext(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
}

// A closed tenant with a hot rollback journal beside it (something else
// used the file in another journal mode and was killed midway): neither a
// fan-out nor MigrateAll's look at the ledger reads the transaction that
// never committed (both opened such files immutable, which ignores the
// journal: a fan-out counted 106 rows of which 6 uncommitted, where a
// normal read counted 100).
func TestFanOut_HotJournalNotRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hotJournal(t, dir, "acme")
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MigrationMode: MigrateManual})
	fctx := WithFanOut(context.Background(), FanOutOptions{Tenants: []string{"acme"}})
	var id string
	var n, uncommitted int
	if err := p.QueryRowContext(fctx, `SELECT count(*), count(*) FILTER (WHERE tenant LIKE 'uncommitted%') FROM events`).Scan(&id, &n, &uncommitted); err != nil {
		t.Fatal(err)
	}
	if n != 100 || uncommitted != 0 {
		t.Errorf("fan-out over a tenant with a hot journal: %d rows, %d uncommitted; want 100, 0", n, uncommitted)
	}
}

// EXPLAIN of a PRAGMA that sets is refused by a fan-out: SQLite applies
// flags as it compiles them, on every open tenant's connection (its writer
// without readers: foreign keys off on every tenant, despite
// Config.ForeignKeys). Only the class cache, which keeps no long text,
// refused it (adv51).
func TestFanOut_ExplainPragmaSetterRefused(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{ReadersPerTenant: -1, ForeignKeys: true, Migrations: []string{
		`CREATE TABLE parent (id INTEGER PRIMARY KEY)`,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL REFERENCES parent(id))`}})
	ids := []string{"acme", "globex"}
	for _, id := range ids {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO child (pid) VALUES (42)`); err == nil {
			t.Fatalf("%s: foreign keys not enforced before the fan-out", id)
		}
	}
	for _, q := range []string{`EXPLAIN PRAGMA foreign_keys = OFF /*` + strings.Repeat(" ", 64<<10) + `*/`, `EXPLAIN PRAGMA foreign_keys = OFF`,
		`EXPLAIN QUERY PLAN PRAGMA main.foreign_keys(0)`} {
		rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), q)
		if err == nil {
			for rows.Next() {
			}
			rows.Close()
			t.Errorf("fan-out of %.40s...: ran", q)
		} else if !errors.Is(err, ErrFanOutWrite) {
			t.Errorf("fan-out of %.40s...: %v, want ErrFanOutWrite", q, err)
		}
	}
	for _, id := range ids {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO child (pid) VALUES (42)`); err == nil {
			t.Errorf("%s: a child row without a parent was written after a fan-out", id)
		}
	}
}
