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
	if isChild(t) {
		syncAfterCrashChild(t)
		return
	}
	g := newRig(t, "file")
	cfg := g.config(t, 10)
	cmd := childCmd(t, cfg, "W_PID="+strconv.Itoa(g.ls.PID()))
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

// childCmd is the command that runs test t again in a child process (a
// service that dies), which serves cfg's directory with its replica and
// Litestream (childProxy), with env besides; isChild is true there.
func childCmd(t *testing.T, cfg sqliteproxy.Config, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$")
	cmd.Env = append(append(os.Environ(), "CHILD_OF="+t.Name(), "W_DIR="+cfg.Dir, "W_URL="+cfg.ReplicaURL,
		"W_SOCK="+cfg.LitestreamSocket, "W_LS="+cfg.LitestreamPath), env...)
	return cmd
}

// isChild reports whether test t runs in the child process of childCmd.
func isChild(t *testing.T) bool { return os.Getenv("CHILD_OF") == t.Name() }

// childProxy is the proxy of a child process started with childCmd.
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
