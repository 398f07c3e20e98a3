package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestExplicitCreate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ExplicitCreate: true})
	if _, err := p.ExecContext(tctx("typo"), `CREATE TABLE t (a)`); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("unknown tenant with ExplicitCreate: %v, want ErrTenantNotFound", err)
	}
	if files := dbFiles(t, dir); len(files) != 0 {
		t.Errorf("files created: %v", files)
	}
}

func TestSymlinkTenantRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside.db")
	if err := os.WriteFile(outside, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "evil.db")); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir})
	if _, err := p.ExecContext(tctx("evil"), `CREATE TABLE t (a)`); err == nil {
		t.Fatal("a tenant file that is a symlink was opened")
	}
	if fi, _ := os.Stat(outside); fi.Size() != 0 {
		t.Error("the symlink's target was written")
	}
}

func TestFileModes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	p := newTestProxy(t, Config{Dir: dir})
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700 | os.ModeDir, "acme.db": 0o600, "acme.db-wal": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%q mode %v, want %v", name, fi.Mode(), want)
		}
	}
}

func TestFileModesIgnoreUmask(t *testing.T) {
	// Serial: the umask is the whole process's.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "data")
	p := newTestProxy(t, Config{Dir: dir})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, "acme.db": 0o600, "acme.db-wal": 0o600, "acme.db-shm": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%q: mode %v with umask 0, want %v", name, fi.Mode().Perm(), want)
		}
	}
}

func TestProxy_TenantsNeverListsHalfCreated(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A slow migration keeps creations in flight while Tenants is called.
	slow := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 200000) SELECT count(*) FROM c`
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{`CREATE TABLE t (a); INSERT INTO t ` + strings.Replace(slow, "SELECT count(*) FROM c", "SELECT x FROM c", 1)}})
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			if err := p.CreateTenant(context.Background(), fmt.Sprintf("t%d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	// Until every creation has returned, each tenant listed must be whole.
	waitFor(t, time.Minute, "the 10 CreateTenant calls to return", func() bool {
		ids, err := p.Tenants(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			db := direct(t, dir, id)
			var n int
			if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 200000 {
				t.Fatalf("Tenants listed %s before it was fully migrated: %d rows, %v", id, n, err)
			}
			db.Close()
		}
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	if ids, _ := p.Tenants(context.Background()); len(ids) != 10 {
		t.Fatalf("Tenants = %v", ids)
	}
}
