package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// crashImage leaves in dir the files of tenant id as a process killed
// after committing n rows would: id.db and an id.db-wal holding the
// commits (not checkpointed), written by mattn directly.
func crashImage(t *testing.T, dir, id string, n int) {
	t.Helper()
	src := t.TempDir()
	p := newTestProxy(t, Config{Dir: src, Migrations: []string{eventsTable}})
	if err := p.CreateTenant(tctx(id), id); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(src, id+".db")
	db, err := sql.Open("sqlite3", live)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`PRAGMA wal_autocheckpoint = 0`); err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := db.Exec(`INSERT INTO events (tenant) VALUES ('old')`); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"", "-wal"} {
		copyTestFile(t, live+s, filepath.Join(dir, id+".db"+s))
	}
	if fi, err := os.Stat(filepath.Join(dir, id+".db-wal")); err != nil || fi.Size() == 0 {
		t.Fatalf("crash image without its commits in the WAL: %v", err)
	}
}

func copyTestFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// A delete killed after it moved the file out of the tenant's name and
// before it removed the -wal leaves that -wal behind, holding the deleted
// rows: SQLite would replay it into the next file made under the name. A
// new tenant made afterwards (explicitly or on first use) starts empty, and
// a delete run again removes the -wal (and still says there is no tenant).
func TestOrphanWAL_DeleteKilledMidway(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"CreateTenant", "first use", "DeleteTenant again"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			crashImage(t, dir, "c", 100)
			// What the killed DeleteTenant did: the rename, not the rest.
			if err := os.Rename(filepath.Join(dir, "c.db"), tempName(dir, deletingPrefix, "c")); err != nil {
				t.Fatal(err)
			}
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
			switch how {
			case "CreateTenant":
				if err := p.CreateTenant(tctx("c"), "c"); err != nil {
					t.Fatal(err)
				}
			case "DeleteTenant again":
				if err := p.DeleteTenant(tctx("c"), "c"); !errors.Is(err, ErrTenantNotFound) {
					t.Fatalf("DeleteTenant of a deleted tenant: %v, want ErrTenantNotFound", err)
				}
				if _, err := os.Lstat(filepath.Join(dir, "c.db-wal")); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the deleted tenant's -wal is still there: %v", err)
				}
			}
			if n := countRows(t, p, "c"); n != 0 {
				t.Errorf("the new tenant c holds %d rows of the deleted one", n)
			}
		})
	}
}

// A restore killed before its rename (after it cleared the old file's side
// files) leaves the old tenant whole: the commits its -wal held (a process
// killed before it closed the file) are checkpointed into it first.
func TestOrphanWAL_RestoreKilledBeforeRename(t *testing.T) {
	dir := t.TempDir()
	crashImage(t, dir, "c", 100)
	backup := filepath.Join(t.TempDir(), "one.db")
	{
		p := newTestProxy(t, Config{Dir: t.TempDir(), Migrations: []string{eventsTable}})
		if _, err := p.ExecContext(tctx("b"), `INSERT INTO events (tenant) VALUES ('new')`); err != nil {
			t.Fatal(err)
		}
		if err := p.BackupTenant(tctx("b"), "b", backup); err != nil {
			t.Fatal(err)
		}
	}
	killed := errors.New("killed before the rename")
	var left []byte // the marker as a kill here leaves it
	restoreBeforeRename = func() error {
		b, err := os.ReadFile(restoredMarker(filepath.Join(dir, "c.db")))
		left = b
		return errors.Join(killed, err)
	}
	defer func() { restoreBeforeRename = nil }()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if err := p.RestoreTenant(tctx("c"), "c", backup); !errors.Is(err, killed) {
		t.Fatalf("RestoreTenant: %v, want the stand-in for the kill", err)
	}
	if n := countRows(t, p, "c"); n != 100 {
		t.Errorf("after a restore killed before its rename, c holds %d rows, want its 100", n)
	}
	// Failed before its rename, it leaves no "restored on purpose" marker
	// on the old file (with replication, a stale copy so marked becomes
	// the replica's head).
	c := filepath.Join(dir, "c.db")
	if _, err := os.Lstat(restoredMarker(c)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the restored marker after a restore that failed before its rename: %v", err)
	}
	// Killed, the restore leaves its marker: it names the copy that never
	// took c's name, so c's old file is not taken for a restored one.
	if len(left) == 0 {
		t.Fatal("the restore's marker names no file")
	}
	if err := os.WriteFile(restoredMarker(c), left, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := restoredOnPurpose(c, 0); ok || err != nil {
		t.Errorf("c's old file with a killed restore's marker: restored on purpose %v (%v), want false", ok, err)
	}
	if _, err := os.Lstat(restoredMarker(c)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a killed restore's marker is still there after it was read: %v", err)
	}
	// A restore that completes leaves a marker that names c's new file.
	restoreBeforeRename = nil
	if err := p.RestoreTenant(tctx("c"), "c", backup); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := restoredOnPurpose(c, 0); !ok || err != nil {
		t.Errorf("after a restore: restored on purpose %v (%v), want true", ok, err)
	}
}

// The temporary files of operations killed midway (a killed delete's still
// holds the deleted tenant's rows) are removed after New once they are
// older than leftoverAge; fresh ones (an operation in flight in another
// process) and tenants' own files stay.
func TestOrphanWAL_SweepsLeftovers(t *testing.T) {
	t.Parallel()
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run(l.String(), func(t *testing.T) {
			dir := t.TempDir()
			newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}}).Close()
			folder := filepath.Dir(tenantPath(dir, l, "c"))
			if err := os.MkdirAll(folder, 0o700); err != nil {
				t.Fatal(err)
			}
			long := time.Now().Add(-2 * leftoverAge)
			var stale, fresh []string
			for _, prefix := range []string{creatingPrefix, deletingPrefix, restoringPrefix} {
				p := tempName(folder, prefix, "c")
				for _, side := range []string{"", "-journal"} {
					for _, age := range []string{"stale", "fresh"} {
						name := p + side
						if age == "fresh" {
							name = tempName(folder, prefix, "c") + side
						}
						if err := os.WriteFile(name, []byte("x"), 0o600); err != nil {
							t.Fatal(err)
						}
						if age == "stale" {
							if err := os.Chtimes(name, long, long); err != nil {
								t.Fatal(err)
							}
							stale = append(stale, name)
						} else {
							fresh = append(fresh, name)
						}
					}
				}
			}
			p := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}})
			if _, err := p.ExecContext(tctx("c"), `INSERT INTO events (tenant) VALUES ('x')`); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "stale leftovers removed", func() bool {
				for _, f := range stale {
					if _, err := os.Lstat(f); err == nil {
						return false
					}
				}
				return true
			})
			for _, f := range append(fresh, tenantPath(dir, l, "c")) {
				if _, err := os.Lstat(f); err != nil {
					t.Errorf("%s: %v", filepath.Base(f), err)
				}
			}
		})
	}
}

// A tenant ID may start with "creating-", "deleting-" or "restoring-": its
// own dot-files (Litestream's folder, the restored and generation markers)
// then start like the temporary files of tenant operations, and must not
// be taken for them, by New's sweep or by relayout's.
func TestOrphanWAL_SweepKeepsTenantsNamedLikeLeftovers(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		".creating-acme-0123456789abcdef.db":           true,
		".deleting-acme-0123456789abcdef.db-wal":       true,
		".restoring-a-0123456789abcdef.db-journal":     true,
		".restoring-a-0123456789abcdef.db.replica":     true, // a restore's fetched replica
		".restoring-a-0123456789abcdef.db.replica.tmp": true, // litestream restore's, killed
		".restoring-a-0123456789abcdef.db.tmp":         true,
		".restoring-a-0123456789abcdef.db.tmp.tmp":     false,
		".creating-acme.db.tmp":                        false,
		".layout-marker-0123456789abcdef.db":           false, // not asked for below
		".creating-acme.db-litestream":                 false,
		".creating-acme.db-restored":                   false,
		".acme.db-restored.tmp":                        true, // a killed rewriteRestoredGen's (before writeSideFile)
		".acme.db-gen.tmp-0123456789abcdef":            true, // a killed writeSideFile's
		".acme.db-deleted.tmp-0123456789abcdef":        true,
		".acme.db-gen.tmp":                             false,
		".acme.db-gen.tmp-0123":                        false,
		"acme.db-gen.tmp-0123456789abcdef":             false,
		".creating-acme.db-restored.tmp":               true,
		"acme.db-restored.tmp":                         false,
		"..db-restored.tmp":                            false,
		".db-restored.tmp":                             false,
		".deleting-x.db-gen":                           false,
		".creating-acme-0123456789abcdeg.db":           false,
		".creating--0123456789abcdef.db":               false,
		".creating-acme-0123456789abcdef.db-journal2":  false,
		"creating-acme.db":                             false,
	} {
		if got := isLeftover(name); got != want {
			t.Errorf("isLeftover(%q) = %v, want %v", name, got, want)
		}
	}
	dir := t.TempDir()
	newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}}).Close()
	long := time.Now().Add(-2 * leftoverAge)
	var keep []string
	for _, id := range []string{"creating-acme", "deleting-x", "restoring-y"} {
		p := filepath.Join(dir, id+".db")
		for _, f := range []string{p, restoredMarker(p), genMarker(p)} {
			if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			keep = append(keep, f)
		}
		if err := os.MkdirAll(filepath.Join(metaDir(p), "ltx", "0"), 0o700); err != nil {
			t.Fatal(err)
		}
		keep = append(keep, metaDir(p))
	}
	stale := tempName(dir, creatingPrefix, "creating-acme")
	rewrite := restoredMarker(filepath.Join(dir, "creating-acme.db")) + ".tmp" // a killed rewriteRestoredGen's
	for _, f := range []string{stale, rewrite} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range append(keep, stale, rewrite) {
		if err := os.Chtimes(f, long, long); err != nil {
			t.Fatal(err)
		}
	}
	newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	waitFor(t, 10*time.Second, "the stale temporary files removed", func() bool {
		_, err := os.Lstat(stale)
		_, err2 := os.Lstat(rewrite)
		return errors.Is(err, os.ErrNotExist) && errors.Is(err2, os.ErrNotExist)
	})
	for _, f := range keep {
		if _, err := os.Lstat(f); err != nil {
			t.Errorf("a tenant's own %s was swept: %v", filepath.Base(f), err)
		}
	}
}

// DeleteTenant checkpoints the tenant's -wal into its file before it moves
// the file away: a delete killed right after the move leaves no -wal with
// rows in it (it had the 100 acknowledged rows of a process killed before,
// which the next file of the name would have replayed).
func TestOrphanWAL_DeleteCheckpointsFirst(t *testing.T) {
	dir := t.TempDir()
	crashImage(t, dir, "c", 100)
	killed := errors.New("killed after the rename")
	deleteAfterRename = func() error { return killed }
	defer func() { deleteAfterRename = nil }()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if err := p.DeleteTenant(tctx("c"), "c"); !errors.Is(err, killed) {
		t.Fatalf("DeleteTenant: %v, want the stand-in for the kill", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "c.db-wal")); err == nil && fi.Size() > 0 {
		t.Errorf("the delete left a -wal of %d bytes beside the missing file", fi.Size())
	}
}

// holdOpenEnv names, for TestHoldOpenProcess, the database it keeps open.
const holdOpenEnv = "SQLITEPROXY_TEST_HOLD_OPEN"

// TestHoldOpenProcess is run by TestOrphanWAL_LeavesFilesInUse as another
// process: it opens the database, reads it, says "ready" and keeps it open
// until its standard input closes.
func TestHoldOpenProcess(t *testing.T) {
	p := os.Getenv(holdOpenEnv)
	if p == "" {
		t.Skip("helper process only")
	}
	testkit.HoldOpen("sqlite3", p)
}

// Side files beside a missing file are orphans only if no process uses
// them: a process that opened the tenant a moment ago (here one that has
// it open while the file is moved away) holds the lock every connection
// holds on the -shm, and its -wal and -shm stay.
func TestOrphanWAL_LeavesFilesInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	crashImage(t, dir, "c", 10)
	p := filepath.Join(dir, "c.db")
	stop := startChild(t, "TestHoldOpenProcess", holdOpenEnv+"="+p)
	if err := os.Rename(p, p+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := removeOrphanSideFiles(p); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(p + s); err != nil {
			t.Errorf("%s of a file open in another process removed: %v", s, err)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	// Nobody has it open now: they are orphans.
	if err := removeOrphanSideFiles(p); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(p + s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("orphan %s left: %v", s, err)
		}
	}
}

// CheckTenant and BackupTenant on a tenant this process has not checked yet
// read it on a connection of their own, counted in the budget, and let the
// writer semaphore go meanwhile. An eviction of the tenant then gave back
// that connection's slot too, and when the check ended it gave back the slot
// of a writer opened since: the writer was no longer counted, the tenant
// object was forgotten with it open, and its descriptors stayed for good —
// beyond MaxConnections, and every later delete or restore of the tenant
// failed on "open in another process" (a stress trial). The connection now
// holds the tenant as a leased reader does.
func TestOrphanWAL_OwnReaderKeepsItsSlot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	seed := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	for _, id := range []string{"a", "b", "c"} {
		if err := seed.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	seed.Close()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MaxConnections: 2})
	r := p.c.r
	a, err := r.tenant("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.unpin()
	_, done, err := a.ungatedReader(context.Background(), opCheckTenant)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b", "c", "a"} { // the budget is full: each takes a slot from another tenant
		ctx, cancel := context.WithTimeout(tctx(id), 2*time.Second)
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('x')`)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	done()
	a.mu.Lock()
	w := a.w
	a.mu.Unlock()
	if w != nil && r.budget.counted(a) == 0 {
		t.Fatal("a's writer is open but no longer counted in the budget")
	}
	if n := r.budget.openCount(); n > 2 {
		t.Errorf("%d connections counted, MaxConnections 2", n)
	}
	if err := p.DeleteTenant(context.Background(), "a"); err != nil {
		t.Errorf("DeleteTenant after the check: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoOpenFiles(t, dir)
}

// A creation killed after linking its temporary file into place leaves a
// second name of the tenant's file (.creating-<id>-<hex>.db), which the
// sweep kept while young (its mtime follows the tenant's writes): the
// tenant's rows outlived DeleteTenant under that name (crash trial). A
// creation now removes the name at once, and the sweep removes one that is
// the tenant's file whatever its age; one that is not stays.
func TestSweep_RemovesACreationsSecondName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	for _, n := range dbFiles(t, dir) {
		if strings.HasPrefix(n, creatingPrefix) {
			t.Errorf("after a creation: %s", n)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(dir, ".creating-acme-0123456789abcdef.db")
	if err := os.Link(filepath.Join(dir, "acme.db"), second); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, ".creating-acme-fedcba9876543210.db") // a creation in flight
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p = newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	waitFor(t, 10*time.Second, "the second name swept", func() bool {
		_, err := os.Lstat(second)
		return errors.Is(err, fs.ErrNotExist)
	})
	if _, err := os.Lstat(other); err != nil {
		t.Errorf("a young temporary file that is no tenant's: %v", err)
	}
	if n := countRows(t, p, "acme"); n != 1 {
		t.Errorf("acme: %d rows", n)
	}
}

// A restore from a hard link of a database another process has open
// (a cp -al snapshot of a live WAL database) read it without its -wal,
// beside the name that process opened: the restore said it was done and
// the tenant lacked the commits still in that -wal (adv30). Refused.
func TestRestoreTenant_HardLinkOfLiveSourceRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir, src := t.TempDir(), t.TempDir()
	crashImage(t, src, "c", 10)
	live := filepath.Join(src, "c.db")
	stop := startChild(t, "TestHoldOpenProcess", holdOpenEnv+"="+live)
	defer stop()
	snap := filepath.Join(t.TempDir(), "snap.db")
	if err := os.Link(live, snap); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir})
	err := p.RestoreTenant(context.Background(), "acme", snap)
	if err == nil || !strings.Contains(err.Error(), "hard links") {
		t.Fatalf("RestoreTenant from a hard link of a live database: %v, want it refused", err)
	}
	if ok, _ := p.TenantExists(context.Background(), "acme"); ok {
		t.Error("the refused restore made the tenant")
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(snap + s); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left beside the source: %v", s, err)
		}
	}
	// Through its own name it is read with its -wal: all ten rows.
	if err := p.RestoreTenant(context.Background(), "acme", live); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "acme"); n != 10 {
		t.Errorf("restored from the live name: %d rows, want 10", n)
	}
}
