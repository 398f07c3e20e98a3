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
	if soft, st := kept(p); soft != retainMin || st.OpenConnections > retainMin {
		t.Fatalf("after uniform churn over 2 000 tenants: soft cap %d, %d connections open; want %d and at most that", soft, st.OpenConnections, retainMin)
	}
	readEach(t, p, 2000, func() string { return ids[rng.IntN(40)] })
	if soft, st := kept(p); soft < 40 || st.OpenTenants < 40 {
		t.Errorf("after 2 000 reads over 40 tenants: soft cap %d, %d tenants open; want both ≥ 40", soft, st.OpenTenants)
	}
}

// kept returns p's soft cap (retention) and its stats.
func kept(p *Proxy) (int64, Stats) { return p.c.r.retain.soft.Load(), p.Stats() }

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
	if soft, st := kept(p); soft != 64 || st.OpenConnections < 60 {
		t.Errorf("with a hot set: soft cap %d, %d connections open; want the cap (64) and the cache full (≥ 60)", soft, st.OpenConnections)
	}
}

// A working set within the cap never churns: nothing is closed for
// retention and the whole cap stays.
func TestRetention_WorkingSetWithinTheCap(t *testing.T) {
	t.Parallel()
	p, ids := retentionProxy(t, 50)
	rng := rand.New(rand.NewPCG(5, 6))
	readEach(t, p, 1000, func() string { return ids[rng.IntN(len(ids))] })
	if soft, st := kept(p); soft != 64 || p.c.r.retain.churning.Load() || st.OpenTenants != 50 || st.Evictions != 0 {
		t.Errorf("soft cap %d, churning %v, %d of 50 tenants open, %d evictions; want 64, false, all open, none evicted",
			soft, p.c.r.retain.churning.Load(), st.OpenTenants, st.Evictions)
	}
}
