//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// forkGrace bounds how long lockDir keeps trying a lock that is held. A
// flock(2) belongs to the open file description, which a child forked by
// any goroutine of the process shares until it execs (close-on-exec closes
// it only then): for that moment a lock its holder has already given up
// is still held. Anything held longer is a real holder.
const forkGrace = 100 * time.Millisecond

// lockDirRefused, set by tests, is called each time lockDir finds the
// lock held and will try again.
var lockDirRefused func()

// lockDir takes a lock (flock(2)) on the data directory dir itself:
// shared for a proxy, which holds it until Close, exclusive for Relayout.
// It does not wait for a holder: it fails with errDirLocked when the other
// kind is held for longer than forkGrace. The lock lives as long as the
// returned file.
func lockDir(dir string, exclusive bool) (*os.File, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	deadline := time.Now().Add(forkGrace)
	for {
		err = flockNB(d, how)
		if !errors.Is(err, syscall.EWOULDBLOCK) || !time.Now().Before(deadline) {
			break
		}
		if lockDirRefused != nil {
			lockDirRefused()
		}
		time.Sleep(time.Millisecond)
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

// lockReplicating takes, without waiting, the exclusive lock a proxy that
// streams dir's tenants holds until Close: errReplicating when another
// proxy (this process or another) holds it. Two would register each tenant
// with two Litestreams, which write one replica with two histories and
// corrupt it (restores fail their checksums).
func lockReplicating(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, replicatingLock), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := flockNB(f, syscall.LOCK_EX); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errReplicating
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}

// lockHeld takes, without waiting, an exclusive flock(2) on the open
// directory (or file) f: false when another open file description holds
// one, in any process (flocks are not dropped by closing other descriptors,
// and do not depend on process IDs, which another PID namespace sees
// otherwise).
func lockHeld(f *os.File) bool { return flockNB(f, syscall.LOCK_EX) != nil }

// flockNB takes the flock(2) how (LOCK_SH or LOCK_EX) on f without
// waiting, trying again when a signal interrupts it.
func flockNB(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// setlk sets the POSIX record lock lk on f without waiting (F_SETLK),
// trying again when a signal interrupts it.
func setlk(f *os.File, lk *syscall.Flock_t) error { return fcntlLock(f, syscall.F_SETLK, lk) }

// fcntlLock runs the record-lock command cmd (F_SETLK, F_GETLK, their OFD
// forms) with lk on f, trying again when a signal interrupts it.
func fcntlLock(f *os.File, cmd int, lk *syscall.Flock_t) error {
	for {
		err := syscall.FcntlFlock(f.Fd(), cmd, lk)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// fileKey names the file fi describes by its device and inode: the same
// for every path of one file, and kept by a rename.
func fileKey(fi os.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("dev %d ino %d", st.Dev, st.Ino)
	}
	return ""
}

// openRegular opens the regular file at p for reading: a symlink is not
// followed, and a FIFO or device is refused without blocking.
func openRegular(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symlink, not a regular file", p)
	}
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, errors.Join(err, fmt.Errorf("%s is not a regular file", p))
	}
	return f, nil
}

// linkCount returns how many names the file fi describes has (1 where
// that cannot be told).
func linkCount(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
