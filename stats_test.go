package sqliteproxy

import "testing"

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
