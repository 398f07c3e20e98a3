//go:build linux

package replication_test

import (
	"context"
	"hash/fnv"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// A move while a reader of the owner's tenant is leased: the lease's end
// could not close the tenant then, and nothing closed it when the reader
// came back; the move waited for the idle reaper (minutes) (adv25).
func TestOwnership_MoveWhileReaderLeasedCompletesAfterRowsClose(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { c.ReadersPerTenant = 1 })
	b := g.ownerNode(t, srv, "b", 4)
	adm := newAdmin(t, srv)
	insert(t, a.p, "acme", "r0")
	rows, err := a.p.QueryContext(sqliteproxytest.Context(t, "acme"), `SELECT name FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	moved := startMove(t, adm, a, "acme", "b")
	rows.Close()
	select {
	case err := <-moved:
		if err != nil {
			t.Fatalf("move: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the move still waits 30 s after the rows on a were closed (open tenants on a: %d)", a.p.Stats().OpenTenants)
	}
	if got := names(t, b.p, "acme"); len(got) != 1 {
		t.Fatalf("b serves %q", got)
	}
}

// holdGate takes an OFD read lock on tenant id's open-gate slot of dir's
// presence file: a replacement (restore, delete) waits at it, after its
// drain, before its rename (OFD locks conflict with the proxy's POSIX
// locks even within one process).
func holdGate(t *testing.T, dir, id string) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, ".sqliteproxy-processes"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	slot := int64(1<<20) + int64(h.Sum32()%(1<<16))
	const fOFDSetlk = 37
	lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: 0, Start: slot, Len: 1}
	if err := syscall.FcntlFlock(f.Fd(), fOFDSetlk, &lk); err != nil {
		t.Fatal(err)
	}
	return func() { f.Close() }
}

// A move that ends the owner's lease after a restore's drain kept it but
// before the restore's rename: the restore renamed anyway, its reopen was
// refused, nothing released the lease and the move waited (adv25). The
// restore now gives up, nothing changed, and releases the lease.
func TestOwnership_MoveBetweenRestoreDrainAndRename(t *testing.T) {
	_, srv, a, b := twoOwners(t)
	dirA := a.dir
	adm := newAdmin(t, srv)
	insert(t, a.p, "acme", "r0")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := a.p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	insertSynced(t, a.p, "acme", "r1")
	release := holdGate(t, dirA, "acme")
	restored := make(chan error, 1)
	go func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer rcancel()
		restored <- a.p.RestoreTenant(rctx, "acme", backup)
	}()
	sqliteproxytest.WaitFor(t, 20*time.Second, "the restore's drain to close acme", func() bool {
		return a.p.Stats().OpenTenants == 0
	})
	moved := startMove(t, adm, a, "acme", "b")
	release()
	rerr := <-restored
	t.Logf("restore on a: %v", rerr)
	select {
	case err := <-moved:
		if err != nil {
			t.Fatalf("move: %v", err)
		}
	case <-time.After(30 * time.Second):
		qctx, qcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, aerr := a.p.ExecContext(sqliteproxy.WithOrgID(qctx, "acme"), `SELECT 1`)
		qcancel()
		t.Fatalf("the move still waits 30 s after the restore on a returned (%v); a now: %v", rerr, aerr)
	}
	t.Logf("b serves %q", names(t, b.p, "acme"))
}
