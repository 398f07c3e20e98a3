package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	_ "github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

const (
	initSQL = "CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL);\n"
	addSQL  = "ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 0;\n"
)

type result struct {
	code           int
	stdout, stderr string
}

// cli runs the command line with stdin (nil: an empty, non-file reader).
func cli(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var out, errOut bytes.Buffer
	code := run(args, stdin, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// want checks the exit status and, for failures, that stderr starts with
// a "sqliteproxy: " line.
func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	if code != exitOK && !strings.HasPrefix(r.stderr, "sqliteproxy: ") {
		t.Errorf("stderr does not start with %q:\n%s", "sqliteproxy: ", r.stderr)
	}
	return r
}

// migrationsDir writes the given migration files into a new directory.
func migrationsDir(t *testing.T, files ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range files {
		body := map[string]string{"0001_init.sql": initSQL, "0002_add.sql": addSQL}[name]
		if body == "" {
			t.Fatalf("no migration %s", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// withProxy opens the library on dir (creating tenants on first access,
// migrating from mdir unless it is empty), runs f and closes it.
func withProxy(t *testing.T, dir, mdir string, f func(p *sqliteproxy.Proxy)) {
	t.Helper()
	withProxyLayout(t, dir, mdir, "flat", f)
}

// withProxyLayout is withProxy with the layout named as -layout names it.
func withProxyLayout(t *testing.T, dir, mdir, layout string, f func(p *sqliteproxy.Proxy)) {
	t.Helper()
	l := map[string]sqliteproxy.Layout{"flat": sqliteproxy.LayoutFlat, "buckets": sqliteproxy.LayoutBuckets}[layout]
	// With SQLITEPROXY_TEST_KEEP_WAL=1 (make test runs it so too) every
	// tenant the library closed keeps its -wal and -shm: the commands must
	// work on such a directory as on one without them.
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, MigrationsDir: mdir, Layout: l, KeepWAL: testkit.KeepWAL})
	f(p)
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

// fleet makes a data directory with tenants created by the library with
// the migrations in mdir (none if empty), each with n events.
func fleet(t *testing.T, mdir string, n int, ids ...string) string {
	t.Helper()
	dir := t.TempDir()
	withProxy(t, dir, mdir, func(p *sqliteproxy.Proxy) {
		for _, id := range ids {
			if err := p.CreateTenant(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if _, err := p.ExecContext(sqliteproxytest.Context(t, id),
					`INSERT INTO events (type) VALUES (?)`, id+"-"+strconv.Itoa(i)); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
	return dir
}

// junk puts a file that is not a database where a tenant's file would be.
func junk(t *testing.T, dir, id string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, id+".db"), []byte("this is not a database\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// events reads a tenant file's event types directly.
func events(t *testing.T, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return sqliteproxytest.Strings(t, context.Background(), db, `SELECT type FROM events ORDER BY id`)
}

// snapshot describes every file under dir: mode, size, mtime and content hash.
// presenceFile is the file every proxy keeps in its directory to tell
// other processes it has it open (sqliteproxy's presence_unix.go).
const presenceFile = ".sqliteproxy-processes"

// entries lists the names in dir but presenceFile.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != presenceFile {
			names = append(names, e.Name())
		}
	}
	return names
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == presenceFile {
			return nil // every proxy's mark that it has the directory open
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if testkit.KeptSide(rel, fi.Size()) {
			// Kept by the library's KeepWAL (withProxyLayout); the CLI's
			// own connections do not keep them, and a command that opens
			// the tenant removes them: no data changes.
			return nil
		}
		if d.IsDir() {
			out[rel] = fi.Mode().String()
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[rel] = fi.Mode().String() + " " + strconv.Itoa(len(b)) + " " + fi.ModTime().Format(time.RFC3339Nano) + " " + hex.EncodeToString(sum[:8])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func unchanged(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Errorf("%s changed (-before +after):\n%s", dir, diff)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := fleet(t, "", 0, "acme")
	junk(t, dir, "x")
	mdir := migrationsDir(t, "0001_init.sql")
	missing := filepath.Join(t.TempDir(), "nothing-here")
	file := filepath.Join(dir, "acme.db")
	backupDir := t.TempDir()
	before := snapshot(t, dir)
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"help", "frobnicate"},
		{"tenants", "-dir", dir, "-bogus"},
		{"tenants", "-dir", dir, "extra"},
		{"tenants", "-dir"},
		{"create", "-dir", dir},
		{"create", "-dir", dir, "a", "b"},
		{"create", "-dir", dir, "ACME"},
		{"create", "-dir", dir, "../evil"},
		{"create", "-dir", dir, "--", "-x"},
		{"create", "-dir", dir, ""},
		{"create", "-dir", dir, "con"},
		{"create", "-dir", missing, "acme"},
		{"create", "-dir", file, "acme"},
		{"create", "-dir", dir, "-migrations", missing, "newone"},
		{"delete", "-dir", dir, "-yes"},
		{"delete", "-dir", dir, "-yes", "a/b"},
		{"delete", "-dir", missing, "-yes", "acme"},
		{"backup", "-dir", dir, "acme"},
		{"backup", "-dir", dir, "acme", "b", "c"},
		{"backup", "-dir", dir, "-all", "x", "y"},
		{"backup", "-dir", dir, "acme", ""},
		{"backup", "-dir", dir, "-all", ""},
		{"backup", "-dir", dir, "Acme", filepath.Join(backupDir, "a.db")},
		{"backup", "-dir", dir, "acme", filepath.Join(missing, "a.db")},
		{"backup", "-dir", dir, "acme", backupDir},
		{"backup", "-dir", dir, "acme", filepath.Join(dir, "copy.db")},
		{"backup", "-dir", dir, "-all", dir},
		{"backup", "-dir", dir, "-all", filepath.Join(dir, "82")}, // not there yet
		{"backup", "-dir", dir, "-all", filepath.Join(dir, "sub", "..")},
		{"backup", "-dir", missing, "acme", filepath.Join(backupDir, "a.db")},
		{"backup", "-dir", missing, "-all", filepath.Join(backupDir, "all")},
		{"restore", "-dir", dir, "acme"},
		{"restore", "-dir", dir, "acme", filepath.Join(missing, "b.db")},
		{"restore", "-dir", dir, "acme", backupDir},
		{"restore", "-dir", dir, "a.b", file},
		{"restore", "-dir", missing, "acme", file},
		{"migrate", "-dir", dir},
		{"migrate", "-dir", dir, "-migrations", missing},
		{"migrate", "-dir", dir, "-migrations", mdir, "-concurrency", "-1"},
		{"migrate", "-dir", dir, "-migrations", mdir, "-concurrency", "x"},
		{"migrate", "-dir", dir, "-migrations", mdir, "acme", "BAD"},
		{"migrate", "-dir", dir, "-migrations", mdir, "-down-to", "-1"},
		{"migrate", "-dir", dir, "-migrations", mdir, "-down-to", "one"},
		{"migrate", "-dir", dir, "-down-to", "1"},
		{"migrate", "-dir", missing, "-migrations", mdir},
		{"status", "-dir", dir, "acme", "x"},
		{"status", "-dir", dir, "%2e%2e"},
		{"status", "-dir", missing},
		{"status", "-dir", dir, "-migrations", missing},
		{"check", "-dir", dir, "acme", "x"},
		{"check", "-dir", dir, "ACME"},
		{"check", "-dir", missing},
		{"check", "-dir", missing, "acme"},
		// Replicas.
		{"replicas"},
		{"replicas", "-json"},
		{"replicas", "-replica", "file://" + backupDir, "extra"},
		{"replicas", "-replica", ""},
		{"replicas", "-replica", backupDir},
		{"replicas", "-replica", "file://relative/path"},
		{"replicas", "-replica", "%zz"},
		{"replicas", "-dir", dir, "-replica", "file://" + backupDir},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "acme", file},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir},
		{"restore", "-dir", dir, "-at", "2026-11-26T14:00:00Z", "acme", file},
		{"restore", "-dir", dir, "-litestream", "litestream", "acme", file},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "-at", "yesterday", "acme"},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "-at", "2026-11-26", "acme"},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "-at", "", "acme"},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "ACME"},
		{"restore", "-dir", dir, "-replica", "", "acme"},
		{"restore", "-dir", dir, "-replica", "no-scheme", "acme"},
		{"restore", "-dir", missing, "-replica", "file://" + backupDir, "acme"},
		{"restore", "-dir", dir, "-replica", "file://" + backupDir, "-litestream", missing, "acme"},
		{"status", "-dir", dir, "-replica", "no-scheme"},
		{"status", "-dir", dir, "-replica", ""},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := cli(t, nil, args...).want(t, exitUsage)
			if r.stdout != "" {
				t.Errorf("stdout: %q", r.stdout)
			}
			if first, _, _ := strings.Cut(r.stderr, "\n"); strings.Contains(first, "sqliteproxy: sqliteproxy") {
				t.Errorf("repeated prefix: %s", first)
			}
		})
	}
	unchanged(t, dir, before)
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing data directory was created: %v", err)
	}
	if ents, _ := os.ReadDir(backupDir); len(ents) != 0 {
		t.Errorf("backup directory got files: %v", ents)
	}
}

func TestErrorMessages(t *testing.T) {
	t.Parallel()
	dir := fleet(t, "", 0, "acme")
	missing := filepath.Join(t.TempDir(), "gone")
	for _, tc := range []struct {
		args []string
		want string // the whole stderr
	}{
		{[]string{"create", "-dir", dir, "ACME"}, `sqliteproxy: create: invalid tenant ID: "ACME": byte 0 is upper case: IDs are lower case (strings.ToLower), [a-z0-9_-]` + "\n"},
		{[]string{"tenants", "-dir", missing}, "sqliteproxy: tenants: data directory " + missing + " does not exist\n"},
		{[]string{"frob"}, `sqliteproxy: unknown command "frob"` + "\n"},
		{[]string{"create", "-dir", dir, "acme"}, "sqliteproxy: create acme: tenant already exists\n"},
		{[]string{"delete", "-dir", dir, "-yes", "nosuch"}, "sqliteproxy: delete nosuch: no such tenant\n"},
		{[]string{"tenants", "-dir", dir, "-x"}, "sqliteproxy: tenants: flag provided but not defined: -x\nusage: sqliteproxy tenants [-dir DIR] [-layout L] [-json]\n"},
		{[]string{"backup", "-dir", dir, "acme", ""}, "sqliteproxy: backup: FILE is empty\nusage: sqliteproxy backup [-dir DIR] [-layout L] [-force] ID FILE | -all [-force] DIR\n"},
		{[]string{"tenants", "-dir", ""}, "sqliteproxy: tenants: data directory is empty\n"},
		{[]string{"restore", "-dir", dir, "-force", "acme", ""}, "sqliteproxy: restore: FILE is empty\nusage: sqliteproxy restore [-dir DIR] [-layout L] [-force] ID FILE | -replica URL [-at TIME] [-litestream PATH] [-dir DIR] [-layout L] [-force] ID\n"},
	} {
		r := cli(t, nil, tc.args...)
		got := r.stderr
		if tc.args[0] == "frob" {
			got, _, _ = strings.Cut(got, "\n")
			got += "\n"
		}
		if got != tc.want {
			t.Errorf("%v: stderr\n%s\nwant\n%s", tc.args, r.stderr, tc.want)
		}
	}
}

func TestCompactUsage(t *testing.T) {
	t.Parallel()
	cli(t, nil, "compact").want(t, exitUsage)                                              // no -replica
	cli(t, nil, "compact", "-replica", "/no/scheme").want(t, exitUsage)                    // not a URL
	cli(t, nil, "compact", "-replica", "file://"+t.TempDir(), "Bad-ID").want(t, exitUsage) // invalid tenant ID
	// A mistyped path: it read as an empty replica, nothing printed, exit 0.
	typo := "file://" + filepath.Join(t.TempDir(), "replcia")
	for _, cmd := range []string{"compact", "replicas"} {
		if r := cli(t, nil, cmd, "-replica", typo).want(t, exitUsage); !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("%s -replica %s: %q", cmd, typo, r.stderr)
		}
	}
	r := cli(t, nil, "compact", "-replica", "file://"+t.TempDir()).want(t, exitOK) // an empty replica: nothing to do
	if r.stdout != "" {
		t.Errorf("compact of an empty replica printed %q", r.stdout)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := cli(t, nil, args...).want(t, exitOK)
		for _, c := range commands {
			if !strings.Contains(r.stdout, "\n  "+c.name+" ") {
				t.Errorf("%v: usage does not list %s:\n%s", args, c.name, r.stdout)
			}
		}
	}
	var noDir, noLayout []string // as the commands' flags have it
	for _, c := range commands {
		r := cli(t, nil, c.name, "-h").want(t, exitOK)
		// Every command but those that read no data directory has -dir.
		wantNoDir := c.name == "replicas" || c.name == "compact" || c.name == "nodes" || c.name == "owners" || c.name == "move"
		if !strings.HasPrefix(r.stdout, "usage: sqliteproxy "+c.name+" ") || strings.Contains(r.stdout, "-dir") == wantNoDir {
			t.Errorf("%s -h:\n%s", c.name, r.stdout)
		}
		hasDir, hasLayout := strings.Contains(r.stdout, "\n  -dir "), strings.Contains(r.stdout, "\n  -layout ")
		if !hasDir {
			noDir = append(noDir, c.name)
		} else if !hasLayout {
			noLayout = append(noLayout, c.name)
		}
		// The synopsis shows -layout where the command takes it.
		if strings.Contains(c.synopsis, "[-layout L]") != hasLayout {
			t.Errorf("%s: synopsis %q, -layout flag %v", c.name, c.synopsis, hasLayout)
		}
		if r2 := cli(t, nil, "help", c.name).want(t, exitOK); r2.stdout != r.stdout {
			t.Errorf("help %s differs from %s -h", c.name, c.name)
		}
	}
	// The usage footer says which commands take -dir and -layout.
	r := cli(t, nil, "help").want(t, exitOK)
	for _, tc := range []struct {
		re   string
		want []string
	}{
		{`\nEvery command but (.*) takes -dir DIR`, noDir},
		{`\nall of these but (.*) \(whose -to is the layout\) also take -layout`, noLayout},
	} {
		m := regexp.MustCompile(tc.re).FindStringSubmatch(r.stdout)
		if m == nil {
			t.Errorf("usage does not match %q:\n%s", tc.re, r.stdout)
			continue
		}
		got := strings.FieldsFunc(strings.ReplaceAll(m[1], " and ", ","), func(r rune) bool { return r == ',' || r == ' ' })
		if diff := cmp.Diff(tc.want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
			t.Errorf("usage: %q names the wrong commands (-flags +usage):\n%s", m[0], diff)
		}
	}
}

// TestBackupEmptyPath: an empty FILE or -all DIR is a usage error, and
// nothing is written (an empty path would be the working directory).
func TestBackupEmptyPath(t *testing.T) {
	// Serial: it changes the process's working directory.
	dir := fleet(t, "", 0, "acme")
	wd := t.TempDir()
	t.Chdir(wd)
	before := snapshot(t, dir)
	for _, args := range [][]string{{"acme", ""}, {"-all", ""}, {"-all", "-force", ""}} {
		r := cli(t, nil, append([]string{"backup", "-dir", dir}, args...)...).want(t, exitUsage)
		if !strings.Contains(r.stderr, " is empty\n") || r.stdout != "" {
			t.Errorf("backup %q: %+v", args, r)
		}
	}
	unchanged(t, dir, before)
	if ents, _ := os.ReadDir(wd); len(ents) != 0 {
		t.Errorf("working directory got files: %v", ents)
	}
}

func TestTenants(t *testing.T) {
	t.Parallel()
	dir := fleet(t, "", 0, "globex", "acme", "initech-2")
	// Not tenants: side files, hidden files, other names, directories.
	for _, name := range []string{"acme.db-wal", ".creating-x.db", "README", "UPPER.db", "sub.db/"} {
		path := filepath.Join(dir, name)
		var err error
		if strings.HasSuffix(name, "/") {
			err = os.Mkdir(path, 0o700)
		} else {
			err = os.WriteFile(path, nil, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(t, dir)
	if r := cli(t, nil, "tenants", "-dir", dir).want(t, exitOK); r.stdout != "acme\nglobex\ninitech-2\n" || r.stderr != "" {
		t.Errorf("tenants: %q, stderr %q", r.stdout, r.stderr)
	}
	if r := cli(t, nil, "tenants", "-json", "-dir", dir).want(t, exitOK); r.stdout != `["acme","globex","initech-2"]`+"\n" {
		t.Errorf("tenants -json: %q", r.stdout)
	}
	unchanged(t, dir, before)

	empty := t.TempDir()
	if r := cli(t, nil, "tenants", "-dir", empty).want(t, exitOK); r.stdout != "" {
		t.Errorf("tenants on empty dir: %q", r.stdout)
	}
	if r := cli(t, nil, "tenants", "-dir", empty, "-json").want(t, exitOK); r.stdout != "[]\n" {
		t.Errorf("tenants -json on empty dir: %q", r.stdout)
	}
}

// TestDefaultDir: -dir defaults to ./data, which is never created.
func TestDefaultDir(t *testing.T) {
	// Serial: it changes the process's working directory.
	wd := t.TempDir()
	t.Chdir(wd)
	cli(t, nil, "tenants").want(t, exitUsage)
	cli(t, nil, "create", "acme").want(t, exitUsage)
	if _, err := os.Stat(filepath.Join(wd, "data")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("./data created: %v", err)
	}
	if err := os.Mkdir("data", 0o700); err != nil {
		t.Fatal(err)
	}
	cli(t, nil, "create", "acme").want(t, exitOK)
	if r := cli(t, nil, "tenants").want(t, exitOK); r.stdout != "acme\n" {
		t.Errorf("tenants: %q", r.stdout)
	}
}

func TestCreate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mdir := migrationsDir(t, "0001_init.sql", "0002_add.sql")
	if r := cli(t, nil, "create", "-dir", dir, "-migrations", mdir, "acme").want(t, exitOK); r.stdout != "created tenant acme\n" || r.stderr != "" {
		t.Errorf("create: %+v", r)
	}
	// Flags after the ID work too.
	cli(t, nil, "create", "plain", "-dir", dir).want(t, exitOK)
	fi, err := os.Stat(filepath.Join(dir, "acme.db"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("acme.db: %v, %v", fi, err)
	}
	if got := events(t, filepath.Join(dir, "acme.db")); len(got) != 0 {
		t.Errorf("new tenant has events %v", got)
	}
	r := cli(t, nil, "status", "-dir", dir, "-migrations", mdir, "-json").want(t, exitOK)
	var st []tenantStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || *st[0].Version != 2 || len(st[0].Pending) != 0 || *st[1].Version != 0 || len(st[1].Pending) != 2 {
		t.Errorf("status after create: %s", r.stdout)
	}

	before := snapshot(t, dir)
	cli(t, nil, "create", "-dir", dir, "acme").want(t, exitFailed)
	unchanged(t, dir, before)
}

func TestDelete(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 2, "acme", "globex")
	path := filepath.Join(dir, "acme.db")
	const prompt = "delete tenant acme and all its data? [y/N] "

	// Declined: nothing happens.
	for _, answer := range []string{"n\n", "\n", "", "no\n", "yess\n"} {
		before := snapshot(t, dir)
		r := cli(t, strings.NewReader(answer), "delete", "-dir", dir, "acme")
		if r.code != exitFailed || !strings.HasPrefix(r.stderr, prompt) || !strings.Contains(r.stderr, "sqliteproxy: delete acme: not confirmed, nothing deleted\n") || r.stdout != "" {
			t.Errorf("answer %q: %+v", answer, r)
		}
		unchanged(t, dir, before)
	}

	// Not interactive (a regular file, like a pipe or /dev/null): refused
	// without reading it.
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := snapshot(t, dir)
	r := cli(t, f, "delete", "-dir", dir, "acme").want(t, exitUsage)
	if strings.Contains(r.stderr, "[y/N]") || !strings.Contains(r.stderr, "-yes") {
		t.Errorf("non-interactive: %q", r.stderr)
	}
	unchanged(t, dir, before)

	// Yes.
	r = cli(t, strings.NewReader("y\n"), "delete", "-dir", dir, "acme").want(t, exitOK)
	if r.stderr != prompt || r.stdout != "deleted tenant acme\n" {
		t.Errorf("delete y: %+v", r)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("acme.db still there: %v", err)
	}
	// Gone: not found, and not re-created.
	cli(t, strings.NewReader("y\n"), "delete", "-dir", dir, "acme").want(t, exitFailed)
	cli(t, nil, "delete", "-dir", dir, "-yes", "acme").want(t, exitFailed)
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("acme.db re-created: %v", err)
	}

	// -yes: no question, also with a non-interactive stdin; flag after the ID.
	r = cli(t, f, "delete", "-dir", dir, "globex", "-yes").want(t, exitOK)
	if r.stderr != "" || r.stdout != "deleted tenant globex\n" {
		t.Errorf("delete -yes: %+v", r)
	}
	if ents := entries(t, dir); len(ents) != 0 {
		t.Errorf("files left: %v", ents)
	}

	// A junk file can be deleted.
	junk(t, dir, "x")
	cli(t, strings.NewReader("yes\n"), "delete", "-dir", dir, "x").want(t, exitOK)

	// A tenant Litestream streamed (its folder beside the file): deleted
	// here, with a word that its replica is not.
	fleet2 := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "streamed")
	if err := os.Mkdir(filepath.Join(fleet2, ".streamed.db-litestream"), 0o700); err != nil {
		t.Fatal(err)
	}
	r = cli(t, nil, "delete", "-dir", fleet2, "-yes", "streamed").want(t, exitOK)
	if !strings.Contains(r.stderr, "its replica is not erased") {
		t.Errorf("delete of a streamed tenant: %+v", r)
	}
	// One restored from its replica and not streamed since (a restore
	// -replica replaces Litestream's folder with its marker): the same
	// word (adv48: none, and a service restored the tenant).
	fleet3 := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "restored")
	if err := os.WriteFile(filepath.Join(fleet3, ".restored.db-restored"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r = cli(t, nil, "delete", "-dir", fleet3, "-yes", "restored").want(t, exitOK)
	if !strings.Contains(r.stderr, "if it has a replica, that is not erased") {
		t.Errorf("delete of a tenant restored from its replica: %+v", r)
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := fleet(t, mdir, 3, "acme", "globex")
	bdir := t.TempDir()
	bfile := filepath.Join(bdir, "acme-backup.db")

	r := cli(t, nil, "backup", "-dir", dir, "acme", bfile).want(t, exitOK)
	if r.stdout != "backed up tenant acme to "+bfile+"\n" || r.stderr != "" {
		t.Errorf("backup: %+v", r)
	}
	want := []string{"acme-0", "acme-1", "acme-2"}
	if got := events(t, bfile); !cmp.Equal(got, want) {
		t.Fatalf("backup has %v, want %v", got, want)
	}
	checkBackupFile(t, bfile)

	// The tenant changes; the backup refuses to be overwritten without -force.
	withProxy(t, dir, mdir, func(p *sqliteproxy.Proxy) {
		if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `DELETE FROM events WHERE type = 'acme-1'`); err != nil {
			t.Fatal(err)
		}
	})
	bsnap := snapshot(t, bdir)
	r = cli(t, nil, "backup", "-dir", dir, "acme", bfile).want(t, exitFailed)
	if !strings.Contains(r.stderr, "exists (use -force to overwrite)") {
		t.Errorf("overwrite: %q", r.stderr)
	}
	unchanged(t, bdir, bsnap)
	later := filepath.Join(bdir, "later.db")
	cli(t, nil, "backup", "-force", "-dir", dir, "acme", later).want(t, exitOK)

	// Restore puts the backed-up data back, and leaves globex alone.
	gsum := snapshot(t, dir)["globex.db"]
	r = cli(t, nil, "restore", "-dir", dir, "acme", bfile).want(t, exitOK)
	if r.stdout != "restored tenant acme from "+bfile+"\n" {
		t.Errorf("restore: %+v", r)
	}
	if got := events(t, filepath.Join(dir, "acme.db")); !cmp.Equal(got, want) {
		t.Errorf("restored tenant has %v, want %v", got, want)
	}
	if snapshot(t, dir)["globex.db"] != gsum {
		t.Error("globex changed")
	}
	cli(t, nil, "check", "-dir", dir, "acme").want(t, exitOK)

	// -force overwrites.
	cli(t, nil, "backup", "-force", "-dir", dir, "acme", later).want(t, exitOK)
	if got := events(t, later); !cmp.Equal(got, want) {
		t.Errorf("overwritten backup has %v", got)
	}

	// Restoring into a new ID creates that tenant from the backup.
	r = cli(t, nil, "restore", "-dir", dir, "newco", bfile).want(t, exitOK)
	if !strings.HasSuffix(r.stdout, "(new tenant)\n") {
		t.Errorf("restore new: %q", r.stdout)
	}
	if got := events(t, filepath.Join(dir, "newco.db")); !cmp.Equal(got, want) {
		t.Errorf("newco has %v", got)
	}

	// A corrupt source is refused and changes nothing.
	bad := filepath.Join(bdir, "bad.db")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("junk"), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	r = cli(t, nil, "restore", "-dir", dir, "acme", bad).want(t, exitFailed)
	if strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "not a database") {
		t.Errorf("restore from junk: %q", r.stderr)
	}
	unchanged(t, dir, before)

	// Missing tenants: nothing is created.
	r = cli(t, nil, "backup", "-dir", dir, "nosuch", filepath.Join(bdir, "n.db")).want(t, exitFailed)
	if r.stderr != "sqliteproxy: backup nosuch: no such tenant\n" {
		t.Errorf("backup nosuch: %q", r.stderr)
	}
	unchanged(t, dir, before)
	if _, err := os.Stat(filepath.Join(bdir, "n.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("backup of a missing tenant wrote a file")
	}
}

// TestInUse: delete and restore refuse a tenant that another process (here:
// a Proxy in the test) has open, and -force overrides that for the
// leftovers of a crashed process.
func TestInUse(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := fleet(t, mdir, 1, "acme", "globex")
	bfile := filepath.Join(t.TempDir(), "b.db")
	cli(t, nil, "backup", "-dir", dir, "acme", bfile).want(t, exitOK)

	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, MigrationsDir: mdir})
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (type) VALUES ('live')`); err != nil {
		t.Fatal(err)
	}
	// Read-only commands work meanwhile.
	cli(t, nil, "check", "-dir", dir).want(t, exitOK)
	cli(t, nil, "status", "-dir", dir, "-migrations", mdir).want(t, exitOK)
	cli(t, nil, "backup", "-dir", dir, "acme", filepath.Join(t.TempDir(), "live.db")).want(t, exitOK)
	for _, args := range [][]string{
		{"delete", "-dir", dir, "-yes", "acme"},
		{"restore", "-dir", dir, "acme", bfile},
	} {
		r := cli(t, strings.NewReader("y\n"), args...).want(t, exitFailed)
		if !strings.Contains(r.stderr, "in use: process "+strconv.Itoa(os.Getpid())+" has the tenant open") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: %q", args, r.stderr)
		}
	}
	var n int
	if err := p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 2 {
		t.Errorf("acme after refused delete and restore: %d events, %v", n, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// Another process (not this one) that has globex open: refused, told by
	// its lock on the file.
	child, stopChild := holdOpen(t, filepath.Join(dir, "globex.db"))
	r := cli(t, nil, "delete", "-dir", dir, "-yes", "globex").want(t, exitFailed)
	if !strings.Contains(r.stderr, "in use: process "+strconv.Itoa(child.Process.Pid)+" has the tenant open") {
		t.Errorf("delete of a tenant another process has open: %q", r.stderr)
	}
	if err := stopChild(); err != nil {
		t.Fatal(err)
	}

	// A crashed process's leftovers, which no process has open: not in use
	// (a fault trial: refused as in use until -force, after a full disk).
	for _, id := range []string{"acme", "globex"} {
		if err := os.WriteFile(filepath.Join(dir, id+".db-shm"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cli(t, nil, "delete", "-dir", dir, "-yes", "globex").want(t, exitOK)
	cli(t, nil, "restore", "-dir", dir, "acme", bfile).want(t, exitOK)
	if got := events(t, filepath.Join(dir, "acme.db")); !cmp.Equal(got, []string{"acme-0"}) {
		t.Errorf("restored acme: %v", got)
	}
	// The tenant file, and the mark that it was restored on purpose (it
	// becomes its replica's head when a service with replication opens it).
	if ents := entries(t, dir); !slices.Equal(ents, []string{".acme.db-restored", "acme.db"}) {
		t.Errorf("files: %v", ents)
	}
}

const holdOpenEnv = "SQLITEPROXY_CLI_TEST_HOLD_OPEN"

// holdOpen starts a process that opens the database at path and keeps it
// open until stop (or the test's end).
func holdOpen(t *testing.T, path string) (cmd *exec.Cmd, stop func() error) {
	t.Helper()
	return testkit.StartChild(t, "TestHoldOpenChild", holdOpenEnv+"="+path)
}

// TestHoldOpenChild is holdOpen's process.
func TestHoldOpenChild(t *testing.T) {
	p := os.Getenv(holdOpenEnv)
	if p == "" {
		t.Skip("holdOpen's process only")
	}
	testkit.HoldOpen("sqlite3", p)
}

// TestBackupPaths covers both ways backup copies a tenant: through the
// library's BackupTenant (a tenant whose ledger matches the tool's
// configuration: here none) and directly (a migrated tenant, which the
// library refuses in MigrateCheck mode without its migrations).
func TestBackupPaths(t *testing.T) {
	t.Parallel()
	dir := fleet(t, "", 0, "plain")
	withProxy(t, dir, "", func(p *sqliteproxy.Proxy) {
		if _, err := p.ExecContext(sqliteproxytest.Context(t, "plain"), `CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT); INSERT INTO events (type) VALUES ('p')`); err != nil {
			t.Fatal(err)
		}
	})
	mdir := migrationsDir(t, "0001_init.sql")
	withProxy(t, dir, mdir, func(p *sqliteproxy.Proxy) {
		if err := p.CreateTenant(context.Background(), "migrated"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.ExecContext(sqliteproxytest.Context(t, "migrated"), `INSERT INTO events (type) VALUES ('m')`); err != nil {
			t.Fatal(err)
		}
	})
	before := snapshot(t, dir)
	bdir := t.TempDir()
	for id, want := range map[string]string{"plain": "p", "migrated": "m"} {
		dst := filepath.Join(bdir, id+".db")
		cli(t, nil, "backup", "-dir", dir, id, dst).want(t, exitOK)
		if got := events(t, dst); !cmp.Equal(got, []string{want}) {
			t.Errorf("%s: backup has %v", id, got)
		}
		checkBackupFile(t, dst)
	}
	unchanged(t, dir, before)
	if ents, _ := os.ReadDir(bdir); len(ents) != 2 {
		t.Errorf("backup directory: %v (temporary files left?)", ents)
	}

	// A link at FILE is replaced, as by backup -all, also one into the
	// data directory (adv44: refused as "in the data directory"); a link
	// to a folder is a folder, with or without a trailing slash.
	lnk := filepath.Join(t.TempDir(), "plain.db")
	if err := os.Symlink(filepath.Join(dir, "plain.db"), lnk); err != nil {
		t.Fatal(err)
	}
	cli(t, nil, "backup", "-force", "-dir", dir, "plain", lnk).want(t, exitOK)
	if fi, err := os.Lstat(lnk); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("%s after the backup: %v, %v; want the backup in the link's place", lnk, fi, err)
	}
	unchanged(t, dir, before)
	folder := filepath.Join(t.TempDir(), "backups")
	if err := os.Symlink(bdir, folder); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{folder, folder + "/", filepath.Join(bdir, "2026-11-25") + "/"} {
		if r := cli(t, nil, "backup", "-force", "-dir", dir, "plain", dst).want(t, exitUsage); !strings.Contains(r.stderr, "directory") {
			t.Errorf("backup to %s: %q", dst, r.stderr)
		}
	}
	if fi, err := os.Lstat(folder); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("%s: %v, %v; want the link to the backup folder left alone", folder, fi, err)
	}
}

// checkBackupFile checks that a backup is a standalone database: rollback
// journal mode, no side files, healthy.
func checkBackupFile(t *testing.T, path string) {
	t.Helper()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, %v; want 0600 like tenant files", path, fi.Mode(), err)
	}
	for _, side := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(path + side); err == nil {
			t.Errorf("%s%s exists", path, side)
		}
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode, check string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "delete" {
		t.Errorf("%s: journal_mode %q, %v", path, mode, err)
	}
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("%s: integrity_check %q, %v", path, check, err)
	}
}

func TestBackupAll(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := fleet(t, mdir, 2, "acme", "globex", "initech")
	out := filepath.Join(t.TempDir(), "nightly", "2026-01-01") // created
	before := snapshot(t, dir)
	r := cli(t, nil, "backup", "-all", "-dir", dir, out).want(t, exitOK)
	if r.stdout != "backed up 3 of 3 tenants to "+out+"\n" || r.stderr != "" {
		t.Errorf("backup -all: %+v", r)
	}
	unchanged(t, dir, before)
	for _, id := range []string{"acme", "globex", "initech"} {
		if got := events(t, filepath.Join(out, id+".db")); !cmp.Equal(got, []string{id + "-0", id + "-1"}) {
			t.Errorf("%s: %v", id, got)
		}
	}
	// The backup directory is itself a data directory.
	if r := cli(t, nil, "tenants", "-dir", out).want(t, exitOK); r.stdout != "acme\nglobex\ninitech\n" {
		t.Errorf("tenants of the backup: %q", r.stdout)
	}

	// Existing files are kept without -force: every tenant fails.
	r = cli(t, nil, "backup", "-all", "-dir", dir, out).want(t, exitFailed)
	if strings.Count(r.stderr, "exists (use -force to overwrite)") != 3 {
		t.Errorf("backup -all again: %q", r.stderr)
	}
	cli(t, nil, "backup", "-all", "-force", "-dir", dir, out).want(t, exitOK)

	// A symbolic link at a backup's name is replaced, not written through
	// (adv43: acme's backup became globex's, and a file elsewhere was
	// overwritten and lost its -wal).
	elsewhere := filepath.Join(t.TempDir(), "app.db")
	if err := os.WriteFile(elsewhere, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	for id, target := range map[string]string{"acme": "globex.db", "initech": elsewhere} {
		if err := os.Remove(filepath.Join(out, id+".db")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(out, id+".db")); err != nil {
			t.Fatal(err)
		}
	}
	cli(t, nil, "backup", "-all", "-force", "-dir", dir, out).want(t, exitOK)
	for _, id := range []string{"acme", "globex", "initech"} {
		if got := events(t, filepath.Join(out, id+".db")); !cmp.Equal(got, []string{id + "-0", id + "-1"}) {
			t.Errorf("%s's backup over a link: %v", id, got)
		}
	}
	if b, err := os.ReadFile(elsewhere); err != nil || string(b) != "precious" {
		t.Errorf("a link's target outside the backup folder: %d bytes, %v; want it untouched", len(b), err)
	}

	// A corrupt tenant fails; the others are backed up.
	junk(t, dir, "broken")
	out2 := t.TempDir()
	r = cli(t, nil, "backup", "-all", "-dir", dir, out2).want(t, exitFailed)
	if r.stdout != "backed up 3 of 4 tenants to "+out2+"\n" || r.stderr != "sqliteproxy: backup broken: file is not a database\n" {
		t.Errorf("backup -all with a corrupt tenant: %+v", r)
	}
	if ents, _ := os.ReadDir(out2); len(ents) != 3 {
		t.Errorf("backups: %v", ents)
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	m1 := migrationsDir(t, "0001_init.sql")
	m2 := migrationsDir(t, "0001_init.sql", "0002_add.sql")
	dir := fleet(t, m1, 1, "acme", "globex")
	withProxy(t, dir, "", func(p *sqliteproxy.Proxy) {
		if err := p.CreateTenant(context.Background(), "bare"); err != nil { // no migrations at all
			t.Fatal(err)
		}
	})
	junk(t, dir, "x")
	before := snapshot(t, dir)

	// Dry run: lists, changes nothing; the corrupt tenant fails.
	r := cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-dry-run").want(t, exitFailed)
	wantOut := "acme: would apply 0002_add.sql\n" +
		"bare: would apply 0001_init.sql, 0002_add.sql\n" +
		"globex: would apply 0002_add.sql\n" +
		"dry run, nothing changed: 4 tenants: 3 to migrate (4 migrations), 0 up to date, 1 failed\n"
	if r.stdout != wantOut || r.stderr != "sqliteproxy: migrate x: file is not a database\n" {
		t.Errorf("dry run:\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	unchanged(t, dir, before)

	// The real thing, with the corrupt tenant: it fails, the others migrate.
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-concurrency", "2").want(t, exitFailed)
	if r.stdout != "4 tenants: 3 migrated (4 migrations applied), 0 up to date, 1 failed\n" || r.stderr != "sqliteproxy: migrate x: file is not a database\n" {
		t.Errorf("migrate:\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	withProxy(t, dir, m2, func(p *sqliteproxy.Proxy) {
		for _, id := range []string{"acme", "globex", "bare"} {
			st, err := p.MigrationStatus(context.Background(), id)
			if err != nil || len(st.Applied) != 2 || len(st.Pending) != 0 || st.Drift != nil {
				t.Errorf("%s after migrate: %+v, %v", id, st, err)
			}
		}
		if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (type, severity) VALUES ('new', 3)`); err != nil {
			t.Errorf("new column: %v", err)
		}
	})
	if got := events(t, filepath.Join(dir, "acme.db")); !cmp.Equal(got, []string{"acme-0", "new"}) {
		t.Errorf("acme's data: %v", got)
	}

	// Again: nothing to do; only named tenants; the corrupt one removed.
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2).want(t, exitFailed)
	if r.stdout != "4 tenants: 0 migrated (0 migrations applied), 3 up to date, 1 failed\n" {
		t.Errorf("second migrate: %q", r.stdout)
	}
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "acme", "globex").want(t, exitOK)
	if r.stdout != "2 tenants: 0 migrated (0 migrations applied), 2 up to date, 0 failed\n" || r.stderr != "" {
		t.Errorf("migrate acme globex: %+v", r)
	}
	// A named tenant that does not exist fails and is not created.
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "nosuch").want(t, exitFailed)
	if r.stderr != "sqliteproxy: migrate nosuch: no such tenant\n" {
		t.Errorf("migrate nosuch: %q", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "nosuch.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("nosuch.db created")
	}
	if err := os.Remove(filepath.Join(dir, "x.db")); err != nil {
		t.Fatal(err)
	}
	cli(t, nil, "migrate", "-dir", dir, "-migrations", m2).want(t, exitOK)

	// Drift: a migration edited after it was applied fails every tenant.
	edited := t.TempDir()
	os.WriteFile(filepath.Join(edited, "0001_init.sql"), []byte(initSQL+"-- edited\n"), 0o644)
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", edited).want(t, exitFailed)
	if strings.Count(r.stderr, "was edited after it was applied") != 3 {
		t.Errorf("drift: %q", r.stderr)
	}

	// An empty data directory.
	r = cli(t, nil, "migrate", "-dir", t.TempDir(), "-migrations", m2).want(t, exitOK)
	if r.stdout != "0 tenants: 0 migrated (0 migrations applied), 0 up to date, 0 failed\n" {
		t.Errorf("empty: %q", r.stdout)
	}
}

// statusRow is a row of the status table, with size and time checked and
// blanked.
func statusRows(t *testing.T, out string) [][]string {
	t.Helper()
	var rows [][]string
	sizeRE := regexp.MustCompile(`^(\d+ B|\d+\.\d [KMG]iB)$`)
	table, _, _ := strings.Cut(out, "\n\n") // the notes after it
	for i, line := range strings.Split(strings.TrimSuffix(table, "\n"), "\n") {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if i > 0 {
			if len(cells) != 5 {
				t.Fatalf("row %q has %d cells", line, len(cells))
			}
			if !sizeRE.MatchString(cells[3]) {
				t.Errorf("size %q", cells[3])
			}
			if _, err := time.ParseInLocation(time.DateTime, cells[4], time.Local); err != nil {
				t.Errorf("modified %q: %v", cells[4], err)
			}
			cells[3], cells[4] = "SIZE", "TIME"
		}
		rows = append(rows, cells)
	}
	return rows
}

func TestStatus(t *testing.T) {
	t.Parallel()
	m1 := migrationsDir(t, "0001_init.sql")
	m2 := migrationsDir(t, "0001_init.sql", "0002_add.sql")
	dir := fleet(t, m1, 50, "acme", "globex")
	cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "globex").want(t, exitOK)
	withProxy(t, dir, "", func(p *sqliteproxy.Proxy) {
		if err := p.CreateTenant(context.Background(), "bare"); err != nil {
			t.Fatal(err)
		}
	})
	before := snapshot(t, dir)

	r := cli(t, nil, "status", "-dir", dir, "-migrations", m2).want(t, exitOK)
	want := [][]string{
		{"TENANT", "VERSION", "PENDING", "SIZE", "MODIFIED"},
		{"acme", "1", "1: 0002_add.sql", "SIZE", "TIME"},
		{"bare", "0", "2: 0001_init.sql, 0002_add.sql", "SIZE", "TIME"},
		{"globex", "2", "0", "SIZE", "TIME"},
	}
	if diff := cmp.Diff(want, statusRows(t, r.stdout)); diff != "" || r.stderr != "" {
		t.Errorf("status (-want +got):\n%s\n%s%s", diff, r.stdout, r.stderr)
	}
	// Without -migrations, pending is unknown.
	r = cli(t, nil, "status", "-dir", dir).want(t, exitOK)
	want = [][]string{
		{"TENANT", "VERSION", "PENDING", "SIZE", "MODIFIED"},
		{"acme", "1", "?", "SIZE", "TIME"},
		{"bare", "0", "?", "SIZE", "TIME"},
		{"globex", "2", "?", "SIZE", "TIME"},
	}
	if diff := cmp.Diff(want, statusRows(t, r.stdout)); diff != "" {
		t.Errorf("status without -migrations (-want +got):\n%s", diff)
	}

	// JSON, one tenant; compared structurally.
	r = cli(t, nil, "status", "-dir", dir, "-migrations", m2, "-json", "acme").want(t, exitOK)
	var got []tenantStatus
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	one := 1
	wantJSON := []tenantStatus{{
		Tenant:  "acme",
		Version: &one,
		Applied: []appliedStatus{{Version: 1, Name: "0001_init.sql"}},
		Pending: []string{"0002_add.sql"},
	}}
	opts := cmp.Options{
		cmpopts.IgnoreUnexported(tenantStatus{}),
		cmpopts.IgnoreFields(tenantStatus{}, "SizeBytes", "Modified"),
		cmpopts.IgnoreFields(appliedStatus{}, "Checksum", "AppliedAt"),
	}
	if diff := cmp.Diff(wantJSON, got, opts); diff != "" {
		t.Errorf("status -json acme (-want +got):\n%s", diff)
	}
	// Size includes the -wal file; modified is the file's.
	fi, _ := os.Stat(filepath.Join(dir, "acme.db"))
	if got[0].SizeBytes != fi.Size() || !got[0].Modified.Equal(fi.ModTime()) {
		t.Errorf("size %d modified %v, file has %d %v", got[0].SizeBytes, got[0].Modified, fi.Size(), fi.ModTime())
	}
	a := got[0].Applied[0]
	if len(a.Checksum) != 64 || time.Since(a.AppliedAt) > time.Hour {
		t.Errorf("applied: %+v", a)
	}
	unchanged(t, dir, before)

	// A corrupt tenant: listed, reported, exit 1.
	junk(t, dir, "x")
	r = cli(t, nil, "status", "-dir", dir, "-migrations", m2).want(t, exitFailed)
	rows := statusRows(t, r.stdout)
	if diff := cmp.Diff([]string{"x", "?", "?", "SIZE", "TIME"}, rows[len(rows)-1]); diff != "" || r.stderr != "sqliteproxy: status x: file is not a database\n" {
		t.Errorf("corrupt tenant (-want +got):\n%s\nstderr: %q", diff, r.stderr)
	}
	r = cli(t, nil, "status", "-dir", dir, "-json", "x").want(t, exitFailed)
	if !strings.Contains(r.stdout, `"error": "file is not a database"`) {
		t.Errorf("json: %s", r.stdout)
	}
	// A missing tenant: exit 1, nothing created.
	r = cli(t, nil, "status", "-dir", dir, "nosuch").want(t, exitFailed)
	if r.stderr != "sqliteproxy: status nosuch: no such tenant\n" || r.stdout != "" {
		t.Errorf("status nosuch: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "nosuch.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("nosuch.db created")
	}
	// Drift is a failure.
	r = cli(t, nil, "status", "-dir", dir, "-migrations", migrationsDir(t, "0002_add.sql"), "globex").want(t, exitFailed)
	if rows := statusRows(t, r.stdout); rows[1][2] != "drift" || !strings.Contains(r.stderr, "applied migration differs") {
		t.Errorf("drift: %q %q", r.stdout, r.stderr)
	}
}

// downsDir is a migrations directory with 0001_init.sql, 0002_add.sql and
// their down files.
func downsDir(t *testing.T) string {
	t.Helper()
	dir := migrationsDir(t, "0001_init.sql", "0002_add.sql")
	for name, sql := range map[string]string{
		"0001_init.down.sql": "DROP TABLE events;\n",
		"0002_add.down.sql":  "ALTER TABLE events DROP COLUMN severity;\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// migrate -down-to: a dry run, a subset, a rerun, missing down files, a
// version out of range; status then shows tenants behind and ahead.
func TestMigrateDownTo(t *testing.T) {
	t.Parallel()
	m2 := downsDir(t)
	dir := fleet(t, m2, 2, "acme", "globex", "initech")
	junk(t, dir, "x")
	before := snapshot(t, dir)

	// A version beyond the migrations is a usage error, said once, before
	// any tenant is looked at.
	r := cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-down-to", "5", "-dry-run").want(t, exitUsage)
	if !strings.Contains(r.stderr, "-down-to 5: version 5 to roll back to is not between 0 and 2") || strings.Contains(r.stderr, "rollback: rollback") || r.stdout != "" {
		t.Errorf("-down-to 5 of 2: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	unchanged(t, dir, before)

	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-down-to", "1", "-dry-run").want(t, exitFailed)
	wantOut := "acme: would run 0002_add.down.sql\n" +
		"globex: would run 0002_add.down.sql\n" +
		"initech: would run 0002_add.down.sql\n" +
		"dry run, nothing changed: 4 tenants: 3 to roll back to version 1 (3 down migrations), 0 at or below it, 1 failed\n"
	if r.stdout != wantOut || r.stderr != "sqliteproxy: rollback x: file is not a database\n" {
		t.Errorf("dry run:\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	unchanged(t, dir, before)
	if err := os.Remove(filepath.Join(dir, "x.db")); err != nil {
		t.Fatal(err)
	}

	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-down-to", "1", "globex", "acme").want(t, exitOK)
	if r.stdout != "2 tenants: 2 rolled back to version 1 (2 down migrations run), 0 at or below it, 0 failed\n" || r.stderr != "" {
		t.Errorf("rollback acme globex: %+v", r)
	}
	if got := events(t, filepath.Join(dir, "acme.db")); !cmp.Equal(got, []string{"acme-0", "acme-1"}) {
		t.Errorf("acme's data: %v", got)
	}
	r = cli(t, nil, "status", "-dir", dir, "-migrations", m2).want(t, exitOK)
	want := [][]string{
		{"TENANT", "VERSION", "PENDING", "SIZE", "MODIFIED"},
		{"acme", "1", "1: 0002_add.sql", "SIZE", "TIME"},
		{"globex", "1", "1: 0002_add.sql", "SIZE", "TIME"},
		{"initech", "2", "0", "SIZE", "TIME"},
	}
	if diff := cmp.Diff(want, statusRows(t, r.stdout)); diff != "" {
		t.Errorf("status after rollback (-want +got):\n%s", diff)
	}
	if !strings.Contains(r.stdout, "\n\n2 tenants behind "+m2+": a service with these migrations in migration_mode=auto applies the pending ones") {
		t.Errorf("status does not say what auto mode does with tenants behind:\n%s", r.stdout)
	}

	// All of them: the rest; then nothing left.
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-down-to", "1").want(t, exitOK)
	if r.stdout != "3 tenants: 1 rolled back to version 1 (1 down migration run), 2 at or below it, 0 failed\n" {
		t.Errorf("rollback all: %q", r.stdout)
	}
	// Without down files: every tenant fails, naming the file; nothing
	// changes (but the -shm index that reading acme's file with events
	// left behind: every reader marks it).
	withoutShm := func() map[string]string {
		m := snapshot(t, dir)
		delete(m, "acme.db-shm")
		return m
	}
	before = withoutShm()
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", migrationsDir(t, "0001_init.sql", "0002_add.sql"), "-down-to", "0").want(t, exitFailed)
	if strings.Count(r.stderr, "no down migration: version 1 to 0 needs 0001_init.down.sql") != 3 ||
		r.stdout != "3 tenants: 0 rolled back to version 0 (0 down migrations run), 0 at or below it, 3 failed\n" {
		t.Errorf("missing down files: %+v", r)
	}
	if diff := cmp.Diff(before, withoutShm()); diff != "" {
		t.Errorf("missing down files changed files:\n%s", diff)
	}
	// Beyond the migrations: a usage error.
	r = cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "-down-to", "3").want(t, exitUsage)
	if !strings.Contains(r.stderr, "not between 0 and 2") {
		t.Errorf("-down-to 3: %q", r.stderr)
	}
	if diff := cmp.Diff(before, withoutShm()); diff != "" {
		t.Errorf("-down-to 3 changed files:\n%s", diff)
	}

	// Ahead: acme migrated with m2, looked at with only 0001.
	cli(t, nil, "migrate", "-dir", dir, "-migrations", m2, "acme").want(t, exitOK)
	m1 := migrationsDir(t, "0001_init.sql")
	r = cli(t, nil, "status", "-dir", dir, "-migrations", m1).want(t, exitFailed)
	if rows := statusRows(t, r.stdout); rows[1][2] != "ahead 1" || !strings.Contains(r.stdout, "\n\n1 tenant ahead of "+m1) {
		t.Errorf("ahead: %q %q", r.stdout, r.stderr)
	}
	r = cli(t, nil, "status", "-dir", dir, "-migrations", m1, "-json", "acme").want(t, exitFailed)
	if !strings.Contains(r.stdout, `"ahead": 1`) {
		t.Errorf("ahead, json: %s", r.stdout)
	}
}

func TestDiskUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "a.db")
	os.WriteFile(path, make([]byte, 4096), 0o600)
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(path, old, old)
	fi, _ := os.Stat(path)
	if size, mod := diskUsage(fi, path); size != 4096 || !mod.Equal(old) {
		t.Errorf("without -wal: %d %v", size, mod)
	}
	os.WriteFile(path+"-wal", make([]byte, 1000), 0o600)
	os.WriteFile(path+"-shm", make([]byte, 32768), 0o600) // not counted: an index, rebuilt from the WAL
	wfi, _ := os.Stat(path + "-wal")
	if size, mod := diskUsage(fi, path); size != 5096 || !mod.Equal(wfi.ModTime()) {
		t.Errorf("with -wal: %d %v", size, mod)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 20, "acme", "globex")
	before := snapshot(t, dir)
	r := cli(t, nil, "check", "-dir", dir).want(t, exitOK)
	if r.stdout != "2 tenants checked: 2 ok, 0 failed\n" || r.stderr != "" {
		t.Errorf("check: %+v", r)
	}
	r = cli(t, nil, "check", "-dir", dir, "acme").want(t, exitOK)
	if r.stdout != "acme: ok\n" || r.stderr != "" {
		t.Errorf("check acme: %+v", r)
	}
	unchanged(t, dir, before) // no -wal or -shm left, nothing written

	// A file that is not a database.
	junk(t, dir, "x")
	r = cli(t, nil, "check", "-dir", dir).want(t, exitFailed)
	if r.stdout != "3 tenants checked: 2 ok, 1 failed\n" || r.stderr != "sqliteproxy: check x: file is not a database\n" {
		t.Errorf("check with junk: %+v", r)
	}
	r = cli(t, nil, "check", "-dir", dir, "x").want(t, exitFailed)
	if r.stdout != "" || r.stderr != "sqliteproxy: check x: file is not a database\n" {
		t.Errorf("check x: %+v", r)
	}

	// A database whose index disagrees with its table: integrity_check
	// returns rows rather than an error.
	broken := filepath.Join(dir, "broken.db")
	db, err := sql.Open("sqlite3", "file:"+broken)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE t (a, b)`,
		`CREATE INDEX t_a ON t (a)`,
		`INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)`,
		`PRAGMA writable_schema = ON`,
		`UPDATE sqlite_schema SET sql = 'CREATE INDEX t_a ON t (b)' WHERE name = 't_a'`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	r = cli(t, nil, "check", "-dir", dir, "broken").want(t, exitFailed)
	if !strings.HasPrefix(r.stderr, "sqliteproxy: check broken: integrity_check found ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("check broken: %q", r.stderr)
	}
	r = cli(t, nil, "check", "-dir", dir).want(t, exitFailed)
	if r.stdout != "4 tenants checked: 2 ok, 2 failed\n" || strings.Count(r.stderr, "\n") != 2 {
		t.Errorf("check all: %+v", r)
	}

	// A missing tenant.
	r = cli(t, nil, "check", "-dir", dir, "nosuch").want(t, exitFailed)
	if r.stderr != "sqliteproxy: check nosuch: no such tenant\n" {
		t.Errorf("check nosuch: %q", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "nosuch.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("nosuch.db created")
	}
}

// TestProgress: fleet-wide commands draw a bar on a terminal, and print
// nothing on stderr otherwise.
func TestProgress(t *testing.T) {
	// Serial: it sets the package's isTerminal, which every run reads.
	m2 := downsDir(t)
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 0, "acme", "globex", "initech")
	fleetCmds := func() [][]string {
		return [][]string{
			{"migrate", "-dir", dir, "-migrations", m2, "-dry-run"},
			{"migrate", "-dir", dir, "-migrations", m2, "-dry-run", "-down-to", "1"},
			{"backup", "-dir", dir, "-all", filepath.Join(t.TempDir(), "b")},
			{"check", "-dir", dir},
			{"status", "-dir", dir},
			{"migrate", "-dir", dir, "-migrations", m2},
		}
	}
	for _, args := range fleetCmds() {
		if r := cli(t, nil, args...).want(t, exitOK); r.stderr != "" {
			t.Errorf("%v, not a terminal: stderr %q", args, r.stderr)
		}
	}

	orig := isTerminal
	t.Cleanup(func() { isTerminal = orig })
	isTerminal = func(v any) bool { _, ok := v.(*bytes.Buffer); return ok }
	for _, args := range fleetCmds() {
		r := cli(t, nil, args...).want(t, exitOK)
		// The bar starts at 0/3 and is cleared when done (updates within
		// 100ms of each other are not drawn).
		if !strings.Contains(r.stderr, args[0]) || !strings.Contains(r.stderr, "(0/3)") || !strings.HasSuffix(r.stderr, "\r") {
			t.Errorf("%v on a terminal: stderr %q", args, r.stderr)
		}
		if strings.Contains(r.stdout, "\r") {
			t.Errorf("%v: bar on stdout", args)
		}
	}
	// Single-tenant commands draw none.
	for _, args := range [][]string{{"check", "-dir", dir, "acme"}, {"status", "-dir", dir, "acme"}, {"tenants", "-dir", dir}} {
		if r := cli(t, nil, args...).want(t, exitOK); r.stderr != "" {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
}

// TestReplicas lists a file:// replica without Litestream: a tenant's
// replica is a directory named by its ID.
func TestReplicas(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	url := "file://" + root
	if r := cli(t, nil, "replicas", "-replica", url).want(t, exitOK); r.stdout != "" || r.stderr != "" { // empty
		t.Errorf("an empty replica: %+v", r)
	}
	// A missing folder is a mistyped path, not an empty replica (it printed
	// nothing and exited 0).
	for _, args := range [][]string{
		{"replicas", "-replica", url + "/nothing-here"},
		{"replicas", "-replica", "file://" + root + "/../" + "x"}, // not clean
	} {
		if r := cli(t, nil, args...).want(t, exitUsage); r.stdout != "" || !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("%v: %+v", args, r)
		}
	}
	if r := cli(t, nil, "replicas", "-json", "-replica", url).want(t, exitOK); r.stdout != "[]\n" {
		t.Errorf("replicas -json of an empty replica: %q", r.stdout)
	}
	// Tenants are directories with valid IDs that hold a file; the rest
	// (an empty folder too: an erased replica's) is not listed.
	for _, name := range []string{"globex/", "acme/", "acme-corp/", "UPPER/", ".hidden/", "file.db", "empty/"} {
		path := filepath.Join(root, name)
		var err error
		if strings.HasSuffix(name, "/") {
			err = os.MkdirAll(filepath.Join(path, "ltx", "0"), 0o700)
			if err == nil && name != "empty/" {
				err = os.WriteFile(filepath.Join(path, "ltx", "0", "0000000000000001-0000000000000001.ltx"), nil, 0o600)
			}
		} else {
			err = os.WriteFile(path, nil, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if r := cli(t, nil, "replicas", "-replica", url).want(t, exitOK); r.stdout != "acme\nacme-corp\nglobex\n" || r.stderr != "" {
		t.Errorf("replicas: %+v", r)
	}
	if r := cli(t, nil, "replicas", "-replica", url+"/", "-json").want(t, exitOK); r.stdout != `["acme","acme-corp","globex"]`+"\n" {
		t.Errorf("replicas -json: %q", r.stdout)
	}
	// Listing fails: exit 1, one line.
	for _, tc := range []struct{ url, want string }{
		{"file://" + filepath.Join(root, "file.db"), "sqliteproxy: replicas: list replica tenants: open " + filepath.Join(root, "file.db") + ": not a directory\n"},
		{"gs://bucket/tenants", "sqliteproxy: replicas: list replica tenants: gs: not supported for this kind of replica\n"},
		{"ftp://host/x", `sqliteproxy: replicas: list replica tenants: "ftp://host/x": scheme "ftp" is not one Litestream v0.5 knows` + "\n"},
	} {
		if r := cli(t, nil, "replicas", "-replica", tc.url).want(t, exitFailed); r.stderr != tc.want || r.stdout != "" {
			t.Errorf("replicas -replica %s: stderr %q, want %q", tc.url, r.stderr, tc.want)
		}
	}
}

// TestReplicasS3NoCredentials: an s3:// replica without credentials in
// the environment fails, saying so.
func TestReplicasS3NoCredentials(t *testing.T) {
	// Serial: it changes the environment.
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"} {
		t.Setenv(k, "")
	}
	r := cli(t, nil, "replicas", "-replica", "s3://bucket/tenants?endpoint=http%3A%2F%2F127.0.0.1%3A1").want(t, exitFailed)
	if r.stderr != "sqliteproxy: replicas: list replica tenants: no S3 credentials in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)\n" {
		t.Errorf("stderr %q", r.stderr)
	}
}

// TestRestoreReplicaNoLitestream: restore -replica needs the litestream
// binary; a missing one fails before anything changes.
func TestRestoreReplicaNoLitestream(t *testing.T) {
	// Serial: it changes PATH.
	dir := fleet(t, "", 0, "acme")
	before := snapshot(t, dir)
	url := "file://" + t.TempDir()
	missing := filepath.Join(t.TempDir(), "litestream")
	r := cli(t, nil, "restore", "-dir", dir, "-replica", url, "-litestream", missing, "acme").want(t, exitUsage)
	if r.stderr != "sqliteproxy: restore: -litestream "+missing+": stat "+missing+": no such file or directory\n" {
		t.Errorf("-litestream missing: %q", r.stderr)
	}
	t.Setenv("PATH", t.TempDir())
	r = cli(t, nil, "restore", "-dir", dir, "-replica", url, "acme").want(t, exitFailed)
	if r.stderr != "sqliteproxy: restore: litestream not found on PATH: install Litestream v0.5, or name its binary with -litestream PATH\n" {
		t.Errorf("no litestream on PATH: %q", r.stderr)
	}
	unchanged(t, dir, before)
}

// fakeLTX makes empty files named as Litestream v0.5 names its LTX files
// (<min txid>-<max txid>.ltx, 16 hex digits each) under dir/ltx/<level>:
// what ReplicaPositions reads, beside a tenant's file and in a file://
// replica, to tell how far each is.
func fakeLTX(t *testing.T, dir string, level int, maxTXID uint64) {
	t.Helper()
	d := filepath.Join(dir, "ltx", strconv.Itoa(level))
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%016x-%016x.ltx", uint64(1), maxTXID)
	if err := os.WriteFile(filepath.Join(d, name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStatusReplica: status -replica adds each tenant's replication
// position, from Litestream's files beside the tenant's file and in its
// replica (faked here: no Litestream runs).
func TestStatusReplica(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme", "backco", "globex", "initech", "newco", "plainco", "restco")
	root := t.TempDir()
	url := "file://" + root
	// acme: in sync at 7; globex: 3 not uploaded yet; initech: written
	// elsewhere (2 more in the replica); newco: never replicated; plainco:
	// never streamed, beside a replica of its own; restco: restored here
	// (an empty marker counts), the replica ahead. deadco: deleted here
	// with its replica not erased (DeleteTenant with the store down: the
	// marker, no file); backco: the same, and made again here since.
	for _, id := range []string{"deadco", "backco"} {
		if err := os.WriteFile(filepath.Join(dir, "."+id+".db-deleted"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fakeLTX(t, filepath.Join(root, "deadco"), 0, 4)
	fakeLTX(t, filepath.Join(root, "backco"), 0, 2)
	fakeLTX(t, filepath.Join(root, "plainco"), 0, 3)
	fakeLTX(t, filepath.Join(root, "restco"), 0, 5)
	if err := os.WriteFile(filepath.Join(dir, ".restco.db-restored"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fakeLTX(t, filepath.Join(dir, ".acme.db-litestream"), 0, 7)
	fakeLTX(t, filepath.Join(root, "acme"), 0, 7)
	fakeLTX(t, filepath.Join(root, "acme"), 1, 5)
	fakeLTX(t, filepath.Join(dir, ".globex.db-litestream"), 0, 9)
	fakeLTX(t, filepath.Join(root, "globex"), 0, 6)
	fakeLTX(t, filepath.Join(dir, ".initech.db-litestream"), 0, 4)
	fakeLTX(t, filepath.Join(root, "initech"), 9, 6)
	before := snapshot(t, dir)

	r := cli(t, nil, "status", "-dir", dir, "-replica", url).want(t, exitOK)
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if len(cells) != 6 {
			t.Fatalf("row %q has %d cells", line, len(cells))
		}
		rows = append(rows, []string{cells[0], cells[5]})
	}
	want := [][]string{
		{"TENANT", "REPLICA"},
		{"acme", "in sync (txid 7)"},
		{"backco", "deleted here before this file was made, its replica (txid 2) not erased yet: erased before the service streams this file"},
		{"globex", "behind by 3"},
		{"initech", "ahead by 2 (written elsewhere)"},
		{"newco", "not replicated"},
		{"plainco", "never streamed, the replica holds another copy (txid 3): refused until one is chosen"},
		{"restco", "restored here (becomes the replica's head when the service opens it)"},
		{"deadco", "deleted here, its replica (txid 4) not erased yet: erased at the tenant's next access by the service, or by delete again; until then the tenant is not made again"},
	}
	if diff := cmp.Diff(want, rows); diff != "" || r.stderr != "" {
		t.Errorf("status -replica (-want +got):\n%s\n%s%s", diff, r.stdout, r.stderr)
	}
	// Without -replica, nothing about replicas.
	r = cli(t, nil, "status", "-dir", dir, "-json", "acme").want(t, exitOK)
	if strings.Contains(r.stdout, "replica") {
		t.Errorf("status -json without -replica: %s", r.stdout)
	}

	r = cli(t, nil, "status", "-dir", dir, "-replica", url, "-json").want(t, exitOK)
	var got []tenantStatus
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	type pos struct {
		Local, Replica uint64
		State          string
	}
	var gotPos []pos
	for _, ts := range got {
		if ts.ReplicaLocalTXID == nil || ts.ReplicaTXID == nil {
			t.Fatalf("%s: no positions: %s", ts.Tenant, r.stdout)
		}
		gotPos = append(gotPos, pos{*ts.ReplicaLocalTXID, *ts.ReplicaTXID, ts.ReplicaState})
	}
	if diff := cmp.Diff([]pos{{7, 7, "in_sync"}, {0, 2, "delete_pending"}, {9, 6, "behind"}, {4, 6, "ahead"}, {0, 0, "none"}, {0, 3, "conflict"}, {0, 5, "restored"}, {0, 4, "delete_pending"}}, gotPos); diff != "" {
		t.Errorf("status -replica -json (-want +got):\n%s", diff)
	}
	if !strings.Contains(r.stdout, `"replica_local_txid": 7,`) || !strings.Contains(r.stdout, `"replica_state": "in_sync"`) {
		t.Errorf("JSON field names:\n%s", r.stdout)
	}
	unchanged(t, dir, before)
	// Named, the pending delete with no file is found with -replica only.
	r = cli(t, nil, "status", "-dir", dir, "-replica", url, "deadco").want(t, exitOK)
	if !strings.Contains(r.stdout, "deleted here, its replica (txid 4) not erased yet") {
		t.Errorf("status -replica deadco:\n%s", r.stdout)
	}
	cli(t, nil, "status", "-dir", dir, "deadco").want(t, exitFailed)

	// A replica that cannot be read: the tenant is reported, exit 1.
	r = cli(t, nil, "status", "-dir", dir, "-replica", "gs://bucket/x", "acme").want(t, exitFailed)
	if r.stderr != "sqliteproxy: status acme: replica: not supported for this kind of replica\n" || !strings.HasSuffix(strings.TrimSpace(r.stdout), "?") {
		t.Errorf("unreadable replica: %+v", r)
	}
	r = cli(t, nil, "status", "-dir", dir, "-replica", "gs://bucket/x", "-json", "acme").want(t, exitFailed)
	if !strings.Contains(r.stdout, `"replica_error": "replica: not supported for this kind of replica"`) || strings.Contains(r.stdout, `"error"`) {
		t.Errorf("unreadable replica, JSON: %s", r.stdout)
	}
	// And a tenant that fails both ways: one line with both.
	junk(t, dir, "x")
	r = cli(t, nil, "status", "-dir", dir, "-replica", "gs://bucket/x", "x").want(t, exitFailed)
	if r.stderr != "sqliteproxy: status x: file is not a database; replica: not supported for this kind of replica\n" {
		t.Errorf("two failures: %q", r.stderr)
	}
}

// TestStrays: entries named as tenant files that are not regular files (a
// symbolic link to another tenant's file, a directory) are no tenants, so
// listings pass over them; check and backup -all report each one as a
// failure instead of leaving an operator to miss it, in both layouts.
func TestStrays(t *testing.T) {
	t.Parallel()
	for _, layout := range []string{"flat", "buckets"} {
		t.Run("layout="+layout, func(t *testing.T) {
			t.Parallel()
			mdir := migrationsDir(t, "0001_init.sql")
			dir := t.TempDir()
			var linkPath, dirPath string
			withProxyLayout(t, dir, mdir, layout, func(p *sqliteproxy.Proxy) {
				if err := p.CreateTenant(context.Background(), "acme"); err != nil {
					t.Fatal(err)
				}
				acme, _ := p.TenantPath("acme")
				linkPath, _ = p.TenantPath("evil")
				dirPath, _ = p.TenantPath("odd")
				for _, path := range []string{linkPath, dirPath} {
					if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Symlink(acme, linkPath); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(dirPath, 0o700); err != nil {
					t.Fatal(err)
				}
			})
			args := []string{"-dir", dir, "-layout", layout}
			if r := cli(t, nil, append([]string{"tenants"}, args...)...).want(t, exitOK); r.stdout != "acme\n" {
				t.Errorf("tenants: %q", r.stdout)
			}
			out := wantStrays(t, args, "sqliteproxy: check evil: evil.db is a symbolic link, not a regular file: no tenant is read from it\n"+
				"sqliteproxy: check odd: odd.db is a directory, not a regular file: no tenant is read from it\n")
			if ents, _ := os.ReadDir(out); len(ents) != 1 || ents[0].Name() != "acme.db" {
				t.Errorf("backups: %v", ents)
			}
		})
	}
}

// TestStrays_WrongBucket: a tenant's file copied by hand into a bucket that
// is not its own is read by nothing (the service would create the tenant
// anew where the layout puts it): check and backup -all report it as a
// failure, named by its path, whether or not the tenant also exists.
func TestStrays_WrongBucket(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	dir := t.TempDir()
	var strayRel, wantRel, copyRel, acmeRel string
	withProxyLayout(t, dir, mdir, "buckets", func(p *sqliteproxy.Proxy) {
		for _, id := range []string{"acme", "globex"} {
			if err := p.CreateTenant(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}
		acme, _ := p.TenantPath("acme")
		globex, _ := p.TenantPath("globex")
		if filepath.Dir(acme) == filepath.Dir(globex) {
			t.Fatal("acme and globex share a bucket: pick other IDs")
		}
		// globex's file copied next to acme's, and moved out of its own
		// bucket: globex is then missing, and its data in the wrong place.
		stray := filepath.Join(filepath.Dir(acme), "globex.db")
		if err := os.Rename(globex, stray); err != nil {
			t.Fatal(err)
		}
		strayRel, _ = filepath.Rel(dir, stray)
		wantRel, _ = filepath.Rel(dir, globex)
		// And a copy of acme's in globex's bucket, acme itself in place.
		b, err := os.ReadFile(acme)
		if err != nil {
			t.Fatal(err)
		}
		copyPath := filepath.Join(filepath.Dir(globex), "acme.db")
		if err := os.WriteFile(copyPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
		copyRel, _ = filepath.Rel(dir, copyPath)
		acmeRel, _ = filepath.Rel(dir, acme)
	})
	args := []string{"-dir", dir, "-layout", "buckets"}
	if r := cli(t, nil, append([]string{"tenants"}, args...)...).want(t, exitOK); r.stdout != "acme\n" {
		t.Errorf("tenants: %q", r.stdout)
	}
	lines := []string{
		"sqliteproxy: check " + strayRel + ": tenant globex's file is in the wrong bucket: no tenant is read from it (the layout puts it at " + wantRel + ")\n",
		"sqliteproxy: check " + copyRel + ": tenant acme's file is in the wrong bucket: no tenant is read from it (the layout puts it at " + acmeRel + ")\n",
	}
	slices.Sort(lines) // reported in the order of their keys
	wantStrays(t, args, strings.Join(lines, ""))
	// Asked for by name, globex is not found where the layout reads it,
	// and the answer says where its file is (it said "no such tenant").
	for _, cmd := range []string{"check", "status", "backup"} {
		cargs := append([]string{cmd}, args...)
		if cmd == "backup" {
			cargs = append(cargs, "globex", filepath.Join(t.TempDir(), "globex.db"))
		} else {
			cargs = append(cargs, "globex")
		}
		r := cli(t, nil, cargs...).want(t, exitFailed)
		want := "sqliteproxy: " + cmd + " globex: no such tenant here; a file of it is at " + strayRel + ", where the layout (buckets) does not read it: move it to " + wantRel + "\n"
		if r.stderr != want {
			t.Errorf("%s globex: stderr %q, want %q", cmd, r.stderr, want)
		}
	}
}

// wantStrays runs check and backup -all on the data directory of args,
// which holds one healthy tenant and two strays, and wants want on check's
// stderr (and the same, said by backup, on backup's). It returns the
// directory backup -all wrote to.
func wantStrays(t *testing.T, args []string, want string) (out string) {
	t.Helper()
	r := cli(t, nil, append([]string{"check"}, args...)...).want(t, exitFailed)
	if r.stdout != "3 tenants checked: 1 ok, 2 failed\n" || r.stderr != want {
		t.Errorf("check: %+v", r)
	}
	out = t.TempDir()
	r = cli(t, nil, append(append([]string{"backup", "-all"}, args...), out)...).want(t, exitFailed)
	if r.stdout != "backed up 1 of 3 tenants to "+out+"\n" || r.stderr != strings.ReplaceAll(want, "check", "backup") {
		t.Errorf("backup -all: %+v", r)
	}
	return out
}

// TestBackupDotDotThroughLinkRefused: a destination spelled through a
// symlink to a bucket folder and then ".." is, for the system, in the data
// directory; backup checked the lexically cleaned path (outside) and, with
// -force, wrote t1's rows over tenant t2's file (adv30). -all likewise.
func TestBackupDotDotThroughLinkRefused(t *testing.T) {
	t.Parallel()
	dir, bk := t.TempDir(), t.TempDir()
	withProxyLayout(t, dir, migrationsDir(t, "0001_init.sql"), "buckets", func(p *sqliteproxy.Proxy) {
		for _, id := range []string{"t1", "t2"} {
			if _, err := p.ExecContext(sqliteproxytest.Context(t, id), `INSERT INTO events (type) VALUES (?)`, id); err != nil {
				t.Fatal(err)
			}
		}
	})
	t1, err := filepath.Glob(filepath.Join(dir, "*", "t1.db"))
	if err != nil || len(t1) != 1 {
		t.Fatalf("t1's file: %v %v", t1, err)
	}
	t2, err := filepath.Glob(filepath.Join(dir, "*", "t2.db"))
	if err != nil || len(t2) != 1 {
		t.Fatalf("t2's file: %v %v", t2, err)
	}
	b2 := filepath.Base(filepath.Dir(t2[0]))
	if err := os.Symlink(filepath.Dir(t1[0]), filepath.Join(bk, "lnk")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(bk, b2), 0o700); err != nil { // the lexical parent exists
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	dst := filepath.Join(bk, "lnk") + "/../" + b2 + "/t2.db"
	r := cli(t, nil, "backup", "-dir", dir, "-force", "t1", dst).want(t, exitUsage)
	if !strings.Contains(r.stderr, "is in the data directory") {
		t.Errorf("backup to %s: %q", dst, r.stderr)
	}
	r = cli(t, nil, "backup", "-dir", dir, "-all", filepath.Join(bk, "lnk")+"/..").want(t, exitUsage)
	if !strings.Contains(r.stderr, "is in the data directory") {
		t.Errorf("backup -all into lnk/..: %q", r.stderr)
	}
	unchanged(t, dir, before)
}
