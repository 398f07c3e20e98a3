//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package sqliteproxy

// presenceFile: see presence_unix.go. Here no process can tell another's
// presence, and closed tenants are always read with SQLite's locks.
const presenceFile = ".sqliteproxy-processes"

// presenceTells says that othersPresent cannot tell, here.
const presenceTells = false

func joinPresence(dir string) string { return dir }
func leavePresence(string)           {}
func othersPresent(string) bool      { return true }
func presenceJoins(string) uint64    { return 0 }
