package sqliteproxy

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCloseThenUse: what Connector.Close promises (closing a Proxy closes
// its Connector): connections in use are closed as they are released, and
// further operations fail with ErrClosed.
func TestCloseThenUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	c, err := p.Conn(tctx("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("globex"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	// One that holds its tenant's writer already, and a transaction.
	leased, err := p.Conn(tctx("initech"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leased.ExecContext(tctx("initech"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	tx, err := p.BeginTx(tctx("globex"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	// Close waits for the transaction and the leased sql.Conn to end.
	closed := closeAsync(t, p)
	if _, err := c.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); !errors.Is(err, ErrClosed) {
		t.Errorf("sql.Conn after Close: %v, want ErrClosed", err)
	}
	c.Close()
	if _, err := leased.ExecContext(tctx("initech"), `INSERT INTO t VALUES (1)`); !errors.Is(err, ErrClosed) {
		t.Errorf("a leased sql.Conn after Close: %v, want ErrClosed", err)
	}
	leased.Close()
	// A transaction in progress may finish.
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO t VALUES (2)`); err != nil {
		t.Errorf("the transaction after Close: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Errorf("Commit after Close: %v", err)
	}
	if err := receive(t, closed, "Close, once the work in use has ended"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Tenants(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Tenants after Close: %v, want ErrClosed", err)
	}
	if _, err := p.ExecContext(tctx("globex"), `SELECT 1`); err == nil {
		t.Error("Exec after Close succeeded")
	}
	if st := p.Stats(); st.OpenConnections != 0 {
		t.Errorf("open connections after Close: %d", st.OpenConnections)
	}
	assertNoOpenFiles(t, dir)
	if got := directRows(t, p, "globex", `SELECT a FROM t`); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("rows of the transaction committed during Close: %q", got)
	}
}

// A statement waiting for its tenant's writer when Close returns does not
// run afterwards: once the transaction holding the writer ends, it fails
// with ErrClosed (it ran and committed two seconds after Close).
func TestCloseWhileWaitingForTheWriter(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, GroupCommit: GroupCommitOff})
	ctx := tctx("acme")
	tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`)
	defer tn.unpin()
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('waiting')`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "the statement to wait for the writer", func() bool { return tn.wsem.nwait.Load() > 0 })
	closed := closeAsync(t, p)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, done, "the waiting statement"); !errors.Is(err, ErrClosed) {
		t.Fatalf("the waiting statement: %v, want ErrClosed", err)
	}
	if err := receive(t, closed, "Close"); err != nil {
		t.Fatal(err)
	}
	if got := directRows(t, p, "acme", `SELECT tenant FROM events`); !slices.Equal(got, []string{"tx"}) {
		t.Fatalf("rows %q, want only the transaction's", got)
	}
}

// Close ends the waits of statements with no deadline at once, with
// ErrClosed: they waited until the transaction holding what they wait for
// ended, or BusyTimeout (a minute here), after Close had returned. For the
// writer, the group-commit queue (a leader waiting for the writer and a
// request queued behind it) and a reader.
func TestCloseEndsWaits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cfg     Config
		readTx  bool // the holder is a read-only transaction on the only reader
		waiters int
		queued  func(tn *tenant) bool
	}{
		{"writer", Config{GroupCommit: GroupCommitOff}, false, 1,
			func(tn *tenant) bool { return tn.wsem.nwait.Load() == 1 }},
		{"group-commit", Config{GroupCommit: GroupCommitOn}, false, 2,
			func(tn *tenant) bool {
				tn.gc.mu.Lock()
				defer tn.gc.mu.Unlock()
				return tn.wsem.nwait.Load() == 1 && len(tn.gc.q) == 1
			}},
		{"reader", Config{ReadersPerTenant: 1}, true, 1,
			func(tn *tenant) bool {
				tn.mu.Lock()
				defer tn.mu.Unlock()
				return len(tn.readerQ) == 1
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.Migrations, cfg.BusyTimeout = []string{eventsTable}, time.Minute
			p := newTestProxy(t, cfg)
			ctx := tctx("acme")
			tx, err := p.BeginTx(ctx, &sql.TxOptions{ReadOnly: tc.readTx})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, `SELECT count(*) FROM events`); err != nil {
				t.Fatal(err)
			}
			tn, err := p.c.r.tenant("acme")
			if err != nil {
				t.Fatal(err)
			}
			defer tn.unpin()
			done := make(chan error, tc.waiters)
			for i := range tc.waiters {
				if i > 0 && tc.name == "group-commit" {
					waitFor(t, 10*time.Second, "a leader waiting for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
				}
				go func() {
					var err error
					if tc.readTx {
						err = p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int))
					} else {
						_, err = p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('waiting')`)
					}
					done <- err
				}()
			}
			waitFor(t, 10*time.Second, "the statements to wait", func() bool { return tc.queued(tn) })
			closed := closeAsync(t, p) // it waits for the transaction
			for range tc.waiters {
				if err := receive(t, done, "a waiting statement, after Close (BusyTimeout: a minute)"); !errors.Is(err, ErrClosed) {
					t.Errorf("a waiting statement: %v, want ErrClosed", err)
				}
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if err := receive(t, closed, "Close, once the transaction has ended"); err != nil {
				t.Fatal(err)
			}
			if got := directRows(t, p, "acme", `SELECT tenant FROM events`); len(got) != 0 {
				t.Fatalf("rows %q, want none", got)
			}
		})
	}
}

// Close while writes are in flight: once Close and every caller have
// returned, no connection of the tenants is left open. A writer that took
// the writer semaphore as Close passed over its tenant, and saw the proxy
// closed, gave the semaphore back without closing the tenant: its
// connections (and files) stayed open for the life of the process (6 of
// 40 rounds of a helper's run), and another proxy's DeleteTenant then
// called it "open in another process".
func TestCloseDuringWritesLeavesNothingOpen(t *testing.T) {
	t.Parallel()
	for round := range 40 {
		dir := t.TempDir()
		p, err := New(Config{Dir: dir, MaxConnections: 4, Migrations: []string{eventsTable}})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var wrote atomic.Int64
		for g := range 8 {
			wg.Go(func() {
				id := fmt.Sprintf("t%d", g%4)
				for {
					ctx, cancel := context.WithTimeout(tctx(id), 5*time.Second)
					_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES (?)`, id)
					cancel()
					if errors.Is(err, ErrClosed) || err != nil && err.Error() == "sql: database is closed" {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					wrote.Add(1)
				}
			})
		}
		waitFor(t, 10*time.Second, "writes under way", func() bool { return wrote.Load() >= 20 })
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if st := p.Stats(); st.OpenConnections != 0 {
			t.Fatalf("round %d: after Close and every caller returned: %+v", round, st)
		}
		assertNoOpenFiles(t, dir)
	}
}

// A read or a write with no deadline that meets a tenant being deleted
// waits BusyTimeout at most, as every wait without a deadline does, and
// Close ends the wait: the read waited as long as the delete did (its
// context had no deadline either: an admin handler's), across Close. Not
// parallel: goroutinesIn counts the process's goroutines.
func TestDrainWaitsAreBounded(t *testing.T) {
	for _, closing := range []bool{false, true} {
		t.Run(fmt.Sprintf("close=%v", closing), func(t *testing.T) {
			p := newTestProxy(t, Config{BusyTimeout: 200 * time.Millisecond, Migrations: []string{eventsTable}})
			ctx := tctx("acme")
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
				t.Fatal(err)
			}
			tx, err := p.BeginTx(ctx, &sql.TxOptions{ReadOnly: true}) // in-flight work the delete waits for
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
				t.Fatal(err)
			}
			tn, err := p.c.r.tenant("acme")
			if err != nil {
				t.Fatal(err)
			}
			tn.unpin()
			delCtx, cancelDel := context.WithCancel(context.Background())
			defer cancelDel()
			deleted := make(chan error, 1)
			go func() { deleted <- p.DeleteTenant(delCtx, "acme") }()
			waitFor(t, 10*time.Second, "the delete to drain", func() bool { return tn.state.Load() == tenantDraining })
			done := make(chan error, 2)
			go func() { done <- p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int)) }()
			go func() {
				_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('late')`)
				done <- err
			}()
			var want error = errBusy
			var closed <-chan error
			if closing {
				// Both wait before Close: the read for the drain, the write
				// for the writer the drain holds.
				waitFor(t, 10*time.Second, "the read to wait for the drain", func() bool { return goroutinesIn("(*tenant).awaitDrain") == 1 })
				waitFor(t, 10*time.Second, "the write to wait for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
				want = ErrClosed
				closed = closeAsync(t, p) // it waits for the transaction, up to BusyTimeout
			}
			for range 2 {
				if err := receive(t, done, "a statement with no deadline waiting for the drain (BusyTimeout 200ms)"); !errors.Is(err, want) {
					t.Errorf("a statement waiting for the drain: %v, want %v", err, want)
				}
			}
			if closing {
				if err := receive(t, deleted, "the delete waiting at Close"); !errors.Is(err, ErrClosed) {
					t.Errorf("the delete waiting at Close: %v, want ErrClosed", err)
				}
				tx.Rollback()
				// Within BusyTimeout, or past it, said so.
				if err := receive(t, closed, "Close"); err != nil && !strings.Contains(err.Error(), "still in use") {
					t.Errorf("Close: %v", err)
				}
				waitFor(t, 10*time.Second, "the tenant to be closed", func() bool { return p.Stats().OpenConnections == 0 })
			}
		})
	}
}

// goroutinesIn counts the goroutines with fn (a function name as stack
// traces print it) on their stack.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn+"(")) {
			n++
		}
	}
	return n
}

// Close waits for the work in use (rows not yet closed, a transaction) to
// end before it gives up the data directory: it returned at once, its
// tenants' files still open and read or written, and a relayout (which
// takes the directory's lock) could then move them.
func TestCloseWaitsForWorkInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := New(Config{Dir: dir, BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := tctx("acme")
	for range 3 {
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('a')`); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := p.QueryContext(ctx, `SELECT tenant FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := p.BeginTx(tctx("globex"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatal(err)
	}
	closed := closeAsync(t, p)
	waitFor(t, 10*time.Second, "Close to wait for the work in use", func() bool { return p.c.r.budget.waiters.Load() > 0 })
	if _, err := lockDir(dir, true); !errors.Is(err, errDirLocked) {
		t.Fatalf("exclusive lock of the directory while its tenants are in use: %v, want errDirLocked", err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil || n != 3 {
		t.Fatalf("rows read during Close: %d, %v", n, err)
	}
	rows.Close()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, closed, "Close, once the rows and the transaction ended"); err != nil {
		t.Fatal(err)
	}
	assertNoOpenFiles(t, dir)
	l, err := lockDir(dir, true)
	if err != nil {
		t.Fatalf("exclusive lock after Close: %v", err)
	}
	l.Close()
}

// Work still in use after BusyTimeout: Close says which tenants, and keeps
// the directory locked until their connections close.
func TestCloseReportsWorkStillInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := New(Config{Dir: dir, BusyTimeout: 50 * time.Millisecond, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := p.BeginTx(tctx("acme"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatal(err)
	}
	err = p.Close()
	if err == nil || !strings.Contains(err.Error(), "1 tenants still in use") || !strings.Contains(err.Error(), "(acme)") {
		t.Fatalf("Close with a transaction open past BusyTimeout: %v", err)
	}
	if _, err := lockDir(dir, true); !errors.Is(err, errDirLocked) {
		t.Fatalf("exclusive lock of the directory while a tenant is in use: %v, want errDirLocked", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the directory's lock to be given up", func() bool {
		l, err := lockDir(dir, true)
		if err == nil {
			l.Close()
		}
		return err == nil
	})
	assertNoOpenFiles(t, dir)
	if got := directRows(t, p, "acme", `SELECT tenant FROM events`); !slices.Equal(got, []string{"tx"}) {
		t.Fatalf("rows %q, want the transaction's", got)
	}
}

// A delete queued for a tenant's writer when Close and the writer's release
// come at once: handed the semaphore as Close ended its wait, the drain
// passed it on, and neither the release nor Close (both found it held)
// closed the tenant: its file stayed open after Close (32-36 rounds of 40).
func TestCloseWhileADeleteWaits(t *testing.T) {
	t.Parallel()
	for round := range 40 {
		dir := t.TempDir()
		p, err := New(Config{Dir: dir, Migrations: []string{eventsTable}})
		if err != nil {
			t.Fatal(err)
		}
		tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`)
		tn.unpin()
		deleted := make(chan error, 1)
		go func() { deleted <- p.DeleteTenant(context.Background(), "acme") }()
		waitFor(t, 10*time.Second, "the delete to wait for the writer", func() bool { return tn.wsem.nwait.Load() > 0 })
		var wg sync.WaitGroup
		wg.Go(func() { tx.Commit() })
		wg.Go(func() { p.Close() })
		wg.Wait()
		<-deleted
		if st := p.Stats(); st.OpenConnections != 0 {
			t.Fatalf("round %d: after Close, the commit and the delete returned: %+v", round, st)
		}
		assertNoOpenFiles(t, dir)
	}
}

// Two deletes at once: the second waits for the first up to its context,
// as documented, and finds no tenant; bounded by BusyTimeout (200 ms here)
// it failed "database is locked" while the first still waited for work in
// flight.
func TestSecondDeleteWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	const busy = 200 * time.Millisecond
	p := newTestProxy(t, Config{BusyTimeout: busy, Migrations: []string{eventsTable}})
	tx, tn := holdWriterWith(t, p, "acme", `INSERT INTO events (tenant) VALUES ('tx')`) // work in flight
	tn.unpin()
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- p.DeleteTenant(context.Background(), "acme") }()
	waitFor(t, 10*time.Second, "the first delete to drain", func() bool { return tn.state.Load() == tenantDraining })
	go func() { second <- p.DeleteTenant(context.Background(), "acme") }()
	select {
	case err := <-second:
		t.Fatalf("the second delete returned while the first waited: %v", err)
	case <-time.After(5 * busy):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the first delete: %v", err)
	}
	if err := <-second; !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("the second delete: %v, want ErrTenantNotFound", err)
	}
}

// receive returns what ch delivers, failing the test if nothing comes
// within 10 s (what names the wait).
// closeAsync starts p.Close, which waits for the work in use, and returns
// once it has begun (further work fails with ErrClosed); Close's result
// arrives on the channel.
func closeAsync(t *testing.T, p *Proxy) <-chan error {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	waitFor(t, 10*time.Second, "Close to begin", p.c.r.isClosed.Load)
	return closed
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting 10 s on", what)
		panic("unreachable")
	}
}

// Close waits for a delete or restore in flight, which holds no
// connection while it copies and renames: Close returned nil, gave up the
// directory, and the restore renamed its file into place afterwards (an
// 86 MB copy kept growing in the data directory for 800 ms).
func TestCloseWaitsForARestoreInFlight(t *testing.T) {
	dir := t.TempDir()
	p, err := New(Config{Dir: dir, BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	insertN(t, p, "globex", 3)
	backup := filepath.Join(t.TempDir(), "globex.db")
	if err := p.BackupTenant(context.Background(), "globex", backup); err != nil {
		t.Fatal(err)
	}
	var closed <-chan error
	restoreBeforeRename = func() error {
		closed = closeAsync(t, p)
		waitFor(t, 10*time.Second, "Close to wait for the restore", func() bool { return p.c.r.budget.waiters.Load() > 0 })
		return nil
	}
	defer func() { restoreBeforeRename = nil }()
	if err := p.RestoreTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, closed, "Close, once the restore ended"); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteTenant(context.Background(), "acme"); !errors.Is(err, ErrClosed) {
		t.Errorf("a delete after Close: %v, want ErrClosed", err)
	}
}

// A transaction begun with BEGIN on a sql.Conn may finish after Close, as
// a BeginTx one may: its COMMIT was refused (ErrClosed) and its writes
// rolled back.
func TestCloseLetsARawTransactionCommit(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`BEGIN IMMEDIATE`, `INSERT INTO events (tenant) VALUES ('raw')`} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	closed := closeAsync(t, p)
	if _, err := c.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatalf("COMMIT after Close began: %v", err)
	}
	if _, err := c.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('after')`); !errors.Is(err, ErrClosed) {
		t.Errorf("a new statement on the Conn after its COMMIT: %v, want ErrClosed", err)
	}
	c.Close()
	if err := receive(t, closed, "Close, once the Conn was closed"); err != nil {
		t.Fatal(err)
	}
	if got := directRows(t, p, "acme", `SELECT tenant FROM events`); !slices.Equal(got, []string{"raw"}) {
		t.Fatalf("rows %q, want the raw transaction's", got)
	}
}

// A second Close (the deferred p.Close after GORM's or sqlx's Close of the
// DB) says the work is still in use: it said nil.
func TestCloseAgainWhileInUse(t *testing.T) {
	t.Parallel()
	p, err := New(Config{Dir: t.TempDir(), BusyTimeout: 50 * time.Millisecond, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := p.BeginTx(tctx("acme"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatal(err)
	}
	if err := p.DB.Close(); err == nil || !strings.Contains(err.Error(), "still in use") {
		t.Fatalf("the DB's Close: %v", err)
	}
	if err := p.Close(); err == nil || !strings.Contains(err.Error(), "(acme)") {
		t.Fatalf("Close again while acme is in use: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	receive(t, p.c.r.finished, "everything to close")
	if err := p.Close(); err != nil {
		t.Fatalf("Close once everything closed: %v", err)
	}
}
