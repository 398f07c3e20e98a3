package sqliteproxy

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkTouchOnce: 100 000 tenants, each touched once (a point query)
// behind a cap of 100 connections, from one goroutine. It reports what the
// process keeps afterwards: RSS growth right after the last touch
// (rss-busy-MB) and once the process has been left alone for a few
// seconds (rss-MB; the target is ≤ 30 MB), Go heap growth per tenant
// touched (heap-B/tenant) and the tenant objects left in the registry
// (registry). The fleet is built once and cached (cachedFleet); run it
// with -benchtime 1x: one pass takes about a minute. ExplicitCreate keeps a
// mistake from adding tenants to the cached fleet.
func BenchmarkTouchOnce(b *testing.B) {
	const tenants = 100_000
	migs := []string{benchSchema}
	dir, ids := cachedFleet(b, tenants, LayoutFlat, migs)
	b.Run("impl=proxy", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			p := newTestProxy(b, Config{Dir: dir, MaxConnections: 100, Migrations: migs, ExplicitCreate: true})
			rss0, heap0 := memNow(b)
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime()
			var v int
			for _, id := range ids {
				if err := p.QueryRowContext(WithOrgID(context.Background(), id), `SELECT value FROM bench WHERE id = 1`).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
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
