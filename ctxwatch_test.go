package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

// TestContext_EndsJustAsARunawayStatementStarts: a context that ends at any
// moment around a statement's start stops it, however long it would run.
// mattn's single interrupt was lost when it came just before SQLite started
// the statement (SQLite clears the flag there), and the statement, endless
// here, ran for ever: the caller never got an answer and the connection
// stayed busy. Each statement gets a deadline a few microseconds away,
// landing before, at and after its start; every one must fail with its
// context's error, within a bound.
func TestContext_EndsJustAsARunawayStatementStarts(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE t (x)`}})
	ctx := tctx("acme")
	const (
		endless      = `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) `
		endlessRead  = endless + `SELECT count(*) FROM c`
		endlessWrite = `INSERT INTO t ` + endless + `SELECT x FROM c`
	)
	read, err := p.PrepareContext(ctx, endlessRead)
	if err != nil {
		t.Fatal(err)
	}
	defer read.Close()
	write, err := p.PrepareContext(ctx, endlessWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer write.Close()
	if _, err := p.ExecContext(ctx, `DELETE FROM t`); err != nil { // acme made, and open
		t.Fatal(err)
	}
	// globex is left closed: a fan-out reads it on a connection of its own.
	if err := p.CreateTenant(ctx, "globex"); err != nil {
		t.Fatal(err)
	}
	fanOut := func(c context.Context, id string) error {
		return p.QueryRowContext(WithFanOut(c, FanOutOptions{Tenants: []string{id}}), endlessRead).Scan(new(string), new(int))
	}
	runs := []struct {
		name string
		run  func(context.Context) error
	}{
		{"Exec", func(c context.Context) error { _, err := p.ExecContext(c, endlessWrite); return err }},
		{"Query", func(c context.Context) error { return p.QueryRowContext(c, endlessRead).Scan(new(int)) }},
		{"Stmt.Exec", func(c context.Context) error { _, err := write.ExecContext(c); return err }},
		{"Stmt.Query", func(c context.Context) error { return read.QueryRowContext(c).Scan(new(int)) }},
		{"Tx.Exec", func(c context.Context) error {
			tx, err := p.BeginTx(ctx, nil) // a context of its own, without a deadline
			if err != nil {
				return err
			}
			defer tx.Rollback()
			_, err = tx.ExecContext(c, endlessWrite)
			return err
		}},
		{"FanOut on an open tenant", func(c context.Context) error { return fanOut(c, "acme") }},
		{"FanOut on a closed tenant", func(c context.Context) error { return fanOut(c, "globex") }},
		{"tenantless Query", func(c context.Context) error {
			// c's deadline, without a tenant: run on no tenant's file.
			return p.QueryRowContext(context.WithValue(c, orgIDKey{}, nil), endlessRead).Scan(new(int))
		}},
		{"tenantless Exec", func(c context.Context) error {
			_, err := p.ExecContext(context.WithValue(c, orgIDKey{}, nil), endlessRead)
			return err
		}},
		{"tenantless Stmt.Query", func(c context.Context) error {
			s, err := p.PrepareContext(context.Background(), endlessRead)
			if err != nil {
				return err
			}
			defer s.Close()
			return s.QueryRowContext(context.WithValue(c, orgIDKey{}, nil)).Scan(new(int))
		}},
	}
	n := 150
	if testing.Short() {
		n = 30
	}
	for _, r := range runs {
		for i := range n {
			c, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(200))*time.Microsecond)
			done := make(chan error, 1)
			go func() { done <- r.run(c) }()
			select {
			case err := <-done:
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("%s, run %d: %v, want the context's deadline", r.name, i, err)
				}
			case <-time.After(20 * time.Second):
				// The statement holds its connection for ever: the test's
				// cleanup would wait for it, so end the binary here.
				panic(fmt.Sprintf("%s, run %d: the endless statement went on 20 s past its context's end", r.name, i))
			}
		}
	}
	// The tenant is whole and writable.
	if _, err := p.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var got int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&got); err != nil || got != 1 {
		t.Errorf("t holds %d rows (%v), want the one written after", got, err)
	}
}

// TestContext_EndsAWaitForAnotherProcesssLock: a statement waiting in
// SQLite's busy handler for a lock another process holds (its write
// transaction) fails with its context's error at its deadline, not after
// BusyTimeout: BusyTimeout bounds only waits whose context has none. The
// waits: an Exec (group commit on and off), a transaction's BEGIN
// IMMEDIATE, a batch's BEGIN IMMEDIATE (callers queued behind a leader).
func TestContext_EndsAWaitForAnotherProcesssLock(t *testing.T) {
	t.Parallel()
	if !busyInterruptible {
		t.Skip("a system SQLite (libsqlite3 tag): SQLite's own busy handler, which an interrupt does not end")
	}
	const busy = 30 * time.Second // the wait a deadline must cut short
	for _, gc := range []GroupCommitMode{GroupCommitOn, GroupCommitOff} {
		dir := t.TempDir()
		p := newTestProxy(t, Config{Dir: dir, BusyTimeout: busy, GroupCommit: gc, Migrations: []string{eventsTable}})
		ctx := tctx("acme")
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('first')`); err != nil {
			t.Fatal(err)
		}
		lock := writeLock(t, dir, "acme")
		waits := []struct {
			name string
			run  func(context.Context) error
		}{
			{"Exec", func(c context.Context) error {
				_, err := p.ExecContext(c, `INSERT INTO events (tenant) VALUES ('blocked')`)
				return err
			}},
			{"BeginTx", func(c context.Context) error {
				tx, err := p.BeginTx(c, nil)
				if err == nil {
					defer tx.Rollback()
					_, err = tx.ExecContext(c, `INSERT INTO events (tenant) VALUES ('blocked')`)
				}
				return err
			}},
			{"eight Execs at once", func(c context.Context) error {
				errs := make(chan error, 8)
				for range 8 {
					go func() {
						_, err := p.ExecContext(c, `INSERT INTO events (tenant) VALUES ('blocked')`)
						errs <- err
					}()
				}
				for range 8 {
					if err := <-errs; !errors.Is(err, context.DeadlineExceeded) {
						return err
					}
				}
				return context.DeadlineExceeded
			}},
		}
		for _, w := range waits {
			c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			start := time.Now()
			done := make(chan error, 1)
			go func() { done <- w.run(c) }()
			select {
			case err := <-done:
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("group commit %v, %s beside another process's write lock: %v, want the context's deadline", gc, w.name, err)
				}
				if took := time.Since(start); took > 5*time.Second {
					t.Errorf("group commit %v, %s: answered after %v, its deadline 100 ms away (BusyTimeout %v)", gc, w.name, took, busy)
				}
			case <-time.After(2 * busy):
				t.Fatalf("group commit %v, %s: no answer %v on", gc, w.name, 2*busy)
			}
		}
		if _, err := lock.ExecContext(context.Background(), `ROLLBACK`); err != nil {
			t.Fatal(err)
		}
		lock.Close()
		// Nothing of the waits was written; the tenant writes again.
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE tenant = 'blocked'`).Scan(&n); err != nil || n != 0 {
			t.Errorf("group commit %v: %d blocked rows written (%v), want none", gc, n, err)
		}
	}
}

// A batch's leader whose deadline ends its wait for another process's
// write lock leaves alone: the callers it had gathered, none of whose
// statements ran, are batched again behind the next leader (not made to
// run one by one), and commit once the lock is free.
func TestContext_LeaderLeavesItsBatchAtItsDeadline(t *testing.T) {
	if !busyInterruptible {
		t.Skip("a system SQLite (libsqlite3 tag): SQLite's own busy handler, which an interrupt does not end")
	}
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, BusyTimeout: 30 * time.Second, GroupCommit: GroupCommitOn, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('first')`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	var mu sync.Mutex
	var sizes []int
	hook := func(batch []*gcReq) {
		mu.Lock()
		sizes = append(sizes, len(batch))
		mu.Unlock()
	}
	batchHook.Store(&hook)
	t.Cleanup(func() { batchHook.Store(nil) })
	// The writer held here (no SQLite lock), the SQLite write lock by
	// another connection: the first caller waits to lead, the others queue.
	if err := tn.lockWriter(ctx); err != nil {
		t.Fatal(err)
	}
	lock := writeLock(t, dir, "acme")
	lctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	leader := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(lctx, `INSERT INTO events (tenant) VALUES ('leader')`)
		leader <- err
	}()
	waitFor(t, 10*time.Second, "the leader to wait for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
	const others = 6
	errs := make(chan error, others)
	for range others {
		go func() {
			_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('other')`) // no deadline
			errs <- err
		}()
	}
	waitFor(t, 10*time.Second, "the others to queue", func() bool { return tn.queued() == others })
	tn.releaseWriter()
	select {
	case err := <-leader:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the leader: %v, want its deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the leader still waits 10 s on, its deadline 300 ms away")
	}
	waitFor(t, 10*time.Second, "the others batched again behind a new leader", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(sizes) >= 2
	})
	if _, err := lock.ExecContext(context.Background(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	for range others {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("a caller without a deadline: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("callers still waiting 20 s on")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sizes) != 2 || sizes[0] != others+1 || sizes[1] != others {
		t.Errorf("batches of %v, want %d (the leader's) then %d (the others again, together)", sizes, others+1, others)
	}
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE tenant = 'other'`).Scan(&n); err != nil || n != others {
		t.Errorf("%d rows of the others (%v), want %d", n, err, others)
	}
}

// A wait for another process's lock without a deadline lasts BusyTimeout
// on the clock (the proxy's busy handler, busy.go), not less.
func TestContext_BusyHandlerWaitsBusyTimeout(t *testing.T) {
	t.Parallel()
	if !busyInterruptible {
		t.Skip("a system SQLite (libsqlite3 tag): SQLite's own busy handler, which an interrupt does not end")
	}
	const busy = 400 * time.Millisecond
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, BusyTimeout: busy, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('first')`); err != nil {
		t.Fatal(err)
	}
	lock := writeLock(t, dir, "acme")
	start := time.Now()
	_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('blocked')`)
	took := time.Since(start)
	if se := (sqlite3.Error{}); !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
		t.Errorf("a write beside another process's write lock, no deadline: %v, want SQLITE_BUSY", err)
	}
	if took < busy || took > 10*busy {
		t.Errorf("gave up after %v, BusyTimeout %v", took, busy)
	}
	if _, err := lock.ExecContext(context.Background(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	lock.Close()
}

// Opening a tenant that another process holds in exclusive locking mode
// (a sqlite3 shell's, MigrateAll's of a tenant nobody had open) ends at
// the context's deadline: mattn's open reads the file before the proxy's
// busy handler is set, and SQLite's own waited out BusyTimeout. The open
// of a routed query, and a fan-out's own connection, both; once the lock
// is gone the tenant opens.
func TestContext_EndsAnOpenBesideAnExclusiveLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, BusyTimeout: 30 * time.Second, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if err := p.CreateTenant(ctx, "acme"); err != nil { // left closed
		t.Fatal(err)
	}
	ex, err := sql.Open("sqlite3", filepath.Join(dir, "acme.db")+"?_locking_mode=EXCLUSIVE")
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ex.SetMaxOpenConns(1)
	if _, err := ex.Exec(`INSERT INTO events (tenant) VALUES ('exclusive')`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"a query", func(c context.Context) error {
			return p.QueryRowContext(c, `SELECT count(*) FROM events`).Scan(new(int))
		}},
		{"a fan-out", func(c context.Context) error {
			return p.QueryRowContext(WithFanOut(c, FanOutOptions{Tenants: []string{"acme"}}), `SELECT count(*) FROM events`).Scan(new(string), new(int))
		}},
	} {
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		start := time.Now()
		err := tc.run(c)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s of a tenant another process holds exclusively: %v, want the deadline", tc.name, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s answered after %v, its deadline 200 ms away (BusyTimeout 30 s)", tc.name, took)
		}
	}
	if err := ex.Close(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after the lock: %d rows (%v), want the one written under it", n, err)
	}
}

// A tenant's own connections for a backup, a check, a look at its ledger
// and a restore's source end at the context's deadline while another
// process holds the file exclusively: they were opened with mattn's fixed
// five-second busy timeout and waited it out whatever the deadline (or a
// longer BusyTimeout), and most then said "database is locked".
func TestContext_AdminOpsEndBesideAnExclusiveLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := Config{Dir: dir, BusyTimeout: 30 * time.Second, Migrations: []string{eventsTable}}
	made := newTestProxy(t, cfg)
	for _, id := range []string{"acme", "globex"} {
		if err := made.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	made.Close()
	// A proxy that has not opened them yet: its backup, check and ledger's
	// look each open a connection of their own (a tenant this proxy made
	// is known ready, and read through its pool's readers).
	p := newTestProxy(t, cfg)
	exclusiveDB(t, filepath.Join(dir, "acme.db"))
	live := filepath.Join(t.TempDir(), "live.db")
	exclusiveDB(t, live)
	for _, op := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"BackupTenant", func(c context.Context) error { return p.BackupTenant(c, "acme", filepath.Join(t.TempDir(), "b.db")) }},
		{"CheckTenant", func(c context.Context) error { return p.CheckTenant(c, "acme") }},
		{"MigrationStatus", func(c context.Context) error { _, err := p.MigrationStatus(c, "acme"); return err }},
		{"MigrateAll", func(c context.Context) error {
			_, err := p.MigrateAll(c, MigrateOptions{Tenants: []string{"acme"}})
			return err
		}},
		{"RestoreTenant from a tenant", func(c context.Context) error { return p.RestoreTenant(c, "globex", filepath.Join(dir, "acme.db")) }},
		{"RestoreTenant from a live file", func(c context.Context) error { return p.RestoreTenant(c, "globex", live) }},
	} {
		c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		err := op.run(c)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s beside an exclusive lock: %v, want the deadline", op.name, err)
		}
		if took > 2*time.Second {
			t.Errorf("%s answered after %v, its deadline 200 ms away", op.name, took)
		}
	}
	var n int
	if err := p.QueryRowContext(tctx("globex"), `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 0 {
		t.Errorf("globex after its restores ran out of time: %d rows, %v; want it as it was", n, err)
	}
}

// Close ends a restore whose source another process holds exclusively
// (ErrClosed): it waited the five seconds of mattn's busy timeout in the
// source's open, and Close with it.
func TestContext_CloseEndsARestoreWaitingForItsSource(t *testing.T) {
	// Not parallel: it sets a hook of the package.
	p, err := New(Config{Dir: t.TempDir(), BusyTimeout: 30 * time.Second, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(context.Background(), "globex"); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "live.db")
	exclusiveDB(t, src)
	restored := make(chan error, 1)
	var waited atomic.Bool
	sourceOpenTried = func(tried string) {
		if tried == src {
			waited.Store(true)
		}
	}
	t.Cleanup(func() { sourceOpenTried = nil })
	go func() { restored <- p.RestoreTenant(context.Background(), "globex", src) }()
	waitFor(t, 5*time.Second, "the restore to try its source", waited.Load)
	start := time.Now()
	cerr := p.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v beside a restore waiting for its source (%v)", took, cerr)
	}
	select {
	case err := <-restored:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("the restore Close ended: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the restore had not returned 10 s after Close")
	}
}

// The first open of a restored tenant, whose file is in rollback-journal
// mode (a backup's), switches it to WAL, which needs the file to itself:
// beside another process's read transaction the switch waited out
// BusyTimeout in the connect hook, which sees no context, and answered
// "database is locked". It ends at the deadline, and the tenant opens once
// the reader is gone.
func TestContext_FirstOpenOfARestoredTenantEndsAtTheDeadline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, _ := restoredTenant(t, Config{Dir: dir, BusyTimeout: 30 * time.Second, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	reader, err := direct(t, dir, "acme").Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.ExecContext(context.Background(), `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if err := reader.QueryRowContext(context.Background(), `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	start := time.Now()
	err = p.QueryRowContext(c, `SELECT count(*) FROM events`).Scan(new(int))
	took := time.Since(start)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
		t.Errorf("first open beside a reader: %v after %v, want the deadline (200 ms)", err, took)
	}
	reader.ExecContext(context.Background(), `ROLLBACK`)
	reader.Close()
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after the reader: %d rows, %v; want the restored one", n, err)
	}
}

// The switch of a restored tenant to WAL is not kept out by another
// process's back-to-back short reads: each try holds SQLite's PENDING lock
// while it waits (walAttempt), so that the reads in progress end and no
// new one begins. Tried without a busy handler, each try found a read in
// progress, and the open failed at BusyTimeout.
func TestContext_FirstOpenOfARestoredTenantBesideBusyReaders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, _ := restoredTenant(t, Config{Dir: dir, BusyTimeout: time.Second, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	readers := direct(t, dir, "acme")
	readers.SetMaxOpenConns(4)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	for range 4 { // reads of ~1 ms each that overlap: some read always holds the file

		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := readers.QueryRow(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000) SELECT count(*) FROM c, events`).Scan(new(int)); err == nil {
					reads.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	waitFor(t, 5*time.Second, "the other connections to read", func() bool { return reads.Load() > 20 })
	var n int
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 1 {
		t.Errorf("first open beside back-to-back reads: %d rows, %v; want the restored row", n, err)
	}
}
