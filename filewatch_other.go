//go:build !linux

package sqliteproxy

// fileWatch watches nothing elsewhere than on Linux (filewatch.go).
type fileWatch struct{}

func startFileWatch(*router) *fileWatch { return nil }

func (w *fileWatch) folder(string) {}

func (w *fileWatch) close() {}
