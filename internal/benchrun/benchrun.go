// Package benchrun runs a concurrency benchmark's attempts for the
// benchmarks of this module and of its nested modules (bench/postgres):
// exactly the given goroutines, started together, share b.N attempts
// through an atomic counter; attempt i writes only its own latency and
// outcome, so nothing is locked or allocated while the timer runs. Only
// successful attempts count: ns/op is elapsed time / successes and
// errors/op the failed share.
package benchrun

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Attempt makes attempt i (0, 1, ...) and says what kind of operation it
// was (an index the caller defines, 0 for a single kind) and whether it
// failed.
type Attempt func(i int64) (kind int, err error)

// Result is what a Run saw.
type Result struct {
	Elapsed  time.Duration
	FirstErr []error // the first failure of each kind, nil if none
	lat      []time.Duration
	who      []int8 // kind + 1 of a success; 0 for a failure
}

// Run runs one goroutine per worker until b.N attempts, all together,
// have been made, timing them with b's timer; kinds is how many kinds the
// workers report.
func Run(b *testing.B, kinds int, workers []Attempt) *Result {
	n := b.N
	r := &Result{FirstErr: make([]error, max(kinds, 1)), lat: make([]time.Duration, n), who: make([]int8, n)}
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex // guards FirstErr
	)
	// All goroutines start together: spawned one by one, the first ones
	// could take every ticket of a small b.N.
	ready := make(chan struct{})
	for _, w := range workers {
		wg.Go(func() {
			<-ready
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t0 := time.Now()
				kind, err := w(i)
				r.lat[i] = time.Since(t0)
				if err != nil {
					if kind < 0 || kind >= len(r.FirstErr) {
						kind = 0
					}
					errMu.Lock()
					if r.FirstErr[kind] == nil {
						r.FirstErr[kind] = err
					}
					errMu.Unlock()
					continue
				}
				r.who[i] = int8(kind + 1)
			}
		})
	}
	b.ResetTimer()
	start := time.Now()
	close(ready)
	wg.Wait()
	r.Elapsed = time.Since(start)
	b.StopTimer()
	return r
}

// Latencies returns the sorted latencies of the successful attempts of
// kind, or of every kind when kind is -1.
func (r *Result) Latencies(kind int) []time.Duration {
	var ls []time.Duration
	for i, k := range r.who {
		if k != 0 && (kind < 0 || int(k) == kind+1) {
			ls = append(ls, r.lat[i])
		}
	}
	slices.Sort(ls)
	return ls
}

// ReportLatencies reports successes ls (sorted) as prefix+ok-ops/s and
// their p50-µs, p99-µs, p99.9-µs and max-µs (p99.9 because a pool that
// starves a few callers shows a low p99 and a long tail, and a fair queue
// the opposite).
func (r *Result) ReportLatencies(b *testing.B, prefix string, ls []time.Duration) {
	b.ReportMetric(float64(len(ls))/r.Elapsed.Seconds(), prefix+"ok-ops/s")
	if len(ls) > 0 {
		b.ReportMetric(micros(ls[len(ls)/2]), prefix+"p50-µs")
		b.ReportMetric(micros(ls[len(ls)*99/100]), prefix+"p99-µs")
		b.ReportMetric(micros(ls[len(ls)*999/1000]), prefix+"p99.9-µs")
		b.ReportMetric(micros(ls[len(ls)-1]), prefix+"max-µs")
	}
}

// ReportTotals reports errors/op over every attempt and ns/op per success
// (ok of them; with none, the whole run).
func (r *Result) ReportTotals(b *testing.B, ok int) {
	n := len(r.who)
	b.ReportMetric(float64(n-ok)/float64(n), "errors/op")
	if ok > 0 {
		b.ReportMetric(float64(r.Elapsed.Nanoseconds())/float64(ok), "ns/op")
	} else {
		b.ReportMetric(float64(r.Elapsed.Nanoseconds()), "ns/op")
	}
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
