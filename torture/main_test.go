package torture

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-sqlite3"
)

// long selects the long budget (make torture); the default is the short
// one that `go test ./...` runs in CI.
var long = flag.Bool("torture.long", false, "run the long torture budget (minutes) instead of the short CI one")

// pick returns the short or the long value of a budget figure.
func pick[T any](short, lng T) T {
	if *long {
		return lng
	}
	return short
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	printSummary(os.Stdout)
	os.Exit(code)
}

// figures are what one test (or subtest) reports. Counters are atomic so
// that workers can add to them directly.
type figures struct {
	name     string
	start    time.Time
	cycles   atomic.Int64 // kills, restore rounds, fault scenarios...
	ops      atomic.Int64 // operations attempted
	errs     atomic.Int64 // unexpected errors: each is also a test failure
	expected atomic.Int64 // errors the scenario provokes on purpose (SQLITE_FULL, ErrTenantNotFound...)
	lost     atomic.Int64 // rows acknowledged (or that must exist) and missing
	mu       sync.Mutex
	notes    []string
	status   string
	elapsed  time.Duration
}

var registry struct {
	mu   sync.Mutex
	rows []*figures
}

// newFigures registers the figures of t; when t ends they are logged as a
// summary line and kept for the table TestMain prints.
func newFigures(t *testing.T) *figures {
	f := &figures{name: t.Name(), start: time.Now()}
	t.Cleanup(func() {
		f.elapsed = time.Since(f.start)
		switch {
		case t.Skipped():
			f.status = "SKIP"
		case t.Failed():
			f.status = "FAIL"
		default:
			f.status = "ok"
		}
		t.Logf("SUMMARY %s: %s", f.name, f.line())
		registry.mu.Lock()
		registry.rows = append(registry.rows, f)
		registry.mu.Unlock()
	})
	return f
}

// note adds a free-form observation to the summary.
func (f *figures) note(format string, args ...any) {
	f.mu.Lock()
	f.notes = append(f.notes, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

// fail counts an unexpected error and fails t.
func (f *figures) fail(t testing.TB, format string, args ...any) {
	t.Helper()
	f.errs.Add(1)
	t.Errorf(format, args...)
}

func (f *figures) notesText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.notes, "; ")
}

func (f *figures) line() string {
	return fmt.Sprintf("%s in %v: cycles %d, operations %d, errors %d, expected errors %d, rows lost %d; %s",
		f.status, f.elapsed.Round(time.Millisecond), f.cycles.Load(), f.ops.Load(), f.errs.Load(),
		f.expected.Load(), f.lost.Load(), f.notesText())
}

func printSummary(w *os.File) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if len(registry.rows) == 0 {
		return
	}
	budget := "short"
	if *long {
		budget = "long (-torture.long)"
	}
	fmt.Fprintf(w, "\ntorture summary, %s budget\n", budget)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "test\tstatus\tcycles\toperations\terrors\texpected errors\trows lost\ttime\t")
	for _, f := range registry.rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%v\t\n", f.name, f.status, f.cycles.Load(), f.ops.Load(),
			f.errs.Load(), f.expected.Load(), f.lost.Load(), f.elapsed.Round(100*time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, f := range registry.rows {
		if n := f.notesText(); n != "" {
			fmt.Fprintf(w, "  %s: %s\n", f.name, n)
		}
	}
	fmt.Fprintln(w)
}

// ---- shared helpers --------------------------------------------------------

// reexec returns a command that runs the test binary bin (os.Args[0], or
// a copy of it) again with only the tests matching run, more test flags
// args, and the environment env: how TestCrash starts its crash children
// (TestCrashChild) and TestFaults/ReadOnlyDirUnprivileged its child that
// runs TestFaults/ReadOnlyDir as an unprivileged user.
func reexec(bin, run string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, append([]string{"-test.run=" + run, "-test.count=1"}, args...)...)
	cmd.Env = env
	return cmd
}

// invariantSchema is the schema of the counter invariant: every
// transaction inserts k rows into items (all carrying its txid and k) and
// adds k to the counter, so counter.n == count(items) and every txid has
// exactly k rows, whatever happens.
const invariantSchema = `CREATE TABLE items (id INTEGER PRIMARY KEY, txid INTEGER NOT NULL, k INTEGER NOT NULL);
CREATE INDEX items_txid ON items (txid);
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO counter VALUES (1, 0)`

// writeTx runs one invariant transaction on the tenant of ctx: k item rows
// with txid, counter += k.
func writeTx(ctx context.Context, db *sql.DB, txid int64, k int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for range k {
		if _, err := tx.ExecContext(ctx, `INSERT INTO items (txid, k) VALUES (?, ?)`, txid, k); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE counter SET n = n + ? WHERE id = 1`, k); err != nil {
		return err
	}
	return tx.Commit()
}

// queryer is what checkInvariant needs: a *sql.DB, *sql.Tx or *sql.Conn.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// invariant is the state of the counter invariant in one snapshot.
type invariant struct {
	counter, items int64
	partial        int64 // txids whose row count is not their k
}

func (iv invariant) ok() bool { return iv.counter == iv.items && iv.partial == 0 }

func (iv invariant) String() string {
	return fmt.Sprintf("counter %d, items %d, partial transactions %d", iv.counter, iv.items, iv.partial)
}

// readInvariant reads the invariant in one read-only transaction.
func readInvariant(ctx context.Context, db *sql.DB) (invariant, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return invariant{}, err
	}
	defer tx.Rollback()
	return invariantIn(ctx, tx)
}

func invariantIn(ctx context.Context, q queryer) (invariant, error) {
	var iv invariant
	if err := q.QueryRowContext(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&iv.counter); err != nil {
		return iv, fmt.Errorf("read counter: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM items`).Scan(&iv.items); err != nil {
		return iv, fmt.Errorf("count items: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT txid FROM items GROUP BY txid
		HAVING count(*) != max(k) OR min(k) != max(k))`).Scan(&iv.partial); err != nil {
		return iv, fmt.Errorf("check transactions: %w", err)
	}
	return iv, nil
}

// integrity runs PRAGMA integrity_check and returns nil when it says "ok".
func integrity(ctx context.Context, q interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}) error {
	rows, err := q.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var msgs []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(msgs) != 1 || msgs[0] != "ok" {
		return fmt.Errorf("integrity_check: %q", msgs)
	}
	return nil
}

// openDirect opens a file with plain mattn/go-sqlite3 (no proxy).
func openDirect(t testing.TB, path string, params string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=10000"+params)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// sqliteCode returns the SQLite primary code of err, or -1.
func sqliteCode(err error) sqlite3.ErrNo {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

// isBusy reports SQLITE_BUSY or SQLITE_LOCKED.
func isBusy(err error) bool {
	c := sqliteCode(err)
	return c == sqlite3.ErrBusy || c == sqlite3.ErrLocked
}

// verifyNoLeaks fails the test if, after a grace period, goroutines of the
// driver or of mattn/go-sqlite3 (or of this package's workers) are still
// running: what goleak would find, without a dependency outside the
// project's (mattn, OpenTelemetry, go-cmp).
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		leaked = leakedGoroutines()
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, g := range leaked {
		t.Errorf("leaked goroutine:\n%s", g)
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*M)") {
			continue // the caller, and the test framework's own goroutines
		}
		if strings.Contains(g, "github.com/sqliteproxy/sqliteproxy") || strings.Contains(g, "github.com/mattn/go-sqlite3") {
			out = append(out, g)
		}
	}
	return out
}
