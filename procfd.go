package sqliteproxy

import "github.com/sqliteproxy/sqliteproxy/internal/procfd"

// openInProcess reports whether a descriptor of this process refers to the
// file at p (a missing file: false; elsewhere than on Linux: false, as the
// driver said before it asked). POSIX record locks belong to the process,
// and closing any descriptor of a file drops every lock the process holds
// on it (fcntl(2)), those of SQLite's connections included: a file that
// some connection of this process may have open (another proxy's tenant, a
// restore source that is a live tenant) must not be opened and closed
// outside SQLite. This is how the driver tells, from /proc/self/fd, before
// it opens anything.
func openInProcess(p string) (bool, error) { return procfd.Open(p) }

// openInProcessTells: openInProcess can tell (Linux).
const openInProcessTells = procfd.Tells
