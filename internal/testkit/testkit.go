// Package testkit holds the one implementation of the test helpers that
// both the public package sqliteproxytest and the root package's own tests
// use (those cannot import sqliteproxytest: it imports the root package).
// It knows nothing of sqliteproxy, so that either can import it.
package testkit

import (
	"context"
	"database/sql"
	"io"
	"testing"
	"time"
)

// Open calls open and returns what it opened, closed when the test ends
// (after the test's later cleanups, before its earlier ones). An error from
// open fails the test at once, one from Close fails it too; what names the
// opener in both messages.
func Open[C io.Closer](tb testing.TB, what string, open func() (C, error)) C {
	tb.Helper()
	c, err := open()
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("closing what %s opened: %v", what, err)
		}
	})
	return c
}

// PollInterval is how long WaitFor pauses between two calls of cond.
const PollInterval = time.Millisecond

// WaitFor calls cond every PollInterval until it reports true, and fails
// the test with what (the awaited condition, e.g. "the reader to be
// leased") if timeout passes first. cond runs on the caller's goroutine,
// which must be the test's, and may itself fail the test.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
			return // tb.Fatalf returned: not a real testing.TB
		}
		time.Sleep(PollInterval)
	}
}

// Queryer runs a query: a *sql.DB, *sql.Conn, *sql.Tx or *sqliteproxy.Proxy.
type Queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Strings runs query on q and returns the first column of every row as a
// string, failing the test on any error.
func Strings(tb testing.TB, ctx context.Context, q Queryer, query string, args ...any) []string {
	tb.Helper()
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			tb.Fatalf("%s: %v", query, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	return out
}
