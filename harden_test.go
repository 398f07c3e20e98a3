package sqliteproxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestHardening(t *testing.T) {
	t.Parallel()
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

// TestIsolation_CrossTenantReads tries to read tenant B's rows from tenant
// A by every means a statement has.
func TestIsolation_CrossTenantReads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if _, err := p.ExecContext(tctx("victim"), `INSERT INTO events (tenant) VALUES ('secret')`); err != nil {
		t.Fatal(err)
	}
	a := tctx("attacker")
	victim := filepath.Join(dir, "victim.db")
	if err := os.Symlink(victim, filepath.Join(dir, "alias.db")); err != nil {
		t.Fatal(err)
	}
	attempts := []struct {
		ctx context.Context
		sql string
	}{
		{a, `ATTACH '` + victim + `' AS v`},
		{a, `ATTACH 'file:` + victim + `?mode=ro' AS v`},
		{a, `ATTACH 'victim.db' AS v`},
		{a, `VACUUM INTO '` + filepath.Join(dir, "stolen.db") + `'`},
		{a, `SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')`},
		{a, `PRAGMA writable_schema = 1`},
		{tctx("../victim"), `SELECT tenant FROM events`},
		{tctx("victim.db"), `SELECT tenant FROM events`},
		{tctx("VICTIM"), `SELECT tenant FROM events`},
		{tctx("alias"), `SELECT tenant FROM events`},
		{context.Background(), `SELECT tenant FROM events`},
	}
	for _, at := range attempts {
		rows, err := p.QueryContext(at.ctx, at.sql)
		if err == nil {
			for rows.Next() {
				var v any
				rows.Scan(&v)
				if fmt.Sprint(v) == "secret" {
					t.Errorf("%s read the victim's row", at.sql)
				}
			}
			err = rows.Err()
			rows.Close()
		}
		if _, xerr := p.ExecContext(at.ctx, at.sql); err == nil && xerr == nil {
			t.Errorf("%q was allowed", at.sql)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "stolen.db")); err == nil {
		t.Error("VACUUM INTO wrote a copy")
	}
}
