package compat_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// sqlxInitialBind is what sqlx thinks of the driver name "sqliteproxy"
// before any test registers it: read at package initialisation, before
// TestSQLx_BindVar calls sqlx.BindDriver.
var sqlxInitialBind = sqlx.BindType(sqliteproxy.DriverName)

const sqlxSchema = `CREATE TABLE people (
	id    INTEGER PRIMARY KEY,
	name  TEXT NOT NULL UNIQUE,
	email TEXT NOT NULL,
	age   INTEGER NOT NULL
)`

type sqlxPerson struct {
	ID    int64  `db:"id"`
	Name  string `db:"name"`
	Email string `db:"email"`
	Age   int    `db:"age"`
}

// TestSQLx_BindVar records the finding: sqlx does not know the driver name
// "sqliteproxy" (BindType is UNKNOWN), and UNKNOWN behaves exactly as
// QUESTION in sqlx v1.4.0 (Rebind, named queries and In all leave or emit
// '?'), which is SQLite's bindvar. Registering it anyway is harmless and
// makes the intent explicit.
func TestSQLx_BindVar(t *testing.T) {
	// Serial: sqlx.BindDriver changes sqlx's registry, which is the process's.
	if sqlxInitialBind != sqlx.UNKNOWN {
		t.Errorf("sqlx.BindType(%q) = %d before registration, want UNKNOWN (%d)", sqliteproxy.DriverName, sqlxInitialBind, sqlx.UNKNOWN)
	}
	if got := sqlx.BindType("sqlite3"); got != sqlx.QUESTION {
		t.Errorf(`sqlx.BindType("sqlite3") = %d, want QUESTION`, got)
	}
	const q = `SELECT * FROM people WHERE name = ? AND age > ?`
	if got := sqlx.Rebind(sqlx.UNKNOWN, q); got != q {
		t.Errorf("Rebind(UNKNOWN) = %q", got)
	}
	named, _, err := sqlx.BindNamed(sqlx.UNKNOWN, `SELECT * FROM people WHERE name = :name`, map[string]any{"name": "x"})
	if err != nil || named != `SELECT * FROM people WHERE name = ?` {
		t.Errorf("BindNamed(UNKNOWN) = %q, %v", named, err)
	}
	sqlx.BindDriver(sqliteproxy.DriverName, sqlx.QUESTION)
	if got := sqlx.BindType(sqliteproxy.DriverName); got != sqlx.QUESTION {
		t.Errorf("after BindDriver: %d", got)
	}
}

// TestSQLx_NewDb wraps the Proxy's *sql.DB, naming it "sqlite3" for sqlx.
func TestSQLx_NewDb(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, Migrations: []string{sqlxSchema}})
	db := sqlx.NewDb(p.DB, "sqlite3")
	if got := sqlx.BindType(db.DriverName()); got != sqlx.QUESTION {
		t.Fatalf("BindType = %d", got)
	}
	exerciseSQLx(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

// TestSQLx_Open opens the driver by name through sqlx.
func TestSQLx_Open(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := sqlx.Open(sqliteproxy.DriverName, "dir="+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatalf("Ping without tenant: %v", err)
	}
	// A DSN cannot carry migrations: create the table per tenant.
	for _, id := range []string{tenantA, tenantB} {
		if _, err := db.ExecContext(sqliteproxytest.Context(t, id), sqlxSchema); err != nil {
			t.Fatal(err)
		}
	}
	exerciseSQLx(t, db)
	requireTenantFiles(t, dir, tenantA, tenantB)
}

func exerciseSQLx(t *testing.T, db *sqlx.DB) {
	ctxA, ctxB := sqliteproxytest.Context(t, tenantA), sqliteproxytest.Context(t, tenantB)

	// NamedExec with a slice: one multi-row INSERT per tenant.
	seed := map[string][]sqlxPerson{
		tenantA: {{Name: "alice", Email: "alice@acme", Age: 31}, {Name: "bob", Email: "bob@acme", Age: 42}, {Name: "carol", Email: "carol@acme", Age: 25}},
		tenantB: {{Name: "gina", Email: "gina@globex", Age: 50}},
	}
	for id, people := range seed {
		res, err := db.NamedExecContext(sqliteproxytest.Context(t, id), `INSERT INTO people (name, email, age) VALUES (:name, :email, :age)`, people)
		if err != nil {
			t.Fatalf("NamedExec %s: %v", id, err)
		}
		if n, _ := res.RowsAffected(); n != int64(len(people)) {
			t.Errorf("NamedExec %s: %d rows affected", id, n)
		}
	}
	// NamedExec with a struct and a map.
	res, err := db.NamedExecContext(ctxB, `INSERT INTO people (name, email, age) VALUES (:name, :email, :age)`, sqlxPerson{Name: "hank", Email: "hank@globex", Age: 33})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := res.LastInsertId(); err != nil || id != 2 {
		t.Errorf("LastInsertId = %d, %v; want 2 (second row of tenant B)", id, err)
	}
	if _, err := db.NamedExecContext(ctxA, `UPDATE people SET age = :age WHERE name = :name`, map[string]any{"name": "alice", "age": 32}); err != nil {
		t.Fatal(err)
	}

	// Get and Select.
	var alice sqlxPerson
	if err := db.GetContext(ctxA, &alice, `SELECT * FROM people WHERE name = ?`, "alice"); err != nil {
		t.Fatal(err)
	}
	if alice.Age != 32 || alice.Email != "alice@acme" {
		t.Errorf("alice = %+v", alice)
	}
	if err := db.GetContext(ctxB, &alice, `SELECT * FROM people WHERE name = ?`, "alice"); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("tenant B reads tenant A's alice: %v", err)
	}
	for id, want := range map[string][]string{tenantA: {"alice", "bob", "carol"}, tenantB: {"gina", "hank"}} {
		var names []string
		if err := db.SelectContext(sqliteproxytest.Context(t, id), &names, `SELECT name FROM people ORDER BY name`); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(names, want) {
			t.Errorf("tenant %s: names %v, want %v", id, names, want)
		}
	}

	// In + Rebind.
	q, args, err := sqlx.In(`SELECT * FROM people WHERE name IN (?) AND age >= ? ORDER BY name`, []string{"alice", "bob", "gina"}, 30)
	if err != nil {
		t.Fatal(err)
	}
	q = db.Rebind(q)
	var got []sqlxPerson
	if err := db.SelectContext(ctxA, &got, q, args...); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "alice" || got[1].Name != "bob" {
		t.Errorf("In on A = %+v", got)
	}
	got = nil
	if err := db.SelectContext(ctxB, &got, q, args...); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "gina" {
		t.Errorf("In on B = %+v", got)
	}
	// Named query + In, the usual two-step.
	nq, nargs, err := sqlx.Named(`SELECT name FROM people WHERE age < :max AND name IN (:names)`, map[string]any{"max": 40, "names": []string{"bob", "carol"}})
	if err != nil {
		t.Fatal(err)
	}
	if nq, nargs, err = sqlx.In(nq, nargs...); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := db.SelectContext(ctxA, &names, db.Rebind(nq), nargs...); err != nil || !slices.Equal(names, []string{"carol"}) {
		t.Errorf("Named+In = %v, %v", names, err)
	}

	// Statements prepared without a tenant run on the tenant of each call.
	stmt, err := db.PreparexContext(context.Background(), `SELECT count(*) FROM people`)
	if err != nil {
		t.Fatalf("Preparex without tenant: %v", err)
	}
	for id, want := range map[string]int{tenantA: 3, tenantB: 2} {
		var n int
		if err := stmt.GetContext(sqliteproxytest.Context(t, id), &n); err != nil || n != want {
			t.Errorf("prepared count on %s = %d, %v; want %d", id, n, err, want)
		}
	}
	stmt.Close()
	nstmt, err := db.PrepareNamedContext(context.Background(), `SELECT * FROM people WHERE name = :name`)
	if err != nil {
		t.Fatal(err)
	}
	var hank sqlxPerson
	if err := nstmt.GetContext(ctxB, &hank, map[string]any{"name": "hank"}); err != nil || hank.Age != 33 {
		t.Errorf("named stmt on B: %+v, %v", hank, err)
	}
	if err := nstmt.GetContext(ctxA, &hank, map[string]any{"name": "hank"}); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("named stmt on A found hank: %v", err)
	}
	nstmt.Close()

	// Transactions: committed on A, rolled back on B.
	tx, err := db.BeginTxx(ctxA, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.NamedExecContext(ctxA, `INSERT INTO people (name, email, age) VALUES (:name, :email, :age)`, sqlxPerson{Name: "dave", Email: "dave@acme", Age: 28}); err != nil {
		t.Fatal(err)
	}
	// A context without tenant runs in the transaction's tenant...
	var n int
	if err := tx.Get(&n, `SELECT count(*) FROM people`); err != nil || n != 4 {
		t.Errorf("tx.Get without tenant = %d, %v; want 4", n, err)
	}
	// ...one naming another tenant runs nowhere.
	if _, err := tx.ExecContext(ctxB, `DELETE FROM people`); !errors.Is(err, sqliteproxy.ErrTenantMismatch) {
		t.Errorf("tx of A with ctx of B: %v, want ErrTenantMismatch", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	txB, err := db.BeginTxx(ctxB, &sql.TxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := txB.ExecContext(ctxB, `DELETE FROM people`); err != nil {
		t.Fatal(err)
	}
	if err := txB.GetContext(ctxB, &n, `SELECT count(*) FROM people`); err != nil || n != 0 {
		t.Errorf("in tx B after delete: %d, %v", n, err)
	}
	if err := txB.Rollback(); err != nil {
		t.Fatal(err)
	}

	// A read-only transaction runs on a reader.
	ro, err := db.BeginTxx(ctxB, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.GetContext(ctxB, &n, `SELECT count(*) FROM people`); err != nil || n != 2 {
		t.Errorf("read-only tx on B: %d, %v; want 2 (delete rolled back)", n, err)
	}
	if _, err := ro.ExecContext(ctxB, `DELETE FROM people`); err == nil {
		t.Error("DELETE in a read-only transaction succeeded")
	}
	ro.Rollback()

	// Beginx has no context: it cannot name a tenant.
	if _, err := db.Beginx(); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Beginx without context: %v, want ErrNoTenant", err)
	}
	// Nor can a plain Select.
	if err := db.Select(&names, `SELECT name FROM people`); !errors.Is(err, sqliteproxy.ErrNoTenant) {
		t.Errorf("Select without tenant: %v, want ErrNoTenant", err)
	}

	// Final isolation check.
	for id, want := range map[string][]string{tenantA: {"alice", "bob", "carol", "dave"}, tenantB: {"gina", "hank"}} {
		var people []sqlxPerson
		if err := db.SelectContext(sqliteproxytest.Context(t, id), &people, `SELECT * FROM people ORDER BY name`); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range people {
			names = append(names, p.Name)
		}
		if !slices.Equal(names, want) {
			t.Errorf("tenant %s: %v, want %v", id, names, want)
		}
	}
}

// TestSQLx_FanOut: sqlx's Select, Get and named queries scan a fan-out's
// result (its tenant column first) into structs with a tenant field, and
// sqlx's In expands arguments for it, unchanged.
func TestSQLx_FanOut(t *testing.T) {
	t.Parallel()
	p := sqliteproxytest.New(t, sqliteproxy.Config{Migrations: []string{sqlxSchema}})
	db := sqlx.NewDb(p.DB, "sqlite3")
	for _, tc := range []struct{ tenant, name string }{{tenantB, "bob"}, {tenantA, "ann"}, {tenantA, "abe"}} {
		if _, err := db.ExecContext(sqliteproxytest.Context(t, tc.tenant),
			`INSERT INTO people (name, email, age) VALUES (?, ?, 40)`, tc.name, tc.name+"@x"); err != nil {
			t.Fatal(err)
		}
	}
	fan := sqliteproxy.WithFanOut(context.Background(), sqliteproxy.FanOutOptions{})

	type count struct {
		Tenant string `db:"tenant"`
		N      int    `db:"n"`
	}
	var counts []count
	if err := db.SelectContext(fan, &counts, `SELECT count(*) AS n FROM people`); err != nil {
		t.Fatal(err)
	}
	if want := []count{{tenantA, 2}, {tenantB, 1}}; !slices.Equal(counts, want) {
		t.Errorf("counts = %+v, want %+v", counts, want)
	}

	type tenantPerson struct {
		Tenant string `db:"tenant"`
		sqlxPerson
	}
	var people []tenantPerson
	q, args, err := sqlx.In(`SELECT * FROM people WHERE name IN (?) ORDER BY name`, []string{"abe", "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.SelectContext(fan, &people, q, args...); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tp := range people {
		got = append(got, tp.Tenant+"/"+tp.Name)
	}
	if want := []string{tenantA + "/abe", tenantB + "/bob"}; !slices.Equal(got, want) {
		t.Errorf("people = %v, want %v", got, want)
	}

	var first count
	if err := db.GetContext(fan, &first, `SELECT count(*) AS n FROM people`); err != nil || first != (count{tenantA, 2}) {
		t.Errorf("Get = %+v, %v", first, err)
	}

	rows, err := db.NamedQueryContext(fan, `SELECT name FROM people WHERE age = :age`, map[string]any{"age": 40})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var r struct {
			Tenant string `db:"tenant"`
			Name   string `db:"name"`
		}
		if err := rows.StructScan(&r); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if err := rows.Err(); err != nil || n != 3 {
		t.Errorf("named query: %d rows, %v", n, err)
	}
	rows.Close()

	if _, err := db.ExecContext(fan, `DELETE FROM people`); !errors.Is(err, sqliteproxy.ErrFanOutWrite) {
		t.Errorf("Exec with a fan-out context: %v, want ErrFanOutWrite", err)
	}
}
