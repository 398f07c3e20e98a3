// Package dirs answers where a path lies on disk.
package dirs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Inside reports whether path is root or lies anywhere under it, on disk:
// symbolic links and relative or differently spelled paths are resolved,
// and path need not exist (its nearest existing ancestor is resolved). A
// root that does not exist holds nothing.
func Inside(path, root string) (bool, error) {
	ri, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	// The nearest existing ancestor, with its links resolved: from there
	// on, lexical parents are the parents on disk.
	for {
		resolved, err := filepath.EvalSymlinks(abs)
		if err == nil {
			abs = resolved
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		parent := filepath.Dir(abs)
		if parent == abs {
			return false, err
		}
		abs = parent
	}
	for d := abs; ; d = filepath.Dir(d) {
		if di, err := os.Stat(d); err == nil && os.SameFile(di, ri) {
			return true, nil
		}
		if filepath.Dir(d) == d {
			return false, nil
		}
	}
}
