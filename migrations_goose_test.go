package sqliteproxy

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
)

const gooseUsers = `-- A comment before the sections.
-- +goose Up
-- +goose StatementBegin
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
-- +goose StatementEnd
INSERT INTO users (name) VALUES ('root');

-- +goose Down
DROP TABLE users;
`

// A goose file ran whole: its Down section right after its Up one (the
// table it created was dropped, and the ledger said applied). Its Up
// section is now the migration and its Down section the down migration.
func TestMigrations_GooseSections(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"00001_users.sql": {Data: []byte(gooseUsers)},
		"00002_email.sql": {Data: []byte("-- +goose Up\nALTER TABLE users ADD COLUMN email TEXT;\n-- +goose Down\n-- +goose StatementBegin\nALTER TABLE users DROP COLUMN email;\n-- +goose StatementEnd\n")},
		"00003_plain.sql": {Data: []byte("CREATE INDEX users_name ON users (name)")},
	}
	p := newTestProxy(t, Config{MigrationsFS: fsys})
	if n := queryInt(t, p, tctx("a"), `SELECT count(*) FROM users WHERE email IS NULL`); n != 1 {
		t.Fatalf("users after the goose migrations: %d rows", n)
	}
	st, err := p.MigrationStatus(context.Background(), "a")
	if err != nil || len(st.Applied) != 3 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	// Rollback needs the down migration of 3, a plain file without one.
	if rep, err := p.Rollback(context.Background(), RollbackOptions{To: 0}); err == nil && !errors.Is(rep.Failed["a"], ErrNoDownMigration) {
		t.Fatalf("rolled back past a migration without a down migration: %+v", rep)
	}
	fsys["00003_plain.down.sql"] = &fstest.MapFile{Data: []byte("DROP INDEX users_name")}
	q := newTestProxy(t, Config{Dir: p.c.r.cfg.Dir, MigrationsFS: fsys, MigrationMode: MigrateManual})
	rep, err := q.Rollback(context.Background(), RollbackOptions{To: 1})
	if err != nil || len(rep.Failed) != 0 {
		t.Fatalf("Rollback to 1: %+v, %v", rep, err)
	}
	if n := queryInt(t, q, tctx("a"), `SELECT count(*) FROM pragma_table_info('users') WHERE name = 'email'`); n != 0 {
		t.Error("the goose Down section of 00002 did not run")
	}
	if n := queryInt(t, q, tctx("a"), `SELECT count(*) FROM users`); n != 1 {
		t.Errorf("users after rolling back to 1: %d rows", n)
	}
}

// What goose files can hold and sqliteproxy cannot honour is refused at
// New, naming the file: nothing is applied.
func TestMigrations_GooseRefused(t *testing.T) {
	t.Parallel()
	for name, files := range map[string]map[string]string{
		"NO TRANSACTION": {"0001_a.sql": "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE TABLE a (x);\n"},
		"unknown":        {"0001_a.sql": "-- +goose Up\n-- +goose ENVSUB ON\nCREATE TABLE a (x);\n"},
		"no Up":          {"0001_a.sql": "-- +goose Down\nDROP TABLE a;\n"},
		"empty Up":       {"0001_a.sql": "-- +goose Up\n-- nothing\n-- +goose Down\nSELECT 1;\n"},
		"Up twice":       {"0001_a.sql": "-- +goose Up\nCREATE TABLE a (x);\n-- +goose Down\nDROP TABLE a;\n-- +goose Up\nSELECT 1;\n"},
		"two downs":      {"0001_a.sql": "-- +goose Up\nCREATE TABLE a (x);\n-- +goose Down\nDROP TABLE a;\n", "0001_a.down.sql": "DROP TABLE a"},
		"ENVSUBST":       {"0001_a.sql": "-- +goose ENVSUBST ON\n-- +goose Up\nCREATE TABLE a (x);\n"},
		"SQL before Up":  {"0001_a.sql": "-- a comment is fine\nCREATE TABLE pre (x);\n-- +goose Up\nCREATE TABLE a (x);\n"},
	} {
		fsys := fstest.MapFS{}
		for f, text := range files {
			fsys[f] = &fstest.MapFile{Data: []byte(text)}
		}
		dir := t.TempDir()
		if _, err := New(Config{Dir: dir, MigrationsFS: fsys}); err == nil || !strings.Contains(err.Error(), "0001_a.sql") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A .sql file named like a migration but not by the pattern, beside
// migrations that are, was skipped without a word: its schema silently
// missing. It is an error at New, naming it.
func TestMigrations_MisnamedNumberedFile(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"0002-add.sql", "0002_add.SQL", "V2__add.sql", "0002.sql"} {
		fsys := fstest.MapFS{
			"0001_init.sql": {Data: []byte("CREATE TABLE a (x)")},
			bad:             {Data: []byte("CREATE TABLE b (x)")},
			"seed.sql":      {Data: []byte("SELECT 1")}, // not numbered: not a migration, ignored
		}
		if _, err := New(Config{Dir: t.TempDir(), MigrationsFS: fsys}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("%s beside 0001_init.sql: %v", bad, err)
		}
	}
	p := newTestProxy(t, Config{MigrationsFS: fstest.MapFS{"0001_init.sql": {Data: []byte("CREATE TABLE a (x)")}, "seed.sql": {Data: []byte("SELECT 1")}}})
	if _, err := p.ExecContext(tctx("a"), `INSERT INTO a VALUES (1)`); err != nil {
		t.Error(err)
	}
}

// Annotations as goose reads them: "--" then "+goose" after any blanks, in
// any case, with blanks around; each spelling splits the file (a goose
// user's file ran whole when it was written "--+goose Down").
func TestMigrations_GooseSpellings(t *testing.T) {
	t.Parallel()
	for _, f := range []struct{ up, down string }{
		{"--+goose Up", "--+goose Down"},
		{"-- +goose Up", "--+goose Down"},
		{"--  +goose up", "--\t+goose DOWN  "},
		{"-- +GOOSE Up\r", "-- +goose Down\r"},
		{"  -- +goose Up", "-- +goose    Down"},
	} {
		text := f.up + "\nCREATE TABLE users (x);\n" + f.down + "\nDROP TABLE users;\n"
		p := newTestProxy(t, Config{MigrationsFS: fstest.MapFS{"0001_users.sql": {Data: []byte(text)}}})
		if n := queryInt(t, p, tctx("a"), `SELECT count(*) FROM sqlite_schema WHERE name = 'users'`); n != 1 {
			t.Errorf("%q / %q: the Down section ran", f.up, f.down)
		}
	}
}

// Trailing blank lines are not an edit: a goose file given its Down
// section after it shipped (with the blank line goose files put before
// it), or a migration given an editor's final newline, made every tenant
// drift ("edited after it was applied"), refused in every mode. A change
// of a statement still drifts.
func TestMigrations_TrailingBlankLinesAreNoEdit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shipped := fstest.MapFS{
		"00001_users.sql": {Data: []byte("-- +goose Up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n")},
		"00002_posts.sql": {Data: []byte("CREATE TABLE posts (id INTEGER PRIMARY KEY)")},
	}
	p := newTestProxy(t, Config{Dir: dir, MigrationsFS: shipped})
	if _, err := p.ExecContext(tctx("a"), `INSERT INTO users DEFAULT VALUES`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	later := fstest.MapFS{
		"00001_users.sql": {Data: []byte("-- +goose Up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n\n-- +goose Down\nDROP TABLE users;\n")},
		"00002_posts.sql": {Data: []byte("CREATE TABLE posts (id INTEGER PRIMARY KEY)\n")},
	}
	q := newTestProxy(t, Config{Dir: dir, MigrationsFS: later})
	if n := queryInt(t, q, tctx("a"), `SELECT count(*) FROM users`); n != 1 {
		t.Errorf("users: %d", n)
	}
	if st, err := q.MigrationStatus(context.Background(), "a"); err != nil || st.Drift != nil || len(st.Applied) != 2 {
		t.Errorf("status: %+v, %v", st, err)
	}
	q.Close()
	edited := fstest.MapFS{
		"00001_users.sql": later["00001_users.sql"],
		"00002_posts.sql": {Data: []byte("CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT)\n")},
	}
	r := newTestProxy(t, Config{Dir: dir, MigrationsFS: edited})
	if _, err := r.ExecContext(tctx("a"), `SELECT 1`); !errors.Is(err, ErrMigrationDrift) {
		t.Errorf("a statement edited: %v, want ErrMigrationDrift", err)
	}
}

// A goose file without SQL under Down, applied whole by a version before
// goose support, ran just its Up section: no drift, before or after a Down
// section is added to it (then the text before the Down annotation is what
// was applied). Only SQL under Down in what ran whole is the drift
// TestMigrations_GooseAppliedWhole reports.
func TestMigrations_GooseUpOnlyAppliedWhole(t *testing.T) {
	t.Parallel()
	const upOnly = "-- +goose Up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
	for name, files := range map[string][2]string{ // as applied whole, as configured now
		"Unchanged":               {upOnly, upOnly},
		"EmptyDown":               {upOnly, upOnly + "\n-- +goose Down\n-- nothing to undo\n"},
		"DownAddedSince":          {upOnly, upOnly + "\n-- +goose Down\nDROP TABLE users;\n"},
		"BlanksTrimmed":           {upOnly, strings.TrimSuffix(upOnly, "\n") + "\n\n\n-- +goose Down\nDROP TABLE users;\n"},
		"EmptyDownThenSQLAdded":   {upOnly + "\n-- +goose Down\n", upOnly + "\n-- +goose Down\nDROP TABLE users;\n"},
		"CommentDownThenSQLAdded": {upOnly + "-- +goose Down\n-- irreversible\n", upOnly + "-- +goose Down\n-- irreversible\nDROP TABLE users;\n"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := appliedWhole(t, files[0], `INSERT INTO users DEFAULT VALUES`)
			p := newTestProxy(t, Config{Dir: dir, MigrationsFS: fstest.MapFS{"00001_users.sql": {Data: []byte(files[1])}}})
			if n := queryInt(t, p, tctx("a"), `SELECT count(*) FROM users`); n != 1 {
				t.Errorf("users: %d", n)
			}
			if st, err := p.MigrationStatus(context.Background(), "a"); err != nil || st.Drift != nil {
				t.Errorf("status: %+v, %v", st, err)
			}
		})
	}
}

// appliedWhole returns a data directory whose tenant "a" has migration
// text applied whole, as versions before goose support applied goose files
// (Config.Migrations are not read as goose files), and then ran stmt.
func appliedWhole(t *testing.T, text, stmt string) string {
	t.Helper()
	dir := t.TempDir()
	old := newTestProxy(t, Config{Dir: dir, Migrations: []string{text}})
	if _, err := old.ExecContext(tctx("a"), stmt); err != nil {
		t.Fatal(err)
	}
	old.Close()
	return dir
}

// A goose file whose Down section ran (applied whole by an older version)
// is reported so (rather than "edited"), also after its trailing blanks
// changed; once its Down section was edited as well, the "edited" drift
// says the Down section may have run.
func TestMigrations_GooseAppliedWholeThenTouched(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ now, want string }{
		"Unchanged":           {gooseUsers, "goose Down section included"},
		"FinalNewlineTrimmed": {strings.TrimSuffix(gooseUsers, "\n"), "goose Down section included"},
		"BlankLineAdded":      {gooseUsers + "\n", "goose Down section included"},
		"DownEdited":          {strings.Replace(gooseUsers, "DROP TABLE users;", "DROP TABLE IF EXISTS users;", 1), "its goose Down section may have run"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := appliedWhole(t, gooseUsers, `SELECT 1`)
			p := newTestProxy(t, Config{Dir: dir, MigrationsFS: fstest.MapFS{"00001_users.sql": {Data: []byte(tc.now)}}})
			if _, err := p.ExecContext(tctx("a"), `SELECT 1`); !errors.Is(err, ErrMigrationDrift) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v, want ErrMigrationDrift saying %q", err, tc.want)
			}
		})
	}
}

// Matching trailing blanks costs no copy of the migration per variant: a
// migration that loads data (megabytes) took seconds and ~80 × its size in
// memory at New.
func TestMigrations_TrailingBlanksCostNoCopies(t *testing.T) {
	const size = 4 << 20
	big := "CREATE TABLE blob (b);\nINSERT INTO blob VALUES ('" + strings.Repeat("x", size) + "');\n"
	list := []migration{{name: "big", sql: big, older: gooseOlder(big)}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m := newMigrator(list, nil)
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 4*size {
		t.Errorf("newMigrator allocated %d MB for a %d MB migration", grown>>20, size>>20)
	}
	if !m.list[0].matches(sqlSum(strings.TrimSuffix(big, "\n") + "\r\n\r\n")) {
		t.Error("a CRLF variant of the big migration does not match")
	}
}

// Trailing blanks are no edit however many there were: up to five blank
// lines (LF or CRLF), and spaces or a tab left on the last line, either way.
func TestMigrations_TrailingBlanksEitherWay(t *testing.T) {
	t.Parallel()
	const stmt = "CREATE TABLE posts (id INTEGER PRIMARY KEY);"
	for _, pair := range [][2]string{
		{stmt + "\n\n\n", stmt},
		{stmt, stmt + "\n\n\n\n"},
		{stmt + "  \n", stmt + "\n"},
		{stmt + "\t\r\n\r\n\r\n", stmt + "\n"},
		{stmt + "\n\t", stmt},          // a Go raw string's indented closing quote
		{stmt + "\n    ", stmt + "\n"}, // moved
	} {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir, Migrations: []string{pair[0]}})
		if _, err := p.ExecContext(tctx("a"), `INSERT INTO posts DEFAULT VALUES`); err != nil {
			t.Fatal(err)
		}
		p.Close()
		q := newTestProxy(t, Config{Dir: dir, Migrations: []string{pair[1]}})
		if _, err := q.ExecContext(tctx("a"), `SELECT 1`); err != nil {
			t.Errorf("applied as %q, configured as %q: %v", pair[0], pair[1], err)
		}
	}
}
