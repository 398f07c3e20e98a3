package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// tenantHook returns the ConnectHook of tenant connections, which runs once
// mattn has applied the DSN's pragmas: it puts the file in WAL mode
// (retrying for up to walWait, see ensureWAL: 0 for a driver whose opens
// openFile tries again, under the caller's context), sets a busy handler
// that an interrupt ends, with busyTimeout (busy.go), and hardens the
// connection (replicated: for a file Litestream streams), and with keep
// makes it keep the -wal and -shm when it closes last (Config.KeepWAL).
//
// With dir (the data directory, symlinks resolved) it first refuses a
// connection whose file is not under dir: SQLite follows a symlink put in
// a tenant file's place after the proxy looked, and the hook would have
// written to the file it reached (its journal mode, a -wal and -shm beside
// it) before openFile could refuse it.
func tenantHook(busyTimeout, walWait time.Duration, replicated bool, dir string, syncFloor int, keep bool, auth authorizer) func(*sqlite3.SQLiteConn) error {
	return func(c *sqlite3.SQLiteConn) error {
		if dir != "" {
			if got := c.GetFilename("main"); !strings.HasPrefix(got, dir+string(filepath.Separator)) {
				return fmt.Errorf("%w: opened %s, outside the data directory %s: a tenant file may not be a symlink, nor the data directory change while the proxy runs", errNotTenantFile, got, dir)
			}
		}
		// Before the busy handler: the switch to WAL waited in it (for the
		// exclusive lock of a rollback-journal file) up to BusyTimeout,
		// which the hook, without a context, cannot end.
		if err := ensureWAL(c, walWait); err != nil {
			return err
		}
		if err := setBusyTimeout(c, busyTimeout); err != nil {
			return err
		}
		if keep {
			if err := keepWAL(c); err != nil {
				return err
			}
		}
		return hardenTenantConn(c, replicated, syncFloor, auth)
	}
}

// authorizer is an authorizer callback of mattn's (RegisterAuthorizer).
type authorizer = func(op int, arg1, arg2, arg3 string) int

// ensureWAL switches the file to WAL unless it is already. Switching needs
// the file to itself: each try waits up to walAttempt for the file's other
// connections (a process opening the same new file at once, one reading a
// restored tenant's file) in the busy handler, holding SQLite's PENDING
// lock meanwhile so that no new reader comes in (tried without, back to
// back short reads of another process kept the switch out); it tries
// again until timeout and then fails with SQLITE_BUSY. The hook sees no
// context: a first open of a restored tenant waited out BusyTimeout in the
// busy handler whatever the caller's deadline. Tenant drivers pass 0, and
// openFile tries their open again under the context.
func ensureWAL(c *sqlite3.SQLiteConn, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	armed := false
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		mode, err := journalMode(c)
		if err == nil && strings.EqualFold(mode, "wal") {
			return nil
		}
		if err == nil && !armed {
			err = setBusyTimeout(c, walAttempt)
			armed = true
		}
		if err == nil {
			_, err = c.Exec("PRAGMA journal_mode = WAL", nil)
		}
		if err == nil {
			continue // check what it became
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
	}
}

// walAttempt is how long one try of ensureWAL waits for the file.
const walAttempt = 50 * time.Millisecond

// busyPragma sets SQLite's own busy handler on c with timeout, as mattn's
// busy_timeout does.
func busyPragma(c *sqlite3.SQLiteConn, timeout time.Duration) error {
	_, err := c.Exec("PRAGMA busy_timeout = "+strconv.FormatInt(max(timeout, 0).Milliseconds(), 10), nil)
	return err
}

// isBusy reports whether err is SQLite's SQLITE_BUSY or SQLITE_LOCKED.
func isBusy(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.Code == sqlite3.ErrBusy || se.Code == sqlite3.ErrLocked)
}

func journalMode(c *sqlite3.SQLiteConn) (string, error) {
	rows, err := c.Query("PRAGMA journal_mode", nil)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		return "", err
	}
	mode, _ := dest[0].(string)
	return mode, nil
}

// hardenTenantConn allows one attached database (plain VACUUM attaches the
// empty file name internally; see vacuum) and installs auth
// (tenantAuthorizer, which refuses every ATTACH, or one that calls it).
//
// syncFloor is the rank (syncRank) of Config.Synchronous: a PRAGMA
// synchronous below it is refused. It stayed on the shared writer, and
// every later write of the tenant ran with it (adv49: synchronous = OFF
// under Synchronous FULL).
func hardenTenantConn(c *sqlite3.SQLiteConn, replicated bool, syncFloor int, auth authorizer) error {
	c.SetLimit(sqlite3.SQLITE_LIMIT_ATTACHED, 1)
	if err := setDefensive(c); err != nil && err != errNoHandle {
		return err
	}
	if replicated {
		// Litestream checkpoints (it holds a read transaction, so a tenant
		// connection's automatic checkpoint could not finish anyway, and was
		// retried after every commit once the WAL passed 1 000 pages).
		if _, err := c.Exec("PRAGMA wal_autocheckpoint = 0", nil); err != nil {
			return err
		}
	}
	registerAuthorizer(c, replicated, syncFloor, auth)
	return nil
}

// registerAuthorizer installs auth on c (replicatedAuthorizer's checks
// first when replicated), refusing transaction control while c runs a
// migration script (see runScript) and a PRAGMA synchronous below
// syncFloor.
func registerAuthorizer(c *sqlite3.SQLiteConn, replicated bool, syncFloor int, auth func(int, string, string, string) int) {
	c.RegisterAuthorizer(func(op int, arg1, arg2, arg3 string) int {
		if op == sqlite3.SQLITE_PRAGMA && arg2 != "" && strings.EqualFold(arg1, "synchronous") && sqliteSyncRank(arg2) < syncFloor {
			return sqlite3.SQLITE_DENY
		}
		if op == sqlite3.SQLITE_TRANSACTION || (op == sqlite3.SQLITE_SAVEPOINT && strings.EqualFold(arg2, fkSavepoint)) {
			// A script's SAVEPOINT of the migrator's own name made the
			// migrator's ROLLBACK TO stop at the script's: a migration
			// adding violations passed, or half of it ran twice.
			if _, ok := scriptConns.Load(c); ok {
				return sqlite3.SQLITE_DENY
			}
		}
		if changesLedger(op, arg1, arg2, arg3) {
			if _, ok := ledgerConns.Load(c); !ok {
				return sqlite3.SQLITE_DENY
			}
		}
		if replicated {
			if v := replicatedChecks(op, arg1, arg2); v != sqlite3.SQLITE_OK {
				return v
			}
		}
		return auth(op, arg1, arg2, arg3)
	})
}

// ledgerConns holds the connections on which the migrator itself writes a
// ledger (withLedger). Nothing else may change it: a ledger emptied by the
// application (a test helper that deletes every table's rows) made every
// access to the tenant run its migrations again over the schema they had
// made, and fail, for good; a trigger on it would run the application's SQL
// inside the migrator's own statements.
var ledgerConns sync.Map // *sqlite3.SQLiteConn -> struct{}

// withLedger runs f, the migrator's own writes to the ledger, on c.
func withLedger(c *sqlite3.SQLiteConn, f func() error) error {
	ledgerConns.Store(c, struct{}{})
	defer ledgerConns.Delete(c)
	return f()
}

// changesLedger reports whether an authorizer call (op, its two
// arguments, the database name) is about a change to the ledger's table in
// the tenant's file: its rows, the table itself, or a trigger on it. (The
// migrator names it main._sqliteproxy_migrations, so a TEMP table of the
// name fools nothing; VACUUM copies it into its own database.)
//
// Making it counts as a change: a table or view of its name made by the
// application before the first migration (a tenant made with none) was
// taken for the ledger by the migrator's CREATE TABLE IF NOT EXISTS, and
// an index on it (an expression that fails) made every ledger write fail.
func changesLedger(op int, arg1, arg2, db string) bool {
	switch op {
	case sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_DROP_TABLE,
		sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_VIEW,
		// A virtual table of its name (FTS4) had writable shadow tables.
		sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE:
		return strings.EqualFold(arg1, ledgerTable) && strings.EqualFold(db, "main")
	case sqlite3.SQLITE_ALTER_TABLE:
		return strings.EqualFold(arg2, ledgerTable) && strings.EqualFold(arg1, "main")
	case sqlite3.SQLITE_CREATE_INDEX:
		// On the ledger, or named like it (made before the ledger, an index
		// of its name made the ledger's creation fail for good).
		return (strings.EqualFold(arg2, ledgerTable) || strings.EqualFold(arg1, ledgerTable)) && strings.EqualFold(db, "main")
	case sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_TRIGGER:
		return strings.EqualFold(arg2, ledgerTable) || strings.EqualFold(arg1, ledgerTable)
	}
	return false
}

// scriptConns holds the connections running a migration's SQL inside the
// migrator's transaction (runScript): a BEGIN, COMMIT, END or ROLLBACK of
// the script's own would end that transaction midway, and what follows it
// would commit statement by statement, half a migration applied.
var scriptConns sync.Map // *sqlite3.SQLiteConn -> struct{}

// replicatedAuthorizer is tenantAuthorizer for a file that Litestream
// streams, which owns its checkpoints and follows its WAL: it also denies
// VACUUM (which attaches an empty file name to rebuild the file) and checkpoints that
// restart or truncate the WAL. Passive checkpoints are fine.
func replicatedAuthorizer(op int, arg1, arg2, arg3 string) int {
	if v := replicatedChecks(op, arg1, arg2); v != sqlite3.SQLITE_OK {
		return v
	}
	return tenantAuthorizer(op, arg1, arg2, arg3)
}

// replicatedChecks is what replicatedAuthorizer adds to tenantAuthorizer.
func replicatedChecks(op int, arg1, arg2 string) int {
	switch {
	case op == sqlite3.SQLITE_ATTACH:
		return sqlite3.SQLITE_DENY
	case op == sqlite3.SQLITE_PRAGMA && strings.EqualFold(arg1, "wal_autocheckpoint") && arg2 != "":
		return sqlite3.SQLITE_DENY
	case op == sqlite3.SQLITE_PRAGMA && strings.EqualFold(arg1, "wal_checkpoint"):
		switch strings.ToUpper(arg2) {
		case "", "PASSIVE":
		default:
			return sqlite3.SQLITE_DENY
		}
	}
	return sqlite3.SQLITE_OK
}

// tenantAuthorizer keeps a statement inside its tenant's file and keeps the
// shared connections' session intact: it denies ATTACH (and so VACUUM
// INTO), DETACH, load_extension(), and changes to pragmas that would
// corrupt the file, break the pool or reach beyond the connection
// (writable_schema, journal_mode, locking_mode, query_only, the temp/data
// store directories, the process's heap limits, count_changes on).
//
// Every ATTACH, whatever its file name: SQLite gives the authorizer the
// name only when it is a string literal, and NULL (which mattn passes as
// "") for a parameter or any other expression (ATTACH ? AS v), so an empty
// name cannot tell plain VACUUM's own temporary database from another
// tenant's file. Plain VACUUM runs with vacuumAuthorizer instead.
func tenantAuthorizer(op int, arg1, arg2, _ string) int {
	switch op {
	case sqlite3.SQLITE_ATTACH:
		return sqlite3.SQLITE_DENY
	case sqlite3.SQLITE_DETACH:
		return sqlite3.SQLITE_DENY
	case sqlite3.SQLITE_FUNCTION:
		if deniedFunction(arg2) {
			return sqlite3.SQLITE_DENY
		}
	case sqlite3.SQLITE_PRAGMA:
		return pragmaVerdict(arg1, arg2)
	}
	return sqlite3.SQLITE_OK
}

func pragmaVerdict(name, value string) int {
	switch strings.ToLower(name) {
	case "writable_schema", "temp_store_directory", "data_store_directory":
		return sqlite3.SQLITE_DENY
	case "journal_mode", "locking_mode", "query_only",
		// The whole process's SQLite heap: one tenant setting it low makes
		// every tenant's statements fail with "out of memory".
		"hard_heap_limit", "soft_heap_limit",
		// SQLite: "misuse of this pragma can result in database corruption";
		// it only serves writable_schema edits, which are refused anyway.
		"schema_version":
		if value != "" {
			return sqlite3.SQLITE_DENY // reading them is fine
		}
	case "wal_autocheckpoint":
		// Off (or negative), it stays on the writer and the WAL grows by
		// every write until the WAL bound next looks, 1 024 check-ins
		// later (260 MB beside a 12 KB file in a trial). Other values are
		// the tenant's to tune. (Replicated connections refuse any.)
		// The value as SQLite reads it (sqliteAtoi): Go's Atoi took
		// 2147483648 for a large number, which SQLite reads as 0, off
		// (adv49).
		if value != "" && sqliteAtoi(value) <= 0 {
			return sqlite3.SQLITE_DENY
		}
	case "ignore_check_constraints":
		// On, it stays on the writer and every later write of the tenant
		// skips its CHECK constraints (adv49).
		if value != "" && sqliteBoolean(value) {
			return sqlite3.SQLITE_DENY
		}
	case "case_sensitive_like":
		// On, it stays on the writer, which then keeps a partial index (or
		// an expression, CHECK or generated column) that uses LIKE by
		// other rules than every other connection reads it with: a row
		// missing from its index, integrity_check failing, "database disk
		// image is malformed" at a later DELETE (adv52). SQLite deprecates
		// the pragma for that reason.
		if value != "" && sqliteBoolean(value) {
			return sqlite3.SQLITE_DENY
		}
	case "count_changes":
		// Deprecated; on, every INSERT, UPDATE and DELETE returns a row, and
		// a write stepped once (Exec) stays active: kept on the writer, its
		// transaction never commits (acknowledged writes lost, every batch's
		// COMMIT failing). Off is what it already is.
		switch strings.ToLower(strings.Trim(value, `'"`)) {
		case "", "0", "off", "no", "false":
		default:
			return sqlite3.SQLITE_DENY
		}
	}
	return sqlite3.SQLITE_OK
}

// setsPragmaEmpty reports whether query holds a PRAGMA with an empty
// argument (an empty string or quoted name, in any quotes, after = or in
// parentheses). SQLite reads the empty text as a value (an empty journal_mode
// is DELETE, wal_autocheckpoint and schema_version 0, synchronous NORMAL,
// a flag off), but the authorizer is handed "" for it as for no argument
// at all (mattn passes SQLite's NULL as ""), and let it through as a read:
// on the writer past the rules on its settings, on a reader past its
// refusal of every setter (adv49, adv50, adv51). No PRAGMA needs an empty
// argument, so every one is refused, whatever its name. Only texts that
// may hold a PRAGMA are read: one that begins like one, or holds a ';'.
func setsPragmaEmpty(query string) bool {
	if !mayBePragma(query) && strings.IndexByte(query, ';') < 0 {
		return false
	}
	for stmt := range sqlscan.Statements(query) {
		// mattn runs what follows a statement after strings.TrimSpace,
		// which drops Unicode spaces (U+00A0, U+3000, ...) that SQLite would
		// read as part of a word: "SELECT 1;\u00A0PRAGMA ..." ran the PRAGMA
		// (adv50).
		pg, ok := pragmaOf(sqlscan.Tokens(strings.TrimSpace(stmt), 9))
		// An empty string literal is the token "'", an empty quoted name "".
		if ok && pg.hasValue && (pg.value == "'" || pg.value == "") {
			return true
		}
	}
	return false
}

// errPragmaEmpty is what a statement setsPragmaEmpty refuses fails with:
// the authorizer's refusal, as SQLite reports it (refused makes it an
// *Error naming the statement and the rules).
var errPragmaEmpty = sqlite3.Error{Code: sqlite3.ErrAuth, ExtendedCode: sqlite3.ErrNoExtended(sqlite3.ErrAuth)}

// syncRank orders Config.Synchronous's levels: OFF 0, NORMAL 1, FULL 2,
// EXTRA 3.
func syncRank(level string) int {
	return max(0, slices.Index([]string{"OFF", "NORMAL", "FULL", "EXTRA"}, strings.ToUpper(level)))
}

// sqliteSyncRank is the syncRank of the level PRAGMA synchronous = z
// sets, as SQLite reads z: a number n (sqliteAtoi) is level (n+1) & 7,
// 0 taken for 1; a word, one of getSafetyLevel's (off, no, false: 0; on,
// yes, true: 1; full: 2; extra: 3; "normal" and anything else 1) plus 1.
// Levels 1-4 are OFF, NORMAL, FULL, EXTRA; 5-7 sync as FULL.
func sqliteSyncRank(z string) int {
	var n int32
	if z != "" && z[0] >= '0' && z[0] <= '9' {
		n = sqliteAtoi(z)
	} else {
		n = sqliteSafetyLevel(z, false, 1)
	}
	switch level := (n + 1) & 7; level {
	case 0, 1:
		return 0
	case 2:
		return 1
	case 4:
		return 3
	default:
		return 2
	}
}

// sqliteBoolean is SQLite's sqlite3GetBoolean(z, 0): a number not 0, or
// on, yes, true.
func sqliteBoolean(z string) bool { return sqliteSafetyLevel(z, true, 0) != 0 }

// sqliteSafetyLevel is SQLite's getSafetyLevel: for a number, whether it
// is not 0; else the value of one of its words, compared without case
// (full and extra only when !omitFull); else dflt.
func sqliteSafetyLevel(z string, omitFull bool, dflt int32) int32 {
	if z != "" && z[0] >= '0' && z[0] <= '9' {
		if sqliteAtoi(z) != 0 {
			return 1
		}
		return 0
	}
	for _, w := range []struct {
		word  string
		value int32
	}{{"on", 1}, {"no", 0}, {"off", 0}, {"false", 0}, {"yes", 1}, {"true", 1}, {"extra", 3}, {"full", 2}} {
		if strings.EqualFold(z, w.word) && (!omitFull || w.value <= 1) {
			return w.value
		}
	}
	return dflt
}

// sqliteAtoi reads s as SQLite's sqlite3Atoi reads a PRAGMA's value (the
// authorizer gets the text it gets): an optional sign, then decimal digits
// or 0x and up to eight hex digits, anything after them ignored; 0 when
// there are none, or when the number does not fit in 32 bits.
func sqliteAtoi(s string) int32 {
	neg := false
	switch {
	case strings.HasPrefix(s, "-"):
		neg, s = true, s[1:]
	case strings.HasPrefix(s, "+"):
		s = s[1:]
	case len(s) > 2 && s[0] == '0' && s[1]|0x20 == 'x' && anyHexDigit(s[2]):
		s = strings.TrimLeft(s[2:], "0")
		var u uint32
		i := 0
		for ; i < 8 && i < len(s) && anyHexDigit(s[i]); i++ {
			d := s[i] - '0'
			if s[i] > '9' {
				d = s[i] | 0x20 - 'a' + 10
			}
			u = u*16 + uint32(d)
		}
		if u&0x80000000 != 0 || i < len(s) && anyHexDigit(s[i]) {
			return 0
		}
		return int32(u)
	}
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0
	}
	s = strings.TrimLeft(s, "0")
	var v int64
	i := 0
	for ; i < 11 && i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		v = v*10 + int64(s[i]-'0')
	}
	if i > 10 {
		return 0
	}
	if neg {
		if v > 1<<31 {
			return 0
		}
		return int32(-v)
	}
	if v > 1<<31-1 {
		return 0
	}
	return int32(v)
}

// anyHexDigit reports whether c is a hex digit of either case.
func anyHexDigit(c byte) bool { return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f' }

// vacuumAuthorizer is tenantAuthorizer while the proxy runs a plain VACUUM
// (see vacuum): that statement attaches the empty file name, a temporary
// database it rebuilds the file in, and nothing else can run meanwhile.
func vacuumAuthorizer(op int, arg1, arg2, arg3 string) int {
	if op == sqlite3.SQLITE_ATTACH && arg1 == "" {
		return sqlite3.SQLITE_OK
	}
	return tenantAuthorizer(op, arg1, arg2, arg3)
}

// plainVacuum reports whether query is one plain VACUUM statement
// ("VACUUM" or "VACUUM main", nothing after it but blanks, comments and
// semicolons): the one text the proxy runs with vacuumAuthorizer.
func plainVacuum(query string) bool {
	info := sqlscan.Scan(query)
	if info.Keyword != "VACUUM" || info.Multi {
		return false
	}
	// Comments were taken for words ("VACUUM -- nightly" was refused),
	// and "main" spelt quoted for another schema.
	const most = 8
	toks := sqlscan.Tokens(query, most)
	n := 1
	if len(toks) > 1 && (strings.EqualFold(toks[1], "main") || strings.EqualFold(toks[1], "'main")) {
		n = 2
	}
	for _, t := range toks[n:] {
		if t != ";" {
			return false
		}
	}
	return len(toks) < most
}

// vacuum runs a plain VACUUM on c, a tenant connection that is not
// replicated, with vacuumAuthorizer in place for that one statement.
func vacuum(ctx context.Context, c *sqlite3.SQLiteConn, query string, syncFloor int) (driver.Result, error) {
	registerAuthorizer(c, false, syncFloor, vacuumAuthorizer)
	defer registerAuthorizer(c, false, syncFloor, tenantAuthorizer)
	return c.ExecContext(ctx, query, nil)
}

// tenantlessAuthorizer allows only what a pure expression needs: SELECT,
// function calls (never load_extension), CTEs (recursive too) and
// table-valued functions (json_each). Nothing is written, and no pragma or
// schema change runs. The connection has no table: a table the statement
// names fails at prepare ("no such table"), and it could read only a CTE,
// a table-valued function, or its own empty schema and pragmas, which are
// refused, as a statement that meant a tenant's would get an empty answer
// (a toolkit's "does the table exist?" then asked no tenant).
func tenantlessAuthorizer(op int, arg1, arg2, _ string) int {
	switch op {
	case sqlite3.SQLITE_SELECT, sqliteRecursive:
		return sqlite3.SQLITE_OK
	case sqlite3.SQLITE_READ:
		if hasPrefixFold(arg1, "sqlite_") || hasPrefixFold(arg1, "pragma_") {
			return sqlite3.SQLITE_DENY
		}
		return sqlite3.SQLITE_OK
	case sqlite3.SQLITE_FUNCTION:
		if deniedFunction(arg2) {
			return sqlite3.SQLITE_DENY
		}
		return sqlite3.SQLITE_OK
	}
	return sqlite3.SQLITE_DENY
}

// deniedFunction reports whether SQL may not call the function name:
// load_extension (code from a file), and fts3_tokenizer, whose second
// argument, bound as a parameter, is a pointer SQLite calls through (FTS3
// is compiled into mattn): SELECT fts3_tokenizer('simple', ?) with eight
// bytes of the caller's, then a CREATE VIRTUAL TABLE ... USING fts3,
// crashed the process (SIGSEGV, every tenant with it), and with one
// argument it reads out a module's address (adv52).
func deniedFunction(name string) bool {
	return strings.EqualFold(name, "load_extension") || strings.EqualFold(name, "fts3_tokenizer")
}

// sqliteRecursive is SQLITE_RECURSIVE (a recursive CTE), which mattn does not export.
const sqliteRecursive = 33

// hasPrefixFold reports whether s begins with prefix, in any case (ASCII).
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
