//go:build linux

package replication_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqliteproxy/sqliteproxy/sqliteproxytest"
)

type spyCall struct {
	at       time.Time
	endpoint string
	path     string
}

// bodySpy is spySocket recording each call: when, its endpoint and the
// tenant file it names.
func bodySpy(t *testing.T, real string) (string, func() []spyCall) {
	var mu sync.Mutex
	var calls []spyCall
	sock := spySocket(t, real, func(endpoint, file string) {
		mu.Lock()
		calls = append(calls, spyCall{time.Now(), endpoint, file})
		mu.Unlock()
	})
	return sock, func() []spyCall {
		mu.Lock()
		defer mu.Unlock()
		return append([]spyCall(nil), calls...)
	}
}

// During an object-store outage the eviction of tenant y does not wait for
// a SyncTenant of another tenant x (the Litestream calls about a file are
// ordered per file). With locks striped over tenants (one in 256 shared
// x's), the eviction waited out x's sync, its /unregister ran out of time
// unsent, Litestream went on streaming y, y was marked unsynced and Close
// named it (adv23).
func TestProxy_EvictionDoesNotWaitForAnotherTenantsSync(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 2)
	cfg.ReadersPerTenant = -1
	sock, calls := bodySpy(t, g.ls.SocketPath)
	cfg.LitestreamSocket = sock
	p := sqliteproxytest.New(t, cfg)
	xp, _ := p.TenantPath("x")
	// y as the striped locks (fnv-32a of the path, 256 stripes) paired it
	// with x: a regression to them fails here.
	stripe := func(p string) uint32 {
		h := fnv.New32a()
		h.Write([]byte(p))
		return h.Sum32() % 256
	}
	y := ""
	for i := range 10000 {
		id := fmt.Sprintf("y%d", i)
		if yp, _ := p.TenantPath(id); stripe(yp) == stripe(xp) {
			y = id
			break
		}
	}
	yp, _ := p.TenantPath(y)
	// z exists, closed.
	insert(t, p, "z", "z")
	insert(t, p, "w", "w")
	insert(t, p, y, "y")
	insertSynced(t, p, "x", "x")
	if err := p.SyncTenant(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	g.s3.Stop()
	insert(t, p, "x", "x2")
	// a sync fails now: failedAt is recent, y's release skips its own sync
	done := make(chan error, 1)
	go func() { done <- p.SyncTenant(context.Background(), "x") }()
	sqliteproxytest.WaitFor(t, 10*time.Second, "x's sync at Litestream", func() bool {
		for _, c := range calls() {
			if c.endpoint == "/sync" && c.path == xp {
				return true
			}
		}
		return false
	})
	for _, ts := range p.Stats().Tenants {
		t.Logf("before z: %s open=%d inuse=%d", ts.ID, ts.Open, ts.InUse)
	}
	// evict y: open z (the budget is 2: y and x are open, y is the LRU)
	start := time.Now()
	zdone := make(chan error, 1)
	go func() {
		_, err := p.ExecContext(sqliteproxytest.Context(t, "z"), `SELECT 1`)
		zdone <- err
	}()
	zerr := <-zdone
	took := time.Since(start)
	xerr := <-done
	t.Logf("z's open (evicting %s): %v after %v; x's SyncTenant: %v", y, zerr, took.Round(time.Millisecond), xerr)
	for _, c := range calls() {
		if c.at.After(start.Add(-time.Second)) {
			t.Logf("+%v %s %s", c.at.Sub(start).Round(time.Millisecond), c.endpoint, filepath.Base(c.path))
		}
	}
	var bad []string
	if slices.Contains(g.registered(t), y) {
		bad = append(bad, "Litestream still streams "+y+" (its /unregister was never sent)")
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(yp), "."+y+".db-unsynced")); err == nil {
		bad = append(bad, y+" is marked unsynced, though nothing of it was left to upload")
	}
	if took > 6*time.Second {
		bad = append(bad, fmt.Sprintf("the eviction of %s took %v (README: each tenant evicted during the outage waited up to 5 s for its own)", y, took.Round(time.Millisecond)))
	}
	if len(bad) > 0 {
		t.Fatalf("x's SyncTenant held the eviction of %s: %q", y, bad)
	}
	g.s3.Restart()
	if err := p.Close(); err != nil && strings.Contains(err.Error(), y+",") {
		t.Errorf("Close names %s, whose last commit is in the replica: %v", y, err)
	}
}

// During a long outage resync keeps asking the store before it opens a
// closed unsynced tenant: a round that found it down did not count as a
// failure, and once the last failed sync was 10 s old every such tenant was
// opened and registered again (each sync failing after seconds), every
// ~17 s (adv23). Watched for 25 s: past two probe windows.
func TestProxy_ResyncKeepsProbingDuringLongOutage(t *testing.T) {
	g := newRig(t, "s3")
	cfg := g.config(t, 10)
	cfg.IdleTimeout = 200 * time.Millisecond
	sock, calls := bodySpy(t, g.ls.SocketPath)
	cfg.LitestreamSocket = sock
	p := sqliteproxytest.New(t, cfg)
	insertSynced(t, p, "acme", "a")
	g.s3.Stop()
	insert(t, p, "acme", "b")
	sqliteproxytest.WaitFor(t, 30*time.Second, "acme closed as idle", func() bool { return p.Stats().OpenTenants == 0 })
	start := time.Now()
	registered := func() int {
		n := 0
		for _, c := range calls() {
			if c.endpoint == "/register" && c.at.After(start) {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(25 * time.Second)
	for time.Now().Before(deadline) && registered() == 0 {
		time.Sleep(100 * time.Millisecond) // watching for something that must not happen
	}
	if n := registered(); n > 0 {
		t.Fatalf("the closed unsynced tenant was opened and registered %d times in %v of outage", n, time.Since(start).Round(time.Second))
	}
	g.s3.Restart()
	want := []string{"a", "b"}
	sqliteproxytest.WaitFor(t, 60*time.Second, "resync to upload acme once the store is back", func() bool {
		return slices.Equal(g.replicaNames(t, "acme"), want)
	})
}
