package sqliteproxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkManyTenants: 10 000 tenants behind a cap of 100 connections,
// point queries from all cores, tenants chosen uniformly or Zipf-skewed.
//
// With uniform choice nearly every query is a cold open and an eviction,
// so each run also times cold cycles alone (coldCycle, as
// BenchmarkColdOpen's proxy row: open, ledger check, query, close) on the
// same files, before and after the churn, and reports their mean as
// coldopen-ns, and the churn's throughput
// against them as x-coldopen: ops/s ÷ (1e9 / coldopen-ns). Its target is
// ≥ 0.9: serving from many tenants costs no more than opening them.
func BenchmarkManyTenants(b *testing.B) {
	const tenants = 10_000
	dir := b.TempDir()
	ids := benchFleet(b, dir, tenants, []string{benchSchema})
	openEach(b, dir, ids, false)
	// proxy-keep-wal (Config.KeepWAL) last: its tenants keep their side
	// files, which the proxy without it then finds and removes.
	kept := false
	for _, run := range []struct {
		dist string
		keep bool
	}{{"uniform", false}, {"zipf", false}, {"uniform", true}} {
		dist, impl := run.dist, "proxy"
		if run.keep {
			impl = "proxy-keep-wal"
		}
		b.Run("dist="+dist+"/impl="+impl, func(b *testing.B) {
			var coldBefore, coldCPUBefore float64
			if run.keep && !kept {
				// As a service that ran with KeepWAL finds them: every
				// tenant's side files kept.
				b.StopTimer()
				openEach(b, dir, ids, true)
				kept = true
				b.StartTimer()
			}
			if dist == "uniform" {
				b.StopTimer()
				coldBefore, coldCPUBefore = coldOpenNs(b, dir, ids, run.keep)
				b.StartTimer()
			}
			p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: []string{benchSchema}, KeepWAL: run.keep})
			before := p.Stats().Evictions
			start, cpu0 := time.Now(), cpuTime().Nanoseconds()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				zipf := rand.NewZipf(rng, 1.1, 1, tenants-1)
				var v int
				for pb.Next() {
					i := rng.IntN(tenants)
					if dist == "zipf" {
						i = int(zipf.Uint64())
					}
					if err := p.QueryRowContext(WithOrgID(context.Background(), ids[i]), `SELECT value FROM bench WHERE id = 1`).Scan(&v); err != nil {
						b.Error(err)
						return
					}
				}
			})
			secs := time.Since(start).Seconds()
			reportCPU(b, cpu0)
			ev := p.Stats().Evictions - before
			b.ReportMetric(float64(b.N)/secs, "ops/s")
			b.ReportMetric(float64(ev)/secs, "evictions/s")
			if st := p.Stats(); st.OpenConnections > 100 {
				b.Fatalf("cap exceeded: %+v", st)
			}
			if dist == "uniform" {
				b.StopTimer()
				p.Close() // the cold cycles open files nothing else has open
				cold, coldCPU := coldOpenNs(b, dir, ids, run.keep)
				// Before and after: the churn changes the file system under
				// the cold cycles (on ext4 without a journal, creating files
				// costs more the more were deleted in the last seconds).
				cold, coldCPU = (cold+coldBefore)/2, (coldCPU+coldCPUBefore)/2
				b.ReportMetric(cold, "coldopen-ns")
				b.ReportMetric(coldCPU, "coldopen-cpu-ns")
				b.ReportMetric(float64(b.N)/secs*cold/1e9, "x-coldopen")
			}
		})
	}
}

// BenchmarkMigrateAll: MigrateAll over 10 000 tenants, up to date or with
// one ALTER TABLE ADD COLUMN to apply, from a fresh process's point of view.
func BenchmarkMigrateAll(b *testing.B) {
	const tenants = 10_000
	v1 := []string{benchSchema}
	v2 := []string{benchSchema, `ALTER TABLE bench ADD COLUMN note TEXT NOT NULL DEFAULT ''`}
	for _, tc := range []struct {
		name string
		migs []string
	}{{"state=up-to-date", v1}, {"state=one-pending", v2}} {
		b.Run(tc.name+"/impl=proxy", func(b *testing.B) {
			dir := b.TempDir()
			benchFleet(b, dir, tenants, v1)
			for b.Loop() {
				b.StopTimer()
				if tc.name == "state=one-pending" {
					os.RemoveAll(dir)
					os.Mkdir(dir, 0o700)
					benchFleet(b, dir, tenants, v1)
				}
				p, err := New(Config{Dir: dir, Migrations: tc.migs})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
				b.StopTimer()
				if err != nil || len(rep.Failed) != 0 || rep.Tenants != tenants {
					b.Fatalf("%+v %v", rep, err)
				}
				p.Close()
				b.StartTimer()
			}
		})
	}
}

// benchFleet makes a fleet (see fleet) whose tenants each hold the row the
// benchmarks read, and flushes it to disk: a real fleet's files are on
// disk, not dirty in the page cache, and their writeback must not compete
// with the timed fsyncs.
func benchFleet(b *testing.B, dir string, n int, migs []string) []string {
	b.Helper()
	ids := fleet(b, dir, n, migs, `INSERT INTO bench (name, value) VALUES ('x', 1)`)
	syscall.Sync()
	return ids
}

// BenchmarkCreateTenant: CreateTenant with one migration and with fifty
// (the target: fifty ≤ 1.2 × one; new tenants are copies of a template
// migrated once, template.go).
func BenchmarkCreateTenant(b *testing.B) {
	for _, n := range []int{1, 50} {
		b.Run(fmt.Sprintf("migrations=%d", n), func(b *testing.B) {
			p := createTenantProxy(b, n)
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				if err := p.CreateTenant(ctx, fmt.Sprintf("t%d", i)); err != nil {
					b.Fatal(err) // a failed creation is not a fast one
				}
			}
		})
	}
}

// BenchmarkCreateTenantPaired: BenchmarkCreateTenant's rows taken in turn
// within each op (in rotating order), so that all see the same file
// system: on this machine's journal-less ext4 creating files costs more
// the more files were deleted in the last seconds, and each creation
// deletes its temporary file, so the row run second paid for the first.
// sec/op is the set; x-50-vs-1 is the time of the creations with fifty
// migrations (fifty tables and indexes) over those with one (the #18
// target: ≤ 1.2); x-50cols-vs-1 the same for fifty migrations that build
// one table (a CREATE TABLE and 49 ADD COLUMNs): the count of migrations
// apart from the size of the schema they leave.
func BenchmarkCreateTenantPaired(b *testing.B) {
	ps := []*Proxy{createTenantProxy(b, 1), createTenantProxy(b, 50), newCreateTenantProxy(b, oneTableMigrations(50))}
	ctx := context.Background()
	spent := make([]time.Duration, len(ps))
	for i := 0; b.Loop(); i++ {
		for k := range ps {
			which := (i + k) % len(ps)
			start := time.Now()
			if err := ps[which].CreateTenant(ctx, fmt.Sprintf("t%d", i)); err != nil {
				b.Fatal(err)
			}
			spent[which] += time.Since(start)
		}
	}
	b.ReportMetric(float64(spent[1])/float64(spent[0]), "x-50-vs-1")
	b.ReportMetric(float64(spent[2])/float64(spent[0]), "x-50cols-vs-1")
	for k, name := range []string{"migrations=1", "migrations=50", "migrations=50cols"} {
		b.ReportMetric(float64(spent[k].Nanoseconds())/float64(b.N), name+"-ns/op")
	}
}

// createTenantProxy returns a proxy with n migrations (a table and an index
// each) and explicit creation, its template built.
func createTenantProxy(b *testing.B, n int) *Proxy {
	var migs []string
	for i := range n {
		migs = append(migs, fmt.Sprintf(`CREATE TABLE t%d (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t%d_v ON t%d (v)`, i, i, i))
	}
	return newCreateTenantProxy(b, migs)
}

// oneTableMigrations returns n migrations that build one table: a CREATE
// TABLE, then a column each.
func oneTableMigrations(n int) []string {
	migs := []string{`CREATE TABLE t (id INTEGER PRIMARY KEY)`}
	for i := 1; i < n; i++ {
		migs = append(migs, fmt.Sprintf(`ALTER TABLE t ADD COLUMN c%d TEXT`, i))
	}
	return migs
}

// newCreateTenantProxy returns a proxy with migs and explicit creation,
// its template built.
func newCreateTenantProxy(b *testing.B, migs []string) *Proxy {
	p := newTestProxy(b, Config{Migrations: migs, ExplicitCreate: true})
	if err := p.CreateTenant(context.Background(), "warm"); err != nil { // builds the template
		b.Fatal(err)
	}
	return p
}

// openEach opens and closes every tenant of ids once, as a fleet in
// service has had each of its tenants open before.
func openEach(b *testing.B, dir string, ids []string, keep bool) {
	p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: []string{benchSchema}, KeepWAL: keep})
	defer p.Close()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(ids); i += 4 {
				if err := p.QueryRowContext(WithOrgID(context.Background(), ids[i]), `SELECT value FROM bench WHERE id = 1`).Scan(new(int)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// coldOpenNs times cold cycles (coldCycle) on tenants of ids chosen at
// random, on a proxy of its own over dir, and returns the mean wall and
// CPU time of one (ns); keep is Config.KeepWAL.
func coldOpenNs(b *testing.B, dir string, ids []string, keep bool) (wall, cpu float64) {
	p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: []string{benchSchema}, KeepWAL: keep})
	defer p.Close()
	const n = 500
	start, cpu0 := time.Now(), cpuTime().Nanoseconds()
	for range n {
		coldCycle(b, p, ids[rand.IntN(len(ids))], `SELECT value FROM bench WHERE id = 1`)
	}
	return float64(time.Since(start).Nanoseconds()) / n, float64(cpuTime().Nanoseconds()-cpu0) / n
}

// BenchmarkRollback: Rollback of one migration over 2 000 closed tenants,
// beside MigrateAll applying it to the same fleet one version lower, for a
// migration that adds a column (its down rewrites the table: DROP COLUMN)
// and one that adds a table (DROP TABLE).
func BenchmarkRollback(b *testing.B) {
	const tenants = 2_000
	for _, ch := range []struct{ name, up, down string }{
		{"column", `ALTER TABLE bench ADD COLUMN note TEXT NOT NULL DEFAULT ''`, `ALTER TABLE bench DROP COLUMN note`},
		{"table", `CREATE TABLE note (id INTEGER PRIMARY KEY, v TEXT)`, `DROP TABLE note`},
	} {
		fsys := mapFS(map[string]string{"0001_bench.sql": benchSchema, "0002_note.up.sql": ch.up, "0002_note.down.sql": ch.down})
		for _, op := range []string{"migrate", "rollback"} {
			b.Run("change="+ch.name+"/op="+op+"/impl=proxy", func(b *testing.B) {
				dir := b.TempDir()
				for b.Loop() {
					b.StopTimer()
					os.RemoveAll(dir)
					os.Mkdir(dir, 0o700)
					migs := []string{benchSchema}
					if op == "rollback" {
						migs = append(migs, ch.up)
					}
					benchFleet(b, dir, tenants, migs)
					p, err := New(Config{Dir: dir, MigrationsFS: fsys, MigrationMode: MigrateManual})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					var rep MigrateReport
					if op == "migrate" {
						rep, err = p.MigrateAll(context.Background(), MigrateOptions{})
					} else {
						rep, err = p.Rollback(context.Background(), RollbackOptions{To: 1})
					}
					b.StopTimer()
					if err != nil || len(rep.Failed) != 0 || rep.Migrated != tenants {
						b.Fatalf("%+v %v", rep, err)
					}
					p.Close()
					b.StartTimer()
				}
			})
		}
	}
}
