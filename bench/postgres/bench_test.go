package pgbench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/internal/benchrun"
)

// The benchmarks run each workload on both systems in one process, at
// both durability pairings (see pairing), as sub-benchmarks
// sync=full|normal/impl=proxy|postgres. Every row, serial or concurrent,
// goes through runOps (internal/benchrun, as the root module's concurrency
// benchmarks): exactly the given goroutines share b.N attempts, only
// successful operations count (ns/op is elapsed time / successes), and
// each row reports ok-ops/s, p50-µs, p99-µs, p99.9-µs, max-µs and
// errors/op.

// worker makes one attempt; i is the attempt's number (0, 1, ...) and
// kind indexes runOps's kinds (reads, writes) when there are several.
type worker func(rng *rand.Rand, i int64) (kind int, err error)

// runOps runs the workers until b.N attempts, all together, have been made.
func runOps(b *testing.B, t target, kinds []string, workers ...worker) {
	pt, _ := t.(*proxyTarget)
	var st0 sqliteproxy.Stats
	if pt != nil {
		pt.p.SetMaxIdleConns(max(len(workers), 100)) // routing conns: cheap, keep them
		st0 = pt.p.Stats()
	}
	attempts := make([]benchrun.Attempt, len(workers))
	for w, fn := range workers {
		rng := rand.New(rand.NewPCG(uint64(w), 42))
		attempts[w] = func(i int64) (int, error) { return fn(rng, i) }
	}
	res := benchrun.Run(b, len(kinds), attempts)
	n := b.N
	ls := res.Latencies(-1)
	ok := len(ls)
	res.ReportLatencies(b, "", ls)
	if len(kinds) > 1 {
		for k, name := range kinds {
			res.ReportLatencies(b, name+"-", res.Latencies(k))
		}
	}
	if pt != nil {
		// Tenants the proxy closed to stay under MaxConnections, and how
		// often a caller waited for a connection (budget or writer).
		st := pt.p.Stats()
		b.ReportMetric(float64(st.Evictions-st0.Evictions)/float64(n), "evictions/op")
		b.ReportMetric(float64(st.Waits-st0.Waits)/float64(n), "waits/op")
	}
	res.ReportTotals(b, ok)
	if firstErr := errors.Join(res.FirstErr...); firstErr != nil {
		// The proxy must not fail; nor must PostgreSQL in the smoke run
		// (-short), where an error means a broken statement.
		if pt != nil || testing.Short() {
			b.Errorf("impl=%s: %d failures of %d attempts; first: %v", t.impl(), n-ok, n, firstErr)
		} else {
			b.Logf("impl=%s: %d failures of %d attempts; first: %v", t.impl(), n-ok, n, firstErr)
		}
	}
}

// forEach runs fn as sub-benchmarks on both systems, each holding n
// tenants of rows rows, at both durability pairings, one after the other;
// with maxConns, also
// on a proxy whose MaxConnections is maxConns (impl=proxy-max<maxConns>).
func forEach(b *testing.B, n, rows int, fn func(b *testing.B, t target), maxConns ...int) {
	for _, pr := range pairings {
		ts := newTargets(b, n, rows, pr)
		for _, m := range maxConns {
			ts = append(ts, newProxyTargetCap(b, n, rows, pr.sqlite, m))
		}
		for _, t := range ts {
			b.Run("sync="+pr.name+"/impl="+t.impl(), func(b *testing.B) { fn(b, t) })
		}
		// Done with this pairing: its pools must not hold connections
		// (PostgreSQL's connection slots) while the next one runs.
		for _, t := range ts {
			if err := t.close(); err != nil {
				b.Error(err)
			}
		}
	}
}

// The article's five rows: one tenant holding 1 000 rows, one goroutine.

const seedRows = 1000

func insert(t target, i int, name string) error {
	return t.do(i, false, func(ctx context.Context, q querier) error {
		_, err := q.ExecContext(ctx, insertSQL, name)
		return err
	})
}

func get(t target, i, k int) error {
	return t.do(i, false, func(ctx context.Context, q querier) error {
		var name string
		return q.QueryRowContext(ctx, getSQL, t.seedID(i, k)).Scan(&name)
	})
}

func BenchmarkInsert(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		runOps(b, t, nil, func(_ *rand.Rand, _ int64) (int, error) { return 0, insert(t, 0, "bench") })
	})
}

func BenchmarkSingleQuery(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		runOps(b, t, nil, func(_ *rand.Rand, i int64) (int, error) { return 0, get(t, 0, int(i%seedRows)) })
	})
}

func BenchmarkQuery10Rows(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		runOps(b, t, nil, func(_ *rand.Rand, i int64) (int, error) {
			return 0, t.do(0, false, func(ctx context.Context, q querier) error {
				rows, err := q.QueryContext(ctx, list10SQL, t.seedID(0, int(i%900))-1)
				if err != nil {
					return err
				}
				defer rows.Close()
				var id int64
				var name string
				n := 0
				for rows.Next() {
					if err := rows.Scan(&id, &name); err != nil {
						return err
					}
					n++
				}
				if err := rows.Err(); err != nil {
					return err
				}
				if n != 10 {
					return fmt.Errorf("%d rows, want 10", n)
				}
				return nil
			})
		})
	})
}

func BenchmarkTx5Inserts(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		runOps(b, t, nil, func(_ *rand.Rand, _ int64) (int, error) {
			return 0, t.do(0, true, func(ctx context.Context, q querier) error {
				for range 5 {
					if _, err := q.ExecContext(ctx, insertSQL, "tx"); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}

func BenchmarkPreparedInsert(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		ins := t.prepareInsert(b)
		runOps(b, t, nil, func(_ *rand.Rand, _ int64) (int, error) { return 0, ins(0, "prep") })
	})
}

// mixed is one attempt of the mixed workloads on tenant i: three reads of
// a seeded row by id for one insert.
func mixed(t target, rows int, rng *rand.Rand, i int) (int, error) {
	if rng.IntN(4) == 0 {
		return 1, insert(t, i, "mixed")
	}
	return 0, get(t, i, rng.IntN(rows))
}

var rw = []string{"reads", "writes"}

// BenchmarkTenants100x4: 100 tenants of 1 000 rows, four goroutines on
// each (400 in all), each goroutine reading three times for every write.
// The proxy's default cap of 100 connections is less than these tenants
// use at once (a writer and up to three readers each), so it evicts
// tenants all along (evictions/op); impl=proxy-max500 is the same proxy
// with MaxConnections 500, the cap this workload needs.
func BenchmarkTenants100x4(b *testing.B) {
	const tenants = 100
	forEach(b, tenants, seedRows, func(b *testing.B, t target) {
		var ws []worker
		for i := range tenants {
			for range 4 {
				ws = append(ws, func(rng *rand.Rand, _ int64) (int, error) { return mixed(t, seedRows, rng, i) })
			}
		}
		runOps(b, t, rw, ws...)
	}, 500)
}

// BenchmarkWriters8: eight goroutines inserting into one tenant.
func BenchmarkWriters8(b *testing.B) {
	forEach(b, 1, seedRows, func(b *testing.B, t target) {
		ws := make([]worker, 8)
		for w := range ws {
			ws[w] = func(_ *rand.Rand, _ int64) (int, error) { return 0, insert(t, 0, "w") }
		}
		runOps(b, t, nil, ws...)
	})
}

// workingSet is the number of tenants of BenchmarkWorkingSet (fewer in
// the smoke run).
func workingSet() int {
	if testing.Short() {
		return 300
	}
	return 10_000
}

const workingSetRows = 10

// BenchmarkWorkingSet: 10 000 tenants of 10 rows, eight goroutines, each
// attempt on a tenant chosen uniformly at random, three reads for every
// write. Before the timer each tenant is read once on both systems (a
// fleet in service has had its tenants open before); with the proxy's
// default cap of 100 connections nearly every attempt then opens a
// closed tenant file.
func BenchmarkWorkingSet(b *testing.B) {
	n := workingSet()
	forEach(b, n, workingSetRows, func(b *testing.B, t target) {
		touchAll(b, t, n)
		ws := make([]worker, 8)
		for w := range ws {
			ws[w] = func(rng *rand.Rand, _ int64) (int, error) { return mixed(t, workingSetRows, rng, rng.IntN(n)) }
		}
		runOps(b, t, rw, ws...)
	})
}

// touchAll reads one row of each of t's n tenants, four goroutines at once.
func touchAll(b *testing.B, t target, n int) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if err := get(t, i, 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

// BenchmarkRoundTrip: one round trip to PostgreSQL through the same pool
// (SELECT 1, no transaction, no tenant): the unit each PostgreSQL row
// above pays at least four times (BEGIN, set_config, the statement,
// COMMIT). Not part of the comparison; it says where the time goes.
func BenchmarkRoundTrip(b *testing.B) {
	t := newPGTarget(b, 1, 1, "on")
	b.Run("impl=postgres", func(b *testing.B) {
		runOps(b, t, nil, func(_ *rand.Rand, _ int64) (int, error) {
			return 0, t.db.QueryRowContext(context.Background(), `SELECT 1`).Scan(new(int))
		})
	})
}
