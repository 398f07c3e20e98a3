//go:build linux

package replication_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// The service commits "row1" and syncs it, then commits "row2" while
// Litestream is stopped, and the machine's processes die (service and
// Litestream, SIGKILL; the disk survives). The next process's SyncTenant is
// the README's barrier ("returns once everything the tenant committed before
// the call is in its replica"): it returned nil (the tenant "was synced when
// it was closed"), and the replica lacked row2 (walk24).
func TestProxy_SyncTenantAfterCrash(t *testing.T) {
	if os.Getenv("SYNC_AFTER_CRASH_CHILD") != "" {
		syncAfterCrashChild(t)
		return
	}
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxy_SyncTenantAfterCrash$")
	cmd.Env = append(childEnv(cfg), "SYNC_AFTER_CRASH_CHILD=1", "W_PID="+strconv.Itoa(g.ls.PID()))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	g.ls.Kill() // it was stopped (SIGSTOP) by the child; the crash takes it too
	g.ls.Restart()
	q := sqliteproxytest.New(t, cfg) // the next process on the same directory
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatalf("SyncTenant: %v", err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"row1", "row2"}) {
		t.Fatalf("SyncTenant returned nil, but the replica holds %v; want [row1 row2]", got)
	}
}

// childEnv is the environment of a child process of the test (a service
// that dies) that serves cfg's directory with its replica and Litestream
// (childProxy).
func childEnv(cfg sqliteproxy.Config) []string {
	return append(os.Environ(), "W_DIR="+cfg.Dir, "W_URL="+cfg.ReplicaURL, "W_SOCK="+cfg.LitestreamSocket, "W_LS="+cfg.LitestreamPath)
}

// childProxy is the proxy of a child process started with childEnv.
func childProxy(t *testing.T) *sqliteproxy.Proxy {
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: os.Getenv("W_DIR"), Migrations: migrations,
		ReplicaURL: os.Getenv("W_URL"), LitestreamSocket: os.Getenv("W_SOCK"), LitestreamPath: os.Getenv("W_LS")})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func syncAfterCrashChild(t *testing.T) {
	p := childProxy(t)
	insertSynced(t, p, "acme", "row1")
	pid, _ := strconv.Atoi(os.Getenv("W_PID"))
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	insert(t, p, "acme", "row2") // acknowledged locally
	os.Exit(0)                   // crash: no Close
}

// A directory served without replication, then with it (the README's "turning
// replication on"): SyncTenant of a tenant not opened yet in this process
// returned nil, and the replica did not hold it at all (walk24).
func TestProxy_SyncTenantOfNeverStreamedFile(t *testing.T) {
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	plain := sqliteproxytest.New(t, sqliteproxy.Config{Dir: cfg.Dir, Migrations: migrations})
	insert(t, plain, "acme", "before-replication")
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	q := sqliteproxytest.New(t, cfg)
	if err := q.SyncTenant(context.Background(), "acme"); err != nil {
		t.Fatalf("SyncTenant: %v", err)
	}
	if got := g.replicaNames(t, "acme"); !slices.Equal(got, []string{"before-replication"}) {
		t.Fatalf("SyncTenant returned nil, but the replica holds %v; want [before-replication]", got)
	}
}
