//go:build linux

package replication_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// deleteWithStoreDown writes a row "secret" to acme on p, syncs it, stops
// the object store and deletes acme: the delete's error (it cannot erase
// the replica). The store stays down.
func deleteWithStoreDown(t *testing.T, g *rig, p *sqliteproxy.Proxy) error {
	t.Helper()
	insertSynced(t, p, "acme", "secret")
	g.s3.Stop()
	err := p.DeleteTenant(context.Background(), "acme")
	if err == nil {
		t.Fatal("DeleteTenant with the store down: nil")
	}
	return err
}

// DeleteTenant while the object store is down deleted the tenant here and
// failed to erase its replica; the next access restored it from there, the
// deleted rows back (and streamed again), before anyone ran the delete
// again. Until its replica is erased, the tenant is not made again: an
// access erases it first, or fails.
func TestProxy_DeletedWhileStoreDownNeverComesBack(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	if err := deleteWithStoreDown(t, g, p); !strings.Contains(err.Error(), "erasing its replica failed") {
		t.Fatalf("DeleteTenant with the store down: %v, want an error saying the replica is not erased", err)
	}
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('new')`); err == nil || !strings.Contains(err.Error(), "not erased yet") {
		t.Errorf("an access with the store still down: %v, want a refusal saying the replica is not erased yet", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "acme.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("acme.db after the refused access: %v, want none", err)
	}
	g.s3.Restart()
	if got := names(t, p, "acme"); len(got) != 0 {
		t.Fatalf("acme after the store came back: %q, want a new, empty tenant", got)
	}
	insertSynced(t, p, "acme", "after")
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"after"}) {
		t.Errorf("acme's replica: %q, want only the row written after the delete", got)
	}
}

// The same, the delete run again once the store is back: it erases the
// replica, as it says to.
func TestProxy_DeleteAgainErasesTheReplica(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	deleteWithStoreDown(t, g, p)
	g.s3.Restart()
	if err := p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatalf("DeleteTenant again, the store back: %v", err)
	}
	if got := g.replicaNames(t, "acme"); got != nil {
		t.Errorf("acme's replica after the second delete: %q, want none", got)
	}
	// A new node, empty, with the same replica: no acme to restore.
	q := sqliteproxytest.New(t, g.config(t, 10))
	if got := names(t, q, "acme"); len(got) != 0 {
		t.Errorf("acme on a new node: %q, want a new, empty tenant", got)
	}
}

// DeleteTenant while a first access restores the tenant from its replica
// (a new node): it found no file, erased the replica and returned nil,
// while the restore then took the tenant's name, served it and streamed it
// all again.
func TestProxy_DeleteDuringRestoreOnOpen(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) {
		g := newRig(t, "s3")
		g.restorer = in
		a := sqliteproxytest.New(t, g.config(t, 4))
		ctx := sqliteproxytest.Context(t, "acme")
		insert(t, a, "acme", "secret")
		for range 30 { // ~15 MB: a restore that takes a while
			if _, err := a.ExecContext(ctx, `INSERT INTO events (name) VALUES (hex(randomblob(250000)))`); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.SyncTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		cfg := g.config(t, 4)
		b := sqliteproxytest.New(t, cfg)
		done := make(chan error, 1)
		go func() {
			var n int
			done <- b.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
		}()
		sqliteproxytest.WaitFor(t, 30*time.Second, "the first access to restore acme", func() bool {
			ents, _ := os.ReadDir(cfg.Dir)
			return slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".restoring-") })
		})
		if err := b.DeleteTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done: // served before the delete, or refused: either is right
		case <-time.After(30 * time.Second):
			t.Fatal("the first access still waits 30 s after the delete")
		}
		if got := names(t, b, "acme"); len(got) != 0 {
			t.Errorf("acme after DeleteTenant returned nil: %d rows, want a new, empty tenant", len(got))
		}
		if err := b.SyncTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		if got := g.replicaNames(t, "acme"); len(got) != 0 {
			t.Errorf("acme's replica after DeleteTenant returned nil: %d rows, want none", len(got))
		}
	})
}

// persistConns counts the goroutines of idle or busy HTTP client
// connections in this process.
func persistConns() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "net/http.(*persistConn).readLoop")
}

// Every Close left the proxy's connections to Litestream's socket open, two
// goroutines and a descriptor each, up to eight per proxy: a service that
// opens and closes proxies (tests, a cluster node restarted in process)
// grew by that much each time.
func TestProxy_CloseLeavesNoLitestreamConnections(t *testing.T) {
	g := newRig(t, "file")
	base := persistConns() // the harness's own client
	for i := range 3 {
		p, err := sqliteproxy.New(g.config(t, 10))
		if err != nil {
			t.Fatal(err)
		}
		for k := range 8 {
			insert(t, p, fmt.Sprintf("t%d", k), "x")
		}
		if persistConns() == base {
			t.Fatal("no connection to Litestream open: the test sees nothing")
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		sqliteproxytest.WaitFor(t, 10*time.Second, fmt.Sprintf("cycle %d: the connections to Litestream to close", i), func() bool {
			return persistConns() == base
		})
	}
}

// A DeleteTenant that could not erase the replica leaves its marker on this
// node only. With Ownership another node then took the tenant, restored it
// from the replica and wrote it in a generation of its own; when the tenant
// came back, the old marker erased the whole replica, the other node's
// acknowledged writes with it. Those writes stay (the replica stays: the
// delete said it had failed, and the other node brought it back).
func TestOwnership_StaleDeleteMarkerErasesNoNewerWrites(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dirA := t.TempDir()
	inA := func(c *sqliteproxy.Config) { c.Dir = dirA }
	a := g.ownerNode(t, srv, "a", 4, inA)
	deleteWithStoreDown(t, g, a.p)
	g.s3.Restart()
	a.close()
	b := g.ownerNode(t, srv, "b", 4)
	insertSynced(t, b.p, "acme", "b-acknowledged")
	b.close()
	a = g.ownerNode(t, srv, "a", 4, inA)
	if got := names(t, a.p, "acme"); !slices.Contains(got, "b-acknowledged") {
		t.Errorf("b's synced write lost when acme came back to a: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dirA, ".acme.db-deleted")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a's delete marker after acme came back: %v, want gone", err)
	}
}

// While a delete's erasure of the replica is pending, a restore is refused:
// from the replica it brought the deleted tenant back; from a file, the
// next open dropped the marker, and the deleted rows stayed in the
// replica's history (RestoreTenantAt to before the delete returned them).
func TestProxy_RestoreRefusedWhileErasurePending(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	bk := filepath.Join(t.TempDir(), "other.db")
	insert(t, p, "other", "backup")
	if err := p.BackupTenant(context.Background(), "other", bk); err != nil {
		t.Fatal(err)
	}
	deleteWithStoreDown(t, g, p)
	before := time.Now()
	g.s3.Restart()
	for what, err := range map[string]error{
		"RestoreTenant":   p.RestoreTenant(context.Background(), "acme", bk),
		"RestoreTenantAt": p.RestoreTenantAt(context.Background(), "acme", before),
	} {
		if err == nil || !strings.Contains(err.Error(), "run DeleteTenant again") {
			t.Errorf("%s while the erasure is pending: %v, want refused", what, err)
		}
	}
	if err := p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if err := p.RestoreTenant(context.Background(), "acme", bk); err != nil {
		t.Fatalf("RestoreTenant once the replica is erased: %v", err)
	}
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"backup"}) {
		t.Errorf("acme restored from the backup: %q", got)
	}
}

// An access of a tenant whose erasure is pending erases its replica first:
// on an object store that never answers, Close neither ended nor waited for
// it (it said a delete or restore was still in flight, and kept the
// directory until the store's own timeout).
func TestProxy_CloseEndsAPendingErasure(t *testing.T) {
	replicaURL, accepted := silentStore(t)
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	cfg.ReplicaURL = replicaURL
	if err := os.WriteFile(filepath.Join(cfg.Dir, ".acme.db-deleted"), []byte("gen 0"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('x')`)
		done <- err
	}()
	sqliteproxytest.WaitFor(t, 10*time.Second, "the erasure to call the store", func() bool { return accepted() > 0 })
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, sqliteproxy.ErrClosed) {
			t.Errorf("the access erasing at Close: %v, want ErrClosed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the access still erases 20 s after Close")
	}
}

// After a delete that could not erase the replica, a proxy without
// replication on the same directory (the CLI's create or restore) made the
// tenant anew; the service's next open took its file for one a killed
// delete had left, dropped the marker, found it behind the replica and
// replaced it with the replica: the deleted rows back, the new tenant lost.
func TestProxy_TenantMadeAnewBesideAPendingErasure(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	deleteWithStoreDown(t, g, p)
	cli, err := sqliteproxy.New(sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	insert(t, cli, "acme", "new")
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	g.s3.Restart()
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("acme made anew beside the pending erasure, then opened by the service: %q, want [new]", got)
	}
	if err := p.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"new"}) {
		t.Errorf("acme's replica: %q, want [new]", got)
	}
}

// A marker that names no generation (a power loss can leave a file
// empty): the deleted generation was read as 0, and with Ownership every
// generation is newer, so the replica stayed and the deleted tenant came
// back. It is refused instead, saying what to do.
func TestProxy_UnreadableDeleteMarkerRefused(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	deleteWithStoreDown(t, g, p)
	g.s3.Restart()
	m := filepath.Join(cfg.Dir, ".acme.db-deleted")
	if err := os.WriteFile(m, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('x')`); err == nil || !strings.Contains(err.Error(), "run DeleteTenant again") {
		t.Errorf("an access beside an empty marker: %v, want refused", err)
	}
	if err := p.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := names(t, p, "acme"); len(got) != 0 {
		t.Errorf("acme after the delete ran again: %q, want a new, empty tenant", got)
	}
}

// A marker written without Ownership (generation 0), read with it: every
// generation the replica held from an earlier run with Ownership was newer,
// so nothing was erased and the deleted tenant came back. Generation 0
// erases whatever the replica holds.
func TestOwnership_DeleteMarkerWrittenWithoutOwnership(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dirA := t.TempDir()
	inA := func(c *sqliteproxy.Config) { c.Dir = dirA }
	a := g.ownerNode(t, srv, "a", 4, inA)
	insertSynced(t, a.p, "acme", "old-era")
	a.close()
	cfg := g.config(t, 10)
	cfg.Dir = dirA
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deleteWithStoreDown(t, g, p)
	if err := p.Close(); err != nil {
		t.Log(err) // its last sync may have failed: the store is down
	}
	g.s3.Restart()
	a = g.ownerNode(t, srv, "a", 4, inA)
	if got := names(t, a.p, "acme"); slices.Contains(got, "old-era") || slices.Contains(got, "secret") {
		t.Errorf("acme after its delete, back under Ownership: %q, want a new, empty tenant", got)
	}
}

// After a delete that could not erase the replica, the deleting node keeps
// the tenant's lease: another node that took the tenant restored it from the
// replica, deleted rows and all (and the marker then gave way to its newer
// generation). It is told the owner instead.
func TestOwnership_FailedDeleteKeepsTheTenant(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4)
	deleteWithStoreDown(t, g, a.p)
	g.s3.Restart()
	b := g.ownerNode(t, srv, "b", 4)
	var oe *sqliteproxy.OwnerError
	if _, err := b.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('b')`); !errors.As(err, &oe) || oe.Owner != "a" {
		t.Errorf("another node's access after a's failed delete: %v, want the tenant owned by a", err)
	}
	if got := names(t, a.p, "acme"); len(got) != 0 {
		t.Errorf("acme on a once the store is back: %q, want a new, empty tenant", got)
	}
}

// A tenant only in the replica (a new node), deleted while the store is
// down: no marker was left, and the next access restored it; an erasure
// that stopped midway left an older state for it to restore.
func TestProxy_ReplicaOnlyDeleteLeavesAMarker(t *testing.T) {
	g := newRig(t, "s3")
	a := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, a, "acme", "secret")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := g.config(t, 10) // a new node: acme only in the replica
	p := sqliteproxytest.New(t, cfg)
	g.s3.Stop()
	if err := p.DeleteTenant(context.Background(), "acme"); err == nil {
		t.Fatal("DeleteTenant of a replica-only tenant with the store down: nil")
	}
	g.s3.Restart()
	if got := names(t, p, "acme"); len(got) != 0 {
		t.Errorf("acme after its failed delete, the store back: %q, want a new, empty tenant", got)
	}
}

// The CLI (a proxy without replication) restoring a tenant from its
// replica while a delete's erasure is pending brought the deleted rows back
// for good: the service took the restored copy for the new head.
func TestProxy_CLIRestoreFromReplicaRefusedWhileErasurePending(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	deleteWithStoreDown(t, g, p)
	g.s3.Restart()
	cli, err := sqliteproxy.New(sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	err = cli.RestoreTenantFromReplica(context.Background(), "acme", g.replica, time.Time{}, g.ls.Bin())
	if err == nil || !strings.Contains(err.Error(), "run DeleteTenant again") {
		t.Errorf("the CLI's restore from the replica while the erasure is pending: %v, want refused", err)
	}
}
