//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import "syscall"

// Process-wide POSIX record locks: no open file description locks here, so
// this process's own connections do not conflict with them.
const (
	lockCmdSet = syscall.F_SETLK
	lockCmdGet = syscall.F_GETLK
)
