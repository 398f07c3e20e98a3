//go:build linux

package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// openTenants returns the IDs of p's open tenants.
func openTenants(p *Proxy) map[string]bool {
	open := map[string]bool{}
	for _, ts := range p.Stats().Tenants {
		open[ts.ID] = true
	}
	return open
}

// insertN inserts n rows into tenant id's events table through p.
func insertN(t *testing.T, p *Proxy, id string, n int) {
	t.Helper()
	for range n {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatalf("insert into %s: %v", id, err)
		}
	}
}

// removeTenantFiles removes tenant id's file and side files behind p's
// back, as `rm acme.db*` does.
func removeTenantFiles(t *testing.T, dir, id string) {
	t.Helper()
	for _, s := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(filepath.Join(dir, id+".db"+s)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// TestFileWatch_DeletedWhileOpen: a tenant file removed while the tenant is
// open is noticed and the tenant closed, so that what is written next is
// written to the file at its path (created anew, empty) rather than to the
// removed one, acknowledged and lost. Other tenants stay open. Under
// ExplicitCreate the next write is refused with ErrTenantNotFound.
func TestFileWatch_DeletedWhileOpen(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "lazy", true: "explicit"}[explicit], func(t *testing.T) {
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, ExplicitCreate: explicit})
			for _, id := range []string{"acme", "globex"} {
				if explicit {
					if err := p.CreateTenant(context.Background(), id); err != nil {
						t.Fatal(err)
					}
				}
				insertN(t, p, id, 3)
			}
			removeTenantFiles(t, dir, "acme")
			waitFor(t, 5*time.Second, "acme closed after its file was removed", func() bool { return !openTenants(p)["acme"] })
			if !openTenants(p)["globex"] {
				t.Error("globex was closed too")
			}
			_, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`)
			if explicit {
				if !errors.Is(err, ErrTenantNotFound) {
					t.Fatalf("insert after removal: %v, want ErrTenantNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			insertN(t, p, "acme", 4)
			// What was acknowledged since is in the file at the path.
			if n := queryInt(t, direct(t, dir, "acme"), context.Background(), `SELECT count(*) FROM events`); n != 5 {
				t.Errorf("acme's file holds %d rows, want the 5 written after its removal", n)
			}
			if n := countRows(t, p, "globex"); n != 3 {
				t.Errorf("globex: %d rows, want 3", n)
			}
		})
	}
}

// TestFileWatch_ReplacedWhileOpen: a backup moved over an open tenant's file
// (mv backup.db acme.db) is what the tenant reads and writes from then on,
// not the replaced file its connections had open.
func TestFileWatch_ReplacedWhileOpen(t *testing.T) {
	dir, bdir := t.TempDir(), t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 2)
	backup := filepath.Join(bdir, "acme.db")
	if err := p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	insertN(t, p, "acme", 3) // in the replaced file only
	if err := os.Rename(backup, filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "acme closed after its file was replaced", func() bool { return !openTenants(p)["acme"] })
	if n := countRows(t, p, "acme"); n != 2 {
		t.Fatalf("acme reads %d rows, want the backup's 2", n)
	}
	insertN(t, p, "acme", 1)
	if n := queryInt(t, direct(t, dir, "acme"), context.Background(), `SELECT count(*) FROM events`); n != 3 {
		t.Errorf("acme's file holds %d rows, want 3", n)
	}
}

// TestFileWatch_TxRolledBack: a transaction in progress when its tenant's
// file is removed commits nothing to the removed file: its next statement
// and its commit fail with the reason, and the tenant is closed once the
// transaction has ended.
func TestFileWatch_TxRolledBack(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	tx, err := p.BeginTx(tctx("acme"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	tn.unpin()
	removeTenantFiles(t, dir, "acme")
	waitFor(t, 5*time.Second, "acme fenced after its file was removed", tn.moved.Load)
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('acme')`); !errors.Is(err, errFileMoved) {
		t.Errorf("statement in the transaction: %v, want errFileMoved", err)
	}
	if err := tx.Commit(); !errors.Is(err, errFileMoved) {
		t.Errorf("commit: %v, want errFileMoved", err)
	}
	waitFor(t, 5*time.Second, "acme closed", func() bool {
		// The next use closes it (the transaction held the writer when the
		// watch saw the removal).
		p.ExecContext(tctx("acme"), `SELECT 1`)
		return !tn.moved.Load()
	})
	if n := countRows(t, p, "acme"); n != 0 {
		t.Errorf("acme: %d rows, want 0 (created anew)", n)
	}
}

// TestFileWatch_OwnChangesIgnored: the proxy's own creations, restores and
// deletions close no open tenant, nor does a chmod: the watch closes a
// tenant only when the file at its path is not the one it opened. Each
// restored tenant is opened again at once, so that the restore's rename,
// if taken for a move, would close it.
func TestFileWatch_OwnChangesIgnored(t *testing.T) {
	dir, bdir := t.TempDir(), t.TempDir()
	rig := newTelemetryRig(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	p := rig.p
	ctx := context.Background()
	insertN(t, p, "acme", 1)
	for i := range 20 {
		id := "t" + string(rune('a'+i))
		if err := p.CreateTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
		insertN(t, p, id, 1)
		backup := filepath.Join(bdir, id+".db")
		if err := p.BackupTenant(ctx, id, backup); err != nil {
			t.Fatal(err)
		}
		if err := p.RestoreTenant(ctx, id, backup); err != nil {
			t.Fatal(err)
		}
		insertN(t, p, id, 1)
		if i%2 == 0 {
			if err := p.DeleteTenant(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Late events for the restored tenants, open again by now: the watch
	// reads the kernel's events after the fact, and a restore's rename may
	// come after the tenant was opened anew.
	for i := 1; i < 20; i += 2 {
		p.c.r.fileChanged("t" + string(rune('a'+i)))
	}
	if err := os.Chmod(filepath.Join(dir, "acme.db"), 0o640); err != nil {
		t.Fatal(err)
	}
	// A change the watch acts on, after all of the above: once acme is
	// closed for it, the events before it were read too.
	if err := os.Rename(filepath.Join(dir, "acme.db"), filepath.Join(dir, "moved.db")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "acme closed after its file was moved", func() bool { return !openTenants(p)["acme"] })
	ms := rig.collect(t)
	if n := sumInt(t, ms["sqliteproxy.tenant.evictions"], map[string]string{attrReason: "file_moved"}); n != 1 {
		t.Errorf("%d tenants closed for a moved file, want 1 (acme)", n)
	}
	for i := 1; i < 20; i += 2 {
		id := "t" + string(rune('a'+i))
		if n := countRows(t, p, id); n != 2 {
			t.Errorf("%s: %d rows, want 2", id, n)
		}
	}
}

// TestFileWatch_ReplacedWithReaderLeased: a backup moved over the file while
// a read is in progress cannot close the tenant at once; closed later by
// whatever closes it (here IdleTimeout), the old file's -wal and -shm still
// go, and are not replayed into the backup (an adversarial review: the
// idle reaper left them, and both the proxy and mattn read the replaced
// file's rows from the backup).
func TestFileWatch_ReplacedWithReaderLeased(t *testing.T) {
	dir, bdir := t.TempDir(), t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, IdleTimeout: 200 * time.Millisecond})
	insertN(t, p, "acme", 3)
	backup := filepath.Join(bdir, "acme.db")
	if err := p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	insertN(t, p, "acme", 7) // in the old file's -wal
	rows, err := p.QueryContext(tctx("acme"), `SELECT id FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatal("no rows")
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	tn.unpin()
	if err := os.Rename(backup, filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "acme fenced", tn.moved.Load)
	rows.Close()
	waitFor(t, 5*time.Second, "acme closed when idle", func() bool { return !openTenants(p)["acme"] })
	if n := queryInt(t, direct(t, dir, "acme"), context.Background(), `SELECT count(*) FROM events`); n != 3 {
		t.Errorf("acme's file holds %d rows, want the backup's 3", n)
	}
	if n := countRows(t, p, "acme"); n != 3 {
		t.Errorf("acme reads %d rows, want the backup's 3", n)
	}
}

// TestFileWatch_ReplacedByOlderSchema: a file of an older schema moved over
// an open tenant's, while requests hold the tenant, is checked against the
// migrations at its next open, as any file is: migrated in auto mode,
// refused in check mode until MigrateAll migrates it. The tenant stayed
// marked as checked: reads failed on the missing column, check mode served
// the file, and MigrateAll said it had nothing to do.
func TestFileWatch_ReplacedByOlderSchema(t *testing.T) {
	const v2 = `ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 7`
	for _, mode := range []MigrationMode{MigrateAuto, MigrateCheck} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			backup := filepath.Join(t.TempDir(), "acme.db")
			old := newTestProxy(t, Config{Dir: t.TempDir(), Migrations: []string{eventsTable}})
			insertN(t, old, "acme", 2)
			if err := old.BackupTenant(context.Background(), "acme", backup); err != nil {
				t.Fatal(err)
			}
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable, v2}, MigrationMode: mode})
			insertN(t, p, "acme", 1)
			tn, err := p.c.r.tenant("acme") // a request holding it
			if err != nil {
				t.Fatal(err)
			}
			defer tn.unpin()
			tx, err := p.BeginTx(tctx("acme"), nil) // and one holding its writer: the fence stays
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(backup, filepath.Join(dir, "acme.db")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "acme fenced", tn.moved.Load)
			tx.Rollback()
			var first error
			waitFor(t, 5*time.Second, "acme opened anew", func() bool {
				_, first = p.ExecContext(tctx("acme"), `SELECT 1`)
				return !tn.moved.Load()
			})
			if mode == MigrateCheck {
				if !errors.Is(first, ErrPendingMigrations) {
					t.Fatalf("first use of the replaced file: %v, want ErrPendingMigrations", first)
				}
				if rep, err := p.MigrateAll(context.Background(), MigrateOptions{}); err != nil || rep.Migrated != 1 {
					t.Fatalf("MigrateAll: %+v, %v", rep, err)
				}
			}
			if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM events WHERE severity = 7`); n != 2 {
				t.Errorf("the replaced file's rows with the new column: %d, want 2", n)
			}
		})
	}
}

// inotifyInstances counts this process's inotify descriptors.
func inotifyInstances(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// TestFileWatch_OneInstancePerProcess: the proxies of a process share one
// inotify instance (the kernel allows 128 per user by default, and a
// process may open many proxies), each still told of its own tenants only,
// and one proxy's Close leaves the others watched.
func TestFileWatch_OneInstancePerProcess(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	p1 := openProxy(t, dir1)
	insertN(t, p1, "acme", 1)
	n := inotifyInstances(t)
	p2 := openProxy(t, dir2)
	insertN(t, p2, "acme", 1)
	if got := inotifyInstances(t); got != n {
		t.Errorf("%d inotify instances with two proxies, %d with one", got, n)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	removeTenantFiles(t, dir2, "acme")
	waitFor(t, 5*time.Second, "p2's acme closed after its file was removed", func() bool { return !openTenants(p2)["acme"] })
}

// openProxy opens a proxy with the events table on dir, closed at the end of the
// test if it is still open.
func openProxy(t *testing.T, dir string) *Proxy {
	t.Helper()
	p, err := New(Config{Dir: dir, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// DeleteTenant of a tenant whose file this process cannot write (chattr +i
// stands for a file owned by someone else: root ignores permissions) said
// that another process had it open; no other process existed.
func TestDeleteTenant_UnwritableFileNotBlamedOnAProcess(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	p.Close()
	a := filepath.Join(dir, "acme.db")
	if out, err := exec.Command("chattr", "+i", a).CombinedOutput(); err != nil {
		t.Skipf("chattr +i: %v %s", err, out)
	}
	defer exec.Command("chattr", "-i", a).Run()
	p = newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if n := countRows(t, p, "acme"); n != 1 { // opened read-only: its -shm stays
		t.Fatalf("acme: %d rows", n)
	}
	err := p.DeleteTenant(context.Background(), "acme")
	if err == nil || strings.Contains(err.Error(), "another process") || !strings.Contains(err.Error(), "may not write") {
		t.Errorf("DeleteTenant of an unwritable file: %v, want it to say the file may not be writable", err)
	}
}

// A first access in a data directory this process may not write (chattr +i
// stands for a directory owned by someone else) named only a temporary
// file: "open <dir>/.creating-acme-….db: permission denied".
func TestCreate_UnwritableDirSaysSo(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		t.Skipf("chattr +i: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	_, err := p.DB.ExecContext(WithOrgID(context.Background(), "acme"), "INSERT INTO events(tenant) VALUES ('x')")
	var e *Error
	if !errors.As(err, &e) || e.Tenant != "acme" || !strings.Contains(err.Error(), "may not create files in "+dir) {
		t.Fatalf("insert into a new tenant in an unwritable Dir: %v, want an *Error saying the process may not create files in %s", err, dir)
	}
	if !errors.Is(err, fs.ErrPermission) {
		t.Errorf("%v: not fs.ErrPermission", err)
	}
}

// TestFileWatch_WatchesFollowOpenTenants: each open tenant's file is
// watched, and the watches of closed tenants are removed in sweeps, so a
// proxy churning through many tenants holds at most fileWatchSweep watches
// besides its open tenants'; a tenant opened after a sweep is watched
// (its file removed is noticed), and so is one opened again.
func TestFileWatch_WatchesFollowOpenTenants(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MaxConnections: 2, ReadersPerTenant: -1})
	if p.c.r.watch == nil {
		t.Skip("no inotify instance to be had (its limits reached)")
	}
	watched := func() int {
		w := p.c.r.watch.w
		w.mu.Lock()
		defer w.mu.Unlock()
		n := 0
		for _, wf := range w.files {
			if _, ok := wf.ids[p.c.r]; ok {
				n++
			}
		}
		return n
	}
	ids := make([]string, 3*fileWatchSweep+5)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%03d", i)
		insertN(t, p, ids[i], 1)
		if n, open := watched(), len(openTenants(p)); n > open+fileWatchSweep || n < open {
			t.Fatalf("after %d tenants: %d files watched for %d open tenants, want between %[3]d and %[3]d + %d", i+1, n, open, fileWatchSweep)
		}
	}
	// The last one, and t000 again: closed long ago, its watch swept.
	for _, id := range []string{ids[len(ids)-1], ids[0]} {
		insertN(t, p, id, 1)
		if !openTenants(p)[id] {
			t.Fatalf("%s is not open", id)
		}
		removeTenantFiles(t, dir, id)
		waitFor(t, 5*time.Second, id+" closed after its file was removed", func() bool { return !openTenants(p)[id] })
	}
}

// TestFileWatch_UnwatchedOpensCounted: an open whose file cannot be watched
// (the kernel's fs.inotify.max_user_watches met, made to happen here for
// globex's file) is counted in Stats.Unwatched and the metric
// sqliteproxy.tenant.unwatched, not left silent; the tenant is served. A
// watch that failed for another reason (initech's file gone meanwhile, as
// far as the watch knew) is not the kernel's limits, and not counted.
func TestFileWatch_UnwatchedOpensCounted(t *testing.T) {
	dir := t.TempDir()
	rig := newTelemetryRig(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	p := rig.p
	if p.c.r.watch == nil {
		t.Skip("no inotify instance to be had (its limits reached)")
	}
	orig := inotifyAddWatch
	t.Cleanup(func() { inotifyAddWatch = orig })
	inotifyAddWatch = func(fd int, path string, mask uint32) (int, error) {
		if mask == watchFileMask && path == filepath.Join(dir, "globex.db") {
			return -1, syscall.ENOSPC // as past max_user_watches
		}
		if mask == watchFileMask && path == filepath.Join(dir, "initech.db") {
			return -1, syscall.ENOENT // as for a file gone meanwhile: not the limits
		}
		return orig(fd, path, mask)
	}
	insertN(t, p, "acme", 1)
	insertN(t, p, "globex", 2)
	insertN(t, p, "initech", 1)
	if got := p.Stats().Unwatched; got != 1 {
		t.Errorf("Stats().Unwatched = %d after one open of an unwatchable file, want 1", got)
	}
	m, ok := rig.collect(t)["sqliteproxy.tenant.unwatched"]
	if !ok {
		t.Fatal("no sqliteproxy.tenant.unwatched metric")
	}
	if got := sumInt(t, m, map[string]string{attrTenant: "globex"}); got != 1 {
		t.Errorf("sqliteproxy.tenant.unwatched{tenant=globex} = %d, want 1", got)
	}
	if got := sumInt(t, m, map[string]string{attrTenant: "acme"}); got != 0 {
		t.Errorf("sqliteproxy.tenant.unwatched{tenant=acme} = %d, want 0", got)
	}
	// The watched one is still noticed (the control: what globex lacks).
	removeTenantFiles(t, dir, "acme")
	waitFor(t, 5*time.Second, "acme closed after its file was removed", func() bool { return !openTenants(p)["acme"] })
}
