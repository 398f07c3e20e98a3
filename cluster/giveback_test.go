package cluster

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

// ownedTenants lists the tenants that have an owner, as node n sees them.
func ownedTenants(t *testing.T, ctx context.Context, n *Cluster) []string {
	t.Helper()
	owners, err := n.Owners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, o := range owners {
		ids = append(ids, o.Tenant)
	}
	return ids
}

// A first access that fails after it took the tenant's lease (here: no
// Litestream to register the new tenant with) gives the lease back: the
// node kept owning a tenant it could not serve, every other node was
// refused it (and forwarded its requests here), until an open here
// succeeded or the node stopped. So does a fan-out's read of a tenant it
// could not open ("taken for the read and given back").
func TestOwnership_FailedOpenGivesLeaseBack(t *testing.T) {
	srv := etcdtest.Start(t)
	n1, n2 := newNode(t, srv, "n1"), newNode(t, srv, "n2")
	dir := t.TempDir()
	plain, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.ExecContext(sqliteproxy.WithOrgID(context.Background(), "globex"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: dir, ReplicaURL: "file://" + filepath.Join(t.TempDir(), "replica"),
		LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"), Ownership: n1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := ctxT(t, 30*time.Second)
	if _, err := p.ExecContext(sqliteproxy.WithOrgID(ctx, "acme"), `CREATE TABLE t (a)`); err == nil {
		t.Fatal("opened without a Litestream to register with")
	}
	if got := ownedTenants(t, ctx, n2); slices.Contains(got, "acme") {
		t.Errorf("acme still owned after its open failed (owners: %q)", got)
	}
	rows, err := p.QueryContext(sqliteproxy.WithFanOut(ctx, sqliteproxy.FanOutOptions{Tenants: []string{"globex"}}), `SELECT count(*) FROM t`)
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	if err == nil {
		t.Fatal("the fan-out read globex without a Litestream to register it with")
	}
	if got := ownedTenants(t, ctx, n2); slices.Contains(got, "globex") {
		t.Errorf("globex still owned after the fan-out could not open it (owners: %q)", got)
	}
	// Free for another node at once.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lease, err := n2.Acquire(lctx, "acme")
	if err != nil {
		t.Fatalf("another node's Acquire: %v", err)
	}
	lease.Release(lctx, 0)
}
