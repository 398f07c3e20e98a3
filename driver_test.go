package sqliteproxy

import (
	"context"
	"errors"
	"testing"
)

// TestCloseThenUse: what Connector.Close promises (closing a Proxy closes
// its Connector): connections in use are closed as they are released, and
// further operations fail with ErrClosed.
func TestCloseThenUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir})
	c, err := p.Conn(tctx("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("globex"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); !errors.Is(err, ErrClosed) {
		t.Errorf("sql.Conn after Close: %v, want ErrClosed", err)
	}
	c.Close()
	if _, err := p.Tenants(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Tenants after Close: %v, want ErrClosed", err)
	}
	if _, err := p.ExecContext(tctx("globex"), `SELECT 1`); err == nil {
		t.Error("Exec after Close succeeded")
	}
	if st := p.Stats(); st.OpenConnections != 0 {
		t.Errorf("open connections after Close: %d", st.OpenConnections)
	}
	assertNoOpenFiles(t, dir)
}

// TestPrepare_WriteWithReadersHeld: preparing a write does not need a
// reader. With every reader held by open Rows (the "iterate rows, write for
// each" loop, with a prepared INSERT as GORM's PrepareStmt makes), preparing
// on a reader would wait for one of those Rows; from several goroutines at
// once, each holding a reader, that waits forever.
func TestPrepare_WriteWithReadersHeld(t *testing.T) {
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE items (id INTEGER PRIMARY KEY, v)`}})
	ctx := tctx("acme")
	if _, err := p.ExecContext(ctx, `INSERT INTO items (v) VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	for range DefaultReadersPerTenant {
		rows, err := p.QueryContext(ctx, `SELECT id FROM items`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		rows.Next()
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.PrepareContext(wctx, `INSERT INTO items (v) VALUES (?)`)
	if err != nil {
		t.Fatalf("prepare with every reader held: %v", err)
	}
	defer st.Close()
	if _, err := st.ExecContext(wctx, 3); err != nil {
		t.Fatalf("exec: %v", err)
	}
}
