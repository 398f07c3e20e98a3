//go:build !libsqlite3

package sqliteproxy

// A statement waiting for a lock another process holds (the CLI's write
// transaction, Litestream's checkpoint, another proxy on the same files)
// waits in SQLite's busy handler, which mattn sets with busy_timeout:
// SQLite's default handler sleeps until the timeout whatever happens, so
// an interrupt for the statement's context (ctxwatch.go) was seen only
// when the wait was over, BusyTimeout later (30 s with a 30 s
// BusyTimeout, for a request whose deadline was 100 ms away). Tenant
// connections get a handler of their own: SQLite's default one's delays,
// slept at most 5 ms at a time, until the timeout has passed on the clock,
// giving up (SQLITE_BUSY, which the watch turns into the context's error)
// once the connection is interrupted. It needs sqlite3_is_interrupted (3.41) and
// sqlite3_set_clientdata (3.44), which the SQLite mattn bundles has; with
// the libsqlite3 build tag (a system SQLite, maybe older) the default
// handler stays (busy_libsqlite3.go).

/*
#include <stdlib.h>
#include <time.h>

typedef struct sqlite3 sqlite3;
extern int sqlite3_busy_handler(sqlite3 *, int (*)(void *, int), void *);
extern int sqlite3_is_interrupted(sqlite3 *);
extern void *sqlite3_get_clientdata(sqlite3 *, const char *);
extern int sqlite3_set_clientdata(sqlite3 *, const char *, void *, void (*)(void *));

typedef struct {
	sqlite3 *db;
	int timeout;     // ms; 0: no handler set (sqliteproxy_busy_timeout)
	long long start; // ms on the monotonic clock when this wait began
	long long last;  // ms when the handler last returned
} sqliteproxy_busy_arg;

static long long sqliteproxy_now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// sqliteproxy_busy is SQLite's default busy handler (sqliteDefaultBusyCallback,
// with usleep: the same delays) that counts the time really waited, sleeps
// at most 5 ms at a time and gives up once db is interrupted. count is 0 at
// the first call of each wait, but SQLite resets it only at the end of a
// prepare: a call long after the last one (more than the longest delay)
// begins a wait too.
static int sqliteproxy_busy(void *p, int count) {
	static const unsigned char delays[] = {1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100};
	enum { n = sizeof(delays) / sizeof(delays[0]), slice = 5 };
	sqliteproxy_busy_arg *a = p;
	long long now = sqliteproxy_now_ms();
	if (count == 0 || now - a->last > 250) {
		a->start = now;
	}
	if (sqlite3_is_interrupted(a->db)) {
		return 0;
	}
	long long left = a->start + a->timeout - now;
	if (left <= 0) {
		return 0;
	}
	long long delay = delays[count < n ? count : n - 1];
	if (delay > left) {
		delay = left;
	}
	while (delay > 0) {
		long long d = delay < slice ? delay : slice;
		struct timespec ts = {0, (long)(d * 1000000)};
		nanosleep(&ts, 0);
		delay -= d;
		if (sqlite3_is_interrupted(a->db)) {
			return 0;
		}
	}
	a->last = sqliteproxy_now_ms();
	return 1;
}

// sqliteproxy_set_busy sets sqliteproxy_busy with timeout (ms) on db, or
// no handler for 0 (fail at once); its argument lives as long as db (client
// data: freed when db closes) and is reused when set again. It returns
// SQLite's result code.
static int sqliteproxy_set_busy(void *db, int timeout) {
	sqliteproxy_busy_arg *a = sqlite3_get_clientdata(db, "sqliteproxy.busy");
	if (timeout <= 0) {
		if (a != 0) {
			a->timeout = 0;
		}
		return sqlite3_busy_handler(db, 0, 0);
	}
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
	a->start = 0;
	a->last = 0;
	return sqlite3_busy_handler(db, sqliteproxy_busy, a);
}

// sqliteproxy_busy_timeout returns the timeout (ms) sqliteproxy_set_busy
// last set on db (0: none), -1 if it never did.
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
