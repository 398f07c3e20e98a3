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
	// One that holds its tenant's writer already, and a transaction.
	leased, err := p.Conn(tctx("initech"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leased.ExecContext(tctx("initech"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	tx, err := p.BeginTx(tctx("globex"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); !errors.Is(err, ErrClosed) {
		t.Errorf("sql.Conn after Close: %v, want ErrClosed", err)
	}
	c.Close()
	if _, err := leased.ExecContext(tctx("initech"), `INSERT INTO t VALUES (1)`); !errors.Is(err, ErrClosed) {
		t.Errorf("a leased sql.Conn after Close: %v, want ErrClosed", err)
	}
	leased.Close()
	// A transaction in progress may finish.
	if _, err := tx.ExecContext(tctx("globex"), `INSERT INTO t VALUES (2)`); err != nil {
		t.Errorf("the transaction after Close: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Errorf("Commit after Close: %v", err)
	}
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
