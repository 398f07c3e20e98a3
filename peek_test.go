package sqliteproxy

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

// A closed tenant's ledger is read from its file attached to a look
// connection kept for that (peek.go): each look reads its own tenant's
// ledger (half the fleet is a migration behind, and only that half is
// listed), a file SQLite cannot read (not a database) fails that tenant
// alone, a tenant with commits in its -wal (another connection has it
// open) is read through it, a UTF-16 tenant (which SQLite does not attach
// to a UTF-8 connection) is read on a connection of its own, and nothing
// stays attached to the connections kept.
func TestPeek_LooksReadEachTenantsLedger(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{eventsTable}
	v2 := append(slices.Clone(v1), `ALTER TABLE events ADD COLUMN note TEXT`)
	ids := make([]string, 12)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%02d", i)
	}
	for _, migs := range [][]string{v1, v2} { // odd tenants made with v1, even ones with v2
		made := newTestProxy(t, Config{Dir: dir, Migrations: migs})
		for i, id := range ids {
			if (i%2 == 0) == (len(migs) == 2) {
				if err := made.CreateTenant(context.Background(), id); err != nil {
					t.Fatal(err)
				}
			}
		}
		made.Close()
	}
	if err := os.WriteFile(filepath.Join(dir, "t03.db"), []byte("not a database, but long enough to look like one's header at first sight...................................................."), 0o600); err != nil {
		t.Fatal(err)
	}
	// t05: commits in its -wal, held open by another connection.
	wal, err := sql.Open("sqlite3", filepath.Join(dir, "t05.db")+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer wal.Close()
	wal.SetMaxOpenConns(1)
	if _, err := wal.Exec(`PRAGMA wal_autocheckpoint = 0; INSERT INTO events (tenant) VALUES ('in the -wal')`); err != nil {
		t.Fatal(err)
	}
	// u16: a UTF-16 tenant at v1, restored from a backup made elsewhere.
	u16 := filepath.Join(t.TempDir(), "u16.db")
	if db, err := sql.Open("sqlite3", u16); err != nil {
		t.Fatal(err)
	} else {
		if _, err := db.Exec(`PRAGMA encoding = 'UTF-16le'; CREATE TABLE seed (a)`); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	p := newTestProxy(t, Config{Dir: dir, Migrations: v1})
	if err := p.RestoreTenant(context.Background(), "u16", u16); err != nil {
		t.Fatal(err)
	}
	if err := p.QueryRowContext(tctx("u16"), `SELECT count(*) FROM events`).Scan(new(int)); err != nil { // migrated (the ledger made)
		t.Fatal(err)
	}
	p.Close()

	p = newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateManual})
	rep, err := p.MigrateAll(context.Background(), MigrateOptions{DryRun: true, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failed) != 1 || rep.Failed["t03"] == nil {
		t.Errorf("failed: %v, want t03 alone", rep.Failed)
	}
	var behind []string
	for id, names := range rep.Pending {
		behind = append(behind, id)
		if len(names) != 1 {
			t.Errorf("%s pending %v, want the one migration", id, names)
		}
	}
	slices.Sort(behind)
	if want := []string{"t01", "t05", "t07", "t09", "t11", "u16"}; !slices.Equal(behind, want) {
		t.Errorf("behind: %v, want %v (t03 unreadable)", behind, want)
	}
	for _, id := range []string{"t05", "u16", "t04"} {
		st, err := p.MigrationStatus(context.Background(), id)
		if want := map[string]int{"t05": 1, "u16": 1, "t04": 0}[id]; err != nil || len(st.Pending) != want {
			t.Errorf("%s's status: %+v, %v; want %d pending", id, st, err, want)
		}
	}
	pk := &p.c.r.peek
	pk.mu.Lock()
	free := slices.Clone(pk.free)
	pk.mu.Unlock()
	if len(free) == 0 || len(free) > 3 {
		t.Errorf("%d look connections kept, want 1 to 3 (the run's concurrency)", len(free))
	}
	for _, c := range free {
		if names := databaseList(t, c); !slices.Equal(names, []string{"main"}) {
			t.Errorf("a look connection kept with %v attached, want main alone", names)
		}
	}
}

// databaseList lists the schemas attached to c (PRAGMA database_list).
func databaseList(t *testing.T, c *sqlite3.SQLiteConn) []string {
	t.Helper()
	rows, err := c.Query(`PRAGMA database_list`, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	dest := make([]driver.Value, 3)
	var names []string
	for {
		if err := rows.Next(dest); err == io.EOF {
			return names
		} else if err != nil {
			t.Fatal(err)
		}
		names = append(names, fmt.Sprint(dest[1]))
	}
}

// A look at a tenant another process holds exclusively waits (the attach
// tried again) until the context ends, or Close: MigrateAll then answers
// ErrClosed at once, where it held Close for BusyTimeout.
func TestPeek_CloseEndsALookAtALockedTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := Config{Dir: dir, BusyTimeout: 30 * time.Second, Migrations: []string{eventsTable}}
	made := newTestProxy(t, cfg)
	if err := made.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	made.Close()
	exclusiveDB(t, filepath.Join(dir, "acme.db"))
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	start := time.Now()
	_, err = p.MigrationStatus(c, "acme")
	cancel()
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
		t.Errorf("MigrationStatus beside an exclusive lock: %v after %v, want the deadline (200 ms)", err, took)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.MigrateAll(context.Background(), MigrateOptions{DryRun: true})
		done <- err
	}()
	waitFor(t, 5*time.Second, "MigrateAll to reserve its look", func() bool { return p.Stats().OpenConnections > 0 })
	start = time.Now()
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v beside a look waiting for a lock", took)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("MigrateAll ended by Close: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("MigrateAll had not returned 10 s after Close")
	}
}
