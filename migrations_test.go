package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	_ "github.com/mattn/go-sqlite3"
)

var seededMigrations = []string{
	`CREATE TABLE seeds (v TEXT)`,
	`INSERT INTO seeds VALUES ('once')`,
	`CREATE TABLE events (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0)`,
}

func TestMigrations_SingleFlight(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: seededMigrations})
	ctx := tctx("acme")
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 64 {
		wg.Go(func() {
			<-start
			var err error
			if i%2 == 0 {
				_, err = p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`)
			} else {
				err = p.QueryRowContext(ctx, `SELECT count(*) FROM seeds`).Scan(new(int))
			}
			if err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := queryInt(t, p, ctx, `SELECT count(*) FROM seeds`); n != 1 {
		t.Errorf("seed migration ran %d times, want 1", n)
	}
	if n := queryInt(t, p, ctx, `SELECT count(*) FROM `+ledgerTable); n != len(seededMigrations) {
		t.Errorf("ledger has %d rows, want %d", n, len(seededMigrations))
	}
	if n := queryInt(t, p, ctx, `SELECT count(*) FROM events`); n != 32 {
		t.Errorf("events = %d, want 32", n)
	}
}

func TestMigrations_AppendOnlySixMonthsLater(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, type TEXT NOT NULL)`}
	p1 := newTestProxy(t, Config{Dir: dir, Migrations: v1})
	for _, id := range []string{"acme", "globex"} {
		if _, err := p1.ExecContext(tctx(id), `INSERT INTO events (type) VALUES ('signup')`); err != nil {
			t.Fatal(err)
		}
	}
	p1.Close()

	// Six months later: one migration appended; every tenant gets it on first access.
	v2 := append(v1, `ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'`)
	p2 := newTestProxy(t, Config{Dir: dir, Migrations: v2})
	for _, id := range []string{"acme", "globex"} {
		ctx := tctx(id)
		if _, err := p2.ExecContext(ctx, `INSERT INTO events (type, severity) VALUES ('alert', 'high')`); err != nil {
			t.Fatal(err)
		}
		var sev string
		if err := p2.QueryRowContext(ctx, `SELECT severity FROM events WHERE type = 'signup'`).Scan(&sev); err != nil || sev != "info" {
			t.Errorf("%s: old row severity %q, %v", id, sev, err)
		}
		if n := queryInt(t, p2, ctx, `SELECT count(*) FROM `+ledgerTable); n != 2 {
			t.Errorf("%s: ledger rows %d, want 2", id, n)
		}
	}
	// A brand-new tenant gets both.
	if _, err := p2.ExecContext(tctx("initech"), `INSERT INTO events (type, severity) VALUES ('x', 'low')`); err != nil {
		t.Fatal(err)
	}
}

// The drift error says what happened to the migrations, as the checksums
// tell it, and names the right one: a migration put before applied ones is
// not "edited", nor is the one after a removed one.
func TestMigrations_DriftMessages(t *testing.T) {
	t.Parallel()
	named := func(names ...string) []migration {
		var l []migration
		for _, n := range names {
			l = append(l, migration{name: n, sql: "CREATE TABLE " + n + " (a)"})
		}
		return newMigrator(l, nil).list
	}
	applied := named("a", "b", "c")
	var rows []ledgerRow
	for i, mg := range applied {
		rows = append(rows, ledgerRow{version: int64(i + 1), checksum: mg.sum})
	}
	edited := named("a", "b", "c")
	edited[1] = named("b2")[0]
	edited[1].name = "b"
	for name, tc := range map[string]struct {
		list []migration
		want string
	}{
		"edited":       {edited, "migration 2 (b) was edited after it was applied"},
		"inserted":     {named("a", "x", "b", "c"), "migration 2 (x) is new but comes before migrations already applied (applied migration 2 is now 3, b): add new migrations at the end"},
		"removed":      {named("a", "c"), "applied migration 2 is no longer configured: it was removed or edited (c, now number 2, was applied after it)"},
		"moved":        {named("a", "c", "b"), "applied migration 2 is now configured as 3 (b): migrations were moved"},
		"removed-last": {named("a", "b"), "migration 3 is applied but not configured (only 2 are)" + errAhead.Error()},
	} {
		_, err := newMigrator(tc.list, nil).check(rows)
		if !errors.Is(err, ErrMigrationDrift) || !strings.HasSuffix(err.Error(), ": "+tc.want) {
			t.Errorf("%s: %v\nwant ...: %s", name, err, tc.want)
		}
	}
	if n, err := newMigrator(named("a", "b", "c", "d"), nil).check(rows); n != 3 || err != nil {
		t.Errorf("one more configured: %d, %v", n, err)
	}
	// The same with the applied texts now given a final newline (not an
	// edit): a new migration put first still reads as one, not as an edit.
	newline := named("x", "a", "b", "c")
	for i := range newline[1:] {
		newline[i+1].sql += "\n"
	}
	_, err := newMigrator(newline, nil).check(rows)
	if want := "migration 1 (x) is new but comes before migrations already applied (applied migration 1 is now 2, a): add new migrations at the end"; err == nil || !strings.HasSuffix(err.Error(), ": "+want) {
		t.Errorf("inserted before texts with a final newline: %v\nwant ...: %s", err, want)
	}
}

func TestMigrations_Drift(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p1 := newTestProxy(t, Config{Dir: dir, Migrations: seededMigrations})
	queryInt(t, p1, tctx("acme"), `SELECT count(*) FROM seeds`)
	p1.Close()

	edited := append([]string{`CREATE TABLE seeds (v TEXT) -- edited`}, seededMigrations[1:]...)
	removed := seededMigrations[:2]
	for name, migs := range map[string][]string{"edited": edited, "removed": removed} {
		t.Run(name, func(t *testing.T) { // serial: the subtests share dir
			p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
			_, err := p.ExecContext(tctx("acme"), `INSERT INTO seeds VALUES ('x')`)
			if !errors.Is(err, ErrMigrationDrift) {
				t.Fatalf("got %v, want ErrMigrationDrift", err)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Tenant != "acme" || pe.Op != "migrate" {
				t.Errorf("error %#v does not name the operation and tenant", err)
			}
			// Other tenants are unaffected.
			if _, err := p.ExecContext(tctx("fresh-"+name), `INSERT INTO seeds VALUES ('x')`); err != nil {
				t.Errorf("fresh tenant: %v", err)
			}
		})
	}
}

func TestMigrations_FailureIsAtomicAndRetried(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE t (a INTEGER)`}
	p1 := newTestProxy(t, Config{Dir: dir, Migrations: v1})
	if _, err := p1.ExecContext(tctx("bad"), `INSERT INTO t VALUES (1), (1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p1.ExecContext(tctx("good"), `INSERT INTO t VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	p1.Close()

	// The second migration fails half-way on "bad" (duplicate values).
	v2 := append(v1, `CREATE TABLE audit (x); INSERT INTO audit VALUES (1); CREATE UNIQUE INDEX t_a ON t (a)`)
	p2 := newTestProxy(t, Config{Dir: dir, Migrations: v2})
	_, err := p2.ExecContext(tctx("bad"), `INSERT INTO t VALUES (3)`)
	if err == nil || !strings.Contains(err.Error(), "migrate") || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("failing migration: %v", err)
	}
	// Nothing half-applied: no audit table, ledger still at 1, the insert did not run.
	db := direct(t, dir, "bad")
	bg := context.Background()
	if n := queryInt(t, db, bg, `SELECT count(*) FROM sqlite_master WHERE name = 'audit'`); n != 0 {
		t.Error("half of the failed migration is in the file")
	}
	if n := queryInt(t, db, bg, `SELECT count(*) FROM `+ledgerTable); n != 1 {
		t.Errorf("ledger rows %d, want 1", n)
	}
	if n := queryInt(t, db, bg, `SELECT count(*) FROM t`); n != 2 {
		t.Errorf("t rows %d, want 2", n)
	}
	// Other tenants are unaffected.
	if _, err := p2.ExecContext(tctx("good"), `INSERT INTO t VALUES (3)`); err != nil {
		t.Fatalf("good tenant: %v", err)
	}
	// Fix the data; the next access retries and succeeds.
	if _, err := db.Exec(`DELETE FROM t WHERE rowid = (SELECT max(rowid) FROM t)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p2.ExecContext(tctx("bad"), `INSERT INTO t VALUES (3)`); err != nil {
		t.Fatalf("retry after fix: %v", err)
	}
	if n := queryInt(t, p2, tctx("bad"), `SELECT count(*) FROM audit`); n != 1 {
		t.Errorf("audit rows %d, want 1", n)
	}
}

const helperEnv = "SQLITEPROXY_TEST_HELPER_DIR"

// TestHelperProcess is not a test: TestMigrations_TwoProcesses runs the test
// binary again with it to get a second process migrating the same files.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	p, err := New(Config{Dir: dir, Migrations: seededMigrations, BusyTimeout: 0})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	defer p.Close()
	if err := migrateMany(p); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
}

func migrateMany(p *Proxy) error {
	for i := range 20 {
		ctx := tctx(fmt.Sprintf("tenant%02d", i))
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('x')`); err != nil {
			return err
		}
	}
	return nil
}

func TestMigrations_TwoProcesses(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	var cmds []*exec.Cmd
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+dir)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	p := newTestProxy(t, Config{Dir: dir, Migrations: seededMigrations})
	if err := migrateMany(p); err != nil {
		t.Errorf("this process: %v", err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper process: %v", err)
		}
	}
	for i := range 20 {
		ctx := tctx(fmt.Sprintf("tenant%02d", i))
		if n := queryInt(t, p, ctx, `SELECT count(*) FROM seeds`); n != 1 {
			t.Errorf("tenant%02d: seed ran %d times", i, n)
		}
		if n := queryInt(t, p, ctx, `SELECT count(*) FROM events`); n != 3 {
			t.Errorf("tenant%02d: %d events, want 3", i, n)
		}
	}
}

func TestMigrationsFS(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0010_late.sql":          {Data: []byte(`INSERT INTO log VALUES ('0010')`)},
		"0002_second.up.sql":     {Data: []byte(`INSERT INTO log VALUES ('0002')`)},
		"0001_init.sql":          {Data: []byte(`CREATE TABLE log (v TEXT)`)},
		"0002_second.down.sql":   {Data: []byte(`DELETE FROM log`)},
		"README.md":              {Data: []byte(`not a migration`)},
		"notes.sql":              {Data: []byte(`garbage`)},
		"sub/0003_nested.sql":    {Data: []byte(`garbage`)},
		"0003_third.sql.orig":    {Data: []byte(`garbage`)},
		"0005_fifth.sql":         {Data: []byte(`INSERT INTO log VALUES ('0005')`)},
		"x0004_not_numbered.sql": {Data: []byte(`garbage`)},
	}
	p := newTestProxy(t, Config{MigrationsFS: fsys})
	rows, err := p.QueryContext(tctx("acme"), `SELECT v FROM log ORDER BY rowid`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var v string
		rows.Scan(&v)
		got = append(got, v)
	}
	rows.Close()
	if want := []string{"0002", "0005", "0010"}; !slices.Equal(got, want) {
		t.Errorf("applied %v, want %v", got, want)
	}
	st, err := p.MigrationStatus(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range st.Applied {
		names = append(names, a.Name)
		if a.AppliedAt.IsZero() || len(a.Checksum) != 64 {
			t.Errorf("applied migration %+v lacks time or checksum", a)
		}
	}
	if want := []string{"0001_init.sql", "0002_second.up.sql", "0005_fifth.sql", "0010_late.sql"}; !slices.Equal(names, want) || len(st.Pending) != 0 || st.Drift != nil {
		t.Errorf("status %+v", st)
	}

	for name, bad := range map[string]Config{
		"duplicate number": {MigrationsFS: fstest.MapFS{"0001_a.sql": {Data: []byte("SELECT 1")}, "001_b.sql": {Data: []byte("SELECT 1")}}},
		"empty file":       {MigrationsFS: fstest.MapFS{"0001_a.sql": {Data: []byte(" \n")}}},
		"both set":         {MigrationsFS: fsys, Migrations: []string{"SELECT 1"}},
		"missing dir":      {MigrationsDir: filepath.Join(t.TempDir(), "nope")},
		// //go:embed migrations/*.sql without fs.Sub.
		"in a folder": {MigrationsFS: fstest.MapFS{"migrations/0001_a.sql": {Data: []byte("SELECT 1")}}},
		"misnamed":    {MigrationsFS: fstest.MapFS{"0001-a.sql": {Data: []byte("SELECT 1")}, "README.md": {}}},
	} {
		// Refused before anything is made: not even the data directory.
		bad.Dir = filepath.Join(t.TempDir(), "data")
		_, err := New(bad)
		if err == nil {
			t.Errorf("%s: New succeeded", name)
		}
		if _, serr := os.Stat(bad.Dir); !os.IsNotExist(serr) {
			t.Errorf("%s: refused (%v), but made %s", name, err, bad.Dir)
		}
		t.Logf("%s: %v", name, err)
	}
	// A source without SQL files is an empty set, not a mistake.
	newTestProxy(t, Config{MigrationsDir: t.TempDir()})
}

// A migrations directory that is missing, or a file, is named in the
// error as it was given (os.DirFS called it "."), and nothing is made.
func TestMigrationsDirMissing(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "0001_init.sql")
	os.WriteFile(file, []byte(`CREATE TABLE t (a)`), 0o600)
	missing := filepath.Join(t.TempDir(), "nosuch")
	for mdir, want := range map[string]string{
		missing: "read migrations: Config.MigrationsDir (DSN migrations_dir): stat " + missing + ": no such file or directory",
		file:    "read migrations: Config.MigrationsDir (DSN migrations_dir): " + file + " is not a directory",
	} {
		dir := filepath.Join(t.TempDir(), "data")
		_, err := Open("dir=" + dir + "&migrations_dir=" + mdir)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("migrations_dir=%s: %v, want %q", mdir, err, want)
		}
		if _, serr := os.Stat(dir); !os.IsNotExist(serr) {
			t.Errorf("migrations_dir=%s: refused, but made %s", mdir, dir)
		}
	}
}

func TestMigrationsDirDSN(t *testing.T) {
	t.Parallel()
	mdir := t.TempDir()
	os.WriteFile(filepath.Join(mdir, "0001_init.sql"), []byte(`CREATE TABLE t (a)`), 0o600)
	p, err := Open("dir=" + t.TempDir() + "&migrations_dir=" + mdir + "&migration_mode=auto")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
}

// Migration files that are symbolic links to regular files (a Kubernetes
// ConfigMap mounts every file so) are read like the files; a link to a
// directory or a dangling link is ignored like any other non-file.
func TestMigrationsDirSymlinks(t *testing.T) {
	t.Parallel()
	src, mdir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(src, "init.sql"), []byte(`CREATE TABLE t (a)`), 0o600)
	for link, target := range map[string]string{
		"0001_init.sql":    filepath.Join(src, "init.sql"),
		"0002_dir.sql":     src,
		"0003_missing.sql": filepath.Join(src, "missing.sql"),
	} {
		if err := os.Symlink(target, filepath.Join(mdir, link)); err != nil {
			t.Fatal(err)
		}
	}
	p := newTestProxy(t, Config{MigrationsDir: mdir})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	st, err := p.MigrationStatus(context.Background(), "acme")
	if err != nil || len(st.Applied) != 1 || st.Applied[0].Name != "0001_init.sql" {
		t.Errorf("status %+v, %v", st, err)
	}
}

func TestMigrateCheckMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleet(t, dir, 1, []string{`CREATE TABLE t (a)`})
	p := newTestProxy(t, Config{Dir: dir, MigrationMode: MigrateCheck, Migrations: []string{`CREATE TABLE t (a)`, `CREATE TABLE u (b)`}})
	_, err := p.ExecContext(tctx("t000"), `INSERT INTO t VALUES (1)`)
	if !errors.Is(err, ErrPendingMigrations) {
		t.Fatalf("got %v", err)
	}
	// New tenants are created complete.
	if _, err := p.ExecContext(tctx("brand-new"), `INSERT INTO u VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	st, _ := p.MigrationStatus(context.Background(), "t000")
	if diff := cmp.Diff([]string{"Migrations[1]"}, st.Pending); diff != "" {
		t.Error(diff)
	}
	if _, err := p.MigrateAll(context.Background(), MigrateOptions{Tenants: []string{"t000"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("t000"), `INSERT INTO u VALUES (1)`); err != nil {
		t.Fatal(err)
	}
}

// TestMigrations_FirstAccessIsARead: a tenant's first access in a process
// being a read checks the ledger on the reader when the tenant is up to
// date (one connection opened, not a writer and a reader), and otherwise
// still applies or reports exactly as a first write does.
func TestMigrations_FirstAccessIsARead(t *testing.T) {
	t.Parallel()
	v1 := []string{`CREATE TABLE t (a INTEGER)`, `INSERT INTO t VALUES (1)`}
	v2 := append(slices.Clone(v1), `CREATE TABLE u (b INTEGER)`)
	edited := []string{`CREATE TABLE t (a INTEGER) -- edited`, v1[1]}
	for _, tc := range []struct {
		name    string
		migs    []string
		mode    MigrationMode
		query   string
		wantErr error
		open    int // connections open after the read
	}{
		{"up-to-date", v1, MigrateAuto, `SELECT count(*) FROM t`, nil, 1},
		{"up-to-date-check-mode", v1, MigrateCheck, `SELECT count(*) FROM t`, nil, 1},
		{"pending-applied", v2, MigrateAuto, `SELECT count(*) FROM u`, nil, 2},
		{"pending-refused", v2, MigrateCheck, `SELECT count(*) FROM t`, ErrPendingMigrations, 0},
		{"drift", edited, MigrateAuto, `SELECT count(*) FROM t`, ErrMigrationDrift, 0},
		{"no-migrations-configured", nil, MigrateAuto, `SELECT count(*) FROM t`, nil, 1},
		{"ledger-ahead-of-none-configured", nil, MigrateCheck, `SELECT count(*) FROM t`, ErrMigrationDrift, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			fleet(t, dir, 1, v1)
			p := newTestProxy(t, Config{Dir: dir, Migrations: tc.migs, MigrationMode: tc.mode})
			err := p.QueryRowContext(tctx("t000"), tc.query).Scan(new(int))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("first read: got %v, want %v", err, tc.wantErr)
			}
			if got := p.Stats().OpenConnections; got != tc.open {
				t.Errorf("%d connections open after the first read, want %d", got, tc.open)
			}
			if tc.wantErr != nil {
				return
			}
			// Checked once: the first write uses the writer without a
			// second look, and sees what the read saw.
			if _, err := p.ExecContext(tctx("t000"), `INSERT INTO t VALUES (2)`); err != nil {
				t.Fatal(err)
			}
			if n := queryInt(t, p, tctx("t000"), `SELECT count(*) FROM t`); n != 2 {
				t.Errorf("t has %d rows, want 2", n)
			}
		})
	}
}

// Another process rolls a tenant back between the migrator's read of its
// version and the transaction of the next migration: the migration it
// meant to apply (4, for a tenant it read at 3) went over version 1, the
// ledger read 1,4 and the schema lacked 2 and 3, refused for good. Inside
// the transaction the version is read again, and the migrator goes on from
// there.
func TestMigrations_RolledBackMeanwhile(t *testing.T) {
	dir := t.TempDir()
	migs := []string{
		`CREATE TABLE ev (id INTEGER PRIMARY KEY)`,
		`ALTER TABLE ev ADD COLUMN c2`,
		`ALTER TABLE ev ADD COLUMN c3`,
		`ALTER TABLE ev ADD COLUMN c4`,
	}
	old := newTestProxy(t, Config{Dir: dir, Migrations: migs[:1]})
	if err := old.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	r := p.c.r
	c, err := r.conns.openPath(filepath.Join(dir, "acme.db"), r.conns.writerParams)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	versions := func() []int {
		t.Helper()
		rows, err := c.QueryContext(context.Background(), `SELECT version FROM _sqliteproxy_migrations ORDER BY version`, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []int
		v := make([]driver.Value, 1)
		for rows.Next(v) == nil {
			out = append(out, int(v[0].(int64)))
		}
		return out
	}
	// As if read at 3: the tenant is at 1.
	at, err := r.mig.applyOne(context.Background(), c, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got := versions(); at != 1 || !slices.Equal(got, []int{1}) {
		t.Fatalf("applyOne(3) on a tenant at 1: returned %d, ledger %v; want 1 and [1] (nothing applied)", at, got)
	}
	if _, err := r.mig.migrate(context.Background(), c, "acme", nil, true, nil); err != nil {
		t.Fatal(err)
	}
	if got := versions(); !slices.Equal(got, []int{1, 2, 3, 4}) {
		t.Errorf("ledger after migrate: %v, want [1 2 3 4]", got)
	}
}
