//go:build !sqliteproxy_memstatus

package sqliteproxy

// keepMemStatus: SQLite's memory statistics are turned off (memstatus.go).
const keepMemStatus = false
