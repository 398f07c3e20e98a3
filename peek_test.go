package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/mattn/go-sqlite3"
)

// A closed tenant's ledger is read from its file attached to a look
// connection kept for that (peek.go): a fleet's look leaves nothing
// attached, a file SQLite cannot read (not a database) fails that tenant
// alone and leaves the connection usable, and a tenant behind is seen as
// behind (DryRun lists its pending migration).
func TestPeek_LooksLeaveNothingAttached(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{eventsTable}
	made := newTestProxy(t, Config{Dir: dir, Migrations: v1})
	ids := make([]string, 12)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%02d", i)
		if err := made.CreateTenant(context.Background(), ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	made.Close()
	if err := os.WriteFile(filepath.Join(dir, "t03.db"), []byte("not a database, but long enough to look like one's header at first sight...................................................."), 0o600); err != nil {
		t.Fatal(err)
	}
	v2 := append(v1, `ALTER TABLE events ADD COLUMN note TEXT`)
	p := newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateManual})
	rep, err := p.MigrateAll(context.Background(), MigrateOptions{DryRun: true, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failed) != 1 || rep.Failed["t03"] == nil {
		t.Errorf("failed: %v, want t03 alone", rep.Failed)
	}
	if len(rep.Pending) != len(ids)-1 {
		t.Errorf("pending: %d tenants (%v), want every readable one behind by one", len(rep.Pending), rep.Pending)
	}
	for id, names := range rep.Pending {
		if len(names) != 1 {
			t.Errorf("%s pending %v, want the one migration", id, names)
		}
	}
	st, err := p.MigrationStatus(context.Background(), "t05")
	if err != nil || len(st.Applied) != 1 || len(st.Pending) != 1 {
		t.Errorf("t05's status: %+v, %v", st, err)
	}
	pk := &p.c.r.peek
	pk.mu.Lock()
	free := append([]*sqlite3.SQLiteConn(nil), pk.free...)
	pk.mu.Unlock()
	if len(free) == 0 || len(free) > 3 {
		t.Errorf("%d look connections kept, want 1 to 3 (the run's concurrency)", len(free))
	}
	for _, c := range free {
		rows, err := c.Query(`PRAGMA database_list`, nil)
		if err != nil {
			t.Fatal(err)
		}
		dest := make([]driver.Value, 3)
		var names []string
		for rows.Next(dest) != io.EOF {
			names = append(names, fmt.Sprint(dest[1]))
		}
		rows.Close()
		if len(names) != 1 || names[0] != "main" {
			t.Errorf("a look connection kept with %v attached, want main alone", names)
		}
	}
}
