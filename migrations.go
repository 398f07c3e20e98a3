package sqliteproxy

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
	"go.opentelemetry.io/otel/attribute"
)

// ledgerTable records, in every tenant file, which migrations were applied.
const ledgerTable = "_sqliteproxy_migrations"

const (
	ledgerCreate = `CREATE TABLE IF NOT EXISTS main.` + ledgerTable + ` (
	version    INTEGER PRIMARY KEY,
	checksum   TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`
	// The ledger's rows, and with each the statement that made its table
	// (read once: an uncorrelated subquery), which must be the migrator's
	// (ledgerMade): the authorizer sees the old name only of ALTER TABLE
	// ... RENAME TO, and an application's table renamed to the ledger's
	// name, holding checksums of migrations never run, was taken for it.
	// It comes with the first row only: carried on every row, the string
	// cost more than the rest of the read for a long ledger.
	ledgerRead = `SELECT version, checksum, applied_at, CASE WHEN version = 1 THEN (SELECT type || ' ' || sql FROM main.sqlite_schema WHERE type = 'table' AND name = '` + ledgerTable + `') END FROM main.` + ledgerTable + ` ORDER BY version`
	// ledgerMade starts what SQLite keeps of ledgerCreate: a rename writes
	// the new name quoted, a virtual table says so.
	ledgerMade   = `table CREATE TABLE ` + ledgerTable + ` (`
	ledgerMax    = `SELECT coalesce(max(version), 0) FROM main.` + ledgerTable
	ledgerInsert = `INSERT INTO main.` + ledgerTable + ` (version, checksum, applied_at) VALUES (?, ?, ?)`
	ledgerDelete = `DELETE FROM main.` + ledgerTable + ` WHERE version = ?`
)

// migration is one configured migration.
type migration struct {
	name     string // file name, or "Migrations[i]"
	sql      string
	sum      string    // hex SHA-256 of sql
	downName string    // file name of its down migration, "" when there is none
	down     string    // SQL of its down migration; not part of sum
	whole    string    // of a goose file whose Down section has SQL: the whole file (see driftAt)
	older    []string  // texts that versions before goose support applied with the same effect as sql
	bases    [][]byte  // SHA-256 states after sql and each of older, trailing blanks trimmed (alike)
	memo     *sync.Map // checksum -> bool: alike's answers
}

// migrator applies the configured migrations to tenant files. Migration i
// (0-based) has version i+1. The list is read once, when the proxy opens.
//
// Everything about migrations is in this file and fleet.go (MigrateAll,
// MigrationStatus): the ledger, the one entry point migrate (used by the
// open path, createFile and MigrateAll alike) and the gate a tenant's writer
// passes when this process first opens it.
type migrator struct {
	list []migration
	tel  *telemetry
}

func newMigrator(list []migration, tel *telemetry) *migrator {
	for i := range list {
		mg := &list[i]
		mg.sum = sqlSum(mg.sql)
		mg.memo = new(sync.Map)
		for _, text := range append([]string{mg.sql}, mg.older...) {
			mg.bases = append(mg.bases, baseState(text))
		}
	}
	return &migrator{list: list, tel: tel}
}

// baseState returns the SHA-256 state after text without its trailing
// blanks: a variant's sum then hashes only its tail (a migration that loads
// data may be megabytes: each variant hashed whole took seconds and
// hundreds of megabytes at New).
func baseState(text string) []byte {
	h := sha256.New()
	h.Write([]byte(strings.TrimRight(text, " \t\r\n")))
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(err) // crypto/sha256 always marshals
	}
	return b
}

// withTails reports whether checksum is the SHA-256 of the text hashed into
// state followed by one of trailingBlanks.
func withTails(state []byte, checksum string) bool {
	want, err := hex.DecodeString(checksum)
	if err != nil || len(want) != sha256.Size {
		return false
	}
	h := sha256.New()
	var sum [sha256.Size]byte
	for _, tail := range trailingBlanks {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
			panic(err)
		}
		h.Write([]byte(tail))
		if string(h.Sum(sum[:0])) == string(want) {
			return true
		}
	}
	return false
}

// trailingBlanks are the ends a migration's text may have had when it was
// applied, with the same statements: up to four spaces or a tab left on its
// last line, up to five line ends (LF or CRLF), and then up to eight spaces
// or two tabs (a Go raw string's indented closing quote). An editor that
// adds a final newline or trims trailing whitespace or blank lines, a
// goose file's blank line before a Down section added later, changes no
// statement; taken for an edit, it made every tenant drift, refused in
// every mode.
var trailingBlanks = func() []string {
	var tails []string
	for _, pad := range []string{"", " ", "  ", "   ", "    ", "\t"} {
		tails = append(tails, pad)
		for _, nl := range []string{"\n", "\r\n"} {
			for k := 1; k <= 5; k++ {
				for _, indent := range []string{"", " ", "  ", "   ", "    ", "        ", "\t", "\t\t"} {
					tails = append(tails, pad+strings.Repeat(nl, k)+indent)
				}
			}
		}
	}
	return tails
}()

func sqlSum(sql string) string {
	h := sha256.Sum256([]byte(sql))
	return hex.EncodeToString(h[:])
}

// matches reports whether a ledger's checksum is mg's: of its SQL, or of
// its SQL (or a text an older version applied for it, older) with other
// trailing blanks (trailingBlanks).
func (mg *migration) matches(checksum string) bool {
	return checksum == mg.sum || mg.alike(checksum)
}

// maxMemo bounds the checksums a migration remembers its answer for: a
// fleet has a few distinct ones per migration.
const maxMemo = 1024

// alike is matches for a checksum other than mg.sum, remembered: every
// tenant of a fleet upgraded from an older version has the same one.
func (mg *migration) alike(checksum string) bool {
	if mg.memo != nil {
		if v, ok := mg.memo.Load(checksum); ok {
			return v.(bool)
		}
	}
	ok := slices.ContainsFunc(mg.bases, func(state []byte) bool { return withTails(state, checksum) })
	if mg.memo != nil && mg.memoLen() < maxMemo {
		mg.memo.Store(checksum, ok)
	}
	return ok
}

func (mg *migration) memoLen() (n int) {
	mg.memo.Range(func(any, any) bool { n++; return n < maxMemo })
	return n
}

// ranWhole reports whether checksum is that of mg's whole goose file, its
// Down section's SQL included, with any trailing blanks (driftAt).
func (mg *migration) ranWhole(checksum string) bool {
	return mg.whole != "" && withTails(baseState(mg.whole), checksum)
}

// ledgerRow is one applied migration as the ledger records it.
type ledgerRow struct {
	version   int64
	checksum  string
	appliedAt string
}

// ledger reads a tenant's ledger; a file without one has applied nothing.
func ledger(ctx context.Context, c *sqlite3.SQLiteConn) ([]ledgerRow, error) {
	return ledgerOf(ctx, c, ledgerRead)
}

// ledgerOf is ledger with the query read, ledgerRead of the file's schema.
func ledgerOf(ctx context.Context, c *sqlite3.SQLiteConn, read string) ([]ledgerRow, error) {
	rows, err := c.QueryContext(ctx, read, nil)
	if err != nil {
		if isNoSuchTable(err) {
			return nil, nil
		}
		return nil, err
	}
	defer rows.Close()
	dest := make([]driver.Value, 4)
	var out []ledgerRow
	for {
		if err := rows.Next(dest); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if out == nil && dest[0] == int64(1) { // a ledger without version 1 is drift anyway
			if made, _ := dest[3].(string); !strings.HasPrefix(made, ledgerMade) {
				return nil, fmt.Errorf("%w: the table %s was not made by the migrator (%s): it is not a ledger to trust", ErrMigrationDrift, ledgerTable, quoteShort(made))
			}
		}
		var r ledgerRow
		r.version, _ = dest[0].(int64)
		r.checksum, _ = dest[1].(string)
		switch v := dest[2].(type) {
		case string:
			r.appliedAt = v
		case time.Time:
			r.appliedAt = v.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, r)
	}
}

// errAhead is the part of ErrMigrationDrift that says a tenant has every
// configured migration and more after them: migrated by a newer migration
// set (the CLI's migrate with the next release's directory, a newer node in
// a rolling deploy). MigrateManual serves such a tenant as it is.
var errAhead = aheadError{}

type aheadError struct{}

func (aheadError) Error() string {
	return ": the tenant was migrated by a newer migration set (the CLI's migrate with the next release's migrations, a newer release)"
}

// check compares a ledger with the configured migrations and returns how
// many are applied, or ErrMigrationDrift.
func (m *migrator) check(rows []ledgerRow) (int, error) {
	for n, r := range rows {
		switch {
		case r.version != int64(n+1):
			return 0, fmt.Errorf("%w: ledger has version %d where %d was expected", ErrMigrationDrift, r.version, n+1)
		case n >= len(m.list):
			return 0, fmt.Errorf("%w: migration %d is applied but not configured (only %d are)%w", ErrMigrationDrift, r.version, len(m.list), errAhead)
		case !m.list[n].matches(r.checksum):
			return 0, fmt.Errorf("%w: %s", ErrMigrationDrift, m.driftAt(rows, n))
		}
	}
	return len(rows), nil
}

// driftAt says how the configured migrations differ from the ledger at
// position n, where the checksums first differ. The checksums tell: the
// applied one configured later (a new migration put before applied ones),
// configured nowhere (removed, or edited), or earlier (moved).
func (m *migrator) driftAt(rows []ledgerRow, n int) string {
	cfg := m.list[n]
	appliedAt := slices.IndexFunc(m.list, func(mg migration) bool { return mg.matches(rows[n].checksum) })
	cfgApplied := slices.ContainsFunc(rows, func(r ledgerRow) bool { return cfg.matches(r.checksum) })
	switch {
	case cfg.ranWhole(rows[n].checksum):
		return fmt.Sprintf("migration %d (%s) was applied whole, its goose Down section included, by a version of sqliteproxy that did not read goose annotations: "+
			"the Down section ran right after the Up one in this tenant; repair its schema, then set its ledger row's checksum to %s", n+1, cfg.name, cfg.sum)
	case appliedAt > n && !cfgApplied:
		return fmt.Sprintf("migration %d (%s) is new but comes before migrations already applied (applied migration %d is now %d, %s): add new migrations at the end", n+1, cfg.name, n+1, appliedAt+1, m.list[appliedAt].name)
	case appliedAt < 0 && cfgApplied:
		return fmt.Sprintf("applied migration %d is no longer configured: it was removed or edited (%s, now number %d, was applied after it)", n+1, cfg.name, n+1)
	case appliedAt < 0 && cfg.whole != "":
		return fmt.Sprintf("migration %d (%s) was edited after it was applied; if a version of sqliteproxy before goose support (before 2026-11-27) applied it, "+
			"it ran the whole file and its goose Down section may have run in this tenant: check its schema", n+1, cfg.name)
	case appliedAt < 0:
		return fmt.Sprintf("migration %d (%s) was edited after it was applied", n+1, cfg.name)
	default:
		return fmt.Sprintf("applied migration %d is now configured as %d (%s): migrations were moved", n+1, appliedAt+1, m.list[appliedAt].name)
	}
}

// applied reads the ledger and checks it against the configured migrations.
// It returns how many migrations are applied.
func (m *migrator) applied(ctx context.Context, c *sqlite3.SQLiteConn) (int, error) {
	rows, err := ledger(ctx, c)
	if err != nil {
		return 0, err
	}
	return m.check(rows)
}

// upToDate reports whether the tenant on c needs nothing from the gate: its
// ledger matches the configured migrations and none is pending (with
// apply and no migrations configured, as the gate, without reading it).
// Errors, drift and pending migrations are all false: the writer's open
// path applies or reports them.
func (m *migrator) upToDate(ctx context.Context, c *sqlite3.SQLiteConn, apply bool) bool {
	if apply && len(m.list) == 0 {
		return true
	}
	n, err := m.applied(ctx, c)
	return err == nil && n == len(m.list)
}

func isNoSuchTable(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrError && strings.Contains(se.Error(), "no such table")
}

// migStep is a migration applied, and how long it took; copied: it came
// with a template, and no span was made for it as it ran.
type migStep struct {
	name   string
	d      time.Duration
	copied bool
}

// migrate is the one way migrations reach a tenant file. It reads the
// ledger on c and checks it against the configured migrations
// (ErrMigrationDrift). With apply it then applies each pending migration in
// its own BEGIN IMMEDIATE transaction that re-reads the ledger first, so a
// migration applied meanwhile by another process is not applied twice and a
// failing one leaves nothing behind; without apply, pending migrations are
// ErrPendingMigrations. It returns the names of the migrations it applied
// (those before a failure included) and reports each to telemetry as tt's:
// at once, or, with held, those applied are added to *held, for the caller
// to report once the file they were applied to is the tenant's (a new
// tenant's file, built under a temporary name: if it is thrown away, no
// migration was applied to the tenant).
func (m *migrator) migrate(ctx context.Context, c *sqlite3.SQLiteConn, id string, tt *tenantTel, apply bool, held *[]migStep) ([]string, error) {
	if apply && len(m.list) == 0 {
		return nil, nil
	}
	n, err := m.applied(ctx, c)
	if err != nil {
		if apply {
			m.tel.migrated(ctx, tt, "ledger", 0, err)
		}
		return nil, opError(opMigrate, id, err)
	}
	if !apply {
		if n < len(m.list) {
			return nil, opError(opOpenTenant, id, fmt.Errorf("%w: %d of %d applied; run MigrateAll", ErrPendingMigrations, n, len(m.list)))
		}
		return nil, nil
	}
	var done []string
	for i := n; i < len(m.list); {
		name := m.list[i].name
		start := time.Now()
		sctx, end := m.tel.span(ctx, spanMigrate, tt, attribute.String(attrMigration, name))
		at, err := m.applyOne(sctx, c, i)
		end(err)
		if held != nil && (err == nil && at == i+1 || outOfFiles(err)) {
			// A new file's: reported once it is the tenant's; a step that
			// failed for want of descriptors is tried again (withFDs).
			if err == nil {
				*held = append(*held, migStep{name: name, d: time.Since(start)})
			}
		} else if err != nil || at == i+1 {
			m.tel.migrated(ctx, tt, name, time.Since(start), err)
		}
		if err != nil {
			return done, opError(opMigrate, id, fmt.Errorf("apply %s: %w", name, err))
		}
		if at == i+1 {
			done = append(done, name)
		}
		i = at
	}
	return done, nil
}

// gate lets a tenant's new writer through once this process knows that the
// tenant's migrations are applied (t.ready): with o.migrate it applies the
// pending ones, with o.servePending it lets the tenant through as it is
// (MigrateManual), else it refuses the tenant while any is pending. A
// connection that applied migrations is replaced by a fresh one: users
// must not see last_insert_rowid() and changes() of the ledger inserts, nor
// what a migration set on its connection (pragmas, TEMP tables). On error
// pc is closed; the caller gives back its slot.
func (r *router) gate(ctx context.Context, t *tenant, pc *physConn, o openOpts) (*physConn, error) {
	if t.ready.Load() {
		return pc, nil
	}
	applied, err := r.mig.migrate(ctx, pc.c, t.id, t.tel, o.migrate, nil)
	if err != nil && o.servePending && (errors.Is(err, ErrPendingMigrations) || errors.Is(err, errAhead)) {
		err = nil // as it is: behind, or ahead of this proxy's migrations
	}
	if err != nil {
		pc.close()
		return nil, err
	}
	if len(applied) > 0 {
		pc.close()
		if pc, err = r.conns.open(ctx, t, true); err != nil {
			return nil, err
		}
	}
	t.ready.Store(true)
	return pc, nil
}

// names returns the names of the migrations after the first n.
func (m *migrator) names(n int) []string {
	var out []string
	for _, mg := range m.list[min(n, len(m.list)):] {
		out = append(out, mg.name)
	}
	return out
}

// runScript runs a migration's (or down migration's) SQL on c inside the
// migrator's transaction, with transaction control refused (see
// scriptConns) and, when c enforces foreign keys (foreignKeysOff turned
// that off before the transaction), failing if the script leaves more
// foreign key violations than there were before it.
//
// Violations already there (rows written with foreign keys off: the
// default, a session's PRAGMA, the sqlite3 shell) are not the migration's:
// counted against it, they failed every migration of the tenant, and in
// MigrateAuto refused every access to it. They are counted, not named: a
// migration may rename their tables or renumber their rows (SQLite's table
// rebuild) and still add none. PRAGMA foreign_key_check reads the whole
// database, so the count before is taken only when there are violations
// after: the script runs in a savepoint, which is then rolled back, counted
// and run again (checking before and after every time doubled the time of
// a migration with foreign keys).
func runScript(ctx context.Context, c *sqlite3.SQLiteConn, script string, checkFK bool) error {
	if !checkFK {
		return execScript(ctx, c, script)
	}
	if _, err := c.ExecContext(ctx, "SAVEPOINT "+fkSavepoint, nil); err != nil {
		return err
	}
	if err := execScript(ctx, c, script); err != nil {
		return err // the migrator rolls its transaction back
	}
	n, err := foreignKeyViolations(ctx, c, -1)
	if err != nil {
		return err
	}
	if n > 0 {
		if _, err := c.ExecContext(ctx, "ROLLBACK TO "+fkSavepoint, nil); err != nil {
			return err
		}
		before, err := foreignKeyViolations(ctx, c, -1)
		if err != nil {
			return err
		}
		if err := execScript(ctx, c, script); err != nil {
			return err
		}
		if _, err := foreignKeyViolations(ctx, c, before); err != nil {
			return err
		}
	}
	_, err = c.ExecContext(ctx, "RELEASE "+fkSavepoint, nil)
	return err
}

// fkSavepoint names the savepoint runScript holds around a script; a
// script's own savepoints may have any other name.
const fkSavepoint = "sqliteproxy_fk_check"

// execScript runs script on c inside the migrator's transaction, with
// transaction control refused (see scriptConns).
func execScript(ctx context.Context, c *sqlite3.SQLiteConn, script string) error {
	if setsPragmaEmpty(script) {
		return fmt.Errorf("%w (a migration may not give a PRAGMA an empty argument: SQLite reads it as a value, the proxy's checks as none)", errPragmaEmpty)
	}
	scriptConns.Store(c, struct{}{})
	// The authorizer is asked when a statement is compiled, and mattn runs
	// a statement it has cached (by text: a COMMIT the application ran
	// with a cancellable context) without compiling it again. A flag
	// pragma expires every compiled statement of c, whatever its value, so
	// that a cached one is compiled anew before it runs; foreign_keys, as
	// a no-op inside the transaction.
	_, err := c.ExecContext(ctx, "PRAGMA foreign_keys = OFF", nil)
	if err == nil {
		_, err = c.ExecContext(ctx, script, nil)
	}
	scriptConns.Delete(c)
	if err == nil && c.AutoCommit() {
		// Refused above; should a way past it remain, say so rather than
		// record a migration that ran partly outside its transaction.
		return errors.New("the migration ended the proxy's transaction: no BEGIN, COMMIT, END or ROLLBACK of its own")
	}
	if err != nil {
		if isAuthErr(err) || isFunctionDenied(err) {
			return fmt.Errorf("%w (a migration runs inside the proxy's transaction, on a tenant connection: no BEGIN, COMMIT, END or ROLLBACK of its own, SAVEPOINT works but for the name "+fkSavepoint+"; no ATTACH nor load_extension)", err)
		}
		return err
	}
	return nil
}

// foreignKeysOff turns foreign key enforcement off on c for a migration,
// as SQLite's documented table rebuild needs (the pragma does nothing
// inside a transaction, and dropping a parent table in one would delete
// or null every child row through its ON DELETE action), and returns
// whether it was on and a function that turns it back on (after the
// transaction). Off already: nothing to do.
func foreignKeysOff(ctx context.Context, c *sqlite3.SQLiteConn) (wasOn bool, restore func(), err error) {
	on, err := queryInt64(ctx, c, "PRAGMA foreign_keys")
	if err != nil {
		return false, nil, err
	}
	if on == 0 {
		return false, func() {}, nil
	}
	if _, err := c.ExecContext(ctx, "PRAGMA foreign_keys = OFF", nil); err != nil {
		return false, nil, err
	}
	return true, func() { c.ExecContext(context.Background(), "PRAGMA foreign_keys = ON", nil) }, nil
}

// foreignKeyViolations counts c's foreign key violations (PRAGMA
// foreign_key_check). With a count from before (not -1), it fails if there
// are more now, naming the first few.
func foreignKeyViolations(ctx context.Context, c *sqlite3.SQLiteConn, before int) (int, error) {
	rows, err := c.QueryContext(ctx, "PRAGMA foreign_key_check", nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var found []string
	v := make([]driver.Value, len(rows.Columns()))
	n := 0
	for {
		if err := rows.Next(v); err == io.EOF {
			break
		} else if err != nil {
			return 0, err
		}
		n++
		if len(found) < 3 {
			found = append(found, fmt.Sprintf("%s row %v references %s", v[0], v[1], v[2]))
		}
	}
	if before >= 0 && n > before {
		return 0, fmt.Errorf("it leaves %d foreign key violations where there were %d (%s): migrations run with foreign keys off, as a table rebuild needs, and must add none", n, before, strings.Join(found, "; "))
	}
	return n, nil
}

// applyOne applies migration i to c in one BEGIN IMMEDIATE transaction
// and returns i+1, the version the tenant is at. Unless the ledger, read
// again inside the transaction, says the tenant is no longer at version i:
// another process migrated it, or rolled it back, since it was read. It
// then applies nothing and returns the version it found, to go on from.
// (Applying migration i over a tenant rolled back below it left ledgers
// such as 1,4 and a schema without 2 and 3, refused for good.)
func (m *migrator) applyOne(ctx context.Context, c *sqlite3.SQLiteConn, i int) (at int, err error) {
	fk, restoreFK, err := foreignKeysOff(ctx, c)
	if err != nil {
		return 0, err
	}
	defer restoreFK()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE", nil); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			c.ExecContext(context.Background(), "ROLLBACK", nil)
		}
	}()
	if err := withLedger(c, func() error { _, err := c.ExecContext(ctx, ledgerCreate, nil); return err }); err != nil {
		return 0, err
	}
	// Another process may have migrated or rolled back while we were
	// outside a transaction.
	if n, err := m.applied(ctx, c); err != nil {
		return 0, err
	} else if n != i {
		_, err := c.ExecContext(ctx, "COMMIT", nil)
		return n, err
	}
	if err := runScript(ctx, c, m.list[i].sql, fk); err != nil {
		return 0, err
	}
	args := []driver.NamedValue{
		{Ordinal: 1, Value: int64(i + 1)},
		{Ordinal: 2, Value: m.list[i].sum},
		{Ordinal: 3, Value: stamp(time.Now())}, // as a template copy's: one width, sorts by time
	}
	if err := withLedger(c, func() error { _, err := c.ExecContext(ctx, ledgerInsert, args); return err }); err != nil {
		return 0, err
	}
	if _, err = c.ExecContext(ctx, "COMMIT", nil); err != nil {
		return 0, err
	}
	return i + 1, nil
}

// downPlan returns the indexes of the migrations whose down migrations
// bring a tenant with n applied down to version to, newest first, and
// their down files' names; or ErrNoDownMigration naming every down file
// that would be needed and is missing.
func (m *migrator) downPlan(n, to int) ([]int, []string, error) {
	var (
		plan    []int
		names   []string
		missing []string
	)
	for v := n; v > to; v-- {
		mg := m.list[v-1]
		if mg.down == "" {
			missing = append(missing, downFileName(mg.name))
			continue
		}
		plan = append(plan, v-1)
		names = append(names, mg.downName)
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("%w: version %d to %d needs %s", ErrNoDownMigration, n, to, strings.Join(missing, ", "))
	}
	return plan, names, nil
}

// rollback is the one way down migrations reach a tenant file, the mirror
// of migrate: it reads the ledger on c and checks it against the
// configured migrations (ErrMigrationDrift), checks that every down
// migration needed to reach version to exists (ErrNoDownMigration, before
// anything is changed) and, unless dryRun, runs them newest first, each
// followed by the removal of its ledger row. All of a tenant's down
// migrations run in one BEGIN IMMEDIATE transaction that re-reads the
// ledger first (another process may have moved the tenant meanwhile): the
// tenant ends wholly at version to, or, when one fails or the process
// dies, wholly where it was. It returns the down files run (with dryRun:
// that would run).
func (m *migrator) rollback(ctx context.Context, c *sqlite3.SQLiteConn, id string, tt *tenantTel, to int, dryRun bool) ([]string, error) {
	n, err := m.applied(ctx, c)
	if err != nil {
		return nil, opError(opRollback, id, err)
	}
	_, names, err := m.downPlan(n, to)
	if err != nil {
		return nil, opError(opRollback, id, err)
	}
	if len(names) == 0 || dryRun {
		return names, nil
	}
	names, err = m.rollbackTx(ctx, c, tt, to)
	if err != nil {
		return nil, opError(opRollback, id, err)
	}
	return names, nil
}

func (m *migrator) rollbackTx(ctx context.Context, c *sqlite3.SQLiteConn, tt *tenantTel, to int) (_ []string, err error) {
	fk, restoreFK, err := foreignKeysOff(ctx, c)
	if err != nil {
		return nil, err
	}
	defer restoreFK()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE", nil); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.ExecContext(context.Background(), "ROLLBACK", nil)
		}
	}()
	n, err := m.applied(ctx, c)
	if err != nil {
		return nil, err
	}
	plan, names, err := m.downPlan(n, to)
	if err != nil {
		return nil, err
	}
	for _, i := range plan {
		name := m.list[i].downName
		sctx, end := m.tel.span(ctx, spanRollback, tt, attribute.String(attrMigration, name))
		err := runScript(sctx, c, m.list[i].down, fk)
		if err == nil {
			err = withLedger(c, func() error {
				_, err := c.ExecContext(sctx, ledgerDelete, []driver.NamedValue{{Ordinal: 1, Value: int64(i + 1)}})
				return err
			})
		}
		end(err)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if _, err := c.ExecContext(ctx, "COMMIT", nil); err != nil {
		return nil, err
	}
	return names, nil
}

// MigrationMode says when tenants get their pending migrations.
type MigrationMode int

const (
	// MigrateAuto applies pending migrations on a tenant's first access.
	MigrateAuto MigrationMode = iota
	// MigrateCheck refuses a tenant with pending migrations with
	// ErrPendingMigrations until MigrateAll (or the CLI) migrates it, for
	// teams that migrate in a deploy step. New tenants are still created
	// with every migration applied.
	MigrateCheck
	// MigrateManual applies nothing on access and serves tenants that are
	// behind as they are, and tenants ahead (every configured migration and
	// newer ones after them: the CLI's migrate run with the next release's
	// migrations before it is deployed) too: MigrateAll and Rollback (or
	// the CLI) are the only writers of schema. It is the mode to roll back in while the service
	// runs (a service in MigrateAuto would apply the rolled-back migrations
	// again when it next opens the tenant) and for operators who move
	// tenants between versions one batch at a time. A tenant whose ledger
	// has drifted is still refused (ErrMigrationDrift), and new tenants are
	// still created with every configured migration applied: a tenant
	// created empty would serve none of the application's tables.
	MigrateManual
)

func (m MigrationMode) String() string {
	switch m {
	case MigrateAuto:
		return "auto"
	case MigrateCheck:
		return "check"
	case MigrateManual:
		return "manual"
	}
	return fmt.Sprintf("MigrationMode(%d)", int(m))
}

func parseMigrationMode(s string) (MigrationMode, error) {
	switch strings.ToLower(s) {
	case "auto":
		return MigrateAuto, nil
	case "check":
		return MigrateCheck, nil
	case "manual":
		return MigrateManual, nil
	}
	return 0, fmt.Errorf("migration mode %q is not auto, check or manual", s)
}

// isRegularFile reports whether e is a regular file of fsys, or a symbolic
// link to one: a Kubernetes ConfigMap mounts every file as a link.
func isRegularFile(fsys fs.FS, e fs.DirEntry) bool {
	if e.Type().IsRegular() {
		return true
	}
	if e.Type()&fs.ModeSymlink == 0 {
		return false
	}
	fi, err := fs.Stat(fsys, e.Name())
	return err == nil && fi.Mode().IsRegular()
}

// loadMigrations returns the configured migrations: Config.Migrations, or
// the SQL files of Config.MigrationsFS (or of the directory
// Config.MigrationsDir), read once.
//
// Files are named like goose or golang-migrate name them: a number, an
// underscore, a name, then ".sql" or ".up.sql" (0001_init.sql,
// 0002_add_severity.up.sql). They apply in numeric order (0010 after 0002);
// subdirectories and other files are ignored (a symbolic link to a
// regular file is read as the file), but a .sql file that starts like a
// migration's name (a digit, or V and a digit) and is not named so is an
// error; two files with the same number are an error. A goose file's
// sections are split (gooseSections). A file "NNNN_name.down.sql" is the down migration
// of the migration numbered NNNN, run by Proxy.Rollback; it is not part of
// the migration's checksum, so a down file may be added (or fixed) after
// its migration was applied. A down file without a migration of its
// number is an error.
func loadMigrations(cfg *Config) ([]migration, error) {
	fsys := cfg.MigrationsFS
	if cfg.MigrationsDir != "" {
		// os.DirFS names the directory "." in its errors ("open .: no
		// such file or directory"): check it under the name given.
		fi, err := os.Stat(cfg.MigrationsDir)
		if err != nil {
			return nil, fmt.Errorf("read migrations: Config.MigrationsDir (DSN migrations_dir): %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("read migrations: Config.MigrationsDir (DSN migrations_dir): %s is not a directory", cfg.MigrationsDir)
		}
		fsys = os.DirFS(cfg.MigrationsDir)
	}
	if fsys == nil {
		list := make([]migration, len(cfg.Migrations))
		for i, s := range cfg.Migrations {
			list[i] = migration{name: fmt.Sprintf("Migrations[%d]", i), sql: s}
		}
		return list, nil
	}
	from := "Config.MigrationsFS"
	if cfg.MigrationsDir != "" {
		from = cfg.MigrationsDir
	}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations from %s: %w", from, err)
	}
	type numbered struct {
		n    uint64
		name string
	}
	var files []numbered
	downs := map[uint64]string{} // number -> down file name
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(strings.ToLower(name), ".sql") || !isRegularFile(fsys, e) {
			continue
		}
		digits, _, ok := strings.Cut(name, "_")
		if !strings.HasSuffix(name, ".sql") || !ok || digits == "" || strings.Trim(digits, "0123456789") != "" {
			if looksNumbered(name) {
				// Meant as a migration (0002-add.sql, 0002_add.SQL, Flyway's
				// V2__add.sql): skipped, its schema would silently be missing.
				return nil, fmt.Errorf("migration file %s is not named like 0001_name.sql (a number, an underscore, a name, .sql in lower case)", name)
			}
			continue
		}
		n, err := strconv.ParseUint(digits, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("migration file %s: %w", name, err)
		}
		if strings.HasSuffix(name, ".down.sql") {
			if other, dup := downs[n]; dup {
				return nil, fmt.Errorf("down migration files %s and %s have the same number", min(other, name), max(other, name))
			}
			downs[n] = name
			continue
		}
		files = append(files, numbered{n, name})
	}
	if len(files) == 0 && len(downs) == 0 {
		if err := noMigrationFiles(fsys, from, entries); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(files, func(a, b numbered) int { return cmp.Compare(a.n, b.n) })
	read := func(name string) (string, error) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return "", fmt.Errorf("read migration %s: %w", name, err)
		}
		if strings.TrimSpace(string(b)) == "" {
			return "", fmt.Errorf("migration file %s is empty", name)
		}
		return string(b), nil
	}
	list := make([]migration, 0, len(files))
	for i, f := range files {
		if i > 0 && files[i-1].n == f.n {
			return nil, fmt.Errorf("migration files %s and %s have the same number", files[i-1].name, f.name)
		}
		up, err := read(f.name)
		if err != nil {
			return nil, err
		}
		mg := migration{name: f.name, sql: up}
		if gup, gdown, ok, err := gooseSections(f.name, up); err != nil {
			return nil, err
		} else if ok {
			mg.sql = gup
			// Versions before goose support applied the whole file:
			// without SQL under Down, the Up section alone. Its Down
			// section may have had none then and some since (or none
			// yet, nor the annotation): every such earlier text is one
			// the same schema came from. Only a whole file with SQL
			// under Down ran both (driftAt).
			mg.older = gooseOlder(up)
			if !sqlscan.Empty(gdown) {
				mg.whole = up
			}
			if gdown != "" {
				if d, dup := downs[f.n]; dup {
					return nil, fmt.Errorf("migration %s has a goose Down section and a down file, %s: keep one", f.name, d)
				}
				mg.down, mg.downName = gdown, f.name+" (goose Down)"
			}
		}
		if d, ok := downs[f.n]; ok {
			if migrationLabel(d) != migrationLabel(f.name) {
				// Matched by number alone, 0001_a.up.sql took 0001_b.down.sql:
				// a down written for another migration (a renamed one, a
				// merge of two branches) would undo the wrong schema.
				return nil, fmt.Errorf("down migration file %s does not match %s: name it %s", d, f.name, path.Base(downFileName(f.name)))
			}
			if mg.down, err = read(d); err != nil {
				return nil, err
			}
			mg.downName = d
			delete(downs, f.n)
		}
		list = append(list, mg)
	}
	for _, d := range slices.Sorted(maps.Values(downs)) {
		return nil, fmt.Errorf("down migration file %s has no up migration of its number", d)
	}
	return list, nil
}

// looksNumbered reports whether a .sql file name starts as migration file
// names do: a digit, or V and a digit (Flyway).
func looksNumbered(name string) bool {
	isDigit := func(i int) bool { return i < len(name) && name[i] >= '0' && name[i] <= '9' }
	return isDigit(0) || (name != "" && (name[0] == 'V' || name[0] == 'v') && isDigit(1))
}

// gooseSections splits a migration file annotated for goose
// (https://github.com/pressly/goose: "-- +goose Up", "-- +goose Down")
// into its up and down SQL; ok is false for a file without annotations,
// which is all up. Run whole, such a file ran its Down section right after
// its Up one. An annotation is read as goose reads it: a line starting
// with "--", then "+goose" after blanks (so "--+goose Up" is one), in any
// case. StatementBegin and StatementEnd are comments to SQLite and stay;
// NO TRANSACTION and ENVSUBST are refused: every migration runs in a
// transaction (with foreign keys off, which is what NO TRANSACTION is for
// on SQLite) and as written. SQL before the Up annotation is refused, as
// goose refuses it. A Down section of only comments and blanks is no down
// migration.
// gooseOlder returns the texts a goose file may have had when a version
// before goose support applied it whole, with the same effect as its Up
// section: the file up to its "-- +goose Down" line (the Down section
// added since), and through that line and each following line while the
// Down section so far holds no SQL (comments added under it first, SQL
// later). The last of these is the whole file when its Down section holds
// no SQL.
func gooseOlder(text string) []string {
	var older []string
	at, down := 0, -1 // down: where the Down section begins, once found
	for line := range strings.Lines(text) {
		if down < 0 {
			if ann, found := gooseAnnotation(strings.TrimSpace(line)); found && ann == "DOWN" {
				older = append(older, text[:at])
				down = at + len(line)
				older = append(older, text[:down])
			}
		} else if sqlscan.Empty(text[down : at+len(line)]) {
			older = append(older, text[:at+len(line)])
		} else {
			break
		}
		at += len(line)
	}
	if down < 0 {
		older = append(older, text) // no Down section at all
	}
	return older
}

func gooseSections(name, text string) (up, down string, ok bool, err error) {
	var b [2]strings.Builder
	section := -1 // 0: Up, 1: Down
	sqlBefore := false
	for line := range strings.Lines(text) {
		trimmed := strings.TrimSpace(line)
		ann, found := gooseAnnotation(trimmed)
		if !found {
			switch {
			case section >= 0:
				b[section].WriteString(line)
			case trimmed != "" && !strings.HasPrefix(trimmed, "--"):
				sqlBefore = true
			}
			continue
		}
		ok = true
		switch ann {
		case "UP":
			if section != -1 {
				return "", "", true, fmt.Errorf("migration %s: -- +goose Up after another section", name)
			}
			section = 0
		case "DOWN":
			if section != 0 {
				return "", "", true, fmt.Errorf("migration %s: -- +goose Down without a -- +goose Up before it", name)
			}
			section = 1
		case "STATEMENTBEGIN", "STATEMENTEND":
			if section >= 0 {
				b[section].WriteString(line)
			}
		default:
			return "", "", true, fmt.Errorf("migration %s: %q is not supported: every migration runs as written, inside a transaction with foreign keys off", name, trimmed)
		}
	}
	if !ok {
		return "", "", false, nil
	}
	if sqlBefore {
		return "", "", true, fmt.Errorf("migration %s has SQL before its -- +goose Up annotation (goose refuses it too)", name)
	}
	if section < 0 || sqlscan.Empty(b[0].String()) {
		return "", "", true, fmt.Errorf("migration %s has goose annotations but no SQL in a -- +goose Up section", name)
	}
	if !sqlscan.Empty(b[1].String()) {
		down = b[1].String()
	}
	return b[0].String(), down, true, nil
}

// gooseAnnotation returns the goose annotation on a trimmed line, upper
// case with single spaces ("UP", "NO TRANSACTION"), if it holds one.
func gooseAnnotation(trimmed string) (string, bool) {
	rest, ok := strings.CutPrefix(trimmed, "--")
	if !ok {
		return "", false
	}
	rest = strings.TrimSpace(rest)
	if !hasPrefixFold(rest, "+goose") {
		return "", false
	}
	return strings.ToUpper(strings.Join(strings.Fields(rest[len("+goose"):]), " ")), true
}

// noMigrationFiles explains a migration source that holds no migration
// but SQL files, which is a mistake, not an empty set: files in a folder
// (//go:embed migrations/*.sql keeps the folder in the names), or named
// otherwise than NNNN_name.sql. A source without SQL files is no error.
func noMigrationFiles(fsys fs.FS, from string, entries []fs.DirEntry) error {
	var misnamed []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			sub, _ := fs.ReadDir(fsys, name)
			for _, se := range sub {
				n := se.Name()
				if n != "" && n[0] >= '0' && n[0] <= '9' && strings.Contains(n, "_") && strings.HasSuffix(n, ".sql") {
					return fmt.Errorf("no migration files at the top of %s, but %s/ holds %s: pass fs.Sub(fsys, %q) (//go:embed keeps the folder in the names)", from, name, n, name)
				}
			}
			continue
		}
		if strings.HasSuffix(strings.ToLower(name), ".sql") {
			misnamed = append(misnamed, name)
		}
	}
	if len(misnamed) > 0 {
		return fmt.Errorf("no migration files in %s: %s not named like 0001_name.sql (a number, an underscore, a name, .sql)", from, strings.Join(misnamed, ", "))
	}
	return nil
}

// migrationLabel is the name of the migration file name after its number:
// "add" for 0002_add.sql, 2_add.up.sql and 0002_add.down.sql.
func migrationLabel(name string) string {
	base := strings.TrimLeft(path.Base(name), "0123456789")
	base = strings.TrimPrefix(base, "_")
	base = strings.TrimSuffix(base, ".sql")
	base = strings.TrimSuffix(base, ".down")
	return strings.TrimSuffix(base, ".up")
}

// downFileName is the name the down migration of the migration named up
// would have: 0002_x.up.sql and 0002_x.sql -> 0002_x.down.sql.
func downFileName(up string) string {
	base := strings.TrimSuffix(up, ".sql")
	return strings.TrimSuffix(base, ".up") + ".down.sql"
}
