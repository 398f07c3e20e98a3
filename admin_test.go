package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestProxy_CreateTenant(t *testing.T) {
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

func TestProxy_TenantsNeverListsHalfCreated(t *testing.T) {
	dir := t.TempDir()
	// A slow migration keeps creations in flight while Tenants is called.
	slow := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 200000) SELECT count(*) FROM c`
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE t (a); INSERT INTO t ` + strings.Replace(slow, "SELECT count(*) FROM c", "SELECT x FROM c", 1)}})
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			if err := p.CreateTenant(context.Background(), fmt.Sprintf("t%d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		ids, err := p.Tenants(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			db := direct(t, dir, id)
			var n int
			if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 200000 {
				t.Fatalf("Tenants listed %s before it was fully migrated: %d rows, %v", id, n, err)
			}
			db.Close()
		}
		select {
		case <-done:
			if ids, _ := p.Tenants(context.Background()); len(ids) != 10 {
				t.Fatalf("Tenants = %v", ids)
			}
			return
		default:
		}
	}
}

func TestProxy_DeleteTenant(t *testing.T) {
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

func TestProxy_DeleteTenantWaitsForInFlightWork(t *testing.T) {
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
	for p.c.r.mustTenant(t, "acme").state.Load() != tenantDraining {
		time.Sleep(time.Millisecond)
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('late')`)
		waiting <- err
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-deleted:
		t.Fatalf("delete finished while a tx was open: %v", err)
	default:
	}
	tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('in-tx')`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	if err := <-waiting; !errors.Is(err, ErrTenantNotFound) {
		t.Errorf("query waiting on a deleted tenant: %v, want ErrTenantNotFound", err)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files after delete: %v", files)
	}
	assertNoOpenFiles(t, dir)
}

func (r *router) mustTenant(t *testing.T, id string) *tenant {
	t.Helper()
	tn, err := r.tenant(id)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

func TestProxy_BackupRestoreUnderWrites(t *testing.T) {
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
	for _, bad := range []string{junk, corrupt, filepath.Join(src, "missing.db"), src} {
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

// TestIsolation_CrossTenantReads tries to read tenant B's rows from tenant
// A by every means a statement has.
func TestIsolation_CrossTenantReads(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if _, err := p.ExecContext(tctx("victim"), `INSERT INTO events (tenant) VALUES ('secret')`); err != nil {
		t.Fatal(err)
	}
	a := tctx("attacker")
	victim := filepath.Join(dir, "victim.db")
	if err := os.Symlink(victim, filepath.Join(dir, "alias.db")); err != nil {
		t.Fatal(err)
	}
	attempts := []struct {
		ctx context.Context
		sql string
	}{
		{a, `ATTACH '` + victim + `' AS v`},
		{a, `ATTACH 'file:` + victim + `?mode=ro' AS v`},
		{a, `ATTACH 'victim.db' AS v`},
		{a, `VACUUM INTO '` + filepath.Join(dir, "stolen.db") + `'`},
		{a, `SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')`},
		{a, `PRAGMA writable_schema = 1`},
		{tctx("../victim"), `SELECT tenant FROM events`},
		{tctx("victim.db"), `SELECT tenant FROM events`},
		{tctx("VICTIM"), `SELECT tenant FROM events`},
		{tctx("alias"), `SELECT tenant FROM events`},
		{context.Background(), `SELECT tenant FROM events`},
	}
	for _, at := range attempts {
		rows, err := p.QueryContext(at.ctx, at.sql)
		if err == nil {
			for rows.Next() {
				var v any
				rows.Scan(&v)
				if fmt.Sprint(v) == "secret" {
					t.Errorf("%s read the victim's row", at.sql)
				}
			}
			err = rows.Err()
			rows.Close()
		}
		if _, xerr := p.ExecContext(at.ctx, at.sql); err == nil && xerr == nil {
			t.Errorf("%q was allowed", at.sql)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "stolen.db")); err == nil {
		t.Error("VACUUM INTO wrote a copy")
	}
}

func TestFileModesIgnoreUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "data")
	p := newTestProxy(t, Config{Dir: dir})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, "acme.db": 0o600, "acme.db-wal": 0o600, "acme.db-shm": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%q: mode %v with umask 0, want %v", name, fi.Mode().Perm(), want)
		}
	}
}

func TestProxy_StatsPerTenant(t *testing.T) {
	p := newTestProxy(t, Config{MaxConnections: 10})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.ExecContext(ctx, `CREATE TABLE t (a)`)
	countTenant := func() TenantStats {
		for _, ts := range p.Stats().Tenants {
			if ts.ID == "acme" {
				return ts
			}
		}
		t.Fatalf("acme not in %+v", p.Stats())
		return TenantStats{}
	}
	if ts := countTenant(); ts.Open != 1 || ts.InUse != 1 || ts.LastUsed.IsZero() {
		t.Errorf("during tx: %+v", ts)
	}
	tx.Commit()
	st := p.Stats()
	if ts := countTenant(); ts.InUse != 0 || st.OpenConnections != 1 || st.MaxConnections != 10 || st.OpenTenants != 1 {
		t.Errorf("after tx: %+v, %+v", ts, st)
	}
}

func TestProxy_CheckTenant(t *testing.T) {
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
