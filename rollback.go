package sqliteproxy

import (
	"context"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// RollbackOptions tunes Rollback.
type RollbackOptions struct {
	// To is the version each tenant is brought down to: the number of
	// migrations it keeps applied (0: none). Tenants at or below it are
	// left as they are. It must be between 0 and the number of configured
	// migrations.
	To int
	// Tenants restricts the run to these IDs; nil means every tenant under
	// Dir, an empty non-nil slice none. A selection that may come out empty
	// (a filter that matched nothing) must be passed non-nil, or the whole
	// fleet is rolled back.
	Tenants []string
	// DryRun reports what would be rolled back and changes nothing.
	DryRun bool
	// Concurrency is how many tenants are rolled back at once, as in
	// MigrateOptions: default 4 x GOMAXPROCS, kept below MaxConnections/2.
	Concurrency int
	// Progress, if set, is called after each tenant (from several
	// goroutines, never concurrently) with the tenants done and the total.
	Progress func(done, total int)
}

// Rollback brings every tenant under Dir (or opts.Tenants) down to version
// opts.To by running the down migrations (NNNN_name.down.sql files beside
// the migrations of Config.MigrationsFS or Config.MigrationsDir) of the
// migrations applied after it, newest first, each removing its ledger row
// in the same transaction as its SQL. A tenant's down migrations run in
// one BEGIN IMMEDIATE transaction: a tenant ends wholly at opts.To, or, if
// a down migration fails (or the process dies), wholly where it was.
//
// Per tenant, before anything is changed, the ledger is checked against
// the configured migrations: a tenant whose ledger has drifted
// (ErrMigrationDrift) or that needs a down file that is missing
// (ErrNoDownMigration, naming the file) fails, is recorded in the report's
// Failed, and the others go on. The bounds, the report (Applied counts
// down migrations run, Migrated the tenants rolled back, Pending with
// DryRun the down files that would run), Progress, cancellation and
// resumability (a rerun finishes what is left) are MigrateAll's, and so is
// the coordination with live connections: a tenant open in this process is
// rolled back on its writer, between transactions; one nobody has open
// holding SQLite's exclusive lock on its file.
//
// Migrations from Config.Migrations have no down migrations: Rollback
// then fails with ErrNoDownMigration without touching any tenant.
//
// A rolled-back migration that is still configured is pending again: in
// MigrateAuto mode this proxy applies it again on the tenant's next access
// (MigrateCheck refuses the tenant, MigrateManual serves it as it is), and
// so does any other process in MigrateAuto mode when it next opens the
// tenant. Roll back while services run in MigrateManual mode, or with the
// migration removed from their configuration; MigrationStatus lists what
// is pending.
func (p *Proxy) Rollback(ctx context.Context, opts RollbackOptions) (MigrateReport, error) {
	r := p.c.r
	if len(r.cfg.Migrations) > 0 {
		return MigrateReport{}, opError(opRollback, "", fmt.Errorf(
			"%w: Config.Migrations cannot hold down migrations; use MigrationsFS or MigrationsDir with NNNN_name.down.sql files", ErrNoDownMigration))
	}
	if opts.To < 0 || opts.To > len(r.mig.list) {
		return MigrateReport{}, opError(opRollback, "", fmt.Errorf("version %d to roll back to is not between 0 and %d, the migrations configured", opts.To, len(r.mig.list)))
	}
	mo := MigrateOptions{Concurrency: opts.Concurrency, DryRun: opts.DryRun, Progress: opts.Progress, Tenants: opts.Tenants}
	return r.fleetRun(ctx, opRollback, mo, func(ctx context.Context, id string) ([]string, error) {
		return r.rollbackTenant(ctx, id, opts.To, opts.DryRun)
	})
}

// rollbackTenant rolls tenant id back to version to (with dryRun: lists
// what that would take) and returns the down files run.
func (r *router) rollbackTenant(ctx context.Context, id string, to int, dryRun bool) ([]string, error) {
	t, err := r.tenant(id)
	if err != nil {
		return nil, err
	}
	defer t.unpin()
	if err := t.mustExist(opRollback); err != nil {
		return nil, err
	}
	// The writer semaphore, held throughout: nothing of this process writes
	// to t meanwhile, and nothing opens its writer (which would migrate it
	// in MigrateAuto mode) until the rollback is done.
	if err := t.lockWriter(ctx); err != nil {
		return nil, err
	}
	defer t.releaseWriter()
	if t.w != nil {
		if !dryRun {
			// The writer carries live traffic's session: a TEMP table of
			// the same name took a down migration's DROP COLUMN (the ledger
			// then said rolled back over a main table that kept it, and
			// the next access failed to apply the migration again), a TEMP
			// trigger fired inside it. Down migrations run on a fresh
			// connection.
			if err := t.freshWriter(ctx); err != nil {
				return nil, opError(opRollback, id, err)
			}
		}
		ran, err := r.mig.rollback(ctx, t.w.c, id, t.tel, to, dryRun)
		if !dryRun && (len(ran) > 0 || err != nil) {
			// Rolled back, or failed partway: what a down migration set on
			// the connection (pragmas, TEMP tables) is not undone with its
			// transaction, and must not stay on the writer live traffic uses.
			r.rolledBack(t)
		}
		return ran, err
	}
	// Not open for writing here: read the ledger on a short-lived
	// connection first, which for a tenant at or below to is all there is
	// to do. Its answer is re-checked under BEGIN IMMEDIATE.
	n, err := r.peekLedger(ctx, t)
	if err != nil {
		return nil, opError(opRollback, id, err)
	}
	_, names, err := r.mig.downPlan(n, to)
	if err != nil {
		return nil, opError(opRollback, id, err)
	}
	if len(names) == 0 || dryRun {
		return names, nil
	}
	drv, params := r.conns.drv, r.conns.writerParams
	if r.budget.counted(t) == 0 {
		// Nobody has it open in this process: as migrateAlone, in
		// locking_mode=EXCLUSIVE, failing at once if another process has it.
		drv, params = r.conns.aloneDrv, r.conns.aloneParams
	}
	ran, err := r.rollbackOwn(ctx, t, to, drv, params)
	if isBusy(err) && drv == r.conns.aloneDrv {
		// Another process has the file open: share it.
		ran, err = r.rollbackOwn(ctx, t, to, r.conns.drv, r.conns.writerParams)
	}
	if len(ran) > 0 {
		r.rolledBack(t)
	}
	return ran, err
}

// rollbackOwn rolls t back on a connection of its own, within the budget.
// The caller holds t's writer semaphore.
func (r *router) rollbackOwn(ctx context.Context, t *tenant, to int, drv *sqlite3.SQLiteDriver, params string) ([]string, error) {
	c, done, err := r.ownConn(ctx, t, drv, params)
	if err != nil {
		return nil, opError(opRollback, t.id, err)
	}
	// Closing checkpoints the WAL (the last connection); if that fails the
	// rollback is still safe in the WAL, for the next open.
	defer done()
	return r.mig.rollback(ctx, c, t.id, t.tel, to, false)
}

// rolledBack makes t's next access go through the migration gate again
// (which applies, refuses or serves the migrations rolled back, as the
// MigrationMode says): the ready mark goes, and so does its writer, which
// passed the gate before the rollback. Its readers stay (a reader never
// opens without the writer being ready first). The caller holds t's
// writer semaphore.
func (r *router) rolledBack(t *tenant) {
	t.ready.Store(false)
	if t.w == nil || t.evict(true, evictMigrate) {
		return
	}
	t.dropWriter() // readers are leased: the writer alone
}
