//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"errors"
	"os"
	"syscall"
)

// shmDMS is the byte of a -shm file that SQLite's unix VFS keeps locked,
// shared, for as long as a connection has its database open in WAL mode
// (UNIX_SHM_DMS in os_unix.c: (22+8)*4 + 8).
const shmDMS = 128

// errShmInUse: another process has the database of a -shm file open.
var errShmInUse = errors.New("in use by another process")

// lockShm takes the lock every connection to the database of the -shm
// file at p holds, exclusively, without waiting: errShmInUse if another
// process has the database open. While it is held, no other process can
// start using the file (SQLite's open waits in its busy handler). release
// gives it up; with no -shm file, there is nothing to lock and release is
// a no-op. It must not be used on a file a connection of this process has
// open: POSIX locks are the process's, and closing this descriptor would
// drop that connection's.
func lockShm(p string) (release func(), err error) {
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := setlk(f, &syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: shmDMS, Len: 1}); err != nil {
		f.Close()
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
			return nil, errShmInUse
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
