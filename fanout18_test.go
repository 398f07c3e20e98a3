package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// A typo in a fan-out's SELECT failed on each tenant: with SkipErrors every
// tenant was skipped, and the report came back empty with no error; without
// it, the error blamed the first tenant.
func TestFanOut_SyntaxErrorIsTheQuerys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	seedTenants(t, dir, []string{eventsTable}, map[string]int{"a": 1, "b": 2})
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	for _, skip := range []bool{true, false} {
		for _, q := range []string{`SELECT count(* AS n FROM events`, `WITH x AS (SELECT 1) SELEC * FROM x`} {
			rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{SkipErrors: skip}), q)
			if err == nil {
				n := 0
				for rows.Next() {
					n++
				}
				err = rows.Err()
				rows.Close()
				if err == nil {
					t.Errorf("SkipErrors %v, %q: %d rows and no error", skip, q, n)
					continue
				}
			}
			var fe *FanOutError
			if errors.As(err, &fe) || !isSyntaxError(err) {
				t.Errorf("SkipErrors %v, %q: %v, want the query's syntax error, not a tenant's", skip, q, err)
			}
		}
	}
}

// A fan-out that opened a tenant to migrate it (MigrateAuto) read it on a
// reader beside the writer it had opened: two connections per worker, and
// a paused fan-out held the whole budget (live traffic failed after
// BusyTimeout), where it may hold half.
func TestFanOut_MigratingTenantsKeepHalfTheBudget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	counts := map[string]int{}
	for i := range 4 {
		counts[fmt.Sprintf("t%d", i)] = 40
	}
	seedTenants(t, dir, []string{eventsTable}, counts)
	p := newTestProxy(t, Config{Dir: dir, MaxConnections: 4, BusyTimeout: time.Second,
		Migrations: []string{eventsTable, `CREATE TABLE extra (x)`}})
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT id FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() { // then the report's client pauses
		t.Fatal(rows.Err())
	}
	// Both workers have opened their tenant (migrating it) and wait with
	// rows for the client.
	waitFor(t, 10*time.Second, "the fan-out's two workers to hold their tenants", func() bool {
		n := 0
		for _, ts := range p.Stats().Tenants {
			n += ts.InUse
		}
		return n == 2
	})
	if open := p.Stats().OpenConnections; open > 2 {
		t.Errorf("a paused fan-out holds %d of 4 connections, want at most half", open)
	}
	if _, err := p.ExecContext(tctx("live"), `INSERT INTO events (tenant) VALUES ('live')`); err != nil {
		t.Errorf("a write beside a paused fan-out: %v", err)
	}
}

// SELECT * FROM pragma_optimize(...) compiles read-only: the PRAGMA in it
// runs with the statement. Fanned out with no readers it ran on open
// tenants' writers and wrote sqlite_stat1 into each; with readers it failed
// on every tenant ("readonly database"), which SkipErrors skipped.
func TestFanOut_PragmaOptimizeRefused(t *testing.T) {
	t.Parallel()
	for _, readers := range []int{-1, 0} {
		p := newTestProxy(t, Config{ReadersPerTenant: readers, Migrations: []string{eventsTable, `CREATE INDEX by_tenant ON events (tenant)`}})
		for _, id := range []string{"a", "b"} {
			if _, err := p.ExecContext(tctx(id), `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 2000) INSERT INTO events (tenant) SELECT x % 7 FROM c`); err != nil {
				t.Fatal(err)
			}
		}
		for _, q := range []string{`SELECT * FROM pragma_optimize(0x10002)`, `SELECT * FROM "PRAGMA_OPTIMIZE"(0x10002)`, `SELECT * FROM main.pragma_optimize`} {
			rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{SkipErrors: true}), q)
			if err == nil {
				rows.Close()
			}
			if !errors.Is(err, ErrFanOutWrite) {
				t.Errorf("readers %d, %q: %v, want ErrFanOutWrite", readers, q, err)
			}
		}
		if n := queryInt(t, p, tctx("a"), `SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'`); n != 0 {
			t.Errorf("readers %d: a fan-out wrote sqlite_stat1 into tenant a", readers)
		}
	}
}

// A tenant whose schema SQLite cannot parse says "syntax error" too: that
// is the tenant's failure, skipped with SkipErrors, not the query's.
func TestFanOut_MalformedTenantSchemaIsSkipped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	seedTenants(t, dir, []string{eventsTable}, map[string]int{"a": 1, "b": 2, "c": 1})
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`PRAGMA writable_schema = ON`,
		`INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('view', 'v', 'v', 0, 'CREATE VIEW v AS SELEC 1')`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	var skipped []string
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{SkipErrors: true, OnSkip: func(id string, err error) { skipped = append(skipped, id) }}), `SELECT count(*) FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("one tenant's malformed schema failed the whole SkipErrors report: %v", err)
	}
	rows.Close()
	if n != 2 || !slices.Equal(skipped, []string{"b"}) {
		t.Errorf("%d rows, skipped %q; want a and c, b skipped", n, skipped)
	}
}
