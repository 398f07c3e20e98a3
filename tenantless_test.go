package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mattn/go-sqlite3"
)

func TestNoTenant(t *testing.T) {
	t.Parallel()
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
		`SELECT name FROM SQLITE_SCHEMA`,
		`SELECT name FROM temp.sqlite_master`,
		`SELECT name FROM pragma_table_list`,
		`SELECT name FROM pragma_table_info('events')`,
		`WITH x AS (SELECT * FROM events) SELECT * FROM x`,
		`PRAGMA table_info(events)`,
		`SELECT 1; SELECT 2`,
		`ATTACH 'x.db' AS x`,
		`SELECT load_extension('x')`,
		// Read-only to SQLite, about a tenant's schema: they found
		// nothing here and reported success.
		`DROP TRIGGER IF EXISTS tr`,
		`REINDEX`,
		`REINDEX nocase`,
	} {
		if _, err := p.ExecContext(bg, q); !errors.Is(err, ErrNoTenant) {
			t.Errorf("Exec(%q) without tenant: %v, want ErrNoTenant", q, err)
		}
		if _, err := p.QueryContext(bg, q); !errors.Is(err, ErrNoTenant) {
			t.Errorf("Query(%q) without tenant: %v, want ErrNoTenant", q, err)
		}
	}
	// Pure expressions that read no table of any database: CTEs (recursive
	// too, which the authorizer refused when they read their own rows) and
	// table-valued functions.
	for q, want := range map[string]int{
		`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT count(*) FROM c`: 5,
		`WITH c(x) AS (SELECT 3) SELECT x FROM c`:                                                            3,
		`SELECT count(*) FROM json_each('[1,2]')`:                                                            2,
		`SELECT sum(value) FROM json_each('[1,2,4]')`:                                                        7,
	} {
		var got int
		if err := p.QueryRowContext(bg, q).Scan(&got); err != nil || got != want {
			t.Errorf("%q without tenant: %d, %v; want %d", q, got, err, want)
		}
	}
	// A long text refused is cut with a sign that it is.
	long := `SELECT * FROM events WHERE tenant = 'a rather long literal to pass sixty bytes'`
	if _, err := p.QueryContext(bg, long); err == nil || !strings.Contains(err.Error(), `"…`) || strings.Contains(err.Error(), long) {
		t.Errorf("a long text without tenant: %v, want it cut, with …", err)
	}
	// No statement at all: as mattn answers it (it crashed the process:
	// mattn's statement for it has no handle).
	for _, q := range []string{"", "  ", ";", "-- c", "/* c */ ;\n"} {
		res, err := p.ExecContext(bg, q)
		if err != nil {
			t.Errorf("Exec(%q) without tenant: %v", q, err)
		} else if n, err := res.RowsAffected(); n != 0 || err != nil {
			t.Errorf("Exec(%q) without tenant: %d rows affected, %v", q, n, err)
		}
		rows, err := p.QueryContext(bg, q)
		if err != nil {
			t.Errorf("Query(%q) without tenant: %v", q, err)
			continue
		}
		if rows.Next() {
			t.Errorf("Query(%q) without tenant: a row", q)
		}
		if err := rows.Close(); err != nil {
			t.Errorf("Query(%q) without tenant: close: %v", q, err)
		}
	}
	// A text SQLite cannot prepare without a tenant says why, beside
	// ErrNoTenant: a misspelt function is not a context that lost its
	// tenant. The reason is text: no sqlite3.Error to act on.
	_, err := p.QueryContext(bg, `SELECT sqlite_versoin()`)
	var se sqlite3.Error
	if !errors.Is(err, ErrNoTenant) || !strings.Contains(err.Error(), "no such function: sqlite_versoin") || errors.As(err, &se) {
		t.Errorf("misspelt function without tenant: %v, want ErrNoTenant saying no such function", err)
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

// Statements without a tenant take their arguments as mattn's conn does,
// as they do with a tenant: too few is an error, more are left out. SELECT
// ? answered NULL without an argument, and failed ("column index out of
// range") with two.
func TestNoTenant_ArgumentsAsMattn(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{})
	mattn, err := sql.Open("sqlite3", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer mattn.Close()
	type result struct {
		V   any
		Err string
	}
	run := func(db interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}, args ...any) result {
		var v any
		err := db.QueryRowContext(context.Background(), `SELECT ?`, args...).Scan(&v)
		if err != nil {
			return result{Err: err.Error()}
		}
		return result{V: v}
	}
	for _, args := range [][]any{{}, {int64(1)}, {int64(1), int64(2)}, {int64(1), sql.Named("x", 2)}} {
		if diff := cmp.Diff(run(mattn, args...), run(p, args...)); diff != "" {
			t.Errorf("SELECT ? with %v (-mattn +proxy):\n%s", args, diff)
		}
	}
	if _, err := p.ExecContext(context.Background(), `SELECT ?, ?`, 1); err == nil || !strings.Contains(err.Error(), "not enough args") {
		t.Errorf("Exec with too few arguments: %v", err)
	}
}
