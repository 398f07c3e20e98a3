package main

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// migrate -foreign-keys migrates as a service with Config.ForeignKeys does:
// a migration that leaves a foreign key violation is refused and nothing of
// it stays (the CLI applied it, and orphaned the rows the service would
// have refused to orphan).
func TestMigrate_ForeignKeys(t *testing.T) {
	dir, mdir := t.TempDir(), t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(mdir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("0001_init.sql", `CREATE TABLE p (id INTEGER PRIMARY KEY);
CREATE TABLE c (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL REFERENCES p(id));`)
	cli(t, nil, "create", "-dir", dir, "-migrations", mdir, "acme").want(t, exitOK)
	db, err := sql.Open("sqlite3", filepath.Join(dir, "acme.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO p VALUES (1), (2); INSERT INTO c VALUES (10, 1)`); err != nil {
		t.Fatal(err)
	}
	write("0002_purge.sql", `DELETE FROM p WHERE id = 1;`)
	r := cli(t, nil, "migrate", "-dir", dir, "-migrations", mdir, "-foreign-keys").want(t, exitFailed)
	if !strings.Contains(r.stdout+r.stderr, "foreign key violation") {
		t.Errorf("the refusal does not name the violation:\n%s%s", r.stdout, r.stderr)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM p`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("p has %d rows (%v) after the refused migration, want 2", n, err)
	}
	// Without the flag (a service without Config.ForeignKeys) it is applied.
	cli(t, nil, "migrate", "-dir", dir, "-migrations", mdir).want(t, exitOK)
	if err := db.QueryRow(`SELECT count(*) FROM p`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("p has %d rows (%v), want 1", n, err)
	}
}
