//go:build linux

// Tests of sqliteproxy's replication with real parts: a Litestream v0.5.18
// process driven over its control socket, a versitygw S3-compatible server,
// and file:// replicas. The harness starts and stops them.
package replication_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/replica"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

var migrations = []string{
	`CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP)`,
	`CREATE INDEX events_name ON events (name)`,
}

// rig is one replica (S3 or file) and one Litestream process.
type rig struct {
	replica  string // Config.ReplicaURL
	ls       *harness.Litestream
	s3       *harness.S3 // nil for file://
	restorer bool        // nodes restore in process (replica.Restorer), not with the litestream binary
}

// newRig starts what a replica of the given kind needs. S3 credentials
// reach the driver (restores, erasure) through the environment, as in
// production, so S3 tests cannot run in parallel.
func newRig(t *testing.T, kind string) *rig { return newRigLevels(t, kind, nil) }

// newRigLevels is newRig with Litestream's compaction levels at levels
// (nil: Litestream's defaults).
func newRigLevels(t *testing.T, kind string, levels []time.Duration) *rig {
	t.Helper()
	start := func(env ...string) *harness.Litestream {
		if levels == nil {
			return harness.StartLitestream(t, env...)
		}
		return harness.StartLitestreamLevels(t, levels, env...)
	}
	switch kind {
	case "s3":
		s3 := harness.StartS3(t)
		for _, kv := range s3.Env() {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		t.Setenv("AWS_CA_BUNDLE", "") // see package replica
		return &rig{replica: s3.ReplicaURL("tenants"), ls: start(s3.Env()...), s3: s3}
	case "file":
		return &rig{replica: "file://" + filepath.Join(t.TempDir(), "replica"), ls: start()}
	}
	t.Fatalf("no rig %q", kind)
	return nil
}

// config is a proxy configuration on a fresh data directory ("a node").
func (g *rig) config(t testing.TB, maxConns int) sqliteproxy.Config {
	cfg := sqliteproxy.Config{
		Dir: t.TempDir(), MaxConnections: maxConns, Migrations: migrations,
		ReplicaURL: g.replica, LitestreamSocket: g.ls.SocketPath, LitestreamPath: g.ls.Bin(),
	}
	if g.restorer {
		cfg.ReplicaRestorer = &replica.Restorer{}
		cfg.LitestreamPath = "/nonexistent/litestream" // proves that nothing runs it
	}
	return cfg
}

// restorers runs f for nodes that restore with the litestream binary and
// for nodes that restore in process (replica.Restorer; see rig.restorer).
func restorers(t *testing.T, f func(t *testing.T, inProcess bool)) {
	for _, in := range []bool{false, true} {
		name := "restore=binary"
		if in {
			name = "restore=in-process"
		}
		t.Run(name, func(t *testing.T) { f(t, in) })
	}
}

// registered returns the tenant IDs Litestream streams.
func (g *rig) registered(t *testing.T) []string {
	t.Helper()
	dbs, err := g.ls.Client.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range dbs {
		ids = append(ids, strings.TrimSuffix(filepath.Base(d.Path), ".db"))
	}
	slices.Sort(ids)
	return ids
}

func names(t *testing.T, p *sqliteproxy.Proxy, id string) []string {
	t.Helper()
	return sqliteproxytest.Strings(t, sqliteproxytest.Context(t, id), p, `SELECT name FROM events ORDER BY id`)
}

func insert(t *testing.T, p *sqliteproxy.Proxy, id, name string) {
	t.Helper()
	if _, err := p.ExecContext(sqliteproxytest.Context(t, id), `INSERT INTO events (name) VALUES (?)`, name); err != nil {
		t.Fatalf("%s: insert %s: %v", id, name, err)
	}
}

// insertSynced is insert, then SyncTenant: the row is acknowledged.
func insertSynced(t *testing.T, p *sqliteproxy.Proxy, id, name string) {
	t.Helper()
	insert(t, p, id, name)
	if err := p.SyncTenant(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

// Tenants written on one node, evicted and reopened under a small budget
// and acknowledged after SyncTenant, are all restored on first access by a
// node with an empty data directory: every acknowledged row, integrity ok,
// migrations applied. Litestream streams exactly the open tenants.
func TestProxy_AnotherNodeRestoresEveryTenant(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) { testAnotherNodeRestoresEveryTenant(t, in) })
}

func testAnotherNodeRestoresEveryTenant(t *testing.T, inProcess bool) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			g := newRig(t, kind)
			g.restorer = inProcess
			const tenants, cap = 12, 4
			a := sqliteproxytest.New(t, g.config(t, cap))
			want := map[string][]string{}
			for round := range 3 {
				for i := range tenants {
					id := fmt.Sprintf("t%02d", i)
					name := fmt.Sprintf("%s-r%d", id, round)
					insert(t, a, id, name)
					if err := a.SyncTenant(sqliteproxytest.Context(t, id), id); err != nil {
						t.Fatalf("SyncTenant(%s): %v", id, err)
					}
					want[id] = append(want[id], name) // acknowledged
					var open []string
					for _, ts := range a.Stats().Tenants {
						open = append(open, ts.ID)
					}
					if got := g.registered(t); !slices.Equal(got, open) {
						t.Fatalf("Litestream streams %v, the open tenants are %v", got, open)
					}
				}
			}
			if st := a.Stats(); st.Evictions == 0 {
				t.Fatalf("no eviction with %d tenants and a budget of %d", tenants, cap)
			}

			b := sqliteproxytest.New(t, g.config(t, cap)) // another node: empty directory
			for id, rows := range want {
				if got := names(t, b, id); !slices.Equal(got, rows) {
					t.Errorf("%s on the other node: %v, want %v", id, got, rows)
				}
				if err := b.CheckTenant(context.Background(), id); err != nil {
					t.Errorf("%s: %v", id, err)
				}
				st, err := b.MigrationStatus(context.Background(), id)
				if err != nil || len(st.Applied) != len(migrations) || len(st.Pending) != 0 {
					t.Errorf("%s: migration status %+v, %v", id, st, err)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if got := g.registered(t); len(got) != 0 {
				t.Errorf("Litestream still streams %v after Close", got)
			}
		})
	}
}

// DeleteTenant erases the replica too, and leaves other tenants' replicas
// (whose names share a prefix) alone.
func TestProxy_DeleteTenantErasesReplica(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			g := newRig(t, kind)
			a := sqliteproxytest.New(t, g.config(t, 10))
			for _, id := range []string{"acme", "acme-corp"} {
				insertSynced(t, a, id, "x")
			}
			if err := a.DeleteTenant(context.Background(), "acme"); err != nil {
				t.Fatal(err)
			}
			b := sqliteproxytest.New(t, sqliteproxy.Config{Dir: t.TempDir(), Migrations: migrations, ExplicitCreate: true,
				ReplicaURL: g.replica, LitestreamSocket: g.ls.SocketPath, LitestreamPath: g.ls.Bin()})
			if ok, err := b.TenantExists(context.Background(), "acme"); err != nil || ok {
				t.Fatalf("acme exists here: %v, %v", ok, err)
			}
			if _, err := b.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1 FROM events`); err == nil {
				t.Error("acme was restored from its replica after DeleteTenant")
			}
			if got := names(t, b, "acme-corp"); !slices.Equal(got, []string{"x"}) {
				t.Errorf("acme-corp: %v", got)
			}
			if g.s3 != nil {
				objs, _, err := g.s3.List("tenants/acme/", "")
				if err != nil || len(objs) != 0 {
					t.Errorf("objects left under tenants/acme/: %v, %v", objs, err)
				}
			}
		})
	}
}

// RestoreTenantAt returns exactly the rows whose commits were uploaded
// before the time, and that state becomes the replica's head.
func TestProxy_RestoreTenantAt(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) {
		g := newRig(t, "file")
		g.restorer = in
		testRestoreTenantAt(t, g)
	})
}

func testRestoreTenantAt(t *testing.T, g *rig) {
	p := sqliteproxytest.New(t, g.config(t, 10))
	ctx := context.Background()
	at := beforeAndAfter(t, p, "acme")
	if err := p.RestoreTenantAt(ctx, "acme", at); err != nil {
		t.Fatal(err)
	}
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"before-1", "before-2"}) {
		t.Fatalf("after RestoreTenantAt: %v", got)
	}
	// The restored state is the head: another node sees it.
	q := sqliteproxytest.New(t, g.config(t, 10))
	if got := names(t, q, "acme"); !slices.Equal(got, []string{"before-1", "before-2"}) {
		t.Fatalf("another node after RestoreTenantAt: %v", got)
	}
	// A time after the last upload restores the latest state.
	insert(t, p, "acme", "later")
	if err := p.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := p.RestoreTenantAt(ctx, "acme", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"before-1", "before-2", "later"}) {
		t.Fatalf("after RestoreTenantAt(an hour from now): %v", got)
	}
}

// A time within the second of the last upload, on S3 (whose listing gives
// whole seconds): the restore never returns the latest state for it. The
// in-process restorer leaves such a time to Litestream's plan, which reads
// each file's exact time; litestream restore cannot place it and says so.
// (Both restored the latest state, after-1 and all, and returned nil.)
func TestProxy_RestoreTenantAtWithinASecond(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) {
		g := newRig(t, "s3")
		g.restorer = in
		p := sqliteproxytest.New(t, g.config(t, 10))
		// Early in a second, so that at and after-1's upload share it.
		sqliteproxytest.WaitFor(t, 5*time.Second, "the start of a second", func() bool { return time.Now().Nanosecond() < 100e6 })
		at := beforeAndAfter(t, p, "acme")
		err := p.RestoreTenantAt(context.Background(), "acme", at)
		got := names(t, p, "acme")
		switch {
		case err == nil && slices.Equal(got, []string{"before-1", "before-2"}):
		case err != nil && !in && strings.Contains(err.Error(), "within the second"):
			if !slices.Equal(got, []string{"before-1", "before-2", "after-1"}) {
				t.Fatalf("a refused restore changed the tenant: %v", got)
			}
		default:
			t.Fatalf("RestoreTenantAt(%s): %v; rows %v", at.Format(time.RFC3339Nano), err, got)
		}
	})
}

// A backup restored by a proxy without replication (the CLI's restore)
// into a fresh directory is what the service with replication serves and
// streams when it opens it there, not the replica's newer state.
func TestProxy_RestoredWithoutReplicationBecomesTheHead(t *testing.T) {
	g := newRig(t, "file")
	ctx := context.Background()
	svc := sqliteproxytest.New(t, g.config(t, 10))
	insert(t, svc, "acme", "good")
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := svc.BackupTenant(ctx, "acme", backup); err != nil {
		t.Fatal(err)
	}
	insert(t, svc, "acme", "bad-row")
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	fresh := t.TempDir()
	cli := sqliteproxytest.New(t, sqliteproxy.Config{Dir: fresh, Migrations: migrations})
	if err := cli.RestoreTenant(ctx, "acme", backup); err != nil {
		t.Fatal(err)
	}
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := g.config(t, 10)
	cfg.Dir = fresh
	again := sqliteproxytest.New(t, cfg)
	if got := names(t, again, "acme"); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("the service serves %v, want the restored backup's [good]", got)
	}
	if err := again.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	other := sqliteproxytest.New(t, g.config(t, 10)) // restores from the replica
	if got := names(t, other, "acme"); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("another node restores %v, want [good]", got)
	}
}

// A tenant the replica does not hold is ErrTenantNotFound, with a time or
// without, whichever restorer (litestream restore said "no backups found"
// for one with a time).
func TestProxy_FetchReplicaOfNobody(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) {
		g := newRig(t, "file")
		g.restorer = in
		cfg := g.config(t, 10)
		p := sqliteproxytest.New(t, cfg)
		insertSynced(t, p, "acme", "x")
		for _, at := range []time.Time{{}, time.Now()} {
			err := p.RestoreTenantAt(context.Background(), "nosuch", at)
			if at.IsZero() {
				err = sqliteproxy.FetchReplica(context.Background(), g.replica, "nosuch", at, filepath.Join(t.TempDir(), "n.db"), g.ls.Bin())
			}
			if !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
				t.Errorf("at %v: %v, want ErrTenantNotFound", at, err)
			}
		}
		if !in {
			err := sqliteproxy.FetchReplica(context.Background(), g.replica, "nosuch", time.Now(), filepath.Join(t.TempDir(), "n.db"), g.ls.Bin())
			if !errors.Is(err, sqliteproxy.ErrTenantNotFound) {
				t.Errorf("FetchReplica at now: %v, want ErrTenantNotFound", err)
			}
		}
	})
}

// A restore whose new file is in place but cannot be streamed (Litestream
// down) says it restored: the tenant is the restored one already.
func TestProxy_RestoredButNotStreamed(t *testing.T) {
	g := newRig(t, "file")
	g.restorer = true
	p := sqliteproxytest.New(t, g.config(t, 10))
	at := beforeAndAfter(t, p, "acme")
	g.ls.Kill()
	err := p.RestoreTenantAt(context.Background(), "acme", at)
	if err == nil || !strings.Contains(err.Error(), "restored, but") {
		t.Fatalf("RestoreTenantAt with Litestream down: %v, want one that says it restored", err)
	}
	g.ls.Restart()
	if got := names(t, p, "acme"); !slices.Equal(got, []string{"before-1", "before-2"}) {
		t.Fatalf("after the restore: %v", got)
	}
}

// A tenant closed while Litestream was down keeps its last commits in its
// file only (the close checkpointed its WAL, where a restarted Litestream
// does not look): in the next process, its status says behind, and
// SyncTenant, before any new write, puts them in the replica (it returned
// nil without them, until the tenant was written again).
func TestProxy_UnsyncedAtCloseSyncedByTheNextProcess(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	p := writeWhileLitestreamDies(t, g, cfg) // "before" synced, "while-dead" not
	if err := p.Close(); err == nil || !strings.Contains(err.Error(), "not synced") {
		t.Fatalf("Close with Litestream down: %v", err)
	}
	g.ls.Restart()
	local, remote, err := sqliteproxy.ReplicaPositions(context.Background(), g.replica, cfg.Dir, "acme")
	if err != nil || local <= remote {
		t.Errorf("positions: local %d, replica %d, %v; want the local copy ahead", local, remote, err)
	}
	q := sqliteproxytest.New(t, cfg) // the next process, the same directory
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"before", "while-dead"}) {
		t.Fatalf("the replica after SyncTenant: %v", got)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	local, remote, err = sqliteproxy.ReplicaPositions(context.Background(), g.replica, cfg.Dir, "acme")
	if err != nil || local != remote {
		t.Errorf("positions after the sync: local %d, replica %d, %v; want equal", local, remote, err)
	}
}

// A tenant moved A -> B -> A: when A opens it again, its local copy is
// behind the replica (B wrote since), and no stale row comes back, on A or
// in the replica.
func TestProxy_MovedAwayAndBack(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			g := newRig(t, kind)
			ctx := context.Background()
			cfgA := g.config(t, 10)
			a := sqliteproxytest.New(t, cfgA)
			insert(t, a, "acme", "on-a-1")
			if err := a.Close(); err != nil { // unregistered, synced; A keeps its copy
				t.Fatal(err)
			}
			b := sqliteproxytest.New(t, g.config(t, 10))
			insert(t, b, "acme", "on-b")
			if _, err := b.ExecContext(sqliteproxytest.Context(t, "acme"), `DELETE FROM events WHERE name = 'on-a-1'`); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			a = sqliteproxytest.New(t, cfgA) // back on A, same directory
			if got := names(t, a, "acme"); !slices.Equal(got, []string{"on-b"}) {
				t.Fatalf("back on A: %v, want [on-b]", got)
			}
			insert(t, a, "acme", "on-a-2")
			if err := a.SyncTenant(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			c := sqliteproxytest.New(t, g.config(t, 10))
			if got := names(t, c, "acme"); !slices.Equal(got, []string{"on-b", "on-a-2"}) {
				t.Fatalf("the replica after A -> B -> A: %v", got)
			}
		})
	}
}

// A restore killed between marking the tenant restored on purpose and its
// rename leaves the marker beside the old file, naming the copy it never
// renamed. When that old copy is behind the replica, the marker must not
// make it the replica's head: it was, and the rows written on another node
// since were gone from the replica too.
func TestProxy_RestoreKilledBeforeRenameKeepsNoStaleCopy(t *testing.T) {
	g := newRig(t, "file")
	cfgA := g.config(t, 10)
	a := sqliteproxytest.New(t, cfgA)
	insert(t, a, "acme", "on-a")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := sqliteproxytest.New(t, g.config(t, 10))
	insert(t, b, "acme", "on-b")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// What the killed restore left on A: its copy under a temporary name
	// and the marker naming that copy (device and inode).
	copyName := filepath.Join(cfgA.Dir, ".restoring-acme-killed.db")
	if err := os.WriteFile(copyName, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(copyName)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.WriteFile(filepath.Join(cfgA.Dir, ".acme.db-restored"), fmt.Appendf(nil, "dev %d ino %d", st.Dev, st.Ino), 0o600); err != nil {
		t.Fatal(err)
	}
	a = sqliteproxytest.New(t, cfgA)
	if got := names(t, a, "acme"); !slices.Equal(got, []string{"on-a", "on-b"}) {
		t.Fatalf("back on A after the killed restore: %v, want the replica's [on-a on-b]", got)
	}
	if err := a.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	c := sqliteproxytest.New(t, g.config(t, 10))
	if got := names(t, c, "acme"); !slices.Equal(got, []string{"on-a", "on-b"}) {
		t.Fatalf("the replica after A reopened: %v, want [on-a on-b]", got)
	}
}

// With the object store down for a while, writes go on (evictions and
// reopens included) and SyncTenant reports that it cannot vouch for them;
// once the store is back, replication catches up by itself: another node
// restores every row, though nobody called SyncTenant again.
func TestProxy_ObjectStoreDown(t *testing.T) {
	g := newRig(t, "s3")
	const tenants = 4
	a := sqliteproxytest.New(t, g.config(t, 2)) // 2 slots: tenants are evicted and reopened
	want := map[string][]string{}
	write := func(round string) {
		for i := range tenants {
			id := fmt.Sprintf("t%d", i)
			insert(t, a, id, id+"-"+round)
			want[id] = append(want[id], id+"-"+round)
		}
	}
	write("up")
	for id := range want {
		if err := a.SyncTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	g.s3.Stop()
	write("down-1")
	write("down-2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	open := a.Stats().Tenants[0].ID
	if err := a.SyncTenant(ctx, open); err == nil {
		t.Fatal("SyncTenant succeeded with the object store down")
	}
	sqliteproxytest.WaitFor(t, 30*time.Second, "Stats to show the replica lagging", func() bool {
		for _, ts := range a.Stats().Tenants {
			if ts.ReplicaLag > 0 {
				return true
			}
		}
		return false
	})
	g.s3.Restart()
	b := sqliteproxytest.New(t, g.config(t, 10))
	sqliteproxytest.WaitFor(t, 30*time.Second, "replication to catch up", func() bool {
		for id, rows := range want {
			dir := t.TempDir()
			if err := g.ls.Restore(context.Background(), mustJoin(t, g.replica, id), filepath.Join(dir, "x.db")); err != nil {
				return false
			}
			if got := countRows(t, filepath.Join(dir, "x.db")); got != len(rows) {
				return false
			}
		}
		return true
	})
	for id, rows := range want {
		if got := names(t, b, id); !slices.Equal(got, rows) {
			t.Errorf("%s on another node: %v, want %v", id, got, rows)
		}
	}
	sqliteproxytest.WaitFor(t, 30*time.Second, "the replica lag to clear", func() bool {
		for _, ts := range a.Stats().Tenants {
			if ts.ReplicaLag > 0 {
				return false
			}
		}
		return true
	})
}

// Litestream killed and started again forgets every registration: the
// proxy registers its open tenants again, so SyncTenant returns (it spun on
// Litestream's "database not found" until its deadline) and replication of
// a tenant nobody syncs catches up by itself (the resync).
func TestProxy_LitestreamRestarted(t *testing.T) {
	g := newRig(t, "file")
	a := sqliteproxytest.New(t, g.config(t, 10))
	ctx := context.Background()
	insert(t, a, "synced", "before")
	insert(t, a, "idle", "before")
	for _, id := range []string{"synced", "idle"} {
		if err := a.SyncTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	g.ls.Kill()
	insert(t, a, "synced", "while-dead")
	insert(t, a, "idle", "while-dead")
	g.ls.Restart()
	insert(t, a, "synced", "after")
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.SyncTenant(sctx, "synced"); err != nil {
		t.Fatalf("SyncTenant after Litestream restarted: %v", err)
	}
	if got, want := g.replicaNames(t, "synced"), []string{"before", "while-dead", "after"}; !slices.Equal(got, want) {
		t.Errorf("synced's replica: %v, want %v", got, want)
	}
	want := []string{"before", "while-dead"}
	sqliteproxytest.WaitFor(t, 60*time.Second, "idle's replica to catch up", func() bool {
		return slices.Equal(g.replicaNames(t, "idle"), want)
	})
}

// A registration the process does not hold: a service killed without
// unregistering, its data directory wiped and the service started again on
// the same path, Litestream still running. The tenant is restored from the
// replica, but Litestream answered "already_registered" and kept the dead
// process's database (an unlinked file): every SyncTenant failed with
// "cannot verify wal state" while writes succeeded, and nothing reached the
// replica again. The proxy now ends such a registration and makes its own.
func TestProxy_StaleRegistrationReplaced(t *testing.T) {
	g := newRig(t, "file")
	ctx := context.Background()
	cfg := g.config(t, 10)
	a := sqliteproxytest.New(t, cfg)
	insert(t, a, "acme", "first")
	if err := a.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// What a killed process leaves: its registration, on the file it had.
	path := filepath.Join(cfg.Dir, "acme.db")
	if status, err := g.ls.Client.Register(path, mustJoin(t, g.replica, "acme")); err != nil || status != "registered" {
		t.Fatalf("register as a killed process had: %q, %v", status, err)
	}
	if _, err := g.ls.Client.Sync(path, true, 10); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b := sqliteproxytest.New(t, cfg)
	if got := names(t, b, "acme"); !slices.Equal(got, []string{"first"}) {
		t.Fatalf("restored from the replica: %v, want [first]", got)
	}
	insert(t, b, "acme", "second")
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.SyncTenant(sctx, "acme"); err != nil {
		t.Fatalf("SyncTenant after a stale registration: %v", err)
	}
	if got, want := g.replicaNames(t, "acme"), []string{"first", "second"}; !slices.Equal(got, want) {
		t.Errorf("the replica: %v, want %v", got, want)
	}
}

// An object store that accepts connections and never answers (a partition,
// a firewall that drops): the first access of a tenant restores it from the
// replica with the litestream binary, which waits for ever. With a deadline
// the access fails with the context's error (it said "signal: killed"), and
// Close ends an access without one (it went on after Close returned, and
// the litestream process outlived the service).
func TestProxy_ObjectStoreNeverAnswers(t *testing.T) {
	// In process too: Close returned while replica.Restorer went on, and its
	// file took the tenant's name after Close.
	restorers(t, testObjectStoreNeverAnswers)
}

// silentStore is an object store that accepts connections and never
// answers: it returns an S3 replica URL on it and the number of
// connections it has accepted so far. S3 credentials are set for the test.
func silentStore(t *testing.T) (replicaURL string, accepted func() int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn // accepted, never answered
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	t.Setenv("AWS_CA_BUNDLE", "")
	return "s3://bucket/tenants?endpoint=http://" + ln.Addr().String() + "&region=us-east-1", func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(held)
	}
}

func testObjectStoreNeverAnswers(t *testing.T, in bool) {
	replicaURL, accepted := silentStore(t)
	g := newRig(t, "file")
	g.restorer = in
	cfg := g.config(t, 10)
	cfg.ReplicaURL = replicaURL
	p := sqliteproxytest.New(t, cfg)
	ctx, cancel := context.WithTimeout(sqliteproxytest.Context(t, "acme"), 2*time.Second)
	defer cancel()
	if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES ('x')`); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an access with a 2 s deadline: %v, want context.DeadlineExceeded", err)
	}
	before := accepted()
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(sqliteproxytest.Context(t, "globex"), `INSERT INTO events (name) VALUES ('x')`)
		done <- err
	}()
	sqliteproxytest.WaitFor(t, 10*time.Second, "globex's restore to call the store", func() bool { return accepted() > before })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, sqliteproxy.ErrClosed) {
			t.Errorf("an access without a deadline, restoring at Close: %v, want ErrClosed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an access without a deadline still restores 20 s after Close")
	}
}

// A restore from a replica ended midway, by its context or by Close:
// litestream restore, killed, left the file it writes before its rename
// (<...>.replica.tmp, a tenant's rows) in the data directory for good, and
// a restore through RestoreTenantFromReplica went on after Close and
// swapped the tenant's file in after Close had returned.
func TestProxy_RestoreFromReplicaEndedMidway(t *testing.T) {
	g := newRig(t, "file")
	a := sqliteproxytest.New(t, g.config(t, 4))
	ctx := sqliteproxytest.Context(t, "acme")
	for range 40 { // ~40 MB: the restore takes a while
		if _, err := a.ExecContext(ctx, `INSERT INTO events (name) VALUES (hex(randomblob(500000)))`); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
			rctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.RestoreTenantFromReplica(rctx, "acme", g.replica, time.Time{}, g.ls.Bin()) }()
			sqliteproxytest.WaitFor(t, 60*time.Second, "litestream restore to write its file", func() bool {
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".tmp") && fi.Size() > 0 {
						return true
					}
				}
				return len(done) > 0 // ended first: reported below
			})
			want := context.Canceled
			if how == "cancel" {
				cancel()
			} else {
				want = sqliteproxy.ErrClosed
				if err := p.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if err := <-done; !errors.Is(err, want) {
				t.Fatalf("the restore, ended midway: %v, want %v", err, want)
			}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if !strings.HasPrefix(e.Name(), ".sqliteproxy-") {
					t.Errorf("left in the data directory: %s", e.Name())
				}
			}
		})
	}
}

// After a Litestream restart, callers that meet it at once (SyncTenant,
// the resync) all find the tenant unregistered: one registers it again, and
// the others leave it be. Each used to find that fresh registration
// "already_registered", end it and make another (~7 unregisters per
// restart), and a sync between the two failed ("rename ltx file: no such
// file or directory").
func TestProxy_LitestreamRestartedUnderConcurrentSyncs(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 20)
	var unregisters atomic.Int64
	cfg.LitestreamSocket = spySocket(t, g.ls.SocketPath, func(endpoint, _ string) {
		if endpoint == "/unregister" {
			unregisters.Add(1)
		}
	})
	p := sqliteproxytest.New(t, cfg)
	insertSynced(t, p, "acme", "first")
	want := []string{"first"}
	for round := range 3 {
		g.ls.Restart()
		errs := make(chan error, 8)
		for w := range 8 {
			name := fmt.Sprintf("r%d-w%d", round, w)
			want = append(want, name)
			go func() {
				ctx, cancel := context.WithTimeout(sqliteproxytest.Context(t, "acme"), 30*time.Second)
				defer cancel()
				if _, err := p.ExecContext(ctx, `INSERT INTO events (name) VALUES (?)`, name); err != nil {
					errs <- err
					return
				}
				errs <- p.SyncTenant(ctx, "acme")
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
	}
	if n := unregisters.Load(); n != 0 {
		t.Errorf("%d registrations of this process's own ended and made again", n)
	}
	got := g.replicaNames(t, "acme")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the replica: %v, want %v", got, want)
	}
}

// spySocket is a control socket in front of Litestream's at real: it passes
// every request on and tells see its endpoint and the tenant file it names.
func spySocket(t *testing.T, real string, see func(endpoint, file string)) string {
	sock := filepath.Join(t.TempDir(), "spy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", real)
	}}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body struct {
			Path string `json:"path"`
		}
		json.Unmarshal(b, &body)
		see(r.URL.Path, body.Path)
		req, err := http.NewRequestWithContext(r.Context(), r.Method, "http://litestream"+r.URL.RequestURI(), bytes.NewReader(b))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		maps.Copy(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// Close reports the tenants whose final sync failed (Litestream down):
// their last commits are on this machine only. Opened again with
// replication, such a tenant reaches the replica after all.
func TestProxy_CloseReportsUnsynced(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	p := writeWhileLitestreamDies(t, g, cfg)
	err := p.Close()
	if err == nil || !strings.Contains(err.Error(), "1 tenants not synced to the replica (acme)") {
		t.Fatalf("Close with Litestream dead: %v", err)
	}
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg) // the same directory
	if got := names(t, q, "acme"); !slices.Equal(got, []string{"before", "while-dead"}) {
		t.Fatalf("acme reopened: %v", got)
	}
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"before", "while-dead"}) {
		t.Errorf("the replica after reopening: %v", got)
	}
}

// A tenant closed while Litestream was down is behind its replica; Close,
// with Litestream back, syncs it once more instead of leaving it to a
// resync that will not come.
func TestProxy_CloseSyncsWhatIsBehind(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	cfg.IdleTimeout = 50 * time.Millisecond
	p := writeWhileLitestreamDies(t, g, cfg)
	sqliteproxytest.WaitFor(t, 30*time.Second, "acme to be closed as idle", func() bool { return p.Stats().OpenConnections == 0 })
	g.ls.Restart()
	if err := p.Close(); err != nil {
		t.Fatalf("Close with Litestream back: %v", err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"before", "while-dead"}) {
		t.Errorf("the replica after Close: %v", got)
	}
}

// writeWhileLitestreamDies opens a proxy (closed by the caller) that
// writes acme's "before" and syncs it, then kills Litestream and writes
// "while-dead".
func writeWhileLitestreamDies(t *testing.T, g *rig, cfg sqliteproxy.Config) *sqliteproxy.Proxy {
	t.Helper()
	p, err := sqliteproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	insertSynced(t, p, "acme", "before")
	g.ls.Kill()
	insert(t, p, "acme", "while-dead")
	return p
}

// replicaNames restores tenant id's replica (latest) into a directory of
// its own and returns its event names; nil if the restore fails.
func (g *rig) replicaNames(t *testing.T, id string) []string {
	t.Helper()
	dir := t.TempDir()
	if err := g.ls.Restore(context.Background(), mustJoin(t, g.replica, id), filepath.Join(dir, id+".db")); err != nil {
		return nil
	}
	return names(t, sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir}), id)
}

func mustJoin(t *testing.T, base, id string) string {
	t.Helper()
	u, err := harness.JoinReplicaURL(base, id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// countRows counts the events of a restored file, opened read-only.
func countRows(t *testing.T, path string) int {
	t.Helper()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: filepath.Dir(path)})
	var n int
	if err := p.QueryRowContext(sqliteproxytest.Context(t, strings.TrimSuffix(filepath.Base(path), ".db")), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// ReplicaTenants lists the tenants in a replica; ReplicaPositions compares
// a node's copy with its replica.
func TestProxy_ReplicaTenantsAndPositions(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			g := newRig(t, kind)
			cfg := g.config(t, 10)
			a := sqliteproxytest.New(t, cfg)
			ctx := context.Background()
			for _, id := range []string{"globex", "acme", "acme-corp"} {
				insert(t, a, id, "x")
				if err := a.SyncTenant(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			ids, err := sqliteproxy.ReplicaTenants(ctx, g.replica)
			if err != nil || !slices.Equal(ids, []string{"acme", "acme-corp", "globex"}) {
				t.Fatalf("ReplicaTenants: %v, %v", ids, err)
			}
			local, remote, err := sqliteproxy.ReplicaPositions(ctx, g.replica, cfg.Dir, "acme")
			if err != nil || local == 0 || local != remote {
				t.Fatalf("ReplicaPositions after SyncTenant: local %d, replica %d, %v", local, remote, err)
			}
			if _, _, err := sqliteproxy.ReplicaPositions(ctx, g.replica, cfg.Dir, "../x"); err == nil {
				t.Error("ReplicaPositions took an invalid tenant ID")
			}

			// A commit Litestream never turned into an LTX file (it is not
			// running: the service stopped, and a program writes the file
			// directly, holding it open so that its WAL stays) is not in
			// sync: it counts as one more local transaction.
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			direct, err := sql.Open("sqlite3", filepath.Join(cfg.Dir, "acme.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close()
			direct.SetMaxOpenConns(1)
			if _, err := direct.Exec(`INSERT INTO events (name) VALUES ('unstreamed')`); err != nil {
				t.Fatal(err)
			}
			pending, remote2, err := sqliteproxy.ReplicaPositions(ctx, g.replica, cfg.Dir, "acme")
			if err != nil || pending != local+1 || remote2 != remote {
				t.Errorf("ReplicaPositions with a commit not streamed: local %d, replica %d, %v; want %d, %d", pending, remote2, err, local+1, remote)
			}
		})
	}
}

// A tenant restored from its replica as at a time by a proxy that does not
// stream (the CLI, service stopped), into a directory that never streamed
// it, stays restored when a streaming proxy opens it: it becomes the head,
// instead of being taken for a stale copy and replaced by the latest.
func TestProxy_RestoreFromReplicaWithoutStreaming(t *testing.T) {
	g := newRig(t, "file")
	ctx := context.Background()
	a := sqliteproxytest.New(t, g.config(t, 10))
	insert(t, a, "acme", "before")
	if err := a.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	sqliteproxytest.WaitFor(t, 5*time.Second, "the clock to pass the time", func() bool { return time.Since(at) > 10*time.Millisecond })
	insert(t, a, "acme", "after")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cli := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir}) // no replication
	if err := cli.RestoreTenantFromReplica(ctx, "acme", g.replica, at, g.ls.Bin()); err != nil {
		t.Fatal(err)
	}
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := g.config(t, 10)
	cfg.Dir = dir
	svc := sqliteproxytest.New(t, cfg)
	if got := names(t, svc, "acme"); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("the streaming proxy sees %v, want the restored [before]", got)
	}
	if err := svc.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	other := sqliteproxytest.New(t, g.config(t, 10))
	if got := names(t, other, "acme"); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("another node sees %v, want the restored state as the head", got)
	}
}

// beforeAndAfter writes two rows to tenant id, syncs, notes the time, and
// once the clock has passed it writes a third and syncs again: a replica
// with a point in time between them.
func beforeAndAfter(t *testing.T, p *sqliteproxy.Proxy, id string) (at time.Time) {
	t.Helper()
	insert(t, p, id, "before-1")
	insertSynced(t, p, id, "before-2")
	at = time.Now()
	sqliteproxytest.WaitFor(t, 5*time.Second, "the clock to pass the time", func() bool { return time.Since(at) > 10*time.Millisecond })
	insertSynced(t, p, id, "after-1")
	return at
}

// Replicated tenant connections leave checkpoints to Litestream.
func TestProxy_NoAutoCheckpoint(t *testing.T) {
	g := newRig(t, "file")
	p := sqliteproxytest.New(t, g.config(t, 10))
	var n int
	if err := p.QueryRowContext(sqliteproxytest.Context(t, "acme"), `PRAGMA wal_autocheckpoint`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("wal_autocheckpoint = %d, %v; want 0", n, err)
	}
	if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `PRAGMA wal_autocheckpoint = 1000`); err == nil {
		t.Fatal("a tenant connection turned automatic checkpoints back on")
	}
}
