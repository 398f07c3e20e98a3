package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// openKeep opens a proxy on dir with KeepWAL as keep, whatever
// SQLITEPROXY_TEST_KEEP_WAL says (newTestProxy's sweep).
func openKeep(t *testing.T, dir string, keep bool) *Proxy {
	t.Helper()
	return testkit.Open(t, "New", func() (*Proxy, error) {
		return New(Config{Dir: dir, Migrations: []string{eventsTable}, KeepWAL: keep})
	})
}

// sideSizes returns the sizes of p's -wal and -shm, -1 for one that does
// not exist.
func sideSizes(t *testing.T, p string) (wal, shm int64) {
	t.Helper()
	size := func(s string) int64 {
		fi, err := os.Lstat(p + s)
		if errors.Is(err, fs.ErrNotExist) {
			return -1
		}
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	return size("-wal"), size("-shm")
}

// TestKeepWAL_SideFiles: with KeepWAL a tenant's last close leaves its -wal
// (checkpointed and emptied) and its -shm; without it, neither. Every row
// written is in the file either way, and the next open (of either kind)
// reads them.
func TestKeepWAL_SideFiles(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "acme.db")
			total := 0
			for round, keepNext := range []bool{keep, keep, !keep} {
				p := openKeep(t, dir, keepNext)
				ctx := tctx("acme")
				// Enough pages that the -wal holds hundreds of KiB before
				// the close checkpoints it.
				tx, err := p.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 500 {
					if _, err := tx.ExecContext(ctx, `INSERT INTO events (tenant, n) VALUES (?, ?)`, fmt.Sprintf("%0200d", i), round); err != nil {
						t.Fatal(err)
					}
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				total += 500
				if wal, _ := sideSizes(t, path); wal < 100<<10 {
					t.Fatalf("round %d: -wal of %d bytes while open, want the transaction in it", round, wal)
				}
				if got := countRows(t, p, "acme"); got != total {
					t.Fatalf("round %d: %d rows, want %d", round, got, total)
				}
				if err := p.Close(); err != nil {
					t.Fatal(err)
				}
				wal, shm := sideSizes(t, path)
				switch {
				case keepNext && (wal != 0 || shm <= 0):
					t.Errorf("round %d, KeepWAL: after the close -wal %d bytes, -shm %d; want an empty -wal and the -shm", round, wal, shm)
				case !keepNext && (wal != -1 || shm != -1):
					t.Errorf("round %d, without KeepWAL: after the close -wal %d bytes, -shm %d; want neither", round, wal, shm)
				}
				// All of it is in the database file itself: read immutable,
				// which looks at no -wal.
				if got := fileCount(t, path+"?immutable=1", `SELECT count(*) FROM events`); got != total {
					t.Errorf("round %d: the file alone holds %d rows, want %d", round, got, total)
				}
			}
		})
	}
}

// ctimeOf returns p's status change time.
func ctimeOf(t *testing.T, p string) time.Time {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no status change time here")
	}
	return time.Unix(int64(st.Ctim.Sec), int64(st.Ctim.Nsec))
}

// TestKeepWAL_ClosedTenantsReadImmutable: a closed tenant whose empty -wal
// was kept is checked by MigrateAll and read by a fan-out as one without a
// -wal is: immutable, without opening its -shm (SQLite truncates the -shm
// of a file it opens first, which changes its status time), and with the
// right answers. A normal access does open it (the control: the check can
// see an open).
func TestKeepWAL_ClosedTenantsReadImmutable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ids := []string{"acme", "globex", "initech"}
	p := openKeep(t, dir, true)
	for i, id := range ids {
		for range i + 1 {
			if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	shm := func(id string) string { return filepath.Join(dir, id+".db-shm") }
	before := map[string]time.Time{}
	for _, id := range ids {
		before[id] = ctimeOf(t, shm(id))
	}
	// Wait until the file system's clock (coarse on Linux) has moved past
	// those times, so that an open now would show.
	probe := filepath.Join(t.TempDir(), "probe")
	i := 0
	waitFor(t, 10*time.Second, "the file system's clock to move", func() bool {
		i++
		if err := os.WriteFile(probe, []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
		last := ctimeOf(t, probe)
		for _, id := range ids {
			if !last.After(before[id]) {
				return false
			}
		}
		return true
	})
	untouched := func(stage string) {
		t.Helper()
		for _, id := range ids {
			if got := ctimeOf(t, shm(id)); !got.Equal(before[id]) {
				t.Errorf("%s opened %s's -shm (its status time moved from %v to %v)", stage, id, before[id], got)
			}
			if wal, _ := sideSizes(t, filepath.Join(dir, id+".db")); wal != 0 {
				t.Errorf("after %s %s's -wal is %d bytes, want the empty one kept", stage, id, wal)
			}
		}
	}

	p = openKeep(t, dir, true)
	rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Migrated != 0 || rep.Tenants != len(ids) || len(rep.Failed) != 0 {
		t.Errorf("MigrateAll: %+v, want %d tenants examined, none migrated", rep, len(ids))
	}
	untouched("MigrateAll")

	got, err := fanCounts(t, p, WithFanOut(context.Background(), FanOutOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []fanRow{{"acme", 1}, {"globex", 2}, {"initech", 3}}; !slices.Equal(got, want) {
		t.Errorf("fan-out: %v, want %v", got, want)
	}
	untouched("a fan-out")

	if n := countRows(t, p, "acme"); n != 1 {
		t.Errorf("acme: %d rows, want 1", n)
	}
	if ctimeOf(t, shm("acme")).Equal(before["acme"]) {
		t.Error("a normal open of acme left its -shm's status time as it was: the check above cannot see an open")
	}
}

// TestKeepWAL_FullDiskDeleteOfAnEmptyWALWithoutShm: a migration of a closed
// tenant runs on a connection in exclusive locking mode, which makes no
// -shm; with KeepWAL it leaves an empty -wal. The check a delete or restore
// falls back to on a full file system refused every -wal without a -shm
// ("free some space first"), when an operator deletes tenants to free some;
// for an empty one it now asks the database file's locks, which a
// connection in exclusive locking mode holds.
func TestKeepWAL_FullDiskDeleteOfAnEmptyWALWithoutShm(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := openKeep(t, dir, true)
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "acme.db")
	if err := os.Remove(path + "-shm"); err != nil {
		t.Fatal(err)
	}
	if wal, shm := sideSizes(t, path); wal != 0 || shm != -1 {
		t.Fatalf("-wal %d bytes, -shm %d: want an empty -wal alone", wal, shm)
	}
	p = openKeep(t, dir, true)
	gate := func() error {
		t.Helper()
		tn, err := p.c.r.tenant("acme")
		if err != nil {
			t.Fatal(err)
		}
		defer tn.unpin()
		leave, err := p.c.r.gateUnsettled(context.Background(), tn)
		if err == nil {
			leave()
		}
		return err
	}
	if err := gate(); err != nil {
		t.Errorf("an empty -wal without a -shm, nobody using it: %v", err)
	}
	if runtime.GOOS != "linux" {
		return
	}
	// The control: a connection in exclusive locking mode has it open.
	db := direct(t, dir, "acme")
	db.SetMaxOpenConns(1)
	for _, q := range []string{`PRAGMA locking_mode = EXCLUSIVE`, `INSERT INTO events (tenant) VALUES ('x')`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := gate(); err == nil || !strings.Contains(err.Error(), "open in another process") {
		t.Errorf("a connection in exclusive locking mode has it open: %v, want it refused", err)
	}
}
