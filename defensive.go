package sqliteproxy

// SQLITE_DBCONFIG_DEFENSIVE on every tenant connection: SQLite then
// refuses what can only corrupt a database on purpose, beyond what the
// authorizer can tell (harden.go). Above all, writes to the shadow tables
// of FTS3/FTS4 and R*Tree tables, which mattn compiles in: a tenant's
// UPDATE of an FTS4 table's x_segdir made its next merge loop forever
// inside SQLite, holding the tenant's writer and a processor until the
// process was killed (adv53); crafted shadow-table content has been the
// way to SQLite's memory-safety bugs before. The authorizer cannot refuse
// those writes: the virtual table's own statements, which must write them,
// look the same to it. mattn exposes no sqlite3_db_config, so the handle
// is read from its SQLiteConn (its unexported db field) and the call made
// here; the symbol is the SQLite mattn links in.

/*
typedef struct sqlite3 sqlite3;
extern int sqlite3_db_config(sqlite3 *, int op, ...);
extern void sqlite3_interrupt(sqlite3 *);
extern int sqlite3_file_control(sqlite3 *, const char *, int, void *);

// sqliteproxy_persist_wal sets SQLITE_FCNTL_PERSIST_WAL (10) on the main
// database's file and returns SQLite's result code.
static int sqliteproxy_persist_wal(void *db) {
	int on = 1;
	return sqlite3_file_control((sqlite3 *)db, "main", 10, &on);
}

static void sqliteproxy_interrupt(void *db) {
	sqlite3_interrupt((sqlite3 *)db);
}

// sqliteproxy_defensive sets SQLITE_DBCONFIG_DEFENSIVE (1010) to set (-1:
// leaves it) and returns it as it is then, or -1 if SQLite refused.
static int sqliteproxy_defensive(void *db, int set) {
	int on = -1;
	if (sqlite3_db_config((sqlite3 *)db, 1010, set, &on) != 0) {
		return -1;
	}
	return on;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"unsafe"

	"github.com/mattn/go-sqlite3"
)

// sqliteHandle returns c's sqlite3 handle, or nil when mattn's SQLiteConn
// has no pointer field named db (another layout than the one go.mod pins).
func sqliteHandle(c *sqlite3.SQLiteConn) unsafe.Pointer {
	f := reflect.ValueOf(c).Elem().FieldByName("db")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.IsNil() {
		return nil
	}
	return f.UnsafePointer()
}

// errNoHandle: mattn's SQLiteConn is not laid out as go.mod's version is.
var errNoHandle = errors.New("mattn's SQLiteConn has no db handle where this version expects it")

// setDefensive turns SQLITE_DBCONFIG_DEFENSIVE on for c. Without a handle
// (a mattn of another layout) it does nothing and says so: the authorizer
// still applies, and a driver that refused every connection after a mattn
// upgrade would keep users from SQLite's own fixes. The tests hold the
// pinned version to it (TestHardening_Defensive).
func setDefensive(c *sqlite3.SQLiteConn) error {
	db := sqliteHandle(c)
	if db == nil {
		return errNoHandle
	}
	if C.sqliteproxy_defensive(db, 1) != 1 {
		return errors.New("SQLite refused SQLITE_DBCONFIG_DEFENSIVE")
	}
	return nil
}

// defensiveOn reports whether SQLITE_DBCONFIG_DEFENSIVE is on for c (tests).
func defensiveOn(c *sqlite3.SQLiteConn) (bool, error) {
	db := sqliteHandle(c)
	if db == nil {
		return false, errNoHandle
	}
	return C.sqliteproxy_defensive(db, -1) == 1, nil
}

// interruptConn interrupts what c runs (sqlite3_interrupt, which may be
// called from any goroutine while c is in use; mattn calls it only when a
// statement's own context ends). Without a handle it does nothing: the
// group commit's leader still stops at its next statement.
func interruptConn(c *sqlite3.SQLiteConn) {
	if db := sqliteHandle(c); db != nil {
		C.sqliteproxy_interrupt(db)
	}
}

// keepWAL makes c keep the tenant's -wal and -shm files when it is the
// last connection to close (Config.KeepWAL): SQLITE_FCNTL_PERSIST_WAL, a
// flag of c's descriptor of the file, which SQLite reads when that
// connection closes. A journal_size_limit of its own (SQLite keeps none by
// default) makes that close empty the checkpointed -wal rather than leave
// it at its size; it also trims a -wal that grew past walLimit when a
// writer starts it over. Without a handle (another mattn layout) it fails:
// KeepWAL asked for something that cannot be done.
func keepWAL(c *sqlite3.SQLiteConn) error {
	db := sqliteHandle(c)
	if db == nil {
		return errNoHandle
	}
	if rc := C.sqliteproxy_persist_wal(db); rc != 0 {
		return fmt.Errorf("SQLite refused SQLITE_FCNTL_PERSIST_WAL (code %d)", int(rc))
	}
	_, err := c.Exec("PRAGMA journal_size_limit = "+strconv.FormatInt(walLimit, 10), nil)
	return err
}
