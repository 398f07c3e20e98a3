package sqliteproxy

import (
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// ledgerTable records, in every tenant file, which migrations were applied.
const ledgerTable = "_sqliteproxy_migrations"

const (
	ledgerCreate = `CREATE TABLE IF NOT EXISTS ` + ledgerTable + ` (
	version    INTEGER PRIMARY KEY,
	checksum   TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`
	ledgerRead   = `SELECT version, checksum FROM ` + ledgerTable + ` ORDER BY version`
	ledgerMax    = `SELECT coalesce(max(version), 0) FROM ` + ledgerTable
	ledgerInsert = `INSERT INTO ` + ledgerTable + ` (version, checksum, applied_at) VALUES (?, ?, ?)`
)

// migrator applies the configured migrations to tenant files. Migration i
// (0-based) has version i+1.
type migrator struct {
	sql  []string
	sums []string // hex SHA-256 of each migration's text
}

func newMigrator(migrations []string) *migrator {
	m := &migrator{sql: migrations, sums: make([]string, len(migrations))}
	for i, s := range migrations {
		h := sha256.Sum256([]byte(s))
		m.sums[i] = hex.EncodeToString(h[:])
	}
	return m
}

// applied reads the ledger and checks it against the configured migrations.
// It returns how many migrations are applied.
func (m *migrator) applied(ctx context.Context, c *sqlite3.SQLiteConn) (int, error) {
	rows, err := c.QueryContext(ctx, ledgerRead, nil)
	if err != nil {
		if isNoSuchTable(err) {
			return 0, nil
		}
		return 0, err
	}
	defer rows.Close()
	dest := make([]driver.Value, 2)
	n := 0
	for {
		if err := rows.Next(dest); err != nil {
			if err == io.EOF {
				break
			}
			return 0, err
		}
		version, _ := dest[0].(int64)
		sum, _ := dest[1].(string)
		if version != int64(n+1) {
			return 0, fmt.Errorf("%w: ledger has version %d where %d was expected", ErrMigrationDrift, version, n+1)
		}
		if n >= len(m.sql) {
			return 0, fmt.Errorf("%w: migration %d is applied but not configured (only %d are)", ErrMigrationDrift, version, len(m.sql))
		}
		if sum != m.sums[n] {
			return 0, fmt.Errorf("%w: migration %d (Migrations[%d]) was edited after it was applied", ErrMigrationDrift, version, n)
		}
		n++
	}
	return n, nil
}

func isNoSuchTable(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrError && strings.Contains(se.Error(), "no such table")
}

// migrate brings the tenant on c up to date. Each pending migration runs in
// its own BEGIN IMMEDIATE transaction that re-reads the ledger first, so a
// migration applied meanwhile by another process is not applied twice and a
// failing one leaves nothing behind.
// It returns how many migrations it applied.
func (m *migrator) migrate(ctx context.Context, id string, c *sqlite3.SQLiteConn) (int, error) {
	if len(m.sql) == 0 {
		return 0, nil
	}
	n, err := m.applied(ctx, c)
	if err != nil {
		return 0, opError("migrate", id, err)
	}
	for i := n; i < len(m.sql); i++ {
		if err := m.applyOne(ctx, c, i); err != nil {
			return i - n, opError("migrate", id, fmt.Errorf("apply Migrations[%d]: %w", i, err))
		}
	}
	return len(m.sql) - n, nil
}

func (m *migrator) applyOne(ctx context.Context, c *sqlite3.SQLiteConn, i int) (err error) {
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE", nil); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.ExecContext(context.Background(), "ROLLBACK", nil)
		}
	}()
	if _, err := c.ExecContext(ctx, ledgerCreate, nil); err != nil {
		return err
	}
	// Another process may have migrated while we were outside a transaction.
	if n, err := m.applied(ctx, c); err != nil {
		return err
	} else if n > i {
		_, err := c.ExecContext(ctx, "COMMIT", nil)
		return err
	}
	if _, err := c.ExecContext(ctx, m.sql[i], nil); err != nil {
		return err
	}
	args := []driver.NamedValue{
		{Ordinal: 1, Value: int64(i + 1)},
		{Ordinal: 2, Value: m.sums[i]},
		{Ordinal: 3, Value: time.Now().UTC().Format(time.RFC3339Nano)},
	}
	if _, err := c.ExecContext(ctx, ledgerInsert, args); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, "COMMIT", nil)
	return err
}
