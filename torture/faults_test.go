package torture

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// TestFaults: disk full, a tenant file deleted or replaced under a live
// proxy, a corrupt tenant file, a read-only data directory (as root, also
// as an unprivileged user in a child process). Every case runs in both
// budgets.
func TestFaults(t *testing.T) {
	t.Run("DiskFull", testDiskFull)
	t.Run("FileDeleted", func(t *testing.T) { testFileSwapped(t, false) })
	t.Run("FileReplaced", func(t *testing.T) { testFileSwapped(t, true) })
	t.Run("Corrupt", testCorrupt)
	t.Run("ReadOnlyDir", testReadOnlyDir)
	t.Run("ReadOnlyDirUnprivileged", testReadOnlyDirUnprivileged)
	verifyNoLeaks(t)
}

// mountTmpfs mounts a tmpfs of the given size (e.g. "2m") on a new
// directory and unmounts it when the test ends; it skips the test when
// that is not possible (not root, no mount permission).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; lazy unmount", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}

func remount(t *testing.T, mnt, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+opts, mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount %s %s: %v: %s", mnt, opts, err, out)
	}
}

// fillSchema adds a table of blobs to the invariant schema.
var fillSchema = []string{invariantSchema, `CREATE TABLE blobs (id INTEGER PRIMARY KEY, txid INTEGER NOT NULL, b BLOB NOT NULL)`}

// fillTx is writeTx with k blobs of size bytes besides the k items.
func fillTx(ctx context.Context, db *sql.DB, txid int64, k, size int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for range k {
		if _, err := tx.ExecContext(ctx, `INSERT INTO items (txid, k) VALUES (?, ?)`, txid, k); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO blobs (txid, b) VALUES (?, randomblob(?))`, txid, size); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE counter SET n = n + ? WHERE id = 1`, k); err != nil {
		return err
	}
	return tx.Commit()
}

// isFull reports SQLITE_FULL anywhere in err's chain.
func isFull(err error) bool { return sqliteCode(err) == sqlite3.ErrFull }

// checkTenant checks integrity, the invariant and the acknowledged txids
// of a tenant through p; it returns the acknowledged txids missing.
func checkTenant(t *testing.T, f *figures, p *sqliteproxy.Proxy, id string, acked []int64) {
	t.Helper()
	ctx := sqliteproxytest.ContextTimeout(t, id, time.Minute)
	if err := integrity(ctx, p.DB); err != nil {
		f.fail(t, "%s: %v", id, err)
		return
	}
	iv, err := readInvariant(ctx, p.DB)
	if err != nil {
		f.fail(t, "%s: %v", id, err)
		return
	}
	if !iv.ok() {
		f.fail(t, "%s: %v", id, iv)
	}
	for _, txid := range acked {
		var n int
		if err := p.QueryRowContext(ctx, `SELECT count(*) FROM items WHERE txid = ?`, txid).Scan(&n); err != nil {
			f.fail(t, "%s: %v", id, err)
			return
		}
		if n == 0 {
			f.lost.Add(txid & 0xf)
			f.fail(t, "%s: committed transaction %d is gone", id, txid)
		}
	}
}

func testDiskFull(t *testing.T) {
	f := newFigures(t)
	mnt := mountTmpfs(t, "2m")
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: mnt, Migrations: fillSchema})
	acked := map[string][]int64{}
	// Fill the disk through two tenants until both get SQLITE_FULL, and a
	// few more tries after that: each must be a clean SQLITE_FULL.
	fullSeen := map[string]int{}
	var firstFull error
	for i := 0; i < 2000 && (fullSeen["full"] < 5 || fullSeen["other"] < 5); i++ {
		id := "full"
		if i%4 == 3 {
			id = "other"
		}
		ctx := sqliteproxytest.ContextTimeout(t, id, time.Minute)
		k := 1 + i%4
		txid := int64(i)<<4 | int64(k)
		f.ops.Add(1)
		err := fillTx(ctx, p.DB, txid, k, 6000)
		switch {
		case err == nil:
			acked[id] = append(acked[id], txid)
		case isFull(err):
			f.expected.Add(1)
			fullSeen[id]++
			if firstFull == nil {
				firstFull = err
			}
		default:
			f.fail(t, "%s: write on a full disk: %v (%T), want SQLITE_FULL", id, err, err)
		}
	}
	if fullSeen["full"] == 0 {
		t.Fatalf("the 2 MB tmpfs never filled up (%d transactions committed)", len(acked["full"]))
	}
	f.cycles.Add(1)
	f.note("disk full after %d + %d committed transactions: %q", len(acked["full"]), len(acked["other"]), firstFull)
	// Reads still work on a full disk; nothing committed is lost.
	for _, id := range []string{"full", "other"} {
		checkTenant(t, f, p, id, acked[id])
	}
	// A new tenant on a full disk: a clean error, no file left behind.
	_, err := p.ExecContext(sqliteproxytest.ContextTimeout(t, "newbie", time.Minute), `INSERT INTO items (txid, k) VALUES (1, 1)`)
	f.ops.Add(1)
	switch {
	case err == nil:
		f.note("a new tenant could still be created on the full disk")
	case isFull(err) || errors.Is(err, syscall.ENOSPC):
		f.expected.Add(1)
		f.note("new tenant on a full disk: %q", err)
	default:
		f.fail(t, "new tenant on a full disk: %v, want SQLITE_FULL or ENOSPC", err)
	}
	if err != nil {
		assertNoFile(t, f, mnt, "newbie")
	}
	p.Close()

	// A migration that needs more space than there is.
	big := append(slices.Clone(fillSchema), `CREATE TABLE copies AS SELECT b, txid FROM blobs; CREATE INDEX copies_txid ON copies (txid)`)
	p2 := sqliteproxytest.New(t, sqliteproxy.Config{Dir: mnt, Migrations: big})
	ctx := sqliteproxytest.ContextTimeout(t, "full", time.Minute)
	_, err = p2.ExecContext(ctx, `INSERT INTO items (txid, k) VALUES (-1, 1)`)
	f.ops.Add(1)
	if err == nil {
		f.fail(t, "a migration copying every blob succeeded on a full disk")
	} else if !isFull(err) {
		f.fail(t, "migration on a full disk: %v (%T), want SQLITE_FULL", err, err)
	} else {
		f.expected.Add(1)
		f.note("migration on a full disk: %q", err)
	}
	st, err := p2.MigrationStatus(context.Background(), "full")
	if err != nil || st.Drift != nil || len(st.Applied) != 2 || len(st.Pending) != 1 {
		f.fail(t, "status after a failed migration: %+v, %v", st, err)
	}
	f.cycles.Add(1)

	// Space returns: the same proxy retries the migration on next access,
	// and writes work again.
	remount(t, mnt, "size=64m")
	f.ops.Add(1)
	if _, err := p2.ExecContext(ctx, `SELECT 1 FROM copies LIMIT 1`); err != nil {
		f.fail(t, "after space returned, the pending migration was not applied: %v", err)
	}
	for i := range 20 {
		for _, id := range []string{"full", "other", "newbie"} {
			k := 1 + i%3
			txid := int64(1_000_000+i)<<4 | int64(k)
			f.ops.Add(1)
			if err := fillTx(sqliteproxytest.ContextTimeout(t, id, time.Minute), p2.DB, txid, k, 6000); err != nil {
				f.fail(t, "%s: write after space returned: %v", id, err)
				continue
			}
			acked[id] = append(acked[id], txid)
		}
	}
	for _, id := range []string{"full", "other", "newbie"} {
		checkTenant(t, f, p2, id, acked[id])
	}
	if st, err := p2.MigrationStatus(context.Background(), "full"); err != nil || len(st.Pending) != 0 {
		f.fail(t, "status after recovery: %+v, %v", st, err)
	}
	f.cycles.Add(1)
	p2.Close()
	assertNoTempFiles(t, f, mnt)
}

// assertNoFile checks that a tenant has no file and that no temporary file
// was left in dir.
func assertNoFile(t *testing.T, f *figures, dir, id string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, id+".db")); err == nil {
		f.fail(t, "%s.db exists after a failed creation", id)
	}
	assertNoTempFiles(t, f, dir)
}

// proxyFile reports whether name is one of the files a proxy keeps in its
// data directory for as long as it is used: the presence file every proxy
// process locks, and the lock of a proxy with replication.
func proxyFile(name string) bool {
	return name == ".sqliteproxy-processes" || name == ".sqliteproxy-replicating"
}

func assertNoTempFiles(t *testing.T, f *figures, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && !proxyFile(e.Name()) {
			f.fail(t, "temporary file left in the data directory: %s", e.Name())
		}
	}
}

// testFileSwapped deletes (replace false) or replaces (true) the file of a
// tenant that the proxy has open, and keeps using the proxy.
func testFileSwapped(t *testing.T, replace bool) {
	f := newFigures(t)
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{invariantSchema}, IdleTimeout: 300 * time.Millisecond})
	bystanderCtx := sqliteproxytest.ContextTimeout(t, "bystander", time.Minute)
	victimCtx := sqliteproxytest.ContextTimeout(t, "victim", time.Minute)
	for i := range 10 {
		for _, ctx := range []context.Context{bystanderCtx, victimCtx} {
			if err := writeTx(ctx, p.DB, int64(i)<<4|3, 3); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Keep the victim's reader busy while its file goes: an open Rows.
	rows, err := p.QueryContext(victimCtx, `SELECT id FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	victim := filepath.Join(dir, "victim.db")
	what := "deleted (with -wal and -shm)"
	if replace {
		// Another valid database, with the same schema and other data.
		other := filepath.Join(t.TempDir(), "other.db")
		db := openDirect(t, other, "&_journal_mode=DELETE")
		if _, err := db.Exec(invariantSchema + `; INSERT INTO items (txid, k) VALUES (999, 1); UPDATE counter SET n = 1`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if err := os.Rename(other, victim); err != nil {
			t.Fatal(err)
		}
		what = "replaced by another database (rename over it; old -wal and -shm left)"
	} else {
		for _, s := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(victim + s); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
	}
	f.cycles.Add(1)

	// The victim: record what it sees, step by step.
	var seen []string
	observe := func(step string, err error) {
		f.ops.Add(1)
		if err != nil {
			f.expected.Add(1)
			seen = append(seen, fmt.Sprintf("%s: %v", step, err))
		} else {
			seen = append(seen, step+": ok")
		}
	}
	observe("write through the open writer", writeTx(victimCtx, p.DB, 100<<4|2, 2))
	iv, err := readInvariant(victimCtx, p.DB) // the open Rows holds one reader; this takes another
	observe(fmt.Sprintf("read (%v)", iv), err)
	rows.Close()

	// The bystander must not notice anything.
	for i := range 20 {
		f.ops.Add(1)
		if err := writeTx(bystanderCtx, p.DB, int64(100+i)<<4|1, 1); err != nil {
			f.fail(t, "bystander: %v", err)
		}
	}
	checkTenant(t, f, p, "bystander", nil)

	// Let the idle timeout close the victim, then use it again.
	sqliteproxytest.WaitFor(t, 10*time.Second, "the idle timeout (300 ms) to close the victim tenant (Stats to stop listing it)", func() bool {
		return !victimOpen(p)
	})
	_, statErr := os.Stat(victim)
	seen = append(seen, fmt.Sprintf("file present after the victim was closed: %v", statErr == nil))
	iv, err = readInvariant(victimCtx, p.DB)
	observe(fmt.Sprintf("read after reopen (%v)", iv), err)
	observe("write after reopen", writeTx(victimCtx, p.DB, 200<<4|2, 2))
	if err := integrity(victimCtx, p.DB); err != nil {
		seen = append(seen, "integrity after reopen: "+err.Error())
	} else {
		seen = append(seen, "integrity after reopen: ok")
	}
	checkTenant(t, f, p, "bystander", nil)
	p.Close()
	db := openDirect(t, victim, "")
	if err := integrity(context.Background(), db); err != nil {
		seen = append(seen, "file on disk after Close: "+err.Error())
	} else {
		seen = append(seen, "file on disk after Close: integrity ok")
	}
	var tables int
	db.QueryRow(`SELECT count(*) FROM sqlite_schema`).Scan(&tables)
	var ledger int
	if err := db.QueryRow(`SELECT count(*) FROM _sqliteproxy_migrations`).Scan(&ledger); err != nil {
		seen = append(seen, fmt.Sprintf("file on disk: %d schema entries, ledger: %v", tables, err))
	} else {
		seen = append(seen, fmt.Sprintf("file on disk: %d schema entries, %d migrations in the ledger", tables, ledger))
	}
	fi, err := os.Stat(victim)
	if err == nil {
		seen = append(seen, fmt.Sprintf("file mode %v", fi.Mode().Perm()))
	}
	db.Close()
	f.note("victim %s under a live proxy: %s", what, strings.Join(seen, " | "))
	t.Log(strings.Join(seen, "\n"))
}

func victimOpen(p *sqliteproxy.Proxy) bool {
	for _, ts := range p.Stats().Tenants {
		if ts.ID == "victim" {
			return true
		}
	}
	return false
}

// testCorrupt: a tenant file of junk, one with damaged pages, and one
// overwritten with junk while open. Each fails clearly (and keeps failing
// the same way), the files are left as they were, the budget does not
// leak, other tenants keep working.
func testCorrupt(t *testing.T) {
	f := newFigures(t)
	dir := t.TempDir()
	migs := []string{invariantSchema}
	// MaxConnections 4: a slot leaked per failed open would soon starve
	// the bystander.
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: migs, MaxConnections: 4})
	bctx := sqliteproxytest.ContextTimeout(t, "bystander", time.Minute)
	for _, id := range []string{"bystander", "damaged", "live"} {
		for i := range 30 {
			if err := writeTx(sqliteproxytest.ContextTimeout(t, id, time.Minute), p.DB, int64(i)<<4|4, 4); err != nil {
				t.Fatal(err)
			}
		}
	}
	// damaged: a copy whose pages after the first are scrambled.
	if err := p.BackupTenant(context.Background(), "damaged", filepath.Join(dir, "..", "damaged-copy.db")); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteTenant(context.Background(), "damaged"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "..", "damaged-copy.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 4096; i < len(b); i += 7 {
		b[i] ^= 0xa5
	}
	// The backup is in rollback-journal mode; mark it WAL as tenant files
	// are, or the proxy's switch to WAL rewrites header bytes 18-19, 24-27
	// and 92-95 (all it changes in such a file).
	b[18], b[19] = 2, 2
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("damaged.db", b)
	write("junk.db", []byte(strings.Repeat("this is not an SQLite database\n", 500)))
	// live: overwritten in place (same inode) with junk while the proxy has it open.
	livePath := filepath.Join(dir, "live.db")
	lf, err := os.OpenFile(livePath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := []byte(strings.Repeat("garbage!", 2048))
	if _, err := lf.WriteAt(junk, 0); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	f.cycles.Add(3)

	sums := map[string]string{}
	for _, id := range []string{"junk", "damaged"} {
		sums[id] = fileSum(t, filepath.Join(dir, id+".db"))
	}
	for round, id := range []string{"junk", "damaged", "live"} {
		ctx := sqliteproxytest.ContextTimeout(t, id, 20*time.Second)
		var first string
		var succeeded []string
		failures := 0
		for i := range 30 {
			var err error
			switch i % 3 {
			case 0:
				err = writeTx(ctx, p.DB, int64(1000+i)<<4|1, 1)
			case 1:
				_, err = readInvariant(ctx, p.DB)
			default:
				err = integrity(ctx, p.DB)
			}
			f.ops.Add(1)
			if err == nil {
				succeeded = append(succeeded, []string{"write", "read", "integrity_check"}[i%3])
				continue
			}
			failures++
			f.expected.Add(1)
			if first == "" {
				first = err.Error()
			}
			code := sqliteCode(err)
			if code != sqlite3.ErrNotADB && code != sqlite3.ErrCorrupt && !strings.Contains(err.Error(), "integrity_check") {
				f.fail(t, "%s: %v (code %d), want SQLITE_NOTADB or SQLITE_CORRUPT", id, err, code)
			}
			if errors.Is(err, context.DeadlineExceeded) || isBusy(err) {
				f.fail(t, "%s: a corrupt tenant made the caller wait: %v", id, err)
			}
			// The bystander works between each failed access.
			f.ops.Add(1)
			if err := writeTx(bctx, p.DB, int64(10_000+100*round+i)<<4|1, 1); err != nil {
				f.fail(t, "bystander after a failure of %s: %v", id, err)
			}
		}
		if id != "live" && failures != 30 {
			f.fail(t, "%s: %d of 30 operations on a corrupt file succeeded", id, 30-failures)
		}
		f.note("%s: %d/30 operations failed, first: %q; succeeded: %v", id, failures, first, succeeded)
	}
	for id, sum := range sums {
		if got := fileSum(t, filepath.Join(dir, id+".db")); got != sum {
			f.fail(t, "%s.db was modified by the proxy", id)
		}
	}
	checkTenant(t, f, p, "bystander", nil)
	if st := p.Stats(); st.OpenConnections > 4 {
		f.fail(t, "budget: %+v", st)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// dirSums maps each file of dir to its checksum.
func dirSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if proxyFile(e.Name()) {
				// Its bytes count the proxy processes that joined the
				// directory: present, not read for its content.
				m[e.Name()] = "present"
				continue
			}
			m[e.Name()] = fileSum(t, filepath.Join(dir, e.Name()))
		}
	}
	return m
}

// testReadOnlyDir: the data directory becomes read-only (a read-only
// remount as root, who ignores permission bits; chmod 0500 otherwise).
func testReadOnlyDir(t *testing.T) {
	if os.Getenv(unprivilegedEnv) != "" && os.Geteuid() == 0 {
		t.Fatalf("%s is set (the unprivileged child of TestFaults/ReadOnlyDirUnprivileged) but this process runs as root", unprivilegedEnv)
	}
	f := newFigures(t)
	var dir string
	var makeRO, makeRW func()
	if os.Geteuid() == 0 {
		dir = mountTmpfs(t, "16m")
		makeRO = func() { remount(t, dir, "ro") }
		makeRW = func() { remount(t, dir, "rw") }
		f.note("read-only tmpfs remount (root ignores chmod)")
	} else {
		dir = filepath.Join(t.TempDir(), "data")
		makeRO = func() { os.Chmod(dir, 0o500) }
		makeRW = func() { os.Chmod(dir, 0o700) }
		t.Cleanup(makeRW)
		f.note("chmod 0500 on the data directory")
		// TestFaults/ReadOnlyDirUnprivileged looks for this line.
		t.Logf("%s: uid %d, gid %d: chmod 0500 on %s", readOnlyNonRootMarker, os.Geteuid(), os.Getegid(), dir)
	}
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{invariantSchema}})
	acked := map[string][]int64{}
	for _, id := range []string{"a", "b"} {
		for i := range 10 {
			txid := int64(i)<<4 | 2
			if err := writeTx(sqliteproxytest.ContextTimeout(t, id, time.Minute), p.DB, txid, 2); err != nil {
				t.Fatal(err)
			}
			acked[id] = append(acked[id], txid)
		}
	}
	p.Close() // a read-only remount needs no file open for writing
	before := dirSums(t, dir)
	makeRO()
	f.cycles.Add(1)

	p2 := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{invariantSchema}})
	var seen []string
	try := func(what string, err error) {
		f.ops.Add(1)
		if err == nil {
			seen = append(seen, what+": ok")
			return
		}
		f.expected.Add(1)
		seen = append(seen, fmt.Sprintf("%s: %v", what, err))
		if errors.Is(err, context.DeadlineExceeded) || isBusy(err) {
			f.fail(t, "%s on a read-only directory made the caller wait: %v", what, err)
		}
	}
	_, err := readInvariant(sqliteproxytest.ContextTimeout(t, "a", 20*time.Second), p2.DB)
	try("read existing tenant", err)
	try("write existing tenant", writeTx(sqliteproxytest.ContextTimeout(t, "b", 20*time.Second), p2.DB, 99<<4|1, 1))
	_, err = p2.ExecContext(sqliteproxytest.ContextTimeout(t, "c", 20*time.Second), `INSERT INTO items (txid, k) VALUES (1, 1)`)
	if err == nil {
		f.fail(t, "a new tenant was created in a read-only directory")
	}
	try("create a new tenant", err)
	try("CreateTenant", p2.CreateTenant(context.Background(), "d"))
	try("BackupTenant", p2.BackupTenant(context.Background(), "a", filepath.Join(t.TempDir(), "a.db")))
	try("DeleteTenant", p2.DeleteTenant(context.Background(), "b"))
	p2.Close()
	after := dirSums(t, dir)
	if !maps.Equal(before, after) {
		f.fail(t, "the read-only directory changed: before %v, after %v", before, after)
	}
	f.note("on the read-only directory: %s", strings.Join(seen, " | "))
	t.Log(strings.Join(seen, "\n"))

	// Back to read-write: everything works again.
	makeRW()
	p3 := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{invariantSchema}})
	for _, id := range []string{"a", "b", "c"} {
		txid := int64(500)<<4 | 1
		f.ops.Add(1)
		if err := writeTx(sqliteproxytest.ContextTimeout(t, id, time.Minute), p3.DB, txid, 1); err != nil {
			f.fail(t, "%s after the directory became writable again: %v", id, err)
			continue
		}
		acked[id] = append(acked[id], txid)
		checkTenant(t, f, p3, id, acked[id])
	}
	f.cycles.Add(1)
}

// The unprivileged child of TestFaults/ReadOnlyDirUnprivileged.
const (
	unprivilegedEnv = "SQLITEPROXY_TORTURE_UNPRIVILEGED" // set in the child: it is the unprivileged re-run
	unprivilegedUID = 65534                              // nobody
	unprivilegedGID = 65534                              // nogroup
	// readOnlyNonRootMarker starts the line that the non-root branch of
	// testReadOnlyDir logs.
	readOnlyNonRootMarker = "ReadOnlyDir non-root branch"
)

// testReadOnlyDirUnprivileged runs the non-root (chmod 0500) branch of
// testReadOnlyDir where the suite runs as root, as it does in CI and in
// make test: it runs this test binary again as uid 65534, with only
// TestFaults/ReadOnlyDir, in a directory that uid owns (its TMPDIR, so that
// t.TempDir works there), logs the child's output line by line, and fails
// if the child fails, or if the child did not log that it ran that branch
// as uid 65534 and pass. It skips as non-root (TestFaults/ReadOnlyDir ran
// that branch itself) and where dropping privileges is refused (EPERM).
func testReadOnlyDirUnprivileged(t *testing.T) {
	if os.Getenv(unprivilegedEnv) != "" {
		t.Skip("this is the unprivileged child itself")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: TestFaults/ReadOnlyDir itself ran the non-root (chmod 0500) branch")
	}
	for _, m := range []struct {
		file string
		id   uint32
	}{{"/proc/self/uid_map", unprivilegedUID}, {"/proc/self/gid_map", unprivilegedGID}} {
		if mapped, table := idMapped(m.file, m.id); !mapped {
			t.Skipf("dropping privileges is impossible here: id %d is not mapped in this user namespace (%s: %s); "+
				"the non-root branch of TestFaults/ReadOnlyDir did not run", m.id, m.file, strings.Join(strings.Fields(table), " "))
		}
	}
	f := newFigures(t)
	home := unprivilegedHome(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !accessibleBy(bin, unprivilegedUID, unprivilegedGID, 0o5) {
		// Typically /tmp/go-build.../b001/torture.test, under 0700 root-owned directories.
		cp := filepath.Join(home, filepath.Base(bin))
		copyFile(t, bin, cp, 0o555)
		f.note("test binary copied to the child's directory (uid %d cannot reach %s)", unprivilegedUID, bin)
		bin = cp
	}
	// The inherited environment, without what points into root's home or
	// build cache, and with TMPDIR and HOME in the directory the child owns.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains([]string{"TMPDIR", "HOME", "GOCACHE", "GOTMPDIR", "GOCOVERDIR", "XDG_CACHE_HOME"}, k)
	})
	env = append(env, "TMPDIR="+home, "HOME="+home, unprivilegedEnv+"=1")
	cmd := reexec(bin, "^TestFaults$/^ReadOnlyDir$", env, "-test.v", "-test.timeout=5m")
	cmd.Dir = home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: unprivilegedUID, Gid: unprivilegedGID}}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	pw.Close()
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("dropping privileges to uid %d was refused (EPERM: no CAP_SETUID/CAP_SETGID, or a user namespace that forbids setuid/setgroups): %v; "+
			"the non-root branch of TestFaults/ReadOnlyDir did not run", unprivilegedUID, err)
	}
	if err != nil {
		t.Fatalf("start %s as uid %d: %v", bin, unprivilegedUID, err)
	}
	f.cycles.Add(1)
	var ranBranch, passed bool
	var summary string
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		t.Logf("uid %d child: %s", unprivilegedUID, line)
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.Contains(line, readOnlyNonRootMarker+": uid "+strconv.Itoa(unprivilegedUID)+","):
			ranBranch = true
		case strings.HasPrefix(trimmed, "--- PASS: TestFaults/ReadOnlyDir "):
			passed = true
		}
		if _, s, ok := strings.Cut(line, "SUMMARY TestFaults/ReadOnlyDir: "); ok {
			summary = s
		}
	}
	if err := sc.Err(); err != nil {
		t.Errorf("reading the child's output: %v", err)
		io.Copy(io.Discard, pr) // let it finish
	}
	if err := cmd.Wait(); err != nil {
		f.fail(t, "the child running TestFaults/ReadOnlyDir as uid %d failed: %v (its output is above)", unprivilegedUID, err)
	}
	if !ranBranch {
		f.fail(t, "the child did not run the non-root branch of TestFaults/ReadOnlyDir: no %q line for uid %d in its output",
			readOnlyNonRootMarker, unprivilegedUID)
	}
	if !passed {
		f.fail(t, "the child's output has no \"--- PASS: TestFaults/ReadOnlyDir\" line")
	}
	f.note("TestFaults/ReadOnlyDir as uid %d in a child process: %s", unprivilegedUID, summary)
}

// idMapped reports whether id is mapped in this process's user namespace,
// by its map file (/proc/self/uid_map or gid_map), and returns the map.
// Without the file (no user namespaces), every id counts as mapped.
func idMapped(file string, id uint32) (bool, string) {
	b, err := os.ReadFile(file)
	if err != nil {
		return true, ""
	}
	for line := range strings.Lines(string(b)) {
		var inside, outside, n uint64
		if _, err := fmt.Sscan(line, &inside, &outside, &n); err == nil && uint64(id) >= inside && uint64(id)-inside < n {
			return true, string(b)
		}
	}
	return false, string(b)
}

// unprivilegedHome returns a new directory owned by the unprivileged uid
// that the uid can reach, removed when the test ends.
func unprivilegedHome(t *testing.T) string {
	t.Helper()
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		if !accessibleBy(parent, unprivilegedUID, unprivilegedGID, 0o1) {
			continue
		}
		home, err := os.MkdirTemp(parent, "sqliteproxy-unprivileged-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := os.RemoveAll(home); err != nil {
				t.Errorf("remove the child's directory: %v", err)
			}
		})
		if err := os.Chown(home, unprivilegedUID, unprivilegedGID); err != nil {
			t.Fatal(err)
		}
		return home
	}
	t.Fatalf("neither %s nor /tmp is reachable by uid %d", os.TempDir(), unprivilegedUID)
	return ""
}

// accessibleBy reports whether uid with gid (and no other group) has the
// permissions want (0o4 read, 0o2 write, 0o1 execute or search; summed) on
// path and can search every directory above it, going by the mode bits
// (ACLs aside). path must be absolute.
func accessibleBy(path string, uid, gid uint32, want os.FileMode) bool {
	has := func(p string, want os.FileMode) bool {
		fi, err := os.Stat(p)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		switch {
		case st.Uid == uid:
			perm >>= 6
		case st.Gid == gid:
			perm >>= 3
		}
		return perm&want == want
	}
	if !has(path, want) {
		return false
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if !has(dir, 0o1) {
			return false
		}
		if dir == filepath.Dir(dir) {
			return true
		}
	}
}

// copyFile copies src to a new file dst of mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
