//go:build libsqlite3

package sqliteproxy

import (
	"context"
	"time"

	"github.com/mattn/go-sqlite3"
)

// busyInterruptible: an interrupt does not end a wait in the busy handler.
const busyInterruptible = false

// setBusyTimeout sets SQLite's own busy handler with a system SQLite,
// which may predate what busy.go's handler needs: a wait for another
// process's lock then ends at the timeout, whatever the statement's
// context.
func setBusyTimeout(c *sqlite3.SQLiteConn, timeout time.Duration) error {
	return busyPragma(c, timeout)
}

// busyTimeoutOf returns c's busy_timeout (tests).
func busyTimeoutOf(c *sqlite3.SQLiteConn) (time.Duration, error) {
	n, err := queryInt64(context.Background(), c, "PRAGMA busy_timeout")
	return time.Duration(n) * time.Millisecond, err
}
