//go:build linux

package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallFS mounts a tmpfs of size (as mount's size= option) on a fresh
// directory for the test, or skips the test where that is not allowed (it
// needs root: CI runs as root).
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("mount a small file system (root only): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillFS writes a file into dir until its file system is full, and
// returns the function that removes it.
func fillFS(t *testing.T, dir string) (free func()) {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	return func() { os.Remove(p) }
}

// TestDeleteTenant_DiskFull: deleting tenants is how an operator frees space,
// so a full file system, which leaves no room to checkpoint a tenant's -wal
// into its file, does not stop DeleteTenant (a fault trial: every tenant with
// a -wal was refused with "database or disk is full"). A file another process
// has open is still refused, and nothing of a deleted tenant comes back when
// it is made again.
func TestDeleteTenant_DiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := smallFS(t, "4m")
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := context.Background()
	big := strings.Repeat("x", 2000)
	for _, id := range []string{"acme", "held"} {
		for range 100 {
			if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, big); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop := startChild(t, "TestHoldOpenProcess", holdOpenEnv+"="+filepath.Join(dir, "held.db"))
	free := fillFS(t, dir)
	defer free()

	if err := p.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatalf("delete on a full file system: %v", err)
	}
	for _, s := range []string{"", "-wal", "-shm"} {
		if _, err := os.Lstat(filepath.Join(dir, "acme.db"+s)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("acme.db%s left: %v", s, err)
		}
	}
	if err := p.DeleteTenant(ctx, "held"); err == nil || !strings.Contains(err.Error(), "open in another process") {
		t.Errorf("delete of a tenant another process has open, file system full: %v", err)
	}
	// The check of the fallback itself (above, the checkpoint found the
	// file busy before it found the file system full).
	held, err := p.c.r.tenant("held")
	if err != nil {
		t.Fatal(err)
	}
	if leave, err := p.c.r.gateUnsettled(ctx, held); err == nil || !strings.Contains(err.Error(), "open in another process") {
		if err == nil {
			leave()
		}
		t.Errorf("gateUnsettled on a tenant another process has open: %v", err)
	}
	held.unpin()
	if err := stop(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	free()
	if n := countRows(t, p, "held"); n != 100 {
		t.Errorf("held: %d rows, want 100", n)
	}
	if err := p.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "acme"); n != 0 {
		t.Errorf("acme made again holds %d rows", n)
	}
}

// restoreFrom restores every replica from the file src.
type restoreFrom string

func (src restoreFrom) RestoreReplica(_ context.Context, _, dst string, _ time.Time) error {
	return copyFile(string(src), dst, false)
}

// A DeleteTenant whose replica cannot be erased leaves a marker that keeps
// the tenant from coming back from its replica. On a file system without a
// free inode the marker could not be made, and the delete went on without
// it: the next access restored the deleted rows (adv33). It now fails
// before it deletes anything.
func TestDeleteTenant_NoInodeForTheMarker(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m,nr_inodes=64,mode=0700"); err != nil {
		t.Skipf("mount a small file system (root only): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	plain := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, plain, "acme", 1)
	plain.Close()
	saved := filepath.Join(t.TempDir(), "acme.db")
	if err := copyFile(filepath.Join(dir, "acme.db"), saved, false); err != nil {
		t.Fatal(err)
	}
	replica := fakeReplica(t, "acme", 3)
	l0 := filepath.Join(replica, "acme", "ltx", "0")
	if out, err := exec.Command("chattr", "+i", l0).CombinedOutput(); err != nil { // the store down
		t.Skipf("chattr +i: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", l0).Run() })
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, ReplicaURL: "file://" + replica,
		LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"), ReplicaRestorer: restoreFrom(saved)})
	fill := filepath.Join(dir, "fill")
	if err := os.Mkdir(fill, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(fill, fmt.Sprint(i)))
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		f.Close()
	}
	derr := p.DeleteTenant(context.Background(), "acme")
	if err := os.RemoveAll(fill); err != nil {
		t.Fatal(err)
	}
	_, ferr := os.Lstat(filepath.Join(dir, "acme.db"))
	_, merr := os.Lstat(deletedMarker(filepath.Join(dir, "acme.db")))
	switch {
	case derr == nil:
		t.Fatal("DeleteTenant succeeded though the replica could not be erased")
	case ferr == nil && merr != nil:
		// Refused before anything was deleted: the tenant is whole.
		if n := fileCount(t, filepath.Join(dir, "acme.db"), `SELECT count(*) FROM events`); n != 1 {
			t.Errorf("acme after the refused delete: %d rows, want 1", n)
		}
	case merr != nil:
		t.Fatalf("deleted (%v) with no marker to keep the tenant from its replica: %v", derr, merr)
	default:
		var n int
		if err := p.QueryRowContext(tctx("acme"), `SELECT count(*) FROM events`).Scan(&n); err == nil {
			t.Errorf("the deleted tenant came back from its replica with %d rows", n)
		}
	}
}
