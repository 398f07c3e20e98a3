package sqliteproxy

// Differential tests: every script here runs on a plain mattn/go-sqlite3
// *sql.DB and through the proxy, and the two transcripts (values with their
// Go types, results, column metadata and errors, all rendered as text) must
// be identical. Each script runs three ways (compareMode, one subtest
// each), as toolkits reach a driver: statements run directly, through
// PrepareContext and a Stmt, and inside transactions.
//
// Set SQLITEPROXY_COMPARE_DUMP=1 to log both transcripts.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// ---------------------------------------------------------------------------
// Transcript machinery

// recorder runs the statements of a script and writes down what it sees.
type recorder struct {
	t    testing.TB
	ctx  context.Context
	db   *sql.DB
	mode compareMode // how the helpers below run each step
	out  []string    // the transcript: one line per observation
}

// compareMode is one of the ways a toolkit reaches the driver.
// compareDrivers runs every script each way, on mattn and on the proxy.
// The mode applies to the steps a script runs through the recorder's
// helpers (setup, exec, execErr, query, queryRow, queryFunc, prepare);
// what a script does with a *sql.Stmt, *sql.Rows or *sql.Tx it obtained
// itself runs as written in every mode.
type compareMode int

const (
	// modeDirect runs each step as written: ExecContext, QueryContext or
	// QueryRowContext on the DB, a Conn or a Tx.
	modeDirect compareMode = iota
	// modePrepared runs each step as GORM's PrepareStmt and sqlx's
	// Preparex do: PrepareContext on the same DB, Conn or Tx, then
	// Stmt.ExecContext/QueryContext/QueryRowContext, then Stmt.Close. A
	// Stmt runs only the first statement of a text, on both drivers.
	modePrepared
	// modeTx runs each step on the DB inside its own BeginTx … Commit (or
	// Rollback when the step fails), as toolkits that wrap every operation
	// in a transaction do. Steps on a Conn or a Tx run as written: a Tx is
	// one already, and a Conn may be inside a transaction the script began
	// with Exec("BEGIN"). Texts that cannot run in a transaction run
	// outside one: see outsideTx.
	modeTx
	// modeContended runs each step as modeDirect does, while on the proxy
	// side goroutines keep inserting into a table of their own in the same
	// tenant (contenders), so that the script's autocommit writes through
	// the DB wait for the writer and run in group-commit batches with
	// theirs (groupcommit.go). Both sides have the contenders' table; the
	// transcripts must still be identical: what group commit changes must
	// not be observable.
	modeContended
)

var compareModes = []compareMode{modeDirect, modePrepared, modeTx, modeContended}

func (m compareMode) String() string {
	return [...]string{"direct", "prepared", "tx", "contended"}[m]
}

// outsideTx reports whether modeTx runs query outside a transaction:
// transaction control (BEGIN, COMMIT, END, ROLLBACK, and SAVEPOINT and
// RELEASE, which scripts use as transactions of their own; inside ours
// they would nest, end it, or be ended by its Commit), VACUUM, ATTACH and
// DETACH (SQLite refuses them in a transaction), and PRAGMA (journal_mode
// cannot change in a transaction and foreign_keys is a no-op there;
// toolkits set pragmas outside transactions).
func outsideTx(query string) bool {
	switch sqlscan.Scan(query).Keyword {
	case "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "VACUUM", "ATTACH", "DETACH", "PRAGMA":
		return true
	}
	return false
}

// step is one statement text bound to where the recorder's mode runs it.
type step struct {
	exec     func(args ...any) (sql.Result, error)
	query    func(args ...any) (*sql.Rows, error)
	queryRow func(args ...any) *sql.Row
	end      func(failed error) // closes what begin opened
}

// begin binds query to q (a *sql.DB, *sql.Conn or *sql.Tx) the recorder's
// way. The error is the PrepareContext's or BeginTx's.
func (r *recorder) begin(label string, q any, query string) (step, error) {
	ctx := r.ctx
	switch r.mode {
	case modePrepared:
		st, err := q.(preparer).PrepareContext(ctx, query)
		if err != nil {
			return step{}, err
		}
		if sqlscan.Scan(query).Keyword == "" {
			// A text with no statement ("", ";", a comment) prepares to
			// SQLite's NULL statement, which mattn v1.14.53's SQLiteStmt
			// Exec and Query hand to its C helpers unchecked: SIGSEGV, on
			// mattn and on the proxy alike (both run mattn's Stmt). Such a
			// step is prepared (a failure is the step's) and closed, then
			// runs as written.
			st.Close()
			return plainStep(ctx, q, query), nil
		}
		return step{
			exec:     func(args ...any) (sql.Result, error) { return st.ExecContext(ctx, args...) },
			query:    func(args ...any) (*sql.Rows, error) { return st.QueryContext(ctx, args...) },
			queryRow: func(args ...any) *sql.Row { return st.QueryRowContext(ctx, args...) },
			end: func(error) {
				if err := st.Close(); err != nil {
					r.note(label+" Stmt.Close", errv{err})
				}
			},
		}, nil
	case modeTx:
		db, ok := q.(*sql.DB)
		if !ok || outsideTx(query) {
			break
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return step{}, err
		}
		s := plainStep(ctx, tx, query)
		s.end = func(failed error) {
			if failed != nil {
				if err := tx.Rollback(); err != nil {
					r.note(label+" Rollback", errv{err})
				}
			} else if err := tx.Commit(); err != nil {
				r.note(label+" Commit", errv{err})
			}
		}
		return s, nil
	}
	return plainStep(ctx, q, query), nil
}

// plainStep runs query on q as written.
func plainStep(ctx context.Context, q any, query string) step {
	return step{
		exec:     func(args ...any) (sql.Result, error) { return q.(execer).ExecContext(ctx, query, args...) },
		query:    func(args ...any) (*sql.Rows, error) { return q.(queryer).QueryContext(ctx, query, args...) },
		queryRow: func(args ...any) *sql.Row { return q.(rowQueryer).QueryRowContext(ctx, query, args...) },
		end:      func(error) {},
	}
}

// do runs one step: fn uses s and returns the step's first error. A
// failure to prepare or to begin is noted under label instead.
func (r *recorder) do(label string, q any, query string, fn func(s step) error) {
	if r.mode == modeContended && sessionCounters.MatchString(query) {
		// Another goroutine's statements on the writer set these: not
		// comparable under contention (see contendedResult).
		r.note(label, "not compared under contention")
		return
	}
	s, err := r.begin(label, q, query)
	if err != nil {
		r.note(label, errv{err})
		return
	}
	s.end(fn(s))
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

type preparer interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

type rowQueryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// errv marks a value as an error slot: nil renders as "err=nil".
type errv struct{ err error }

// note appends one line: label, then each value rendered with its type.
func (r *recorder) note(label string, vals ...any) {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = describe(v)
	}
	r.out = append(r.out, label+" => "+strings.Join(parts, " | "))
}

// setup runs a statement that the script relies on; failing is a test bug.
func (r *recorder) setup(query string, args ...any) {
	r.t.Helper()
	s, err := r.begin("setup", r.db, query)
	if err == nil {
		_, err = s.exec(args...)
		s.end(err)
	}
	if err != nil {
		r.t.Fatalf("setup %q (%s): %v", query, r.mode, err)
	}
}

// exec records the result (LastInsertId, RowsAffected) or error of an Exec.
func (r *recorder) exec(label string, q execer, query string, args ...any) {
	r.do(label, q, query, func(s step) error {
		res, err := s.exec(args...)
		r.resultOf(label, query, res, err)
		return err
	})
}

// resultOf is result for an Exec of query: in modeContended it records
// only what SQLite defines for the statement itself (contendedResult).
func (r *recorder) resultOf(label, query string, res sql.Result, err error) {
	if r.mode == modeContended && err == nil {
		res = contendedResult{res, sqlscan.Scan(query), strings.Contains(strings.ToUpper(query), "ON CONFLICT")}
	}
	r.result(label, res, err)
}

// sessionCounters matches SQL reading a connection's counters of the last
// statement, which modeContended does not compare.
var sessionCounters = regexp.MustCompile(`(?i)\b(last_insert_rowid|changes|total_changes)\s*\(`)

// contendedResult is an Exec's result in modeContended, where another
// goroutine's statements run on the same writer between the script's: it
// reports only the values SQLite defines for the statement itself.
// LastInsertId is last_insert_rowid() and RowsAffected changes() of the
// connection, which a statement that inserts no row (or changes none)
// leaves as the connection's previous statement set them: under
// contention, a contender's (with or without group commit, and on a mattn
// pool alike). Those are recorded as 0 (LastInsertId of an upsert too: it
// may have updated instead); so is everything of a
// multi-statement text, and of INSERT … RETURNING, which mattn's Exec
// leaves unfinished (so changes() is the previous statement's).
type contendedResult struct {
	sql.Result
	info   sqlscan.Info
	upsert bool // an upsert that updates inserts no row
}

func (c contendedResult) LastInsertId() (int64, error) {
	id, err := c.Result.LastInsertId()
	if n, _ := c.Result.RowsAffected(); c.info.Multi || c.info.Returning || n == 0 || (c.info.Keyword != "INSERT" && c.info.Keyword != "REPLACE") || c.upsert {
		id = 0
	}
	return id, err
}

func (c contendedResult) RowsAffected() (int64, error) {
	n, err := c.Result.RowsAffected()
	switch {
	case c.info.Multi, c.info.Returning:
		n = 0
	case c.info.Keyword == "INSERT", c.info.Keyword == "REPLACE", c.info.Keyword == "UPDATE", c.info.Keyword == "DELETE":
	default:
		n = 0
	}
	return n, err
}

func (r *recorder) result(label string, res sql.Result, err error) {
	if err != nil {
		r.note(label, errv{err})
		return
	}
	id, idErr := res.LastInsertId()
	n, nErr := res.RowsAffected()
	r.note(label, "LastInsertId", id, errv{idErr}, "RowsAffected", n, errv{nErr})
}

// execErr records only the error of an Exec: for statements that change
// no rows, whose LastInsertId and RowsAffected are the stale values of
// whichever pooled connection ran them.
func (r *recorder) execErr(label string, q execer, query string, args ...any) {
	r.do(label, q, query, func(s step) error {
		_, err := s.exec(args...)
		r.note(label, errv{err})
		return err
	})
}

// prepare records only the error of a PrepareContext, then closes the
// Stmt. It is a prepare in every mode; modeTx prepares within a
// transaction.
func (r *recorder) prepare(label string, q preparer, query string) {
	fn := func(q preparer) error {
		st, err := q.PrepareContext(r.ctx, query)
		if err == nil {
			err = st.Close()
		}
		r.note(label, errv{err})
		return err
	}
	db, ok := q.(*sql.DB)
	if r.mode != modeTx || !ok || outsideTx(query) {
		fn(q)
		return
	}
	tx, err := db.BeginTx(r.ctx, nil)
	if err != nil {
		r.note(label, errv{err})
		return
	}
	fn(tx)
	if err := tx.Rollback(); err != nil {
		r.note(label+" Rollback", errv{err})
	}
}

// query records the columns and every row (scanned into any) of a Query.
func (r *recorder) query(label string, q queryer, query string, args ...any) {
	r.queryFunc(label, q, query, args, r.rows)
}

// queryFunc runs a Query step and hands its rows (or error) to read, which
// must close them and return the first error it saw.
func (r *recorder) queryFunc(label string, q queryer, query string, args []any, read func(label string, rows *sql.Rows, err error) error) {
	r.do(label, q, query, func(s step) error {
		rows, err := s.query(args...)
		return read(label, rows, err)
	})
}

func (r *recorder) rows(label string, rows *sql.Rows, err error) error {
	return r.rowsN(label, rows, err, -1)
}

// rowsN reads at most limit rows (all when limit < 0), then closes. It
// returns the first error.
func (r *recorder) rowsN(label string, rows *sql.Rows, err error, limit int) error {
	if err != nil {
		r.note(label, errv{err})
		return err
	}
	var first error
	cols, err := rows.Columns()
	first = firstErr(first, err)
	r.note(label+" columns", cols, errv{err})
	for i := 0; i != limit && rows.Next(); i++ {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for j := range vals {
			ptrs[j] = &vals[j]
		}
		err := rows.Scan(ptrs...)
		first = firstErr(first, err)
		r.note(fmt.Sprintf("%s row %d", label, i), append(vals, errv{err})...)
	}
	err, closeErr := rows.Err(), rows.Close()
	r.note(label+" end", "Err", errv{err}, "Close", errv{closeErr})
	return firstErr(first, err, closeErr)
}

// firstErr returns the first non-nil error.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// queryRow records QueryRow(...).Scan into len(dest) values of any.
func (r *recorder) queryRow(label string, q rowQueryer, ncol int, query string, args ...any) {
	r.do(label, q, query, func(s step) error {
		return r.row(label, s.queryRow(args...), ncol)
	})
}

func (r *recorder) row(label string, row *sql.Row, ncol int) error {
	vals := make([]any, ncol)
	ptrs := make([]any, ncol)
	for j := range vals {
		ptrs[j] = &vals[j]
	}
	err := row.Scan(ptrs...)
	r.note(label, append(vals, errv{err})...)
	return err
}

// columnTypes records every ColumnType accessor, then the rows.
func (r *recorder) columnTypes(label string, rows *sql.Rows, err error) error {
	if err != nil {
		r.note(label, errv{err})
		return err
	}
	cts, err := rows.ColumnTypes()
	r.note(label+" ColumnTypes", len(cts), errv{err})
	for i, ct := range cts {
		nullable, nullOK := ct.Nullable()
		length, lenOK := ct.Length()
		prec, scale, decOK := ct.DecimalSize()
		scan := "<nil>"
		if st := ct.ScanType(); st != nil {
			scan = st.String()
		}
		r.note(fmt.Sprintf("%s col %d", label, i),
			"Name", ct.Name(), "DatabaseTypeName", ct.DatabaseTypeName(), "ScanType", scan,
			"Nullable", nullable, nullOK, "Length", length, lenOK, "DecimalSize", prec, scale, decOK)
	}
	return firstErr(err, r.rows(label, rows, nil))
}

// describe renders v with its dynamic type, precisely enough that two
// renderings are equal only if the values are (time zones included).
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "nil"
	case errv:
		return describeErr(x.err)
	case time.Time:
		return describeTime(x)
	case sql.NullTime:
		return fmt.Sprintf("sql.NullTime{Valid:%v Time:%s}", x.Valid, describeTime(x.Time))
	case *string:
		if x == nil {
			return "(*string)(nil)"
		}
		return fmt.Sprintf("*string(%q)", *x)
	case []byte:
		return fmt.Sprintf("%#v", x) // tells []byte(nil) from []byte{}
	case string:
		return fmt.Sprintf("%q", x)
	case []string:
		return fmt.Sprintf("%#v", x)
	case float64:
		return fmt.Sprintf("float64(%v)", x)
	}
	if reflect.TypeOf(v).Kind() == reflect.Struct {
		return fmt.Sprintf("%#v", v)
	}
	return fmt.Sprintf("%T(%#v)", v, v)
}

func describeTime(t time.Time) string {
	name, off := t.Zone()
	return fmt.Sprintf("time.Time(%s zone=%q/%d loc=%q)",
		t.Format("2006-01-02 15:04:05.999999999 -07:00"), name, off, t.Location().String())
}

// describeErr renders an error's type and text, and its SQLite codes when
// errors.As finds a sqlite3.Error in it.
func describeErr(err error) string {
	if err == nil {
		return "err=nil"
	}
	s := fmt.Sprintf("err %T %q", err, err.Error())
	var se sqlite3.Error
	if errors.As(err, &se) {
		s += fmt.Sprintf(" sqlite3.Error{Code:%d ExtendedCode:%d SystemErrno:%d}", se.Code, se.ExtendedCode, se.SystemErrno)
	}
	return s
}

// openDirect opens mattn/go-sqlite3 on a fresh file: the reference.
func openDirect(tb testing.TB) *sql.DB {
	tb.Helper()
	db, err := sql.Open("sqlite3", filepath.Join(tb.TempDir(), "direct.db")+"?_journal_mode=WAL")
	if err != nil {
		tb.Fatalf("sql.Open sqlite3: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// compareOpts configures compareDrivers.
type compareOpts struct {
	cfg Config
	// directSetup runs on the direct database before the script: what the
	// proxy does through cfg.Migrations.
	directSetup []string
	// intended maps a line of the mattn transcript to the line the proxy
	// gives instead, by design. Every other line must be identical.
	intended map[string]string
	// intendedIn replaces intended for the modes it names (a difference
	// that comes from which connection runs a step can vanish when every
	// step is a transaction, on the writer).
	intendedIn map[compareMode]map[string]string
	// mustBatch: in modeContended, some of the script's statements must
	// have run in group-commit batches (a script with autocommit writes
	// through the DB).
	mustBatch bool
	// timeout, if set, bounds each side's script (its context), for
	// scripts that could otherwise wait forever.
	timeout time.Duration
}

// compareDrivers runs script on mattn directly and through the proxy (as
// tenant "acme"), once in each compareMode (a subtest each, on fresh
// databases), and fails the test if the transcripts differ. It returns the
// modeDirect transcripts.
func compareDrivers(t *testing.T, o compareOpts, script func(r *recorder)) (mattn, proxy []string) {
	t.Helper()
	for _, mode := range compareModes {
		t.Run(mode.String(), func(t *testing.T) {
			m, p := compareDriversIn(t, o, mode, script)
			if mode == modeDirect {
				mattn, proxy = m, p
			}
		})
	}
	return mattn, proxy
}

// compareDriversIn is compareDrivers in one mode.
func compareDriversIn(t *testing.T, o compareOpts, mode compareMode, script func(r *recorder)) (mattn, proxy []string) {
	t.Helper()
	intended := o.intended
	if m, ok := o.intendedIn[mode]; ok {
		intended = m
	}
	direct := openDirect(t)
	cfg := o.cfg
	directSetup := o.directSetup
	if mode == modeContended {
		cfg.Migrations = append(slices.Clip(cfg.Migrations), contendTable)
		directSetup = append(slices.Clip(directSetup), contendTable)
	}
	for _, q := range directSetup {
		if _, err := direct.Exec(q); err != nil {
			t.Fatalf("direct setup %q: %v", q, err)
		}
	}
	run := func(ctx context.Context, db *sql.DB) []string {
		if o.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.timeout)
			defer cancel()
		}
		r := &recorder{t: t, ctx: ctx, db: db, mode: mode}
		script(r)
		return r.out
	}
	if mode == modeContended {
		// The reference is the proxy alone, whose transcript the other
		// modes compare with mattn's: the question here is only whether
		// contention (and so group commit) changes what a script sees.
		mattn = run(tctx("acme"), newTestProxy(t, cfg).DB)
		intended = nil
		// Whether a statement of a short script meets a batch is up to
		// the scheduler (CI once saw none with 77 contender inserts under
		// -race): a script that batched nothing runs again, on fresh
		// files, up to three times; every run's transcript must match.
		for attempt := 1; ; attempt++ {
			p := newTestProxy(t, cfg)
			stop := contend(t, p, "acme")
			proxy = run(tctx("acme"), p.DB)
			n, batched := stop()
			if n == 0 {
				t.Fatal("the contenders wrote nothing: no contention")
			}
			t.Logf("run %d: %d contender inserts; %d of the script's statements ran in group-commit batches", attempt, n, batched)
			if !o.mustBatch || batched > 0 {
				break
			}
			if attempt == 3 {
				t.Error("none of the script's statements ran in a group-commit batch, three runs")
				break
			}
			if diff := cmp.Diff(mattn, proxy); diff != "" {
				break // reported below
			}
		}
	} else {
		mattn = run(context.Background(), direct)
		proxy = run(tctx("acme"), newTestProxy(t, cfg).DB)
	}

	if os.Getenv("SQLITEPROXY_COMPARE_DUMP") != "" {
		t.Logf("mattn transcript:\n%s", strings.Join(mattn, "\n"))
		t.Logf("proxy transcript:\n%s", strings.Join(proxy, "\n"))
	}
	want := mattn
	if len(intended) > 0 {
		want = make([]string, len(mattn))
		used := 0
		for i, l := range mattn {
			want[i] = l
			if sub, ok := intended[l]; ok {
				want[i] = sub
				used++
			}
		}
		if used != len(intended) {
			t.Errorf("only %d of the %d intended differences matched a line of the mattn transcript", used, len(intended))
		}
	}
	if diff := cmp.Diff(want, proxy); diff != "" {
		t.Errorf("proxy differs from mattn/go-sqlite3 (-mattn transcript, +proxy transcript):\n%s", diff)
	}
	if len(mattn) == 0 {
		t.Fatal("empty transcript")
	}
	return mattn, proxy
}

// contendTable is the contenders' table in modeContended.
const (
	contendTable  = `CREATE TABLE contend_gc (id INTEGER PRIMARY KEY, v INTEGER)`
	contendInsert = `INSERT INTO contend_gc (v) VALUES (1)`
)

// contend starts goroutines that insert into tenant id's contend_gc
// through p until the returned stop is called; stop returns how many
// inserts succeeded, and how many other statements ran in group-commit
// batches meanwhile. Errors are not failures (a script may close or lock
// the tenant): the contenders are there to keep the writer busy.
func contend(t *testing.T, p *Proxy, id string) (stop func() (n, batched int64)) {
	ctx, cancel := context.WithCancel(tctx(id))
	var ok, batched atomic.Int64
	hook := func(batch []*gcReq) {
		for _, r := range batch {
			if len(batch) > 1 && r.query != contendInsert {
				batched.Add(1)
			}
		}
	}
	batchHook.Store(&hook)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := p.ExecContext(ctx, contendInsert); err == nil {
					ok.Add(1)
				}
			}
		})
	}
	// The script starts once the contenders are writing.
	waitFor(t, 10*time.Second, "contenders writing", func() bool { return ok.Load() > 0 })
	return func() (int64, int64) {
		cancel()
		wg.Wait()
		batchHook.Store(nil)
		return ok.Load(), batched.Load()
	}
}

// mustContain guards against scripts that compare equal only because both
// sides failed: line must occur in the mattn transcript.
func mustContain(t *testing.T, transcript []string, line string) {
	t.Helper()
	for _, l := range transcript {
		if l == line {
			return
		}
	}
	t.Errorf("transcript lacks line %q", line)
}

// ---------------------------------------------------------------------------
// Values: column affinities × Go argument types × scan destinations

var (
	zoneEST  = time.FixedZone("EST", -5*3600)
	zoneAnon = time.FixedZone("", 5*3600+1800)
)

// valueCases are bound as ? arguments into every column of the vals table.
var valueCases = []struct {
	name string
	v    any
}{
	{"int64", int64(42)},
	{"int64 negative", int64(-1)},
	{"int64 zero", int64(0)},
	{"int64 max", int64(math.MaxInt64)},
	{"int64 min", int64(math.MinInt64)},
	{"int64 unix seconds", int64(1700000000)},
	{"int64 unix millis", int64(1700000000123)},
	{"int", 7},
	{"int32", int32(-3)},
	{"uint8", uint8(200)},
	{"uint64 high bit", uint64(1) << 63},
	{"float64", 3.25},
	{"float64 integral", 2.0},
	{"float64 tiny", 1e-300},
	{"float64 +Inf", math.Inf(1)},
	{"float64 -Inf", math.Inf(-1)},
	{"float64 NaN", math.NaN()},
	{"float32", float32(1.5)},
	{"string", "hello"},
	{"string empty", ""},
	{"string integer", "123"},
	{"string decimal", "12.50"},
	{"string exponent", "1e3"},
	{"string datetime", "2024-05-06 07:08:09"},
	{"string RFC3339 Z", "2024-05-06T07:08:09.5Z"},
	{"string date", "2024-05-06"},
	{"string not a time", "not a time"},
	{"string unicode", "héllo ✓"},
	{"string NUL", "a\x00b"},
	{"bytes", []byte("\x00\x01bin")},
	{"bytes empty", []byte{}},
	{"bytes nil", []byte(nil)},
	{"json.RawMessage", json.RawMessage(`{"k":1}`)},
	{"bool true", true},
	{"bool false", false},
	{"time UTC nanos", time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)},
	{"time EST nanos", time.Date(2024, 5, 6, 7, 8, 9, 120000000, zoneEST)},
	{"time +05:30 unnamed", time.Date(2023, 12, 31, 23, 59, 59, 0, zoneAnon)},
	{"time zero", time.Time{}},
	{"nil", nil},
	{"*int64", func() *int64 { v := int64(9); return &v }()},
	{"*int64 nil", (*int64)(nil)},
	{"NullString invalid", sql.NullString{}},
	{"NullInt64 valid", sql.NullInt64{Int64: 9, Valid: true}},
	{"NullTime valid", sql.NullTime{Time: time.Date(2020, 2, 29, 12, 0, 0, 1, time.UTC), Valid: true}},
	{"struct", struct{ X int }{1}},
}

const valsDDL = `CREATE TABLE vals (
	id INTEGER PRIMARY KEY,
	i INTEGER, r REAL, t TEXT, b BLOB, bo BOOLEAN,
	dt DATETIME, ts TIMESTAMP, d DATE, n NUMERIC, u
)`

var valsCols = []string{"i", "r", "t", "b", "bo", "dt", "ts", "d", "n", "u"}

// typedDests are the scan destinations tried on every cell.
var typedDests = []func() any{
	func() any { return new(any) },
	func() any { return new(sql.NullString) },
	func() any { return new(sql.NullInt64) },
	func() any { return new(sql.NullFloat64) },
	func() any { return new(sql.NullBool) },
	func() any { return new(sql.NullTime) },
	func() any { return new(*string) },
	func() any { return new(string) },
	func() any { return new(int64) },
	func() any { return new(float64) },
	func() any { return new(bool) },
	func() any { return new(time.Time) },
	func() any { return new([]byte) },
}

func TestCompare_Values(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(valsDDL)
		insert := "INSERT INTO vals (" + strings.Join(valsCols, ", ") + ") VALUES (?" + strings.Repeat(", ?", len(valsCols)-1) + ")"
		for _, c := range valueCases {
			args := make([]any, len(valsCols))
			for i := range args {
				args[i] = c.v
			}
			r.exec("insert "+c.name, r.db, insert, args...)
		}
		// Literals, not arguments.
		r.exec("insert literals", r.db, `INSERT INTO vals (`+strings.Join(valsCols, ", ")+`)
			VALUES (1, 1.0, 'x', x'ff00', 1, '2024-01-02 03:04:05.678+02:00', 1700000000.5, '2024-01-02', '0012', NULL)`)
		r.exec("insert NULLs", r.db, `INSERT INTO vals (id) VALUES (NULL)`)

		r.query("select *", r.db, "SELECT * FROM vals ORDER BY id")
		r.query("typeof", r.db, "SELECT id, "+typeofList(valsCols)+" FROM vals ORDER BY id")

		// Every cell into every destination type.
		for _, col := range valsCols {
			r.queryFunc("typed "+col, r.db, "SELECT "+col+" FROM vals ORDER BY id", nil, func(label string, rows *sql.Rows, err error) error {
				if err != nil {
					r.note(label, errv{err})
					return err
				}
				for n := 0; rows.Next(); n++ {
					for _, mk := range typedDests {
						dest := mk()
						err := rows.Scan(dest) // conversion errors are expected: not the step's
						r.note(fmt.Sprintf("%s row %d into %T", label, n, dest),
							reflect.ValueOf(dest).Elem().Interface(), errv{err})
					}
				}
				err, closeErr := rows.Err(), rows.Close()
				r.note(label+" end", errv{err}, errv{closeErr})
				return firstErr(err, closeErr)
			})
		}
	})
	mustContain(t, mattn, `insert int64 => "LastInsertId" | int64(1) | err=nil | "RowsAffected" | int64(1) | err=nil`)
	mustContain(t, mattn, `typed dt row 35 into *sql.NullTime => sql.NullTime{Valid:true Time:time.Time(2024-05-06 07:08:09.12 -05:00 zone=""/-18000 loc="")} | err=nil`)
	mustContain(t, mattn, `typed t row 30 into **string => (*string)(nil) | err=nil`)
	mustContain(t, mattn, `typed b row 29 into *[]uint8 => []byte{} | err=nil`)
}

func typeofList(cols []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = "typeof(" + c + ")"
	}
	return strings.Join(parts, ", ")
}

// ---------------------------------------------------------------------------
// Named arguments

func TestCompare_Named(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE named (id INTEGER PRIMARY KEY, a, b, c)`)
		ins := `INSERT INTO named (a, b, c) VALUES (:a, @b, $c)`
		r.exec("named in order", r.db, ins, sql.Named("a", 1), sql.Named("b", "two"), sql.Named("c", nil))
		r.exec("named out of order", r.db, ins, sql.Named("c", 3.5), sql.Named("a", []byte("A")), sql.Named("b", true))
		r.exec("named missing one", r.db, ins, sql.Named("a", 1), sql.Named("b", 2))
		r.exec("named extra unknown", r.db, ins, sql.Named("a", 1), sql.Named("b", 2), sql.Named("c", 3), sql.Named("zzz", 4))
		r.exec("named unknown only", r.db, ins, sql.Named("x", 1), sql.Named("y", 2), sql.Named("z", 3))
		r.exec("positional into named", r.db, ins, 10, 20, 30)
		r.exec("same name thrice", r.db, `INSERT INTO named (a, b, c) VALUES (:a, :a, :a)`, sql.Named("a", "same"))
		r.exec("invalid name", r.db, ins, sql.Named("1a", 1), sql.Named("b", 2), sql.Named("c", 3))

		r.query("name reused", r.db, `SELECT :x + :x, :y`, sql.Named("x", 2), sql.Named("y", "v"))
		// Four parameters (:x @y $y :y) for two arguments: mattn refuses.
		r.query("one name, all prefixes", r.db, `SELECT :x + :x, @y, $y, :y`, sql.Named("x", 2), sql.Named("y", "v"))
		r.query("mixed positional and named", r.db, `SELECT ?, :n, ?`, 1, sql.Named("n", 2), 3)
		r.query("numbered", r.db, `SELECT ?2, ?1, ?2`, "first", "second")
		r.query("named time", r.db, `SELECT :t`, sql.Named("t", time.Date(2024, 1, 2, 3, 4, 5, 6, zoneEST)))

		st, err := r.db.PrepareContext(r.ctx, `SELECT :a || @b`)
		if err != nil {
			r.note("prepare named", errv{err})
		} else {
			r.row("stmt named", st.QueryRowContext(r.ctx, sql.Named("a", "x"), sql.Named("b", "y")), 1)
			r.row("stmt named swapped", st.QueryRowContext(r.ctx, sql.Named("b", "y"), sql.Named("a", "x")), 1)
			r.row("stmt named too few", st.QueryRowContext(r.ctx, sql.Named("a", "x")), 1)
			st.Close()
		}
		r.query("rows", r.db, `SELECT * FROM named ORDER BY id`)
	})
	mustContain(t, mattn, `name reused row 0 => int64(4) | "v" | err=nil`)
}

// ---------------------------------------------------------------------------
// LastInsertId and RowsAffected

func TestCompare_Results(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{mustBatch: true}, func(r *recorder) {
		r.exec("create table first", r.db, `CREATE TABLE res (id INTEGER PRIMARY KEY, v INTEGER UNIQUE, w TEXT)`)
		r.exec("insert literal", r.db, `INSERT INTO res (v, w) VALUES (1, 'a')`)
		r.exec("insert args", r.db, `INSERT INTO res (v, w) VALUES (?, ?)`, 2, "b")
		r.exec("insert three rows", r.db, `INSERT INTO res (v, w) VALUES (3, 'c'), (4, 'd'), (5, 'e')`)
		r.exec("insert explicit id", r.db, `INSERT INTO res (id, v, w) VALUES (100, 6, 'f')`)
		r.exec("update several literal", r.db, `UPDATE res SET w = 'x' WHERE v >= 3`)
		r.exec("update several args", r.db, `UPDATE res SET w = ? WHERE v < ?`, "y", 3)
		r.exec("update none", r.db, `UPDATE res SET w = 'z' WHERE v > 1000`)
		r.exec("update none args", r.db, `UPDATE res SET w = ? WHERE v > ?`, "z", 1000)
		r.exec("delete several", r.db, `DELETE FROM res WHERE v IN (4, 5)`)
		r.exec("delete args", r.db, `DELETE FROM res WHERE v = ?`, 3)
		r.exec("insert or ignore dup", r.db, `INSERT OR IGNORE INTO res (v, w) VALUES (1, 'dup')`)
		r.exec("insert or replace", r.db, `INSERT OR REPLACE INTO res (v, w) VALUES (2, 'replaced')`)
		r.exec("upsert", r.db, `INSERT INTO res (v, w) VALUES (?, ?) ON CONFLICT (v) DO UPDATE SET w = excluded.w`, 6, "upserted")
		r.exec("create table after inserts", r.db, `CREATE TABLE res2 (x)`)
		r.exec("create table if not exists", r.db, `CREATE TABLE IF NOT EXISTS res2 (x)`)
		r.exec("create index", r.db, `CREATE INDEX res_w ON res (w)`)
		r.exec("trigger", r.db, `CREATE TRIGGER res_ai AFTER INSERT ON res BEGIN INSERT INTO res2 VALUES (new.v); INSERT INTO res2 VALUES (new.v); END`)
		r.exec("insert firing trigger", r.db, `INSERT INTO res (v, w) VALUES (50, 't')`)
		r.exec("select via exec", r.db, `SELECT 1`)
		r.exec("select via exec args", r.db, `SELECT ?`, 1)
		r.exec("pragma via exec", r.db, `PRAGMA user_version = 3`)
		r.exec("drop table", r.db, `DROP TABLE res2`)
		r.exec("delete all", r.db, `DELETE FROM res`)
		r.queryRow("changes() on a fresh read", r.db, 1, `SELECT count(*) FROM res`)
	})
	mustContain(t, mattn, `insert three rows => "LastInsertId" | int64(5) | err=nil | "RowsAffected" | int64(3) | err=nil`)
}

// ---------------------------------------------------------------------------
// Several statements in one text

func TestCompare_MultiStatement(t *testing.T) {
	// Intended in modePrepared: a Stmt runs only the first statement of
	// "BEGIN; ...; COMMIT", so the BEGIN is left open on the DB. The proxy
	// rolls it back when the routing connection is checked in (as for
	// Exec("BEGIN"), TestCompare_IntendedDifferences); mattn's one
	// connection stays inside it, so the next text's BEGIN fails there.
	o := compareOpts{intendedIn: map[compareMode]map[string]string{modePrepared: {
		`begin rollback in one text => err sqlite3.Error "cannot start a transaction within a transaction" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`: `begin rollback in one text => "LastInsertId" | int64(8) | err=nil | "RowsAffected" | int64(1) | err=nil`,
	}}}
	mattn, _ := compareDrivers(t, o, func(r *recorder) {
		r.setup(`CREATE TABLE m (id INTEGER PRIMARY KEY, v INTEGER)`)
		r.exec("no args", r.db, `INSERT INTO m (v) VALUES (1); INSERT INTO m (v) VALUES (2); UPDATE m SET v = v * 10`)
		r.exec("args", r.db, `INSERT INTO m (v) VALUES (?); INSERT INTO m (v) VALUES (?); UPDATE m SET v = v + ? WHERE v < ?`, 3, 4, 100, 10)
		r.exec("named", r.db, `INSERT INTO m (v) VALUES (:a); UPDATE m SET v = :b WHERE v = :a`, sql.Named("a", 7), sql.Named("b", 70))
		r.exec("too few args", r.db, `INSERT INTO m (v) VALUES (?); INSERT INTO m (v) VALUES (?)`, 300)
		r.exec("too many args", r.db, `INSERT INTO m (v) VALUES (?); INSERT INTO m (v) VALUES (?)`, 310, 311, 312)
		r.exec("args for no-arg text", r.db, `INSERT INTO m (v) VALUES (320); INSERT INTO m (v) VALUES (321)`, 1)
		r.exec("no args for arg text", r.db, `INSERT INTO m (v) VALUES (330); INSERT INTO m (v) VALUES (?)`)
		r.exec("error in second", r.db, `INSERT INTO m (v) VALUES (500); INSERT INTO nope VALUES (1); INSERT INTO m (v) VALUES (501)`)
		r.exec("error in second args", r.db, `INSERT INTO m (v) VALUES (?); INSERT INTO nope VALUES (?); INSERT INTO m (v) VALUES (?)`, 510, 511, 512)
		r.exec("syntax error in second", r.db, `INSERT INTO m (v) VALUES (520); INSERTT INTO m (v) VALUES (521)`)
		r.exec("trailing semicolons and comment", r.db, "INSERT INTO m (v) VALUES (600);; -- done\n")
		r.exec("leading comment", r.db, "-- first\n/* second */ INSERT INTO m (v) VALUES (610); /* tail */")
		r.exec("semicolon in string", r.db, `INSERT INTO m (v) VALUES (length('a;b')); INSERT INTO m (v) VALUES (620)`)
		r.exec("begin commit in one text", r.db, `BEGIN; INSERT INTO m (v) VALUES (630); INSERT INTO m (v) VALUES (631); COMMIT`)
		r.exec("begin rollback in one text", r.db, `BEGIN; INSERT INTO m (v) VALUES (640); ROLLBACK`)

		r.query("query write then select", r.db, `INSERT INTO m (v) VALUES (700); SELECT v FROM m WHERE v >= 600 ORDER BY v`)
		r.query("query two selects", r.db, `SELECT 1; SELECT 2, 3`)
		r.query("query two selects args", r.db, `SELECT ?; SELECT ?, ?`, "a", "b", "c")
		r.query("query select then write", r.db, `SELECT v FROM m; INSERT INTO m (v) VALUES (800)`)
		r.query("query error in second", r.db, `SELECT 1; SELECT * FROM nope`)
		r.query("rows", r.db, `SELECT * FROM m ORDER BY id`)
	})
	mustContain(t, mattn, `no args => "LastInsertId" | int64(2) | err=nil | "RowsAffected" | int64(2) | err=nil`)
}

// ---------------------------------------------------------------------------
// Column metadata

func TestCompare_ColumnTypes(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE ct (
			id INTEGER PRIMARY KEY, i INT, bi BIGINT, r REAL, f FLOAT, dbl DOUBLE PRECISION,
			t TEXT, vc VARCHAR(255), cl CLOB, b BLOB, bo BOOLEAN, dt DATETIME, ts TIMESTAMP,
			d DATE, n NUMERIC, dec DECIMAL(10,2), u, weird "my type", nn TEXT NOT NULL DEFAULT ''
		)`)
		r.setup(`INSERT INTO ct (i, bi, r, f, dbl, t, vc, cl, b, bo, dt, ts, d, n, dec, u, weird)
			VALUES (1, 2, 3.5, 4.5, 5.5, 't', 'vc', 'cl', x'01', 1, '2024-01-02 03:04:05', 1700000000, '2024-01-02', 7, 8.25, 'u', 'w')`)
		r.setup(`CREATE VIEW cv AS SELECT i, t AS tt, i + 1 AS expr FROM ct`)

		ct := func(label, query string, args ...any) {
			r.queryFunc(label, r.db, query, args, r.columnTypes)
		}
		ct("table", `SELECT * FROM ct`)
		ct("table no rows", `SELECT * FROM ct WHERE 0`)
		ct("expressions", `SELECT 1 AS one, 'a', 1.5, x'00', NULL, i + 1 AS plus, CAST(t AS INTEGER),
			count(*) OVER () AS cnt, t AS alias, upper(vc), ? AS param FROM ct`, "p")
		ct("view", `SELECT * FROM cv`)
		ct("join and subquery", `SELECT a.i, (SELECT max(dt) FROM ct) AS sub, b.dt FROM ct a JOIN ct b USING (id)`)
		ct("returning", `INSERT INTO ct (nn, dt) VALUES ('z', '2025-01-01') RETURNING id, dt, nn, length(nn) AS len`)
		ct("pragma", `PRAGMA table_info(ct)`)
		ct("empty query", ``)

		st, err := r.db.PrepareContext(r.ctx, `SELECT id, dt, bo FROM ct WHERE id = ?`)
		if err != nil {
			r.note("prepare", errv{err})
			return
		}
		defer st.Close()
		rows, err := st.QueryContext(r.ctx, 1)
		r.columnTypes("stmt", rows, err)
	})
	mustContain(t, mattn, `table col 12 => "Name" | "ts" | "DatabaseTypeName" | "TIMESTAMP" | "ScanType" | "sql.NullTime" | "Nullable" | bool(true) | bool(true) | "Length" | int64(0) | bool(false) | "DecimalSize" | int64(0) | int64(0) | bool(false)`)
}

// ---------------------------------------------------------------------------
// RETURNING

func TestCompare_Returning(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE ret (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, at DATETIME)`)
		r.queryRow("QueryRow insert returning", r.db, 2, `INSERT INTO ret (name) VALUES (?) RETURNING id, name`, "a")

		r.do("QueryRow typed scan", r.db, `INSERT INTO ret (name, at) VALUES (?, ?) RETURNING id, name`, func(s step) error {
			var id int64
			var name string
			err := s.queryRow("typed", time.Date(2024, 2, 3, 4, 5, 6, 7, zoneEST)).Scan(&id, &name)
			r.note("QueryRow typed scan", id, name, errv{err})
			return err
		})

		r.query("Query insert returning 3 rows", r.db, `INSERT INTO ret (name) VALUES ('b'), ('c'), ('d') RETURNING id, name`)
		r.queryRow("QueryRow of 2-row insert", r.db, 1, `INSERT INTO ret (name) VALUES ('e'), ('f') RETURNING id`)
		r.queryFunc("Query read 1 of 3 rows", r.db, `INSERT INTO ret (name) VALUES ('g'), ('h'), ('i') RETURNING id, name`, nil,
			func(label string, rows *sql.Rows, err error) error { return r.rowsN(label, rows, err, 1) })
		r.query("Query update returning", r.db, `UPDATE ret SET name = upper(name) WHERE id BETWEEN 3 AND 5 RETURNING id, name`)
		r.query("Query delete returning *", r.db, `DELETE FROM ret WHERE id = 1 RETURNING *`)
		r.query("Query returning time", r.db, `UPDATE ret SET at = ? WHERE name = 'typed' RETURNING at`, time.Date(2024, 2, 3, 4, 5, 6, 7, time.UTC))
		r.queryRow("QueryRow returning nothing", r.db, 1, `DELETE FROM ret WHERE id = 999 RETURNING id`)
		r.queryRow("QueryRow returning dup", r.db, 1, `INSERT INTO ret (name) VALUES ('typed') RETURNING id`)
		r.exec("Exec insert returning", r.db, `INSERT INTO ret (name) VALUES ('j') RETURNING id`)
		r.exec("Exec insert returning 2 rows", r.db, `INSERT INTO ret (name) VALUES ('k'), ('l') RETURNING id`)
		r.query("rows", r.db, `SELECT * FROM ret ORDER BY id`)
	})
	mustContain(t, mattn, `Query insert returning 3 rows row 2 => int64(5) | "d" | err=nil`)
}

// ---------------------------------------------------------------------------
// Prepared statements

func TestCompare_Stmt(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE ps (id INTEGER PRIMARY KEY, v INTEGER)`)
		texts := map[*sql.Stmt]string{}
		prep := func(label, query string) *sql.Stmt {
			st, err := r.db.PrepareContext(r.ctx, query)
			r.note("prepare "+label, errv{err})
			texts[st] = query
			return st
		}
		stExec := func(label string, st *sql.Stmt, args ...any) {
			res, err := st.ExecContext(r.ctx, args...)
			r.resultOf(label, texts[st], res, err)
		}
		stQuery := func(label string, st *sql.Stmt, args ...any) {
			rows, err := st.QueryContext(r.ctx, args...)
			r.rows(label, rows, err)
		}

		ins := prep("insert", `INSERT INTO ps (v) VALUES (?)`)
		sel := prep("select", `SELECT id, v FROM ps WHERE v >= ? ORDER BY id`)
		for i := range 4 {
			stExec(fmt.Sprintf("insert #%d", i), ins, i+1)
			stQuery(fmt.Sprintf("select #%d", i), sel, i)
			r.exec(fmt.Sprintf("interleaved db exec #%d", i), r.db, `UPDATE ps SET v = v WHERE id = ?`, i)
		}
		stExec("insert no args", ins)
		stExec("insert two args", ins, 1, 2)
		stQuery("insert via Query", ins, 40)
		stQuery("insert via Query no args", ins)
		stQuery("select no args", sel)
		stQuery("select two args", sel, 1, 2)
		r.row("select QueryRow", sel.QueryRowContext(r.ctx, 3), 2)
		r.row("select QueryRow no rows", sel.QueryRowContext(r.ctx, 1000), 2)
		stExec("select via Exec", sel, 0)

		multi := prep("multi", `INSERT INTO ps (v) VALUES (100); INSERT INTO ps (v) VALUES (200)`)
		stExec("multi exec #1", multi)
		stExec("multi exec #2", multi)
		stQuery("multi via Query", multi)
		multiArgs := prep("multi args", `INSERT INTO ps (v) VALUES (?); INSERT INTO ps (v) VALUES (?)`)
		stExec("multi args one", multiArgs, 300)
		stExec("multi args two", multiArgs, 301, 302)
		multiSel := prep("multi select", `SELECT 1; SELECT 2`)
		stQuery("multi select", multiSel)

		named := prep("named", `INSERT INTO ps (v) VALUES (:v)`)
		stExec("named by name", named, sql.Named("v", 400))
		stExec("named positionally", named, 401)
		stExec("named wrong name", named, sql.Named("w", 402))

		prep("syntax error", `SELEC 1`)
		prep("no such table", `SELECT * FROM nope`)
		prep("no such column", `SELECT nope FROM ps`)

		stExec("after Close: before", ins, 500)
		r.note("Close", errv{ins.Close()})
		stExec("after Close", ins, 501)
		stQuery("after Close query", ins, 502)

		tx, err := r.db.BeginTx(r.ctx, nil)
		if err != nil {
			r.t.Fatal(err)
		}
		txSel := tx.StmtContext(r.ctx, sel)
		stQuery("tx.Stmt query", txSel, 300)
		txIns, err := tx.PrepareContext(r.ctx, `INSERT INTO ps (v) VALUES (?)`)
		r.note("tx.Prepare", errv{err})
		stExec("tx stmt exec", txIns, 600)
		r.note("commit", errv{tx.Commit()})
		stExec("tx stmt after commit", txIns, 601)
		stQuery("tx.Stmt after commit", txSel, 0)
		stQuery("db stmt after tx", sel, 600)

		for _, st := range []*sql.Stmt{sel, multi, multiArgs, multiSel, named} {
			if st != nil {
				st.Close()
			}
		}
		r.query("rows", r.db, `SELECT * FROM ps ORDER BY id`)
	})
	mustContain(t, mattn, `multi exec #2 => "LastInsertId" | int64(7) | err=nil | "RowsAffected" | int64(1) | err=nil`)
}

// ---------------------------------------------------------------------------
// Transactions, Conn, QueryRow errors

// txWaitsForWriter is the proxy's line for a read-write transaction begun
// while another checkout holds the tenant's writer, once BusyTimeout ends
// the wait: BeginTx without ReadOnly takes the writer (one per tenant, as
// designed), whereas mattn's deferred BEGIN on a second connection reads on.
func txWaitsForWriter(label string) string {
	return label + ` => err *sqliteproxy.Error "sqliteproxy: wait for writer: tenant \"acme\": database is locked" sqlite3.Error{Code:5 ExtendedCode:5 SystemErrno:0}`
}

func TestCompare_Tx(t *testing.T) {
	// Intended in modeTx: the count through the DB while tx1 holds the
	// writer is itself a read-write transaction (txWaitsForWriter).
	o := compareOpts{
		cfg: Config{BusyTimeout: 200 * time.Millisecond}, // the wait above
		intendedIn: map[compareMode]map[string]string{modeTx: {
			`tx1 count outside => int64(0) | err=nil`: txWaitsForWriter("tx1 count outside"),
		}},
	}
	mattn, _ := compareDrivers(t, o, func(r *recorder) {
		r.setup(`CREATE TABLE txt (id INTEGER PRIMARY KEY, v TEXT UNIQUE)`)
		count := func(label string, q rowQueryer) { r.queryRow(label, q, 1, `SELECT count(*) FROM txt`) }
		begin := func() *sql.Tx {
			tx, err := r.db.BeginTx(r.ctx, nil)
			if err != nil {
				r.t.Fatalf("BeginTx: %v", err)
			}
			return tx
		}

		tx := begin()
		r.exec("tx1 insert", tx, `INSERT INTO txt (v) VALUES ('a')`)
		count("tx1 count inside", tx)
		count("tx1 count outside", r.db)
		r.note("tx1 commit", errv{tx.Commit()})
		count("after commit", r.db)
		r.note("tx1 commit again", errv{tx.Commit()})
		r.note("tx1 rollback after commit", errv{tx.Rollback()})

		tx = begin()
		r.exec("tx2 insert", tx, `INSERT INTO txt (v) VALUES ('b')`)
		r.query("tx2 select inside", tx, `SELECT v FROM txt ORDER BY v`)
		r.note("tx2 rollback", errv{tx.Rollback()})
		count("after rollback", r.db)
		r.exec("tx2 exec after rollback", tx, `INSERT INTO txt (v) VALUES ('bb')`)
		r.note("tx2 commit after rollback", errv{tx.Commit()})

		tx = begin()
		r.exec("tx3 insert c", tx, `INSERT INTO txt (v) VALUES ('c')`)
		r.exec("tx3 insert dup", tx, `INSERT INTO txt (v) VALUES ('a')`)
		r.exec("tx3 insert d", tx, `INSERT INTO txt (v) VALUES ('d')`)
		r.note("tx3 commit", errv{tx.Commit()})

		tx = begin()
		r.exec("tx4 nested BEGIN", tx, `BEGIN`)
		r.note("tx4 rollback", errv{tx.Rollback()})

		tx = begin()
		r.execErr("tx5 savepoint", tx, `SAVEPOINT sp`)
		r.exec("tx5 insert e", tx, `INSERT INTO txt (v) VALUES ('e')`)
		r.execErr("tx5 rollback to", tx, `ROLLBACK TO sp`)
		r.execErr("tx5 release", tx, `RELEASE sp`)
		r.exec("tx5 insert f", tx, `INSERT INTO txt (v) VALUES ('f')`)
		r.note("tx5 commit", errv{tx.Commit()})

		tx = begin()
		r.exec("tx6 insert g", tx, `INSERT INTO txt (v) VALUES ('g')`)
		r.execErr("tx6 COMMIT via Exec", tx, `COMMIT`)
		r.note("tx6 commit", errv{tx.Commit()})

		tx = begin()
		r.exec("tx7 insert h", tx, `INSERT INTO txt (v) VALUES ('h')`)
		r.queryRow("tx7 QueryRow no rows", tx, 1, `SELECT v FROM txt WHERE id = -1`)
		r.note("tx7 rollback", errv{tx.Rollback()})

		tx, err := r.db.BeginTx(r.ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
		r.note("tx8 serializable begin", errv{err})
		if err == nil {
			r.exec("tx8 insert i", tx, `INSERT INTO txt (v) VALUES ('i')`)
			r.note("tx8 commit", errv{tx.Commit()})
		}

		tx, err = r.db.BeginTx(r.ctx, &sql.TxOptions{ReadOnly: true})
		r.note("tx9 read-only begin", errv{err})
		if err == nil {
			count("tx9 read-only count", tx)
			r.query("tx9 read-only select", tx, `SELECT v FROM txt ORDER BY v`)
			r.note("tx9 commit", errv{tx.Commit()})
		}

		r.queryRow("QueryRow no rows", r.db, 1, `SELECT v FROM txt WHERE id = -1`)
		r.queryRow("QueryRow too few dests", r.db, 1, `SELECT id, v FROM txt`)
		r.queryRow("QueryRow too many dests", r.db, 3, `SELECT id, v FROM txt`)
		scanString := func(label, query string) {
			r.do(label, r.db, query, func(st step) error {
				var s string
				err := st.queryRow().Scan(&s)
				r.note(label, errv{err})
				return err
			})
		}
		scanString("QueryRow NULL into string", `SELECT NULL`)
		scanString("QueryRow syntax error", `SELEC 1`)

		// One SQLite session for a sql.Conn: connection state is visible.
		conn, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		r.exec("conn insert", conn, `INSERT INTO txt (v) VALUES ('j')`)
		r.queryRow("conn last_insert_rowid, changes", conn, 2, `SELECT last_insert_rowid(), changes()`)
		rows, err := conn.QueryContext(r.ctx, `SELECT v FROM txt ORDER BY v`)
		if err == nil && rows.Next() {
			// Write while rows are open on the same session.
			r.exec("conn insert with rows open", conn, `INSERT INTO txt (v) VALUES ('k')`)
			r.queryRow("conn last_insert_rowid with rows open", conn, 1, `SELECT last_insert_rowid()`)
		}
		r.rows("conn rest of rows", rows, err)
		r.note("conn close", errv{conn.Close()})

		conn, err = r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		count("conn2 read first", conn)
		r.exec("conn2 insert", conn, `INSERT INTO txt (v) VALUES ('l')`)
		r.queryRow("conn2 last_insert_rowid", conn, 1, `SELECT last_insert_rowid()`)
		tx, err = conn.BeginTx(r.ctx, nil)
		r.note("conn2 begin", errv{err})
		if err == nil {
			r.exec("conn2 tx insert", tx, `INSERT INTO txt (v) VALUES ('m')`)
			r.note("conn2 tx rollback", errv{tx.Rollback()})
		}
		r.note("conn2 close", errv{conn.Close()})

		r.query("rows", r.db, `SELECT * FROM txt ORDER BY id`)
	})
	mustContain(t, mattn, `tx1 count outside => int64(0) | err=nil`)
	mustContain(t, mattn, `tx1 count inside => int64(1) | err=nil`)
}

// ---------------------------------------------------------------------------
// Errors raised by SQLite

const errorsDDL = `CREATE TABLE e (
	id INTEGER PRIMARY KEY,
	u TEXT UNIQUE,
	nn TEXT NOT NULL,
	c INTEGER CHECK (c > 0)
)`

func TestCompare_Errors(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(errorsDDL)
		r.setup(`CREATE TABLE guarded (x)`)
		r.setup(`CREATE TRIGGER guard BEFORE INSERT ON guarded BEGIN SELECT RAISE(ABORT, 'guarded says no'); END`)
		r.exec("insert ok", r.db, `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1)`)

		r.exec("unique exec", r.db, `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1)`)
		r.exec("unique exec args", r.db, `INSERT INTO e (u, nn, c) VALUES (?, ?, ?)`, "a", "x", 1)
		r.query("unique query returning", r.db, `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1) RETURNING id`)
		if st, err := r.db.PrepareContext(r.ctx, `INSERT INTO e (u, nn, c) VALUES (?, 'x', 1)`); err == nil {
			res, err := st.ExecContext(r.ctx, "a")
			r.result("unique stmt", res, err)
			st.Close()
		}
		if tx, err := r.db.BeginTx(r.ctx, nil); err == nil {
			r.exec("unique tx", tx, `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1)`)
			tx.Rollback()
		}
		r.exec("primary key", r.db, `INSERT INTO e (id, nn) VALUES (1, 'x')`)
		r.exec("not null", r.db, `INSERT INTO e (u) VALUES ('b')`)
		r.exec("check", r.db, `INSERT INTO e (nn, c) VALUES ('x', -1)`)
		r.exec("datatype mismatch", r.db, `INSERT INTO e (id, nn) VALUES ('abc', 'x')`)
		r.exec("trigger raise", r.db, `INSERT INTO guarded VALUES (1)`)

		r.exec("syntax exec", r.db, `SELEC 1`)
		r.exec("syntax exec args", r.db, `SELEC ?`, 1)
		r.query("syntax query", r.db, `SELEC 1`)
		r.queryRow("syntax QueryRow", r.db, 1, `SELEC 1`)
		_, err := r.db.PrepareContext(r.ctx, `SELEC 1`)
		r.note("syntax prepare", errv{err})
		r.query("incomplete input", r.db, `SELECT`)
		r.query("unterminated string", r.db, `SELECT 'abc`)
		r.query("no such table", r.db, `SELECT * FROM nope`)
		r.exec("no such table exec", r.db, `INSERT INTO nope VALUES (1)`)
		r.query("no such column", r.db, `SELECT nope FROM e`)
		r.query("no such function", r.db, `SELECT nope(1)`)
		r.query("wrong arg count to function", r.db, `SELECT abs(1, 2)`)
		r.query("runtime error first row", r.db, `SELECT json('{')`)
		r.query("runtime error third row", r.db, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5)
			SELECT CASE WHEN x < 3 THEN x ELSE json('{') END FROM c`)
		r.query("integer overflow", r.db, `SELECT abs(-9223372036854775807 - 1)`)
		r.query("too big", r.db, `SELECT zeroblob(2000000000)`)
		r.exec("drop missing", r.db, `DROP TABLE nope`)
		r.exec("create existing", r.db, `CREATE TABLE e (x)`)
		r.query("rows", r.db, `SELECT * FROM e ORDER BY id`)
	})
	mustContain(t, mattn, `unique exec => err sqlite3.Error "UNIQUE constraint failed: e.u" sqlite3.Error{Code:19 ExtendedCode:2067 SystemErrno:0}`)
	mustContain(t, mattn, `syntax exec => err sqlite3.Error "near \"SELEC\": syntax error" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`)
}

// TestCompare_ErrorsAs checks, on both drivers, that errors.As finds a
// sqlite3.Error with the codes GORM and friends switch on.
func TestCompare_ErrorsAs(t *testing.T) {
	direct := openDirect(t)
	p := newTestProxy(t, Config{})
	dbs := []struct {
		name string
		db   *sql.DB
		ctx  context.Context
	}{{"mattn", direct, context.Background()}, {"proxy", p.DB, tctx("acme")}}
	cases := []struct {
		name      string
		query     string
		code      sqlite3.ErrNo
		extended  sqlite3.ErrNoExtended
		queryPath bool
	}{
		{"unique", `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1)`, sqlite3.ErrConstraint, sqlite3.ErrConstraintUnique, false},
		{"unique via query", `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1) RETURNING id`, sqlite3.ErrConstraint, sqlite3.ErrConstraintUnique, true},
		{"primary key", `INSERT INTO e (id, nn) VALUES (1, 'x')`, sqlite3.ErrConstraint, sqlite3.ErrConstraintPrimaryKey, false},
		{"not null", `INSERT INTO e (u) VALUES ('z')`, sqlite3.ErrConstraint, sqlite3.ErrConstraintNotNull, false},
		{"check", `INSERT INTO e (nn, c) VALUES ('x', -1)`, sqlite3.ErrConstraint, sqlite3.ErrConstraintCheck, false},
		{"syntax", `SELEC 1`, sqlite3.ErrError, sqlite3.ErrNoExtended(sqlite3.ErrError), false},
		{"syntax via query", `SELEC 1`, sqlite3.ErrError, sqlite3.ErrNoExtended(sqlite3.ErrError), true},
	}
	for _, d := range dbs {
		for _, q := range []string{errorsDDL, `INSERT INTO e (u, nn, c) VALUES ('a', 'x', 1)`} {
			if _, err := d.db.ExecContext(d.ctx, q); err != nil {
				t.Fatalf("%s: %v", d.name, err)
			}
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var errs [2]error
			for i, d := range dbs {
				if c.queryPath {
					var x any
					errs[i] = d.db.QueryRowContext(d.ctx, c.query).Scan(&x)
				} else {
					_, errs[i] = d.db.ExecContext(d.ctx, c.query)
				}
				var se sqlite3.Error
				if !errors.As(errs[i], &se) {
					t.Errorf("%s: errors.As(%T %v, *sqlite3.Error) = false", d.name, errs[i], errs[i])
					continue
				}
				if se.Code != c.code || se.ExtendedCode != c.extended {
					t.Errorf("%s: Code, ExtendedCode = %d, %d; want %d, %d", d.name, se.Code, se.ExtendedCode, c.code, c.extended)
				}
			}
			if errs[0] == nil || errs[1] == nil {
				return
			}
			if errs[0].Error() != errs[1].Error() {
				t.Errorf("error text: mattn %q, proxy %q", errs[0], errs[1])
			}
			var s0, s1 sqlite3.Error
			errors.As(errs[0], &s0)
			errors.As(errs[1], &s1)
			if s0.Code != s1.Code || s0.ExtendedCode != s1.ExtendedCode {
				t.Errorf("codes: mattn %d/%d, proxy %d/%d", s0.Code, s0.ExtendedCode, s1.Code, s1.ExtendedCode)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Empty texts and comments

func TestCompare_EmptyAndComments(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE ec (id INTEGER PRIMARY KEY, v)`)
		r.setup(`INSERT INTO ec (v) VALUES (1)`)
		for _, q := range []string{"", "   ", ";", "-- only a comment", "/* only a comment */", "/* c */ ; -- c\n"} {
			r.exec(fmt.Sprintf("exec %q", q), r.db, q)
			r.exec(fmt.Sprintf("exec %q with arg", q), r.db, q, 1)
			r.query(fmt.Sprintf("query %q", q), r.db, q)
			r.query(fmt.Sprintf("query %q with arg", q), r.db, q, 1)
			r.queryRow(fmt.Sprintf("QueryRow %q", q), r.db, 1, q)
		}
		r.query("trailing comment", r.db, "SELECT 1 -- trailing")
		r.query("leading comment", r.db, "-- leading\nSELECT 2")
		r.query("block comments", r.db, "/* a */ SELECT 3 /* b */;")
		r.exec("leading comment insert", r.db, "-- note\nINSERT INTO ec (v) VALUES (2)")
		r.query("rows", r.db, `SELECT * FROM ec ORDER BY id`)
	})
	mustContain(t, mattn, `exec "" => "LastInsertId" | int64(0) | err=nil | "RowsAffected" | int64(0) | err=nil`)
}

// ---------------------------------------------------------------------------
// Schema changes between executions of the same text (statement caches,
// readers that have not seen the change yet)

func TestCompare_SchemaChange(t *testing.T) {
	compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE sc (a)`)
		r.setup(`INSERT INTO sc VALUES (1)`)
		const q = `SELECT * FROM sc`
		st, err := r.db.PrepareContext(r.ctx, q)
		if err != nil {
			r.t.Fatal(err)
		}
		defer st.Close()
		show := func(label string) {
			r.queryFunc(label, r.db, q, nil, r.columnTypes)
			rows, err := st.QueryContext(r.ctx)
			r.columnTypes(label+" stmt", rows, err)
		}
		show("before")
		show("before again")
		r.exec("add column", r.db, `ALTER TABLE sc ADD COLUMN b DATETIME DEFAULT '2024-01-02 03:04:05'`)
		show("after add column")
		r.exec("rename column", r.db, `ALTER TABLE sc RENAME COLUMN a TO aa`)
		show("after rename")
		r.exec("recreate", r.db, `DROP TABLE sc; CREATE TABLE sc (z DATE, y BLOB); INSERT INTO sc VALUES ('2024-05-06', 'text in blob column')`)
		show("after recreate")
	})
}

// ---------------------------------------------------------------------------
// Session state within a sql.Conn: one SQLite session throughout, as with
// mattn, so connection-scoped state behaves the same.

func TestCompare_Session(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.setup(`CREATE TABLE s (id INTEGER PRIMARY KEY, v)`)
		r.setup(`INSERT INTO s (v) VALUES (1), (2)`)
		conn, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		defer conn.Close()
		r.queryRow("read first", conn, 1, `SELECT count(*) FROM s`)
		r.exec("BEGIN via Exec", conn, `BEGIN`)
		r.exec("insert in manual tx", conn, `INSERT INTO s (v) VALUES (3)`)
		r.queryRow("last_insert_rowid, changes", conn, 2, `SELECT last_insert_rowid(), changes()`)
		r.exec("COMMIT via Exec", conn, `COMMIT`)
		r.exec("temp table", conn, `CREATE TEMP TABLE s (v)`)
		r.exec("temp insert", conn, `INSERT INTO s (v) VALUES ('temp')`)
		r.query("temp shadows main", conn, `SELECT * FROM s`)
		r.query("main explicitly", conn, `SELECT * FROM main.s ORDER BY id`)
		r.exec("drop temp", conn, `DROP TABLE temp.s`)
		r.exec("pragma set", conn, `PRAGMA recursive_triggers = 1`)
		r.queryRow("pragma read", conn, 1, `PRAGMA recursive_triggers`)
		r.exec("pragma reset", conn, `PRAGMA recursive_triggers = 0`)
		r.exec("savepoint", conn, `SAVEPOINT a`)
		r.exec("insert in savepoint", conn, `INSERT INTO s (v) VALUES (4)`)
		r.exec("rollback to", conn, `ROLLBACK TO a`)
		r.exec("release", conn, `RELEASE a`)
		r.query("rows", conn, `SELECT * FROM s ORDER BY id`)
	})
	mustContain(t, mattn, `temp shadows main row 0 => "temp" | err=nil`)
}

// ---------------------------------------------------------------------------
// Intended differences. Each is pinned here as the exact line mattn gives
// and the exact line the proxy gives instead:
//
//   - (no longer: readers run with PRAGMA query_only=1, and reading that
//     pragma through the DB gave 1; a PRAGMA read now runs on the writer when
//     it is free, as session reads do, and answers 0 as mattn does; under
//     contention, on a reader, 1: not probed in modeContended);
//   - tenantAuthorizer (harden.go) refuses ATTACH, DETACH and changing
//     journal_mode: "not authorized";
//   - a transaction opened by Exec("BEGIN") on the DB is rolled back when
//     the routing connection is checked in (conn.release), so a later
//     Exec("COMMIT") finds none. Within a sql.Conn it works (TestCompare_Session);
//   - connection-scoped state read through the DB rather than a sql.Conn or
//     Tx: a read-only query runs on a reader, not on the writer that ran the
//     previous statement, so a TEMP table created through the DB does not
//     shadow the main table. database/sql promises no connection affinity
//     here; mattn merely happens to reuse its one idle connection. (A read
//     of last_insert_rowid()/changes() runs on the writer, and answers as
//     mattn does: TestCompare_SessionFunctions.)
//
// In modeTx the connection-scoped differences vanish (every step is a
// read-write transaction, on the writer, as with mattn's one connection),
// and the BEGIN/COMMIT steps are left out: mattn's one connection stays
// inside that BEGIN, so the BeginTx of the next step fails on mattn only;
// that is the same rollback at check-in, already pinned by the other modes.

func TestCompare_IntendedDifferences(t *testing.T) {
	const ok = `"LastInsertId" | int64(1) | err=nil | "RowsAffected" | int64(1) | err=nil` // stale: the temp insert's
	// Refused by the authorizer: an *Error naming the operation, the
	// tenant, the statement and the rules, around SQLite's refusal.
	const hardening = ` is refused by the proxy's hardening (README, "Hardening": no ATTACH, DETACH, VACUUM INTO, load_extension or fts3_tokenizer, no change to the migration ledger, no PRAGMA that sets the journal or locking mode, query_only, schema_version, writable_schema, the store directories, the heap limits, wal_autocheckpoint off, count_changes, ignore_check_constraints or case_sensitive_like on, synchronous below Config.Synchronous; no PRAGMA with an empty argument; VACUUM only as the whole text of an Exec): not authorized`
	notAuth := func(op, query string) string {
		return "err *sqliteproxy.Error " + strconv.Quote(`sqliteproxy: `+op+`: tenant "acme": `+strconv.Quote(query)+hardening) + " sqlite3.Error{Code:23 ExtendedCode:23 SystemErrno:0}"
	}
	refusals := func(op string) map[string]string {
		return map[string]string{
			`attach => ` + ok:       `attach => ` + notAuth(op, `ATTACH DATABASE ':memory:' AS other`),
			`detach => ` + ok:       `detach => ` + notAuth(op, `DETACH DATABASE other`),
			`journal_mode => ` + ok: `journal_mode => ` + notAuth(op, `PRAGMA journal_mode = DELETE`),
		}
	}
	intended := map[string]string{
		`COMMIT via Exec => "LastInsertId" | int64(3) | err=nil | "RowsAffected" | int64(1) | err=nil`: `COMMIT via Exec => err sqlite3.Error "cannot commit - no transaction is active" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`,
		`temp shadow => "temp" | err=nil`: `temp shadow => "1,2,3" | err=nil`,
	}
	maps.Copy(intended, refusals(opExec))
	prepared := maps.Clone(intended)
	maps.Copy(prepared, refusals(opPrepare))
	o := compareOpts{intended: intended, intendedIn: map[compareMode]map[string]string{modeTx: refusals(opExec), modePrepared: prepared}}
	compareDrivers(t, o, func(r *recorder) {
		r.setup(`CREATE TABLE x (id INTEGER PRIMARY KEY, v)`)
		if r.mode != modeContended { // a contender may hold the writer: then a reader answers
			r.queryRow("pragma query_only", r.db, 1, `PRAGMA query_only`)
		}
		r.exec("insert", r.db, `INSERT INTO x (v) VALUES (1), (2)`)
		if r.mode != modeContended { // the contenders' inserts share the writer
			r.queryRow("db-level last_insert_rowid, changes", r.db, 2, `SELECT last_insert_rowid(), changes()`)
		}
		if r.mode != modeTx {
			r.exec("BEGIN via Exec", r.db, `BEGIN`)
			r.exec("insert after BEGIN", r.db, `INSERT INTO x (v) VALUES (3)`)
			r.exec("COMMIT via Exec", r.db, `COMMIT`)
		}
		r.exec("temp create", r.db, `CREATE TEMP TABLE x (v)`)
		r.exec("temp insert", r.db, `INSERT INTO x (v) VALUES ('temp')`)
		r.queryRow("temp shadow", r.db, 1, `SELECT group_concat(v) FROM x`)
		r.exec("attach", r.db, `ATTACH DATABASE ':memory:' AS other`)
		r.exec("detach", r.db, `DETACH DATABASE other`)
		r.exec("journal_mode", r.db, `PRAGMA journal_mode = DELETE`)
		r.query("rows", r.db, `SELECT * FROM main.x ORDER BY id`)
	})
}

// TestCompare_IntendedDifferences_ReaderPool: a tenant's reads share
// ReadersPerTenant connections (default 4). Holding that many Rows open and
// querying once more waits for one to be closed, as with a *sql.DB limited
// by SetMaxOpenConns; a single goroutine doing so waits for itself until its
// context ends. mattn opens another connection. (7418fee lent the writer
// instead, which caused the hang in TestCompare_RowsOpenThenWrite.)
func TestCompare_IntendedDifferences_ReaderPool(t *testing.T) {
	intended := map[string]string{
		`query 4 => err=nil`:         `query 4 => err *sqliteproxy.Error "sqliteproxy: wait for reader: tenant \"acme\": context deadline exceeded"`,
		`closed => int(5) | err=nil`: `closed => int(4) | err=nil`,
	}
	compareDrivers(t, compareOpts{intended: intended, timeout: 10 * time.Second}, func(r *recorder) {
		r.setup(`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`)
		r.setup(`INSERT INTO items (v) VALUES (1), (2)`)
		var open []*sql.Rows
		for i := range DefaultReadersPerTenant + 1 {
			ctx := r.ctx
			if i == DefaultReadersPerTenant {
				// Only the last query is bounded: the rows of the others
				// must outlive it (their context's end would close them).
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(r.ctx, 500*time.Millisecond)
				defer cancel()
			}
			rows, err := r.db.QueryContext(ctx, `SELECT id FROM items`)
			r.note(fmt.Sprintf("query %d", i), errv{err})
			if err == nil {
				rows.Next()
				open = append(open, rows)
			}
		}
		r.exec("insert while rows are open", r.db, `INSERT INTO items (v) VALUES (3)`)
		var closeErr error
		for _, rows := range open {
			closeErr = errors.Join(closeErr, rows.Close())
		}
		r.note("closed", len(open), errv{closeErr})
	})
}

// ---------------------------------------------------------------------------
// Regressions: differences from mattn found by these tests in the committed
// driver 7418fee; each test failed there and passes from e311f42 on.

// TestCompare_RowsOpenThenWrite: the "iterate rows, write for each" loop
// through the DB. mattn runs the write on a second connection, WAL lets it
// through. In the committed driver (7418fee) a read that was the first
// statement on a fresh tenant ran on the writer, so the write waited for
// itself forever; the timeout turns such a hang into a failure.
func TestCompare_RowsOpenThenWrite(t *testing.T) {
	schema := []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`}
	script := func(r *recorder) {
		rows, err := r.db.QueryContext(r.ctx, `SELECT id FROM items`)
		r.note("query", errv{err})
		if err != nil {
			return
		}
		res, err := r.db.ExecContext(r.ctx, `INSERT INTO items (v) VALUES (1)`)
		r.result("insert while rows are open", res, err)
		r.rows("rows", rows, nil)
		r.queryRow("count", r.db, 1, `SELECT count(*) FROM items`)
	}
	t.Run("first statement of a fresh tenant", func(t *testing.T) {
		compareDrivers(t, compareOpts{cfg: Config{Migrations: schema}, directSetup: schema, timeout: 5 * time.Second}, script)
	})
	t.Run("tenant in use", func(t *testing.T) {
		compareDrivers(t, compareOpts{cfg: Config{Migrations: schema}, directSetup: schema, timeout: 5 * time.Second}, func(r *recorder) {
			r.setup(`INSERT INTO items (v) VALUES (0)`)
			script(r)
		})
	})
}

// TestCompare_ResultsAfterMigrations: migrations run on the writer and end
// with an INSERT into the ledger table. In the committed driver 7418fee the
// application's first statements on that connection then reported the
// ledger's rowid and change count (LastInsertId 2 and RowsAffected 1 for a
// CREATE TABLE after two migrations; mattn: 0 and 0); e311f42 reopens the
// writer after migrating. mattn is given the same schema by hand.
func TestCompare_ResultsAfterMigrations(t *testing.T) {
	schema := []string{`CREATE TABLE m (id INTEGER PRIMARY KEY, x)`, `CREATE TABLE m2 (y)`}
	compareDrivers(t, compareOpts{cfg: Config{Migrations: schema}, directSetup: schema}, func(r *recorder) {
		r.exec("create table", r.db, `CREATE TABLE other (z)`)
		r.exec("update none", r.db, `UPDATE m SET x = 1`)
		conn, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		defer conn.Close()
		r.exec("conn update none", conn, `UPDATE m SET x = 1`)
		r.queryRow("conn last_insert_rowid, changes", conn, 2, `SELECT last_insert_rowid(), changes()`)
		r.exec("insert", conn, `INSERT INTO m (x) VALUES (1)`)
		r.queryRow("conn last_insert_rowid, changes after insert", conn, 2, `SELECT last_insert_rowid(), changes()`)
	})
}

// TestCompare_ReadOnlyTx: mattn ignores TxOptions.ReadOnly. The proxy runs
// a read-only transaction on a reader (PRAGMA query_only), so a write in it
// fails with "attempt to write a readonly database" — an intended
// difference (README: ReadOnly transactions take a reader). In 7418fee the
// first read-only transaction on a fresh tenant got the writer instead and
// its write succeeded, so the same code succeeded or failed with pool state.
func TestCompare_ReadOnlyTx(t *testing.T) {
	schema := []string{`CREATE TABLE x (id INTEGER PRIMARY KEY, v)`}
	intended := map[string]string{
		readOnlyInserts(0, 1):                readOnlyFails(0),
		readOnlyInserts(1, 2):                readOnlyFails(1),
		`rows written => int64(2) | err=nil`: `rows written => int64(0) | err=nil`,
	}
	compareDrivers(t, compareOpts{cfg: Config{Migrations: schema}, directSetup: schema, intended: intended},
		func(r *recorder) {
			for i := range 2 {
				readOnlyTxInsert(r, r.db, i)
			}
			r.queryRow("rows written", r.db, 1, `SELECT count(*) FROM x`)
		})
}

// readOnlyTxInsert writes in a read-only transaction begun on b.
func readOnlyTxInsert(r *recorder, b interface {
	BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error)
}, i int) {
	tx, err := b.BeginTx(r.ctx, &sql.TxOptions{ReadOnly: true})
	r.note(fmt.Sprintf("read-only tx %d begin", i), errv{err})
	if err != nil {
		return
	}
	// A read through Exec runs, wherever the transaction runs (on a conn
	// that had written, the writer refused even SELECT 1).
	_, err = tx.ExecContext(r.ctx, `SELECT count(*) FROM x`)
	r.note(fmt.Sprintf("read-only tx %d exec of a read", i), errv{err})
	r.exec(fmt.Sprintf("read-only tx %d insert", i), tx, `INSERT INTO x (v) VALUES (?)`, i)
	r.note(fmt.Sprintf("read-only tx %d commit", i), errv{tx.Commit()})
}

// readOnlyFails is the proxy's line for read-only transaction i's insert.
func readOnlyFails(i int) string {
	return fmt.Sprintf(`read-only tx %d insert => err sqlite3.Error "attempt to write a readonly database" sqlite3.Error{Code:8 ExtendedCode:8 SystemErrno:0}`, i)
}

// readOnlyInserts is mattn's line for read-only transaction i's insert.
func readOnlyInserts(i int, rowid int64) string {
	return fmt.Sprintf(`read-only tx %d insert => "LastInsertId" | int64(%d) | err=nil | "RowsAffected" | int64(1) | err=nil`, i, rowid)
}

// TestCompare_ReadOnlyTxOnConnHoldingWriter: a sql.Conn keeps the
// connection its first statement leased. Once it has written (so holds the
// writer), BeginTx(ReadOnly) on it runs on that writer; a write inside is
// still refused (by the driver, as the reader would by SQLite), so a
// read-only transaction behaves the same wherever it runs.
func TestCompare_ReadOnlyTxOnConnHoldingWriter(t *testing.T) {
	schema := []string{`CREATE TABLE x (id INTEGER PRIMARY KEY, v)`}
	const ok = `"LastInsertId" | int64(%d) | err=nil | "RowsAffected" | int64(%d) | err=nil`
	intended := map[string]string{
		readOnlyInserts(0, 1): readOnlyFails(0),
		// The rows mattn wrote in read-only transactions shift what follows.
		`conn write first => ` + fmt.Sprintf(ok, 1, 1): `conn write first => ` + fmt.Sprintf(ok, 0, 0),
		`conn insert => ` + fmt.Sprintf(ok, 2, 1):      `conn insert => ` + fmt.Sprintf(ok, 1, 1),
		readOnlyInserts(1, 3):                          `read-only tx 1 insert => err *sqliteproxy.Error "sqliteproxy: route: tenant \"acme\": attempt to write a readonly database (a read-only transaction)" sqlite3.Error{Code:8 ExtendedCode:8 SystemErrno:0}`,
		`rows written => int64(3) | err=nil`:           `rows written => int64(1) | err=nil`,
	}
	// In modeTx the count through the DB is a read-write transaction, while
	// the conn, having written, holds the writer: txWaitsForWriter.
	inTx := maps.Clone(intended)
	inTx[`rows written => int64(3) | err=nil`] = txWaitsForWriter("rows written")
	o := compareOpts{
		cfg:         Config{Migrations: schema, BusyTimeout: 200 * time.Millisecond}, // the wait above
		directSetup: schema,
		intended:    intended,
		intendedIn:  map[compareMode]map[string]string{modeTx: inTx},
	}
	compareDrivers(t, o, func(r *recorder) {
		conn, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		readOnlyTxInsert(r, conn, 0) // the conn's first lease: a reader
		r.note("conn close", errv{conn.Close()})

		conn, err = r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		defer conn.Close()
		r.exec("conn write first", conn, `UPDATE x SET v = v`) // the conn now holds the writer
		r.exec("conn insert", conn, `INSERT INTO x (v) VALUES (10)`)
		readOnlyTxInsert(r, conn, 1)
		r.queryRow("rows written", r.db, 1, `SELECT count(*) FROM x`)
	})
}

// ---------------------------------------------------------------------------
// Prepare after a schema change (issue #13, item 5). A reader's schema is
// the one of its last read transaction, and TEMP objects live only in the
// writer's session, so a statement that the writer (like mattn's one
// connection) would prepare can fail on a reader; PrepareContext must not
// report that failure.

func TestCompare_PrepareAfterSchemaChange(t *testing.T) {
	mattn, _ := compareDrivers(t, compareOpts{}, func(r *recorder) {
		r.exec("create table", r.db, `CREATE TABLE t(a)`)
		r.exec("create index i", r.db, `CREATE INDEX i ON t(a)`)
		r.query("select (a reader loads the schema)", r.db, `SELECT a FROM t`)
		r.exec("drop index i", r.db, `DROP INDEX i`)
		r.prepare("prepare create index i", r.db, `CREATE INDEX i ON t(a)`)
		r.exec("create index j", r.db, `CREATE INDEX j ON t(a)`)
		r.prepare("prepare reindex j", r.db, `REINDEX j`)
		r.exec("create temp view", r.db, `CREATE TEMP VIEW v AS SELECT 1`)
		r.prepare("prepare drop view v", r.db, `DROP VIEW v`)
	})
	mustContain(t, mattn, `prepare create index i => err=nil`)
	mustContain(t, mattn, `prepare reindex j => err=nil`)
	mustContain(t, mattn, `prepare drop view v => err=nil`)
}

// TestCompare_PrepareOnReaders: texts that can read are prepared on a
// reader. Its schema must be brought up to date first (a stale one accepts
// a dropped table), and what only the writer's session holds (TEMP tables)
// must be found on the writer, also from a sql.Conn that holds a reader,
// with or without Rows open on it. When the writer fails too, its error is
// the one reported. A read-only transaction runs on its reader throughout,
// so there the reader's error stands: intended, for a TEMP table (it lives
// in the writer's session; see TestCompare_IntendedDifferences).
func TestCompare_PrepareOnReaders(t *testing.T) {
	intended := map[string]string{
		`read-only tx prepare select temp table => err=nil`: `read-only tx prepare select temp table => err sqlite3.Error "no such table: tt" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`,
	}
	mattn, _ := compareDrivers(t, compareOpts{intended: intended}, func(r *recorder) {
		r.exec("create table t", r.db, `CREATE TABLE t(a)`)
		r.exec("create table u", r.db, `CREATE TABLE u(a)`)
		r.query("select t (a reader loads the schema)", r.db, `SELECT a FROM t`)
		r.exec("drop table t", r.db, `DROP TABLE t`)
		r.prepare("prepare select dropped t", r.db, `SELECT a FROM t`)
		r.exec("add column", r.db, `ALTER TABLE u ADD COLUMN b`)
		r.prepare("prepare select added column", r.db, `SELECT b FROM u`)
		r.exec("create temp table", r.db, `CREATE TEMP TABLE tt(x)`)
		r.prepare("prepare select temp table", r.db, `SELECT x FROM tt`)
		r.prepare("prepare select missing column of temp table", r.db, `SELECT nope FROM tt`)
		r.prepare("prepare syntax error", r.db, `SELEC 1`)

		conn, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		defer conn.Close()
		r.query("conn select u (leases a reader)", conn, `SELECT a FROM u`)
		r.prepare("conn prepare select temp table", conn, `SELECT x FROM tt`)
		r.prepare("conn prepare missing column of temp table", conn, `SELECT nope FROM tt`)
		r.note("conn close", errv{conn.Close()})

		conn2, err := r.db.Conn(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		defer conn2.Close()
		rows, err := conn2.QueryContext(r.ctx, `SELECT 1 FROM u UNION ALL SELECT 2`)
		r.note("conn2 rows open", errv{err})
		if err == nil && rows.Next() {
			r.prepare("conn2 prepare select temp table with rows open", conn2, `SELECT x FROM tt`)
			r.prepare("conn2 prepare missing column with rows open", conn2, `SELECT nope FROM tt`)
			r.rows("conn2 rest of rows", rows, nil)
		}
		r.note("conn2 close", errv{conn2.Close()})

		r.exec("create table t2", r.db, `CREATE TABLE t2(a)`)
		r.query("select t2 (a reader loads the schema)", r.db, `SELECT a FROM t2`)
		r.exec("drop table t2", r.db, `DROP TABLE t2`)
		tx, err := r.db.BeginTx(r.ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			r.t.Fatal(err)
		}
		r.prepare("read-only tx prepare select dropped t2", tx, `SELECT a FROM t2`)
		r.prepare("read-only tx prepare insert", tx, `INSERT INTO u (a) VALUES (1)`)
		r.prepare("read-only tx prepare select temp table", tx, `SELECT x FROM tt`)
		r.queryRow("read-only tx still usable", tx, 1, `SELECT count(*) FROM u`)
		r.note("read-only tx commit", errv{tx.Commit()})
	})
	mustContain(t, mattn, `prepare select dropped t => err sqlite3.Error "no such table: t" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`)
	mustContain(t, mattn, `prepare select temp table => err=nil`)
	mustContain(t, mattn, `conn2 prepare select temp table with rows open => err=nil`)
	mustContain(t, mattn, `conn prepare missing column of temp table => err sqlite3.Error "no such column: nope" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`)
	mustContain(t, mattn, `read-only tx prepare select dropped t2 => err sqlite3.Error "no such table: t2" sqlite3.Error{Code:1 ExtendedCode:1 SystemErrno:0}`)
	mustContain(t, mattn, `read-only tx prepare insert => err=nil`)
}

// TestCompare_SessionFunctions: last_insert_rowid(), changes() and
// total_changes() read in a query of their own after a write answer about
// that write, as on mattn's one connection: a reader, which never wrote,
// answered 0 (a trial found code using the 0 as a foreign key). Not in
// modeContended: there the contenders' writes share the writer, as any
// other caller's would (the README says to use LastInsertId or RETURNING).
func TestCompare_SessionFunctions(t *testing.T) {
	schema := []string{
		`CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER)`,
		`CREATE TABLE b (y INTEGER)`,
		`CREATE TRIGGER a_b AFTER INSERT ON a BEGIN INSERT INTO b VALUES (new.x); INSERT INTO b VALUES (new.x); END`,
	}
	o := compareOpts{cfg: Config{Migrations: schema}, directSetup: schema}
	for _, mode := range []compareMode{modeDirect, modePrepared, modeTx} {
		t.Run(mode.String(), func(t *testing.T) {
			compareDriversIn(t, o, mode, func(r *recorder) {
				r.exec("insert", r.db, `INSERT INTO a (x) VALUES (1)`)
				r.queryRow("after insert", r.db, 2, `SELECT last_insert_rowid(), changes()`)
				r.exec("insert two", r.db, `INSERT INTO a (x) VALUES (2), (3)`)
				r.queryRow("after insert two", r.db, 2, `select LAST_INSERT_ROWID () , changes()`)
				r.exec("update", r.db, `UPDATE a SET x = x + 1`)
				r.queryRow("after update", r.db, 1, `SELECT changes() AS n`)
				r.query("rows", r.db, `SELECT id, x, last_insert_rowid() FROM a ORDER BY id`)
			})
		})
	}
}
