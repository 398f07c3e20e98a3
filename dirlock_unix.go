//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes a lock (flock(2)) on the data directory dir itself:
// shared for a proxy, which holds it until Close, exclusive for Relayout.
// It never waits: it fails with errDirLocked when the other kind is held.
// The lock lives as long as the returned file.
func lockDir(dir string, exclusive bool) (*os.File, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err = syscall.Flock(int(d.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		d.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errDirLocked
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return d, nil
}
