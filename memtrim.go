package sqliteproxy

// Giving memory back to the OS. Every tenant opened and closed has SQLite
// allocate and free its page cache, lookaside and schema (~200 KB per
// connection) with the C allocator. glibc's malloc keeps what is freed in
// per-thread arenas, and with connections opened on one thread and closed
// on another they fragment: after 100 000 tenants touched once behind a
// cap of 100 connections, ~55 MB of freed memory stayed resident on top of
// the ~20 MB in use (BenchmarkTouchOnce). malloc_trim returns those free
// pages. It is looked up at run time, so that C libraries without it (musl,
// macOS) build and simply skip it.

/*
#cgo linux LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef int (*sqliteproxy_trim_fn)(size_t);

static void *sqliteproxy_find_trim(void) { return dlsym(RTLD_DEFAULT, "malloc_trim"); }

static void sqliteproxy_trim(void *fn) { ((sqliteproxy_trim_fn)fn)(0); }
*/
import "C"

import (
	"sync"
	"time"
	"unsafe"
)

// trimAfter is how long closing tenants must have stopped before the
// memory they freed is given back: trimming takes the allocator's locks,
// so it waits for a lull rather than running beside a wave of opens.
const trimAfter = time.Second

var mallocTrim = sync.OnceValue(func() unsafe.Pointer { return C.sqliteproxy_find_trim() })

// releaseFreedMemory gives the C allocator's free pages back to the OS,
// where it can (glibc); elsewhere it does nothing.
func releaseFreedMemory() {
	if fn := mallocTrim(); fn != nil {
		C.sqliteproxy_trim(fn)
	}
}
