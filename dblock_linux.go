package sqliteproxy

import (
	"errors"
	"os"
	"syscall"
)

// SQLite's locks on a database file (os_unix.c): a connection takes a
// read lock on sharedFirst..+sharedSize to read (SHARED; in WAL mode it
// keeps it while open), passing through a read lock on pendingByte, which
// a writer in rollback mode holds write-locked to keep new readers out.
const (
	pendingByte = 0x40000000
	sharedFirst = pendingByte + 2
	sharedSize  = 510
)

// fOFDSetLK is F_OFD_SETLK: a lock of the open file description, which
// conflicts with the POSIX locks SQLite takes, from any process, this
// one's included, and is not dropped when another descriptor of the file
// is closed.
const fOFDSetLK = 37

// lockOutOthers takes, without waiting, SQLite's EXCLUSIVE lock on the
// database file at p, as a lock of its own open file description: ok is
// false when any connection (of any process, this one's too) has the file
// open, or the lock cannot be taken. While it is held, a connection that
// opens the file waits in its busy handler before its first read, so
// nothing can change the file. release gives it up.
func lockOutOthers(p string) (release func(), ok bool) {
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false
	}
	for _, lk := range []syscall.Flock_t{
		{Type: syscall.F_WRLCK, Start: pendingByte, Len: 1},
		{Type: syscall.F_WRLCK, Start: sharedFirst, Len: sharedSize},
	} {
		for {
			err = syscall.FcntlFlock(f.Fd(), fOFDSetLK, &lk)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		if err != nil {
			f.Close()
			return nil, false
		}
	}
	return func() { f.Close() }, true
}
