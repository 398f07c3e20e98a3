//go:build !linux

package sqliteproxy

import "os"

// fileWatch watches nothing elsewhere than on Linux (filewatch.go).
type fileWatch struct{}

func startFileWatch(*router) *fileWatch { return nil }

func (w *fileWatch) folder(string) {}

func (w *fileWatch) file(*tenant, os.FileInfo) (same, unwatched bool) { return true, false }

func (w *fileWatch) close() {}
