//go:build !sqlite_omit_load_extension

package sqliteproxy

// loadExtensionBuilt: SQLite was built with extension loading (mattn
// without the sqlite_omit_load_extension tag).
const loadExtensionBuilt = true
