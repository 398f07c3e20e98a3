// Package sqliteproxytest helps you test code that uses sqliteproxy, as
// activerecord-tenanted's test helpers do for Rails applications: each test
// gets a Proxy of its own on a fresh directory (tb.TempDir()), closed when
// the test ends, contexts that route to its tenants, and a bounded wait for
// what other goroutines bring about. Tenants are real SQLite files, so a
// test sees what production does; tests that use New can run in parallel.
//
//	func TestSignup(t *testing.T) {
//		t.Parallel()
//		p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: app.Migrations})
//		ctx := sqliteproxytest.Context(t, "acme")
//		if err := app.Signup(ctx, p.DB, "ann@example.com"); err != nil {
//			t.Fatal(err)
//		}
//		...
//	}
//
// Every helper fails the test (tb.Fatalf, or tb.Errorf from a cleanup)
// instead of returning an error, and must be called from the test's own
// goroutine, except Context and ContextTimeout, which any goroutine may call.
package sqliteproxytest

import (
	"context"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// New opens a Proxy for cfg and closes it when the test ends, failing the
// test if sqliteproxy.New or Close fail. An empty cfg.Dir becomes a new
// tb.TempDir(), so the test has tenants of its own; p.Config().Dir names
// it. Set Dir to open several Proxies on one directory, one after the
// other (a restart) or at once (two processes). Closing the Proxy before
// the test ends is fine: Close may be called again.
func New(tb testing.TB, cfg sqliteproxy.Config) *sqliteproxy.Proxy {
	tb.Helper()
	if cfg.Dir == "" {
		cfg.Dir = tb.TempDir()
	}
	return testkit.Open(tb, "sqliteproxy.New", func() (*sqliteproxy.Proxy, error) { return sqliteproxy.New(cfg) })
}

// Context returns a context that routes statements to the tenant id (see
// sqliteproxy.WithOrgID) and is cancelled when the test ends, just before
// its cleanups run. It has no deadline, so a wait for one of the tenant's
// connections ends after Config.BusyTimeout with SQLITE_BUSY, as it does in
// production; ContextTimeout bounds the test's statements by a deadline
// instead.
func Context(tb testing.TB, id string) context.Context {
	return sqliteproxy.WithOrgID(tb.Context(), id)
}

// ContextTimeout is Context with a deadline timeout from now: every
// statement that runs with it, and every wait for a connection, ends by
// then (the deadline, not Config.BusyTimeout, bounds the waits). Use it
// for tests whose statements could otherwise block the test run.
func ContextTimeout(tb testing.TB, id string, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(Context(tb, id), timeout)
	tb.Cleanup(cancel)
	return ctx
}

// WaitFor calls cond every millisecond until it reports true, and fails the
// test with "timed out after <timeout> waiting for <what>" when timeout
// passes first: the way to wait for another goroutine (a query to queue for
// a connection, the idle timeout to close a tenant) without a sleep that
// guesses how long it takes. what names the condition ("the INSERT to wait
// for acme's writer"). cond runs on the test's goroutine and may fail the
// test itself.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	testkit.WaitFor(tb, timeout, what, cond)
}

// Strings runs query on q (a Proxy, a *sql.DB, *sql.Conn or *sql.Tx) with
// ctx and returns the first column of every row as a string, failing the
// test on any error: p.QueryContext(Context(t, "acme"), `SELECT name FROM
// events`) in one line.
func Strings(tb testing.TB, ctx context.Context, q testkit.Queryer, query string, args ...any) []string {
	tb.Helper()
	return testkit.Strings(tb, ctx, q, query, args...)
}
