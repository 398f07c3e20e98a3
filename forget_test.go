package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"
)

// registrySize counts the tenant objects in p's registry.
func registrySize(p *Proxy) int {
	n := 0
	p.c.r.tenants.Range(func(any, any) bool { n++; return true })
	return n
}

// watchLiveIDs makes p's budget count the times two objects of one tenant
// had connections open at once; read the count with twoLive.
func watchLiveIDs(p *Proxy) {
	b := p.c.r.budget
	b.mu.Lock()
	b.liveIDs = map[string]*tenant{}
	b.mu.Unlock()
}

func twoLive(p *Proxy) int {
	b := p.c.r.budget
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.twoLive
}

// The registry keeps the open tenants, not every tenant ever touched:
// closed by the budget, by the idle reaper, or never opened (unknown IDs,
// TenantExists, MigrateAll), a tenant object is let go.
func TestRouter_ForgetsIdleTenants(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 4, ReadersPerTenant: 1, IdleTimeout: time.Hour, Migrations: []string{eventsTable}})
	for i := range 40 {
		id := fmt.Sprintf("t%02d", i)
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
		countRows(t, p, id)
	}
	if n, open := registrySize(p), p.Stats().OpenTenants; n != open || open == 0 || open > 4 {
		t.Errorf("registry holds %d tenant objects after touching 40; %d tenants are open", n, open)
	}
	if got := p.c.r.forgotten.Load(); got < 36 {
		t.Errorf("%d tenant objects forgotten, want ≥ 36", got)
	}
	// Tenants come back with their data.
	for i := range 40 {
		if n := countRows(t, p, fmt.Sprintf("t%02d", i)); n != 1 {
			t.Fatalf("t%02d has %d rows, want 1", i, n)
		}
	}

	// Lookups that open nothing keep nothing.
	before := registrySize(p)
	for i := range 20 {
		id := fmt.Sprintf("ghost%02d", i)
		if ok, err := p.TenantExists(context.Background(), id); ok || err != nil {
			t.Fatalf("TenantExists(%s) = %v, %v", id, ok, err)
		}
	}
	if _, err := p.MigrateAll(context.Background(), MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, open := registrySize(p), p.Stats().OpenTenants; n != open || n > before {
		t.Errorf("registry holds %d tenant objects (had %d); %d tenants are open", n, before, open)
	}

	// Nor does a fan-out over every tenant.
	rows, err := p.QueryContext(WithFanOut(context.Background(), FanOutOptions{}), `SELECT count(*) FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for rows.Next() {
		seen++
	}
	if err := rows.Close(); err != nil || seen != 40 {
		t.Fatalf("fan-out: %d rows, %v", seen, err)
	}
	if n, open := registrySize(p), p.Stats().OpenTenants; n != open || n > before {
		t.Errorf("after a fan-out the registry holds %d tenant objects (had %d); %d tenants are open", n, before, open)
	}
}

// TestRouter_RollbackForgets: a fleet rollback keeps no tenant object.
func TestRouter_RollbackForgets(t *testing.T) {
	t.Parallel()
	fsys := fstest.MapFS{
		"0001_events.sql": {Data: []byte(eventsTable)},
		"0002_x.up.sql":   {Data: []byte(`CREATE TABLE x (v)`)},
		"0002_x.down.sql": {Data: []byte(`DROP TABLE x`)},
	}
	p := newTestProxy(t, Config{MaxConnections: 4, MigrationsFS: fsys, MigrationMode: MigrateManual})
	for i := range 20 {
		if err := p.CreateTenant(context.Background(), fmt.Sprintf("t%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := p.Rollback(context.Background(), RollbackOptions{To: 1})
	if err != nil || rep.Migrated != 20 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if n, open := registrySize(p), p.Stats().OpenTenants; n != open || n > 4 {
		t.Errorf("after a rollback the registry holds %d tenant objects; %d tenants are open", n, open)
	}
}

func TestRouter_IdleReaperForgets(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{IdleTimeout: 20 * time.Millisecond, Migrations: []string{eventsTable}})
	for _, id := range []string{"a", "b", "c"} {
		if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the idle reaper to close the tenants and the registry to empty", func() bool {
		return p.Stats().OpenConnections == 0 && registrySize(p) == 0
	})
	if n := countRows(t, p, "b"); n != 1 {
		t.Errorf("b has %d rows after coming back, want 1", n)
	}
}

// Many goroutines on a few tenants behind a tiny budget and a short idle
// timeout: tenant objects are forgotten and made again all the time, while
// writes (through group commit, transactions, sql.Conn) and reads go on.
// Every write lands exactly once and no two objects of one tenant ever
// have connections open together.
func TestRouter_ForgetRaces(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{MaxConnections: 3, ReadersPerTenant: 2, IdleTimeout: time.Millisecond, Migrations: []string{eventsTable}})
	watchLiveIDs(p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := []string{"a", "b", "c", "d"}
	var wrote [4]atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 150 {
				k := (g + i) % len(ids)
				id := ids[k]
				c := WithOrgID(ctx, id)
				var err error
				switch i % 5 {
				case 0, 1: // autocommit write (group commit when contended)
					if _, err = p.ExecContext(c, `INSERT INTO events (tenant) VALUES (?)`, id); err == nil {
						wrote[k].Add(1)
					}
				case 2:
					err = p.QueryRowContext(c, `SELECT count(*) FROM events`).Scan(new(int))
				case 3:
					var tx *sql.Tx
					if tx, err = p.BeginTx(c, nil); err == nil {
						if _, err = tx.ExecContext(c, `INSERT INTO events (tenant) VALUES (?)`, id); err == nil {
							if err = tx.Commit(); err == nil {
								wrote[k].Add(1)
							}
						} else {
							tx.Rollback()
						}
					}
				case 4:
					var sc *sql.Conn
					if sc, err = p.Conn(c); err == nil {
						if err = sc.QueryRowContext(c, `SELECT count(*) FROM events`).Scan(new(int)); err == nil {
							if _, err = sc.ExecContext(c, `INSERT INTO events (tenant) VALUES (?)`, id); err == nil {
								wrote[k].Add(1)
							}
						}
						sc.Close()
					}
				}
				if err != nil {
					t.Errorf("%s, step %d: %v", id, i, err)
					return
				}
			}
		})
	}
	// Admin operations in between take the same objects.
	wg.Go(func() {
		for i := range 40 {
			id := ids[i%len(ids)]
			if err := p.CheckTenant(ctx, id); err != nil && !errors.Is(err, ErrTenantNotFound) {
				t.Errorf("CheckTenant(%s): %v", id, err)
				return
			}
			if _, err := p.MigrationStatus(ctx, id); err != nil && !errors.Is(err, ErrTenantNotFound) {
				t.Errorf("MigrationStatus(%s): %v", id, err)
				return
			}
		}
	})
	wg.Wait()
	for k, id := range ids {
		if got, want := countRows(t, p, id), int(wrote[k].Load()); got != want {
			t.Errorf("%s has %d rows, %d writes succeeded", id, got, want)
		}
	}
	if n := twoLive(p); n != 0 {
		t.Errorf("two objects of one tenant had connections open at once, %d times", n)
	}
	if n := p.c.r.forgotten.Load(); n < 10 {
		t.Errorf("tenant objects were forgotten %d times: the test did not race what it is about", n)
	}
}

// Stats and telemetry follow a tenant across the objects it is given: its
// metrics carry the same tenant attribute and add up.
func TestTelemetry_ForgottenTenantsAddUp(t *testing.T) {
	t.Parallel()
	rig := newTelemetryRig(t, Config{MaxConnections: 2, ReadersPerTenant: 1, Migrations: []string{eventsTable}})
	p := rig.p
	for range 3 {
		for _, id := range []string{"acme", "globex", "initech"} {
			if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Which tenant the budget closes depends on 10 ms clock ticks; each
	// one closed (idle, unpinned) is forgotten.
	evictions := p.Stats().Evictions
	if n := p.c.r.forgotten.Load(); evictions < 1 || n != evictions {
		t.Fatalf("tenant objects forgotten %d times, %d evictions; want as many, and at least one", n, evictions)
	}
	ms := rig.collect(t)
	var evicted int64
	for _, id := range []string{"acme", "globex", "initech"} {
		if got := histCount(t, ms["sqliteproxy.operation.duration"], map[string]string{attrTenant: id, attrOperation: "exec"}); got != 3 {
			t.Errorf("%s: %d exec operations recorded, want 3", id, got)
		}
		evicted += sumInt(t, ms["sqliteproxy.tenant.evictions"], map[string]string{attrTenant: id})
	}
	if evicted != evictions {
		t.Errorf("%d evictions recorded under the tenants' attributes, Stats says %d", evicted, evictions)
	}
	st := p.Stats()
	if n := len(st.Tenants); n == 0 || n > 2 || st.Tenants[n-1].ID != "initech" || st.Tenants[n-1].Open != 1 {
		t.Errorf("stats list %+v, want initech (the last used) among at most 2, with its writer open", st.Tenants)
	}
	if n := registrySize(p); n != len(st.Tenants) {
		t.Errorf("registry holds %d tenant objects, %d tenants are open", n, len(st.Tenants))
	}
}
