package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sqliteproxy/sqliteproxy"
)

// strays returns the entries of p's data directory that are named as a
// tenant's file (<id>.db where the layout puts it) but are not regular
// files (a symbolic link, a directory, a FIFO), keyed by tenant ID, and the
// tenant files in a bucket other than their own, keyed by their path in the
// directory. Listings pass over them, and a service fails on that tenant or
// creates it anew beside the stray, so check and backup -all report each as
// a failure rather than leave an operator to miss it.
func strays(p *sqliteproxy.Proxy) (map[string]error, error) {
	cfg := p.Config()
	folders := []string{cfg.Dir}
	if cfg.Layout == sqliteproxy.LayoutBuckets {
		folders = folders[:0]
		ents, err := os.ReadDir(cfg.Dir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.IsDir() && isBucketName(e.Name()) {
				folders = append(folders, filepath.Join(cfg.Dir, e.Name()))
			}
		}
	}
	found := map[string]error{}
	for _, folder := range folders {
		ents, err := os.ReadDir(folder)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			id, ok := strings.CutSuffix(e.Name(), ".db")
			if !ok || sqliteproxy.ValidTenantID(id) != nil {
				continue
			}
			path := filepath.Join(folder, e.Name())
			want, err := p.TenantPath(id)
			switch {
			case err != nil:
			case want != path:
				if e.Type().IsRegular() {
					// Copied into the wrong bucket by hand: the service
					// would create an empty tenant id beside it.
					rel, _ := filepath.Rel(cfg.Dir, path)
					wantRel, _ := filepath.Rel(cfg.Dir, want)
					found[rel] = errors.New("tenant " + id + "'s file is in the wrong bucket: no tenant is read from it (the layout puts it at " + wantRel + ")")
				}
			case !e.Type().IsRegular():
				found[id] = errors.New(e.Name() + " is " + fileKind(e.Type()) + ", not a regular file: no tenant is read from it")
			}
		}
	}
	return found, nil
}

// misplacedError is ErrTenantNotFound for a tenant whose file is in the
// data directory, but not where its layout reads it.
type misplacedError struct {
	at, want string // relative to the data directory
	layout   sqliteproxy.Layout
}

func (m *misplacedError) Error() string {
	return fmt.Sprintf("no such tenant here; a file of it is at %s, where the layout (%s) does not read it: move it to %s", m.at, m.layout, m.want)
}

func (m *misplacedError) Unwrap() error { return sqliteproxy.ErrTenantNotFound }

// notFound is err, or a *misplacedError when err is ErrTenantNotFound and
// tenant id's file is in p's data directory where its layout does not read
// it (copied there by hand).
func notFound(p *sqliteproxy.Proxy, id string, err error) error {
	if errors.Is(err, sqliteproxy.ErrTenantNotFound) {
		if m, ok := misplaced(p, id); ok {
			return m
		}
	}
	return err
}

// misplaced looks for tenant id's file where p's layout does not put it:
// at the top of the data directory, or in any bucket folder.
func misplaced(p *sqliteproxy.Proxy, id string) (*misplacedError, bool) {
	dir := p.Config().Dir
	wantPath, err := p.TenantPath(id)
	if err != nil {
		return nil, false
	}
	cands, _ := filepath.Glob(filepath.Join(dir, "*", id+".db"))
	cands = append([]string{filepath.Join(dir, id+".db")}, cands...)
	for _, c := range cands {
		if c == wantPath || (filepath.Dir(c) != dir && !isBucketName(filepath.Base(filepath.Dir(c)))) {
			continue
		}
		if fi, err := os.Lstat(c); err == nil && fi.Mode().IsRegular() {
			m := &misplacedError{layout: p.Config().Layout}
			m.at, _ = filepath.Rel(dir, c)
			m.want, _ = filepath.Rel(dir, wantPath)
			return m, true
		}
	}
	return nil, false
}

// isBucketName reports whether name is a bucket folder's: two lower-case
// hex digits.
func isBucketName(name string) bool {
	return len(name) == 2 && strings.Trim(name, "0123456789abcdef") == ""
}

// fileKind names the type of a directory entry that is not a regular file.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a file"
}
