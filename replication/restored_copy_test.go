//go:build linux

package replication_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// seedReplica writes "in-replica" to acme through another node and syncs
// it: the replica's copy of acme.
func seedReplica(t *testing.T, g *rig) {
	t.Helper()
	src := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, src, "acme", "in-replica")
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
}

// ltx0 lists Litestream's level-0 files beside acme in dir.
func ltx0(t *testing.T, dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, ".acme.db-litestream", "ltx", "0"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// A copy restored from the replica while Litestream was down keeps its
// .acme.db-fromreplica marker. The directory is then served without
// replication (the image without REPLICA_URL) and takes acknowledged rows;
// replication is turned on again. The file descends from the replica's
// head, which has not moved: it is kept (the older replica replaced it,
// acknowledged rows and all: adv21).
func TestProxy_RestoredCopyWrittenWithoutReplicationKept(t *testing.T) {
	g := newRig(t, "file")
	seedReplica(t, g)
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	g.ls.Kill()
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err == nil {
		t.Fatal("first access with Litestream down succeeded")
	}
	p.Close()
	if _, err := os.Stat(filepath.Join(cfg.Dir, ".acme.db-fromreplica")); err != nil {
		t.Fatalf("marker: %v", err)
	}
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	insert(t, plain, "acme", "acknowledged-1")
	insert(t, plain, "acme", "acknowledged-2")
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg)
	want := []string{"in-replica", "acknowledged-1", "acknowledged-2"}
	if got := names(t, q, "acme"); !slices.Equal(got, want) {
		t.Fatalf("served with replication again: %q, want %q (acknowledged rows lost)", got, want)
	}
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, want) {
		t.Fatalf("the replica's head: %q, want %q", got, want)
	}
}

// The same, but another node wrote the replica meanwhile: the copy here
// and the replica are two histories, and the open is refused.
func TestProxy_RestoredCopyWrittenWhileReplicaMovedOnRefused(t *testing.T) {
	g := newRig(t, "file")
	seedReplica(t, g)
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	g.ls.Kill()
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err == nil {
		t.Fatal("first access with Litestream down succeeded")
	}
	p.Close()
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	insert(t, plain, "acme", "acknowledged-here")
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	g.ls.Restart()
	other := sqliteproxytest.New(t, g.config(t, 10))
	insert(t, other, "acme", "written-elsewhere")
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := sqliteproxy.ReplicaCopyOf(context.Background(), g.replica, cfg.Dir, "acme")
	if err != nil || !c.FromReplica || !c.FromReplicaWritten || !c.FromReplicaMovedOn || c.NeverStreamed {
		t.Errorf("ReplicaCopyOf: %+v, %v; want restored from the replica, written since, the replica moved on", c, err)
	}
	q := sqliteproxytest.New(t, cfg)
	if _, err := q.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); !errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("access: %v, want ErrReplicaConflict", err)
	}
	q.Close()
	if got, want := plainNames(t, cfg.Dir), []string{"in-replica", "acknowledged-here"}; !slices.Equal(got, want) {
		t.Fatalf("the file here: %q, want %q", got, want)
	}
}

// A copy restored from the replica and registered: Litestream writes its
// first local LTX file only at its first monitor tick (~1 s later). Both
// processes gone in between (a host crash; here: Litestream killed, the
// proxy closed), the copy, the replica's and what was written since, is
// served (it was refused with ErrReplicaConflict: adv21).
func TestProxy_RestoredCopyCrashBeforeFirstLTX(t *testing.T) {
	g := newRig(t, "file")
	seedReplica(t, g)
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"in-replica"}) {
		t.Fatalf("restored %q", got)
	}
	insert(t, p, "acme", "acknowledged")
	g.ls.Kill()
	files := ltx0(t, cfg.Dir)
	_, mErr := os.Stat(filepath.Join(cfg.Dir, ".acme.db-fromreplica"))
	t.Logf("at the crash: local ltx/0 %q, fromreplica marker: %v", files, mErr)
	if len(files) > 0 {
		t.Skip("Litestream wrote its first LTX before the kill")
	}
	t.Logf("close: %v", p.Close())
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg)
	want := []string{"in-replica", "acknowledged"}
	if got := names(t, q, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after the crash: %q, want %q", got, want)
	}
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, want) {
		t.Fatalf("the replica's head: %q, want %q", got, want)
	}
}

// The refusal's two remedies, applied while the service runs: an empty
// .acme.db-restored keeps the file here; the file moved away, the replica's
// copy is restored.
func TestProxy_ConflictRemediesInRunningService(t *testing.T) {
	g := newRig(t, "file")
	dir := unstreamedBesideOlderReplica(t, g, sqliteproxytest.New(t, g.config(t, 10)))
	cfg := g.config(t, 10)
	cfg.Dir = dir
	p := sqliteproxytest.New(t, cfg)
	_, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	if !errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("first access: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".acme.db-restored"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := names(t, p, "acme"); !slices.Equal(got, acknowledged) {
		t.Fatalf("after the remedy: %q", got)
	}
	// second remedy in another running proxy: move the file away
	dir2 := unstreamedBesideOlderReplica(t, g, sqliteproxytest.New(t, g.config(t, 10)))
	cfg2 := g.config(t, 10)
	cfg2.Dir = dir2
	p.Close()
	p2 := sqliteproxytest.New(t, cfg2)
	_, err = p2.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	if !errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("first access: %v", err)
	}
	moved := t.TempDir()
	for _, f := range []string{"acme.db", "acme.db-wal"} {
		if err := os.Rename(filepath.Join(dir2, f), filepath.Join(moved, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	if got, want := names(t, p2, "acme"), g.replicaNames(t, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after moving the file away: %q, want the replica's %q", got, want)
	}
}

// TestProxy_RestoredCopyWrittenWithoutReplicationKept with Ownership:
// another node takes the tenant in a new generation, the file here
// descends from the newest generation's head, which has not moved: kept.
func TestOwnership_RestoredCopyWrittenWithoutReplicationKept(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	src := g.ownerNode(t, srv, "src", 10)
	insertSynced(t, src.p, "acme", "in-replica")
	src.close()
	dir := t.TempDir()
	down := g.ownerNode(t, srv, "n1", 10, func(c *sqliteproxy.Config) { c.Dir = dir; c.LitestreamSocket = filepath.Join(t.TempDir(), "none.sock") })
	if _, err := down.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err == nil {
		t.Fatal("first access with Litestream unreachable succeeded")
	}
	down.close()
	if _, err := os.Stat(filepath.Join(dir, ".acme.db-fromreplica")); err != nil {
		t.Fatalf("marker: %v", err)
	}
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	insert(t, plain, "acme", "acknowledged-1")
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	n := g.ownerNode(t, srv, "n1b", 10, func(c *sqliteproxy.Config) { c.Dir = dir })
	want := []string{"in-replica", "acknowledged-1"}
	if got := names(t, n.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("served: %q, want %q (acknowledged row lost)", got, want)
	}
	n.close()
	if got := plainNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("the file here: %q, want %q", got, want)
	}
}
