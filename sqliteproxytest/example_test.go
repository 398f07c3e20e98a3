package sqliteproxytest_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// countNotes stands for the application code under test.
func countNotes(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM notes`).Scan(&n)
	return n, err
}

// notesTest is a test of countNotes as you would write it (as TestNotes)
// in a _test.go file of your application: a Proxy of its own, a context
// per tenant, and a bounded wait where another goroutine must act first.
// (TestExample runs it.)
func notesTest(t *testing.T) {
	t.Parallel() // each test has its own directory and tenants
	p := sqliteproxytest.New(t, sqliteproxy.Config{
		Migrations:  []string{`CREATE TABLE notes (body TEXT)`},
		IdleTimeout: 100 * time.Millisecond,
	})
	acme, globex := sqliteproxytest.Context(t, "acme"), sqliteproxytest.Context(t, "globex")
	if _, err := p.ExecContext(acme, `INSERT INTO notes VALUES ('hello')`); err != nil {
		t.Fatal(err)
	}
	for ctx, want := range map[context.Context]int{acme: 1, globex: 0} {
		if n, err := countNotes(ctx, p.DB); err != nil || n != want {
			t.Errorf("countNotes = %d, %v; want %d", n, err, want)
		}
	}

	// The idle timeout closes both tenants; their data stays.
	sqliteproxytest.WaitFor(t, 10*time.Second, "the idle timeout to close every tenant", func() bool {
		return p.Stats().OpenTenants == 0
	})
	bounded := sqliteproxytest.ContextTimeout(t, "acme", 5*time.Second)
	if n, err := countNotes(bounded, p.DB); err != nil || n != 1 {
		t.Errorf("after the tenant was reopened: %d notes, %v; want 1", n, err)
	}
}

// This file is the example: a test of application code (notesTest) with
// the helpers of this package.
func Example() {}
