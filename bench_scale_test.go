package sqliteproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTouchOnce: 100 000 tenants, each touched once (a point query)
// behind a cap of 100 connections, from one goroutine. It reports what the
// process keeps afterwards: RSS growth right after the last touch
// (rss-busy-MB) and once the process has been left alone for a few
// seconds (rss-MB; the target is ≤ 30 MB), Go heap growth per tenant
// touched (heap-B/tenant) and the tenant objects left in the registry
// (registry). The fleet is built once and cached (cachedFleetFlat); run it
// with -benchtime 1x: one pass takes about a minute. ExplicitCreate keeps a
// mistake from adding tenants to the cached fleet.
func BenchmarkTouchOnce(b *testing.B) {
	const tenants = 100_000
	migs := []string{benchSchema}
	dir, ids := cachedFleetFlat(b, tenants, migs)
	b.Run("impl=proxy", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: migs, ExplicitCreate: true})
			rss0, heap0 := memNow(b)
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime(b)
			var v int
			for _, id := range ids {
				if err := p.QueryRowContext(WithOrgID(context.Background(), id), `SELECT value FROM bench WHERE id = 1`).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			elapsed, cpu := time.Since(start), cpuTime(b)-cpu0
			b.StopTimer()
			busy, heap1 := memNow(b)
			// The figure that counts is the one once the wave is over: the
			// proxy gives back what SQLite freed a second after tenants
			// stop closing (memtrim.go). Benchmarks may sleep: this one
			// measures a process left alone for settle.
			const settle = 3 * time.Second
			time.Sleep(settle)
			rss1, _ := memNow(b)
			kept := 0
			p.c.r.tenants.Range(func(any, any) bool { kept++; return true })
			b.ReportMetric(float64(busy-rss0)/(1<<20), "rss-busy-MB")
			b.ReportMetric(float64(rss1-rss0)/(1<<20), "rss-MB")
			b.ReportMetric(float64(heap1-heap0)/tenants, "heap-B/tenant")
			b.ReportMetric(float64(kept), "registry")
			b.ReportMetric(float64(elapsed.Microseconds())/tenants, "µs/touch")
			b.ReportMetric(float64(cpu.Microseconds())/tenants, "cpu-µs/touch") // steadier than µs/touch on a shared machine
			if st := p.Stats(); st.OpenConnections > 100 {
				b.Fatalf("cap exceeded: %+v", st)
			}
			if err := p.Close(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// memNow returns the process's resident set and the Go heap in use, in
// bytes, after a full collection that gives freed memory back to the OS.
func memNow(tb testing.TB) (rss, heap int64) {
	tb.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return residentBytes(tb), int64(ms.HeapAlloc)
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// residentBytes reads the process's resident set size from
// /proc/self/smaps_rollup (Linux).
func residentBytes(tb testing.TB) int64 {
	tb.Helper()
	data, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		tb.Skipf("no RSS figure on this system: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Rss:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("smaps_rollup: %q: %v", sc.Text(), err)
			}
			return kb << 10
		}
	}
	tb.Fatalf("smaps_rollup has no Rss line")
	return 0
}

// cachedFleetFlat returns a directory of n tenants (the flat layout: one
// <id>.db per tenant, IDs as fleet names them), each migrated with migs and
// holding the row the benchmarks read. Building 100 000 files takes a
// while, so the fleet is built once and kept under the user's cache
// directory (sqliteproxy-bench/flat-<n>-<hash of migs>), where later runs
// find it: one tenant is made by the proxy and its file copied to every
// name (mode 0600). A completion marker is written last; a directory
// without it (an interrupted build) is removed and built again. Benchmarks
// must not write to the tenants: the next run would see the writes.
func cachedFleetFlat(b testing.TB, n int, migs []string) (dir string, ids []string) {
	b.Helper()
	const seed = `INSERT INTO bench (name, value) VALUES ('x', 1)`
	cache, err := os.UserCacheDir()
	if err != nil {
		b.Skipf("no cache directory for the fleet: %v", err)
	}
	h := sha256.New()
	for _, m := range append(slices.Clone(migs), seed) {
		fmt.Fprintf(h, "%d:%s\n", len(m), m)
	}
	dir = filepath.Join(cache, "sqliteproxy-bench", fmt.Sprintf("flat-%d-%x", n, h.Sum(nil)[:6]))
	width := max(3, len(strconv.Itoa(n-1)))
	ids = make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%0*d", width, i)
	}
	marker := filepath.Join(dir, ".complete")
	if _, err := os.Stat(marker); err == nil {
		return dir, ids
	}
	b.Logf("building a fleet of %d tenants in %s (once)", n, dir)
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	tmpl := b.TempDir()
	p, err := New(Config{Dir: tmpl, Migrations: migs})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.ExecContext(tctx("template"), seed); err != nil {
		b.Fatal(err)
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(tmpl, "template.db"))
	if err != nil {
		b.Fatal(err)
	}
	for _, id := range ids {
		if err := os.WriteFile(filepath.Join(dir, id+".db"), src, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Sync() // on disk before it is marked complete
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir, ids
}
