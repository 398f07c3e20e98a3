package pgbench

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// TestRowLevelSecurity checks that the PostgreSQL side isolates tenants
// the way the benchmarks use it: the application's role is subject to
// row level security, sees and changes only the rows of the tenant its
// transaction set, cannot write rows of another, and without a tenant
// reads nothing.
func TestRowLevelSecurity(t *testing.T) {
	pg := newPGTarget(t, 2, 3, "on") // t00000 and t00001, 3 rows each
	db := pg.db
	ctx := context.Background()

	var super, bypass bool
	if err := db.QueryRow(`SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user`).Scan(&super, &bypass); err != nil {
		t.Fatal(err)
	}
	if super || bypass {
		t.Fatalf("the application's role: superuser %v, bypassrls %v; RLS would not apply", super, bypass)
	}

	if err := insert(pg, 0, "only-a"); err != nil {
		t.Fatal(err)
	}
	// A sees its own 4 rows, B its 3: not A's, not even by asking for them.
	for i, want := range []int{4, 3} {
		if n := countRows(t, pg, i); n != want {
			t.Errorf("tenant %s sees %d rows, want %d", pg.ids[i], n, want)
		}
	}
	err := pg.do(1, true, func(ctx context.Context, q querier) error {
		var n int
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE tenant_id = $1 OR name = 'only-a'`, pg.ids[0]).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			t.Errorf("tenant B reads %d of A's rows", n)
		}
		if err := q.QueryRowContext(ctx, getSQL, pg.seedID(0, 0)).Scan(new(string)); err != sql.ErrNoRows {
			t.Errorf("tenant B reads A's row by id: %v, want sql.ErrNoRows", err)
		}
		res, err := q.ExecContext(ctx, `UPDATE events SET name = 'x' WHERE tenant_id = $1`, pg.ids[0])
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 0 {
			t.Errorf("tenant B updated %d of A's rows", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Writing a row for another tenant fails the policy's WITH CHECK.
	err = pg.do(1, true, func(ctx context.Context, q querier) error {
		_, err := q.ExecContext(ctx, `INSERT INTO events (tenant_id, name) VALUES ($1, 'forged')`, pg.ids[0])
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "row-level security") {
		t.Errorf("B inserting a row for A: %v, want a row-level security violation", err)
	}

	// Without a tenant: a fresh session fails (app.tenant is unknown); a
	// session whose earlier transaction set it sees nothing (it is reset
	// to '' when that transaction ends) and cannot insert.
	conn, err := pg.d.app(t, "on").Conn(ctx) // a new pool: a new session
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int
	err = conn.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	if err == nil || !strings.Contains(err.Error(), "app.tenant") {
		t.Errorf("no tenant, fresh session: count %d, err %v; want an error naming app.tenant", n, err)
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT set_config('app.tenant', $1, true)`, pg.ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil || n != 0 {
		t.Errorf("no tenant after a tenant's transaction: count %d, err %v; want 0 rows", n, err)
	}
	if _, err := conn.ExecContext(ctx, `INSERT INTO events (name) VALUES ('nobody')`); err == nil || !strings.Contains(err.Error(), "check constraint") {
		t.Errorf("no tenant: insert: %v, want a check constraint violation", err)
	}
}
