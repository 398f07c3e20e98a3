//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package sqliteproxy

import (
	"errors"
	"os"
)

var errShmInUse = errors.New("in use by another process")

// lockShm cannot tell, here, whether another process uses a -shm file.
func lockShm(string) (func(), error) { return func() {}, nil }

// lockDatabase cannot tell, here, whether another process uses a database.
func lockDatabase(*os.File, bool) error { return nil }
