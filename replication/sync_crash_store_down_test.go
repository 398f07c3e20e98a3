//go:build linux

package replication_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
	if os.Getenv("CRASH_STORE_DOWN_CHILD") != "" {
		crashStoreDownChild(t)
		return
	}
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	sig := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxy_SyncTenantAfterCrashWithStoreDown$")
	cmd.Env = append(childEnv(cfg), "CRASH_STORE_DOWN_CHILD=1", "W_SIG="+sig)
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

func waitFile(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ltxMax(t *testing.T, db string) uint64 {
	ents, _ := os.ReadDir(filepath.Join(filepath.Dir(db), "."+filepath.Base(db)+"-litestream", "ltx", "0"))
	var m uint64
	for _, e := range ents {
		base, _ := strings.CutSuffix(e.Name(), ".ltx")
		_, hi, _ := strings.Cut(base, "-")
		n, _ := strconv.ParseUint(hi, 16, 64)
		m = max(m, n)
	}
	return m
}

func crashStoreDownChild(t *testing.T) {
	p := childProxy(t)
	insertSynced(t, p, "acme", "row1")
	db := filepath.Join(os.Getenv("W_DIR"), "acme.db")
	before := ltxMax(t, db)
	sig := os.Getenv("W_SIG")
	os.WriteFile(filepath.Join(sig, "phase1"), nil, 0o600)
	waitFile(t, filepath.Join(sig, "go"))
	insert(t, p, "acme", "row2") // acknowledged locally
	deadline := time.Now().Add(30 * time.Second)
	for ltxMax(t, db) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("Litestream made no local LTX file past %d", before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("local position %d -> %d", before, ltxMax(t, db))
	os.Stdout.WriteString("local position moved\n")
	os.Exit(0) // crash: no Close
}
