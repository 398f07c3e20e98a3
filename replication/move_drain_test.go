//go:build linux

package replication_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// The owner evicted acme (idle) while the store was down: its final sync
// failed and it kept the lease. A move then ends that lease: unfence
// dropped it for a closed tenant without releasing it, so nothing uploaded
// and released it, and the move waited until its context ended, store back
// or not (adv24).
func TestOwnership_MoveOfTenantEvictedWhileStoreDown(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	var dirA string
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { dirA = c.Dir; c.IdleTimeout = 300 * time.Millisecond })
	b := g.ownerNode(t, srv, "b", 4)
	adm := newAdmin(t, srv)
	insertSynced(t, a.p, "acme", "a1")
	g.s3.Stop()
	insert(t, a.p, "acme", "a2-unsynced")
	sqliteproxytest.WaitFor(t, 60*time.Second, "a's idle eviction of acme to fail its final sync", func() bool {
		_, err := os.Stat(filepath.Join(dirA, ".acme.db-unsynced"))
		return err == nil && a.p.Stats().OpenTenants == 0
	})
	moved := startMove(t, adm, a, "acme", "b")
	g.s3.Restart()
	waitMoved(t, moved, 60*time.Second, "the move still waits 60 s after the store came back (README: the move completes when the store is back)")
	if got, want := names(t, b.p, "acme"), []string{"a1", "a2-unsynced"}; !slices.Equal(got, want) {
		t.Fatalf("b serves %q, want %q", got, want)
	}
}

// A move that ends the owner's lease while a RestoreTenant drains the
// tenant (a reader was leased): the drain's eviction kept the lease (a
// delete or restore keeps it to act as the owner), own() then dropped it
// as lost and failed with "owned by b", and nothing released it: the move
// waited until its context ended (adv24).
func TestOwnership_MoveDuringRestoreDrain(t *testing.T) { testMoveDuringDrain(t, false) }

// The same with DeleteTenant.
func TestOwnership_MoveDuringDeleteDrain(t *testing.T) { testMoveDuringDrain(t, true) }

func testMoveDuringDrain(t *testing.T, del bool) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { c.ReadersPerTenant = 1 })
	b := g.ownerNode(t, srv, "b", 4)
	adm := newAdmin(t, srv)
	insertSynced(t, a.p, "acme", "r0")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := a.p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	insert(t, a.p, "acme", "r1")
	rows, err := a.p.QueryContext(sqliteproxytest.Context(t, "acme"), `SELECT name FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	moved := startMove(t, adm, a, "acme", "b")
	restored := make(chan error, 1)
	go func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer rcancel()
		if del {
			restored <- a.p.DeleteTenant(rctx, "acme")
			return
		}
		restored <- a.p.RestoreTenant(rctx, "acme", backup)
	}()
	rows.Close()
	rerr := <-restored
	t.Logf("restore/delete (delete=%v) on a during the move: %v", del, rerr)
	for _, n := range []*ownerNode{a, b} {
		qctx, qcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.p.ExecContext(sqliteproxy.WithOrgID(qctx, "acme"), `SELECT 1`)
		qcancel()
		t.Logf("while the move waits, node %s: %v", n.id, err)
	}
	waitMoved(t, moved, 40*time.Second, "the move still waits 40 s after the restore on the old owner gave up")
	got := names(t, b.p, "acme")
	t.Logf("b serves %q", got)
}

// newAdmin connects to the cluster's etcd as the CLI's move does.
func newAdmin(t *testing.T, srv *etcdtest.Server) *cluster.Admin {
	t.Helper()
	adm, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.Close() })
	return adm
}

// startMove moves tenant id from its owner a to node to in the background
// (for 90 s at most) and returns once a's lease has ended; the move's
// outcome comes on the channel.
func startMove(t *testing.T, adm *cluster.Admin, a *ownerNode, id, to string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	moved := make(chan error, 1)
	go func() { moved <- adm.Move(ctx, id, to) }()
	sqliteproxytest.WaitFor(t, 20*time.Second, "the move to end "+a.id+"'s lease", func() bool {
		_, ok := a.p.Generation(id)
		return !ok
	})
	return moved
}

// waitMoved waits up to d for the move's outcome, which must be success;
// still waiting, the test fails saying what (why it should be done by then).
func waitMoved(t *testing.T, moved <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-moved:
		if err != nil {
			t.Fatalf("move: %v", err)
		}
	case <-time.After(d):
		t.Fatal(what)
	}
}

// A move of a tenant whose owner took it without ever opening it (its
// first access found the store down, and it has no copy) completes: the
// owner gives the lease back as never written. It waited for the move's
// context, the owner keeping what it might have had only here.
func TestOwnership_MoveOfTenantNeverOpenedByOwner(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	z, b := g.ownerNode(t, srv, "z", 4), g.ownerNode(t, srv, "b", 4)
	insertSynced(t, z.p, "acme", "z1")
	z.close()
	a := g.ownerNode(t, srv, "a", 4)
	failFirstAccess(t, g, a, "acme")
	g.s3.Restart()
	moved := startMove(t, newAdmin(t, srv), a, "acme", "b")
	waitMoved(t, moved, 20*time.Second, "the move of a tenant a never opened still waits")
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"z1"}) {
		t.Fatalf("b serves %q, want [z1]", got)
	}
}
