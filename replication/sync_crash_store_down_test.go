//go:build linux

package replication_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// adv28 found: the process dies with acme open while the object store is down.
// Litestream had turned row2 into a local LTX file (its local position moved
// past the replica's) but never uploaded it. The next process's SyncTenant
// checks only Litestream's local position against the -wal (syncedAtClose),
// not against the replica: it says nil, and the replica lacks row2.
func TestProxy_SyncTenantAfterCrashWithStoreDown(t *testing.T) {
	if isChild(t) {
		crashStoreDownChild(t)
		return
	}
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	sig := t.TempDir()
	cmd := childCmd(t, cfg, "W_SIG="+sig)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(sig, "phase1"))
	g.s3.Stop()
	if err := os.WriteFile(filepath.Join(sig, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	g.ls.Kill() // the crash takes Litestream too
	g.s3.Restart()
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg) // the next process on the same directory
	err := q.SyncTenant(context.Background(), "acme")
	got := g.replicaNames(t, "acme")
	if err == nil && !slices.Equal(got, []string{"row1", "row2"}) {
		t.Fatalf("SyncTenant returned nil, but the replica holds %v; want [row1 row2]", got)
	}
	t.Logf("SyncTenant: %v; replica %v", err, got)
}

// waitFile waits for the file p, which the other process makes.
func waitFile(t *testing.T, p string) {
	t.Helper()
	sqliteproxytest.WaitFor(t, 60*time.Second, p, func() bool {
		_, err := os.Stat(p)
		return err == nil
	})
}

// ltxMax returns Litestream's local position of the database file db (its
// level-0 files beside it).
func ltxMax(db string) uint64 {
	ents, _ := os.ReadDir(filepath.Join(filepath.Dir(db), "."+filepath.Base(db)+"-litestream", "ltx", "0"))
	var m uint64
	for _, e := range ents {
		n, _ := ltxMaxTXID(e.Name())
		m = max(m, n)
	}
	return m
}

func crashStoreDownChild(t *testing.T) {
	p := childProxy(t)
	insertSynced(t, p, "acme", "row1")
	db := filepath.Join(os.Getenv("W_DIR"), "acme.db")
	before := ltxMax(db)
	sig := os.Getenv("W_SIG")
	os.WriteFile(filepath.Join(sig, "phase1"), nil, 0o600)
	waitFile(t, filepath.Join(sig, "go"))
	insert(t, p, "acme", "row2") // acknowledged locally
	sqliteproxytest.WaitFor(t, 30*time.Second, "a local LTX file past the replica's", func() bool { return ltxMax(db) > before })
	t.Logf("local position %d -> %d", before, ltxMax(db))
	os.Stdout.WriteString("local position moved\n")
	os.Exit(0) // crash: no Close
}
