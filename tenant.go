package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
)

// tenant is one tenant's database file and its connections: one writer,
// guarded by the semaphore wsem, and up to cfg.ReadersPerTenant readers,
// leased to routing conns (conn.go) for one checkout at a time. This file
// holds its states, the leases, eviction of its connections (whom to evict
// is budget.go's call) and the drain behind DeleteTenant and RestoreTenant.
type tenant struct {
	r    *router
	id   string
	path string // tenantPath: <Dir>/<id>.db or <Dir>/<bucket>/<id>.db
	uri  string // file: URI of path, without query

	wsem  sem         // its holder owns w
	w     *physConn   // the writer, nil when closed
	ready atomic.Bool // migrations are applied (this process checked)
	// writerTemp: the writer's session held TEMP objects when last looked
	// at (noteTemp), which a reader cannot compile against.
	writerTemp atomic.Bool
	state      atomic.Int32 // tenantActive, tenantDraining or tenantDeleted; changed under mu

	mu            sync.Mutex // guards idle, nreaders, leasedReaders, evicting, evictDone, readerQ, kept, drainDone and changes of state
	idle          []*physConn
	nreaders      int // readers open or opening
	leasedReaders int // readers leased, kept by a routing conn (parked too) or opening
	evicting      bool
	evictDone     chan struct{}
	readerQ       []chan *physConn // waiters for a reader when all are leased, oldest first
	kept          []*physConn      // readers kept by routing conns, leased but maybe parked (keep.go)
	drainDone     chan struct{}    // closed when a drain (delete, restore) ends
	refusedWith   error            // why an open retired t (retireWith), for work that waited on it; under mu
	file          os.FileInfo      // t's file as its connections opened it, for the file watch (filewatch.go); under mu
	fileOpens     uint64           // opens when file was recorded: file is of an earlier session unless equal; under mu
	movedSide     []os.FileInfo    // side files of t's file, found in use when it moved (filewatch.go); under mu

	lastUsed atomic.Int64  // budget.now() when a lease last ended
	pins     atomic.Int64  // goroutines working on t, plus pinGone once t has left the registry (pin)
	counted  atomic.Int32  // connections the budget counts for t; written under budget.mu
	opens    atomic.Uint64 // times counted went from 0 to 1: t's open sessions (filewatch.go)

	registered atomic.Bool   // streamed by Litestream (replication.go); changed under wsem
	regs       atomic.Uint32 // registrations made with Litestream (register, reregister); under wsem
	unsynced   atomic.Bool   // its last sync before unregistering failed; SyncTenant retries it
	lagSince   atomic.Int64  // UnixNano since the replica was first seen behind; 0: caught up
	createdBy  atomic.Bool   // this process created the file (read by CreateTenant under wsem)

	lease TenantLease // this node's ownership (Config.Ownership), nil when not held; changed under wsem
	// unreleased: a lease that ended (a move asked for the tenant) while
	// its final sync failed (the object store down): the tenant's last
	// writes are here only, and the lease is released once resync has
	// uploaded them (finishRelease). Changed under wsem.
	unreleased TenantLease
	// keptPos: the position t was synced to when a delete or restore kept
	// its lease through the eviction of its drain (nil: none); the lease
	// is released with it if a move ends it before the drain goes on as
	// its owner (letGoLost). Changed under wsem.
	keptPos *uint64
	gen     atomic.Int64               // the generation t streams to (<ReplicaURL>/<id>/g<gen>); 0 without Ownership
	fenced  atomic.Bool                // lease lost, or file moved: t is closed before it is used again (ownership.go)
	moved   atomic.Bool                // fenced because its file was deleted or replaced while open (filewatch.go)
	lost    atomic.Value               // the Lost channel (<-chan struct{}) of the lease held last, for SyncTenant
	valid   atomic.Pointer[validLease] // the lease held last, when it can tell its validity (Generation)

	gc  groupCommit // autocommit writes queued for the writer (groupcommit.go)
	wal walState    // the WAL's bound (walbound.go); under wsem

	tel *tenantTel // what telemetry records about this tenant
}

// Tenant states. A drain (DeleteTenant, RestoreTenant) stops new leases,
// waits for the leased ones and closes the connections; work that arrives
// meanwhile waits for the drain to end, then goes on (restore) or fails
// with ErrTenantNotFound (delete).
const (
	tenantActive int32 = iota
	tenantDraining
	tenantDeleted
)

// realPath is t's file as SQLite names it once opened: under the data
// directory with its symlinks resolved.
func (t *tenant) realPath() string {
	return tenantPath(t.r.conns.realDir, t.r.cfg.Layout, t.id)
}

func newTenant(r *router, id string) *tenant {
	path := tenantPath(r.cfg.Dir, r.cfg.Layout, id)
	return &tenant{r: r, id: id, path: path, uri: fileURI(path), tel: r.tel.newTenant(id)}
}

// pinGone is added to tenant.pins when the tenant leaves the registry:
// pins fail from then on, and the tenant's pointer is stale.
const pinGone = 1 << 40

// pin marks t as in use, so that it stays the registry's object for its ID
// (router.forgetIdle) until unpin. It fails once t has left the registry
// (forgotten when idle, deleted, refused): the caller looks the ID up again.
// Everything that works on a tenant (a lease, an admin operation, a queued
// write, a compaction) holds a pin meanwhile; so no two objects of one
// tenant are ever at work together.
func (t *tenant) pin() bool {
	if t.pins.Add(1)&pinGone != 0 {
		t.pins.Add(-1)
		return false
	}
	return true
}

// unpin ends a pin. The last one out of a tenant with no connection open
// lets it go from the registry (router.forgetIdle): memory is kept for the
// open tenants, not for every tenant ever touched.
func (t *tenant) unpin() {
	if t.pins.Add(-1) == 0 && t.counted.Load() == 0 {
		t.r.forgetIdle(t, false)
	}
}

// telemetry returns what telemetry records about t, nil for no tenant.
func (t *tenant) telemetry() *tenantTel {
	if t == nil {
		return nil
	}
	return t.tel
}

func (t *tenant) touch() {
	if now := t.r.budget.now(); t.lastUsed.Load() != now {
		t.lastUsed.Store(now)
	}
}

// awaitDrain waits while t is draining. It reports ErrTenantNotFound once t
// is deleted. A ctx without a deadline waits BusyTimeout at most (a drain
// lasts as long as the work it waits for, or its caller's context), and
// Close ends the wait.
func (t *tenant) awaitDrain(ctx context.Context) error { return t.awaitDrainBy(ctx, true, time.Time{}) }

// awaitDrainBy is awaitDrain, bounded for a ctx without a deadline only
// when bounded (a delete or restore waits for another one up to its ctx, or
// Close, as documented): by deadline when not zero (a wait of the same call
// began earlier), else BusyTimeout from now.
func (t *tenant) awaitDrainBy(ctx context.Context, bounded bool, deadline time.Time) error {
	bound := lazyBound{r: t.r, ctx: ctx, deadline: deadline}
	if !bounded {
		bound.wctx = ctx
	}
	defer bound.stop()
	for {
		t.mu.Lock()
		st, done, refused := t.state.Load(), t.drainDone, t.refusedWith
		t.mu.Unlock()
		switch {
		case st == tenantActive:
			return nil
		case st == tenantDeleted && refused != nil:
			return refused
		case st == tenantDeleted:
			return opError(opOpenTenant, t.id, ErrTenantNotFound)
		}
		select {
		case <-done:
		case <-bound.done():
			return opError(opWaitTenant, t.id, waitErr(ctx))
		case <-t.r.stop:
			return opError(opWaitTenant, t.id, ErrClosed)
		}
	}
}

// acquireWriter leases the writer, opening (and migrating) it if needed.
func (t *tenant) acquireWriter(ctx context.Context) (*physConn, error) {
	return t.acquireWriterBy(ctx, time.Time{})
}

// acquireWriterBy is acquireWriter for a caller whose wait began earlier:
// when ctx has no deadline, it waits for the semaphore until deadline
// (when not zero) rather than BusyTimeout from now.
func (t *tenant) acquireWriterBy(ctx context.Context, deadline time.Time) (*physConn, error) {
	deadline, err := t.lockWriterUntil(ctx, deadline)
	if err != nil {
		return nil, err
	}
	o := t.r.accessOpts
	o.deadline = deadline // a slot it then waits for is waited for within the same bound
	return t.openLockedWriter(ctx, o)
}

// unlockWriter releases t's writer semaphore taken by lockWriter (or
// drain), closing t after Close: Close's own eviction passes over a tenant
// whose semaphore is held and leaves it to the holder, as releaseWriter
// does for a leased writer.
func (t *tenant) unlockWriter() {
	t.wsem.Release()
	if t.r.isClosed.Load() {
		t.evict(false, evictClose)
	}
}

// waitWriter waits for t's writer semaphore until ctx ends or Close, which
// ends it with ErrClosed: with no deadline it would last until the holder
// is done. A wait that gives up just as it is handed the semaphore passes
// it on (AcquireOr), perhaps after Close passed t over: after Close it
// then closes t, as unlockWriter does.
func (t *tenant) waitWriter(ctx context.Context) error {
	err := t.wsem.AcquireOr(ctx, t.r.stop)
	if err == errSemStopped {
		err = ErrClosed
	}
	if err != nil && t.r.isClosed.Load() {
		t.evict(false, evictClose)
	}
	return err
}

// lockWriter takes the writer semaphore of an active tenant.
func (t *tenant) lockWriter(ctx context.Context) error { return t.lockWriterBy(ctx, time.Time{}) }

// lockWriterBy is lockWriter waiting as boundWaitBy(ctx, deadline) allows.
func (t *tenant) lockWriterBy(ctx context.Context, deadline time.Time) error {
	_, err := t.lockWriterUntil(ctx, deadline)
	return err
}

// lockWriterUntil is lockWriterBy that also returns the bound it waited
// within: deadline, else for a ctx without one that had to wait, BusyTimeout
// from the wait's start (zero when it did not wait).
func (t *tenant) lockWriterUntil(ctx context.Context, deadline time.Time) (time.Time, error) {
	for {
		if !t.wsem.TryAcquire() {
			start := time.Now()
			if _, ok := ctx.Deadline(); !ok && deadline.IsZero() {
				deadline = start.Add(t.r.cfg.BusyTimeout)
			}
			wctx, cancel := t.r.boundWaitBy(ctx, deadline)
			err := t.waitWriter(wctx)
			cancel()
			if err != nil && err != ErrClosed {
				err = waitErr(ctx)
			}
			t.r.tel.waited(ctx, t.tel, roleWriter, start, err)
			if err != nil {
				if _, lost := t.r.lostLeases.Load(t.id); lost && ctx.Err() == nil {
					// The writer was held by the closing of a tenant whose
					// lease was lost (its release waits for etcd): not a
					// busy tenant, one this node does not own any more.
					return deadline, opError(opWaitWriter, t.id, errLeaseEnded)
				}
				return deadline, opError(opWaitWriter, t.id, err)
			}
		}
		if t.lease != nil {
			// Past the lease's deadline, its timer late (the process was
			// stopped): fenced now, as the timer would have, before any
			// write under a generation another node may have taken.
			t.leaseEnded()
		}
		if t.r.isClosed.Load() {
			// Closed while it waited: work that had not begun before
			// Close does not run after it returned (a transaction in
			// progress holds the writer already, and may finish).
			t.unlockWriter()
			return deadline, opError(opWaitWriter, t.id, ErrClosed)
		}
		if t.state.Load() == tenantActive {
			if err := t.r.unfence(t); err != nil {
				t.unlockWriter()
				return deadline, err
			}
			return deadline, nil
		}
		t.unlockWriter() // a drain is queued behind us, or done
		if _, ok := ctx.Deadline(); !ok && deadline.IsZero() {
			deadline = time.Now().Add(t.r.cfg.BusyTimeout)
		}
		// Within the bound of this call's wait for the writer, if it
		// waited: a fresh BusyTimeout made it nearly two.
		if err := t.awaitDrainBy(ctx, true, deadline); err != nil {
			return deadline, err
		}
	}
}

// openLockedWriter returns the writer, opening it if needed; the caller
// holds wsem, which is released on error.
func (t *tenant) openLockedWriter(ctx context.Context, o openOpts) (*physConn, error) {
	if t.w != nil {
		return t.w, nil
	}
	pc, err := t.r.openWriter(ctx, t, o)
	if err != nil {
		t.unlockWriter()
		t.r.budget.wake()
		return nil, err
	}
	t.w = pc
	t.writerTemp.Store(false) // a new session
	return pc, nil
}

func (t *tenant) releaseWriter() {
	if t.w != nil && t.r.repl == nil {
		t.boundWAL(t.w)
	}
	if t.fenced.Load() {
		// Its lease ended (lost, or a move asked for it) while the writer
		// was leased: close it now that the writer is back, as watchLease
		// would have, rather than at its next use (a move waited for that
		// next use, for ever on a quiet tenant).
		if t.r.unfence(t) == nil {
			t.r.forgetIdle(t, true)
		}
	}
	t.touch()
	t.wsem.Release()
	t.r.budget.wake()
	if t.r.isClosed.Load() {
		t.evict(false, evictClose)
	}
}

// acquireReader leases a reader: an idle one, a new one if the tenant and
// the budget allow, else it waits. It never lends the writer for a read
// (unless the tenant has no readers at all): rows left open on the writer
// would block the tenant's writes, and code that writes while it iterates
// would wait for itself.
//
// A tenant not yet checked in this process has its ledger read on the
// reader itself when its file exists and nothing else has to happen first
// (no replication, no ownership): a cold read then opens one connection,
// not a writer and a reader. Anything else (a missing file, pending
// migrations, drift, an error) takes the writer's open path first, which
// creates, migrates or reports.
func (t *tenant) acquireReader(ctx context.Context) (*physConn, error) {
	if t.r.cfg.ReadersPerTenant == 0 {
		return t.acquireWriter(ctx)
	}
	if t.ready.Load() && !t.fenced.Load() {
		return t.leaseReader(ctx)
	}
	if t.r.repl == nil && !t.fenced.Load() {
		if fi, err := t.statFile(opOpenTenant); err == nil && fi != nil {
			// As the writer's open does (openWriterOnce): a hard link's
			// reads served another tenant's rows.
			if err := refuseHardLinked(t, fi); err != nil {
				return nil, opError(opOpenTenant, t.id, err)
			}
			pc, err := t.leaseReader(ctx)
			if err != nil {
				return nil, err
			}
			if t.ready.Load() || t.r.mig.upToDate(ctx, pc.c, t.r.accessOpts.migrate) {
				t.ready.Store(true)
				t.opened(fi)
				return pc, nil
			}
			t.discard(pc) // the tenant may be refused: no connection left behind
		}
	}
	if _, err := t.acquireWriter(ctx); err != nil {
		return nil, err
	}
	t.releaseWriter()
	return t.leaseReader(ctx)
}

// noteTemp records whether t's writer pc, leased by the caller after a
// statement that may have created a TEMP object, holds any.
func (t *tenant) noteTemp(pc *physConn) {
	n := int64(1) // unknown: as if it had
	if rows, err := pc.c.QueryContext(context.Background(), "SELECT count(*) FROM temp.sqlite_master", nil); err == nil {
		dest := []driver.Value{nil}
		if rows.Next(dest) == nil {
			n, _ = dest[0].(int64)
		}
		rows.Close()
	}
	t.writerTemp.Store(n > 0)
}

// tryWriter leases t's open writer if nobody holds it, without waiting;
// nil when it cannot.
func (t *tenant) tryWriter() *physConn {
	if !t.wsem.TryAcquire() {
		return nil
	}
	if t.w == nil || t.state.Load() != tenantActive || t.leaseEnded() || t.r.isClosed.Load() {
		t.unlockWriter()
		return nil
	}
	return t.w
}

// tryReader leases an idle reader of t, or opens one if t's readers and
// the budget allow it at once; nil when neither can be had without
// waiting.
func (t *tenant) tryReader(ctx context.Context) (*physConn, error) {
	if pc, ok := t.popIdle(true); ok {
		return pc, nil
	}
	t.mu.Lock()
	if t.evicting || t.state.Load() != tenantActive || t.nreaders >= t.r.cfg.ReadersPerTenant {
		t.mu.Unlock()
		return nil, nil
	}
	if ok, _ := t.r.budget.tryReserve(t); !ok {
		t.mu.Unlock()
		return nil, nil
	}
	t.nreaders++
	t.leasedReaders++
	t.mu.Unlock()
	return t.openReader(ctx)
}

// leaseReader is acquireReader for a tenant whose migrations are checked
// (or that acquireReader checks on the reader it returns).
func (t *tenant) leaseReader(ctx context.Context) (_ *physConn, err error) {
	if pc, ok := t.popIdle(false); ok {
		return pc, nil
	}
	bound := lazyBound{r: t.r, ctx: ctx}
	defer bound.stop()
	registered := false
	var waitStart time.Time // set when this call first has to wait: one wait, however many wake-ups
	defer func() {
		if registered {
			t.r.budget.unwait()
		}
		if !waitStart.IsZero() {
			t.r.tel.waited(ctx, t.tel, roleReader, waitStart, err)
		}
	}()
	for {
		var ch chan struct{}
		if registered {
			t.r.budget.unwait()
		}
		ch, registered = t.r.budget.waitCh(), true

		t.mu.Lock()
		if st := t.state.Load(); st != tenantActive {
			t.mu.Unlock()
			if err := t.awaitDrain(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if t.evicting {
			done := t.evictDone
			t.mu.Unlock()
			select {
			case <-done:
				continue
			case <-bound.done():
				return nil, opError(opWaitReader, t.id, waitErr(ctx))
			}
		}
		if len(t.idle) == 0 && t.nreaders >= t.r.cfg.ReadersPerTenant {
			// No reader may be opened: take back the ones routing conns
			// keep parked, and ask for those in use (keep.go).
			t.revokeKeptLocked(true)
		}
		if n := len(t.idle); n > 0 {
			pc := t.idle[n-1]
			t.idle = t.idle[:n-1]
			t.leasedReaders++
			t.mu.Unlock()
			return pc, nil
		}
		if t.nreaders < t.r.cfg.ReadersPerTenant {
			ok, err := t.r.budget.tryReserve(t)
			if err != nil {
				t.mu.Unlock()
				return nil, opError(opOpenReader, t.id, err)
			}
			if ok {
				t.nreaders++
				t.leasedReaders++
				t.mu.Unlock()
				return t.openReader(ctx)
			}
			if t.revokeKeptLocked(false) > 0 {
				t.mu.Unlock()
				continue // a parked reader of t rather than another tenant's slot
			}
			t.mu.Unlock()
			if t.r.evictForReader(t) {
				continue
			}
			if waitStart.IsZero() {
				waitStart = time.Now()
				t.r.budget.waits.Add(1)
			}
			select { // for a slot (Close wakes it: the budget is closed)
			case <-ch:
			case <-bound.done():
				return nil, opError(opWaitReader, t.id, busyBecause(ctx, slotsBusy, t.r.cfg.MaxConnections))
			}
			continue
		}
		// Every reader is leased: queue for the next one released, first
		// come first served (with a broadcast wake-up, unlucky readers
		// waited 20 s under load while others went through).
		q := make(chan *physConn, 1)
		t.readerQ = append(t.readerQ, q)
		t.mu.Unlock()
		if waitStart.IsZero() {
			waitStart = time.Now()
			t.r.budget.waits.Add(1)
		}
		var waitEnd error
		select {
		case pc := <-q:
			if pc != nil {
				return pc, nil
			}
			// nil: the tenant's readers were closed (eviction, drain): look again
		case <-bound.done():
			waitEnd = busyBecause(ctx, readersBusy, t.r.cfg.ReadersPerTenant)
		case <-t.r.stop: // Close: not when a reader is released, or BusyTimeout
			waitEnd = ErrClosed
		}
		if waitEnd != nil {
			t.mu.Lock()
			if i := slices.Index(t.readerQ, q); i >= 0 {
				t.readerQ = slices.Delete(t.readerQ, i, i+1)
				t.mu.Unlock()
			} else {
				t.mu.Unlock()
				if pc := <-q; pc != nil { // handed over as we gave up: pass it on
					t.releaseReader(pc)
				}
			}
			return nil, opError(opWaitReader, t.id, waitEnd)
		}
	}
}

// wakeReaderQLocked sends every queued reader waiter back to look again;
// called with mu held when the tenant's readers are closed.
func (t *tenant) wakeReaderQLocked() {
	for _, q := range t.readerQ {
		q <- nil
	}
	t.readerQ = nil
}

// popIdle leases an idle reader, if there is one; with revoke, a reader
// parked by a routing conn is taken back for it when none is idle.
func (t *tenant) popIdle(revoke bool) (*physConn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if revoke && len(t.idle) == 0 {
		t.revokeKeptLocked(false)
	}
	if t.evicting || len(t.idle) == 0 || t.state.Load() != tenantActive {
		return nil, false
	}
	pc := t.idle[len(t.idle)-1]
	t.idle = t.idle[:len(t.idle)-1]
	t.leasedReaders++
	return pc, true
}

// openReader opens a reader for which a slot is reserved and counted.
func (t *tenant) openReader(ctx context.Context) (*physConn, error) {
	start := time.Now()
	pc, err := t.r.conns.open(ctx, t, false)
	t.r.tel.opened(ctx, t.tel, roleReader, start, err)
	if err != nil {
		t.dropReader()
		return nil, err
	}
	return pc, nil
}

// dropReader ends the lease of a reader that failed to open or was closed
// alone: its slot goes back (while the lease still keeps eviction away),
// and queued waiters look again, as a reader may be opened for them now.
func (t *tenant) dropReader() {
	t.r.budget.unreserve(t)
	t.mu.Lock()
	t.nreaders--
	t.leasedReaders--
	t.wakeReaderQLocked()
	t.mu.Unlock()
}

func (t *tenant) releaseReader(pc *physConn) { t.putReader(pc, nil) }

// discard ends the lease of pc by closing it, for a connection whose state
// is unknown (a ROLLBACK failed at check-in). Its slot is given back as
// unreserve does (a descriptor closed while others of t are open stays
// parked, so it stays counted until t is closed as a whole), and the next
// lease opens a fresh connection.
func (t *tenant) discard(pc *physConn) {
	if pc.writer {
		t.dropWriter()
		t.releaseWriter()
		return
	}
	if pc.keep.Load()&keepStateMask != keepNone {
		// Kept by the conn discarding it: no longer (its keeper's word
		// stops matching).
		t.mu.Lock()
		t.unkeepLocked(pc)
		t.mu.Unlock()
	}
	pc.close()
	t.dropReader()
	t.touch()
	t.r.budget.wake()
	if t.r.isClosed.Load() {
		t.evict(false, evictClose)
	}
}

// dropWriter closes t's writer, if it is open, and gives back its slot.
// The caller holds t's writer semaphore.
func (t *tenant) dropWriter() {
	if pc := t.w; pc != nil {
		t.w = nil
		pc.close()
		t.r.budget.unreserve(t)
	}
}

// freshWriter replaces t's open writer with a new connection, which holds
// none of the session state (TEMP objects, pragmas) live traffic left on
// the old one. The old one is closed first, so that the new one takes its
// descriptor (SQLite keeps it while other connections have the file
// open). If none can be opened, t is left without a writer. The caller
// holds t's writer semaphore.
func (t *tenant) freshWriter(ctx context.Context) error {
	t.w.close()
	nw, err := t.r.conns.open(ctx, t, true)
	if err != nil {
		t.w = nil
		t.r.budget.unreserve(t)
		return err
	}
	t.w = nw
	t.writerTemp.Store(false)
	return nil
}

// release returns a leased connection to its tenant.
func (t *tenant) release(pc *physConn) {
	if pc.writer {
		t.releaseWriter()
	} else {
		t.releaseReader(pc)
	}
}

// evict closes every connection of t if none is leased, and frees their
// slots once they are closed. haveWsem says the caller holds t's writer
// semaphore already (and t.w is then not leased by anybody else). Which
// tenant to evict, and when, is decided in budget.go.
func (t *tenant) evict(haveWsem bool, reason evictReason) bool {
	if !haveWsem {
		if !t.wsem.TryAcquire() {
			return false
		}
		defer t.wsem.Release()
	}
	b := t.r.budget
	t.mu.Lock()
	t.revokeKeptLocked(false)
	if t.leasedReaders > 0 || t.evicting || b.counted(t) == 0 {
		t.mu.Unlock()
		return false
	}
	t.evicting = true
	t.evictDone = make(chan struct{})
	conns := t.idle
	t.idle = nil
	t.nreaders = 0
	t.wakeReaderQLocked()
	if t.w != nil {
		conns = append(conns, t.w)
		t.w = nil
	}
	t.mu.Unlock()

	_, end := t.r.tel.span(context.Background(), spanTenantEvict, t.tel, attribute.String(attrReason, reason.String()))
	for _, pc := range conns {
		pc.close()
	}
	// Closed, its ledger is anybody's to change (the CLI's migrate
	// -down-to, another proxy): the next open checks it again, as it does
	// for a tenant this process forgot.
	t.ready.Store(false)
	t.closedAfterMove() // whatever closed it: the idle reaper, the budget, Close
	t.r.unregister(t)   // after the close: Litestream's connection must be the last
	end(nil)

	b.freeAll(t)
	b.evictions.Add(1)
	t.r.tel.evicted(t.tel, reason)

	t.mu.Lock()
	t.evicting = false
	close(t.evictDone)
	t.mu.Unlock()
	t.r.forgetIdle(t, true)
	return true
}

// retire marks t, which has left the registry, as deleted: conns that
// cache it look the tenant up again.
func (t *tenant) retire() { t.retireWith(nil) }

// retireWith is retire by an open that was refused with err: work that
// waited on t meanwhile (for its writer) gets err too, not
// ErrTenantNotFound (another node owns the tenant: 7 of 8 concurrent
// statements on a non-owner were told the tenant did not exist).
func (t *tenant) retireWith(err error) {
	t.mu.Lock()
	t.state.Store(tenantDeleted)
	t.refusedWith = err
	t.pins.Or(pinGone)
	t.mu.Unlock()
}

// drainWaits, set by tests, is called when a drain waits for another.
var drainWaits func()

// drain stops new leases of t, waits (up to ctx) for the leased ones to end
// and closes t's connections. On success the caller holds t's writer
// semaphore and must call endDrain.
func (t *tenant) drain(ctx context.Context, op string, reason evictReason) error {
	// One drain at a time: another delete or restore of t ends first (a
	// second delete then finds no tenant, as it would a moment later).
	for {
		t.mu.Lock()
		st := t.state.Load()
		if st == tenantActive {
			t.state.Store(tenantDraining)
			t.drainDone = make(chan struct{})
			t.mu.Unlock()
			break
		}
		t.mu.Unlock()
		if st == tenantDraining && drainWaits != nil {
			drainWaits()
		}
		if err := t.awaitDrainBy(ctx, false, time.Time{}); errors.Is(err, ErrTenantNotFound) {
			return opError(op, t.id, ErrTenantNotFound)
		} else if err != nil {
			return opError(op, t.id, fmt.Errorf("gave up waiting for another delete or restore of this tenant, nothing changed: %w", errors.Unwrap(err)))
		}
	}

	giveUp := func(err error) error {
		t.endDrain(tenantActive)
		return opError(op, t.id, fmt.Errorf("gave up waiting for in-flight work, nothing changed: %w", err))
	}
	if err := t.waitWriter(ctx); err != nil {
		t.mu.Lock()
		if t.state.Load() == tenantDraining {
			t.state.Store(tenantActive)
		}
		close(t.drainDone)
		t.mu.Unlock()
		t.r.budget.wake()
		return opError(op, t.id, fmt.Errorf("gave up waiting for in-flight work, nothing changed: %w", err))
	}
	if t.r.isClosed.Load() {
		// Closed while it waited: nothing is deleted or restored after
		// Close returned (a restore renamed its file into a directory
		// Close had let go).
		t.endDrain(tenantActive)
		return opError(op, t.id, ErrClosed)
	}
	if t.state.Load() == tenantDeleted {
		// Retired while this drain waited (an open refused under
		// ExplicitCreate): t left the registry, and must not come back to
		// life beside the object made for the ID since.
		t.endDrain(tenantDeleted)
		return opError(op, t.id, ErrTenantNotFound)
	}
	for {
		ch := t.r.budget.waitCh()
		t.mu.Lock()
		t.revokeKeptLocked(true) // kept readers in use come back at their check-in, which wakes this wait
		n := t.leasedReaders
		t.mu.Unlock()
		if n == 0 {
			t.r.budget.unwait()
			break
		}
		select {
		case <-ch:
			t.r.budget.unwait()
		case <-ctx.Done():
			t.r.budget.unwait()
			return giveUp(ctx.Err())
		case <-t.r.stop:
			t.r.budget.unwait()
			return giveUp(ErrClosed)
		}
	}
	t.evict(true, reason)
	// With Ownership, only the owner may delete or restore a tenant: the
	// eviction of a draining tenant keeps its lease (unregister), which is
	// taken here if this node had none (or lost it).
	if err := t.r.own(ctx, op, t); err != nil {
		t.endDrain(tenantActive)
		return err
	}
	return nil
}

// endDrain ends a drain begun by drain, leaving t in state.
func (t *tenant) endDrain(state int32) {
	t.mu.Lock()
	if t.pins.Load()&pinGone != 0 {
		state = tenantDeleted // retired: never active again
	}
	t.state.Store(state)
	if state == tenantDeleted {
		t.pins.Or(pinGone)
	}
	close(t.drainDone)
	t.mu.Unlock()
	t.unlockWriter()
	t.r.budget.wake()
}

// mustExist is ErrTenantNotFound (for op) unless t's file exists.
func (t *tenant) mustExist(op string) error {
	exists, err := t.fileExists(op)
	if err == nil && !exists {
		err = opError(op, t.id, ErrTenantNotFound)
	}
	return err
}

// fileExists reports whether t's database file exists. A file that is not
// a regular file (a symlink, say) is an error.
func (t *tenant) fileExists(op string) (bool, error) {
	fi, err := t.statFile(op)
	return fi != nil, err
}

// statUnlinked is statFile for the writer's open, refusing a file with
// another tenant's name too (refuseHardLinked); fi is nil when there is
// no file, and when the error is not about the file found.
func (t *tenant) statUnlinked() (os.FileInfo, error) {
	fi, err := t.statFile(opOpenTenant)
	if err == nil && fi != nil {
		if err := refuseHardLinked(t, fi); err != nil {
			return fi, opError(opOpenTenant, t.id, err)
		}
	}
	return fi, err
}

// statFile is fileExists that returns what it found of the file (nil when
// there is none).
func (t *tenant) statFile(op string) (os.FileInfo, error) {
	if t.r.cfg.Layout == LayoutBuckets {
		dir := filepath.Dir(t.path)
		if err := realBucket(dir, filepath.Base(dir)); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		} else if err != nil {
			return nil, opError(op, t.id, err)
		}
	}
	fi, err := os.Lstat(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, opError(op, t.id, err)
	case !fi.Mode().IsRegular():
		return nil, opError(op, t.id, fmt.Errorf("%s is not a regular file", t.path))
	}
	return fi, nil
}

// ungatedReader returns a connection to read t from (a backup, a check),
// and the function that gives it back. It neither applies nor requires
// migrations: backing up or checking a tenant that is behind (MigrateCheck)
// or ahead (drift) is when operators need it most.
func (t *tenant) ungatedReader(ctx context.Context, op string) (*sqlite3.SQLiteConn, func(), error) {
	if err := t.mustExist(op); err != nil {
		return nil, nil, err // never created by a read
	}
	if t.ready.Load() {
		pc, err := t.acquireReader(ctx)
		if err != nil {
			return nil, nil, err
		}
		return pc.c, func() { t.release(pc) }, nil
	}
	// A connection of its own, within the budget; the writer semaphore is
	// held only while reserving, so writes go on during the copy. It counts
	// as a leased reader until it is given back: t is not evicted meanwhile
	// (an eviction gives back every slot of t, this one's too, and the
	// slot done gives back would then be a connection opened since: a
	// writer uncounted, forgotten with t and never closed), and a drain
	// waits for it.
	if err := t.lockWriter(ctx); err != nil {
		return nil, nil, err
	}
	c, done, err := t.r.ownConn(ctx, t, t.r.conns.plainDrv, "?mode=rw&_query_only=1&_busy_timeout=0")
	if err == nil {
		t.mu.Lock()
		t.leasedReaders++
		t.mu.Unlock()
	}
	t.releaseWriter()
	if err != nil {
		return nil, nil, opError(op, t.id, err)
	}
	return c, func() {
		done()
		t.mu.Lock()
		t.leasedReaders--
		t.mu.Unlock()
		t.r.budget.wake() // a drain or an eviction may wait for it
		if t.r.isClosed.Load() {
			t.evict(false, evictClose) // Close left t open for it
		}
	}, nil
}
