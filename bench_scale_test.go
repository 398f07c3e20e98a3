package sqliteproxy

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Benchmarks over 100 000 tenants (issue 18). Their fleets take minutes
// to build, so they are built once and cached (cachedFleet).

const scaleTenants = 100_000

// BenchmarkAllTenants: listing 100 000 tenants through AllTenants, flat
// and bucketed (target: ≤ 0.3 s each), beside Tenants (the whole list,
// sorted) on the same fleet.
func BenchmarkAllTenants(b *testing.B) {
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		for _, api := range []string{"AllTenants", "Tenants"} {
			b.Run(fmt.Sprintf("tenants=%d/layout=%s/api=%s", scaleTenants, l, api), func(b *testing.B) {
				dir, _ := cachedFleet(b, scaleTenants, l, []string{benchSchema})
				p := newTestProxy(b, Config{Dir: dir, Layout: l})
				ctx := context.Background()
				for b.Loop() {
					n := 0
					if api == "Tenants" {
						ids, err := p.Tenants(ctx)
						if err != nil {
							b.Fatal(err)
						}
						n = len(ids)
					} else {
						for _, err := range p.AllTenants(ctx) {
							if err != nil {
								b.Fatal(err)
							}
							n++
						}
					}
					if n != scaleTenants {
						b.Fatalf("listed %d tenants", n)
					}
				}
			})
		}
	}
}

// BenchmarkMigrateAllScale: a MigrateAll with nothing to do over 100 000
// tenants, flat and bucketed, from a fresh process's point of view
// (target: ≤ 8 s each). It reads the cached fleet only: up-to-date
// tenants are checked on read-only, immutable opens (fleet.go).
func BenchmarkMigrateAllScale(b *testing.B) {
	migs := []string{benchSchema}
	for _, l := range []Layout{LayoutFlat, LayoutBuckets} {
		b.Run(fmt.Sprintf("tenants=%d/layout=%s/state=up-to-date", scaleTenants, l), func(b *testing.B) {
			dir, _ := cachedFleet(b, scaleTenants, l, migs)
			var cpu time.Duration // this process's CPU time in MigrateAll
			for b.Loop() {
				b.StopTimer()
				p, err := New(Config{Dir: dir, Layout: l, Migrations: migs})
				if err != nil {
					b.Fatal(err)
				}
				before := cpuTime()
				b.StartTimer()
				rep, err := p.MigrateAll(context.Background(), MigrateOptions{})
				b.StopTimer()
				cpu += cpuTime() - before
				if err != nil || len(rep.Failed) != 0 || rep.Tenants != scaleTenants || rep.Migrated != 0 {
					spoilFleet(dir) // it may have written: rebuild it next time
					b.Fatalf("%+v %v", rep, err)
				}
				p.Close()
				b.StartTimer()
			}
			// On a shared machine wall time depends on the neighbours; CPU
			// time divided by the cores is what a quiet machine would take
			// at best.
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fleetComplete marks a cached fleet as completely built.
const fleetComplete = ".fleet-complete"

// cachedFleet returns a directory of n tenants in layout l, each migrated
// with migs and holding the row the benchmarks read (as benchFleet), and
// their IDs (t000000, t000001, ...). It is built once under
// os.UserCacheDir()/sqliteproxy-bench/ (one folder per n, layout and
// migration set) by copying one tenant file, and reused by later runs;
// a completion marker written last makes an interrupted build start over.
// Benchmarks must not change it (if one may have, spoilFleet); delete the
// folder to reclaim its space (~1.2 GB per 100 000 tenants).
func cachedFleet(b *testing.B, n int, l Layout, migs []string) (dir string, ids []string) {
	b.Helper()
	width := max(6, len(strconv.Itoa(n-1)))
	ids = make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%0*d", width, i)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		b.Skipf("no cache directory for the fleet: %v", err)
	}
	h := sha256.New()
	for _, m := range migs {
		fmt.Fprintf(h, "%d:%s\n", len(m), m)
	}
	// And the shape of a tenant as this build makes it (the ledger's
	// tables, say): a fleet made by an older build is not reused.
	src := templateTenant(b, migs, `INSERT INTO bench (name, value) VALUES ('x', 1)`)
	fmt.Fprintf(h, "schema:%s\n", fileSchema(b, src))
	dir = filepath.Join(cache, "sqliteproxy-bench", fmt.Sprintf("fleet-n%d-%s-%s", n, l, hex.EncodeToString(h.Sum(nil))[:12]))
	if _, err := os.Stat(filepath.Join(dir, fleetComplete)); err == nil {
		return dir, ids
	}
	b.Logf("building %d tenants in %s (once)", n, dir)
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	if l == LayoutBuckets {
		if err := writeMarker(dir, markerBuckets); err != nil {
			b.Fatal(err)
		}
		for i := range numBuckets {
			if err := os.Mkdir(filepath.Join(dir, bucketName(i)), 0o700); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, id := range ids {
		if err := os.WriteFile(tenantPath(dir, l, id), src, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Sync() // on disk, as a real fleet, before it is used and marked
	if err := os.WriteFile(filepath.Join(dir, fleetComplete), nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir, ids
}

// spoilFleet makes cachedFleet rebuild the fleet in dir next time.
func spoilFleet(dir string) {
	if strings.Contains(dir, "sqliteproxy-bench") {
		os.Remove(filepath.Join(dir, fleetComplete))
	}
}

// templateTenant returns the bytes of a tenant file migrated with migs and
// given the statements of seed, closed.
func templateTenant(tb testing.TB, migs []string, seed ...string) []byte {
	tb.Helper()
	tmpl := tb.TempDir()
	p := newTestProxy(tb, Config{Dir: tmpl, Migrations: migs})
	if err := p.CreateTenant(context.Background(), "template"); err != nil {
		tb.Fatal(err)
	}
	for _, q := range seed {
		if _, err := p.ExecContext(tctx("template"), q); err != nil {
			tb.Fatalf("seed %q: %v", q, err)
		}
	}
	if err := p.Close(); err != nil {
		tb.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(tmpl, "template.db"))
	if err != nil {
		tb.Fatal(err)
	}
	return src
}

// fileSchema returns the schema (sqlite_master's rows, sorted) of the
// SQLite database whose bytes are db.
func fileSchema(tb testing.TB, db []byte) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "schema.db")
	if err := os.WriteFile(path, db, 0o600); err != nil {
		tb.Fatal(err)
	}
	c, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	rows, err := c.Query(`SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY type, name`)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			tb.Fatal(err)
		}
		out.WriteString(line + "\n")
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out.String()
}
