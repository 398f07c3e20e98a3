//go:build !libsqlite3

package sqliteproxy

// A statement waiting for a lock another process holds (the CLI's write
// transaction, Litestream's checkpoint, another proxy on the same files)
// waits in SQLite's busy handler, which mattn sets with busy_timeout:
// SQLite's default handler sleeps until the timeout whatever happens, so
// an interrupt for the statement's context (ctxwatch.go) was seen only
// when the wait was over, BusyTimeout later (30 s with a 30 s
// BusyTimeout, for a request whose deadline was 100 ms away). Tenant
// connections get a handler of their own: SQLite's default one's delays
// and timeout, slept a millisecond at a time, giving up (SQLITE_BUSY, which
// the watch turns into the context's error) once the connection is
// interrupted. It needs sqlite3_is_interrupted (3.41) and
// sqlite3_set_clientdata (3.44), which the SQLite mattn bundles has; with
// the libsqlite3 build tag (a system SQLite, maybe older) the default
// handler stays (busy_libsqlite3.go).

/*
#include <stdlib.h>

typedef struct sqlite3 sqlite3;
extern int sqlite3_busy_handler(sqlite3 *, int (*)(void *, int), void *);
extern int sqlite3_is_interrupted(sqlite3 *);
extern void *sqlite3_get_clientdata(sqlite3 *, const char *);
extern int sqlite3_set_clientdata(sqlite3 *, const char *, void *, void (*)(void *));
extern int sqlite3_sleep(int);

typedef struct {
	sqlite3 *db;
	int timeout; // ms
} sqliteproxy_busy_arg;

// sqliteproxy_busy is SQLite's default busy handler (sqliteDefaultBusyCallback,
// with usleep) that sleeps a millisecond at a time and gives up once db is
// interrupted.
static int sqliteproxy_busy(void *p, int count) {
	static const unsigned char delays[] = {1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100};
	static const unsigned char totals[] = {0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228};
	enum { n = sizeof(delays) / sizeof(delays[0]) };
	sqliteproxy_busy_arg *a = p;
	int delay, prior;
	if (count < n) {
		delay = delays[count];
		prior = totals[count];
	} else {
		delay = delays[n - 1];
		prior = totals[n - 1] + delay * (count - (n - 1));
	}
	if (prior + delay > a->timeout) {
		delay = a->timeout - prior;
		if (delay <= 0) {
			return 0;
		}
	}
	for (int i = 0; i < delay; i++) {
		if (sqlite3_is_interrupted(a->db)) {
			return 0;
		}
		sqlite3_sleep(1);
	}
	return !sqlite3_is_interrupted(a->db);
}

// sqliteproxy_set_busy sets sqliteproxy_busy with timeout (ms) on db, or
// no handler for 0 (fail at once); its argument lives as long as db (client
// data: freed when db closes) and is reused when set again. It returns
// SQLite's result code.
static int sqliteproxy_set_busy(void *db, int timeout) {
	if (timeout <= 0) {
		return sqlite3_busy_handler(db, 0, 0);
	}
	sqliteproxy_busy_arg *a = sqlite3_get_clientdata(db, "sqliteproxy.busy");
	if (a == 0) {
		a = malloc(sizeof *a);
		if (a == 0) {
			return 7; // SQLITE_NOMEM
		}
		int rc = sqlite3_set_clientdata(db, "sqliteproxy.busy", a, free);
		if (rc != 0) {
			return rc; // a freed by SQLite
		}
	}
	a->db = db;
	a->timeout = timeout;
	return sqlite3_busy_handler(db, sqliteproxy_busy, a);
}

// sqliteproxy_busy_timeout returns the timeout (ms) sqliteproxy_set_busy
// last set on db, -1 if it never did.
static int sqliteproxy_busy_timeout(void *db) {
	sqliteproxy_busy_arg *a = sqlite3_get_clientdata(db, "sqliteproxy.busy");
	return a == 0 ? -1 : a->timeout;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"time"

	"github.com/mattn/go-sqlite3"
)

// busyInterruptible: an interrupt ends a wait in the busy handler.
const busyInterruptible = true

// setBusyTimeout gives c the busy handler above with timeout (as
// busy_timeout, whole milliseconds; 0: none, fail at once). Without a
// handle (a mattn of another layout) it sets SQLite's own, as PRAGMA
// busy_timeout does.
func setBusyTimeout(c *sqlite3.SQLiteConn, timeout time.Duration) error {
	db := sqliteHandle(c)
	if db == nil {
		return busyPragma(c, timeout)
	}
	ms := min(max(timeout, 0)/time.Millisecond, maxBusyTimeout/time.Millisecond)
	if rc := C.sqliteproxy_set_busy(db, C.int(ms)); rc != 0 {
		return fmt.Errorf("SQLite refused the busy handler (code %d)", int(rc))
	}
	return nil
}

// busyTimeoutOf returns the timeout setBusyTimeout last gave c's handler
// (tests: PRAGMA busy_timeout reads 0 with a handler of one's own).
func busyTimeoutOf(c *sqlite3.SQLiteConn) (time.Duration, error) {
	db := sqliteHandle(c)
	if db == nil {
		return 0, errNoHandle
	}
	ms := C.sqliteproxy_busy_timeout(db)
	if ms < 0 {
		return 0, errors.New("no busy handler of the proxy's set")
	}
	return time.Duration(ms) * time.Millisecond, nil
}
