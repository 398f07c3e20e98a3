//go:build linux

package replication_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// adv28 found: a's release of acme at its idle eviction is committed by etcd
// (owner key deleted, gens/acme recorded) but its answer does not reach a
// within releaseTimeout: a's driver and cluster take the release for failed
// and keep the lease ("a release that failed leaves the lease held"), which
// Acquire hands out again. b takes acme (its owner key is gone) in a new
// generation; a goes on writing acme under the lease it thinks it holds, in
// the older generation, and SyncTenant acknowledges: two owners; a serves
// acme without b's rows, and a's acknowledged row is not in the generation
// every later owner restores.
func TestOwnership_AmbiguousReleaseEndsTheLease(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := etcdtest.NewPartition(t, srv)
	a := g.ownerNodeAt(t, []string{part.Endpoint()}, "a", 2, 30*time.Second, func(c *sqliteproxy.Config) { c.IdleTimeout = 3 * time.Second })
	b := g.ownerNode(t, srv, "b", 2)
	adm := newAdmin(t, srv)
	owner := func(id string) string {
		owner, err := ownerOf(adm, id)
		if err != nil {
			t.Fatal(err)
		}
		return owner
	}

	insertSynced(t, a.p, "acme", "a1")
	genA, _ := a.p.Generation("acme")
	part.Deafen(true) // etcd's answers to a are late from now on
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's idle eviction of acme", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok
	})
	sqliteproxytest.WaitFor(t, 30*time.Second, "etcd to commit a's release", func() bool { return owner("acme") == "" })
	start := time.Now()
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's release to time out", func() bool { return time.Since(start) > 6*time.Second })
	part.Deafen(false)

	insertSynced(t, b.p, "acme", "b1") // b takes acme: nobody owns it
	genB, _ := b.p.Generation("acme")
	t.Logf("a wrote generation %d; b took acme in generation %d; owner now %q", genA, genB, owner("acme"))

	ctx, cancel := context.WithTimeout(sqliteproxy.WithOrgID(context.Background(), "acme"), 20*time.Second)
	defer cancel()
	_, err := a.p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('a2')`)
	if err != nil {
		t.Logf("a's write after b took acme is refused: %v (sound)", err)
		return
	}
	serr := a.p.SyncTenant(context.Background(), "acme")
	genA2, okA := a.p.Generation("acme")
	gotA := names(t, a.p, "acme")
	t.Logf("a: SyncTenant %v, generation %d %v, serves %q", serr, genA2, okA, gotA)
	if serr == nil {
		a.p.Close()
		a.c.Close()
		b.p.Close()
		b.c.Close()
		c := g.ownerNode(t, srv, "c", 2)
		got := names(t, c.p, "acme")
		t.Fatalf("a acknowledged a2 (SyncTenant nil) in generation %d while b owned acme in generation %d; a served %q; the next owner serves %q",
			genA2, genB, gotA, got)
	}
	if !slices.Contains(gotA, "b1") {
		t.Fatalf("a serves acme without b's row: %q", gotA)
	}
}
