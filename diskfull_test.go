//go:build linux

package sqliteproxy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
