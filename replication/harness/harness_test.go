//go:build linux

package harness_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/benbjohnson/litestream"
	_ "github.com/benbjohnson/litestream/file" // registers file:// replica clients
	_ "github.com/benbjohnson/litestream/s3"   // registers s3:// replica clients
	_ "github.com/mattn/go-sqlite3"

	"github.com/sqliteproxy/sqliteproxy/replication/harness"
)

// openDB opens path with mattn in WAL mode, as a tenant connection would.
func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_busy_timeout=5000&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v", mode, err)
	}
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return db
}

// insert adds rows first..first+n-1 in one transaction.
func insert(t *testing.T, db *sql.DB, first, n int) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i < first+n; i++ {
		if _, err := tx.Exec(`INSERT INTO rows (id, v) VALUES (?, ?)`, i, strings.Repeat("x", 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// checkRestored opens a restored file with mattn and returns its row count
// and max id after PRAGMA quick_check.
func checkRestored(t *testing.T, path string) (count, maxID int) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var qc string
	if err := db.QueryRow(`PRAGMA quick_check`).Scan(&qc); err != nil || qc != "ok" {
		t.Fatalf("quick_check of %s = %q, %v", path, qc, err)
	}
	if err := db.QueryRow(`SELECT count(*), coalesce(max(id), 0) FROM rows`).Scan(&count, &maxID); err != nil {
		t.Fatal(err)
	}
	return count, maxID
}

func listed(t *testing.T, c *harness.Client, path string) bool {
	t.Helper()
	dbs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(dbs, func(d harness.Database) bool { return d.Path == path })
}

func syncWait(t *testing.T, c *harness.Client, path string) harness.SyncResult {
	t.Helper()
	r, err := c.Sync(path, true, 30)
	if err != nil {
		t.Fatal(err)
	}
	if r.TXID == 0 || r.ReplicatedTXID < r.TXID {
		t.Fatalf("sync: %+v: replica behind local", r)
	}
	return r
}

// roundTrip is the smoke test for one replica URL.
func roundTrip(t *testing.T, ls *harness.Litestream, replicaURL string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tenant.db")
	db := openDB(t, path)
	insert(t, db, 1, 100)

	if st, err := ls.Client.Register(path, replicaURL); err != nil || st != "registered" {
		t.Fatalf("register: %q, %v", st, err)
	}
	if !listed(t, ls.Client, path) {
		t.Fatal("registered database not in /list")
	}
	insert(t, db, 101, 100)
	r := syncWait(t, ls.Client, path)
	t.Logf("sync: %+v", r)

	out := filepath.Join(t.TempDir(), "restored.db")
	if err := ls.Restore(context.Background(), replicaURL, out); err != nil {
		t.Fatal(err)
	}
	if n, _ := checkRestored(t, out); n != 200 {
		t.Fatalf("restored %d rows, want 200", n)
	}

	// What Litestream left in and beside the database.
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	var side []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			side = append(side, rel)
		}
		return nil
	})
	t.Logf("tables: %v", tables)
	t.Logf("files: %v", side)

	u, err := ls.Client.Unregister(path, 30)
	if err != nil || u.Status != "unregistered" {
		t.Fatalf("unregister: %+v, %v", u, err)
	}
	if listed(t, ls.Client, path) {
		t.Fatal("unregistered database still in /list")
	}
	if u, err := ls.Client.Unregister(path, 30); err != nil || u.Status != "already_unregistered" {
		t.Fatalf("second unregister: %+v, %v", u, err)
	}
}

func TestRoundTripS3(t *testing.T) {
	s3 := harness.StartS3(t)
	ls := harness.StartLitestream(t, s3.Env()...)
	url := s3.ReplicaURL("tenants/acme")
	t.Logf("replica URL: %s", url)
	roundTrip(t, ls, url)
	objs, _, err := s3.List("tenants/acme/", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("objects: %v", objs)
	if len(objs) == 0 {
		t.Fatal("no objects under tenants/acme/")
	}
}

func TestRoundTripFile(t *testing.T) {
	ls := harness.StartLitestream(t)
	replicaDir := t.TempDir()
	roundTrip(t, ls, "file://"+filepath.Join(replicaDir, "acme"))
	var files []string
	_ = filepath.WalkDir(replicaDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(replicaDir, p)
			files = append(files, rel)
		}
		return nil
	})
	t.Logf("replica files: %v", files)
}

// TestPointInTime restores to a timestamp T between two synced batches.
//
// Semantics (v0.5.18): restore -timestamp T rebuilds from the LTX files whose
// timestamp is strictly before T; an LTX file's timestamp is the wall-clock
// time, in milliseconds, at which Litestream turned WAL frames into it (not
// the SQLite commit time). The CLI first checks T against the replica's time
// bounds computed from listing timestamps (S3: LastModified, whole seconds),
// so T after the newest file is "timestamp does not exist".
func TestPointInTime(t *testing.T) {
	s3 := harness.StartS3(t)
	ls := harness.StartLitestream(t, s3.Env()...)
	for _, tc := range []struct{ name, url string }{
		{"s3", s3.ReplicaURL("pitr/acme")},
		{"file", "file://" + filepath.Join(t.TempDir(), "acme")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "tenant.db")
			db := openDB(t, path)
			insert(t, db, 1, 50)
			if _, err := ls.Client.Register(path, tc.url); err != nil {
				t.Fatal(err)
			}
			insert(t, db, 51, 50)
			syncWait(t, ls.Client, path) // batch A: rows 1..100

			// T on the next millisecond boundary: A's LTX timestamp < T <= B's.
			at := time.Now().Truncate(time.Millisecond).Add(time.Millisecond)
			time.Sleep(time.Until(at)) // waiting for the wall clock itself
			insert(t, db, 101, 100)
			syncWait(t, ls.Client, path) // batch B: rows 101..200
			ts := at.UTC().Format(time.RFC3339Nano)

			// T after the newest LTX file is refused, whatever the backend.
			// Not "now": S3 lists whole seconds, and the level-1
			// compaction runs on 30 s wall-clock boundaries, so a file
			// written after now can be listed in now's second or later
			// (CI saw a compaction 24 ms after now make "now" valid).
			later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
			err := ls.Restore(ctx, tc.url, filepath.Join(t.TempDir(), "later.db"), "-timestamp", later)
			t.Logf("restore an hour after the last sync (%s): %s", later, firstLine(err))
			if err == nil {
				t.Error("restore at a time after the newest LTX file succeeded")
			}

			// S3 bounds come from LastModified in whole seconds, and the
			// object store's file times come from the kernel's coarse clock,
			// a tick or so behind the wall clock (an object written 3 ms
			// into a second was listed in the second before): write batch C
			// well into the next second so that its object is listed after T.
			next := at.Truncate(time.Second).Add(time.Second)
			time.Sleep(time.Until(next.Add(100 * time.Millisecond))) // wall clock
			insert(t, db, 201, 100)
			syncWait(t, ls.Client, path) // batch C: rows 201..300
			if tc.name == "s3" {
				objs, _, err := s3.List("pitr/acme/", "")
				if err != nil {
					t.Fatal(err)
				}
				newest := time.Time{}
				for _, o := range objs {
					t.Logf("object %s %dB LastModified %s", o.Key, o.Size, o.LastModified.Format(time.RFC3339Nano))
					if o.LastModified.After(newest) {
						newest = o.LastModified
					}
				}
				if newest.Before(next) {
					t.Fatalf("batch C's object is listed before %s: the bound would refuse T", next.UTC().Format(time.RFC3339))
				}
			}

			out := filepath.Join(t.TempDir(), "at.db")
			if err := ls.Restore(ctx, tc.url, out, "-timestamp", ts); err != nil {
				t.Fatal(err)
			}
			if n, maxID := checkRestored(t, out); n != 100 || maxID != 100 {
				t.Fatalf("restore at %s: %d rows (max id %d), want 100", ts, n, maxID)
			}
			out2 := filepath.Join(t.TempDir(), "latest.db")
			if err := ls.Restore(ctx, tc.url, out2); err != nil {
				t.Fatal(err)
			}
			if n, _ := checkRestored(t, out2); n != 300 {
				t.Fatalf("latest restore: %d rows, want 300", n)
			}
			// A timestamp before the first LTX file is an error, not an empty database.
			err = ls.Restore(ctx, tc.url, filepath.Join(t.TempDir(), "early.db"),
				"-timestamp", at.Add(-time.Hour).UTC().Format(time.RFC3339))
			t.Logf("restore before the first file: %s", firstLine(err))
			if err == nil {
				t.Fatal("restore before the replica existed succeeded")
			}
			if _, err := ls.Client.Unregister(path, 30); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s := strings.TrimSpace(err.Error())
	lines := strings.Split(s, "\n")
	return lines[len(lines)-1]
}

// TestKillRestart: registrations live only in memory; a SIGKILLed Litestream
// restarts with none, and re-registering resumes replication with nothing lost.
func TestKillRestart(t *testing.T) {
	ls := harness.StartLitestream(t)
	url := "file://" + filepath.Join(t.TempDir(), "acme")
	path := filepath.Join(t.TempDir(), "tenant.db")
	db := openDB(t, path)
	insert(t, db, 1, 100)
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	r1 := syncWait(t, ls.Client, path)
	insert(t, db, 101, 100) // committed, maybe not replicated
	ls.Kill()
	insert(t, db, 201, 100) // committed while Litestream is down
	ls.Restart()
	if dbs, err := ls.Client.List(); err != nil || len(dbs) != 0 {
		t.Fatalf("after restart /list = %v, %v; want empty", dbs, err)
	}
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	r2 := syncWait(t, ls.Client, path)
	t.Logf("sync before kill %+v, after restart %+v", r1, r2)
	out := filepath.Join(t.TempDir(), "restored.db")
	if err := ls.Restore(context.Background(), url, out); err != nil {
		t.Fatal(err)
	}
	if n, _ := checkRestored(t, out); n != 300 {
		t.Fatalf("restored %d rows, want 300", n)
	}
}

// copyTree copies the database, its -wal/-shm and its Litestream meta
// directory (.NAME-litestream) from src to dst (a directory).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

// TestBehindReplica documents what v0.5.18 does when a database registers
// with a local state older than its replica (db.go checkDatabaseBehindReplica):
// the stale local copy becomes the replica's new head.
func TestBehindReplica(t *testing.T) {
	ls := harness.StartLitestream(t)
	url := "file://" + filepath.Join(t.TempDir(), "acme")
	dir := t.TempDir()
	path := filepath.Join(dir, "tenant.db")

	// Node state 1: 100 rows, replicated, closed.
	db := openDB(t, path)
	insert(t, db, 1, 100)
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	syncWait(t, ls.Client, path)
	if _, err := ls.Client.Unregister(path, 30); err != nil {
		t.Fatal(err)
	}
	db.Close()
	stale := t.TempDir()
	copyTree(t, dir, stale)

	// The tenant moves on (here: same path, 100 more rows), replicated.
	db = openDB(t, path)
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	insert(t, db, 101, 100)
	ahead := syncWait(t, ls.Client, path)
	if _, err := ls.Client.Unregister(path, 30); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// The old local copy comes back and registers.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyTree(t, stale, dir)
	db = openDB(t, path)
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	back := syncWait(t, ls.Client, path)
	out := filepath.Join(t.TempDir(), "restored.db")
	if err := ls.Restore(context.Background(), url, out); err != nil {
		t.Fatal(err)
	}
	n, _ := checkRestored(t, out)
	t.Logf("replica at txid %d with 200 rows; stale copy registered -> sync %+v; latest restore has %d rows", ahead.TXID, back, n)
	for _, l := range strings.Split(ls.Log(), "\n") {
		if strings.Contains(l, "behind replica") || strings.Contains(l, "fetched latest L0") || strings.Contains(l, "snapshot") {
			t.Logf("log: %s", l)
		}
	}
	if n != 100 {
		t.Fatalf("latest restore has %d rows; v0.5.18 was seen to publish the stale 100-row copy", n)
	}
}

// TestReplicaLibrary: list the tenants under a prefix and delete one
// tenant's replica with the Litestream library, as a CLI would.
func TestReplicaLibrary(t *testing.T) {
	s3 := harness.StartS3(t)
	ls := harness.StartLitestream(t, s3.Env()...)
	base := s3.ReplicaURL("lib")
	for _, id := range []string{"acme", "acme-corp"} {
		url, err := harness.JoinReplicaURL(base, id)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), id+".db")
		db := openDB(t, path)
		insert(t, db, 1, 10)
		if _, err := ls.Client.Register(path, url); err != nil {
			t.Fatal(err)
		}
		syncWait(t, ls.Client, path)
		if _, err := ls.Client.Unregister(path, 30); err != nil {
			t.Fatal(err)
		}
	}
	_, prefixes, err := s3.List("lib/", "/")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"lib/acme-corp/", "lib/acme/"}; !slices.Equal(prefixes, want) {
		t.Fatalf("tenants under lib/ = %v, want %v", prefixes, want)
	}

	// The library reads credentials from the process environment.
	t.Setenv("AWS_ACCESS_KEY_ID", s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.SecretKey)
	t.Setenv("AWS_CA_BUNDLE", "") // see harness.baseEnv
	url, _ := harness.JoinReplicaURL(base, "acme")
	client, err := litestream.NewReplicaClientFromURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var levels []string
	for level := 0; level <= litestream.SnapshotLevel; level++ {
		itr, err := client.LTXFiles(ctx, level, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		for itr.Next() {
			it := itr.Item()
			levels = append(levels, fmt.Sprintf("L%d %s-%s %dB", it.Level, it.MinTXID, it.MaxTXID, it.Size))
		}
		if err := itr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("LTXFiles of acme: %v", levels)
	if err := client.DeleteAll(ctx); err != nil {
		t.Fatal(err)
	}
	keys, _, err := s3.List("lib/acme/", "")
	if err != nil || len(keys) != 0 {
		t.Fatalf("after DeleteAll: %v, %v", keys, err)
	}
	keys, _, err = s3.List("lib/acme-corp/", "")
	if err != nil || len(keys) == 0 {
		t.Fatalf("DeleteAll of acme touched acme-corp: %v, %v", keys, err)
	}
	err = ls.Restore(ctx, url, filepath.Join(t.TempDir(), "gone.db"))
	t.Logf("restore after DeleteAll: %s", firstLine(err))
	if err == nil {
		t.Fatal("restore of a deleted replica succeeded")
	}
}

// TestCostPerDatabase measures what 50 registered databases cost the
// litestream process, with S3 and with file replicas.
func TestCostPerDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	t.Run("s3", func(t *testing.T) {
		s3 := harness.StartS3(t)
		ls := harness.StartLitestream(t, s3.Env()...)
		measureCost(t, ls, s3.ReplicaURL("cost"))
	})
	t.Run("file", func(t *testing.T) {
		ls := harness.StartLitestream(t)
		measureCost(t, ls, "file://"+t.TempDir())
	})
}

func measureCost(t *testing.T, ls *harness.Litestream, base string) {
	const n = 50
	dir := t.TempDir()
	paths := make([]string, n)
	for i := range paths {
		paths[i] = filepath.Join(dir, fmt.Sprintf("t%02d.db", i))
		db := openDB(t, paths[i])
		insert(t, db, 1, 10)
		db.Close()
	}
	sample := func(label string) (int, int, int, int64) {
		g, err := ls.Client.Goroutines()
		if err != nil {
			t.Fatal(err)
		}
		fds, threads, rss, err := harness.ProcStats(ls.PID())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: goroutines %d, fds %d, threads %d, rss %d kB", label, g, fds, threads, rss)
		return g, fds, threads, rss
	}
	g0, f0, th0, r0 := sample("0 databases")
	for i, p := range paths {
		url, _ := harness.JoinReplicaURL(base, fmt.Sprintf("t%02d", i))
		if _, err := ls.Client.Register(p, url); err != nil {
			t.Fatal(err)
		}
		syncWait(t, ls.Client, p)
	}
	g1, f1, th1, r1 := sample(fmt.Sprintf("%d databases", n))
	t.Logf("per database: %.1f goroutines, %.1f fds, %.2f threads, %.0f kB",
		float64(g1-g0)/n, float64(f1-f0)/n, float64(th1-th0)/n, float64(r1-r0)/n)
	kinds := map[string]int{}
	for _, target := range harness.FDTargets(ls.PID()) {
		switch {
		case strings.HasSuffix(target, ".db"):
			kinds["db"]++
		case strings.HasSuffix(target, "-wal"):
			kinds["wal"]++
		case strings.HasSuffix(target, "-shm"):
			kinds["shm"]++
		case strings.HasPrefix(target, "socket:"):
			kinds["socket"]++
		default:
			kinds["other"]++
		}
	}
	t.Logf("fd kinds with %d databases: %v", n, kinds)
	for _, p := range paths {
		if _, err := ls.Client.Unregister(p, 30); err != nil {
			t.Fatal(err)
		}
	}
	sample("after unregistering all")
}

// TestObjectStoreDown: with the object store down, writes go on, Sync with
// wait fails at its timeout, Unregister fails but still removes the
// database; once the store is back nothing committed is lost.
func TestObjectStoreDown(t *testing.T) {
	s3 := harness.StartS3(t)
	ls := harness.StartLitestream(t, s3.Env()...)
	url := s3.ReplicaURL("down/acme")
	path := filepath.Join(t.TempDir(), "tenant.db")
	db := openDB(t, path)
	insert(t, db, 1, 100)
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	syncWait(t, ls.Client, path)

	s3.Stop()
	insert(t, db, 101, 100)
	start := time.Now()
	r, err := ls.Client.Sync(path, true, 2)
	t.Logf("sync wait (timeout 2 s) with the store down: %+v, %v after %v", r, err, time.Since(start).Round(time.Millisecond))
	if err == nil {
		t.Fatal("sync with the store down succeeded")
	}
	if txid, err := ls.Client.TXID(path); err == nil {
		t.Logf("GET /txid with the store down: %d", txid)
	}
	s3.Restart()
	r = syncWait(t, ls.Client, path)
	t.Logf("sync after the store came back: %+v", r)

	s3.Stop()
	insert(t, db, 201, 100)
	start = time.Now()
	u, err := ls.Client.Unregister(path, 2)
	t.Logf("unregister (timeout 2 s) with the store down: %+v, %v after %v; still listed: %v",
		u, err, time.Since(start).Round(time.Millisecond), listed(t, ls.Client, path))
	s3.Restart()
	if st, err := ls.Client.Register(path, url); err != nil {
		t.Fatalf("re-register: %q, %v", st, err)
	}
	syncWait(t, ls.Client, path)
	out := filepath.Join(t.TempDir(), "restored.db")
	if err := ls.Restore(context.Background(), url, out); err != nil {
		t.Fatal(err)
	}
	if n, _ := checkRestored(t, out); n != 300 {
		t.Fatalf("restored %d rows, want 300", n)
	}
}

// TestControlAPIEdges records how the control API treats edge cases.
func TestControlAPIEdges(t *testing.T) {
	ls := harness.StartLitestream(t)
	dir := t.TempDir()
	url := "file://" + filepath.Join(t.TempDir(), "acme")

	// A path that does not exist: registered; nothing is created.
	missing := filepath.Join(dir, "missing.db")
	st, err := ls.Client.Register(missing, url)
	t.Logf("register missing file: %q, %v", st, err)
	r, err := ls.Client.Sync(missing, true, 2)
	t.Logf("sync missing file: %+v, %v", r, err)
	_, statErr := os.Stat(missing)
	t.Logf("missing file exists afterwards: %v", statErr == nil)
	if _, err := ls.Client.Unregister(missing, 5); err != nil {
		t.Logf("unregister missing file: %v", err)
	}

	// A rollback-journal database: Litestream switches it to WAL.
	path := filepath.Join(dir, "delete.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE rows (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Client.Register(path, url); err != nil {
		t.Fatal(err)
	}
	syncWait(t, ls.Client, path)
	hdr := make([]byte, 20)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(hdr, 0)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	var mode string
	if err := fresh.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	t.Logf("a DELETE-mode database after registering: header read/write versions %d/%d (2 = WAL), journal_mode on a new connection %q", hdr[18], hdr[19], mode)
	if mode != "wal" {
		t.Errorf("journal_mode = %q after registering, want wal", mode)
	}

	// Registering a registered path again, even with another URL, is a no-op.
	other := "file://" + filepath.Join(t.TempDir(), "other")
	st, err = ls.Client.Register(path, other)
	t.Logf("register again with another URL: %q, %v", st, err)
	if st != "already_registered" {
		t.Errorf("second register: %q", st)
	}
	// Sync of an unknown path.
	_, err = ls.Client.Sync(filepath.Join(dir, "unknown.db"), true, 2)
	t.Logf("sync unknown path: %v", err)
	if _, err := ls.Client.Unregister(path, 5); err != nil {
		t.Fatal(err)
	}
}

// TestEvictReopenUploads measures what one evict + reopen cycle uploads.
// When the tenant's last mattn connection closes while Litestream is not
// registered, SQLite checkpoints and deletes the WAL; the next registration
// then finds the WAL shorter than its last position ("wal truncated by
// another process", db.go verifyWithExecutor) and uploads a full snapshot.
// Closing the tenant's connections first and unregistering afterwards keeps
// the WAL (Litestream's own connection sets PERSIST_WAL and is the last to
// close), and a cycle uploads only the changed pages.
func TestEvictReopenUploads(t *testing.T) {
	s3 := harness.StartS3(t)
	// No compaction while the bytes are counted: Litestream's level-1
	// compaction, every 30 s on the clock's half minutes, uploaded a file
	// of a full snapshot's size in a cycle that crossed one.
	ls := harness.StartLitestreamLevels(t, []time.Duration{time.Hour, time.Hour, time.Hour}, s3.Env()...)
	for _, tc := range []struct {
		name         string
		closeFirst   bool
		wantSnapshot bool
	}{
		{"close-then-unregister", true, false},
		{"unregister-then-close", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := "evict/" + tc.name
			url := s3.ReplicaURL(prefix)
			uploaded := func() (total int64) {
				objs, _, err := s3.List(prefix+"/", "")
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range objs {
					total += o.Size
				}
				return total
			}
			path := filepath.Join(t.TempDir(), "tenant.db")
			db := openDB(t, path)
			insert(t, db, 1, 2000)
			if _, err := ls.Client.Register(path, url); err != nil {
				t.Fatal(err)
			}
			syncWait(t, ls.Client, path)
			snapshot := uploaded()
			for cycle := range 3 {
				before := uploaded()
				insert(t, db, 10000+10*cycle, 10)
				syncWait(t, ls.Client, path)
				if tc.closeFirst {
					db.Close()
				}
				if _, err := ls.Client.Unregister(path, 30); err != nil {
					t.Fatal(err)
				}
				if !tc.closeFirst {
					db.Close()
				}
				db = openDB(t, path)
				if _, err := ls.Client.Register(path, url); err != nil {
					t.Fatal(err)
				}
				syncWait(t, ls.Client, path)
				got := uploaded() - before
				t.Logf("cycle %d: %d bytes uploaded for 10 rows (first snapshot %d bytes)", cycle, got, snapshot)
				if !tc.wantSnapshot && got > snapshot/4 {
					t.Errorf("cycle %d uploaded %d bytes, a full snapshot is %d", cycle, got, snapshot)
				}
			}
			if _, err := ls.Client.Unregister(path, 30); err != nil {
				t.Fatal(err)
			}
		})
	}
}
