// Package testkit holds the one implementation of the test helpers that
// both the public package sqliteproxytest and the root package's own tests
// use (those cannot import sqliteproxytest: it imports the root package).
// It knows nothing of sqliteproxy, so that either can import it.
package testkit

import (
	"bufio"
	"context"
	"database/sql"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
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

// StartChild runs the test named name of this test binary as another
// process, with env (KEY=VALUE) added to its environment, and returns once
// it has printed "ready". stop closes its stdin, the child's signal to end,
// and waits for it; it is also called when the test ends.
func StartChild(t *testing.T, name string, env ...string) (cmd *exec.Cmd, stop func() error) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run", "^"+name+"$")
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var werr error
	stop = func() error {
		once.Do(func() { stdin.Close(); werr = cmd.Wait() })
		return werr
	}
	t.Cleanup(func() { stop() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("%s: %q, %v", name, line, err)
	}
	return cmd, stop
}

// HoldOpen is the body of a child process (StartChild) that keeps the
// SQLite database at path open: it opens it with database/sql's driver
// driverName, reads it, says "ready" and keeps it open until its standard
// input closes; then the process exits.
func HoldOpen(driverName, path string) {
	db, err := sql.Open(driverName, path)
	if err != nil {
		os.Exit(3)
	}
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema`).Scan(&n); err != nil {
		os.Exit(4)
	}
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
	db.Close()
	os.Exit(0)
}

// KeepWAL: SQLITEPROXY_TEST_KEEP_WAL=1, with which the root package's test
// proxies and the CLI's set Config.KeepWAL (make test runs both so too):
// they must behave the same with a closed tenant's side files kept, but for
// the files themselves.
var KeepWAL = os.Getenv("SQLITEPROXY_TEST_KEEP_WAL") == "1"

// KeptSide reports whether name, a file of size bytes, is one KeepWAL
// leaves beside a closed tenant (a -shm, an empty -wal) while KeepWAL is on.
func KeptSide(name string, size int64) bool {
	return KeepWAL && (strings.HasSuffix(name, ".db-shm") || strings.HasSuffix(name, ".db-wal") && size == 0)
}
