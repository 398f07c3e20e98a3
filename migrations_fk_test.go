package sqliteproxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

const (
	fkParentChild = `CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1, 'a'), (2, 'b'), (3, 'c');
INSERT INTO child (parent_id) VALUES (1), (1), (2), (2), (3), (3);`
	// SQLite's documented way to change a table (https://sqlite.org/lang_altertable.html#otheralter),
	// its PRAGMA lines included: inside a transaction they do nothing.
	fkRebuild = `PRAGMA foreign_keys = OFF;
CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '', note TEXT);
INSERT INTO parent_new (id, name) SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE parent_new RENAME TO parent;
PRAGMA foreign_key_check;
PRAGMA foreign_keys = ON;`
	fkRebuildDown = `CREATE TABLE parent_old (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO parent_old SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE parent_old RENAME TO parent;`
)

func fkCount(t *testing.T, p *Proxy, id, table string) int {
	t.Helper()
	return queryInt(t, p, tctx(id), `SELECT count(*) FROM `+table)
}

// With ForeignKeys, a migration that rebuilds a parent table as SQLite's
// docs say (its PRAGMA foreign_keys = OFF is a no-op in the migration's
// transaction) kept the parent and deleted every child row through ON
// DELETE CASCADE, and reported success. Migrations now run with foreign
// keys off (set before their transaction), up and down, on first access,
// MigrateAll and template copies alike, and the tenant's connections
// enforce them again afterwards.
func TestMigrations_ForeignKeysOffForRebuilds(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0001_init.sql":         {Data: []byte(fkParentChild)},
		"0002_rebuild.sql":      {Data: []byte(fkRebuild)},
		"0002_rebuild.down.sql": {Data: []byte(fkRebuildDown)},
	}
	dir := t.TempDir()
	// a: at version 1, then migrated by MigrateAll; b: new, from the template.
	one := newTestProxy(t, Config{Dir: dir, ForeignKeys: true, MigrationsFS: fstest.MapFS{"0001_init.sql": fsys["0001_init.sql"]}})
	if n := fkCount(t, one, "a", "child"); n != 6 {
		t.Fatalf("a at version 1: %d children", n)
	}
	one.Close()
	p := newTestProxy(t, Config{Dir: dir, ForeignKeys: true, MigrationsFS: fsys, MigrationMode: MigrateManual})
	if rep, err := p.MigrateAll(context.Background(), MigrateOptions{}); err != nil || len(rep.Failed) != 0 {
		t.Fatalf("MigrateAll: %+v, %v", rep, err)
	}
	for _, id := range []string{"a", "b"} {
		if n := fkCount(t, p, id, "child"); n != 6 {
			t.Errorf("%s after the rebuild: %d children, want 6", id, n)
		}
		if _, err := p.ExecContext(tctx(id), `INSERT INTO child (parent_id) VALUES (99)`); err == nil {
			t.Errorf("%s: foreign keys not enforced after the migration", id)
		}
		if _, err := p.ExecContext(tctx(id), `DELETE FROM parent WHERE id = 3`); err != nil {
			t.Fatal(err)
		}
		if n := fkCount(t, p, id, "child"); n != 4 {
			t.Errorf("%s: ON DELETE CASCADE after the migration: %d children, want 4", id, n)
		}
	}
	if rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1}); err != nil || len(rep.Failed) != 0 {
		t.Fatalf("Rollback: %+v, %v", rep, err)
	}
	for _, id := range []string{"a", "b"} {
		if n := fkCount(t, p, id, "child"); n != 4 {
			t.Errorf("%s after the down rebuild: %d children, want 4", id, n)
		}
	}
}

// A migration that leaves a foreign key violation (enforcement is off while
// it runs) fails, and nothing of it is applied.
func TestMigrations_ForeignKeyViolationFails(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{fkParentChild, `DELETE FROM parent WHERE id = 1`}})
	_, err := p.ExecContext(tctx("a"), `SELECT 1`)
	if err == nil || !strings.Contains(err.Error(), "foreign key violations") || !strings.Contains(err.Error(), "child row") {
		t.Fatalf("a migration leaving orphans: %v", err)
	}
	q := newTestProxy(t, Config{Dir: p.c.r.cfg.Dir, ForeignKeys: true, Migrations: []string{fkParentChild}})
	if n := fkCount(t, q, "a", "parent"); n != 3 {
		t.Errorf("the failed migration was applied: %d parents", n)
	}
}

// A migration runs inside the proxy's transaction: a COMMIT (or BEGIN,
// END, ROLLBACK) of its own committed what came before it and let the rest
// run statement by statement — half a migration applied, and every retry
// failing on the half. It is refused before anything of the migration
// stays; SAVEPOINT works.
func TestMigrations_TransactionControlRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []string{"COMMIT", "END", "ROLLBACK", "BEGIN", "COMMIT TRANSACTION"} {
		p := newTestProxy(t, Config{Migrations: []string{
			`CREATE TABLE v1 (x)`,
			`CREATE TABLE v2 (x); ` + tc + `; CREATE TABLE v2b (x); INSERT INTO nope VALUES (1)`,
		}})
		_, err := p.ExecContext(tctx("a"), `SELECT 1`)
		if err == nil || !strings.Contains(err.Error(), "no BEGIN, COMMIT, END or ROLLBACK") {
			t.Errorf("%s in a migration: %v", tc, err)
		}
		q := newTestProxy(t, Config{Dir: p.c.r.cfg.Dir, Migrations: []string{`CREATE TABLE v1 (x)`}})
		if n := queryInt(t, q, tctx("a"), `SELECT count(*) FROM sqlite_schema WHERE name IN ('v2', 'v2b')`); n != 0 {
			t.Errorf("%s in a migration: %d of its tables stayed", tc, n)
		}
	}
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE s (x); SAVEPOINT a; INSERT INTO s VALUES (1); ROLLBACK TO a; RELEASE a; INSERT INTO s VALUES (2)`}})
	if n := queryInt(t, p, tctx("a"), `SELECT sum(x) FROM s`); n != 2 {
		t.Errorf("SAVEPOINT in a migration: sum %d, want 2", n)
	}
}

// mattn runs a statement it has cached without compiling it again, and so
// without asking the authorizer: a COMMIT the application ran on the
// tenant's writer with a cancellable context was cached, and a migration
// (or down migration) ending with the same text ran it, past the refusal.
func TestMigrations_TransactionControlRefusedWhenCached(t *testing.T) {
	t.Parallel()
	for _, roll := range []bool{false, true} {
		fsys := fstest.MapFS{
			"0001_a.sql":      {Data: []byte(`CREATE TABLE a (x)`)},
			"0002_b.sql":      {Data: []byte(`CREATE TABLE b (x)`)},
			"0002_b.down.sql": {Data: []byte("DROP TABLE b;\nCOMMIT")},
			"0001_a.down.sql": {Data: []byte("DROP TABLE a")},
		}
		if !roll {
			fsys["0003_c.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE c (x);\nCOMMIT")}
		}
		dir := t.TempDir()
		seed := newTestProxy(t, Config{Dir: dir, MigrationsFS: fstest.MapFS{"0001_a.sql": fsys["0001_a.sql"], "0002_b.sql": fsys["0002_b.sql"]}})
		if _, err := seed.ExecContext(tctx("t"), `SELECT 1`); err != nil {
			t.Fatal(err)
		}
		seed.Close()
		p := newTestProxy(t, Config{Dir: dir, MigrationsFS: fsys, MigrationMode: MigrateManual})
		ctx, cancel := context.WithCancel(tctx("t"))
		defer cancel()
		c, err := p.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{`BEGIN IMMEDIATE`, `INSERT INTO a VALUES (1)`, `COMMIT`} {
			if _, err := c.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		var rep MigrateReport
		if roll {
			rep, err = p.Rollback(ctx, RollbackOptions{To: 0})
		} else {
			rep, err = p.MigrateAll(ctx, MigrateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		if rep.Failed["t"] == nil {
			t.Errorf("rollback %v: a script ending in a cached COMMIT ran: %+v", roll, rep)
		}
		if n := queryInt(t, p, tctx("t"), `SELECT count(*) FROM sqlite_schema WHERE name IN ('a', 'b')`); n != 2 {
			t.Errorf("rollback %v: %d of tables a and b left, want both", roll, n)
		}
		if n := queryInt(t, p, tctx("t"), `SELECT count(*) FROM sqlite_schema WHERE name = 'c'`); n != 0 {
			t.Errorf("rollback %v: table c was made", roll)
		}
		st, err := p.MigrationStatus(context.Background(), "t")
		if err != nil || len(st.Applied) != 2 {
			t.Errorf("rollback %v: status %+v, %v; want 2 applied", roll, st, err)
		}
	}
}

// The ledger is the migrator's: the application's SQL may read it, never
// change it. Emptied (a test helper deleting every table's rows), it made
// every later access run the migrations again over the schema they had
// made, and fail, for good; a trigger on it would run the application's
// SQL inside the migrator's own statements; a TEMP table of its name on
// the writer would have been read instead of it. Migrations, rollbacks,
// VACUUM and templates still write it.
func TestMigrations_LedgerIsTheMigrators(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0001_a.sql":      {Data: []byte(`CREATE TABLE a (x)`)},
		"0002_b.sql":      {Data: []byte(`CREATE TABLE b (x)`)},
		"0002_b.down.sql": {Data: []byte(`DROP TABLE b`)},
	}
	p := newTestProxy(t, Config{MigrationsFS: fsys, MigrationMode: MigrateManual})
	ctx := tctx("t")
	for _, q := range []string{
		`DELETE FROM _sqliteproxy_migrations`,
		`DELETE FROM main._sqliteproxy_migrations WHERE version = 2`,
		`UPDATE _sqliteproxy_migrations SET checksum = 'x'`,
		`INSERT INTO _sqliteproxy_migrations VALUES (3, 'x', 'y')`,
		`DROP TABLE _sqliteproxy_migrations`,
		`ALTER TABLE _sqliteproxy_migrations RENAME TO gone`,
		`ALTER TABLE _sqliteproxy_migrations ADD COLUMN y`,
		`CREATE TRIGGER t AFTER INSERT ON _sqliteproxy_migrations BEGIN SELECT 1; END`,
		`CREATE TEMP TRIGGER t AFTER DELETE ON main._sqliteproxy_migrations BEGIN SELECT 1; END`,
		`CREATE INDEX li ON _sqliteproxy_migrations (CASE WHEN version > 2 THEN json('x') END)`,
		`CREATE UNIQUE INDEX li ON "_sqliteproxy_migrations" (checksum)`,
	} {
		if _, err := p.ExecContext(ctx, q); err == nil {
			t.Errorf("%s: allowed", q)
		}
	}
	// A trigger elsewhere whose body changes the ledger: its body is
	// authorized when it fires, and refused then.
	if _, err := p.ExecContext(ctx, `CREATE TRIGGER u AFTER INSERT ON a BEGIN DELETE FROM _sqliteproxy_migrations; END`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(ctx, `INSERT INTO a VALUES (1)`); err == nil {
		t.Error("a trigger emptied the ledger")
	}
	if _, err := p.ExecContext(ctx, `DROP TRIGGER u`); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, ctx, `SELECT count(*) FROM _sqliteproxy_migrations`); n != 2 {
		t.Fatalf("the ledger holds %d rows, want 2", n)
	}
	// A TEMP table of its name on the writer fools neither Rollback nor MigrateAll.
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`BEGIN IMMEDIATE`, `CREATE TEMP TABLE _sqliteproxy_migrations (version, checksum, applied_at)`, `COMMIT`} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c.Close()
	if rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1}); err != nil || rep.Applied != 1 {
		t.Fatalf("Rollback: %+v, %v", rep, err)
	}
	if rep, err := p.MigrateAll(context.Background(), MigrateOptions{}); err != nil || rep.Applied != 1 {
		t.Fatalf("MigrateAll: %+v, %v", rep, err)
	}
	if _, err := p.ExecContext(ctx, `VACUUM`); err != nil {
		t.Errorf("VACUUM: %v", err)
	}
	st, err := p.MigrationStatus(context.Background(), "t")
	if err != nil || len(st.Applied) != 2 || len(st.Pending) != 0 {
		t.Errorf("status after all that: %+v, %v", st, err)
	}
	if err := p.CreateTenant(context.Background(), "fresh"); err != nil { // from the template
		t.Fatal(err)
	}
	if n := queryInt(t, p, tctx("fresh"), `SELECT count(*) FROM _sqliteproxy_migrations`); n != 2 {
		t.Errorf("a tenant from the template has %d ledger rows", n)
	}
}

// A tenant made with no migrations has no ledger yet: a table or view of
// its name made by the application was taken for it by the migrator's
// CREATE TABLE IF NOT EXISTS, and a row with a migration's checksum made
// the migration look applied (it never ran).
func TestMigrations_LedgerCannotBeMadeByTheApplication(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	for _, q := range []string{
		`CREATE TABLE _sqliteproxy_migrations (version INTEGER PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)`,
		`CREATE TABLE main."_SQLITEPROXY_MIGRATIONS" AS SELECT 1 AS version, 'x' AS checksum, 'y' AS applied_at`,
		`CREATE VIEW _sqliteproxy_migrations AS SELECT 1 AS version, 'x' AS checksum, 'y' AS applied_at`,
	} {
		if _, err := p.ExecContext(tctx("t"), q); err == nil {
			t.Errorf("%s: allowed", q)
		}
	}
	p.Close()
	q := newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE a (x)`}})
	if _, err := q.ExecContext(tctx("t"), `INSERT INTO a VALUES (1)`); err != nil {
		t.Errorf("the first migration, after the application's attempts: %v", err)
	}
}

// The same through the two ways the authorizer did not see: a table of
// the application renamed to the ledger's name (the authorizer sees the
// old name only) and a virtual table of that name, whose shadow tables
// took writes. Either, holding a migration's checksum, made it look
// applied: "no such table" for ever after, and no drift reported.
func TestMigrations_LedgerCannotBeForgedByRenameOrVirtualTable(t *testing.T) {
	t.Parallel()
	migs := []string{`CREATE TABLE a (x)`}
	sum := fmt.Sprintf("%x", sha256.Sum256([]byte(migs[0])))
	t.Run("rename", func(t *testing.T) {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir})
		for _, q := range []string{
			`CREATE TABLE forged (version INTEGER PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)`,
			`INSERT INTO forged VALUES (1, '` + sum + `', '2026-01-01T00:00:00Z')`,
			`ALTER TABLE forged RENAME TO _sqliteproxy_migrations`, // allowed: the authorizer cannot tell
		} {
			if _, err := p.ExecContext(tctx("t"), q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		p.Close()
		q := newTestProxy(t, Config{Dir: dir, Migrations: migs})
		_, err := q.ExecContext(tctx("t"), `INSERT INTO a VALUES (1)`)
		if !errors.Is(err, ErrMigrationDrift) || !strings.Contains(err.Error(), "not made by the migrator") {
			t.Errorf("a tenant with a renamed table as its ledger: %v, want ErrMigrationDrift saying so", err)
		}
		if st, err := q.MigrationStatus(context.Background(), "t"); err == nil && st.Drift == nil {
			t.Errorf("MigrationStatus: %+v, want drift", st)
		}
	})
	// A trigger or an index named like the ledger, made before it: refused
	// (the index made the ledger's creation fail for good; the trigger was
	// taken, by the ledger read, for the ledger's own definition).
	t.Run("named-like", func(t *testing.T) {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir})
		if _, err := p.ExecContext(tctx("t"), `CREATE TABLE app (x)`); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{
			`CREATE TRIGGER _sqliteproxy_migrations AFTER INSERT ON app BEGIN SELECT 1; END`,
			`CREATE INDEX _sqliteproxy_migrations ON app (x)`,
		} {
			if _, err := p.ExecContext(tctx("t"), q); err == nil || !strings.Contains(err.Error(), "not authorized") {
				t.Errorf("%s: %v, want not authorized", q, err)
			}
		}
		p.Close()
		// Made anyway (the sqlite3 shell): the ledger read takes the table
		// of the name, not the trigger.
		db := direct(t, dir, "t")
		if _, err := db.Exec(`CREATE TRIGGER _sqliteproxy_migrations AFTER INSERT ON app BEGIN SELECT 1; END`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		q := newTestProxy(t, Config{Dir: dir, Migrations: append(slices.Clone(migs), `CREATE TABLE b (x)`)})
		if _, err := q.ExecContext(tctx("t"), `INSERT INTO b VALUES (1)`); err != nil {
			t.Errorf("the migrations after the attempts: %v", err)
		}
	})
	t.Run("virtual", func(t *testing.T) {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir})
		if _, err := p.ExecContext(tctx("t"), `CREATE VIRTUAL TABLE other USING fts4(x)`); err != nil {
			t.Fatalf("fts4 (the test needs it): %v", err)
		}
		if _, err := p.ExecContext(tctx("t"), `CREATE VIRTUAL TABLE _sqliteproxy_migrations USING fts4(version, checksum, applied_at)`); err == nil || !strings.Contains(err.Error(), "not authorized") {
			t.Errorf("a virtual table of the ledger's name: %v, want not authorized", err)
		}
		p.Close()
		q := newTestProxy(t, Config{Dir: dir, Migrations: migs})
		if _, err := q.ExecContext(tctx("t"), `INSERT INTO a VALUES (1)`); err != nil {
			t.Errorf("the first migration: %v", err)
		}
	})
}

// Violations already in a tenant (rows written with foreign keys off: the
// default, a session's PRAGMA foreign_keys = OFF, the sqlite3 shell) are
// not a migration's: counted against it, every later migration failed
// ("it leaves 1 foreign key violations") and in MigrateAuto every access to
// the tenant was refused, reads included. A migration that adds one still
// fails.
func TestMigrations_ForeignKeyViolationsAlreadyThere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{fkParentChild}}) // foreign keys off
	if _, err := p.ExecContext(tctx("a"), `INSERT INTO child (parent_id) VALUES (99)`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	q := newTestProxy(t, Config{Dir: dir, ForeignKeys: true, Migrations: []string{fkParentChild, `CREATE TABLE unrelated (x)`}})
	if _, err := q.ExecContext(tctx("a"), `INSERT INTO unrelated VALUES (1)`); err != nil {
		t.Errorf("an unrelated migration over an old violation: %v", err)
	}
	q.Close()
	// Renamed, or its rows renumbered by SQLite's table rebuild, the old
	// violation is still the old one (named by table and rowid, it looked
	// new).
	q = newTestProxy(t, Config{Dir: dir, ForeignKeys: true, Migrations: []string{fkParentChild, `CREATE TABLE unrelated (x)`,
		`ALTER TABLE child RENAME TO kid`,
		`DELETE FROM kid WHERE id = 1;
CREATE TABLE kid_new (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE, note TEXT);
INSERT INTO kid_new (parent_id) SELECT parent_id FROM kid ORDER BY id;
DROP TABLE kid;
ALTER TABLE kid_new RENAME TO kid`}})
	if _, err := q.ExecContext(tctx("a"), `SELECT 1`); err != nil {
		t.Errorf("a rename and a rebuild over an old violation: %v", err)
	}
	q.Close()
	r := newTestProxy(t, Config{Dir: dir, ForeignKeys: true, Migrations: []string{fkParentChild, `CREATE TABLE unrelated (x)`,
		`ALTER TABLE child RENAME TO kid`, `DELETE FROM kid WHERE id = 1;
CREATE TABLE kid_new (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE, note TEXT);
INSERT INTO kid_new (parent_id) SELECT parent_id FROM kid ORDER BY id;
DROP TABLE kid;
ALTER TABLE kid_new RENAME TO kid`, `DELETE FROM parent WHERE id = 2`}})
	_, err := r.ExecContext(tctx("a"), `SELECT 1`)
	if err == nil || !strings.Contains(err.Error(), "3 foreign key violations where there were 1 (kid row") {
		t.Errorf("a migration adding violations to old ones: %v", err)
	}
}

// A script's SAVEPOINT of the name the migrator holds around it made the
// migrator's ROLLBACK TO stop at the script's: a migration adding a
// violation passed (its violation counted as one already there), and over
// old violations half a script ran twice. Refused.
func TestMigrations_ForeignKeySavepointNameReserved(t *testing.T) {
	t.Parallel()
	for _, script := range []string{
		`INSERT OR IGNORE INTO child (id, parent_id) VALUES (500, 12345); SAVEPOINT sqliteproxy_fk_check;`,
		`CREATE TABLE log (v); INSERT INTO log VALUES ('one'); SAVEPOINT SQLITEPROXY_FK_CHECK; INSERT INTO log VALUES ('two')`,
	} {
		p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{fkParentChild, script}})
		_, err := p.ExecContext(tctx("a"), `SELECT 1`)
		if err == nil || !strings.Contains(err.Error(), "not authorized") || !strings.Contains(err.Error(), "sqliteproxy_fk_check") {
			t.Errorf("%s: %v, want a refusal naming the reserved savepoint", script, err)
		}
	}
	// Other names work, released or not.
	p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{fkParentChild,
		`CREATE TABLE log (v); SAVEPOINT mine; INSERT INTO log VALUES ('one'); RELEASE mine; SAVEPOINT left; INSERT INTO log VALUES ('two')`}})
	if n := queryInt(t, p, tctx("a"), `SELECT count(*) FROM log`); n != 2 {
		t.Errorf("log rows: %d, want 2", n)
	}
}
