package sqliteproxy

import (
	"strings"

	"github.com/mattn/go-sqlite3"
)

// hardenTenantConn runs on every tenant connection once mattn has applied
// the DSN's pragmas. It allows one attached database (plain VACUUM attaches
// the empty file name internally) and installs tenantAuthorizer, which
// refuses every other ATTACH.
func hardenTenantConn(c *sqlite3.SQLiteConn) error {
	c.SetLimit(sqlite3.SQLITE_LIMIT_ATTACHED, 1)
	c.RegisterAuthorizer(tenantAuthorizer)
	return nil
}

// tenantAuthorizer keeps a statement inside its tenant's file and keeps the
// shared connections' session intact: it denies ATTACH of any file (and so
// VACUUM INTO), DETACH, load_extension(), and changes to pragmas that would
// corrupt the file or break the pool (writable_schema, journal_mode,
// locking_mode, query_only, the temp/data store directories).
func tenantAuthorizer(op int, arg1, arg2, _ string) int {
	switch op {
	case sqlite3.SQLITE_ATTACH:
		if arg1 == "" {
			return sqlite3.SQLITE_OK // VACUUM's own temporary database
		}
		return sqlite3.SQLITE_DENY
	case sqlite3.SQLITE_DETACH:
		return sqlite3.SQLITE_DENY
	case sqlite3.SQLITE_FUNCTION:
		if strings.EqualFold(arg2, "load_extension") {
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
	case "journal_mode", "locking_mode", "query_only":
		if value != "" {
			return sqlite3.SQLITE_DENY // reading them is fine
		}
	}
	return sqlite3.SQLITE_OK
}

// tenantlessAuthorizer allows only what a pure expression needs: SELECT,
// function calls (never load_extension) and recursive CTEs. No table can be
// read or written, and no pragma or schema change runs.
func tenantlessAuthorizer(op int, _, arg2, _ string) int {
	switch op {
	case sqlite3.SQLITE_SELECT, sqliteRecursive:
		return sqlite3.SQLITE_OK
	case sqlite3.SQLITE_FUNCTION:
		if strings.EqualFold(arg2, "load_extension") {
			return sqlite3.SQLITE_DENY
		}
		return sqlite3.SQLITE_OK
	}
	return sqlite3.SQLITE_DENY
}

// sqliteRecursive is SQLITE_RECURSIVE (a recursive CTE), which mattn does not export.
const sqliteRecursive = 33
