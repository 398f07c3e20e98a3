package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
)

const liveSrcEnv = "SQLITEPROXY_LIVE_SOURCE"

// liveAccounts and liveBalance: the source's rows and what each starts
// with; every transaction of the writer moves balance between rows, so
// that a copy mixing two states has another sum.
const (
	liveAccounts = 1500
	liveBalance  = 100
)

// A RestoreTenant source that another process has open and writes (a
// tenant of another service's data directory): the source was staged by
// copying its file and then its -wal, or read immutable when it had no
// -wal, while that process committed and checkpointed in between; the
// copy mixed two states and passed quick_check.
func TestProxy_RestoreFromAFileAnotherProcessWrites(t *testing.T) {
	src := filepath.Join(t.TempDir(), "live.db")
	sig := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^TestProxy_RestoreLiveSourceChild$", "-test.v")
	cmd.Env = append(os.Environ(), liveSrcEnv+"="+src, liveSrcEnv+"_SIG="+sig)
	out := make(chan []byte, 1)
	go func() {
		b, _ := cmd.CombinedOutput()
		out <- b
	}()
	stop := func() []byte {
		os.WriteFile(filepath.Join(sig, "stop"), nil, 0o600)
		return receive(t, out, "the writing process")
	}
	waitFor(t, 60*time.Second, "the writing process to be ready", func() bool {
		_, err := os.Stat(filepath.Join(sig, "ready"))
		return err == nil
	})
	p := newTestProxy(t, Config{Dir: t.TempDir()})
	states := map[string]bool{}
	for i := range 40 {
		if err := p.RestoreTenant(context.Background(), "acme", src); err != nil {
			b := stop()
			t.Fatalf("restore %d: %v\n%s", i, err, b)
		}
		var n, sum int
		if err := p.QueryRowContext(tctx("acme"), `SELECT count(*), coalesce(sum(bal), 0) FROM acct`).Scan(&n, &sum); err != nil {
			t.Fatal(err)
		}
		if n != liveAccounts || sum != liveAccounts*liveBalance {
			b := stop()
			t.Fatalf("restore %d: %d rows summing to %d, want %d summing to %d: a copy mixing two states\n%s", i, n, sum, liveAccounts, liveAccounts*liveBalance, b)
		}
		var state string
		if err := p.QueryRowContext(tctx("acme"), `SELECT group_concat(bal) FROM acct`).Scan(&state); err != nil {
			t.Fatal(err)
		}
		states[state] = true
	}
	if len(states) < 2 {
		t.Errorf("every restore found the same state: the source did not change while it was restored")
	}
	if b := stop(); !filepathExists(filepath.Join(sig, "done")) {
		t.Fatalf("the writing process did not end well:\n%s", b)
	}
}

func filepathExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestProxy_RestoreLiveSourceChild is the other process of
// TestProxy_RestoreFromAFileAnotherProcessWrites: a plain mattn pool that
// moves balance between rows until told to stop, checkpointing often.
func TestProxy_RestoreLiveSourceChild(t *testing.T) {
	src, sig := os.Getenv(liveSrcEnv), os.Getenv(liveSrcEnv+"_SIG")
	if src == "" {
		t.Skip("the child of TestProxy_RestoreFromAFileAnotherProcessWrites")
	}
	db, err := sql.Open("sqlite3", "file:"+src+"?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, pad BLOB);
		PRAGMA wal_autocheckpoint = 1; PRAGMA synchronous = OFF`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d)
		INSERT INTO acct SELECT i, %d, randomblob(900) FROM n`, liveAccounts, liveBalance)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sig, "ready"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	i := 0
	for ; ; i++ {
		if filepathExists(filepath.Join(sig, "stop")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never told to stop")
		}
		// Move 1 from 40 rows spread over the file to 40 others.
		from, to := i%37, (i+18)%37
		if _, err := db.Exec(`UPDATE acct SET bal = bal + (CASE WHEN id % 37 = ? THEN -1 ELSE 1 END), pad = randomblob(900)
			WHERE id % 37 IN (?, ?) AND id <= 37*40`, from, from, to); err != nil {
			t.Fatal(err)
		}
		if i%25 == 0 {
			if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d transactions", i)
	os.WriteFile(filepath.Join(sig, "done"), nil, 0o600)
}

// A FIFO named like a source's -journal (or -wal): opening it to stage it
// waited for a writer that never came, and the restore with it.
func TestProxy_RestoreRefusesAFIFOSideFile(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	for _, side := range []string{"-journal", "-wal"} {
		bk := filepath.Join(t.TempDir(), "bk.db")
		if err := p.BackupTenant(context.Background(), "acme", bk); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mkfifo(bk+side, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- p.RestoreTenant(context.Background(), "globex", bk) }()
		if err := receive(t, done, "the restore"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("restore from a backup with a FIFO as its %s: %v, want a refusal naming it", side, err)
		}
		if _, err := os.Stat(filepath.Join(p.c.r.cfg.Dir, "globex.db")); err == nil {
			t.Errorf("globex made by a refused restore")
		}
	}
}

// A RestoreTenant source that is a closed tenant of another proxy of this
// process: its lock did not keep that proxy out (POSIX locks are the
// process's), which opened and wrote the source during the copy; and
// closing the copy's descriptors then dropped the locks that proxy's
// connection held on the file.
func TestProxy_RestoreSourceLockedAgainstThisProcess(t *testing.T) {
	// Not parallel: copySourceLocked is global, and ran this test's insert
	// during other tests' restores.
	dirA := t.TempDir()
	cfg := Config{Dir: dirA, Migrations: []string{eventsTable}, BusyTimeout: 200 * time.Millisecond}
	a0 := newTestProxy(t, cfg)
	if _, err := a0.ExecContext(tctx("src"), `INSERT INTO events (tenant) VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	if err := a0.Close(); err != nil {
		t.Fatal(err)
	}
	a := newTestProxy(t, cfg) // src closed: not open in this process
	src := filepath.Join(dirA, "src.db")
	b := newTestProxy(t, Config{Dir: t.TempDir()})
	var during error
	copySourceLocked = func() {
		_, during = a.ExecContext(tctx("src"), `INSERT INTO events (tenant) VALUES ('during')`)
	}
	defer func() { copySourceLocked = nil }()
	if err := b.RestoreTenant(context.Background(), "dst", src); err != nil {
		t.Fatal(err)
	}
	copySourceLocked = nil
	if during == nil {
		t.Error("another proxy of this process wrote the source while the restore held it locked")
	}
	if n := countRows(t, b, "dst"); n != 1 {
		t.Errorf("the restored copy holds %d rows, want the 1 from before the copy", n)
	}
	// a's connection to src, opened after the copy, keeps its locks.
	if _, err := a.ExecContext(tctx("src"), `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, a, "src"); n != 2 {
		t.Errorf("src holds %d rows, want 2", n)
	}
}

// Two restores from one backup at once (a golden tenant copied into many):
// the second found the file open in this process (the first's
// descriptors), read it through SQLite and waited on the first's lock for
// SQLite's 5 s, then failed with "database is locked". It waits for the
// first copy instead.
func TestProxy_ConcurrentRestoresFromOneBackup(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	bk, waiting := goldenBackup(t, p)
	second := make(chan error, 1)
	var once sync.Once
	copySourceLocked = func() {
		once.Do(func() {
			go func() { second <- p.RestoreTenant(context.Background(), "t2", bk) }()
			receive(t, waiting, "the second restore to wait for the first copy")
		})
	}
	defer func() { copySourceLocked, sourceCopyWaits = nil, nil }()
	if err := p.RestoreTenant(context.Background(), "t1", bk); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, second, "the second restore"); err != nil {
		t.Fatalf("the second restore from the same backup: %v", err)
	}
	for _, id := range []string{"t1", "t2"} {
		if n := countRows(t, p, id); n != 1 {
			t.Errorf("%s holds %d rows, want 1", id, n)
		}
	}
}

// A restore waiting for another proxy's copy of the same source (one copy
// of a source at a time in the process) is ended by Close, as its copy
// would be: it waited on its caller's context only, and Close for
// BusyTimeout.
func TestProxy_RestoreWaitingForSourceEndsAtClose(t *testing.T) {
	p1 := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	p2 := newTestProxy(t, Config{Migrations: []string{eventsTable}, BusyTimeout: time.Minute})
	bk, waiting := goldenBackup(t, p1)
	locked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	copySourceLocked = func() {
		once.Do(func() {
			close(locked)
			<-release
		})
	}
	defer func() { copySourceLocked, sourceCopyWaits = nil, nil }()
	first := make(chan error, 1)
	go func() { first <- p1.RestoreTenant(context.Background(), "t1", bk) }()
	receive(t, locked, "the first restore to hold its source")
	second := make(chan error, 1)
	go func() { second <- p2.RestoreTenant(context.Background(), "t2", bk) }()
	receive(t, waiting, "the second restore to wait for the first copy")
	closed := make(chan error, 1)
	go func() { closed <- p2.Close() }()
	if err := receive(t, second, "the waiting restore after Close"); !errors.Is(err, ErrClosed) {
		t.Errorf("the waiting restore after Close: %v, want ErrClosed", err)
	}
	if err := receive(t, closed, "Close"); err != nil {
		t.Errorf("Close: %v", err)
	}
	close(release)
	if err := receive(t, first, "the first restore"); err != nil {
		t.Fatalf("the first restore: %v", err)
	}
	if n := countRows(t, p1, "t1"); n != 1 {
		t.Errorf("t1 holds %d rows, want 1", n)
	}
}

// goldenBackup backs up p's tenant golden, one row, to a file it returns,
// and sets sourceCopyWaits to signal the channel it returns (once per
// reader) when a restore waits for another copy of a source.
func goldenBackup(t *testing.T, p *Proxy) (string, <-chan struct{}) {
	t.Helper()
	if _, err := p.ExecContext(tctx("golden"), `INSERT INTO events (tenant) VALUES ('golden')`); err != nil {
		t.Fatal(err)
	}
	bk := filepath.Join(t.TempDir(), "golden.db")
	if err := p.BackupTenant(context.Background(), "golden", bk); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{}, 1)
	sourceCopyWaits = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	return bk, waiting
}
