package sqliteproxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// retentionProxy returns a proxy with a cap of 64 and n tenants created.
func retentionProxy(t *testing.T, n int) (*Proxy, []string) {
	t.Helper()
	p := newTestProxy(t, Config{MaxConnections: 64, ReadersPerTenant: 1, IdleTimeout: time.Hour, ExplicitCreate: true, Migrations: []string{eventsTable}})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%04d", i)
		if err := p.CreateTenant(context.Background(), ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	return p, ids
}

// readEach reads from the tenant pick returns, n times, one at a time.
func readEach(t *testing.T, p *Proxy, n int, pick func() string) {
	t.Helper()
	for range n {
		if err := p.QueryRowContext(tctx(pick()), `SELECT count(*) FROM events`).Scan(new(int)); err != nil {
			t.Fatal(err)
		}
	}
}

// Uniform reads over many more tenants than the cap find their tenant open
// ~3 % of the time: the proxy keeps retainMin tenants open instead of 64,
// and a working set that then repeats (40 tenants) brings the cap back.
func TestRetention_ShrinksWhileTenantsChurnAndGrowsBack(t *testing.T) {
	t.Parallel()
	p, ids := retentionProxy(t, 2000)
	rng := rand.New(rand.NewPCG(1, 2))
	readEach(t, p, 1000, func() string { return ids[rng.IntN(len(ids))] })
	rt := p.c.r.retain
	if soft := rt.soft.Load(); soft != retainMin {
		t.Fatalf("soft cap %d after uniform churn over 2 000 tenants, want %d", soft, retainMin)
	}
	if st := p.Stats(); st.OpenConnections > retainMin {
		t.Errorf("%d connections open, want ≤ %d", st.OpenConnections, retainMin)
	}
	readEach(t, p, 2000, func() string { return ids[rng.IntN(40)] })
	if soft := rt.soft.Load(); soft < 40 {
		t.Errorf("soft cap %d after 2 000 reads over 40 tenants, want ≥ 40", soft)
	}
	if st := p.Stats(); st.OpenTenants < 40 {
		t.Errorf("%d tenants open after 2 000 reads over 40, want all 40", st.OpenTenants)
	}
}

// A hot set (80 % of reads on 16 tenants, the rest over 2 000) finds its
// tenant open often enough: the whole cap stays.
func TestRetention_HotSetKeepsTheCap(t *testing.T) {
	t.Parallel()
	p, ids := retentionProxy(t, 2000)
	rng := rand.New(rand.NewPCG(3, 4))
	readEach(t, p, 2000, func() string {
		if rng.IntN(5) > 0 {
			return ids[rng.IntN(16)]
		}
		return ids[16+rng.IntN(len(ids)-16)]
	})
	if soft := p.c.r.retain.soft.Load(); soft != 64 {
		t.Errorf("soft cap %d with a hot set, want the cap (64)", soft)
	}
	if st := p.Stats(); st.OpenConnections < 60 {
		t.Errorf("%d connections open, want the cache full (≥ 60 of 64)", st.OpenConnections)
	}
}

// A working set within the cap never churns: nothing is closed for
// retention and the whole cap stays.
func TestRetention_WorkingSetWithinTheCap(t *testing.T) {
	t.Parallel()
	p, ids := retentionProxy(t, 50)
	rng := rand.New(rand.NewPCG(5, 6))
	readEach(t, p, 1000, func() string { return ids[rng.IntN(len(ids))] })
	if st := p.Stats(); st.OpenTenants != 50 || st.Evictions != 0 {
		t.Errorf("%d of 50 tenants open, %d evictions; want all open, none evicted", st.OpenTenants, st.Evictions)
	}
	if rt := p.c.r.retain; rt.soft.Load() != 64 || rt.churning.Load() {
		t.Errorf("soft cap %d, churning %v; want 64, false", rt.soft.Load(), rt.churning.Load())
	}
}
