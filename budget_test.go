package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/fdcount"
)

func TestBudget_CapHoldsUnderLoad(t *testing.T) {
	// Serial: its sampler lists /proc/self/fd, every descriptor of the
	// process, in a busy loop, and the load it holds the cap under wants the
	// machine to itself.
	if !fdcount.Supported() {
		t.Skip("needs /proc/self/fd")
	}
	const limit, tenants, workers, ops = 8, 120, 12, 150
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, MaxConnections: limit, Migrations: []string{eventsTable}})
	rdir := realDir(t, dir)

	stop := make(chan struct{})
	var maxSeen atomic.Int64
	var samples atomic.Int64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := fdcount.Count(rdir, ".db")
			if n > limit {
				// Confirm: one listing is not atomic and, under this much
				// churn, can count a file closed and its replacement both.
				n = fdcount.CountStable(rdir, ".db")
			}
			samples.Add(1)
			if int64(n) > maxSeen.Load() {
				maxSeen.Store(int64(n))
			}
		}
	})

	var wg sync.WaitGroup
	var failures atomic.Int64
	for w := range workers {
		wg.Go(func() {
			for i := range ops {
				id := fmt.Sprintf("t%03d", (w*37+i*13)%tenants)
				ctx := tctx(id)
				var err error
				switch i % 3 {
				case 0:
					_, err = p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES (?)`, id)
				case 1:
					err = p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(new(int))
				default:
					tx, e := p.BeginTx(ctx, nil)
					if e != nil {
						err = e
						break
					}
					tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES (?)`, id)
					err = tx.Commit()
				}
				if err != nil {
					failures.Add(1)
					t.Errorf("op on %s: %v", id, err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d operations failed", failures.Load())
	}
	if m := maxSeen.Load(); m > limit {
		t.Errorf("up to %d tenant files open, cap %d", m, limit)
	}
	st := p.Stats()
	if st.OpenConnections > limit || st.Evictions == 0 {
		t.Errorf("stats %+v: want open <= %d and evictions > 0", st, limit)
	}
	t.Logf("max open .db fds %d over %d samples; %+v", maxSeen.Load(), samples.Load(), st)
}

func TestBudget_WaitHonoursDeadlineAndNeverEvictsLeased(t *testing.T) {
	// Serial: it times a wait.
	const limit = 2
	p := newTestProxy(t, Config{MaxConnections: limit, ReadersPerTenant: -1, Migrations: []string{eventsTable}})
	// Two tenants each hold their writer in an open transaction: the budget is full.
	var txs []*txHolder
	for _, id := range []string{"a1", "a2"} {
		ctx := tctx(id)
		tx, err := p.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
		txs = append(txs, &txHolder{tx: tx, id: id})
	}
	ctx, cancel := context.WithTimeout(tctx("b"), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('b')`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third tenant with a full budget: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("waited %v for a 150ms deadline", d)
	}
	// The transactions were not disturbed.
	for _, h := range txs {
		if err := h.tx.Commit(); err != nil {
			t.Fatalf("commit %s: %v", h.id, err)
		}
		if n := countRows(t, p, h.id); n != 1 {
			t.Errorf("%s: %d rows, want 1", h.id, n)
		}
	}
	// Now idle: a waiting caller gets a slot by eviction.
	if _, err := p.ExecContext(tctx("b"), `INSERT INTO events (tenant) VALUES ('b')`); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.OpenConnections > limit || st.Evictions == 0 {
		t.Errorf("stats %+v", st)
	}
}

type txHolder struct {
	tx interface{ Commit() error }
	id string
}

func TestBudget_WaiterGetsSlotWhenReleased(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 1, Migrations: []string{eventsTable}})
	ctx := tctx("a")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Stats().Waits
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(tctx("b"), `INSERT INTO events (tenant) VALUES ('b')`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "b to wait for a connection (Stats.Waits to grow)", func() bool {
		return p.Stats().Waits > before
	})
	// Waiting, it must get nothing while the only connection is in a transaction.
	select {
	case err := <-done:
		t.Fatalf("got a connection while the only one is in a transaction: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	tx.Commit()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken when the connection came free")
	}
}

// A cap of one with readers: a tenant must be able to serve reads and
// writes alternately without deadlocking on its own idle connections.
func TestBudget_TinyCapNoSelfDeadlock(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 1, ReadersPerTenant: 4, Migrations: []string{eventsTable}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("t%d", (w+i)%3)
				c := WithOrgID(ctx, id)
				if i%2 == 0 {
					if _, err := p.ExecContext(c, `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
						t.Error(err)
						return
					}
				} else if err := p.QueryRowContext(c, `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// A full budget closes the least recently used idle tenant, for a reader
// (evictForReader) and for a writer (reserve) alike.
func TestBudget_EvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 3, ReadersPerTenant: 1, IdleTimeout: time.Hour, ExplicitCreate: true, Migrations: []string{eventsTable}})
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		if err := p.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	b := p.c.r.budget
	use := func(id string, write bool) {
		t.Helper()
		// A later tick than the last use: lastUsed has the clock's resolution.
		tick := b.now()
		waitFor(t, 5*time.Second, "the budget's clock to tick", func() bool { return b.now() > tick })
		var err error
		if write {
			_, err = p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id)
		} else {
			err = p.QueryRowContext(tctx(id), `SELECT count(*) FROM events`).Scan(new(int))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	open := func() []string {
		var ids []string
		for _, ts := range p.Stats().Tenants {
			ids = append(ids, ts.ID)
		}
		return ids
	}
	for _, id := range []string{"a", "b", "c", "a"} {
		use(id, false) // a reader each: the budget is full
	}
	use("d", false) // evicts b, the least recently used
	if got, want := open(), []string{"a", "c", "d"}; !slices.Equal(got, want) {
		t.Errorf("open after a reader for d: %v, want %v", got, want)
	}
	use("e", true) // a writer: evicts c
	if got, want := open(), []string{"a", "d", "e"}; !slices.Equal(got, want) {
		t.Errorf("open after a write to e: %v, want %v", got, want)
	}
}

func TestBudget_IdleTimeoutClosesTenants(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, IdleTimeout: 50 * time.Millisecond})
	for _, id := range []string{"a", "b", "c"} {
		if _, err := p.ExecContext(tctx(id), `CREATE TABLE t (a)`); err != nil {
			t.Fatal(err)
		}
	}
	// On a busy machine the first tenants may idle out before the last
	// one opens: each is open or closed by the idle timeout already.
	if st := p.Stats(); st.OpenTenants+int(st.Evictions) != 3 {
		t.Fatalf("stats %+v, want 3 tenants open or evicted", st)
	}
	waitFor(t, 5*time.Second, "the idle timeout to close the tenants (Stats.OpenConnections to reach 0, 3 evictions)", func() bool {
		st := p.Stats()
		return st.OpenConnections == 0 && st.Evictions == 3
	})
	assertNoOpenFiles(t, dir)
	// Reopened on next use.
	if _, err := p.ExecContext(tctx("a"), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
}

// A wait without a deadline ends after BusyTimeout with SQLITE_BUSY, as
// mattn's busy handler would, instead of waiting for ever: here a write
// through the *sql.DB while the same goroutine holds the tenant's writer in
// a transaction.
func TestBudget_WaitWithoutDeadlineIsBusyTimeout(t *testing.T) {
	// Serial: it times a wait.
	p := newTestProxy(t, Config{BusyTimeout: 100 * time.Millisecond, MaxConnections: 1, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	check := func(what string, err error) {
		t.Helper()
		var se sqlite3.Error
		if !errors.As(err, &se) || se.Code != sqlite3.ErrBusy || !strings.Contains(err.Error(), "database is locked") {
			t.Errorf("%s: %v, want SQLITE_BUSY", what, err)
		}
	}
	start := time.Now()
	_, err = p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('outside the tx')`)
	check("writer wait", err)
	if d := time.Since(start); d < 90*time.Millisecond || d > 3*time.Second {
		t.Errorf("writer wait took %v, BusyTimeout 100ms", d)
	}
	_, err = p.ExecContext(tctx("other"), `INSERT INTO events (tenant) VALUES ('x')`)
	check("budget wait", err)

	// A context that is cancelled while it waits still reports its own
	// error. The wait is cancelled once it is seen queued; a Proxy with a
	// long BusyTimeout makes sure the bound has not ended it by then.
	p2 := newTestProxy(t, Config{BusyTimeout: time.Minute, Migrations: []string{eventsTable}})
	tx2, err := p2.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelled := make(chan error, 1)
	go func() {
		_, err := p2.ExecContext(cctx, `INSERT INTO events (tenant) VALUES ('x')`)
		cancelled <- err
	}()
	acme := p2.c.r.mustTenant(t, "acme")
	waitFor(t, 10*time.Second, "the INSERT to queue for acme's writer", func() bool { return acme.wsem.nwait.Load() == 1 })
	cancel()
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled wait: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled INSERT did not return within 10s")
	}
}

// A slot made by evicting an idle tenant is no wait: Stats.Waits counts
// the callers that had to wait for a connection, and the wait metric
// records only them.
func TestBudget_EvictionIsNoWait(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 1, ReadersPerTenant: -1, Migrations: []string{eventsTable}})
	for i := range 5 {
		id := fmt.Sprintf("t%d", i)
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.Waits != 0 || st.Evictions != 4 {
		t.Errorf("five tenants one after another through a cap of one: Waits %d, Evictions %d; want 0, 4", st.Waits, st.Evictions)
	}
}

// A write with no deadline waits BusyTimeout in all: it waited for the
// writer (held by another write waiting for a slot), then as long again
// for a slot itself.
func TestBudget_ChainedWaitsShareBusyTimeout(t *testing.T) {
	t.Parallel()
	const busy = time.Second
	p := newTestProxy(t, Config{MaxConnections: 1, ReadersPerTenant: 1, BusyTimeout: busy, Migrations: []string{eventsTable}})
	tx, err := p.BeginTx(tctx("b"), nil) // b holds the only slot
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`INSERT INTO events (tenant) VALUES ('b')`); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { // takes a's writer, waits for a slot
		_, err := p.ExecContext(tctx("a"), `INSERT INTO events (tenant) VALUES ('a')`)
		first <- err
	}()
	waitFor(t, 10*time.Second, "the first write to wait for a slot", func() bool { return p.Stats().Waits >= 1 })
	start := time.Now()
	_, err = p.ExecContext(tctx("a"), `INSERT INTO events (tenant) VALUES ('a2')`) // waits for the writer, then a slot
	took := time.Since(start)
	if se := (sqlite3.Error{}); !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
		t.Errorf("the second write: %v, want SQLITE_BUSY", err)
	}
	if took > busy*17/10 { // 2 s before
		t.Errorf("the second write waited %v in all, BusyTimeout %v", took, busy)
	}
	if err := <-first; err == nil {
		t.Error("the first write got a slot b holds")
	}
}

// The same when the write meets a restore's drain after its wait for the
// writer: the wait for the drain started a BusyTimeout of its own, and the
// write failed after nearly twice BusyTimeout.
func TestBudget_DrainWaitSharesBusyTimeout(t *testing.T) {
	t.Parallel()
	for _, gc := range []GroupCommitMode{GroupCommitOff, GroupCommitOn} {
		t.Run(fmt.Sprint("group_commit=", gc == GroupCommitOn), func(t *testing.T) {
			t.Parallel()
			const busy = time.Second
			p := newTestProxy(t, Config{BusyTimeout: busy, GroupCommit: gc, Migrations: []string{eventsTable}})
			ctx := tctx("acme")
			if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('x')`); err != nil {
				t.Fatal(err)
			}
			backup := filepath.Join(t.TempDir(), "backup.db")
			if err := p.BackupTenant(context.Background(), "acme", backup); err != nil {
				t.Fatal(err)
			}
			tn, err := p.c.r.tenant("acme")
			if err != nil {
				t.Fatal(err)
			}
			defer tn.unpin()
			rows, err := p.QueryContext(ctx, `SELECT id FROM events`) // a leased reader the drain waits for
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			tx, err := p.BeginTx(ctx, nil) // holds the writer
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('tx')`); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			took := make(chan time.Duration, 1)
			go func() {
				_, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('w')`) // no deadline
				if se := (sqlite3.Error{}); !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
					t.Errorf("the write: %v, want SQLITE_BUSY", err)
				}
				took <- time.Since(start)
			}()
			waitFor(t, 10*time.Second, "the write to wait for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
			rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			restored := make(chan error, 1)
			go func() { restored <- p.RestoreTenant(rctx, "acme", backup) }()
			waitFor(t, 10*time.Second, "the restore to queue behind it", func() bool { return tn.wsem.nwait.Load() == 2 })
			// Most of the write's BusyTimeout spent on the writer, it is
			// handed the writer, meets the drain and waits for it.
			waitFor(t, 10*time.Second, "most of BusyTimeout to pass", func() bool { return time.Since(start) > busy*8/10 })
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if d := <-took; d > busy*14/10 {
				t.Errorf("the write (no deadline) waited %v, BusyTimeout %v", d, busy)
			}
			rows.Close()
			if err := <-restored; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A wait that no SQLite lock is part of says what stayed in use: a read
// waiting for one of the tenant's readers, a write waiting for a slot of
// the budget. Both stay SQLITE_BUSY for code that retries on it (they said
// "database is locked" and nothing else, adv42).
func TestBudget_BusyWaitsSayWhatStayedInUse(t *testing.T) {
	t.Parallel()
	const busy = 200 * time.Millisecond
	p := newTestProxy(t, Config{MaxConnections: 2, ReadersPerTenant: 1, BusyTimeout: busy, Migrations: []string{eventsTable}})
	if _, err := p.ExecContext(tctx("a"), `INSERT INTO events (tenant) VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	rows, err := p.QueryContext(tctx("a"), `SELECT id FROM events`) // a's only reader
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	busyWith := func(what string, err error, want string) {
		t.Helper()
		if se := (sqlite3.Error{}); !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
			t.Errorf("%s: %v, want SQLITE_BUSY", what, err)
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want it to name %s", what, err, want)
		}
	}
	var n int
	err = p.QueryRowContext(tctx("a"), `SELECT count(*) FROM events`).Scan(&n)
	busyWith("a second read of a", err, "ReadersPerTenant 1")

	// a's writer and reader fill the budget, and a's open Rows keep them.
	_, err = p.ExecContext(tctx("b"), `INSERT INTO events (tenant) VALUES ('b')`)
	busyWith("a write to b", err, "MaxConnections 2")
	err = p.QueryRowContext(tctx("b"), `SELECT count(*) FROM events`).Scan(&n)
	busyWith("a read of b", err, "MaxConnections 2")

	// A deadline of the caller's own still says the context's error.
	ctx, cancel := context.WithTimeout(tctx("a"), busy/4)
	defer cancel()
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a read of a with a deadline: %v, want context.DeadlineExceeded", err)
	}
}
