package sqliteproxy

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

func TestProxy_CreateTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ExplicitCreate: true, Migrations: []string{eventsTable}})
	ctx := context.Background()
	if ok, err := p.TenantExists(ctx, "acme"); ok || err != nil {
		t.Fatalf("TenantExists before create = %v, %v", ok, err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("unknown tenant with ExplicitCreate: %v", err)
	}
	if err := p.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(ctx, "acme"); !errors.Is(err, ErrTenantExists) {
		t.Errorf("second CreateTenant: %v, want ErrTenantExists", err)
	}
	if ok, err := p.TenantExists(ctx, "acme"); !ok || err != nil {
		t.Errorf("TenantExists after create = %v, %v", ok, err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatalf("created tenant is not migrated: %v", err)
	}
	if err := p.CreateTenant(ctx, "../x"); !errors.Is(err, ErrInvalidTenant) {
		t.Errorf("CreateTenant(../x): %v", err)
	}
	if files := dbFiles(t, dir); slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, ".") }) {
		t.Errorf("temporary files left: %v", files)
	}
	fi, err := os.Stat(filepath.Join(dir, "acme.db"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("acme.db mode %v, %v", fi.Mode(), err)
	}
}

// CreateTenant leaves the new tenant closed: it takes no slot of the
// budget once it returns, evicts nobody while there is room, keeps no
// tenant object, and the tenant's first use opens it, migrated.
func TestProxy_CreateTenantLeavesItClosed(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 3, ReadersPerTenant: 1, IdleTimeout: time.Hour, ExplicitCreate: true,
		Migrations: []string{eventsTable, `CREATE INDEX events_tenant ON events (tenant)`}})
	ctx := context.Background()
	if err := p.CreateTenant(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("warm"), `INSERT INTO events (tenant) VALUES ('warm')`); err != nil {
		t.Fatal(err)
	}
	countRows(t, p, "warm") // warm holds its writer and its reader
	before := p.Stats()
	if before.OpenConnections != 2 || before.OpenTenants != 1 {
		t.Fatalf("warm: %+v", before)
	}
	for i := range 20 {
		id := fmt.Sprintf("new%02d", i)
		if err := p.CreateTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); st.OpenConnections != 2 || st.OpenTenants != 1 || st.Evictions != before.Evictions {
			t.Fatalf("after creating %s: %d connections of %d tenants open, %d evictions; want warm's 2, 0 evictions",
				id, st.OpenConnections, st.OpenTenants, st.Evictions-before.Evictions)
		}
	}
	if n := registrySize(p); n != 1 {
		t.Errorf("registry holds %d tenant objects, want warm's", n)
	}
	for i := range 20 {
		id := fmt.Sprintf("new%02d", i)
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatalf("first use of %s: %v", id, err)
		}
		if n := countRows(t, p, id); n != 1 {
			t.Errorf("%s has %d rows", id, n)
		}
		st, err := p.MigrationStatus(ctx, id)
		if err != nil || len(st.Pending) != 0 || len(st.Applied) != 2 || st.Drift != nil {
			t.Errorf("%s: %+v, %v", id, st, err)
		}
	}
}

func TestProxy_DeleteTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := context.Background()
	for _, id := range []string{"acme", "globex"} {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.DeleteTenant(ctx, "nobody"); !errors.Is(err, ErrTenantNotFound) {
		t.Errorf("delete of a missing tenant: %v", err)
	}
	if err := p.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if got := dbFiles(t, dir); !slices.Equal(got, []string{"globex.db", "globex.db-shm", "globex.db-wal"}) {
		t.Errorf("files after delete: %v", got)
	}
	if ids, _ := p.Tenants(ctx); !slices.Equal(ids, []string{"globex"}) {
		t.Errorf("Tenants = %v", ids)
	}
	if n := countRows(t, p, "globex"); n != 1 {
		t.Errorf("globex rows %d", n)
	}
	// A later access creates a new, empty tenant (auto-create).
	if n := countRows(t, p, "acme"); n != 0 {
		t.Errorf("acme came back with %d rows", n)
	}
}

func TestProxy_BackupRestoreUnderWrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	for i := range 100 {
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', ?)`, i); err != nil {
			t.Fatal(err)
		}
	}
	// Writers keep going (transactions of 10 rows) while we back up.
	stop := make(chan struct{})
	var written atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			tx, err := p.BeginTx(ctx, nil)
			if err != nil {
				t.Error(err)
				return
			}
			for range 10 {
				tx.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES ('acme', -1)`)
			}
			if err := tx.Commit(); err != nil {
				t.Error(err)
				return
			}
			written.Add(10)
		}
	})
	backups := t.TempDir()
	for i := range 5 {
		dst := filepath.Join(backups, fmt.Sprintf("b%d.db", i))
		if err := p.BackupTenant(context.Background(), "acme", dst); err != nil {
			t.Fatal(err)
		}
		db := direct(t, backups, fmt.Sprintf("b%d", i))
		var check string
		var n int
		if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
			t.Fatalf("backup integrity: %q, %v", check, err)
		}
		if err := db.QueryRow(`SELECT count(*) FROM events`).Scan(&n); err != nil || (n-100)%10 != 0 {
			t.Fatalf("backup holds %d rows: not a transaction boundary (%v)", n, err)
		}
		db.Close()
	}
	close(stop)
	wg.Wait()
	if files, _ := filepath.Glob(filepath.Join(backups, "*")); len(files) != 5 {
		t.Errorf("backup dir holds %v", files)
	}
	if err := p.BackupTenant(context.Background(), "nobody", filepath.Join(backups, "x.db")); !errors.Is(err, ErrTenantNotFound) {
		t.Errorf("backup of a missing tenant: %v", err)
	}

	// Restore the first backup over acme, and into a new tenant.
	b0 := filepath.Join(backups, "b0.db")
	var want int
	db0 := direct(t, backups, "b0")
	db0.QueryRow(`SELECT count(*) FROM events`).Scan(&want)
	db0.Close()
	for _, id := range []string{"acme", "copy"} {
		if err := p.RestoreTenant(context.Background(), id, b0); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, p, id); n != want {
			t.Errorf("%s after restore: %d rows, want %d", id, n, want)
		}
	}
	if ids, _ := p.Tenants(context.Background()); !slices.Equal(ids, []string{"acme", "copy"}) {
		t.Errorf("Tenants = %v", ids)
	}
}

func TestProxy_RestoreRefusesBadSource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	junk := filepath.Join(src, "junk.db")
	os.WriteFile(junk, []byte(strings.Repeat("not a database ", 1000)), 0o600)
	// A real database whose pages are then damaged.
	corrupt := filepath.Join(src, "corrupt.db")
	if err := p.BackupTenant(context.Background(), "acme", corrupt); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(corrupt)
	for i := 4096; i < len(b); i++ {
		b[i] ^= 0x5a
	}
	os.WriteFile(corrupt, b, 0o600)
	empty := filepath.Join(src, "empty.db") // SQLite would open it as an empty database
	os.WriteFile(empty, nil, 0o600)
	for _, bad := range []string{junk, corrupt, empty, filepath.Join(src, "missing.db"), src} {
		if err := p.RestoreTenant(context.Background(), "acme", bad); err == nil {
			t.Errorf("restore from %s succeeded", filepath.Base(bad))
		}
		if n := countRows(t, p, "acme"); n != 1 {
			t.Fatalf("acme touched by a refused restore: %d rows", n)
		}
	}
	if files := dbFiles(t, dir); slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, ".") }) {
		t.Errorf("temporary files left: %v", files)
	}
}

func TestProxy_RestoreAppliesPendingMigrations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite3", old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE legacy (a); INSERT INTO legacy VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if err := p.RestoreTenant(context.Background(), "acme", old); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "acme"); n != 0 {
		t.Errorf("events rows %d", n)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM legacy`); n != 1 {
		t.Errorf("legacy rows %d", n)
	}
}

func TestProxy_CheckTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE t (a, b)`, `CREATE INDEX t_a ON t (a)`}
	ctx := context.Background()
	p := newTestProxy(t, Config{Dir: dir, Migrations: v1})
	for _, id := range []string{"open", "closed", "broken"} {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)`); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CheckTenant(ctx, "open"); err != nil {
		t.Errorf("healthy open tenant: %v", err)
	}
	p.Close()

	// An index that disagrees with its table: integrity_check answers with
	// rows, not an error.
	db := direct(t, dir, "broken")
	for _, q := range []string{`PRAGMA writable_schema = ON`, `UPDATE sqlite_schema SET sql = 'CREATE INDEX t_a ON t (b)' WHERE name = 't_a'`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	os.WriteFile(filepath.Join(dir, "junk.db"), []byte(strings.Repeat("junk", 2000)), 0o600)

	// Check mode with a migration the tenants lack: checked all the same,
	// and nothing is migrated or left behind.
	v2 := append(slices.Clone(v1), `ALTER TABLE t ADD COLUMN c`)
	p = newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateCheck})
	if err := p.CheckTenant(ctx, "closed"); err != nil {
		t.Errorf("healthy tenant behind its migrations: %v", err)
	}
	if st, err := p.MigrationStatus(ctx, "closed"); err != nil || len(st.Pending) != 1 {
		t.Errorf("CheckTenant migrated: %+v, %v", st, err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(filepath.Join(dir, "closed.db"+suffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("closed.db%s left behind: %v", suffix, err)
		}
	}
	var pe *Error
	err := p.CheckTenant(ctx, "broken")
	if !errors.As(err, &pe) || pe.Op != "check tenant" || pe.Tenant != "broken" || !strings.Contains(err.Error(), "integrity_check found ") {
		t.Errorf("broken index: %v", err)
	}
	if err := p.CheckTenant(ctx, "junk"); err == nil || !strings.Contains(err.Error(), "file is not a database") {
		t.Errorf("junk file: %v", err)
	}
	if err := p.CheckTenant(ctx, "missing"); !errors.Is(err, ErrTenantNotFound) {
		t.Errorf("missing tenant: %v, want ErrTenantNotFound", err)
	}
	if err := p.CheckTenant(ctx, "../etc"); !errors.Is(err, ErrInvalidTenant) {
		t.Errorf("invalid ID: %v, want ErrInvalidTenant", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CheckTenant created missing.db: %v", err)
	}
}

// TestLibraryBackupTenantIgnoresMigrationState: in MigrateCheck mode
// Proxy.BackupTenant backs up a tenant with pending migrations, and one
// whose ledger has migrations the proxy is not configured with: backing up
// before migrating is exactly when operators need it.
func TestLibraryBackupTenantIgnoresMigrationState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	v1 := []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`}
	v2 := append(slices.Clone(v1), `ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 0`)
	dir := t.TempDir()
	id := fleet(t, dir, 1, v1, `INSERT INTO events (type) VALUES ('t000-0')`)[0]
	for _, migs := range [][]string{v2, nil} { // pending; not configured
		p := newTestProxy(t, Config{Dir: dir, Migrations: migs, MigrationMode: MigrateCheck, ExplicitCreate: true})
		if err := p.BackupTenant(ctx, id, filepath.Join(t.TempDir(), "b.db")); err != nil {
			t.Errorf("Migrations %q: BackupTenant: %v", migs, err)
		}
		p.Close()
	}
}

// TestLibraryBackupFileMode: a backup holds tenant data, so it is 0600
// like the tenant file, whatever the umask.
func TestLibraryBackupFileMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	id := fleet(t, dir, 1, nil)[0]
	dst := filepath.Join(t.TempDir(), "b.db")
	p := newTestProxy(t, Config{Dir: dir})
	if err := p.BackupTenant(context.Background(), id, dst); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %v, %v; want 0600", fi.Mode(), err)
	}
}

// TestLibraryBackupInsideDataDir: a backup written into the data
// directory could take the place of a tenant's file (in the bucketed
// layout, <dir>/82/acme.db is acme): BackupTenant refuses any destination
// inside it, however it is spelled, and writes nothing.
// A backup into a directory that does not exist (or is a file) names it,
// not the copy's temporary file, and leaves nothing behind.
func TestLibraryBackupMissingDir(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	countRows(t, p, "acme")
	base := t.TempDir()
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	before := dirFiles(t, base)
	for dst, want := range map[string]string{
		filepath.Join(base, "nosuch", "acme.db"): "backup destination: stat " + filepath.Join(base, "nosuch") + ": no such file or directory",
		filepath.Join(file, "acme.db"):           "backup destination: " + file + " is not a directory",
	} {
		err := p.BackupTenant(context.Background(), "acme", dst)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("backup to %s: %v, want %q", dst, err, want)
		}
	}
	if got := dirFiles(t, base); !slices.Equal(got, before) {
		t.Errorf("files in %s: %v, before %v", base, got, before)
	}
}

// A symbolic link at the backup's name is replaced by the backup, not
// written through: backup -all -force into a folder where acme.db linked to
// globex.db made acme's backup globex's, and a link to a file elsewhere had
// that file overwritten and its -wal removed (adv43).
func TestLibraryBackupReplacesALinkAtItsName(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 2)
	bk, other := t.TempDir(), t.TempDir()
	precious := filepath.Join(other, "app.db")
	for _, f := range []string{precious, precious + "-wal"} {
		if err := os.WriteFile(f, []byte("precious "+f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	globex := filepath.Join(bk, "globex.db")
	if err := p.BackupTenant(context.Background(), "acme", globex); err != nil { // any database will do
		t.Fatal(err)
	}
	globexBytes, err := os.ReadFile(globex)
	if err != nil {
		t.Fatal(err)
	}
	for target, dst := range map[string]string{"globex.db": filepath.Join(bk, "acme.db"), precious: filepath.Join(bk, "app.db")} {
		if err := os.Symlink(target, dst); err != nil {
			t.Fatal(err)
		}
		if err := p.BackupTenant(context.Background(), "acme", dst); err != nil {
			t.Fatalf("backup to a link at %s: %v", dst, err)
		}
		if fi, err := os.Lstat(dst); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s after the backup: %v, %v; want the backup file in the link's place", dst, fi, err)
		}
	}
	for _, f := range []string{precious, precious + "-wal"} {
		if b, err := os.ReadFile(f); err != nil || string(b) != "precious "+f {
			t.Errorf("%s, a link's target, after the backup: %d bytes (%q...), %v; want it untouched", f, len(b), b[:min(len(b), 16)], err)
		}
	}
	if b, err := os.ReadFile(globex); err != nil || !bytes.Equal(b, globexBytes) {
		t.Errorf("globex.db, a link's target, changed by the backup (%v)", err)
	}
}

// A destination that is a directory through a link at its name is refused,
// as a directory is: Dir itself when it is a symlink (replaced, the data
// directory was gone), and a link to a backup folder, with or without a
// trailing slash (adv44).
func TestLibraryBackupOntoALinkToADirectoryRefused(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	real, nas := filepath.Join(base, "real"), filepath.Join(base, "nas")
	for _, d := range []string{real, nas} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	data, backups := filepath.Join(base, "data"), filepath.Join(base, "backups")
	for link, target := range map[string]string{data: real, backups: nas} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	p := newTestProxy(t, Config{Dir: data, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	for _, dst := range []string{data, data + "/", backups, backups + "/"} {
		err := p.BackupTenant(context.Background(), "acme", dst)
		if err == nil || !strings.Contains(err.Error(), "directory") {
			t.Errorf("BackupTenant(acme, %s): %v, want it refused", dst, err)
		}
		if fi, err := os.Lstat(strings.TrimSuffix(dst, "/")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s after the backup: %v, %v; want the link left alone", dst, fi, err)
		}
	}
	insertN(t, p, "globex", 1) // the data directory is still there
	// A name that does not exist yet with a trailing slash, "." or ".." is
	// a folder's too: not made a file (adv45, adv46).
	fresh := filepath.Join(base, "2026-11-25")
	for _, dst := range []string{fresh + "/", fresh + "/.", fresh + "/x/..", "."} {
		if err := p.BackupTenant(context.Background(), "acme", dst); err == nil || !strings.Contains(err.Error(), "names a directory") {
			t.Errorf("BackupTenant(acme, %s): %v, want it refused", dst, err)
		}
	}
	if _, err := os.Lstat(fresh); err == nil {
		t.Errorf("%s made", fresh)
	}
}

const holdChildEnv = "SQLITEPROXY_HOLD_CHILD_DB"

// The same with the connection in another process: only the database
// file's lock tells of it (no -shm, and /proc/self does not list it).
func TestLibraryBackupOntoADatabaseAnotherProcessHoldsRefused(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	other := filepath.Join(t.TempDir(), "o.db")
	stop := startChild(t, "TestLibraryBackupHoldChild", holdChildEnv+"="+other)
	err := p.BackupTenant(context.Background(), "acme", other)
	if err == nil || !strings.Contains(err.Error(), "is open in another process") {
		t.Errorf("BackupTenant onto a database another process holds EXCLUSIVE: %v, want it refused", err)
	}
	if err := stop(); err != nil {
		t.Errorf("the child, reading its row after the backup: %v", err)
	}
}

// TestLibraryBackupHoldChild holds a database in locking_mode=EXCLUSIVE
// (WAL, no -shm), says "ready" (startChild), and once its standard input
// closes reads its row back: it fails unless the row is still 42.
func TestLibraryBackupHoldChild(t *testing.T) {
	path := os.Getenv(holdChildEnv)
	if path == "" {
		t.Skip("the child of TestLibraryBackupOntoADatabaseAnotherProcessHoldsRefused")
	}
	db := exclusiveDB(t, path)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // until the parent's stop
	var a int
	if err := db.QueryRow(`SELECT a FROM x`).Scan(&a); err != nil || a != 42 {
		t.Fatalf("the row after the parent's backup: %d, %v", a, err)
	}
}

// exclusiveDB opens the database at path in WAL mode and
// locking_mode=EXCLUSIVE (no -shm), with one row (42) in table x that only
// its -wal holds.
func exclusiveDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_locking_mode=EXCLUSIVE")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`PRAGMA wal_autocheckpoint=0; CREATE TABLE x(a); INSERT INTO x VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	return db
}

// A destination a connection holds in locking_mode=EXCLUSIVE (which makes
// no -shm) is refused: its -wal, with its commits, was removed and the file
// replaced under it (adv46).
func TestLibraryBackupOntoAnExclusiveDatabaseRefused(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	other := filepath.Join(t.TempDir(), "o.db")
	db := exclusiveDB(t, other)
	if _, err := os.Lstat(other + "-shm"); err == nil {
		t.Fatal("an EXCLUSIVE connection made a -shm: the test shows nothing")
	}
	if err := p.BackupTenant(context.Background(), "acme", other); err == nil || !strings.Contains(err.Error(), "is open in another process") {
		t.Errorf("BackupTenant onto a database held EXCLUSIVE: %v, want it refused", err)
	}
	var a int
	if err := db.QueryRow(`SELECT a FROM x`).Scan(&a); err != nil || a != 42 {
		t.Errorf("the destination's own rows after the refused backup: %d, %v", a, err)
	}
}

// A symbolic link at the destination's -shm (dangling, or to a live
// tenant's) is removed with the other side files, never followed: the
// -shm lock refused it for every backup to that name (adv45).
func TestLibraryBackupLinkAtItsShmRemoved(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	bk := t.TempDir()
	for name, target := range map[string]string{"acme.db": filepath.Join(bk, "gone-shm"), "live.db": filepath.Join(dir, "acme.db-shm")} {
		dst := filepath.Join(bk, name)
		if err := os.Symlink(target, dst+"-shm"); err != nil {
			t.Fatal(err)
		}
		if err := p.BackupTenant(context.Background(), "acme", dst); err != nil {
			t.Errorf("BackupTenant with a link at its -shm (to %s): %v", target, err)
		}
		if _, err := os.Lstat(dst + "-shm"); err == nil {
			t.Errorf("%s-shm left", dst)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "acme.db-shm")); err != nil {
		t.Errorf("the live tenant's -shm: %v", err)
	}
	insertN(t, p, "acme", 1)
}

func TestLibraryBackupInsideDataDir(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, layout := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run(layout.String(), func(t *testing.T) {
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Layout: layout})
			for _, id := range []string{"acme", "globex"} {
				if _, err := p.ExecContext(WithOrgID(ctx, id), `CREATE TABLE who (id TEXT); INSERT INTO who VALUES (?)`, id); err != nil {
					t.Fatal(err)
				}
			}
			acme := tenantPath(dir, layout, "acme")
			link := filepath.Join(t.TempDir(), "data")
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			before := dirFiles(t, dir)
			for _, dst := range []string{
				acme,
				filepath.Join(dir, "copy.db"),
				filepath.Join(filepath.Dir(acme), "new", "copy.db"),
				filepath.Join(link, strings.TrimPrefix(acme, dir)),
			} {
				err := p.BackupTenant(ctx, "globex", dst)
				if err == nil || !strings.Contains(err.Error(), "inside the data directory") {
					t.Errorf("BackupTenant(globex, %s): %v", dst, err)
				}
			}
			if after := dirFiles(t, dir); !slices.Equal(before, after) {
				t.Errorf("files in the data directory: %v, then %v", before, after)
			}
			var who string
			if err := p.QueryRowContext(WithOrgID(ctx, "acme"), `SELECT id FROM who`).Scan(&who); err != nil || who != "acme" {
				t.Errorf("acme holds %q, %v", who, err)
			}
		})
	}
}

// dirFiles lists the paths under dir.
func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		out = append(out, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLibraryRestoreLeavesSideFiles: restoring from a WAL-mode copy of a
// tenant file (not a BackupTenant backup) leaves no -wal or -shm file next
// to the source.
func TestLibraryRestoreLeavesSideFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	id := fleet(t, dir, 1, nil)[0]
	b, err := os.ReadFile(filepath.Join(dir, id+".db")) // a WAL-mode file, closed cleanly
	if err != nil {
		t.Fatal(err)
	}
	srcDir := t.TempDir()
	src := filepath.Join(srcDir, "copy.db")
	if err := os.WriteFile(src, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dirBefore, err := os.Stat(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir})
	if err := p.RestoreTenant(context.Background(), "other", src); err != nil {
		t.Fatal(err)
	}
	p.Close()
	// The source's directory is as it was: the same file, unchanged, alone.
	if files := dbFiles(t, srcDir); !slices.Equal(files, []string{"copy.db"}) {
		t.Errorf("%s holds %v, want only copy.db", srcDir, files)
	}
	if fi, err := os.Stat(srcDir); err != nil || fi.Mode() != dirBefore.Mode() {
		t.Errorf("%s: %v, %v; mode was %v", srcDir, fi, err, dirBefore.Mode())
	}
	after, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if after.Mode() != before.Mode() || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("copy.db changed: mode %v, size %d, modified %v; was %v, %d, %v",
			after.Mode(), after.Size(), after.ModTime(), before.Mode(), before.Size(), before.ModTime())
	}
	if got, err := os.ReadFile(src); err != nil || !bytes.Equal(got, b) {
		t.Errorf("copy.db's content changed (%v)", err)
	}
}

// ExplicitCreate: an open refused for an unknown tenant retires its object
// while a RestoreTenant of that ID waits for the object's writer. The
// restore made the retired object active again, and a transaction queued
// behind it ran on an object no longer in the registry: two writers for one
// tenant ("database is locked" from SQLite for the next write, two entries
// in Stats, and DeleteTenant calling the file open in another process).
// Not parallel: it sets openWriterRaced.
func TestRetiredTenantStaysRetired(t *testing.T) {
	p := newTestProxy(t, Config{ExplicitCreate: true, Migrations: []string{eventsTable}})
	ctx := context.Background()
	if err := p.CreateTenant(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join(t.TempDir(), "golden.db")
	if err := p.BackupTenant(ctx, "src", golden); err != nil {
		t.Fatal(err)
	}
	paused, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	openWriterRaced = func(tn *tenant) {
		if tn.id == "acme" {
			once.Do(func() { close(paused); <-resume })
		}
	}
	defer func() { openWriterRaced = nil }()
	refused := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('unknown')`)
		refused <- err
	}()
	select {
	case <-paused:
	case <-time.After(10 * time.Second):
		t.Fatal("the open of an unknown tenant never reached openWriterRaced")
	}
	v, _ := p.c.r.tenants.Load("acme")
	old := v.(*tenant)
	restored := make(chan error, 1)
	go func() { restored <- p.RestoreTenant(ctx, "acme", golden) }()
	waitFor(t, 10*time.Second, "the restore to wait for the writer", func() bool {
		return old.state.Load() == tenantDraining && old.wsem.nwait.Load() == 1
	})
	type began struct {
		tx  *sql.Tx
		err error
	}
	queued := make(chan began, 1)
	qctx, cancel := context.WithTimeout(tctx("acme"), 10*time.Second)
	defer cancel()
	go func() {
		tx, err := p.BeginTx(qctx, nil)
		if err == nil {
			if _, err = tx.ExecContext(qctx, `INSERT INTO events (tenant) VALUES ('queued')`); err != nil {
				tx.Rollback()
			}
		}
		queued <- began{tx, err}
	}()
	waitFor(t, 10*time.Second, "a transaction to queue behind the restore", func() bool { return old.wsem.nwait.Load() == 2 })
	close(resume)
	if err := <-refused; !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("the write to the unknown tenant: %v, want ErrTenantNotFound", err)
	}
	if err := <-restored; err != nil {
		t.Fatalf("RestoreTenant: %v", err)
	}
	b := <-queued
	if b.err == nil {
		// It ran: on the registry's object, which holds its writer now.
		v, ok := p.c.r.tenants.Load("acme")
		if !ok || v.(*tenant) == old || !v.(*tenant).wsem.held.Load() {
			t.Errorf("the queued transaction runs on a tenant object outside the registry (retired: %v)", ok && v.(*tenant) == old)
		}
		if err := b.tx.Commit(); err != nil {
			t.Fatal(err)
		}
	} else if !errors.Is(b.err, ErrTenantNotFound) {
		t.Fatalf("the transaction queued behind the restore: %v, want nil or ErrTenantNotFound", b.err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
		t.Fatal(err)
	}
	if old.state.Load() != tenantDeleted {
		t.Errorf("the retired object's state is %d, want deleted", old.state.Load())
	}
	seen := map[string]int{}
	for _, ts := range p.Stats().Tenants {
		if seen[ts.ID]++; seen[ts.ID] > 1 {
			t.Errorf("two open objects for tenant %s", ts.ID)
		}
	}
	if err := p.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
}

// hotJournalFile makes dir/name.db, a database in rollback-journal mode
// whose committed rows (n of them) all have g = 0, with the hot -journal a
// crash in the middle of "UPDATE t SET g = 1" leaves beside it: the file
// holds some of the update's pages, the journal their committed images.
func hotJournalFile(t *testing.T, dir, name string, n int) string {
	t.Helper()
	live := filepath.Join(t.TempDir(), "live.db")
	db, err := sql.Open("sqlite3", live+"?_journal_mode=DELETE&_sync=FULL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	for _, q := range []string{
		`CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, pad BLOB)`,
		fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) INSERT INTO t SELECT x, 0, randomblob(200) FROM c`, n),
		`PRAGMA cache_size = 5`, // the update spills its pages into the file before it commits
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE t SET g = 1`); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name+".db")
	for _, side := range []string{"", "-journal"} {
		b, err := os.ReadFile(live + side)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+side, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// What the crashed file holds without its journal: some updated rows.
	img, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(t.TempDir(), "bare.db")
	if err := os.WriteFile(bare, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := sumG(t, bare); got == 0 {
		t.Fatal("the update spilled nothing into the file: the test shows nothing")
	}
	return dst
}

// sumG opens path with plain mattn (which rolls back a hot journal) and
// returns sum(g) of its table t.
func sumG(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT coalesce(sum(g), 0) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A restore source with a hot journal beside it (a crash mid-transaction)
// holds the committed state: read immutable, the journal was ignored and
// the uncommitted half of the transaction restored (2 996 of 3 000 rows).
func TestProxy_RestoreRollsBackAHotJournal(t *testing.T) {
	t.Parallel()
	src := hotJournalFile(t, t.TempDir(), "crashed", 3000)
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	if err := p.RestoreTenant(context.Background(), "acme", src); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT coalesce(sum(g), 0) FROM t`); n != 0 {
		t.Fatalf("the restored tenant holds %d rows of an uncommitted update", n)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM t`); n != 3000 {
		t.Fatalf("%d rows, want 3000", n)
	}
	if _, err := os.Stat(src + "-journal"); err != nil {
		t.Errorf("the source's journal: %v (the source is never written)", err)
	}
}

// A backup written where a file with side files was (a backup opened in
// WAL mode, or left mid-transaction, by a killed process): the stale
// journal was rolled "back" into the new backup at its next open, which
// then held the other database's pages (integrity_check ok).
func TestLibraryBackupOverStaleSideFiles(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	stale := hotJournalFile(t, out, "acme-backup", 300)
	if err := os.Remove(stale); err != nil { // a journal without its file, as a rename over it leaves
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, pad BLOB)`}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO t (id, g) VALUES (1, 42)`); err != nil {
		t.Fatal(err)
	}
	if err := p.BackupTenant(context.Background(), "acme", stale); err != nil {
		t.Fatal(err)
	}
	for _, side := range sqliteSuffixes {
		if _, err := os.Lstat(stale + side); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s beside the backup: %v", side, err)
		}
	}
	if got := sumG(t, stale); got != 42 {
		t.Fatalf("the backup's sum(g) = %d, want the tenant's 42", got)
	}
}

// A backup onto a file another connection has open in WAL mode is refused:
// its -wal is in use.
func TestLibraryBackupOverAnOpenFileRefused(t *testing.T) {
	t.Parallel()
	dst := filepath.Join(t.TempDir(), "in-use.db")
	db, err := sql.Open("sqlite3", dst+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE x (a)`); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	if err := p.BackupTenant(context.Background(), "acme", dst); err == nil || !strings.Contains(err.Error(), "is open") {
		t.Fatalf("backup onto a file open in WAL mode: %v", err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM x`).Scan(&n); err != nil {
		t.Fatalf("the open file after the refused backup: %v", err)
	}
}

// Cloning a tenant of the proxy's own Dir while traffic opens and writes
// it: the source was read immutable (nobody had it open when the clone
// began), without locks, and the copy mixed two states: sum(g), 0 in every
// committed state, was -2 to -26 in 5 of 6 rounds (an 18 MB tenant whose
// updates rewrite ~40 rows each and checkpoint as the WAL grows). Now it is
// read on a connection of the tenant.
func TestProxy_CloneOfALiveTenantIsASnapshot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := Config{Dir: dir, IdleTimeout: -1, Migrations: []string{`CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER NOT NULL, pad BLOB)`}}
	const rows = 6000
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("src"), fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d) INSERT INTO t (g, pad) SELECT 0, randomblob(3000) FROM c`, rows)); err != nil {
		t.Fatal(err)
	}
	for round := range 4 {
		if err := p.Close(); err != nil { // src closed when the clone begins
			t.Fatal(err)
		}
		if p, err = New(cfg); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a, b := 1+(i*7919)%(rows/2), rows/2+1+(i*104729)%(rows/2)
				if _, err := p.ExecContext(tctx("src"), `UPDATE t SET g = g + CASE WHEN id = ? THEN 1 WHEN id = ? THEN -1 ELSE 0 END, pad = randomblob(3000) WHERE id IN (?, ?) OR id BETWEEN ? AND ?`, a, b, a, b, a+1, a+40); err != nil {
					t.Error(err)
					return
				}
			}
		})
		id := fmt.Sprintf("dst%d", round)
		err = p.RestoreTenant(context.Background(), id, filepath.Join(dir, "src.db"))
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, p, tctx(id), `SELECT sum(g) FROM t`); n != 0 {
			t.Errorf("round %d: the clone's sum(g) = %d, want 0 (a state that was committed)", round, n)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// A symlink to a live tenant's file is that tenant's file: resolved only
// in its folder, the link was read immutable, beside no -wal, and the
// commits still in the tenant's WAL were not restored (0 rows of 50).
func TestProxy_RestoreFromASymlinkToATenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 50) // in acme's -wal
	link := filepath.Join(t.TempDir(), "acme-link.db")
	if err := os.Symlink(filepath.Join(dir, "acme.db"), link); err != nil {
		t.Fatal(err)
	}
	if err := p.RestoreTenant(context.Background(), "globex", link); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, tctx("globex"), `SELECT count(*) FROM events`); n != 50 {
		t.Fatalf("globex restored from a link to acme: %d rows, want 50", n)
	}
}

// A backup of a large tenant ends with its context, between two steps of
// the copy: in one step, a 100 MB tenant's backup with a 5 ms deadline ran
// 250–350 ms, holding its connection and a slot of the budget, and threw
// the copy away.
func TestBackupTenant_EndsWithItsContextMidCopy(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE blobs (b BLOB)`}})
	if _, err := p.ExecContext(tctx("big"), `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 120)
		INSERT INTO blobs SELECT randomblob(100000) FROM c`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	steps := 0
	backupStepped = func() {
		steps++
		cancel()
	}
	defer func() { backupStepped = nil }()
	dst := filepath.Join(t.TempDir(), "big.db")
	if err := p.BackupTenant(ctx, "big", dst); !errors.Is(err, context.Canceled) {
		t.Fatalf("BackupTenant cancelled mid-copy: %v, want context.Canceled", err)
	}
	if steps != 1 {
		t.Errorf("the copy went on for %d steps after its context ended, want 1", steps)
	}
	if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destination after a cancelled backup: %v, want none", err)
	}
	backupStepped = nil
	if err := p.BackupTenant(context.Background(), "big", dst); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM blobs`).Scan(&n); err != nil || n != 120 {
		t.Errorf("the backup holds %d blobs (%v), want 120", n, err)
	}
}

// A backup step that cannot take the source's lock (SQLITE_BUSY, which
// mattn's Step reports as no error) is an error: Finish then returned nil,
// and the backup of a tenant was an empty database.
func TestBackupSteps_BusyIsAnError(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	holder, err := sql.Open("sqlite3", "file:"+src+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	hc, err := holder.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	sc, err := plainDriver.Open("file:" + src + "?_busy_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	for _, q := range []string{`CREATE TABLE t (x)`, `INSERT INTO t VALUES (1)`, `BEGIN EXCLUSIVE`, `INSERT INTO t VALUES (2)`} {
		if _, err := hc.ExecContext(context.Background(), q); err != nil {
			t.Fatal(q, err)
		}
	}
	dc, err := plainDriver.Open("file:" + filepath.Join(dir, "dst.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	bk, err := dc.(*sqlite3.SQLiteConn).Backup("main", sc.(*sqlite3.SQLiteConn), "main")
	if err != nil {
		t.Fatal(err)
	}
	err = backupSteps(context.Background(), bk)
	bk.Finish()
	var se sqlite3.Error
	if !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
		t.Errorf("a backup whose source is locked: %v, want SQLITE_BUSY", err)
	}
}

// A backup destination spelled through a symlink into the data directory
// and then ".." (backups/lnk/../<bucket>/t2.db, lnk a bucket folder) is,
// for the system, another bucket of the data directory: the check cleaned
// ".." away first (backups/<bucket>/t2.db, outside) and the backup was
// renamed over tenant t2's live file (adv30).
func TestBackupTenant_DotDotThroughLinkIntoDataDirRefused(t *testing.T) {
	base := t.TempDir()
	dir, bk := filepath.Join(base, "data"), filepath.Join(base, "bk")
	if err := os.Mkdir(bk, 0o700); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	for _, id := range []string{"t1", "t2"} {
		insertN(t, p, id, 1)
	}
	if err := os.Symlink(filepath.Join(dir, bucketOf("t1")), filepath.Join(bk, "lnk")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(bk, bucketOf("t2")), 0o700); err != nil { // the lexical parent exists
		t.Fatal(err)
	}
	for _, dst := range []string{
		filepath.Join(bk, "lnk") + "/../" + bucketOf("t2") + "/t2.db", // over t2's file
		filepath.Join(bk, "lnk") + "/../" + bucketOf("t2") + "/t9.db", // a new name in the data directory
	} {
		err := p.BackupTenant(context.Background(), "t1", dst)
		if err == nil || !strings.Contains(err.Error(), "inside the data directory") {
			t.Errorf("BackupTenant(t1, %s) = %v, want it refused as inside the data directory", dst, err)
		}
	}
	var tenant string
	if err := p.QueryRowContext(tctx("t2"), `SELECT tenant FROM events`).Scan(&tenant); err != nil || tenant != "t2" {
		t.Fatalf("t2 reads %q (%v) after the backups", tenant, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, bucketOf("t2"), "t9.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a backup was written into the data directory as t9.db: %v", err)
	}
}

// A marker the driver writes beside a tenant's file is replaced, never
// written through what is there: RestoreTenant truncated and overwrote a
// file outside the data directory through .acme.db-restored, a symbolic
// link (adv30) or a hard link (adv31); a FIFO there held the restore past
// its context (adv32); and touching an empty marker made a file at a
// dangling link's target. The restore succeeds, its marker a file of its
// own, and the file outside is as it was.
func TestRestoreTenant_MarkerLinkNotWrittenThrough(t *testing.T) {
	for _, kind := range []string{"symlink", "hard link", "fifo"} {
		t.Run(kind, func(t *testing.T) {
			base := t.TempDir()
			dir, outside := filepath.Join(base, "data"), filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o700); err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(outside, "victim")
			if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
			insertN(t, p, "src", 2)
			bak := filepath.Join(base, "src.bak")
			if err := p.BackupTenant(context.Background(), "src", bak); err != nil {
				t.Fatal(err)
			}
			m := restoredMarker(filepath.Join(dir, "acme.db"))
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(victim, m)
			case "hard link":
				err = os.Link(victim, m)
			case "fifo":
				err = syscall.Mkfifo(m, 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.RestoreTenant(ctx, "acme", bak); err != nil {
				t.Errorf("RestoreTenant beside a marker that is a %s: %v", kind, err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
				t.Fatalf("RestoreTenant wrote through the marker to a file outside the data directory: it holds %q", b)
			}
			if ok, _, _, err := markerNames(m, filepath.Join(dir, "acme.db")); err != nil || !ok {
				t.Errorf("the restore's marker does not name the restored file: %v, %v", ok, err)
			}
			if n := countRows(t, p, "acme"); n != 2 {
				t.Errorf("acme: %d rows, want the backup's 2", n)
			}
		})
	}
	dir, outside := t.TempDir(), t.TempDir()
	dangling := filepath.Join(dir, ".x.db-unsynced")
	target := filepath.Join(outside, "made")
	if err := os.Symlink(target, dangling); err != nil {
		t.Fatal(err)
	}
	if err := touchFile(dangling); err != nil {
		t.Errorf("touchFile of a dangling symlink: %v", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("touchFile made a file at a dangling link's target: %v", err)
	}
}

// A restored tenant's file is in rollback-journal mode until its first
// open here, and a connection in a transaction on it leaves no side file.
// One of another process holds the file's locks, which DeleteTenant and
// RestoreTenant look at; one of this process (a plain mattn connection
// beside the proxy) holds locks those do not show: both moved the file
// from under its BEGIN IMMEDIATE (or BEGIN and a read) and said nothing
// (its next write failed with "attempt to write a readonly database").
// Both are refused, and once the transaction is done both go ahead.
func TestProxy_ReplaceRefusedUnderAnotherConnectionsTransaction(t *testing.T) {
	t.Parallel()
	if !openInProcessTells {
		t.Skip("only where this process's descriptors can be told (Linux): see settleLone")
	}
	for _, op := range []string{"DeleteTenant", "RestoreTenant"} {
		for _, begin := range []string{"BEGIN IMMEDIATE", "BEGIN"} {
			for _, where := range []string{"another process", "this process"} {
				dir := t.TempDir()
				p, bk := restoredTenant(t, Config{Dir: dir, Migrations: []string{eventsTable}})
				path := filepath.Join(dir, "acme.db")
				var stop func() error
				if where == "another process" {
					stop = startChild(t, "TestLibraryTransactionHoldChild", txChildEnv+"="+path, txChildBeginEnv+"="+begin)
				} else {
					stop = holdTransaction(t, path, begin, nil)
				}
				replace := func() error {
					if op == "DeleteTenant" {
						return p.DeleteTenant(context.Background(), "acme")
					}
					return p.RestoreTenant(context.Background(), "acme", bk)
				}
				if err := replace(); err == nil || !strings.Contains(err.Error(), "process") {
					t.Errorf("%s under a %s in %s: %v, want it refused (open elsewhere)", op, begin, where, err)
				}
				if err := stop(); err != nil {
					t.Errorf("%s under a %s in %s: the transaction, writing and committing after it: %v", op, begin, where, err)
				}
				if err := replace(); err != nil {
					t.Errorf("%s once the transaction in %s is done: %v", op, where, err)
				}
			}
		}
	}
}

// holdTransaction begins a transaction (begin: BEGIN IMMEDIATE, or BEGIN
// then a read) on the tenant file at path with mattn directly, and calls
// ready; stop writes a row, commits and closes the connection.
func holdTransaction(t *testing.T, path, begin string, ready func()) (stop func() error) {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(context.Background(), begin); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRowContext(context.Background(), `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if ready != nil {
		ready()
	}
	return func() error {
		defer db.Close()
		defer c.Close()
		if _, err := c.ExecContext(context.Background(), `INSERT INTO events (tenant) VALUES ('held')`); err != nil {
			return err
		}
		_, err := c.ExecContext(context.Background(), `COMMIT`)
		return err
	}
}

const (
	txChildEnv      = "SQLITEPROXY_TX_CHILD_DB"
	txChildBeginEnv = "SQLITEPROXY_TX_CHILD_BEGIN"
)

// TestLibraryTransactionHoldChild begins a transaction (holdTransaction)
// on a tenant file, says "ready" (startChild), and once its standard input
// closes writes a row and commits: it fails if the file was taken from
// under it meanwhile.
func TestLibraryTransactionHoldChild(t *testing.T) {
	path := os.Getenv(txChildEnv)
	if path == "" {
		t.Skip("the child of TestProxy_ReplaceRefusedUnderAnotherConnectionsTransaction")
	}
	stop := holdTransaction(t, path, os.Getenv(txChildBeginEnv), func() { fmt.Println("ready") })
	io.Copy(io.Discard, os.Stdin) // until the parent's stop
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
