package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// schemaAndLedger reads what a tenant file holds: its schema (sqlite_schema)
// and its migration ledger without the times.
func schemaAndLedger(t *testing.T, path string) (schema []string, ledger []string) {
	t.Helper()
	db := direct(t, filepath.Dir(path), filepath.Base(path[:len(path)-len(tenantFileSuffix)]))
	rows, err := db.Query(`SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY type, name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		schema = append(schema, s)
	}
	rows.Close()
	rows, err = db.Query(`SELECT version || ' ' || checksum FROM ` + ledgerTable + ` ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		ledger = append(ledger, s)
	}
	rows.Close()
	return schema, ledger
}

// A tenant copied from the template holds the same schema and ledger as
// one migrated step by step (here: a file that existed empty, migrated on
// first access), and its ledger is stamped with its own creation; the
// template lives outside Dir and goes at Close.
func TestTemplate_SameAsStepByStep(t *testing.T) {
	for _, path := range []string{"memory", "file"} {
		t.Run("path="+path, func(t *testing.T) {
			if path == "file" {
				memTemplateOff.Store(true)
				t.Cleanup(func() { memTemplateOff.Store(false) })
			}
			p := testTemplateSameAsStepByStep(t)
			if got, want := p.c.r.tmpl.imaged.Load(), map[string]int64{"memory": 1, "file": 0}[path]; got != want {
				t.Errorf("%d tenants made from the in-memory template, want %d", got, want)
			}
		})
	}
}

func testTemplateSameAsStepByStep(t *testing.T) *Proxy {
	var migs []string
	for i := range 50 {
		migs = append(migs, fmt.Sprintf(`CREATE TABLE t%d (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t%d_v ON t%d (v)`, i, i, i))
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stepwise.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Dir: dir, Migrations: migs})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC()
	if err := p.CreateTenant(context.Background(), "copied"); err != nil {
		t.Fatal(err)
	}
	after := time.Now().UTC()
	if hdr := fileHeader(t, filepath.Join(dir, "copied.db")); hdr[18] != 2 || hdr[19] != 2 {
		t.Errorf("the copy's file format versions are %d, %d; want 2, 2 (WAL)", hdr[18], hdr[19])
	}
	if _, err := p.ExecContext(tctx("stepwise"), `INSERT INTO t0 (v) VALUES ('x')`); err != nil { // migrates the empty file
		t.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("copied"), `INSERT INTO t49 (v) VALUES ('x')`); err != nil {
		t.Fatal(err)
	}
	tmplDir := p.c.r.tmpl.dir
	if tmplDir == "" || filepath.Dir(tmplDir) == dir {
		t.Fatalf("template directory %q", tmplDir)
	}
	var stamped string
	var stamps int
	if err := p.QueryRowContext(tctx("copied"), `SELECT min(applied_at), count(DISTINCT applied_at) FROM `+ledgerTable).Scan(&stamped, &stamps); err != nil {
		t.Fatal(err)
	}
	if at, err := time.Parse(time.RFC3339Nano, stamped); err != nil || at.Before(before) || at.After(after) || stamps != 1 {
		t.Errorf("the copy's ledger is stamped %q (%d distinct; %v), not once between %v and %v", stamped, stamps, err, before, after)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmplDir); !os.IsNotExist(err) {
		t.Fatalf("template directory left after Close: %v", err)
	}
	// Both ledgers' applied_at have one width, so that they sort by time
	// together (step by step wrote RFC3339Nano, which drops trailing zeros).
	for _, id := range []string{"copied", "stepwise"} {
		var widths []int
		rows, err := direct(t, dir, id).Query(`SELECT DISTINCT length(applied_at) FROM ` + ledgerTable)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var n int
			rows.Scan(&n)
			widths = append(widths, n)
		}
		rows.Close()
		if len(widths) != 1 || widths[0] != stampLen {
			t.Errorf("%s: applied_at widths %v, want all %d", id, widths, stampLen)
		}
	}
	s1, l1 := schemaAndLedger(t, filepath.Join(dir, "copied.db"))
	s2, l2 := schemaAndLedger(t, filepath.Join(dir, "stepwise.db"))
	if diff := cmp.Diff(s2, s1); diff != "" {
		t.Errorf("schema, step by step (-) vs copied (+):\n%s", diff)
	}
	if diff := cmp.Diff(l2, l1); diff != "" || len(l1) != 50 {
		t.Errorf("ledger, step by step (-) vs copied (+), %d rows:\n%s", len(l1), diff)
	}
	return p
}

// fileHeader returns the first 100 bytes of the file at path.
func fileHeader(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 100)
	if _, err := io.ReadFull(f, hdr); err != nil {
		t.Fatal(err)
	}
	return hdr
}

// Tenants created at once from the in-memory template each get a whole,
// migrated file of their own.
func TestTemplate_ConcurrentCreations(t *testing.T) {
	migs := []string{`CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)`, `CREATE INDEX a_v ON a (v)`, `ALTER TABLE a ADD COLUMN w INTEGER`}
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: migs, ExplicitCreate: true})
	const n = 24
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- p.CreateTenant(context.Background(), fmt.Sprintf("t%02d", i)) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		id := fmt.Sprintf("t%02d", i)
		if _, err := p.ExecContext(tctx(id), `INSERT INTO a (v, w) VALUES (?, ?)`, id, i); err != nil {
			t.Fatal(err)
		}
		var check, stamped string
		var rows, versions, stamps int
		if err := p.QueryRowContext(tctx(id), `SELECT (SELECT integrity_check FROM pragma_integrity_check), (SELECT count(*) FROM a),
			(SELECT count(*) FROM `+ledgerTable+`), (SELECT count(DISTINCT applied_at) FROM `+ledgerTable+`), (SELECT min(applied_at) FROM `+ledgerTable+`)`).Scan(&check, &rows, &versions, &stamps, &stamped); err != nil {
			t.Fatal(err)
		}
		if check != "ok" || rows != 1 || versions != len(migs) {
			t.Errorf("%s: integrity %q, %d rows, %d ledger rows", id, check, rows, versions)
		}
		if _, err := time.Parse(time.RFC3339Nano, stamped); err != nil || stamps != 1 {
			t.Errorf("%s: ledger stamped %d times, first %q (%v); want one stamp", id, stamps, stamped, err)
		}
	}
	if got := p.c.r.tmpl.imaged.Load(); got != n {
		t.Errorf("%d of %d tenants made from the in-memory template", got, n)
	}
	noCreationLeftovers(t, dir)
}

// noCreationLeftovers fails t if a file a creation worked on (or one of its
// side files) is left in dir.
func noCreationLeftovers(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), creatingPrefix) {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// A template too large to hold in memory is copied on disk for each new
// tenant, and not loaded again for each.
func TestTemplate_TooLargeForMemory(t *testing.T) {
	t.Parallel()
	migs := []string{`CREATE TABLE big (b BLOB)`, fmt.Sprintf(`INSERT INTO big VALUES (zeroblob(%d))`, maxMemTemplate+1)}
	p := newTestProxy(t, Config{Migrations: migs, ExplicitCreate: true})
	for _, id := range []string{"a", "b"} {
		if err := p.CreateTenant(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := p.QueryRowContext(tctx(id), `SELECT length(b) FROM big`).Scan(&n); err != nil || n != maxMemTemplate+1 {
			t.Fatalf("%s: blob of %d bytes, %v", id, n, err)
		}
	}
	tp := &p.c.r.tmpl
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.imaged.Load() != 0 || tp.img != nil || tp.noImage != tp.path || tp.path == "" {
		t.Errorf("imaged %d, img %v, noImage %q, template %q: want the on-disk path, remembered", tp.imaged.Load(), tp.img != nil, tp.noImage, tp.path)
	}
	noCreationLeftovers(t, p.c.r.cfg.Dir)
}

// A template file damaged after it was built (read for every copy when too
// large for memory) does not fail creations: the one that finds it migrates
// step by step and the next builds the template again. A creation still in
// flight at Close makes no template directory nobody would remove.
func TestTemplate_DamagedAndClosed(t *testing.T) {
	memTemplateOff.Store(true)
	t.Cleanup(func() { memTemplateOff.Store(false) })
	p := newTestProxy(t, Config{Migrations: []string{`CREATE TABLE kv (k TEXT PRIMARY KEY)`}, ExplicitCreate: true})
	ctx := context.Background()
	if err := p.CreateTenant(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	tp := &p.c.r.tmpl
	tp.mu.Lock()
	path := tp.path
	tp.mu.Unlock()
	if err := os.WriteFile(path, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b", "c"} {
		if err := p.CreateTenant(ctx, id); err != nil {
			t.Fatalf("CreateTenant(%s) with the template damaged: %v", id, err)
		}
		if _, err := p.ExecContext(tctx(id), `INSERT INTO kv VALUES ('x')`); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.c.r.checkTemplate(ctx, path); err != nil {
		t.Errorf("the template was not built again: %v", err)
	}
	noCreationLeftovers(t, p.c.r.cfg.Dir)

	dir := tp.dir
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.c.r.template(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("template after Close: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) || tp.dir != "" {
		t.Errorf("template directory after Close: %q, %v", tp.dir, err)
	}
}

// A process that ends without Close leaves its template directory in the
// system's temporary directory; the next proxy to build a template removes
// those nobody holds locked (a live process holds its own, whatever its
// PID namespace) once they are old enough, and only those.
func TestTemplate_DirsOfEndedProcessesSwept(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ended := filepath.Join(tmp, templateDirPrefix+"123")
	held := filepath.Join(tmp, templateDirPrefix+"456")
	fresh := filepath.Join(tmp, templateDirPrefix+"789")
	other := filepath.Join(tmp, "unrelated")
	long := time.Now().Add(-time.Hour)
	for _, d := range []string{ended, held, fresh, other} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
		if d != fresh {
			if err := os.Chtimes(d, long, long); err != nil {
				t.Fatal(err)
			}
		}
	}
	f, err := os.Open(held) // a live process's lock
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if lockHeld(f) {
		t.Fatal("cannot take the live process's lock")
	}
	p := newTestProxy(t, Config{Migrations: []string{eventsTable}})
	if err := p.CreateTenant(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ended); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the ended process's template directory: %v, want it removed", err)
	}
	for _, d := range []string{held, fresh, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v, want it kept", d, err)
		}
	}
	// This proxy's own directory is locked: another sweep keeps it.
	tp := &p.c.r.tmpl
	tp.mu.Lock()
	mine := tp.dir
	tp.mu.Unlock()
	if err := os.Chtimes(mine, long, long); err != nil {
		t.Fatal(err)
	}
	sweepTemplateDirs()
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("this proxy's template directory was swept: %v", err)
	}
	// Removed from under it, the directory is made again.
	os.RemoveAll(mine)
	if err := p.CreateTenant(context.Background(), "beta"); err != nil {
		t.Fatal(err)
	}
	tp.mu.Lock()
	again := tp.dir
	tp.mu.Unlock()
	if _, err := os.Stat(again); err != nil || again == mine {
		t.Errorf("the template directory after its removal: %q, %v", again, err)
	}
}

// The template is built by one creation; the others wait for it only as
// long as their contexts allow (they waited on a mutex for the whole build,
// then migrated step by step with their ended context and blamed the first
// migration). A creation that gives up while copying a template does not
// take it for damaged (it was removed, and the next creation built it all
// again).
//
// Not parallel: it sets memTemplateOff, which TestTemplate_TooLargeForMemory
// (parallel) would see.
func TestTemplate_WaitsWithinDeadlinesAndSurvivesGivingUp(t *testing.T) {
	migs := []string{`CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT x FROM c`}
	p := newTestProxy(t, Config{Migrations: migs, ExplicitCreate: true})
	tp := &p.c.r.tmpl
	first := make(chan error, 1)
	go func() { first <- p.CreateTenant(context.Background(), "first") }()
	waitFor(t, 10*time.Second, "the template's build to start", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return tp.building != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := p.CreateTenant(ctx, "second")
	cancel()
	tp.mu.Lock()
	stillBuilding := tp.building != nil
	tp.mu.Unlock()
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Migrations[0]") {
		t.Errorf("a creation with a deadline during the build: %v, want its deadline, not the first migration", err)
	}
	if !stillBuilding { // the build takes seconds, the deadline 50 ms
		t.Error("the second creation returned only once the template was built")
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the first creation did not return")
	}
	// The on-disk copy path (as for a template too large for memory),
	// given up: the template stays.
	memTemplateOff.Store(true)
	defer memTemplateOff.Store(false)
	tp.mu.Lock()
	built := tp.path
	tp.mu.Unlock()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.CreateTenant(gone, "third"); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled creation: %v", err)
	}
	tp.mu.Lock()
	kept := tp.path
	tp.mu.Unlock()
	if _, err := os.Stat(built); err != nil || kept != built {
		t.Errorf("template after a cancelled creation: %q (%v), want %q kept", kept, err, built)
	}
	noCreationLeftovers(t, p.c.r.cfg.Dir)
}

// The template's build is everyone's: it does not end with the context of
// the creation that started it. It did, and with every creation's deadline
// shorter than a build, no template was ever made and every creation
// failed (40 of 40 in the regression check).
func TestTemplate_BuildOutlivesItsStarter(t *testing.T) {
	t.Parallel()
	migs := []string{`CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT x FROM c`}
	p := newTestProxy(t, Config{Migrations: migs, ExplicitCreate: true})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := p.CreateTenant(ctx, "first")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a creation with a deadline shorter than the build: %v", err)
	}
	tp := &p.c.r.tmpl
	waitFor(t, 2*time.Minute, "the template to be built", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return tp.path != ""
	})
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.CreateTenant(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	// Close during a build stops it, and waits for it.
	q := newTestProxy(t, Config{Migrations: migs, ExplicitCreate: true})
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	q.CreateTenant(ctx, "x")
	cancel()
	start := time.Now()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q.c.r.tmpl.mu.Lock()
	building := q.c.r.tmpl.building != nil
	q.c.r.tmpl.mu.Unlock()
	if building || time.Since(start) > 30*time.Second {
		t.Errorf("Close during a build: building %v after %v", building, time.Since(start))
	}
}

// The template file on disk was copied for each new tenant with only its
// ledger checked: a file put in its place with the same migrations (here
// a backup of acme) became every new tenant, acme's rows and all (adv29).
// A template that is not the file built is built again.
func TestTemplate_ReplacedOnDiskNotCopied(t *testing.T) {
	memTemplateOff.Store(true) // the on-disk copy: templates too large to hold in memory
	t.Cleanup(func() { memTemplateOff.Store(false) })
	dir := t.TempDir()
	p := newTestProxy(t, Config{Dir: dir, Migrations: []string{eventsTable}})
	insertN(t, p, "acme", 2)
	backup := filepath.Join(t.TempDir(), "acme.db")
	if err := p.BackupTenant(context.Background(), "acme", backup); err != nil {
		t.Fatal(err)
	}
	path := p.c.r.tmpl.path
	if path == "" {
		t.Fatal("no template was built")
	}
	b, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateTenant(context.Background(), "globex"); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p, "globex"); n != 0 {
		t.Errorf("new tenant globex holds %d rows copied from the file put at the template's path", n)
	}
}
