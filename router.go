package sqliteproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// router owns every tenant's connections: it maps tenant IDs to tenants,
// keeps each tenant's writer and readers, and enforces the global budget of
// open SQLite connections (Config.MaxConnections) by evicting idle tenants.
//
// Lock order: tenant.mu before router.mu. A tenant's wsem (its writer
// semaphore) may be held while taking either; nobody waits for a wsem while
// holding a mutex.
type router struct {
	cfg          *Config
	drv          *sqlite3.SQLiteDriver // opens tenant connections, hardened by ConnectHook
	writerParams string                // URI query of writer connections
	readerParams string                // URI query of reader connections
	aloneParams  string                // URI query of MigrateAll's connections to tenants not open anywhere (see migrateAlone)
	aloneDrv     *sqlite3.SQLiteDriver // opens those: like drv, but fails at once when the file is in use
	mig          *migrator
	tel          *telemetry
	free         *tenantless // answers tenantless pure expressions
	epoch        time.Time   // lastUsed times count from here

	accessOpts openOpts // what a statement's first access to a tenant may do
	tenants    sync.Map // tenant ID -> *tenant; read on every checkout without locking
	classes    classCache
	clock      atomic.Int64 // nanoseconds since epoch, advanced every clockTick by background
	isClosed   atomic.Bool
	waiters    atomic.Int32 // goroutines waiting on wakeCh; releases wake them only when > 0
	evictions  atomic.Int64
	waits      atomic.Int64

	mu      sync.Mutex // guards open, openSet, wakeCh, closed and every tenant's nopen
	open    int        // connections counted against cfg.MaxConnections
	openSet map[*tenant]struct{}
	wakeCh  chan struct{} // closed and replaced when a slot, a reader or the writer may have come free
	closed  bool

	stop     chan struct{} // closed by close to end the idle reaper
	reaperWG sync.WaitGroup
}

func newRouter(cfg *Config) (*router, error) {
	if _, err := os.Stat(cfg.Dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, opError("open", "", err)
		}
		if err := os.Chmod(cfg.Dir, 0o700); err != nil { // whatever the umask
			return nil, opError("open", "", err)
		}
	}
	fi, err := os.Stat(cfg.Dir)
	if err != nil {
		return nil, opError("open", "", err)
	}
	if !fi.IsDir() {
		return nil, opError("open", "", fmt.Errorf("%s is not a directory", cfg.Dir))
	}
	list, err := loadMigrations(cfg)
	if err != nil {
		return nil, opError("open", "", err)
	}
	r := &router{
		cfg:     cfg,
		mig:     newMigrator(list),
		epoch:   time.Now(),
		openSet: make(map[*tenant]struct{}),
		wakeCh:  make(chan struct{}),
		stop:    make(chan struct{}),
	}
	if r.tel, err = newTelemetry(cfg, r); err != nil {
		return nil, opError("open", "", err)
	}
	r.mig.tel = r.tel
	r.drv = &sqlite3.SQLiteDriver{ConnectHook: tenantHook(cfg.BusyTimeout)}
	// No retry: waiting cannot help while another connection has the file open.
	r.aloneDrv = &sqlite3.SQLiteDriver{ConnectHook: tenantHook(0)}
	r.accessOpts = openOpts{mayCreate: !cfg.ExplicitCreate, migrate: cfg.MigrationMode == MigrateAuto}
	common := url.Values{}
	common.Set("mode", "rw") // never create a file: a tenant's file is made only by createFile
	common.Set("_busy_timeout", strconv.FormatInt(cfg.BusyTimeout.Milliseconds(), 10))
	common.Set("_synchronous", cfg.Synchronous)
	common.Set("_stmt_cache_size", strconv.Itoa(cfg.StmtCacheSize))
	if cfg.ForeignKeys {
		common.Set("_foreign_keys", "1")
	}
	w := url.Values{}
	maps.Copy(w, common)
	w.Set("_txlock", "immediate")
	rd := url.Values{}
	maps.Copy(rd, common)
	rd.Set("_query_only", "1")
	rd.Set("_txlock", "deferred")
	r.writerParams = "?" + w.Encode()
	w.Set("_locking_mode", "EXCLUSIVE")
	w.Set("_busy_timeout", "0") // getting the lock fails at once rather than after BusyTimeout
	r.aloneParams = "?" + w.Encode()
	r.readerParams = "?" + rd.Encode()
	r.free = newTenantless()
	r.readClock()
	r.reaperWG.Add(1)
	go r.background()
	return r, nil
}

// clockTick is the resolution of the coarse clock behind lastUsed stamps:
// reading the real clock on every release costs ~40 ns.
const clockTick = 10 * time.Millisecond

// now is the coarse monotonic time used for lastUsed stamps.
func (r *router) now() int64 { return r.clock.Load() }

func (r *router) readClock() { r.clock.Store(int64(time.Since(r.epoch))) }

// tenant returns the tenant for id, validating id the first time it is seen.
func (r *router) tenant(id string) (*tenant, error) {
	if v, ok := r.tenants.Load(id); ok {
		return v.(*tenant), nil
	}
	if err := checkTenantID(id); err != nil {
		return nil, opError("route", id, err)
	}
	v, _ := r.tenants.LoadOrStore(id, newTenant(r, id))
	return v.(*tenant), nil
}

// waitCh registers the caller as a waiter and returns the channel that the
// next wake closes. The caller must re-check its condition after this call
// and then call unwait.
func (r *router) waitCh() chan struct{} {
	r.waiters.Add(1)
	r.mu.Lock()
	ch := r.wakeCh
	r.mu.Unlock()
	return ch
}

func (r *router) unwait() { r.waiters.Add(-1) }

// wake wakes every waiter, if there is any; cheap when there is none.
func (r *router) wake() {
	if r.waiters.Load() == 0 {
		return
	}
	r.mu.Lock()
	r.wakeLocked()
	r.mu.Unlock()
}

func (r *router) wakeLocked() {
	close(r.wakeCh)
	r.wakeCh = make(chan struct{})
}

// tryReserve counts one more connection for t if the budget allows it.
func (r *router) tryReserve(t *tenant) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, ErrClosed
	}
	if r.open >= r.cfg.MaxConnections {
		return false, nil
	}
	r.reserveLocked(t)
	return true, nil
}

func (r *router) reserveLocked(t *tenant) {
	r.open++
	t.nopen++
	if t.nopen == 1 {
		r.openSet[t] = struct{}{}
	}
}

// unreserve gives back the slot of a connection that failed to open or was
// closed alone. While other connections of t are open, SQLite may keep the
// closed descriptor parked until the last one closes (POSIX locks are per
// process and file), so the slot stays counted until t is closed as a whole.
// Called under the same lease that reserved, so no eviction interleaves.
func (r *router) unreserve(t *tenant) {
	r.mu.Lock()
	if t.nopen == 1 {
		r.open--
		t.nopen = 0
		delete(r.openSet, t)
		r.wakeLocked()
	}
	r.mu.Unlock()
}

// reserve counts one more connection for t, waiting for a slot if needed.
// The caller holds t's writer semaphore, which lets t itself be evicted when
// its readers are all idle.
func (r *router) reserve(ctx context.Context, t *tenant) error {
	if ok, err := r.tryReserve(t); ok || err != nil {
		return err
	}
	r.waits.Add(1)
	start := time.Now()
	wctx, cancel := r.boundWait(ctx)
	defer cancel()
	var err error
	defer func() { r.tel.waited(ctx, t, "slot", start, err) }()
	for {
		ch := r.waitCh()
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			r.unwait()
			return ErrClosed
		}
		if r.open < r.cfg.MaxConnections {
			r.reserveLocked(t)
			r.mu.Unlock()
			r.unwait()
			return nil
		}
		cands := r.lruLocked()
		r.mu.Unlock()
		if r.evictOne(cands, t) {
			r.unwait()
			continue
		}
		select {
		case <-ch:
			r.unwait()
		case <-wctx.Done():
			r.unwait()
			err = waitErr(ctx)
			return err
		}
	}
}

// boundWait bounds a wait whose context has no deadline by BusyTimeout, as
// SQLite's busy handler would: a caller that cannot get a connection gets
// SQLITE_BUSY instead of waiting for ever (a write through the *sql.DB
// inside a transaction on the same tenant would otherwise wait for itself).
func (r *router) boundWait(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.cfg.BusyTimeout)
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

// lruLocked returns the tenants with open connections, least recently used first.
func (r *router) lruLocked() []*tenant {
	cands := make([]*tenant, 0, len(r.openSet))
	for t := range r.openSet {
		cands = append(cands, t)
	}
	slices.SortFunc(cands, func(a, b *tenant) int {
		return int(a.lastUsed.Load() - b.lastUsed.Load())
	})
	return cands
}

// evictOne closes the first wholly idle tenant of cands. self, if not nil,
// is a tenant whose writer semaphore the caller holds.
func (r *router) evictOne(cands []*tenant, self *tenant) bool {
	for _, v := range cands {
		if r.tryEvict(v, v == self, "budget") {
			return true
		}
	}
	return false
}

// tryEvict closes every connection of t if none is leased, and frees their
// slots once they are closed. haveWsem says the caller holds t's writer
// semaphore already (and t.w is then not leased by anybody else).
func (r *router) tryEvict(t *tenant, haveWsem bool, reason string) bool {
	if !haveWsem {
		if !t.wsem.TryAcquire() {
			return false
		}
		defer t.wsem.Release()
	}
	t.mu.Lock()
	if t.leasedReaders > 0 || t.evicting {
		t.mu.Unlock()
		return false
	}
	r.mu.Lock()
	n := t.nopen
	r.mu.Unlock()
	if n == 0 {
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

	_, end := r.tel.span(context.Background(), "sqliteproxy.tenant.evict", t, attribute.String(attrReason, reason))
	for _, pc := range conns {
		pc.close()
	}
	end(nil)

	r.mu.Lock()
	r.open -= t.nopen
	t.nopen = 0
	delete(r.openSet, t)
	r.wakeLocked()
	r.mu.Unlock()
	r.evictions.Add(1)
	r.tel.evicted(t, reason)

	t.mu.Lock()
	t.evicting = false
	close(t.evictDone)
	t.mu.Unlock()
	return true
}

// background advances the coarse clock and, every quarter of IdleTimeout
// (at most every 10 s), closes tenants idle for longer than IdleTimeout.
func (r *router) background() {
	defer r.reaperWG.Done()
	tick := time.NewTicker(clockTick)
	defer tick.Stop()
	reapEvery := int64(min(max(r.cfg.IdleTimeout/4, clockTick), 10*time.Second))
	var lastReap, lastRank int64
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		r.readClock()
		if r.now()-lastRank >= int64(topNEvery) {
			lastRank = r.now()
			r.tel.rankTenants(r)
		}
		if r.cfg.IdleTimeout <= 0 || r.now()-lastReap < reapEvery {
			continue
		}
		lastReap = r.now()
		r.reapIdle()
	}
}

// reapIdle closes tenants idle for longer than cfg.IdleTimeout.
func (r *router) reapIdle() {
	limit := r.now() - int64(r.cfg.IdleTimeout)
	r.mu.Lock()
	cands := r.lruLocked()
	r.mu.Unlock()
	for _, t := range cands {
		if t.lastUsed.Load() > limit {
			break
		}
		r.tryEvict(t, false, "idle")
	}
}

// close closes every idle tenant; leased connections close when released.
func (r *router) close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.isClosed.Store(true)
	r.wakeLocked()
	cands := r.lruLocked()
	r.mu.Unlock()
	close(r.stop)
	r.reaperWG.Wait()
	for _, t := range cands {
		r.tryEvict(t, false, "close")
	}
	r.free.close()
	r.tel.close()
	return nil
}

// tenants lists the IDs of tenant files under cfg.Dir, sorted.
func (r *router) tenantIDs() ([]string, error) {
	if r.isClosed.Load() {
		return nil, ErrClosed
	}
	entries, err := os.ReadDir(r.cfg.Dir)
	if err != nil {
		return nil, opError("list tenants", "", err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if id, ok := tenantIDFromFile(e.Name()); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// tenant is one tenant's database file and its connections: one writer,
// guarded by the semaphore wsem, and up to cfg.ReadersPerTenant readers.
type tenant struct {
	r    *router
	id   string
	path string // <Dir>/<id>.db
	uri  string // file: URI of path, without query

	wsem  sem          // its holder owns w
	w     *physConn    // the writer, nil when closed
	ready atomic.Bool  // migrations are applied (this process checked)
	state atomic.Int32 // tenantActive, tenantDraining or tenantDeleted; changed under mu

	mu            sync.Mutex // guards idle, nreaders, leasedReaders, evicting, evictDone, drainDone
	idle          []*physConn
	nreaders      int // readers open or opening
	leasedReaders int // readers leased or opening
	evicting      bool
	evictDone     chan struct{}
	readerQ       []chan *physConn // waiters for a reader when all are leased, oldest first
	drainDone     chan struct{}    // closed when a drain (delete, restore) ends

	nopen int // connections counted in the budget; guarded by r.mu

	lastUsed  atomic.Int64
	createdBy atomic.Bool // this process created the file (read by CreateTenant under wsem)

	attrs     atomic.Pointer[tenantAttrs] // metric attributes
	spanAttrs trace.SpanStartOption       // span attributes: always the tenant's own
	ops       atomic.Int64                // operations since the last ranking (MetricsTenantLimit > 0)
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

func newTenant(r *router, id string) *tenant {
	path := filepath.Join(r.cfg.Dir, id+tenantFileSuffix)
	u := url.URL{Scheme: "file", OmitHost: true, Path: filepath.ToSlash(path)}
	t := &tenant{r: r, id: id, path: path, uri: u.String()}
	t.attrs.Store(r.tel.attrsFor(id))
	t.spanAttrs = r.tel.spanAttrs(id)
	return t
}

func (t *tenant) touch() {
	if now := t.r.now(); t.lastUsed.Load() != now {
		t.lastUsed.Store(now)
	}
}

// awaitDrain waits while t is draining. It reports ErrTenantNotFound once t
// is deleted.
func (t *tenant) awaitDrain(ctx context.Context) error {
	for {
		t.mu.Lock()
		st, done := t.state.Load(), t.drainDone
		t.mu.Unlock()
		switch st {
		case tenantActive:
			return nil
		case tenantDeleted:
			return opError("open tenant", t.id, ErrTenantNotFound)
		}
		select {
		case <-done:
		case <-ctx.Done():
			return opError("wait for tenant", t.id, ctx.Err())
		}
	}
}

// acquireWriter leases the writer, opening (and migrating) it if needed.
func (t *tenant) acquireWriter(ctx context.Context) (*physConn, error) {
	if err := t.lockWriter(ctx); err != nil {
		return nil, err
	}
	return t.openLockedWriter(ctx, t.r.accessOpts)
}

// openOpts says what opening a tenant's writer may do.
type openOpts struct {
	mayCreate bool // create the file if missing
	migrate   bool // apply pending migrations (else they are ErrPendingMigrations)
	// keepMigrator keeps using the connection that migrated, which is
	// otherwise replaced so that users do not see last_insert_rowid() and
	// changes() of the ledger inserts; for MigrateAll, which closes it anyway.
	keepMigrator bool
}

// lockWriter takes the writer semaphore of an active tenant.
func (t *tenant) lockWriter(ctx context.Context) error {
	for {
		if !t.wsem.TryAcquire() {
			start := time.Now()
			wctx, cancel := t.r.boundWait(ctx)
			err := t.wsem.Acquire(wctx)
			cancel()
			if err != nil {
				err = waitErr(ctx)
			}
			t.r.tel.waited(ctx, t, "writer", start, err)
			if err != nil {
				return opError("wait for writer", t.id, err)
			}
		}
		if t.state.Load() == tenantActive {
			return nil
		}
		t.wsem.Release() // a drain is queued behind us, or done
		if err := t.awaitDrain(ctx); err != nil {
			return err
		}
	}
}

// openLockedWriter returns the writer, opening it if needed; the caller
// holds wsem, which is released on error.
func (t *tenant) openLockedWriter(ctx context.Context, o openOpts) (*physConn, error) {
	if t.w != nil {
		return t.w, nil
	}
	pc, err := t.openWriter(ctx, o)
	if err != nil {
		t.wsem.Release()
		t.r.wake()
		return nil, err
	}
	t.w = pc
	return pc, nil
}

func (t *tenant) releaseWriter() {
	t.touch()
	t.wsem.Release()
	t.r.wake()
	if t.r.isClosed.Load() {
		t.r.tryEvict(t, false, "close")
	}
}

// openWriter opens the writer, creating the tenant's file if it is missing
// (o.mayCreate), and applies pending migrations (o.migrate) or refuses the
// tenant if some are pending. The caller holds wsem.
func (t *tenant) openWriter(ctx context.Context, o openOpts) (pc *physConn, err error) {
	start := time.Now()
	ctx, end := t.r.tel.span(ctx, "sqliteproxy.tenant.open", t, attribute.String(attrRole, "writer"))
	defer func() {
		end(err)
		if err == nil {
			t.r.tel.opened(ctx, t, "writer", start, nil)
		}
	}()
	exists, err := t.fileExists()
	if err != nil {
		return nil, err
	}
	if !exists && !o.mayCreate {
		// Refused before taking a slot (or evicting anybody). The object
		// leaves the registry (hostile IDs must not grow it) and is retired,
		// so that conns caching it look the tenant up again: one object per
		// tenant, or a later delete or restore would miss this one's conns.
		t.r.tenants.CompareAndDelete(t.id, t)
		t.mu.Lock()
		t.state.Store(tenantDeleted)
		t.mu.Unlock()
		return nil, opError("open tenant", t.id, ErrTenantNotFound)
	}
	if err := t.r.reserve(ctx, t); err != nil {
		return nil, opError("wait for connection", t.id, err)
	}
	if !exists {
		// Within the reservation: creating the file holds a descriptor too.
		cerr := t.r.createFile(ctx, t)
		if cerr != nil && !errors.Is(cerr, ErrTenantExists) {
			t.r.unreserve(t)
			return nil, cerr
		}
		t.createdBy.Store(cerr == nil)
	}
	pc, err = t.r.openConn(t, true)
	if err != nil {
		t.r.unreserve(t)
		return nil, err
	}
	if !t.ready.Load() && !o.migrate {
		if err := t.r.mig.requireCurrent(ctx, t.id, pc.c); err != nil {
			pc.close()
			t.r.unreserve(t)
			return nil, err
		}
		t.ready.Store(true)
	}
	if !t.ready.Load() {
		applied, err := t.r.mig.migrate(ctx, t, pc.c)
		if err == nil && applied > 0 && !o.keepMigrator {
			// Start users on a fresh connection: the migrating one carries
			// last_insert_rowid() and changes() from the ledger inserts.
			pc.close()
			pc, err = t.r.openConn(t, true)
			if err != nil {
				t.r.unreserve(t)
				return nil, err
			}
		}
		if err != nil {
			pc.close()
			t.r.unreserve(t)
			return nil, err
		}
		t.ready.Store(true)
	}
	t.lastUsed.Store(t.r.now())
	return pc, nil
}

// mustExist is ErrTenantNotFound (for op) unless t's file exists.
func (t *tenant) mustExist(op string) error {
	exists, err := t.fileExists()
	if err == nil && !exists {
		err = opError(op, t.id, ErrTenantNotFound)
	}
	return err
}

// fileExists reports whether t's database file exists. A file that is not
// a regular file (a symlink, say) is an error.
func (t *tenant) fileExists() (bool, error) {
	fi, err := os.Lstat(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, opError("open tenant", t.id, err)
	case !fi.Mode().IsRegular():
		return false, opError("open tenant", t.id, fmt.Errorf("%s is not a regular file", t.path))
	}
	return true, nil
}

// acquireReader leases a reader: an idle one, a new one if the tenant and
// the budget allow, else it waits. It never lends the writer for a read
// (unless the tenant has no readers at all): rows left open on the writer
// would block the tenant's writes, and code that writes while it iterates
// would wait for itself. A tenant not yet migrated in this process is
// opened (and migrated) through its writer first.
func (t *tenant) acquireReader(ctx context.Context) (_ *physConn, err error) {
	if t.r.cfg.ReadersPerTenant == 0 {
		return t.acquireWriter(ctx)
	}
	if !t.ready.Load() {
		if _, err := t.acquireWriter(ctx); err != nil {
			return nil, err
		}
		t.releaseWriter()
	}
	if pc, ok := t.popIdle(); ok {
		return pc, nil
	}
	wctx, cancel := t.r.boundWait(ctx)
	defer cancel()
	registered := false
	var waitStart time.Time // set when this call first has to wait: one wait, however many wake-ups
	defer func() {
		if registered {
			t.r.unwait()
		}
		if !waitStart.IsZero() {
			t.r.tel.waited(ctx, t, "reader", waitStart, err)
		}
	}()
	for {
		var ch chan struct{}
		if registered {
			t.r.unwait()
		}
		ch, registered = t.r.waitCh(), true

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
			case <-wctx.Done():
				return nil, opError("wait for reader", t.id, waitErr(ctx))
			}
		}
		if n := len(t.idle); n > 0 {
			pc := t.idle[n-1]
			t.idle = t.idle[:n-1]
			t.leasedReaders++
			t.mu.Unlock()
			return pc, nil
		}
		if t.nreaders < t.r.cfg.ReadersPerTenant {
			ok, err := t.r.tryReserve(t)
			if err != nil {
				t.mu.Unlock()
				return nil, opError("open reader", t.id, err)
			}
			if ok {
				t.nreaders++
				t.leasedReaders++
				t.mu.Unlock()
				return t.openReader(ctx)
			}
			t.mu.Unlock()
			t.r.mu.Lock()
			cands := t.r.lruLocked()
			t.r.mu.Unlock()
			// Other tenants first; t itself only if it is wholly idle (its
			// idle writer may be what fills a small budget).
			if i := slices.Index(cands, t); i >= 0 {
				cands = append(slices.Delete(cands, i, i+1), t)
			}
			if t.r.evictOne(cands, nil) {
				continue
			}
			if waitStart.IsZero() {
				waitStart = time.Now()
				t.r.waits.Add(1)
			}
			select { // for a slot
			case <-ch:
			case <-wctx.Done():
				return nil, opError("wait for reader", t.id, waitErr(ctx))
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
			t.r.waits.Add(1)
		}
		select {
		case pc := <-q:
			if pc != nil {
				return pc, nil
			}
			// nil: the tenant's readers were closed (eviction, drain): look again
		case <-wctx.Done():
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
			return nil, opError("wait for reader", t.id, waitErr(ctx))
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

func (t *tenant) popIdle() (*physConn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	pc, err := t.r.openConn(t, false)
	t.r.tel.opened(ctx, t, "reader", start, err)
	if err != nil {
		t.r.unreserve(t) // while the lease still keeps eviction away
		t.mu.Lock()
		t.nreaders--
		t.leasedReaders--
		t.wakeReaderQLocked() // a reader may be opened for them now
		t.mu.Unlock()
		return nil, err
	}
	return pc, nil
}

func (t *tenant) releaseReader(pc *physConn) {
	t.touch()
	t.mu.Lock()
	if len(t.readerQ) > 0 {
		// Hand it to the oldest waiter: the lease passes on as it is.
		ch := t.readerQ[0]
		t.readerQ = t.readerQ[1:]
		t.mu.Unlock()
		ch <- pc
		return
	}
	t.idle = append(t.idle, pc)
	t.leasedReaders--
	t.mu.Unlock()
	t.r.wake()
	if t.r.isClosed.Load() {
		t.r.tryEvict(t, false, "close")
	}
}

// discard ends the lease of pc by closing it, for a connection whose state
// is unknown (a ROLLBACK failed at check-in). Its slot is given back as
// unreserve does (a descriptor closed while others of t are open stays
// parked, so it stays counted until t is closed as a whole), and the next
// lease opens a fresh connection.
func (t *tenant) discard(pc *physConn) {
	if pc.writer {
		t.w = nil
		pc.close()
		t.r.unreserve(t)
		t.releaseWriter()
		return
	}
	pc.close()
	t.r.unreserve(t) // while the lease still keeps eviction away
	t.mu.Lock()
	t.nreaders--
	t.leasedReaders--
	t.wakeReaderQLocked() // a reader may be opened for them now
	t.mu.Unlock()
	t.touch()
	t.r.wake()
	if t.r.isClosed.Load() {
		t.r.tryEvict(t, false, "close")
	}
}

// release returns a leased connection to its tenant.
func (t *tenant) release(pc *physConn) {
	if pc.writer {
		t.releaseWriter()
	} else {
		t.releaseReader(pc)
	}
}

// physConn is one SQLite connection of a tenant.
type physConn struct {
	c      *sqlite3.SQLiteConn
	t      *tenant
	writer bool
	rows   int                            // open Rows; touched only by the leaseholder
	lease  atomic.Uint64                  // counts leases; Rows closed after theirs ended leave pc alone
	stmts  map[string]*sqlite3.SQLiteStmt // statements prepared for routing Stmts, idle
}

func (r *router) openConn(t *tenant, writer bool) (*physConn, error) {
	params := r.readerParams
	if writer {
		params = r.writerParams
	}
	c, err := r.drv.Open(t.uri + params)
	if err != nil {
		return nil, opError("open tenant", t.id, err)
	}
	return &physConn{c: c.(*sqlite3.SQLiteConn), t: t, writer: writer}, nil
}

// takeStmt returns an idle prepared statement for query, preparing one if needed.
func (pc *physConn) takeStmt(ctx context.Context, query string) (*sqlite3.SQLiteStmt, error) {
	if s, ok := pc.stmts[query]; ok {
		delete(pc.stmts, query)
		return s, nil
	}
	s, err := pc.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.(*sqlite3.SQLiteStmt), nil
}

// putStmt keeps s for reuse, or closes it when the cache is full.
func (pc *physConn) putStmt(query string, s *sqlite3.SQLiteStmt) {
	if pc.stmts == nil {
		pc.stmts = make(map[string]*sqlite3.SQLiteStmt)
	}
	if _, dup := pc.stmts[query]; dup || len(pc.stmts) >= max(pc.t.r.cfg.StmtCacheSize, 1) {
		s.Close()
		return
	}
	pc.stmts[query] = s
}

// close finalizes the cached statements first: a statement left open makes
// sqlite3_close_v2 keep a zombie handle and its file descriptor.
func (pc *physConn) close() {
	for q, s := range pc.stmts {
		s.Close()
		delete(pc.stmts, q)
	}
	pc.c.Close()
}
