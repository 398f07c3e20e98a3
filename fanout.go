package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
	"go.opentelemetry.io/otel/attribute"
)

// FanOutOptions says which tenants a fan-out query reads and how (see
// WithFanOut).
type FanOutOptions struct {
	// Tenants lists the tenants to read; nil means every tenant under Dir
	// (as Proxy.Tenants lists them when the query starts; one deleted
	// before its turn is left out), an empty non-nil slice none. Order and
	// duplicates do not matter: each tenant is read once and the result is
	// in ID order. A listed tenant that has no database file is an error
	// naming it (ErrTenantNotFound): a fan-out never creates a tenant.
	Tenants []string
	// Concurrency is how many tenants are read at once. Default 4 x
	// GOMAXPROCS; it is also kept at most MaxConnections/2, as for
	// MigrateAll, so live traffic keeps at least half the connection
	// budget.
	Concurrency int
	// SkipErrors skips the tenants that fail (not found, a missing table,
	// pending migrations, a corrupt file, ...) instead of failing the
	// query; OnSkip hears about each. Errors of the query itself
	// (ErrFanOutWrite, a wrong number of arguments) and the context's are
	// never skipped. Rows stream: a tenant that fails after some of its
	// rows (a malformed value on its third row) has given those rows
	// already, and OnSkip then reports it; discard its rows there if a
	// partial tenant must not count.
	SkipErrors bool
	// OnSkip, if set, is called with each tenant SkipErrors skipped and
	// its error (a *FanOutError), in tenant order, from the goroutine
	// reading the rows, when the reader gets to where the tenant's rows
	// would have been. Tenants after the point where the rows were
	// closed are not reported.
	OnSkip func(tenant string, err error)
}

// fanOut is the value WithFanOut stores in a context. It is stored under
// the key of WithOrgID, so that whichever of the two was applied last
// wins, and so that routing a statement pays nothing for fan-out: OrgID
// finds no tenant in a fan-out context, and only then is it looked for.
type fanOut struct{ opts FanOutOptions }

// WithFanOut returns a context that makes read-only queries run on many
// tenants: QueryContext and QueryRowContext (of a *sql.DB, a *sql.Stmt or
// a toolkit built on them, such as sqlx's Select) run the query on each
// tenant of opts.Tenants (all tenants when nil), at most opts.Concurrency
// at once, and return one result set: a first column "tenant" (TEXT), the
// tenant's ID, followed by the query's own columns; each tenant's rows
// together, tenants in ID order. "SELECT count(*) AS n FROM events" gives
// one row (tenant, n) per tenant. A tenant with no rows contributes none.
//
// Rows stream: at most Concurrency tenants are read ahead of the one being
// consumed, each buffering a few rows, so a slow reader slows the fan-out
// rather than making it buffer. Closing the rows (or cancelling ctx) stops
// it and gives every connection back.
//
// A fan-out only reads, and only tenants that exist. A statement that could
// write, ExecContext and BeginTx fail with ErrFanOutWrite and run nowhere.
// A fan-out on a connection bound to a tenant (inside a Tx, or a sql.Conn
// that has run a statement on a tenant) fails with ErrTenantMismatch.
// Tenants that are open are read on one of their readers; tenants that
// are not are read on a read-only connection of their own, within the
// connection budget, and closed again (a write to such a tenant meanwhile
// waits, as for a busy writer, until the fan-out has read its rows: read
// them promptly). A tenant is never evicted while someone uses it; idle
// tenants may be, as for any new connection. A closed tenant is checked
// against the migrations as a first access would check it: in MigrateAuto
// it is migrated first, in MigrateCheck one that is behind fails with
// ErrPendingMigrations.
//
// By default, the first tenant (in ID order) that fails fails the query
// with a *FanOutError naming it, after the rows of the tenants before it:
// from QueryContext when none of them has rows, else from Rows.Err; no
// rows after it are returned. With SkipErrors such tenants are skipped and
// passed to OnSkip. Errors of the query itself (ErrFanOutWrite, the number
// of arguments) are never per tenant: they fail the query.
//
// WithFanOut and WithOrgID override each other: on a context given both,
// the one applied last wins. OrgID reports no tenant for a fan-out context.
func WithFanOut(ctx context.Context, opts FanOutOptions) context.Context {
	if opts.Tenants != nil {
		opts.Tenants = slices.Clone(opts.Tenants)
	}
	return context.WithValue(ctx, orgIDKey{}, &fanOut{opts: opts})
}

// fanOutOf returns the fan-out of ctx, nil when ctx has none.
func fanOutOf(ctx context.Context) *fanOut {
	f, _ := ctx.Value(orgIDKey{}).(*fanOut)
	return f
}

// FanOutError is the failure of one tenant of a fan-out query.
type FanOutError struct {
	Tenant string // the tenant that failed
	Err    error  // why: a sentinel such as ErrTenantNotFound wrapped in an *Error, or SQLite's error
}

func (e *FanOutError) Error() string {
	inner := e.Err
	if pe, ok := inner.(*Error); ok && pe.Tenant == e.Tenant && (pe.Op == opFanOut || pe.Op == opOpenTenant) {
		inner = pe.Err // its operation and tenant are ours: said once
	}
	return fmt.Sprintf("sqliteproxy: %s: tenant %q: %s", opFanOut, e.Tenant,
		strings.TrimPrefix(inner.Error(), "sqliteproxy: "))
}

func (e *FanOutError) Unwrap() error { return e.Err }

// fanOutRowBuffer is how many rows each tenant read ahead of the consumer
// may buffer: with Concurrency tenants, the fan-out holds at most
// Concurrency x fanOutRowBuffer rows.
const fanOutRowBuffer = 32

// errFanOutBound refuses a fan-out on a checkout bound to tenant id (a Tx,
// a sql.Conn).
func errFanOutBound(id string) error {
	return opError(opFanOut, id, fmt.Errorf("%w: a fan-out cannot run on a connection or transaction bound to a tenant", ErrTenantMismatch))
}

func errFanOutWrite(what string) error {
	return opError(opFanOut, "", fmt.Errorf("%w: %s", ErrFanOutWrite, what))
}

// fanOutReadOnly refuses, before anything runs, a text that cannot be a
// single read-only statement. Each tenant checks the compiled statement
// (sqlite3_stmt_readonly) again before running it.
//
// The class routeQuery cached for the text counts only for a text that may
// read by its words: routeQuery caches the others as writes without
// compiling them, syntax errors included.
func (r *router) fanOutReadOnly(query string) error {
	info := sqlscan.Scan(query)
	if info.Multi {
		return errFanOutWrite(quoteShort(query) + " is not a single statement")
	}
	switch info.Keyword {
	case "SELECT", "WITH", "VALUES", "EXPLAIN":
		if callsPragmaOptimize(query) {
			// Compiled read-only: the PRAGMA inside runs only with the
			// statement, where an open tenant's connection allowed it (on
			// the writer, with no readers: sqlite_stat1 written to every
			// open tenant).
			return errFanOutWrite(quoteShort(query) + " runs PRAGMA optimize, which writes")
		}
		if ro, ok := r.classes.lookup(query); ok && !ro {
			return errFanOutWrite(quoteShort(query) + " may write")
		}
		if info.Keyword == "EXPLAIN" && pragmaSetter(query) {
			// SQLite applies some setters when it compiles them (flags:
			// foreign_keys = OFF), EXPLAIN or not: compiled on every open
			// tenant's connection (its writer, without readers). The class
			// cache, which keeps no long text, was all that refused it
			// (adv51).
			return errFanOutWrite(quoteShort(query) + " explains a PRAGMA that sets, which SQLite applies as it compiles it")
		}
		if _, err := compileAlone(query); isSyntaxError(err) || isAuthErr(err) {
			// An error of the query, not of each tenant: with SkipErrors a
			// typo skipped every tenant and returned no rows and no error.
			// So is a refusal by the hardening.
			return opError(opFanOut, "", err)
		}
		return nil
	case "PRAGMA":
		// Some read (table_info(t)), some write (journal_mode = DELETE,
		// optimize): SQLite knows which without a schema. A write would
		// fail on every tenant, where SkipErrors would skip them all.
		// (One with an empty argument, which the authorizer cannot tell
		// from a read, is refused before: setsPragmaEmpty.)
		if ro, err := compileAlone(query); err == nil && !ro || isAuthErr(err) {
			return errFanOutWrite(quoteShort(query) + " may write")
		}
		return nil
	}
	if _, err := compileAlone(query); isSyntaxError(err) {
		return opError(opFanOut, "", err)
	}
	if info.Keyword == "" {
		return opError(opFanOut, "", errors.New("no statement in the query"))
	}
	return errFanOutWrite(quoteShort(query) + " may write")
}

// callsPragmaOptimize reports whether query names pragma_optimize, the
// table-valued form of PRAGMA optimize.
func callsPragmaOptimize(query string) bool {
	for _, tok := range sqlscan.Tokens(query, len(query)) {
		if strings.EqualFold(tok, "pragma_optimize") {
			return true
		}
	}
	return false
}

// compileAlone compiles query on a private in-memory database and reports
// whether SQLite takes it for read-only. A statement that names the
// tenants' tables fails there at name resolution, after its syntax. The
// connection is hardened as a tenant's: some pragmas act when they are
// compiled, and a few act on the whole process (hard_heap_limit,
// temp_store_directory); the authorizer refuses those (an auth error).
func compileAlone(query string) (readOnly bool, err error) {
	dc, err := fanOutDriver.Open(":memory:")
	if err != nil {
		return false, err
	}
	defer dc.Close()
	s, err := dc.Prepare(query)
	if err != nil {
		return false, err
	}
	defer s.Close()
	return s.(*sqlite3.SQLiteStmt).Readonly(), nil
}

// isAuthErr reports whether err is SQLite's refusal by the authorizer.
func isAuthErr(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrAuth
}

// isSyntaxError reports whether err is SQLite's for a text it cannot parse.
func isSyntaxError(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "syntax error") || strings.Contains(msg, "incomplete input")
}

// fanOutTenants returns the tenants a fan-out reads, sorted, without
// duplicates: list, or every tenant under Dir when list is nil. Listing
// goes through here only, so that it can change (streaming, layouts)
// without touching the rest.
func (r *router) fanOutTenants(ctx context.Context, list []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if list == nil {
		return r.tenantIDs(ctx) // sorted: the output is in ID order
	}
	ids := slices.Clone(list)
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// fanOutQuery runs query on the tenants of f; the caller has found no
// tenant in ctx and no lease on the conn.
func (r *router) fanOutQuery(ctx context.Context, f *fanOut, query string, args []driver.NamedValue) (driver.Rows, error) {
	if r.isClosed.Load() {
		return nil, opError(opFanOut, "", ErrClosed)
	}
	if err := r.fanOutReadOnly(query); err != nil {
		return nil, err
	}
	ids, err := r.fanOutTenants(ctx, f.opts.Tenants)
	if err != nil {
		return nil, err
	}
	workers := f.opts.Concurrency
	if workers <= 0 {
		workers = 4 * runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, r.cfg.MaxConnections/2, len(ids)))

	// The workers bind args after QueryContext has returned: keep a copy
	// the caller cannot change.
	args = slices.Clone(args)
	for i, a := range args {
		if b, ok := a.Value.([]byte); ok {
			args[i].Value = slices.Clone(b)
		}
	}
	run := &fanRun{
		r: r, ids: ids, query: query, args: args, opts: f.opts,
		tokens: make(chan struct{}, workers),
		slots:  make([]*fanSlot, len(ids)),
	}
	run.stopAt.Store(int64(len(ids)))
	spanCtx, end := r.tel.span(ctx, spanFanOut, nil,
		attribute.Int(attrFanOutTenants, len(ids)), attribute.Int(attrFanOutConcurrency, workers))
	run.endSpan = end
	run.caller = spanCtx
	run.ctx, run.cancel = context.WithCancelCause(spanCtx)
	// Known to Close, which stops it (closeFanOuts): checked after it is
	// known, so that a Close that listed the runs before saw it, or it
	// sees the Close.
	r.fanRuns.Store(run, struct{}{})
	if r.isClosed.Load() {
		run.cancel(errFanOutClosed)
		r.fanRuns.Delete(run)
		end(errFanOutClosed)
		return nil, errFanOutClosed
	}
	run.wg.Add(workers)
	for range workers {
		go run.worker()
	}
	// The first row (or the end) is read now: the columns are known
	// after it, and a failure of the first tenants is the query's error.
	rs := &fanOutRows{run: run}
	id, row, err := rs.fetch()
	if err != nil && err != io.EOF {
		run.close(err)
		return nil, err
	}
	rs.pendID, rs.pending, rs.err = id, row, err
	run.mu.Lock()
	rs.hdr = run.hdr
	run.mu.Unlock()
	if rs.hdr == nil {
		rs.hdr = &fanHeader{} // no tenant, or all skipped: only the tenant column
	}
	return rs, nil
}

// fanRun is one fan-out query in flight: workers take tenants in ID order,
// each after a token; the consumer (fanOutRows) reads tenants in the same
// order and gives a tenant's token back when it has read all its rows, so
// at most cap(tokens) tenants are read or buffered at once.
type fanRun struct {
	r     *router
	ids   []string
	query string
	args  []driver.NamedValue
	opts  FanOutOptions

	ctx     context.Context         // cancelled by close: stops the workers
	caller  context.Context         // the caller's (ctx's parent)
	cancel  context.CancelCauseFunc // errFanOutClosed from Close
	endSpan func(error)
	tokens  chan struct{} // a worker sends one before it takes a tenant; the consumer takes it back
	next    atomic.Int64  // index of the next tenant to take
	stopAt  atomic.Int64  // tenants after this index are not taken (a tenant failed)
	wg      sync.WaitGroup

	mu     sync.Mutex // guards slots, hdr, closed
	slots  []*fanSlot
	hdr    *fanHeader
	closed bool
}

// fanSlot is one tenant's rows on their way from a worker to the consumer.
type fanSlot struct {
	rows chan []driver.Value // closed by the worker when it is done with the tenant
	err  error               // set before rows is closed
	hdr  *fanHeader          // the tenant's columns, set before its first row is sent
}

// fanHeader is the query's columns, taken from the first tenant to run it.
type fanHeader struct {
	tenant   string // whose result it is
	names    []string
	dbTypes  []string
	scan     []reflect.Type
	nullable []bool
	nullOK   []bool
}

// slot returns tenant i's slot, making it if needed.
func (run *fanRun) slot(i int) *fanSlot {
	run.mu.Lock()
	defer run.mu.Unlock()
	s := run.slots[i]
	if s == nil {
		s = &fanSlot{rows: make(chan []driver.Value, fanOutRowBuffer)}
		run.slots[i] = s
	}
	return s
}

// headerOf returns the columns of rs.
func headerOf(rs *sqlite3.SQLiteRows) *fanHeader {
	cols := rs.Columns()
	h := &fanHeader{names: cols, dbTypes: make([]string, len(cols)), scan: make([]reflect.Type, len(cols)),
		nullable: make([]bool, len(cols)), nullOK: make([]bool, len(cols))}
	for i := range cols {
		h.dbTypes[i] = rs.ColumnTypeDatabaseTypeName(i)
		h.scan[i] = rs.ColumnTypeScanType(i)
		h.nullable[i], h.nullOK[i] = rs.ColumnTypeNullable(i)
	}
	return h
}

// fail records the failure of tenant i, which ends the query there: no
// tenant after it is read.
func (run *fanRun) fail(i int) {
	for {
		cur := run.stopAt.Load()
		if int64(i) >= cur || run.stopAt.CompareAndSwap(cur, int64(i)) {
			break
		}
	}
}

// skippable reports whether err, the failure of one tenant, is skipped.
func (run *fanRun) skippable(err error) bool {
	var fe *FanOutError
	return run.opts.SkipErrors && errors.As(err, &fe) && run.ctx.Err() == nil && !errors.Is(err, ErrClosed)
}

func (run *fanRun) worker() {
	defer run.wg.Done()
	for {
		select {
		case run.tokens <- struct{}{}:
		case <-run.ctx.Done():
			return
		}
		i := int(run.next.Add(1) - 1)
		if i >= len(run.ids) || int64(i) > run.stopAt.Load() {
			<-run.tokens
			return
		}
		s := run.slot(i)
		err := run.tenant(i, s)
		s.err = err
		close(s.rows)
		if err != nil && !run.skippable(err) {
			run.fail(i)
		}
	}
}

// tenant reads tenant i into its slot.
func (run *fanRun) tenant(i int, s *fanSlot) (err error) {
	r, id := run.r, run.ids[i]
	ctx, end := r.tel.span(run.ctx, spanFanOutTenant, nil, attribute.String(attrTenant, id))
	defer func() {
		if err != nil && context.Cause(run.ctx) == errFanOutRowsClosed {
			end(nil) // the caller stopped reading: no error of this tenant's
			return
		}
		end(err)
	}()
	t, err := r.tenant(id)
	if err != nil {
		return &FanOutError{Tenant: id, Err: err}
	}
	defer t.unpin()
	err = t.mustExist(opFanOut)
	if err == nil || r.cfg.Ownership != nil && errors.Is(err, ErrTenantNotFound) {
		// With Ownership, a tenant with no copy here may be another node's
		// (ErrNotOwner), or in the replica: the open (own) tells.
		err = run.readTenant(ctx, t, s)
	}
	if errors.Is(err, ErrTenantNotFound) && run.opts.Tenants == nil {
		// Listed, then deleted before it was read (a delete waits for a
		// read in progress, so none of its rows has gone out): not a
		// tenant any more, as it would not be in a listing now.
		return nil
	}
	var fe *FanOutError
	if err != nil && !errors.As(err, &fe) && !isQueryErr(err) && run.ctx.Err() == nil {
		err = &FanOutError{Tenant: id, Err: err}
	}
	return err
}

// isQueryErr reports whether err is about the query, whichever tenant it
// runs on: never a tenant's failure, never skipped.
func isQueryErr(err error) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Op == opFanOut && pe.Tenant == ""
}

// readTenant reads t: on a connection of its own if nobody has it open,
// else on one of its readers.
func (run *fanRun) readTenant(ctx context.Context, t *tenant, s *fanSlot) error {
	r := run.r
	// With Ownership, the local copy of a tenant this node has not open
	// (so holds no lease on) may be stale: another node may own it and
	// have written it since, or deleted it. It is read as a first access
	// would: under this node's lease (taken, then given back at the
	// eviction below), after the replica brought the copy up to date; a
	// tenant another node owns fails with ErrNotOwner.
	owned := r.cfg.Ownership != nil
	if !owned && r.budget.counted(t) == 0 {
		done, err := run.readClosed(ctx, t, s)
		if done || err != nil {
			return err
		}
	}
	wasOpen := r.budget.counted(t) > 0
	read := func(pc *physConn) error {
		ps, err := pc.takeStmt(ctx, run.query)
		if err == nil {
			err = run.stream(ctx, t, pc.c, ps, s)
			pc.putStmt(run.query, ps)
		}
		t.release(pc)
		if !wasOpen {
			t.evict(false, evictFanOut) // opened for the fan-out only: leave the budget to live traffic
		}
		return err
	}
	if !t.ready.Load() || t.fenced.Load() || owned && !wasOpen {
		// Open (and, in MigrateAuto, migrate) it as a first access would,
		// but never create it. In MigrateManual it is served as it is, as
		// readClosed does (a tenant behind was refused here only).
		if err := t.lockWriter(ctx); err != nil {
			return err
		}
		w, err := t.openLockedWriter(ctx, openOpts{migrate: r.accessOpts.migrate, servePending: r.accessOpts.servePending})
		if err != nil {
			return err
		}
		if !wasOpen {
			// Opened for this read: read on the writer it holds, a new
			// session. A reader beside it made two connections a worker:
			// the workers held the whole budget while their client read
			// slowly, past the half that is live traffic's.
			return read(w)
		}
		t.releaseWriter()
	}
	pc, err := t.acquireReader(ctx)
	if err != nil {
		return err
	}
	return read(pc)
}

// readClosed reads t, which nobody had open here, on a read-only
// connection of its own: no pool, no registration, closed after the read.
// t's writer semaphore is held meanwhile, so this process writes nothing
// to t (and cannot evict it) until the rows are read; the cost is that a
// write to t waits for the reader, for at most BusyTimeout.
//
// When no other process has the directory open (othersPresent: the CLI, a
// second service) and t has no -wal (no process has it open in WAL mode),
// or an empty one (kept by KeepWAL: no proxy has it open, by the rest of
// this condition; a process that is not a proxy may, unseen),
// the file is opened immutable, as MigrateAll checks such tenants: no
// locks, no -wal or -shm to create and remove, which costs an ext4 like
// this machine's two to eight times the fan-out's time. Otherwise it is
// read with SQLite's locks, as any reader: immutable trusts that nothing
// changes the file, and another process that opened the tenant, wrote and
// checkpointed during a long read made it return a mix of two states. (A
// lock of its own held for the read instead held up that tenant's readers
// and writers, in this process too, for as long as the consumer paused,
// and closing its descriptor dropped this process's other POSIX locks on
// the file.) A process that is not a proxy (a sqlite3 shell) writing such
// a tenant during a fan-out is not seen: see the README.
//
// It reports false when t must be read the normal way: it was opened
// meanwhile, or it has migrations to apply first.
func (run *fanRun) readClosed(ctx context.Context, t *tenant, s *fanSlot) (bool, error) {
	r := run.r
	if err := t.lockWriter(ctx); err != nil {
		return false, err
	}
	defer t.releaseWriter()
	if t.w != nil || r.budget.counted(t) > 0 {
		return false, nil
	}
	if hasSide(t.path, "-journal") {
		// A rollback journal (the file used in another journal mode by
		// something else): if hot, it holds the pages of a transaction
		// that never committed, which an immutable read took for the
		// tenant's rows. The normal open rolls it back.
		return false, nil
	}
	params := r.conns.readerParams
	joins := presenceJoins(r.presence) // before othersPresent: a process joining after either is seen by one
	immutable := false
	if _, frames := walFrames(t.path); !frames && !othersPresent(r.presence) {
		params, immutable = "?mode=ro&immutable=1", true
	}
	c, done, err := r.ownConn(ctx, t, r.conns.fanOutDrv, params)
	if err != nil {
		return false, opError(opFanOut, t.id, err)
	}
	defer done()
	if !t.ready.Load() && !(r.accessOpts.migrate && len(r.mig.list) == 0) {
		// As the gate of a first access does (migrations.go), except that
		// what is pending is applied by the normal open, not here. With no
		// migrations to apply, the gate checks nothing.
		// Watched, as the prepare below: on this new connection it is
		// the first read of the file, which waits for another process's
		// exclusive lock, and mattn's interrupt can be lost.
		rows, err := execWatched(ctx, c, func(bg context.Context) ([]ledgerRow, error) { return ledger(bg, c) })
		if err != nil {
			return false, err
		}
		n, err := r.mig.check(rows)
		if err != nil && !(r.accessOpts.servePending && errors.Is(err, errAhead)) {
			return false, opError(opFanOut, t.id, err)
		}
		switch {
		case err != nil:
			// Ahead of the configured migrations: served as it is
			// (MigrateManual), as the normal open would.
		case n == len(r.mig.list), r.accessOpts.servePending:
			// Up to date, or served as it is (MigrateManual), as the
			// normal open would.
		case r.accessOpts.migrate:
			return false, nil // migrated by the normal open
		default:
			return false, opError(opFanOut, t.id, fmt.Errorf("%w: %s", ErrPendingMigrations, strings.Join(r.mig.names(n), ", ")))
		}
		t.ready.Store(true)
	}
	st, err := execWatched(ctx, c, func(bg context.Context) (driver.Stmt, error) { return c.PrepareContext(bg, run.query) })
	if err != nil {
		return false, err
	}
	defer st.Close()
	err = run.stream(ctx, t, c, st.(*sqlite3.SQLiteStmt), s)
	if err == nil && immutable && presenceJoins(r.presence) != joins {
		// Another proxy (another process's, or a second one here) opened
		// the directory during the read, and may have written and
		// checkpointed the tenant under it:
		// its rows may mix two states. Said, never returned silently.
		return true, opError(opFanOut, t.id, errors.New("another proxy opened the data directory during the read, which did not take SQLite's locks: its rows may mix two states; read it again"))
	}
	return true, err
}

// fanOutDriver opens compileAlone's in-memory connections: hardened as a
// fan-out's own are (connOpener.fanOutDrv).
var fanOutDriver = &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
	return hardenTenantConn(c, false, 0, fanOutAuthorizer)
}}

// fanOutAuthorizer is tenantAuthorizer for the fan-out's pre-check and its
// own connections, and for every tenant's readers: a PRAGMA there must only
// query. SQLite takes setters
// of a connection's state for read-only (case_sensitive_like = 1,
// cache_size(1), foreign_keys = 0, busy_timeout = 0) and PRAGMA optimize
// too; fanned out to an open tenant, they ran on one of its readers and
// stayed there, changing what the tenant's own queries returned.
func fanOutAuthorizer(op int, arg1, arg2, arg3 string) int {
	if op == sqlite3.SQLITE_PRAGMA && !pragmaQueries(arg1, arg2) {
		return sqlite3.SQLITE_DENY
	}
	return tenantAuthorizer(op, arg1, arg2, arg3)
}

// pragmaQueries reports whether PRAGMA name, with the argument value
// ("" for none) as the authorizer sees it, only reads: no argument, but
// not one of the pragmas that act when called so; an argument only for
// those whose argument names what to describe or check.
func pragmaQueries(name, value string) bool {
	name = strings.ToLower(name)
	if value == "" {
		switch name {
		case "optimize", "shrink_memory", "incremental_vacuum", "wal_checkpoint":
			return false
		}
		return true
	}
	switch name {
	case "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
		"foreign_key_list", "foreign_key_check", "integrity_check", "quick_check":
		return true
	}
	return false
}

// stream runs the prepared statement ps, of connection c, on t and sends
// its rows to s. The statement is watched as a routed one is (ctxwatch.go):
// a fan-out's query may be a runaway one, and mattn's single interrupt can
// be lost.
func (run *fanRun) stream(ctx context.Context, t *tenant, c *sqlite3.SQLiteConn, ps *sqlite3.SQLiteStmt, s *fanSlot) error {
	if !ps.Readonly() {
		return errFanOutWrite(quoteShort(run.query) + " may write")
	}
	if err := checkNumInput(ps, run.args); err != nil {
		return opError(opFanOut, "", err)
	}
	drs, w, err := queryWatched(ctx, c, func(bg context.Context) (driver.Rows, error) { return ps.QueryContext(bg, run.args) })
	if err != nil {
		return err
	}
	defer w.close() // after the rows' Close
	rs := drs.(*sqlite3.SQLiteRows)
	defer rs.Close()
	s.hdr = headerOf(rs) // checked by the consumer (fanOutRows.admit)
	s.hdr.tenant = t.id
	n := len(s.hdr.names)
	for first := true; ; first = false {
		row := make([]driver.Value, n)
		if err := nextWatched(w, rs, row, first); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		select {
		case s.rows <- row:
		case <-run.ctx.Done():
			return run.ctx.Err()
		}
	}
}

// errTenantColumn refuses a fan-out whose result has a column of its own
// named like the tenant column (any case, as mappers match names): sqlx,
// scanning into a struct, filled the tenant field from the later column,
// and a row of acme holding tenant = 'globex' came back as globex's. An
// error of the query when the header (the first tenant's columns, in ID
// order) has one, never skipped; another tenant with such a column differs
// from the header, and fails (or is skipped) as such.
func errTenantColumn(name string) error {
	return opError(opFanOut, "", fmt.Errorf("the result has a column named %q, like the fan-out's own tenant column: alias it (AS ...)", name))
}

// close stops the workers, waits for them (so every connection is given
// back) and ends the span with err.
func (run *fanRun) close(err error) {
	run.mu.Lock()
	if run.closed {
		run.mu.Unlock()
		return
	}
	run.closed = true
	run.mu.Unlock()
	if c := context.Cause(run.ctx); err == nil && c != nil {
		err = c // ended by the caller's context or Close, not by its rows
	} else if c := context.Cause(run.caller); err == nil && c != nil {
		// The caller's context ended, and database/sql closed the rows
		// (woken by its Done, which closes before its children are
		// cancelled): ended by the caller all the same.
		err = c
	}
	run.cancel(errFanOutRowsClosed)
	run.wg.Wait()
	run.r.fanRuns.Delete(run)
	run.endSpan(err)
}

// errFanOutClosed ends the fan-outs in flight when the proxy closes.
var errFanOutClosed = opError(opFanOut, "", ErrClosed)

// errFanOutRowsClosed ends a fan-out whose rows were closed (read to the
// end, or not): the tenants it then stops reading did not fail.
var errFanOutRowsClosed = errors.New("sqliteproxy: the fan-out's rows were closed")

// closeFanOuts stops every fan-out in flight and waits until their workers
// have given back their connections, for Close: a fan-out went on reading
// open tenants after Close had returned (and released the directory's
// lock), while closed ones failed. Their rows then end with ErrClosed.
func (r *router) closeFanOuts() {
	r.fanRuns.Range(func(k, _ any) bool {
		run := k.(*fanRun)
		run.cancel(errFanOutClosed)
		run.wg.Wait()
		return true
	})
}

// fanOutRows is the merged result of a fan-out: the tenant column, then
// the query's columns.
type fanOutRows struct {
	run     *fanRun
	hdr     *fanHeader
	pos     int      // index of the tenant being read
	cur     *fanSlot // its slot, nil between tenants
	curSeen bool     // its columns were checked against the header
	curBad  error    // they differ: the tenant's failure, its rows dropped
	pendID  string   // the tenant of pending
	pending []driver.Value
	err     error // the error that ended the rows (io.EOF at the end)
}

var (
	_ driver.Rows                           = (*fanOutRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*fanOutRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*fanOutRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*fanOutRows)(nil)
)

// FanOutTenantColumn is the name of the first column of a fan-out query's
// result, which holds the tenant's ID.
const FanOutTenantColumn = "tenant"

func (rs *fanOutRows) Columns() []string {
	return append([]string{FanOutTenantColumn}, rs.hdr.names...)
}

func (rs *fanOutRows) ColumnTypeDatabaseTypeName(i int) string {
	if i == 0 {
		return "TEXT"
	}
	return rs.hdr.dbTypes[i-1]
}

func (rs *fanOutRows) ColumnTypeScanType(i int) reflect.Type {
	if i == 0 {
		return reflect.TypeFor[string]()
	}
	return rs.hdr.scan[i-1]
}

func (rs *fanOutRows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if i == 0 {
		return false, true
	}
	return rs.hdr.nullable[i-1], rs.hdr.nullOK[i-1]
}

func (rs *fanOutRows) Next(dest []driver.Value) error {
	id, row := rs.pendID, rs.pending
	if row != nil {
		rs.pending = nil
	} else {
		if rs.err != nil {
			return rs.err
		}
		var err error
		if id, row, err = rs.fetch(); err != nil {
			rs.err = err
			return err
		}
	}
	if len(row) != len(dest)-1 { // stream refuses a tenant with other columns
		rs.err = opError(opFanOut, id, fmt.Errorf("%d columns, want %d", len(row), len(dest)-1))
		return rs.err
	}
	dest[0] = id
	copy(dest[1:], row)
	return nil
}

// fetch returns the next row and its tenant, in tenant order.
func (rs *fanOutRows) fetch() (string, []driver.Value, error) {
	run := rs.run
	if context.Cause(run.ctx) == errFanOutClosed {
		return "", nil, errFanOutClosed // rows read before Close stay unread
	}
	for {
		if rs.cur == nil {
			if rs.pos >= len(run.ids) || int64(rs.pos) > run.stopAt.Load() {
				return "", nil, io.EOF
			}
			rs.cur = run.slot(rs.pos)
		}
		select {
		case row, ok := <-rs.cur.rows:
			if !ok {
				break
			}
			if !rs.curSeen {
				rs.curSeen, rs.curBad = true, rs.admit(rs.cur)
				if rs.curBad != nil && !run.skippable(rs.curBad) {
					return "", nil, rs.curBad
				}
			}
			if rs.curBad == nil {
				return run.ids[rs.pos], row, nil
			}
			continue // dropped: the tenant failed
		case <-run.ctx.Done():
			return "", nil, context.Cause(run.ctx)
		}
		// The tenant is done: give its token back and move on.
		err, id := rs.cur.err, run.ids[rs.pos]
		if err == nil {
			err = rs.curBad
			if !rs.curSeen && err == nil && rs.cur.hdr != nil {
				// No rows: its columns are the header if none is yet.
				if aerr := rs.admit(rs.cur); isQueryErr(aerr) {
					return "", nil, aerr
				}
			}
		}
		run.mu.Lock()
		run.slots[rs.pos] = nil
		run.mu.Unlock()
		<-run.tokens
		rs.cur, rs.curSeen, rs.curBad = nil, false, nil
		rs.pos++
		if err == nil {
			continue
		}
		if !run.skippable(err) {
			return "", nil, err
		}
		if run.opts.OnSkip != nil {
			run.opts.OnSkip(id, err)
		}
	}
}

// admit checks the columns of tenant slot s, the next in ID order, against
// the header: the columns of the first tenant, in ID order, that has some
// (so the same tenant's whatever the timing). Every tenant's rows go under
// that one header: a tenant whose result has other columns (its schema
// differs: a pending migration, a table of its own making) would put its
// values under another tenant's names, or leave a shorter row's last values
// to the row before; it fails instead.
func (rs *fanOutRows) admit(s *fanSlot) error {
	run := rs.run
	run.mu.Lock()
	if run.hdr == nil {
		for _, name := range s.hdr.names {
			if strings.EqualFold(name, FanOutTenantColumn) {
				run.mu.Unlock()
				return errTenantColumn(name)
			}
		}
		run.hdr = s.hdr
	}
	hdr := run.hdr
	run.mu.Unlock()
	if slices.Equal(s.hdr.names, hdr.names) {
		return nil
	}
	id := run.ids[rs.pos]
	return &FanOutError{Tenant: id, Err: opError(opFanOut, id, fmt.Errorf("its result has the columns (%s), unlike those of tenant %q, the first read (%s): a fan-out reads the same columns from every tenant (name them rather than SELECT * across schema versions)",
		strings.Join(s.hdr.names, ", "), hdr.tenant, strings.Join(hdr.names, ", ")))}
}

// Close stops the fan-out and waits until every connection it used is
// given back (and tenants it opened are closed).
func (rs *fanOutRows) Close() error {
	var err error
	if rs.err != nil && rs.err != io.EOF {
		err = rs.err
	}
	rs.run.close(err)
	return nil
}
