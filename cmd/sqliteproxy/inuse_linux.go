package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/sqliteproxy/sqliteproxy/internal/procfd"
)

// holder returns the ID of a process that has the SQLite database at path
// open, 0 when none has: any descriptor of this process on the file or its
// -shm (/proc/self/fd), else another process's lock on either, which SQLite
// holds for as long as a connection is open (a shared lock on the file's
// SHARED range, and in WAL mode on the -shm's DMS byte), asked with
// F_GETLK, which takes no lock. It opens the file and -shm only to ask, and
// only when this process has neither open (closing a descriptor drops
// every POSIX lock the process holds on the file). ok is false where that
// cannot be told: then the side files' presence decides, as before.
func holder(path string) (pid int, ok bool) {
	for _, p := range []string{path, path + "-shm"} {
		if in, err := procfd.Open(p); err != nil {
			return 0, false
		} else if in {
			return os.Getpid(), true
		}
	}
	for _, lk := range []struct {
		suffix     string
		start, len int64
	}{
		{"-shm", 128, 1},          // UNIX_SHM_DMS
		{"", 0x40000000 + 2, 510}, // SHARED_FIRST, SHARED_SIZE
	} {
		f, err := os.Open(path + lk.suffix)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, false
		}
		fl := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: lk.start, Len: lk.len}
		err = syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &fl)
		f.Close()
		if err != nil {
			return 0, false
		}
		if fl.Type != syscall.F_UNLCK {
			return int(fl.Pid), true
		}
	}
	return 0, true
}

// inUseBy is notInUse's refusal naming the process.
func inUseBy(pid int) error {
	return fmt.Errorf("in use: process %d has the tenant open (the service?); stop it first, or pass -force if it does not write it", pid)
}
