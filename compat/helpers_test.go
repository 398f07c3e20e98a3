package compat_test

import (
	"os"
	"path/filepath"
	"testing"
)

// The two tenants every test uses.
const (
	tenantA = "acme"
	tenantB = "globex"
)

// requireTenantFiles fails the test unless dir holds <id>.db for every id
// and no other tenant database file.
func requireTenantFiles(t *testing.T, dir string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		fi, err := os.Stat(filepath.Join(dir, id+".db"))
		if err != nil {
			t.Errorf("tenant %s: %v", id, err)
			continue
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			t.Errorf("tenant %s: %s is not a non-empty regular file", id, fi.Name())
		}
	}
	all, err := filepath.Glob(filepath.Join(dir, "*.db"))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(ids) {
		t.Errorf("database files in %s: %v, want exactly the tenants %v", dir, all, ids)
	}
}
