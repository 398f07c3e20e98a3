package sqliteproxy

// Giving memory back to the OS. Every tenant opened and closed has SQLite
// allocate and free its page cache, lookaside and schema (~200 KB per
// connection) with the C allocator. glibc's malloc keeps what is freed in
// per-thread arenas, and with connections opened on one thread and closed
// on another they fragment: after 100 000 tenants touched once behind a
// cap of 100 connections, ~55 MB of freed memory stayed resident on top of
// the ~20 MB in use (BenchmarkTouchOnce). malloc_trim returns those free
// pages. It exists in glibc only: elsewhere (musl, macOS) this is a no-op.
// (Decided at compile time, not with dlsym: dlsym is not usable from the
// fully static binaries `make static` builds.)

/*
#include <stdlib.h> // defines __GLIBC__ on glibc
#ifdef __GLIBC__
#include <malloc.h>
static void sqliteproxy_trim(void) { malloc_trim(0); }
#else
static void sqliteproxy_trim(void) {}
#endif
*/
import "C"

import "time"

// trimAfter is how long closing tenants must have stopped before the
// memory they freed is given back: trimming takes the allocator's locks,
// so it waits for a lull rather than running beside a wave of opens.
const trimAfter = time.Second

// releaseFreedMemory gives the C allocator's free pages back to the OS,
// where it can (glibc); elsewhere it does nothing.
func releaseFreedMemory() { C.sqliteproxy_trim() }
