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

// SQLite's lock bytes in a database file (os.h): the PENDING byte, the
// RESERVED byte after it, then the 510 bytes of the SHARED range.
const (
	pendingByte = 0x40000000
	dbLockBytes = 2 + 510
)

// lockDatabase takes, on the database file f, what an EXCLUSIVE SQLite
// connection holds (the PENDING, RESERVED and SHARED bytes, written),
// without waiting: errShmInUse if a process uses the database (a WAL
// connection holds SHARED for as long as it is open; a rollback-journal
// one for each transaction). While it is held, no process starts reading
// or writing the file: SQLite's SHARED lock, which every transaction takes
// first, waits in its busy handler. On Linux it is an open file
// description lock: this process's own connections (another proxy's
// tenant) wait for it too, and only closing f releases it; elsewhere a
// POSIX lock, which they do not see and which closing any descriptor of
// the file in this process releases. A file opened read-only cannot be
// locked that way: it is only looked at, and nothing keeps a process from
// starting to use it afterwards.
func lockDatabase(f *os.File, writable bool) error {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: pendingByte, Len: dbLockBytes}
	if !writable {
		err := fcntlLock(f, lockCmdGet, &lk)
		if err == nil && lk.Type != syscall.F_UNLCK {
			return errShmInUse
		}
		return err
	}
	err := fcntlLock(f, lockCmdSet, &lk)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		return errShmInUse
	}
	return err
}
