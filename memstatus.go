package sqliteproxy

// SQLite's memory statistics, off. By default SQLite counts every
// allocation it makes (SQLITE_CONFIG_MEMSTATUS), under one mutex for the
// whole process: every malloc and free of every connection takes it. With
// many tenants opened and closed at once (MigrateAll's workers, a churning
// working set, a fan-out) the goroutines' threads queue on that mutex:
// futex waits and wake-ups were a fifth of a no-op MigrateAll's samples,
// which took 1.33 s over 10 000 tenants with the statistics and 0.81 s
// without (tmpfs, two cores). SQLite itself recommends them off
// (SQLITE_DEFAULT_MEMSTATUS=0, "Recommended Compile-time Options"); mattn
// compiles them in. The statistics exist only for sqlite3_memory_used,
// sqlite3_status and the heap limits: without them PRAGMA soft_heap_limit
// and hard_heap_limit have no effect in this process (the proxy refuses
// both on tenant connections anyway: they are the whole process's). Build
// with the tag sqliteproxy_memstatus to keep them.
//
// sqlite3_config works only before SQLite initializes, which it does at
// the first connection the process opens: this package's init runs before
// main, so only a connection opened in another package's init comes
// first. SQLite then answers SQLITE_MISUSE and keeps its statistics
// (memStatusErr says so).

/*
typedef struct sqlite3 sqlite3;
typedef long long sqlite3_int64;
extern int sqlite3_config(int, ...);
extern sqlite3_int64 sqlite3_memory_used(void);

// sqliteproxy_memstatus_off sets SQLITE_CONFIG_MEMSTATUS (9) to 0.
static int sqliteproxy_memstatus_off(void) { return sqlite3_config(9, 0); }
*/
import "C"

import (
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// memStatusErr is SQLite's refusal to turn its memory statistics off (it
// had initialized already); nil once they are off.
var memStatusErr error

func init() {
	if keepMemStatus {
		return
	}
	if rc := C.sqliteproxy_memstatus_off(); rc != 0 {
		code := sqlite3.ErrNo(rc)
		memStatusErr = fmt.Errorf("sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0): %w", sqlite3.Error{Code: code, ExtendedCode: sqlite3.ErrNoExtended(code)})
	}
}

// sqliteMemoryUsed is sqlite3_memory_used: 0 while the statistics are off
// (tests).
func sqliteMemoryUsed() int64 { return int64(C.sqlite3_memory_used()) }
