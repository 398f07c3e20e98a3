//go:build linux

package replication_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// A copy restored on first access, never written by anybody; both
// processes die before Litestream's first LTX; another node writes; the
// copy, not written since, is replaced (README): neither Litestream's own
// tables nor the proxy's open and close mark it written (adv21b).
func TestProxy_RestoredCopyNotWrittenReplacedWhenReplicaMovedOn(t *testing.T) {
	g := newRig(t, "file")
	seedReplica(t, g)
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"in-replica"}) {
		t.Fatalf("restored %q", got)
	}
	g.ls.Kill()
	if files := ltx0(t, cfg.Dir); len(files) > 0 {
		t.Skip("Litestream wrote its first LTX before the kill")
	}
	st, _ := os.Stat(filepath.Join(cfg.Dir, "acme.db"))
	wst, werr := os.Stat(filepath.Join(cfg.Dir, "acme.db-wal"))
	b, _ := os.ReadFile(filepath.Join(cfg.Dir, ".acme.db-fromreplica"))
	t.Logf("at the crash: db size %d mtime %d; wal %v %v; marker %q", st.Size(), st.ModTime().UnixNano(), wst, werr, b)
	t.Logf("close: %v", p.Close())
	st, _ = os.Stat(filepath.Join(cfg.Dir, "acme.db"))
	wst, werr = os.Stat(filepath.Join(cfg.Dir, "acme.db-wal"))
	t.Logf("after close: db size %d mtime %d; wal %v", st.Size(), st.ModTime().UnixNano(), werr)
	if wst != nil {
		t.Logf("wal size %d", wst.Size())
	}
	g.ls.Restart()
	other := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, other, "acme", "written-elsewhere")
	other.Close()
	q := sqliteproxytest.New(t, cfg)
	_, err := q.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`)
	if errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("a copy nobody wrote was refused: %v", err)
	}
	if got, want := names(t, q, "acme"), []string{"in-replica", "written-elsewhere"}; !slices.Equal(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

// A copy restored on purpose with the service stopped (the CLI's restore
// -replica: RestoreTenantFromReplica in a proxy without replication), then
// opened by the service, which takes writes; both processes die before
// Litestream's first LTX of it (register dropped .acme.db-restored at once,
// as it dropped .acme.db-fromreplica before 04f3992).
func TestProxy_RestoredOnPurposeCrashBeforeFirstLTX(t *testing.T) {
	g := newRig(t, "file")
	src := sqliteproxytest.New(t, g.config(t, 10))
	at := beforeAndAfter(t, src, "acme")
	src.Close()
	cfg := g.config(t, 10)
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	if err := plain.RestoreTenantFromReplica(context.Background(), "acme", g.replica, at, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	plain.Close()
	p := sqliteproxytest.New(t, cfg)
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"before-1", "before-2"}) {
		t.Fatalf("restored %q", got)
	}
	insert(t, p, "acme", "acknowledged")
	g.ls.Kill()
	if files := ltx0(t, cfg.Dir); len(files) > 0 {
		t.Skip("Litestream wrote its first LTX before the kill")
	}
	t.Logf("close: %v", p.Close())
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg)
	want := []string{"before-1", "before-2", "acknowledged"}
	if _, err := q.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err != nil {
		t.Fatalf("reopen after the crash: %v", err)
	}
	if got := names(t, q, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after the crash: %q, want %q", got, want)
	}
}

// The same with Ownership.
func TestOwnership_RestoredOnPurposeCrashBeforeFirstLTX(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	src := g.ownerNode(t, srv, "src", 10)
	insert(t, src.p, "acme", "before-1")
	insertSynced(t, src.p, "acme", "before-2")
	t0 := time.Now()
	sqliteproxytest.WaitFor(t, 5*time.Second, "2s", func() bool { return time.Since(t0) > 2*time.Second })
	at := time.Now()
	sqliteproxytest.WaitFor(t, 5*time.Second, "the next whole second", func() bool { return time.Since(at) > 1500*time.Millisecond })
	insertSynced(t, src.p, "acme", "after-1")
	src.close()
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	if err := plain.RestoreTenantFromReplica(context.Background(), "acme", g.replica, at, ls.Bin()); err != nil {
		t.Fatal(err)
	}
	plain.Close()
	withLS := onDir(dir, ls)
	n := g.ownerNode(t, srv, "n1", 10, withLS)
	if got := names(t, n.p, "acme"); !slices.Equal(got, []string{"before-1", "before-2"}) {
		t.Fatalf("restored %q", got)
	}
	insert(t, n.p, "acme", "acknowledged")
	ls.Kill()
	if files := ltx0(t, dir); len(files) > 0 {
		t.Skip("Litestream wrote its first LTX before the kill")
	}
	n.close()
	ls.Restart()
	m := g.ownerNode(t, srv, "n1b", 10, withLS)
	want := []string{"before-1", "before-2", "acknowledged"}
	if _, err := m.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err != nil {
		t.Fatalf("reopen after the crash: %v", err)
	}
	if got := names(t, m.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after the crash: %q, want %q (the restore undone, acknowledged row lost)", got, want)
	}
}

// RestoreTenant with the object store down: "restored, but it is not in the
// replica yet (it becomes the head when the tenant is next opened with
// replication)". Written, closed, the store back, opened again.
func TestProxy_RestoreWithStoreDownBecomesHead(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	p := sqliteproxytest.New(t, cfg)
	restoreWithStoreDown(t, g, p, g.ls.Bin(), "before-1", "after-1", "after-2")
	insert(t, p, "acme", "acknowledged")
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"before-1", "acknowledged"}) {
		t.Fatalf("served %q", got)
	}
	l, _, _ := sqliteproxy.ReplicaPositions(context.Background(), g.replica, cfg.Dir, "acme")
	t.Logf("local position before close: %d; ltx0 %q; marker %v", l, ltx0(t, cfg.Dir), fileExists(filepath.Join(cfg.Dir, ".acme.db-restored")))
	t.Logf("close: %v", p.Close())
	g.s3.Restart()
	l, r, _ := sqliteproxy.ReplicaPositions(context.Background(), g.replica, cfg.Dir, "acme")
	t.Logf("after close, store back: local %d replica %d", l, r)
	q := sqliteproxytest.New(t, cfg)
	want := []string{"before-1", "acknowledged"}
	if got := names(t, q, "acme"); !slices.Equal(got, want) {
		t.Fatalf("opened again with the store back: %q, want %q", got, want)
	}
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, want) {
		t.Fatalf("replica head %q, want %q", got, want)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// The same with Ownership.
func TestOwnership_RestoreWithStoreDownBecomesHead(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	n := g.ownerNode(t, srv, "n1", 10, withLS)
	restoreWithStoreDown(t, g, n.p, ls.Bin(), "before-1", "after-1", "after-2")
	insert(t, n.p, "acme", "acknowledged")
	if got := names(t, n.p, "acme"); !slices.Equal(got, []string{"before-1", "acknowledged"}) {
		t.Fatalf("served %q", got)
	}
	n.close()
	g.s3.Restart()
	m := g.ownerNode(t, srv, "n1b", 10, withLS)
	want := []string{"before-1", "acknowledged"}
	if got := names(t, m.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("opened again with the store back: %q, want %q (the restore undone, acknowledged row lost)", got, want)
	}
}

// Ownership, no restore at all: a node restarts (new lease), opens its
// tenant, the object store goes down before Litestream's first upload of
// the new generation; a write is acknowledged; Close says "their last
// commits are on this machine only until they are opened again with
// replication". The node restarts with the store back.
func TestOwnership_UnsyncedNewGenerationKept(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	n := g.ownerNode(t, srv, "n1", 10, withLS)
	insertSynced(t, n.p, "acme", "synced")
	n.close()
	m := g.ownerNode(t, srv, "n1b", 10, withLS)
	if got := names(t, m.p, "acme"); !slices.Equal(got, []string{"synced"}) {
		t.Fatalf("reopened %q", got)
	}
	g.s3.Stop()
	insert(t, m.p, "acme", "acknowledged")
	m.close()
	g.s3.Restart()
	// What `status -replica` reads: the copy came from the older
	// generation, which has not moved on (compared with the new
	// generation's empty replica, the CLI said "refused": adv21c).
	c, err := sqliteproxy.ReplicaCopyOf(context.Background(), g.replica, dir, "acme")
	if err != nil || !c.FromReplica || c.FromReplicaMovedOn {
		t.Errorf("ReplicaCopyOf: %+v, %v; want from the older generation, not moved on", c, err)
	}
	k := g.ownerNode(t, srv, "n1c", 10, withLS)
	want := []string{"synced", "acknowledged"}
	if got := names(t, k.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after the restart: %q, want %q (acknowledged row lost)", got, want)
	}
}

// restoreReplica (replace) writes .acme.db-fromreplica naming the restore's
// temporary file, renames it over the stale copy, then removes Litestream's
// files beside it. A kill before the rename leaves the state made here by
// hand: the stale copy with its position, a marker naming another file. It
// is behind the replica and replaced again (with Litestream's files removed
// first, it was "never streamed" and refused: adv21b).
func TestProxy_KillBeforeReplaceRename(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	a := sqliteproxytest.New(t, cfg)
	insertSynced(t, a, "acme", "old")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := sqliteproxytest.New(t, g.config(t, 10))
	insertSynced(t, b, "acme", "newer")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, ".acme.db-fromreplica"), []byte("dev 1 ino 2\n1 1\n2 acme\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := sqliteproxytest.New(t, cfg)
	if got, want := names(t, q, "acme"), []string{"old", "newer"}; !slices.Equal(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, ".acme.db-fromreplica")); err != nil {
		t.Errorf("the restore's own marker: %v", err)
	}
}

// Restored on first access with Ownership, the store down
// before the first upload, a write, close, restart with the store back:
// kept (the marker).
func TestOwnership_RestoredThenStoreDownKept(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	src := g.ownerNode(t, srv, "src", 10)
	insertSynced(t, src.p, "acme", "in-replica")
	src.close()
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	withLS := onDir(dir, ls)
	m := g.ownerNode(t, srv, "n1", 10, withLS)
	if got := names(t, m.p, "acme"); !slices.Equal(got, []string{"in-replica"}) {
		t.Fatalf("restored %q", got)
	}
	g.s3.Stop()
	insert(t, m.p, "acme", "acknowledged")
	t.Logf("ltx0 at the outage: %q", ltx0(t, dir))
	m.close()
	g.s3.Restart()
	k := g.ownerNode(t, srv, "n1c", 10, withLS)
	want := []string{"in-replica", "acknowledged"}
	if got := names(t, k.p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("after the restart: %q, want %q", got, want)
	}
}

// Ownership, one process, no restart: RestoreTenant with the store down,
// a write, the tenant evicted idle while the store is down, the store back,
// the next access.
func TestOwnership_RestoreWithStoreDownEvicted(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	n := g.ownerNode(t, srv, "n1", 10, func(c *sqliteproxy.Config) {
		c.Dir = dir
		c.LitestreamSocket = ls.SocketPath
		c.LitestreamPath = ls.Bin()
		c.IdleTimeout = 300 * time.Millisecond
	})
	restoreWithStoreDown(t, g, n.p, ls.Bin(), "before-1", "after-1")
	insert(t, n.p, "acme", "acknowledged")
	gen1, _ := n.p.Generation("acme")
	sqliteproxytest.WaitFor(t, 60*time.Second, "acme evicted", func() bool { return len(n.p.Stats().Tenants) == 0 })
	dbs, lerr := ls.Client.List()
	t.Logf("litestream registrations after the eviction: %+v %v", dbs, lerr)
	g.s3.Restart()
	want := []string{"before-1", "acknowledged"}
	if _, err := n.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err != nil {
		t.Fatalf("the first access with the store back: %v", err)
	}
	got := names(t, n.p, "acme")
	gen2, _ := n.p.Generation("acme")
	t.Logf("generations %d -> %d", gen1, gen2)
	if !slices.Equal(got, want) {
		t.Fatalf("next access: %q, want %q (the restore undone, acknowledged row lost)", got, want)
	}
}

// Ownership failover after an outage: A evicts acme while the object store
// is down (Litestream's unregister, whose final sync fails); the store
// back, B takes acme, writes and syncs in a newer generation and closes;
// A's next access replaces its copy with B's.
func TestOwnership_ReplaceAfterEvictionDuringOutage(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	ls := harness.StartLitestream(t, g.s3.Env()...)
	a := g.ownerNode(t, srv, "a", 10, func(c *sqliteproxy.Config) {
		c.Dir = dir
		c.LitestreamSocket = ls.SocketPath
		c.LitestreamPath = ls.Bin()
		c.IdleTimeout = 300 * time.Millisecond
	})
	insertSynced(t, a.p, "acme", "synced")
	g.s3.Stop()
	insert(t, a.p, "acme", "during-outage")
	sqliteproxytest.WaitFor(t, 60*time.Second, "acme evicted", func() bool { return len(a.p.Stats().Tenants) == 0 })
	a.close()
	g.s3.Restart()
	a = g.ownerNode(t, srv, "a2", 10, func(c *sqliteproxy.Config) {
		c.Dir = dir
		c.LitestreamSocket = ls.SocketPath
		c.LitestreamPath = ls.Bin()
	})
	b := g.ownerNode(t, srv, "b", 10)
	insertSynced(t, b.p, "acme", "on-b")
	b.close()
	// The copy is replaced by B's generation: its old -shm went with it (left
	// behind, with Litestream's process still holding it, the first access
	// failed with "disk I/O error" 1 run in 4: adv21b).
	if _, err := a.p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err != nil {
		t.Fatalf("A's next access: %v", err)
	}
	if got, want := names(t, a.p, "acme"), []string{"synced", "on-b"}; !slices.Equal(got, want) {
		t.Fatalf("A serves %q, want B's generation %q", got, want)
	}
}

// restoreWithStoreDown writes first to acme on p and syncs it, keeps a
// backup of that state (fetched from the replica with the litestream
// binary bin), writes and syncs after, stops the object store and restores
// the backup: RestoreTenant says "restored, but it is not in the replica
// yet", and Litestream has no position of the restored copy.
func restoreWithStoreDown(t *testing.T, g *rig, p *sqliteproxy.Proxy, bin, first string, after ...string) {
	t.Helper()
	insertSynced(t, p, "acme", first)
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := sqliteproxy.FetchReplica(context.Background(), g.replica, "acme", time.Time{}, backup, bin); err != nil {
		t.Fatal(err)
	}
	for _, name := range after {
		insert(t, p, "acme", name)
	}
	if err := p.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	restoreBackupStoreDown(t, g, p, backup, 5*time.Second)
}

// restoreBackupStoreDown stops the object store and restores acme on p from
// backup (within d), which must say it restored without streaming it.
func restoreBackupStoreDown(t *testing.T, g *rig, p *sqliteproxy.Proxy, backup string, d time.Duration) {
	t.Helper()
	g.s3.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	err := p.RestoreTenant(ctx, "acme", backup)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "restored, but") {
		t.Fatalf("RestoreTenant with the store down: %v, want one that says it restored", err)
	}
}

// onDir configures a node on dir with the Litestream ls: the same node,
// restarted, keeps both.
func onDir(dir string, ls *harness.Litestream) func(*sqliteproxy.Config) {
	return func(c *sqliteproxy.Config) {
		c.Dir = dir
		c.LitestreamSocket = ls.SocketPath
		c.LitestreamPath = ls.Bin()
	}
}

// A RestoreTenant done again with the object store still down (which "it is
// not in the replica yet" invites), then once more with the store back.
// Litestream held the file for seconds after the first's tenant was
// unregistered (its sync had failed), and every retry within them was
// refused: "open in another process, or another proxy of this process".
func TestProxy_RestoreRetriedWithStoreDown(t *testing.T) {
	g := newRig(t, "s3")
	p := sqliteproxytest.New(t, g.config(t, 10))
	restoreWithStoreDown(t, g, p, g.ls.Bin(), "before-1", "after-1")
	backup := filepath.Join(t.TempDir(), "again.db")
	if err := p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.RestoreTenant(ctx, "acme", backup); err == nil || !strings.Contains(err.Error(), "restored, but") {
		t.Fatalf("RestoreTenant again with the store down: %v, want one that says it restored", err)
	}
	t.Logf("restored again with the store down in %v", time.Since(start))
	g.s3.Restart()
	ctx, cancel = context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := p.RestoreTenant(ctx, "acme", backup); err != nil {
		t.Fatalf("RestoreTenant with the store back: %v", err)
	}
	want := []string{"before-1"}
	if got := names(t, p, "acme"); !slices.Equal(got, want) {
		t.Fatalf("served %q, want %q", got, want)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, want) {
		t.Fatalf("replica head %q, want %q", got, want)
	}
}
