package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

func TestConcurrentWritersOneTenant(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable, `CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)`}})
	ctx := tctx("acme")
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if (w+i)%2 == 0 {
					if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', ?)`, i); err != nil {
						errs <- err
					}
					continue
				}
				// read-then-write transaction
				err := func() error {
					tx, err := p.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					defer tx.Rollback()
					var v int
					if err := tx.QueryRowContext(ctx, `SELECT v FROM counter WHERE id = 1`).Scan(&v); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `UPDATE counter SET v = ? WHERE id = 1`, v+1); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', ?)`, i); err != nil {
						return err
					}
					return tx.Commit()
				}()
				if err != nil {
					errs <- err
				}
			}
		})
		// concurrent readers
		wg.Go(func() {
			for range each {
				var n int
				if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("error under contention (want none, esp. no SQLITE_BUSY): %v", err)
	}
	if n := countRows(t, p, "acme"); n != workers*each {
		t.Errorf("rows = %d, want %d", n, workers*each)
	}
	var v int
	if err := p.QueryRowContext(ctx, `SELECT v FROM counter`).Scan(&v); err != nil || v != workers*each/2 {
		t.Errorf("counter = %d (%v), want %d: lost update", v, err, workers*each/2)
	}
}

func TestProxy_DeleteTenantWaitsForInFlightWork(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	// Gives up while the transaction is open: nothing deleted.
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err = p.DeleteTenant(short, "acme")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("delete during a tx: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("the in-flight tx was disturbed: %v", err)
	}
	if n := countRows(t, p, "acme"); n != 1 {
		t.Fatalf("rows after a failed delete: %d", n)
	}

	// With a tx open, delete waits; a query that arrives meanwhile waits too
	// and fails with ErrTenantNotFound: no file reappears from it.
	tx, err = p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	deleted := make(chan error, 1)
	go func() { deleted <- p.DeleteTenant(context.Background(), "acme") }()
	acme := p.c.r.mustTenant(t, "acme")
	waitFor(t, 10*time.Second, "DeleteTenant to start draining acme", func() bool {
		return acme.state.Load() == tenantDraining
	})
	waiting := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('late')`)
		waiting <- err
	}()
	// Both queue for acme's writer, which the transaction holds.
	waitFor(t, 10*time.Second, "DeleteTenant and the late INSERT to queue for acme's writer", func() bool {
		return acme.wsem.nwait.Load() == 2
	})
	select {
	case err := <-deleted:
		t.Fatalf("delete finished while a tx was open: %v", err)
	default:
	}
	tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('in-tx')`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-deleted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("DeleteTenant did not return within a minute of the commit")
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrTenantNotFound) {
			t.Errorf("query waiting on a deleted tenant: %v, want ErrTenantNotFound", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the late INSERT did not return within a minute of the delete")
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files after delete: %v", files)
	}
	assertNoOpenFiles(t, dir)
}

// Two deletes (or a delete and a restore) of one tenant at once: the second
// waits for the first, as work does, and then acts on what it left. The
// second delete failed at once with a message no errors.Is could match
// ("another delete or restore of this tenant is in progress").
func TestProxy_ConcurrentDeletesAndRestores(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := context.Background()
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('old')`); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := p.BackupTenant(ctx, "acme", backup); err != nil {
		t.Fatal(err)
	}
	waits := make(chan struct{}, 4)
	drainWaits = func() { waits <- struct{}{} }
	defer func() { drainWaits = nil }()
	for _, second := range []string{"delete", "restore"} {
		t.Run("then "+second, func(t *testing.T) {
			if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('new')`); err != nil {
				t.Fatal(err)
			}
			tx, err := p.BeginTx(tctx("acme"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('in-tx')`); err != nil {
				t.Fatal(err)
			}
			first := make(chan error, 1)
			go func() { first <- p.DeleteTenant(ctx, "acme") }()
			acme := p.c.r.mustTenant(t, "acme")
			waitFor(t, 10*time.Second, "the first delete to start draining acme", func() bool {
				return acme.state.Load() == tenantDraining
			})
			next := make(chan error, 1)
			go func() {
				if second == "delete" {
					next <- p.DeleteTenant(ctx, "acme")
				} else {
					next <- p.RestoreTenant(ctx, "acme", backup)
				}
			}()
			select {
			case <-waits:
			case err := <-next:
				t.Fatalf("the second %s did not wait for the first delete: %v", second, err)
			case <-time.After(time.Minute):
				t.Fatal("the second operation neither waited nor returned within a minute")
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			for _, c := range []chan error{first, next} {
				select {
				case err := <-c:
					if c == next && second == "delete" {
						if !errors.Is(err, ErrTenantNotFound) {
							t.Errorf("second delete: %v, want ErrTenantNotFound", err)
						}
					} else if err != nil {
						t.Error(err)
					}
				case <-time.After(time.Minute):
					t.Fatal("a delete or restore did not return within a minute of the commit")
				}
			}
			got := testkit.Strings(t, tctx("acme"), p, `SELECT tenant FROM events ORDER BY id`)
			want := []string{"old"} // the backup's row
			if second == "delete" {
				want = nil // a new, empty tenant
			}
			if !slices.Equal(got, want) {
				t.Errorf("rows after delete then %s: %q, want %q", second, got, want)
			}
		})
	}
}

func (r *router) mustTenant(t *testing.T, id string) *tenant {
	t.Helper()
	tn, err := r.tenant(id)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

// Another process deleting a tenant between this one's check that its file
// exists and SQLite's open: the caller got "unable to open database file"
// (or "disk I/O error: no such file or directory", SQLite's failed fstat),
// which reads like a failing disk, instead of what a moment later gives: a
// new tenant, or ErrTenantNotFound with ExplicitCreate.
func TestProxy_FileDeletedDuringOpen(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, ExplicitCreate: explicit})
		if err := p.CreateTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "acme.db")
		var once sync.Once
		openWriterRaced = func(tn *tenant) {
			if tn.id == "acme" {
				once.Do(func() {
					// As another process's delete does: the file leaves its name.
					if err := os.Rename(path, filepath.Join(dir, ".deleting-elsewhere")); err != nil {
						t.Error(err)
					}
				})
			}
		}
		_, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('after')`)
		openWriterRaced = nil
		if explicit {
			if !errors.Is(err, ErrTenantNotFound) {
				t.Errorf("ExplicitCreate: %v, want ErrTenantNotFound", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("auto-create: %v, want a new tenant", err)
		} else if n := countRows(t, p, "acme"); n != 1 {
			t.Errorf("the new tenant has %d rows", n)
		}
	}
}

// A symlink put in a tenant file's place between the proxy's check that it
// is a regular file and SQLite's open (which follows it): the connection is
// refused, nothing of it reaches the file the link names, another tenant's
// or one outside the directory (a trial swapping the name in a loop had
// 172 of 818 reads answered from globex and 266 writes land in it).
// Not parallel: it sets openWriterRaced.
func TestProxy_SymlinkSwappedInAfterTheCheck(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "victim.db")
	victim := direct(t, filepath.Dir(outside), "victim")
	if _, err := victim.Exec(`PRAGMA journal_mode = DELETE; CREATE TABLE v (x); INSERT INTO v VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	victim.Close()
	for _, target := range []string{"globex.db", outside} {
		dir := t.TempDir()
		p := acmeClosedBesideGlobex(t, dir)
		path := filepath.Join(dir, "acme.db")
		var once sync.Once
		openWriterRaced = func(tn *tenant) {
			if tn.id == "acme" {
				once.Do(func() {
					if err := os.Rename(path, path+".aside"); err != nil {
						t.Error(err)
					}
					if err := os.Symlink(target, path); err != nil {
						t.Error(err)
					}
				})
			}
		}
		_, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`)
		openWriterRaced = nil
		if !errors.Is(err, errNotTenantFile) {
			t.Errorf("%s: a write through the swapped-in symlink: %v, want errNotTenantFile", target, err)
		}
		if n := queryInt(t, p, tctx("globex"), `SELECT count(*) FROM events WHERE tenant = 'acme'`); n != 0 {
			t.Errorf("%s: globex holds %d of acme's rows", target, n)
		}
	}
	v := direct(t, filepath.Dir(outside), "victim")
	var mode string
	if err := v.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "delete" {
		t.Errorf("the file outside the directory: journal mode %q (%v), want delete (untouched)", mode, err)
	}
	v.Close()
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(outside + s); err == nil {
			t.Errorf("%s made beside the file outside the directory", s)
		}
	}
}

// A symlinked data directory pointed elsewhere while the proxy runs: a
// tenant opened afterwards is refused, not split between the two (open
// tenants went on writing to the first, new opens read and created tenants
// in the second: acknowledged writes missing from the directory in use).
func TestProxy_DataDirectoryRepointed(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	v1, v2, link := filepath.Join(base, "v1"), filepath.Join(base, "v2"), filepath.Join(base, "data")
	for _, d := range []string{v1, v2} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(v1, link); err != nil {
		t.Fatal(err)
	}
	p := acmeClosedBesideGlobex(t, link)
	tmp := filepath.Join(base, "data.new")
	if err := os.Symlink(v2, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"acme", "initech"} { // closed; new
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); !errors.Is(err, errNotTenantFile) {
			t.Errorf("%s after the directory was repointed: %v, want errNotTenantFile", id, err)
		}
	}
	if ents, _ := os.ReadDir(v2); len(ents) != 0 {
		t.Errorf("the new directory holds %d entries, want none (%s...)", len(ents), ents[0].Name())
	}
}

// The same, for the operations on tenant files: with Dir pointed at another
// proxy's data directory, DeleteTenant removed that directory's tenant,
// RestoreTenant wrote a tenant there (and drained the open one, which was
// then refused), and the lookups answered about it (walk25). Each is
// refused, nothing is written there, and the open tenant goes on; pointed
// back, everything works again.
func TestProxy_DataDirectoryRepointedAdmin(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	v1, v2, link := filepath.Join(base, "v1"), filepath.Join(base, "v2"), filepath.Join(base, "data")
	other := newTestProxy(t, Config{Dir: v2, Migrations: []string{eventsTable}}) // another data directory
	insertN(t, other, "globex", 1)
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(v1, 0o700); err != nil {
		t.Fatal(err)
	}
	repoint := func(to string) {
		tmp := filepath.Join(base, "data.new")
		if err := os.Symlink(to, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, link); err != nil {
			t.Fatal(err)
		}
	}
	repoint(v1)
	p := newTestProxy(t, Config{Dir: link, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1) // open throughout
	bk := filepath.Join(base, "acme.bak")
	if err := p.BackupTenant(context.Background(), "acme", bk); err != nil {
		t.Fatal(err)
	}
	snapshot := func() []string {
		var names []string
		if err := filepath.WalkDir(v2, func(path string, d fs.DirEntry, err error) error {
			if err == nil {
				names = append(names, path)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return names
	}
	before := snapshot()
	repoint(v2)
	ctx := context.Background()
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errNotTenantFile) || !strings.Contains(err.Error(), "may not change while the proxy runs") {
			t.Errorf("%s with the data directory repointed: %v, want it refused", what, err)
		}
	}
	refused("DeleteTenant of the other directory's tenant", p.DeleteTenant(ctx, "globex"))
	refused("RestoreTenant of the open tenant", p.RestoreTenant(ctx, "acme", bk))
	refused("RestoreTenant of a new tenant", p.RestoreTenant(ctx, "hooli", bk))
	_, err := p.TenantExists(ctx, "acme")
	refused("TenantExists", err)
	refused("BackupTenant", p.BackupTenant(ctx, "acme", filepath.Join(base, "again.bak")))
	refused("CheckTenant", p.CheckTenant(ctx, "acme"))
	_, err = p.Tenants(ctx)
	refused("Tenants", err)
	_, err = p.MigrateAll(ctx, MigrateOptions{})
	refused("MigrateAll", err)
	_, err = p.MigrateAll(ctx, MigrateOptions{Tenants: []string{"globex", "acme"}})
	refused("MigrateAll of named tenants", err)
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("the other data directory changed (-before +after):\n%s", diff)
	}
	insertN(t, p, "acme", 1) // the open tenant keeps its file
	repoint(v1)
	if err := p.RestoreTenant(ctx, "acme", bk); err != nil {
		t.Fatal(err)
	}
	if ids, err := p.Tenants(ctx); err != nil || !slices.Equal(ids, []string{"acme"}) {
		t.Errorf("Tenants pointed back: %q, %v", ids, err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM events`); n != 1 {
		t.Errorf("acme holds %d rows after its restore, want the backup's 1", n)
	}
}

// A tenant file that is a hard link of another's (ln globex.db acme.db) is
// refused at open: acme served globex's rows and globex read acme's writes.
// A creation's own second name, in flight or left by a kill, is not a
// reason to refuse.
func TestProxy_HardLinkedTenantFileRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "globex", 1)
	if err := os.Link(filepath.Join(dir, "globex.db"), filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); !errors.Is(err, errNotTenantFile) {
		t.Errorf("a write to a hard link of globex's file: %v, want errNotTenantFile", err)
	}
	if n := queryInt(t, p, tctx("globex"), `SELECT count(*) FROM events WHERE tenant = 'acme'`); n != 0 {
		t.Errorf("globex holds %d of acme's rows", n)
	}
	if err := os.Remove(filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	// The creation twin: initech's file with its temporary name beside it.
	insertN(t, p, "initech", 1)
	if !p.c.r.evictTenant(t, "initech") {
		t.Fatal("initech not closed")
	}
	if err := os.Link(filepath.Join(dir, "initech.db"), tempName(dir, creatingPrefix, "initech")); err != nil {
		t.Fatal(err)
	}
	insertN(t, p, "initech", 1)
}

// Reads of a hard-linked tenant file are refused as its writes are: a cold
// read opens a reader without the writer's open (which alone looked at the
// links), and served globex's rows as acme's; a backup and a check (on a
// connection of their own) passed and copied them (walk23). With globex
// open, the read failed with a bare "disk I/O error".
func TestProxy_HardLinkedTenantFileReadsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "globex", 2) // open
	if err := os.Link(filepath.Join(dir, "globex.db"), filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errNotTenantFile) || !strings.Contains(err.Error(), "hard links") {
			t.Errorf("%s of a hard link of globex's file: %v, want it refused as a hard link", what, err)
		}
	}
	var n int
	check("a read with globex open", p.QueryRowContext(tctx("acme"), `SELECT count(*) FROM events`).Scan(&n))
	_, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`)
	check("a write with globex open", err)
	if !p.c.r.evictTenant(t, "globex") {
		t.Fatal("globex not closed")
	}
	check("a cold read", p.QueryRowContext(tctx("acme"), `SELECT count(*) FROM events`).Scan(&n))
	check("a backup", p.BackupTenant(context.Background(), "acme", filepath.Join(t.TempDir(), "acme.db")))
	check("a check", p.CheckTenant(context.Background(), "acme"))
	if err := os.Remove(filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, tctx("globex"), `SELECT count(*) FROM events`); n != 2 {
		t.Fatalf("globex has %d rows after acme's refused work, want 2", n)
	}
}

// A fan-out reads a closed tenant on a connection of its own, not the
// writer's open: a hard link there labelled globex's rows as acme's.
func TestFanOut_HardLinkedTenantFileRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "globex", 2)
	if !p.c.r.evictTenant(t, "globex") {
		t.Fatal("globex not closed")
	}
	if err := os.Link(filepath.Join(dir, "globex.db"), filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	var skipped []string
	opts := FanOutOptions{SkipErrors: true, OnSkip: func(id string, err error) {
		if !errors.Is(err, errNotTenantFile) {
			t.Errorf("%s skipped for %v, want errNotTenantFile", id, err)
		}
		skipped = append(skipped, id)
	}}
	rows, err := p.QueryContext(WithFanOut(context.Background(), opts), `SELECT count(*) FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprint(id, "=", n))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// globex's own name is refused too: which of the two is the tenant's
	// is not for the proxy to guess.
	if len(got) != 0 || !slices.Equal(skipped, []string{"acme", "globex"}) {
		t.Errorf("fan-out over a hard-linked pair: rows %q, skipped %q; want none read, both skipped", got, skipped)
	}
}

// acmeClosedBesideGlobex opens a proxy on dir with tenants globex (open)
// and acme (closed), one row each.
func acmeClosedBesideGlobex(t *testing.T, dir string) *Proxy {
	t.Helper()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "globex", 1)
	insertN(t, p, "acme", 1)
	if !p.c.r.evictTenant(t, "acme") {
		t.Fatal("acme not closed")
	}
	return p
}

// A tenant whose last statement was interrupted by its context kept its
// -wal and -shm after it closed (SQLite clears the interrupt only when the
// next statement starts, and the closing checkpoint gave up), also after
// Close.
func TestClose_AfterAnInterruptedStatementLeavesNoWAL(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER)`}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO items (v) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err := p.ExecContext(dctx, `INSERT INTO items (v) SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1000000000) SELECT x FROM c)`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the slow statement: %v, want its deadline", err)
	}
	path, err := p.TenantPath("acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, side := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(path + side); err == nil && !keptSide(path+side) {
			t.Errorf("%s left beside the closed tenant", side)
		}
	}
}
