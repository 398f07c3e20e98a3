//go:build linux

package replication_test

import (
	"context"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// A node cut off from etcd loses its lease within the TTL, and writes are
// refused from then on. Closing the tenant as its lease was lost tried to
// release the lease in etcd, out of reach, for 5 s while it held the
// tenant's writer: writes sent around the loss waited those 5 s (past the
// 2 s TTL) before they were refused.
func TestOwnership_WritesRefusedPromptlyAfterThePartition(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := etcdtest.NewPartition(t, srv)
	const ttl = 2 * time.Second
	c, err := cluster.New(cluster.Config{Endpoints: []string{part.Endpoint()}, NodeID: "a", AdvertiseURL: "http://a.invalid", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ls := harness.StartLitestream(t, g.s3.Env()...)
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: t.TempDir(), Migrations: migrations, ReplicaURL: g.replica,
		LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(), Ownership: c})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		part.Cut(false)
		p.Close()
		c.Close()
	}()
	ctx := sqliteproxy.WithOrgID(context.Background(), "acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	part.Cut(true)
	refused := 0
	for refused < 3 {
		if time.Since(cut) > 20*time.Second {
			t.Fatalf("writes still accepted 20 s after the partition (TTL %v)", ttl)
		}
		start := time.Now()
		_, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('during')`)
		took := time.Since(start)
		// Within the TTL of the lease's last renewal, and a margin for a
		// loaded machine: the release of the lost lease took 5 s.
		if took > ttl+time.Second {
			t.Fatalf("a write sent %v after the partition took %v (TTL %v): %v", start.Sub(cut).Round(time.Millisecond), took.Round(time.Millisecond), ttl, err)
		}
		if err != nil {
			refused++
		}
	}
}
