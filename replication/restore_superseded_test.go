//go:build linux

package replication_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// Ownership: A restores acme from a backup with the object store down (the
// .acme.db-restored marker stays: no position), closes. The store back, B
// takes acme over (a newer generation), writes a row and SyncTenant
// acknowledges it; B closes. A takes acme again: the restore is superseded
// by B's generation, which A serves (A's restored copy became the next
// generation's head and B's acknowledged row was gone: adv21c).
func TestOwnership_RestoreSupersededByNewerGeneration(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	restoreWithStoreDown(t, g, a.p, ls.Bin(), "before-1", "after-1")
	a.close()
	g.s3.Restart()

	b := g.ownerNode(t, srv, "b", 10)
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"before-1", "after-1"}) {
		t.Logf("B took over with %q", got)
	}
	insertSynced(t, b.p, "acme", "acknowledged-on-b")
	gb, _ := b.p.Generation("acme")
	b.close()

	a2 := g.ownerNode(t, srv, "a2", 10, withLS)
	got := names(t, a2.p, "acme")
	ga, _ := a2.p.Generation("acme")
	t.Logf("generations: B %d, A again %d", gb, ga)
	if !slices.Contains(got, "acknowledged-on-b") {
		t.Fatalf("A serves %q after B's generation acknowledged %q: the acknowledged row is lost", got, "acknowledged-on-b")
	}
}

// Without Ownership (failover by hand, as in
// TestProxy_AnotherNodeRestoresEveryTenant): node A restores acme from a
// backup with the object store down and stops. The store back, node B
// serves acme from the replica, writes, SyncTenant acknowledges it. A
// starts again: its restored copy and the replica are two histories,
// refused with ErrReplicaConflict (88fb25f made A's copy the head, B's
// acknowledged row gone: adv21c).
func TestProxy_RestoreSupersededByAnotherNodeRefused(t *testing.T) {
	g := newRig(t, "s3")
	cfgA := g.config(t, 10)
	a := sqliteproxytest.New(t, cfgA)
	restoreWithStoreDown(t, g, a, g.ls.Bin(), "before-1", "after-1")
	t.Logf("A's Close: %v", a.Close())
	g.s3.Restart()

	otherNodeWritesThenAAgain(t, g, cfgA)
}

// Ownership: A restores acme with the store down (the marker stays), stops.
// B takes acme over and deletes it (DeleteTenant erases every generation).
// A takes acme again: its copy is removed, the deleted rows do not come
// back (88fb25f served them again, as the head of a new generation: adv21c).
func TestOwnership_RestoreSupersededByDelete(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	restoreWithStoreDown(t, g, a.p, ls.Bin(), "personal-data")
	a.close()
	g.s3.Restart()

	b := g.ownerNode(t, srv, "b", 10)
	t.Logf("B serves %q", names(t, b.p, "acme"))
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	b.close()
	if got := g.replicaNames(t, "acme"); len(got) != 0 {
		t.Logf("replica after the delete: %q", got)
	}

	a2 := g.ownerNode(t, srv, "a2", 10, withLS)
	_, err := a2.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("A's access after the delete: %v", err)
	if err == nil {
		if got := names(t, a2.p, "acme"); slices.Contains(got, "personal-data") {
			t.Fatalf("the deleted tenant's rows are served again: %q", got)
		}
	}
}

// README: ".<id>.db-restored ... removed by DeleteTenant or once replication
// has taken the copy": a restore that SyncTenant put in the replica, the
// tenant closed (its final sync done), leaves no marker.
func TestProxy_RestoredMarkerGoesOnceSynced(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	insertSynced(t, p, "acme", "one")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insert(t, p, "acme", "two")
	if err := p.RestoreTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, p, "acme", "three")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("ltx0: %q", ltx0(t, cfg.Dir))
	if fileExists(filepath.Join(cfg.Dir, ".acme.db-restored")) {
		t.Errorf("the restored copy is in the replica (SyncTenant returned nil) and the proxy closed; .acme.db-restored is still there")
	}
}

// otherNodeWritesThenAAgain is the end of the tests where node A restored
// acme (not streamed yet) and stopped, the store is back: node B (without
// Ownership) writes acme and SyncTenant acknowledges it; A, opened again on
// cfgA, may refuse acme, but if it serves it, B's acknowledged row must be
// in the replica's head once A has synced.
func otherNodeWritesThenAAgain(t *testing.T, g *rig, cfgA sqliteproxy.Config) {
	t.Helper()
	b := sqliteproxytest.New(t, g.config(t, 10))
	t.Logf("B serves %q", names(t, b, "acme"))
	insertSynced(t, b, "acme", "acknowledged-on-b")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	a2 := sqliteproxytest.New(t, cfgA)
	_, err := a2.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("A's first access again: %v", err)
	if err == nil {
		got := names(t, a2, "acme")
		if err := a2.SyncTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		c := sqliteproxytest.New(t, g.config(t, 10))
		head := names(t, c, "acme")
		if !slices.Contains(head, "acknowledged-on-b") {
			t.Fatalf("A serves %q and the replica's head is now %q: B's acknowledged row is lost", got, head)
		}
	}
}
