package sqliteproxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// cloneFleet makes n tenants in dir by copying one template tenant file
// (far quicker than creating each one through SQLite).
func cloneFleet(b testing.TB, dir string, n int, migs []string) {
	b.Helper()
	tmpl := b.TempDir()
	p := newTestProxy(b, Config{Dir: tmpl, Migrations: migs})
	ctx := WithOrgID(context.Background(), "template")
	if _, err := p.ExecContext(ctx, `INSERT INTO bench (name, value) VALUES ('x', 1)`); err != nil {
		b.Fatal(err)
	}
	p.Close()
	src, err := os.ReadFile(filepath.Join(tmpl, "template.db"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("t%05d.db", i)), src, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	// A real fleet's files are on disk, not dirty in the page cache: flush
	// them now so that their writeback does not compete with the timed
	// fsyncs.
	syscall.Sync()
}

// BenchmarkManyTenants: 10 000 tenants behind a cap of 100 connections,
// point queries from all cores, tenants chosen uniformly or Zipf-skewed.
func BenchmarkManyTenants(b *testing.B) {
	const tenants = 10_000
	dir := b.TempDir()
	cloneFleet(b, dir, tenants, []string{benchSchema})
	ids := make([]string, tenants)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%05d", i)
	}
	for _, dist := range []string{"uniform", "zipf"} {
		b.Run("dist="+dist+"/impl=proxy", func(b *testing.B) {
			p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: []string{benchSchema}})
			before := p.Stats().Evictions
			start := time.Now()
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
			ev := p.Stats().Evictions - before
			b.ReportMetric(float64(b.N)/secs, "ops/s")
			b.ReportMetric(float64(ev)/secs, "evictions/s")
			if st := p.Stats(); st.OpenConnections > 100 {
				b.Fatalf("cap exceeded: %+v", st)
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
			cloneFleet(b, dir, tenants, v1)
			for b.Loop() {
				b.StopTimer()
				if tc.name == "state=one-pending" {
					os.RemoveAll(dir)
					os.Mkdir(dir, 0o700)
					cloneFleet(b, dir, tenants, v1)
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
