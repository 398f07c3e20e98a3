//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqliteproxy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"
)

// gateFleet makes tenant acme in dir with a row "before", backs it up to
// the returned file, then adds a row "after" and closes it: a restore of
// the backup must leave "before" alone.
func gateFleet(t *testing.T, dir string) string {
	t.Helper()
	return gateFleetOf(t, Config{Dir: dir, Migrations: []string{eventsTable}})
}

// gateFleetOf is gateFleet with the proxy configuration cfg (its Dir, and
// migrations that make the events table).
func gateFleetOf(t *testing.T, cfg Config) string {
	t.Helper()
	p := newTestProxy(t, cfg)
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	bk := filepath.Join(t.TempDir(), "backup.db")
	if err := p.BackupTenant(context.Background(), "acme", bk); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('after')`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return bk
}

// tenantRows is what a fresh proxy on dir reads of acme.
func tenantRows(t *testing.T, dir string) []string {
	t.Helper()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	defer p.Close()
	return directRows(t, p, "acme", `SELECT tenant FROM events ORDER BY id`)
}

// writeInWindow returns a hook for the window of a restore or delete (the
// test hooks restoreBeforeRename, deleteAfterRename) that starts a write of
// a row "svc" to acme by svc, a first access, and returns once the write
// waits at the gate (or has ended, without the gate); and the channel of
// that write's error.
func writeInWindow(t *testing.T, svc *Proxy) (func() error, <-chan error) {
	return inWindow(t, func() error {
		_, err := svc.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('svc')`)
		return err
	})
}

// inWindow is writeInWindow for any op that opens acme.
func inWindow(t *testing.T, op func() error) (func() error, <-chan error) {
	var waited atomic.Bool
	gateWaits = func(replace bool) {
		if !replace {
			waited.Store(true)
		}
	}
	t.Cleanup(func() { gateWaits = nil })
	opErr := make(chan error, 1)
	return func() error {
		go func() { opErr <- op() }()
		waitFor(t, 10*time.Second, "the other proxy's access to wait at the gate (or to end)", func() bool { return waited.Load() || len(opErr) > 0 })
		return nil
	}, opErr
}

// A restore by one proxy on a directory (the CLI) and a first access to
// the tenant by another (a service) at once: the access waits for the
// restore's rename and then writes the restored file. It opened the old
// file in the window between the restore's check that nobody had it open
// and its rename, acknowledged the write into it, and the row was lost
// (its -wal and -shm, named after the path, went with the new file).
func TestGate_RestoreWhileAnotherProxyOpens(t *testing.T) {
	dir := t.TempDir()
	bk := gateFleet(t, dir)
	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	cli := newTestProxy(t, Config{Dir: dir})
	var svcErr <-chan error
	restoreBeforeRename, svcErr = writeInWindow(t, svc)
	defer func() { restoreBeforeRename = nil }()
	if err := cli.RestoreTenant(context.Background(), "acme", bk); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, svcErr, "the service's write"); err != nil {
		t.Fatalf("the service's write: %v", err)
	}
	svc.Close()
	cli.Close()
	if got, want := tenantRows(t, dir), []string{"before", "svc"}; !slices.Equal(got, want) {
		t.Fatalf("acme after the restore and the service's write: %q, want %q", got, want)
	}
}

// A delete by one proxy and a first access by another at once: the access
// waits until the old file and the side files named after it are gone,
// then makes the tenant anew. It made the new file in between, and the
// delete's removal of the side files named after the path took its -wal
// (and so its acknowledged row) with it.
func TestGate_DeleteWhileAnotherProxyOpens(t *testing.T) {
	dir := t.TempDir()
	gateFleet(t, dir)
	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	cli := newTestProxy(t, Config{Dir: dir})
	var svcErr <-chan error
	deleteAfterRename, svcErr = writeInWindow(t, svc)
	defer func() { deleteAfterRename = nil }()
	if err := cli.DeleteTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, svcErr, "the service's write"); err != nil {
		t.Fatalf("the service's write: %v", err)
	}
	svc.Close()
	cli.Close()
	if got, want := tenantRows(t, dir), []string{"svc"}; !slices.Equal(got, want) {
		t.Fatalf("acme after the delete and the service's write: %q, want %q", got, want)
	}
}

// A Rollback by another proxy in a restore's window: it opens the tenant
// on a connection of its own (not a pool's), which writes; it went
// through no gate, opened the old file, and the restore was undone (the
// old rows back after the next open replayed its -wal).
func TestGate_RollbackWhileRestoring(t *testing.T) {
	dir := t.TempDir()
	migs := fstest.MapFS{
		"0001_events.sql":     {Data: []byte(eventsTable + ";")},
		"0002_extra.up.sql":   {Data: []byte(`CREATE TABLE extra (x INTEGER);`)},
		"0002_extra.down.sql": {Data: []byte(`INSERT INTO events (tenant) VALUES ('rolled'); DROP TABLE extra;`)},
	}
	bk := gateFleetOf(t, Config{Dir: dir, MigrationsFS: migs})
	svc := newTestProxy(t, Config{Dir: dir, MigrationsFS: migs})
	cli := newTestProxy(t, Config{Dir: dir, MigrationsFS: migs})
	var rbErr <-chan error
	restoreBeforeRename, rbErr = inWindow(t, func() error {
		_, err := svc.Rollback(context.Background(), RollbackOptions{To: 1, Tenants: []string{"acme"}})
		return err
	})
	defer func() { restoreBeforeRename = nil }()
	if err := cli.RestoreTenant(context.Background(), "acme", bk); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, rbErr, "the rollback"); err != nil {
		t.Fatalf("the rollback: %v", err)
	}
	svc.Close()
	cli.Close()
	if got, want := tenantRows(t, dir), []string{"before", "rolled"}; !slices.Equal(got, want) {
		t.Fatalf("acme after the restore and the rollback: %q, want %q", got, want)
	}
}

// Close of the restoring proxy in the restore's window (Close waits for the
// restore, up to BusyTimeout): the gate stays held until the rename.
// Closing the presence file's descriptor dropped it, and a proxy opened
// next opened the old file.
func TestGate_CloseDuringRestoreKeepsTheGate(t *testing.T) {
	dir := t.TempDir()
	bk := gateFleet(t, dir)
	cli := newTestProxy(t, Config{Dir: dir})
	var svc *Proxy
	write, svcErr := inWindow(t, func() error {
		_, err := svc.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('svc')`)
		return err
	})
	var closed <-chan error
	restoreBeforeRename = func() error {
		closed = closeAsync(t, cli)
		waitFor(t, 10*time.Second, "Close to wait for the restore", func() bool { return cli.c.r.budget.waiters.Load() > 0 })
		svc = newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
		return write()
	}
	defer func() { restoreBeforeRename = nil }()
	if err := cli.RestoreTenant(context.Background(), "acme", bk); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, closed, "Close, once the restore ended"); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, svcErr, "the new proxy's write"); err != nil {
		t.Fatalf("the new proxy's write: %v", err)
	}
	svc.Close()
	if got, want := tenantRows(t, dir), []string{"before", "svc"}; !slices.Equal(got, want) {
		t.Fatalf("acme after the restore and the write: %q, want %q", got, want)
	}
}

// A first access that waits at the gate ends with its context: it waited
// BusyTimeout whatever the statement's deadline.
func TestGate_WaitEndsWithTheContext(t *testing.T) {
	dir := t.TempDir()
	bk := gateFleet(t, dir)
	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, BusyTimeout: 2 * time.Second})
	cli := newTestProxy(t, Config{Dir: dir})
	var err error
	restoreBeforeRename = func() error {
		ctx, cancel := context.WithTimeout(tctx("acme"), 50*time.Millisecond)
		defer cancel()
		_, err = svc.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('svc')`)
		return nil
	}
	defer func() { restoreBeforeRename = nil }()
	if rerr := cli.RestoreTenant(context.Background(), "acme", bk); rerr != nil {
		t.Fatal(rerr)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a write with a 50 ms deadline that met the gate: %v, want context.DeadlineExceeded", err)
	}
}

const gateChildEnv = "SQLITEPROXY_GATE_CHILD_DIR"

// The same with the service in another process, whose opens the gate holds
// off with POSIX locks rather than this process's bookkeeping.
func TestGate_RestoreWhileAnotherProcessOpens(t *testing.T) {
	dir := t.TempDir()
	bk := gateFleet(t, dir)
	sig := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestGate_Child$", "-test.v")
	cmd.Env = append(os.Environ(), gateChildEnv+"="+dir, gateChildEnv+"_SIG="+sig)
	out := make(chan []byte, 1)
	go func() {
		b, _ := cmd.CombinedOutput()
		out <- b
	}()
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(sig, name))
		return err == nil
	}
	waitFor(t, 30*time.Second, "the child's proxy to be open", func() bool { return exists("ready") })
	cli := newTestProxy(t, Config{Dir: dir})
	restoreBeforeRename = func() error {
		if err := os.WriteFile(filepath.Join(sig, "go"), nil, 0o600); err != nil {
			return err
		}
		waitFor(t, 10*time.Second, "the child's write to wait at the gate (or to end)", func() bool { return exists("waiting") || exists("done") })
		return nil
	}
	defer func() { restoreBeforeRename = nil }()
	err := cli.RestoreTenant(context.Background(), "acme", bk)
	restoreBeforeRename = nil
	if err != nil {
		t.Fatal(err)
	}
	b := receive(t, out, "the child")
	if !exists("done") {
		t.Fatalf("the child did not write:\n%s", b)
	}
	res, _ := os.ReadFile(filepath.Join(sig, "done"))
	if string(res) != "ok" {
		t.Fatalf("the child's write: %s\n%s", res, b)
	}
	cli.Close()
	if got, want := tenantRows(t, dir), []string{"before", "svc"}; !slices.Equal(got, want) {
		t.Fatalf("acme after the restore and the child's acknowledged write: %q, want %q\n%s", got, want, b)
	}
}

// TestGate_Child is TestGate_RestoreWhileAnotherProcessOpens's service: it
// opens a proxy on the directory, and on the parent's signal writes a row
// to acme (a first access), saying when it waits at the gate.
func TestGate_Child(t *testing.T) {
	dir, sig := os.Getenv(gateChildEnv), os.Getenv(gateChildEnv+"_SIG")
	if dir == "" {
		t.Skip("the child of TestGate_RestoreWhileAnotherProcessOpens")
	}
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	gateWaits = func(replace bool) { os.WriteFile(filepath.Join(sig, "waiting"), nil, 0o600) }
	if err := os.WriteFile(filepath.Join(sig, "ready"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the parent's signal", func() bool {
		_, err := os.Stat(filepath.Join(sig, "go"))
		return err == nil
	})
	res := "ok"
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('svc')`); err != nil {
		res = err.Error()
	}
	if err := p.Close(); err != nil && res == "ok" {
		res = err.Error()
	}
	os.WriteFile(filepath.Join(sig, "done"), []byte(res), 0o600)
}
