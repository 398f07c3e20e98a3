package sqliteproxy

import (
	"sync"
	"sync/atomic"
)

// Retention: how many idle tenants stay open. MaxConnections caps the
// connections; up to it, a tenant left idle stays open for its next use
// (until IdleTimeout), and the least recently used is closed when a slot
// is needed. That cache is worth keeping only if tenants come back while
// they are open: every open connection makes each open and close of the
// process dearer (mattn's Close walks the callback handles of every
// connection; SQLite's open walks its list of open files; more memory
// mapped and allocated), and a working set that churns through many more
// tenants than the cap finds its tenant open 1 % of the time while paying
// 2.3 × a lone cold open's CPU for each (ManyTenants, uniform over 10 000
// tenants, cap 100: 3 000 operations a second against 4 650 with a cap
// of 10, README).
//
// So while tenants churn (a tenant opened when the proxy holds `soft`
// connections or more), the proxy measures, over windows of retainWindow
// cold opens: the share of leases that found their tenant open (hits),
// and the share of cold opens whose tenant it had closed for retention a
// moment before (ghost hits: those a larger cache would have served). It
// halves soft, down to retainMin, while hits stay under retainShrinkBelow,
// and doubles it, up to MaxConnections, when ghost hits reach
// retainGrowAt. A cold open that leaves more than soft connections open
// closes the least recently used idle tenants down to soft. The two
// measures cannot make it swing: if under a tenth of leases hit with the
// whole cap, no smaller cache loses more than about a tenth of its misses
// to ghosts. A workload that fits the cap never churns and is never
// trimmed; one with a hot set (Zipf) keeps the cap.
type retention struct {
	soft atomic.Int64 // connections kept open at most while churning; MaxConnections when not trimming
	// churning is set while cold opens find soft reached; leases are
	// counted only then (one atomic add per lease, none otherwise).
	churning atomic.Bool
	leases   atomic.Int64

	mu        sync.Mutex
	misses    int                 // cold opens in this window
	ghostHits int                 // of which on a ghost
	ghost     []string            // IDs last closed for retention, a ring of MaxConnections (≥ 1)
	next      int                 // where the full ring writes next
	ghosts    map[string]struct{} // the IDs in ghost
	ghostMax  int                 // the ring's size once full: MaxConnections
}

const (
	retainWindow      = 128  // cold opens per decision
	retainMin         = 8    // soft never goes below (nor above MaxConnections)
	retainShrinkBelow = 0.10 // share of leases that found their tenant open
	retainGrowAt      = 0.30 // share of cold opens that were ghost hits
)

func newRetention(max int) *retention {
	// The ring grows as tenants close, up to max: allocated up front, a
	// MaxConnections meant as "no cap" (math.MaxInt32) took gigabytes in
	// New, or killed the process.
	rt := &retention{ghostMax: max, ghosts: map[string]struct{}{}}
	rt.soft.Store(int64(max))
	return rt
}

// leased counts a lease for the hit rate, while churning.
func (rt *retention) leased() {
	if rt.churning.Load() {
		rt.leases.Add(1)
	}
}

// coldOpened is called after a lease opened t, which had no connection
// open: it counts the miss, adapts soft at the end of a window, and
// closes the least recently used idle tenants beyond soft.
func (r *router) coldOpened(t *tenant) {
	rt, b := r.retain, r.budget
	open, soft := b.openCount(), int(rt.soft.Load())
	rt.mu.Lock()
	if open >= soft {
		rt.churning.Store(true)
	}
	if rt.churning.Load() {
		rt.misses++
		if _, ok := rt.ghosts[t.id]; ok {
			rt.ghostHits++
		}
		if rt.misses >= retainWindow {
			soft = rt.decideLocked(b.max)
		}
	}
	rt.mu.Unlock()
	for open > soft {
		v := r.evictLRU(b.openTenants(), nil, t, evictRetention)
		if v == nil {
			return // everything else is in use
		}
		rt.rememberClosed(v.id)
		open = b.openCount()
	}
}

// decideLocked ends a window: it returns the new soft cap.
func (rt *retention) decideLocked(capMax int) int {
	leases := rt.leases.Swap(0)
	soft := int(rt.soft.Load())
	hits := 1 - float64(rt.misses)/float64(max(leases, int64(rt.misses)))
	ghostShare := float64(rt.ghostHits) / float64(rt.misses)
	switch {
	case ghostShare >= retainGrowAt && soft < capMax:
		soft = min(capMax, 2*soft)
	case hits < retainShrinkBelow && soft > retainMin:
		soft = max(min(capMax, retainMin), soft/2)
	}
	if soft == capMax && ghostShare == 0 {
		// The whole cap again (nothing is trimmed at the cap), and
		// nothing to learn.
		rt.churning.Store(false)
	}
	rt.soft.Store(int64(soft))
	rt.misses, rt.ghostHits = 0, 0
	return soft
}

// rememberClosed records id as closed for retention (a ghost).
func (rt *retention) rememberClosed(id string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if _, ok := rt.ghosts[id]; ok {
		return
	}
	if len(rt.ghost) < rt.ghostMax {
		rt.ghost = append(rt.ghost, id)
	} else {
		delete(rt.ghosts, rt.ghost[rt.next])
		rt.ghost[rt.next] = id
		rt.next = (rt.next + 1) % len(rt.ghost)
	}
	rt.ghosts[id] = struct{}{}
}
