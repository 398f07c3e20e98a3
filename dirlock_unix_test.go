//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A lock whose holder has let it go, but whose open file description
// lives on a moment longer (as in a child forked by another goroutine
// until it execs: TestRelayout_Interrupted failed so beside the tests that
// run commands), does not refuse the next taker; a holder that keeps it
// does.
func TestLockDir_ForkGrace(t *testing.T) {
	dir := t.TempDir() // not parallel: sets lockDirRefused
	held, err := lockDir(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	dup, err := syscall.Dup(int(held.Fd())) // what a forked child holds until exec
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	refused := 0
	lockDirRefused = func() {
		if refused++; refused == 3 {
			syscall.Close(dup) // the child execs
		}
	}
	shared, err := lockDir(dir, false)
	lockDirRefused = nil
	if refused < 3 {
		t.Errorf("taken after %d refusals, before the child exec'd", refused)
	}
	if err != nil {
		t.Fatalf("lock given up, its description closed within the grace: %v", err)
	}
	start := time.Now()
	if _, err := lockDir(dir, true); !errors.Is(err, errDirLocked) {
		t.Errorf("exclusive beside a shared holder: %v", err)
	}
	if waited := time.Since(start); waited < forkGrace {
		t.Errorf("refused after %v, before the grace of %v", waited, forkGrace)
	}
	shared.Close()
	ex, err := lockDir(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	ex.Close()
}

// Two paths of one directory (a symlink) are one presence: with a
// descriptor each, closing either dropped the process's lock held through
// the other, and other processes no longer saw the proxy still open.
func TestPresence_SymlinkedDirIsOne(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	a, b := joinPresence(dir), joinPresence(link)
	defer leavePresence(a)
	if a != b {
		t.Fatalf("keys %q and %q for one directory", a, b)
	}
	if !othersPresent(a) {
		t.Error("two proxies of this process on the directory: othersPresent = false")
	}
	leavePresence(b)
	presences.Lock()
	p := presences.m[a]
	presences.Unlock()
	if p == nil || p.f == nil || p.n != 1 {
		t.Fatalf("after one leaves: %+v, want the descriptor kept for the other", p)
	}
	if othersPresent(a) {
		t.Error("one proxy left: othersPresent = true")
	}
}
