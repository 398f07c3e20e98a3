package sqliteproxy

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"
	"iter"
)

// DriverName is the name the driver is registered under with database/sql.
const DriverName = "sqliteproxy"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is the database/sql driver. sql.Open("sqliteproxy", dsn) calls
// OpenConnector once per sql.Open; each *sql.DB then owns its own tenant
// pools and connection budget, so open one per data directory and share it.
type Driver struct{}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// OpenConnector parses dsn (see ParseDSN) and returns a Connector.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	return NewConnector(*cfg)
}

// Open returns a connection with its own tenant pools, closed with it.
// database/sql never calls it (it uses OpenConnector); it exists for code
// that drives the driver by hand.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return &conn{r: c.(*Connector).r, owned: true}, nil
}

// Connector owns one set of tenant pools (one data directory, one budget).
// database/sql closes it when the *sql.DB is closed.
type Connector struct {
	cfg *Config // resolved private copy
	r   *router
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// NewConnector validates cfg, fills in defaults and creates cfg.Dir if
// needed. The Connector keeps its own copy of cfg.
func NewConnector(cfg Config) (*Connector, error) {
	rc, err := cfg.resolved()
	if err != nil {
		return nil, opError(opConfigure, "", err)
	}
	r, err := newRouter(rc)
	if err != nil {
		return nil, err
	}
	return &Connector{cfg: rc, r: r}, nil
}

// Connect returns a routing connection. It never reads a tenant from ctx:
// database/sql hands pooled connections to any caller.
func (c *Connector) Connect(context.Context) (driver.Conn, error) {
	if c.r.isClosed.Load() {
		return nil, opError(opConnect, "", ErrClosed)
	}
	return &conn{r: c.r}, nil
}

// Driver returns the driver.
func (c *Connector) Driver() driver.Driver { return &Driver{} }

// Close closes every tenant connection that is not in use and fails further
// operations with ErrClosed; statements waiting for a writer or a reader end
// with ErrClosed at once. Work in use (a transaction, which may still commit,
// rows not yet closed, a statement running, a sql.Conn not closed, a
// DeleteTenant or RestoreTenant under way) keeps its tenant open: Close
// waits up to Config.BusyTimeout for it to end, as database/sql's DB.Close
// says it does. Past that it returns an error naming those tenants; their
// connections close when their work ends, and the data directory stays
// locked (against a relayout) until then.
func (c *Connector) Close() error { return c.r.close() }

// Proxy is a *sql.DB routed by tenant, plus the operations on tenants that
// database/sql has no place for. Use it as a *sql.DB (p.ExecContext,
// p.QueryContext, p.BeginTx, ...) or hand p.DB to an ORM.
type Proxy struct {
	*sql.DB
	c *Connector
}

// New opens a Proxy for cfg.
func New(cfg Config) (*Proxy, error) {
	c, err := NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	// Routing connections hold at most a parked reader between checkouts,
	// which anyone who needs it takes back (keep.go); keep enough idle that
	// database/sql does not churn them (its default keeps 2).
	db.SetMaxIdleConns(max(c.cfg.MaxConnections, 64))
	return &Proxy{DB: db, c: c}, nil
}

// Close closes the DB and the proxy (see Connector.Close). Unlike sql.DB's,
// a second Close, or one called while another runs, does not say nil while
// work is still in use: it returns what the first returned, or nil once
// everything has closed since (a Close of the DB that GORM, sqlx or bun
// wraps, then the deferred p.Close, returned nil with a transaction still
// open).
func (p *Proxy) Close() error {
	if err := p.DB.Close(); err != nil {
		return err
	}
	return p.c.r.close()
}

// Open opens a Proxy for a DSN (see ParseDSN): the way for users of DSNs
// to reach the tenant operations. Call it instead of sql.Open, and use the
// Proxy's DB: every call, and every sql.Open, opens a proxy with pools of
// its own, which does not see the others' connections.
func Open(dsn string) (*Proxy, error) {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	return New(*cfg)
}

// Config returns a copy of the Proxy's configuration, with defaults filled
// in. A setting turned off reads as -1 (ReadersPerTenant, BusyTimeout,
// StmtCacheSize), not as 0, which means the default: New(p.Config()) and
// Open(p.Config().FormatDSN()) open a Proxy configured as p (a restart).
func (p *Proxy) Config() Config {
	c := *p.c.cfg.Clone()
	if c.ReadersPerTenant == 0 {
		c.ReadersPerTenant = -1
	}
	if c.BusyTimeout == 0 {
		c.BusyTimeout = -1
	}
	if c.StmtCacheSize == 0 {
		c.StmtCacheSize = -1
	}
	return c
}

// Tenants returns the IDs of the tenants that have a database file under
// Dir, sorted. Side files (-wal, -shm, -journal) and files whose names are
// not valid tenant IDs are not listed. It holds the whole list in memory:
// for large fleets, AllTenants streams, bucket by bucket.
func (p *Proxy) Tenants(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return p.c.r.tenantIDs(ctx)
}

// AllTenants yields the IDs of the tenants that have a database file under
// Dir, as Tenants lists them, one bucket at a time: with LayoutBuckets,
// bucket by bucket ("00" to "ff", see Layout), sorted within each bucket;
// with LayoutFlat the whole directory is one bucket, so the IDs come
// sorted. A bucket's folder is read a batch of entries at a time and only
// its IDs are held: with LayoutBuckets memory stays small however many
// tenants there are (with LayoutFlat it holds every ID, as Tenants does).
// Tenants created or deleted while it runs may or may not be seen. It
// stops when the loop breaks. An error (reading the directory, ctx
// cancelled, ErrClosed) is yielded once, with an empty ID, and ends it:
//
//	for id, err := range p.AllTenants(ctx) {
//		if err != nil {
//			return err
//		}
//		...
//	}
func (p *Proxy) AllTenants(ctx context.Context) iter.Seq2[string, error] {
	return p.c.r.allTenants(ctx)
}
