package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mattn/go-sqlite3"
)

// holdWriter begins a transaction on tenant id (which holds its writer)
// and returns it with the tenant object.
func holdWriter(t *testing.T, p *Proxy, id string) (*sql.Tx, *tenant) {
	t.Helper()
	return holdWriterWith(t, p, id, `INSERT INTO kv (k, v) VALUES ('held', 0)`)
}

// holdWriterWith is holdWriter with the transaction's write.
func holdWriterWith(t *testing.T, p *Proxy, id, write string) (*sql.Tx, *tenant) {
	t.Helper()
	tx, err := p.BeginTx(tctx(id), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(tctx(id), write); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant(id)
	if err != nil {
		t.Fatal(err)
	}
	return tx, tn
}

type gcResult struct {
	id, affected int64
	err          error
}

// queue starts one goroutine per statement, each an Exec through the
// *sql.DB, and waits until all but the first (the leader, waiting for the
// writer) are queued behind it (queueEach); wait returns their results.
func queue(t *testing.T, p *Proxy, tn *tenant, ctxs []context.Context, stmts []string) (wait func() []gcResult) {
	t.Helper()
	chans := queueEach(t, p, tn, ctxs, stmts)
	return func() []gcResult {
		out := make([]gcResult, len(chans))
		for i, ch := range chans {
			out[i] = <-ch
		}
		return out
	}
}

const kvTable = `CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)`

// Statements queued while the writer is busy run as one batch, in order,
// each caller with its own LastInsertId and RowsAffected; a statement that
// fails is rolled back alone and its caller gets SQLite's own error.
func TestGroupCommit_BatchKeepsEachCallersResult(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO kv (k, v) VALUES ('dup', 1)`); err != nil {
		t.Fatal(err)
	}
	tx, tn := holdWriter(t, p, "acme")
	stmts := []string{
		`INSERT INTO kv (k, v) VALUES ('a', 1)`,
		`INSERT INTO kv (k, v) VALUES ('b', 2)`,
		`INSERT INTO kv (k, v) VALUES ('dup', 9)`, // UNIQUE: fails alone
		`UPDATE kv SET v = v + 10 WHERE k IN ('a', 'b')`,
		`INSERT INTO kv (k, v) VALUES ('c', 3)`,
	}
	wait := queue(t, p, tn, nil, stmts)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := wait()
	var se sqlite3.Error
	if !errors.As(got[2].err, &se) || se.ExtendedCode != sqlite3.ErrConstraintPrimaryKey {
		t.Fatalf("the duplicate's caller got %v, want its SQLITE_CONSTRAINT_PRIMARYKEY", got[2].err)
	}
	for i, r := range got {
		if i != 2 && r.err != nil {
			t.Fatalf("statement %d: %v", i, r.err)
		}
	}
	// kv has rowids: held 2 (the tx), dup 1, then a, b, c in queue order.
	if got[0].id != 3 || got[1].id != 4 || got[4].id != 5 || got[3].affected != 2 || got[0].affected != 1 {
		t.Fatalf("results %+v", got)
	}
	rows := queryKV(t, p, "acme")
	want := []string{"a=11", "b=12", "c=3", "dup=1", "held=0"}
	if !slices.Equal(rows, want) {
		t.Fatalf("rows %v, want %v", rows, want)
	}
}

// A write that returns rows is never batched, however its RETURNING is
// spelt: after a byte order mark (a blank to SQLite) the scanner read
// "\uFEFFRETURNING" as a word, the statement joined a batch, and its step
// left it active: every caller of the batch failed with "cannot commit
// transaction - SQL statements in progress" (adv49), where mattn, one by
// one, fails none.
func TestGroupCommit_ReturningNeverBatched(t *testing.T) {
	for _, q := range []string{
		`INSERT INTO kv (k, v) VALUES ('a', 2) RETURNING v`,
		"INSERT INTO kv (k, v) VALUES ('a', 2) \uFEFFRETURNING v",
		"INSERT INTO kv (k, v) VALUES ('a', 2)\uFEFFRETURNING v",
		"\uFEFFDELETE FROM kv \uFEFFreturning *",
	} {
		if ok, _ := batchable(q); ok {
			t.Errorf("batchable(%q): a write that returns rows", q)
		}
	}
	if ok, _ := batchable("\uFEFFINSERT INTO kv (k, v) VALUES ('a', 2)"); !ok {
		t.Error("an INSERT after a byte order mark is not batched")
	}
}

func queryKV(t *testing.T, p *Proxy, id string) []string {
	t.Helper()
	return kvRows(t, p, tctx(id))
}

// A caller whose context ends while it is queued is removed: it gets its
// context's error and nothing of it runs; the others commit.
func TestGroupCommit_CanceledWhileQueued(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	tx, tn := holdWriter(t, p, "acme")
	ctx, cancel := context.WithCancel(tctx("acme"))
	wait := queue(t, p, tn, []context.Context{nil, ctx, nil}, []string{
		`INSERT INTO kv (k, v) VALUES ('a', 1)`,
		`INSERT INTO kv (k, v) VALUES ('canceled', 2)`,
		`INSERT INTO kv (k, v) VALUES ('c', 3)`,
	})
	cancel()
	waitFor(t, 10*time.Second, "the canceled statement left the queue", func() bool { return tn.queued() == 1 })
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := wait()
	if !errors.Is(got[1].err, context.Canceled) || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v", got)
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"a=1", "c=3", "held=0"}) {
		t.Fatalf("rows %v", rows)
	}
}

// A trigger that ends the whole transaction (RAISE(ROLLBACK)) cannot take
// the batch with it: the batch is rolled back and every other statement
// runs alone, so each caller gets what it would have got without batching.
func TestGroupCommit_StatementEndingTheTransaction(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable,
		`CREATE TRIGGER no_bad BEFORE INSERT ON kv WHEN NEW.k = 'bad' BEGIN SELECT RAISE(ROLLBACK, 'bad key'); END`}})
	tx, tn := holdWriter(t, p, "acme")
	wait := queue(t, p, tn, nil, []string{
		`INSERT INTO kv (k, v) VALUES ('a', 1)`,
		`INSERT INTO kv (k, v) VALUES ('b', 2)`,
		`INSERT INTO kv (k, v) VALUES ('bad', 3)`,
		`INSERT INTO kv (k, v) VALUES ('c', 4)`,
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := wait()
	if got[2].err == nil || got[0].err != nil || got[1].err != nil || got[3].err != nil {
		t.Fatalf("results %+v", got)
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"a=1", "b=2", "c=4", "held=0"}) {
		t.Fatalf("rows %v", rows)
	}
}

// A statement whose context ends while it runs in a batch is interrupted,
// as it would be alone, rather than run to its end with the whole batch
// waiting for it; SQLite rolls the batch's transaction back with it, and
// the other statements run again alone.
func TestGroupCommit_DeadlineInterruptsARunningStatement(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	tx, tn := holdWriter(t, p, "acme")
	slow, cancel := context.WithTimeout(tctx("acme"), time.Second)
	defer cancel()
	done := make(chan []gcResult, 1)
	wait := queue(t, p, tn, []context.Context{nil, nil, slow, nil}, []string{
		`INSERT INTO kv (k, v) VALUES ('a', 1)`,
		`INSERT INTO kv (k, v) VALUES ('b', 2)`,
		// Endless unless interrupted.
		`INSERT INTO kv (k, v) SELECT 'slow', count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)`,
		`INSERT INTO kv (k, v) VALUES ('c', 3)`,
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- wait() }()
	var got []gcResult
	select {
	case got = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the batch still runs 30 s after its slow statement's deadline")
	}
	if !errors.Is(got[2].err, context.DeadlineExceeded) {
		t.Errorf("the slow statement: %v, want context.DeadlineExceeded", got[2].err)
	}
	for _, i := range []int{0, 1, 3} {
		if got[i].err != nil {
			t.Errorf("statement %d: %v", i, got[i].err)
		}
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"a=1", "b=2", "c=3", "held=0"}) {
		t.Fatalf("rows %v", rows)
	}
}

// A deferred foreign key fails at COMMIT: each statement then runs alone,
// so only the violating caller fails, as without batching.
func TestGroupCommit_DeferredConstraintAtCommit(t *testing.T) {
	p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{kvTable,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY DEFERRED)`}})
	tx, tn := holdWriter(t, p, "acme")
	wait := queue(t, p, tn, nil, []string{
		`INSERT INTO kv (k, v) VALUES ('a', 1)`,
		`INSERT INTO child (k) VALUES ('nobody')`, // violates the deferred key
		`INSERT INTO child (k) VALUES ('a')`,
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := wait()
	var se sqlite3.Error
	if !errors.As(got[1].err, &se) || se.Code != sqlite3.ErrConstraint || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v", got)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM child`); n != 1 {
		t.Fatalf("child rows: %d, want 1", n)
	}
}

// A deferred foreign key broken by one caller and mended by a later one
// of the same batch (a child, then its parent) fails the first caller, as
// it would alone: with such keys statements run alone. A key added by a
// later schema change counts from then on.
func TestGroupCommit_DeferredConstraintMendedLater(t *testing.T) {
	p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{kvTable,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY DEFERRED)`}})
	run := func(child, parent string) []gcResult {
		t.Helper()
		tx, tn := holdWriter(t, p, "acme")
		wait := queue(t, p, tn, nil, []string{
			`INSERT INTO kv (k, v) VALUES ('first' || random(), 1)`,
			child,  // breaks the deferred key
			parent, // mends it
		})
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		return wait()
	}
	got := run(`INSERT INTO child (k) VALUES ('p1')`, `INSERT INTO kv (k, v) VALUES ('p1', 2)`)
	var se sqlite3.Error
	if !errors.As(got[1].err, &se) || se.Code != sqlite3.ErrConstraint || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v, want the child's insert to fail alone", got)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM child`); n != 0 {
		t.Fatalf("child rows: %d, want 0", n)
	}
	// A table with such a key made after the writer looked at the schema.
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE child2 (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE
		INITIALLY /* later */ DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `DROP TABLE child`); err != nil {
		t.Fatal(err)
	}
	got = run(`INSERT INTO child2 (k) VALUES ('p2')`, `INSERT INTO kv (k, v) VALUES ('p2', 2)`)
	if !errors.As(got[1].err, &se) || se.Code != sqlite3.ErrConstraint || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v, want the child's insert to fail alone", got)
	}
}

// The same, with the keys switched on by a caller's PRAGMA foreign_keys
// (it stays with the writer) rather than Config.ForeignKeys, and with a
// TEMP table that has such a key: the batch let the child that broke the
// key through, where alone it failed.
func TestGroupCommit_DeferredKeysOfTheSession(t *testing.T) {
	for _, tc := range []struct{ name, setup, child, parent string }{
		{"pragma", `PRAGMA foreign_keys = ON`, `child`, `kv`},
		// Blanks SQLite reads between the words that Go's \s does not (adv50).
		{"bom", `PRAGMA foreign_keys = ON`, `child_bom`, `kv`},
		{"vtab", `PRAGMA foreign_keys = ON`, `child_vtab`, `kv`},
		{"temp", `CREATE TEMP TABLE tkv (k TEXT PRIMARY KEY, v INTEGER);
			CREATE TEMP TABLE tchild (id INTEGER PRIMARY KEY, k TEXT REFERENCES tkv (k) DEFERRABLE INITIALLY DEFERRED)`, `temp.tchild`, `temp.tkv`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			migs := []string{kvTable, `CREATE TABLE child (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY DEFERRED)`}
			switch tc.name {
			case "temp":
				migs = migs[:1] // the only such key is the TEMP table's
			case "bom": // the only such key, written so
				migs = []string{kvTable, "CREATE TABLE child_bom (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY \uFEFFDEFERRED)"}
			case "vtab":
				migs = []string{kvTable, "CREATE TABLE child_vtab (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY \vDEFERRED)"}
			}
			p := newTestProxy(t, Config{ForeignKeys: tc.name == "temp", Migrations: migs})
			if _, err := p.ExecContext(tctx("acme"), tc.setup); err != nil {
				t.Fatal(err)
			}
			tx, tn := holdWriter(t, p, "acme")
			wait := queue(t, p, tn, nil, []string{
				`INSERT INTO kv (k, v) VALUES ('first', 1)`,
				`INSERT INTO ` + tc.child + ` (k) VALUES ('p1')`,        // breaks the deferred key
				`INSERT INTO ` + tc.parent + ` (k, v) VALUES ('p1', 2)`, // mends it
			})
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			got := wait()
			var se sqlite3.Error
			if !errors.As(got[1].err, &se) || se.Code != sqlite3.ErrConstraint || got[0].err != nil || got[2].err != nil {
				t.Fatalf("results %+v, want the child's insert to fail alone", got)
			}
		})
	}
}

// PRAGMA defer_foreign_keys = ON through the DB lasts on the writer until
// the next statement that reads the database ends in autocommit: were the
// next batch that statement, a caller's child row whose parent a later
// caller of the batch inserts would pass, where alone (as in mattn) it
// fails at once. The batch's look at the schema (deferredKeys) ends it.
func TestGroupCommit_DeferForeignKeysPragma(t *testing.T) {
	p := newTestProxy(t, Config{ForeignKeys: true, Migrations: []string{kvTable,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k))`}})
	ctx := tctx("acme")
	batches := recordBatches(t)
	conn, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The Conn holds the writer from its first statement until it closes.
	if _, err := conn.ExecContext(ctx, `PRAGMA defer_foreign_keys = ON`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	wait := queue(t, p, tn, nil, []string{
		`INSERT INTO kv (k, v) VALUES ('first', 1)`,
		`INSERT INTO child (k) VALUES ('p1')`,    // breaks the key
		`INSERT INTO kv (k, v) VALUES ('p1', 2)`, // would mend it before a COMMIT
	})
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	got := wait()
	if b := batches(); !slices.Equal(b, []int{3}) {
		t.Fatalf("batches %v, want one of 3", b)
	}
	var se sqlite3.Error
	if !errors.As(got[1].err, &se) || se.Code != sqlite3.ErrConstraint || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v, want the child's insert to fail alone", got)
	}
	if n := queryInt(t, p, ctx, `SELECT count(*) FROM child`); n != 0 {
		t.Fatalf("child rows: %d, want 0", n)
	}
}

// A write whose context has no deadline waits BusyTimeout from its call
// and then gets SQLITE_BUSY, queued or not: a queue of k callers behind a
// held writer must not make the last wait k × BusyTimeout (each used to
// start a fresh bound when it was handed the lead).
func TestGroupCommit_QueuedWaitBoundedByBusyTimeout(t *testing.T) {
	const busy = 200 * time.Millisecond
	const n = 16 // before the fix the k-th waited k x busy: most of them past the bound below
	for name, mode := range map[string]GroupCommitMode{"on": GroupCommitOn, "off": GroupCommitOff} {
		t.Run("group_commit="+name, func(t *testing.T) {
			p := newTestProxy(t, Config{Migrations: []string{kvTable}, BusyTimeout: busy, GroupCommit: mode})
			tx, tn := holdWriter(t, p, "acme")
			type outcome struct {
				took time.Duration
				err  error
			}
			done := make(chan outcome, n)
			for i := range n {
				go func() {
					start := time.Now()
					_, err := p.ExecContext(tctx("acme"), fmt.Sprintf(`INSERT INTO kv (k, v) VALUES ('w%d', %d)`, i, i))
					done <- outcome{time.Since(start), err}
				}()
			}
			waitFor(t, 10*time.Second, "every writer waiting", func() bool {
				if mode == GroupCommitOff {
					return tn.wsem.nwait.Load() == n
				}
				return tn.queued() == n-1 && tn.wsem.nwait.Load() == 1
			})
			for range n {
				select {
				case o := <-done:
					var se sqlite3.Error
					if !errors.As(o.err, &se) || se.Code != sqlite3.ErrBusy {
						t.Errorf("after %v: %v, want SQLITE_BUSY", o.took, o.err)
					}
					if o.took > 6*busy { // room for a loaded machine
						t.Errorf("waited %v with a BusyTimeout of %v", o.took, busy)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("a writer still waits after 30 s")
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"held=0"}) {
				t.Errorf("rows %v: a write that got SQLITE_BUSY ran", rows)
			}
		})
	}
}

// Off (Config.GroupCommit = GroupCommitOff, DSN group_commit=false),
// nothing queues.
func TestGroupCommit_Off(t *testing.T) {
	cfg, err := ParseDSN("dir=" + t.TempDir() + "&group_commit=false")
	if err != nil || cfg.GroupCommit != GroupCommitOff {
		t.Fatalf("ParseDSN: %v, %v", cfg.GroupCommit, err)
	}
	cfg.Migrations = []string{kvTable}
	p := newTestProxy(t, *cfg)
	tx, tn := holdWriter(t, p, "acme")
	done := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(tctx("acme"), `INSERT INTO kv (k, v) VALUES ('a', 1)`)
		done <- err
	}()
	waitFor(t, 10*time.Second, "the writer waited for", func() bool { return tn.wsem.nwait.Load() == 1 })
	if tn.gc.active.Load() || tn.queued() != 0 {
		t.Fatal("queued with group commit off")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// INSERT OR FAIL keeps the rows it inserted before the failing one, in a
// batch as in autocommit mode with mattn (and the batch goes on).
func TestGroupCommit_OrFailKeepsWhatAutocommitKeeps(t *testing.T) {
	const stmt = `INSERT OR FAIL INTO kv (k, v) VALUES ('x1', 1), ('dup', 2), ('x2', 3)`
	dir := t.TempDir()
	m := direct(t, dir, "mattn")
	for _, s := range []string{kvTable, `INSERT INTO kv (k, v) VALUES ('dup', 1)`, stmt} {
		m.Exec(s)
	}
	want := kvRows(t, m, context.Background())

	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO kv (k, v) VALUES ('dup', 1)`); err != nil {
		t.Fatal(err)
	}
	tx, tn := holdWriter(t, p, "acme")
	wait := queue(t, p, tn, nil, []string{`INSERT INTO kv (k, v) VALUES ('a', 1)`, stmt, `INSERT INTO kv (k, v) VALUES ('b', 2)`})
	if err := tx.Rollback(); err != nil { // 'held' goes: compare with mattn's rows
		t.Fatal(err)
	}
	got := wait()
	if got[1].err == nil || got[0].err != nil || got[2].err != nil {
		t.Fatalf("results %+v", got)
	}
	want = append(want, "a=1", "b=2")
	slices.Sort(want)
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, want) {
		t.Fatalf("rows %v, want %v (mattn's, plus a and b)", rows, want)
	}
}

// What INSERT OR FAIL (or RAISE(FAIL)) keeps when it fails is kept when
// its batch is rolled back and run again alone, as mattn keeps it in
// autocommit mode: by a later statement that ends the transaction, or by a
// deferred constraint failing at COMMIT.
func TestGroupCommit_OrFailKeptWhenTheBatchRunsAgain(t *testing.T) {
	const orFail = `INSERT OR FAIL INTO kv (k, v) VALUES ('x1', 1), ('dup', 2), ('x2', 3)`
	schema := []string{kvTable,
		`CREATE TRIGGER no_bad BEFORE INSERT ON kv WHEN NEW.k = 'bad' BEGIN SELECT RAISE(ROLLBACK, 'bad key'); END`,
		`CREATE TRIGGER fail_f BEFORE INSERT ON kv WHEN NEW.k = 'f2' BEGIN SELECT RAISE(FAIL, 'f2'); END`,
		`CREATE TABLE child (id INTEGER PRIMARY KEY, k TEXT REFERENCES kv (k) DEFERRABLE INITIALLY DEFERRED)`,
		`INSERT INTO kv (k, v) VALUES ('dup', 0)`,
	}
	for _, tc := range []struct {
		name  string
		stmts []string
	}{
		{"rollback-after", []string{orFail, `INSERT INTO kv (k, v) VALUES ('a', 1)`, `INSERT INTO kv (k, v) VALUES ('bad', 2)`}},
		{"deferred-fk", []string{`INSERT INTO child (k) VALUES ('nobody')`, orFail, `INSERT INTO kv (k, v) VALUES ('a', 1)`}},
		{"raise-fail", []string{`INSERT INTO kv (k, v) VALUES ('f1', 1), ('f2', 2), ('f3', 3)`, `INSERT INTO kv (k, v) VALUES ('bad', 2)`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// mattn, one statement after the other in autocommit mode.
			m, err := sql.Open("sqlite3", filepath.Join(t.TempDir(), "m.db")+"?_foreign_keys=1")
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for _, s := range schema {
				if _, err := m.Exec(s); err != nil {
					t.Fatal(err)
				}
			}
			var wantErrs []bool
			for _, s := range tc.stmts {
				_, err := m.Exec(s)
				wantErrs = append(wantErrs, err != nil)
			}
			want := kvRows(t, m, context.Background())

			p := newTestProxy(t, Config{ForeignKeys: true, Migrations: schema})
			tx, tn := holdWriter(t, p, "acme")
			wait := queue(t, p, tn, nil, append([]string{`INSERT INTO kv (k, v) VALUES ('lead', 0)`}, tc.stmts...))
			if err := tx.Rollback(); err != nil { // 'held' goes
				t.Fatal(err)
			}
			got := wait()
			if got[0].err != nil {
				t.Fatalf("the leader's statement: %v", got[0].err)
			}
			for i, r := range got[1:] {
				if (r.err != nil) != wantErrs[i] {
					t.Errorf("statement %d (%s): %v; mattn failed: %v", i, tc.stmts[i], r.err, wantErrs[i])
				}
			}
			want = append(want, "lead=0")
			slices.Sort(want)
			if rows := queryKV(t, p, "acme"); !slices.Equal(rows, want) {
				t.Errorf("rows %v, want %v (mattn's, plus lead)", rows, want)
			}
		})
	}
}

// kvRows returns kv's rows on db as k=v, sorted by k.
func kvRows(t *testing.T, db interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, ctx context.Context) []string {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT k, v FROM kv ORDER BY k`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k string
		var v int
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s=%d", k, v))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGroupCommit_ConnWorkNeverBatched: a sql.Conn's first statement looks
// to the driver like a DB's one-statement checkout, but it must not join a
// batch: the Conn's next statement would not find the session it left
// (here last_insert_rowid(), which would be read on a reader or after
// other callers' statements).
func TestGroupCommit_ConnWorkNeverBatched(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	var mu sync.Mutex
	var seen []string
	hook := func(batch []*gcReq) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range batch {
			seen = append(seen, r.query)
		}
	}
	batchHook.Store(&hook)
	t.Cleanup(func() { batchHook.Store(nil) })

	tx, tn := holdWriter(t, p, "acme")
	// A DB Exec leads a batch and waits for the writer; a second one
	// queues behind it: the queue is open.
	wait := queue(t, p, tn, nil, []string{
		`INSERT INTO kv (k, v) VALUES ('db1', 1)`,
		`INSERT INTO kv (k, v) VALUES ('db2', 2)`,
	})
	conn, err := p.Conn(tctx("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type connResult struct {
		id, readBack int64
		err          error
	}
	done := make(chan connResult, 1)
	go func() {
		var r connResult
		res, err := conn.ExecContext(tctx("acme"), `INSERT INTO kv (k, v) VALUES ('conn', 3)`)
		if err == nil {
			r.id, _ = res.LastInsertId()
			err = conn.QueryRowContext(tctx("acme"), `SELECT last_insert_rowid()`).Scan(&r.readBack)
		}
		r.err = err
		done <- r
	}()
	// The Conn's statement waits for the writer, not in the queue.
	waitFor(t, 5*time.Second, "the Conn's insert waiting for the writer", func() bool {
		return tn.wsem.nwait.Load() >= 2 // the leader and the Conn
	})
	if got := tn.queued(); got != 1 {
		t.Fatalf("queued = %d, want 1 (only the DB's second insert)", got)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for i, r := range wait() {
		if r.err != nil {
			t.Fatalf("db insert %d: %v", i, r.err)
		}
	}
	var r connResult
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the Conn's insert did not finish")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.readBack != r.id || r.id == 0 {
		t.Errorf("Conn: LastInsertId %d, then last_insert_rowid() %d on the same Conn", r.id, r.readBack)
	}
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(seen, `INSERT INTO kv (k, v) VALUES ('conn', 3)`) {
		t.Errorf("the Conn's statement ran in a batch: %q", seen)
	}
	if !slices.Contains(seen, `INSERT INTO kv (k, v) VALUES ('db2', 2)`) {
		t.Errorf("the DB's statements did not batch (the test proves nothing): %q", seen)
	}
	if n := throughDBDeep.Load(); n != 0 {
		t.Errorf("throughDB's first look (%d frames) decided nothing %d times: database/sql's frames moved", throughDBDepth, n)
	}
}

// A batched statement without arguments runs from the writer's prepared
// statements (execBatched): parsed once per writer, prepared again by
// SQLite when the schema changes under it; a statement with a parameter
// gets mattn's own error, and one with a tail after its ';' mattn's own
// result. The callers' transcript is the one
// mattn gives running the same statements one by one.
func TestGroupCommit_StatementsWithoutArgumentsStayPrepared(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{kvTable}})
	direct := openDirect(t)
	direct.SetMaxOpenConns(1) // one connection, as the tenant's one writer
	if _, err := direct.Exec(kvTable); err != nil {
		t.Fatal(err)
	}
	const (
		ins   = `INSERT INTO kv (k, v) VALUES ('a', 1)`
		upd   = `UPDATE kv SET v = v + 1 WHERE k = 'a'`
		del   = `DELETE FROM kv WHERE k = 'a'`
		param = `INSERT INTO kv (k, v) VALUES (?, 1)`
	)
	// Dropped and made again with a CHECK that a statement prepared for the
	// old table would not enforce.
	const recreate = `DROP TABLE kv; CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL CHECK (v > 1))`
	batches := [][]string{
		{ins, upd, param, upd, upd + "; /* mattn runs the tail too: 0 rows */"},
		{del, ins, upd, del},
		{recreate},
		{ins, upd, `INSERT INTO kv (k, v) VALUES ('b', 2)`, upd},
		{`DROP TABLE kv`},
		{ins, upd},
	}
	type outcome struct {
		ID, Affected int64
		Err          string
	}
	var want, got []outcome
	add := func(to *[]outcome, res sql.Result, err error) {
		if err != nil {
			*to = append(*to, outcome{Err: err.Error()})
			return
		}
		id, _ := res.LastInsertId()
		n, _ := res.RowsAffected()
		*to = append(*to, outcome{ID: id, Affected: n})
	}
	for i, stmts := range batches {
		for _, s := range stmts {
			res, err := direct.Exec(s)
			add(&want, res, err)
		}
		if len(stmts) == 1 { // schema changes run alone
			res, err := p.ExecContext(tctx("acme"), stmts[0])
			add(&got, res, err)
			continue
		}
		tx, err := p.BeginTx(tctx("acme"), nil)
		if err != nil {
			t.Fatal(err)
		}
		tn, err := p.c.r.tenant("acme")
		if err != nil {
			t.Fatal(err)
		}
		wait := queue(t, p, tn, nil, stmts)
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		for _, r := range wait() {
			if r.err != nil {
				got = append(got, outcome{Err: r.err.Error()})
			} else {
				got = append(got, outcome{ID: r.id, Affected: r.affected})
			}
		}
		if i == 0 {
			if _, ok := tn.w.stmts[ins]; !ok {
				t.Fatalf("%q was not kept prepared by the writer", ins)
			}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("batched vs mattn one by one (-want +got):\n%s", diff)
	}
}

// After a batch of n, the next leader waits (gathers) until n callers are
// queued, or for about as long as a COMMIT takes, before it runs: callers
// answered together come back together, and without the wait the first of
// them committed alone while the others queued behind it (two syncs per
// round instead of one at synchronous=FULL). A gather that times out waits
// for fewer callers next time, and a lone writer then takes the writer
// without the queue again.
func TestGroupCommit_LeaderGathers(t *testing.T) {
	// As after a batch of three whose COMMIT took long: the writer is free.
	p, tn, batches, insert, done := gatherAfterBatch(t, 3)
	insert("a")
	waitFor(t, 10*time.Second, "the first caller leading", tn.gc.active.Load)
	insert("b")
	waitFor(t, 10*time.Second, "the second caller queued", func() bool { return tn.queued() == 1 })
	if got := batches(); len(got) != 0 || tn.wsem.held.Load() {
		t.Fatalf("ran before the third caller came: batches %v, writer held %v", got, tn.wsem.held.Load())
	}
	insert("c")
	awaitAll(t, done, 3)
	if got := batches(); !slices.Equal(got, []int{3}) {
		t.Fatalf("batches %v, want one of 3", got)
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"a=1", "b=1", "c=1", "open=0"}) {
		t.Fatalf("rows %v", rows)
	}

	// Fewer callers than last time: the wait ends at its bound, runs what
	// came, and the next gather waits for that many.
	tn.gc.want.Store(3)
	tn.gc.gatherMax = 20 * time.Millisecond
	insert("d")
	awaitAll(t, done, 1)
	if got := batches(); !slices.Equal(got, []int{3, 1}) || tn.gc.want.Load() != 1 {
		t.Fatalf("batches %v, want %d: want [3 1], 1", got, tn.gc.want.Load())
	}
	// A lone writer now takes the writer as without group commit.
	for i := range 5 {
		if _, err := p.ExecContext(tctx("acme"), `UPDATE kv SET v = v + 1 WHERE k = 'd'`); err != nil {
			t.Fatal(i, err)
		}
	}
	if got := batches(); len(got) != 2 || tn.gc.active.Load() {
		t.Fatalf("a lone writer went through the queue: batches %v", got)
	}
}

// recordBatches records the size of every batch from now until the test
// ends, and returns them as run so far.
func recordBatches(t *testing.T) func() []int {
	var mu sync.Mutex
	var sizes []int
	hook := func(batch []*gcReq) {
		mu.Lock()
		sizes = append(sizes, len(batch))
		mu.Unlock()
	}
	batchHook.Store(&hook)
	t.Cleanup(func() { batchHook.Store(nil) })
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(sizes)
	}
}

// gatherAfterBatch returns tenant acme of a new proxy (with a row 'open')
// as after a batch of n whose COMMIT took an hour, the writer free, with
// its batches recorded (recordBatches) and an inserter (kvInserter) whose
// outcomes arrive on done.
func gatherAfterBatch(t *testing.T, n int32) (p *Proxy, tn *tenant, batches func() []int, insert func(k string), done chan error) {
	t.Helper()
	p = newTestProxy(t, Config{Migrations: []string{kvTable}})
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO kv (k, v) VALUES ('open', 0)`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	batches = recordBatches(t)
	tn.gc.want.Store(n)
	tn.gc.commit.Store(int64(time.Hour))
	tn.gc.gatherMax = time.Hour
	done = make(chan error, n)
	return p, tn, batches, kvInserter(p, "acme", done), done
}

// kvInserter returns a function that inserts key k with value 1 into
// tenant id's kv table from a goroutine of its own, and sends the outcome
// on done.
func kvInserter(p *Proxy, id string, done chan<- error) func(k string) {
	return func(k string) {
		go func() {
			_, err := p.ExecContext(tctx(id), `INSERT INTO kv (k, v) VALUES ('`+k+`', 1)`)
			done <- err
		}()
	}
}

// awaitAll receives n outcomes from done, failing on the first error or
// when they take longer than a minute.
func awaitAll(t *testing.T, done <-chan error, n int) {
	t.Helper()
	deadline := time.After(time.Minute)
	for range n {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("%d statements not answered within a minute", n)
		}
	}
}

// sleepingLeader reports whether a leader of tn sleeps in sleepGather.
func sleepingLeader(tn *tenant) bool {
	tn.gc.mu.Lock()
	defer tn.gc.mu.Unlock()
	return tn.gc.gathering > 0
}

// A leader whose yield stalls, because other goroutines keep every
// processor busy without blocking, stops yielding: it sleeps until the
// caller that completes its batch wakes it (or the gather's bound), and
// so do the leaders after it for gatherSleep. Polling, it would run again
// only when the scheduler preempted one of the busy goroutines (every
// 10 ms), and the writes of a tenant read by eight goroutines at once ran
// at a fifth of their rate.
func TestGroupCommit_StalledLeaderSleeps(t *testing.T) {
	p, tn, batches, insert, done := gatherAfterBatch(t, 2)

	// One processor, kept busy by two goroutines that never block.
	prev := runtime.GOMAXPROCS(1)
	var stop atomic.Bool
	var busy sync.WaitGroup
	for range 2 {
		busy.Go(func() {
			for !stop.Load() {
			}
		})
	}
	release := func() {
		if !stop.Swap(true) {
			busy.Wait()
			runtime.GOMAXPROCS(prev)
		}
	}
	t.Cleanup(release)
	stalled := time.Now()
	insert("a")
	waitFor(t, time.Minute, "the leader asleep after a stalled yield", func() bool { return sleepingLeader(tn) })
	insert("b")
	awaitAll(t, done, 2)
	release()
	if got := batches(); !slices.Equal(got, []int{2}) {
		t.Fatalf("batches %v, want one of 2", got)
	}
	tn.gc.mu.Lock()
	until := tn.gc.sleepUntil
	// gatherSleep (1 s) may pass before the next leader on a loaded
	// machine: what is checked here is that the stall set it, and the
	// rest of the test gets an hour.
	tn.gc.sleepUntil = time.Now().Add(time.Hour)
	tn.gc.mu.Unlock()
	if !until.After(stalled) {
		t.Fatalf("the stall did not make the next gathers sleep (sleepUntil %v, stalled at %v)", until, stalled)
	}

	// The next leader sleeps without trying a yield, and is woken too.
	yields := tn.gc.yields
	insert("c")
	waitFor(t, time.Minute, "the next leader asleep", func() bool { return sleepingLeader(tn) })
	insert("d")
	awaitAll(t, done, 2)
	if tn.gc.yields != yields {
		t.Fatalf("the next leader yielded %d times", tn.gc.yields-yields)
	}
	// Asleep, a gather still ends at its bound, with what came.
	tn.gc.gatherMax = 20 * time.Millisecond
	insert("e")
	awaitAll(t, done, 1)
	if got := batches(); !slices.Equal(got, []int{2, 2, 1}) || tn.gc.want.Load() != 1 {
		t.Fatalf("batches %v, want %d: want [2 2 1], 1", got, tn.gc.want.Load())
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"a=1", "b=1", "c=1", "d=1", "e=1", "open=0"}) {
		t.Fatalf("rows %v", rows)
	}
}

// A sleeping leader whose context ends stops gathering at once: nothing
// of its statement runs and its caller gets the context's error, and it
// hands the lead to the callers it gathered (leading them, it would hold
// its caller for their statements).
func TestGroupCommit_SleepingLeaderCancelled(t *testing.T) {
	p, tn, batches, insert, done := gatherAfterBatch(t, 3)
	tn.gc.sleepUntil = time.Now().Add(time.Hour)
	ctx, cancel := context.WithCancel(tctx("acme"))
	defer cancel()
	leader := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(ctx, `INSERT INTO kv (k, v) VALUES ('a', 1)`)
		leader <- err
	}()
	waitFor(t, time.Minute, "the first caller asleep", func() bool { return sleepingLeader(tn) })
	insert("b")
	waitFor(t, time.Minute, "the second caller queued", func() bool { return tn.queued() == 1 })
	cancel()
	select {
	case err := <-leader:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled leader: %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a cancelled leader still sleeps")
	}
	// b leads now, and gathers (for one more: the gather that ended set
	// want to the two callers it had).
	waitFor(t, time.Minute, "b to lead and gather", func() bool { return sleepingLeader(tn) })
	insert("c")
	awaitAll(t, done, 2)
	if got := batches(); !slices.Equal(got, []int{2}) {
		t.Fatalf("batches %v, want one of 2 (b, leading, and c)", got)
	}
	if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{"b=1", "c=1", "open=0"}) {
		t.Fatalf("rows %v", rows)
	}
}

// Another process holds the write lock: a batch's BEGIN IMMEDIATE waits
// BusyTimeout and fails, and so does every caller of the batch, at once.
// Each statement then ran alone, each waiting BusyTimeout again, and the
// callers were answered one BusyTimeout after the other (twelve writers,
// BusyTimeout 1 s: answered after 10 s; without group commit after 1 s).
func TestGroupCommit_ExternalWriteLock(t *testing.T) {
	t.Parallel()
	// Long enough for all the writers to queue within the first's wait on
	// a loaded machine; eight answered one after another would take 7 × it.
	const busy = 2 * time.Second
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, BusyTimeout: busy, GroupCommit: GroupCommitOn, Migrations: []string{eventsTable}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO events (tenant) VALUES ('first')`); err != nil {
		t.Fatal(err)
	}
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	writeLock(t, dir, "acme")
	const writers = 8
	took := make(chan time.Duration, writers)
	start := time.Now()
	// Deadlines far off: nothing but the lock ends the waits.
	wctx, cancel := context.WithTimeout(ctx, 20*busy)
	defer cancel()
	write := func() {
		_, err := p.ExecContext(wctx, `INSERT INTO events (tenant) VALUES ('blocked')`)
		if se := (sqlite3.Error{}); !errors.As(err, &se) || se.Code != sqlite3.ErrBusy {
			t.Errorf("a write beside another process's write lock: %v, want SQLITE_BUSY", err)
		}
		took <- time.Since(start)
	}
	// The first waits for the lock on the writer; the others queue behind
	// it (a leader for the writer, the rest for its batch).
	go write()
	waitFor(t, 10*time.Second, "the first write to hold the writer", func() bool { return tn.wsem.held.Load() })
	for range writers - 1 {
		go write()
	}
	waitFor(t, 10*time.Second, "a batch to queue", func() bool { return tn.wsem.nwait.Load() == 1 && tn.queued() == writers-2 })
	var slowest time.Duration
	for range writers {
		select {
		case d := <-took:
			slowest = max(slowest, d)
		case <-time.After(30 * time.Second):
			t.Fatal("writers still waiting 30 s on")
		}
	}
	// The first's wait, then the batch's BEGIN: 2 × BusyTimeout.
	if slowest > 4*busy {
		t.Errorf("the last writer was answered after %v, BusyTimeout %v: callers waited one BusyTimeout after the other", slowest, busy)
	}
}

// A caller taken into a batch whose own statement has not run yet leaves
// at its deadline, and the leader skips it: it waited for another caller's
// slow statement ahead of it (and the COMMIT), returning "deadline
// exceeded" only once the batch was done, seconds after its deadline.
func TestGroupCommit_BatchedCallerLeavesAtDeadline(t *testing.T) {
	// Not parallel: batchHook is global.
	p := newTestProxy(t, Config{GroupCommit: GroupCommitOn, Migrations: []string{kvTable}})
	ctx := tctx("acme")
	tx, tn := holdWriter(t, p, "acme") // while the batch queues
	defer tn.unpin()
	type outcome struct {
		err error
		at  time.Time
	}
	slow, fast := make(chan outcome, 1), make(chan outcome, 1)
	go func() { // seconds of work, no deadline: the batch's leader
		_, err := p.ExecContext(ctx, `INSERT INTO kv (k, v) SELECT 'slow', max(x) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 10000000) SELECT x FROM c)`)
		slow <- outcome{err, time.Now()}
	}()
	waitFor(t, 10*time.Second, "the slow statement to wait for the writer", func() bool { return tn.wsem.nwait.Load() == 1 })
	// A second for the fast caller to queue on a loaded machine; the slow
	// statement takes several (1.5–3 s under -race here).
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	// The batch that carries the fast statement starts once its deadline
	// has passed: on a fast machine the slow statement ran in less than
	// the second, and the fast one with it.
	hook := func(batch []*gcReq) {
		if slices.ContainsFunc(batch, func(r *gcReq) bool { return r.ctx.Done() == fctx.Done() }) {
			<-fctx.Done()
		}
	}
	batchHook.Store(&hook)
	defer batchHook.Store(nil)
	go func() {
		_, err := p.ExecContext(fctx, `INSERT INTO kv (k, v) VALUES ('fast', 1)`)
		fast <- outcome{err, time.Now()}
	}()
	waitFor(t, 10*time.Second, "the fast statement to queue", func() bool { return tn.queued() == 1 })
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	f, s := <-fast, <-slow
	if !errors.Is(f.err, context.DeadlineExceeded) {
		t.Errorf("the fast statement: %v, want context.DeadlineExceeded", f.err)
	}
	if s.err != nil {
		t.Fatalf("the slow statement: %v", s.err)
	}
	if !f.at.Before(s.at) {
		t.Errorf("the fast statement returned %v after the slow one ahead of it was done; want at its deadline, before", f.at.Sub(s.at))
	}
	if got := directRows(t, p, "acme", `SELECT k FROM kv ORDER BY rowid`); !slices.Equal(got, []string{"held", "slow"}) {
		t.Errorf("rows %q, want [held slow]: nothing of the abandoned statement", got)
	}
}

// queueEach starts one goroutine per statement, each an Exec through the
// *sql.DB, in order (the first leads, the others queue FIFO behind it:
// each is waited for), and returns each one's result on a channel of its
// own, as it comes.
func queueEach(t *testing.T, p *Proxy, tn *tenant, ctxs []context.Context, stmts []string) []chan gcResult {
	t.Helper()
	out := make([]chan gcResult, len(stmts))
	for i, s := range stmts {
		ctx := tctx(tn.id)
		if ctxs != nil && ctxs[i] != nil {
			ctx = ctxs[i]
		}
		out[i] = make(chan gcResult, 1)
		go func() {
			var r gcResult
			res, err := p.ExecContext(ctx, s)
			if r.err = err; err == nil {
				r.id, _ = res.LastInsertId()
				r.affected, _ = res.RowsAffected()
			}
			out[i] <- r
		}()
		waitFor(t, 10*time.Second, fmt.Sprintf("statement %d queued", i), func() bool {
			tn.gc.mu.Lock()
			defer tn.gc.mu.Unlock()
			return tn.gc.active.Load() && len(tn.gc.q) == i
		})
	}
	return out
}

// recv returns what ch gives within a minute, or fails the test.
func recv(t *testing.T, ch chan gcResult, what string) gcResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(time.Minute):
		t.Fatalf("%s: no answer after a minute", what)
		return gcResult{}
	}
}

// watchBatches records the requests of every batch (batchHook) and returns
// a func that finds the one running query.
func watchBatches(t *testing.T) (running func(query string) bool) {
	var mu sync.Mutex
	var seen []*gcReq
	hook := func(batch []*gcReq) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, batch...)
	}
	batchHook.Store(&hook)
	t.Cleanup(func() { batchHook.Store(nil) })
	return func(query string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(seen, func(r *gcReq) bool { return r.query == query && r.state.Load() == reqRunning })
	}
}

// writeLocked reports whether another connection holds tenant id's write
// lock, seen from a plain mattn connection that does not wait: an
// autocommit write holds it from its first instruction, after SQLite has
// cleared an interrupt that came before the statement started (which
// mattn's single sqlite3_interrupt on a context's end then misses).
func writeLocked(t *testing.T, db *sql.DB) bool {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(context.Background(), `PRAGMA busy_timeout = 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		if se := (sqlite3.Error{}); errors.As(err, &se) && se.Code == sqlite3.ErrBusy {
			return true
		}
		t.Fatal(err)
	}
	if _, err := c.ExecContext(context.Background(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	return false
}

// endless runs until its context ends.
const endless = `INSERT INTO kv (k, v) SELECT 'slow', count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)`

// A caller whose statement ran in a batch and whose context ends while a
// later statement of the batch still runs leaves at once, as it would
// have been answered by then alone: the batch is undone (the running
// statement interrupted, nothing of the leaving caller applied), and the
// others run again, the interrupted one alone, by its own caller. The
// leader's caller leaves so too, from another's statement it runs.
func TestGroupCommit_RanCallerLeavesBeforeTheCommit(t *testing.T) {
	// Not parallel: batchHook is global.
	for _, tt := range []struct {
		name         string
		leaves, stay int // callers 0 ('a', the leader) and 1 ('b')
		row          string
	}{
		{"member", 1, 0, "a=1"},
		{"leader", 0, 1, "b=2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, Config{GroupCommit: GroupCommitOn, Migrations: []string{kvTable}})
			running := watchBatches(t)
			tx, tn := holdWriter(t, p, "acme")
			defer tn.unpin()
			lctx, leave := context.WithCancel(tctx("acme"))
			defer leave()
			sctx, stop := context.WithCancel(tctx("acme"))
			defer stop()
			ctxs := []context.Context{nil, nil, sctx, nil}
			ctxs[tt.leaves] = lctx
			got := queueEach(t, p, tn, ctxs, []string{
				`INSERT INTO kv (k, v) VALUES ('a', 1)`,
				`INSERT INTO kv (k, v) VALUES ('b', 2)`,
				endless,
				`INSERT INTO kv (k, v) VALUES ('c', 3)`,
			})
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, time.Minute, "the endless statement to run in the batch", func() bool { return running(endless) })
			leave()
			if r := recv(t, got[tt.leaves], "the caller that left"); !errors.Is(r.err, context.Canceled) {
				t.Fatalf("the caller that left: %v, want context.Canceled", r.err)
			}
			// The other's statement runs again (its caller still waits)
			// while the endless one runs alone, by its own caller.
			if r := recv(t, got[tt.stay], "the caller that stayed"); r.err != nil || r.affected != 1 {
				t.Fatalf("the caller that stayed: %+v", r)
			}
			waitFor(t, time.Minute, "the endless statement to run again", func() bool { return running(endless) })
			other := direct(t, p.Config().Dir, "acme")
			waitFor(t, time.Minute, "the endless statement to run in SQLite", func() bool { return writeLocked(t, other) })
			if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{tt.row, "held=0"}) {
				t.Fatalf("rows %v while the endless statement runs alone, want [%s held=0]", rows, tt.row)
			}
			stop()
			if r := recv(t, got[2], "the endless statement"); !errors.Is(r.err, context.Canceled) {
				t.Fatalf("the endless statement: %v, want context.Canceled", r.err)
			}
			if r := recv(t, got[3], "the last caller"); r.err != nil || r.affected != 1 {
				t.Fatalf("the last caller: %+v", r)
			}
			if rows := queryKV(t, p, "acme"); !slices.Equal(rows, []string{tt.row, "c=3", "held=0"}) {
				t.Fatalf("rows %v, want [%s c=3 held=0]: nothing of the caller that left", rows, tt.row)
			}
		})
	}
}

// Many writers of one tenant with deadlines that end at any point, some
// behind slow statements: a caller told its write failed finds nothing of
// it in the file, and one told it succeeded finds it, whether it left
// queued, in a batch before its statement ran, after it ran (the batch
// undone), or was interrupted.
func TestGroupCommit_EveryAnswerIsWhatTheFileHolds(t *testing.T) {
	for _, after := range []time.Duration{0, 100 * time.Microsecond} {
		// 0: abortAfter, which statements here rarely outlast; 100 µs: a
		// caller that leaves undoes its batch almost at once.
		t.Run(fmt.Sprintf("abortAfter=%v", after), func(t *testing.T) { everyAnswerIsWhatTheFileHolds(t, after) })
	}
}

func everyAnswerIsWhatTheFileHolds(t *testing.T, abortAfter time.Duration) {
	p := newTestProxy(t, Config{GroupCommit: GroupCommitOn, Migrations: []string{kvTable}})
	tn, err := p.c.r.tenant("acme")
	if err != nil {
		t.Fatal(err)
	}
	defer tn.unpin()
	tn.gc.abortAfter = abortAfter
	const writers, each = 8, 150
	type answer struct {
		k   string
		err error
	}
	answers := make(chan answer, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				k := fmt.Sprintf("w%d-%d", w, i)
				q := fmt.Sprintf(`INSERT INTO kv (k, v) VALUES ('%s', %d)`, k, i)
				if (w+i)%7 == 0 { // a few milliseconds of work
					q = fmt.Sprintf(`INSERT INTO kv (k, v) SELECT '%s', count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c)`, k)
				}
				ctx, cancel := context.WithTimeout(tctx("acme"), time.Duration((w*each+i)%2000)*time.Microsecond)
				_, err := p.ExecContext(ctx, q)
				cancel()
				answers <- answer{k, err}
			}
		})
	}
	wg.Wait()
	close(answers)
	have := map[string]bool{}
	for _, k := range queryKV(t, p, "acme") {
		have[k[:strings.IndexByte(k, '=')]] = true
	}
	var ok, failed int
	for a := range answers {
		switch {
		case a.err == nil && !have[a.k]:
			t.Errorf("%s: acknowledged, not in the file", a.k)
		case a.err != nil && have[a.k]:
			t.Errorf("%s: failed (%v), in the file", a.k, a.err)
		case a.err != nil && !errors.Is(a.err, context.DeadlineExceeded):
			t.Errorf("%s: %v, want context.DeadlineExceeded", a.k, a.err)
		case a.err == nil:
			ok++
		default:
			failed++
		}
	}
	t.Logf("%d acknowledged, %d failed at their deadlines", ok, failed)
	if ok == 0 || failed == 0 {
		t.Errorf("%d acknowledged and %d failed: the deadlines did not cut across the writes", ok, failed)
	}
}
