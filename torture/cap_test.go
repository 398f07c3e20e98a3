package torture

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy"
	"github.com/sqliteproxy/sqliteproxy/internal/fdcount"
	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestCap puts many tenants, 8 goroutines each (64 tenants in the working
// set at a time), on a budget of 32 connections: the open tenant files (sampled in /proc/self/fd) never
// exceed the cap, nothing fails, every insert is there, waits stay
// bounded, and closing the proxy leaves no goroutine behind.
func TestCap(t *testing.T) {
	if !fdcount.Supported() {
		t.Skip("needs /proc/self/fd")
	}
	f := newFigures(t)
	const (
		limit     = 32
		perTenant = 8
	)
	tenants := pick(200, 1000)
	opsEach := pick(4, 8)
	// Tenants in the working set at once: 32 (64 in the long run) tenants x
	// 8 goroutines want far more than 32 connections (each tenant up to 5),
	// but not so many that waits grow with the fleet (waiters are served in
	// no particular order), and well below the race detector's limit of
	// 8128 live goroutines. The short run is lighter because `go test ./...`
	// runs it beside other packages on two cores.
	active := pick(32, 64)
	// The longest wait for a connection (the proxy's own wait histogram)
	// must stay below waitBound; an operation may wait more than once (a
	// slot, then a reader) and do its own work, so it gets twice that.
	const waitBound = 5 * time.Second

	dir := t.TempDir()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	p := sqliteproxytest.New(t, sqliteproxy.Config{Dir: dir, MaxConnections: limit, MeterProvider: mp, MetricsTenantLimit: -1,
		Migrations: []string{`CREATE TABLE events (id INTEGER PRIMARY KEY, g INTEGER NOT NULL, v TEXT NOT NULL)`}})
	rdir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}

	// The sampler: /proc/self/fd is not an atomic snapshot, so a count
	// above the cap is confirmed by a second sample before it counts.
	stop := make(chan struct{})
	var maxSeen, samples, overCap, unconfirmed atomic.Int64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := fdcount.Count(rdir, ".db")
			if n > limit {
				if n2 := fdcount.CountStable(rdir, ".db"); n2 > limit {
					overCap.Add(1)
					t.Errorf("%d then %d tenant files open, cap %d", n, n2, limit)
					n = n2
				} else {
					unconfirmed.Add(1)
					n = n2
				}
			}
			samples.Add(1)
			if int64(n) > maxSeen.Load() {
				maxSeen.Store(int64(n))
			}
			time.Sleep(200 * time.Microsecond)
		}
	})

	inserted := make([]atomic.Int64, tenants)
	var maxOp atomic.Int64
	worker := func(ti, w int) {
		id := fmt.Sprintf("t%04d", ti)
		ctx, cancel := context.WithTimeout(sqliteproxy.WithOrgID(context.Background(), id), 2*time.Minute)
		defer cancel()
		for i := range opsEach {
			opStart := time.Now()
			n, err := capOp(ctx, p.DB, (w+i)%4, w)
			if d := int64(time.Since(opStart)); d > maxOp.Load() {
				maxOp.Store(d)
			}
			f.ops.Add(1)
			if err != nil {
				f.fail(t, "tenant %s, worker %d, op %d: %v", id, w, i, err)
				return
			}
			inserted[ti].Add(int64(n))
		}
	}
	// A rolling working set: `active` tenants (8 goroutines each) at a
	// time, the next tenant starting as one finishes, until every tenant
	// has had its turn.
	slots := make(chan struct{}, active)
	var wg sync.WaitGroup
	start := time.Now()
	for ti := range tenants {
		slots <- struct{}{}
		var group sync.WaitGroup
		for w := range perTenant {
			group.Go(func() { worker(ti, ti*perTenant+w) })
		}
		wg.Go(func() {
			group.Wait()
			<-slots
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	sampler.Wait()
	f.cycles.Add(1)

	st := p.Stats()
	if st.OpenConnections > limit {
		f.fail(t, "Stats: %d connections open, cap %d", st.OpenConnections, limit)
	}
	if m := maxSeen.Load(); m > limit {
		f.fail(t, "up to %d tenant files open, cap %d", m, limit)
	}
	// Every insert is there.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for ti := range tenants {
		id := fmt.Sprintf("t%04d", ti)
		var n int64
		if err := p.QueryRowContext(sqliteproxy.WithOrgID(ctx, id), `SELECT count(*) FROM events`).Scan(&n); err != nil {
			f.fail(t, "%s: %v", id, err)
			continue
		}
		if want := inserted[ti].Load(); n != want {
			f.lost.Add(want - n)
			f.fail(t, "%s: %d rows, %d inserted", id, n, want)
		}
	}
	maxWait, waits := waitFigures(t, reader)
	if maxWait > waitBound {
		f.fail(t, "longest wait for a connection %v, bound %v", maxWait, waitBound)
	}
	if d := time.Duration(maxOp.Load()); d > 2*waitBound {
		f.fail(t, "slowest operation %v, bound %v", d, 2*waitBound)
	}
	f.note("%d tenants x %d goroutines x %d ops (%d tenants at a time) in %v (%.0f ops/s); max .db fds %d (cap %d) over %d samples, %d unconfirmed over-cap samples; %d evictions; %d waits, longest %v (sqliteproxy.connection.wait.duration max); slowest operation %v",
		tenants, perTenant, opsEach, active, elapsed.Round(time.Millisecond), float64(f.ops.Load())/elapsed.Seconds(),
		maxSeen.Load(), limit, samples.Load(), unconfirmed.Load(), st.Evictions, waits, maxWait.Round(time.Millisecond),
		time.Duration(maxOp.Load()).Round(time.Millisecond))

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := mp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 50 { // closing is done when Close returns; the fds follow at once
		if fdcount.Count(rdir, ".db") == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := fdcount.Count(rdir, ".db"); n != 0 {
		f.fail(t, "%d tenant files still open after Close", n)
	}
	verifyNoLeaks(t)
}

// capOp runs one operation of kind k and returns the rows it inserted.
func capOp(ctx context.Context, db *sql.DB, k, w int) (int, error) {
	switch k {
	case 0:
		_, err := db.ExecContext(ctx, `INSERT INTO events (g, v) VALUES (?, 'insert')`, w)
		return 1, err
	case 1:
		var n int
		return 0, db.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n)
	case 2:
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		defer tx.Rollback()
		for range 2 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (g, v) VALUES (?, 'tx')`, w); err != nil {
				return 0, err
			}
		}
		return 2, tx.Commit()
	default:
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return 0, err
		}
		defer tx.Rollback()
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE v = 'tx'`).Scan(&n); err != nil {
			return 0, err
		}
		return 0, tx.Commit()
	}
}

// waitFigures reads the proxy's wait histogram (sqliteproxy.connection.wait.duration):
// the longest wait recorded and the number of waits.
func waitFigures(t *testing.T, r *sdkmetric.ManualReader) (time.Duration, uint64) {
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var longest float64
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sqliteproxy.connection.wait.duration" {
				continue
			}
			h, ok := m.Data.(metricdata.Histogram[float64])
			if !ok {
				continue
			}
			for _, dp := range h.DataPoints {
				n += dp.Count
				if v, ok := dp.Max.Value(); ok && v > longest {
					longest = v
				}
			}
		}
	}
	return time.Duration(longest * float64(time.Second)), n
}
