package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// setWALBound lowers walbound.go's knobs for one test.
func setWALBound(t *testing.T, every uint32, limit int64, wait, retry time.Duration) {
	oe, ol, ow, or := walCheckEvery, walLimit, walWait, walRetry
	walCheckEvery, walLimit, walWait, walRetry = every, limit, wait, retry
	t.Cleanup(func() { walCheckEvery, walLimit, walWait, walRetry = oe, ol, ow, or })
}

func walSize(t *testing.T, dir, id string) int64 {
	fi, err := os.Stat(filepath.Join(dir, id+".db-wal"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Error(err)
		return 0
	}
	return fi.Size()
}

const blobsTable = `CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB NOT NULL)`

// readWithoutPause keeps n readers scanning tenant id's blobs until stop is
// closed, so that some reader always holds an older snapshot, and returns a
// wait for them that reports their first error.
func readWithoutPause(ctx context.Context, p *Proxy, n int, stop <-chan struct{}) func() error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var c, sum sql.NullInt64
				if err := p.QueryRowContext(ctx, `SELECT count(*), sum(length(v)) FROM blobs`).Scan(&c, &sum); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	return func() error {
		wg.Wait()
		close(errs)
		return <-errs
	}
}

// A tenant read and written without pause: SQLite's own checkpoints never
// finish (a reader always holds an older snapshot) and its WAL grows with
// every write; the writer's check-in truncates it past walLimit.
func TestWALBoundedUnderReaders(t *testing.T) {
	const limit = 512 << 10
	setWALBound(t, 8, limit, 5*time.Second, time.Millisecond)
	dir := t.TempDir()
	// A writer waits for another's checkpoint (up to walWait) on top of
	// its own turn: BusyTimeout well above it.
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{blobsTable}, BusyTimeout: time.Minute})
	ctx := tctx("acme")
	stop := make(chan struct{})
	wait := readWithoutPause(ctx, p, 4, stop)

	var most atomic.Int64
	var wg sync.WaitGroup
	blob := make([]byte, 4<<10)
	for range 2 {
		wg.Go(func() {
			for range 1024 { // 8 MiB in all
				if _, err := p.ExecContext(ctx, `INSERT INTO blobs (v) VALUES (?)`, blob); err != nil {
					t.Error(err)
					return
				}
				n := walSize(t, dir, "acme")
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	// Between two looks: walCheckEvery commits of ~3 pages each, and the
	// frames an automatic checkpoint could not yet copy.
	if n := most.Load(); n > 4*limit {
		t.Errorf("the -wal reached %d bytes; want at most %d", n, 4*limit)
	}
	if got := queryInt(t, p, ctx, `SELECT count(*) FROM blobs`); got != 2048 {
		t.Errorf("%d rows; want 2048", got)
	}
}

// A reader that keeps its snapshot (a long report) holds the truncation up;
// the writes go on meanwhile, each waiting at most walWait per walRetry,
// and once it ends the WAL is truncated again.
func TestWALBoundWaitsForLongReader(t *testing.T) {
	const limit = 256 << 10
	setWALBound(t, 4, limit, 20*time.Millisecond, 50*time.Millisecond)
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{blobsTable}})
	ctx := tctx("acme")
	blob := make([]byte, 4<<10)
	insert := func(n int) {
		t.Helper()
		for range n {
			if _, err := p.ExecContext(ctx, `INSERT INTO blobs (v) VALUES (?)`, blob); err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(10)

	report, err := p.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer report.Rollback()
	if got := queryInt(t, report, ctx, `SELECT count(*) FROM blobs`); got != 10 {
		t.Fatalf("the report sees %d rows; want 10", got)
	}
	insert(400) // ~1.6 MiB: past the limit, and the report holds its snapshot
	if n := walSize(t, dir, "acme"); n <= limit {
		t.Fatalf("the -wal has %d bytes while a reader holds the first snapshot; want more than %d", n, limit)
	}
	if got := queryInt(t, report, ctx, `SELECT count(*) FROM blobs`); got != 10 {
		t.Fatalf("the report sees %d rows; want still 10", got)
	}
	if err := report.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a write after the report to truncate the -wal", func() bool {
		insert(1)
		return walSize(t, dir, "acme") < limit
	})
	if got := queryInt(t, p, ctx, `SELECT count(*) FROM blobs`); got < 411 {
		t.Errorf("%d rows; want at least 411", got)
	}
}
