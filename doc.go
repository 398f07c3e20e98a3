// Package sqliteproxy is database-per-tenant SQLite behind database/sql.
//
// Every tenant is one SQLite file, <Dir>/<id>.db (or, for fleets of many
// thousands, <Dir>/<bucket>/<id>.db in 256 folders: Config.Layout,
// LayoutBuckets; list them with Proxy.AllTenants). Application code stays
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
// context (a wait whose context has no deadline ends after
// Config.BusyTimeout with SQLITE_BUSY, as SQLite's own would), and up to
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
// Tenants idle for Config.IdleTimeout are closed in the background. A
// closed tenant leaves nothing behind in memory: what the proxy keeps grows
// with the tenants open, not with the tenants ever touched (100 000
// tenants touched once behind a cap of 100 leave 50 in its registry), and
// once tenants stop closing for a second, the memory SQLite freed is given
// back to the OS (glibc's malloc_trim, where the C library has it).
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
// # Tenant lifecycle
//
// Proxy.CreateTenant, TenantExists, Tenants, DeleteTenant, BackupTenant,
// RestoreTenant and CheckTenant manage tenants as files. New files are
// built and migrated under a temporary dot-name and linked into place, so
// nobody sees a half-made tenant. DeleteTenant and RestoreTenant drain the
// tenant: new work waits, in-flight work finishes (up to the context; if it
// gives up, nothing changes), its connections close; waiting work then
// fails with ErrTenantNotFound (delete) or sees the restored data (restore).
// With Config.ExplicitCreate only CreateTenant makes tenants.
//
// # Fleet migrations
//
// In MigrateCheck mode tenants that are behind are refused with
// ErrPendingMigrations until Proxy.MigrateAll (or the CLI) migrates them,
// Concurrency at a time, within half the connection budget; a failing
// tenant is reported and the others go on; a rerun resumes.
// Proxy.MigrationStatus reports a tenant's applied and pending migrations
// and any drift, changing nothing.
//
// Proxy.Rollback takes migrations back across the fleet with the same
// bounds and report: it runs the NNNN_name.down.sql files beside the
// migrations, newest first, down to RollbackOptions.To; each tenant ends
// wholly at To or, when a down migration fails, wholly where it was. A
// rolled-back migration that is still configured is pending again, and a
// proxy in MigrateAuto mode applies it on the tenant's next access: roll
// back while services run in MigrateManual mode, where nothing is applied
// on access and tenants behind are served as they are.
//
// # Queries across tenants
//
// A read-only query whose context comes from WithFanOut runs on every
// tenant (or those listed in FanOutOptions) and returns one result whose
// first column, tenant, names the tenant of each row; tenants come in ID
// order, Concurrency at a time within half the connection budget, and rows
// stream. Statements that could write are refused (ErrFanOutWrite); a
// failing tenant fails the query with a *FanOutError unless SkipErrors.
//
// # Telemetry
//
// With Config.MeterProvider set the driver records operation, wait, open
// and migration durations, evictions by reason and connection gauges, per
// tenant unless Config.MetricsTenantLimit bounds the tenant attribute. With
// Config.TracerProvider set it makes spans for tenant opens, migrations,
// evictions and waits (and every statement with Config.TraceQueries); spans
// always name their tenant. Nil providers mean off, at the cost of one
// branch: pass otel.GetMeterProvider() to use the global one.
//
// # Stats
//
// Proxy.Stats returns the open and maximum connections, the open tenants,
// the evictions and waits so far, and per open tenant its connections
// open and in use and when it was last used: enough to size
// MaxConnections (waits for a slot and budget evictions mean it is too
// small; Waits also counts waits for a tenant's readers, which
// ReadersPerTenant sizes; waits for a tenant's writer are contention on
// that tenant, in the connection.wait.duration metric).
//
// # Replication
//
// With Config.ReplicaURL and Config.LitestreamSocket set, a Litestream
// process (its own process: in this one it would open tenant files with a
// second copy of SQLite) streams every open tenant to object storage, and a
// tenant missing here is restored from the replica on first access.
// Proxy.SyncTenant waits until a tenant's commits are in the replica;
// Proxy.RestoreTenantAt restores a point in time; DeleteTenant erases the
// replica too. Config.ReplicaCompactor keeps the replicas of closed tenants
// compact and Config.ReplicaRestorer restores in this process; package
// github.com/sqliteproxy/sqliteproxy/replica (a nested module, so that the
// driver does not link Litestream) provides both.
//
// # Several nodes
//
// With Config.Ownership (package github.com/sqliteproxy/sqliteproxy/cluster,
// etcd leases) a tenant is opened only on the node that holds its lease and
// streams to a replica generation of that lease, the fencing token; a
// statement for a tenant another node owns fails with an *OwnerError
// (ErrNotOwner), and a transaction open when the lease ends commits
// nothing.
//
// # Group commit
//
// Autocommit writes that find a tenant's writer busy are batched: the head
// of the queue runs them in one transaction and answers each caller with
// its own result; a failing statement is undone alone. Uncontended writes,
// transactions and sql.Conn work are not batched. The visible effect: a
// statement's commit may carry other callers' statements.
// Config.GroupCommit = GroupCommitOff turns it off.
//
// # Hardening
//
// Tenant connections cannot ATTACH a file, however its name is given (a
// literal, a parameter, an expression), nor VACUUM INTO one, DETACH, call
// load_extension, or change writable_schema, journal_mode, locking_mode,
// query_only, schema_version or the process-wide heap limits
// (hard_heap_limit, soft_heap_limit). Plain VACUUM (without replication) runs when it is the
// whole text of an Exec: "VACUUM" or "VACUUM main", not prepared. Files are
// created 0600 in a 0700 directory; a
// tenant file that is a symlink is refused. Build with the tag
// sqlite_omit_load_extension to leave extension loading out of the binary.
//
// Importing the package turns SQLite's memory statistics off for the whole
// process (SQLITE_CONFIG_MEMSTATUS, as SQLite recommends): they take one
// process-wide mutex on every allocation, which tenants opened on several
// threads at once queue on. sqlite3_memory_used and the heap limits then do
// nothing in the process, for other users of mattn/go-sqlite3 too; build
// with the tag sqliteproxy_memstatus to keep them.
package sqliteproxy
