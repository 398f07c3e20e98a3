package sqliteproxy

import (
	"context"
	"database/sql/driver"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/mattn/go-sqlite3"
	"github.com/sqliteproxy/sqliteproxy/internal/sqlscan"
)

// tenantless answers statements that carry no tenant but touch no data,
// such as GORM's start-up "select sqlite_version()", on private in-memory
// connections that can read no table. Anything else is ErrNoTenant.
type tenantless struct {
	drv  *sqlite3.SQLiteDriver
	pool chan *sqlite3.SQLiteConn // idle connections
}

func newTenantless() *tenantless {
	return &tenantless{
		drv: &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			c.SetLimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
			c.RegisterAuthorizer(tenantlessAuthorizer)
			return nil
		}},
		pool: make(chan *sqlite3.SQLiteConn, 4),
	}
}

func (p *tenantless) get() (*sqlite3.SQLiteConn, error) {
	select {
	case c := <-p.pool:
		return c, nil
	default:
	}
	c, err := p.drv.Open(":memory:")
	if err != nil {
		return nil, err
	}
	return c.(*sqlite3.SQLiteConn), nil
}

func (p *tenantless) put(c *sqlite3.SQLiteConn) {
	select {
	case p.pool <- c:
	default:
		c.Close()
	}
}

func (p *tenantless) close() {
	for {
		select {
		case c := <-p.pool:
			c.Close()
		default:
			return
		}
	}
}

func errNoTenant(op, query string) error {
	return opError(op, "", fmt.Errorf("%w: %s touches data or is not a single read-only statement", ErrNoTenant, quoteShort(query)))
}

// quoteShort quotes query, cut to about its first 60 bytes (not inside a
// character) with "…" after them when longer: a cut that does not say so reads as a statement that
// reached the driver cut.
func quoteShort(query string) string {
	if len(query) <= 60 {
		return strconv.Quote(query)
	}
	i := 60
	for i > 50 && !utf8.RuneStart(query[i]) {
		i-- // not inside a character
	}
	return strconv.Quote(query[:i]) + "…"
}

// errNoTenantPrepare is errNoTenant for a text that SQLite could not
// prepare without a tenant, with its reason: a misspelt function is
// otherwise taken for a context that lost its tenant. The reason is text
// only (errors.As finds no sqlite3.Error): the statement never reached a
// tenant, where it might have run.
func errNoTenantPrepare(op, query string, err error) error {
	return opError(op, "", fmt.Errorf("%w: %s touches data or is not a single read-only statement (without a tenant SQLite says: %v)", ErrNoTenant, quoteShort(query), err))
}

// prepare prepares query on a tenantless connection, or says why it cannot
// run without a tenant. The caller closes the statement and puts c back.
func (p *tenantless) prepare(ctx context.Context, op, query string) (*sqlite3.SQLiteConn, *sqlite3.SQLiteStmt, error) {
	info := sqlscan.Scan(query)
	if info.Multi {
		return nil, nil, errNoTenant(op, query)
	}
	switch info.Keyword {
	case "SELECT", "VALUES", "WITH", "EXPLAIN":
	default:
		// SQLite calls some statements read-only that are about a
		// tenant's schema (DROP TRIGGER IF EXISTS, REINDEX): here they
		// found nothing and reported success.
		return nil, nil, errNoTenant(op, query)
	}
	c, err := p.get()
	if err != nil {
		return nil, nil, opError(op, "", err)
	}
	s, err := c.PrepareContext(ctx, query)
	if err != nil {
		p.put(c)
		return nil, nil, errNoTenantPrepare(op, query, err)
	}
	ss := s.(*sqlite3.SQLiteStmt)
	if !ss.Readonly() {
		ss.Close()
		p.put(c)
		return nil, nil, errNoTenant(op, query)
	}
	return c, ss, nil
}

func (p *tenantless) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if sqlscan.Empty(query) {
		// mattn prepares no statement handle for it, which only its conn's
		// Exec and Query know to answer (0 rows affected, no rows).
		c, err := p.get()
		if err != nil {
			return nil, opError("exec", "", err)
		}
		defer p.put(c)
		return c.ExecContext(ctx, query, args)
	}
	c, s, err := p.prepare(ctx, "exec", query)
	if err != nil {
		return nil, err
	}
	defer p.put(c)
	defer s.Close()
	if args, err = connArgs(s, args); err != nil {
		return nil, err
	}
	return execWatched(ctx, c, func(bg context.Context) (driver.Result, error) { return s.ExecContext(bg, args) }) // see conn.exec
}

// connArgs applies to args what mattn's conn-level Exec and Query do (the
// statement-level ones, used here, do not): fewer than the statement's
// parameters is an error, more are left out but for named ones. SELECT ?
// without an argument answered NULL here and an error with a tenant; with
// two, an error here and 1 with a tenant.
func connArgs(s *sqlite3.SQLiteStmt, args []driver.NamedValue) ([]driver.NamedValue, error) {
	na := s.NumInput()
	if len(args) < na {
		return nil, fmt.Errorf("not enough args to execute query: want %d got %d", na, len(args))
	}
	if len(args) == na {
		return args, nil
	}
	out := slices.Clone(args[:na])
	for _, a := range args[na:] {
		if a.Name != "" {
			out = append(out, a)
		}
	}
	return out, nil
}

func (p *tenantless) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if sqlscan.Empty(query) {
		c, err := p.get()
		if err != nil {
			return nil, opError("query", "", err)
		}
		defer p.put(c)
		return c.QueryContext(ctx, query, args) // no statement: its Rows hold none
	}
	c, s, err := p.prepare(ctx, "query", query)
	if err != nil {
		return nil, err
	}
	if args, err = connArgs(s, args); err != nil {
		s.Close()
		p.put(c)
		return nil, err
	}
	rs, watch, err := queryWatched(ctx, c, func(bg context.Context) (driver.Rows, error) { return s.QueryContext(bg, args) }) // see conn.exec
	if err != nil {
		s.Close()
		p.put(c)
		return nil, err
	}
	return &rows{SQLiteRows: rs.(*sqlite3.SQLiteRows), stmt: s, free: c, pool: p, watch: watch}, nil
}
