package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"slices"
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
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
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
}

// A statement waiting for its tenant's writer when Close returns does not
// run afterwards: once the transaction holding the writer ends, it fails
// with ErrClosed (it ran and committed two seconds after Close).
func TestCloseWhileWaitingForTheWriter(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, GroupCommit: GroupCommitOff})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('waiting')`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "the statement to wait for the writer", func() bool { return tn.wsem.nwait.Load() > 0 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("the waiting statement: %v, want ErrClosed", err)
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
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			for range tc.waiters {
				select {
				case err := <-done:
					if !errors.Is(err, ErrClosed) {
						t.Errorf("a waiting statement: %v, want ErrClosed", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("a waiting statement still waits 10 s after Close (BusyTimeout: a minute)")
				}
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if got := directRows(t, p, "acme", `SELECT tenant FROM events`); len(got) != 0 {
				t.Fatalf("rows %q, want none", got)
			}
		})
	}
}
