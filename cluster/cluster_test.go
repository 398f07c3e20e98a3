package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
)

const testTTL = 2 * time.Second

func newNode(t *testing.T, srv *etcdtest.Server, id string) *Cluster {
	t.Helper()
	c, err := New(Config{Endpoints: srv.Endpoints(), NodeID: id, AdvertiseURL: "http://" + id + ".invalid", TTL: testTTL})
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustAcquire takes tenant id on node n.
func mustAcquire(t *testing.T, ctx context.Context, n *Cluster, id string) *tenantLease {
	t.Helper()
	l, err := n.Acquire(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return l.(*tenantLease)
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func ownerError(t *testing.T, err error) *sqliteproxy.OwnerError {
	t.Helper()
	var oe *sqliteproxy.OwnerError
	if !errors.As(err, &oe) || !errors.Is(err, sqliteproxy.ErrNotOwner) {
		t.Fatalf("err = %v, want an *OwnerError", err)
	}
	return oe
}

func TestConfigValidation(t *testing.T) {
	good := Config{Endpoints: []string{"http://127.0.0.1:1"}, NodeID: "a", AdvertiseURL: "http://a:8080"}
	for name, mod := range map[string]func(*Config){
		"no endpoints":   func(c *Config) { c.Endpoints = nil },
		"empty endpoint": func(c *Config) { c.Endpoints = []string{" "} },
		"empty node":     func(c *Config) { c.NodeID = "" },
		"slash node":     func(c *Config) { c.NodeID = "a/b" },
		"dot node":       func(c *Config) { c.NodeID = ".." },
		"long node":      func(c *Config) { c.NodeID = strings.Repeat("a", 65) },
		"no url":         func(c *Config) { c.AdvertiseURL = "" },
		"relative url":   func(c *Config) { c.AdvertiseURL = "/x" },
		"short ttl":      func(c *Config) { c.TTL = 500 * time.Millisecond },
	} {
		cfg := good
		mod(&cfg)
		if err := cfg.check(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	cfg := good
	if err := cfg.check(); err != nil || cfg.TTL != DefaultTTL {
		t.Errorf("good config: err %v, TTL %v", err, cfg.TTL)
	}
}

func TestAcquireReleaseHandover(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	ctx := ctxT(t, 30*time.Second)

	la, err := a.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if g, p := la.Previous(); g != 0 || p != 0 {
		t.Errorf("first Previous = %d, %d, want 0, 0", g, p)
	}
	if again, err := a.Acquire(ctx, "t1"); err != nil || again != la {
		t.Errorf("second Acquire on the owner = %v, %v, want the same lease", again, err)
	}
	owners, err := b.Owners(ctx)
	if err != nil || len(owners) != 1 || owners[0] != (Owner{Tenant: "t1", Node: "a", Generation: la.Generation()}) {
		t.Errorf("Owners = %+v, %v", owners, err)
	}
	nodes, err := b.Nodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0] != (Node{"a", "http://a.invalid"}) || nodes[1].ID != "b" {
		t.Errorf("Nodes = %+v, %v", nodes, err)
	}
	if n, u, ok, err := b.Owner(ctx, "t1"); n != "a" || u != "http://a.invalid" || !ok || err != nil {
		t.Errorf("Owner = %q %q %v %v", n, u, ok, err)
	}
	if _, _, ok, err := b.Owner(ctx, "nobody"); ok || err != nil {
		t.Errorf("Owner(unowned) = %v %v", ok, err)
	}

	_, err = b.Acquire(ctx, "t1")
	oe := ownerError(t, err)
	if oe.Tenant != "t1" || oe.Owner != "a" || oe.OwnerURL != "http://a.invalid" {
		t.Errorf("OwnerError = %+v", oe)
	}

	if err := la.Release(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if !isClosed(la.Lost()) {
		t.Error("Lost not closed after Release")
	}
	if err := la.Release(ctx, 43); err != nil {
		t.Errorf("second Release: %v", err)
	}
	lb, err := b.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if g, p := lb.Previous(); g != la.Generation() || p != 42 {
		t.Errorf("Previous = %d, %d, want %d, 42", g, p, la.Generation())
	}
	if lb.Generation() <= la.Generation() {
		t.Errorf("generation %d not after %d", lb.Generation(), la.Generation())
	}
	// a's released lease must not release b's ownership.
	if err := la.Release(ctx, 7); err != nil {
		t.Errorf("Release of a released lease: %v", err)
	}
	if _, err := a.Acquire(ctx, "t1"); err == nil {
		t.Error("a took t1 from b")
	}
}

// A lease released as never written (ReleaseUnwritten) leaves the
// tenant's record as it found it: the next owner's Previous is the last
// written generation and the position it was released with, not the
// unwritten lease's generation at position 0 (which reads as a delete).
// Also when the node that looked closes holding it, and for a tenant
// never owned before.
func TestReleaseUnwrittenKeepsPrevious(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b, c := newNode(t, srv, "a"), newNode(t, srv, "b"), newNode(t, srv, "c")
	ctx := ctxT(t, 30*time.Second)
	acquire := func(n *Cluster, id string) *tenantLease { t.Helper(); return mustAcquire(t, ctx, n, id) }
	releaseUnwritten := func(l *tenantLease) {
		t.Helper()
		if err := l.ReleaseUnwritten(ctx); err != nil {
			t.Fatal(err)
		}
	}
	la := acquire(a, "t1")
	if err := la.Release(ctx, 42); err != nil {
		t.Fatal(err)
	}
	lb := acquire(b, "t1")
	releaseUnwritten(lb)
	if !isClosed(lb.Lost()) {
		t.Error("Lost not closed after ReleaseUnwritten")
	}
	if err := lb.Release(ctx, 0); err != nil {
		t.Errorf("Release after ReleaseUnwritten: %v", err)
	}
	lc := acquire(c, "t1")
	if g, p := lc.Previous(); g != la.Generation() || p != 42 {
		t.Errorf("after an unwritten lease, Previous = %d, %d, want %d, 42", g, p, la.Generation())
	}
	if lc.Generation() <= lb.Generation() {
		t.Errorf("generation %d not after the unwritten %d", lc.Generation(), lb.Generation())
	}
	if err := lc.Release(ctx, 50); err != nil {
		t.Fatal(err)
	}

	// A tenant nobody owned before: its record goes again.
	releaseUnwritten(acquire(a, "t2"))
	if g, p := acquire(b, "t2").Previous(); g != 0 || p != 0 {
		t.Errorf("t2 after an unwritten lease: Previous = %d, %d, want 0, 0", g, p)
	}

	// A delete (Release at 0) is recorded as such.
	ld := acquire(a, "t1")
	if err := ld.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if g, p := acquire(c, "t1").Previous(); g != ld.Generation() || p != 0 {
		t.Errorf("after a release at 0, Previous = %d, %d, want %d, 0", g, p, ld.Generation())
	}
}

// The position a release recorded outlives owners that recorded none: one
// that died right after it took the tenant (its record says position 0),
// and one that released at position 0 (nothing uploaded). The next owner's
// Released still names it, so that it refuses a replica behind it.
func TestReleasedPositionCarried(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b, c := newNode(t, srv, "a"), newNode(t, srv, "b"), newNode(t, srv, "c")
	ctx := ctxT(t, 60*time.Second)
	la := mustAcquire(t, ctx, a, "t1")
	if g, p := la.Released(); g != 0 || p != 0 {
		t.Errorf("first Released = %d, %d, want 0, 0", g, p)
	}
	if err := la.Release(ctx, 42); err != nil {
		t.Fatal(err)
	}
	lb := mustAcquire(t, ctx, b, "t1")
	if g, p := lb.Released(); g != la.Generation() || p != 42 {
		t.Errorf("after a release at 42, Released = %d, %d, want %d, 42", g, p, la.Generation())
	}
	b.kill() // dies right after taking t1: no release
	var lc *tenantLease
	eventually(t, 3*testTTL+5*time.Second, "c acquires t1 after b's lease expires", func() bool {
		l, err := c.Acquire(ctx, "t1")
		if err == nil {
			lc = l.(*tenantLease)
		}
		return err == nil
	})
	if g, p := lc.Previous(); g != lb.Generation() || p != 0 {
		t.Errorf("after b died, Previous = %d, %d, want %d, 0", g, p, lb.Generation())
	}
	if g, p := lc.Released(); g != la.Generation() || p != 42 {
		t.Errorf("after b died, Released = %d, %d, want %d, 42", g, p, la.Generation())
	}
	if err := lc.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	la2 := mustAcquire(t, ctx, a, "t1")
	if g, p := la2.Released(); g != la.Generation() || p != 42 {
		t.Errorf("after a release at 0, Released = %d, %d, want %d, 42", g, p, la.Generation())
	}
	if err := la2.Release(ctx, 50); err != nil {
		t.Fatal(err)
	}
	lc2 := mustAcquire(t, ctx, c, "t1")
	if g, p := lc2.Released(); g != la2.Generation() || p != 50 {
		t.Errorf("after a release at 50, Released = %d, %d, want %d, 50", g, p, la2.Generation())
	}

	// Taken back under the same node lease, the tenant goes on in its
	// generation, whose position the lease knows but does not record: it
	// may erase that generation's replica and write it anew from its first
	// transaction (a delete), which the position would refuse for good.
	if err := lc2.Release(ctx, 60); err != nil {
		t.Fatal(err)
	}
	lc3 := mustAcquire(t, ctx, c, "t1")
	if lc3.Generation() != lc2.Generation() {
		t.Fatalf("taken back: generation %d, want %d", lc3.Generation(), lc2.Generation())
	}
	if g, p := lc3.Released(); g != lc2.Generation() || p != 60 {
		t.Errorf("taken back, Released = %d, %d, want %d, 60", g, p, lc2.Generation())
	}
	if err := lc3.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	lb2 := mustAcquire(t, ctx, newNode(t, srv, "b2"), "t1")
	if g, p := lb2.Released(); g != 0 || p != 0 {
		t.Errorf("after a release at 0 of a generation gone on with, Released = %d, %d, want 0, 0", g, p)
	}
}

// A delete is recorded and carried: ReleaseDeleted (a delete that erased
// the replica) makes every later owner's Deleted its generation, through
// releases at a position, at 0 and unwritten leases; MarkDeleted records
// it under the lease (a delete about to erase; one finished late, by the
// lease that goes on writing the tenant, marks the generations before its
// own), also when its node dies.
func TestDeleteRecorded(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b, c := newNode(t, srv, "a"), newNode(t, srv, "b"), newNode(t, srv, "c")
	ctx := ctxT(t, 60*time.Second)
	acquire := func(n *Cluster) *tenantLease { t.Helper(); return mustAcquire(t, ctx, n, "t1") }
	la := acquire(a)
	if d := la.Deleted(); d != 0 {
		t.Errorf("first Deleted = %d, want 0", d)
	}
	if err := la.Release(ctx, 42); err != nil {
		t.Fatal(err)
	}
	lb := acquire(b)
	gb := lb.Generation()
	if err := lb.ReleaseDeleted(ctx); err != nil {
		t.Fatal(err)
	}
	lc := acquire(c)
	if d := lc.Deleted(); d != gb {
		t.Errorf("after a delete in %d, Deleted = %d", gb, d)
	}
	if g, p := lc.Released(); g != 0 || p != 0 {
		t.Errorf("after a delete, Released = %d, %d, want 0, 0 (everything erased)", g, p)
	}
	if err := lc.Release(ctx, 7); err != nil {
		t.Fatal(err)
	}
	la2 := acquire(a)
	if d := la2.Deleted(); d != gb {
		t.Errorf("carried through a release at 7: Deleted = %d, want %d", d, gb)
	}
	if err := la2.ReleaseUnwritten(ctx); err != nil {
		t.Fatal(err)
	}
	lb2 := acquire(b)
	if d := lb2.Deleted(); d != gb {
		t.Errorf("carried through an unwritten lease: Deleted = %d, want %d", d, gb)
	}
	gb2 := lb2.Generation()
	if err := lb2.MarkDeleted(ctx, gb2); err != nil {
		t.Fatal(err)
	}
	if d := lb2.Deleted(); d != gb2 {
		t.Errorf("after MarkDeleted(%d), the lease's Deleted = %d", gb2, d)
	}
	if err := lb2.MarkDeleted(ctx, gb2-1); err != nil { // erased, and the tenant made anew in gb2
		t.Fatal(err)
	}
	if d := lb2.Deleted(); d != gb2-1 {
		t.Errorf("after MarkDeleted(%d), the lease's Deleted = %d", gb2-1, d)
	}
	b.kill() // dies holding it: the record MarkDeleted wrote stays
	var lc2 sqliteproxy.TenantLease
	eventually(t, 3*testTTL+5*time.Second, "c acquires t1 after b's lease expires", func() bool {
		l, err := c.Acquire(ctx, "t1")
		lc2 = l
		return err == nil
	})
	if d := lc2.(*tenantLease).Deleted(); d != gb2-1 {
		t.Errorf("after MarkDeleted and a death, Deleted = %d, want %d", d, gb2-1)
	}
}

// A node that takes back a tenant it released, with nobody in between and
// under the same node lease, goes on in the same generation (its replica
// goes on incrementally); after another owner, it gets a new one.
func TestReacquireKeepsGeneration(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	ctx := ctxT(t, 30*time.Second)
	l1, err := a.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l1.Release(ctx, 5); err != nil {
		t.Fatal(err)
	}
	l2, err := a.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if g, p := l2.Previous(); l2.Generation() != l1.Generation() || g != l1.Generation() || p != 5 {
		t.Fatalf("taken back: generation %d, Previous %d, %d; want %d, %d, 5", l2.Generation(), g, p, l1.Generation(), l1.Generation())
	}
	if owners, err := b.Owners(ctx); err != nil || len(owners) != 1 || owners[0].Generation != l1.Generation() {
		t.Errorf("Owners = %+v, %v; want generation %d", owners, err, l1.Generation())
	}
	if err := l2.Release(ctx, 6); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if lb.Generation() <= l2.Generation() {
		t.Fatalf("b's generation %d not after %d", lb.Generation(), l2.Generation())
	}
	if err := lb.Release(ctx, 9); err != nil {
		t.Fatal(err)
	}
	l3, err := a.Acquire(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if g, p := l3.Previous(); l3.Generation() <= lb.Generation() || g != lb.Generation() || p != 9 {
		t.Fatalf("after b: generation %d, Previous %d, %d; want > %d, %d, 9", l3.Generation(), g, p, lb.Generation(), lb.Generation())
	}
}

func TestConcurrentAcquire(t *testing.T) {
	srv := etcdtest.Start(t)
	nodes := []*Cluster{newNode(t, srv, "a"), newNode(t, srv, "b")}
	ctx := ctxT(t, 30*time.Second)
	const perNode = 16
	for round := range 3 {
		tenant := fmt.Sprintf("race%d", round)
		var (
			mu     sync.Mutex
			leases = map[string]map[sqliteproxy.TenantLease]bool{}
			wg     sync.WaitGroup
		)
		for _, c := range nodes {
			for range perNode {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l, err := c.Acquire(ctx, tenant)
					if err != nil {
						ownerError(t, err)
						return
					}
					mu.Lock()
					if leases[c.NodeID()] == nil {
						leases[c.NodeID()] = map[sqliteproxy.TenantLease]bool{}
					}
					leases[c.NodeID()][l] = true
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		if len(leases) != 1 {
			t.Fatalf("round %d: winners %v, want exactly one node", round, leases)
		}
		for node, ls := range leases {
			if len(ls) != 1 {
				t.Errorf("round %d: node %s got %d distinct leases", round, node, len(ls))
			}
		}
	}
}

func TestCloseHandsTenantsOver(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	ctx := ctxT(t, 30*time.Second)
	var held []sqliteproxy.TenantLease
	for _, id := range []string{"x1", "x2", "x3"} {
		l, err := a.Acquire(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for i, l := range held {
		if !isClosed(l.Lost()) {
			t.Errorf("lease %d: Lost open after Close", i)
		}
	}
	if _, err := a.Acquire(ctx, "x9"); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: %v", err)
	}
	for i, id := range []string{"x1", "x2", "x3"} {
		l, err := b.Acquire(ctx, id) // at once: no waiting for a TTL
		if err != nil {
			t.Fatal(err)
		}
		if g, p := l.Previous(); g != held[i].Generation() || p != 0 {
			t.Errorf("%s: Previous = %d, %d", id, g, p)
		}
	}
	nodes, err := b.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].ID != "b" {
		t.Errorf("Nodes after a closed = %+v, %v", nodes, err)
	}
}

func TestNodeDeath(t *testing.T) {
	srv := etcdtest.Start(t)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	ctx := ctxT(t, 30*time.Second)
	la, err := a.Acquire(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	a.kill() // no revoke, no release: the lease must expire
	var lb sqliteproxy.TenantLease
	eventually(t, 3*testTTL+5*time.Second, "b acquires d1 after a's lease expires", func() bool {
		lb, err = b.Acquire(ctx, "d1")
		if err != nil {
			ownerError(t, err)
		}
		return err == nil
	})
	if waited := time.Since(died); waited < testTTL-200*time.Millisecond {
		t.Errorf("b took d1 %v after a died, before the TTL %v", waited, testTTL)
	}
	if g, p := lb.Previous(); g != la.Generation() || p != 0 {
		t.Errorf("Previous = %d, %d, want %d, 0", g, p, la.Generation())
	}
	// A new process with a's ID can join again.
	a2 := newNode(t, srv, "a")
	if _, err := a2.Acquire(ctx, "d1"); err == nil {
		t.Error("a's new incarnation took b's tenant")
	}
}

func TestEtcdOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "a")
	ctx := ctxT(t, 60*time.Second)
	l1, err := a.Acquire(ctx, "o1")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := a.Acquire(ctx, "o2")
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	stopDone := make(chan struct{})
	go func() { defer close(stopDone); srv.Stop() }()
	eventually(t, testTTL, "Lost closes before the TTL elapses", func() bool {
		return isClosed(l1.Lost()) && isClosed(l2.Lost())
	})
	if lost := time.Since(stopped); lost >= testTTL {
		t.Errorf("Lost closed %v after etcd stopped, not before TTL %v", lost, testTTL)
	}
	// Without etcd, Acquire gives up after a TTL, whatever its caller's
	// deadline: callers learn that this node cannot take tenants now.
	if _, err := a.Acquire(ctx, "o3"); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Acquire while etcd is down: %v, want ErrLeaseLost", err)
	}
	// The TTL counts from when the lease was lost, not from each call: a
	// request that asks again (the driver does, on more than one path)
	// does not wait another TTL.
	if lost := time.Since(stopped); lost < testTTL {
		time.Sleep(testTTL - lost) // the wall clock itself: the TTL must have run out
	}
	actx, cancel := context.WithTimeout(ctx, testTTL/2)
	if _, err := a.Acquire(actx, "o4"); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Acquire a TTL after the lease was lost: %v, want ErrLeaseLost at once", err)
	}
	cancel()
	select {
	case <-stopDone:
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not stop")
	}
	srv.Restart(t)
	var n1 sqliteproxy.TenantLease
	eventually(t, 20*time.Second, "Acquire works again after etcd restarts", func() bool {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		n1, err = a.Acquire(actx, "o1")
		return err == nil
	})
	if n1 == l1 || n1.Generation() <= l1.Generation() || isClosed(n1.Lost()) {
		t.Errorf("after recovery: generation %d (old %d), same lease %v", n1.Generation(), l1.Generation(), n1 == l1)
	}
	if g, p := n1.Previous(); g != l1.Generation() || p != 0 {
		t.Errorf("Previous = %d, %d, want %d, 0", g, p, l1.Generation())
	}
	// o2, lost and not re-acquired, is given up so another node can take it.
	b := newNode(t, srv, "b")
	eventually(t, 3*testTTL, "b acquires o2 lost by a", func() bool {
		_, err := b.Acquire(ctx, "o2")
		return err == nil
	})
	// A lost lease's Release cannot record a position any more.
	if err := l2.Release(ctx, 5); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Release of a lost lease: %v", err)
	}
}

func TestLeaseKeepsRenewing(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "a")
	ctx := ctxT(t, 30*time.Second)
	l, err := a.Acquire(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	// Several TTLs: the lease must stay held.
	for end := time.Now().Add(3 * testTTL); time.Now().Before(end); {
		if isClosed(l.Lost()) {
			t.Fatal("lease lost while etcd is up")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// When the node lease is gone in etcd (here revoked behind the node's back,
// as when it expired), held tenants are lost and a new lease is granted.
func TestLeaseExpiredIsReplaced(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "a")
	ctx := ctxT(t, 30*time.Second)
	l, err := a.Acquire(ctx, "e1")
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	old := a.lease
	a.mu.Unlock()
	if _, err := a.cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	eventually(t, testTTL, "Lost closes when the lease is gone", func() bool { return isClosed(l.Lost()) })
	var n sqliteproxy.TenantLease
	eventually(t, 10*time.Second, "Acquire works on a new lease", func() bool {
		n, err = a.Acquire(ctx, "e1")
		return err == nil
	})
	a.mu.Lock()
	renewed := a.lease
	a.mu.Unlock()
	if renewed == old || renewed == 0 {
		t.Errorf("lease %x, was %x", renewed, old)
	}
	if n.Generation() <= l.Generation() {
		t.Errorf("generation %d not after %d", n.Generation(), l.Generation())
	}
	nodes, err := a.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].ID != "a" {
		t.Errorf("node not registered again: %+v, %v", nodes, err)
	}
}

// Valid sees the clock: past the renewal deadline the lease is not valid
// even while the timer that closes Lost has not run (a process stopped
// past the deadline runs it late). A release at position 0 (a delete)
// ends the generation: taken back, the tenant starts a new one.
func TestLeaseValidAndGenerationAfterDelete(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "a")
	ctx := ctxT(t, 30*time.Second)
	l, err := a.Acquire(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	tl := l.(*tenantLease)
	if !tl.Valid() {
		t.Fatal("a fresh lease is not valid")
	}
	a.mu.Lock()
	a.timer.Stop() // the late timer
	a.validUntil.Store(time.Now().Add(-time.Millisecond).UnixNano())
	a.mu.Unlock()
	if tl.Valid() || isClosed(l.Lost()) {
		t.Fatalf("past the deadline: Valid %v, Lost closed %v; want false, false", tl.Valid(), isClosed(l.Lost()))
	}

	b := newNode(t, srv, "b")
	l1, err := b.Acquire(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l1.Release(ctx, 0); err != nil { // as DeleteTenant releases
		t.Fatal(err)
	}
	l2, err := b.Acquire(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if l2.Generation() == l1.Generation() {
		t.Fatalf("taken back after a release at 0: generation %d again", l2.Generation())
	}
}

// An Acquire whose context ends while etcd commits its claim leaves no
// owner key behind: the key is this node's only while a lease of it is
// held here, else every other node would be refused the tenant for as long
// as this node lives.
func TestAcquire_CanceledLeavesNoOwner(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := ctxT(t, 60*time.Second)
	a, b := newNode(t, srv, "a"), newNode(t, srv, "b")
	failed := 0
	for i := range 200 {
		actx, cancel := context.WithTimeout(ctx, time.Duration(200+i*20)*time.Microsecond)
		_, err := a.Acquire(actx, fmt.Sprintf("t%d", i))
		cancel()
		if err != nil {
			failed++
		}
	}
	if failed == 0 {
		t.Skip("no Acquire ended by its context: nothing to check")
	}
	orphans := func() []string {
		owners, err := b.Owners(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, o := range owners {
			if o.Node == "a" && a.held[o.Tenant] == nil {
				out = append(out, o.Tenant)
			}
		}
		return out
	}
	eventually(t, 10*time.Second, "owner keys of a that a does not hold to go", func() bool { return len(orphans()) == 0 })
	t.Logf("%d of 200 acquires ended by their context", failed)
}
