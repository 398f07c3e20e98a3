package sqliteproxy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Match them with errors.Is: the driver wraps them in an
// *Error that names the operation and the tenant.
//
// Errors raised by SQLite itself (constraint violations, syntax errors, ...)
// are returned unwrapped as sqlite3.Error values, exactly as
// github.com/mattn/go-sqlite3 returns them, so code (and ORMs such as GORM)
// that inspects Code or ExtendedCode keeps working.
//
// None of these errors is ever turned into driver.ErrBadConn: database/sql
// would retry the operation on another connection, and a retry must never
// change which tenant a statement reaches. The driver returns
// driver.ErrBadConn only when nothing can have run.
var (
	// ErrNoTenant: the context carries no tenant and the statement touches data.
	ErrNoTenant = errors.New("sqliteproxy: no tenant in context")
	// ErrInvalidTenant: the tenant ID breaks the ID rule (see ValidTenantID).
	ErrInvalidTenant = errors.New("sqliteproxy: invalid tenant ID")
	// ErrTenantNotFound: the tenant has no database file and may not be created implicitly.
	ErrTenantNotFound = errors.New("sqliteproxy: tenant not found")
	// ErrTenantExists: the tenant already has a database file.
	ErrTenantExists = errors.New("sqliteproxy: tenant already exists")
	// ErrTenantMismatch: a connection or transaction bound to one tenant was
	// used with a context naming another. Nothing ran.
	ErrTenantMismatch = errors.New("sqliteproxy: tenant does not match the connection's tenant")
	// ErrMigrationDrift: a migration recorded as applied in a tenant's ledger
	// no longer matches the configured migrations (edited or removed).
	ErrMigrationDrift = errors.New("sqliteproxy: applied migration differs from configured migration")
	// ErrPendingMigrations: the tenant has migrations that have not been
	// applied and the migration mode does not apply them on access.
	ErrPendingMigrations = errors.New("sqliteproxy: tenant has pending migrations")
	// ErrNoDownMigration: a rollback needs a down migration that is not
	// configured: a NNNN_name.down.sql file is missing, or the migrations
	// come from Config.Migrations, which holds no down migrations.
	ErrNoDownMigration = errors.New("sqliteproxy: no down migration")
	// ErrClosed: the proxy (or its connector) has been closed.
	ErrClosed = errors.New("sqliteproxy: closed")
	// ErrRelayoutInterrupted: a relayout of the data directory (Relayout,
	// `sqliteproxy relayout`) started and did not finish; run it again to
	// the same layout to finish it. Nothing opens the directory meanwhile.
	ErrRelayoutInterrupted = errors.New("sqliteproxy: a relayout was interrupted")
	// ErrFanOutWrite: a statement that may write, an Exec or a BeginTx was
	// given a fan-out context (WithFanOut), which only reads. Nothing ran.
	ErrFanOutWrite = errors.New("sqliteproxy: a fan-out only reads")
)

// Operation names: the Op of an *Error, one per thing a caller asked for
// (or, for waits and opens, the step that failed inside it).
const (
	opOpen            = "open" // opening the proxy
	opClose           = "close"
	opConfigure       = "configure"
	opParseDSN        = "parse DSN"
	opConnect         = "connect"
	opRoute           = "route"
	opBegin           = "begin"
	opOpenTenant      = "open tenant"
	opOpenReader      = "open reader"
	opWaitWriter      = "wait for writer"
	opWaitReader      = "wait for reader"
	opWaitSlot        = "wait for connection"
	opWaitTenant      = "wait for tenant"
	opCheckTenantID   = "check tenant ID"
	opTenantPath      = "tenant path"
	opListTenants     = "list tenants"
	opCreateTenant    = "create tenant"
	opTenantExists    = "tenant exists"
	opDeleteTenant    = "delete tenant"
	opBackupTenant    = "backup tenant"
	opRestoreTenant   = "restore tenant"
	opRestoreTenantAt = "restore tenant at"
	opRestoreReplica  = "restore from replica"
	opSyncTenant      = "sync tenant"
	opCheckRepl       = "check replication"
	opCheckTenant     = "check tenant"
	opMigrate         = "migrate"
	opMigrationStatus = "migration status"
	opRollback        = "rollback"
	opFanOut          = "fan-out"
	opExec            = "exec"
	opQuery           = "query"
	opPrepare         = "prepare"
)

// Error is the error type for failures of the driver itself. It names the
// operation and, where one is involved, the tenant.
type Error struct {
	Op     string // the operation, e.g. "open tenant", "migrate", "route"
	Tenant string // the tenant ID, empty when none is involved
	Err    error  // the underlying error; often one of the sentinels above
}

func (e *Error) Error() string {
	// The wrapped error is often one of ours (ErrInvalidTenant, ...):
	// its prefix is said once.
	msg := "<nil>"
	if e.Err != nil {
		msg = strings.TrimPrefix(e.Err.Error(), "sqliteproxy: ")
	}
	if e.Tenant == "" {
		return fmt.Sprintf("sqliteproxy: %s: %s", e.Op, msg)
	}
	return fmt.Sprintf("sqliteproxy: %s: tenant %q: %s", e.Op, e.Tenant, msg)
}

func (e *Error) Unwrap() error { return e.Err }

func opError(op, tenant string, err error) error {
	return &Error{Op: op, Tenant: tenant, Err: err}
}

// errGateBusy: a tenant's file could not be opened, or replaced, within
// BusyTimeout: its open gate (a lock it may share with other tenants) was
// held by a restore or delete, or by opens, in this process or another.
var errGateBusy = fmt.Errorf("the tenant's open gate (shared with some other tenants) stayed held by a restore or delete, or by opens, in this or another process: %w", errBusy)
