//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// presenceFile names the file in a data directory on which every process
// with a proxy open on the directory holds a POSIX read lock (presence): a
// process can then tell whether another one has the directory open (the
// CLI beside a service, a second service), and read tenants nobody has
// open here without taking SQLite's locks (fanout.go, readClosed) only
// when none does. Not a tenant's name; it stays after Close.
const presenceFile = ".sqliteproxy-processes"

// presences holds, per data directory of this process, the one open
// descriptor of its presence file and how many proxies use it. One per
// process: closing any descriptor of a file drops every POSIX lock this
// process holds on it.
var presences = struct {
	sync.Mutex
	m map[string]*presence
}{m: map[string]*presence{}}

type presence struct {
	f *os.File // nil: the file could not be made or locked
	n int
	// gates holds this process's locks of open-gate slots (below): the
	// number of opens in the slot, or -1 while a replacement holds it.
	// POSIX locks neither conflict within a process nor count: the process
	// takes a slot's lock once for all its holders and gives it back after
	// the last.
	gates map[int64]int
}

// presenceTells says that othersPresent can tell, here.
const presenceTells = true

// joinPresence announces this process on dir (already checked to be a
// directory) and returns the key to leave it with: the directory's device
// and inode, so that two paths of one directory (a symlink) share the one
// descriptor (two, and closing either dropped the process's lock held
// through the other).
func joinPresence(dir string) string {
	key, err := filepath.Abs(dir)
	if err != nil {
		key = dir
	}
	if fi, err := os.Stat(dir); err == nil && fileKey(fi) != "" {
		key = fileKey(fi)
	}
	presences.Lock()
	defer presences.Unlock()
	p := presences.m[key]
	if p == nil {
		p = &presence{}
		f, err := os.OpenFile(filepath.Join(dir, presenceFile), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if err == nil {
			lk := syscall.Flock_t{Type: syscall.F_RDLCK, Start: 0, Len: 1}
			if setlk(f, &lk) == nil {
				p.f = f
				countJoin(f)
			} else {
				f.Close()
			}
		}
		presences.m[key] = p
	} else if p.f != nil {
		// Another proxy of this process: an arrival too, for a read that
		// began while this process had one (presenceJoins).
		countJoin(p.f)
	}
	p.n++
	return key
}

// leavePresence undoes one joinPresence.
func leavePresence(key string) {
	presences.Lock()
	defer presences.Unlock()
	p := presences.m[key]
	if p == nil {
		return
	}
	if p.n--; p.n == 0 && len(p.gates) == 0 {
		closePresence(key, p)
	}
	// Else the last leaveGate closes it: closing the descriptor drops every
	// lock the process holds through it, a restore's or delete's gate too
	// (Close returned during one, and another proxy then opened the old
	// file in its window).
}

// closePresence closes p, the presence of key nobody uses any more;
// presences is locked.
func closePresence(key string, p *presence) {
	if p.f != nil {
		p.f.Close()
	}
	if presences.m[key] == p {
		delete(presences.m, key)
	}
}

// othersPresent reports whether another proxy may have the directory of
// key open: another one of this process (POSIX locks never conflict
// within a process, so only the count tells), another process holding its
// presence lock, or this process could not take its own (a read-only
// directory) and so cannot tell.
func othersPresent(key string) bool {
	presences.Lock()
	defer presences.Unlock()
	p := presences.m[key]
	if p == nil || p.f == nil || p.n > 1 {
		return true
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Start: 0, Len: 1}
	for {
		err := syscall.FcntlFlock(p.f.Fd(), syscall.F_GETLK, &lk)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		// F_GETLK sees only other processes' locks: this one's never
		// conflict with its own.
		return err != nil || lk.Type != syscall.F_UNLCK
	}
}

// The presence file counts the processes that joined it, at joinsAt: a
// read that began while no other process was present can tell afterwards
// whether one arrived meanwhile (presenceJoins before and after).
const joinsAt = 8

// countJoin adds this process to the count of f, under a brief write lock
// of byte 1 (byte 0 holds the presence locks).
func countJoin(f *os.File) {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Start: 1, Len: 1}
	for {
		err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLKW, &lk)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EINTR) {
			return // a reader then sees no arrival: only ever after a failed lock
		}
	}
	var b [8]byte
	f.ReadAt(b[:], joinsAt) // short or missing: zero
	binary.LittleEndian.PutUint64(b[:], binary.LittleEndian.Uint64(b[:])+1)
	f.WriteAt(b[:], joinsAt)
	lk.Type = syscall.F_UNLCK
	syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk)
}

// presenceJoins returns how many processes have joined the directory of
// key so far (a torn read of a count being written differs too, which
// only makes the caller look closer).
func presenceJoins(key string) uint64 {
	presences.Lock()
	defer presences.Unlock()
	p := presences.m[key]
	if p == nil || p.f == nil {
		return 0
	}
	var b [8]byte
	p.f.ReadAt(b[:], joinsAt)
	return binary.LittleEndian.Uint64(b[:])
}

// The open gate keeps a tenant's file from being opened by one process
// while another replaces or removes it (RestoreTenant, DeleteTenant), each
// tenant by a byte of the presence file from gateAt (its slot: a hash of
// the ID; tenants that share a slot only wait for each other more often).
//
// A replacement checks that no process has the file open (its -shm and
// -wal: settle) and then renames over it. A process that opened the file
// between the two kept the old one: its writes were acknowledged into a
// file no longer the tenant's, and its -wal and -shm, named after the
// path, then went with the new file (a trial lost every row such a
// process wrote). Opening a connection holds the slot shared until SQLite
// has made its -shm (which a replacement's check then sees); a replacement
// holds it exclusively from before its check until after its rename.
const (
	gateAt    = 1 << 20
	gateSlots = 1 << 16
)

func gateSlot(id string) int64 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return gateAt + int64(h.Sum32()%gateSlots)
}

// gateWaits, set by tests, is called when an open or a replacement has
// to wait at the gate.
var gateWaits func(replace bool)

// enterGate waits until tenant id's slot of the directory of key can be
// held, shared (an open) or exclusively (replace), and returns the
// function that gives it back. It waits until ctx ends, stop closes
// (ErrClosed) or, for a ctx without deadline, busy has passed. Where the
// presence file could not be locked (a read-only directory) it holds
// nothing.
func enterGate(ctx context.Context, stop <-chan struct{}, busy time.Duration, key, id string, replace bool) (leave func(), err error) {
	slot := gateSlot(id)
	var deadline time.Time // busy from the wait's start, for a ctx without deadline
	for delay, waited := 50*time.Microsecond, false; ; delay = min(2*delay, 10*time.Millisecond) {
		presences.Lock()
		p := presences.m[key]
		if p == nil || p.f == nil {
			presences.Unlock()
			return func() {}, nil
		}
		if p.gates == nil {
			p.gates = map[int64]int{}
		}
		n, held, lerr := p.gates[slot], false, error(nil)
		switch {
		case replace && n == 0:
			if lerr = setlk(p.f, &syscall.Flock_t{Type: syscall.F_WRLCK, Start: slot, Len: 1}); lerr == nil {
				p.gates[slot], held = -1, true
			}
		case !replace && n > 0:
			p.gates[slot], held = n+1, true
		case !replace && n == 0:
			if lerr = setlk(p.f, &syscall.Flock_t{Type: syscall.F_RDLCK, Start: slot, Len: 1}); lerr == nil {
				p.gates[slot], held = 1, true
			}
		}
		presences.Unlock()
		if held {
			return func() { leaveGate(key, p, slot) }, nil
		}
		if lerr != nil && !errors.Is(lerr, syscall.EAGAIN) && !errors.Is(lerr, syscall.EACCES) {
			return nil, lerr
		}
		if !waited {
			waited = true
			if gateWaits != nil {
				gateWaits(replace)
			}
			if _, ok := ctx.Deadline(); !ok {
				deadline = time.Now().Add(busy)
			}
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, errGateBusy
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-stop:
			t.Stop()
			return nil, ErrClosed
		case <-t.C:
		}
	}
}

// leaveGate gives back one holder's part of slot of p, the presence of
// key, closing p if it was left meanwhile (leavePresence).
func leaveGate(key string, p *presence, slot int64) {
	presences.Lock()
	defer presences.Unlock()
	n := p.gates[slot]
	if n > 1 {
		p.gates[slot] = n - 1
		return
	}
	delete(p.gates, slot)
	if p.f != nil {
		setlk(p.f, &syscall.Flock_t{Type: syscall.F_UNLCK, Start: slot, Len: 1})
	}
	if p.n == 0 && len(p.gates) == 0 {
		closePresence(key, p)
	}
}
