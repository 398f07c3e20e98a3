package sqliteproxy

import (
	"context"
	"testing"
	"time"
)

func TestProxy_StatsPerTenant(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 10})
	ctx := tctx("acme")
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.ExecContext(ctx, `CREATE TABLE t (a)`)
	countTenant := func() TenantStats {
		for _, ts := range p.Stats().Tenants {
			if ts.ID == "acme" {
				return ts
			}
		}
		t.Fatalf("acme not in %+v", p.Stats())
		return TenantStats{}
	}
	if ts := countTenant(); ts.Open != 1 || ts.InUse != 1 || ts.LastUsed.IsZero() {
		t.Errorf("during tx: %+v", ts)
	}
	tx.Commit()
	st := p.Stats()
	if ts := countTenant(); ts.InUse != 0 || st.OpenConnections != 1 || st.MaxConnections != 10 || st.OpenTenants != 1 {
		t.Errorf("after tx: %+v, %+v", ts, st)
	}
}

// A tenant whose writer is being waited for (its semaphore held, no slot
// for the writer yet) counts no more connections in use than it has open.
func TestProxy_StatsInUseNeverAboveOpen(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 2, Migrations: []string{eventsTable}})
	a, b := tctx("a"), tctx("b")
	for _, ctx := range []context.Context{a, b} {
		if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('x')`); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := p.BeginTx(a, nil) // a's writer: one slot
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(a, `INSERT INTO events (tenant) VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	rows, err := p.QueryContext(b, `SELECT id FROM events`) // b's reader: the other
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	done := make(chan error, 1)
	go func() { // b's writer waits for a slot, its semaphore held
		_, err := p.ExecContext(b, `INSERT INTO events (tenant) VALUES ('b')`)
		done <- err
	}()
	tb, err := p.c.r.tenant("b")
	if err != nil {
		t.Fatal(err)
	}
	defer tb.unpin()
	waitFor(t, 10*time.Second, "b's writer to be waited for", tb.wsem.held.Load)
	for _, ts := range p.Stats().Tenants {
		if ts.InUse > ts.Open {
			t.Errorf("%s: %d in use of %d open", ts.ID, ts.InUse, ts.Open)
		}
	}
	rows.Close()
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
