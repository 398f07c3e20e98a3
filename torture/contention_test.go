package torture

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// TestContention runs 64 goroutines on one tenant: plain inserts,
// read-then-write transactions (read the counter, write it back plus one),
// slow readers that keep Rows open, and read-only transactions that read
// the same snapshot twice. Writers queue in Go, so nobody may see
// SQLITE_BUSY; nothing may fail; every count must be exact.
func TestContention(t *testing.T) {
	f := newFigures(t)
	const goroutines = 64
	dur := pick(3*time.Second, 30*time.Second)
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: t.TempDir(), Migrations: []string{invariantSchema,
		`CREATE TABLE log (id INTEGER PRIMARY KEY, g INTEGER NOT NULL, v TEXT NOT NULL)`}})
	ctx := sqliteproxytest.ContextTimeout(t, "hot", dur+2*time.Minute)
	// Some rows for the slow readers to walk.
	for i := range 20 {
		if err := writeTx(ctx, p.DB, int64(-1-i), 5); err != nil {
			t.Fatal(err)
		}
	}
	var inserts, rmw, busy atomic.Int64
	var maxLatency, sumLatency, count [4]atomic.Int64 // per kind; nanoseconds
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			kind := g % 4
			for i := 0; time.Now().Before(stop); i++ {
				start := time.Now()
				var err error
				switch kind {
				case 0: // insert
					_, err = p.ExecContext(ctx, `INSERT INTO log (g, v) VALUES (?, 'x')`, g)
					if err == nil {
						inserts.Add(1)
					}
				case 1: // read, then write what was read
					err = readModifyWrite(ctx, p.DB, int64(g)<<32|int64(i))
					if err == nil {
						rmw.Add(1)
					}
				case 2: // a slow reader: Rows held open while others write
					err = slowRead(ctx, p.DB, 40, 200*time.Microsecond)
				case 3: // a read-only transaction must see one snapshot
					err = snapshotRead(ctx, p.DB, 2*time.Millisecond)
				}
				d := int64(time.Since(start))
				if d > maxLatency[kind].Load() {
					maxLatency[kind].Store(d)
				}
				sumLatency[kind].Add(d)
				count[kind].Add(1)
				f.ops.Add(1)
				if err != nil {
					if isBusy(err) {
						busy.Add(1)
					}
					f.fail(t, "goroutine %d (kind %d): %v", g, kind, err)
					return
				}
			}
		})
	}
	wg.Wait()
	f.cycles.Add(1)

	var logRows int64
	if err := p.QueryRowContext(ctx, `SELECT count(*) FROM log`).Scan(&logRows); err != nil {
		t.Fatal(err)
	}
	if logRows != inserts.Load() {
		f.lost.Add(inserts.Load() - logRows)
		f.fail(t, "log has %d rows, %d inserts succeeded", logRows, inserts.Load())
	}
	iv, err := readInvariant(ctx, p.DB)
	if err != nil {
		t.Fatal(err)
	}
	if want := 100 + rmw.Load(); !iv.ok() || iv.counter != want {
		f.lost.Add(want - iv.items)
		f.fail(t, "after %d read-modify-write transactions: %v (want counter %d)", rmw.Load(), iv, want)
	}
	if err := integrity(ctx, p.DB); err != nil {
		f.fail(t, "%v", err)
	}
	if busy.Load() > 0 {
		f.fail(t, "%d SQLITE_BUSY errors", busy.Load())
	}
	st := p.Stats()
	lat := ""
	for k, name := range []string{"insert", "read-modify-write tx", "slow read", "snapshot read"} {
		mean := time.Duration(0)
		if n := count[k].Load(); n > 0 {
			mean = time.Duration(sumLatency[k].Load() / n)
		}
		lat += fmt.Sprintf("%s %d (mean %v, max %v), ", name, count[k].Load(), mean.Round(time.Microsecond),
			time.Duration(maxLatency[k].Load()).Round(time.Millisecond))
	}
	f.note("%sSQLITE_BUSY %d; Stats.Waits %d", lat, busy.Load(), st.Waits)
	p.Close()
	verifyNoLeaks(t)
}

// readModifyWrite reads the counter, then writes back what it read plus
// one (a lost update if two such transactions interleaved), with a row
// in items so that the invariant holds.
func readModifyWrite(ctx context.Context, db *sql.DB, txid int64) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int64
	if err := tx.QueryRowContext(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO items (txid, k) VALUES (?, 1)`, txid); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE counter SET n = ? WHERE id = 1`, n+1); err != nil {
		return err
	}
	return tx.Commit()
}

// slowRead walks up to n rows of items, sleeping between rows.
func slowRead(ctx context.Context, db *sql.DB, n int, pause time.Duration) error {
	rows, err := db.QueryContext(ctx, `SELECT id, txid FROM items ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for i := 0; i < n && rows.Next(); i++ {
		var id, txid int64
		if err := rows.Scan(&id, &txid); err != nil {
			return err
		}
		time.Sleep(pause)
	}
	return rows.Close()
}

// snapshotRead reads the invariant twice in one read-only transaction,
// with a pause between: both reads must agree, and hold the invariant.
func snapshotRead(ctx context.Context, db *sql.DB, pause time.Duration) error {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	a, err := invariantIn(ctx, tx)
	if err != nil {
		return err
	}
	time.Sleep(pause)
	b, err := invariantIn(ctx, tx)
	if err != nil {
		return err
	}
	if a != b || !a.ok() {
		return &snapshotError{a, b}
	}
	return tx.Commit()
}

type snapshotError struct{ a, b invariant }

func (e *snapshotError) Error() string {
	return "read-only transaction saw two states: " + e.a.String() + " then " + e.b.String()
}
