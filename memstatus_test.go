package sqliteproxy

import "testing"

// SQLite's memory statistics are off in this process (memstatus.go):
// sqlite3_memory_used, which counts every allocation SQLite has not freed
// while they are on, stays 0 with a tenant open and queried. Built with
// the tag sqliteproxy_memstatus they stay on and it counts (`make test`
// runs this test in that build too).
func TestMemStatus_OffUnlessKept(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("count: %d, %v", n, err)
	}
	used := sqliteMemoryUsed()
	switch {
	case keepMemStatus && used <= 0:
		t.Errorf("built to keep SQLite's memory statistics: sqlite3_memory_used = %d with a tenant open", used)
	case keepMemStatus:
	case memStatusErr != nil:
		t.Errorf("SQLite's memory statistics stayed on: %v", memStatusErr)
	case used != 0:
		t.Errorf("sqlite3_memory_used = %d with the statistics off, want 0", used)
	}
}
