//go:build linux

package replication_test

import (
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// adv28 found: a's idle eviction of acme synced it (the store is up) but its
// release failed (etcd away > releaseTimeout). The lease stays held by a's
// cluster, and nothing in a's driver watches it any more (releaseLeaseWith
// cleared t.lease and t.lost). A move of acme to b then ends that lease
// (onMove: used, kill) and waits for a release nobody makes: the move
// waits for its context although a has nothing the replica lacks, and
// meanwhile neither a nor b serves acme.
func TestOwnership_MoveAfterFailedReleaseCompletes(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	const ttl = 30 * time.Second
	b := g.ownerNodeTTL(t, srv, "b", 2, ttl)
	a := g.ownerNodeTTL(t, srv, "a", 2, ttl, func(c *sqliteproxy.Config) { c.IdleTimeout = 3 * time.Second })
	insertSynced(t, a.p, "acme", "a1")
	srv.Stop()
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's idle eviction of acme", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok
	})
	start := time.Now()
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's release to time out", func() bool { return time.Since(start) > 7*time.Second })
	adm, owner := restartEtcd(t, srv, "acme")
	t.Logf("etcd back: acme owned by %q", owner)
	moved := startMove(t, adm, a, "acme", "b")
	waitMoved(t, moved, 30*time.Second, "the move of acme, synced and closed on a (its release failed), still waits after 30 s")
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("b serves %q, want [a1]", got)
	}
}
