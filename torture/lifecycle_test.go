package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// TestLifecycle runs DeleteTenant, BackupTenant and RestoreTenant on a
// tenant while other goroutines write it and read it: backups pass
// integrity_check and hold whole transactions, a restore leaves the tenant
// consistent (and holding everything the backup held), a delete leaves no
// file (with ExplicitCreate; without it, later writes re-create the
// tenant, as documented), and writers and readers see success or
// ErrTenantNotFound, nothing else.
func TestLifecycle(t *testing.T) {
	t.Run("ExplicitCreate", func(t *testing.T) { testLifecycle(t, true) })
	t.Run("AutoCreate", func(t *testing.T) { testLifecycle(t, false) })
	verifyNoLeaks(t)
}

func testLifecycle(t *testing.T, explicit bool) {
	f := newFigures(t)
	const id = "busy"
	cycles := pick(6, 60)
	dir := t.TempDir()
	backups := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{invariantSchema}, ExplicitCreate: explicit})
	bg := context.Background()
	if err := p.CreateTenant(bg, id); err != nil {
		t.Fatal(err)
	}
	ctx := sqliteproxytest.ContextTimeout(t, id, 5*time.Minute)

	// clean reports whether err is one a writer may see: ErrTenantNotFound
	// (it waited for a delete, or, with ExplicitCreate, came after one).
	clean := func(err error) bool { return errors.Is(err, sqliteproxy.ErrTenantNotFound) }

	// lastChange is when the last delete or restore returned: a write that
	// started after it and succeeded must be there at the end.
	var lastChange atomic.Int64
	lastChange.Store(time.Now().UnixNano())
	type ack struct {
		txid    int64
		started int64
	}
	var ackMu sync.Mutex
	var acks []ack

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	defer halt() // also when the main goroutine fails: no worker may outlive the test
	for g := range 4 {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				k := 1 + rand.IntN(6)
				txid := int64(g)<<32 | int64(seq)<<4 | int64(k)
				started := time.Now().UnixNano()
				err := writeTx(ctx, p.DB, txid, k)
				f.ops.Add(1)
				switch {
				case err == nil:
					ackMu.Lock()
					acks = append(acks, ack{txid, started})
					ackMu.Unlock()
				case clean(err):
					f.expected.Add(1)
					time.Sleep(time.Millisecond)
				default:
					f.fail(t, "writer %d: %v", g, err)
					return
				}
			}
		})
	}
	for g := range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				iv, err := readInvariant(ctx, p.DB)
				f.ops.Add(1)
				switch {
				case err == nil && !iv.ok():
					f.fail(t, "reader %d saw a broken state: %v", g, iv)
				case err == nil:
				case clean(err):
					f.expected.Add(1)
					time.Sleep(time.Millisecond)
				default:
					f.fail(t, "reader %d: %v", g, err)
					return
				}
			}
		})
	}
	// A second stream of backups, racing with the deletes and restores.
	var racingBackups, racingMissing atomic.Int64
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			dst := filepath.Join(backups, fmt.Sprintf("racing-%d.db", i%3))
			err := p.BackupTenant(bg, id, dst)
			f.ops.Add(1)
			switch {
			case err == nil:
				racingBackups.Add(1)
				verifyBackup(t, f, dst)
			case clean(err):
				racingMissing.Add(1)
				f.expected.Add(1)
				time.Sleep(2 * time.Millisecond)
			default:
				f.fail(t, "racing backup: %v", err)
				return
			}
		}
	})

	var recreated, restoredRows int64
	var saved []string
	for c := range cycles {
		time.Sleep(time.Duration(20+rand.IntN(40)) * time.Millisecond)
		if !explicit {
			// The writers re-create the tenant after the last cycle's
			// delete; on a busy machine that can take longer than the pause.
			deadline := time.Now().Add(time.Minute)
			for ok, _ := p.TenantExists(bg, id); !ok && time.Now().Before(deadline); ok, _ = p.TenantExists(bg, id) {
				time.Sleep(time.Millisecond)
			}
		}
		// Backup: integrity, whole transactions.
		dst := filepath.Join(backups, fmt.Sprintf("b%d.db", c))
		f.ops.Add(1)
		if err := p.BackupTenant(bg, id, dst); err != nil {
			f.fail(t, "cycle %d: backup: %v", c, err)
			continue
		}
		verifyBackup(t, f, dst)
		saved = append(saved, dst)

		// Restore an earlier backup (or this one): consistent, and holding
		// at least what the backup holds.
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
		src := saved[rand.IntN(len(saved))]
		want := txidsIn(t, src)
		f.ops.Add(1)
		if err := p.RestoreTenant(bg, id, src); err != nil {
			f.fail(t, "cycle %d: restore: %v", c, err)
			continue
		}
		lastChange.Store(time.Now().UnixNano())
		have, err := txidsVia(ctx, p)
		if err != nil {
			f.fail(t, "cycle %d: after restore: %v", c, err)
			continue
		}
		lacking := 0
		for x := range want {
			if !have[x] {
				lacking++
				f.lost.Add(x & 0xf)
			}
		}
		if lacking > 0 {
			f.fail(t, "cycle %d: the restored tenant lacks %d of the %d transactions of the backup", c, lacking, len(want))
		}
		restoredRows += int64(len(want))
		if iv, err := readInvariant(ctx, p.DB); err != nil || !iv.ok() {
			f.fail(t, "cycle %d: after restore: %v, %v", c, iv, err)
		}

		// Delete: the file is gone when it returns (with ExplicitCreate;
		// without, writers may re-create it at once).
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
		f.ops.Add(1)
		if err := p.DeleteTenant(bg, id); err != nil {
			f.fail(t, "cycle %d: delete: %v", c, err)
			continue
		}
		lastChange.Store(time.Now().UnixNano())
		_, statErr := os.Stat(filepath.Join(dir, id+".db"))
		if explicit {
			if statErr == nil {
				f.fail(t, "cycle %d: the tenant file exists after DeleteTenant returned, with ExplicitCreate", c)
			}
			if ok, err := p.TenantExists(bg, id); ok || err != nil {
				f.fail(t, "cycle %d: TenantExists after delete: %v, %v", c, ok, err)
			}
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // writers get ErrTenantNotFound meanwhile
			f.ops.Add(1)
			if err := p.CreateTenant(bg, id); err != nil {
				f.fail(t, "cycle %d: create after delete: %v", c, err)
			}
		} else if statErr == nil {
			recreated++
		}
		f.cycles.Add(1)
	}
	halt()

	// The end state: intact, consistent, and every write that started
	// after the last delete or restore is there.
	if _, err := os.Stat(filepath.Join(dir, id+".db")); err != nil {
		if err := p.CreateTenant(bg, id); err != nil {
			f.fail(t, "end: %v", err)
		}
	}
	if err := integrity(ctx, p.DB); err != nil {
		f.fail(t, "end: %v", err)
	}
	if iv, err := readInvariant(ctx, p.DB); err != nil || !iv.ok() {
		f.fail(t, "end: %v, %v", iv, err)
	}
	have, err := txidsVia(ctx, p)
	if err != nil {
		f.fail(t, "end: %v", err)
	}
	var mustHave, missing int
	for _, a := range acks {
		if a.started > lastChange.Load() {
			mustHave++
			if !have[a.txid] {
				missing++
				f.lost.Add(a.txid & 0xf)
			}
		}
	}
	objects := 0
	for _, ts := range p.Stats().Tenants {
		if ts.ID == id {
			objects++
		}
	}
	if objects > 1 {
		f.fail(t, "DRIVER BUG (see TestDriverBug_StaleTenantObjectSurvivesDelete): Stats lists %q %d times: stale tenant objects with their own connections, which delete and restore do not drain", id, objects)
	}
	if missing > 0 {
		f.fail(t, "%d of the %d writes acknowledged after the last delete or restore are missing", missing, mustHave)
	}
	f.note("%d writes acknowledged; %d backups verified while writers ran (%d more racing: %d ok, %d ErrTenantNotFound); restores brought back %d transactions",
		len(acks), len(saved), racingBackups.Load()+racingMissing.Load(), racingBackups.Load(), racingMissing.Load(), restoredRows)
	if !explicit {
		f.note("after %d of %d deletes the file already existed again when DeleteTenant returned: writers waiting on the tenant re-create it (auto-create)", recreated, cycles)
	}
	p.Close()
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		for _, e := range entries {
			if e.Name()[0] == '.' && !proxyFile(e.Name()) {
				f.fail(t, "temporary file left: %s", e.Name())
			}
		}
	}
}

// verifyBackup opens a backup directly: integrity_check, the invariant,
// whole transactions.
func verifyBackup(t *testing.T, f *figures, path string) {
	t.Helper()
	db := openDirect(t, path, "&mode=ro")
	defer db.Close()
	ctx := context.Background()
	if err := integrity(ctx, db); err != nil {
		f.fail(t, "backup %s: %v", filepath.Base(path), err)
		return
	}
	iv, err := invariantIn(ctx, db)
	if err != nil {
		f.fail(t, "backup %s: %v", filepath.Base(path), err)
		return
	}
	if !iv.ok() {
		f.fail(t, "backup %s holds a partial transaction: %v", filepath.Base(path), iv)
	}
}

func txidsIn(t *testing.T, path string) map[int64]bool {
	t.Helper()
	db := openDirect(t, path, "&mode=ro")
	defer db.Close()
	rows, err := db.Query(`SELECT DISTINCT txid FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[int64]bool{}
	for rows.Next() {
		var x int64
		rows.Scan(&x)
		m[x] = true
	}
	return m
}

func txidsVia(ctx context.Context, p *sqliteproxy.Proxy) (map[int64]bool, error) {
	rows, err := p.QueryContext(ctx, `SELECT DISTINCT txid FROM items`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[int64]bool{}
	for rows.Next() {
		var x int64
		if err := rows.Scan(&x); err != nil {
			return nil, err
		}
		m[x] = true
	}
	return m, rows.Err()
}
