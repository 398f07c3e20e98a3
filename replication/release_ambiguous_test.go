//go:build linux

package replication_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// deafProxy passes client->etcd bytes always, and etcd->client bytes only
// while hold is false (held ones pass when it clears): a request etcd
// commits whose answer is lost or late (the answer of a commit is what a
// network blip takes).
type deafProxy struct {
	ln   net.Listener
	hold atomic.Bool
}

func newDeafProxy(t *testing.T, to string) *deafProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &deafProxy{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			pipe := func(dst, src net.Conn, held func() bool) {
				defer dst.Close()
				defer src.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					for n > 0 && held() {
						time.Sleep(5 * time.Millisecond)
					}
					if n > 0 {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			go pipe(u, c, func() bool { return false })
			go pipe(c, u, d.hold.Load)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return d
}

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
	dp := newDeafProxy(t, strings.TrimPrefix(srv.Endpoints()[0], "http://"))
	const ttl = 30 * time.Second
	c, err := cluster.New(cluster.Config{Endpoints: []string{"http://" + dp.ln.Addr().String()}, NodeID: "a", AdvertiseURL: "http://a.invalid", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ls := harness.StartLitestream(t, g.s3.Env()...)
	cfg := sqliteproxy.Config{Dir: t.TempDir(), MaxConnections: 2, ReadersPerTenant: -1, Migrations: migrations,
		ReplicaURL: g.replica, LitestreamSocket: ls.SocketPath, LitestreamPath: ls.Bin(), Ownership: c,
		IdleTimeout: 3 * time.Second}
	ap, err := sqliteproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &ownerNode{id: "a", dir: cfg.Dir, c: c, p: ap}
	t.Cleanup(a.close)
	b := g.ownerNode(t, srv, "b", 2)
	adm := newAdmin(t, srv)
	ownerOf := func(id string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		os, err := adm.Owners(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range os {
			if o.Tenant == id {
				return o.Node
			}
		}
		return ""
	}

	insertSynced(t, a.p, "acme", "a1")
	genA, _ := a.p.Generation("acme")
	dp.hold.Store(true) // etcd's answers to a are late from now on
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's idle eviction of acme", func() bool {
		_, ok := a.p.Generation("acme")
		return !ok
	})
	sqliteproxytest.WaitFor(t, 30*time.Second, "etcd to commit a's release", func() bool { return ownerOf("acme") == "" })
	start := time.Now()
	sqliteproxytest.WaitFor(t, 30*time.Second, "a's release to time out", func() bool { return time.Since(start) > 6*time.Second })
	dp.hold.Store(false)

	insertSynced(t, b.p, "acme", "b1") // b takes acme: nobody owns it
	genB, _ := b.p.Generation("acme")
	t.Logf("a wrote generation %d; b took acme in generation %d; owner now %q", genA, genB, ownerOf("acme"))

	ctx, cancel := context.WithTimeout(sqliteproxy.WithOrgID(context.Background(), "acme"), 20*time.Second)
	defer cancel()
	_, err = a.p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('a2')`)
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
