//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package sqliteproxy

import (
	"errors"
	"os"
)

// lockDir opens dir without locking it: on this system a running proxy
// does not keep Relayout out (stop it first).
func lockDir(dir string, exclusive bool) (*os.File, error) {
	return os.Open(dir)
}

// lockReplicating cannot keep a second replicating proxy out on this
// system: run one per directory.
func lockReplicating(string) (*os.File, error) { return nil, nil }

// lockHeld cannot tell here: every lock counts as held, and no template
// directory is swept.
func lockHeld(*os.File) bool { return true }

// fileKey cannot name a file here: "" (see the unix version).
func fileKey(os.FileInfo) string { return "" }

// openRegular opens the regular file at p for reading (see the unix
// version; here a symlink is looked at first).
func openRegular(p string) (*os.File, error) {
	if fi, err := os.Lstat(p); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New(p + " is not a regular file")
	}
	return os.Open(p)
}

// linkCount cannot tell here: 1.
func linkCount(os.FileInfo) uint64 { return 1 }
