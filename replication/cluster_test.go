//go:build linux

package replication_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// ownerNode is one in-process node of a cluster: a proxy with a data
// directory and a Litestream process of its own, the rig's replica, and a
// cluster.Cluster on a real etcd as its Ownership.
type ownerNode struct {
	id  string
	dir string // Config.Dir
	c   *cluster.Cluster
	p   *sqliteproxy.Proxy
}

// twoOwners starts a rig on S3, etcd, and nodes a and b of four
// connections each.
func twoOwners(t *testing.T) (g *rig, srv *etcdtest.Server, a, b *ownerNode) {
	t.Helper()
	g = newRig(t, "s3")
	srv = etcdtest.Start(t)
	return g, srv, g.ownerNode(t, srv, "a", 4), g.ownerNode(t, srv, "b", 4)
}

func (g *rig) ownerNode(t *testing.T, srv *etcdtest.Server, id string, maxConns int, opts ...func(*sqliteproxy.Config)) *ownerNode {
	t.Helper()
	return g.ownerNodeTTL(t, srv, id, maxConns, 2*time.Second, opts...)
}

// close closes the proxy (which releases its tenants with their final
// positions), then leaves the cluster.
func (n *ownerNode) close() {
	n.p.Close()
	n.c.Close()
}

func wantOwnerError(t *testing.T, err error, owner string) {
	t.Helper()
	var oe *sqliteproxy.OwnerError
	if !errors.Is(err, sqliteproxy.ErrNotOwner) || !errors.As(err, &oe) || oe.Owner != owner || oe.OwnerURL != "http://"+owner+".invalid" {
		t.Fatalf("err = %v, want an *OwnerError naming %s", err, owner)
	}
}

// One writer per tenant: a tenant another node owns is refused with an
// *OwnerError naming the owner, and nothing is created; the owner evicts and
// reopens it in the same generation; when the owner closes, another node
// takes it in a newer generation with every row.
func TestOwnership_OneWriterAndHandOver(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a, b := g.ownerNode(t, srv, "a", 1), g.ownerNode(t, srv, "b", 4)
	var want []string
	for i := range 3 {
		name := string(rune('a' + i))
		insert(t, a.p, "acme", name)
		want = append(want, name)
	}
	gen1, ok := a.p.Generation("acme")
	if !ok || gen1 == 0 {
		t.Fatalf("a.Generation(acme) = %d, %v", gen1, ok)
	}
	_, err := b.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('from b')`)
	wantOwnerError(t, err, "a")
	if ids, err := b.p.Tenants(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("b created files for a tenant it does not own: %v, %v", ids, err)
	}

	insert(t, a.p, "other", "x") // a budget of one: evicts acme, which releases it
	insert(t, a.p, "acme", "d")  // and takes it back
	want = append(want, "d")
	if gen2, ok := a.p.Generation("acme"); !ok || gen2 != gen1 {
		t.Fatalf("after evict + reopen: generation %d, %v; want %d (same node, same lease: same generation)", gen2, ok, gen1)
	}

	a.close()
	if got := names(t, b.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("b after a closed: %v, want %v", got, want)
	}
	gen3, ok := b.p.Generation("acme")
	if !ok || gen3 <= gen1 {
		t.Fatalf("b's generation %d, %v; want > %d", gen3, ok, gen1)
	}
	// Each lease streams to a generation of its own: the fencing token.
	if err := b.p.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	_, prefixes, err := g.s3.List("tenants/acme/", "/")
	want2 := []string{fmt.Sprintf("tenants/acme/g%d/", gen1), fmt.Sprintf("tenants/acme/g%d/", gen3)}
	slices.Sort(prefixes)
	slices.Sort(want2)
	if err != nil || !slices.Equal(prefixes, want2) {
		t.Fatalf("replica generations: %v, %v; want %v", prefixes, err, want2)
	}
}

// A graceful move of an open tenant: the owner syncs and releases it, the
// target restores every row committed before, including rows never synced
// explicitly; the old owner is then refused.
func TestOwnership_Move(t *testing.T) {
	_, srv, a, b := twoOwners(t)
	var want []string
	for i := range 20 {
		name := string(rune('a' + i))
		insert(t, a.p, "acme", name) // no SyncTenant: the move syncs
		want = append(want, name)
	}
	adm, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := adm.Move(ctx, "acme", "b"); err != nil {
		t.Fatal(err)
	}
	if got := names(t, b.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("b after the move: %v, want %v", got, want)
	}
	t.Logf("move + first read on the target: %v", time.Since(start).Round(time.Millisecond))
	// a released the tenant with its final position (not lost): what a
	// wrote before the move is where b restores from, so SyncTenant on a
	// says so.
	if err := a.p.SyncTenant(ctx, "acme"); err != nil {
		t.Errorf("SyncTenant on the old owner after a graceful move: %v", err)
	}
	_, err = a.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('late')`)
	wantOwnerError(t, err, "b")
}

// A fan-out reads tenants as first accesses do: on a node that moved a
// tenant away, not its stale local copy but ErrNotOwner; after the owner
// deleted it, nothing (no resurrected rows).
func TestOwnership_FanOutReadsNoStaleCopy(t *testing.T) {
	_, srv, a, b := twoOwners(t)
	insert(t, a.p, "acme", "x")
	adm, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := adm.Move(ctx, "acme", "b"); err != nil {
		t.Fatal(err)
	}
	insert(t, b.p, "acme", "y")
	fanOut := func(p *sqliteproxy.Proxy, opts sqliteproxy.FanOutOptions) ([]string, error) {
		rows, err := p.QueryContext(sqliteproxy.WithFanOut(ctx, opts), `SELECT name FROM events ORDER BY id`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var tenant, name string
			if err := rows.Scan(&tenant, &name); err != nil {
				return got, err
			}
			got = append(got, tenant+":"+name)
		}
		return got, rows.Err()
	}
	got, err := fanOut(a.p, sqliteproxy.FanOutOptions{Tenants: []string{"acme"}})
	if !errors.Is(err, sqliteproxy.ErrNotOwner) || len(got) != 0 {
		t.Errorf("fan-out on the node acme moved away from: rows %v, %v; want none and ErrNotOwner", got, err)
	}
	if got, err := fanOut(b.p, sqliteproxy.FanOutOptions{}); err != nil || !slices.Equal(got, []string{"acme:x", "acme:y"}) {
		t.Errorf("fan-out on the owner: rows %v, %v", got, err)
	}
	// A tenant b owns and a never had: not "not found" but b's.
	insert(t, b.p, "beta", "z")
	got, err = fanOut(a.p, sqliteproxy.FanOutOptions{Tenants: []string{"beta"}})
	var oe *sqliteproxy.OwnerError
	if !errors.As(err, &oe) || oe.Owner != "b" || len(got) != 0 {
		t.Errorf("fan-out on a of a tenant only b has: rows %v, %v; want an *OwnerError naming b", got, err)
	}
	if err := b.p.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if got, err := fanOut(a.p, sqliteproxy.FanOutOptions{Tenants: []string{"acme"}}); !errors.Is(err, sqliteproxy.ErrTenantNotFound) || len(got) != 0 {
		t.Errorf("fan-out after the owner deleted acme: rows %v, %v; want none, ErrTenantNotFound", got, err)
	}
}

// Concurrent statements on a node that does not own the tenant all fail
// with ErrNotOwner naming the owner, not only the first: those that waited
// for the writer meanwhile were told the tenant did not exist.
func TestOwnership_NonOwnerConcurrentStatements(t *testing.T) {
	_, _, a, b := twoOwners(t)
	insert(t, a.p, "acme", "x")
	for round := range 5 {
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = b.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('from b')`)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			var oe *sqliteproxy.OwnerError
			if !errors.As(err, &oe) || oe.Owner != "a" {
				t.Errorf("round %d, statement %d: %v; want an *OwnerError naming a", round, i, err)
			}
		}
	}
	if got := names(t, a.p, "acme"); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("rows on the owner: %v", got)
	}
}

// When the node cannot renew its lease (etcd down), it stops writing the
// tenant before the lease can expire, SyncTenant says the write may be
// lost, and it recovers after etcd is back, in a new generation, with
// every row.
func TestOwnership_LeaseLost(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4)
	insertSynced(t, a.p, "acme", "before")
	gen1, _ := a.p.Generation("acme")
	tx, err := a.p.BeginTx(sqliteproxytest.Context(t, "acme"), nil) // holds the writer through the loss
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('in tx')`); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	sqliteproxytest.WaitFor(t, 10*time.Second, "a's lease on acme lost", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok
	})
	if err := tx.Commit(); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Fatalf("COMMIT after the lease ended: %v, want ErrNotOwner (nothing committed)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = a.p.ExecContext(sqliteproxy.WithOrgID(ctx, "acme"), `INSERT INTO events (name) VALUES ('while down')`)
	cancel()
	if err == nil {
		t.Fatal("a wrote acme without a lease")
	}

	restartAndWrite(t, srv, a, "acme", "after")
	if gen2, ok := a.p.Generation("acme"); !ok || gen2 <= gen1 {
		t.Fatalf("after recovery: generation %d, %v; want > %d", gen2, ok, gen1)
	}
	if got := names(t, a.p, "acme"); len(got) < 2 || got[0] != "before" || got[len(got)-1] != "after" || slices.Contains(got, "while down") || slices.Contains(got, "in tx") {
		t.Fatalf("rows after recovery: %v", got)
	}
}

// A write whose lease ends before it is acknowledged is never reported
// durable: once the lease is lost the tenant is closed and let go from the
// registry, and SyncTenant (on the next object for the ID) and Generation
// still say the write may be lost, until the node owns the tenant again.
func TestOwnership_SyncAfterLeaseLostAndForgotten(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4)
	insert(t, a.p, "acme", "unsynced")

	srv.Stop()
	sqliteproxytest.WaitFor(t, 10*time.Second, "acme closed after a's lease on it was lost", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok && a.p.Stats().OpenTenants == 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.p.SyncTenant(ctx, "acme"); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Fatalf("SyncTenant after the lease was lost: %v, want ErrNotOwner", err)
	}
	if gen, ok := a.p.Generation("acme"); ok {
		t.Fatalf("Generation after the lease was lost: %d, true", gen)
	}

	restartAndWrite(t, srv, a, "acme", "after")
	if err := a.p.SyncTenant(ctx, "acme"); err != nil {
		t.Fatalf("SyncTenant once a owns acme again: %v", err)
	}
}

// restartAndWrite restarts etcd and waits until node n writes event name
// to tenant id again (it takes a new lease once etcd is back).
func restartAndWrite(t *testing.T, srv *etcdtest.Server, n *ownerNode, id, name string) {
	t.Helper()
	srv.Restart(t)
	sqliteproxytest.WaitFor(t, 30*time.Second, n.id+" writes "+id+" again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := n.p.ExecContext(sqliteproxy.WithOrgID(ctx, id), `INSERT INTO events (name) VALUES (?)`, name)
		return err == nil
	})
}

// Only the owner deletes a tenant, and the delete erases every generation.
func TestOwnership_Delete(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a, b := g.ownerNode(t, srv, "a", 1), g.ownerNode(t, srv, "b", 4)
	insert(t, a.p, "acme", "x")
	err := b.p.DeleteTenant(context.Background(), "acme")
	wantOwnerError(t, err, "a")
	a.close() // released: b takes it (a second generation) and deletes it
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("b: %v", got)
	}
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if objs, _, err := g.s3.List("tenants/acme/", ""); err != nil || len(objs) != 0 {
		t.Fatalf("left in the replica after DeleteTenant: %d objects, %v", len(objs), err)
	}
	// Nothing of it left here either (its generation marker stayed).
	path, err := b.p.TenantPath("acme")
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*acme*")); len(left) != 0 {
		t.Fatalf("left on b after DeleteTenant: %v", left)
	}
}

// A restore on a node that does not own the tenant is refused as the
// restore it is, before it copies or downloads anything: with the store
// down it said "owned by" only after the download failed, and named the
// error an "open tenant".
func TestOwnership_RestoreOnNonOwnerRefusedFirst(t *testing.T) {
	g, _, a, b := twoOwners(t)
	insertSynced(t, a.p, "acme", "x")
	g.s3.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := b.p.RestoreTenantAt(ctx, "acme", time.Time{})
	wantOwnerError(t, err, "a")
	if !strings.Contains(err.Error(), "restore tenant at") {
		t.Errorf("RestoreTenantAt on b: %v, want it named a restore", err)
	}
	err = b.p.RestoreTenant(ctx, "acme", filepath.Join(t.TempDir(), "no-such-backup.db"))
	wantOwnerError(t, err, "a")
	if !strings.Contains(err.Error(), "restore tenant") {
		t.Errorf("RestoreTenant on b: %v, want it named a restore", err)
	}
	g.s3.Restart()
	err = b.p.DeleteTenant(ctx, "acme")
	wantOwnerError(t, err, "a")
	if !strings.Contains(err.Error(), "delete tenant") {
		t.Errorf("DeleteTenant on b: %v, want it named a delete", err)
	}
	if got := names(t, a.p, "acme"); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("a serves %v after b's refused restores and delete", got)
	}
}

// With ExplicitCreate, a request for a tenant that exists nowhere fails
// with ErrTenantNotFound and leaves no owner behind (each unknown ID kept
// an owner key for the node's lifetime, and another node's CreateTenant of
// it failed with an OwnerError).
func TestOwnership_UnknownTenantLeavesNoOwner(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	explicit := func(c *sqliteproxy.Config) { c.ExplicitCreate = true }
	a, b := g.ownerNode(t, srv, "a", 4, explicit), g.ownerNode(t, srv, "b", 4, explicit)
	for i := range 5 {
		_, err := a.p.ExecContext(sqliteproxytest.Context(t, fmt.Sprintf("ghost%d", i)), `INSERT INTO events (name) VALUES ('x')`)
		if !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
			t.Fatalf("ghost%d: %v, want ErrTenantNotFound", i, err)
		}
	}
	if owners, err := a.c.Owners(context.Background()); err != nil || len(owners) != 0 {
		t.Fatalf("owners after requests for unknown tenants: %+v, %v", owners, err)
	}
	if err := b.p.CreateTenant(context.Background(), "ghost0"); err != nil {
		t.Fatalf("another node creating one of them: %v", err)
	}
}

// A move while the owner has a write transaction open completes once the
// transaction ends (it waited for the tenant's next use, which a quiet
// tenant never had).
func TestOwnership_MoveDuringTransaction(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a, _ := g.ownerNode(t, srv, "a", 4), g.ownerNode(t, srv, "b", 4)
	ctx := sqliteproxytest.Context(t, "acme")
	insert(t, a.p, "acme", "before")
	tx, err := a.p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (name) VALUES ('in-tx')`); err != nil {
		t.Fatal(err)
	}
	admin, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	moved := make(chan error, 1)
	go func() {
		mctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		moved <- admin.Move(mctx, "acme", "b")
	}()
	sqliteproxytest.WaitFor(t, 10*time.Second, "the move to be asked for", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok // the lease is given up as the move asks
	})
	tx.Rollback()
	if err := <-moved; err != nil {
		t.Fatalf("the move after the transaction ended: %v", err)
	}
}

// A tenant deleted by its owner does not come back from a former owner's
// local copy (it was taken, kept and published as a new generation, and
// every node served the deleted rows), nor is a re-created tenant's
// generation the deleted one's, so that a copy from before the delete put
// back on a node is replaced, not kept.
func TestOwnership_DeletedStaysDeleted(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dirA := t.TempDir()
	inA := func(c *sqliteproxy.Config) { c.Dir = dirA }
	a := g.ownerNode(t, srv, "a", 4, inA)
	insert(t, a.p, "acme", "secret")
	a.close() // released; a keeps its copy
	b := g.ownerNode(t, srv, "b", 4)
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	b.close()
	a = g.ownerNode(t, srv, "a", 4, inA) // the former owner, its old copy in place
	if got := names(t, a.p, "acme"); len(got) != 0 {
		t.Fatalf("the former owner serves %v after the delete, want a new, empty tenant", got)
	}
	a.close()

	// The same node deletes and re-creates: a new generation.
	c := g.ownerNode(t, srv, "c", 4)
	insert(t, c.p, "beta", "old")
	before, _ := c.p.Generation("beta")
	if err := c.p.DeleteTenant(context.Background(), "beta"); err != nil {
		t.Fatal(err)
	}
	insert(t, c.p, "beta", "new")
	if after, _ := c.p.Generation("beta"); after == before {
		t.Errorf("re-created after a delete in generation %d, the deleted one's", after)
	}
}

// staleOwnership wraps the cluster's leases so that a test can make one
// say, by its Valid method, that its deadline has passed while its Lost
// timer has not run yet (a process stopped past its deadline).
type staleOwnership struct {
	c      *cluster.Cluster
	mu     sync.Mutex
	leases []*staleLease
}

type staleLease struct {
	sqliteproxy.TenantLease
	stale, released atomic.Bool
}

func (l *staleLease) Valid() bool { return !l.stale.Load() }
func (l *staleLease) Release(ctx context.Context, pos uint64) error {
	l.released.Store(true)
	return l.TenantLease.Release(ctx, pos)
}

func (o *staleOwnership) Acquire(ctx context.Context, id string) (sqliteproxy.TenantLease, error) {
	l, err := o.c.Acquire(ctx, id)
	if err != nil {
		return nil, err
	}
	sl := &staleLease{TenantLease: l}
	o.mu.Lock()
	o.leases = append(o.leases, sl)
	o.mu.Unlock()
	return sl, nil
}

// A lease past its deadline whose Lost timer has not run (the process was
// stopped past it) is not written under: Generation says no lease (the
// service does not acknowledge), and the next write closes the tenant and
// gives the lease up first (acknowledged writes went to a generation
// another node had taken).
func TestOwnership_LeasePastDeadlineNotWrittenUnder(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	var own *staleOwnership
	n := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) {
		own = &staleOwnership{c: c.Ownership.(*cluster.Cluster)}
		c.Ownership = own
	})
	insert(t, n.p, "acme", "before")
	if _, ok := n.p.Generation("acme"); !ok {
		t.Fatal("no lease after a write")
	}
	own.mu.Lock()
	first := own.leases[len(own.leases)-1]
	own.mu.Unlock()
	first.stale.Store(true)
	if gen, ok := n.p.Generation("acme"); ok {
		t.Fatalf("Generation after the deadline: %d, true; want no lease", gen)
	}
	insert(t, n.p, "acme", "after")
	if !first.released.Load() {
		t.Fatal("a write went under a lease past its deadline")
	}
	if _, ok := n.p.Generation("acme"); !ok {
		t.Fatal("no lease after the write that took a new one")
	}
	if got := names(t, n.p, "acme"); !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("rows %v", got)
	}
}

// A transaction or sql.Conn that holds the writer when its lease goes past
// its deadline, the timer that says so late (the process was stopped),
// writes and commits nothing more: the clock is checked on every write,
// not only when the writer is taken.
func TestOwnership_LeasePastDeadlineInTxAndConn(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	var own *staleOwnership
	n := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) {
		own = &staleOwnership{c: c.Ownership.(*cluster.Cluster)}
		c.Ownership = own
	})
	expire := func() {
		own.mu.Lock()
		own.leases[len(own.leases)-1].stale.Store(true)
		own.mu.Unlock()
	}
	insert(t, n.p, "acme", "before")
	ctx := sqliteproxytest.Context(t, "acme")
	tx, err := n.p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (name) VALUES ('in-tx')`); err != nil {
		t.Fatal(err)
	}
	expire()
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (name) VALUES ('in-tx-late')`); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Errorf("a statement of a transaction past the lease's deadline: %v, want ErrNotOwner", err)
	}
	if err := tx.Commit(); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Errorf("COMMIT past the lease's deadline: %v, want ErrNotOwner", err)
	}
	conn, err := n.p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `INSERT INTO events (name) VALUES ('conn')`); err != nil {
		t.Fatal(err) // under a new lease
	}
	expire()
	if _, err := conn.ExecContext(ctx, `INSERT INTO events (name) VALUES ('conn-late')`); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Errorf("a write on a sql.Conn past the lease's deadline: %v, want ErrNotOwner", err)
	}
	conn.Close()
	if got := names(t, n.p, "acme"); !slices.Equal(got, []string{"before", "conn"}) {
		t.Fatalf("rows %v, want [before conn]", got)
	}
}

// releasingOwnership gives its first lease up before Acquire returns it,
// and runs after meanwhile: an Ownership whose Acquire raced a move (the
// lease given to the move's target just as it was taken here).
type releasingOwnership struct {
	c     *cluster.Cluster
	done  atomic.Bool
	after func()
}

func (o *releasingOwnership) Acquire(ctx context.Context, id string) (sqliteproxy.TenantLease, error) {
	l, err := o.c.Acquire(ctx, id)
	if err != nil || !o.done.CompareAndSwap(false, true) {
		return l, err
	}
	if err := l.Release(ctx, 0); err != nil {
		return nil, err
	}
	o.after()
	return l, nil
}

// The driver writes nothing under a lease that is lost by the time Acquire
// returns it: the write fails with ErrNotOwner naming the node that took
// the tenant meanwhile, and what that node wrote is all there is.
func TestOwnership_LeaseLostAsAcquired(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	var ro *releasingOwnership
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) {
		ro = &releasingOwnership{c: c.Ownership.(*cluster.Cluster)}
		c.Ownership = ro
	})
	b := g.ownerNode(t, srv, "b", 4)
	ro.after = func() { insert(t, b.p, "acme", "first-on-b") }
	_, err := a.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('on-a')`)
	var oe *sqliteproxy.OwnerError
	if !errors.As(err, &oe) || oe.Owner != "b" {
		t.Errorf("a write under a lease lost as it was acquired: %v, want an *OwnerError naming b", err)
	}
	insert(t, b.p, "acme", "on-b")
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"first-on-b", "on-b"}) {
		t.Fatalf("rows on b, the owner: %v", got)
	}
}

// Ownership changes are in the metrics, per tenant: acquired, released (at
// eviction) and acquired again.
func TestOwnership_Telemetry(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	reader := sdkmetric.NewManualReader()
	a := g.ownerNode(t, srv, "a", 1, func(c *sqliteproxy.Config) {
		c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	})
	insert(t, a.p, "acme", "x")
	insert(t, a.p, "other", "y") // a budget of one: acme is evicted and released
	insert(t, a.p, "acme", "z")
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sqliteproxy.ownership.changes" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				tenant, _ := dp.Attributes.Value("sqliteproxy.tenant")
				event, _ := dp.Attributes.Value("sqliteproxy.ownership.event")
				got[tenant.AsString()+" "+event.AsString()] += dp.Value
			}
		}
	}
	if got["acme acquired"] != 2 || got["acme released"] != 1 || got["other acquired"] != 1 {
		t.Fatalf("ownership changes: %v; want acme acquired 2, released 1, other acquired 1", got)
	}
}

// A move while the object store is down: the owner's final sync fails, so
// it may not release the tenant (the target would restore without the
// owner's last writes). Once the store is back it uploads them and
// releases, and the move completes with every acknowledged row. Nothing
// released the lease before: the move waited until its context ended, and
// the owner could not take the tenant again to sync it (it was moving).
func TestOwnership_MoveWhileStoreDownCompletesAfter(t *testing.T) {
	g, srv, a, b := twoOwners(t)
	dirA := a.dir
	adm := newAdmin(t, srv)
	insertSynced(t, a.p, "acme", "a1")
	g.s3.Stop()
	insert(t, a.p, "acme", "a2-unsynced")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	moved := make(chan error, 1)
	go func() { moved <- adm.Move(ctx, "acme", "b") }()
	// a closed acme, its final sync failed: the last row is here only.
	sqliteproxytest.WaitFor(t, 60*time.Second, "a's final sync of acme to fail", func() bool {
		_, err := os.Stat(filepath.Join(dirA, ".acme.db-unsynced"))
		return err == nil
	})
	g.s3.Restart()
	waitMoved(t, moved, 60*time.Second, "the move still waits 60 s after the store came back")
	if got, want := names(t, b.p, "acme"), []string{"a1", "a2-unsynced"}; !slices.Equal(got, want) {
		t.Fatalf("b serves %q, want %q", got, want)
	}
}

// dropNewestLTX deletes the LTX files holding the newest transaction of
// tenant id's replica (S3), as a store that lost its last uploads would,
// and returns the replica's position before and after.
func (g *rig) dropNewestLTX(t *testing.T, id string) (before, after uint64) {
	t.Helper()
	objs, _, err := g.s3.List("tenants/"+id+"/", "")
	if err != nil {
		t.Fatal(err)
	}
	maxOf := func(key string) uint64 {
		n, _ := ltxMaxTXID(key)
		return n
	}
	for _, o := range objs {
		before = max(before, maxOf(o.Key))
	}
	for _, o := range objs {
		if m := maxOf(o.Key); m == before {
			if err := g.s3.Client().Delete(context.Background(), o.Key); err != nil {
				t.Fatal(err)
			}
		} else {
			after = max(after, m)
		}
	}
	return before, after
}

// failFirstAccess stops the object store and has n's first access of
// tenant id fail (it cannot tell what the replica holds); n keeps its lease.
func failFirstAccess(t *testing.T, g *rig, n *ownerNode, id string) {
	t.Helper()
	g.s3.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := n.p.ExecContext(sqliteproxy.WithOrgID(ctx, id), `INSERT INTO events (name) VALUES (?)`, n.id)
	cancel()
	if err == nil {
		t.Fatalf("%s wrote %s with the store down", n.id, id)
	}
	if _, ok := n.p.Generation(id); !ok {
		t.Fatalf("%s gave %s's lease back after a failed first access", n.id, id)
	}
}

// A replica behind the position its last owner released the tenant with
// (a store that lost its last uploads) is refused by the next owner, not
// restored without them; also when a node merely tried the tenant in
// between (its first access failed, the store down, and it closed): its
// lease, released at position 0, made the next owner check nothing; and
// when that node died holding the lease instead (cut off from etcd until
// its lease expired): its record, written when it took the tenant, said
// position 0.
func TestOwnership_ReplicaBehindReleasedPositionRefused(t *testing.T) {
	for _, between := range []string{"none", "attempt", "died"} {
		t.Run("between="+between, func(t *testing.T) {
			g := newRig(t, "s3")
			srv := etcdtest.Start(t)
			part := etcdtest.NewPartition(t, srv)
			a := g.ownerNode(t, srv, "a", 4)
			b := g.ownerNodeAt(t, []string{part.Endpoint()}, "b", 4, 2*time.Second)
			insertSynced(t, a.p, "acme", "r1")
			insertSynced(t, a.p, "acme", "r2")
			a.close() // released with its final position
			before, after := g.dropNewestLTX(t, "acme")
			if after == 0 || after >= before {
				t.Fatalf("replica at %d after dropping its newest files (was %d)", after, before)
			}
			switch between {
			case "attempt":
				failFirstAccess(t, g, b, "acme")
				b.close()
				g.s3.Restart()
			case "died":
				failFirstAccess(t, g, b, "acme")
				part.Cut(true) // b's lease expires with acme's record naming b's generation at position 0
				g.s3.Restart()
			}
			c := g.ownerNode(t, srv, "c", 4)
			var n int
			var err error
			if err := poll(30*time.Second, func() error {
				err = c.p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `SELECT count(*) FROM events`).Scan(&n)
				if errors.Is(err, sqliteproxy.ErrNotOwner) {
					return err // b's lease has not expired yet
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err == nil || !strings.Contains(err.Error(), "behind the position") {
				t.Fatalf("c: %d rows, %v; want the replica refused as behind the position acme was released with", n, err)
			}
		})
	}
}

// namesOrErr is names, with the error returned.
func namesOrErr(p *sqliteproxy.Proxy, id string) ([]string, error) {
	rows, err := p.QueryContext(sqliteproxy.WithOrgID(context.Background(), id), `SELECT name FROM events ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// namesOnceOwned is namesOrErr on node n once no other node owns id (a
// dead node's lease expired).
func namesOnceOwned(t *testing.T, n *ownerNode, id string) ([]string, error) {
	t.Helper()
	var got []string
	var err error
	if perr := poll(30*time.Second, func() error {
		got, err = namesOrErr(n.p, id)
		if errors.Is(err, sqliteproxy.ErrNotOwner) {
			return err
		}
		return nil
	}); perr != nil {
		t.Fatal(perr)
	}
	return got, err
}

// A node that went on in its generation (evicted and taken back under the
// same node lease) and deleted the tenant with the store down, then made it
// anew in that very generation (the erase done by the next access; the
// replica starts again at its first transaction), and died: the position it
// had released that generation with was carried in its record, and every
// next owner refused the new tenant's acknowledged rows as "behind" it,
// for good (adv35).
func TestOwnership_RecreatedInItsGenerationServedAfterDeath(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := etcdtest.NewPartition(t, srv)
	a := g.ownerNodeAt(t, []string{part.Endpoint()}, "a", 1, 2*time.Second)
	for _, r := range []string{"r1", "r2", "r3", "r4", "r5", "r6"} {
		insertSynced(t, a.p, "acme", r)
	}
	gen, _ := a.p.Generation("acme")
	insert(t, a.p, "other", "x")       // a budget of one: acme is evicted and released at its position
	insertSynced(t, a.p, "acme", "r7") // taken back under the same node lease
	if again, _ := a.p.Generation("acme"); again != gen {
		t.Fatalf("generation %d after the tenant was taken back, want %d", again, gen)
	}
	if err := deleteWithStoreDown(t, g, a.p); err == nil || !strings.Contains(err.Error(), "erasing its replica failed") {
		t.Fatalf("DeleteTenant with the store down: %v", err)
	}
	g.s3.Restart()
	insertSynced(t, a.p, "acme", "new") // erases the replica, makes acme anew
	part.Cut(true)                      // a dies holding acme
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOnceOwned(t, c, "acme"); err != nil || !slices.Equal(got, []string{"new"}) {
		t.Fatalf("c serves %q, %v; want [new], acknowledged after the re-creation", got, err)
	}
}

// A generation released at a position whose every upload the store lost:
// the next owner found the older generation the newest and served it
// without the rows acknowledged in the lost one (adv35). It is refused.
func TestOwnership_ReleasedGenerationLostWhollyRefused(t *testing.T) {
	g, srv, a, b := twoOwners(t)
	insertSynced(t, a.p, "acme", "a1")
	a.close()
	insertSynced(t, b.p, "acme", "b-acked")
	gen, _ := b.p.Generation("acme")
	b.close() // released with its final position
	objs, _, err := g.s3.List(fmt.Sprintf("tenants/acme/g%d/", gen), "")
	if err != nil || len(objs) == 0 {
		t.Fatalf("objects of generation %d: %d, %v", gen, len(objs), err)
	}
	for _, o := range objs {
		if err := g.s3.Client().Delete(context.Background(), o.Key); err != nil {
			t.Fatal(err)
		}
	}
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOrErr(c.p, "acme"); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("behind generation %d", gen)) {
		t.Fatalf("c serves %q, %v; want the replica refused (generation %d, released at a position, lost every upload)", got, err, gen)
	}
}

// A delete erases every generation of the replica, but a node that owned
// the tenant before could still write into its own generation afterwards
// (its compactor, queued when it released the tenant, a late upload): the
// next owner restored those files, deleted rows and all (soak34: 9 of 11
// deletes in a run with ReplicaCompactor on). The delete is recorded
// (Deleted): no owner restores from an erased generation again. The late
// write is made here by putting the erased generation's files back.
func TestOwnership_DeleteNotUndoneByLateWritesToErasedGeneration(t *testing.T) {
	g, srv, a, b := twoOwners(t)
	put, erased := lateWriteOf(t, g, a) // a released acme with its final position
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	put() // the late write
	if objs, _, err := g.s3.List(erased, ""); err != nil || len(objs) == 0 {
		t.Fatalf("the erased %s holds %d objects again (%v): the late write did not happen", erased, len(objs), err)
	}
	for _, n := range []*ownerNode{b, g.ownerNode(t, srv, "c", 4)} {
		if got, err := namesOrErr(n.p, "acme"); err != nil || len(got) != 0 {
			t.Fatalf("%s: acme holds %q after its delete (%v); want a new, empty tenant", n.id, got, err)
		}
		n.close()
	}
}

// With ReplicaCompactor and Ownership, a tenant's replica is compacted
// before its lease is released, never after (another node may have taken
// and deleted it meanwhile: soak34): moved and deleted again and again, no
// deleted row comes back and the replica holds nothing of the tenant.
func TestOwnership_CompactorNeverWritesAfterTheRelease(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { c.ReplicaCompactor = &replica.Compactor{} })
	b := g.ownerNode(t, srv, "b", 4)
	adm, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	for try := range 4 {
		id := fmt.Sprintf("acme%d", try)
		for i := range 20 + 10*try {
			insertSynced(t, a.p, id, fmt.Sprintf("secret%d", i))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := adm.Move(ctx, id, "b"); err != nil {
			cancel()
			t.Fatal(err)
		}
		err := b.p.DeleteTenant(ctx, id)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// The compactor's work, had it been queued at the release, lands
		// within a few seconds.
		tick := time.NewTicker(100 * time.Millisecond)
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); <-tick.C {
			objs, _, err := g.s3.List("tenants/"+id+"/", "")
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) > 0 {
				t.Fatalf("%s: the replica holds %s after DeleteTenant returned", id, objs[0].Key)
			}
		}
		tick.Stop()
		if got := names(t, b.p, id); len(got) != 0 {
			t.Fatalf("%s: %d deleted rows back", id, len(got))
		}
	}
}

// BackupTenant and CheckTenant on a node that is the tenant's owner but
// has not opened it since (a move to it) read its copy as the owner does:
// up to date with the replica. They read an older copy left by an earlier
// lease (the backup lacked a row acknowledged elsewhere since), and said
// "not found" on an owner with no copy (soak34). On a node that does not
// own the tenant they are refused with the owner's name.
func TestOwnership_BackupAndCheckReadTheOwnersCopy(t *testing.T) {
	_, srv, a, b := twoOwners(t)
	adm, err := cluster.NewAdmin(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	backup := func(n *ownerNode, id string) ([]string, error) {
		t.Helper()
		bk := filepath.Join(t.TempDir(), id+".bak")
		if err := n.p.BackupTenant(ctx, id, bk); err != nil {
			return nil, err
		}
		p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: t.TempDir()})
		if err := p.RestoreTenant(ctx, id, bk); err != nil {
			t.Fatal(err)
		}
		return names(t, p, id), nil
	}

	insertSynced(t, a.p, "fresh", "x")
	if err := adm.Move(ctx, "fresh", "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.p.CheckTenant(ctx, "fresh"); err != nil {
		t.Errorf("CheckTenant on the owner with no copy: %v", err)
	}
	if got, err := backup(b, "fresh"); err != nil || !slices.Equal(got, []string{"x"}) {
		t.Errorf("BackupTenant on the owner with no copy: %q, %v; want [x]", got, err)
	}

	insertSynced(t, a.p, "acme", "x")
	if err := adm.Move(ctx, "acme", "b"); err != nil {
		t.Fatal(err)
	}
	names(t, b.p, "acme") // b has a copy now
	if err := adm.Move(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, a.p, "acme", "y")
	if _, err := backup(b, "acme"); !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Errorf("BackupTenant on a node that does not own the tenant: %v, want ErrNotOwner", err)
	}
	if err := adm.Move(ctx, "acme", "b"); err != nil {
		t.Fatal(err)
	}
	if got, err := backup(b, "acme"); err != nil || !slices.Equal(got, []string{"x", "y"}) {
		t.Errorf("BackupTenant on the owner after a move back to it: %q, %v; want [x y]", got, err)
	}
}

// lateWriteOf has node a write three rows to acme and sync them, saves the
// files of its generation, and closes a; put puts those files back, as a
// former owner's late upload into a generation a delete erased would.
func lateWriteOf(t *testing.T, g *rig, a *ownerNode) (put func(), genPrefix string) {
	t.Helper()
	for _, r := range []string{"secret1", "secret2", "secret3"} {
		insertSynced(t, a.p, "acme", r)
	}
	gen, _ := a.p.Generation("acme")
	genDir := filepath.Join(g.s3.Root, g.s3.Bucket, "tenants", "acme", fmt.Sprintf("g%d", gen))
	saved := filepath.Join(t.TempDir(), "saved")
	if out, err := exec.Command("cp", "-a", genDir, saved).CombinedOutput(); err != nil {
		t.Fatalf("save %s: %v\n%s", genDir, err, out)
	}
	a.close()
	return func() {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(genDir), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-a", saved, genDir).CombinedOutput(); err != nil {
			t.Fatalf("put back %s: %v\n%s", genDir, err, out)
		}
	}, fmt.Sprintf("tenants/acme/g%d/", gen)
}

// A delete is recorded in etcd before it deletes anything: recorded after
// the erase, a delete whose release etcd did not take returned nil
// unrecorded, and a late write brought the rows back (adv37); recorded
// after the files here were removed, a delete cut off from etcd left the
// rows to the next owner (adv38). Cut off from etcd, it deletes nothing
// and says so.
func TestOwnership_DeleteRecordedBeforeTheErase(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := etcdtest.NewPartition(t, srv)
	a := g.ownerNode(t, srv, "a", 4)
	b := g.ownerNodeAt(t, []string{part.Endpoint()}, "b", 4, 10*time.Second)
	for _, r := range []string{"secret1", "secret2"} {
		insertSynced(t, a.p, "acme", r)
	}
	a.close()
	if got := names(t, b.p, "acme"); len(got) != 2 {
		t.Fatalf("b serves %q", got)
	}
	part.Cut(true)
	err := b.p.DeleteTenant(context.Background(), "acme")
	if err == nil || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("DeleteTenant cut off from etcd: %v, want it refused, nothing deleted", err)
	}
	if objs, _, err := g.s3.List("tenants/acme/", ""); err != nil || len(objs) == 0 {
		t.Fatalf("the replica holds %d objects (%v) after a delete that could not be recorded; want it left as it was", len(objs), err)
	}
	if files, err := filepath.Glob(filepath.Join(b.dir, "*", "acme.db")); err != nil || len(files) == 0 {
		if files, err = filepath.Glob(filepath.Join(b.dir, "acme.db")); err != nil || len(files) == 0 {
			t.Fatalf("b's copy of acme is gone after a delete that could not be recorded (%v)", err)
		}
	}
}

// A pending delete (the store down) whose marker is then removed, as its
// refusal says to restore the tenant from the replica instead: the lease
// goes on writing the tenant in the generation the delete recorded as
// deleted, and the next owner skipped and erased those acknowledged rows
// (adv38). Opened again under that lease, the generation is a live one.
func TestOwnership_WritesAfterAPendingDeleteUndoneKept(t *testing.T) {
	g, srv, _, b := twoOwners(t)
	if err := deleteWithStoreDown(t, g, b.p); !strings.Contains(err.Error(), "erasing its replica failed") {
		t.Fatalf("DeleteTenant with the store down: %v", err)
	}
	g.s3.Restart()
	markers, err := filepath.Glob(filepath.Join(b.dir, ".acme.db-deleted"))
	if err != nil || len(markers) != 1 {
		t.Fatalf("the pending delete's marker: %q, %v", markers, err)
	}
	if err := os.Remove(markers[0]); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, b.p, "acme", "new")
	b.close()
	c := g.ownerNode(t, srv, "c", 4)
	got, err := namesOnceOwned(t, c, "acme")
	if err != nil || !slices.Contains(got, "new") {
		t.Fatalf("c serves %q (%v); want the row acknowledged on b after its delete was undone", got, err)
	}
}

// A delete whose erasure failed (the store down), by a node that then
// closed (a rolling deploy) before finishing it: its lease went, and the
// next owner restored the deleted rows (adv37). The delete was recorded
// before the erasure: the next owner makes a new tenant, and erases what
// the deleted generations still hold.
func TestOwnership_PendingDeleteStaysDeletedAfterClose(t *testing.T) {
	g, srv, _, b := twoOwners(t)
	if err := deleteWithStoreDown(t, g, b.p); !strings.Contains(err.Error(), "erasing its replica failed") {
		t.Fatalf("DeleteTenant with the store down: %v", err)
	}
	g.s3.Restart()
	b.close()
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOnceOwned(t, c, "acme"); err != nil || len(got) != 0 {
		t.Fatalf("c serves %q (%v) after b's delete; want a new, empty tenant", got, err)
	}
	insertSynced(t, c.p, "acme", "new")
	if objs, _, err := g.s3.List("tenants/acme/", ""); err != nil {
		t.Fatal(err)
	} else {
		for _, o := range objs {
			if !strings.HasPrefix(o.Key, fmt.Sprintf("tenants/acme/g%d/", mustGeneration(t, c, "acme"))) {
				t.Errorf("%s left in the replica after the delete", o.Key)
			}
		}
	}
}

// mustGeneration is n's generation of tenant id.
func mustGeneration(t *testing.T, n *ownerNode, id string) int64 {
	t.Helper()
	g, ok := n.p.Generation(id)
	if !ok {
		t.Fatalf("%s holds no lease on %s", n.id, id)
	}
	return g
}

// A pending delete finished by the owner's next access, which makes the
// tenant anew in its own generation, then a late write into the former
// owner's erased generation: the next owner serves the new tenant only.
func TestOwnership_PendingDeleteFinishedThenLateWrite(t *testing.T) {
	g, srv, a, b := twoOwners(t)
	put, _ := lateWriteOf(t, g, a)
	if got := names(t, b.p, "acme"); len(got) != 3 {
		t.Fatalf("b serves %q", got)
	}
	g.s3.Stop()
	if err := b.p.DeleteTenant(context.Background(), "acme"); err == nil {
		t.Fatal("DeleteTenant with the store down: nil")
	}
	g.s3.Restart()
	insertSynced(t, b.p, "acme", "new")
	put()
	b.close()
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOnceOwned(t, c, "acme"); err != nil || !slices.Equal(got, []string{"new"}) {
		t.Fatalf("c serves %q, %v; want [new]", got, err)
	}
}

// What a late write put into a generation a delete erased is erased again
// by the tenant's next owner: it stayed readable in the store for good,
// where a restore without a lease (FetchReplica, the CLI) read it (adv37).
func TestOwnership_ErasedGenerationErasedAgainByTheNextOwner(t *testing.T) {
	g, _, a, b := twoOwners(t)
	put, erased := lateWriteOf(t, g, a)
	if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	put()
	if objs, _, err := g.s3.List(erased, ""); err != nil || len(objs) == 0 {
		t.Fatalf("%s holds %d objects (%v): the late write did not happen", erased, len(objs), err)
	}
	insertSynced(t, b.p, "acme", "after")
	if objs, _, err := g.s3.List(erased, ""); err != nil || len(objs) > 0 {
		t.Fatalf("%s still holds %d objects (the deleted rows) after the next owner's first access (%v)", erased, len(objs), err)
	}
	if got := names(t, b.p, "acme"); !slices.Equal(got, []string{"after"}) {
		t.Fatalf("b serves %q, want [after]", got)
	}
}

// BackupTenant and CheckTenant on the node that wrote the tenant last, with
// the object store down: its copy is the tenant, and they read it (they
// failed, the replica unreadable, since they act as the owner: adv37).
func TestOwnership_BackupOnTheLastOwnerWithTheStoreDown(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	in := func(c *sqliteproxy.Config) { c.Dir = dir }
	a := g.ownerNode(t, srv, "a", 4, in)
	insertSynced(t, a.p, "acme", "x")
	a.close()
	a = g.ownerNode(t, srv, "a", 4, in)
	g.s3.Stop()
	defer g.s3.Restart()
	bk := filepath.Join(t.TempDir(), "acme.bak")
	if err := a.p.BackupTenant(context.Background(), "acme", bk); err != nil {
		t.Errorf("BackupTenant on the last owner, the store down: %v", err)
	}
	if err := a.p.CheckTenant(context.Background(), "acme"); err != nil {
		t.Errorf("CheckTenant on the last owner, the store down: %v", err)
	}
}

// A delete recorded in the cluster that then stops before it deletes
// anything (here its marker cannot be written) puts the record back: the
// lease's own generation stayed recorded deleted, and once the node closed
// the next owner served an empty tenant and erased the rows (adv39).
func TestOwnership_DeleteStoppedEarlyLeavesTheTenant(t *testing.T) {
	g, srv, _, b := twoOwners(t)
	insertSynced(t, b.p, "acme", "before")
	m := filepath.Join(b.dir, ".acme.db-deleted")
	if err := os.MkdirAll(filepath.Join(m, "x"), 0o755); err != nil { // the marker cannot be written
		t.Fatal(err)
	}
	if err := b.p.DeleteTenant(context.Background(), "acme"); err == nil {
		t.Fatal("DeleteTenant with its marker's place taken: nil")
	}
	if err := os.RemoveAll(m); err != nil {
		t.Fatal(err)
	}
	b.close()
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOnceOwned(t, c, "acme"); err != nil || !slices.Equal(got, []string{"before"}) {
		t.Fatalf("c serves %q (%v); want [before]: the delete deleted nothing", got, err)
	}
}

// A delete whose record etcd may have taken, its answer lost, says nothing
// was deleted; the tenant goes on, and its generation is recorded live
// again before it is written: the node dying then, the next owner serves
// every row (it served none, and erased them: adv39).
func TestOwnership_DeleteAnswerLostKeepsTheTenant(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	part := etcdtest.NewPartition(t, srv)
	b := g.ownerNodeAt(t, []string{part.Endpoint()}, "b", 4, 10*time.Second)
	insertSynced(t, b.p, "acme", "before")
	part.Deafen(true) // requests reach etcd, answers do not come back
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := b.p.DeleteTenant(ctx, "acme")
	cancel()
	part.Deafen(false)
	if err == nil || !strings.Contains(err.Error(), "nothing was deleted") || !strings.Contains(err.Error(), "etcd may have recorded the delete") {
		t.Fatalf("DeleteTenant with etcd's answers lost: %v, want it refused, nothing deleted, the record maybe taken", err)
	}
	insertSynced(t, b.p, "acme", "after")
	part.Cut(true) // b dies holding acme
	c := g.ownerNode(t, srv, "c", 4)
	if got, err := namesOnceOwned(t, c, "acme"); err != nil || !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("c serves %q (%v); want [before after]", got, err)
	}
}

// RestoreTenantAt reads the replica before it takes the lease: after a
// delete recorded in the cluster, what a deleted generation holds again (a
// former owner's late upload; a pending delete not erased yet) was restored
// and made the head, deleted rows and all (adv39). It is refused.
func TestOwnership_RestoreTenantAtRefusesADeletedGeneration(t *testing.T) {
	t.Run("late-write", func(t *testing.T) {
		g, _, a, b := twoOwners(t)
		put, _ := lateWriteOf(t, g, a)
		if err := b.p.DeleteTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		put()
		err := b.p.RestoreTenantAt(context.Background(), "acme", time.Time{})
		if got, _ := namesOrErr(b.p, "acme"); len(got) > 0 {
			t.Fatalf("RestoreTenantAt after a delete: %v; acme holds %q", err, got)
		}
	})
	t.Run("pending-delete-next-owner", func(t *testing.T) {
		g, srv, _, b := twoOwners(t)
		if err := deleteWithStoreDown(t, g, b.p); !strings.Contains(err.Error(), "erasing its replica failed") {
			t.Fatal(err)
		}
		g.s3.Restart()
		b.close()
		c := g.ownerNode(t, srv, "c", 4)
		err := c.p.RestoreTenantAt(context.Background(), "acme", time.Time{})
		if got, _ := namesOrErr(c.p, "acme"); len(got) > 0 {
			t.Fatalf("RestoreTenantAt on the next owner after a pending delete: %v; acme holds %q", err, got)
		}
	})
}
