// Package procfd tells whether this process has a file open.
package procfd

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
)

// Tells: Open can tell, here.
const Tells = true

// Open reports whether a descriptor of this process refers to the file at
// p (a missing file: false), from /proc/self/fd. POSIX record locks belong
// to the process, and closing any descriptor of a file drops every lock the
// process holds on it (fcntl(2)), those of SQLite's connections included:
// a file that some connection of this process may have open must not be
// opened and closed outside SQLite, and this is how to tell before opening
// anything.
func Open(p string) (bool, error) {
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		// Stat follows the link to the open file without opening it.
		if fdi, err := os.Stat("/proc/self/fd/" + e.Name()); err == nil && os.SameFile(fi, fdi) {
			return true, nil
		}
	}
	return false, nil
}
