//go:build sqliteproxy_memstatus

package sqliteproxy

// keepMemStatus: built with the tag sqliteproxy_memstatus, SQLite keeps its
// memory statistics (memstatus.go).
const keepMemStatus = true
