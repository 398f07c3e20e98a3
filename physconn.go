package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-sqlite3"
)

// connOpener opens SQLite connections to tenant files with the pragmas of
// the configuration, hardened by tenantHook (harden.go).
type connOpener struct {
	drv          *sqlite3.SQLiteDriver // opens tenant connections (writers), hardened by ConnectHook
	readerDrv    *sqlite3.SQLiteDriver // opens readers: like drv, with fanOutAuthorizer
	writerParams string                // URI query of writer connections
	readerParams string                // URI query of reader connections
	aloneParams  string                // URI query of MigrateAll's connections to tenants not open anywhere (see migrateAlone)
	aloneDrv     *sqlite3.SQLiteDriver // opens those: like drv, but fails at once when the file is in use
	fanOutDrv    *sqlite3.SQLiteDriver // opens a fan-out's own read-only connections to tenants not open here (readClosed)
	pathDrv      *sqlite3.SQLiteDriver // like drv, for files anywhere (openPath: templates, files being built)
	plainDrv     *sqlite3.SQLiteDriver // opens a tenant's file for a backup, a check or a ledger's look: not hardened, only the proxy's busy handler (busyDriver)
	realDir      string                // Config.Dir with every symlink resolved
	replicated   bool                  // Litestream streams the tenants (Config.ReplicaURL)
	cacheSize    int                   // statements each physConn keeps for routing Stmts
}

func newConnOpener(cfg *Config, realDir string) connOpener {
	floor := syncRank(cfg.Synchronous)
	o := connOpener{
		// openFile tries their opens again while the file is busy, the
		// switch to WAL included: no wait inside the hook (walWait 0), which
		// sees no context.
		drv: &sqlite3.SQLiteDriver{ConnectHook: tenantHook(cfg.BusyTimeout, 0, cfg.ReplicaURL != "", realDir, floor, cfg.KeepWAL, tenantAuthorizer)},
		// A reader's PRAGMAs only query: SQLite applies some setters
		// (case_sensitive_like, query_only, ignore_check_constraints) when
		// it compiles them, EXPLAIN included, and one compiled on a reader
		// (a Prepare while the writer was busy) changed the answers of every
		// later query on it. Refused there, they run on the writer.
		readerDrv: &sqlite3.SQLiteDriver{ConnectHook: tenantHook(cfg.BusyTimeout, 0, cfg.ReplicaURL != "", realDir, 0, cfg.KeepWAL, fanOutAuthorizer)},
		// Hardened as tenant connections are, without the switch to WAL
		// (the tenant's file is in WAL mode already).
		fanOutDrv: &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			if err := setBusyTimeout(c, cfg.BusyTimeout); err != nil {
				return err
			}
			return hardenTenantConn(c, false, 0, fanOutAuthorizer)
		}},
		// No retry: waiting cannot help while another connection has the file open.
		aloneDrv: &sqlite3.SQLiteDriver{ConnectHook: tenantHook(0, 0, cfg.ReplicaURL != "", realDir, floor, cfg.KeepWAL, tenantAuthorizer)},
		// Files being built are not tenants yet: nothing is kept beside them.
		pathDrv:    &sqlite3.SQLiteDriver{ConnectHook: tenantHook(cfg.BusyTimeout, cfg.BusyTimeout, cfg.ReplicaURL != "", "", floor, false, tenantAuthorizer)},
		plainDrv:   busyDriver(cfg.BusyTimeout),
		realDir:    realDir,
		replicated: cfg.ReplicaURL != "",
		cacheSize:  max(cfg.StmtCacheSize, 1),
	}
	common := url.Values{}
	common.Set("mode", "rw") // never create a file: a tenant's file is made only by createFile
	// No busy handler while mattn opens: its open reads the file (PRAGMA
	// synchronous reads the schema) before the connect hook sets the
	// proxy's (busy.go), and SQLite's own would wait out BusyTimeout
	// whatever the context. openFile tries again under the context
	// instead.
	common.Set("_busy_timeout", "0")
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
	o.writerParams = "?" + w.Encode()
	w.Set("_locking_mode", "EXCLUSIVE")
	w.Set("_busy_timeout", "0") // getting the lock fails at once rather than after BusyTimeout
	o.aloneParams = "?" + w.Encode()
	o.readerParams = "?" + rd.Encode()
	return o
}

// open opens a writer or a reader of t, for its pool; a wait at the open
// gate ends with ctx (or BusyTimeout).
func (o *connOpener) open(ctx context.Context, t *tenant, writer bool) (*physConn, error) {
	drv, params := o.readerDrv, o.readerParams
	if writer {
		drv, params = o.drv, o.writerParams
	}
	c, err := t.r.openFile(ctx, t, drv, params)
	if err != nil {
		return nil, opError(opOpenTenant, t.id, err)
	}
	return &physConn{c: c.(*sqlite3.SQLiteConn), t: t, writer: writer, cacheSize: o.cacheSize}, nil
}

// openPath opens a hardened tenant connection to the file at path (a
// tenant file being built) with the URI query params.
func (o *connOpener) openPath(path, params string) (*sqlite3.SQLiteConn, error) {
	c, err := o.pathDrv.Open(fileURI(path) + params)
	if err != nil {
		return nil, err
	}
	return c.(*sqlite3.SQLiteConn), nil
}

// physConn is one SQLite connection of a tenant, with the statements it
// keeps prepared for routing Stmts (conn.go). Only its leaseholder uses it.
type physConn struct {
	c      *sqlite3.SQLiteConn
	t      *tenant
	writer bool
	rows   int                            // open Rows; touched only by the leaseholder
	lease  atomic.Uint64                  // counts leases that ended with Rows open (endLease); those Rows leave pc alone
	keep   atomic.Uint64                  // a reader's keep word: token and state (keep.go)
	stmts  map[string]*sqlite3.SQLiteStmt // statements prepared for routing Stmts, idle

	cacheSize int // most statements kept in stmts

	// What deferredKeys (groupcommit.go) found for the writer's schema:
	// schemaSeen is its schema_version + 1 (0: not looked at yet), tempSeen
	// the temp schema's schema_version.
	schemaSeen, tempSeen int64
	deferredFK           bool
}

// endLease ends the current lease of pc. Rows still open from it find the
// lease changed when they close and leave pc to its next leaseholder;
// without open Rows nothing tells the leases apart, and the atomic add
// (a tenth of the routing's own cost) is skipped.
func (pc *physConn) endLease() {
	if pc.rows != 0 {
		pc.rows = 0
		pc.lease.Add(1)
	}
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
	if _, dup := pc.stmts[query]; dup || len(pc.stmts) >= pc.cacheSize {
		s.Close()
		return
	}
	pc.stmts[query] = s
}

// close finalizes the cached statements first: a statement left open makes
// sqlite3_close_v2 keep a zombie handle and its file descriptor.
//
// A statement runs first: SQLite clears an interrupt (a context that ended
// during the connection's last statement) only when the next one starts,
// and the last connection's close then gave up its checkpoint, leaving
// the tenant's -wal and -shm beside a closed tenant (240 files after a
// soak with request deadlines).
func (pc *physConn) close() {
	for q, s := range pc.stmts {
		s.Close()
		delete(pc.stmts, q)
	}
	pc.c.Exec("SELECT 1", nil)
	pc.c.Close()
}

// ownConn opens a connection to t outside its pool, with drv and the URI
// query params, within the connection budget; done closes it and gives the
// slot back. The caller holds t's writer semaphore at least until it
// returns, so that t itself can be evicted to make room.
func (r *router) ownConn(ctx context.Context, t *tenant, drv *sqlite3.SQLiteDriver, params string) (c *sqlite3.SQLiteConn, done func(), err error) {
	if err := r.refuseHardLinkedFile(t); err != nil {
		return nil, nil, err
	}
	if err := r.reserve(ctx, t); err != nil {
		return nil, nil, err
	}
	dc, err := r.openFile(ctx, t, drv, params)
	if err != nil {
		r.budget.unreserve(t)
		return nil, nil, err
	}
	return dc.(*sqlite3.SQLiteConn), func() { dc.Close(); r.budget.unreserve(t) }, nil
}

// refuseHardLinkedFile refuses t's file when it has another name: a tenant
// not open here (a backup, a check, a rollback, a fleet migration or a
// fan-out of it) has not had its writer's open look at its file, and
// another tenant's name for the same pages is refused (refuseHardLinked).
func (r *router) refuseHardLinkedFile(t *tenant) error {
	if fi, err := os.Lstat(t.path); err == nil {
		return refuseHardLinked(t, fi)
	}
	return nil
}

// openFile opens a connection to t's file with drv and the URI query
// params: every connection to a tenant's file, a pool's or one of its own
// (a Rollback's writes), is opened here. It holds t's open gate shared
// (see enterGate) until the connect hook has made the connection's -shm,
// which a restore or delete in another process then sees; it waits for
// one that holds the gate up to ctx, or BusyTimeout for a ctx without
// deadline. An open by one of the proxy's tenant drivers (busy_timeout 0:
// see newConnOpener) that finds the file busy (another process holds it in
// locking_mode=EXCLUSIVE: a sqlite3 shell's, a MigrateAll of a tenant
// nobody had open) is tried again until ctx ends or BusyTimeout has
// passed, as a statement's wait in the busy handler lasts.
func (r *router) openFile(ctx context.Context, t *tenant, drv *sqlite3.SQLiteDriver, params string) (driver.Conn, error) {
	leave, err := enterGate(ctx, r.stop, r.cfg.BusyTimeout, r.presence, t.id, false)
	if err != nil {
		return nil, err
	}
	defer leave()
	var c driver.Conn
	open := func() error {
		return r.withFDs(t, func() (err error) {
			c, err = drv.Open(t.uri + params)
			return err
		})
	}
	if r.conns.retriesBusy(drv) {
		err = openRetrying(r.cfg.BusyTimeout, func(d time.Duration) error { return r.pause(ctx, d) }, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, err
	}
	if got, want := c.(*sqlite3.SQLiteConn).GetFilename("main"), t.realPath(); got != want {
		// SQLite resolves symlinks before it opens (only the last
		// component with O_NOFOLLOW): a symlink put in the file's place
		// after statFile looked, or a data directory moved since New,
		// opened another file. Nothing ran on it but the connect hook,
		// which refuses files outside the directory.
		c.Close()
		return nil, fmt.Errorf("%w: %s opened %s: a tenant file may not be a symlink, nor the data directory change while the proxy runs", errNotTenantFile, t.path, got)
	}
	return c, nil
}

// pause waits for d, or until ctx ends (its cause) or the proxy closes
// (ErrClosed).
func (r *router) pause(ctx context.Context, d time.Duration) error { return pause(ctx, r.stop, d) }

// pause waits for d, or until ctx ends (its cause) or stop is closed
// (ErrClosed; a nil stop never is).
func pause(ctx context.Context, stop <-chan struct{}, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-stop:
		return ErrClosed
	case <-tm.C:
		return nil
	}
}

// openRetrying runs open, which opens a connection to a file with busy_timeout 0
// (mattn's open reads the file before a connect hook can set the proxy's
// busy handler, and SQLite's own would wait whatever the context), again
// while it fails with SQLITE_BUSY, pausing between tries (1 ms, doubling up to
// 50 ms) with pause, whose error (a context's end, Close) ends it, until
// bound has passed: then its SQLITE_BUSY, as a wait in the busy handler
// ends after BusyTimeout.
func openRetrying(bound time.Duration, pause func(time.Duration) error, open func() error) error {
	end := time.Now().Add(bound)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := open()
		if err == nil || !isBusyWait(err) || time.Now().Add(delay).After(end) {
			return err
		}
		if err := pause(delay); err != nil {
			return err
		}
	}
}

// retriesBusy reports whether drv is one of the tenant drivers whose DSN
// sets no busy handler for mattn's open (openFile tries it again).
func (o *connOpener) retriesBusy(drv *sqlite3.SQLiteDriver) bool {
	return drv == o.drv || drv == o.readerDrv || drv == o.fanOutDrv || drv == o.plainDrv
}

// busyDriver opens connections that get the proxy's busy handler with
// timeout (busy.go) and nothing else: open them with busy_timeout 0 and
// openRetrying.
func busyDriver(timeout time.Duration) *sqlite3.SQLiteDriver {
	return &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error { return setBusyTimeout(c, timeout) }}
}

// errNotTenantFile refuses a connection that SQLite opened on another file
// than the tenant's (a symlink followed).
var errNotTenantFile = errors.New("not the tenant's file")

// withFDs runs open, which opens files for t (its connections, its new
// file), and when it fails for want of file descriptors (RLIMIT_NOFILE
// below what MaxConnections needs) closes the least recently used idle
// tenant other than t and runs it again, up to maxFDEvictions times: idle
// tenants hold descriptors as a full budget's slots, and every open failed
// until IdleTimeout closed them. open cleans up after itself when it fails.
func (r *router) withFDs(t *tenant, open func() error) error {
	err := open()
	for range maxFDEvictions {
		if err == nil || !outOfFiles(err) || r.evictLRU(r.budget.openTenants(), nil, t, evictBudget) == nil {
			break
		}
		err = open()
	}
	return err
}

// maxFDEvictions bounds the idle tenants one open closes for descriptors.
const maxFDEvictions = 8

// outOfFiles reports whether err is a failure to open a file for want of
// descriptors (EMFILE: the process's limit; ENFILE: the system's), SQLite's
// or Go's.
func outOfFiles(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.SystemErrno == syscall.EMFILE || se.SystemErrno == syscall.ENFILE
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// plainDriver opens files that are not tenant connections (backup copies,
// restore sources): no authorizer, no pool.
var plainDriver = &sqlite3.SQLiteDriver{}

// queryInt64 runs q, which returns one integer (a pragma's value), on c.
func queryInt64(ctx context.Context, c driver.QueryerContext, q string) (int64, error) {
	rows, err := c.QueryContext(ctx, q, nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	v := make([]driver.Value, 1)
	if err := rows.Next(v); err != nil {
		return 0, err
	}
	n, _ := v[0].(int64)
	return n, nil
}
