package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// query on a cluster node's directory (copies with a generation marker,
// .<id>.db-gen, as a proxy with Ownership writes) is refused unless -stale:
// a tenant another node owns and wrote since was read here as it was.
func TestQuery_ClusterCopiesRefused(t *testing.T) {
	dir := t.TempDir()
	mdir := migrationsDir(t, "0001_init.sql")
	for _, id := range []string{"acme", "globex"} {
		cli(t, nil, "create", "-dir", dir, "-migrations", mdir, id).want(t, exitOK)
	}
	if err := os.WriteFile(filepath.Join(dir, ".acme.db-gen"), []byte("7"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := cli(t, nil, "query", "-dir", dir, "SELECT count(*) AS n FROM events").want(t, exitUsage)
	if !strings.Contains(r.stderr, "cluster node") || !strings.Contains(r.stderr, "-stale") {
		t.Errorf("the refusal does not say why or how:\n%s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("rows printed before the refusal:\n%s", r.stdout)
	}
	r = cli(t, nil, "query", "-dir", dir, "-stale", "SELECT count(*) AS n FROM events").want(t, exitOK)
	if !strings.Contains(r.stdout, "acme") || !strings.Contains(r.stdout, "globex") {
		t.Errorf("-stale did not read both tenants:\n%s", r.stdout)
	}
	// A marker without its file (a tenant deleted here) is no copy.
	if err := os.WriteFile(filepath.Join(dir, ".gone.db-gen"), []byte("3"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, ".acme.db-gen")); err != nil {
		t.Fatal(err)
	}
	cli(t, nil, "query", "-dir", dir, "SELECT count(*) AS n FROM events").want(t, exitOK)
	// Only the tenants asked for count.
	cli(t, nil, "query", "-dir", dir, "-tenants", "globex", "SELECT count(*) AS n FROM events").want(t, exitOK)
}
