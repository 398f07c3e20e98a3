// Package sqliteproxy is database-per-tenant SQLite behind database/sql.
//
// Every tenant is one SQLite file, <Dir>/<id>.db. Application code stays
// single-tenant: it runs statements with a context that carries the tenant
// (WithOrgID), and the driver routes each statement to that tenant's file.
//
//	p, err := sqliteproxy.New(sqliteproxy.Config{Dir: "./data", Migrations: migrations})
//	ctx := sqliteproxy.WithOrgID(r.Context(), "acme-corp")
//	rows, err := p.QueryContext(ctx, "SELECT id, type FROM events")
//
// or, with no import beyond the driver registration:
//
//	db, err := sql.Open("sqliteproxy", "dir=./data&max_connections=100")
//
// # How statements are routed
//
// database/sql pools cheap routing connections. The first statement of a
// checkout reads the tenant from its context and leases one of the tenant's
// SQLite connections until the checkout ends, so a *sql.Conn or *sql.Tx
// keeps one SQLite session (TEMP tables, pragmas) throughout. Each tenant
// has one writer connection, handed over by a Go semaphore that honours the
// context (so writers in this process never see SQLITE_BUSY), and up to
// Config.ReadersPerTenant read-only connections for statements SQLite
// reports as read-only and for read-only transactions. Exec always uses the
// writer; so does Query for INSERT ... RETURNING and anything else that
// writes.
//
// # Contexts
//
// A statement whose context has no tenant and that touches data fails with
// ErrNoTenant. Pure expressions (SELECT sqlite_version(), SELECT 1) are
// answered by a private in-memory connection that can read no table. Inside
// a transaction or a *sql.Conn, a context without tenant runs on the bound
// tenant; a context naming another tenant fails with ErrTenantMismatch and
// runs nowhere. Prepared statements prepared without a tenant are prepared
// on each tenant as their executions reach it.
//
// # Tenant IDs
//
// See ValidTenantID: 1 to 64 of [a-z0-9_-], starting with a letter or
// digit. Anything else is ErrInvalidTenant before any path is built.
//
// # Connection budget
//
// Config.MaxConnections caps the open SQLite connections of all tenants
// together. When the cap is reached the least recently used idle tenant is
// closed as a whole (never a connection that is leased or in a
// transaction); if none is idle the caller waits, honouring its context.
// Tenants idle for Config.IdleTimeout are closed in the background.
//
// # Migrations
//
// Config.Migrations is an append-only list. Each tenant gets the ones it
// lacks on first access, once (single-flight in the process, BEGIN
// IMMEDIATE plus a re-read of the ledger across processes), each in its own
// transaction, recorded with a checksum in the table _sqliteproxy_migrations.
// An applied migration that was edited or removed fails that tenant with
// ErrMigrationDrift; a failing migration fails that tenant (others go on)
// and is retried on its next access. Migrations must not contain BEGIN or
// COMMIT.
//
// # Hardening
//
// Tenant connections cannot ATTACH another file (nor VACUUM INTO one),
// DETACH, call load_extension, or change writable_schema, journal_mode,
// locking_mode or query_only. Files are created 0600 in a 0700 directory; a
// tenant file that is a symlink is refused. Build with the tag
// sqlite_omit_load_extension to leave extension loading out of the binary.
package sqliteproxy
