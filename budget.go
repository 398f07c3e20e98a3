package sqliteproxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
)

// budget counts the SQLite connections open across all tenants against
// Config.MaxConnections. A connection is counted from the moment a slot is
// reserved for it (before it is opened) until its tenant is closed as a
// whole: in WAL mode a connection closed while others of its file are open
// keeps its descriptor parked until the last one closes, so slots are freed
// per tenant, not per connection.
//
// Everything that decides which tenant is closed to make room, and when,
// is in this file: the reservation that evicts, the idle reaper, and the
// reasons they give.
type budget struct {
	max int // Config.MaxConnections

	mu     sync.Mutex      // guards open, nopen, wakeCh, closed, liveIDs and twoLive
	open   int             // connections counted, all tenants
	nopen  map[*tenant]int // connections counted per tenant; a tenant with none has no entry
	wakeCh chan struct{}   // closed and replaced when a slot, a reader or the writer may have come free
	closed bool
	// liveIDs, set by tests only, maps each tenant ID to its object while
	// connections are counted for it; a second object counted for an ID
	// at the same time is counted in twoLive.
	liveIDs map[string]*tenant
	twoLive int

	waiters   atomic.Int32 // goroutines waiting on wakeCh; releases wake them only when > 0
	evictions atomic.Int64
	waits     atomic.Int64

	epoch time.Time    // clock readings count from here
	clock atomic.Int64 // nanoseconds since epoch, advanced every clockTick by the router's background goroutine
}

func newBudget(max int) *budget {
	b := &budget{max: max, nopen: make(map[*tenant]int), wakeCh: make(chan struct{}), epoch: time.Now()}
	b.readClock()
	return b
}

// evictReason says why a tenant's connections were closed; it is the
// sqliteproxy.eviction.reason attribute of the evictions metric.
type evictReason uint8

const (
	evictBudget    evictReason = iota // a slot was needed for another connection
	evictIdle                         // unused for longer than Config.IdleTimeout
	evictClose                        // the proxy is closing
	evictDelete                       // DeleteTenant drained it
	evictRestore                      // RestoreTenant drained it
	evictMigrate                      // MigrateAll opened it only to migrate it, or Rollback changed its schema under it
	evictLeaseLost                    // this node's lease on it ended (Config.Ownership)
	evictFanOut                       // a fan-out query (WithFanOut) opened it only to read it
	evictRetention                    // idle while tenants churn, and the cache of open tenants was not paying (retention.go)
	evictFileMoved                    // its file was deleted, moved or replaced while open, not through the proxy (filewatch.go)
	numEvictReasons
)

var evictReasonNames = [numEvictReasons]string{"budget", "idle", "close", "delete", "restore", "migrate", "lease_lost", "fan_out", "retention", "file_moved"}

func (r evictReason) String() string { return evictReasonNames[r] }

// clockTick is the resolution of the coarse clock behind lastUsed stamps:
// reading the real clock on every release costs ~40 ns.
const clockTick = 10 * time.Millisecond

// now is the coarse monotonic time used for lastUsed stamps.
func (b *budget) now() int64 { return b.clock.Load() }

func (b *budget) readClock() { b.clock.Store(int64(time.Since(b.epoch))) }

// waitCh registers the caller as a waiter and returns the channel that the
// next wake closes. The caller must re-check its condition after this call
// and then call unwait.
func (b *budget) waitCh() chan struct{} {
	b.waiters.Add(1)
	b.mu.Lock()
	ch := b.wakeCh
	b.mu.Unlock()
	return ch
}

func (b *budget) unwait() { b.waiters.Add(-1) }

// wake wakes every waiter, if there is any; cheap when there is none.
func (b *budget) wake() {
	if b.waiters.Load() == 0 {
		return
	}
	b.mu.Lock()
	b.wakeLocked()
	b.mu.Unlock()
}

func (b *budget) wakeLocked() {
	close(b.wakeCh)
	b.wakeCh = make(chan struct{})
}

// tryReserve counts one more connection for t if the budget allows it.
func (b *budget) tryReserve(t *tenant) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false, ErrClosed
	}
	if b.open >= b.max {
		return false, nil
	}
	b.reserveLocked(t)
	return true, nil
}

func (b *budget) reserveLocked(t *tenant) {
	b.open++
	b.nopen[t]++
	if t.counted.Add(1) == 1 {
		t.opens.Add(1)
	}
	if b.liveIDs != nil {
		if o := b.liveIDs[t.id]; o != nil && o != t {
			b.twoLive++
		}
		b.liveIDs[t.id] = t
	}
}

// uncountLocked forgets t's counted connections.
func (b *budget) uncountLocked(t *tenant) {
	delete(b.nopen, t)
	t.counted.Store(0)
	if b.liveIDs != nil && b.liveIDs[t.id] == t {
		delete(b.liveIDs, t.id)
	}
}

// unreserve gives back the slot of a connection that failed to open or was
// closed alone. While other connections of t are open, SQLite may keep the
// closed descriptor parked until the last one closes (POSIX locks are per
// process and file), so the slot stays counted until t is closed as a whole.
// Called under the same lease that reserved, so no eviction interleaves.
func (b *budget) unreserve(t *tenant) {
	b.mu.Lock()
	if b.nopen[t] == 1 {
		b.open--
		b.uncountLocked(t)
		b.wakeLocked()
	}
	b.mu.Unlock()
}

// freeAll gives back every slot of t, whose connections are all closed.
func (b *budget) freeAll(t *tenant) {
	b.mu.Lock()
	b.open -= b.nopen[t]
	b.uncountLocked(t)
	b.wakeLocked()
	b.mu.Unlock()
}

// openCount returns how many connections are counted, all tenants.
func (b *budget) openCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

// counted returns how many connections are counted for t.
func (b *budget) counted(t *tenant) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nopen[t]
}

// close makes every later reservation fail with ErrClosed and wakes the
// waiters; it returns the tenants with counted connections, to be closed.
func (b *budget) close() (open []*tenant, already bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, true
	}
	b.closed = true
	b.wakeLocked()
	return b.lruLocked(), false
}

// lruLocked returns the tenants with open connections, least recently used first.
func (b *budget) lruLocked() []*tenant {
	cands := b.openLocked()
	slices.SortFunc(cands, func(a, b *tenant) int {
		return int(a.lastUsed.Load() - b.lastUsed.Load())
	})
	return cands
}

func (b *budget) lru() []*tenant {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lruLocked()
}

// openLocked returns the tenants with open connections, in no order:
// evictOne picks from them without sorting them all (an eviction usually
// closes the first it tries, and sorting a hundred tenants under the
// budget's lock for each was ~2 % of a churning working set's CPU).
func (b *budget) openLocked() []*tenant {
	cands := make([]*tenant, 0, len(b.nopen))
	for t := range b.nopen {
		cands = append(cands, t)
	}
	return cands
}

func (b *budget) openTenants() []*tenant {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.openLocked()
}

// reserve counts one more connection for t, waiting for a slot if needed
// and evicting the least recently used idle tenant to make one. The caller
// holds t's writer semaphore, which lets t itself be evicted when its
// readers are all idle (its writer is then taken to be the caller's, and
// closed: a caller without it closed a writer in use, adv29).
func (r *router) reserve(ctx context.Context, t *tenant) error {
	return r.reserveBy(ctx, t, time.Time{})
}

// reserveBy is reserve for a call whose wait began earlier: a ctx without
// a deadline waits until deadline (when not zero), not BusyTimeout from
// now (a write waited for the writer, then as long again for a slot).
func (r *router) reserveBy(ctx context.Context, t *tenant, deadline time.Time) error {
	b := r.budget
	if ok, err := b.tryReserve(t); ok || err != nil {
		return err
	}
	start := time.Now()
	wctx, cancel := r.boundWaitBy(ctx, deadline)
	defer cancel()
	var err error
	waited := false // a slot made by evicting an idle tenant is no wait
	defer func() {
		if waited {
			r.tel.waited(ctx, t.tel, roleSlot, start, err)
		}
	}()
	for {
		ch := b.waitCh()
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			b.unwait()
			err = ErrClosed // recorded as the wait's end
			return err
		}
		if b.open < b.max {
			b.reserveLocked(t)
			b.mu.Unlock()
			b.unwait()
			return nil
		}
		cands := b.openLocked()
		b.mu.Unlock()
		if r.evictOne(cands, t, nil) {
			b.unwait()
			continue
		}
		if !waited {
			waited = true
			b.waits.Add(1)
		}
		select {
		case <-ch:
			b.unwait()
		case <-wctx.Done():
			b.unwait()
			err = busyBecause(ctx, slotsBusy, r.cfg.MaxConnections)
			return err
		}
	}
}

// evictForReader makes room for a reader of t: the least recently used
// idle tenant other than t, else t itself if it is wholly idle (its idle
// writer may be what fills a small budget). The caller holds none of t's
// leases.
func (r *router) evictForReader(t *tenant) bool {
	return r.evictOne(r.budget.openTenants(), nil, t)
}

// evictOne closes the least recently used wholly idle tenant of cands
// (which it reorders), trying last only after every other, to make room.
// self, if not nil, is a tenant whose writer semaphore the caller holds.
func (r *router) evictOne(cands []*tenant, self, last *tenant) bool {
	return r.evictLRU(cands, self, last, evictBudget) != nil
}

// evictLRU is evictOne for reason; it returns the tenant it closed.
func (r *router) evictLRU(cands []*tenant, self, last *tenant, reason evictReason) *tenant {
	for len(cands) > 0 {
		i := lruIndex(cands, last)
		if v := cands[i]; v.evict(v == self, reason) {
			return v
		}
		cands[i] = cands[len(cands)-1]
		cands = cands[:len(cands)-1]
	}
	return nil
}

// lruIndex returns the index of the least recently used tenant of cands,
// which are not empty; last's only when it is the only one.
func lruIndex(cands []*tenant, last *tenant) int {
	best, bestUsed := -1, int64(0)
	for i, v := range cands {
		if v == last && len(cands) > 1 {
			continue
		}
		if u := v.lastUsed.Load(); best < 0 || u < bestUsed {
			best, bestUsed = i, u
		}
	}
	return best
}

// boundWait bounds a wait whose context has no deadline by BusyTimeout, as
// SQLite's busy handler would: a caller that cannot get a connection gets
// SQLITE_BUSY instead of waiting for ever (a write through the *sql.DB
// inside a transaction on the same tenant would otherwise wait for itself).
func (r *router) boundWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return r.boundWaitBy(ctx, time.Time{})
}

// boundWaitBy is boundWait for a wait that began earlier: a ctx without a
// deadline is bounded by deadline (BusyTimeout from its start) when that
// is not zero.
func (r *router) boundWaitBy(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	if deadline.IsZero() {
		return context.WithTimeout(ctx, r.cfg.BusyTimeout)
	}
	return context.WithDeadline(ctx, deadline)
}

// lazyBound is boundWait(ctx) made when a call first waits: most calls
// never wait, and the timer of a bounded context cost ~5 µs of each
// tenant's cold open (2-3 % of it).
type lazyBound struct {
	r        *router
	ctx      context.Context
	deadline time.Time // boundWaitBy's: a wait of the same call began earlier (zero: none)
	wctx     context.Context
	cancel   context.CancelFunc
}

func (l *lazyBound) done() <-chan struct{} {
	if l.wctx == nil {
		l.wctx, l.cancel = l.r.boundWaitBy(l.ctx, l.deadline)
	}
	return l.wctx.Done()
}

func (l *lazyBound) stop() {
	if l.cancel != nil {
		l.cancel()
	}
}

// errBusy is what a bounded wait ends with: mattn's own SQLITE_BUSY error
// ("database is locked"), so code that retries on it keeps working.
var errBusy = sqlite3.Error{Code: sqlite3.ErrBusy, ExtendedCode: sqlite3.ErrNoExtended(sqlite3.ErrBusy)}

// waitErr is the error of a wait bounded by boundWait(caller).
func waitErr(caller context.Context) error {
	if err := caller.Err(); err != nil {
		return err
	}
	return errBusy
}

// busyBecause is waitErr for a wait that SQLite has no part in (for a
// reader, for a slot of the budget): past BusyTimeout it says what stayed
// in use, around errBusy, which errors.As still finds (mattn's second
// connection never waits there, so "database is locked" alone sent users
// looking for a lock).
func busyBecause(caller context.Context, why string, n int) error {
	if err := caller.Err(); err != nil {
		return err
	}
	return fmt.Errorf(why+": %w", n, errBusy)
}

const (
	// readersBusy is why a read waited BusyTimeout for a reader.
	readersBusy = "every reader of the tenant (ReadersPerTenant %d) stayed in use for BusyTimeout: open Rows, read-only transactions and sql.Conns that read hold one each until closed"
	// slotsBusy is why a wait for a connection of the budget ended.
	slotsBusy = "every connection of the budget (MaxConnections %d) stayed in use for BusyTimeout: tenants with work open (transactions, Rows, sql.Conns) keep theirs"
)

// background advances the coarse clock, hands telemetry the open tenants
// every topNEvery, every quarter of IdleTimeout (at most every 10 s)
// closes tenants idle for longer than IdleTimeout, and once tenants have
// stopped closing for trimAfter gives the memory they freed back to the OS
// (memtrim.go).
func (r *router) background() {
	defer r.reaperWG.Done()
	b := r.budget
	tick := time.NewTicker(clockTick)
	defer tick.Stop()
	reapEvery := int64(min(max(r.cfg.IdleTimeout/4, clockTick), 10*time.Second))
	var lastReap, lastRank, lastResync int64
	var evictions, trimmed, lastEviction int64 // evictions seen, evictions when last trimmed, when the count last moved
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		b.readClock()
		if n := b.evictions.Load(); n != evictions {
			evictions, lastEviction = n, b.now()
		} else if n != trimmed && b.now()-lastEviction >= int64(trimAfter) {
			trimmed = n
			releaseFreedMemory()
		}
		if r.repl != nil && b.now()-lastResync >= int64(resyncEvery) {
			lastResync = b.now()
			r.resync()
		}
		if r.tel.ranks() && b.now()-lastRank >= int64(topNEvery) {
			lastRank = b.now()
			r.tel.rank(tenantTels(b.lru()))
		}
		if r.cfg.IdleTimeout <= 0 || b.now()-lastReap < reapEvery {
			continue
		}
		lastReap = b.now()
		r.reapIdle()
	}
}

// tenantTels returns the telemetry state of each of ts.
func tenantTels(ts []*tenant) []*tenantTel {
	out := make([]*tenantTel, len(ts))
	for i, t := range ts {
		out[i] = t.tel
	}
	return out
}

// reapIdle closes tenants idle for longer than cfg.IdleTimeout.
func (r *router) reapIdle() {
	limit := r.budget.now() - int64(r.cfg.IdleTimeout)
	for _, t := range r.budget.lru() {
		if t.lastUsed.Load() > limit {
			break
		}
		t.evict(false, evictIdle)
	}
}
