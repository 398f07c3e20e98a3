package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The bucket is an on-disk format: these values come from
// `printf %s ID | sha256sum | cut -c1-2`, and must never change.
func TestLayout_TenantPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id      string
		l       Layout
		want    string
		wantBkt string
	}{
		{"acme", LayoutFlat, "/d/acme.db", "82"},
		{"acme", LayoutBuckets, "/d/82/acme.db", "82"},
		{"a", LayoutBuckets, "/d/ca/a.db", "ca"},
		{"t0", LayoutBuckets, "/d/51/t0.db", "51"},
		{"tenant-42", LayoutBuckets, "/d/f7/tenant-42.db", "f7"},
		{"zz_9", LayoutBuckets, "/d/48/zz_9.db", "48"},
	} {
		if got := tenantPath("/d", tc.l, tc.id); got != tc.want {
			t.Errorf("tenantPath(%s, %s) = %s, want %s", tc.l, tc.id, got, tc.want)
		}
		if got := bucketOf(tc.id); got != tc.wantBkt {
			t.Errorf("bucketOf(%s) = %s, want %s", tc.id, got, tc.wantBkt)
		}
	}
	// The 256 buckets are all reachable and named 00..ff.
	seen := map[string]bool{}
	for i := 0; len(seen) < numBuckets && i < 100_000; i++ {
		seen[bucketOf(fmt.Sprintf("t%d", i))] = true
	}
	for b := range numBuckets {
		if !seen[bucketName(b)] {
			t.Errorf("bucket %s never used", bucketName(b))
		}
	}
	if LayoutFlat.String() != "flat" || LayoutBuckets.String() != "buckets" {
		t.Errorf("String: %s, %s", LayoutFlat, LayoutBuckets)
	}
	if _, err := New(Config{Dir: t.TempDir(), Layout: 7}); err == nil || !strings.Contains(err.Error(), "Config.Layout") {
		t.Errorf("New with an unknown layout: %v", err)
	}
}

// Both layouts, end to end: every operation finds the tenant where the
// layout puts it, and nothing lands anywhere else.
func TestLayout_EndToEnd(t *testing.T) {
	t.Parallel()
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run(l.String(), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ctx := context.Background()
			p := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}})
			ids := []string{"acme", "a", "t0", "tenant-42", "zz_9"}
			for _, id := range ids {
				if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
					t.Fatal(err)
				}
				path, err := p.TenantPath(id)
				if err != nil || path != tenantPath(dir, l, id) {
					t.Fatalf("TenantPath(%s) = %s, %v", id, path, err)
				}
				if _, err := os.Lstat(path); err != nil {
					t.Fatalf("%s: %v", id, err)
				}
				if l == LayoutBuckets {
					fi, err := os.Stat(filepath.Dir(path))
					if err != nil || fi.Mode().Perm() != 0o700 {
						t.Errorf("bucket folder of %s: %v, %v", id, fi.Mode(), err)
					}
				}
			}
			if err := p.CreateTenant(ctx, "made"); err != nil {
				t.Fatal(err)
			}
			if err := p.CreateTenant(ctx, "acme"); !errors.Is(err, ErrTenantExists) {
				t.Errorf("CreateTenant(acme) again: %v", err)
			}
			backup := filepath.Join(t.TempDir(), "acme.db")
			if err := p.BackupTenant(ctx, "acme", backup); err != nil {
				t.Fatal(err)
			}
			if err := p.RestoreTenant(ctx, "restored", backup); err != nil {
				t.Fatal(err)
			}
			if n := countRows(t, p, "restored"); n != 1 {
				t.Errorf("restored: %d rows", n)
			}
			if err := p.DeleteTenant(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			if ok, err := p.TenantExists(ctx, "a"); ok || err != nil {
				t.Errorf("TenantExists(a) after delete: %v, %v", ok, err)
			}
			want := []string{"acme", "made", "restored", "t0", "tenant-42", "zz_9"}
			got, err := p.Tenants(ctx)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("Tenants = %v, %v; want %v", got, err, want)
			}
			var streamed []string
			for id, err := range p.AllTenants(ctx) {
				if err != nil {
					t.Fatal(err)
				}
				streamed = append(streamed, id)
			}
			slices.Sort(streamed)
			if !slices.Equal(streamed, want) {
				t.Errorf("AllTenants = %v; want %v", streamed, want)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}

			// A fresh process: MigrateAll with one more migration finds every tenant.
			p2 := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable, `ALTER TABLE events ADD COLUMN note TEXT`}})
			rep, err := p2.MigrateAll(ctx, MigrateOptions{})
			if err != nil || rep.Tenants != len(want) || rep.Migrated != len(want) || len(rep.Failed) != 0 {
				t.Errorf("MigrateAll: %+v, %v", rep, err)
			}
			for _, id := range want {
				if n := countRows(t, p2, id); n != 1 && id != "made" {
					t.Errorf("%s: %d rows", id, n)
				}
			}
			p2.Close()

			// Nothing but tenant files (and their folders, and the marker,
			// and the mark of the restored tenant, beside it).
			restored := tenantPath(dir, l, "restored")
			var stray []string
			filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				rel, _ := filepath.Rel(dir, path)
				switch {
				case err != nil:
					t.Error(err)
				case rel == ".", rel == layoutMarkerName && l == LayoutBuckets, path == restoredMarker(restored), rel == presenceFile:
				case d.IsDir() && l == LayoutBuckets && len(rel) == 2:
				case keptSide(path):
				case !d.IsDir() && slices.Contains(want, strings.TrimSuffix(filepath.Base(rel), ".db")) && rel == strings.TrimPrefix(tenantPath("", l, strings.TrimSuffix(filepath.Base(rel), ".db")), "/"):
				default:
					stray = append(stray, rel)
				}
				return nil
			})
			if len(stray) > 0 {
				t.Errorf("stray files: %v", stray)
			}
		})
	}
}

// AllTenants lists files by the ID rule, skips side and temporary files
// (and, in buckets, a file in another ID's bucket), gives bucket order,
// stops when the loop breaks and reports cancellation.
func TestLayout_AllTenants(t *testing.T) {
	t.Parallel()
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run(l.String(), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := newTestProxy(t, Config{Dir: dir, Layout: l})
			var want []string
			for i := range 3000 { // flat: several ReadDir batches
				id := fmt.Sprintf("t%d", i)
				want = append(want, id)
				touchTenant(t, dir, l, id)
			}
			// Not tenants: side files, temporary files, bad names, folders.
			base := filepath.Dir(tenantPath(dir, l, "t1"))
			for _, name := range []string{"t1.db-wal", "t1.db-shm", "t1.db-journal", ".creating-t9-00.db", "UPPER.db", "x.txt", ".t1.db-gen"} {
				if err := os.WriteFile(filepath.Join(base, name), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Mkdir(filepath.Join(base, "dir.db"), 0o700); err != nil {
				t.Fatal(err)
			}
			if l == LayoutBuckets {
				// t1's file in a bucket that is not its own is not t1.
				wrong := bucketName((int(hexVal(bucketOf("t1")[0])<<4|hexVal(bucketOf("t1")[1])) + 1) % numBuckets)
				os.MkdirAll(filepath.Join(dir, wrong), 0o700)
				if err := os.WriteFile(filepath.Join(dir, wrong, "t1.db"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ctx := context.Background()
			var got []string
			for id, err := range p.AllTenants(ctx) {
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, id)
			}
			// Bucket by bucket, sorted within; flat is one bucket.
			if !slices.IsSortedFunc(got, func(a, b string) int {
				return strings.Compare(tenantPath("", l, a), tenantPath("", l, b))
			}) {
				t.Error("not in bucket order, sorted within buckets")
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("AllTenants: %d IDs, want %d", len(got), len(want))
			}
			if ids, _ := p.Tenants(ctx); !slices.Equal(ids, want) {
				t.Errorf("Tenants not sorted or not complete: %d", len(ids))
			}

			n := 0
			for _, err := range p.AllTenants(ctx) {
				if err != nil {
					t.Fatal(err)
				}
				if n++; n == 10 {
					break
				}
			}
			if n != 10 {
				t.Errorf("early break: %d", n)
			}

			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			n = 0
			var last error
			for id, err := range p.AllTenants(cctx) {
				if err != nil {
					if id != "" {
						t.Errorf("error with ID %q", id)
					}
					last = err
					continue
				}
				if last != nil {
					t.Error("IDs after the error")
				}
				if n++; n == 5 {
					cancel()
				}
			}
			if !errors.Is(last, context.Canceled) {
				t.Errorf("cancelled listing ended with %v", last)
			}
			if n >= len(want) {
				t.Errorf("cancelled listing went on: %d IDs", n)
			}

			p.Close()
			for _, err := range p.AllTenants(ctx) {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("after Close: %v", err)
				}
			}
		})
	}
}

// touchTenant makes an (empty) tenant file for id, as a listing sees it.
func touchTenant(t *testing.T, dir string, l Layout, id string) {
	t.Helper()
	path := tenantPath(dir, l, id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A directory in one layout is refused by a proxy configured for the
// other, before it could create an empty tenant beside a real one.
func TestLayout_MixedRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	flat := t.TempDir()
	p := newTestProxy(t, Config{Dir: flat})
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	_, err := New(Config{Dir: flat, Layout: LayoutBuckets})
	if err == nil || !strings.Contains(err.Error(), "flat layout") || !strings.Contains(err.Error(), "relayout") {
		t.Errorf("buckets on a flat directory: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(flat, layoutMarkerName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused, but marked: %v", err)
	}

	// An empty directory becomes bucketed (marked), and is then refused flat.
	bucketed := t.TempDir()
	p = newTestProxy(t, Config{Dir: bucketed, Layout: LayoutBuckets})
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if b, err := os.ReadFile(filepath.Join(bucketed, layoutMarkerName)); err != nil || string(b) != "buckets\n" {
		t.Errorf("marker: %q, %v", b, err)
	}
	_, err = New(Config{Dir: bucketed})
	if err == nil || !strings.Contains(err.Error(), "buckets layout") {
		t.Errorf("flat on a bucketed directory: %v", err)
	}
	if _, err := Open("dir=" + bucketed); err == nil {
		t.Error("Open without layout=buckets on a bucketed directory succeeded")
	}
	p = newTestProxy(t, Config{Dir: bucketed, Layout: LayoutBuckets})
	if ids, err := p.Tenants(ctx); err != nil || !slices.Equal(ids, []string{"acme"}) {
		t.Errorf("Tenants: %v, %v", ids, err)
	}

	// A relayout under way keeps proxies out; an interrupted one too.
	lock, err := lockDir(flat, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Dir: flat}); err == nil || !strings.Contains(err.Error(), "being converted") {
		t.Errorf("New during a relayout: %v", err)
	}
	lock.Close()
	if err := writeMarker(flat, markerRelayoutTo+"buckets"); err != nil {
		t.Fatal(err)
	}
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		if _, err := New(Config{Dir: flat, Layout: l}); !errors.Is(err, ErrRelayoutInterrupted) || !strings.Contains(err.Error(), "interrupted") {
			t.Errorf("New(%s) after an interrupted relayout: %v", l, err)
		}
	}
	if err := writeMarker(flat, "nested"); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Dir: flat}); err == nil || !strings.Contains(err.Error(), "unknown layout marker") {
		t.Errorf("New with a marker it does not know: %v", err)
	}
}

// A bucketed directory that also holds flat tenant files (a version before
// layouts, which does not read the marker, took every tenant for missing
// and wrote new flat files) is refused, naming one: opened, its flat
// files' writes were left out of listings, checks and backups. Relayout to
// flat gathers them when no tenant is in both.
func TestLayout_FlatFilesInABucketedDirRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets})
	if _, err := p.ExecContext(tctx("acme"), `CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	// As an old version writes it, and closes it: relayout refuses a file
	// a connection has open, of this process too.
	globex := direct(t, dir, "globex")
	if _, err := globex.Exec(`CREATE TABLE t (a)`); err != nil {
		t.Fatal(err)
	}
	globex.Close()
	_, err := New(Config{Dir: dir, Layout: LayoutBuckets})
	if err == nil || !strings.Contains(err.Error(), "tenant files of the flat layout (globex.db)") || !strings.Contains(err.Error(), "-to buckets") {
		t.Errorf("buckets with a flat tenant file: %v", err)
	}
	// A tenant in both places: relayout names it and moves nothing, the
	// directory left as it was (not marked as being converted).
	if _, err := direct(t, dir, "acme").Exec(`CREATE TABLE legacy (a)`); err != nil {
		t.Fatal(err)
	}
	marker, _ := os.ReadFile(filepath.Join(dir, layoutMarkerName))
	moved, err := Relayout(context.Background(), dir, LayoutBuckets)
	if moved != 0 || err == nil || !strings.Contains(err.Error(), "tenants in both layouts, nothing moved: "+filepath.Join(dir, "acme.db")) {
		t.Errorf("relayout with acme in both: %d, %v", moved, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, layoutMarkerName)); string(after) != string(marker) {
		t.Errorf("marker %q, was %q", after, marker)
	}
	if err := os.Remove(filepath.Join(dir, "acme.db")); err != nil {
		t.Fatal(err)
	}
	// Then relayout to buckets moves the flat files into their buckets.
	if moved, err := Relayout(context.Background(), dir, LayoutBuckets); moved != 1 || err != nil {
		t.Fatalf("relayout to buckets: %d, %v", moved, err)
	}
	p = newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets})
	if ids, err := p.Tenants(context.Background()); err != nil || !slices.Equal(ids, []string{"globex", "acme"}) && !slices.Equal(ids, []string{"acme", "globex"}) {
		t.Errorf("Tenants after relayout to buckets: %v, %v", ids, err)
	}
	if n := queryInt(t, p, tctx("acme"), `SELECT count(*) FROM sqlite_schema WHERE name = 'legacy'`); n != 0 {
		t.Errorf("acme is the removed flat copy")
	}
}

// ReplicaPositions finds Litestream's files beside the tenant in the
// directory's layout.
func TestLayout_ReplicaPositions(t *testing.T) {
	t.Parallel()
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		dir := t.TempDir()
		if l == LayoutBuckets {
			if err := writeMarker(dir, markerBuckets); err != nil {
				t.Fatal(err)
			}
		}
		ltx := filepath.Join(metaDir(tenantPath(dir, l, "acme")), "ltx", "0")
		if err := os.MkdirAll(ltx, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ltx, "0000000000000001-0000000000000007.ltx"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		local, replica, err := ReplicaPositions(context.Background(), "file://"+t.TempDir(), dir, "acme")
		if local != 7 || replica != 0 || err != nil {
			t.Errorf("%s: %d, %d, %v; want 7, 0", l, local, replica, err)
		}
	}
}

func TestLayout_DirLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if l, err := DirLayout(dir); l != LayoutFlat || err != nil {
		t.Errorf("empty: %s, %v", l, err)
	}
	newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets}).Close()
	if l, err := DirLayout(dir); l != LayoutBuckets || err != nil {
		t.Errorf("bucketed: %s, %v", l, err)
	}
	if err := writeMarker(dir, markerRelayoutTo+"flat"); err != nil {
		t.Fatal(err)
	}
	if _, err := DirLayout(dir); !errors.Is(err, ErrRelayoutInterrupted) || !strings.Contains(err.Error(), "relayout -dir "+dir+" -to flat") {
		t.Errorf("interrupted: %v", err)
	}
	if _, err := DirLayout(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("missing directory: %v", err) // flat, as New would make it
	}
}

// A bucket folder that is a symlink is refused: the tenant files made and
// found through it would be outside the data directory.
func TestLayout_SymlinkedBucketRefused(t *testing.T) {
	t.Parallel()
	dir, elsewhere := t.TempDir(), t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	if err := os.Symlink(elsewhere, filepath.Join(dir, bucketOf("acme"))); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('acme')`); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a write to a tenant whose bucket is a symlink: %v, want a refusal", err)
	}
	if err := os.WriteFile(filepath.Join(elsewhere, "acme.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := p.QueryContext(tctx("acme"), `SELECT 1 FROM events`); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a read of a tenant whose bucket is a symlink: %v, want a refusal", err)
	}
	if err := p.CreateTenant(context.Background(), "acme"); err == nil {
		t.Fatal("CreateTenant through a symlinked bucket succeeded")
	}
	for id, err := range p.AllTenants(context.Background()) {
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("AllTenants: %q, %v; want a refusal", id, err)
		}
	}
	ents, err := os.ReadDir(elsewhere)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("files made outside the data directory: %v", ents)
	}
}

// A flat proxy writes no marker: a buckets proxy opened on the directory
// while it runs (a second service, a deploy with the new setting) was
// accepted, marked it, and each made and served its own file of a tenant
// (acme.db and 82/acme.db), the flat one invisible after a restart.
func TestLayout_BucketsRefusedBesideAFlatProxy(t *testing.T) {
	dir := t.TempDir()
	flat := newTestProxy(t, Config{Dir: dir})
	if _, err := New(Config{Dir: dir, Layout: LayoutBuckets}); err == nil || !strings.Contains(err.Error(), "open in another proxy") {
		t.Fatalf("buckets beside a flat proxy: %v, want a refusal", err)
	}
	if _, err := flat.ExecContext(tctx("acme"), `CREATE TABLE t (x)`); err != nil {
		t.Fatal(err)
	}
	if got := dbFiles(t, dir); !slices.Equal(got, []string{"acme.db", "acme.db-shm", "acme.db-wal"}) {
		t.Errorf("files = %v", got)
	}
	if err := flat.Close(); err != nil {
		t.Fatal(err)
	}
	// Alone on an empty directory, buckets marks it as before.
	empty := t.TempDir()
	b := newTestProxy(t, Config{Dir: empty, Layout: LayoutBuckets})
	if _, err := New(Config{Dir: empty}); err == nil {
		t.Error("flat beside a buckets proxy: accepted")
	}
	b.Close()
}

// A bucket folder given as the data directory (-dir data/82) was taken for
// a flat one: a relayout there moved a live tenant's file down a level
// (the service made a new, empty one in its place, and 31 of 224
// acknowledged writes went missing), and a tenant created there sits in a
// bucket the service never reads.
func TestLayout_BucketFolderIsNotADataDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	bucket := filepath.Join(dir, bucketOf("acme"))
	before := dbFiles(t, bucket)
	if _, err := New(Config{Dir: bucket}); err == nil || !strings.Contains(err.Error(), "bucket folder") {
		t.Errorf("New on a bucket folder: %v", err)
	}
	if _, err := Relayout(context.Background(), bucket, LayoutBuckets); err == nil || !strings.Contains(err.Error(), "bucket folder") {
		t.Errorf("Relayout of a bucket folder: %v", err)
	}
	if _, err := DirLayout(bucket); err == nil {
		t.Error("DirLayout of a bucket folder: no error")
	}
	if after := dbFiles(t, bucket); !slices.Equal(before, after) {
		t.Errorf("the bucket folder changed: %q, then %q", before, after)
	}
	if _, err := os.Stat(filepath.Join(bucket, presenceFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("presence file in the bucket folder: %v", err)
	}
	// A folder of two hex digits in a flat directory is just a folder.
	flat := filepath.Join(t.TempDir(), "ab")
	if err := os.Mkdir(flat, 0o700); err != nil {
		t.Fatal(err)
	}
	newTestProxy(t, Config{Dir: flat})
}

// "." inside a bucket folder (cd data/82 && relayout -dir .), or a symlink
// to one, is that bucket folder: its base "." passed the check, and a
// relayout moved acme's file a level down (acme then read as empty).
func TestLayout_BucketFolderByDotOrSymlink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 1)
	bucket := filepath.Join(dir, bucketOf("acme"))
	link := filepath.Join(t.TempDir(), "mydata")
	if err := os.Symlink(bucket, link); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{bucket + "/.", bucket + "/", link} {
		if err := notABucket(d); err == nil {
			t.Errorf("notABucket(%s): nil", d)
		}
	}
	// The working directory is the process's: "." itself is checked in a
	// child of this test's own, by its absolute form.
	if err := notABucket(filepath.Join(bucket, "..", bucketOf("acme"), ".")); err == nil {
		t.Error("a bucket folder spelt with .. and .: nil")
	}
}

// A bucketed data directory copied without its dot-files (cp -r dir/*
// skips the layout marker) was taken for an empty flat one: the CLI's
// backup -all and check did nothing and exited 0, relayout -to flat moved
// nothing, and a service would make new, empty tenants beside the real
// ones (adv30). Each is refused, naming a tenant file found; relayout -to
// buckets marks it again, moving nothing.
func TestLayout_BucketsWithoutMarkerRefused(t *testing.T) {
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 3)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, layoutMarkerName)); err != nil {
		t.Fatal(err)
	}
	found := filepath.Join(bucketOf("acme"), "acme.db")
	if _, err := DirLayout(dir); err == nil || !strings.Contains(err.Error(), found) {
		t.Errorf("DirLayout of buckets without a marker: %v, want a refusal naming %s", err, found)
	}
	if _, err := New(Config{Dir: dir, Migrations: []string{eventsTable}}); err == nil || !strings.Contains(err.Error(), "no layout marker") {
		t.Errorf("New (flat) of buckets without a marker: %v", err)
	}
	if _, err := Relayout(context.Background(), dir, LayoutFlat); err == nil || !strings.Contains(err.Error(), found) {
		t.Errorf("Relayout to flat of buckets without a marker: %v", err)
	}
	if n, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil || n != 0 {
		t.Fatalf("Relayout to buckets: %d moved, %v", n, err)
	}
	if l, err := DirLayout(dir); err != nil || l != LayoutBuckets {
		t.Fatalf("after relayout -to buckets: %v, %v", l, err)
	}
	p = newTestProxy(t, Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}, ExplicitCreate: true})
	if n := countRows(t, p, "acme"); n != 3 {
		t.Errorf("acme: %d rows, want 3", n)
	}
}
