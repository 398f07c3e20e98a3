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
// dir with the given suffix (e.g. ".db").
//
// /proc/self/fd is not an atomic snapshot: the listing and the readlinks
// take time, and under churn a descriptor read early (a file about to be
// closed) and one read late (a file opened because the first was closed)
// can both be counted, so Count can exceed the number ever open at once.
// Confirm a surprising count with CountStable.
func Count(dir, suffix string) int { return len(snapshot(dir, suffix)) }

// CountStable counts the descriptors that show the same target in two
// consecutive snapshots: files open across the whole interval, so the
// early-and-late mixing of a single snapshot cannot inflate it. It may
// undercount under churn; use it to confirm, not to detect.
func CountStable(dir, suffix string) int {
	a := snapshot(dir, suffix)
	b := snapshot(dir, suffix)
	n := 0
	for fd, target := range a {
		if b[fd] == target {
			n++
		}
	}
	return n
}

// snapshot maps descriptor numbers to targets under dir ending in suffix.
func snapshot(dir, suffix string) map[string]string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	dir = filepath.Clean(dir) + string(filepath.Separator)
	out := make(map[string]string)
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, dir) && strings.HasSuffix(target, suffix) {
			out[e.Name()] = target
		}
	}
	return out
}
