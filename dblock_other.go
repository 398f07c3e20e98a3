//go:build !linux

package sqliteproxy

// lockOutOthers cannot lock other connections out without dropping this
// process's own locks here (no open file description locks): the caller
// reads the normal way.
func lockOutOthers(string) (release func(), ok bool) { return nil, false }
