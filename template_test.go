package sqliteproxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// schemaAndLedger reads what a tenant file holds: its schema (sqlite_schema)
// and its migration ledger without the times.
func schemaAndLedger(t *testing.T, path string) (schema []string, ledger []string) {
	t.Helper()
	db := direct(t, filepath.Dir(path), filepath.Base(path[:len(path)-len(tenantFileSuffix)]))
	rows, err := db.Query(`SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY type, name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		schema = append(schema, s)
	}
	rows.Close()
	rows, err = db.Query(`SELECT version || ' ' || checksum FROM ` + ledgerTable + ` ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		ledger = append(ledger, s)
	}
	rows.Close()
	return schema, ledger
}

// A tenant copied from the template holds the same schema and ledger as
// one migrated step by step (here: a file that existed empty, migrated on
// first access), and its ledger is stamped with its own creation; the
// template lives outside Dir and goes at Close.
func TestTemplate_SameAsStepByStep(t *testing.T) {
	var migs []string
	for i := range 50 {
		migs = append(migs, fmt.Sprintf(`CREATE TABLE t%d (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t%d_v ON t%d (v)`, i, i, i))
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stepwise.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Dir: dir, Migrations: migs})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(context.Background(), "copied"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("stepwise"), `INSERT INTO t0 (v) VALUES ('x')`); err != nil { // migrates the empty file
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("copied"), `INSERT INTO t49 (v) VALUES ('x')`); err != nil {
		t.Fatal(err)
	}
	tmplDir := p.c.r.tmpl.dir
	if tmplDir == "" || filepath.Dir(tmplDir) == dir {
		t.Fatalf("template directory %q", tmplDir)
	}
	var stamped string
	if err := p.QueryRowContext(tctx("copied"), `SELECT min(applied_at) FROM `+ledgerTable).Scan(&stamped); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmplDir); !os.IsNotExist(err) {
		t.Fatalf("template directory left after Close: %v", err)
	}
	s1, l1 := schemaAndLedger(t, filepath.Join(dir, "copied.db"))
	s2, l2 := schemaAndLedger(t, filepath.Join(dir, "stepwise.db"))
	if diff := cmp.Diff(s2, s1); diff != "" {
		t.Errorf("schema, step by step (-) vs copied (+):\n%s", diff)
	}
	if diff := cmp.Diff(l2, l1); diff != "" || len(l1) != 50 {
		t.Errorf("ledger, step by step (-) vs copied (+), %d rows:\n%s", len(l1), diff)
	}
	if stamped == "" {
		t.Error("the copy's ledger has no applied_at")
	}
}
