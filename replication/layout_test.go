//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// Replication in the bucketed layout: Litestream streams the files in
// their buckets (its files beside them), another node restores every
// tenant into its own buckets, ReplicaPositions finds a bucketed tenant,
// and a directory converted with Relayout (Litestream's files moving with
// their tenants) goes on streaming where it was.
func TestProxy_BucketedLayout(t *testing.T) {
	g := newRig(t, "file")
	ctx := context.Background()
	cfg := g.config(t, 4)
	cfg.Layout = sqliteproxy.LayoutBuckets
	a := sqliteproxytest.New(t, cfg)
	want := map[string][]string{}
	for i := range 8 {
		id := fmt.Sprintf("t%02d", i)
		insert(t, a, id, id+"-a")
		if err := a.SyncTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
		want[id] = []string{id + "-a"}
		path, _ := a.TenantPath(id)
		if _, err := os.Stat(filepath.Join(filepath.Dir(path), "."+id+".db-litestream")); err != nil {
			t.Errorf("%s: Litestream's files are not beside it: %v", id, err)
		}
	}
	local, remote, err := sqliteproxy.ReplicaPositions(ctx, g.replica, cfg.Dir, "t03")
	if err != nil || local == 0 || local != remote {
		t.Errorf("ReplicaPositions in buckets: local %d, replica %d, %v", local, remote, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// Another node, bucketed too, restores every tenant on first access.
	bcfg := g.config(t, 4)
	bcfg.Layout = sqliteproxy.LayoutBuckets
	b := sqliteproxytest.New(t, bcfg)
	for id, rows := range want {
		if got := names(t, b, id); !slices.Equal(got, rows) {
			t.Errorf("%s on the other node: %v, want %v", id, got, rows)
		}
		if path, _ := b.TenantPath(id); filepath.Dir(filepath.Dir(path)) != bcfg.Dir {
			t.Errorf("%s restored to %s", id, path)
		}
	}
	if ids, err := b.Tenants(ctx); err != nil || len(ids) != len(want) {
		t.Errorf("Tenants on the other node: %v, %v", ids, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// The first node's directory, converted to flat, streams on.
	if _, err := sqliteproxy.Relayout(ctx, cfg.Dir, sqliteproxy.LayoutFlat); err != nil {
		t.Fatal(err)
	}
	cfg.Layout = sqliteproxy.LayoutFlat
	a = sqliteproxytest.New(t, cfg)
	for id := range want {
		insert(t, a, id, id+"-b")
		if err := a.SyncTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
		want[id] = append(want[id], id+"-b")
		if got := names(t, a, id); !slices.Equal(got, want[id]) {
			t.Errorf("%s after relayout: %v, want %v", id, got, want[id])
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	c := sqliteproxytest.New(t, g.config(t, 4)) // flat, empty: restores the latest
	for id, rows := range want {
		if got := names(t, c, id); !slices.Equal(got, rows) {
			t.Errorf("%s restored after relayout: %v, want %v", id, got, rows)
		}
	}
}
