package sqliteproxy

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// ownLocks lists the POSIX locks this process holds on the file at p, as
// /proc/locks shows them. The kernel writes /proc/locks a page per read:
// when other processes take or drop locks between two reads, a listing
// can show a lock twice or miss one (make test failed once that way under
// load). So it is read until two listings in a row agree.
func ownLocks(t *testing.T, p string) []string {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	ino := fmt.Sprintf(":%d ", fi.Sys().(*syscall.Stat_t).Ino)
	pid := fmt.Sprintf(" %d ", os.Getpid())
	list := func() []string {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, ino) && strings.Contains(l, pid) {
				_, lock, _ := strings.Cut(l, ":") // without the line's ordinal
				out = append(out, strings.TrimSpace(lock))
			}
		}
		return out
	}
	prev := list()
	for range 100 {
		cur := list()
		if slices.Equal(prev, cur) {
			return cur
		}
		prev = cur
	}
	t.Fatalf("/proc/locks never listed the same locks on %s twice in a row (last: %q)", p, prev)
	return nil
}

func TestOpenInProcess(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if got, err := openInProcess(p); got || err != nil {
		t.Fatalf("missing file: %v, %v", got, err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := openInProcess(p); got || err != nil {
		t.Fatalf("closed file: %v, %v", got, err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Another name of the same file is the same file.
	if err := os.Link(p, p+".link"); err != nil {
		t.Fatal(err)
	}
	if got, err := openInProcess(p + ".link"); !got || err != nil {
		t.Fatalf("open file: %v, %v", got, err)
	}
}

// Side files beside a missing file that a connection of this process uses
// (another proxy's tenant, or the application's own connection) are not
// orphans. Trying the -shm lock cannot tell (POSIX locks never conflict
// within a process), and closing the descriptor opened for it dropped
// every lock the connection held on the -shm: the files were removed under
// it, and its locks were gone.
func TestOrphanWAL_LeavesFilesInUseInProcess(t *testing.T) {
	dir := t.TempDir()
	crashImage(t, dir, "c", 10)
	p := filepath.Join(dir, "c.db")
	db, err := sql.Open("sqlite3", p)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM events`).Scan(&n); err != nil || n != 10 {
		t.Fatalf("count: %d, %v", n, err)
	}
	before := ownLocks(t, p+"-shm")
	if len(before) == 0 {
		t.Fatal("the connection holds no lock on the -shm")
	}
	if err := os.Rename(p, p+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := removeOrphanSideFiles(p); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(p + s); err != nil {
			t.Errorf("%s of a file open in this process removed: %v", s, err)
		}
	}
	if _, err := os.Lstat(p + "-shm"); err == nil {
		if diff := cmp.Diff(before, ownLocks(t, p+"-shm")); diff != "" {
			t.Errorf("the connection's locks on the -shm changed (-before +after):\n%s", diff)
		}
	}
}

// RestoreTenant from the file of a live tenant (cloning a tenant) read the
// file with a descriptor of its own and closed it: the process's locks on
// it, held by the source tenant's open read, were gone (another process
// could then take the file exclusively and remove the -wal in use).
func TestProxy_RestoreFromLiveTenantKeepsItsLocks(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	for i := range 5 {
		if _, err := p.ExecContext(tctx("a"), `INSERT INTO events (tenant) VALUES (?)`, fmt.Sprint("a", i)); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := p.QueryContext(tctx("a"), `SELECT tenant FROM events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() {
		t.Fatal(rows.Err())
	}
	src := filepath.Join(dir, "a.db")
	if _, err := os.Stat(src + "-wal"); err != nil {
		t.Fatalf("the source has no -wal: %v", err)
	}
	before := ownLocks(t, src)
	if len(before) == 0 {
		t.Fatal("the open read holds no lock on the file")
	}
	if err := p.RestoreTenant(tctx("b"), "b", src); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, ownLocks(t, src)); diff != "" {
		t.Errorf("the process's locks on the source changed (-before +after):\n%s", diff)
	}
	rows.Close()
	want := testkit.Strings(t, tctx("a"), p, `SELECT tenant FROM events ORDER BY id`)
	if diff := cmp.Diff(want, testkit.Strings(t, tctx("b"), p, `SELECT tenant FROM events ORDER BY id`)); diff != "" || len(want) != 5 {
		t.Errorf("restored copy differs from the source (%d rows; -source +copy):\n%s", len(want), diff)
	}
	for _, s := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(src + s); err != nil {
			t.Errorf("source's %s: %v", s, err)
		}
	}
}
