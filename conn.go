package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// conn is a routing connection: what database/sql pools. It holds no SQLite
// connection of its own. The first statement of a checkout reads the tenant
// from its context and leases one of that tenant's connections; the lease
// is kept until database/sql checks the conn back in (IsValid) or closes it,
// so a sql.Conn or a Tx keeps one SQLite session throughout. A reader then
// stays parked with the conn for its next read, until someone takes it
// back (keep.go).
type conn struct {
	r *router
	t *tenant // tenant of the lease, nil when none
	// bound is the tenant the checkout's first statement went to
	// (routeTenant), kept while it holds no lease (that statement failed; a
	// write whose wait for the writer failed gave its reader back; a Prepare
	// of a tenant not open, deferred): a sql.Conn stays bound to that
	// tenant until it is checked in. (Group commit batches only *sql.DB's
	// one-statement checkouts.)
	bound   string
	pc      *physConn // leased connection, nil when none
	spare   *physConn // a reader kept for its open rows after moving to the writer
	tx      *tx       // open transaction
	hadTx   bool      // the checkout began a transaction (it may have ended badly)
	mayTx   bool      // the checkout ran a text that may have begun one (mayOpenTx)
	mayTemp bool      // the checkout ran a text that may have created a TEMP object (mayCreateTemp)
	// triedWriter: routeQuery tried the text on the writer for this query,
	// in vain.
	triedWriter bool
	owned       bool      // the conn came from Driver.Open and owns r
	last        *tenant   // tenant of the previous checkout: spares a map lookup
	batched     bool      // this checkout ran a statement through group commit (groupcommit.go)
	kept        *physConn // a reader kept between checkouts, and its token (keep.go)
	keptTok     uint64

	lastQuery string // the previous query's text and class: spares a map lookup
	lastRO    bool
	lastText  string // the previous text given to noteText, and its answers
	lastTx    bool
	lastTemp  bool

	// freeRows is a rows wrapper of this conn not in use: a query takes it
	// (one at a time: a sql.Conn may hold several Rows open), and its Close
	// puts it back. database/sql runs both under the conn's lock and never
	// touches driver rows after Close.
	freeRows *rows
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
)

// errReadOnlyTx refuses a write in a read-only transaction that runs on the
// writer: SQLITE_READONLY, as a reader's query_only refuses it.
var errReadOnlyTx = fmt.Errorf("%w (a read-only transaction)", sqlite3.Error{Code: sqlite3.ErrReadonly, ExtendedCode: sqlite3.ErrNoExtended(sqlite3.ErrReadonly)})

// errNoRoute reports that neither the conn nor the context names a tenant.
var errNoRoute = errors.New("no tenant")

// route returns the connection a statement with ctx must run on, leasing
// one if the conn holds none. write asks for the tenant's writer.
func (c *conn) route(ctx context.Context, write bool) (*physConn, error) {
	id, has := OrgID(ctx)
	if c.pc != nil {
		if c.tx == nil && c.r.isClosed.Load() && c.pc.c.AutoCommit() {
			// A sql.Conn held across Close: its next statement fails, as
			// new work does (a transaction in progress may still finish:
			// BeginTx's, or one begun with BEGIN on the Conn, whose COMMIT
			// was refused).
			return nil, opError(opRoute, c.t.id, ErrClosed)
		}
		if err := c.boundErr(ctx, id, has); err != nil {
			return nil, err
		}
		if c.pc.writer && c.t.leaseEnded() {
			// This node's lease on the tenant ended while the writer was
			// leased (Config.Ownership), or its file moved: nothing more
			// is written.
			return nil, opError(opRoute, c.t.id, c.t.fenceErr())
		}
		if write && c.tx != nil && c.tx.readOnly && c.pc.writer {
			// A read-only transaction that had to run on the writer (the
			// conn held it already): refuse writes as a reader would.
			return nil, opError(opRoute, c.t.id, errReadOnlyTx)
		}
		if !write || c.pc.writer || c.tx != nil {
			return c.pc, nil
		}
		return c.upgrade(ctx)
	}
	t, err := c.routeTenantOf(ctx, id, has)
	if err != nil {
		return nil, err
	}
	return c.lease(ctx, t, write)
}

// boundErr refuses, on a checkout bound to a tenant, a statement whose
// context names another (the context's id; has: it names one) and a
// fan-out: ErrTenantMismatch.
func (c *conn) boundErr(ctx context.Context, id string, has bool) error {
	switch {
	case c.bound == "":
		return nil
	case has && id != c.bound:
		return opError(opRoute, id, fmt.Errorf("%w: connection is bound to tenant %q", ErrTenantMismatch, c.bound))
	case !has && fanOutOf(ctx) != nil:
		return errFanOutBound(c.bound)
	}
	return nil
}

// routeTenant returns the tenant a checkout without a lease goes to: the
// one it is bound to, which a context of another tenant may not change
// (ErrTenantMismatch), else the context's; errNoRoute when there is
// neither.
func (c *conn) routeTenant(ctx context.Context) (*tenant, error) {
	id, has := OrgID(ctx)
	return c.routeTenantOf(ctx, id, has)
}

// routeTenantOf is routeTenant for the context's tenant id (has: it names
// one), looked up by the caller already.
func (c *conn) routeTenantOf(ctx context.Context, id string, has bool) (*tenant, error) {
	if c.r.isClosed.Load() {
		return nil, opError(opRoute, id, ErrClosed)
	}
	if c.bound != "" {
		if err := c.boundErr(ctx, id, has); err != nil {
			return nil, err
		}
		id, has = c.bound, true
	}
	if !has {
		return nil, errNoRoute
	}
	t, err := c.tenant(id)
	if err == nil {
		c.bound = id // also when what the statement does next fails
	}
	return t, err
}

// lease leases t's writer (write) or a reader to this checkout.
func (c *conn) lease(ctx context.Context, t *tenant, write bool) (*physConn, error) {
	var pc *physConn
	var err error
	cold := t.counted.Load() == 0
	if write {
		pc, err = t.acquireWriter(ctx)
	} else if pc = c.takeKept(t); pc == nil {
		pc, err = t.acquireReader(ctx)
	}
	if err != nil {
		t.unpin()
		return nil, err
	}
	c.t, c.pc = t, pc // the pin is kept until release
	c.r.retain.leased()
	if cold {
		c.r.coldOpened(t)
	}
	return pc, nil
}

// tenant returns the tenant object for id, pinned: the previous
// checkout's if it is still id's.
func (c *conn) tenant(id string) (*tenant, error) {
	if t := c.last; t != nil && t.id == id && t.pin() {
		return t, nil
	}
	t, err := c.r.tenant(id)
	if err != nil {
		return nil, err
	}
	c.last = t
	return t, nil
}

// upgrade moves the lease from a reader to the writer. The reader is given
// back first, so a checkout never holds a reader while it waits for the
// writer, unless rows are still open on it.
func (c *conn) upgrade(ctx context.Context) (*physConn, error) {
	rd := c.pc
	if rd.rows == 0 {
		c.putReader(c.t, rd)
		c.pc = nil
	}
	w, err := c.t.acquireWriter(ctx)
	if err != nil {
		if c.pc == nil {
			c.t.unpin()
			c.t = nil
		}
		return nil, err
	}
	if c.pc != nil {
		c.spare = rd
	}
	c.pc = w
	return w, nil
}

// noteText records what query may leave on the checkout's connection (a
// transaction: mayOpenTx; a TEMP object: mayCreateTemp), remembering the
// answers for the conn's last text: a loop runs one text again and again
// (a third of the routing's own cost was scanning it again).
func (c *conn) noteText(query string) {
	if c.mayTx && c.mayTemp {
		return
	}
	if query != c.lastText {
		c.lastText, c.lastTx, c.lastTemp = query, mayOpenTx(query), mayCreateTemp(query)
	}
	c.mayTx = c.mayTx || c.lastTx
	c.mayTemp = c.mayTemp || c.lastTemp
}

// routeQuery leases the connection for a query: a reader when SQLite
// reports the statement read-only (and it is a single statement that is not
// transaction control), else the writer. A text that cannot read by its
// words alone (cannotRead: INSERT ... RETURNING, several statements) goes
// to the writer without being compiled on a reader first: waiting for a
// reader only to learn that would wait forever when the caller's own open
// Rows hold every reader (a GORM Create or a bun insert inside a loop over
// rows).
func (c *conn) routeQuery(ctx context.Context, query string) (*physConn, error) {
	if query == c.lastQuery && query != "" {
		return c.route(ctx, !c.lastRO)
	}
	if ro, ok := c.r.classes.lookup(query); ok {
		c.lastQuery, c.lastRO = query, ro
		return c.route(ctx, !ro)
	}
	info := sqlscan.Scan(query)
	if cannotRead(query, info) {
		c.r.classes.store(query, false)
		return c.route(ctx, true)
	}
	if info.Session || readsSession(query, info) {
		return c.routeSession(ctx) // not cached: decided at each run
	}
	pc, err := c.route(ctx, false)
	if err != nil {
		return nil, err
	}
	s, err := pc.c.PrepareContext(ctx, query)
	if err != nil {
		// Not classifiable here (a TEMP table of the writer's session, say):
		// the writer runs it if it compiles there; else the reader reports
		// the error.
		if !pc.writer {
			c.onWriter(ctx, func(w *physConn) error {
				s, err := w.c.PrepareContext(ctx, query)
				if err == nil {
					s.Close()
				}
				return err
			})
			c.triedWriter = !c.pc.writer // query does not wait for it twice
		}
		return c.pc, nil
	}
	ro := s.(*sqlite3.SQLiteStmt).Readonly()
	s.Close()
	c.r.classes.store(query, ro)
	return c.route(ctx, !ro)
}

// routeSession leases the connection for a read that calls
// last_insert_rowid(), changes() or total_changes(), which answer about the
// connection's own writes: the checkout's connection when it holds one (its
// writer, or a reader: a session that never wrote), else the tenant's
// writer when it is free, as mattn's pool hands out its one idle
// connection (on a reader, which never wrote, it answered 0 where mattn
// answered about the caller's write), and a reader when another checkout
// holds the writer, as mattn opens another connection rather than wait: the
// read never waits for a transaction, the caller's own included.
func (c *conn) routeSession(ctx context.Context) (*physConn, error) {
	if c.pc != nil {
		return c.route(ctx, false)
	}
	t, err := c.routeTenant(ctx)
	if err != nil {
		return nil, err
	}
	return c.lease(ctx, t, !t.wsem.held.Load())
}

// compileErr reports whether err is SQLite's failure to compile a
// statement (SQLITE_ERROR: no such table, no such column, a syntax error).
func compileErr(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrError
}

// cannotRead reports whether a text cannot run on a reader, by its words:
// not a single statement (routeQuery sends several to the writer), a WITH
// whose statement writes and returns rows (RETURNING), or one that does
// not begin with a keyword that can read (query is the text info scanned).
// sqlite3_stmt_readonly is true for transaction control too, which must
// run on the writer, and for PRAGMA optimize, which runs ANALYZE. Any other
// WITH that writes is found out by compiling it.
func cannotRead(query string, info sqlscan.Info) bool {
	if info.Multi {
		return true
	}
	switch info.Keyword {
	case "WITH":
		return info.Returning || callsPragmaOptimize(query)
	case "SELECT", "VALUES":
		// pragma_optimize(): ANALYZE, which SQLite calls read-only.
		return callsPragmaOptimize(query)
	case "EXPLAIN":
		// SQLite applies some PRAGMA setters when it compiles them,
		// EXPLAIN PRAGMA query_only = 1 included.
		return pragmaSetter(query)
	case "PRAGMA":
		// SQLite calls setters of a connection's state read-only
		// (foreign_keys = ON, synchronous = FULL): on a reader they stayed
		// there, confirmed when read back, while writes ran without them.
		return pragmaOptimize(query) || pragmaSetter(query)
	case "", "ALTER", "ANALYZE", "ATTACH", "BEGIN", "COMMIT", "CREATE", "DELETE", "DETACH", "DROP", "END",
		"INSERT", "REINDEX", "RELEASE", "REPLACE", "ROLLBACK", "SAVEPOINT", "UPDATE", "VACUUM":
		return true
	}
	// No statement begins with any other word: a syntax error ("SELEC 1"),
	// which a reader reports at once where the writer may be busy.
	return false
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	start := c.r.tel.opStart()
	res, err := c.exec(ctx, query, args)
	if err != nil {
		err = refused(ctx, opExec, query, err, c.r.repl != nil)
	}
	c.opEnd(ctx, stmtExec, start, query, err)
	return res, err
}

// refused is err, or when err is SQLite's refusal by the proxy's
// authorizer (harden.go), an *Error for op naming the tenant, the
// statement (quoteShort) and the rules: SQLite's own "not authorized"
// named none of them. errors.As still finds the sqlite3.Error (ErrAuth).
func refused(ctx context.Context, op, query string, err error, replicated bool) error {
	if !isAuthErr(err) && !isFunctionDenied(err) {
		return err
	}
	if pe := (*Error)(nil); errors.As(err, &pe) {
		return err
	}
	id, _ := OrgID(ctx)
	rules := `README, "Hardening": no ATTACH, DETACH, VACUUM INTO, load_extension or fts3_tokenizer, no change to the migration ledger, no PRAGMA that sets the journal or locking mode, query_only, schema_version, writable_schema, the store directories, the heap limits, wal_autocheckpoint off, count_changes, ignore_check_constraints or case_sensitive_like on, synchronous below Config.Synchronous; no PRAGMA with an empty argument; VACUUM only as the whole text of an Exec`
	if replicated {
		rules += `; with replication Litestream owns checkpoints: no VACUUM, no wal_checkpoint but PASSIVE, no wal_autocheckpoint`
	}
	return opError(op, id, fmt.Errorf("%s is refused by the proxy's hardening (%s): %w", quoteShort(query), rules, err))
}

// isFunctionDenied reports whether err is SQLite's for a function call the
// authorizer denied (load_extension, in a build with extension loading):
// SQLite reports it with SQLITE_ERROR, not SQLITE_AUTH, and the message
// the authorizer's denials all begin with.
func isFunctionDenied(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrError && strings.HasPrefix(se.Error(), "not authorized to use function: ")
}

// opEnd records an operation of this checkout that started at start (see
// telemetry.opStart: zero when nothing records it, and then free).
func (c *conn) opEnd(ctx context.Context, o stmtOp, start time.Time, query string, err error) {
	if !start.IsZero() {
		c.r.tel.opEnd(ctx, c.opTenant(ctx, err), o, start, query, err)
	}
}

// opTenant returns what telemetry records of the tenant an operation with
// ctx ran on, or was for: the leased tenant, else the one ctx names if the
// checkout looked it up (an operation that got no connection, a wait that
// timed out, one that ran through group commit), else none. An ID that
// names no tenant (ErrTenantNotFound, with ExplicitCreate or Ownership)
// is no tenant: IDs that clients send would each make a series of every
// metric until the SDK's cardinality limit, past which real tenants'
// measurements lose their tenant.
func (c *conn) opTenant(ctx context.Context, err error) *tenantTel {
	if c.t != nil {
		return c.t.tel
	}
	if err != nil && errors.Is(err, ErrTenantNotFound) {
		return nil
	}
	if t := c.last; t != nil {
		if id, ok := OrgID(ctx); ok && id == t.id {
			return t.tel
		}
	}
	return nil
}

func (c *conn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	// c.lastText and c.lastQuery only ever hold texts that passed this
	// check (they are noted after it), which depends on the text alone: a
	// text run again skips it.
	if query != c.lastText && setsPragmaEmpty(query) {
		return nil, errPragmaEmpty
	}
	if c.setsInReadOnlyTx(query) {
		return nil, opError(opRoute, c.t.id, errReadOnlyTx)
	}
	var pc *physConn
	var err error
	if c.pc != nil {
		pc, err = c.route(ctx, !c.readInReadOnlyTx(ctx, query))
	} else {
		// One tenant lookup for group commit and the lease.
		var t *tenant
		if t, err = c.routeTenant(ctx); err == nil {
			if !c.batched && c.r.cfg.GroupCommit == GroupCommitOn {
				if res, err, handled := t.groupExec(ctx, query, args); handled {
					// A second statement on this checkout before it is
					// checked in is sql.Conn work: it takes the writer as
					// before.
					t.unpin()
					c.batched = true
					return res, err
				}
			}
			pc, err = c.lease(ctx, t, true)
		}
	}
	if err != nil {
		if err == errNoRoute {
			if fanOutOf(ctx) != nil {
				return nil, errFanOutWrite("Exec with a fan-out context")
			}
			return c.r.free.exec(ctx, query, args)
		}
		return nil, err
	}
	c.noteText(query)
	if len(args) == 0 && c.r.repl == nil && startsWithV(query) && plainVacuum(query) {
		return vacuum(ctx, pc.c, query, syncRank(c.r.cfg.Synchronous))
	}
	// mattn gets a context that cannot end (ctxwatch.go); context.Background
	// for one that cannot anyway, whose chain of values (the tenant's among
	// them) mattn's asks of Done and Err would walk.
	return execWatched(ctx, pc.c, func(bg context.Context) (driver.Result, error) { return pc.c.ExecContext(bg, query, args) })
}

// setsInReadOnlyTx reports whether query is a PRAGMA that sets (or its
// EXPLAIN) in a read-only transaction: refused as a write (errReadOnlyTx),
// wherever the transaction runs. On a reader the compile-time refusal said
// only "not authorized"; on the writer it is a write.
func (c *conn) setsInReadOnlyTx(query string) bool {
	if c.tx == nil || !c.tx.readOnly || !mayBePragma(query) {
		return false
	}
	return pragmaSetter(query)
}

// mayBePragma reports whether query's first non-blank byte may begin a
// PRAGMA or an EXPLAIN (or a comment before one): a cheap test first.
func mayBePragma(query string) bool {
	c := firstNonBlank(query)
	return c|0x20 == 'p' || c|0x20 == 'e' || c == '-' || c == '/' || c == bomLead
}

// readInReadOnlyTx reports whether query, sent through Exec in a read-only
// transaction that runs on the writer (a sql.Conn that had written), is a
// single statement SQLite takes for read-only, which the transaction may
// run as a reader would (SELECT 1 was refused there, and taken on a
// reader).
func (c *conn) readInReadOnlyTx(ctx context.Context, query string) bool {
	if c.tx == nil || c.pc == nil || !c.tx.readOnly || !c.pc.writer {
		return false
	}
	if info := sqlscan.Scan(query); info.Multi || cannotRead(query, info) {
		return false
	}
	s, err := c.pc.c.PrepareContext(ctx, query)
	if err != nil {
		return true // it fails to compile there too: SQLite's error, not a refusal
	}
	defer s.Close()
	return s.(*sqlite3.SQLiteStmt).Readonly()
}

// startsWithV reports whether query's first non-blank byte is a V, or
// begins a comment: a cheap test before plainVacuum, on every Exec.
func startsWithV(query string) bool {
	c := firstNonBlank(query)
	return c|0x20 == 'v' || c == '-' || c == '/' || c == bomLead
}

// firstNonBlank returns query's first byte that is not an ASCII blank, 0
// for none: the cheap tests above run on every statement, where
// strings.TrimLeft with a cutset cost ~120 instructions (callgrind).
func firstNonBlank(query string) byte {
	for i := 0; i < len(query); i++ {
		switch c := query[i]; c {
		case ' ', '\t', '\r', '\n', '\f', '\v':
		default:
			return c
		}
	}
	return 0
}

// bomLead is the first byte of a byte order mark (U+FEFF), which SQLite
// reads as a blank where a token begins: the cheap tests above leave such
// a text to the scanner (sqlscan), which skips it.
const bomLead = 0xEF

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	start := c.r.tel.opStart()
	rs, err := c.query(ctx, query, args)
	if err != nil {
		err = refused(ctx, opQuery, query, err, c.r.repl != nil)
	}
	c.opEnd(ctx, stmtQuery, start, query, err)
	return rs, err
}

func (c *conn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if query != c.lastQuery && setsPragmaEmpty(query) { // see exec
		return nil, errPragmaEmpty
	}
	if c.setsInReadOnlyTx(query) {
		return nil, opError(opRoute, c.t.id, errReadOnlyTx)
	}
	c.triedWriter = false
	pc, err := c.routeQuery(ctx, query)
	if err != nil {
		if err == errNoRoute {
			if f := fanOutOf(ctx); f != nil {
				return c.r.fanOutQuery(ctx, f, query, args)
			}
			return c.r.free.query(ctx, query, args)
		}
		return nil, err
	}
	c.noteText(query)
	rs, watch, err := queryWatched(ctx, pc.c, func(bg context.Context) (driver.Rows, error) { return pc.c.QueryContext(bg, query, args) }) // see exec
	if err != nil && !pc.writer && !c.triedWriter && compileErr(err) {
		// The text was classified as a read (by this conn or, for the whole
		// process, by another tenant's run of it), but the reader cannot
		// compile it here: it may name a TEMP table of the writer's
		// session, as an unclassified text that failed on a reader goes to
		// the writer. One tenant's queries must not change another's
		// results.
		var wrs driver.Rows
		var wwatch *ctxWatch
		if tried, werr := c.onWriter(ctx, func(w *physConn) (err error) {
			wrs, wwatch, err = queryWatched(ctx, w.c, func(bg context.Context) (driver.Rows, error) { return w.c.QueryContext(bg, query, args) })
			return err
		}); tried {
			pc, rs, err, watch = c.pc, wrs, werr, wwatch
		}
	}
	if err != nil {
		return nil, err
	}
	pc.rows++
	r := c.newRows()
	*r = rows{SQLiteRows: rs.(*sqlite3.SQLiteRows), pc: pc, lease: pc.lease.Load(), c: c, watch: watch}
	return r, nil
}

// newRows returns c's free rows wrapper, else a new one.
func (c *conn) newRows() *rows {
	if r := c.freeRows; r != nil {
		c.freeRows = nil
		return r
	}
	return new(rows)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	start := c.r.tel.opStart()
	s, err := c.prepare(ctx, query)
	if err != nil {
		err = refused(ctx, opPrepare, query, err, c.r.repl != nil)
	}
	c.opEnd(ctx, stmtPrepare, start, query, err)
	return s, err
}

// prepare validates query on the tenant as mattn's Prepare does on its one
// connection, and warms the statement cache of the connection it used.
// Deferring the prepare to the execution instead would hide what mattn
// reports at Prepare (a syntax error, a missing table, NumInput), except
// where waiting would be worse (prepareConn: a busy or unopened tenant).
//
// A checkout that holds no lease yet compiles where the statement will
// run: a text that cannot be read-only (see prepareOnWriter) on the writer,
// so preparing a write neither waits for a reader (all may be held by open
// Rows) nor leases one only to move to the writer at execution. A checkout
// that holds a lease (sql.Conn, Tx) compiles on it.
//
// A reader is not mattn's connection: its schema is the one of its last
// read transaction, and TEMP objects exist only in the writer's session.
// So the text is compiled here (never answered from the cache, whose
// statements were compiled against an older schema), on a reader whose
// schema was first brought up to date (readerSchema), and a failure on a
// reader taken for this Prepare is retried on the writer when it is free
// (writerInstead): the writer holds the session the statement would have
// met with mattn. When the writer fails too, its error is returned; when
// the writer is busy (and its session holds no TEMP objects), or inside a
// transaction begun on a reader, the reader's error stands.
func (c *conn) prepare(ctx context.Context, query string) (driver.Stmt, error) {
	if setsPragmaEmpty(query) {
		return nil, errPragmaEmpty
	}
	info := sqlscan.Scan(query)
	s := &stmt{c: c, query: query, numInput: -1, keep: keepAfterExec(info), mayTx: opensTx(info), mayTemp: createsTemp(info)}
	if sqlscan.Empty(query) {
		// No statement ("", a comment): SQLite prepares none, and mattn's
		// Stmt hands the NULL handle to C at Exec or Query (SIGSEGV). It
		// runs as the conn's Exec and Query run it: nothing, no rows.
		s.empty, s.numInput = true, 0
		return s, nil
	}
	write := c.pc == nil && c.prepareOnWriter(query, info)
	pc, err := c.prepareConn(ctx, write)
	if err == errNoRoute {
		return s, nil // prepared on the tenant where it executes
	}
	if err != nil {
		return nil, err
	}
	ps, err := compile(ctx, pc, query)
	if err != nil && !pc.writer && isAuthErr(err) && pragmaSetter(query) {
		// A PRAGMA that sets, refused on readers (see connOpener.open):
		// compiled where it runs, on the writer.
		return s, nil
	}
	if err != nil && !pc.writer {
		var wps *sqlite3.SQLiteStmt
		if tried, werr := c.onWriter(ctx, func(w *physConn) (err error) {
			wps, err = compile(ctx, w, query)
			return err
		}); tried {
			pc, ps, err = c.pc, wps, werr
		}
	}
	if err != nil {
		return nil, err
	}
	s.numInput = ps.NumInput()
	if write && !pc.writer {
		ps.Close() // it will run on the writer
	} else {
		pc.putStmt(query, ps)
	}
	return s, nil
}

// prepareOnWriter reports whether query (scanned: info) cannot run on a
// reader: the class routeQuery cached for it, or else cannotRead. A WITH that writes is found
// out only at execution; compiling it on a reader validates it just as well.
func (c *conn) prepareOnWriter(query string, info sqlscan.Info) bool {
	if ro, ok := c.r.classes.lookup(query); ok {
		return !ro
	}
	return cannotRead(query, info)
}

// pragmaSetter reports whether query is a PRAGMA with an argument that
// sets (PRAGMA foreign_keys = ON, PRAGMA main.cache_size(100)) rather than
// names what to describe (table_info(t)) or check (quick_check(10)), or
// EXPLAIN [QUERY PLAN] of one: SQLite applies some setters when it
// compiles them. (One with an empty argument never gets here: every path
// refuses it first, setsPragmaEmpty.)
func pragmaSetter(query string) bool {
	pg, ok := pragmaOf(sqlscan.Tokens(query, 9))
	return ok && !pragmaQueries(pg.name, pg.value)
}

// pragmaText is a PRAGMA statement as its tokens (sqlscan.Tokens) read.
type pragmaText struct {
	name     string // as SQLite reads it: a word, a quoted name, or a string literal's text
	value    string // the argument's first token ("'" and its text for a string), "" for none
	hasValue bool   // = or ( after the name
}

// pragmaOf reads a PRAGMA statement's tokens, after EXPLAIN [QUERY PLAN];
// ok is false for any other statement. SQLite takes a string literal for a
// name (PRAGMA 'journal_mode' = ...), and so does pragmaOf (adv50: the
// quote hid the name from the checks).
func pragmaOf(toks []string) (pg pragmaText, ok bool) {
	if len(toks) > 0 && toks[0] == "EXPLAIN" {
		toks = toks[1:]
		if len(toks) >= 2 && toks[0] == "QUERY" && toks[1] == "PLAN" {
			toks = toks[2:]
		}
	}
	if len(toks) < 2 || toks[0] != "PRAGMA" {
		return pg, false
	}
	toks = toks[1:]
	if len(toks) >= 3 && toks[1] == "." {
		toks = toks[2:] // schema .
	}
	pg.name = strings.TrimPrefix(toks[0], "'")
	if len(toks) >= 2 && (toks[1] == "=" || toks[1] == "(") {
		pg.hasValue = true
		if len(toks) >= 3 {
			pg.value = toks[2]
		}
	}
	return pg, true
}

// pragmaParts returns the name of the PRAGMA query is and the first token
// of its argument ("" for none), as the authorizer sees them, read off its
// tokens; "" for a text that is no PRAGMA (nor EXPLAIN of one).
func pragmaParts(query string) (name, value string) {
	pg, _ := pragmaOf(sqlscan.Tokens(query, 9))
	return pg.name, pg.value
}

// readsSession reports whether a read's answer depends on the session of
// the connection it runs on, beyond the database: a PRAGMA that reads a
// connection's setting (foreign_keys, synchronous, cache_size) or
// describes a table, which may be a TEMP table of that session, in either
// form (PRAGMA table_info(t), pragma_table_info('t')); a text that names
// the TEMP schema (temp.x, sqlite_temp_master). Answered by a
// reader, they described a session nobody writes with (foreign_keys 0 after
// PRAGMA foreign_keys = ON ran on the writer; no TEMP table where one was
// just made). The long checks stay on a reader.
func readsSession(query string, info sqlscan.Info) bool {
	switch info.Keyword {
	case "PRAGMA":
		name, _ := pragmaParts(query)
		switch strings.ToLower(name) {
		case "integrity_check", "quick_check", "foreign_key_check":
			return false
		}
		return true
	case "SELECT", "VALUES", "WITH":
		toks := sqlscan.Tokens(query, len(query))
		for i, tok := range toks {
			tok = strings.TrimPrefix(tok, "'") // SQLite takes a string for a name where a name must be
			switch {
			case strings.EqualFold(tok, "sqlite_temp_master"), strings.EqualFold(tok, "sqlite_temp_schema"):
				return true
			case len(tok) > 7 && strings.EqualFold(tok[:7], "pragma_") && i+1 < len(toks) && toks[i+1] == "(":
				return true // pragma_table_info('t'), pragma_foreign_keys()
			case strings.EqualFold(tok, "temp") && i+1 < len(toks) && toks[i+1] == ".":
				return true
			}
		}
	}
	return false
}

// pragmaOptimize reports whether query is PRAGMA [schema.]optimize, which
// SQLite reports read-only although it runs ANALYZE: on a reader it
// failed "attempt to write a readonly database".
func pragmaOptimize(query string) bool {
	name, _ := pragmaParts(query)
	return strings.EqualFold(name, "optimize")
}

// prepareConn leases the connection prepare compiles on: the checkout's
// own when it holds a lease (sql.Conn, Tx). Otherwise it never waits on the
// tenant: the writer for a write (see prepare) when nobody holds it, else a
// reader it can have at once (parked, idle, or a new one the tenant and the
// budget allow). When there is none, or the tenant is not yet open and
// checked in this process (its first access opens, creates or migrates
// it), it returns errNoRoute: the statement is compiled where it runs, as
// a Prepare without a tenant is. GORM's PrepareStmt prepares each text once
// for all tenants and holds its statement cache locked meanwhile: a
// Prepare that waited for one tenant's transaction, or ran its migrations,
// held up every tenant's queries (3 s behind a transaction; 2.6 s behind a
// migration) and handed them its own timeout.
func (c *conn) prepareConn(ctx context.Context, write bool) (*physConn, error) {
	if c.pc != nil {
		return c.route(ctx, write)
	}
	t, err := c.routeTenant(ctx)
	if err != nil {
		return nil, err
	}
	var pc *physConn
	if t.ready.Load() && !t.fenced.Load() {
		if write || t.r.cfg.ReadersPerTenant == 0 {
			pc = t.tryWriter()
		}
		if pc == nil && t.r.cfg.ReadersPerTenant > 0 {
			if pc = c.takeKept(t); pc == nil {
				if pc, err = t.tryReader(ctx); err != nil {
					t.unpin()
					return nil, err
				}
			}
		}
	}
	if pc == nil {
		t.unpin()
		return nil, errNoRoute
	}
	c.t, c.pc = t, pc // the pin is kept until release
	c.r.retain.leased()
	return pc, nil
}

// onWriter runs try on the tenant's writer for a text that the reader this
// checkout holds could not compile: it may name a TEMP object of the
// writer's session, which mattn's one connection would have held. Only
// when the writer is free at once: a read never waits for the writer (a
// typo behind another request's transaction waited BusyTimeout, then said
// "database is locked"; mattn's pool would have answered from another
// connection), and tried is false: the reader's error stands (also when
// that wait ends without the writer). When try succeeds the lease moves to
// the writer (the reader given back, or kept while rows are open on it, as
// upgrade does): a sql.Conn that held a reader then holds the writer, as
// one that wrote does, since it now uses the writer's session. When try
// fails the writer is given back and the checkout keeps its reader (a
// sql.Conn whose read failed kept the writer, and the tenant's writes
// waited for it). Inside a transaction begun on a reader the text can only
// run on that reader.
func (c *conn) onWriter(ctx context.Context, try func(w *physConn) error) (tried bool, err error) {
	if c.tx != nil {
		return false, nil
	}
	w := c.t.tryWriter()
	if w == nil {
		if !c.t.writerTemp.Load() {
			return false, nil
		}
		if w, err = c.t.acquireWriter(ctx); err != nil {
			return false, nil // the reader's error stands, not the wait's
		}
	}
	if err := try(w); err != nil {
		c.t.releaseWriter()
		return true, err
	}
	if rd := c.pc; rd.rows == 0 {
		c.putReader(c.t, rd)
	} else {
		c.spare = rd
	}
	c.pc = w
	return true, nil
}

// compile prepares query on pc for conn.prepare, first bringing a reader's
// schema up to date. In a read-only transaction on a reader that has not
// read yet, this starts its snapshot at the Prepare rather than at the
// first statement; once it has read (or has rows open), the check is a
// no-op and the snapshot's schema is what the statement will run against.
func compile(ctx context.Context, pc *physConn, query string) (*sqlite3.SQLiteStmt, error) {
	if !pc.writer {
		if err := readerSchema(ctx, pc.c); err != nil {
			return nil, err
		}
	}
	s, err := pc.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.(*sqlite3.SQLiteStmt), nil
}

// readerSchema makes SQLite check the connection's schema against the file:
// sqlite3_prepare trusts a loaded schema (it re-reads it only after errors
// such as "no such table"), so a reader that last read before a DROP would
// prepare statements that mattn refuses, and refuse CREATEs that mattn
// prepares. A statement that reads a table compares the schema cookie when
// it opens its read transaction and reloads a stale schema (PRAGMA
// schema_version does not: it reads the cookie without that check).
func readerSchema(ctx context.Context, c *sqlite3.SQLiteConn) error {
	_, err := c.ExecContext(ctx, "SELECT 1 FROM sqlite_schema LIMIT 0", nil)
	return err
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	start := c.r.tel.opStart()
	tx, err := c.begin(ctx, opts)
	c.opEnd(ctx, stmtBegin, start, "", err)
	return tx, err
}

func (c *conn) begin(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	pc, err := c.route(ctx, !opts.ReadOnly)
	if err == errNoRoute {
		if fanOutOf(ctx) != nil {
			return nil, errFanOutWrite("BeginTx with a fan-out context")
		}
		return nil, opError(opBegin, "", ErrNoTenant)
	}
	if err != nil {
		return nil, err
	}
	// Watched as a statement is (its BEGIN may wait for another process's
	// write lock): mattn's single interrupt can be lost.
	stx, err := execWatched(ctx, pc.c, func(bg context.Context) (driver.Tx, error) { return pc.c.BeginTx(bg, opts) })
	if err != nil {
		return nil, err
	}
	c.tx = &tx{c: c, stx: stx, readOnly: opts.ReadOnly, ctx: ctx}
	c.hadTx = true
	return c.tx, nil
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// Ping without a tenant checks that the driver is open; with one, it opens
// the tenant (creating and migrating it as any first access would).
func (c *conn) Ping(ctx context.Context) error {
	if c.r.isClosed.Load() {
		return driver.ErrBadConn
	}
	if _, has := OrgID(ctx); !has && c.pc == nil {
		return nil // checks only that the driver is open, bound or not
	}
	if _, err := c.route(ctx, false); err != nil && err != errNoRoute {
		return err
	}
	return nil
}

// IsValid is called by database/sql when the conn is checked in: the lease
// ends here. (ResetSession would run only at the next checkout: too late,
// and the conn does not implement it.)
func (c *conn) IsValid() bool {
	c.release()
	return !c.r.isClosed.Load()
}

// Close ends the lease too: a Tx rolled back on context cancel comes back
// with ErrBadConn and database/sql closes it without calling IsValid.
func (c *conn) Close() error {
	c.release()
	c.dropKept()
	if c.owned {
		return c.r.close()
	}
	return nil
}

// release gives the leased connections back, rolling back any transaction
// the checkout left open.
func (c *conn) release() {
	c.batched, c.bound = false, ""
	if c.pc == nil {
		return
	}
	for _, pc := range [2]*physConn{c.pc, c.spare} {
		if pc == nil {
			continue
		}
		pc.endLease()
		// Only BeginTx, or a text that begins with BEGIN or SAVEPOINT or
		// holds several statements (mayOpenTx), can leave a connection
		// inside a transaction, and such texts go to the writer; asking
		// SQLite costs a cgo call (a third of the routing's cost), so only
		// connections of checkouts that did either are asked.
		if (c.hadTx || (pc.writer && c.mayTx)) && !pc.c.AutoCommit() {
			// A connection that stays inside its transaction would give the
			// next caller a stale snapshot, or swallow its writes into a
			// transaction nobody commits: close it instead (pgxpool too
			// destroys a connection that is not idle at release).
			if _, err := pc.c.ExecContext(context.Background(), "ROLLBACK", nil); err != nil || !pc.c.AutoCommit() {
				c.t.discard(pc)
				continue
			}
		}
		if pc.writer {
			if c.mayTemp || c.t.writerTemp.Load() {
				// Looked at again while it has some: a DROP ends them.
				c.t.noteTemp(pc)
			}
			c.t.releaseWriter()
		} else {
			c.putReader(c.t, pc)
		}
	}
	c.t.unpin()
	c.t, c.pc, c.spare, c.tx, c.hadTx, c.mayTx, c.mayTemp = nil, nil, nil, nil, false, false, false
}

// tx is a transaction on the leased connection.
type tx struct {
	c        *conn
	stx      driver.Tx
	readOnly bool
	ctx      context.Context // BeginTx's, for telemetry
}

func (t *tx) Commit() error {
	start := t.c.r.tel.opStart()
	t.c.tx = nil
	var err error
	if t.c.pc != nil && t.c.pc.writer && t.c.t.leaseEnded() {
		// The lease ended during the transaction: another node may own the
		// tenant by now, so nothing of it is committed. Nor when its file
		// moved: it would be committed to a file nobody reads.
		err = errors.Join(opError(opRoute, t.c.t.id, t.c.t.fenceErr()), t.stx.Rollback())
	} else {
		err = t.stx.Commit()
	}
	t.c.r.tel.opEnd(t.ctx, t.c.t.telemetry(), stmtCommit, start, "", err)
	return err
}

func (t *tx) Rollback() error {
	start := t.c.r.tel.opStart()
	t.c.tx = nil
	err := t.stx.Rollback()
	t.c.r.tel.opEnd(t.ctx, t.c.t.telemetry(), stmtRollback, start, "", err)
	return err
}

// stmt is a routing prepared statement. Each execution routes by its own
// context and runs a statement prepared on (and cached by) the SQLite
// connection it leases. As with mattn's statements, only the first
// statement of the text runs.
type stmt struct {
	c        *conn
	query    string
	numInput int // -1 when prepared without a tenant
	// keep: after an Exec, the statement may go back to the connection's
	// cache (keepAfterExec). mattn's Stmt.Exec stops at the first row of a
	// statement that returns rows and leaves it active: kept that way on
	// the writer, an INSERT ... RETURNING held its implicit transaction open
	// (every later write joined it, uncommitted), and a SELECT held a read
	// snapshot (no checkpoint finished: the WAL grew without end, and every
	// write failed once another process had written). Exec finalizes such
	// statements instead.
	keep    bool
	mayTx   bool // mayOpenTx(query)
	mayTemp bool // mayCreateTemp(query)
	empty   bool // the text holds no statement (sqlscan.Empty)
}

var (
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

// keepAfterExec reports whether a statement is done after the one step
// mattn's Exec takes: a write without RETURNING. Anything else may return
// rows (SELECT, VALUES, WITH, PRAGMA, a write with RETURNING) or is rare
// through a prepared statement's Exec (DDL): finalized after each Exec.
func keepAfterExec(info sqlscan.Info) bool {
	switch info.Keyword {
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		return !info.Returning
	}
	return false
}

func (s *stmt) Close() error  { return nil }
func (s *stmt) NumInput() int { return s.numInput }

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return nil, errors.New("sqliteproxy: Stmt.Exec without context is not supported; use ExecContext")
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return nil, errors.New("sqliteproxy: Stmt.Query without context is not supported; use QueryContext")
}

func checkNumInput(ps *sqlite3.SQLiteStmt, args []driver.NamedValue) error {
	if want := ps.NumInput(); want != len(args) {
		return fmt.Errorf("sql: expected %d arguments, got %d", want, len(args))
	}
	return nil
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	start := s.c.r.tel.opStart()
	res, err := s.runExec(ctx, args)
	s.c.opEnd(ctx, stmtExec, start, s.query, err)
	return res, err
}

func (s *stmt) runExec(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if s.c.setsInReadOnlyTx(s.query) {
		return nil, opError(opRoute, s.c.t.id, errReadOnlyTx)
	}
	if s.empty {
		return s.c.exec(ctx, s.query, args)
	}
	pc, err := s.c.route(ctx, !s.c.readInReadOnlyTx(ctx, s.query))
	if err == errNoRoute {
		if fanOutOf(ctx) != nil {
			return nil, errFanOutWrite("Exec with a fan-out context")
		}
		return s.c.r.free.exec(ctx, s.query, args)
	}
	if err != nil {
		return nil, err
	}
	ps, err := pc.takeStmt(ctx, s.query)
	if err != nil {
		return nil, err
	}
	s.c.mayTx = s.c.mayTx || s.mayTx
	s.c.mayTemp = s.c.mayTemp || s.mayTemp
	if s.keep {
		defer pc.putStmt(s.query, ps)
	} else {
		defer ps.Close()
	}
	if s.numInput < 0 {
		if err := checkNumInput(ps, args); err != nil {
			return nil, err
		}
	}
	return execWatched(ctx, pc.c, func(bg context.Context) (driver.Result, error) { return ps.ExecContext(bg, args) }) // see conn.exec
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	start := s.c.r.tel.opStart()
	rs, err := s.runQuery(ctx, args)
	s.c.opEnd(ctx, stmtQuery, start, s.query, err)
	return rs, err
}

func (s *stmt) runQuery(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if s.c.setsInReadOnlyTx(s.query) {
		return nil, opError(opRoute, s.c.t.id, errReadOnlyTx)
	}
	if s.empty {
		return s.c.query(ctx, s.query, args)
	}
	pc, err := s.c.routeQuery(ctx, s.query)
	if err == errNoRoute {
		if f := fanOutOf(ctx); f != nil {
			return s.c.r.fanOutQuery(ctx, f, s.query, args)
		}
		return s.c.r.free.query(ctx, s.query, args)
	}
	if err != nil {
		return nil, err
	}
	ps, err := pc.takeStmt(ctx, s.query)
	if err != nil {
		return nil, err
	}
	s.c.mayTx = s.c.mayTx || s.mayTx
	s.c.mayTemp = s.c.mayTemp || s.mayTemp
	if s.numInput < 0 {
		if err := checkNumInput(ps, args); err != nil {
			pc.putStmt(s.query, ps)
			return nil, err
		}
	}
	rs, watch, err := queryWatched(ctx, pc.c, func(bg context.Context) (driver.Rows, error) { return ps.QueryContext(bg, args) }) // see conn.exec
	if err != nil {
		pc.putStmt(s.query, ps)
		return nil, err
	}
	pc.rows++
	r := s.c.newRows()
	*r = rows{SQLiteRows: rs.(*sqlite3.SQLiteRows), pc: pc, lease: pc.lease.Load(), stmt: ps, query: s.query, c: s.c, watch: watch}
	return r, nil
}

// rows wraps mattn's rows to give back what they hold when closed: the
// routing Stmt's prepared statement, or a tenantless connection. All of
// mattn's column-type methods are promoted unchanged.
type rows struct {
	*sqlite3.SQLiteRows
	pc      *physConn           // tenant connection the rows run on, nil for tenantless
	stmt    *sqlite3.SQLiteStmt // statement to give back (or close) after the rows
	lease   uint64              // pc.lease when the rows were opened
	query   string
	free    *sqlite3.SQLiteConn // tenantless connection to give back
	pool    *tenantless
	c       *conn     // the conn whose freeRows it goes back to, nil for none
	watch   *ctxWatch // interrupts the rows' statement when its context ends (ctxwatch.go); nil: it cannot
	stepped bool      // Next has returned the query's first step
}

// Next is mattn's, under the rows' watch (ctxwatch.go), as mattn runs it
// with the rows' context: the first returns the query's first step, taken
// already, whatever the context; a later one fails with the context's
// error once it has ended, before or during the step.
func (r *rows) Next(dest []driver.Value) error {
	first := !r.stepped
	r.stepped = true
	return nextWatched(r.watch, r.SQLiteRows, dest, first)
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
	_ driver.RowsColumnTypeNullable         = (*rows)(nil)
)

func (r *rows) Close() error {
	if r.SQLiteRows == nil {
		return nil
	}
	r.watch.close()
	r.watch = nil
	err := r.SQLiteRows.Close()
	r.SQLiteRows = nil
	defer func() {
		if c := r.c; c != nil {
			*r = rows{}
			c.freeRows = r
		}
	}()
	switch {
	case r.free != nil:
		r.stmt.Close()
		r.pool.put(r.free)
	case r.pc != nil && r.pc.lease.Load() == r.lease:
		r.pc.rows--
		if r.stmt != nil {
			r.pc.putStmt(r.query, r.stmt)
		}
	case r.stmt != nil:
		r.stmt.Close() // closed after its lease ended: the cache is someone else's now
	}
	return err
}
