// Package fdcount counts the file descriptors this process has open on
// files under a directory, for tests that check the connection cap.
package fdcount

import (
	"os"
	"path/filepath"
	"strings"
)

// Supported reports whether /proc/self/fd can be read here (Linux).
func Supported() bool {
	_, err := os.ReadDir("/proc/self/fd")
	return err == nil
}

// Count returns the number of open descriptors whose target is a file in
// dir with the given suffix (e.g. ".db"). /proc/self/fd is not an atomic
// snapshot: a descriptor may close and its number be reused between the
// listing and the readlink, so callers should confirm a surprising count
// with a second sample.
func Count(dir, suffix string) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	dir = filepath.Clean(dir) + string(filepath.Separator)
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, dir) && strings.HasSuffix(target, suffix) {
			n++
		}
	}
	return n
}
