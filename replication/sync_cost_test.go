//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// SyncTenant over every tenant after a clean Close opens none of them: each
// was synced at its close (syncedAtClose asks the replica, no more).
func TestProxy_SyncAfterCleanCloseOpensNothing(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 4)
	p := sqliteproxytest.New(t, cfg)
	for i := 0; i < 6; i++ {
		id := fmt.Sprintf("t%d", i)
		insert(t, p, id, "x")
		insert(t, p, id, "y")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q := sqliteproxytest.New(t, cfg)
	for i := 0; i < 6; i++ {
		if err := q.SyncTenant(context.Background(), fmt.Sprintf("t%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := g.registered(t); len(got) != 0 {
		t.Fatalf("SyncTenant after a clean Close opened %v", got)
	}
}
