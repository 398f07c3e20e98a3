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

// unstreamedBesideOlderReplica makes the case of a data directory served
// without replication (make run, the image without REPLICA_URL) whose
// tenants are then streamed to a replica URL that already holds another
// copy of the same tenant ID (a staging node, an earlier run): it returns
// the directory, where acme holds two acknowledged rows the replica never
// saw, and the replica holds acme with "old-replica-row" only.
func unstreamedBesideOlderReplica(t *testing.T, g *rig, staging *sqliteproxy.Proxy) string {
	t.Helper()
	ctx := context.Background()
	insert(t, staging, "acme", "old-replica-row")
	if err := staging.SyncTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := staging.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	insert(t, plain, "acme", "acknowledged-1")
	insert(t, plain, "acme", "acknowledged-2")
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

var (
	acknowledged = []string{"acknowledged-1", "acknowledged-2"}
	oldReplica   = []string{"old-replica-row"}
)

// plainNames reads acme in dir with a proxy without replication: what the
// file here holds, untouched by the replica.
func plainNames(t *testing.T, dir string) []string {
	t.Helper()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migrations})
	defer p.Close()
	return names(t, p, "acme")
}

// A tenant's file that was never streamed and a replica holding another copy
// of it are two histories: neither replaces the other (the replica's older
// copy replaced the file here, acknowledged rows and all), the open is
// refused with ErrReplicaConflict, and each of the two ways out the error
// names keeps the copy it says.
func TestProxy_UnstreamedCopyBesideAnotherReplica(t *testing.T) {
	g := newRig(t, "file")
	dir := unstreamedBesideOlderReplica(t, g, sqliteproxytest.New(t, g.config(t, 10)))
	cfg := g.config(t, 10)
	cfg.Dir = dir
	p := sqliteproxytest.New(t, cfg)
	_, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('refused')`)
	if !errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("first access: %v, want ErrReplicaConflict", err)
	}
	t.Logf("refused: %v", err)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := plainNames(t, dir); !slices.Equal(got, acknowledged) {
		t.Fatalf("the file here after the refusal: %q, want %q", got, acknowledged)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, oldReplica) {
		t.Fatalf("the replica after the refusal: %q, want %q", got, oldReplica)
	}

	t.Run("keep the file here", func(t *testing.T) {
		kept := t.TempDir()
		copyTree(t, dir, kept)
		if err := os.WriteFile(filepath.Join(kept, ".acme.db-restored"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := g.config(t, 10)
		cfg.Dir = kept
		p := sqliteproxytest.New(t, cfg)
		if got := names(t, p, "acme"); !slices.Equal(got, acknowledged) {
			t.Fatalf("served %q, want %q", got, acknowledged)
		}
		if err := p.SyncTenant(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if got := g.replicaNames(t, "acme"); !slices.Equal(got, acknowledged) {
			t.Fatalf("the replica's head: %q, want %q", got, acknowledged)
		}
	})

	t.Run("take the replica's", func(t *testing.T) {
		took := t.TempDir()
		copyTree(t, dir, took)
		for _, f := range []string{"acme.db", "acme.db-wal"} {
			if err := os.Remove(filepath.Join(took, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		cfg := g.config(t, 10)
		cfg.Dir = took
		p := sqliteproxytest.New(t, cfg)
		// The replica's head: acknowledged if the subtest above ran first.
		want := g.replicaNames(t, "acme")
		if got := names(t, p, "acme"); !slices.Equal(got, want) {
			t.Fatalf("served %q, want the replica's %q", got, want)
		}
	})
}

// The same with Ownership: a never-streamed file beside a replica generation
// is refused, not replaced.
func TestOwnership_UnstreamedCopyBesideAnotherReplica(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	staging := g.ownerNode(t, srv, "staging", 10)
	dir := unstreamedBesideOlderReplica(t, g, staging.p)
	staging.c.Close()
	n := g.ownerNode(t, srv, "prod", 10, func(c *sqliteproxy.Config) { c.Dir = dir })
	_, err := n.p.ExecContext(sqliteproxytest.Context(t, "acme"), `INSERT INTO events (name) VALUES ('refused')`)
	if !errors.Is(err, sqliteproxy.ErrReplicaConflict) {
		t.Fatalf("first access: %v, want ErrReplicaConflict", err)
	}
	n.close()
	if got := plainNames(t, dir); !slices.Equal(got, acknowledged) {
		t.Fatalf("the file here after the refusal: %q, want %q", got, acknowledged)
	}
}

// A copy the proxy restored from the replica and could not register
// (Litestream down) is the replica's, not another history: when Litestream
// is back, it is served (restored again), not refused.
func TestProxy_RestoredFromReplicaNotRegisteredIsNoConflict(t *testing.T) {
	restorers(t, func(t *testing.T, in bool) {
		g := newRig(t, "file")
		g.restorer = in
		src := sqliteproxytest.New(t, g.config(t, 10))
		insertSynced(t, src, "acme", "in-replica")
		if err := src.Close(); err != nil {
			t.Fatal(err)
		}
		cfg := g.config(t, 10)
		p := sqliteproxytest.New(t, cfg)
		g.ls.Kill()
		if _, err := p.ExecContext(sqliteproxytest.Context(t, "acme"), `SELECT 1`); err == nil {
			t.Fatal("first access with Litestream down succeeded")
		}
		if _, err := os.Stat(filepath.Join(cfg.Dir, "acme.db")); err != nil {
			t.Fatalf("restored before the registration failed: %v", err)
		}
		c, err := sqliteproxy.ReplicaCopyOf(context.Background(), g.replica, cfg.Dir, "acme")
		if err != nil || !c.FromReplica || c.FromReplicaTXID == 0 || c.FromReplicaTXID != c.Replica || c.NeverStreamed || c.Local != 0 {
			t.Fatalf("ReplicaCopyOf: %+v, %v; want restored from the replica at its position", c, err)
		}
		g.ls.Restart()
		if got := names(t, p, "acme"); !slices.Equal(got, []string{"in-replica"}) {
			t.Fatalf("served %q, want [in-replica]", got)
		}
	})
}

// copyTree copies the regular files and folders of src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
