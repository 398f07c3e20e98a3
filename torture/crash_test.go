package torture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
)

// Environment of the child process of TestCrash.
const (
	crashBaseEnv  = "SQLITEPROXY_TORTURE_CRASH_BASE" // base directory: data/, commits.log, started, child.err
	crashMigEnv   = "SQLITEPROXY_TORTURE_CRASH_MIGRATIONS"
	crashCycleEnv = "SQLITEPROXY_TORTURE_CRASH_CYCLE"
)

var crashTenants = []string{"alpha", "bravo", "charlie", "delta"}

// crashMigrations returns the first n migrations of the crash test: the
// invariant schema, then migrations that add a column, rewrite every row,
// grind for a while (a recursive CTE, so that kills land inside) and add a
// table and an index: a kill in the middle must leave none of it.
func crashMigrations(n int) []string {
	migs := []string{invariantSchema}
	for i := 2; i <= n; i++ {
		migs = append(migs, fmt.Sprintf(`ALTER TABLE items ADD COLUMN m%[1]d INTEGER NOT NULL DEFAULT 0;
UPDATE items SET m%[1]d = k * %[1]d + id;
CREATE TABLE work%[1]d AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300000) SELECT sum(x) AS s FROM c;
CREATE INDEX items_m%[1]d ON items (m%[1]d, txid)`, i))
	}
	return migs
}

// txid packs the cycle, the goroutine, a sequence number and k (1..15) so
// that a logged txid tells how many rows it must have.
func crashTxid(cycle, g, seq, k int) int64 {
	return int64(cycle)<<40 | int64(g)<<32 | int64(seq)<<4 | int64(k)
}

// TestCrashChild is not a test: TestCrash runs the test binary with it in a
// child process and kills it with SIGKILL.
func TestCrashChild(t *testing.T) {
	base := os.Getenv(crashBaseEnv)
	if base == "" {
		t.Skip("child process of TestCrash only")
	}
	nmig, _ := strconv.Atoi(os.Getenv(crashMigEnv))
	cycle, _ := strconv.Atoi(os.Getenv(crashCycleEnv))
	die := func(format string, args ...any) {
		os.WriteFile(filepath.Join(base, "child.err"), fmt.Appendf(nil, format, args...), 0o600)
		os.Exit(7)
	}
	logf, err := os.OpenFile(filepath.Join(base, "commits.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		die("open commit log: %v", err)
	}
	// A small budget, so that tenants are also evicted and reopened when
	// the kill comes.
	// Every other run keeps the side files (KeepWAL): the next run then
	// opens files whose -wal and -shm a killed process, or a clean close
	// of an evicted tenant, left behind.
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: filepath.Join(base, "data"), Migrations: crashMigrations(nmig),
		MaxConnections: 6, ReadersPerTenant: 1, KeepWAL: cycle%2 == 1})
	if err != nil {
		die("New: %v", err)
	}
	if err := os.WriteFile(filepath.Join(base, "started"), nil, 0o600); err != nil {
		die("%v", err)
	}
	// The child ends by itself if nobody kills it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logMu sync.Mutex
	var wg sync.WaitGroup
	// Single-statement writes too, two per tenant beside the transactions:
	// contended, they run through group commit. Each is logged (as -txid)
	// once acknowledged, like the transactions.
	for _, id := range crashTenants {
		if _, err := p.ExecContext(sqliteproxy.WithOrgID(ctx, id), `CREATE TABLE IF NOT EXISTS solo (txid INTEGER PRIMARY KEY)`); err != nil {
			die("%s: create solo: %v", id, err)
		}
	}
	for g := 2 * len(crashTenants); g < 4*len(crashTenants); g++ {
		id := crashTenants[g%len(crashTenants)]
		tctx := sqliteproxy.WithOrgID(ctx, id)
		wg.Go(func() {
			for seq := 0; ctx.Err() == nil; seq++ {
				txid := crashTxid(cycle, g, seq, 1)
				if _, err := p.ExecContext(tctx, `INSERT INTO solo (txid) VALUES (?)`, txid); err != nil {
					if ctx.Err() != nil {
						return
					}
					die("%s: solo insert %d: %v", id, txid, err)
				}
				logMu.Lock()
				_, err := fmt.Fprintf(logf, "%s %d\n", id, -txid)
				if err == nil {
					err = logf.Sync()
				}
				logMu.Unlock()
				if err != nil {
					die("commit log: %v", err)
				}
			}
		})
	}
	for g := range 2 * len(crashTenants) {
		id := crashTenants[g%len(crashTenants)]
		tctx := sqliteproxy.WithOrgID(ctx, id)
		wg.Go(func() {
			for seq := 0; ctx.Err() == nil; seq++ {
				if seq%16 == 15 {
					// Readers check the invariant while writers go on.
					iv, err := readInvariant(tctx, p.DB)
					if err != nil && ctx.Err() == nil {
						die("%s: read invariant: %v", id, err)
					}
					if err == nil && !iv.ok() {
						die("%s: invariant broken in a live snapshot: %v", id, iv)
					}
					continue
				}
				k := 1 + rand.IntN(8)
				txid := crashTxid(cycle, g, seq, k)
				if err := writeTx(tctx, p.DB, txid, k); err != nil {
					if ctx.Err() != nil {
						return
					}
					die("%s: write tx %d: %v", id, txid, err)
				}
				// Acknowledge only once the commit log is on disk.
				logMu.Lock()
				_, err := fmt.Fprintf(logf, "%s %d\n", id, txid)
				if err == nil {
					err = logf.Sync()
				}
				logMu.Unlock()
				if err != nil {
					die("commit log: %v", err)
				}
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}

// TestCrash kills a writing (and sometimes migrating) child process with
// SIGKILL at random moments and checks every tenant after each kill.
func TestCrash(t *testing.T) {
	f := newFigures(t)
	kills := pick(15, 200)
	every := pick(3, 10) // one more migration every `every` kills
	base := t.TempDir()
	data := filepath.Join(base, "data")
	acked := map[string]map[int64]bool{} // tenant -> txids logged
	var logOffset int64
	var behind, unlogged, migrationKills int
	defer func() {
		f.note("%d tenant checks found the child's newest migration not yet applied (killed before or during it; ledger and schema always agreed)", behind)
		f.note("%d committed transactions were never acknowledged (killed between COMMIT and the commit log)", unlogged)
		f.note("%d kills in the first 80 ms of a run that added a migration", migrationKills)
	}()
	for cycle := range kills {
		nmig := 1 + cycle/every
		newMigration := cycle > 0 && cycle%every == 0
		os.Remove(filepath.Join(base, "started"))
		cmd := reexec(os.Args[0], "^TestCrashChild$",
			append(os.Environ(), crashBaseEnv+"="+base, crashMigEnv+"="+strconv.Itoa(nmig), crashCycleEnv+"="+strconv.Itoa(cycle)))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		started := false
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !started; time.Sleep(2 * time.Millisecond) {
			_, err := os.Stat(filepath.Join(base, "started"))
			started = err == nil
			select {
			case err := <-exited:
				b, _ := os.ReadFile(filepath.Join(base, "child.err"))
				t.Fatalf("cycle %d: child exited before being killed: %v: %s", cycle, err, b)
			default:
			}
		}
		if !started {
			cmd.Process.Kill()
			t.Fatalf("cycle %d: child did not start", cycle)
		}
		// Right after a start that adds a migration the child is migrating
		// (lazily, on each tenant's first access): kill early then, so that
		// some kills land inside the migration.
		var delay time.Duration
		if newMigration || rand.IntN(4) == 0 {
			delay = time.Duration(rand.IntN(80)) * time.Millisecond
			if newMigration {
				migrationKills++
			}
		} else {
			delay = time.Duration(50+rand.IntN(400)) * time.Millisecond
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(base, "child.err"))
			t.Fatalf("cycle %d: child exited before being killed: %v: %s", cycle, err, b)
		case <-time.After(delay):
		}
		cmd.Process.Signal(syscall.SIGKILL)
		err := <-exited
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			b, _ := os.ReadFile(filepath.Join(base, "child.err"))
			t.Fatalf("cycle %d: child ended with %v, not by our SIGKILL: %s", cycle, err, b)
		}
		f.cycles.Add(1)

		// Read what the child acknowledged.
		n, newAcks := readCommitLog(t, filepath.Join(base, "commits.log"), logOffset, acked)
		logOffset = n
		f.ops.Add(int64(newAcks))

		b, u := verifyCrashState(t, f, data, nmig, cycle, acked)
		behind += b
		unlogged += u
		if t.Failed() {
			t.Fatalf("cycle %d: stopping after the first broken state", cycle)
		}
	}
	solo := 0
	for _, txids := range acked {
		for txid := range txids {
			if txid < 0 {
				solo++
			}
		}
	}
	if solo == 0 {
		t.Error("no single-statement write was acknowledged: group commit was not exercised")
	}
	f.note("%d acknowledged single-statement writes (group commit) checked after the kills", solo)
	verifyNoLeaks(t)
}

// readCommitLog reads the complete lines of the commit log from offset on
// into acked and returns the new offset and the number of lines read.
func readCommitLog(t *testing.T, path string, offset int64, acked map[string]map[int64]bool) (int64, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return offset, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	b = b[offset:]
	end := strings.LastIndexByte(string(b), '\n') + 1 // a torn last line was never acknowledged
	sc := bufio.NewScanner(strings.NewReader(string(b[:end])))
	lines := 0
	for sc.Scan() {
		id, num, ok := strings.Cut(sc.Text(), " ")
		txid, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil {
			t.Fatalf("commit log line %q", sc.Text())
		}
		if acked[id] == nil {
			acked[id] = map[int64]bool{}
		}
		acked[id][txid] = true
		lines++
	}
	return offset + int64(end), lines
}

// verifyCrashState checks every tenant after a kill: the migration ledger
// agrees with the schema (no half-applied migration), and through a fresh
// Proxy: integrity_check, the counter invariant, every acknowledged txid.
// It returns the tenants found behind the child's migrations and the
// committed transactions of this cycle that were never acknowledged.
func verifyCrashState(t *testing.T, f *figures, data string, nmig, cycle int, acked map[string]map[int64]bool) (behind, unlogged int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// 1. Ledger against schema, on a plain connection, before any proxy
	// gets a chance to finish a migration.
	for _, id := range crashTenants {
		path := filepath.Join(data, id+".db")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if len(acked[id]) > 0 {
				f.fail(t, "cycle %d: %s has acknowledged transactions but no file", cycle, id)
			}
			continue
		}
		db := openDirect(t, path, "")
		var applied int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM _sqliteproxy_migrations`).Scan(&applied); err != nil {
			f.fail(t, "cycle %d: %s: read ledger: %v", cycle, id, err)
			db.Close()
			continue
		}
		cols := map[string]bool{} // columns of items and tables
		rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info('items') UNION ALL SELECT name FROM sqlite_schema`)
		if err != nil {
			f.fail(t, "cycle %d: %s: table_info: %v", cycle, id, err)
			db.Close()
			continue
		}
		for rows.Next() {
			var c string
			rows.Scan(&c)
			cols[c] = true
		}
		rows.Close()
		db.Close()
		if applied < nmig {
			behind++
		}
		for i := 2; i <= nmig; i++ {
			col, tab, idx := cols[fmt.Sprintf("m%d", i)], cols[fmt.Sprintf("work%d", i)], cols[fmt.Sprintf("items_m%d", i)]
			if want := i <= applied; col != want || tab != want || idx != want {
				f.fail(t, "cycle %d: %s: half-applied migration: ledger has %d; of migration %d: column %v, table %v, index %v",
					cycle, id, applied, i, col, tab, idx)
			}
		}
	}
	// 2. A fresh proxy (it also applies what the child did not get to).
	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: data, Migrations: crashMigrations(nmig)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, id := range crashTenants {
		if len(acked[id]) == 0 {
			continue
		}
		tc := sqliteproxy.WithOrgID(ctx, id)
		if err := integrity(tc, p.DB); err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
			continue
		}
		iv, err := readInvariant(tc, p.DB)
		if err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
			continue
		}
		if !iv.ok() {
			f.fail(t, "cycle %d: %s: invariant broken after kill: %v", cycle, id, iv)
			f.lost.Add(max(0, iv.counter-iv.items))
		}
		present := map[int64]bool{}
		// Single-statement writes (group commit) are logged as -txid.
		rows, err := p.QueryContext(tc, `SELECT DISTINCT txid FROM items UNION ALL SELECT -txid FROM solo`)
		if err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
			continue
		}
		for rows.Next() {
			var x int64
			rows.Scan(&x)
			present[x] = true
		}
		if err := rows.Close(); err != nil {
			f.fail(t, "cycle %d: %s: %v", cycle, id, err)
		}
		missing := 0
		for txid := range acked[id] {
			if !present[txid] {
				missing++
				if txid < 0 {
					f.lost.Add(1) // one single-statement write
				} else {
					f.lost.Add(txid & 0xf)
				}
				if missing <= 3 {
					f.fail(t, "cycle %d: %s: acknowledged transaction %d is gone", cycle, id, txid)
				}
			}
		}
		if missing > 3 {
			f.fail(t, "cycle %d: %s: %d acknowledged transactions are gone", cycle, id, missing)
		}
		for txid := range present {
			if txid > 0 && int(txid>>40) == cycle && !acked[id][txid] {
				unlogged++
			}
		}
	}
	return behind, unlogged
}
