package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// rollbackMigs are three migrations with their down files: a table, a
// column and an index, a second table with data.
var rollbackMigs = map[string]string{
	"0001_init.sql":          `CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`,
	"0001_init.down.sql":     `DROP TABLE items`,
	"0002_severity.up.sql":   `ALTER TABLE items ADD COLUMN severity TEXT NOT NULL DEFAULT 'info'; CREATE INDEX items_severity ON items (severity)`,
	"0002_severity.down.sql": `DROP INDEX items_severity; ALTER TABLE items DROP COLUMN severity`,
	"0003_tags.up.sql":       `CREATE TABLE tags (item INTEGER NOT NULL REFERENCES items, tag TEXT NOT NULL); CREATE INDEX tags_item ON tags (item); INSERT INTO tags VALUES (0, 'seed')`,
	"0003_tags.down.sql":     `DROP INDEX tags_item; DROP TABLE tags`,
}

// migrationsDir writes files (name -> SQL) into a new directory.
func migrationsDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, sql := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// without returns files without the named ones.
func without(files map[string]string, names ...string) map[string]string {
	out := map[string]string{}
	for k, v := range files {
		if !slices.Contains(names, k) {
			out[k] = v
		}
	}
	return out
}

// fileState is what a tenant file holds of its schema: sqlite_schema
// without root pages, and the ledger without times.
type fileState struct {
	Schema []string
	Ledger []string
}

// readState reads a tenant file's state on a plain connection, closed
// before it returns (the file is left as nobody has it open).
func readState(t *testing.T, dir, id string) fileState {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, id+".db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st fileState
	read := func(q string, into *[]string) {
		rows, err := db.Query(q)
		if err != nil {
			if strings.Contains(err.Error(), "no such table") {
				return
			}
			t.Fatalf("%s: %s: %v", id, q, err)
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			*into = append(*into, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	read(`SELECT type || ' ' || name || ' ' || tbl_name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY type, name`, &st.Schema)
	read(`SELECT version || ' ' || checksum FROM `+ledgerTable+` ORDER BY version`, &st.Ledger)
	return st
}

// referenceStates returns the state of a tenant created with the first n
// of files' migrations, for n = 0..3.
func referenceStates(t *testing.T, files map[string]string) []fileState {
	t.Helper()
	ups := []string{"0001_init.sql", "0002_severity.up.sql", "0003_tags.up.sql"}
	var out []fileState
	for n := 0; n <= len(ups); n++ {
		dir := t.TempDir()
		sub := map[string]string{}
		for _, name := range ups[:n] {
			sub[name] = files[name]
		}
		p := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, sub)})
		if err := p.CreateTenant(context.Background(), "ref"); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		out = append(out, readState(t, dir, "ref"))
	}
	return out
}

// Up, down, up again: the same schema and ledger as never having gone
// down; down leaves exactly the schema of a tenant that never went so far;
// data outside what the down migrations drop survives.
func TestRollback_UpDownUp(t *testing.T) {
	t.Parallel()
	ref := referenceStates(t, rollbackMigs)
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, rollbackMigs), MigrationMode: MigrateManual})
	ctx := context.Background()
	ids := []string{"open", "closed", "elsewhere"}
	for _, id := range ids {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO items (v, severity) VALUES (?, 'high')`, id); err != nil {
			t.Fatal(err)
		}
	}
	// "open" keeps its writer open; "closed" is closed; "elsewhere" is
	// closed here but open in another connection (another process, as
	// far as SQLite's locks go).
	if !p.c.r.evictTenant(t, "closed") || !p.c.r.evictTenant(t, "elsewhere") {
		t.Fatal("could not close tenants")
	}
	other, err := sql.Open("sqlite3", filepath.Join(dir, "elsewhere.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if n := queryInt(t, other, ctx, `SELECT count(*) FROM items`); n != 1 {
		t.Fatalf("elsewhere has %d items", n)
	}

	var progress []int
	rep, err := p.Rollback(ctx, RollbackOptions{To: 1, Progress: func(done, total int) {
		if total != 3 {
			t.Errorf("progress total %d", total)
		}
		progress = append(progress, done)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Tenants != 3 || rep.Migrated != 3 || rep.Applied != 6 || len(rep.Failed) != 0 || rep.Pending != nil {
		t.Errorf("report %+v", rep)
	}
	if !slices.Equal(progress, []int{1, 2, 3}) {
		t.Errorf("progress %v", progress)
	}
	for _, id := range ids {
		if diff := cmp.Diff(ref[1], readState(t, dir, id)); diff != "" {
			t.Errorf("%s after rollback to 1 (-want +got):\n%s", id, diff)
		}
		// Manual mode serves the tenant as it is now.
		var v string
		if err := p.QueryRowContext(tctx(id), `SELECT v FROM items`).Scan(&v); err != nil || v != id {
			t.Errorf("%s: read after rollback: %q, %v", id, v, err)
		}
		if _, err := p.ExecContext(tctx(id), `INSERT INTO tags VALUES (1, 'x')`); err == nil || !strings.Contains(err.Error(), "no such table") {
			t.Errorf("%s: tags after rollback: %v", id, err)
		}
		st, err := p.MigrationStatus(ctx, id)
		if err != nil || len(st.Applied) != 1 || !slices.Equal(st.Pending, []string{"0002_severity.up.sql", "0003_tags.up.sql"}) || st.Mode != MigrateManual {
			t.Errorf("%s: status %+v, %v", id, st, err)
		}
	}
	// A rerun has nothing left to do.
	if rep, err := p.Rollback(ctx, RollbackOptions{To: 1}); err != nil || rep.Migrated != 0 || len(rep.Failed) != 0 {
		t.Errorf("rerun: %+v, %v", rep, err)
	}

	rep, err = p.MigrateAll(ctx, MigrateOptions{})
	if err != nil || rep.Migrated != 3 || rep.Applied != 6 || len(rep.Failed) != 0 {
		t.Fatalf("up again: %+v, %v", rep, err)
	}
	for _, id := range ids {
		if diff := cmp.Diff(ref[3], readState(t, dir, id)); diff != "" {
			t.Errorf("%s up, down, up (-never went down +got):\n%s", id, diff)
		}
		if n := queryInt(t, p, tctx(id), `SELECT count(*) FROM items WHERE v = '`+id+`' AND severity = 'info'`); n != 1 {
			t.Errorf("%s: its item did not survive: %d", id, n)
		}
	}
	// All the way down.
	if rep, err := p.Rollback(ctx, RollbackOptions{To: 0, Tenants: []string{"closed"}}); err != nil || rep.Applied != 3 {
		t.Fatalf("down to 0: %+v, %v", rep, err)
	}
	if got := readState(t, dir, "closed"); len(got.Ledger) != 0 || len(got.Schema) != 1 || !strings.HasPrefix(got.Schema[0], "table "+ledgerTable) {
		t.Errorf("at version 0: %+v", got)
	}
}

// evictTenant closes tenant id's connections in this process.
func (r *router) evictTenant(t *testing.T, id string) bool {
	t.Helper()
	tn, err := r.tenant(id)
	if err != nil {
		t.Fatal(err)
	}
	return tn.evict(false, evictIdle)
}

// A subset of the tenants, to a middle version; a dry run first, which
// changes no byte.
func TestRollback_SubsetAndDryRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mdir := migrationsDir(t, rollbackMigs)
	ids := fleetFromDir(t, dir, mdir, 6)
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: mdir, MigrationMode: MigrateManual})
	ctx := context.Background()

	before := fileBytes(t, dir)
	dry, err := p.Rollback(ctx, RollbackOptions{To: 1, Tenants: ids[:2], DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	want := MigrateReport{Tenants: 2, Applied: 4, Migrated: 2, Failed: map[string]error{},
		Pending: map[string][]string{
			ids[0]: {"0003_tags.down.sql", "0002_severity.down.sql"},
			ids[1]: {"0003_tags.down.sql", "0002_severity.down.sql"},
		}}
	dry.Duration = 0
	if diff := cmp.Diff(want, dry); diff != "" {
		t.Errorf("dry run report (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, fileBytes(t, dir)); diff != "" {
		t.Errorf("dry run changed files:\n%s", diff)
	}

	rep, err := p.Rollback(ctx, RollbackOptions{To: 2, Tenants: ids[:2], Concurrency: 1})
	if err != nil || rep.Tenants != 2 || rep.Migrated != 2 || rep.Applied != 2 || len(rep.Failed) != 0 {
		t.Fatalf("rollback: %+v, %v", rep, err)
	}
	ref := referenceStates(t, rollbackMigs)
	for i, id := range ids {
		want := ref[3]
		if i < 2 {
			want = ref[2]
		}
		if diff := cmp.Diff(want, readState(t, dir, id)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", id, diff)
		}
	}
}

// fleetFromDir makes n closed tenants in dir with every migration of mdir.
func fleetFromDir(t *testing.T, dir, mdir string, n int) []string {
	t.Helper()
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: mdir})
	var ids []string
	for i := range n {
		id := "t" + string(rune('a'+i))
		if err := p.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// fileBytes returns every file in dir and its content.
func fileBytes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range dbFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(b)
	}
	return out
}

// A missing down file fails every tenant that needs it, naming the file,
// before anything changes; tenants that do not need it go on.
func TestRollback_MissingDownFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files := without(rollbackMigs, "0002_severity.down.sql")
	mdir := migrationsDir(t, files)
	ids := fleetFromDir(t, dir, mdir, 2)
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: mdir, MigrationMode: MigrateManual})
	ctx := context.Background()
	before := readState(t, dir, ids[0])

	rep, err := p.Rollback(ctx, RollbackOptions{To: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Migrated != 0 || len(rep.Failed) != 2 {
		t.Fatalf("report %+v", rep)
	}
	for _, id := range ids {
		err := rep.Failed[id]
		if !errors.Is(err, ErrNoDownMigration) || !strings.Contains(err.Error(), "0002_severity.down.sql") {
			t.Errorf("%s: %v, want ErrNoDownMigration naming 0002_severity.down.sql", id, err)
		}
		if diff := cmp.Diff(before, readState(t, dir, id)); diff != "" {
			t.Errorf("%s changed (-before +after):\n%s", id, diff)
		}
	}
	// Down to 2 needs only 0003's down file.
	if rep, err := p.Rollback(ctx, RollbackOptions{To: 2}); err != nil || rep.Migrated != 2 || len(rep.Failed) != 0 {
		t.Errorf("to 2: %+v, %v", rep, err)
	}
}

// A tenant whose ledger has drifted fails and names why; others go on.
func TestRollback_Drift(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mdir := migrationsDir(t, rollbackMigs)
	ids := fleetFromDir(t, dir, mdir, 3)
	db := direct(t, dir, ids[1])
	if _, err := db.Exec(`UPDATE ` + ledgerTable + ` SET checksum = 'edited' WHERE version = 1`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := readState(t, dir, ids[1])
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: mdir, MigrationMode: MigrateManual})
	rep, err := p.Rollback(context.Background(), RollbackOptions{To: 0})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Migrated != 2 || rep.Applied != 6 || len(rep.Failed) != 1 {
		t.Errorf("report %+v", rep)
	}
	if err := rep.Failed[ids[1]]; !errors.Is(err, ErrMigrationDrift) || !strings.Contains(err.Error(), "0001_init.sql") {
		t.Errorf("drifted tenant: %v", err)
	}
	if diff := cmp.Diff(before, readState(t, dir, ids[1])); diff != "" {
		t.Errorf("drifted tenant changed:\n%s", diff)
	}
}

// A down migration that fails leaves its tenant where it was before the
// rollback, the down migrations that ran before it in this run included.
func TestRollback_FailingDownLeavesTenantWhereItWas(t *testing.T) {
	t.Parallel()
	files := merged(rollbackMigs, map[string]string{
		// Going back to one row per v is only possible when v is unique.
		"0002_severity.down.sql": `DROP INDEX items_severity; ALTER TABLE items DROP COLUMN severity; CREATE UNIQUE INDEX items_v ON items (v); DROP INDEX items_v`,
	})
	dir := t.TempDir()
	mdir := migrationsDir(t, files)
	ids := fleetFromDir(t, dir, mdir, 3)
	for _, id := range ids {
		db := direct(t, dir, id)
		if _, err := db.Exec(`INSERT INTO items (v) VALUES ('a'), (?)`, id); err != nil {
			t.Fatal(err)
		}
		if id == ids[2] {
			db.Exec(`INSERT INTO items (v) VALUES ('a')`) // a duplicate
		}
		db.Close()
	}
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: mdir, MigrationMode: MigrateManual})
	// The tenant is open here too: rolled back on its writer.
	if n := queryInt(t, p, tctx(ids[2]), `SELECT count(*) FROM tags`); n != 1 {
		t.Fatalf("tags: %d", n)
	}
	before := readState(t, dir, ids[2])
	rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Migrated != 2 || len(rep.Failed) != 1 {
		t.Errorf("report %+v", rep)
	}
	if err := rep.Failed[ids[2]]; err == nil || !strings.Contains(err.Error(), "0002_severity.down.sql") || !strings.Contains(err.Error(), "UNIQUE") {
		t.Errorf("failing down: %v", err)
	}
	if diff := cmp.Diff(before, readState(t, dir, ids[2])); diff != "" {
		t.Errorf("tenant whose down failed moved (-before +after):\n%s", diff)
	}
	if n := queryInt(t, p, tctx(ids[2]), `SELECT count(*) FROM tags`); n != 1 {
		t.Errorf("tags after the failed rollback: %d", n)
	}
	if st, err := p.MigrationStatus(context.Background(), ids[2]); err != nil || len(st.Applied) != 3 {
		t.Errorf("status %+v, %v", st, err)
	}
	if st, err := p.MigrationStatus(context.Background(), ids[0]); err != nil || len(st.Applied) != 1 {
		t.Errorf("status %+v, %v", st, err)
	}
}

// merged returns a's files replaced and completed by b's.
func merged(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

// upsOnly returns files without the down files.
func upsOnly(files map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range files {
		if !strings.HasSuffix(k, ".down.sql") {
			out[k] = v
		}
	}
	return out
}

// Config.Migrations has no down migrations: a clear error, nothing touched.
func TestRollback_ConfigMigrationsAndBadTo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	migs := []string{`CREATE TABLE a (x)`, `CREATE TABLE b (x)`}
	fleet(t, dir, 2, migs)
	before := fileBytes(t, dir)
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs})
	rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1})
	if !errors.Is(err, ErrNoDownMigration) || !strings.Contains(err.Error(), "Config.Migrations") || rep.Tenants != 0 {
		t.Errorf("Config.Migrations: %+v, %v", rep, err)
	}
	if diff := cmp.Diff(before, fileBytes(t, dir)); diff != "" {
		t.Errorf("files changed:\n%s", diff)
	}

	p2 := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, rollbackMigs)})
	for _, to := range []int{-1, 4} {
		if _, err := p2.Rollback(context.Background(), RollbackOptions{To: to}); err == nil || !strings.Contains(err.Error(), "between 0 and 3") {
			t.Errorf("To %d: %v", to, err)
		}
	}
}

// In MigrateAuto mode a rolled-back migration is applied again on the
// tenant's next access (the writer that passed the gate before is closed);
// in MigrateCheck mode the tenant is refused.
func TestRollback_NextAccess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, mode := range []MigrationMode{MigrateAuto, MigrateCheck} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, rollbackMigs), MigrationMode: mode})
			if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM tags`); n != 1 {
				t.Fatal(n)
			}
			if _, err := p.Rollback(ctx, RollbackOptions{To: 2}); err != nil {
				t.Fatal(err)
			}
			st, err := p.MigrationStatus(ctx, "acme")
			if err != nil || !slices.Equal(st.Pending, []string{"0003_tags.up.sql"}) || st.Mode != mode {
				t.Fatalf("status after rollback: %+v, %v", st, err)
			}
			rows, err := p.QueryContext(tctx("acme"), `SELECT count(*) FROM tags`)
			if err == nil {
				rows.Close()
			}
			switch mode {
			case MigrateAuto:
				if err != nil {
					t.Fatalf("auto mode, next access: %v", err)
				}
				if st, _ := p.MigrationStatus(ctx, "acme"); len(st.Pending) != 0 {
					t.Errorf("auto mode did not apply again: %+v", st)
				}
			case MigrateCheck:
				if !errors.Is(err, ErrPendingMigrations) {
					t.Fatalf("check mode, next access: %v", err)
				}
			}
		})
	}
}

// MigrateManual serves a tenant that is behind as it is and never
// migrates it on access; MigrateAll does, also when the tenant is open.
// New tenants get every configured migration, and a rollback does not
// leave the template behind.
func TestMigrateManualMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ups := upsOnly(rollbackMigs)
	fleetFromDir(t, dir, migrationsDir(t, without(ups, "0003_tags.up.sql")), 1) // ta, at 2
	p := newTestProxy(t, Config{Dir: dir, MigrationsFS: mapFS(rollbackMigs), MigrationMode: MigrateManual})
	ctx := context.Background()
	for range 2 {
		if _, err := p.ExecContext(tctx("ta"), `INSERT INTO items (v, severity) VALUES ('x', 'low')`); err != nil {
			t.Fatalf("manual mode, tenant behind: %v", err)
		}
		if err := p.QueryRowContext(tctx("ta"), `SELECT 1 FROM tags`).Err(); err == nil || !strings.Contains(err.Error(), "no such table") {
			t.Fatalf("manual mode migrated on access: %v", err)
		}
		if !p.c.r.evictTenant(t, "ta") {
			t.Fatal("evict")
		}
	}
	if st := readState(t, dir, "ta"); len(st.Ledger) != 2 {
		t.Fatalf("ledger %v", st.Ledger)
	}
	// New tenants are complete.
	if n := queryInt(t, p, tctx("fresh"), `SELECT count(*) FROM tags`); n != 1 {
		t.Fatal(n)
	}
	// MigrateAll migrates the open tenant that manual mode marked checked.
	if n := queryInt(t, p, tctx("ta"), `SELECT count(*) FROM items`); n != 2 {
		t.Fatal(n)
	}
	if rep, err := p.MigrateAll(ctx, MigrateOptions{Tenants: []string{"ta"}}); err != nil || rep.Applied != 1 {
		t.Fatalf("MigrateAll: %+v, %v", rep, err)
	}
	if n := queryInt(t, p, tctx("ta"), `SELECT count(*) FROM tags`); n != 1 {
		t.Fatal(n)
	}
	// After rolling everybody back, new tenants still get the full set.
	if _, err := p.Rollback(ctx, RollbackOptions{To: 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	if st := readState(t, dir, "after"); len(st.Ledger) != 3 {
		t.Errorf("new tenant after a rollback has %d migrations", len(st.Ledger))
	}
}

// A service running the current release beside the CLI's migrate with the
// next release's migrations (one more): in MigrateManual it goes on serving
// the tenant, reads and writes, and its new tenants are not ahead; in
// MigrateAuto and MigrateCheck the tenant is refused at its next open, with
// an error that says it is ahead, not edited. A tenant whose applied
// migrations differ from the configured ones is refused in every mode.
func TestMigrateAhead_ServedInManualMode(t *testing.T) {
	t.Parallel()
	ups := upsOnly(rollbackMigs)
	current := migrationsDir(t, without(ups, "0003_tags.up.sql"))
	next := migrationsDir(t, ups)
	for _, mode := range []MigrationMode{MigrateManual, MigrateAuto, MigrateCheck} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			svc := newTestProxy(t, Config{Dir: dir, MigrationsDir: current, MigrationMode: mode, MaxConnections: 4})
			if err := svc.CreateTenant(context.Background(), "ta"); err != nil {
				t.Fatal(err)
			}
			if _, err := svc.ExecContext(tctx("ta"), `INSERT INTO items (v) VALUES ('before')`); err != nil {
				t.Fatal(err)
			}
			if !svc.c.r.evictTenant(t, "ta") {
				t.Fatal("evict")
			}
			cli := newTestProxy(t, Config{Dir: dir, MigrationsDir: next})
			if rep, err := cli.MigrateAll(context.Background(), MigrateOptions{}); err != nil || rep.Applied != 1 {
				t.Fatalf("the CLI's migrate: %+v, %v", rep, err)
			}
			_, err := svc.ExecContext(tctx("ta"), `INSERT INTO items (v) VALUES ('after')`)
			if mode != MigrateManual {
				if !errors.Is(err, ErrMigrationDrift) || !strings.Contains(err.Error(), "newer migration set") {
					t.Fatalf("%v: next open: %v, want ErrMigrationDrift saying it is ahead", mode, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("manual mode, tenant ahead: %v", err)
			}
			if n := queryInt(t, svc, tctx("ta"), `SELECT count(*) FROM items`); n != 2 {
				t.Fatalf("items: %d", n)
			}
			if st := readState(t, dir, "ta"); len(st.Ledger) != 3 {
				t.Fatalf("ledger %v", st.Ledger)
			}
			if err := svc.CreateTenant(context.Background(), "tb"); err != nil {
				t.Fatal(err)
			}
			if st := readState(t, dir, "tb"); len(st.Ledger) != 2 {
				t.Fatalf("a new tenant of the current release has %d migrations", len(st.Ledger))
			}
			// Edited, not ahead: refused here too.
			edited := merged(ups, map[string]string{"0001_init.sql": ups["0001_init.sql"] + " -- edited"})
			p2 := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, without(edited, "0003_tags.up.sql")), MigrationMode: MigrateManual})
			if err := p2.QueryRowContext(tctx("ta"), `SELECT 1`).Err(); !errors.Is(err, ErrMigrationDrift) {
				t.Fatalf("manual mode, edited migration: %v, want ErrMigrationDrift", err)
			}
		})
	}
}

func mapFS(files map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for k, v := range files {
		fsys[k] = &fstest.MapFile{Data: []byte(v)}
	}
	return fsys
}

// Down files: loaded by number, outside the checksum (adding one later is
// no drift); a down file without its migration, two for one number or an
// empty one are errors.
func TestDownMigrationFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ups := upsOnly(rollbackMigs)
	ids := fleetFromDir(t, dir, migrationsDir(t, ups), 1)
	p := newTestProxy(t, Config{Dir: dir, MigrationsFS: mapFS(rollbackMigs), MigrationMode: MigrateCheck})
	if _, err := p.ExecContext(tctx(ids[0]), `INSERT INTO tags VALUES (1, 'x')`); err != nil {
		t.Fatalf("down files added later: %v", err)
	}
	m := p.c.r.mig
	if m.list[0].downName != "0001_init.down.sql" || m.list[1].downName != "0002_severity.down.sql" || m.list[2].down != rollbackMigs["0003_tags.down.sql"] {
		t.Errorf("loaded %+v", m.list)
	}
	if (&migrator{list: m.list[:3]}).templateKey() != (&migrator{list: []migration{{sum: m.list[0].sum}, {sum: m.list[1].sum}, {sum: m.list[2].sum}}}).templateKey() {
		t.Error("down files change the template key")
	}
	for name, files := range map[string]map[string]string{
		"down without up": merged(ups, map[string]string{"0004_x.down.sql": `SELECT 1`}),
		"two downs":       merged(rollbackMigs, map[string]string{"2_other.down.sql": `SELECT 1`}),
		"empty down":      merged(rollbackMigs, map[string]string{"0003_tags.down.sql": " \n"}),
	} {
		if _, err := New(Config{Dir: t.TempDir(), MigrationsFS: mapFS(files)}); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if got := downFileName("0002_a.up.sql") + " " + downFileName("0003_b.sql"); got != "0002_a.down.sql 0003_b.down.sql" {
		t.Errorf("downFileName: %s", got)
	}
}

// MigrationStatus counts the migrations a tenant has beyond the
// configured ones (a newer set applied them), not an edited one.
func TestMigrationStatus_Ahead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ids := fleetFromDir(t, dir, migrationsDir(t, rollbackMigs), 1)
	ctx := context.Background()
	p := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, without(rollbackMigs, "0003_tags.up.sql", "0003_tags.down.sql"))})
	st, err := p.MigrationStatus(ctx, ids[0])
	if err != nil || st.Ahead != 1 || !errors.Is(st.Drift, ErrMigrationDrift) || len(st.Pending) != 0 {
		t.Errorf("ahead: %+v, %v", st, err)
	}
	edited := merged(rollbackMigs, map[string]string{"0001_init.sql": rollbackMigs["0001_init.sql"] + " -- edited"})
	p2 := newTestProxy(t, Config{Dir: dir, MigrationsDir: migrationsDir(t, without(edited, "0003_tags.up.sql", "0003_tags.down.sql"))})
	if st, err := p2.MigrationStatus(ctx, ids[0]); err != nil || st.Ahead != 0 || st.Drift == nil {
		t.Errorf("edited: %+v, %v", st, err)
	}
}

// A down migration does not run on the writer live traffic used: a TEMP
// table named like its table took its DROP COLUMN, the ledger said rolled
// back over a main table that kept the column, and the next access failed
// for good re-applying the migration ("duplicate column name").
func TestRollback_OpenWriterSessionDoesNotReachDowns(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0001_init.sql":     {Data: []byte(`CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT)`)},
		"0002_sev.sql":      {Data: []byte(`ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 0`)},
		"0002_sev.down.sql": {Data: []byte(`ALTER TABLE events DROP COLUMN severity`)},
	}
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, MigrationsFS: fsys, MigrationMode: MigrateManual})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (name, severity) VALUES ('a', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `CREATE TEMP TABLE events (id INTEGER PRIMARY KEY, name TEXT, severity INTEGER)`); err != nil {
		t.Fatal(err)
	}
	if rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1}); err != nil || rep.Migrated != 1 {
		t.Fatalf("Rollback: %+v, %v", rep, err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM pragma_table_info('events', 'main') WHERE name = 'severity'`); n != 0 {
		t.Error("main.events keeps the column its down migration dropped")
	}
	if rep, err := p.MigrateAll(context.Background(), MigrateOptions{}); err != nil || rep.Migrated != 1 {
		t.Fatalf("MigrateAll after the rollback: %+v, %v", rep, err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM main.events WHERE severity = 0`); n != 1 {
		t.Errorf("after migrating again: %d rows with the column's default, want 1", n)
	}
}

// A tenant with a reader leased (rows open) is rolled back on its writer;
// the writer alone is closed, so that the next access passes the gate
// again (auto mode: applies the migration again), and the connection
// budget stays exact.
func TestRollback_ReaderLeased(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newTestProxy(t, Config{MigrationsDir: migrationsDir(t, rollbackMigs), MaxConnections: 10})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO items (v) VALUES ('a'), ('b')`); err != nil {
		t.Fatal(err)
	}
	rows, err := p.QueryContext(tctx("acme"), `SELECT v FROM items ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatal(rows.Err())
	}
	if rep, err := p.Rollback(ctx, RollbackOptions{To: 1}); err != nil || rep.Migrated != 1 {
		t.Fatalf("rollback with a reader leased: %+v, %v", rep, err)
	}
	tn, _ := p.c.r.tenant("acme")
	if tn.w != nil || tn.ready.Load() {
		t.Error("the writer that passed the gate before the rollback is still open")
	}
	// The writer's descriptor stays parked (and counted) while the reader
	// is open: WAL keeps it until the tenant's last connection closes.
	if st := p.Stats(); st.OpenConnections != 2 || st.Tenants[0].InUse != 1 {
		t.Errorf("stats with one reader left: %+v", st)
	}
	if !rows.Next() || rows.Close() != nil {
		t.Errorf("the open rows broke: %v", rows.Err())
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM tags`); n != 1 {
		t.Errorf("tags after the next access: %d", n)
	}
	if st, _ := p.MigrationStatus(ctx, "acme"); len(st.Pending) != 0 {
		t.Errorf("auto mode did not apply again on the next access: %+v", st)
	}
	if !p.c.r.evictTenant(t, "acme") || p.Stats().OpenConnections != 0 {
		t.Errorf("after closing the tenant: %+v", p.Stats())
	}
}

// Each down migration run is a span naming the tenant and the down file;
// one that fails ends its span with the error.
func TestRollback_Spans(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	files := merged(rollbackMigs, map[string]string{"0002_severity.down.sql": `DROP TABLE nosuch`})
	p := newTestProxy(t, Config{MigrationsDir: migrationsDir(t, files), MigrationMode: MigrateManual,
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	rep, _ := p.Rollback(context.Background(), RollbackOptions{To: 1})
	if len(rep.Failed) != 1 {
		t.Fatalf("report %+v", rep)
	}
	var got []string
	for _, s := range spans.Ended() {
		if s.Name() != spanRollback {
			continue
		}
		if !slices.Contains(s.Attributes(), attribute.String(attrTenant, "acme")) {
			t.Errorf("span without its tenant: %v", s.Attributes())
		}
		for _, kv := range s.Attributes() {
			if kv.Key == attrMigration {
				got = append(got, kv.Value.AsString()+" "+s.Status().Code.String())
			}
		}
	}
	if want := []string{"0003_tags.down.sql Unset", "0002_severity.down.sql Error"}; !slices.Equal(got, want) {
		t.Errorf("rollback spans %v, want %v", got, want)
	}
}

// A down file is matched by its number and name: 0001_b.down.sql beside
// 0001_a.up.sql (a renamed migration, a merge of two branches) was taken as
// a's down and would undo another schema. Zero-padding may differ.
func TestRollback_DownFileOfAnotherName(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Dir: t.TempDir(), MigrationsFS: fstest.MapFS{
		"0001_a.up.sql":   {Data: []byte(`CREATE TABLE a (x)`)},
		"0001_b.down.sql": {Data: []byte(`DROP TABLE b`)},
	}})
	if err == nil || !strings.Contains(err.Error(), "0001_b.down.sql does not match 0001_a.up.sql: name it 0001_a.down.sql") {
		t.Fatalf("New: %v, want the down file refused, named", err)
	}
	p, err := New(Config{Dir: t.TempDir(), MigrationsFS: fstest.MapFS{
		"0001_a.sql":   {Data: []byte(`CREATE TABLE a (x)`)},
		"1_a.down.sql": {Data: []byte(`DROP TABLE a`)},
	}})
	if err != nil {
		t.Fatalf("New with a down file padded otherwise: %v", err)
	}
	p.Close()
}
