package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// keptReader returns the reader the routing conn behind c keeps parked,
// nil when none.
func keptReader(t *testing.T, c *sql.Conn) *physConn {
	t.Helper()
	var pc *physConn
	if err := c.Raw(func(dc any) error { pc = dc.(*conn).kept; return nil }); err != nil {
		t.Fatal(err)
	}
	return pc
}

// parkedConn returns a sql.Conn (closed when the test ends) whose routing
// conn read the events of ctx's tenant and keeps its reader parked, as a
// check-in would leave it: the checkout itself goes on.
func parkedConn(t *testing.T, p *Proxy, ctx context.Context) *sql.Conn {
	t.Helper()
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	queryInt(t, c, ctx, `SELECT count(*) FROM events`)
	if err := c.Raw(func(dc any) error { dc.(*conn).release(); return nil }); err != nil {
		t.Fatal(err)
	}
	if keptReader(t, c) == nil {
		t.Fatal("the conn keeps no reader after a read")
	}
	return c
}

// A read through *sql.DB leaves its reader parked in the routing conn, and
// the next read on that conn runs on the same reader without taking it
// from the pool; Stats counts a parked reader as open, not in use.
func TestKeep_ReaderParkedAcrossCheckouts(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("a")
	p.SetMaxOpenConns(1) // one routing conn: every checkout is the same one
	for i := range 50 {
		if got := countRows(t, p, "a"); got != 0 {
			t.Fatalf("read %d: %d rows", i, got)
		}
	}
	st := p.Stats()
	if len(st.Tenants) != 1 || st.Tenants[0].InUse != 0 || st.Tenants[0].Open != 2 {
		t.Fatalf("after 50 reads: %+v, want one tenant with a writer and one reader open, none in use", st.Tenants)
	}
	c, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kept := keptReader(t, c)
	if kept == nil {
		t.Fatal("the routing conn keeps no reader after a read")
	}
	var used *physConn
	if err := c.Raw(func(dc any) error {
		rc := dc.(*conn)
		if _, err := rc.QueryContext(ctx, `SELECT 1`, nil); err != nil {
			return err
		}
		used = rc.pc
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if used != kept {
		t.Fatal("the next read of the checkout leased another reader than the one kept")
	}
}

// A reader parked in an idle routing conn is taken back by a read that
// finds no idle reader and may open none: with one reader per tenant, the
// second read neither waits for the routing conn's next checkout nor fails
// at its deadline.
func TestKeep_ParkedReaderTakenBackByAnotherRead(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, ReadersPerTenant: 1, BusyTimeout: time.Minute})
	ctx := tctx("a")
	x := parkedConn(t, p, ctx)
	y, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if got := queryInt(t, y, short, `SELECT count(*) FROM events`); got != 0 {
		t.Fatalf("%d rows", got)
	}
	// The reader is y's now (leased): x's next read waits for it.
	shorter, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	var n int
	if err := x.QueryRowContext(shorter, `SELECT count(*) FROM events`).Scan(&n); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("x read while y holds the only reader: %v, want a deadline", err)
	}
	if err := y.Close(); err != nil {
		t.Fatal(err)
	}
	queryInt(t, x, ctx, `SELECT count(*) FROM events`)
}

// A kept reader in use when another read queues for it is asked back: it
// goes to the waiter at its checkout's end instead of staying parked.
func TestKeep_ReaderInUseGoesToTheWaiter(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, ReadersPerTenant: 1, BusyTimeout: time.Minute})
	ctx := tctx("a")
	x := parkedConn(t, p, ctx)
	// x's next checkout takes its kept reader (in use by x from here on).
	queryInt(t, x, ctx, `SELECT count(*) FROM events`)
	waitsBefore := p.Stats().Waits
	done := make(chan error, 1)
	go func() {
		var n int
		done <- p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	}()
	waitFor(t, 10*time.Second, "the second read to queue for the reader", func() bool { return p.Stats().Waits > waitsBefore })
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, done, "the queued read"); err != nil {
		t.Fatalf("read queued behind a kept reader: %v", err)
	}
}

// A tenant whose only reader is parked in an idle routing conn is as idle
// as before: a full budget evicts it for another tenant at once.
func TestKeep_ParkedReaderDoesNotHoldEviction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fleet(t, dir, 2, []string{eventsTable})
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, MaxConnections: 1, BusyTimeout: time.Minute})
	short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, id := range []string{"t000", "t001", "t000"} {
		if got := queryInt(t, p, WithOrgID(short, id), `SELECT count(*) FROM events`); got != 0 {
			t.Fatalf("%s: %d rows", id, got)
		}
	}
	if st := p.Stats(); st.Evictions < 2 || st.OpenConnections != 1 {
		t.Fatalf("stats %+v: want two evictions and one connection open", st)
	}
}

// DeleteTenant drains a tenant whose reader a routing conn keeps parked;
// that conn's next read finds its reader gone, not the deleted file.
func TestKeep_DeleteWithParkedReader(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	ctx := tctx("a")
	p.SetMaxOpenConns(1)
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('old')`); err != nil {
		t.Fatal(err)
	}
	if got := countRows(t, p, "a"); got != 1 {
		t.Fatalf("%d rows", got)
	}
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.DeleteTenant(short, "a"); err != nil {
		t.Fatalf("delete with a parked reader: %v", err)
	}
	if got := countRows(t, p, "a"); got != 0 {
		t.Fatalf("%d rows after the delete: a reader of the deleted file was used", got)
	}
}

// Close closes parked readers: no tenant file stays open.
func TestKeep_CloseClosesParkedReaders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := New(Config{Dir: dir, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		countRows(t, p, fmt.Sprintf("t%d", i))
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoOpenFiles(t, dir)
}

// A conn that kept a reader once cannot take it again after another conn
// took it back and keeps it now (the token of the keep word moved on),
// though the reader is parked, in the state the first conn left it in.
func TestKeep_TokenStopsAStaleKeeper(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, ReadersPerTenant: 1})
	ctx := tctx("a")
	countRows(t, p, "a") // create and open the tenant
	r := p.c.r
	read := func(c *conn) {
		t.Helper()
		rs, err := c.QueryContext(ctx, `SELECT 1`, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs.Close()
		c.IsValid() // check-in: the reader is parked
	}
	x, y := &conn{r: r}, &conn{r: r}
	defer x.Close()
	defer y.Close()
	read(x)
	read(y) // takes x's parked reader back: the only one
	if x.kept == nil || x.kept != y.kept {
		t.Fatalf("x keeps %p, y %p: want both to name the one reader", x.kept, y.kept)
	}
	tn, err := x.tenant("a")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	if pc := x.takeKept(tn); pc != nil {
		t.Fatal("x took back a reader that y keeps")
	}
	if pc := y.takeKept(tn); pc == nil {
		t.Fatal("y could not take the reader it keeps")
	} else {
		y.putReader(tn, pc)
	}
}

// Many goroutines reading, writing and switching tenants through few
// readers and a small budget, beside deletes: every operation succeeds
// (or, having waited for a delete's drain, finds the tenant gone),
// and at the end nothing is in use and Close leaves no file open.
func TestKeep_Stress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := New(Config{Dir: dir, Migrations: []string{eventsTable}, ReadersPerTenant: 1, MaxConnections: 4, BusyTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				ctx := tctx(ids[(g+i)%len(ids)])
				var err error
				switch {
				case g == 0 && i%50 == 49:
					err = p.DeleteTenant(ctx, ids[i%len(ids)])
				case i%5 == 0:
					_, err = p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('x')`)
				default:
					var n int
					err = p.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
				}
				if errors.Is(err, ErrTenantNotFound) {
					err = nil // it waited for a delete's drain, as documented
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d, op %d: %w", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, ts := range p.Stats().Tenants {
		if ts.InUse != 0 {
			t.Errorf("tenant %s: %d in use after the work ended", ts.ID, ts.InUse)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoOpenFiles(t, dir)
}

// Giving back a parked reader (the routing conn closed, or keeping another
// tenant's reader) is no use of its tenant: its LastUsed stays that of the
// check-in that parked it, so IdleTimeout and the budget's least recently
// used order see the tenant as idle as it is.
func TestKeep_DroppingAParkedReaderIsNoUse(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}, IdleTimeout: time.Hour})
	r := p.c.r
	countRows(t, p, "a")
	countRows(t, p, "b")
	read := func(c *conn, id string) {
		t.Helper()
		rs, err := c.QueryContext(tctx(id), `SELECT 1`, nil)
		if err != nil {
			t.Fatal(err)
		}
		rs.Close()
		c.IsValid() // check-in: the reader is parked
	}
	lastUsed := func(id string) int64 {
		t.Helper()
		tn, err := r.tenant(id)
		if err != nil {
			t.Fatal(err)
		}
		defer tn.unpin()
		return tn.lastUsed.Load()
	}
	for _, drop := range []struct {
		name string
		f    func(c *conn)
	}{
		{"Close", func(c *conn) { c.Close() }},
		{"AnotherTenant", func(c *conn) { read(c, "b") }},
	} {
		c := &conn{r: r}
		read(c, "a")
		if c.kept == nil {
			t.Fatal("no reader kept")
		}
		stamp := lastUsed("a")
		waitFor(t, 10*time.Second, "the coarse clock to move on", func() bool { return r.budget.now() > stamp })
		drop.f(c)
		if c.kept != nil && c.kept.t.id == "a" {
			t.Fatalf("%s: a's reader still kept", drop.name)
		}
		if got := lastUsed("a"); got != stamp {
			t.Errorf("%s: giving a's parked reader back moved its LastUsed by %v", drop.name, time.Duration(got-stamp))
		}
		c.Close()
	}
}
