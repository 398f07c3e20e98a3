//go:build linux

package replication_test

import (
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/replication/harness"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

var long = flag.Bool("replication.long", false, "run the loss-window measurement at full size (200 tenants, 20 cycles, nodes living up to 15 s)")

// Litestream streams only open tenants: while 1 000 tenants are cycled
// through a small budget by several goroutines, GET /list never shows more
// databases than the budget allows open, and Litestream's descriptors and
// goroutines stay bounded by it; after Close it streams nothing.
func TestProxy_LitestreamBoundedByBudget(t *testing.T) {
	tenants, budget := 1000, 50 // the size
	g := newRig(t, "file")
	p := sqliteproxytest.New(t, g.config(t, budget))
	g0, f0 := litestreamCost(t, g.ls)

	var maxListed, samples atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // sampler
		for {
			select {
			case <-stop:
				return
			default:
			}
			dbs, err := g.ls.Client.List()
			if err != nil {
				t.Error(err)
				return
			}
			samples.Add(1)
			for n := int64(len(dbs)); ; {
				m := maxListed.Load()
				if n <= m || maxListed.CompareAndSwap(m, n) {
					break
				}
			}
		}
	})
	start := time.Now()
	var next atomic.Int64
	var workers sync.WaitGroup
	for range 4 {
		workers.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= 2*tenants || t.Failed() {
					return
				}
				id := fmt.Sprintf("t%04d", i%tenants) // every tenant twice: created, then reopened
				if _, err := p.ExecContext(sqliteproxytest.Context(t, id), `INSERT INTO events (name) VALUES ('x')`); err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
			}
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	g1, f1 := litestreamCost(t, g.ls)
	t.Logf("%d tenants twice through a budget of %d in %v (%.1f ms per open); /list sampled %d times, at most %d databases; litestream goroutines %d -> %d, fds %d -> %d",
		tenants, budget, elapsed.Round(time.Millisecond), float64(elapsed.Milliseconds())/float64(2*tenants), samples.Load(), maxListed.Load(), g0, g1, f0, f1)
	if m := maxListed.Load(); m > int64(budget) {
		t.Errorf("Litestream streamed %d databases at once; the budget allows %d open", m, budget)
	}
	if g1-g0 > 8*budget || f1-f0 > 8*budget {
		t.Errorf("Litestream grew by %d goroutines and %d descriptors for a budget of %d", g1-g0, f1-f0, budget)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := g.registered(t); len(got) != 0 {
		t.Errorf("after Close Litestream streams %v", got)
	}
}

func litestreamCost(t *testing.T, ls *harness.Litestream) (goroutines, fds int) {
	t.Helper()
	g, err := ls.Client.Goroutines()
	if err != nil {
		t.Fatal(err)
	}
	fds, _, _, err = harness.ProcStats(ls.PID())
	if err != nil {
		t.Fatal(err)
	}
	return g, fds
}
