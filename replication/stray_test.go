//go:build linux

package replication_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// A registration with Litestream that the proxy does not hold (a register
// whose answer never came back: the call timed out while Litestream went
// on with it) keeps the tenant's file open in Litestream, and a delete or
// a restore of the closed tenant was refused, "open in another process"
// (soak20 met it once, on a RestoreTenantAt). The proxy ends such a
// registration and goes on: here one made behind its back, for a delete
// and for a restore.
func TestProxy_StrayRegistrationEnded(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 1)
	cfg.ReadersPerTenant = -1 // one connection per tenant: a write to another evicts it
	p := sqliteproxytest.New(t, cfg)
	ctx := context.Background()
	client := g.ls.Client
	streamed := func(id string) bool { return slices.Contains(g.registered(t), id) }
	stray := func(id string) string {
		t.Helper()
		path := filepath.Join(cfg.Dir, id+".db")
		insert(t, p, id, "row")
		insert(t, p, "other", id) // evicts id, which unregisters it
		sqliteproxytest.WaitFor(t, 10*time.Second, id+" unregistered", func() bool { return !streamed(id) })
		u, err := harness.JoinReplicaURL(g.replica, id)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := client.Register(path, u); err != nil || st != "registered" {
			t.Fatalf("stray registration of %s: %q, %v", id, st, err)
		}
		// Litestream holds the file once it has seen a WAL to stream: write
		// beside it (as another process would) until the -wal survives the
		// writer's close.
		sqliteproxytest.WaitFor(t, 10*time.Second, "Litestream to hold "+id, func() bool {
			db, err := sql.Open("sqlite3", path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS stray_probe (x); INSERT INTO stray_probe VALUES (1)`); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			_, err = os.Lstat(path + "-wal")
			return err == nil
		})
		return path
	}

	path := stray("acme")
	if err := p.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatalf("delete beside a stray registration: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("acme's file after the delete: %v", err)
	}
	if streamed("acme") {
		t.Fatal("Litestream still streams the deleted acme")
	}

	backup := filepath.Join(t.TempDir(), "globex-backup.db")
	insert(t, p, "globex", "before")
	if err := p.BackupTenant(ctx, "globex", backup); err != nil {
		t.Fatal(err)
	}
	path = stray("globex")
	if err := p.RestoreTenant(ctx, "globex", backup); err != nil {
		t.Fatalf("restore beside a stray registration: %v", err)
	}
	if got := names(t, p, "globex"); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("globex after the restore: %v, want [before]", got)
	}
}
