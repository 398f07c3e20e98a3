package torture

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sqliteproxy/sqliteproxy"
)

// Environment of the child process of TestCrashRollback.
const (
	rollbackBaseEnv  = "SQLITEPROXY_TORTURE_ROLLBACK_BASE" // base directory: data/, migrations/, started, child.err
	rollbackCycleEnv = "SQLITEPROXY_TORTURE_ROLLBACK_CYCLE"
)

const rollbackItems = 40 // rows per tenant

// rollbackMigrationFiles are the migrations of the rollback crash test: a
// table of items, then two migrations that each add a column (filled in
// for every row), a table and an index, and grind for a while (a
// recursive CTE) so that kills land inside; their down migrations undo
// that in several statements, grinding too.
func rollbackMigrationFiles() map[string]string {
	grind := `CREATE TABLE grind AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40000) SELECT sum(x) AS s FROM c; DROP TABLE grind`
	files := map[string]string{
		"0001_items.sql": `CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)`,
	}
	for n := 2; n <= 3; n++ {
		files[fmt.Sprintf("%04d_m%d.up.sql", n, n)] = fmt.Sprintf(`ALTER TABLE items ADD COLUMN m%[1]d INTEGER NOT NULL DEFAULT 0;
UPDATE items SET m%[1]d = v * %[1]d;
CREATE TABLE work%[1]d (id INTEGER PRIMARY KEY, s INTEGER);
INSERT INTO work%[1]d (s) SELECT m%[1]d FROM items;
CREATE INDEX items_m%[1]d ON items (m%[1]d);
%[2]s`, n, grind)
		files[fmt.Sprintf("%04d_m%d.down.sql", n, n)] = fmt.Sprintf(`DROP INDEX items_m%[1]d;
%[2]s;
DROP TABLE work%[1]d;
UPDATE items SET m%[1]d = 0;
ALTER TABLE items DROP COLUMN m%[1]d`, n, grind)
	}
	return files
}

// TestCrashRollbackChild is not a test: TestCrashRollback runs the test
// binary with it in a child process and kills it with SIGKILL.
func TestCrashRollbackChild(t *testing.T) {
	base := os.Getenv(rollbackBaseEnv)
	if base == "" {
		t.Skip("child process of TestCrashRollback only")
	}
	die := func(format string, args ...any) {
		os.WriteFile(filepath.Join(base, "child.err"), fmt.Appendf(nil, format, args...), 0o600)
		os.Exit(7)
	}
	// Manual mode: the only writer of schema is the rollback. A small
	// budget, so that the fleet run takes its own share of it.
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: filepath.Join(base, "data"), MigrationsDir: filepath.Join(base, "migrations"),
		MigrationMode: sqliteproxy.MigrateManual, MaxConnections: 8})
	if err != nil {
		die("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Some tenants are open (and written to) in this process, so that
	// both ways of rolling back are killed: on the tenant's writer, and on
	// a connection of its own in exclusive locking mode.
	cycle, _ := strconv.Atoi(os.Getenv(rollbackCycleEnv))
	for i := range 3 {
		id := rollbackTenant(cycle*7 + i*31)
		if _, err := p.ExecContext(sqliteproxy.WithOrgID(ctx, id), `UPDATE items SET v = v WHERE id = 1`); err != nil {
			die("%s: %v", id, err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "started"), nil, 0o600); err != nil {
		die("%v", err)
	}
	rep, err := p.Rollback(ctx, sqliteproxy.RollbackOptions{To: 1, Concurrency: 4})
	if err != nil || len(rep.Failed) > 0 {
		die("Rollback: %+v, %v", rep, err)
	}
	p.Close()
	os.Exit(0)
}

func rollbackTenant(i int) string { return fmt.Sprintf("t%03d", i%rollbackTenantCount()) }

func rollbackTenantCount() int { return pick(200, 1000) }

// TestCrashRollback kills a child process in the middle of a fleet
// rollback (Rollback to version 1 of tenants at version 3, two down
// migrations of several statements each) with SIGKILL at random moments,
// and checks after each kill that every tenant is wholly at one version:
// its schema and ledger are exactly those of a tenant migrated to 3 or
// to 1, it passes integrity_check and it holds its rows. A rollback that
// completed is migrated up again (and checked the same way) for the next
// cycle.
func TestCrashRollback(t *testing.T) {
	f := newFigures(t)
	kills := pick(6, 40)
	base := t.TempDir()
	data, mdir := filepath.Join(base, "data"), filepath.Join(base, "migrations")
	for _, d := range []string{data, mdir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := rollbackMigrationFiles()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(mdir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ref := map[int]tenantState{1: referenceState(t, files, 1), 3: referenceState(t, files, 3)}

	// The fleet, at version 3, each tenant with its rows.
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: data, MigrationsDir: mdir})
	if err != nil {
		t.Fatal(err)
	}
	n := rollbackTenantCount()
	for i := range n {
		id := rollbackTenant(i)
		ctx := sqliteproxy.WithOrgID(context.Background(), id)
		if _, err := p.ExecContext(ctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) INSERT INTO items (v, m2, m3) SELECT x, 2 * x, 3 * x FROM c`, rollbackItems); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	var partial, completed, early int
	defer func() {
		f.note("%d tenants, %d kills found the fleet partly rolled back (every tenant at 3 or 1, none between), %d runs completed before the kill, %d kills before the first tenant was done",
			n, partial, completed, early)
	}()
	for cycle := range kills {
		os.Remove(filepath.Join(base, "started"))
		cmd := reexec(os.Args[0], "^TestCrashRollbackChild$",
			append(os.Environ(), rollbackBaseEnv+"="+base, rollbackCycleEnv+"="+strconv.Itoa(cycle)))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		childErr := func() string {
			b, _ := os.ReadFile(filepath.Join(base, "child.err"))
			return string(b)
		}
		started := false
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !started; time.Sleep(2 * time.Millisecond) {
			_, err := os.Stat(filepath.Join(base, "started"))
			started = err == nil
			select {
			case err := <-exited:
				t.Fatalf("cycle %d: child exited before starting the rollback: %v: %s", cycle, err, childErr())
			default:
			}
		}
		if !started {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("cycle %d: child did not start", cycle)
		}
		delay := time.Duration(rand.IntN(1500)) * time.Millisecond
		killed := true
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("cycle %d: child failed: %v: %s", cycle, err, childErr())
			}
			killed = false
			completed++
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			err := <-exited
			var ee *exec.ExitError
			if err == nil {
				killed = false // it finished just before the kill
				completed++
			} else if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("cycle %d: child ended with %v, not by our SIGKILL: %s", cycle, err, childErr())
			}
		}
		f.cycles.Add(1)

		at := verifyRollbackState(t, f, data, n, ref, cycle)
		if t.Failed() {
			t.Fatalf("cycle %d: stopping after the first broken state", cycle)
		}
		switch {
		case !killed && at[1] != n:
			t.Fatalf("cycle %d: the rollback completed but %d tenants are not at version 1", cycle, n-at[1])
		case killed && at[1] == 0:
			early++
		case killed && at[3] > 0:
			partial++
		}
		if at[3] == 0 {
			// All rolled back: up again, for the next cycle to take down.
			migrateUp(t, data, mdir, n)
			verifyRollbackState(t, f, data, n, map[int]tenantState{3: ref[3]}, cycle)
		}
	}
	if partial == 0 {
		t.Errorf("no kill landed in the middle of the fleet rollback (%d runs completed, %d kills came before any tenant was done)", completed, early)
	}
	verifyNoLeaks(t)
}

// migrateUp brings every tenant back to the full migration set.
func migrateUp(t *testing.T, data, mdir string, n int) {
	t.Helper()
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: data, MigrationsDir: mdir, MigrationMode: sqliteproxy.MigrateManual})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rep, err := p.MigrateAll(context.Background(), sqliteproxy.MigrateOptions{})
	if err != nil || len(rep.Failed) > 0 || rep.Migrated != n {
		t.Fatalf("migrate up: %+v, %v", rep, err)
	}
}

// tenantState is what a tenant file holds of its schema: sqlite_schema
// (without root pages) and the ledger (without times).
type tenantState struct {
	Schema []string
	Ledger []string
}

func readTenantState(ctx context.Context, db *sql.DB) (tenantState, error) {
	var st tenantState
	for _, q := range []struct {
		sql  string
		into *[]string
	}{
		{`SELECT type || ' ' || name || ' ' || tbl_name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY type, name`, &st.Schema},
		{`SELECT version || ' ' || checksum FROM _sqliteproxy_migrations ORDER BY version`, &st.Ledger},
	} {
		rows, err := db.QueryContext(ctx, q.sql)
		if err != nil {
			return st, err
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				return st, err
			}
			*q.into = append(*q.into, s)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return st, err
		}
	}
	return st, nil
}

// referenceState is the state of a tenant created with the first n
// migrations of files.
func referenceState(t *testing.T, files map[string]string, n int) tenantState {
	t.Helper()
	mdir, dir := t.TempDir(), t.TempDir()
	for name, body := range files {
		var num int
		fmt.Sscanf(name, "%d", &num)
		if num <= n {
			if err := os.WriteFile(filepath.Join(mdir, name), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, MigrationsDir: mdir})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(context.Background(), "ref"); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	db := openDirect(t, filepath.Join(dir, "ref.db"), "")
	defer db.Close()
	st, err := readTenantState(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// verifyRollbackState checks every tenant on a plain connection: its
// schema and ledger are exactly one of the reference states, its file
// passes integrity_check and it holds its rows. It returns how many
// tenants are at each version.
func verifyRollbackState(t *testing.T, f *figures, data string, n int, ref map[int]tenantState, cycle int) map[int]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	at := map[int]int{}
	for i := range n {
		id := rollbackTenant(i)
		db := openDirect(t, filepath.Join(data, id+".db"), "")
		st, err := readTenantState(ctx, db)
		if err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
			db.Close()
			continue
		}
		version := -1
		for v, want := range ref {
			if cmp.Equal(want, st) {
				version = v
			}
		}
		if version < 0 {
			f.fail(t, "cycle %d: %s is not wholly at one version: ledger %d rows; schema (-at 3 +got):\n%s",
				cycle, id, len(st.Ledger), cmp.Diff(ref[3].Schema, st.Schema))
		}
		at[version]++
		if err := integrity(ctx, db); err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
		}
		var rows, sum int
		if err := db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(v), 0) FROM items`).Scan(&rows, &sum); err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
		} else if rows != rollbackItems || sum != rollbackItems*(rollbackItems+1)/2 {
			f.fail(t, "cycle %d: %s has %d items (sum %d), want %d", cycle, id, rows, sum, rollbackItems)
			f.lost.Add(int64(max(0, rollbackItems-rows)))
		}
		f.ops.Add(1)
		db.Close()
	}
	return at
}
