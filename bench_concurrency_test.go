package sqliteproxy

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sqliteproxy/sqliteproxy/internal/benchrun"
)

// The concurrency benchmarks run a fixed number of goroutines on one tenant
// (one database file) and count only what succeeded:
//
//   - exactly n goroutines, whatever GOMAXPROCS is (not RunParallel, whose
//     goroutine count is a multiple of GOMAXPROCS), share b.N attempts
//     through an atomic counter;
//   - ns/op is overridden with elapsed time / successful operations, so
//     benchstat's sec/op (and the README table made from it) is the cost of
//     one operation that did its work: an implementation that fails fast
//     under contention does not look faster for it;
//   - errors/op is failed attempts / attempts, ok-ops/s the successes per
//     second, and p50-µs, p99-µs, p99.9-µs, max-µs the latency of successes
//     (p99.9 because a pool that starves a few callers in its busy handler
//     shows a low p99 and a high tail, and a fair queue the opposite);
//   - the proxy must not fail at all: any error is a benchmark failure.
//
// Every database/sql pool keeps as many idle connections as there are
// goroutines (database/sql keeps 2 by default), so that mattn is measured
// on its locking, not on reopening SQLite connections, and the proxy's
// logical connections are treated the same way.

// concOp is one attempt of a goroutine; rng is that goroutine's own.
type concOp func(tg benchTarget, rng *rand.Rand) error

// concGroup is a set of goroutines doing the same operation.
type concGroup struct {
	name string // metric prefix ("" when there is a single group)
	n    int    // goroutines
	op   concOp
}

func insertOp(tg benchTarget, _ *rand.Rand) error {
	_, err := tg.db.ExecContext(tg.ctx, `INSERT INTO bench (name, value) VALUES ('w', 1)`)
	return err
}

// insertArgsOp is insertOp with its values as arguments: the form ORMs and
// query builders send, for which mattn keeps the statement prepared
// (_stmt_cache_size) on every side.
func insertArgsOp(tg benchTarget, rng *rand.Rand) error {
	_, err := tg.db.ExecContext(tg.ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`, "w", rng.IntN(1000))
	return err
}

func txOp(tg benchTarget, _ *rand.Rand) error { return readThenWrite(tg) }

func pointReadOp(tg benchTarget, rng *rand.Rand) error {
	var name string
	var value int
	return tg.db.QueryRowContext(tg.ctx, `SELECT name, value FROM bench WHERE id = ?`, rng.IntN(1000)+1).Scan(&name, &value)
}

// runConc runs the groups' goroutines until b.N attempts, all groups
// together, have been made, and reports the metrics described above: per
// group with its name as prefix when there are several, and ns/op and
// errors/op over all of them.
func runConc(b *testing.B, tg benchTarget, groups ...concGroup) {
	b.ReportAllocs()
	var workers []benchrun.Attempt
	for gi, g := range groups {
		for w := range g.n {
			rng := rand.New(rand.NewPCG(uint64(gi), uint64(w)))
			workers = append(workers, func(int64) (int, error) { return gi, g.op(tg, rng) })
		}
	}
	tg.db.SetMaxIdleConns(len(workers))
	defer tg.db.SetMaxIdleConns(2)
	res := benchrun.Run(b, len(groups), workers)

	var ok int
	for gi, g := range groups {
		ls := res.Latencies(gi)
		ok += len(ls)
		prefix := ""
		if g.name != "" {
			prefix = g.name + "-"
		}
		res.ReportLatencies(b, prefix, ls)
		if err := res.FirstErr[gi]; err != nil {
			what := "attempts"
			if g.name != "" {
				what = g.name + " attempts"
			}
			if tg.name == "proxy" {
				b.Errorf("impl=proxy: %s failed (%d failures of %d attempts in all); first: %v", what, b.N-ok, b.N, err)
			} else {
				b.Logf("impl=%s: %s failed; first: %v", tg.name, what, err)
			}
		}
	}
	res.ReportTotals(b, ok)
}

// benchWriters: n goroutines write one tenant, at synchronous NORMAL and
// FULL. op=insert is one INSERT; op=tx a read-then-write transaction
// (readThenWrite: SELECT the latest value, INSERT it plus one), where a
// deferred transaction in a mattn-defaults pool must upgrade its read lock
// and may get SQLITE_BUSY at once, busy_timeout or not.
func benchWriters(b *testing.B, n int) {
	for _, syncMode := range []string{"NORMAL", "FULL"} {
		targets := benchTargetsSync(b, syncMode)
		for _, op := range []struct {
			name string
			fn   concOp
		}{{"insert", insertOp}, {"insert-args", insertArgsOp}, {"tx", txOp}} {
			for _, tg := range targets {
				b.Run("op="+op.name+"/sync="+syncMode+"/impl="+tg.name, func(b *testing.B) {
					runConc(b, tg, concGroup{n: n, op: op.fn})
				})
			}
		}
	}
}

// BenchmarkWriters8: 8 goroutines writing one tenant: the proxy's Go-level
// writer queue against mattn pools that rely on busy_timeout.
func BenchmarkWriters8(b *testing.B) { benchWriters(b, 8) }

// BenchmarkWriters64: as BenchmarkWriters8 with 64 goroutines.
func BenchmarkWriters64(b *testing.B) { benchWriters(b, 64) }

// BenchmarkMixed: 8 goroutines reading one row by primary key and 2
// inserting, on one tenant at synchronous=NORMAL (the proxy's default) on
// every side. Reads and writes are
// reported separately (reads-ok-ops/s, writes-p99-µs, ...); ns/op is over
// both.
func BenchmarkMixed(b *testing.B) {
	mixed := func(tg benchTarget) func(b *testing.B) {
		return func(b *testing.B) {
			runConc(b, tg,
				concGroup{name: "reads", n: 8, op: pointReadOp},
				concGroup{name: "writes", n: 2, op: insertOp})
		}
	}
	for _, tg := range benchTargetsSync(b, "NORMAL") {
		b.Run("readers=8/writers=2/impl="+tg.name, mixed(tg))
	}
	// With a reader for each reading goroutine, as mattn's pool has, the
	// readers never wait and keep both processors busy without blocking:
	// the writes' batch leaders must not wait for a turn on a processor
	// (groupcommit.go, gather).
	p := newTestProxy(b, Config{Migrations: []string{benchSchema}, Synchronous: "NORMAL", ReadersPerTenant: 8})
	tg := benchTarget{"proxy", p.DB, WithOrgID(context.Background(), "bench")}
	fillBench(b, tg, "NORMAL")
	b.Run("readers=8/writers=2/readers-per-tenant=8/impl=proxy", mixed(tg))
}

// singleWriter returns one goroutine's insert into a tenant of a proxy of
// its own with group commit in mode.
func singleWriter(b *testing.B, mode GroupCommitMode) func(i int) error {
	p := newTestProxy(b, Config{Migrations: []string{benchSchema}, GroupCommit: mode})
	ctx := WithOrgID(context.Background(), "bench")
	if _, err := p.ExecContext(ctx, `INSERT INTO bench (name, value) VALUES ('warm', 0)`); err != nil {
		b.Fatal(err)
	}
	return func(i int) error {
		_, err := p.ExecContext(ctx, `INSERT INTO bench (name, value) VALUES (?, ?)`, "row", i)
		return err
	}
}

// BenchmarkGroupCommitSingleWriter: one goroutine inserting into one
// tenant, group commit on and off, side by side (the target: on within
// ±3 % of off: an uncontended write must not pay for group commit).
func BenchmarkGroupCommitSingleWriter(b *testing.B) {
	for _, mode := range []GroupCommitMode{GroupCommitOff, GroupCommitOn} {
		name := map[GroupCommitMode]string{GroupCommitOff: "off", GroupCommitOn: "on"}[mode]
		b.Run("group_commit="+name, func(b *testing.B) {
			insert := singleWriter(b, mode)
			errs := 0
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if insert(i) != nil {
					errs++
				}
			}
			b.ReportMetric(float64(errs)/float64(b.N), "errors/op")
			if errs > 0 {
				b.Errorf("%d errors", errs)
			}
		})
	}
}

// BenchmarkGroupCommitSingleWriterPaired is BenchmarkGroupCommitSingleWriter
// with off and on taken in turn within each op (pairedBlocks): ns/op is
// on's time per insert, off-ns/op off's, and x-on-vs-off their ratio (the
// target: within ±3 %).
func BenchmarkGroupCommitSingleWriterPaired(b *testing.B) {
	off, on := pairedBlocks(b, "off", [2]func(int) error{singleWriter(b, GroupCommitOff), singleWriter(b, GroupCommitOn)})
	b.ReportMetric(on/off, "x-on-vs-off")
}
