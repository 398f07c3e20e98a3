package sqliteproxy

import (
	"context"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkFanOut: SELECT count(*) FROM bench fanned out over 10 000
// closed, up-to-date tenants, from a fresh process's point of view (target
// ≤ 2 s on 2 cores; BenchmarkMigrateAll/state=up-to-date checks the same
// fleet), at the default concurrency and at 2 and 50, with the growth of
// the heap and of the RSS during the run over what they were before it
// (target ≤ 20 MB); then the latency of point queries on 10 hot tenants
// without and with fan-outs running at the same time (target: with ≤ 1.5 ×
// without), as mean, p50, p99 and p99.9 metrics side by side.
func BenchmarkFanOut(b *testing.B) {
	const tenants = 10_000
	dir := b.TempDir()
	ids := benchFleet(b, dir, tenants, []string{benchSchema})
	cfg := Config{Dir: dir, Migrations: []string{benchSchema}}

	for _, conc := range []int{0, 2, 50} {
		name := "default"
		if conc > 0 {
			name = strconv.Itoa(conc)
		}
		b.Run("query=count/tenants=10000/concurrency="+name, func(b *testing.B) {
			benchFanOutCount(b, cfg, tenants, conc)
		})
	}

	hot := ids[:10]
	for _, mode := range []string{"without", "with", "with-concurrency=2"} {
		b.Run("hot-latency/fanout="+mode, func(b *testing.B) {
			p := newTestProxy(b, cfg)
			for _, id := range hot {
				var v int
				if err := p.QueryRowContext(WithOrgID(context.Background(), id), `SELECT value FROM bench WHERE id = 1`).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			stop := make(chan struct{})
			var fanouts atomic.Int64
			var bg sync.WaitGroup
			if mode != "without" {
				opts := FanOutOptions{Tenants: ids[len(hot):]}
				if mode == "with-concurrency=2" {
					opts.Concurrency = 2
				}
				bg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						// The same proxy: the fan-out shares the budget
						// and the process with the hot tenants.
						fanOutCount(b, p, opts)
						fanouts.Add(1)
					}
				})
			}
			if mode != "without" {
				// Measure from when the fan-out is under way.
				waitFor(b, 10*time.Second, "the fan-out to start", func() bool { return p.Stats().OpenTenants > len(hot) })
			}
			const clients = 4
			lat := make([][]time.Duration, clients)
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for c := range clients {
				wg.Go(func() {
					var v int
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						id := hot[i%int64(len(hot))]
						start := time.Now()
						if err := p.QueryRowContext(WithOrgID(context.Background(), id), `SELECT value FROM bench WHERE id = 1`).Scan(&v); err != nil {
							b.Error(err)
							return
						}
						lat[c] = append(lat[c], time.Since(start))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			close(stop)
			bg.Wait()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
				b.ReportMetric(float64(all[len(all)*999/1000].Microseconds()), "p99.9-µs")
				var sum time.Duration
				for _, d := range all {
					sum += d
				}
				b.ReportMetric(float64(sum.Microseconds())/float64(len(all)), "mean-µs")
			}
			if mode != "without" {
				b.ReportMetric(float64(fanouts.Load()), "fanouts")
			}
		})
	}
}

// benchFanOutCount fans SELECT count(*) FROM bench out over the tenants of
// cfg.Dir, each time from a fresh Proxy, and reports how far the heap and
// the RSS grew during the run.
func benchFanOutCount(b *testing.B, cfg Config, tenants, conc int) {
	var heapGrowth, rssGrowth float64
	for b.Loop() {
		b.StopTimer()
		p, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		mem := startMemWatch()
		b.StartTimer()
		n, sum := fanOutCount(b, p, FanOutOptions{Concurrency: conc})
		b.StopTimer()
		heap, rss := mem.stop()
		heapGrowth, rssGrowth = max(heapGrowth, heap), max(rssGrowth, rss)
		if n != tenants || sum != tenants {
			b.Fatalf("%d rows, sum %d; want %d", n, sum, tenants)
		}
		if st := p.Stats(); st.OpenConnections != 0 {
			b.Fatalf("connections left open: %+v", st)
		}
		p.Close()
		b.StartTimer()
	}
	b.ReportMetric(heapGrowth/1e6, "peak-heap-growth-MB")
	b.ReportMetric(rssGrowth/1e6, "peak-rss-growth-MB")
}

// fanOutCount runs SELECT count(*) FROM bench with opts on p and returns
// the number of rows and the sum of the counts.
func fanOutCount(b *testing.B, p *Proxy, opts FanOutOptions) (n, sum int) {
	rows, err := p.QueryContext(WithFanOut(context.Background(), opts), `SELECT count(*) FROM bench`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var c int
		if err := rows.Scan(&id, &c); err != nil {
			b.Fatal(err)
		}
		n++
		sum += c
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return n, sum
}

// memWatch samples the heap (runtime/metrics, no stop-the-world) and the
// resident set size every millisecond and keeps their peaks.
type memWatch struct {
	baseHeap, baseRSS float64
	peakHeap, peakRSS atomic.Int64
	stopCh            chan struct{}
	done              sync.WaitGroup
}

func startMemWatch() *memWatch {
	w := &memWatch{stopCh: make(chan struct{})}
	w.baseHeap, w.baseRSS = heapBytes(), rssBytes()
	w.done.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			w.sample()
			select {
			case <-w.stopCh:
				return
			case <-t.C:
			}
		}
	})
	return w
}

func (w *memWatch) sample() {
	if h := int64(heapBytes()); h > w.peakHeap.Load() {
		w.peakHeap.Store(h)
	}
	if r := int64(rssBytes()); r > w.peakRSS.Load() {
		w.peakRSS.Store(r)
	}
}

// stop ends the sampling and returns how far the heap and the RSS grew
// above their values at the start.
func (w *memWatch) stop() (heap, rss float64) {
	close(w.stopCh)
	w.done.Wait()
	w.sample()
	return float64(w.peakHeap.Load()) - w.baseHeap, float64(w.peakRSS.Load()) - w.baseRSS
}

func heapBytes() float64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64())
}

// rssBytes reads the resident set size from /proc/self/statm (0 where
// there is none).
func rssBytes() float64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}
