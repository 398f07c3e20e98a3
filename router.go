package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
)

// router is the registry of tenants of one proxy: it maps tenant IDs to
// tenant objects, opens a tenant's writer (creating and migrating the file
// on first access) and closes everything at Close. The connection budget
// and eviction are in budget.go, one tenant's connections and leases in
// tenant.go, a SQLite connection in physconn.go.
//
// Lock order: tenant.mu before budget.mu. A tenant's wsem (its writer
// semaphore) may be held while taking either; nobody waits for a wsem while
// holding a mutex.
type router struct {
	fanRuns sync.Map // *fanRun -> struct{}: the fan-outs in flight (closeFanOuts)
	cfg     *Config
	conns   connOpener // opens tenant connections (physconn.go)
	peek    peeker     // reads closed tenants' ledgers through ATTACH (peek.go)
	mig     *migrator
	tel     *telemetry
	budget  *budget
	retain  *retention  // how many idle tenants stay open while tenants churn (retention.go)
	free    *tenantless // answers tenantless pure expressions
	repl    *replicator // nil unless Config.ReplicaURL
	classes classCache
	watch   *fileWatch // notices open tenants' files moved (filewatch.go); nil when nothing is watched
	// unwatched counts tenant opens whose file the watch could not watch
	// (Stats.Unwatched).
	unwatched atomic.Int64

	accessOpts openOpts // what a statement's first access to a tenant may do
	tenants    sync.Map // tenant ID -> *tenant; read on every checkout without locking
	isClosed   atomic.Bool
	// ops counts the tenant operations in flight that may hold no
	// connection meanwhile (a delete, a restore): Close waits for them
	// too (beginOp).
	ops atomic.Int64
	// closeReturned is closed when the first Close returns; finished once
	// everything is closed (finishClose).
	closeReturned chan struct{}
	finished      chan struct{}
	forgotten     atomic.Int64 // idle tenant objects let go from the registry (forgetIdle)
	lostLeases    sync.Map     // tenant ID -> struct{}: this node's last lease on it was lost (ownership.go)
	written       sync.Map     // leaseKey -> struct{}: leases written under, until released (markWritten)

	compactQ chan *tenant // closed tenants whose replica may need compaction; nil without Config.ReplicaCompactor
	tmpl     templates    // the template new tenants are copied from (template.go)

	dirLock  *os.File // Dir, flock'd shared while open (lockDir): keeps Relayout out
	replLock *os.File // with replication, flock'd exclusive while open (lockReplicating); nil otherwise
	presence string   // this process's presence on Dir (joinPresence)

	stop     chan struct{} // closed by close to end the background goroutines
	reaperWG sync.WaitGroup
}

func newRouter(cfg *Config) (_ *router, err error) {
	// Migrations first: a configuration refused for them creates nothing.
	list, err := loadMigrations(cfg)
	if err != nil {
		return nil, opError(opOpen, "", err)
	}
	if _, err := os.Stat(cfg.Dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, opError(opOpen, "", err)
		}
		if err := os.Chmod(cfg.Dir, 0o700); err != nil { // whatever the umask
			return nil, opError(opOpen, "", err)
		}
	}
	// The directory as SQLite names what it opens (every symlink
	// resolved): what each connection's file is checked against.
	realDir, err := filepath.EvalSymlinks(cfg.Dir)
	if err != nil {
		return nil, opError(opOpen, "", err)
	}
	fi, err := os.Stat(cfg.Dir)
	if err != nil {
		return nil, opError(opOpen, "", err)
	}
	if !fi.IsDir() {
		return nil, opError(opOpen, "", fmt.Errorf("%s is not a directory", cfg.Dir))
	}
	if err := notABucket(cfg.Dir); err != nil {
		// Before anything is made there (the presence file).
		return nil, opError(opOpen, "", err)
	}
	dirLock, err := lockDir(cfg.Dir, false)
	if errors.Is(err, errDirLocked) {
		err = fmt.Errorf("%s is being converted to another layout (sqliteproxy relayout): %w", cfg.Dir, err)
	}
	if err != nil {
		return nil, opError(opOpen, "", err)
	}
	defer func() {
		if err != nil {
			dirLock.Close()
		}
	}()
	// Present before the layout is checked: a proxy that would mark the
	// directory for buckets sees the proxies (flat) that have it open.
	presence := joinPresence(cfg.Dir)
	defer func() {
		if err != nil {
			leavePresence(presence)
		}
	}()
	if err := checkLayout(cfg.Dir, cfg.Layout, presence); err != nil {
		return nil, opError(opOpen, "", err)
	}
	var replLock *os.File
	if cfg.ReplicaURL != "" {
		if replLock, err = lockReplicating(cfg.Dir); err != nil {
			return nil, opError(opOpen, "", err)
		}
		defer func() {
			if err != nil {
				replLock.Close()
			}
		}()
	}
	r := &router{
		closeReturned: make(chan struct{}),
		finished:      make(chan struct{}),
		cfg:           cfg,
		dirLock:       dirLock,
		replLock:      replLock,
		presence:      presence,
		conns:         newConnOpener(cfg, realDir),
		repl:          newReplicator(cfg),
		budget:        newBudget(cfg.MaxConnections),
		retain:        newRetention(cfg.MaxConnections),
		accessOpts:    openOpts{mayCreate: !cfg.ExplicitCreate, migrate: cfg.MigrationMode == MigrateAuto, servePending: cfg.MigrationMode == MigrateManual},
		stop:          make(chan struct{}),
	}
	if r.tel, err = newTelemetry(cfg, r.stats); err != nil {
		return nil, opError(opOpen, "", err)
	}
	r.mig = newMigrator(list, r.tel)
	if r.repl != nil {
		r.repl.stop = r.stop
	}
	r.free = newTenantless()
	r.watch = startFileWatch(r)
	if cfg.Layout == LayoutFlat {
		r.watch.folder(cfg.Dir)
	}
	r.reaperWG.Add(2)
	go r.background()
	go r.sweepLeftovers()
	if r.repl != nil && cfg.ReplicaCompactor != nil {
		r.compactQ = make(chan *tenant, 256)
		r.reaperWG.Add(1)
		go r.compactLoop()
	}
	return r, nil
}

// untilStop returns a context that Close cancels (and cancel, which the
// caller calls when done), for the router's background work.
func (r *router) untilStop() (context.Context, context.CancelFunc) {
	return untilClosed(context.Background(), r.stop)
}

// untilClosed returns ctx, also cancelled with cause ErrClosed once stop
// (a router's: Close) is closed, and cancel, which the caller calls when
// done. A nil stop never is.
func untilClosed(ctx context.Context, stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-stop:
			cancel(ErrClosed)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// tenant returns the tenant for id, pinned (the caller unpins it when
// done), validating id when it is not in the registry.
func (r *router) tenant(id string) (*tenant, error) {
	for {
		v, ok := r.tenants.Load(id)
		if !ok {
			if err := checkTenantID(id); err != nil {
				return nil, opError(opRoute, id, err)
			}
			t := newTenant(r, id)
			if _, lost := r.lostLeases.Load(id); lost {
				// An earlier object lost its lease and was let go: this
				// one answers Generation and SyncTenant as that one would.
				t.lost.Store(closedLost)
			}
			v, _ = r.tenants.LoadOrStore(id, t)
		}
		if t := v.(*tenant); t.pin() {
			return t, nil
		}
		// Leaving the registry: it is gone in a moment (or stays, if
		// forgetIdle changed its mind).
		runtime.Gosched()
	}
}

// forget removes t from the registry, if it is still the object for its ID.
func (r *router) forget(t *tenant) { r.tenants.CompareAndDelete(t.id, t) }

// forgetIdle removes t from the registry if nothing holds it: no pin (no
// lease, waiter, queued write or operation), no connection counted, and
// nothing kept about it that the next object for its ID could not rebuild
// from the file: a lease this node holds on it (Config.Ownership; given up
// when the tenant is closed and its final sync succeeds, so a tenant that
// keeps one stays until it is released or lost), a registration with
// Litestream, a final sync that failed (SyncTenant and resync retry it).
// Its telemetry state goes with it (the next object builds its own); a
// lost lease outlives it in lostLeases. haveWsem says the caller holds t's
// writer semaphore; if somebody else holds it, t stays, and is let go when
// that holder unpins it or evicts it.
//
// Pins and the removal form a handshake: pinGone is set only while the
// count is zero, after which no pin succeeds; the connections counted are
// read after it (connections are only reserved under a pin), and if there
// are any the mark is taken back. Only then is t deleted from the map,
// so a new object for the ID can only be made once no pin of t can exist.
func (r *router) forgetIdle(t *tenant, haveWsem bool) {
	if t.pins.Load() != 0 || t.counted.Load() != 0 {
		return
	}
	if !haveWsem {
		if !t.wsem.TryAcquire() {
			return
		}
		defer t.wsem.Release()
	}
	if t.lease != nil || t.registered.Load() || t.unsynced.Load() {
		return
	}
	if !t.pins.CompareAndSwap(0, pinGone) {
		return
	}
	if t.counted.Load() != 0 {
		t.pins.Add(-pinGone)
		return
	}
	r.forget(t)
	r.forgotten.Add(1)
}

// closeConcurrency bounds the tenants Close closes at once.
const closeConcurrency = 16

// close closes every idle tenant; leased connections close when released.
// With replication it fails if tenants are left whose last commits did not
// reach the replica (their final sync failed, now or earlier): closed all
// the same, but what they hold is on this machine only until they are
// opened again with replication (Litestream's files beside each database
// keep what it did not upload).
func (r *router) close() error {
	if r.repl != nil && !r.isClosed.Load() {
		r.syncBehind()
	}
	open, already := r.budget.close()
	if already {
		// A second Close (Proxy.Close after sql.DB's, or two at once)
		// says what the first would say now: nil only once everything
		// is closed (it said nil while tenants were still in use).
		<-r.closeReturned
		if busy, ops := r.awaitUnused(time.Now().Add(r.cfg.BusyTimeout)); len(busy) > 0 || ops > 0 {
			return r.stillInUse(busy, ops)
		}
		<-r.finished // at once, or as soon as the first Close's wait sees the work end
		return nil
	}
	defer close(r.closeReturned)
	r.isClosed.Store(true)
	close(r.stop)
	r.reaperWG.Wait()
	r.watch.close()
	r.closeFanOuts()
	// Side by side: with replication each eviction syncs and unregisters
	// the tenant, and with Ownership releases its lease, each of which may
	// wait its timeout when Litestream or etcd does not answer (5 s per
	// tenant, one after the other, was minutes at the default budget).
	var wg sync.WaitGroup
	slots := make(chan struct{}, closeConcurrency)
	for _, t := range open {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			t.evict(false, evictClose)
		})
	}
	wg.Wait()
	r.releaseUnopened()
	// Tenants in use (a transaction, rows not closed, a statement still
	// running) are closed by whoever ends that work. Close waits for them,
	// within BusyTimeout: returning while a statement still writes a
	// tenant's file and giving up the directory's lock let a relayout or a
	// new proxy take files this process still wrote.
	if busy, ops := r.awaitUnused(time.Now().Add(r.cfg.BusyTimeout)); len(busy) > 0 || ops > 0 {
		go func() {
			r.awaitUnused(time.Time{})
			r.finishClose()
		}()
		return errors.Join(r.stillInUse(busy, ops), r.unsyncedAtClose())
	}
	r.finishClose()
	return r.unsyncedAtClose()
}

// stillInUse is Close's error for tenants still in use, and tenant
// operations (delete, restore) still in flight, past BusyTimeout.
func (r *router) stillInUse(busy []*tenant, ops int64) error {
	var what []string
	if len(busy) > 0 {
		what = append(what, fmt.Sprintf("%d tenants still in use (%s)", len(busy), idList(busy)))
	}
	if ops > 0 {
		what = append(what, fmt.Sprintf("%d tenant operations (deletes, restores, restores from the replica) still in flight", ops))
	}
	return opError(opClose, "", fmt.Errorf("%s after %v: their connections close when the work on them ends (a transaction committed or rolled back, rows closed, a statement done, a sql.Conn closed), and the data directory stays locked until then", strings.Join(what, " and "), r.cfg.BusyTimeout))
}

// beginOp counts a tenant operation that may hold no connection while it
// changes the tenant's files (a delete, a restore), so that Close waits for
// it: one that began just before Close renamed the tenant's file after
// Close had returned nil and given up the directory. It fails with
// ErrClosed after Close.
func (r *router) beginOp(op, id string) (end func(), err error) {
	r.ops.Add(1)
	if r.isClosed.Load() {
		r.endOp()
		return nil, opError(op, id, ErrClosed)
	}
	return r.endOp, nil
}

func (r *router) endOp() {
	r.ops.Add(-1)
	r.budget.wake()
}

// finishClose gives up what the proxy holds beyond its tenants, once their
// connections are all closed.
func (r *router) finishClose() {
	defer close(r.finished)
	r.free.close()
	r.peek.close()
	r.tmpl.close()
	r.tel.close()
	r.dirLock.Close()
	if r.replLock != nil {
		r.replLock.Close()
	}
	if r.repl != nil {
		// Its connections to Litestream's socket (and two goroutines
		// each) outlived every Close, up to eight per proxy.
		r.repl.ctl.CloseIdleConnections()
	}
	leavePresence(r.presence)
}

// awaitUnused waits, after Close, until no tenant has a connection open
// and no tenant operation is in flight (beginOp), or until deadline (none
// when zero); it returns the tenants still open and the operations.
func (r *router) awaitUnused(deadline time.Time) ([]*tenant, int64) {
	b := r.budget
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		tm := time.NewTimer(time.Until(deadline))
		defer tm.Stop()
		timeout = tm.C
	}
	for {
		ch := b.waitCh()
		open, ops := b.lru(), r.ops.Load()
		if len(open) == 0 && ops == 0 {
			b.unwait()
			return nil, 0
		}
		select {
		case <-ch:
			b.unwait()
		case <-timeout:
			b.unwait()
			return open, ops
		}
	}
}

// idList names up to ten tenants, sorted, for a message.
func idList(ts []*tenant) string {
	ids := make([]string, 0, len(ts))
	for _, t := range ts {
		ids = append(ids, t.id)
	}
	slices.Sort(ids)
	list := strings.Join(ids[:min(len(ids), 10)], ", ")
	if len(ids) > 10 {
		list += ", ..."
	}
	return list
}

// unsyncedAtClose reports the tenants whose commits are not all in the
// replica, for close.
func (r *router) unsyncedAtClose() error {
	if r.repl == nil {
		return nil
	}
	behind := r.repl.behindTenants()
	if len(behind) == 0 {
		return nil
	}
	return opError(opClose, "", fmt.Errorf("%d tenants not synced to the replica (%s): their last commits are on this machine only until they are opened again with replication", len(behind), idList(behind)))
}

// allTenants yields the IDs of tenant files under cfg.Dir, in the order
// of listTenants (layout.go).
func (r *router) allTenants(ctx context.Context) iter.Seq2[string, error] {
	if r.isClosed.Load() {
		return func(yield func(string, error) bool) { yield("", opError(opListTenants, "", ErrClosed)) }
	}
	if err := r.sameDir(opListTenants, ""); err != nil {
		return func(yield func(string, error) bool) { yield("", err) }
	}
	return listTenants(ctx, r.cfg.Dir, r.cfg.Layout)
}

// tenantIDs lists the IDs of tenant files under cfg.Dir, sorted.
func (r *router) tenantIDs(ctx context.Context) ([]string, error) {
	var ids []string
	for id, err := range r.allTenants(ctx) {
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if r.cfg.Layout == LayoutBuckets {
		slices.Sort(ids)
	}
	return ids, nil
}

// makeTenantDir creates the folder of t's file if it is missing (a bucket
// of LayoutBuckets), mode 0700, and syncs Dir so that the folder outlives
// a crash together with the files about to be put in it.
func (r *router) makeTenantDir(t *tenant) error {
	dir := filepath.Dir(t.path)
	if dir == r.cfg.Dir {
		return nil
	}
	err := realBucket(dir, filepath.Base(dir))
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return realBucket(dir, filepath.Base(dir))
		}
		return err
	}
	if err := r.withFDs(t, func() error { return syncDir(r.cfg.Dir) }); err != nil {
		// Made again, and synced, by the next creation in it: a folder
		// left here would be taken as durable.
		os.Remove(dir)
		return err
	}
	return nil
}

// openOpts says what opening a tenant's writer may do.
type openOpts struct {
	mayCreate bool // create the file if missing
	migrate   bool // apply pending migrations (else they are ErrPendingMigrations)
	// servePending serves a tenant with pending migrations, or with
	// migrations beyond the configured ones (errAhead), as it is
	// (MigrateManual); t.ready then means "checked", not "up to date".
	servePending bool
	// deadline is the bound of a wait this call made already (for the
	// writer), within which a wait for a slot ends too: zero for none.
	deadline time.Time
}

// openWriter opens t's writer, creating the tenant's file if it is missing
// (o.mayCreate), and brings it through the migration gate (migrations.go).
// The caller holds t's writer semaphore.
//
// Another proxy (a process, the CLI) may delete or replace the file between
// the check that it exists and SQLite's open or first read: SQLite then says
// "unable to open database file", "disk I/O error" or "attempt to write a
// readonly database", which read like a failing disk. The open is then tried
// once more, and sees what is there now: a new tenant, ErrTenantNotFound, or
// the replacing file.
func (r *router) openWriter(ctx context.Context, t *tenant, o openOpts) (*physConn, error) {
	pc, err := r.openWriterOnce(ctx, t, o)
	if err != nil && fileWentAway(t.path, err) {
		pc, err = r.openWriterOnce(ctx, t, o)
	}
	return pc, err
}

// openWriterRaced, set by tests, runs after openWriterOnce has checked that
// the file exists.
var openWriterRaced func(t *tenant)

// errOpenAbandoned: work waited for the writer of a tenant whose open by
// another call ended with that call's context, before it could tell.
var errOpenAbandoned = errors.New("the open of the tenant that this waited for was abandoned by its caller (context ended); retry")

// fileWentAway reports whether err, from opening the tenant file at p,
// may come from the file being deleted or replaced meanwhile.
func fileWentAway(p string, err error) bool {
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case sqlite3.ErrCantOpen, sqlite3.ErrIoErr:
		_, serr := os.Lstat(p)
		return errors.Is(serr, fs.ErrNotExist)
	case sqlite3.ErrReadonly:
		return se.ExtendedCode == sqlite3.ErrReadonlyDbMoved
	}
	return false
}

func (r *router) openWriterOnce(ctx context.Context, t *tenant, o openOpts) (pc *physConn, err error) {
	start := time.Now()
	ctx, end := r.tel.span(ctx, spanTenantOpen, t.tel, attribute.String(attrRole, roleWriter))
	defer func() {
		end(err)
		// Failed opens too, as a reader's, but not of IDs that name no
		// tenant (see conn.opTenant).
		if !errors.Is(err, ErrTenantNotFound) {
			r.tel.opened(ctx, t.tel, roleWriter, start, err)
		}
	}()
	fi, err := t.statUnlinked()
	if err != nil {
		return nil, err
	}
	exists := fi != nil
	if openWriterRaced != nil {
		openWriterRaced(t)
	}
	if err := r.own(ctx, opOpenTenant, t); err != nil {
		if !exists {
			r.forget(t) // as below: hostile IDs must not grow the registry
			if ctx.Err() != nil {
				t.retireWith(opError(opOpenTenant, t.id, errOpenAbandoned))
			} else {
				t.retireWith(err) // work that waited for it gets the same answer
			}
		}
		return nil, err
	}
	if r.repl != nil && !t.registered.Load() {
		// Here or in the replica, and never older here than there. A
		// restore from the replica is an operation Close waits for (it
		// ends it): its file took the tenant's name after Close returned.
		endOp, err := r.beginOp(opOpenTenant, t.id)
		if err != nil {
			return nil, err
		}
		exists, err = r.reconcileGated(ctx, t, exists)
		endOp()
		if err != nil {
			return nil, err
		}
		fi = nil // perhaps restored from the replica meanwhile
	}
	if !exists && !o.mayCreate {
		// Refused before taking a slot (or evicting anybody). The object
		// leaves the registry (hostile IDs must not grow it) and is retired,
		// so that conns caching it look the tenant up again: one object per
		// tenant, or a later delete or restore would miss this one's conns.
		// Its lease goes too: every unknown ID a client sent kept an owner
		// key in etcd for the node's lifetime. Nothing was written under
		// it: released at position 0, it read as a delete of the tenant
		// (a restore on another node not streamed yet was then removed).
		r.releaseUnwritten(t)
		r.forget(t)
		t.retire()
		return nil, opError(opOpenTenant, t.id, ErrTenantNotFound)
	}
	if err := r.reserveBy(ctx, t, o.deadline); err != nil {
		return nil, opError(opWaitSlot, t.id, err)
	}
	if !exists {
		// Within the reservation: creating the file holds a descriptor too.
		cerr := r.createFile(ctx, t)
		if cerr != nil && !errors.Is(cerr, ErrTenantExists) {
			r.budget.unreserve(t)
			return nil, cerr
		}
		t.createdBy.Store(cerr == nil)
	}
	pc, err = r.conns.open(ctx, t, true)
	if err != nil {
		r.budget.unreserve(t)
		return nil, err
	}
	// Streamed from before its first write (migrations included).
	if err := r.register(ctx, t); err != nil {
		pc.close()
		r.budget.unreserve(t)
		return nil, err
	}
	if r.repl != nil {
		if _, err := os.Lstat(unsyncedMarker(t.path)); err == nil {
			if err := touchWAL(ctx, pc.c); err != nil {
				pc.close()
				r.unregister(t)
				r.budget.unreserve(t)
				return nil, opError(opOpenTenant, t.id, err)
			}
		}
	}
	if pc, err = r.gate(ctx, t, pc, o); err != nil {
		r.unregister(t)
		r.budget.unreserve(t)
		return nil, err
	}
	t.opened(fi)
	t.lastUsed.Store(r.budget.now())
	return pc, nil
}

// fillNew writes the new tenant file tmp, fully migrated: a copy of the
// template (template.go), or, when there is none, migrated step by step.
// bytesOnly says that SQLite never opened tmp (the template's image was
// written as it is): no side file (-wal, -shm, -journal) can exist. steps
// are the migrations applied, for the caller to report once tmp is the
// tenant's file.
func (r *router) fillNew(ctx context.Context, t *tenant, tmp string) (bytesOnly bool, steps []migStep, err error) {
	if len(r.mig.list) > 0 {
		tpl, err := r.template(ctx)
		if err != nil && ctx.Err() != nil {
			// Given up: not a reason to migrate step by step with a context
			// that has ended (whose error then named the first migration).
			return false, nil, opError(opCreateTenant, t.id, ctx.Err())
		}
		if err == nil {
			start := time.Now()
			if b, done, err := r.stampedTemplate(ctx, tpl, start); err == nil {
				err := writeNewFile(tmp, b)
				done()
				if err != nil {
					return true, nil, opError(opCreateTenant, t.id, err)
				}
				return true, r.copiedMigrations(time.Since(start)), nil
			}
			err := r.copyTemplate(ctx, tpl, tmp)
			if err == nil {
				return false, r.copiedMigrations(time.Since(start)), nil
			}
			if ctx.Err() != nil {
				// Given up, not damaged: the template stays.
				removeWithSideFiles(tmp)
				return false, nil, opError(opCreateTenant, t.id, ctx.Err())
			}
			if outOfFiles(err) {
				// Not damaged either: withFDs closes an idle tenant and
				// copies again (dropped, a large template was built anew).
				return false, nil, opError(opCreateTenant, t.id, err)
			}
			// A template damaged since it was built (its file is read
			// for every copy when too large to hold in memory): the next
			// creation builds it again, this one migrates step by step.
			r.dropTemplate(tpl)
			if err := removeWithSideFiles(tmp); err != nil {
				return false, nil, opError(opCreateTenant, t.id, err)
			}
		}
	}
	if err := createEmpty(tmp); err != nil {
		return false, nil, opError(opCreateTenant, t.id, err)
	}
	c, err := r.conns.openPath(tmp, r.conns.writerParams)
	if err != nil {
		return false, nil, opError(opCreateTenant, t.id, err)
	}
	_, err = r.mig.migrate(ctx, c, t.id, t.tel, true, &steps)
	if cerr := c.Close(); err == nil && cerr != nil {
		err = opError(opCreateTenant, t.id, cerr)
	}
	return false, steps, err
}

// reportMigrations reports steps, applied to t's new file, as t's.
func (r *router) reportMigrations(ctx context.Context, t *tenant, steps []migStep) {
	for _, s := range steps {
		if s.copied {
			_, end := r.tel.span(ctx, spanMigrate, t.tel, attribute.String(attrMigration, s.name))
			end(nil)
		}
		r.tel.migrated(ctx, t.tel, s.name, s.d, nil)
	}
}

// createFile creates t's database file, fully migrated, or reports
// ErrTenantExists. The file is built under a temporary name and linked into
// place, so no one (Tenants, another process) ever sees it half-made.
func (r *router) createFile(ctx context.Context, t *tenant) error {
	if err := r.makeTenantDir(t); err != nil {
		return opError(opCreateTenant, t.id, err)
	}
	// Not in a folder that is not the data directory's any more (a symlink
	// Dir pointed elsewhere since New; a bucket folder that is a symlink):
	// the tenant would be created there and then refused at its open.
	if real, err := filepath.EvalSymlinks(filepath.Dir(t.path)); err != nil {
		return opError(opCreateTenant, t.id, err)
	} else if want := filepath.Dir(t.realPath()); real != want {
		return opError(opCreateTenant, t.id, fmt.Errorf("%w: %s is %s, not %s: the data directory may not change while the proxy runs", errNotTenantFile, filepath.Dir(t.path), real, want))
	}
	var tmp string
	var bytesOnly bool
	var steps []migStep
	clean := func() {
		if bytesOnly {
			os.Remove(tmp) // nothing else to unlink: three failing unlinks fewer per creation
		} else {
			removeWithSideFiles(tmp)
		}
	}
	// Building the file opens it (and the template's): out of
	// descriptors, idle tenants are closed for them as for connections.
	err := r.withFDs(t, func() (err error) {
		tmp = tempName(filepath.Dir(t.path), creatingPrefix, t.id)
		if bytesOnly, steps, err = r.fillNew(ctx, t, tmp); err != nil {
			clean()
		}
		return err
	})
	if err != nil {
		return notWritableDir(filepath.Dir(t.path), err)
	}
	defer clean()
	if err := removeOrphanSideFiles(t.path); err != nil {
		return opError(opCreateTenant, t.id, err)
	}
	if err := os.Link(tmp, t.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return opError(opCreateTenant, t.id, ErrTenantExists)
		}
		return opError(opCreateTenant, t.id, err)
	}
	// The temporary name goes at once: left by a kill, it is a second name
	// of the tenant's file, which would keep its rows after a delete (the
	// sweep removes one that is, whatever its age).
	clean()
	t.ready.Store(true)
	r.reportMigrations(ctx, t, steps) // now the tenant's
	if err := r.withFDs(t, func() error { return syncDir(filepath.Dir(t.path)) }); err != nil {
		return opError(opCreateTenant, t.id, err)
	}
	return nil
}

// notWritableDir says, of err from creating a file in dir, that the
// process may not write dir (permissions, chattr +i, a read-only mount):
// the error named only the temporary file. New does not refuse such a
// Dir: the CLI's status reads a read-only copy.
func notWritableDir(dir string, err error) error {
	var e *Error
	if !errors.Is(err, fs.ErrPermission) && !errors.Is(err, syscall.EROFS) || !errors.As(err, &e) {
		return err
	}
	return &Error{Op: e.Op, Tenant: e.Tenant, Err: fmt.Errorf("%w (this process may not create files in %s, the data directory: the proxy needs to write there)", e.Err, dir)}
}

// createsClosed says whether CreateTenant leaves the new tenant closed:
// nothing has to know of it before its first use (no replication to
// register it with, no lease to take).
func (r *router) createsClosed() bool { return r.repl == nil && r.cfg.Ownership == nil }

// createClosed creates t's file, fully migrated (createFile), without
// opening it: its first use opens it as any closed tenant. Opening it
// here made SQLite parse the schema of every new tenant (~0.9 ms for
// fifty tables and their indexes), and bulk creation evicted a tenant per
// creation once the budget was full. The creation takes a slot while it
// runs, as the open path does (it holds descriptors, and without a
// template a connection). The caller holds t's writer semaphore.
func (r *router) createClosed(ctx context.Context, t *tenant) error {
	if err := r.reserve(ctx, t); err != nil {
		return opError(opWaitSlot, t.id, err)
	}
	defer r.budget.unreserve(t)
	return r.createFile(ctx, t)
}
