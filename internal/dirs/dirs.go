// Package dirs answers where a path lies on disk.
package dirs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Inside reports whether path is root or lies anywhere under it, on disk:
// symbolic links and relative or differently spelled paths are resolved
// (Resolve), and path need not exist. A root that does not exist holds
// nothing.
func Inside(path, root string) (bool, error) {
	ri, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	abs, err := Resolve(path)
	if err != nil {
		return false, err
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

// Resolve returns the absolute path, free of symbolic links, of what the
// system opens at path: its nearest existing ancestor resolved, and the
// rest (which does not exist) joined to it. A ".." is applied after the
// links before it are followed, as the system does: "lnk/../x" is x beside
// lnk's target, not beside lnk (filepath.Abs and filepath.Dir clean it
// away first, so a check on their result and a write to path could name
// two places).
func Resolve(path string) (string, error) {
	abs, err := absolute(path)
	if err != nil {
		return "", err
	}
	var rest []string
	for {
		resolved, err := filepath.EvalSymlinks(abs)
		if err == nil {
			return filepath.Join(append([]string{resolved}, rest...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent, last := splitLast(abs)
		if parent == abs {
			return "", err
		}
		abs, rest = parent, append([]string{last}, rest...)
	}
}

// NamesFolder reports whether path, as written, can only name a folder:
// it ends in a separator, or its last element is "." or "..".
func NamesFolder(path string) bool {
	if path == "" || os.IsPathSeparator(path[len(path)-1]) {
		return path != ""
	}
	_, last := splitLast(path)
	if last == "" { // no separator: path is the element
		last = path
	}
	return last == "." || last == ".."
}

// ResolveParent is Resolve for the folder that holds path's final element,
// with that element joined as it is: a symbolic link there is not followed,
// so a file renamed to the result replaces the link, not the file it points
// to. A path whose final element is "." or "..", or that ends in a
// separator (a folder), is Resolve's.
func ResolveParent(path string) (string, error) {
	abs, err := absolute(path)
	if err != nil {
		return "", err
	}
	parent, last := splitLast(abs)
	if last == "" || last == "." || last == ".." || os.IsPathSeparator(abs[len(abs)-1]) {
		return Resolve(path) // a folder ("x/" too: splitLast drops the separator)
	}
	dir, err := Resolve(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, last), nil
}

// absolute is path made absolute against the working directory, not
// cleaned (filepath.Join would apply a ".." before the links before it).
func absolute(path string) (string, error) {
	if filepath.IsAbs(path) {
		return path, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + string(filepath.Separator) + path, nil
}

// splitLast splits p at its last separator (trailing ones dropped),
// without cleaning either part.
func splitLast(p string) (parent, last string) {
	vol := len(filepath.VolumeName(p))
	end := len(p)
	for end > vol+1 && os.IsPathSeparator(p[end-1]) {
		end--
	}
	i := end - 1
	for i >= vol && !os.IsPathSeparator(p[i]) {
		i--
	}
	if i < vol {
		return p, ""
	}
	if i == vol { // the root
		return p[:vol+1], p[vol+1 : end]
	}
	return p[:i], p[i+1 : end]
}
