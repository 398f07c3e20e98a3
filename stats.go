package sqliteproxy

import (
	"slices"
	"strings"
	"time"
)

// Stats is a snapshot of the proxy's connection figures.
type Stats struct {
	OpenConnections int   // SQLite connections open (counted against MaxConnections)
	MaxConnections  int   // the cap
	OpenTenants     int   // tenants with at least one open connection
	Evictions       int64 // tenants closed to free budget, for idleness, for a drain or at Close
	// Unwatched counts tenant opens whose file could not be watched for a
	// deletion or replacement while open: on Linux, past the kernel's
	// inotify limits (fs.inotify.max_user_watches, max_user_instances; see
	// README, Hardening). Such a change then goes unnoticed until the
	// tenant closes. Elsewhere than on Linux nothing is watched, and
	// nothing is counted.
	Unwatched int64
	Waits     int64         // times a caller waited for a connection slot (the budget) or for one of a tenant's readers; not waits for a tenant's writer, which the metric sqliteproxy.connection.wait.duration (role=writer) counts
	Tenants   []TenantStats // the open tenants, sorted by ID
}

// TenantStats describes one tenant with open connections.
type TenantStats struct {
	ID       string
	Open     int       // connections open
	InUse    int       // connections leased
	LastUsed time.Time // last time a lease ended (10 ms resolution)
	// ReplicaLag, with replication on, is how long the replica has been
	// seen behind the tenant: 0 when it held everything at the last check
	// (every 5 s, and at each SyncTenant).
	ReplicaLag time.Duration
}

// Stats returns current figures.
func (p *Proxy) Stats() Stats { return p.c.r.stats() }

// stats is the snapshot behind Proxy.Stats and the telemetry gauges.
func (r *router) stats() Stats {
	b := r.budget
	b.mu.Lock()
	st := Stats{
		OpenConnections: b.open,
		MaxConnections:  b.max,
		OpenTenants:     len(b.nopen),
		Evictions:       b.evictions.Load(),
		Waits:           b.waits.Load(),
		Unwatched:       r.unwatched.Load(),
	}
	open := make(map[*tenant]int, len(b.nopen))
	for t, n := range b.nopen {
		open[t] = n
	}
	b.mu.Unlock()
	for t, n := range open { // tenant locks come before budget.mu: take them now
		t.mu.Lock()
		inUse := t.leasedReaders - t.parkedLocked()
		t.mu.Unlock()
		if t.wsem.held.Load() {
			inUse++
		}
		// A writer semaphore held while its holder waits for a slot to
		// open the writer leases no connection: never more in use than open.
		inUse = min(inUse, n)
		ts := TenantStats{ID: t.id, Open: n, InUse: inUse, LastUsed: b.epoch.Add(time.Duration(t.lastUsed.Load()))}
		if since := t.lagSince.Load(); since != 0 {
			ts.ReplicaLag = time.Since(time.Unix(0, since))
		}
		st.Tenants = append(st.Tenants, ts)
	}
	slices.SortFunc(st.Tenants, func(a, b TenantStats) int { return strings.Compare(a.ID, b.ID) })
	return st
}
