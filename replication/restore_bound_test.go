//go:build linux

package replication_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// Ownership: A restores acme in generation G with the store down, writes a
// row after the restore (acknowledged), closes. A restarts while the store
// is still down: the first access fails (generations cannot be listed), but
// it took a lease (generation G+1, recorded in gens/acme). The store back,
// A restarts again (G+2, Previous = G+1): nobody else ever had acme, and
// the restore is kept (it was taken as superseded and replaced by the
// pre-restore replica: adv21d; the restore is now carried into each of
// this node's leases before anything can fail).
func TestOwnership_RestoreKeptAcrossOwnFailedOpen(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	restoreWithStoreDown(t, g, a.p, ls.Bin(), "before-1", "bad-data")
	insert(t, a.p, "acme", "acknowledged-after-restore")
	ga, _ := a.p.Generation("acme")
	a.close()
	t.Logf("restored marker after close: %v", fileExists(filepath.Join(dir, ".acme.db-restored")))

	a2 := g.ownerNode(t, srv, "a", 10, withLS)
	_, err := a2.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("access with the store still down: %v", err)
	a2.close()
	g.s3.Restart()

	a3 := g.ownerNode(t, srv, "a", 10, withLS)
	got := names(t, a3.p, "acme")
	g3, _ := a3.p.Generation("acme")
	t.Logf("generations: restore in %d, now %d; serves %q", ga, g3, got)
	if !slices.Equal(got, []string{"before-1", "acknowledged-after-restore"}) {
		t.Fatalf("A (nobody else ever owned acme) serves %q: the restore and the row acknowledged after it are gone", got)
	}
}

// Ownership: a node that does not hold acme open (a fresh process, e.g.
// the service restarted) restores it: the restore records generation 0
// (t.gen of a tenant never opened here), and the open that follows the
// restore (acquireWriter, a new generation) must not take it as
// superseded.
func TestOwnership_RestoreOnFreshProcess(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	insertSynced(t, a.p, "acme", "before-1")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, a.p, "acme", "bad-data")
	a.close()

	a2 := g.ownerNode(t, srv, "a", 10, withLS)
	err := a2.p.RestoreTenant(context.Background(), "acme", backup)
	t.Logf("RestoreTenant on a fresh process: %v", err)
	got := names(t, a2.p, "acme")
	if !slices.Equal(got, []string{"before-1"}) {
		t.Fatalf("after RestoreTenant (err %v) the service serves %q, want the backup [before-1]", err, got)
	}
}

// Ownership: A restores acme in generation G with the store down (marker
// stays), writes a row, closes. The store is back but A's Litestream is not
// (killed): A's next start keeps the restore (reconcileGen: Previous = G)
// in generation G+1, but cannot stream it. A stops; with Litestream back it
// starts again in G+2 with Previous = G+1: the restore is kept, only A
// ever had acme (it was superseded: adv21d).
func TestOwnership_RestoreCarriedIntoNewGeneration(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	restoreWithStoreDown(t, g, a.p, ls.Bin(), "before-1", "bad-data")
	insert(t, a.p, "acme", "acknowledged-after-restore")
	a.close()
	g.s3.Restart()
	ls.Kill()

	a2 := g.ownerNode(t, srv, "a", 10, withLS)
	_, err := a2.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("access without Litestream: %v", err)
	g2, _ := a2.p.Generation("acme")
	a2.close()
	ls.Restart()

	a3 := g.ownerNode(t, srv, "a", 10, withLS)
	got := names(t, a3.p, "acme")
	g3, _ := a3.p.Generation("acme")
	t.Logf("generations: %d then %d; serves %q", g2, g3, got)
	if !slices.Equal(got, []string{"before-1", "acknowledged-after-restore"}) {
		t.Fatalf("A (nobody else ever owned acme) serves %q: the restore and the row acknowledged after it are gone", got)
	}
}

// Ownership: B owns acme; A is asked to restore acme: refused, naming B,
// and A's copy is not marked (A later serves B's rows).
func TestOwnership_RestoreOnNonOwnerRefused(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dirA := t.TempDir()
	withDir := func(c *sqliteproxy.Config) { c.Dir = dirA }
	a0 := g.ownerNode(t, srv, "a", 10, withDir)
	a := a0
	insertSynced(t, a.p, "acme", "before-1")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, a.p, "acme", "bad-data")
	a0.close()
	b := g.ownerNode(t, srv, "b", 10)
	t.Logf("B serves %q", names(t, b.p, "acme"))
	a = g.ownerNode(t, srv, "a", 10, withDir)
	err := a.p.RestoreTenant(context.Background(), "acme", backup)
	t.Logf("RestoreTenant on A while B owns acme: %v", err)
	insertSynced(t, b.p, "acme", "acknowledged-on-b")
	b.close()
	got := names(t, a.p, "acme")
	t.Logf("A then serves %q", got)
	if err == nil && !slices.Equal(got, []string{"before-1"}) {
		t.Fatalf("RestoreTenant returned nil, and A serves %q", got)
	}
}

// Without Ownership: restore with Litestream down (store up), then the
// process stops; with Litestream back the restored copy must be kept.
func TestProxy_RestoreWithLitestreamDownKept(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	insertSynced(t, p, "acme", "before-1")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, p, "acme", "bad-data")
	g.ls.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := p.RestoreTenant(ctx, "acme", backup)
	cancel()
	t.Logf("RestoreTenant with Litestream down: %v", err)
	t.Logf("Close: %v", p.Close())
	g.ls.Restart()
	p2 := sqliteproxytest.New(t, cfg)
	got := names(t, p2, "acme")
	if !slices.Equal(got, []string{"before-1"}) {
		t.Fatalf("after the restore, %q", got)
	}
	if err := p2.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if head := g.replicaNames(t, "acme"); !slices.Equal(head, []string{"before-1"}) {
		t.Fatalf("replica head %q", head)
	}
}

// Without Ownership: the superseded restore (another node wrote the
// replica since) is refused by the service, and ReplicaCopyOf (the CLI's
// status -replica) says so (it said Restored, "to become the head": adv21d).
func TestProxy_StatusOfSupersededRestore(t *testing.T) {
	g := newRig(t, "s3")
	cfgA := g.config(t, 10)
	a := sqliteproxytest.New(t, cfgA)
	restoreWithStoreDown(t, g, a, g.ls.Bin(), "before-1")
	a.Close()
	g.s3.Restart()
	b := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, b, "acme", "acknowledged-on-b")
	b.Close()
	c, cerr := sqliteproxy.ReplicaCopyOf(context.Background(), g.replica, cfgA.Dir, "acme")
	a2 := sqliteproxytest.New(t, cfgA)
	_, err := a2.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("ReplicaCopyOf: %+v %v; the service: %v", c, cerr, err)
	if !errors.Is(err, sqliteproxy.ErrReplicaConflict) || cerr != nil || !c.RestoredSuperseded {
		t.Fatalf("ReplicaCopyOf: %+v, %v; the service: %v; want both to say the restore is superseded", c, cerr, err)
	}
}

// Without Ownership: TestProxy_RestoreSupersededByAnotherNodeRefused, but
// the operator retries the restore (its error says "restored, but it is
// not in the replica yet"): the second restore finds no position beside
// the file (the first removed Litestream's files) and the store down; it
// carries the first one's bound, and is refused as superseded (its marker
// had no bound, and the copy became the head over B's row: adv21d).
func TestProxy_RetriedRestoreKeepsBound(t *testing.T) {
	g := newRig(t, "s3")
	cfgA := g.config(t, 10)
	a := sqliteproxytest.New(t, cfgA)
	insertSynced(t, a, "acme", "before-1")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, a, "acme", "after-1")
	g.s3.Stop()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := a.RestoreTenant(ctx, "acme", backup)
		cancel()
		t.Logf("RestoreTenant #%d with the store down: %v", i+1, err)
		t.Logf("Close: %v", a.Close())
		t.Logf("marker: %q", readFile(filepath.Join(cfgA.Dir, ".acme.db-restored")))
		if i == 0 {
			a = sqliteproxytest.New(t, cfgA) // the service restarted, the operator retries
		}
	}
	g.s3.Restart()

	otherNodeWritesThenAAgain(t, g, cfgA)
}

// Ownership: TestOwnership_RestoreSupersededByDelete with the restore
// retried: the second marker carries the first one's bound, and the delete
// stays a delete (without a bound it was taken for the CLI's restore, and
// the deleted rows came back: adv21d).
func TestOwnership_RetriedRestoreSupersededByDelete(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	insertSynced(t, a.p, "acme", "personal-data")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, ls.Bin()); err != nil {
		t.Fatal(err)
	}
	g.s3.Stop()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := a.p.RestoreTenant(ctx, "acme", backup)
		cancel()
		t.Logf("RestoreTenant #%d with the store down: %v", i+1, err)
	}
	a.close()
	g.s3.Restart()

	b := g.ownerNode(t, srv, "b", 10)
	t.Logf("B serves %q", names(t, b.p, "acme"))
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	b.close()

	a2 := g.ownerNode(t, srv, "a2", 10, withLS)
	_, err := a2.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	t.Logf("A's access after the delete: %v", err)
	if err == nil {
		if got := names(t, a2.p, "acme"); slices.Contains(got, "personal-data") {
			t.Fatalf("the deleted tenant's rows are served again: %q", got)
		}
	}
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// TestOwnership_RestoreKeptAcrossOwnFailedOpen without the failed open in
// between: the restore is kept.
func TestOwnership_RestoreKeptBySameNode(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	a := g.ownerNode(t, srv, "a", 10, withLS)
	restoreWithStoreDown(t, g, a.p, ls.Bin(), "before-1", "bad-data")
	insert(t, a.p, "acme", "acknowledged-after-restore")
	ga, _ := a.p.Generation("acme")
	a.close()
	t.Logf("restored marker after close: %v", fileExists(filepath.Join(dir, ".acme.db-restored")))

	g.s3.Restart()

	a3 := g.ownerNode(t, srv, "a", 10, withLS)
	got := names(t, a3.p, "acme")
	g3, _ := a3.p.Generation("acme")
	t.Logf("generations: restore in %d, now %d; serves %q", ga, g3, got)
	if !slices.Equal(got, []string{"before-1", "acknowledged-after-restore"}) {
		t.Fatalf("A (nobody else ever owned acme) serves %q: the restore and the row acknowledged after it are gone", got)
	}
}

// With Ownership, a restore on a node that has no copy of the tenant, with
// the object store down, knows no position of the replica but knows the
// generation it owns. It recorded nothing and passed for a restore without
// replication (the CLI's): when another node took the tenant later and
// acknowledged rows after SyncTenant, this node's next open made its
// restored copy the head of a new generation, and those rows were gone.
func TestOwnership_RestoreWithStoreDownOnFreshNodeSuperseded(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	z := g.ownerNode(t, srv, "z", 10)
	insertSynced(t, z.p, "acme", "old")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	insert(t, z.p, "acme", "newer")
	z.close()

	dirA := t.TempDir()
	lsA := harness.StartLitestream(t, g.s3.Env()...)
	a := g.ownerNode(t, srv, "a", 10, onDir(dirA, lsA))
	restoreBackupStoreDown(t, g, a.p, backup, 20*time.Second)
	// Served with the store down: restored under this very lease.
	insert(t, a.p, "acme", "a-unsynced")
	if got, want := names(t, a.p, "acme"), []string{"old", "a-unsynced"}; !slices.Equal(got, want) {
		t.Fatalf("A serves %q, want %q", got, want)
	}
	a.close()
	g.s3.Restart()

	b := g.ownerNode(t, srv, "b", 10)
	insertSynced(t, b.p, "acme", "b-acked")
	want := names(t, b.p, "acme")
	b.close()

	a2 := g.ownerNode(t, srv, "a", 10, onDir(dirA, lsA))
	if got := names(t, a2.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("A again serves %q, want B's %q (acknowledged after SyncTenant)", got, want)
	}
}

// A restore on the owner while another node keeps asking for the tenant:
// the restore's drain gave the lease up with its eviction and took it
// again, and another node took the tenant in between; the restore failed
// with "owned by node b" (adv22: on the first of ten restores).
func TestOwnership_RestoreOnOwnerKeepsLease(t *testing.T) {
	_, _, a, b := twoOwners(t)
	insertSynced(t, a.p, "acme", "r0")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := a.p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := b.p.ExecContext(sqliteproxy.WithOrgID(context.Background(), "acme"), `SELECT 1`); err == nil {
				done <- errors.New("b took acme from its owner during the restores")
				return
			}
		}
	}()
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := a.p.RestoreTenant(ctx, "acme", backup)
		cancel()
		if err != nil {
			close(stop)
			<-done
			t.Fatalf("restore %d on the owner: %v", i, err)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := names(t, a.p, "acme"); !slices.Equal(got, []string{"r0"}) {
		t.Fatalf("a serves %q after the restores, want [r0]", got)
	}
}

// A restore of a tenant its replica never held, made with the store down,
// is kept when another node merely looked for the tenant meanwhile (not
// found under ExplicitCreate: nothing written). That node's lease was
// taken for a delete (an owner since, an empty replica), and the restored
// rows were removed at the restoring node's next open. It is now given
// back as if never taken.
func TestOwnership_RestoreKeptAfterAnotherNodeMerelyLooked(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	explicit := func(c *sqliteproxy.Config) { c.ExplicitCreate = true }
	src := sqliteproxytest.New(t, sqliteproxy.Config{Dir: t.TempDir(), Migrations: migrations})
	insert(t, src, "acme", "backed-up")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := src.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	dirA, lsA := t.TempDir(), harness.StartLitestream(t, g.s3.Env()...)
	a := g.ownerNode(t, srv, "a", 10, onDir(dirA, lsA), explicit)
	restoreBackupStoreDown(t, g, a.p, backup, 20*time.Second)
	a.close()
	g.s3.Restart()

	b := g.ownerNode(t, srv, "b", 10, explicit)
	if _, err := b.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('b')`); !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		t.Fatalf("b: %v, want ErrTenantNotFound", err)
	}

	a2 := g.ownerNode(t, srv, "a", 10, onDir(dirA, lsA), explicit)
	if got, want := names(t, a2.p, "acme"), []string{"backed-up"}; !slices.Equal(got, want) {
		t.Fatalf("A again serves %q, want the restore's %q", got, want)
	}
}
