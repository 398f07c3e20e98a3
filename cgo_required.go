//go:build !cgo

package sqliteproxy

// Without cgo, mattn/go-sqlite3 (the SQLite this driver runs on) is a stub
// and this package does not build: this says why first.
type _ [`sqliteproxy requires cgo: build with CGO_ENABLED=1 and gcc`]int
