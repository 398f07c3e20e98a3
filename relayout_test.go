package sqliteproxy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sqliteproxy/sqliteproxy/internal/testkit"
)

// relayoutFleet makes tenants in dir (layout l), tenant i holding i+1 rows
// so that a mix-up shows, each with Litestream-style side files (a
// generation marker naming it, a Litestream folder), and one, "walled",
// whose last rows are only in its -wal, as a crashed process leaves it.
// It returns the expected row count of each tenant.
func relayoutFleet(t *testing.T, dir string, l Layout, n int) map[string]int {
	t.Helper()
	p := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}})
	want := map[string]int{}
	for i := range n {
		id := fmt.Sprintf("t%d", i)
		for range i + 1 {
			if _, err := p.ExecContext(tctx(id), `INSERT INTO events (tenant) VALUES (?)`, id); err != nil {
				t.Fatal(err)
			}
		}
		want[id] = i + 1
	}
	if _, err := p.ExecContext(tctx("walled"), `INSERT INTO events (tenant) VALUES ('walled')`); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for id := range want {
		path := tenantPath(dir, l, id)
		if err := os.WriteFile(genMarker(path), []byte(id), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(unsyncedMarker(path), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(metaDir(path), "ltx"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// walled: 1 row in the database, 3 more only in its -wal.
	path := tenantPath(dir, l, "walled")
	db, err := sql.Open("sqlite3", path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`PRAGMA wal_autocheckpoint=0`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := db.Exec(`INSERT INTO events (tenant) VALUES ('walled')`); err != nil {
			t.Fatal(err)
		}
	}
	saved := map[string][]byte{}
	for _, f := range []string{path, path + "-wal"} {
		if saved[f], err = os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	for f, b := range saved {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("walled has no -wal: %v", err)
	}
	want["walled"] = 4
	return want
}

// checkFleet checks that dir is in layout l and holds exactly the tenants
// of want with their rows, each with its side files beside it.
func checkFleet(t *testing.T, dir string, l Layout, want map[string]int) {
	t.Helper()
	p := newTestProxy(t, Config{Dir: dir, Layout: l, Migrations: []string{eventsTable}, ExplicitCreate: true})
	defer p.Close()
	ids, err := p.Tenants(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if wantIDs := slices.Sorted(mapKeys(want)); !slices.Equal(ids, wantIDs) {
		t.Fatalf("%s: Tenants = %v, want %v", l, ids, wantIDs)
	}
	for id, n := range want {
		var got int
		var tenant string
		if err := p.QueryRowContext(tctx(id), `SELECT count(*), coalesce(max(tenant), '') FROM events`).Scan(&got, &tenant); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if got != n || tenant != id {
			t.Errorf("%s: %d rows of %q, want %d", id, got, tenant, n)
		}
		if id == "walled" {
			continue
		}
		path := tenantPath(dir, l, id)
		if b, err := os.ReadFile(genMarker(path)); err != nil || string(b) != id {
			t.Errorf("%s: generation marker %q, %v", id, b, err)
		}
		if _, err := os.Stat(filepath.Join(metaDir(path), "ltx")); err != nil {
			t.Errorf("%s: Litestream folder: %v", id, err)
		}
		if _, err := os.Stat(unsyncedMarker(path)); err != nil {
			t.Errorf("%s: the mark of its failed final sync: %v", id, err)
		}
	}
	if l == LayoutFlat {
		for b := range numBuckets {
			if _, err := os.Lstat(filepath.Join(dir, bucketName(b))); err == nil {
				t.Errorf("bucket folder %s left", bucketName(b))
			}
		}
	}
}

func mapKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestRelayout_BothWays(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 20)
	moved, err := Relayout(ctx, dir, LayoutBuckets)
	if err != nil || moved != len(want) {
		t.Fatalf("to buckets: %d, %v", moved, err)
	}
	checkFleet(t, dir, LayoutBuckets, want)
	if moved, err := Relayout(ctx, dir, LayoutBuckets); err != nil || moved != 0 {
		t.Errorf("to buckets again: %d, %v", moved, err)
	}
	if moved, err := Relayout(ctx, dir, LayoutFlat); err != nil || moved != len(want) {
		t.Fatalf("to flat: %d, %v", moved, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, layoutMarkerName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("flat, but marked: %v", err)
	}
	checkFleet(t, dir, LayoutFlat, want)
	if moved, err := Relayout(ctx, dir, LayoutFlat); err != nil || moved != 0 {
		t.Errorf("to flat again: %d, %v", moved, err)
	}
	if _, err := Relayout(ctx, filepath.Join(dir, "missing"), LayoutBuckets); err == nil {
		t.Error("relayout of a missing directory succeeded")
	}
}

// An interruption after any number of moves leaves every tenant in
// exactly one place; running Relayout again, either way, finishes the job.
func TestRelayout_Interrupted(t *testing.T) {
	t.Parallel()
	for _, from := range []Layout{LayoutFlat, LayoutBuckets} {
		t.Run("from="+from.String(), func(t *testing.T) {
			t.Parallel()
			orig := t.TempDir()
			want := relayoutFleet(t, orig, from, 8)
			to := other(from)
			for k := 0; k <= len(want); k++ {
				for _, finish := range []Layout{to, from} {
					dir := t.TempDir()
					copyTree(t, orig, dir)
					stop := errors.New("stop")
					ctx, cancel := context.WithCancel(context.Background())
					if k == 0 {
						cancel() // before the listing: nothing changes
					}
					moved, err := relayout(ctx, dir, to, func(n int) error {
						if n == k {
							return stop
						}
						return nil
					})
					cancel()
					if k < len(want) && err == nil {
						t.Fatalf("k=%d: not interrupted", k)
					}
					if k > 0 && k < len(want) && (moved != k || !errors.Is(err, stop)) {
						t.Fatalf("k=%d: moved %d, %v", k, moved, err)
					}
					if k == 0 {
						if _, rerr := readDirState(dir); err == nil || rerr != nil {
							t.Fatalf("k=0: cancelled relayout: %v; directory state: %v", err, rerr)
						} else if st, _ := readDirState(dir); st.relayout {
							t.Fatal("k=0: a relayout cancelled before its listing marked the directory")
						}
					} else if err != nil {
						if _, nerr := New(Config{Dir: dir, Layout: to}); !errors.Is(nerr, ErrRelayoutInterrupted) || !strings.Contains(nerr.Error(), "interrupted") {
							t.Fatalf("k=%d: New after an interrupted relayout: %v", k, nerr)
						}
					}
					// Every tenant in exactly one place.
					inTo := 0
					for id := range want {
						_, e1 := os.Lstat(tenantPath(dir, from, id))
						_, e2 := os.Lstat(tenantPath(dir, to, id))
						if (e1 == nil) == (e2 == nil) {
							t.Fatalf("k=%d: %s in both layouts or in none: %v, %v", k, id, e1, e2)
						}
						if e2 == nil {
							inTo++
						}
					}
					if inTo != min(k, len(want)) {
						t.Errorf("k=%d: %d tenants moved", k, inTo)
					}
					if _, err := Relayout(context.Background(), dir, finish); err != nil {
						t.Fatalf("k=%d: finishing to %s: %v", k, finish, err)
					}
					checkFleet(t, dir, finish, want)
				}
			}
		})
	}
}

// A run interrupted between a tenant's side files and its database (or a
// crash that left both names of the file) is mended by the next run.
func TestRelayout_HalfMovedTenant(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 3)
	if err := writeMarker(dir, markerRelayoutTo+"buckets"); err != nil {
		t.Fatal(err)
	}
	// t0: side files moved, database not. t1: database moved, side files
	// not. t2: both names of its file.
	mv := func(id string, f func(string) string, fromL, toL Layout) {
		t.Helper()
		dst := f(tenantPath(dir, toL, id))
		os.MkdirAll(filepath.Dir(dst), 0o700)
		if err := os.Rename(f(tenantPath(dir, fromL, id)), dst); err != nil {
			t.Fatal(err)
		}
	}
	same := func(p string) string { return p }
	mv("t0", genMarker, LayoutFlat, LayoutBuckets)
	mv("t0", unsyncedMarker, LayoutFlat, LayoutBuckets)
	mv("t0", metaDir, LayoutFlat, LayoutBuckets)
	mv("t1", same, LayoutFlat, LayoutBuckets)
	os.MkdirAll(filepath.Dir(tenantPath(dir, LayoutBuckets, "t2")), 0o700)
	if err := os.Link(tenantPath(dir, LayoutFlat, "t2"), tenantPath(dir, LayoutBuckets, "t2")); err != nil {
		t.Fatal(err)
	}
	// Left by crashed operations.
	deleting := tempName(filepath.Dir(tenantPath(dir, LayoutBuckets, "t1")), deletingPrefix, "t9") + "-wal"
	for _, junk := range []string{tempName(dir, creatingPrefix, "t5"), deleting} {
		if err := os.WriteFile(junk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil {
		t.Fatal(err)
	}
	checkFleet(t, dir, LayoutBuckets, want)
	// Only the marker, bucket folders and the proxies' presence file at
	// the top; no junk anywhere.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		// (Under keepWALSweep t1's kept side files stay at the top: its file
		// was moved by hand above without them, which relayout never does;
		// it settles a tenant, removing them, before it moves the file.)
		if e.Name() != layoutMarkerName && e.Name() != presenceFile && !(e.IsDir() && len(e.Name()) == 2) && !keptSide(filepath.Join(dir, e.Name())) {
			t.Errorf("top level holds %s", e.Name())
		}
	}
	if _, err := os.Lstat(deleting); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file of a crashed delete left: %v", err)
	}
}

// Two different files for one tenant: Relayout names both and moves
// nothing over either.
func TestRelayout_BothPlacesRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 2)
	dup := tenantPath(dir, LayoutBuckets, "t1")
	os.MkdirAll(filepath.Dir(dup), 0o700)
	b, _ := os.ReadFile(tenantPath(dir, LayoutFlat, "t0"))
	if err := os.WriteFile(dup, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Relayout(context.Background(), dir, LayoutBuckets)
	if err == nil || !strings.Contains(err.Error(), "both layouts") || !strings.Contains(err.Error(), dup) {
		t.Fatalf("relayout with t1 in both places: %v", err)
	}
	if err := os.Remove(dup); err != nil {
		t.Fatal(err)
	}
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil {
		t.Fatal(err)
	}
	checkFleet(t, dir, LayoutBuckets, want)
}

// A stale side file where a tenant's would go (.t1.db-gen in t1's bucket,
// beside no database, t1 flat with its own) stopped the move midway with
// the directory marked as being converted, and every run after it, to
// either layout, failed the same way: every proxy refused the directory
// until a person removed the file (adv30). It is named before anything
// moves.
func TestRelayout_StaleSideFileRefusedFirst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 2) // each with its side files
	stale := genMarker(tenantPath(dir, LayoutBuckets, "t1"))
	os.MkdirAll(filepath.Dir(stale), 0o700)
	if err := os.WriteFile(stale, []byte("3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Relayout(context.Background(), dir, LayoutBuckets)
	if err == nil || !strings.Contains(err.Error(), "side files in both layouts") || !strings.Contains(err.Error(), stale) {
		t.Fatalf("relayout with a stale side file at t1's destination: %v", err)
	}
	if l, err := DirLayout(dir); err != nil || l != LayoutFlat {
		t.Fatalf("after the refusal the directory is %v, %v; want it flat and usable", l, err)
	}
	if err := os.Remove(stale); err != nil {
		t.Fatal(err)
	}
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil {
		t.Fatal(err)
	}
	checkFleet(t, dir, LayoutBuckets, want) // t1's own side files moved with it
}

// Relayout is offline: it refuses a directory a proxy has open, and a
// tenant another connection has open.
func TestRelayout_InUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 2)
	p := newTestProxy(t, Config{Dir: dir})
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err == nil || !strings.Contains(err.Error(), "in use by a proxy") {
		t.Errorf("relayout beside a proxy: %v", err)
	}
	p.Close()
	if _, err := os.Lstat(filepath.Join(dir, layoutMarkerName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused, but marked: %v", err)
	}

	db := direct(t, dir, "t1")
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`INSERT INTO events (tenant) VALUES ('t1')`); err != nil {
		t.Fatal(err)
	}
	_, err := Relayout(context.Background(), dir, LayoutBuckets)
	if err == nil || !strings.Contains(err.Error(), "open in another process") {
		t.Errorf("relayout of an open tenant: %v", err)
	}
	// Refused before anything moved or was marked (adv43: the directory was
	// left marked as being converted, refused by every proxy).
	if l, err := DirLayout(dir); err != nil || l != LayoutFlat {
		t.Errorf("after a relayout refused for an open tenant: %v, %v; want the flat layout, unmarked", l, err)
	}
	for id := range want {
		if _, err := os.Lstat(filepath.Join(dir, id+".db")); err != nil {
			t.Errorf("%s moved by a refused relayout: %v", id, err)
		}
	}
	// Refusing leaves the open tenant's files alone: its WAL is in use
	// even when a checkpoint has emptied it.
	if _, err := os.Lstat(filepath.Join(dir, "t1.db-wal")); err != nil {
		t.Errorf("the open tenant's -wal after a refused relayout: %v", err)
	}
	if _, err := db.Exec(`INSERT INTO events (tenant) VALUES ('t1')`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	want["t1"] += 2
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil {
		t.Fatal(err)
	}
	checkFleet(t, dir, LayoutBuckets, want)
}

// copyTree copies the files and folders under src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A bucket folder that is a symlink stops a relayout before anything
// moves into it or is swept from it: the tenant would have gone outside the
// directory, and a crashed operation's name in the target removed.
func TestRelayout_SymlinkedBucketRefused(t *testing.T) {
	t.Parallel()
	dir, outside := t.TempDir(), t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	p.Close()
	stranger := filepath.Base(tempName(outside, creatingPrefix, "report"))
	if err := os.WriteFile(filepath.Join(outside, stranger), []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{bucketOf("acme"), bucketOf("report")} {
		if err := os.Symlink(outside, filepath.Join(dir, b)); err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
	}
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Relayout with a symlinked bucket folder: %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme.db")); err != nil {
		t.Errorf("acme.db moved: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, stranger)); err != nil {
		t.Errorf("a file outside the directory was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "acme.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("acme.db went outside the directory: %v", err)
	}
}

// A -wal left beside no file (a DeleteTenant on a full disk, which skips
// the checkpoint, killed after its rename) was left in place by relayout,
// which then moved a new tenant of that name beside it: its next open
// replayed the deleted tenant's rows into it, and its own were lost
// (crash trial). The move now removes such orphans first.
func TestRelayout_NeverMovesAFileOntoAnOrphanWAL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	crashImage(t, dir, "acme", 100) // acme.db and a -wal of 100 committed rows
	// The delete's rename, then the kill: the -wal stays, without its file.
	if err := os.Rename(filepath.Join(dir, "acme.db"), filepath.Join(dir, ".deleting-acme-0123456789abcdef.db")); err != nil {
		t.Fatal(err)
	}
	if _, err := Relayout(ctx, dir, LayoutBuckets); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Dir: dir, Layout: LayoutBuckets, Migrations: []string{eventsTable}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("acme"), `INSERT INTO events (tenant) VALUES ('new')`); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if _, err := Relayout(ctx, dir, LayoutFlat); err != nil {
		t.Fatal(err)
	}
	got := testkit.Strings(t, ctx, direct(t, dir, "acme"), `SELECT tenant FROM events`)
	if !slices.Equal(got, []string{"new"}) {
		t.Errorf("acme after relayout back to flat: %q… (%d rows), want only the new tenant's row", got[:min(3, len(got))], len(got))
	}
}

// A tenant file in the wrong bucket (copied there by hand), or a symlink or
// folder where a tenant file would be, is reported by the CLI's check in
// the layout it is in; a conversion left it where nothing lists it (the
// only copy of a tenant's rows in a wrong bucket vanished from every
// check). The relayout refuses, naming it, and moves nothing.
func TestRelayout_MisplacedEntriesRefused(t *testing.T) {
	t.Parallel()
	t.Run("wrong bucket", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		want := relayoutFleet(t, dir, LayoutBuckets, 2)
		wrong := "00"
		if bucketOf("stray") == wrong {
			wrong = "01"
		}
		stray := filepath.Join(dir, wrong, "stray.db")
		os.MkdirAll(filepath.Dir(stray), 0o700)
		b, _ := os.ReadFile(tenantPath(dir, LayoutBuckets, "t0"))
		if err := os.WriteFile(stray, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Relayout(context.Background(), dir, LayoutFlat)
		if err == nil || !strings.Contains(err.Error(), stray) {
			t.Fatalf("relayout with a tenant file in the wrong bucket: %v", err)
		}
		checkFleet(t, dir, LayoutBuckets, want)
		if err := os.Remove(stray); err != nil {
			t.Fatal(err)
		}
		if _, err := Relayout(context.Background(), dir, LayoutFlat); err != nil {
			t.Fatal(err)
		}
		checkFleet(t, dir, LayoutFlat, want)
	})
	t.Run("symlink and folder", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		want := relayoutFleet(t, dir, LayoutFlat, 2)
		link, folder := filepath.Join(dir, "evil.db"), filepath.Join(dir, "dd.db")
		if err := os.Symlink(filepath.Join(t.TempDir(), "x.db"), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(folder, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := Relayout(context.Background(), dir, LayoutBuckets)
		if err == nil || !strings.Contains(err.Error(), link) || !strings.Contains(err.Error(), folder) {
			t.Fatalf("relayout with a symlink and a folder named like tenants: %v", err)
		}
		checkFleet(t, dir, LayoutFlat, want)
	})
}

// The marker of a tenant deleted while its replica could not be erased
// (deletedMarker) has no tenant file beside it: relayout carries it to the
// tenant's place in the new layout, or the tenant would come back from its
// replica there.
func TestRelayout_CarriesDeletedMarkers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	relayoutFleet(t, dir, LayoutFlat, 2)
	if err := os.WriteFile(deletedMarker(tenantPath(dir, LayoutFlat, "gone")), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, l := range []Layout{LayoutBuckets, LayoutFlat} {
		if _, err := Relayout(ctx, dir, l); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(deletedMarker(tenantPath(dir, l, "gone"))); err != nil {
			t.Fatalf("the deleted marker after relayout to %v: %v", l, err)
		}
	}
}

// Side files that a process left for a moment after settle's checkpoint
// (a service opening and closing the tenant: eviction churn) made a delete
// or restore fail blaming permissions or a full disk (adv30). They are
// looked at again; side files that stay are still refused.
func TestSettle_SideFilesLeftForAMomentLookedAtAgain(t *testing.T) {
	dir := t.TempDir()
	crashImage(t, dir, "c", 3)
	p := filepath.Join(dir, "c.db")
	leave := func(times int) {
		settleClosed = func(p string) {
			if times == 0 {
				return
			}
			times--
			for _, s := range []string{"-wal", "-shm"} {
				if err := os.WriteFile(p+s, nil, 0o600); err != nil {
					t.Error(err)
				}
			}
		}
	}
	t.Cleanup(func() { settleClosed = nil })
	leave(1)
	if err := settle(p); err != nil {
		t.Fatalf("settle with side files left once by another process: %v", err)
	}
	leave(3)
	if err := os.WriteFile(p+"-wal", nil, 0o600); err != nil { // something to settle
		t.Fatal(err)
	}
	if err := settle(p); !errors.Is(err, errSideFilesSurvived) {
		t.Fatalf("settle with side files that stay: %v, want errSideFilesSurvived", err)
	}
}

// An empty -journal (a process killed as it began a transaction) is no
// sign of use: SQLite ignores it, and relayout refused the fleet for good,
// blaming permissions or a full disk (adv46).
func TestRelayout_EmptyJournalIgnored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := relayoutFleet(t, dir, LayoutFlat, 3)
	if err := os.WriteFile(filepath.Join(dir, "t1.db-journal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Relayout(context.Background(), dir, LayoutBuckets); err != nil {
		t.Fatalf("relayout of an idle fleet with an empty -journal left: %v", err)
	}
	checkFleet(t, dir, LayoutBuckets, want)
}
