//go:build linux

package replication_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// ownerNodeTTL is ownerNode with a node lease TTL of ttl.
func (g *rig) ownerNodeTTL(t *testing.T, srv *etcdtest.Server, id string, maxConns int, ttl time.Duration, opts ...func(*sqliteproxy.Config)) *ownerNode {
	t.Helper()
	return g.ownerNodeAt(t, srv.Endpoints(), id, maxConns, ttl, opts...)
}

// ownerNodeAt is ownerNodeTTL reaching etcd at endpoints (a Partition's).
func (g *rig) ownerNodeAt(t *testing.T, endpoints []string, id string, maxConns int, ttl time.Duration, opts ...func(*sqliteproxy.Config)) *ownerNode {
	t.Helper()
	c, err := cluster.New(cluster.Config{Endpoints: endpoints, NodeID: id, AdvertiseURL: "http://" + id + ".invalid", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ls := harness.StartLitestream(t, g.s3.Env()...)
	cfg := sqliteproxy.Config{Dir: t.TempDir(), MaxConnections: maxConns, ReadersPerTenant: -1, Migrations: migrations,
		ReplicaURL: g.replica, LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(), Ownership: c}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	n := &ownerNode{id: id, dir: cfg.Dir, c: c, p: p}
	t.Cleanup(n.close)
	return n
}

// A lease under which rows were written and acknowledged (SyncTenant) was
// given back "as never written" when its release at eviction failed (etcd
// unreachable for a moment, a leader election) and the next access took
// the very same lease back (Acquire returned the lease still held) with
// leaseWrote reset, then failed before registering: Close's
// releaseUnopened put gens/<tenant> back to the previous owner's record,
// the previous owner continued its older generation, and the acknowledged
// rows were gone (adv27). A release that fails now ends the lease (adv28:
// etcd may have committed it), and the next access takes a new one.
func TestOwnership_FailedReleaseKeepsWrittenMark(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	const ttl = 30 * time.Second // the node leases outlive a 6 s etcd outage
	b := g.ownerNodeTTL(t, srv, "b", 1, ttl)
	insertSynced(t, b.p, "acme", "b1")
	genB, _ := b.p.Generation("acme")
	insert(t, b.p, "globex", "g1") // evicts acme: released with its position
	sqliteproxytest.WaitFor(t, 20*time.Second, "b to release acme", func() bool {
		_, ok := b.p.Generation("acme")
		return !ok
	})

	a := g.ownerNodeTTL(t, srv, "a", 1, ttl, func(c *sqliteproxy.Config) { c.IdleTimeout = 4 * time.Second })
	insertSynced(t, a.p, "acme", "a1") // acknowledged
	genA, _ := a.p.Generation("acme")
	t.Logf("b wrote generation %d, a generation %d", genB, genA)

	srv.Stop() // etcd away for a moment: a's idle eviction cannot release acme
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's idle eviction of acme", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok
	})
	start := time.Now()
	// The release's etcd transaction gives up after releaseTimeout (5 s).
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's release to time out", func() bool {
		return time.Since(start) > 7*time.Second
	})
	_, owner := restartEtcd(t, srv, "acme")
	t.Logf("etcd back: acme owned by %q", owner)

	// a takes acme again, and its first access fails before registering:
	// no slot (initech holds a's only one in a transaction).
	tx, err := a.p.BeginTx(sqliteproxytest.Context(t, "initech"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO events (name) VALUES ('g')`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(sqliteproxy.WithOrgID(context.Background(), "acme"), 3*time.Second)
	_, err = a.p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('a-nope')`)
	cancel()
	t.Logf("a's access of acme without a slot: %v", err)
	if gen, ok := a.p.Generation("acme"); !ok || gen == genA {
		t.Fatalf("a holds acme: %d %v, want a generation after %d (its failed release ended that lease)", gen, ok, genA)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	a.p.Close() // releaseUnopened: acme's lease given back "as never written"
	a.c.Close() // a leaves the cluster (what the proxy left held is released at position 0)

	got := names(t, b.p, "acme")
	genB2, _ := b.p.Generation("acme")
	t.Logf("b serves acme in generation %d: %q", genB2, got)
	if want := []string{"b1", "a1"}; !slices.Equal(got, want) {
		t.Fatalf("b serves %q, want %q: a's acknowledged row is lost", got, want)
	}
}

// A DeleteTenant whose erasure failed (the store down) keeps the lease;
// the next access (a new tenant object sharing that lease, leaseWrote
// reset) erases the replica, finds no tenant (ExplicitCreate) and gives the
// lease back "as never written": gens/<tenant> names the previous owner's
// generation again, and that owner's old copy is served as the tenant: the
// deleted tenant's rows are back.
func TestOwnership_DeleteFinishedByNextAccessStaysDeleted(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	b := g.ownerNode(t, srv, "b", 1)
	insertSynced(t, b.p, "acme", "b1")
	genB, _ := b.p.Generation("acme")
	insert(t, b.p, "globex", "g1") // evicts acme: released with its position
	sqliteproxytest.WaitFor(t, 20*time.Second, "b to release acme", func() bool {
		_, ok := b.p.Generation("acme")
		return !ok
	})
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { c.ExplicitCreate = true })
	insertSynced(t, a.p, "acme", "a1")
	genA, _ := a.p.Generation("acme")
	t.Logf("b wrote generation %d, a generation %d", genB, genA)

	g.s3.Stop()
	err := a.p.DeleteTenant(context.Background(), "acme")
	t.Logf("DeleteTenant with the store down: %v", err)
	if err == nil {
		t.Fatal("deleted with the store down")
	}
	g.s3.Restart()
	// The next access erases the replica first, and finds no tenant.
	var n int
	err = a.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
	t.Logf("a's next access: %v", err)
	if !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		t.Fatalf("a's access after the delete: %d rows, %v; want ErrTenantNotFound", n, err)
	}
	if got := g.replicaNames(t, "acme"); len(got) != 0 {
		t.Logf("replica still holds %q", got)
	}
	// acme is deleted. b, which held it before a, is asked for it.
	err = b.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
	genB2, _ := b.p.Generation("acme")
	t.Logf("b after the delete: generation %d, %d rows, %v", genB2, n, err)
	if err == nil && n > 0 {
		t.Fatalf("b serves the deleted tenant acme: %d rows (generation %d)", n, genB2)
	}
}

// README: "A move of a tenant whose owner holds it without having opened it
// waits for its context when the owner has a copy of it (a first access
// that failed, a delete whose replica is not erased yet)". After a delete
// whose erasure failed, an access that also failed (the store still down)
// holds the delete's lease in an object with leaseWrote false; a move then
// gives it back "as never written" (letGoLost: no file here), the move
// completes, and the target restores the deleted tenant from the replica
// that was never erased.
func TestOwnership_MoveOfPendingDeleteWaits(t *testing.T) {
	g, srv, a, b := twoOwners(t)
	insertSynced(t, a.p, "acme", "a1")
	g.s3.Stop()
	err := a.p.DeleteTenant(context.Background(), "acme")
	t.Logf("DeleteTenant with the store down: %v", err)
	if err == nil {
		t.Fatal("deleted with the store down")
	}
	failFirstAccess(t, g, a, "acme") // the access erases first, and cannot
	g.s3.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = newAdmin(t, srv).Move(ctx, "acme", "b")
	t.Logf("move: %v", err)
	if err == nil {
		var n int
		qerr := b.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
		t.Fatalf("the move of a tenant whose delete is pending completed; b then has %d rows (%v)", n, qerr)
	}
}

// Right after a move completes, a restore on the new owner is checked
// against the Owner cache (refuseOtherOwner): it is not refused as if the
// node the tenant left still owned it.
func TestOwnership_RestoreOnNewOwnerRightAfterMove(t *testing.T) {
	_, srv, a, b := twoOwners(t)
	insertSynced(t, a.p, "acme", "x")
	adm := newAdmin(t, srv)
	nodes := map[string]*ownerNode{"a": a, "b": b}
	from, to := "a", "b"
	stale := 0
	for i := range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := adm.Move(ctx, "acme", to); err != nil {
			cancel()
			t.Fatalf("move %d: %v", i, err)
		}
		err := nodes[to].p.RestoreTenant(ctx, "acme", "/nonexistent/backup.db")
		cancel()
		if errors.Is(err, sqliteproxy.ErrNotOwner) {
			stale++
			t.Logf("move %d to %s: restore there refused: %v", i, to, err)
		}
		// Open it on the new owner so the next move has something to drain.
		names(t, nodes[to].p, "acme")
		from, to = to, from
	}
	_ = from
	if stale > 0 {
		t.Fatalf("%d of 8 restores on the new owner right after a move were refused as not the owner", stale)
	}
}

// DeleteTenant returned nil, its release of the lease having failed (etcd
// away for a moment); the next access, under ExplicitCreate, took the same
// lease back (leaseWrote reset), found no tenant and gave the lease back
// "as never written": the previous owner's old copy was acme again. A
// delete is now recorded in etcd before it deletes anything: with etcd
// away it is refused, and once run again it stays a delete.
func TestOwnership_DeleteWithFailedReleaseStaysDeleted(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	const ttl = 30 * time.Second
	b := g.ownerNodeTTL(t, srv, "b", 1, ttl)
	insertSynced(t, b.p, "acme", "b1")
	insert(t, b.p, "globex", "g1") // evicts acme: released with its position
	sqliteproxytest.WaitFor(t, 20*time.Second, "b to release acme", func() bool {
		_, ok := b.p.Generation("acme")
		return !ok
	})
	a := g.ownerNodeTTL(t, srv, "a", 4, ttl, func(c *sqliteproxy.Config) { c.ExplicitCreate = true })
	insertSynced(t, a.p, "acme", "a1")

	srv.Stop() // the delete cannot reach etcd
	// It is recorded there before anything is deleted (adv37, adv38): cut
	// off, it deletes nothing and says so; run again once etcd answers.
	if err := a.p.DeleteTenant(context.Background(), "acme"); err == nil || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("DeleteTenant with etcd down: %v, want it refused, nothing deleted", err)
	}
	_, owner := restartEtcd(t, srv, "acme")
	if err := a.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatalf("DeleteTenant with etcd back: %v", err)
	}
	t.Logf("after DeleteTenant returned nil, etcd says acme was owned by %q", owner)
	var n int
	err := a.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
	t.Logf("a's next access: %v", err)
	err = b.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
	gen, _ := b.p.Generation("acme")
	t.Logf("b: generation %d, %d rows, %v", gen, n, err)
	if err == nil && n > 0 {
		t.Fatalf("b serves acme, deleted by a DeleteTenant that returned nil: %d rows", n)
	}
}

// restartEtcd starts srv again and waits until it answers; it returns an
// admin of the cluster and the node that owns tenant id then ("": none).
func restartEtcd(t *testing.T, srv *etcdtest.Server, id string) (*cluster.Admin, string) {
	t.Helper()
	srv.Restart(t)
	adm := newAdmin(t, srv)
	var owner string
	sqliteproxytest.WaitFor(t, 30*time.Second, "etcd to answer", func() bool {
		var err error
		owner, err = ownerOf(adm, id)
		return err == nil
	})
	return adm, owner
}

// ownerOf asks etcd (within 3 s) which node owns tenant id ("": none).
func ownerOf(adm *cluster.Admin, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	owners, err := adm.Owners(ctx)
	for _, o := range owners {
		if o.Tenant == id {
			return o.Node, err
		}
	}
	return "", err
}
