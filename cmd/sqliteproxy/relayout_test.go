package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// bucketPath is where the bucketed layout keeps tenant id's file: the
// bucket is the first byte of SHA-256(id) in hex (`printf %s ID | sha256sum`).
func bucketPath(dir, id string) string {
	return filepath.Join(dir, map[string]string{"acme": "82", "globex": "5b", "initech": "4c"}[id], id+".db")
}

func TestRelayoutCommand(t *testing.T) {
	t.Parallel()
	mdir := migrationsDir(t, "0001_init.sql")
	ids := []string{"acme", "globex", "initech"}
	dir := fleet(t, mdir, 2, ids...)

	cli(t, nil, "relayout", "-dir", dir).want(t, exitUsage)
	cli(t, nil, "relayout", "-dir", dir, "-to", "nested").want(t, exitUsage)
	cli(t, nil, "relayout", "-dir", filepath.Join(dir, "missing"), "-to", "buckets").want(t, exitUsage)
	if r := cli(t, nil, "tenants", "-dir", dir, "-layout", "buckets").want(t, exitFailed); !strings.Contains(r.stderr, "flat layout") {
		t.Errorf("-layout buckets on a flat directory: %q", r.stderr)
	}
	cli(t, nil, "tenants", "-dir", dir, "-layout", "round").want(t, exitUsage)

	r := cli(t, nil, "relayout", "-dir", dir, "-to", "buckets").want(t, exitOK)
	if r.stdout != "moved 3 tenants; "+dir+" is in the buckets layout\n" {
		t.Errorf("relayout: %q", r.stdout)
	}
	for _, id := range ids {
		if got := events(t, bucketPath(dir, id)); !cmp.Equal(got, []string{id + "-0", id + "-1"}) {
			t.Errorf("%s after relayout: %v", id, got)
		}
	}
	// Every command finds the tenants (-layout auto), in bucket order.
	if r := cli(t, nil, "tenants", "-dir", dir).want(t, exitOK); r.stdout != "initech\nglobex\nacme\n" {
		t.Errorf("tenants: %q", r.stdout)
	}
	if r := cli(t, nil, "tenants", "-dir", dir, "-json", "-layout", "buckets").want(t, exitOK); r.stdout != `["initech","globex","acme"]`+"\n" {
		t.Errorf("tenants -json: %q", r.stdout)
	}
	if r := cli(t, nil, "tenants", "-dir", dir, "-layout", "flat").want(t, exitFailed); !strings.Contains(r.stderr, "buckets layout") {
		t.Errorf("-layout flat on a bucketed directory: %q", r.stderr)
	}
	out := t.TempDir()
	cli(t, nil, "backup", "-all", "-dir", dir, out).want(t, exitOK)
	for _, id := range ids {
		if got := events(t, filepath.Join(out, id+".db")); len(got) != 2 {
			t.Errorf("backup of %s: %v", id, got)
		}
	}
	if r := cli(t, nil, "query", "-dir", dir, `SELECT count(*) AS n FROM events`).want(t, exitOK); r.stdout != "tenant   n\nacme     2\nglobex   2\ninitech  2\n" {
		t.Errorf("query: %q", r.stdout)
	}
	if r := cli(t, nil, "query", "-dir", dir, "-layout", "flat", `SELECT 1`).want(t, exitFailed); !strings.Contains(r.stderr, "buckets layout") {
		t.Errorf("query -layout flat on a bucketed directory: %q", r.stderr)
	}
	// A backup into a bucket would be a tenant: refused, nothing written.
	before := snapshot(t, dir)
	cli(t, nil, "backup", "-dir", dir, "-force", "globex", bucketPath(dir, "acme")).want(t, exitUsage)
	cli(t, nil, "backup", "-dir", dir, "-all", filepath.Dir(bucketPath(dir, "acme"))).want(t, exitUsage)
	cli(t, nil, "backup", "-dir", dir, "-all", filepath.Join(dir, "ff")).want(t, exitUsage)
	unchanged(t, dir, before)
	cli(t, nil, "restore", "-dir", dir, "-force", "acme", filepath.Join(out, "initech.db")).want(t, exitOK)
	if got := events(t, bucketPath(dir, "acme")); !cmp.Equal(got, []string{"initech-0", "initech-1"}) {
		t.Errorf("acme after restore: %v", got)
	}
	cli(t, nil, "migrate", "-dir", dir, "-migrations", migrationsDir(t, "0001_init.sql", "0002_add.sql")).want(t, exitOK)
	var st []struct {
		Tenant  string
		Version int
	}
	if r := cli(t, nil, "status", "-dir", dir, "-json").want(t, exitOK); json.Unmarshal([]byte(r.stdout), &st) != nil || len(st) != 3 || st[0].Version != 2 || st[2].Version != 2 {
		t.Errorf("status after migrate: %s", r.stdout)
	}
	cli(t, nil, "check", "-dir", dir).want(t, exitOK)
	cli(t, nil, "create", "-dir", dir, "hooli").want(t, exitOK)
	cli(t, nil, "delete", "-dir", dir, "-yes", "globex").want(t, exitOK)
	if _, err := os.Lstat(bucketPath(dir, "globex")); err == nil {
		t.Error("globex left after delete")
	}

	// Not while a proxy has the directory open.
	// Nothing was started: nothing to finish.
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Layout: sqliteproxy.LayoutBuckets})
	if r := cli(t, nil, "relayout", "-dir", dir, "-to", "flat").want(t, exitFailed); r.stderr != "sqliteproxy: relayout: "+dir+" is in use by a proxy (a service or a CLI command): stop it first\n" {
		t.Errorf("relayout beside a proxy: %q", r.stderr)
	}
	p.Close()

	r = cli(t, nil, "relayout", "-dir", dir, "-to", "flat").want(t, exitOK)
	if r.stdout != "moved 3 tenants; "+dir+" is in the flat layout\n" {
		t.Errorf("relayout -to flat: %q", r.stdout)
	}
	if r := cli(t, nil, "tenants", "-dir", dir).want(t, exitOK); r.stdout != "acme\nhooli\ninitech\n" {
		t.Errorf("tenants after -to flat: %q", r.stdout)
	}
}

// TestRelayoutFailed: a relayout that stops half way says so, names the
// tenant it stopped at, and leaves a directory that nothing opens (exit
// 1, whatever -layout says) until it runs again; one that could not start
// says nothing of running again.
func TestRelayoutFailed(t *testing.T) {
	t.Parallel()
	dir := fleet(t, migrationsDir(t, "0001_init.sql"), 1, "acme", "globex", "initech")
	// globex open in another process (not a proxy: it takes no lock on the
	// directory): refused before anything moved, the directory left as it
	// was (adv43: acme moved first, and every command then refused the
	// directory until relayout ran again).
	path := filepath.Join(dir, "globex.db")
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`SELECT count(*) FROM events`); err != nil {
		t.Fatal(err)
	}
	r := cli(t, nil, "relayout", "-dir", dir, "-to", "buckets").want(t, exitFailed)
	want := "sqliteproxy: relayout globex: " + path + " is open in another process, or another proxy of this process (its -wal or -shm survived a checkpoint): stop it first\n"
	if r.stderr != want || r.stdout != "" {
		t.Errorf("relayout beside an open tenant: stdout %q, stderr\n%q\nwant\n%q", r.stdout, r.stderr, want)
	}
	if r := cli(t, nil, "tenants", "-dir", dir).want(t, exitOK); r.stdout != "acme\nglobex\ninitech\n" {
		t.Errorf("tenants after a refused relayout: %q", r.stdout)
	}
	db.Close()

	// globex's bucket folder a symbolic link: found only when globex moves
	// (acme, in bucket 82, moves first; globex's bucket is 5b).
	bucket := filepath.Join(dir, "5b")
	if err := os.Symlink(t.TempDir(), bucket); err != nil {
		t.Fatal(err)
	}
	r = cli(t, nil, "relayout", "-dir", dir, "-to", "buckets").want(t, exitFailed)
	want = "sqliteproxy: relayout globex: bucket folder " + bucket + " is not a directory (a symlink, say): tenant files stay inside the data directory (moved 1 tenant; run it again to finish)\n"
	if r.stderr != want || r.stdout != "" {
		t.Errorf("relayout stopped half way: stdout %q, stderr\n%q\nwant\n%q", r.stdout, r.stderr, want)
	}
	for _, layout := range []string{"auto", "flat", "buckets"} {
		if r := cli(t, nil, "tenants", "-dir", dir, "-layout", layout).want(t, exitFailed); !strings.Contains(r.stderr, "a relayout to buckets was interrupted") {
			t.Errorf("tenants -layout %s after an interrupted relayout: %q", layout, r.stderr)
		}
	}
	if err := os.Remove(bucket); err != nil {
		t.Fatal(err)
	}
	r = cli(t, nil, "relayout", "-dir", dir, "-to", "buckets").want(t, exitOK)
	if r.stdout != "moved 2 tenants; "+dir+" is in the buckets layout\n" {
		t.Errorf("relayout again: %q", r.stdout)
	}

	// An unknown marker: nothing started, nothing moved.
	marker := filepath.Join(dir, ".sqliteproxy-layout")
	if err := os.WriteFile(marker, []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	r = cli(t, nil, "relayout", "-dir", dir, "-to", "flat").want(t, exitFailed)
	if want := "sqliteproxy: relayout: " + marker + ": unknown layout marker \"junk\"\n"; r.stderr != want {
		t.Errorf("unknown marker: stderr %q, want %q", r.stderr, want)
	}
	unchanged(t, dir, before)

	// One tenant: singular.
	one := fleet(t, "", 0, "acme")
	if r := cli(t, nil, "relayout", "-dir", one, "-to", "buckets").want(t, exitOK); r.stdout != "moved 1 tenant; "+one+" is in the buckets layout\n" {
		t.Errorf("relayout of one tenant: %q", r.stdout)
	}
}

// TestUnreadableLayout: a data directory whose layout cannot be read fails
// to open (exit 1) with -layout auto as with flat or buckets; only a
// -layout that is none of them is a usage error.
func TestUnreadableLayout(t *testing.T) {
	t.Parallel()
	dir := fleet(t, "", 0, "acme")
	if err := os.WriteFile(filepath.Join(dir, ".sqliteproxy-layout"), []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	for _, args := range [][]string{
		{"tenants"},
		{"tenants", "-layout", "auto"},
		{"tenants", "-layout", "flat"},
		{"tenants", "-layout", "buckets"},
		{"check", "acme"},
		{"query", "SELECT 1"},
	} {
		r := cli(t, nil, append(args, "-dir", dir)...).want(t, exitFailed)
		if !strings.Contains(r.stderr, `unknown layout marker "junk"`) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
	r := cli(t, nil, "tenants", "-dir", dir, "-layout", "round").want(t, exitUsage)
	if !strings.HasPrefix(r.stderr, `sqliteproxy: tenants: -layout "round" is not flat, buckets or auto`+"\n") {
		t.Errorf("-layout round: %q", r.stderr)
	}
	unchanged(t, dir, before)
}

// The real binary, killed (SIGKILL) at a random moment of a relayout,
// leaves every tenant in exactly one place; running it again finishes.
func TestRelayoutKilled(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary, spawns and kills it")
	}
	bin := filepath.Join(t.TempDir(), "sqliteproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mdir := migrationsDir(t, "0001_init.sql")
	var ids []string
	for i := range 150 {
		ids = append(ids, fmt.Sprintf("t%03d", i))
	}
	orig := fleet(t, mdir, 1, ids...)
	kills, interrupted := 0, 0
	for loop := range 6 {
		dir := t.TempDir()
		copyDir(t, orig, dir)
		to := []string{"buckets", "flat"}[loop%2]
		if to == "flat" { // start from buckets
			if r := cli(t, nil, "relayout", "-dir", dir, "-to", "buckets"); r.code != exitOK {
				t.Fatal(r.stderr)
			}
		}
		cmd := exec.Command(bin, "relayout", "-dir", dir, "-to", to)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		sqliteproxytest.WaitFor(t, 30*time.Second, "the relayout to start", func() bool {
			b, _ := os.ReadFile(filepath.Join(dir, ".sqliteproxy-layout"))
			return strings.HasPrefix(string(b), "relayout-to-")
		})
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // into the moves
		if cmd.Process.Signal(syscall.SIGKILL) == nil {
			kills++
		}
		cmd.Wait()
		if b, _ := os.ReadFile(filepath.Join(dir, ".sqliteproxy-layout")); strings.HasPrefix(string(b), "relayout-to-") {
			interrupted++
		}

		// Each tenant once, in one layout or the other.
		found := map[string]int{}
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(path, ".db") && !strings.HasPrefix(d.Name(), ".") {
				found[strings.TrimSuffix(d.Name(), ".db")]++
			}
			return nil
		})
		for _, id := range ids {
			if found[id] != 1 {
				t.Fatalf("loop %d: %s found %d times", loop, id, found[id])
			}
		}
		r := cli(t, nil, "relayout", "-dir", dir, "-to", to).want(t, exitOK)
		if !strings.HasSuffix(r.stdout, "is in the "+to+" layout\n") {
			t.Errorf("loop %d: %q", loop, r.stdout)
		}
		r = cli(t, nil, "tenants", "-dir", dir).want(t, exitOK)
		got := strings.Fields(r.stdout)
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			t.Fatalf("loop %d: tenants %v", loop, got)
		}
		cli(t, nil, "check", "-dir", dir).want(t, exitOK)
		r = cli(t, nil, "status", "-dir", dir, "t042").want(t, exitOK)
	}
	t.Logf("%d kills, %d of them before the relayout finished", kills, interrupted)
}

// copyDir copies the files and folders under src into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Reading an empty, unmarked directory with -layout buckets changes
// nothing: a proxy opened so would mark it bucketed for good, and auto
// would then mean buckets there. Creating a tenant with -layout buckets
// does mark it.
func TestReadOnlyCommandsLeaveLayoutAlone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	before := snapshot(t, dir)
	for _, args := range [][]string{
		{"tenants"}, {"status"}, {"check"}, {"query", "SELECT 1"}, {"backup", "-all", t.TempDir()},
	} {
		r := cli(t, nil, append([]string{args[0], "-dir", dir, "-layout", "buckets"}, args[1:]...)...).want(t, exitOK)
		if r.stderr != "" {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
	unchanged(t, dir, before)
	cli(t, nil, "create", "-dir", dir, "acme").want(t, exitOK)
	if _, err := os.Lstat(filepath.Join(dir, "acme.db")); err != nil {
		t.Errorf("auto after reads with -layout buckets: not flat: %v", err)
	}

	fresh := t.TempDir()
	cli(t, nil, "create", "-dir", fresh, "-layout", "buckets", "acme").want(t, exitOK)
	if l, err := sqliteproxy.DirLayout(fresh); err != nil || l != sqliteproxy.LayoutBuckets {
		t.Errorf("create -layout buckets: the directory records %v, %v", l, err)
	}
	// A flat directory with tenants is still refused, and left unmarked.
	if r := cli(t, nil, "tenants", "-dir", dir, "-layout", "buckets").want(t, exitFailed); !strings.Contains(r.stderr, "flat layout") {
		t.Errorf("-layout buckets on a flat directory: %q", r.stderr)
	}
	if l, err := sqliteproxy.DirLayout(dir); err != nil || l != sqliteproxy.LayoutFlat {
		t.Errorf("after a refused read: %v, %v", l, err)
	}
}
