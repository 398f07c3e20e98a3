package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestMigrateAll(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT)`}
	ids := fleet(t, dir, 30, v1)
	// One tenant file is junk, one tenant's data breaks the new migration.
	os.WriteFile(filepath.Join(dir, "t007.db"), []byte(strings.Repeat("junk", 2000)), 0o600)
	db := direct(t, dir, "t013")
	db.Exec(`INSERT INTO events (type) VALUES ('dup'), ('dup')`)
	db.Close()

	v2 := append(v1, `ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'`, `CREATE UNIQUE INDEX events_type ON events (type)`)
	p := newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateCheck, MaxConnections: 6})
	ctx := context.Background()

	// Check mode: tenants behind are refused until migrated.
	if _, err := p.ExecContext(tctx("t001"), `INSERT INTO events (type, severity) VALUES ('a', 'b')`); !errors.Is(err, ErrPendingMigrations) {
		t.Fatalf("check mode, tenant behind: %v, want ErrPendingMigrations", err)
	}
	// A live transaction on another tenant must survive the fleet run.
	live, err := p.BeginTx(tctx("live"), nil)
	if err != nil {
		t.Fatal(err)
	}
	live.ExecContext(tctx("live"), `INSERT INTO events (type, severity) VALUES ('live', 'x')`)

	dry, err := p.MigrateAll(ctx, MigrateOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Tenants != 31 || dry.Migrated != 29 || dry.Applied != 58 || len(dry.Failed) != 1 || !slices.Equal(dry.Pending["t001"], []string{"Migrations[1]", "Migrations[2]"}) {
		t.Errorf("dry run report %+v", dry)
	}
	if st, _ := p.MigrationStatus(ctx, "t001"); len(st.Applied) != 1 || len(st.Pending) != 2 {
		t.Errorf("dry run changed t001: %+v", st)
	}

	var calls []int
	rep, err := p.MigrateAll(ctx, MigrateOptions{Concurrency: 4, Progress: func(done, total int) {
		if total != 31 {
			t.Errorf("progress total %d", total)
		}
		calls = append(calls, done)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 31 || calls[len(calls)-1] != 31 {
		t.Errorf("progress calls %v", calls)
	}
	var failed []string
	for id := range rep.Failed {
		failed = append(failed, id)
	}
	slices.Sort(failed)
	if !slices.Equal(failed, []string{"t007", "t013"}) || rep.Migrated != 28 {
		t.Errorf("report %+v (failed %v)", rep, failed)
	}
	if err := live.Commit(); err != nil {
		t.Fatalf("live transaction broken by MigrateAll: %v", err)
	}
	if st := p.Stats(); st.OpenConnections > 6 {
		t.Errorf("budget exceeded: %+v", st)
	}
	for _, id := range ids {
		if id == "t007" || id == "t013" {
			continue
		}
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (type, severity) VALUES ('new', 'high')`); err != nil {
			t.Errorf("%s after MigrateAll: %v", id, err)
		}
	}
	// t013 is whole at the old version: the failed migration left nothing.
	if st, _ := p.MigrationStatus(ctx, "t013"); len(st.Applied) != 2 || !slices.Equal(st.Pending, []string{"Migrations[2]"}) {
		t.Errorf("t013 status %+v", st)
	}
	// Fix it and rerun: resumes with just that tenant's migration.
	db = direct(t, dir, "t013")
	db.Exec(`DELETE FROM events WHERE rowid = (SELECT max(rowid) FROM events)`)
	db.Close()
	os.Remove(filepath.Join(dir, "t007.db"))
	rep, err = p.MigrateAll(ctx, MigrateOptions{})
	if err != nil || len(rep.Failed) != 0 || rep.Applied != 1 {
		t.Errorf("rerun: %+v, %v", rep, err)
	}
}

// MigrateAll migrates a tenant that no one has open on a connection in
// locking_mode=EXCLUSIVE (migrateAlone); a tenant another process has open
// makes that fail with SQLITE_BUSY and must be migrated the normal way,
// without waiting out the busy timeout, and the other process keeps
// working on the migrated file.
func TestMigrateAll_TenantOpenElsewhere(t *testing.T) {
	// Serial: it times MigrateAll.
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT)`}
	fleet(t, dir, 3, v1)

	// "Another process": a plain mattn connection to t001 with a
	// transaction open (so its -wal holds frames) and one to t002 that is
	// merely open, in WAL mode.
	busy := direct(t, dir, "t001")
	busy.SetMaxOpenConns(1)
	tx, err := busy.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (type) VALUES ('elsewhere')`); err != nil {
		t.Fatal(err)
	}
	idle := direct(t, dir, "t002")
	idle.SetMaxOpenConns(1)
	if n := queryInt(t, idle, context.Background(), `SELECT count(*) FROM events`); n != 0 {
		t.Fatalf("t002 has %d events", n)
	}

	v2 := append(slices.Clone(v1), `ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'`)
	spans := tracetest.NewSpanRecorder()
	p := newTestProxy(t, Config{Dir: dir, Migrations: v2, BusyTimeout: 20 * time.Second,
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	type result struct {
		rep MigrateReport
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		rep, err := p.MigrateAll(context.Background(), MigrateOptions{Concurrency: 1})
		done <- result{rep, err}
	}()
	// t001 is migrated once the other process commits: its exclusive
	// migration fails at once, the writer opened instead starts applying the
	// migration (its span starts just before BEGIN IMMEDIATE) and waits for
	// the commit in SQLite's busy handler.
	waitFor(t, 10*time.Second, "t001's writer to start applying its migration", func() bool {
		running := map[string]bool{}
		for _, s := range spans.Started() {
			if s.EndTime().IsZero() && slices.Contains(s.Attributes(), attribute.String(attrTenant, "t001")) {
				running[s.Name()] = true
			}
		}
		return running[spanTenantOpen] && running[spanMigrate]
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(time.Minute):
		t.Fatal("MigrateAll did not return within a minute")
	}
	if res.err != nil || res.rep.Applied != 3 || len(res.rep.Failed) != 0 {
		t.Fatalf("MigrateAll: %+v, %v", res.rep, res.err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("MigrateAll took %v: it waited out a busy timeout", d)
	}
	// The other process sees the new column and its own row.
	if n := queryInt(t, busy, context.Background(), `SELECT count(*) FROM events WHERE type = 'elsewhere' AND severity = 'info'`); n != 1 {
		t.Errorf("t001 through the other connection: %d rows", n)
	}
	if _, err := idle.Exec(`INSERT INTO events (type, severity) VALUES ('after', 'high')`); err != nil {
		t.Errorf("t002 through the other connection: %v", err)
	}
	// Every tenant is whole, and the one no one had open has no WAL or
	// shared-memory file left behind.
	for _, id := range []string{"t000", "t001", "t002"} {
		db := direct(t, dir, id)
		var ok string
		if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
			t.Errorf("%s: integrity_check %q, %v", id, ok, err)
		}
		db.Close()
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(filepath.Join(dir, "t000.db"+suffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("t000.db%s left behind: %v", suffix, err)
		}
	}
}

func TestMigrateAll_Cancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleet(t, dir, 20, []string{`CREATE TABLE t (a)`})
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE t (a)`, `INSERT INTO t VALUES (1)`}})
	ctx, cancel := context.WithCancel(context.Background())
	rep, err := p.MigrateAll(ctx, MigrateOptions{Concurrency: 1, Progress: func(done, _ int) {
		if done == 5 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if rep.Migrated < 5 || rep.Migrated >= 20 || len(rep.Failed) != 0 {
		t.Errorf("report after cancel %+v", rep)
	}
	first := rep.Migrated
	rep, err = p.MigrateAll(context.Background(), MigrateOptions{})
	if err != nil || len(rep.Failed) != 0 || rep.Migrated != 20-first || rep.Applied != 20-first {
		t.Errorf("rerun after cancel (first run migrated %d): %+v, %v", first, rep, err)
	}
}

// Close during MigrateAll stops it with ErrClosed; the tenants it did not
// reach are not failures of their own (each used to be reported failed as
// "closed", and the run returned nil).
func TestMigrateAll_Close(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleet(t, dir, 20, []string{`CREATE TABLE t (a)`})
	p, err := New(Config{Dir: dir, Migrations: []string{`CREATE TABLE t (a)`, `INSERT INTO t VALUES (1)`}})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	rep, err := p.MigrateAll(context.Background(), MigrateOptions{Concurrency: 1, Progress: func(done, _ int) {
		if done == 5 {
			go func() { closed <- p.Close() }()
			waitFor(t, 10*time.Second, "Close to begin", p.c.r.isClosed.Load)
		}
	}})
	if !errors.Is(err, ErrClosed) {
		t.Errorf("err = %v, want ErrClosed", err)
	}
	if rep.Migrated < 5 || rep.Migrated >= 20 || len(rep.Failed) != 0 {
		t.Errorf("report after Close %+v", rep)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

const crashEnv = "SQLITEPROXY_TEST_CRASH_DIR"

// TestCrashChild is not a test: TestMigrateAll_CrashSafety runs the test
// binary with it and kills it with SIGKILL while it migrates.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("child process only")
	}
	p, err := New(Config{Dir: dir, Migrations: crashV2})
	if err != nil {
		os.Exit(3)
	}
	os.WriteFile(filepath.Join(dir, ".started"), nil, 0o600)
	p.MigrateAll(context.Background(), MigrateOptions{Concurrency: 2})
	os.Exit(0)
}

var crashV1 = []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items (v) SELECT 'x' FROM (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c LIMIT 3000) SELECT n FROM c)`}

// crashV2 rewrites every row and adds a column: long enough to be killed in.
var crashV2 = append(slices.Clone(crashV1),
	`ALTER TABLE items ADD COLUMN w TEXT NOT NULL DEFAULT ''; UPDATE items SET w = hex(randomblob(64)), v = 'y'`)

func TestMigrateAll_CrashSafety(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("spawns and kills processes")
	}
	loops := 15
	if s := os.Getenv("SQLITEPROXY_CRASH_LOOPS"); s != "" {
		loops, _ = strconv.Atoi(s)
	}
	var oldSeen, migratedSeen int
	defer func() {
		t.Logf("after %d kills: %d tenants found at the old version, %d migrated", loops, oldSeen, migratedSeen)
	}()
	for loop := range loops {
		dir := t.TempDir()
		fleet(t, dir, 6, crashV1)
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() }) // if the test fails before the kill below
		waitFor(t, 30*time.Second, "the child to start migrating", func() bool {
			_, err := os.Stat(filepath.Join(dir, ".started"))
			return err == nil
		})
		// Killed at a random moment of its migration: the workload.
		time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		p := newTestProxy(t, Config{Dir: dir, Migrations: crashV2, MigrationMode: MigrateCheck})
		for i := range 6 {
			id := fmt.Sprintf("t%03d", i)
			st, err := p.MigrationStatus(context.Background(), id)
			if err != nil || st.Drift != nil {
				t.Fatalf("loop %d %s: %v %+v", loop, id, err, st)
			}
			db := direct(t, dir, id)
			var check string
			if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
				t.Fatalf("loop %d %s: integrity %q %v", loop, id, check, err)
			}
			var cols, ys, n int
			db.QueryRow(`SELECT count(*) FROM pragma_table_info('items')`).Scan(&cols)
			db.QueryRow(`SELECT count(*), coalesce(sum(v = 'y'), 0) FROM items`).Scan(&n, &ys)
			db.Close()
			old := len(st.Applied) == 1 && cols == 2 && ys == 0
			migrated := len(st.Applied) == 2 && cols == 3 && ys == 3000
			if migrated {
				migratedSeen++
			} else {
				oldSeen++
			}
			if n != 3000 || !(old || migrated) {
				t.Fatalf("loop %d %s: half-migrated: ledger %d, columns %d, rows %d, rewritten %d", loop, id, len(st.Applied), cols, n, ys)
			}
		}
		rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
		if err != nil || len(rep.Failed) != 0 {
			t.Fatalf("loop %d: resume %+v %v", loop, rep, err)
		}
		p.Close()
	}
}

// MigrateAll on a tenant this process has open migrates through its writer;
// what the migration set on that connection (a pragma, a TEMP table: not
// undone with its transaction, even when the migration failed) does not
// stay on the writer that live traffic uses afterwards.
func TestMigrateAll_OpenWriterKeepsNoSessionState(t *testing.T) {
	t.Parallel()
	for _, second := range []string{
		`PRAGMA recursive_triggers = ON; CREATE TEMP TABLE leak (x); INSERT INTO leak VALUES (1); CREATE TABLE v2 (x)`,
		`PRAGMA recursive_triggers = ON; CREATE TEMP TABLE leak (x); CREATE TABLE v2 (x); INSERT INTO nope VALUES (1)`,
	} {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE v1 (x)`}})
		if _, err := p.ExecContext(tctx("open1"), `INSERT INTO v1 VALUES (1)`); err != nil {
			t.Fatal(err)
		}
		p.Close()
		p = newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE v1 (x)`, second}, MigrationMode: MigrateManual})
		if _, err := p.ExecContext(tctx("open1"), `INSERT INTO v1 VALUES (2)`); err != nil { // open, at version 1
			t.Fatal(err)
		}
		rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		failed := rep.Failed["open1"] != nil
		if want := strings.Contains(second, "nope"); failed != want {
			t.Fatalf("%s: failed %v (%v), want %v", second, failed, rep.Failed["open1"], want)
		}
		tx, err := p.BeginTx(tctx("open1"), nil) // the writer
		if err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, tx, tctx("open1"), `PRAGMA recursive_triggers`); n != 0 {
			t.Errorf("failed %v: recursive_triggers = %d on the writer after MigrateAll", failed, n)
		}
		if _, err := tx.ExecContext(tctx("open1"), `SELECT * FROM temp.leak`); err == nil {
			t.Errorf("failed %v: the migration's TEMP table is on the writer after MigrateAll", failed)
		}
		tx.Rollback()
	}
}

// The same for a Rollback that fails partway on an open tenant: the down
// migration that ran before the failing one set a pragma and a TEMP table
// on the writer, which stayed there.
func TestRollback_OpenWriterKeepsNoSessionState(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0001_a.sql":      {Data: []byte(`CREATE TABLE a (x)`)},
		"0002_b.sql":      {Data: []byte(`CREATE TABLE b (x)`)},
		"0001_a.down.sql": {Data: []byte(`INSERT INTO nope VALUES (1)`)},
		"0002_b.down.sql": {Data: []byte(`PRAGMA recursive_triggers = ON; CREATE TEMP TABLE leak (x); DROP TABLE b`)},
	}
	p := newTestProxy(t, Config{MigrationsFS: fsys, MigrationMode: MigrateManual})
	if _, err := p.ExecContext(tctx("open1"), `INSERT INTO a VALUES (1)`); err != nil { // open
		t.Fatal(err)
	}
	rep, err := p.Rollback(context.Background(), RollbackOptions{To: 0})
	if err != nil || rep.Failed["open1"] == nil {
		t.Fatalf("Rollback: %+v, %v; want open1 failed", rep, err)
	}
	tx, err := p.BeginTx(tctx("open1"), nil) // the writer
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if n := queryInt(t, tx, tctx("open1"), `PRAGMA recursive_triggers`); n != 0 {
		t.Errorf("recursive_triggers = %d on the writer after a failed Rollback", n)
	}
	if _, err := tx.ExecContext(tctx("open1"), `SELECT * FROM temp.leak`); err == nil {
		t.Error("the down migration's TEMP table is on the writer after a failed Rollback")
	}
	if n := queryInt(t, tx, tctx("open1"), `SELECT count(*) FROM sqlite_schema WHERE name IN ('a', 'b')`); n != 2 {
		t.Errorf("tables a and b after a failed Rollback: %d", n)
	}
}

// The other way: what live traffic left on an open tenant's writer (TEMP
// objects and pragmas persist on it, as the README says) must not reach
// MigrateAll's migrations. A TEMP table named like the migration's table
// took its ALTER, and the ledger said applied over a main table left as it
// was (after a restart too); a TEMP trigger turned a backfill into nothing.
func TestMigrateAll_OpenWriterSessionDoesNotReachMigrations(t *testing.T) {
	t.Parallel()
	const v1 = `CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT, severity INTEGER)`
	for _, tc := range []struct {
		name, left, v2, check string
	}{
		{"temp table", `CREATE TEMP TABLE events (id INTEGER PRIMARY KEY, name TEXT)`,
			`ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'k'`,
			`SELECT count(*) FROM main.events WHERE kind = 'k'`},
		{"temp trigger", `CREATE TEMP TRIGGER skip BEFORE UPDATE ON main.events BEGIN SELECT RAISE(IGNORE); END`,
			`UPDATE events SET severity = 3 WHERE severity IS NULL`,
			`SELECT count(*) FROM main.events WHERE severity = 3`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{v1}})
			if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (name) VALUES ('a'), ('b')`); err != nil {
				t.Fatal(err)
			}
			p.Close()
			p = newTestProxy(t, Config{Dir: dir, Migrations: []string{v1, tc.v2}, MigrationMode: MigrateManual})
			if _, err := p.ExecContext(tctx("acme"), tc.left); err != nil { // on the writer, open at version 1
				t.Fatal(err)
			}
			rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
			if err != nil || rep.Migrated != 1 {
				t.Fatalf("MigrateAll: %+v, %v", rep, err)
			}
			if n := queryInt(t, p, tctx("acme"), tc.check); n != 2 {
				t.Errorf("%s: %d rows migrated, want 2", tc.check, n)
			}
			p.Close()
			if n := queryInt(t, direct(t, dir, "acme"), context.Background(), tc.check); n != 2 {
				t.Errorf("in the file: %s: %d, want 2", tc.check, n)
			}
		})
	}
}

// MigrateAll of a tenant another process has open and this one has not
// migrates it on a writer of the tenant's pool (the exclusive connection
// cannot be had), and used to keep that connection as the writer, to be
// evicted right after. Work queued for the writer meanwhile took it first,
// the eviction failed, and what the migration set on its connection (a
// pragma, a TEMP table) applied to live traffic until the idle timeout.
func TestMigrateAll_BusyPathKeepsNoSessionState(t *testing.T) {
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT)`}
	fleet(t, dir, 1, v1)
	busy := direct(t, dir, "t000")
	busy.SetMaxOpenConns(1)
	tx, err := busy.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (type) VALUES ('elsewhere')`); err != nil {
		t.Fatal(err)
	}
	v2 := append(slices.Clone(v1), `PRAGMA recursive_triggers = ON; CREATE TEMP TABLE leak (x); ALTER TABLE events ADD COLUMN severity TEXT`)
	spans := tracetest.NewSpanRecorder()
	p := newTestProxy(t, Config{Dir: dir, Migrations: v2, MigrationMode: MigrateManual, BusyTimeout: 20 * time.Second,
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	done := make(chan error, 1)
	go func() {
		_, err := p.MigrateAll(context.Background(), MigrateOptions{Concurrency: 1})
		done <- err
	}()
	waitMigrating(t, spans, "t000's writer to start applying its migration")
	type state struct {
		recursive int
		leak      error
		err       error
	}
	user := make(chan state, 1)
	go func() {
		utx, err := p.BeginTx(tctx("t000"), nil) // the writer, once MigrateAll lets it go
		if err != nil {
			user <- state{err: err}
			return
		}
		defer utx.Rollback()
		var s state
		s.err = utx.QueryRowContext(tctx("t000"), `PRAGMA recursive_triggers`).Scan(&s.recursive)
		_, s.leak = utx.ExecContext(tctx("t000"), `SELECT * FROM temp.leak`)
		user <- s
	}()
	t000 := p.c.r.mustTenant(t, "t000")
	waitFor(t, 10*time.Second, "the user's transaction to queue for t000's writer", func() bool {
		return t000.wsem.nwait.Load() >= 1
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("MigrateAll did not return within a minute")
	}
	select {
	case s := <-user:
		if s.err != nil {
			t.Fatal(s.err)
		}
		if s.recursive != 0 || s.leak == nil {
			t.Errorf("the user's transaction ran on the migrator's connection: recursive_triggers = %d, temp.leak: %v", s.recursive, s.leak)
		}
	case <-time.After(time.Minute):
		t.Fatal("the user's transaction did not run within a minute")
	}
}

// MigrateAll migrated a closed tenant on an exclusive connection even with
// another proxy on the directory (the CLI's migrate beside a service in
// MigrateManual): the other proxy's reads of the tenant waited for the
// whole migration and failed with "database is locked". With another proxy
// present it migrates through a shared writer, and reads go on.
func TestMigrateAll_OtherProxyKeepsReading(t *testing.T) {
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT)`}
	fleet(t, dir, 1, v1)
	service := newTestProxy(t, Config{Dir: dir, Migrations: v1, BusyTimeout: 300 * time.Millisecond})
	slow := `CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT x FROM c`
	spans := tracetest.NewSpanRecorder()
	cli := newTestProxy(t, Config{Dir: dir, Migrations: append(slices.Clone(v1), slow), MigrationMode: MigrateManual,
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	done := make(chan error, 1)
	go func() {
		rep, err := cli.MigrateAll(context.Background(), MigrateOptions{})
		if err == nil && (rep.Applied != 1 || len(rep.Failed) != 0) {
			err = fmt.Errorf("report %+v", rep)
		}
		done <- err
	}()
	waitMigrating(t, spans, "the slow migration to start")
	ctx, cancel := context.WithTimeout(tctx("t000"), 5*time.Second)
	defer cancel()
	var n int
	err := service.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	select {
	case <-done:
		t.Log("the migration ended before the read: the read proved nothing")
	default:
	}
	if err != nil {
		t.Errorf("the service's read during another proxy's MigrateAll: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("MigrateAll did not return within a minute")
	}
}

// A tenant this process had checked (ready) and another proxy rolled back:
// MigrateAll took it as up to date ("applied 0") and left it behind.
func TestMigrateAll_RolledBackByAnotherProxy(t *testing.T) {
	// gone: the other proxy (the CLI's migrate -down-to) has exited by the
	// time of MigrateAll, which then trusted the tenant it had checked
	// (adv29); its writes to b failed "no such table" until it was closed.
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("gone=%v", gone), func(t *testing.T) {
			dir := t.TempDir()
			fsys := fstest.MapFS{
				"0001_a.sql":      {Data: []byte(`CREATE TABLE a (x)`)},
				"0002_b.sql":      {Data: []byte(`CREATE TABLE b (x)`)},
				"0002_b.down.sql": {Data: []byte(`DROP TABLE b`)},
			}
			service := newTestProxy(t, Config{Dir: dir, MigrationsFS: fsys})
			if _, err := service.ExecContext(tctx("acme"), `INSERT INTO b VALUES (1)`); err != nil {
				t.Fatal(err)
			}
			if _, err := service.ExecContext(tctx("acme"), `DELETE FROM b`); err != nil {
				t.Fatal(err)
			}
			ops := newTestProxy(t, Config{Dir: dir, MigrationsFS: fsys, MigrationMode: MigrateManual})
			if rep, err := ops.Rollback(context.Background(), RollbackOptions{To: 1}); err != nil || len(rep.Failed) != 0 {
				t.Fatalf("Rollback: %+v, %v", rep, err)
			}
			if gone {
				if err := ops.Close(); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := service.MigrateAll(context.Background(), MigrateOptions{})
			if err != nil || rep.Applied != 1 || len(rep.Failed) != 0 {
				t.Errorf("MigrateAll after another proxy's rollback: %+v, %v; want one migration applied", rep, err)
			}
			st, err := service.MigrationStatus(context.Background(), "acme")
			if err != nil || len(st.Applied) != 2 || len(st.Pending) != 0 {
				t.Errorf("status: %+v, %v", st, err)
			}
			if _, err := service.ExecContext(tctx("acme"), `INSERT INTO b VALUES (2)`); err != nil {
				t.Errorf("a write to b after MigrateAll: %v", err)
			}
		})
	}
}

// MigrateAll's look at the ledger of a tenant open here (another proxy
// present) made room for its connection in a full budget by evicting that
// very tenant, as if it held its writer: the writer was closed under a
// transaction that had it leased ("out of memory" from its next statement
// and its commit, rows lost; under group commit a SIGSEGV in a prepare on
// the closed connection) (adv29).
func TestMigrateAll_LookBesideTransactionKeepsItsWriter(t *testing.T) {
	for _, readers := range []int{1, -1} {
		t.Run(fmt.Sprintf("readers=%d", readers), func(t *testing.T) {
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MaxConnections: 2, ReadersPerTenant: readers})
			newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}}) // another proxy on the directory
			ctx := tctx("acme")
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
				t.Fatal(err)
			}
			// The budget (2) full: acme's reader, or another tenant.
			if readers > 0 {
				countRows(t, p, "acme")
			} else {
				insertN(t, p, "globex", 1)
			}
			tx := txWithInsert(t, p, ctx)
			// MigrateAll waits for the writer, held by the transaction,
			// which goes on and commits meanwhile.
			migrated := migrateAllBehind(t, p, "acme")
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('in tx 2')`); err != nil {
				t.Fatalf("the transaction's statement during MigrateAll: %v", err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatalf("commit during MigrateAll: %v", err)
			}
			if err := <-migrated; err != nil {
				t.Errorf("MigrateAll beside the transaction: %v", err)
			}
			if n := countRows(t, p, "acme"); n != 3 {
				t.Errorf("%d rows, want 3", n)
			}
			if st := p.Stats(); st.OpenConnections > st.MaxConnections {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// A tenant listed twice in MigrateOptions.Tenants is one tenant: the
// report counted it twice (Migrated 3 for two tenants).
func TestMigrateAll_TenantsListedTwice(t *testing.T) {
	dir := t.TempDir()
	v1 := []string{`CREATE TABLE a (x)`}
	fleet(t, dir, 2, v1)
	p := newTestProxy(t, Config{Dir: dir, Migrations: append(slices.Clone(v1), `CREATE TABLE b (x)`), MigrationMode: MigrateManual})
	rep, err := p.MigrateAll(context.Background(), MigrateOptions{Tenants: []string{"t000", "t001", "t000"}, DryRun: true})
	if err != nil || rep.Tenants != 2 || rep.Migrated != 2 || len(rep.Pending) != 2 {
		t.Errorf("dry run with t000 twice: %+v, %v", rep, err)
	}
}

// waitMigrating waits until a migration's span has started and not ended.
func waitMigrating(t *testing.T, spans *tracetest.SpanRecorder, what string) {
	t.Helper()
	waitFor(t, 10*time.Second, what, func() bool {
		for _, s := range spans.Started() {
			if s.EndTime().IsZero() && s.Name() == spanMigrate {
				return true
			}
		}
		return false
	})
}

// MigrateAll cut short by its context says how many tenants were not done
// and which it was waiting for: it returned a bare "context deadline
// exceeded" beside an empty Failed.
func TestMigrateAll_DeadlineNamesTheTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleet(t, dir, 1, []string{eventsTable})
	p := newTestProxy(t, Config{Dir: dir, MigrationMode: MigrateManual, Migrations: []string{eventsTable, `CREATE TABLE more (a)`}})
	tx, tn := holdWriterWith(t, p, "t000", `INSERT INTO events (tenant) VALUES ('tx')`) // served behind, in manual mode
	defer tn.unpin()
	defer tx.Rollback()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := p.MigrateAll(ctx, MigrateOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 of 1 tenants not done") || !strings.Contains(err.Error(), "t000") {
		t.Fatalf("MigrateAll past its deadline: %v", err)
	}
}

// A tenant deleted while MigrateAll runs over every tenant (the
// application deletes tenants beside a deploy's migration) was reported
// as failed ("tenant not found"): a deploy step that checks Failed stopped
// for nothing. One the caller listed by name that names no tenant still
// fails.
func TestMigrateAll_TenantDeletedMeanwhileIsNotAFailure(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c", "z"} {
		if err := p.CreateTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	var deleteErr error
	deleted := false
	rep, err := p.MigrateAll(ctx, MigrateOptions{Concurrency: 1, Progress: func(done, total int) {
		if !deleted { // after the first tenant, z (listed last) goes
			deleted = true
			deleteErr = p.DeleteTenant(ctx, "z")
		}
	}})
	if err != nil || deleteErr != nil {
		t.Fatalf("MigrateAll: %v; DeleteTenant(z): %v", err, deleteErr)
	}
	if len(rep.Failed) != 0 {
		t.Errorf("MigrateAll over every tenant, z deleted meanwhile: Failed %v, want none", rep.Failed)
	}
	rep, err = p.MigrateAll(ctx, MigrateOptions{Tenants: []string{"a", "z"}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(rep.Failed["z"], ErrTenantNotFound) {
		t.Errorf("MigrateAll of a listed tenant that does not exist: Failed %v, want z: ErrTenantNotFound", rep.Failed)
	}
}

// MigrateAll's look at the ledger of a tenant open here waits for nothing
// but its writer: with one idle writer in a budget of one, or its reader in
// an open Rows, it waited for a slot or a reader (pinning the tenant and
// starving other tenants' traffic) until its context ended (adv31).
func TestMigrateAll_LookWaitsOnlyForTheWriter(t *testing.T) {
	t.Run("writer idle, budget of one", func(t *testing.T) {
		p := newTestProxy(t, Config{Migrations: []string{eventsTable}, MaxConnections: 1, ReadersPerTenant: -1})
		insertN(t, p, "acme", 1)
		migrateAllQuickly(t, p)
	})
	t.Run("reader leased, budget full", func(t *testing.T) {
		p := newTestProxy(t, Config{Migrations: []string{eventsTable}, MaxConnections: 2, ReadersPerTenant: 1})
		insertN(t, p, "acme", 2)
		rows, err := p.QueryContext(tctx("acme"), `SELECT id FROM events`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		migrateAllQuickly(t, p)
	})
}

// migrateAllQuickly runs MigrateAll with a 4 s deadline and fails unless
// it succeeds within one.
func migrateAllQuickly(t *testing.T, p *Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := p.MigrateAll(ctx, MigrateOptions{})
	if d := time.Since(start); err != nil || len(rep.Failed) != 0 || d > time.Second {
		t.Fatalf("MigrateAll: %+v, %v in %v; want it done at once", rep, err, d)
	}
}

// migrateAllBehind starts MigrateAll of tenant id, whose writer is held,
// and returns once it is done (it looked on an idle reader) or waits for
// that writer; the channel gets its error (or its report's failure).
func migrateAllBehind(t *testing.T, p *Proxy, id string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	var finished atomic.Bool
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rep, err := p.MigrateAll(ctx, MigrateOptions{Tenants: []string{id}})
		if err == nil && len(rep.Failed) != 0 {
			err = fmt.Errorf("failed: %v", rep.Failed)
		}
		done <- err
		finished.Store(true)
	}()
	tn := p.c.r.mustTenant(t, id)
	waitFor(t, 10*time.Second, "MigrateAll to finish or wait for "+id+"'s writer", func() bool {
		return finished.Load() || tn.wsem.nwait.Load() == 1
	})
	return done
}

// txWithInsert begins a transaction on ctx's tenant and inserts a row in
// it; it is rolled back at the test's end unless committed.
func txWithInsert(t *testing.T, p *Proxy, ctx context.Context) *sql.Tx {
	t.Helper()
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('in tx')`); err != nil {
		t.Fatal(err)
	}
	return tx
}

// MigrateAll's look at a tenant open here opened a connection of its own,
// whose slot stayed counted until the tenant closed (SQLite may park the
// descriptor while other connections of the file are open): each run
// counted one more, until the phantom slots filled the budget, evicted
// live tenants and hid another proxy's rollback (adv32). The budget is
// now as it was.
func TestMigrateAll_LookLeavesBudgetAsItWas(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MaxConnections: 8, ReadersPerTenant: -1})
	newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}}) // another proxy on the directory
	insertN(t, p, "acme", 1)
	before := p.Stats().OpenConnections
	for range 6 {
		migrateAllQuickly(t, p)
	}
	if st := p.Stats(); st.OpenConnections != before {
		t.Errorf("after six MigrateAll: %d connections counted, %d before", st.OpenConnections, before)
	}
}
