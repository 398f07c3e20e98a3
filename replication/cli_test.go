//go:build linux

package replication_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/cluster/etcdtest"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

// cliResult is one run of the ops command.
type cliResult struct {
	code           int
	stdout, stderr string
}

// want fails the test unless the command exited with code.
func (r cliResult) want(t *testing.T, code int) cliResult {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// buildCLI builds the ops command (the nested module ../cmd/sqliteproxy)
// into a temporary directory and returns the binary's path.
func buildCLI(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs(filepath.Join("..", "cmd", "sqliteproxy"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "go.mod")); err != nil {
		t.Fatalf("the CLI module: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "sqliteproxy")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "sqlite_omit_load_extension", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build in %s: %v\n%s", src, err, out)
	}
	return bin
}

// runCLI runs the binary with args, in this process's environment (S3
// credentials included: newRig sets them), within two minutes.
func runCLI(t *testing.T, bin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("sqliteproxy %s: %v\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return cliResult{code, stdout.String(), stderr.String()}
}

// dirEntries lists the names in dir, sorted, but for the files proxies
// keep there while they use it (presence, replication lock).
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); n != ".sqliteproxy-processes" && n != ".sqliteproxy-replicating" {
			out = append(out, n)
		}
	}
	return out
}

// replicaColumn returns the REPLICA cell of tenant id's row in the output
// of status -replica.
func replicaColumn(t *testing.T, out, id string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if header := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[0]), -1); !slices.Equal(header, []string{"TENANT", "VERSION", "PENDING", "SIZE", "MODIFIED", "REPLICA"}) {
		t.Fatalf("status header %q", lines[0])
	}
	for _, line := range lines[1:] {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if len(cells) == 6 && cells[0] == id {
			return cells[5]
		}
	}
	t.Fatalf("no row for %s in:\n%s", id, out)
	return ""
}

// TestCLI runs the ops command, cmd/sqliteproxy, built once for all its
// subtests, on replicas that a proxy streamed through a real Litestream.
func TestCLI(t *testing.T) {
	bin := buildCLI(t)

	// replicas lists the tenants in a replica, file and S3.
	t.Run("Replicas", func(t *testing.T) {
		for _, kind := range []string{"file", "s3"} {
			t.Run(kind, func(t *testing.T) {
				g := newRig(t, kind)
				p := sqliteproxytest.New(t, g.config(t, 10))
				for _, id := range []string{"globex", "acme", "acme-corp"} {
					insertSynced(t, p, id, "x")
				}
				r := runCLI(t, bin, "replicas", "-replica", g.replica).want(t, 0)
				if r.stdout != "acme\nacme-corp\nglobex\n" || r.stderr != "" {
					t.Errorf("replicas: %+v", r)
				}
				r = runCLI(t, bin, "replicas", "-json", "-replica", g.replica).want(t, 0)
				if r.stdout != `["acme","acme-corp","globex"]`+"\n" {
					t.Errorf("replicas -json: %q", r.stdout)
				}
				empty := "file://" + t.TempDir() // a missing folder is a mistyped path: a usage error
				if g.s3 != nil {
					empty = g.s3.ReplicaURL("nothing-here")
				}
				if r := runCLI(t, bin, "replicas", "-replica", empty).want(t, 0); r.stdout != "" || r.stderr != "" {
					t.Errorf("replicas of an empty replica: %+v", r)
				}
			})
		}
	})

	// restore -replica restores a tenant from its latest replica into a
	// data directory that does not have it (another node), leaving no
	// temporary file; a tenant the replica does not have changes nothing.
	t.Run("Restore", func(t *testing.T) {
		for _, kind := range []string{"file", "s3"} {
			t.Run(kind, func(t *testing.T) {
				g := newRig(t, kind)
				cfg := g.config(t, 10)
				p := sqliteproxytest.New(t, cfg)
				for _, name := range []string{"a", "b"} {
					insert(t, p, "acme", name)
				}
				if err := p.SyncTenant(context.Background(), "acme"); err != nil {
					t.Fatal(err)
				}
				fresh := t.TempDir()
				r := runCLI(t, bin, "restore", "-replica", g.replica, "-dir", fresh, "-litestream", g.ls.Bin(), "acme").want(t, 0)
				if r.stdout != "restored tenant acme from its replica (new tenant)\n" || r.stderr != "" {
					t.Errorf("restore -replica: %+v", r)
				}
				// The marker makes the restored copy the replica's head when a
				// streaming service opens it.
				restored := []string{".acme.db-restored", "acme.db"}
				if got := dirEntries(t, fresh); !slices.Equal(got, restored) {
					t.Errorf("data directory after restore -replica: %v, want %v", got, restored)
				}
				r = runCLI(t, bin, "restore", "-replica", g.replica, "-dir", fresh, "-litestream", g.ls.Bin(), "nosuch").want(t, 1)
				if r.stderr != "sqliteproxy: restore nosuch: not in the replica\n" || r.stdout != "" {
					t.Errorf("restore -replica nosuch: %+v", r)
				}
				if got := dirEntries(t, fresh); !slices.Equal(got, restored) {
					t.Errorf("data directory after restore -replica nosuch: %v, want %v", got, restored)
				}
				runCLI(t, bin, "check", "-dir", fresh, "acme").want(t, 0)
				q := sqliteproxytest.New(t, sqliteproxy.Config{Dir: fresh, Migrations: migrations})
				if got := names(t, q, "acme"); !slices.Equal(got, []string{"a", "b"}) {
					t.Errorf("restored acme: %v, want [a b]", got)
				}
				// The service has acme open: refused, nothing changed.
				r = runCLI(t, bin, "restore", "-replica", g.replica, "-dir", cfg.Dir, "-litestream", g.ls.Bin(), "acme").want(t, 1)
				if !strings.HasPrefix(r.stderr, "sqliteproxy: restore acme: in use: process "+strconv.Itoa(os.Getpid())+" has the tenant open") {
					t.Errorf("restore -replica of a tenant in use: %+v", r)
				}
				if got := names(t, p, "acme"); !slices.Equal(got, []string{"a", "b"}) {
					t.Errorf("acme after a refused restore: %v", got)
				}
			})
		}
	})

	// restore -replica -at restores the rows synced before the time: into
	// another node's directory, and in place with the service stopped,
	// after which the restored state is the replica's head.
	t.Run("RestoreAt", func(t *testing.T) {
		g := newRig(t, "file")
		cfg := g.config(t, 10)
		p := sqliteproxytest.New(t, cfg)
		ctx := context.Background()
		at := beforeAndAfter(t, p, "acme")
		atText := at.UTC().Format(time.RFC3339Nano)
		before := []string{"before-1", "before-2"}

		fresh := t.TempDir()
		r := runCLI(t, bin, "restore", "-replica", g.replica, "-at", atText, "-dir", fresh, "-litestream", g.ls.Bin(), "acme").want(t, 0)
		if r.stdout != "restored tenant acme from its replica as at "+atText+" (new tenant)\n" {
			t.Errorf("restore -replica -at: %+v", r)
		}
		q := sqliteproxytest.New(t, sqliteproxy.Config{Dir: fresh, Migrations: migrations})
		if got := names(t, q, "acme"); !slices.Equal(got, before) {
			t.Errorf("restored as at %s: %v, want %v", atText, got, before)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}

		// A time before the first upload: exit 1, one line, nothing changed.
		r = runCLI(t, bin, "restore", "-replica", g.replica, "-at", "2000-01-01T00:00:00Z", "-dir", fresh, "-litestream", g.ls.Bin(), "acme").want(t, 1)
		if !strings.HasPrefix(r.stderr, "sqliteproxy: restore acme: ") || !strings.Contains(r.stderr, "holds no state as early as") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("restore -at before the first upload: %+v", r)
		}
		if got := dirEntries(t, fresh); !slices.Equal(got, []string{".acme.db-restored", "acme.db"}) {
			t.Errorf("data directory after a failed restore: %v", got)
		}

		// In place: stop the service, restore, start it again. -force:
		// Litestream keeps a tenant's WAL (PERSIST_WAL), so acme.db-wal and
		// -shm outlive the service's clean stop and the in-use guard, which
		// goes by their presence, would refuse.
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		r = runCLI(t, bin, "restore", "-replica", g.replica, "-at", atText, "-dir", cfg.Dir, "-litestream", g.ls.Bin(), "-force", "acme").want(t, 0)
		if r.stdout != "restored tenant acme from its replica as at "+atText+"\n" {
			t.Errorf("restore -replica -at in place: %+v", r)
		}
		p = sqliteproxytest.New(t, cfg)
		if got := names(t, p, "acme"); !slices.Equal(got, before) {
			t.Fatalf("the service after restore -at: %v, want %v", got, before)
		}
		if err := p.SyncTenant(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		other := sqliteproxytest.New(t, g.config(t, 10))
		if got := names(t, other, "acme"); !slices.Equal(got, before) {
			t.Errorf("another node after restore -at: %v, want %v", got, before)
		}
	})

	// status -replica shows a tenant in sync after SyncTenant, in the
	// table and in JSON; a copy restored into another directory (no
	// Litestream files of its own) says it is restored, to become the head.
	t.Run("Status", func(t *testing.T) {
		for _, kind := range []string{"file", "s3"} {
			t.Run(kind, func(t *testing.T) {
				g := newRig(t, kind)
				cfg := g.config(t, 10)
				p := sqliteproxytest.New(t, cfg)
				ctx := context.Background()
				for _, id := range []string{"acme", "globex"} {
					insert(t, p, id, "x")
					if err := p.SyncTenant(ctx, id); err != nil {
						t.Fatal(err)
					}
				}
				_, txid, err := sqliteproxy.ReplicaPositions(ctx, g.replica, cfg.Dir, "acme")
				if err != nil || txid == 0 {
					t.Fatalf("ReplicaPositions: %d, %v", txid, err)
				}
				r := runCLI(t, bin, "status", "-replica", g.replica, "-dir", cfg.Dir).want(t, 0)
				for _, id := range []string{"acme", "globex"} {
					if got := replicaColumn(t, r.stdout, id); !regexp.MustCompile(`^in sync \(txid [1-9][0-9]*\)$`).MatchString(got) {
						t.Errorf("%s: REPLICA %q, want in sync\n%s", id, got, r.stdout)
					}
				}
				if got, want := replicaColumn(t, r.stdout, "acme"), fmt.Sprintf("in sync (txid %d)", txid); got != want {
					t.Errorf("acme: REPLICA %q, want %q", got, want)
				}
				r = runCLI(t, bin, "status", "-replica", g.replica, "-dir", cfg.Dir, "-json", "acme").want(t, 0)
				var st []struct {
					Tenant           string  `json:"tenant"`
					ReplicaLocalTXID *uint64 `json:"replica_local_txid"`
					ReplicaTXID      *uint64 `json:"replica_txid"`
					ReplicaState     string  `json:"replica_state"`
				}
				if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
					t.Fatalf("%v\n%s", err, r.stdout)
				}
				if len(st) != 1 || st[0].ReplicaLocalTXID == nil || st[0].ReplicaTXID == nil ||
					*st[0].ReplicaLocalTXID != txid || *st[0].ReplicaTXID != txid || st[0].ReplicaState != "in_sync" {
					t.Errorf("status -json:\n%s", r.stdout)
				}

				fresh := t.TempDir()
				runCLI(t, bin, "restore", "-replica", g.replica, "-dir", fresh, "-litestream", g.ls.Bin(), "acme").want(t, 0)
				r = runCLI(t, bin, "status", "-replica", g.replica, "-dir", fresh).want(t, 0)
				// Restored on purpose: it becomes the head, it is not
				// "written elsewhere" (it said so).
				if got, want := replicaColumn(t, r.stdout, "acme"), "restored here (becomes the replica's head when the service opens it)"; got != want {
					t.Errorf("a copy restored elsewhere: REPLICA %q, want %q", got, want)
				}
			})
		}
	})
}

// compactAcme runs compact on acme's replica, which holds at least one
// file per cycle, and checks that it holds a quarter of them at most after.
func compactAcme(t *testing.T, bin string, g *rig, cycles int) {
	t.Helper()
	count := func() int {
		objs, _, err := g.s3.List("tenants/acme/", "")
		if err != nil {
			t.Fatal(err)
		}
		return len(objs)
	}
	before := count()
	r := runCLI(t, bin, "compact", "-replica", g.replica, "-retention", "1ns", "acme")
	if r.code != 0 {
		t.Fatalf("compact: exit %d: %s", r.code, r.stderr)
	}
	after := count()
	t.Logf("compact: %q; objects %d -> %d", r.stdout, before, after)
	if before < cycles || after > before/4 {
		t.Errorf("objects in acme's replica: %d before compact, %d after", before, after)
	}
}

// compact keeps restores fast for tenants that are opened briefly again and
// again (Litestream compacts only what it streams, and the driver streams a
// tenant only while it is open): the replica's files are compacted, and a
// restore still gives every row.
func TestCLI_Compact(t *testing.T) {
	bin := buildCLI(t)
	g := newRig(t, "s3")
	cfg := g.config(t, 1)
	cfg.ReadersPerTenant = -1 // one connection per tenant: every write to the other tenant evicts
	p := sqliteproxytest.New(t, cfg)
	const cycles = 40
	var want []string
	for c := range cycles {
		name := fmt.Sprint("row-", c)
		insert(t, p, "acme", name)
		want = append(want, name)
		insert(t, p, "other", "o") // evicts acme: synced, unregistered
	}
	// With the default retention the level-0 files stay: more files than
	// before, and the output says why.
	r := runCLI(t, bin, "compact", "-replica", g.replica, "acme")
	if r.code != 0 || !strings.Contains(r.stdout, "kept for -retention 5m0s") {
		t.Errorf("compact with the default retention: exit %d: %q %s", r.code, r.stdout, r.stderr)
	}
	compactAcme(t, bin, g, cycles)
	// A tenant the replica does not hold (a typo) is said so, not "0 files".
	if r := runCLI(t, bin, "compact", "-replica", g.replica, "acmee"); r.code == 0 || !strings.Contains(r.stderr, "compact acmee: not in the replica") {
		t.Errorf("compact of a tenant not in the replica: exit %d: %q %q", r.code, r.stdout, r.stderr)
	}
	q := sqliteproxytest.New(t, g.config(t, 10)) // another node restores it
	if got := names(t, q, "acme"); !slices.Equal(got, want) {
		t.Errorf("after compact another node restores %d rows, want %d", len(got), len(want))
	}
}

// compact with Ownership: a tenant's replica is one per generation
// (<id>/g<N>); each is compacted (compact found no file at <id> itself and
// compacted nothing).
func TestCLI_CompactGenerations(t *testing.T) {
	bin := buildCLI(t)
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	n := g.ownerNode(t, srv, "a", 1)
	const cycles = 30
	for c := range cycles {
		insert(t, n.p, "acme", fmt.Sprint("row-", c))
		insert(t, n.p, "other", "o") // evicts acme: synced, released
	}
	compactAcme(t, bin, g, cycles)
}

// status -replica on a cluster node's directory whose copy another node has
// written since, in a newer generation: the copy is superseded. It said "in
// sync (txid 1)", comparing the copy with its own, older, generation (each
// generation counts from its own start), for a copy holding 1 row of 3.
func TestCLI_StatusSupersededClusterCopy(t *testing.T) {
	g := newRig(t, "s3")
	srv := etcdtest.Start(t)
	bin := buildCLI(t)
	var dirA string
	a := g.ownerNode(t, srv, "a", 4, func(c *sqliteproxy.Config) { dirA = c.Dir })
	insertSynced(t, a.p, "acme", "a1")
	a.close()
	r := runCLI(t, bin, "status", "-replica", g.replica, "-dir", dirA).want(t, 0)
	if got := replicaColumn(t, r.stdout, "acme"); !strings.HasPrefix(got, "in sync") {
		t.Fatalf("a's copy, nobody else since: REPLICA %q, want in sync\n%s", got, r.stdout)
	}
	b := g.ownerNode(t, srv, "b", 4)
	insert(t, b.p, "acme", "b1")
	insertSynced(t, b.p, "acme", "b2")
	b.close()
	c, err := sqliteproxy.ReplicaCopyOf(context.Background(), g.replica, dirA, "acme")
	if err != nil || c.Generation == 0 || c.NewerGeneration <= c.Generation || c.NewerGenerationTXID == 0 {
		t.Fatalf("ReplicaCopyOf: %+v, %v; want a newer generation than the copy's", c, err)
	}
	r = runCLI(t, bin, "status", "-replica", g.replica, "-dir", dirA).want(t, 0)
	if got := replicaColumn(t, r.stdout, "acme"); !strings.HasPrefix(got, "superseded: generation ") {
		t.Errorf("a's copy after b wrote a newer generation: REPLICA %q, want superseded\n%s", got, r.stdout)
	}
}
