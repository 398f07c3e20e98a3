package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
)

// Unit tests of the replication plumbing that need no Litestream; the
// nested module replication/ tests it with a real Litestream process and a
// real S3-compatible server.

func TestReplication_TenantReplicaURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ base, want, err string }{
		{base: "file:///backups/tenants", want: "file:///backups/tenants/acme"},
		{base: "file:///backups/tenants/", want: "file:///backups/tenants/acme"},
		{base: "s3://bucket/prefix?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1",
			want: "s3://bucket/prefix/acme?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1"},
		{base: "s3://bucket?region=eu-west-1", want: "s3://bucket/acme?region=eu-west-1"},
		// Hosts that Litestream reads otherwise than the driver's client.
		{base: "s3://bucket", err: "region"},
		{base: "s3://replicas.127.0.0.1:9000/tenants", err: "bucket.host:port"},
		{base: "s3://bucket.s3.eu-west-1.amazonaws.com/t", err: "provider"},
		{base: "s3://bucket/t?endpoint=127.0.0.1%3A9000", err: "no scheme"},
		{base: "/backups/tenants", err: "no scheme"},
		{base: "ftp://host/x", err: "not one Litestream"},
		{base: "file://host/x", err: "absolute path"},
		// Opaque: every tenant would get the one URL.
		{base: "file:replica-data", err: "with //"},
		{base: "file:/abs/replica", want: "file:///abs/replica/acme"},
		{base: "s3:bucket/x", err: "with //"},
		{base: "s3:///x", err: "names no bucket"},
		// A path a URL escapes: Litestream writes to the escaped text, the
		// driver erases the path it names (DeleteTenant erased nothing).
		{base: "file:///srv/rep(x)", err: "escapes"},
		{base: "file:///srv/rep%28x%29", err: "escapes"},
		{base: "file:///srv/my replicas", err: "escapes"},
		{base: "file:///srv/réplicas", err: "escapes"},
		{base: "file:///srv/rep-x_1.0~/t", want: "file:///srv/rep-x_1.0~/t/acme"},
	} {
		got, err := tenantReplicaURL(tc.base, "acme")
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one with %q", tc.base, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.base, got, err, tc.want)
		}
	}
}

func TestReplication_Config(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{Dir: t.TempDir(), ReplicaURL: "file:///x"}); err == nil || !strings.Contains(err.Error(), "LitestreamSocket") {
		t.Errorf("ReplicaURL without a socket: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir(), ReplicaURL: "x/y", LitestreamSocket: "/s"}); err == nil || !strings.Contains(err.Error(), "ReplicaURL") {
		t.Errorf("ReplicaURL without a scheme: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir(), ReplicaURL: "file://" + filepath.Join(t.TempDir(), "rep(x)"), LitestreamSocket: "/s"}); err == nil || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("a file:// ReplicaURL whose path a URL escapes: %v", err)
	}
	if _, err := New(Config{Dir: t.TempDir(), ReplicaCompactor: compactorFunc(nil)}); err == nil || !strings.Contains(err.Error(), "ReplicaCompactor needs Config.ReplicaURL") {
		t.Errorf("ReplicaCompactor without ReplicaURL: %v", err)
	}
	// The socket without the URL: a deployment that lost its URL would
	// believe its tenants streamed.
	if _, err := Open("dir=" + t.TempDir() + "&litestream_socket=/run/litestream.sock"); err == nil || !strings.Contains(err.Error(), "LitestreamSocket needs Config.ReplicaURL") {
		t.Errorf("LitestreamSocket without ReplicaURL: %v", err)
	}
	// A binary for restores that never run: refused as the socket is (walk25:
	// accepted and ignored). The default's name stays accepted: p.Config()
	// gives it.
	if _, err := Open("dir=" + t.TempDir() + "&litestream_path=/nonexistent/litestream"); err == nil || !strings.Contains(err.Error(), "LitestreamPath (DSN litestream_path) \"/nonexistent/litestream\" needs Config.ReplicaURL") {
		t.Errorf("LitestreamPath without ReplicaURL: %v", err)
	}
	if p, err := New(Config{Dir: t.TempDir(), LitestreamPath: DefaultLitestreamPath}); err != nil {
		t.Errorf("the default LitestreamPath without ReplicaURL: %v", err)
	} else {
		p.Close()
	}
	// A file replica root overlapping Dir: deleting tenant "data"'s replica
	// (<root>/data = Dir) erased every tenant. Through a symlink too.
	parent := t.TempDir()
	data := filepath.Join(parent, "data")
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(parent, link); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{parent, data, filepath.Join(data, "replicas"), link, link + "/data/r"} {
		if _, err := New(Config{Dir: data, ReplicaURL: "file://" + root, LitestreamSocket: "/s"}); err == nil || !strings.Contains(err.Error(), "overlap") {
			t.Errorf("ReplicaURL file://%s with Dir %s: %v, want an overlap error", root, data, err)
		}
	}
	// The ops CLI's restore -replica and status -replica, with the data
	// directory given as the replica: they read its bucket folders as
	// replicas and said "not in the replica" (adv48).
	noRepl, err := New(Config{Dir: data})
	if err != nil {
		t.Fatal(err)
	}
	defer noRepl.Close()
	for _, root := range []string{data, parent} {
		if err := noRepl.RestoreTenantFromReplica(context.Background(), "acme", "file://"+root, time.Time{}, ""); err == nil || !strings.Contains(err.Error(), "overlap") {
			t.Errorf("RestoreTenantFromReplica from file://%s with Dir %s: %v, want an overlap error", root, data, err)
		}
		if _, err := ReplicaCopyOf(context.Background(), "file://"+root, data, "acme"); err == nil || !strings.Contains(err.Error(), "overlap") {
			t.Errorf("ReplicaCopyOf file://%s with Dir %s: %v, want an overlap error", root, data, err)
		}
	}
	if p, err := New(Config{Dir: data, ReplicaURL: "file://" + data + "-replicas", LitestreamSocket: "/s"}); err != nil && strings.Contains(err.Error(), "overlap") {
		t.Errorf("a replica beside Dir (%s-replicas): %v", data, err)
	} else if err == nil {
		p.Close()
	}
	cfg, err := ParseDSN("dir=d&replica_url=" + "s3%3A%2F%2Fb%2Fp%3Fendpoint%3Dhttp%253A%252F%252Fh" + "&litestream_socket=%2Frun%2Fls.sock&litestream_path=%2Fbin%2Flitestream")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ReplicaURL != "s3://b/p?endpoint=http%3A%2F%2Fh" || cfg.LitestreamSocket != "/run/ls.sock" || cfg.LitestreamPath != "/bin/litestream" {
		t.Errorf("ParseDSN: %+v", cfg)
	}
}

// Operations on replicas fail clearly when replication is off.
func TestReplication_OffByDefault(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, Config{})
	if err := p.SyncTenant(context.Background(), "acme"); err == nil || !strings.Contains(err.Error(), "replication is off") {
		t.Errorf("SyncTenant: %v", err)
	}
	if err := p.RestoreTenantAt(context.Background(), "acme", time.Now()); err == nil || !strings.Contains(err.Error(), "replication is off") {
		t.Errorf("RestoreTenantAt: %v", err)
	}
}

// SyncTenant of an ID that has no file here said nil, as for a tenant
// synced at its close: a typo'd ID passed for synced.
func TestReplication_SyncUnknownTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ReplicaURL: "file://" + t.TempDir(), LitestreamSocket: dir + "/no.sock"})
	if err := p.SyncTenant(context.Background(), "ghost"); !errors.Is(err, ErrTenantNotFound) {
		t.Errorf("SyncTenant of a tenant that does not exist: %v, want ErrTenantNotFound", err)
	}
}

// DeleteTenant of a tenant that is only in the replica takes the tenant's
// writer to erase it: a wait for it, with a context without deadline,
// ends at Close rather than when the holder is done.
func TestReplication_CloseEndsReplicaDeleteWait(t *testing.T) {
	t.Parallel()
	dir, replica := t.TempDir(), t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ReplicaURL: "file://" + replica, LitestreamSocket: dir + "/no.sock"})
	if err := os.MkdirAll(filepath.Join(replica, "ghost"), 0o700); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("ghost")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	if !tn.wsem.TryAcquire() { // as a restore of it in progress would
		t.Fatal("writer semaphore taken")
	}
	done := make(chan error, 1)
	go func() { done <- p.DeleteTenant(context.Background(), "ghost") }()
	waitFor(t, 10*time.Second, "the delete to wait for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, done, "DeleteTenant after Close"); !errors.Is(err, ErrClosed) {
		t.Errorf("DeleteTenant waiting at Close: %v, want ErrClosed", err)
	}
	tn.unlockWriter()
	if _, err := os.Stat(filepath.Join(replica, "ghost")); err != nil {
		t.Errorf("the replica after a delete that gave up: %v", err)
	}
}

// With the Litestream process unreachable, a tenant cannot be opened (its
// writes could not be streamed), and nothing is created.
func TestReplication_LitestreamDown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, ReplicaURL: "file://" + t.TempDir(), LitestreamSocket: dir + "/no.sock",
		LitestreamPath: "/nonexistent/litestream"})
	_, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`)
	if err == nil {
		t.Fatal("a tenant opened without its replication")
	}
	var e *Error
	if !errors.As(err, &e) || e.Tenant != "acme" {
		t.Errorf("error %v: not an *Error naming the tenant", err)
	}
	// CreateTenant too: it registers the tenant before it returns, so it
	// fails, not leaves a file that nothing streams.
	if err := p.CreateTenant(context.Background(), "beta"); err == nil {
		t.Error("a tenant created without its replication")
	}
	if got := dbFiles(t, dir); len(got) != 0 {
		t.Errorf("files left: %v", got)
	}
}

// A Litestream that accepts connections and never answers (stopped with
// SIGSTOP, hung) fails a first access without a deadline after
// ctlTimeout, rather than holding it forever.
func TestReplication_LitestreamHung(t *testing.T) {
	old := ctlTimeout
	ctlTimeout = 200 * time.Millisecond
	t.Cleanup(func() { ctlTimeout = old })
	dir := t.TempDir()
	sock := filepath.Join(dir, "ls.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	p := newTestProxy(t, Config{Dir: dir, ReplicaURL: "file://" + t.TempDir(), LitestreamSocket: sock,
		ReplicaRestorer: emptyReplica{}})
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("first access with a hung Litestream: %v, want a deadline error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("first access still waits for a hung Litestream after 30 s")
	}
}

// Two proxies with replication on one data directory (a rolling deploy
// that overlaps, a second New in one process) would stream each tenant with
// two Litestreams into one replica and corrupt it: the second is refused
// until the first is closed. Without replication a second proxy is fine.
func TestReplication_OneReplicatingProxyPerDir(t *testing.T) {
	t.Parallel()
	dir, replica := t.TempDir(), "file://"+t.TempDir()
	cfg := Config{Dir: dir, ReplicaURL: replica, LitestreamSocket: filepath.Join(dir, "no.sock"), ReplicaRestorer: emptyReplica{}}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := New(cfg); err == nil {
		second.Close()
		first.Close()
		t.Fatal("a second replicating proxy opened the same directory")
	} else if !errors.Is(err, errReplicating) {
		t.Errorf("second replicating proxy: %v, want errReplicating", err)
	}
	plain, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatalf("a proxy without replication beside it: %v", err)
	}
	plain.Close()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(cfg)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	defer again.Close()
	if ids, err := again.Tenants(context.Background()); err != nil || len(ids) != 0 {
		t.Errorf("tenants %v, %v; want none (the lock file is not one)", ids, err)
	}
}

// emptyReplica is a ReplicaRestorer of a replica that holds no tenant.
type emptyReplica struct{}

func (emptyReplica) RestoreReplica(context.Context, string, string, time.Time) error {
	return ErrTenantNotFound
}

// While Litestream streams a tenant it owns checkpoints and follows the
// WAL: tenant connections may not VACUUM, truncate or restart the WAL, or
// turn automatic checkpoints back on.
func TestReplication_Authorizer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		op         int
		arg1, arg2 string
		want       int
	}{
		{sqlite3.SQLITE_ATTACH, "", "", sqlite3.SQLITE_DENY}, // VACUUM
		{sqlite3.SQLITE_PRAGMA, "wal_checkpoint", "TRUNCATE", sqlite3.SQLITE_DENY},
		{sqlite3.SQLITE_PRAGMA, "wal_checkpoint", "restart", sqlite3.SQLITE_DENY},
		{sqlite3.SQLITE_PRAGMA, "wal_checkpoint", "", sqlite3.SQLITE_OK},
		{sqlite3.SQLITE_PRAGMA, "wal_checkpoint", "PASSIVE", sqlite3.SQLITE_OK},
		{sqlite3.SQLITE_PRAGMA, "wal_autocheckpoint", "1000", sqlite3.SQLITE_DENY},
		{sqlite3.SQLITE_PRAGMA, "wal_autocheckpoint", "", sqlite3.SQLITE_OK},
		{sqlite3.SQLITE_PRAGMA, "journal_mode", "DELETE", sqlite3.SQLITE_DENY},
		{sqlite3.SQLITE_READ, "t", "a", sqlite3.SQLITE_OK},
	} {
		if got := replicatedAuthorizer(tc.op, tc.arg1, tc.arg2, ""); got != tc.want {
			t.Errorf("op %d %s(%s): %d, want %d", tc.op, tc.arg1, tc.arg2, got, tc.want)
		}
	}
}

type compactorFunc func(ctx context.Context, url string) error

func (f compactorFunc) CompactReplica(ctx context.Context, url string) error { return f(ctx, url) }

// uncompacted counts the level-0 files of a replica above the highest
// TXID of the higher levels, whatever else lies there (files being
// written, other names).
func TestReplication_Uncompacted(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	rp := &replicator{base: "file://" + base}
	if n, err := rp.uncompacted(context.Background(), "acme"); n != 0 || err != nil {
		t.Fatalf("no replica: %d, %v", n, err)
	}
	touch := func(level int, name string) {
		dir := filepath.Join(base, "acme", "ltx", strconv.Itoa(level))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		touch(0, fmt.Sprintf("%016x-%016x.ltx", i, i))
	}
	touch(0, "0000000000000006-0000000000000006.ltx.tmp")
	if n, err := rp.uncompacted(context.Background(), "acme"); n != 5 || err != nil {
		t.Fatalf("5 level-0 files: %d, %v", n, err)
	}
	touch(1, "0000000000000001-0000000000000003.ltx")
	if n, err := rp.uncompacted(context.Background(), "acme"); n != 2 || err != nil {
		t.Fatalf("level 1 up to 3: %d, %v; want 2", n, err)
	}
	if pos, err := rp.replicaPos(context.Background(), "acme"); pos != 5 || err != nil {
		t.Fatalf("replicaPos: %d, %v; want 5", pos, err)
	}
}

// A restore in another process (the CLI's: a proxy without replication on
// the same directory) that replaces a tenant's file while the service
// reconciles it with its replica waits until reconcile is done: reconcile
// had read the old file's Litestream position, and took the restore's
// fresh marker for one outlived by a position and removed it (the
// restored copy was then "never streamed", refused, or replaced by the
// replica at the next open).
func TestReplication_RestoreWaitsForReconcile(t *testing.T) {
	dir := t.TempDir()
	p := streamedTenant(t, dir, "acme", 3)
	backup := backupOf(t, "b", 5)

	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, ReplicaURL: "file://" + t.TempDir(),
		LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"), ReplicaRestorer: emptyReplica{}})
	cli := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	waiting, restored := make(chan struct{}), make(chan error, 1)
	var once sync.Once
	gateWaits = func(replace bool) {
		if replace {
			once.Do(func() { close(waiting) })
		}
	}
	reconcileRead = func(id string) {
		reconcileRead = nil
		go func() {
			// Once reconcile is done the service opens the file (and fails
			// to register it): a restore meanwhile finds it in use.
			deadline := time.Now().Add(20 * time.Second)
			for {
				err := cli.RestoreTenant(context.Background(), "acme", backup)
				if err == nil || time.Now().After(deadline) {
					restored <- err
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		select {
		case <-waiting: // held off by the gate until reconcile is done
		case err := <-restored:
			restored <- err // done within reconcile's window
		case <-time.After(20 * time.Second):
		}
	}
	t.Cleanup(func() { gateWaits, reconcileRead = nil, nil })
	// The open ends at the registration (no Litestream here): reconcile ran.
	if _, err := svc.ExecContext(tctx("acme"), `SELECT 1`); err == nil {
		t.Fatal("opened without a Litestream to register with")
	}
	select {
	case err := <-restored:
		if err != nil {
			t.Fatalf("RestoreTenant: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RestoreTenant still running after 30 s")
	}
	restoreKept(t, p, 5)
}

// streamedTenant makes tenant id in dir (migrated with eventsTable) with
// Litestream's position pos beside it, as if streamed once, and returns
// its path.
func streamedTenant(t *testing.T, dir, id string, pos uint64) string {
	t.Helper()
	seed := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if err := seed.CreateTenant(tctx(id), id); err != nil {
		t.Fatal(err)
	}
	if err := seed.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, id+".db")
	ltx := filepath.Join(metaDir(p), "ltx", "0")
	if err := os.MkdirAll(ltx, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ltx, fmt.Sprintf("%016x-%016x.ltx", 1, pos)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// backupOf returns the path of a tenant file (migrated with eventsTable)
// holding n rows of tenant id.
func backupOf(t *testing.T, id string, n int) string {
	t.Helper()
	dir := t.TempDir()
	bp := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	for range n {
		if _, err := bp.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := bp.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, id+".db")
}

// restoreKept checks that the tenant file at p is a restore's (its marker
// names it) holding the backup's n rows.
func restoreKept(t *testing.T, p string, n int) {
	t.Helper()
	if ok, _, _, err := markerNames(restoredMarker(p), p); err != nil || !ok {
		t.Errorf("the restore's marker does not name the restored file (%v, %v): reconcile removed it", ok, err)
	}
	if got := fileCount(t, p, `SELECT count(*) FROM events`); got != n {
		t.Errorf("the tenant holds %d rows, want the backup's %d", got, n)
	}
}

// fakeReplica returns a file:// replica's folder in which tenant id's
// replica is at transaction pos (one level-0 file; nothing to restore).
func fakeReplica(t *testing.T, id string, pos uint64) string {
	t.Helper()
	replica := t.TempDir()
	l0 := filepath.Join(replica, id, "ltx", "0")
	if err := os.MkdirAll(l0, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l0, fmt.Sprintf("%016x-%016x.ltx", 1, pos)), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return replica
}

// A copy restored from the replica and not streamed, behind the replica,
// is replaced by it, unless it was written since: a proxy without
// replication on the directory that wrote it while the service downloaded
// the replica (its commit only in the -wal, which the fingerprint did not
// cover), staying open or not, lost its acknowledged row to the
// replacement (adv31). The open is refused instead, the row kept.
func TestReplication_OtherProxyWriteDuringDownloadKept(t *testing.T) {
	for _, stays := range []bool{true, false} {
		t.Run(fmt.Sprintf("stays=%v", stays), func(t *testing.T) {
			dir := t.TempDir()
			seed := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
			insertN(t, seed, "acme", 1)
			if err := seed.Close(); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "acme.db")
			if err := markFromReplica(p, p, "acme", 5); err != nil {
				t.Fatal(err)
			}
			h, opened := downloadHeld(t, dir, fakeReplica(t, "acme", 10))
			other := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
			_, err := other.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acked')`)
			if err == nil && !stays {
				err = other.Close()
			}
			close(h.release)
			if err != nil {
				t.Fatalf("the other proxy's insert: %v", err)
			}
			select {
			case err := <-opened:
				if err == nil {
					t.Error("the service opened the tenant")
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the service's open did not end within 20 s of the download")
			}
			if n := fileCount(t, p, `SELECT count(*) FROM events WHERE tenant = 'acked'`); n != 1 {
				t.Errorf("the other proxy's acknowledged row: %d, want 1", n)
			}
		})
	}
}

// downloadHeld starts a service with replication on dir (replica: a
// fakeReplica's folder) and a first access of acme in it, and returns once
// that access is downloading the replica, held until h.release is closed
// (the replica's copy: two rows of tenant r); opened gets the access's
// error (none of these services has a Litestream to register with).
func downloadHeld(t *testing.T, dir, replica string) (h *heldRestorer, opened <-chan error) {
	t.Helper()
	h = &heldRestorer{src: backupOf(t, "r", 2), started: make(chan struct{}), release: make(chan struct{})}
	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, ReplicaURL: "file://" + replica,
		LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"), ReplicaRestorer: h})
	done := make(chan error, 1)
	go func() {
		_, err := svc.ExecContext(tctx("acme"), `SELECT 1`)
		done <- err
	}()
	select {
	case <-h.started:
	case <-time.After(20 * time.Second):
		close(h.release)
		t.Fatal("the service's download of the replica did not start within 20 s")
	}
	return h, done
}

// heldRestorer restores every replica from the file src, once release is
// closed; started is closed when the first restore begins.
type heldRestorer struct {
	src              string
	started, release chan struct{}
	once             sync.Once
}

func (h *heldRestorer) RestoreReplica(ctx context.Context, _, dst string, _ time.Time) error {
	h.once.Do(func() { close(h.started) })
	select {
	case <-h.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return copyFile(h.src, dst, false)
}

// A download from the replica left the tenant's open gate held (shared)
// for as long as it ran: a restore or delete in another process (the
// CLI's) of that tenant, or of another sharing its slot, waited for it, and
// failed after its busy timeout. It now runs outside the gate, and a
// restore made meanwhile is kept: the replica's copy does not take its
// place.
func TestReplication_RestoreDuringDownloadKept(t *testing.T) {
	dir := t.TempDir()
	p := streamedTenant(t, dir, "acme", 3)
	backup := backupOf(t, "b", 5)
	// The replica is ahead (transaction 10): the service replaces its
	// copy with the replica's (two rows of its own).
	h, opened := downloadHeld(t, dir, fakeReplica(t, "acme", 10))
	cli := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, BusyTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cli.RestoreTenant(ctx, "acme", backup)
	close(h.release)
	if err != nil {
		t.Fatalf("RestoreTenant while the service downloads the replica: %v", err)
	}
	select {
	case <-opened: // fails at the registration (no Litestream here): reconcile ran
	case <-time.After(20 * time.Second):
		t.Fatal("the service's open did not end within 20 s of the download")
	}
	restoreKept(t, p, 5)
}

// ReplicaTenants lists the tenants whose replica holds something: an empty
// folder under a file:// replica (an erased replica's, one made by hand)
// was listed as a tenant with a replica.
func TestReplication_ReplicaTenantsSkipsEmptyFolders(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, d := range []string{"acme/ltx/0", "empty", "erased/ltx/0"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "acme/ltx/0/0000000000000001-0000000000000001.ltx"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ids, err := ReplicaTenants(context.Background(), "file://"+root)
	if err != nil || !slices.Equal(ids, []string{"acme"}) {
		t.Fatalf("ReplicaTenants: %q, %v; want [acme]", ids, err)
	}
}

// A restore from the replica without a litestream binary says how to name
// one: it said only `exec: "litestream": executable file not found in $PATH`.
func TestReplication_RestoreWithoutLitestreamBinary(t *testing.T) {
	t.Parallel()
	replica, dir := t.TempDir(), t.TempDir()
	l0 := filepath.Join(replica, "acme", "ltx", "0")
	if err := os.MkdirAll(l0, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l0, "0000000000000001-0000000000000002.ltx"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, Config{Dir: dir, ReplicaURL: "file://" + replica, LitestreamSocket: filepath.Join(dir, "no.sock"),
		LitestreamPath: filepath.Join(t.TempDir(), "litestream")})
	_, err := p.ExecContext(tctx("acme"), `SELECT 1`)
	if err == nil || !strings.Contains(err.Error(), "Config.LitestreamPath") {
		t.Fatalf("first access of a tenant in the replica, no litestream binary: %v, want the remedy named", err)
	}
}

// Litestream's answer when AWS_CA_BUNDLE is set in its environment names
// no cause: the error says what to do (walk24).
func TestCtlError_CABundleHint(t *testing.T) {
	e := &ctlError{Status: 500, Message: "s3: cannot load aws config: unable to add custom RootCAs HTTPClient, has no WithTransportOptions, *http.Client"}
	if !strings.Contains(e.Error(), "AWS_CA_BUNDLE is set in its environment: unset it there") {
		t.Errorf("%v: want the AWS_CA_BUNDLE hint", e)
	}
	if e := (&ctlError{Status: 404, Message: "database not found"}); strings.Contains(e.Error(), "AWS_CA_BUNDLE") {
		t.Errorf("%v: a hint for another error", e)
	}
}

// A DeleteTenant whose replica could not be erased is listed by
// PendingDeletes and ReplicaCopyOf (the CLI's status -replica showed
// nothing of it: the tenant has no file), in both layouts.
func TestReplication_PendingDeletesListed(t *testing.T) {
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run(l.String(), func(t *testing.T) {
			dir, replica := t.TempDir(), t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}, ReplicaURL: "file://" + replica,
				LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"), ReplicaRestorer: emptyReplica{}})
			// Two tenants made by a proxy without replication, each with a
			// replica; acme's cannot be erased (chattr +i stands for an
			// object store that is down).
			plain := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}})
			for _, id := range []string{"acme", "globex"} {
				if err := plain.CreateTenant(tctx(id), id); err != nil {
					t.Fatal(err)
				}
				l0 := filepath.Join(replica, id, "ltx", "0")
				if err := os.MkdirAll(l0, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(l0, fmt.Sprintf("%016x-%016x.ltx", 1, 3)), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			plain.Close()
			l0 := filepath.Join(replica, "acme", "ltx", "0")
			if out, err := exec.Command("chattr", "+i", l0).CombinedOutput(); err != nil {
				t.Skipf("chattr +i: %v %s", err, out)
			}
			t.Cleanup(func() { exec.Command("chattr", "-i", l0).Run() })
			if err := p.DeleteTenant(context.Background(), "acme"); err == nil {
				t.Fatal("DeleteTenant erased a replica it may not write")
			}
			if err := p.DeleteTenant(context.Background(), "globex"); err != nil {
				t.Fatal(err)
			}
			ids, err := PendingDeletes(context.Background(), dir)
			if err != nil || !slices.Equal(ids, []string{"acme"}) {
				t.Fatalf("PendingDeletes: %q, %v; want [acme]", ids, err)
			}
			c, err := ReplicaCopyOf(context.Background(), "file://"+replica, dir, "acme")
			if err != nil || !c.DeletePending || c.Replica != 3 {
				t.Fatalf("ReplicaCopyOf acme: %+v, %v; want DeletePending at replica txid 3", c, err)
			}
			if c, err := ReplicaCopyOf(context.Background(), "file://"+replica, dir, "globex"); err != nil || c.DeletePending {
				t.Fatalf("ReplicaCopyOf globex (erased): %+v, %v", c, err)
			}
		})
	}
}

// CheckReplication fails early, naming what is wrong, where New checks
// nothing outside the process and each first access failed instead (walk24).
func TestCheckReplication(t *testing.T) {
	plain := newTestProxy(t, Config{})
	if err := plain.CheckReplication(context.Background()); err == nil || !strings.Contains(err.Error(), "replication is off") {
		t.Errorf("without replication: %v", err)
	}
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "ls.sock")
	replica := t.TempDir()
	aFile := filepath.Join(replica, "file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(url string) error {
		p := newTestProxy(t, Config{ReplicaURL: url, LitestreamSocket: sock, ReplicaRestorer: emptyReplica{}})
		return p.CheckReplication(context.Background())
	}
	if err := check("file://" + replica); err == nil || !strings.Contains(err.Error(), "control socket "+sock) {
		t.Errorf("no Litestream on the socket: %v", err)
	}
	// Something that takes connections and is not Litestream: an answer
	// that is not HTTP, then Litestream's GET /info (the pid is what
	// CheckReplication looks for).
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
			c.Close()
		}
	}()
	if err := check("file://" + replica); err == nil || !strings.Contains(err.Error(), "control socket "+sock) {
		t.Errorf("not Litestream on the socket: %v", err)
	}
	<-accepted
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/info" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"version":"v0.5.18","pid":4242}`)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, tc := range []struct {
		url  string
		want string // "" for nil
	}{
		{"file://" + replica, ""},
		{"file://" + filepath.Join(replica, "tenants"), ""}, // made by Litestream
		{"file://" + aFile, "is not a directory"},
		{"file://" + filepath.Join(replica, "missing", "tenants"), "no such file or directory"},
	} {
		err := check(tc.url)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckReplication with %s: %v, want %q", tc.url, err, tc.want)
		}
	}
}

// holdExclusiveEnv names, for TestHoldExclusiveProcess, the database it
// writes in locking_mode=EXCLUSIVE and keeps open.
const holdExclusiveEnv = "SQLITEPROXY_TEST_HOLD_EXCLUSIVE"

// TestHoldExclusiveProcess is run by TestReplication_NotReplacedUnderExclusiveConnection
// as another process: it inserts a row ('acked') in locking_mode=EXCLUSIVE
// (its WAL index in memory: no -shm), says "ready" and keeps the file open
// until its standard input closes.
func TestHoldExclusiveProcess(t *testing.T) {
	p := os.Getenv(holdExclusiveEnv)
	if p == "" {
		t.Skip("helper process only")
	}
	db, err := sql.Open("sqlite3", "file:"+p+"?_locking_mode=EXCLUSIVE")
	if err != nil {
		os.Exit(3)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`INSERT INTO events (tenant) VALUES ('acked')`); err != nil {
		os.Exit(4)
	}
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
	db.Close()
	os.Exit(0)
}

// A copy behind its replica was replaced under a process that had it open
// in locking_mode=EXCLUSIVE, which holds no -shm for the check to find: the
// row it had acknowledged, in the -wal, was removed with it (adv32).
func TestReplication_NotReplacedUnderExclusiveConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	p := streamedTenant(t, dir, "acme", 3)
	stop := startChild(t, "TestHoldExclusiveProcess", holdExclusiveEnv+"="+p)
	svc := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}, BusyTimeout: time.Second,
		ReplicaURL: "file://" + fakeReplica(t, "acme", 10), LitestreamSocket: filepath.Join(t.TempDir(), "no.sock"),
		ReplicaRestorer: &heldRestorer{src: backupOf(t, "r", 2), started: make(chan struct{}), release: closedChan()}})
	ctx, cancel := context.WithTimeout(tctx("acme"), 10*time.Second)
	defer cancel()
	if _, err := svc.ExecContext(ctx, `SELECT 1`); err == nil {
		t.Error("the service opened the tenant")
	}
	if err := stop(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	if n := fileCount(t, p, `SELECT count(*) FROM events WHERE tenant = 'acked'`); n != 1 {
		t.Errorf("the row the other process acknowledged: %d, want 1", n)
	}
}

// closedChan returns a closed channel.
func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// A tenant's folder (or a generation's) in a file:// replica that is a
// symbolic link is refused, never followed: restore -replica of "evil"
// linked to globex's replica gave evil globex's rows, and compact wrote
// through a link into the data directory (adv48).
func TestReplication_SymlinkedReplicaFolderRefused(t *testing.T) {
	t.Parallel()
	root, data := t.TempDir(), t.TempDir()
	for _, d := range []string{"globex/g2", "acme"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"evil": filepath.Join(root, "globex"), "sneaky": data, "acme/g3": filepath.Join(root, "globex", "g2")} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	rp := &replicator{base: "file://" + root}
	for key, bad := range map[string]bool{"globex": false, "globex/g2": false, "new": false, "new/g1": false, "evil": true, "sneaky": true, "evil/g2": true, "acme/g3": true} {
		if err := rp.checkFolder(key); (err != nil) != bad {
			t.Errorf("checkFolder(%s): %v, want refused %v", key, err, bad)
		}
	}
	for _, id := range []string{"evil", "sneaky", "acme"} {
		if _, err := TenantReplicaURLs(context.Background(), "file://"+root, id); err == nil || !strings.Contains(err.Error(), "is not a directory") {
			t.Errorf("TenantReplicaURLs(%s): %v, want it refused", id, err)
		}
	}
	p := newTestProxy(t, Config{Dir: t.TempDir()})
	err := p.RestoreTenantFromReplica(context.Background(), "evil", "file://"+root, time.Time{}, filepath.Join(t.TempDir(), "no-litestream"))
	if err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("RestoreTenantFromReplica through a link: %v, want it refused", err)
	}
	if ok, _ := p.TenantExists(context.Background(), "evil"); ok {
		t.Error("evil made from another tenant's replica")
	}
}
