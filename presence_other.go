//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package sqliteproxy

import (
	"context"
	"time"
)

// presenceFile: see presence_unix.go. Here no process can tell another's
// presence, and closed tenants are always read with SQLite's locks.
const presenceFile = ".sqliteproxy-processes"

// presenceTells says that othersPresent cannot tell, here.
const presenceTells = false

func joinPresence(dir string) string { return dir }
func leavePresence(string)           {}
func othersPresent(string) bool      { return true }
func presenceJoins(string) uint64    { return 0 }

// enterGate: see presence_unix.go; here nothing is held.
func enterGate(context.Context, <-chan struct{}, time.Duration, string, string, bool) (func(), error) {
	return func() {}, nil
}

var gateWaits func(replace bool)
